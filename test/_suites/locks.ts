// The lock suite (lib/fs/locks.ts), run on two mountpoints: two mounts of one etcd + Redis
// volume, or one embedded mount twice (then it checks the daemon's arbitration between processes
// of one mount, which the kernel no longer does once locks go to the daemon). Lock holders and
// waiters are python3 processes (fcntl.flock, fcntl.lockf), as an application would use them.
import type { TestFn } from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { run } from '../_helpers/mount';
import { pollUntil } from './multimount';

export interface LockMounts {
  /** Where the first process runs, and where files are created. */
  A: string;
  /** Where the other process runs: another mount of the volume, or A again. */
  B: string;
  /** Daemon logs, for failure messages. */
  logs(): string;
}

/** python3 -c CODE ARGS..., to completion. */
export async function py(code: string, ...args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  const r = await run('python3', ['-c', code, ...args], { timeoutMs: 60_000 });
  return { code: r.code, out: r.stdout.trim(), err: r.stderr.trim() };
}

/** A python3 process that takes a lock, prints "locked", and holds it until its stdin closes. */
export function holder(code: string, file: string): { child: ChildProcess; locked: Promise<void>; release(): Promise<void> } {
  const child = spawn('python3', ['-c', `${code}\nprint("locked", flush=True)\nimport sys\nsys.stdin.read()`, file], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  const locked = new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d) => String(d).includes('locked') && resolve());
    child.on('exit', (c) => reject(new Error(`holder exited with ${c} before locking: ${stderr}`)));
  });
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  return {
    child,
    locked,
    async release() {
      child.stdin!.end();
      await exited;
    },
  };
}

export const FLOCK_EX = 'import fcntl,os,sys\nfd=os.open(sys.argv[1],os.O_RDWR)\nfcntl.flock(fd,fcntl.LOCK_EX)';
export const TRY_FLOCK = 'import fcntl,os,sys\nfd=os.open(sys.argv[1],os.O_RDWR)\ntry:\n fcntl.flock(fd,fcntl.LOCK_EX|fcntl.LOCK_NB); print("got")\nexcept OSError as e: print("busy", e.errno)';

// A blocking lock wait interrupted by a signal: on a local disk the wait ends with EINTR (here the
// alarm handler raises), which is how `flock -w`, Python's signal.alarm and Ctrl-C bound a wait.
const TAKE = { flock: 'fcntl.flock(fd,fcntl.LOCK_EX)', fcntl: 'fcntl.lockf(fd,fcntl.LOCK_EX)' };
const alarmed = (kind: 'flock' | 'fcntl'): string =>
  [
    'import fcntl,os,sys,signal',
    'def on_alarm(*a): raise TimeoutError()',
    'signal.signal(signal.SIGALRM,on_alarm)',
    'fd=os.open(sys.argv[1],os.O_RDWR)',
    'signal.alarm(1)',
    'try:',
    ` ${TAKE[kind]}; print("got", flush=True)`,
    'except TimeoutError:',
    ' print("timed out", flush=True)',
  ].join('\n');

/**
 * Holds an exclusive lock (flock or fcntl) on `file` while a second process waits for it, on
 * `waitOn` (another mount's path of the same file, or the same), under a 1 s alarm: "timed out"
 * when the alarm ended the wait, "got" when it did not and the lock came after the holder let go.
 */
export async function alarmedWait(kind: 'flock' | 'fcntl', file: string, waitOn = file): Promise<string> {
  fs.writeFileSync(file, 'x');
  const h = holder(`import fcntl,os,sys\nfd=os.open(sys.argv[1],os.O_RDWR)\n${TAKE[kind]}`, file);
  try {
    await h.locked;
    const waiter = spawn('python3', ['-c', alarmed(kind), waitOn], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    waiter.stdout!.on('data', (d) => (out += d));
    const exited = new Promise<void>((resolve) => waiter.on('exit', () => resolve()));
    await pollUntil(() => out.length > 0, 8000, 50); // a local disk: after 1 s
    const seen = out.trim() || 'still waiting after 8 s';
    await h.release(); // a waiter that ignored the alarm gets the lock now and exits
    await exited;
    return seen;
  } finally {
    await h.release();
  }
}

/** `where` says where the processes run, for test titles ('on two mounts'). */
export function lockSuite(test: TestFn, where: string, m: () => LockMounts): void {
  test.serial(`flock ${where}: a held lock is seen by the other process (LOCK_NB fails, a blocking flock waits until it is let go)`, async (t) => {
    fs.writeFileSync(path.join(m().A, 'flock.txt'), 'x');
    const h = holder(FLOCK_EX, path.join(m().A, 'flock.txt'));
    try {
      await h.locked;
      const busy = await py(TRY_FLOCK, path.join(m().B, 'flock.txt'));
      t.is(busy.out, 'busy 11', `B's LOCK_NB while A holds LOCK_EX: ${busy.out} ${busy.err}\n${m().logs()}`);
      // A blocking flock on B: still waiting while A holds the lock, granted once A releases it.
      const waiter = spawn('python3', ['-c', `${FLOCK_EX}\nprint("got", flush=True)`, path.join(m().B, 'flock.txt')], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      waiter.stdout!.on('data', (d) => (out += d));
      const done = new Promise<number | null>((resolve) => waiter.on('exit', resolve));
      t.false(await pollUntil(() => out.includes('got'), 1500, 50), 'B got the lock while A held it');
      await h.release();
      t.true(await pollUntil(() => out.includes('got'), 15_000, 50), `B's blocking flock was not granted after A released\n${m().logs()}`);
      t.is(await done, 0);
      const free = await py(TRY_FLOCK, path.join(m().A, 'flock.txt'));
      t.is(free.out, 'got', 'after both closed, the lock is free on A');
    } finally {
      await h.release();
    }
  });

  for (const kind of ['flock', 'fcntl'] as const) {
    test.serial(`${kind} ${where}: a signal (a 1 s alarm) ends a blocking wait with EINTR, as on a local disk`, async (t) => {
      const name = `alarmed-${kind}`;
      fs.writeFileSync(path.join(m().A, name), 'x');
      await pollUntil(() => fs.existsSync(path.join(m().B, name)), 5000, 50);
      const seen = await alarmedWait(kind, path.join(m().A, name), path.join(m().B, name));
      t.is(seen, 'timed out', `a 1 s alarm during a blocking ${kind} lock on B while A holds it\n${m().logs()}`);
    });
  }

  test.serial(`fcntl record locks ${where}: byte ranges, F_GETLK reports the other process's lock, close releases`, async (t) => {
    fs.writeFileSync(path.join(m().A, 'ranges.bin'), Buffer.alloc(100));
    const h = holder('import fcntl,os,sys\nfd=os.open(sys.argv[1],os.O_RDWR)\nfcntl.lockf(fd,fcntl.LOCK_EX,10,0)', path.join(m().A, 'ranges.bin'));
    try {
      await h.locked;
      const probe = await py(
        [
          'import fcntl,os,struct,sys',
          'fd=os.open(sys.argv[1],os.O_RDWR)',
          'def tryl(n,s):',
          '  try: fcntl.lockf(fd,fcntl.LOCK_EX|fcntl.LOCK_NB,n,s); return "got"',
          '  except OSError as e: return "busy%d" % e.errno',
          'r=fcntl.fcntl(fd,fcntl.F_GETLK,struct.pack("hhqqi",fcntl.F_RDLCK,0,0,0,0))',
          't_,w,st,ln,pid=struct.unpack("hhqqi",r)',
          'print(tryl(5,5), tryl(10,10), t_==fcntl.F_WRLCK, st, ln)',
        ].join('\n'),
        path.join(m().B, 'ranges.bin'),
      );
      t.is(probe.out, 'busy11 got True 0 10', `on B: overlapping lock, disjoint lock, F_GETLK: ${probe.out} ${probe.err}\n${m().logs()}`);
      await h.release(); // closing the file releases the process's locks
      const after = await py('import fcntl,os,sys\nfd=os.open(sys.argv[1],os.O_RDWR)\nfcntl.lockf(fd,fcntl.LOCK_EX|fcntl.LOCK_NB,0,0)\nprint("got")', path.join(m().B, 'ranges.bin'));
      t.is(after.out, 'got', `after A's process closed the file, B locks the whole file: ${after.err}`);
    } finally {
      await h.release();
    }
  });

  // Each process: N times take the lock, read the counter, write counter + 1, drop the lock. The
  // file is opened for each read and write, so close-to-open makes the other mount's value visible.
  const INCREMENT = [
    'import fcntl,os,sys',
    'kind,counter,lockfile,n=sys.argv[1],sys.argv[2],sys.argv[3],int(sys.argv[4])',
    'lfd=os.open(lockfile,os.O_RDWR|os.O_CREAT,0o644)',
    'for i in range(n):',
    '  if kind=="flock": fcntl.flock(lfd,fcntl.LOCK_EX)',
    '  else: fcntl.lockf(lfd,fcntl.LOCK_EX)',
    '  with open(counter) as f: v=int(f.read() or "0")',
    '  with open(counter,"w") as f: f.write(str(v+1))',
    '  if kind=="flock": fcntl.flock(lfd,fcntl.LOCK_UN)',
    '  else: fcntl.lockf(lfd,fcntl.LOCK_UN)',
  ].join('\n');

  for (const kind of ['flock', 'fcntl'] as const) {
    test.serial(`${kind}: four processes ${where} increment one counter under the lock and lose nothing`, async (t) => {
      t.timeout(240_000);
      const N = 40;
      fs.writeFileSync(path.join(m().A, `${kind}.count`), '0');
      fs.writeFileSync(path.join(m().A, `${kind}.lock`), '');
      const runs = [m().A, m().A, m().B, m().B].map((mnt) => run('python3', ['-c', INCREMENT, kind, path.join(mnt, `${kind}.count`), path.join(mnt, `${kind}.lock`), String(N)], { timeoutMs: 200_000 }));
      const results = await Promise.all(runs);
      for (const r of results) t.is(r.code, 0, `${r.stderr}\n${m().logs()}`);
      t.is(fs.readFileSync(path.join(m().A, `${kind}.count`), 'utf8'), String(4 * N), `increments lost\n${m().logs()}`);
    });
  }
}

// fcntl and flock locks on an embedded volume: the shared lock suite with every process on one
// mount. Locks go to the daemon (not the kernel) on every mount, so this checks the daemon's
// arbitration between processes of one mount.
import test from 'ava';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startVolume, Volume } from './_helpers/mount';
import { FLOCK_EX, holder, lockSuite } from './_suites/locks';
import { pollUntil, tail } from './_suites/multimount';

let vol: Volume;

test.before(async () => {
  vol = await startVolume({ backend: 'embedded' });
});

test.after.always(async () => {
  await vol?.stop();
});

lockSuite(test, 'on one mount', () => ({ A: vol.mnt, B: vol.mnt, logs: () => tail(vol.logs()) }));

// A blocking flock(2) interrupted by a signal: on a local disk the wait ends with EINTR (here: the
// alarm handler raises), which is how `flock -w`, Python's signal.alarm and Ctrl-C bound a wait.
const ALARMED_FLOCK = [
  'import fcntl,os,sys,signal',
  'def on_alarm(*a): raise TimeoutError()',
  'signal.signal(signal.SIGALRM,on_alarm)',
  'fd=os.open(sys.argv[1],os.O_RDWR)',
  'signal.alarm(1)',
  'try:',
  ' fcntl.flock(fd,fcntl.LOCK_EX); print("got", flush=True)',
  'except TimeoutError:',
  ' print("timed out", flush=True)',
].join('\n');

/** Holds an exclusive flock on `file` while a second process waits for it under a 1 s alarm. */
async function alarmedWait(file: string): Promise<string> {
  fs.writeFileSync(file, 'x');
  const h = holder(FLOCK_EX, file);
  try {
    await h.locked;
    const waiter = spawn('python3', ['-c', ALARMED_FLOCK, file], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    waiter.stdout!.on('data', (d) => (out += d));
    const exited = new Promise<void>((resolve) => waiter.on('exit', () => resolve()));
    await pollUntil(() => out.length > 0, 8000, 50);
    const seen = out.trim() || 'still waiting after 8 s';
    await h.release(); // a waiter that ignored the alarm gets the lock now and exits
    await exited;
    return seen;
  } finally {
    await h.release();
  }
}

test.serial('control: on a local disk an alarm ends a blocking flock wait', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvfs-flock-'));
  try {
    t.is(await alarmedWait(path.join(dir, 'lock')), 'timed out');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// Known limitation (README, "Locks hold across mounts"), kept as a failing test until fixed: the
// binding does not pass FUSE_INTERRUPT on, so the daemon never ends the wait and the process
// ignores the signal until the lock is granted. Fix: the binding's lock/flock wait must learn of
// the interrupt (libfuse's `intr` option signals the waiting thread) and lib/fs/locks.ts cancel it.
test.serial.failing('an alarm ends a blocking flock wait on kvfs, as on a local disk', async (t) => {
  t.is(await alarmedWait(path.join(vol.mnt, 'alarmed-flock')), 'timed out', tail(vol.logs()));
});

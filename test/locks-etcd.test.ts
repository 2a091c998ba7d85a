// fcntl and flock locks across mounts of one etcd + Redis volume (lib/fs/locks.ts): the shared
// lock suite on two mounts (what a process on mount A locks, a process on mount B sees, waits for,
// and gets once A lets go; a counter incremented under the lock from both loses nothing), plus
// the locks of a mount that died going with its session, and `--locks local`.
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { isMounted, kvfs, startVolume, Volume } from './_helpers/mount';
import { FLOCK_EX, holder, lockSuite, py, TRY_FLOCK } from './_suites/locks';
import { ExtraMount, extraMount, pollUntil, tail } from './_suites/multimount';

let vol: Volume;
let B: ExtraMount;
let A: string;

test.before(async () => {
  vol = await startVolume({ backend: 'etcd' });
  A = vol.mnt;
  B = await extraMount(vol, 'B');
});

test.after.always(async () => {
  await B?.stop();
  await vol?.stop();
});

function logs(): string {
  return `--- A ---\n${tail(vol.logs())}\n--- B ---\n${tail(B.daemon.log())}`;
}

lockSuite(test, 'on two mounts', () => ({ A, B: B.mnt, logs }));

test.serial('what a process wrote under a lock (no fsync, no close) is committed before another mount gets the lock', async (t) => {
  t.timeout(120_000);
  // The writer's mount commits on its own only every 60 s: only the lock handover can commit in time.
  const Wm = await extraMount(vol, 'Wl', ['--flush-interval', '60']);
  try {
    for (const kind of ['flock', 'fcntl'] as const) {
      const file = `handover-${kind}.txt`;
      fs.writeFileSync(path.join(A, file), 'old');
      const lock = kind === 'flock' ? 'fcntl.flock(fd,fcntl.LOCK_EX)' : 'fcntl.lockf(fd,fcntl.LOCK_EX)';
      const unlock = kind === 'flock' ? 'fcntl.flock(fd,fcntl.LOCK_UN)' : 'fcntl.lockf(fd,fcntl.LOCK_UN)';
      // Locks, writes, unlocks, and keeps the file open (no close: close would commit anyway).
      const w = holder(`import fcntl,os,sys\nfd=os.open(sys.argv[1],os.O_RDWR)\n${lock}\nos.pwrite(fd,b"new contents",0)\n${unlock}`, path.join(Wm.mnt, file));
      try {
        await w.locked;
        const read = await py(`import fcntl,os,sys\nfd=os.open(sys.argv[1],os.O_RDWR)\n${lock}\nprint(open(sys.argv[1]).read())`, path.join(B.mnt, file));
        t.is(read.out, 'new contents', `${kind}: B took the lock after the writer let go, and read ${JSON.stringify(read.out)} ${read.err}\n${tail(Wm.daemon.log())}`);
      } finally {
        await w.release();
      }
    }
  } finally {
    await Wm.stop();
  }
});

test.serial('the locks of a mount that dies go with its session', async (t) => {
  t.timeout(120_000);
  const C = await extraMount(vol, 'C', ['--session-ttl', '3']);
  try {
    fs.writeFileSync(path.join(A, 'dies.txt'), 'x');
    const h = holder(FLOCK_EX, path.join(C.mnt, 'dies.txt'));
    await h.locked;
    t.is((await py(TRY_FLOCK, path.join(A, 'dies.txt'))).out, 'busy 11', 'C holds the lock');
    await C.kill9();
    h.child.kill('SIGKILL');
    const freed = await pollUntil(async () => (await py(TRY_FLOCK, path.join(A, 'dies.txt'))).out === 'got', 20_000, 250);
    t.true(freed, `the dead mount's lock was still held 20 s after its daemon was killed (session TTL 3 s)\n${logs()}`);
  } finally {
    await C.stop();
  }
});

test.serial('--locks local: the kernel keeps each mount\'s locks to itself', async (t) => {
  const L = await extraMount(vol, 'L', ['--locks', 'local']);
  try {
    fs.writeFileSync(path.join(A, 'local.txt'), 'x');
    const h = holder(FLOCK_EX, path.join(L.mnt, 'local.txt'));
    try {
      await h.locked;
      t.is((await py(TRY_FLOCK, path.join(A, 'local.txt'))).out, 'got', 'A saw a lock taken through a --locks local mount');
      t.is((await py(TRY_FLOCK, path.join(L.mnt, 'local.txt'))).out, 'busy 11', 'on the same --locks local mount the lock holds');
    } finally {
      await h.release();
    }
  } finally {
    await L.stop();
  }
});

test.serial('a bad --locks value is refused with a one-line error', async (t) => {
  const dir = fs.mkdtempSync(path.join(vol.servers.dir, 'badlocks-'));
  const r = await kvfs(['mount', ...vol.mountArgsFor(['--locks', 'sometimes']), dir]);
  t.is(r.code, 1);
  t.regex(r.stderr.trim(), /^kvfs: --locks takes global or local, not 'sometimes'/);
  t.false(r.stderr.trim().includes('\n'), r.stderr);
  t.false(isMounted(dir));
});

// Backends that stop answering (issue 5): with `--backend-timeout 2`, a workload that writes and
// fsyncs files gets EIO or ETIMEDOUT within a bounded time while Redis or etcd is frozen (SIGSTOP)
// or Redis is killed and restarted; the daemon keeps running, the workload carries on once the
// server is back, and every file whose fsync returned reads back byte-exact from a fresh mount.
//
// Redis runs with `--appendonly yes --appendfsync always` (every acknowledged write is on disk), so
// that a kill -9 of Redis itself may not lose what kvfs was told is stored. The harness's servers
// cannot be restarted (stop() removes their directory), so Redis is started here.
import test, { ExecutionContext } from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { makeTempDir, pidAlive, removeTempDir, Servers, sleep, startVolume, Volume } from './_helpers/mount';
import { EtcdServer, startEtcd } from './_helpers/servers';
import {
  expectedFiles,
  fsck,
  JournalLine,
  pollUntil,
  readJournal,
  RestartableRedis,
  startRestartableRedis,
  startWorker,
  status,
  tail,
  verifyFiles,
} from './_suites/multimount';

const BOUND_MS = 15_000;

let etcd: EtcdServer;
let redis: RestartableRedis;
let servers: Servers;
let vol: Volume;
let scratch: string;

test.before(async () => {
  [etcd, redis] = await Promise.all([startEtcd(), startRestartableRedis()]);
  const dir = makeTempDir('kvfs-outage-');
  scratch = makeTempDir('kvfs-outage-journal-');
  const e = etcd;
  servers = {
    backend: 'etcd',
    etcd: e,
    dir,
    metaUrlFor: (v) => `etcd://${e.hostPort}/${v}`,
    dataUrl: redis.url,
    stop: async () => {
      await Promise.allSettled([e.stop(), redis.stop()]);
      removeTempDir(dir);
    },
  };
  vol = await startVolume({ backend: 'etcd', servers, mountArgs: ['--backend-timeout', '2'] });
});

test.after.always(async () => {
  redis?.resume();
  await etcd?.resume().catch(() => undefined);
  await vol?.stop();
  await servers?.stop();
  if (scratch) removeTempDir(scratch);
});

async function outage(
  t: ExecutionContext,
  label: string,
  seed: number,
  down: () => Promise<void> | void,
  up: () => Promise<void> | void,
  downMs: number,
): Promise<void> {
  t.timeout(180_000);
  const journal = path.join(scratch, `${label}.jsonl`);
  const worker = startWorker(vol.mnt, journal, { seed, prefix: label, pauseMs: 30 });
  const lines = () => readJournal(journal);
  const done = (from: number) => lines().filter((l) => l.op === 'done' && (l.t0 ?? 0) >= from).length;
  let downAt = 0;
  let upAt = 0;
  let isDown = false;
  try {
    const started = Date.now();
    t.true(await pollUntil(() => done(started) >= 5, 30_000, 100), `the workload made no progress before the outage\n${worker.stderr()}${tail(vol.logs())}`);
    downAt = Date.now();
    await down();
    isDown = true;
    await sleep(downMs);
    upAt = Date.now();
    await up();
    isDown = false;
    const progressed = await pollUntil(() => done(upAt) >= 8, 30_000, 100);
    t.true(progressed, `the workload did not carry on within 30 s after the server came back\n${tail(lines().map((l) => JSON.stringify(l)).join('\n'), 15)}\n${tail(vol.logs())}`);
  } finally {
    if (isDown) await up();
    worker.child.kill('SIGKILL');
    await worker.exited;
  }
  const all: JournalLine[] = lines();
  const errors = all.filter((l) => l.op === 'error');
  t.log(
    `${label}: ${all.filter((l) => l.op === 'done').length} files fsynced, ${errors.length} errors ` +
      `(${[...new Set(errors.map((e) => `${e.stage}:${e.code}`))].join(', ')}); down ${upAt - downAt} ms`,
  );

  // The application got an error, within the bound, after the server stopped answering.
  const duringOutage = errors.filter((e) => (e.t1 ?? 0) >= downAt && (e.t0 ?? 0) <= upAt);
  t.true(duringOutage.length > 0, `no operation failed while the server was down for ${upAt - downAt} ms (backend timeout 2 s)`);
  const first = duringOutage.reduce((a, b) => ((a.t1 ?? 0) <= (b.t1 ?? 0) ? a : b), duringOutage[0]);
  if (first) {
    t.log(`${label}: first error ${first.stage}:${first.code} ${(first.t1 ?? 0) - downAt} ms after the outage began`);
    t.true((first.t1 ?? 0) - downAt < BOUND_MS, `the first error came ${(first.t1 ?? 0) - downAt} ms after the outage began`);
  }
  const badCodes = errors.filter((e) => e.code !== 'EIO' && e.code !== 'ETIMEDOUT');
  t.deepEqual(badCodes, [], 'errors other than EIO/ETIMEDOUT');
  const slow = all.filter((l) => l.op !== 'intent' && (l.t1 ?? 0) - (l.t0 ?? 0) >= BOUND_MS);
  t.deepEqual(slow, [], `operations that took ${BOUND_MS} ms or more`);
  t.is(vol.daemon.exitStatus(), undefined, `the daemon exited\n${tail(vol.logs())}`);
  t.true(pidAlive(vol.pid));

  // Nothing fsynced is lost: check through a fresh mount (no block cache).
  await vol.remount();
  t.deepEqual(verifyFiles(vol.mnt, expectedFiles(all)), [], tail(vol.logs()));
}

test.serial('Redis frozen (SIGSTOP) for 4 s: EIO/ETIMEDOUT within the bound, then the workload carries on, nothing fsynced lost', async (t) => {
  await outage(t, 'redis-stop', 801, () => redis.pause(), () => redis.resume(), 4000);
});

test.serial('etcd frozen (SIGSTOP) for 4 s: EIO/ETIMEDOUT within the bound, then the workload carries on, nothing fsynced lost', async (t) => {
  await outage(t, 'etcd-stop', 802, () => etcd.pause(), () => etcd.resume(), 4000);
});

test.serial('Redis killed (-9) and restarted on the same port and directory mid-workload: nothing fsynced lost', async (t) => {
  await outage(t, 'redis-restart', 803, () => redis.kill('SIGKILL'), () => redis.start(), 3000);
  const s = await status(vol.metaUrl);
  t.falsy(s.warning, 'Redis runs with appendonly yes: no durability warning expected');
  // Everything written before and after the restart, all runs, still there.
  const all = ['redis-stop', 'etcd-stop', 'redis-restart'].flatMap((l) => readJournal(path.join(scratch, `${l}.jsonl`)));
  t.deepEqual(verifyFiles(vol.mnt, expectedFiles(all)), []);
  t.true(fs.existsSync(path.join(vol.mnt, 'redis-restart')));
  // The metadata is consistent after all three outages (skipped if this build has no `kvfs fsck`).
  const c = await fsck(vol.metaUrl);
  if (c === undefined) t.log('kvfs fsck is not available in this build');
  else t.true(c.clean, c.output);
});

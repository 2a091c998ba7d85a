// CLI lifecycle (shared with other backends through cliSuite) plus etcd/Redis-specific bad input:
// malformed URLs and unreachable servers must fail with exit 1 and one line on stderr within 30 s,
// leaving nothing mounted and no process behind.
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { kvfs, makeTempDir, removeTempDir, uniqueName } from './_helpers/mount';
import { freePort, startRedis } from './_helpers/servers';
import { assertCleanFailure, cliSuite } from './_suites/posix';

const cli = cliSuite(test, 'etcd');
const servers = { get current() { return cli.servers(); } };

function mountpoint(): { dir: string; mnt: string } {
  const dir = makeTempDir('kvfs-cli-etcd-');
  const mnt = path.join(dir, 'mnt');
  fs.mkdirSync(mnt, { mode: 0o755 });
  return { dir, mnt };
}

test('format with malformed meta URLs fails cleanly', async (t) => {
  const vol = uniqueName();
  for (const meta of ['not-a-url', `etcd//127.0.0.1/${vol}`, `http://${servers.current.etcd!.hostPort}/${vol}`, `etcd://${servers.current.etcd!.hostPort}`, `etcd://127.0.0.1:notaport/${vol}`]) {
    const r = await kvfs(['format', '--meta', meta, '--data', servers.current.dataUrl!], { timeoutMs: 20_000 });
    await assertCleanFailure(t, `format --meta ${meta}`, r, { tokens: [vol] });
  }
});

test('format with a malformed or unreachable data URL fails cleanly', async (t) => {
  const closed = await freePort();
  for (const data of ['not-a-url', 'redis//127.0.0.1:6379', `redis://127.0.0.1:${closed}`]) {
    const vol = uniqueName();
    const r = await kvfs(['format', '--meta', servers.current.metaUrlFor(vol), '--data', data], { timeoutMs: 20_000 });
    await assertCleanFailure(t, `format --data ${data}`, r, { tokens: [vol] });
  }
});

test('format and mount against an unreachable etcd (closed port) fail cleanly', async (t) => {
  const closed = await freePort();
  const vol = uniqueName();
  const meta = `etcd://127.0.0.1:${closed}/${vol}`;
  const f = await kvfs(['format', '--meta', meta, '--data', servers.current.dataUrl!], { timeoutMs: 20_000 });
  await assertCleanFailure(t, 'format with etcd down', f, { tokens: [vol] });
  const { dir, mnt } = mountpoint();
  const m = await kvfs(['mount', '--meta', meta, mnt], { timeoutMs: 20_000 });
  await assertCleanFailure(t, 'mount with etcd down', m, { mnt, tokens: [mnt, vol] });
  removeTempDir(dir);
});

test('mount with a malformed meta URL fails cleanly', async (t) => {
  const { dir, mnt } = mountpoint();
  for (const meta of ['garbage', 'redis://127.0.0.1:1/x', `etcd://${servers.current.etcd!.hostPort}`]) {
    const r = await kvfs(['mount', '--meta', meta, mnt], { timeoutMs: 20_000 });
    await assertCleanFailure(t, `mount --meta ${meta}`, r, { mnt, tokens: [mnt] });
  }
  removeTempDir(dir);
});

test("mount when the volume's Redis is down fails cleanly", async (t) => {
  // A volume formatted against a Redis that is gone afterwards: the data URL is unreachable.
  const vol = uniqueName();
  const redis = await startRedis();
  try {
    const f = await kvfs(['format', '--meta', servers.current.metaUrlFor(vol), '--data', redis.url]);
    t.is(f.code, 0, f.stderr);
  } finally {
    await redis.stop();
  }
  const { dir, mnt } = mountpoint();
  const r = await kvfs(['mount', '--meta', servers.current.metaUrlFor(vol), mnt], { timeoutMs: 20_000 });
  await assertCleanFailure(t, 'mount with redis down', r, { mnt, tokens: [mnt, vol] });
  removeTempDir(dir);
});

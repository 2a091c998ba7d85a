// `kvfs status` of an embedded volume: unmounted it opens the volume itself; mounted, the volume is
// held by the daemon and status must get the same answer from the daemon's control socket.
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { kvfs, makeTempDir, removeTempDir, spawnMount } from './_helpers/mount';

test('status of an embedded volume, unmounted and mounted, in a fresh KVFS_HOME', async (t) => {
  const dir = makeTempDir('kvfs-status-');
  const env = { ...process.env, KVFS_HOME: path.join(dir, 'home') };
  const mnt = path.join(dir, 'mnt');
  fs.mkdirSync(mnt);
  const meta = `file://${dir}/store/vol`;
  try {
    const f = await kvfs(['format', '--meta', meta], { env });
    t.is(f.code, 0, f.stderr);
    const daemon = spawnMount(['--meta', meta, mnt], { env });
    await daemon.ready;
    try {
      for (const name of ['a', 'b', 'c']) fs.writeFileSync(path.join(mnt, name), name.repeat(1000));
      fs.mkdirSync(path.join(mnt, 'd'));
      const r = await kvfs(['status', '--meta', meta, '--json'], { env });
      t.is(r.code, 0, r.stderr);
      const status = JSON.parse(r.stdout);
      t.is(status.settings.name, 'vol');
      t.is(status.usage.files, 3);
      t.is(status.usage.dirs, 2); // the root and d
      t.is(status.usage.bytes, 3000);
      t.is(status.sessions.length, 1);
      t.is(status.sessions[0].mountpoint, mnt);
      t.deepEqual(status.mounts.map((m: { pid: number }) => m.pid), [daemon.pid]);
    } finally {
      const u = await kvfs(['umount', mnt], { env });
      t.is(u.code, 0, u.stderr);
      await daemon.exited;
    }
    const r = await kvfs(['status', '--meta', meta, '--json'], { env });
    t.is(r.code, 0, r.stderr);
    const status = JSON.parse(r.stdout);
    t.is(status.usage.files, 3);
    t.is(status.sessions.length, 0, 'the session is gone after unmount');
  } finally {
    removeTempDir(dir);
  }
});

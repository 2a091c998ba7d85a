// `kvfs status` of an embedded volume: unmounted it opens the volume itself; mounted, the volume is
// held by the daemon and status must get the same answer from the daemon's control socket.
// A daemon killed with SIGKILL cannot remove its session; the next mount does.
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describeRun, kvfs, makeTempDir, removeTempDir, run, spawnMount } from './_helpers/mount';

/** A temp dir with a fresh KVFS_HOME, a mountpoint and the URL of an embedded volume in it. */
function scratch(): { dir: string; env: NodeJS.ProcessEnv; mnt: string; meta: string } {
  const dir = makeTempDir('kvfs-status-');
  const mnt = path.join(dir, 'mnt');
  fs.mkdirSync(mnt);
  return { dir, env: { ...process.env, KVFS_HOME: path.join(dir, 'home') }, mnt, meta: `file://${dir}/store/vol` };
}

test('status of an embedded volume, unmounted and mounted, in a fresh KVFS_HOME', async (t) => {
  const { dir, env, mnt, meta } = scratch();
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

test('a killed embedded daemon leaves no session behind: the next mount drops it', async (t) => {
  const { dir, env, mnt, meta } = scratch();
  try {
    t.is((await kvfs(['format', '--meta', meta], { env })).code, 0);
    const first = spawnMount(['--meta', meta, mnt], { env });
    await first.ready;
    fs.writeFileSync(path.join(mnt, 'a'), 'a');
    first.child.kill('SIGKILL');
    await first.exited;
    // The dead mount: detach it, as an administrator would.
    const lazy = await run('umount', ['-l', mnt]);
    t.is(lazy.code, 0, describeRun('umount -l', lazy));
    const dead = await kvfs(['status', '--meta', meta, '--json'], { env });
    t.is(dead.code, 0, dead.stderr);
    t.is(JSON.parse(dead.stdout).sessions.length, 1, 'the killed daemon could not remove its session');

    const second = spawnMount(['--meta', meta, mnt], { env });
    await second.ready;
    try {
      const r = await kvfs(['status', '--meta', meta, '--json'], { env });
      t.is(r.code, 0, r.stderr);
      const status = JSON.parse(r.stdout);
      t.deepEqual(status.sessions.map((s: { pid: number }) => s.pid), [second.pid], 'only the live mount is listed');
    } finally {
      const u = await kvfs(['umount', mnt], { env });
      t.is(u.code, 0, u.stderr);
      await second.exited;
    }
    const after = await kvfs(['status', '--meta', meta, '--json'], { env });
    t.is(JSON.parse(after.stdout).sessions.length, 0);
  } finally {
    removeTempDir(dir);
  }
});

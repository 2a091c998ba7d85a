// What `docker run -v /mnt/kvfs/app:/data ...` does to a kvfs mount, reproduced with the kernel's
// own tools (there is no Docker engine on these machines):
//
//   container   = a new mount namespace (`unshare --mount --propagation private`) in which a temp
//                 "rootfs" gets /usr and /etc bound read-only, /dev, a fresh /proc and /tmp, and the
//                 volume's directories bound to their container paths (`mount --bind`, as Docker's
//                 `-v SRC:DST`); its process is `chroot ROOTFS sleep infinity`.
//   docker exec = `nsenter --target PID --mount --root --wd`, optionally through
//                 `setpriv --reuid U --regid U --clear-groups` (as `docker run --user U:U`).
//
// The namespace, and every mount in it, dies with its one process (stop() SIGKILLs it). Nothing it
// mounts propagates back to the host namespace (private propagation), so /proc/mounts of the host
// only ever shows the kvfs mounts the harness makes.
//
// See examples/docker/README.md for the story these tests back up.
import test, { ExecutionContext } from 'ava';
import { spawn, ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  CLI,
  describeRun,
  isMounted,
  kvfs,
  makeTempDir,
  mountEntry,
  ROOT,
  pidAlive,
  procMounts,
  removeTempDir,
  run,
  RunResult,
  Servers,
  sleep,
  startServers,
  startVolume,
  uniqueName,
  Volume,
} from './_helpers/mount';
import { codeOf, lstat, NOBODY } from './_helpers/ops';

// ---------------------------------------------------------------------------------------------
// A container-like process: a private mount namespace, a chroot, bind mounts

interface Bind {
  /** Host path (for kvfs: a directory inside the mount). */
  source: string;
  /** Absolute path inside the container. */
  target: string;
  readOnly?: boolean;
}

type NodeResult = { ok: true; value: unknown } | { ok: false; code: string };

interface Container {
  pid: number;
  root: string;
  /** `docker exec [--user uid:uid] CONTAINER argv...` */
  exec(argv: string[], opts?: { uid?: number; timeoutMs?: number }): Promise<RunResult>;
  /** Run a JS function body (gets fs, path, arg; may return JSON) with node inside the container. */
  node(uid: number, body: string, arg?: unknown): Promise<NodeResult>;
  /** The container's own /proc/self/mounts (paths as the container sees them). */
  mounts(): Promise<{ target: string; fstype: string; options: string[] }[]>;
  /** SIGKILL the container process: the namespace and its mounts go with it. Idempotent. */
  stop(): Promise<void>;
}

// Host processes this file started; killed on exit whatever happens.
const containerPids = new Set<number>();
process.once('exit', () => {
  for (const pid of containerPids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
});

const SETUP = `
set -eu
root=$1; shift
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
while [ $# -gt 0 ]; do
  mount --bind "$1" "$root$2"
  if [ "$3" = ro ]; then mount -o remount,bind,ro "$root$2"; fi
  shift 3
done
echo ready
exec chroot "$root" sleep infinity
`;

// node inside the container: /usr is bound, so a node under /usr is there at the same path.
const NODE_IN_CONTAINER = process.execPath.startsWith('/usr/') ? process.execPath : '/usr/bin/node';

async function startContainer(t: ExecutionContext, binds: Bind[]): Promise<Container> {
  const root = makeTempDir('kvfs-ctr-');
  const all: Bind[] = [
    { source: '/usr', target: '/usr', readOnly: true },
    { source: '/etc', target: '/etc', readOnly: true },
  ];
  for (const d of ['dev', 'proc', 'tmp']) fs.mkdirSync(path.join(root, d));
  // /bin, /lib, ...: symlinks into /usr on merged-/usr systems (as here), else bound read-only.
  for (const name of ['bin', 'sbin', 'lib', 'lib32', 'lib64', 'libx32']) {
    let st: fs.Stats;
    try {
      st = fs.lstatSync(`/${name}`);
    } catch {
      continue;
    }
    if (st.isSymbolicLink()) fs.symlinkSync(fs.readlinkSync(`/${name}`), path.join(root, name));
    else if (st.isDirectory()) all.push({ source: `/${name}`, target: `/${name}`, readOnly: true });
  }
  all.push(...binds);
  for (const b of all) fs.mkdirSync(path.join(root, b.target), { recursive: true });

  const args = ['--mount', '--propagation', 'private', 'sh', '-c', SETUP, 'container', root];
  for (const b of all) args.push(b.source, b.target, b.readOnly ? 'ro' : 'rw');
  const child: ChildProcess = spawn('unshare', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const pid = child.pid!;
  containerPids.add(pid);
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<void>((resolve) => child.on('close', () => resolve()));
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    await exited;
    containerPids.delete(pid);
    removeTempDir(root);
  };
  t.teardown(stop);

  const deadline = Date.now() + 15_000;
  while (!out.includes('ready\n')) {
    if (child.exitCode !== null || child.signalCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`the container did not start\n--- stdout ---\n${out}\n--- stderr ---\n${err}`);
    }
    await sleep(20);
  }
  // `exec chroot ... sleep` keeps the pid; wait until it is sleep inside the chroot
  while (fs.readlinkSync(`/proc/${pid}/root`) !== root) {
    if (Date.now() > deadline) throw new Error(`container process ${pid} never entered its root ${root}`);
    await sleep(20);
  }

  const exec = (argv: string[], opts: { uid?: number; timeoutMs?: number } = {}) => {
    const user = opts.uid === undefined ? [] : ['setpriv', '--reuid', String(opts.uid), '--regid', String(opts.uid), '--clear-groups'];
    return run('nsenter', ['--target', String(pid), '--mount', '--root', '--wd', ...user, ...argv], {
      timeoutMs: opts.timeoutMs ?? 60_000,
      env: { PATH: '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin', LC_ALL: 'C', HOME: '/tmp' },
    });
  };
  return {
    pid,
    root,
    exec,
    node: async (uid, body, arg = null) => {
      const script =
        `const fs=require('fs'),path=require('path');const arg=JSON.parse(process.argv[1]);` +
        `let out;try{const value=(function(){${body}\n})();out={ok:true,value:value===undefined?null:value}}` +
        `catch(e){if(typeof e.code!=='string'){console.error(e&&e.stack||e);process.exit(3)}out={ok:false,code:e.code}}` +
        `process.stdout.write(JSON.stringify(out))`;
      const r = await exec([NODE_IN_CONTAINER, '-e', script, JSON.stringify(arg)], { uid });
      if (r.code !== 0) throw new Error(describeRun(`node in the container as uid ${uid}`, r));
      return JSON.parse(r.stdout) as NodeResult;
    },
    mounts: async () => {
      const r = await exec(['cat', '/proc/self/mounts']);
      if (r.code !== 0) throw new Error(describeRun('cat /proc/self/mounts in the container', r));
      return r.stdout
        .split('\n')
        .filter(Boolean)
        .map((l) => {
          const [, target, fstype, options] = l.split(' ');
          return { target, fstype, options: options.split(',') };
        });
    },
    stop,
  };
}

/** Nothing of this test (its volume mount, its containers' roots) may be left in /proc/mounts. */
function assertNothingMounted(t: ExecutionContext, paths: string[]): void {
  const left = procMounts().filter((m) => paths.some((p) => m.target === p || m.target.startsWith(p + '/')));
  t.deepEqual(left.map((m) => `${m.target} (${m.fstype})`), [], 'mounts left behind');
}

// The body each "containerised" process runs: every step's result, by name.
const STEPS = `
const out = {};
const step = (name, fn) => { try { const v = fn(); out[name] = v === undefined ? 'OK' : v; } catch (e) { out[name] = e.code || String(e); } };
for (const [name, code] of arg) step(name, new Function('fs', 'path', code).bind(null, fs, path));
return out;
`;
function steps(list: Record<string, string>): [string, string][] {
  return Object.entries(list);
}

// ---------------------------------------------------------------------------------------------

let servers: Servers | undefined;
test.before(async () => {
  servers = await startServers('etcd');
});
test.after.always(async () => {
  await servers?.stop();
});

async function volume(t: ExecutionContext, mountArgs: string[] = []): Promise<Volume> {
  const vol = await startVolume({ backend: 'etcd', servers: servers!, mountArgs });
  t.teardown(() => vol.stop());
  return vol;
}

test.serial('a bind mount of a kvfs directory in a container: root and an unprivileged user, permissions enforced', async (t) => {
  const vol = await volume(t);
  const app = path.join(vol.mnt, 'app');
  // Prepared on the host as root, the way an operator prepares a volume for a container.
  fs.mkdirSync(app, { mode: 0o755 });
  fs.mkdirSync(path.join(app, 'own'), { mode: 0o755 });
  fs.chownSync(path.join(app, 'own'), NOBODY, NOBODY);
  fs.mkdirSync(path.join(app, 'shared'));
  fs.chmodSync(path.join(app, 'shared'), 0o777);
  fs.mkdirSync(path.join(app, 'rootonly'), { mode: 0o755 });
  fs.writeFileSync(path.join(app, 'rootonly', 'readme.txt'), 'written by root on the host\n', { mode: 0o644 });

  const ctr = await startContainer(t, [{ source: app, target: '/data' }]);
  const data = (await ctr.mounts()).find((m) => m.target === '/data');
  t.is(data?.fstype, 'fuse.kvfs', 'the container sees /data as the kvfs filesystem');
  t.true(data?.options.includes('rw'));
  t.true(data?.options.includes('allow_other'), 'root mounts with allow_other by default');

  // docker run --user 65534:65534 ...
  const asNobody = await ctr.node(
    NOBODY,
    STEPS,
    steps({
      whoami: `return [process.getuid(), process.getgid(), process.getgroups()]`,
      readRootFile: `return fs.readFileSync('/data/rootonly/readme.txt', 'utf8')`,
      listRoot: `return fs.readdirSync('/data').sort()`,
      writeOwn: `fs.writeFileSync('/data/own/a.txt', 'first version\\n')`,
      appendOwn: `fs.appendFileSync('/data/own/a.txt', 'appended\\n')`,
      renameOwn: `fs.renameSync('/data/own/a.txt', '/data/own/b.txt')`,
      readOwn: `return fs.readFileSync('/data/own/b.txt', 'utf8')`,
      mkdirOwn: `fs.mkdirSync('/data/own/sub'); fs.writeFileSync('/data/own/sub/c.bin', Buffer.alloc(3 << 20, 7))`,
      renameDir: `fs.renameSync('/data/own/sub', '/data/own/sub2')`,
      listOwn: `return fs.readdirSync('/data/own').sort()`,
      replaceAtomically: `fs.writeFileSync('/data/own/.b.tmp', 'replaced\\n'); fs.renameSync('/data/own/.b.tmp', '/data/own/b.txt')`,
      writeShared: `fs.writeFileSync('/data/shared/s.txt', 'in a 0777 directory\\n')`,
      moveOwnToShared: `fs.renameSync('/data/own/sub2/c.bin', '/data/shared/c.bin')`,
      createInRootDir: `fs.writeFileSync('/data/rootonly/x', 'no')`,
      createInMountRoot: `fs.writeFileSync('/data/newfile', 'no')`,
      mkdirInRootDir: `fs.mkdirSync('/data/rootonly/d')`,
      writeRootFile: `fs.appendFileSync('/data/rootonly/readme.txt', 'no')`,
      unlinkRootFile: `fs.unlinkSync('/data/rootonly/readme.txt')`,
      renameIntoRootDir: `fs.renameSync('/data/own/b.txt', '/data/rootonly/b.txt')`,
      renameOutOfRootDir: `fs.renameSync('/data/rootonly/readme.txt', '/data/own/readme.txt')`,
      chmodRootFile: `fs.chmodSync('/data/rootonly/readme.txt', 0o666)`,
    }),
  );
  t.true(asNobody.ok, JSON.stringify(asNobody));
  t.deepEqual((asNobody as { value: unknown }).value, {
    whoami: [NOBODY, NOBODY, [NOBODY]], // Node's getgroups() adds the effective gid
    readRootFile: 'written by root on the host\n',
    listRoot: ['own', 'rootonly', 'shared'],
    writeOwn: 'OK',
    appendOwn: 'OK',
    renameOwn: 'OK',
    readOwn: 'first version\nappended\n',
    mkdirOwn: 'OK',
    renameDir: 'OK',
    listOwn: ['b.txt', 'sub2'],
    replaceAtomically: 'OK',
    writeShared: 'OK',
    moveOwnToShared: 'OK',
    createInRootDir: 'EACCES',
    createInMountRoot: 'EACCES',
    mkdirInRootDir: 'EACCES',
    writeRootFile: 'EACCES',
    unlinkRootFile: 'EACCES',
    renameIntoRootDir: 'EACCES',
    renameOutOfRootDir: 'EACCES',
    chmodRootFile: 'EPERM',
  });

  // docker run ... (as root, the default)
  const asRoot = await ctr.node(
    0,
    STEPS,
    steps({
      writeRootDir: `fs.writeFileSync('/data/rootonly/by-root.txt', 'root in the container\\n')`,
      readNobodysFile: `return fs.readFileSync('/data/own/b.txt', 'utf8')`,
      chown: `fs.chownSync('/data/shared/s.txt', 1000, 1000)`,
    }),
  );
  t.deepEqual(asRoot, { ok: true, value: { writeRootDir: 'OK', readNobodysFile: 'replaced\n', chown: 'OK' } });

  // Shell tools as the unprivileged user, too (what most container entrypoints are made of).
  const sh = await ctr.exec(
    ['sh', '-c', 'set -e; cd /data/own; echo one > t1; mv t1 t2; cat t2; ls; if echo x > /data/rootonly/y 2>/dev/null; then echo WROTE; fi'],
    { uid: NOBODY },
  );
  t.is(sh.code, 0, describeRun('shell in the container', sh));
  t.is(sh.stdout, 'one\nb.txt\nsub2\nt2\n');

  // From the host, through the kvfs mount itself.
  await ctr.stop();
  const own = path.join(app, 'own');
  t.deepEqual(fs.readdirSync(own).sort(), ['b.txt', 'sub2', 't2']);
  t.is(fs.readFileSync(path.join(own, 'b.txt'), 'utf8'), 'replaced\n');
  t.deepEqual(fs.readdirSync(path.join(own, 'sub2')), []);
  t.deepEqual(fs.readFileSync(path.join(app, 'shared', 'c.bin')), Buffer.alloc(3 << 20, 7));
  t.is(fs.readFileSync(path.join(app, 'shared', 's.txt'), 'utf8'), 'in a 0777 directory\n');
  for (const p of ['own/b.txt', 'own/sub2', 'own/t2', 'shared/c.bin']) {
    const st = lstat(path.join(app, p));
    t.deepEqual([p, st.uid, st.gid], [p, BigInt(NOBODY), BigInt(NOBODY)], `${p} is owned by the container's user`);
  }
  t.is(Number(lstat(path.join(own, 'b.txt')).mode & 0o7777n), 0o644, 'umask 022 applied to the new file');
  t.is(Number(lstat(path.join(app, 'shared', 's.txt')).uid), 1000, "root's chown in the container");
  const byRoot = lstat(path.join(app, 'rootonly', 'by-root.txt'));
  t.deepEqual([byRoot.uid, byRoot.gid], [0n, 0n]);
  t.deepEqual(fs.readdirSync(path.join(app, 'rootonly')).sort(), ['by-root.txt', 'readme.txt']);
  t.is(fs.readFileSync(path.join(app, 'rootonly', 'readme.txt'), 'utf8'), 'written by root on the host\n');
  t.is(Number(lstat(path.join(app, 'rootonly', 'readme.txt')).mode & 0o7777n), 0o644);
  t.deepEqual(fs.readdirSync(app).sort(), ['own', 'rootonly', 'shared']);

  await vol.stop();
  assertNothingMounted(t, [vol.mnt, ctr.root]);
});

test.serial('a bind mount of a volume mounted with --read-only refuses every change with EROFS, reads work', async (t) => {
  const vol = await volume(t);
  const app = path.join(vol.mnt, 'app');
  fs.mkdirSync(app);
  fs.chmodSync(app, 0o777); // so that the only reason to refuse a write is the read-only mount
  fs.writeFileSync(path.join(app, 'hello.txt'), 'hello from the host\n');
  fs.chmodSync(path.join(app, 'hello.txt'), 0o666);
  fs.mkdirSync(path.join(app, 'dir'));
  await vol.remount(['--read-only']);
  t.true(vol.daemon.args.includes('--read-only'));
  t.true(procMounts().find((m) => m.target === vol.mnt)!.options.includes('ro'));

  const ctr = await startContainer(t, [{ source: app, target: '/data' }]);
  const data = (await ctr.mounts()).find((m) => m.target === '/data');
  t.is(data?.fstype, 'fuse.kvfs');
  t.true(data?.options.includes('ro'), `the bind mount inherits ro: ${data?.options.join(',')}`);

  const expected = {
    read: 'hello from the host\n',
    list: ['dir', 'hello.txt'],
    stat: 20,
    writeExisting: 'EROFS',
    openForWrite: 'EROFS',
    create: 'EROFS',
    mkdir: 'EROFS',
    rename: 'EROFS',
    unlink: 'EROFS',
    rmdir: 'EROFS',
    truncate: 'EROFS',
    symlink: 'EROFS',
    utimes: 'EROFS',
    chmod: 'EROFS',
  };
  const ops = steps({
    read: `return fs.readFileSync('/data/hello.txt', 'utf8')`,
    list: `return fs.readdirSync('/data').sort()`,
    stat: `return fs.statSync('/data/hello.txt').size`,
    writeExisting: `fs.appendFileSync('/data/hello.txt', 'more')`,
    openForWrite: `fs.closeSync(fs.openSync('/data/hello.txt', 'r+'))`,
    create: `fs.writeFileSync('/data/new.txt', 'x')`,
    mkdir: `fs.mkdirSync('/data/newdir')`,
    rename: `fs.renameSync('/data/hello.txt', '/data/bye.txt')`,
    unlink: `fs.unlinkSync('/data/hello.txt')`,
    rmdir: `fs.rmdirSync('/data/dir')`,
    truncate: `fs.truncateSync('/data/hello.txt', 0)`,
    symlink: `fs.symlinkSync('hello.txt', '/data/link')`,
    utimes: `fs.utimesSync('/data/hello.txt', 1, 1)`,
    chmod: `fs.chmodSync('/data/hello.txt', 0o600)`,
  });
  t.deepEqual(await ctr.node(NOBODY, STEPS, ops), { ok: true, value: expected }, 'as uid 65534 (the read-only check comes before the owner check)');
  t.deepEqual(await ctr.node(0, STEPS, ops), { ok: true, value: expected }, 'as root');

  await ctr.stop();
  t.is(fs.readFileSync(path.join(app, 'hello.txt'), 'utf8'), 'hello from the host\n');
  t.deepEqual(fs.readdirSync(app).sort(), ['dir', 'hello.txt']);
  await vol.stop();
  assertNothingMounted(t, [vol.mnt, ctr.root]);
});

test.serial('the kvfs daemon killed under a bind mount: ENOTCONN, then remount kvfs and restart the container', async (t) => {
  const vol = await volume(t);
  const app = path.join(vol.mnt, 'app');
  fs.mkdirSync(app);
  fs.chownSync(app, NOBODY, NOBODY);

  const ctr1 = await startContainer(t, [{ source: app, target: '/data' }]);
  // Committed by close() in the container, and by fsync() on the host with the file still open.
  t.deepEqual(
    await ctr1.node(NOBODY, `fs.writeFileSync('/data/closed.txt', 'closed before the crash\\n'); return fs.readdirSync('/data')`),
    { ok: true, value: ['closed.txt'] },
  );
  const fd = fs.openSync(path.join(app, 'fsynced.bin'), 'w');
  const payload = Buffer.alloc(2 * 1024 * 1024 + 123, 0x5a);
  fs.writeSync(fd, payload);
  fs.fsyncSync(fd);

  // The crash: SIGKILL, no chance to commit or unmount.
  const daemon = vol.daemon;
  process.kill(daemon.pid, 'SIGKILL');
  t.like(await daemon.exited, { signal: 'SIGKILL' });

  // Everything that still points at the old FUSE connection fails with ENOTCONN.
  t.is(codeOf(() => fs.closeSync(fd)), 'ENOTCONN', 'the host file handle');
  t.is(codeOf(() => fs.statSync(vol.mnt)), 'ENOTCONN', 'the host mountpoint');
  t.true(isMounted(vol.mnt), 'the dead mount stays in /proc/mounts until it is unmounted');
  t.deepEqual(
    await ctr1.node(NOBODY, STEPS, steps({ stat: `fs.statSync('/data')`, read: `fs.readFileSync('/data/closed.txt')`, write: `fs.writeFileSync('/data/new', 'x')` })),
    { ok: true, value: { stat: 'ENOTCONN', read: 'ENOTCONN', write: 'ENOTCONN' } },
  );
  const ls = await ctr1.exec(['ls', '/data'], { uid: NOBODY });
  t.not(ls.code, 0);
  t.regex(ls.stderr, /Transport endpoint is not connected/);

  // Mounting over the dead mount is refused with the fix in the message.
  const over = await kvfs(['mount', ...vol.mountArgsFor(), vol.mnt], { timeoutMs: 20_000 });
  t.is(over.code, 1, describeRun('kvfs mount over a dead mount', over));
  t.regex(over.stderr, /umount -l/);

  // Recovery, step 1: detach the dead mount and mount kvfs again.
  const lazy = await run('umount', ['-l', vol.mnt]);
  t.is(lazy.code, 0, describeRun('umount -l', lazy));
  t.false(isMounted(vol.mnt));
  await vol.remount();
  t.is(fs.readFileSync(path.join(app, 'closed.txt'), 'utf8'), 'closed before the crash\n');
  t.deepEqual(fs.readFileSync(path.join(app, 'fsynced.bin')), payload);

  // The running container's bind mount still points at the dead connection: a remount on the
  // host does not reach it.
  t.deepEqual(await ctr1.node(NOBODY, STEPS, steps({ stat: `fs.statSync('/data')` })), { ok: true, value: { stat: 'ENOTCONN' } });

  // Recovery, step 2: restart the container (a new bind mount of the new kvfs mount).
  await ctr1.stop();
  const ctr2 = await startContainer(t, [{ source: app, target: '/data' }]);
  t.deepEqual(
    await ctr2.node(
      NOBODY,
      STEPS,
      steps({
        list: `return fs.readdirSync('/data').sort()`,
        closed: `return fs.readFileSync('/data/closed.txt', 'utf8')`,
        fsynced: `return fs.statSync('/data/fsynced.bin').size`,
        write: `fs.writeFileSync('/data/after.txt', 'after the restart\\n')`,
        rename: `fs.renameSync('/data/closed.txt', '/data/closed-renamed.txt')`,
      }),
    ),
    {
      ok: true,
      value: { list: ['closed.txt', 'fsynced.bin'], closed: 'closed before the crash\n', fsynced: payload.length, write: 'OK', rename: 'OK' },
    },
  );
  await ctr2.stop();
  t.deepEqual(fs.readdirSync(app).sort(), ['after.txt', 'closed-renamed.txt', 'fsynced.bin']);
  t.is(fs.readFileSync(path.join(app, 'after.txt'), 'utf8'), 'after the restart\n');
  t.is(Number(lstat(path.join(app, 'after.txt')).uid), NOBODY);

  await vol.stop();
  t.false(pidAlive(daemon.pid));
  t.false(pidAlive(ctr1.pid) || pidAlive(ctr2.pid));
  assertNothingMounted(t, [vol.mnt, ctr1.root, ctr2.root]);
});

test.serial('--no-allow-other: only root in a container may use the bind mount; kvfs umount leaves it ENOTCONN', async (t) => {
  const vol = await volume(t, ['--no-allow-other']);
  const app = path.join(vol.mnt, 'app');
  fs.mkdirSync(app);
  fs.chmodSync(app, 0o777);
  fs.writeFileSync(path.join(app, 'f.txt'), 'x');
  const ctr = await startContainer(t, [{ source: app, target: '/data' }]);
  t.false((await ctr.mounts()).find((m) => m.target === '/data')!.options.includes('allow_other'));
  const ops = steps({ stat: `fs.statSync('/data')`, read: `return fs.readFileSync('/data/f.txt', 'utf8')`, write: `fs.writeFileSync('/data/g.txt', 'y')` });
  t.deepEqual(await ctr.node(NOBODY, STEPS, ops), { ok: true, value: { stat: 'EACCES', read: 'EACCES', write: 'EACCES' } }, 'uid 65534');
  t.deepEqual(await ctr.node(0, STEPS, ops), { ok: true, value: { stat: 'OK', read: 'x', write: 'OK' } }, 'root');

  // A clean unmount on the host while the container still has its bind mount: the unmount
  // succeeds, the daemon exits 0 after committing, and the container's bind mount is dead.
  const daemon = vol.daemon;
  await vol.unmount();
  t.like(daemon.exitStatus(), { code: 0 });
  t.deepEqual(await ctr.node(0, STEPS, steps({ stat: `fs.statSync('/data')` })), { ok: true, value: { stat: 'ENOTCONN' } });
  await vol.remount([]);
  t.is(fs.readFileSync(path.join(app, 'g.txt'), 'utf8'), 'y', 'committed by the clean unmount');
  await ctr.stop();
  await vol.stop();
  assertNothingMounted(t, [vol.mnt, ctr.root]);
});

// ---------------------------------------------------------------------------------------------
// kvfs itself in a container: the daemon runs in its own mount namespace and mounts below a
// directory that is a shared mount on the host (docker run -v /mnt/kvfs:/mnt/kvfs:rshared), through
// examples/docker/kvfs-entrypoint.sh (the image's entrypoint).

const ENTRYPOINT = path.join(ROOT, 'examples', 'docker', 'kvfs-entrypoint.sh');

/** A directory with `kvfs` (this checkout's CLI) in it, for PATH: the image has it in /usr/local/bin. */
function kvfsOnPath(): string {
  const dir = makeTempDir('kvfs-bin-');
  fs.writeFileSync(path.join(dir, 'kvfs'), `#!/bin/sh\nexec '${process.execPath}' '${CLI}' "$@"\n`, { mode: 0o755 });
  return dir;
}

interface KvfsContainer {
  pid: number;
  output(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * `docker run kvfs:local mount ...`: the entrypoint in a new mount namespace that keeps the host's
 * propagation (so the shared directory stays a peer of the host's). Resolves once mounted.
 */
async function startKvfsContainer(t: ExecutionContext, binDir: string, args: string[]): Promise<KvfsContainer> {
  const child = spawn('unshare', ['--mount', '--propagation', 'unchanged', 'sh', ENTRYPOINT, ...args], {
    cwd: '/',
    env: { ...process.env, PATH: `${binDir}:${process.env.PATH}`, KVFS_HOME: path.join(binDir, 'home') },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const pid = child.pid!;
  containerPids.add(pid);
  let log = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (log += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (log += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('close', (code, signal) => {
      containerPids.delete(pid);
      resolve({ code, signal });
    }),
  );
  t.teardown(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    const done = await Promise.race([exited.then(() => true), new Promise<boolean>((r) => (timer = setTimeout(() => r(false), 15_000)))]);
    clearTimeout(timer);
    if (!done) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  const deadline = Date.now() + 20_000;
  while (!/^kvfs: mounted /m.test(log)) {
    if (child.exitCode !== null || child.signalCode !== null || Date.now() > deadline)
      throw new Error(`the kvfs container did not mount\n${log}`);
    await sleep(50);
  }
  return { pid, output: () => log, exited };
}

test.serial('kvfs in a container with rshared propagation: the host and app containers see its mount; after a crash the entrypoint recovers', async (t) => {
  const s = servers!;
  const name = uniqueName();
  const meta = s.metaUrlFor(name);
  const f = await kvfs(['format', '--meta', meta, '--data', s.dataUrl!]);
  t.is(f.code, 0, describeRun('kvfs format', f));
  const binDir = kvfsOnPath();
  t.teardown(() => removeTempDir(binDir));

  // The host directory, a shared mount of its own (as `mount --make-rshared` in the README).
  const shared = makeTempDir('kvfs-shared-');
  t.teardown(() => removeTempDir(shared)); // lazily unmounts everything under it, itself included
  for (const args of [['--bind', shared, shared], ['--make-rshared', shared]]) {
    const r = await run('mount', args);
    t.is(r.code, 0, describeRun(`mount ${args.join(' ')}`, r));
  }
  const mnt = path.join(shared, 'vol1');
  fs.mkdirSync(mnt);

  const kvfs1 = await startKvfsContainer(t, binDir, ['mount', '--meta', meta, mnt]);
  t.is(mountEntry(mnt)?.fstype, 'fuse.kvfs', 'the mount made in the kvfs container propagated to the host');
  const app = path.join(mnt, 'app');
  fs.mkdirSync(app);
  fs.chownSync(app, NOBODY, NOBODY);
  const ctr1 = await startContainer(t, [{ source: app, target: '/data' }]);
  t.deepEqual(await ctr1.node(NOBODY, `fs.writeFileSync('/data/one.txt', 'before the crash\\n'); return fs.readdirSync('/data')`), {
    ok: true,
    value: ['one.txt'],
  });

  // The kvfs container is killed: the host is left with a dead mount, the app with a dead bind.
  process.kill(kvfs1.pid, 'SIGKILL');
  t.like(await kvfs1.exited, { signal: 'SIGKILL' });
  t.is(codeOf(() => fs.statSync(mnt)), 'ENOTCONN');
  t.deepEqual(await ctr1.node(NOBODY, STEPS, steps({ stat: `fs.statSync('/data')` })), { ok: true, value: { stat: 'ENOTCONN' } });

  // The kvfs container restarts: the entrypoint detaches the dead mount (on the host too, through
  // propagation) and mounts again.
  const kvfs2 = await startKvfsContainer(t, binDir, ['mount', '--meta', meta, mnt]);
  t.regex(kvfs2.output(), /is a dead kvfs mount .*umount -l/);
  t.deepEqual(
    procMounts().filter((m) => m.target === mnt).map((m) => m.fstype),
    ['fuse.kvfs'],
    'exactly one kvfs mount on the host: the dead one is gone',
  );
  t.is(fs.readFileSync(path.join(app, 'one.txt'), 'utf8'), 'before the crash\n');
  t.deepEqual(await ctr1.node(NOBODY, STEPS, steps({ stat: `fs.statSync('/data')` })), { ok: true, value: { stat: 'ENOTCONN' } }, 'the old app container stays dead');
  await ctr1.stop();
  const ctr2 = await startContainer(t, [{ source: app, target: '/data' }]);
  t.deepEqual(await ctr2.node(NOBODY, `fs.writeFileSync('/data/two.txt', 'after\\n'); return fs.readdirSync('/data').sort()`), {
    ok: true,
    value: ['one.txt', 'two.txt'],
  });
  await ctr2.stop();

  // docker stop: SIGTERM; kvfs commits, unmounts, and the unmount reaches the host.
  process.kill(kvfs2.pid, 'SIGTERM');
  t.like(await kvfs2.exited, { code: 0 }, kvfs2.output());
  t.false(isMounted(mnt), 'the unmount in the kvfs container propagated to the host');

  // The data is in the volume: mount it on the host (as the harness does) and look.
  const hostMnt = path.join(binDir, 'mnt');
  fs.mkdirSync(hostMnt);
  const m = await kvfs(['mount', '--meta', meta, hostMnt, '-d', '--log', path.join(binDir, 'mount.log')], {
    env: { ...process.env, KVFS_HOME: path.join(binDir, 'home') },
  });
  t.is(m.code, 0, describeRun('kvfs mount -d', m));
  try {
    t.deepEqual(fs.readdirSync(path.join(hostMnt, 'app')).sort(), ['one.txt', 'two.txt']);
    t.is(fs.readFileSync(path.join(hostMnt, 'app', 'two.txt'), 'utf8'), 'after\n');
  } finally {
    const u = await kvfs(['umount', hostMnt], { env: { ...process.env, KVFS_HOME: path.join(binDir, 'home') } });
    t.is(u.code, 0, describeRun('kvfs umount', u));
  }
  removeTempDir(shared);
  assertNothingMounted(t, [shared, hostMnt, ctr1.root, ctr2.root]);
});

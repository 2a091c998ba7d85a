// The no-op FUSE filesystem `kvfs bench` measures as the ceiling of the FUSE path: the same
// binding (patched fuse-native), the same mount options as lib/fuse/mount.ts, and handlers that
// answer at once. It stores no data: a small in-memory map of names -> attributes makes create,
// stat, readdir and unlink work; write returns the length (and grows the recorded size), read
// returns zeros up to the recorded size, fsync and flush do nothing.
//
// Runs in its own process (lib/bench/noop-main.ts), never in the process that does the I/O.

import { UsageError } from '../errors';
import type { FuseOps, FuseStat } from '../fuse/adapter';
import { checkMountpoint, mountAt, unmountPath } from '../fuse/mount';

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const ENOENT = -2;
const EEXIST = -17;
const ENOTDIR = -20;
const EISDIR = -21;
const ENOTEMPTY = -39;

interface Node {
  ino: number;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  nlink: number;
  atime: bigint;
  mtime: bigint;
  ctime: bigint;
  /** Directory entries (directories only). */
  children?: Set<string>;
}

const nowNs = (): bigint => BigInt(Date.now()) * 1_000_000n;

function split(path: string): [string, string] {
  const i = path.lastIndexOf('/');
  return [i <= 0 ? '/' : path.slice(0, i), path.slice(i + 1)];
}

function toStat(n: Node): FuseStat {
  return {
    mode: n.mode,
    uid: n.uid,
    gid: n.gid,
    size: n.size,
    dev: 0,
    nlink: n.nlink,
    ino: n.ino,
    rdev: 0,
    blksize: 128 * 1024,
    blocks: 0,
    atime: n.atime,
    mtime: n.mtime,
    ctime: n.ctime,
  };
}

/** The handlers: everything from a Map, answered synchronously. */
export function noopOps(context: () => { uid: number; gid: number }): Partial<FuseOps> {
  let nextIno = 2;
  const t = nowNs();
  const nodes = new Map<string, Node>([
    ['/', { ino: 1, mode: S_IFDIR | 0o777, uid: 0, gid: 0, size: 4096, nlink: 2, atime: t, mtime: t, ctime: t, children: new Set() }],
  ]);

  function add(path: string, mode: number, uid: number, gid: number): number {
    if (nodes.has(path)) return EEXIST;
    const [dir, name] = split(path);
    const parent = nodes.get(dir);
    if (!parent) return ENOENT;
    if (!parent.children) return ENOTDIR;
    const now = nowNs();
    const isDir = (mode & S_IFMT) === S_IFDIR;
    nodes.set(path, { ino: nextIno++, mode, uid, gid, size: isDir ? 4096 : 0, nlink: isDir ? 2 : 1, atime: now, mtime: now, ctime: now, children: isDir ? new Set() : undefined });
    parent.children.add(name);
    parent.mtime = parent.ctime = now;
    return 0;
  }

  function remove(path: string, dir: boolean): number {
    const n = nodes.get(path);
    if (!n) return ENOENT;
    if (dir && !n.children) return ENOTDIR;
    if (!dir && n.children) return EISDIR;
    if (n.children && n.children.size > 0) return ENOTEMPTY;
    const [parentPath, name] = split(path);
    nodes.delete(path);
    const parent = nodes.get(parentPath);
    if (parent?.children) {
      parent.children.delete(name);
      parent.mtime = parent.ctime = nowNs();
    }
    return 0;
  }

  function resize(path: string, size: number): number {
    const n = nodes.get(path);
    if (!n) return ENOENT;
    n.size = size;
    n.mtime = n.ctime = nowNs();
    return 0;
  }

  const ok = (cb: (code: number) => void) => cb(0);

  return {
    init: ok,
    statfs: (_path, cb) =>
      cb(0, { bsize: 1 << 20, frsize: 1 << 20, blocks: 1 << 30, bfree: 1 << 30, bavail: 1 << 30, files: 1 << 30, ffree: 1 << 30, favail: 1 << 30, fsid: 0, flag: 0, namemax: 255 }),
    getattr: (path, cb) => {
      const n = nodes.get(path);
      return n ? cb(0, toStat(n)) : cb(ENOENT);
    },
    fgetattr: (path, _fh, cb) => {
      const n = nodes.get(path);
      return n ? cb(0, toStat(n)) : cb(ENOENT);
    },
    access: (path, _mode, cb) => cb(nodes.has(path) ? 0 : ENOENT),
    readdir: (path, cb) => {
      const n = nodes.get(path);
      if (!n) return cb(ENOENT);
      if (!n.children) return cb(ENOTDIR);
      cb(0, [...n.children]);
    },
    opendir: (path, _flags, cb) => (nodes.has(path) ? cb(0, 0) : cb(ENOENT)),
    releasedir: (_path, _fh, cb) => cb(0),
    fsyncdir: (_path, _datasync, _fh, cb) => cb(0),
    mkdir: (path, mode, cb) => {
      const caller = context();
      cb(add(path, S_IFDIR | (mode & 0o7777), caller.uid, caller.gid));
    },
    rmdir: (path, cb) => cb(remove(path, true)),
    mknod: (path, mode, _rdev, cb) => {
      const caller = context();
      cb(add(path, mode, caller.uid, caller.gid));
    },
    create: (path, mode, cb) => {
      const caller = context();
      const code = add(path, (mode & S_IFMT) === 0 ? S_IFREG | mode : mode, caller.uid, caller.gid);
      return code < 0 ? cb(code) : cb(0, 1);
    },
    open: (path, _flags, cb) => (nodes.has(path) ? cb(0, 1) : cb(ENOENT)),
    read: (path, _fh, buf, len, pos, cb) => {
      const n = nodes.get(path);
      if (!n) return cb(ENOENT);
      const count = Math.max(0, Math.min(len, n.size - pos));
      if (count > 0) buf.fill(0, 0, count);
      cb(count);
    },
    write: (path, _fh, _buf, len, pos, cb) => {
      const n = nodes.get(path);
      if (!n) return cb(ENOENT);
      if (pos + len > n.size) n.size = pos + len;
      cb(len);
    },
    flush: (_path, _fh, cb) => cb(0),
    fsync: (_path, _datasync, _fh, cb) => cb(0),
    release: (_path, _fh, cb) => cb(0),
    truncate: (path, size, cb) => cb(resize(path, size)),
    ftruncate: (path, _fh, size, cb) => cb(resize(path, size)),
    unlink: (path, cb) => cb(remove(path, false)),
    rename: (src, dest, cb) => {
      const n = nodes.get(src);
      if (!n || n.children) return cb(n ? -1 /* EPERM: directories are not renamed here */ : ENOENT);
      const [destDir, destName] = split(dest);
      const parent = nodes.get(destDir);
      if (!parent?.children) return cb(ENOENT);
      if (nodes.has(dest)) remove(dest, false);
      remove(src, false);
      nodes.set(dest, n);
      parent.children.add(destName);
      cb(0);
    },
    chmod: (path, mode, cb) => {
      const n = nodes.get(path);
      if (!n) return cb(ENOENT);
      n.mode = (n.mode & S_IFMT) | (mode & 0o7777);
      cb(0);
    },
    chown: (path, uid, gid, cb) => {
      const n = nodes.get(path);
      if (!n) return cb(ENOENT);
      if (uid !== 0xffffffff) n.uid = uid;
      if (gid !== 0xffffffff) n.gid = gid;
      cb(0);
    },
    utimens: (path, atime, mtime, cb) => {
      const n = nodes.get(path);
      if (!n) return cb(ENOENT);
      if (atime !== null) n.atime = atime;
      if (mtime !== null) n.mtime = mtime;
      cb(0);
    },
  };
}

interface FuseInstance {
  mount(cb: (err: Error | null) => void): void;
  getContext(): { uid: number; gid: number; pid: number };
}
type FuseConstructor = new (mnt: string, ops: object, opts: object) => FuseInstance;

/**
 * Mounts the no-op filesystem with the options lib/fuse/mount.ts gives kvfs (with kvfs's default
 * --kernel-cache 0 and --backend-timeout 10): big_writes, max_write/max_read 1 MiB, use_ino,
 * kernel attribute/entry/negative timeouts 0 (through the fsname trick), allow_other,
 * default_permissions, and the same per-op timeout. Resolves once mounted.
 */
export async function mountNoop(path: string): Promise<{ mountpoint: string; unmount(): Promise<void> }> {
  const mountpoint = checkMountpoint(path);
  let Fuse: FuseConstructor;
  try {
    Fuse = require('fuse-native') as FuseConstructor;
  } catch (err) {
    throw new UsageError(`cannot load the FUSE binding (fuse-native): ${(err as Error).message.split('\n')[0]}`);
  }
  const extra = [
    'kvfs-noop',
    'subtype=kvfs-noop',
    'big_writes',
    'max_write=1048576',
    'max_read=1048576',
    'use_ino',
    'attr_timeout=0',
    'entry_timeout=0',
    'negative_timeout=0',
  ];
  let fuse: FuseInstance | undefined;
  const ops = noopOps(() => fuse!.getContext());
  fuse = new Fuse(mountpoint, ops, {
    fsname: extra.join(','),
    allowOther: true,
    defaultPermissions: true,
    timeout: (10 * 2 + 5) * 1000,
  });
  await new Promise<void>((resolve, reject) => {
    fuse!.mount((err) => (err ? reject(new UsageError(`cannot mount ${mountpoint}: ${err.message}`)) : resolve()));
  });
  return {
    mountpoint,
    async unmount() {
      if (mountAt(mountpoint)) await unmountPath(mountpoint);
    },
  };
}

// The adapter from fuse-native's callbacks to lib/fs: paths and handle numbers in, negative
// errnos and stat structures out. Nothing here knows about etcd, Redis or blocks.
//
// fuse-native is used with the patch in patches/ (see patches/README.md): it hands us the
// caller's uid/gid (getContext), nanosecond times in utimens, and takes nanosecond stat times.

import { errnoOf } from '../errors';
import type { Attr } from '../meta/schema';
import type { Caller, Filesystem } from '../fs/fs';
import type { RecordLock } from '../fs/locks';
import type { Metrics } from '../fs/metrics';

/** The part of fuse-native's stat object we fill in. Times are bigint nanoseconds (patched binding). */
export interface FuseStat {
  mode: number;
  uid: number;
  gid: number;
  size: number;
  dev: number;
  nlink: number;
  ino: number;
  rdev: number;
  blksize: number;
  blocks: number;
  atime: bigint;
  mtime: bigint;
  ctime: bigint;
}

export interface FuseStatfs {
  bsize: number;
  frsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  favail: number;
  fsid: number;
  flag: number;
  namemax: number;
}

/** Callback convention of fuse-native: 0 or a negative errno, then results. */
type Cb<T extends unknown[] = []> = (code: number, ...result: T) => void;

/** The handlers object fuse-native expects (only what kvfs implements). */
export interface FuseOps {
  init(cb: Cb): void;
  statfs(path: string, cb: Cb<[FuseStatfs?]>): void;
  getattr(path: string, cb: Cb<[FuseStat?]>): void;
  fgetattr(path: string, fh: number, cb: Cb<[FuseStat?]>): void;
  access(path: string, mode: number, cb: Cb): void;
  /** Names, and per name the inode number and S_IFMT bits (the binding fills d_ino and d_type). */
  readdir(path: string, cb: Cb<[string[]?, Array<{ ino: number; mode: number }>?]>): void;
  opendir(path: string, flags: number, cb: Cb<[number?]>): void;
  releasedir(path: string, fh: number, cb: Cb): void;
  fsyncdir(path: string, datasync: number, fh: number, cb: Cb): void;
  mkdir(path: string, mode: number, cb: Cb): void;
  rmdir(path: string, cb: Cb): void;
  mknod(path: string, mode: number, rdev: number, cb: Cb): void;
  create(path: string, mode: number, cb: Cb<[number?]>): void;
  open(path: string, flags: number, cb: Cb<[number?]>): void;
  read(path: string, fh: number, buf: Buffer, len: number, pos: number, cb: (bytes: number) => void): void;
  write(path: string, fh: number, buf: Buffer, len: number, pos: number, cb: (bytes: number) => void): void;
  flush(path: string, fh: number, cb: Cb): void;
  fsync(path: string, datasync: number, fh: number, cb: Cb): void;
  release(path: string, fh: number, cb: Cb): void;
  truncate(path: string, size: number, cb: Cb): void;
  ftruncate(path: string, fh: number, size: number, cb: Cb): void;
  /** Patched binding: fallocate(2) with mode 0 or FALLOC_FL_* flags. */
  fallocate(path: string, fh: number, mode: number, offset: number, length: number, cb: Cb): void;
  unlink(path: string, cb: Cb): void;
  rename(src: string, dest: string, cb: Cb): void;
  link(src: string, dest: string, cb: Cb): void;
  symlink(target: string, path: string, cb: Cb): void;
  readlink(path: string, cb: Cb<[string?]>): void;
  chmod(path: string, mode: number, cb: Cb): void;
  chown(path: string, uid: number, gid: number, cb: Cb): void;
  utimens(path: string, atime: bigint | null, mtime: bigint | null, cb: Cb): void;
  setxattr(path: string, name: string, value: Buffer, position: number, flags: number, cb: Cb): void;
  getxattr(path: string, name: string, position: number, cb: Cb<[Buffer?]>): void;
  listxattr(path: string, cb: Cb<[string[]?]>): void;
  removexattr(path: string, name: string, cb: Cb): void;
  /**
   * Optional: without them the kernel arbitrates fcntl and flock locks on this mount alone.
   * `interrupted` (the patched binding) is aborted when the kernel interrupts the request: the
   * waiting process got a signal (Ctrl-C, an alarm, `flock -w`), so a wait ends with EINTR.
   */
  lock?(path: string, fh: number, cmd: number, lock: RecordLock, owner: bigint, cb: Cb<[RecordLock?]>, interrupted?: AbortSignal): void;
  flock?(path: string, fh: number, op: number, owner: bigint, cb: Cb, interrupted?: AbortSignal): void;
}

/** Operation timing/error hook, for logs and (later) metrics. */
export type OpObserver = (op: string, errno: number, ms: number) => void;

export function toStat(attr: Attr): FuseStat {
  return {
    mode: attr.mode,
    uid: attr.uid,
    gid: attr.gid,
    size: attr.size,
    dev: 0,
    nlink: attr.nlink,
    ino: attr.ino,
    rdev: attr.rdev,
    blksize: 128 * 1024,
    blocks: Math.ceil(attr.used / 512),
    atime: attr.atime,
    mtime: attr.mtime,
    ctime: attr.ctime,
  };
}

/**
 * Builds the fuse-native handlers. `context` returns the credentials of the request being
 * dispatched; it must be called synchronously at the start of a handler (see patches/README.md).
 */
export function makeOps(fs: Filesystem, context: () => Caller, observe?: OpObserver, metrics?: Metrics): FuseOps {
  /**
   * Runs an fs call and answers the kernel: 0 and the result, or -errno. A call that returns a
   * plain value (done without waiting) is answered at once, without a trip through the
   * microtask queue.
   */
  function answer<T>(op: string, work: () => T | Promise<T>, reply: (code: number, value?: T) => void): void {
    const start = performance.now();
    const succeed = (value: T): void => {
      observe?.(op, 0, performance.now() - start);
      reply(0, value);
    };
    const fail = (err: unknown): void => {
      const errno = errnoOf(err);
      observe?.(op, errno, performance.now() - start);
      reply(-errno);
    };
    let result: T | Promise<T>;
    try {
      result = metrics ? metrics.run(op, work) : work();
    } catch (err) {
      fail(err);
      return;
    }
    if (result instanceof Promise) result.then(succeed, fail);
    else succeed(result);
  }
  const done = (cb: Cb) => (code: number) => cb(code);

  return {
    init: (cb) => cb(0),
    statfs: (_path, cb) =>
      answer('statfs', () => fs.statfs(), (code, s) =>
        s
          ? cb(code, {
              bsize: s.blockSize,
              frsize: s.blockSize,
              blocks: s.blocks,
              bfree: s.blocksFree,
              bavail: s.blocksFree,
              files: s.files,
              ffree: s.filesFree,
              favail: s.filesFree,
              fsid: 0,
              flag: 0,
              namemax: s.nameMax,
            })
          : cb(code),
      ),
    getattr: (path, cb) => answer('getattr', () => fs.getattr(path), (code, a) => (a ? cb(code, toStat(a)) : cb(code))),
    fgetattr: (path, fh, cb) => answer('fgetattr', () => fs.fgetattr(path, fh), (code, a) => (a ? cb(code, toStat(a)) : cb(code))),
    // With default_permissions the kernel checks access itself; this only confirms existence.
    access: (path, _mode, cb) => answer('access', () => fs.getattr(path), done(cb)),
    readdir: (path, cb) =>
      answer('readdir', () => fs.readdir(path), (code, entries) =>
        entries ? cb(code, entries.map((e) => e.name), entries.map(({ ino, mode }) => ({ ino, mode }))) : cb(code),
      ),
    opendir: (path, _flags, cb) => answer('opendir', () => fs.getattr(path), (code) => cb(code, 0)),
    releasedir: (_path, _fh, cb) => cb(0),
    fsyncdir: (_path, _datasync, _fh, cb) => answer('fsyncdir', () => fs.fsyncdir(), done(cb)),
    mkdir: (path, mode, cb) => {
      const caller = context();
      answer('mkdir', () => fs.mkdir(path, mode, caller), done(cb));
    },
    rmdir: (path, cb) => answer('rmdir', () => fs.rmdir(path), done(cb)),
    mknod: (path, mode, rdev, cb) => {
      const caller = context();
      answer('mknod', () => fs.mknod(path, mode, rdev, caller), done(cb));
    },
    create: (path, mode, cb) => {
      const caller = context();
      // fuse-native does not pass create's open flags; the kernel enforces the access mode.
      answer('create', () => fs.create(path, mode, 2 /* O_RDWR */, caller), (code, fh) => cb(code, fh));
    },
    open: (path, flags, cb) => answer('open', () => fs.open(path, flags), (code, fh) => cb(code, fh)),
    read: (_path, fh, buf, len, pos, cb) =>
      answer(
        'read',
        // The reply buffer belongs to this request until cb: the file layer fills it in place.
        () => fs.read(fh, len, pos, buf.subarray(0, len)),
        (code, data) => {
          if (code < 0 || !data) return cb(code);
          if (data.buffer !== buf.buffer || data.byteOffset !== buf.byteOffset) data.copy(buf);
          cb(data.length);
        },
      ),
    write: (_path, fh, buf, len, pos, cb) =>
      // The buffer belongs to the kernel request until cb: fs.write copies it before resolving.
      answer('write', () => fs.write(fh, buf.subarray(0, len), pos), (code, n) => cb(code < 0 ? code : n ?? 0)),
    flush: (_path, fh, cb) => answer('flush', () => fs.flush(fh), done(cb)),
    fsync: (_path, _datasync, fh, cb) => answer('fsync', () => fs.fsync(fh), done(cb)),
    release: (_path, fh, cb) => answer('release', () => fs.release(fh), done(cb)),
    truncate: (path, size, cb) => answer('truncate', () => fs.truncate(path, size), done(cb)),
    ftruncate: (path, fh, size, cb) => answer('ftruncate', () => fs.ftruncate(path, fh, size), done(cb)),
    fallocate: (_path, fh, mode, offset, length, cb) => answer('fallocate', () => fs.fallocate(fh, mode, offset, length), done(cb)),
    unlink: (path, cb) => answer('unlink', () => fs.unlink(path), done(cb)),
    rename: (src, dest, cb) => answer('rename', () => fs.rename(src, dest), done(cb)),
    link: (src, dest, cb) => answer('link', () => fs.link(src, dest), done(cb)),
    symlink: (target, path, cb) => {
      const caller = context();
      answer('symlink', () => fs.symlink(target, path, caller), done(cb));
    },
    readlink: (path, cb) => answer('readlink', () => fs.readlink(path), (code, target) => cb(code, target)),
    chmod: (path, mode, cb) => answer('chmod', () => fs.chmod(path, mode), done(cb)),
    chown: (path, uid, gid, cb) => answer('chown', () => fs.chown(path, uid, gid), done(cb)),
    utimens: (path, atime, mtime, cb) => answer('utimens', () => fs.utimens(path, atime, mtime), done(cb)),
    setxattr: (path, name, value, _position, flags, cb) =>
      answer('setxattr', () => fs.setxattr(path, name, value, flags), done(cb)),
    getxattr: (path, name, _position, cb) => answer('getxattr', () => fs.getxattr(path, name), (code, v) => cb(code, v)),
    listxattr: (path, cb) => answer('listxattr', () => fs.listxattr(path), (code, names) => cb(code, names)),
    removexattr: (path, name, cb) => answer('removexattr', () => fs.removexattr(path, name), done(cb)),
    lock: (_path, fh, cmd, lock, owner, cb, interrupted) =>
      answer('lock', () => fs.lock(fh, cmd, lock, owner, interrupted), (code, res) => cb(code, res)),
    flock: (_path, fh, op, owner, cb, interrupted) => answer('flock', () => fs.flock(fh, op, owner, interrupted), done(cb)),
  };
}

// Mounting and unmounting through fuse-native (libfuse2), and the checks that turn the usual
// ways a mount fails into one clear message.

import { execFile } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { promisify } from 'node:util';
import { UsageError } from '../errors';
import type { Caller, Filesystem } from '../fs/fs';
import type { Metrics } from '../fs/metrics';
import { makeOps, OpObserver } from './adapter';

const run = promisify(execFile);

export interface MountOptions {
  /** Name shown in /proc/mounts as the source (e.g. "kvfs:VOLUME"). */
  source: string;
  allowOther: boolean;
  readOnly: boolean;
  /** Seconds the kernel caches attributes and names (0: ask the daemon every time). */
  attrTimeout: number;
  entryTimeout: number;
  /** Seconds before an operation the daemon has not answered fails with ETIMEDOUT. */
  opTimeout: number;
  /**
   * 'global': fcntl and flock locks go to the daemon, which keeps them in the metadata store
   * for every mount of the volume. 'local': the kernel arbitrates them on this mount alone.
   */
  locks: 'global' | 'local';
  /** Bypass the kernel's page cache for file data (libfuse's direct_io). */
  directIo?: boolean;
  observe?: OpObserver;
  /** Per-operation timers (backend waits vs the rest). */
  metrics?: Metrics;
}

/** The subset of fuse-native's Fuse class used here (with the kvfs patch). */
interface FuseInstance {
  mount(cb: (err: Error | null) => void): void;
  getContext(): Caller;
}
type FuseConstructor = new (mnt: string, ops: object, opts: object) => FuseInstance;

function loadBinding(): FuseConstructor {
  try {
    return require('fuse-native') as FuseConstructor;
  } catch (err) {
    const message = (err as Error).message;
    if (/libfuse\.so\.2/.test(message)) {
      throw new UsageError('libfuse2 is not installed (libfuse.so.2 not found); install it with: apt-get install -y libfuse2 fuse3');
    }
    throw new UsageError(`cannot load the FUSE binding (fuse-native): ${message.split('\n')[0]}; run npm ci`);
  }
}

/** Unescapes the octal escapes (\040 for space, ...) of /proc/self/mountinfo. */
function unescapeMountPath(path: string): string {
  return path.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/** The mount at exactly this path, from /proc/self/mountinfo (the last one wins: it is on top). */
export function mountAt(mountpoint: string): { fstype: string; source: string } | undefined {
  let found: { fstype: string; source: string } | undefined;
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const fields = line.split(' ');
    if (fields.length < 10) continue;
    const sep = fields.indexOf('-');
    if (unescapeMountPath(fields[4]) === mountpoint) found = { fstype: fields[sep + 1], source: unescapeMountPath(fields[sep + 2]) };
  }
  return found;
}

/** Checks a mountpoint before anything is started; throws UsageError with the fix. */
export function checkMountpoint(path: string): string {
  const mountpoint = resolve(path);
  let stat;
  try {
    stat = statSync(mountpoint);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new UsageError(`mountpoint ${mountpoint} does not exist; create it with: mkdir -p ${mountpoint}`);
    if (code === 'ENOTCONN') {
      throw new UsageError(`mountpoint ${mountpoint} is a dead FUSE mount (its daemon is gone); clean it up with: umount -l ${mountpoint}`);
    }
    throw new UsageError(`cannot use mountpoint ${mountpoint}: ${code}`);
  }
  if (!stat.isDirectory()) throw new UsageError(`mountpoint ${mountpoint} is not a directory`);
  const existing = mountAt(mountpoint);
  if (existing) {
    throw new UsageError(`${mountpoint} is already mounted (${existing.fstype} from ${existing.source}); unmount it first with: kvfs umount ${mountpoint}`);
  }
  if (!existsSync('/dev/fuse')) {
    throw new UsageError('/dev/fuse is missing: load the fuse kernel module (modprobe fuse), or in a container pass --device /dev/fuse --cap-add SYS_ADMIN');
  }
  return mountpoint;
}

export interface Mounted {
  mountpoint: string;
  /** Resolves when the filesystem is no longer mounted (by us or by someone running umount). */
  gone: Promise<void>;
  /** Unmounts; with lazy, detaches even while files are open (they then fail with ENOTCONN). */
  unmount(lazy?: boolean): Promise<void>;
}

export async function mount(fs: Filesystem, path: string, options: MountOptions): Promise<Mounted> {
  const mountpoint = checkMountpoint(path);
  const Fuse = loadBinding();
  // fuse-native has no switch for these libfuse options; its fsname value is placed inside -o,
  // so the extra options ride along after it (see ../shared/NOTES.md).
  const extra = [
    options.source.replace(/[,\\]/g, '_'),
    'subtype=kvfs',
    'big_writes',
    'max_write=1048576',
    'max_read=1048576',
    'use_ino',
    `attr_timeout=${options.attrTimeout}`,
    `entry_timeout=${options.entryTimeout}`,
    'negative_timeout=0',
    // Keep the kernel's page cache across opens while a file's size and mtime are unchanged
    // (libfuse checks them with fgetattr after our open, which has just re-read them).
    'auto_cache',
    // Like mount(8) and fuse3: a mount may cover a directory that has files in it.
    'nonempty',
    // Not hard_remove: libfuse2's path API then answers fstat() on an open, unlinked file with
    // ENOENT (the kernel's getattr carries no handle), which breaks SQLite temp files and the
    // like. So a file unlinked while open ON THIS MOUNT is renamed to .fuse_hidden* until its last
    // close (libfuse's default); unlinks from other mounts use the hold protocol in lib/fs.
    // The binding still sets flag_nullpath_ok, so handle-based ops would work with hard_remove.
  ];
  if (options.readOnly) extra.push('ro');
  // No kernel page cache for file data: every read and write goes to the daemon, so a file kept
  // open sees another mount's committed writes once its lock or open revalidates. libfuse2 can
  // neither invalidate one file's cached pages (no nodeids on the path API) nor negotiate
  // FUSE_AUTO_INVAL_DATA, so this is the only way; the kernel then refuses shared mmap (ENODEV).
  if (options.directIo) extra.push('direct_io');
  let fuse: FuseInstance | undefined;
  const context = (): Caller => fuse!.getContext();
  const ops = makeOps(fs, context, options.observe, options.metrics);
  if (options.locks === 'local') {
    delete ops.lock;
    delete ops.flock;
  }
  fuse = new Fuse(mountpoint, ops, {
    fsname: extra.join(','),
    allowOther: options.allowOther,
    defaultPermissions: true,
    // A lock request may wait for another owner as long as it takes (F_SETLKW, flock): no
    // time limit on those; their backend requests are bounded by --backend-timeout anyway.
    timeout: { default: options.opTimeout * 1000, lock: false, flock: false },
  });
  await new Promise<void>((resolveMount, reject) => {
    fuse!.mount((err) => (err ? reject(new UsageError(`cannot mount ${mountpoint}: ${err.message}`)) : resolveMount()));
  });

  let stopped = false;
  const gone = new Promise<void>((resolveGone) => {
    const timer = setInterval(() => {
      if (stopped || !mountAt(mountpoint)) {
        clearInterval(timer);
        resolveGone();
      }
    }, 250);
  });

  return {
    mountpoint,
    gone,
    async unmount(lazy = false) {
      if (!mountAt(mountpoint)) return;
      await unmountPath(mountpoint, lazy);
      stopped = true;
    },
  };
}

/** Unmounts a FUSE mount: umount(8) as root, fusermount3 -u otherwise. */
export async function unmountPath(mountpoint: string, lazy = false): Promise<void> {
  const isRoot = process.getuid?.() === 0;
  const [cmd, args] = isRoot ? ['umount', lazy ? ['-l', mountpoint] : [mountpoint]] : ['fusermount3', lazy ? ['-uz', mountpoint] : ['-u', mountpoint]];
  try {
    await run(cmd, args);
  } catch (err) {
    const stderr = String((err as { stderr?: string }).stderr ?? (err as Error).message).trim().split('\n')[0];
    throw new UsageError(`cannot unmount ${mountpoint}: ${stderr}`);
  }
}

// POSIX semantics over the metadata engine and the block store: path resolution, the entry and
// attribute caches, file handles, and argument checks. The FUSE adapter (lib/fuse) calls this
// layer with paths and handle numbers; everything here throws FsError on failure.

import { FsError } from '../errors';
import type { BlockStore } from '../data/store';
import type { Meta, Unlinked } from '../meta/meta';
import type { KvSession } from '../meta/kv';
import { Attr, ChunkMap, Entry, FileType, ROOT_INO, encodeAttr, encodeEntry, keys, nowNs, typeBits, typeOfMode } from '../meta/schema';
import { DirtyBudget } from './budget';
import { BlockCache, splitCacheSize } from './cache';
import { OpenFile } from './file';
import { F_GETLK, F_UNLCK, LOCK_NB, LOCK_UN, LockTable, type RecordLock } from './locks';

export interface FsOptions {
  /** How long this daemon trusts a cached attribute, ms (the kernel's own cache is set apart). */
  attrCacheMs: number;
  /** How long this daemon trusts a cached name -> inode entry, ms. */
  entryCacheMs: number;
  /** Refuse every change with EROFS. */
  readOnly: boolean;
  /** Bytes of block data kept in memory for reads. */
  cacheBytes: number;
  /** Dirty bytes of one file that start a commit in the background. */
  commitThreshold: number;
  /** Write-back (true): writes are acknowledged from memory and committed on fsync, close, the
   * flush interval or the dirty limit. false: every write is committed before it returns. */
  writeback: boolean;
  /** Dirty bytes all open files may hold before writers wait for commits (--max-dirty). */
  maxDirty: number;
  /** Dirty data older than this is committed even if the file stays open, ms (--flush-interval). */
  flushIntervalMs: number;
}

/** Who is asking: the calling process's credentials, from the kernel. */
export interface Caller {
  uid: number;
  gid: number;
  pid: number;
}

/** One name in a directory listing: its inode number and S_IFMT bits (d_ino, d_type). */
export interface DirEntry {
  name: string;
  ino: number;
  mode: number;
}

export interface StatFs {
  blockSize: number;
  blocks: number;
  blocksFree: number;
  files: number;
  filesFree: number;
  nameMax: number;
}

const NAME_MAX = 255;
const PATH_MAX = 4096;
const XATTR_SIZE_MAX = 65536;
const O_ACCMODE = 3;
/** fallocate(2) mode flags: allocate without changing the file size; deallocate a range (with
 * KEEP_SIZE); zero a range. */
const FALLOC_FL_KEEP_SIZE = 1;
const FALLOC_FL_PUNCH_HOLE = 2;
const FALLOC_FL_ZERO_RANGE = 0x10;
const O_WRONLY = 1;
const O_RDWR = 2;
const O_TRUNC = 0o1000;

interface Cached<T> {
  value: T;
  expires: number;
}

interface Handle {
  ino: number;
  flags: number;
  file: OpenFile;
  /** Whether this handle's first read has looked at the access time yet (relatime). */
  atimeChecked: boolean;
}

const DAY_NS = 86_400n * 1_000_000_000n;
/** How long an orphan waits for other mounts to say they hold it open before it is reclaimed. */
const ORPHAN_GRACE_MS = 2000;

function splitPath(path: string): string[] {
  return path.split('/').filter((c) => c.length > 0);
}

function parentAndName(path: string): { parentPath: string; name: string } {
  const parts = splitPath(path);
  if (parts.length === 0) throw new FsError('EBUSY', 'the root directory cannot be changed this way');
  const name = parts.pop()!;
  checkName(name);
  return { parentPath: '/' + parts.join('/'), name };
}

/** A cached value that has not expired, else undefined. */
function fresh<K, T>(cache: Map<K, Cached<T>>, key: K): T | undefined {
  const cached = cache.get(key);
  return cached && cached.expires > Date.now() ? cached.value : undefined;
}

function checkName(name: string): void {
  if (Buffer.byteLength(name) > NAME_MAX) throw new FsError('ENAMETOOLONG', name.slice(0, 32) + '...');
}

export class Filesystem {
  private readonly entries = new Map<string, Cached<Entry>>();
  private readonly attrs = new Map<number, Cached<Attr>>();
  private readonly xattrNames = new Map<number, Cached<Set<string>>>();
  private readonly files = new Map<number, OpenFile>();
  private readonly handles = new Map<number, Handle>();
  private nextHandle = 1;
  private readonly cache: BlockCache;
  private readonly maxReadahead: number;
  /** Work started in the background (reclaiming orphans, deleting blocks), awaited at shutdown. */
  private readonly background = new Set<Promise<void>>();
  private readonly pendingReclaims = new Map<number, NodeJS.Timeout>();
  private session: { id: string; handle: KvSession } | undefined;
  private unwatch: (() => Promise<void>) | undefined;

  private readonly budget: DirtyBudget;
  private readonly flushTimer: NodeJS.Timeout;
  /** fcntl and flock locks, shared with every mount of the volume through the metadata store. */
  private readonly locks: LockTable;

  constructor(
    readonly meta: Meta,
    readonly store: BlockStore,
    readonly options: FsOptions,
  ) {
    // Blocks fetched ahead of a sequential reader: a quarter of the cache, at most 32.
    this.maxReadahead = Math.max(1, Math.min(32, Math.floor(options.cacheBytes / meta.blockSize / 4)));
    this.cache = new BlockCache(splitCacheSize(options.cacheBytes, this.maxReadahead * meta.blockSize, meta.blockSize));
    this.locks = new LockTable(meta.kv, () => this.session?.id, async (ino) => this.files.get(ino)?.flush());
    this.budget = new DirtyBudget(options.maxDirty, () => this.commitDirty(() => true));
    // A commit must start no later than --flush-interval after the oldest uncommitted write, so
    // the timer ticks often and commits what would be overdue by the next tick (ticking every
    // second and waiting for the full interval let the window reach interval + tick).
    const tickMs = Math.max(20, Math.min(250, options.flushIntervalMs / 10));
    this.flushTimer = setInterval(() => {
      const due = Date.now() - options.flushIntervalMs + tickMs;
      // Failures put the blocks back; the next interval, flush or close retries them.
      this.commitDirty((f) => f.dirtySince <= due).catch(() => undefined);
    }, tickMs);
    this.flushTimer.unref();
  }

  /** Commits the open files that have uncommitted writes and match `which`. */
  private async commitDirty(which: (file: OpenFile) => boolean): Promise<void> {
    await Promise.all([...this.files.values()].filter((f) => f.hasPendingWrites && which(f)).map((f) => f.commit()));
  }

  // ---- caches and path resolution ---------------------------------------------------------

  private entryKey(parent: number, name: string): string {
    return `${parent}/${name}`;
  }

  private rememberEntry(parent: number, entry: Entry): void {
    if (this.options.entryCacheMs > 0) {
      this.entries.set(this.entryKey(parent, entry.name), { value: entry, expires: Date.now() + this.options.entryCacheMs });
    }
  }

  private forgetEntry(parent: number, name: string): void {
    this.entries.delete(this.entryKey(parent, name));
  }

  private rememberAttr(attr: Attr): Attr {
    if (this.options.attrCacheMs > 0) this.attrs.set(attr.ino, { value: attr, expires: Date.now() + this.options.attrCacheMs });
    return attr;
  }

  private async lookup(parent: number, name: string): Promise<Entry> {
    const cached = fresh(this.entries, this.entryKey(parent, name));
    if (cached) return cached;
    checkName(name);
    const entry = await this.meta.lookup(parent, name);
    this.rememberEntry(parent, entry);
    return entry;
  }

  private async resolve(path: string): Promise<number> {
    let ino = ROOT_INO;
    for (const name of splitPath(path)) ino = (await this.lookup(ino, name)).ino;
    return ino;
  }

  /** The inode a path names, if every name on it is cached; no checks, no waiting. */
  private resolveCached(path: string): number | undefined {
    let ino = ROOT_INO;
    for (const name of splitPath(path)) {
      const cached = fresh(this.entries, this.entryKey(ino, name));
      if (!cached) return undefined;
      ino = cached.ino;
    }
    return ino;
  }

  /** attrOf() when the attributes are cached, else undefined. */
  private attrCached(ino: number): Attr | undefined {
    const cached = fresh(this.attrs, ino);
    return cached && this.withOverlay(cached);
  }

  /** Committed attributes with this mount's unflushed writes on top. */
  private withOverlay(attr: Attr): Attr {
    const file = this.files.get(attr.ino);
    return file ? file.overlay(attr) : attr;
  }

  /** Committed attributes (cached for attrCacheMs), with this mount's unflushed writes on top. */
  private async attrOf(ino: number): Promise<Attr> {
    const cached = this.attrCached(ino);
    if (cached) return cached;
    return this.readAttr(ino, () => this.meta.getattr(ino));
  }

  /** Attributes of `ino` from a store request (a read or a change), through fromStore(). */
  private async readAttr(ino: number, request: () => Promise<Attr>): Promise<Attr> {
    const before = this.openState(ino); // before the request starts: see OpenFile.adopt
    return this.fromStore(await request(), before);
  }

  /** The inode's open file and its generation, before a read of its attributes from the store. */
  private openState(ino: number): { file: OpenFile; generation: number } | undefined {
    const file = this.files.get(ino);
    return file && { file, generation: file.generation };
  }

  /**
   * Attributes just read from the store: cached, taken by the inode's open file if another mount
   * changed its size since `before` (so reads agree with the size the kernel is about to hear),
   * and overlaid with our writes.
   */
  private fromStore(attr: Attr, before: { file: OpenFile; generation: number } | undefined): Attr {
    this.rememberAttr(attr);
    if (before && before.file === this.files.get(attr.ino)) before.file.adopt(attr, before.generation);
    return this.withOverlay(attr);
  }

  private writable(): void {
    if (this.options.readOnly) throw new FsError('EROFS');
  }

  // ---- attributes ----------------------------------------------------------------------

  /**
   * The attributes of `path`. Answered synchronously when every name on the path and the inode's
   * attributes are cached (the kernel asks several times per file operation).
   */
  getattr(path: string): Attr | Promise<Attr> {
    const ino = this.resolveCached(path);
    const attr = ino === undefined ? undefined : this.attrCached(ino);
    return attr ?? this.getattrWaiting(path);
  }

  private async getattrWaiting(path: string): Promise<Attr> {
    const parts = splitPath(path);
    const name = parts.pop();
    if (name === undefined) return this.attrOf(ROOT_INO);
    let parent = ROOT_INO;
    for (const part of parts) parent = (await this.lookup(parent, part)).ino;
    // An expired entry still names the inode the name most likely points to: read the entry and
    // that inode's attributes in one round trip instead of two.
    const stale = this.entries.get(this.entryKey(parent, name));
    const now = Date.now();
    if (stale && stale.expires <= now && !((this.attrs.get(stale.value.ino)?.expires ?? 0) > now)) {
      checkName(name);
      const before = this.openState(stale.value.ino);
      const { entry, attr } = await this.meta.lookupWithAttr(parent, name, stale.value.ino);
      this.rememberEntry(parent, entry);
      return this.fromStore(attr, before);
    }
    return this.attrOf((await this.lookup(parent, name)).ino);
  }

  fgetattr(path: string, fh: number): Attr | Promise<Attr> {
    const handle = this.handles.get(fh);
    if (!handle) return this.resolve(path).then((ino) => this.attrOf(ino));
    return this.attrCached(handle.ino) ?? this.attrOf(handle.ino);
  }

  /** Runs a metadata change of one inode after committing its pending writes (so a later commit
   * cannot overwrite, say, an explicit mtime with the time of an earlier write). */
  private async changeAttr(path: string, change: (ino: number) => Promise<Attr>): Promise<void> {
    this.writable();
    const ino = await this.resolve(path);
    await this.files.get(ino)?.flush();
    await this.readAttr(ino, () => change(ino));
  }

  chmod(path: string, mode: number): Promise<void> {
    return this.changeAttr(path, (ino) => this.meta.setattr(ino, { perm: mode }));
  }

  chown(path: string, uid: number, gid: number): Promise<void> {
    // (uid_t)-1 means "leave unchanged".
    const keep = (id: number) => (id === 0xffffffff || id === -1 ? undefined : id);
    return this.changeAttr(path, (ino) => this.meta.setattr(ino, { uid: keep(uid), gid: keep(gid) }));
  }

  /** Times in ns since the epoch; null leaves that time unchanged. */
  utimens(path: string, atime: bigint | null, mtime: bigint | null): Promise<void> {
    return this.changeAttr(path, (ino) => this.meta.setattr(ino, { atime: atime ?? undefined, mtime: mtime ?? undefined }));
  }

  async truncate(path: string, size: number): Promise<void> {
    this.writable();
    await this.truncateInode(await this.resolve(path), size);
  }

  async ftruncate(path: string, fh: number, size: number): Promise<void> {
    this.writable();
    const handle = this.handles.get(fh);
    await this.truncateInode(handle ? handle.ino : await this.resolve(path), size);
  }

  private async truncateInode(ino: number, size: number): Promise<void> {
    if (size < 0) throw new FsError('EINVAL');
    const file = this.files.get(ino);
    if (file) {
      this.rememberAttr(await file.truncate(size));
      return;
    }
    const { attr, released } = await this.meta.truncate(ino, size);
    this.rememberAttr(attr);
    if (released.length) this.deleteBlocks(released);
  }

  // ---- directories -----------------------------------------------------------------------

  /**
   * A directory's entries with their inode numbers and types, '.' and '..' first: listings then
   * carry d_ino and d_type, so `find -type`, `ls --color` and scandir() need no stat per entry.
   */
  async readdir(path: string): Promise<DirEntry[]> {
    const ino = await this.resolve(path);
    const attr = await this.attrOf(ino);
    if (attr.type !== 'dir') throw new FsError('ENOTDIR');
    const parts = splitPath(path);
    const parent = parts.length === 0 ? ROOT_INO : await this.resolve('/' + parts.slice(0, -1).join('/'));
    const entries = await this.meta.readdir(ino);
    for (const entry of entries) this.rememberEntry(ino, entry);
    const dirMode = typeBits('dir');
    return [{ name: '.', ino, mode: dirMode }, { name: '..', ino: parent, mode: dirMode }, ...entries.map((e) => ({ name: e.name, ino: e.ino, mode: typeBits(e.type) }))];
  }

  private async createNode(path: string, type: FileType, perm: number, caller: Caller, extra: { rdev?: number; target?: string } = {}): Promise<Attr> {
    this.writable();
    const { parentPath, name } = parentAndName(path);
    const parent = await this.resolve(parentPath);
    const { attr, dir } = await this.meta.createIn(parent, name, { type, perm, uid: caller.uid, gid: caller.gid, ...extra });
    // The directory as our commit left it: saves the kernel's next getattr of it a round trip.
    this.rememberAttr(dir);
    this.rememberEntry(parent, { name, ino: attr.ino, type });
    // A new inode has no extended attributes (saves a read at the kernel's first getxattr).
    if (this.options.attrCacheMs > 0) this.xattrNames.set(attr.ino, { value: new Set(), expires: Date.now() + this.options.attrCacheMs });
    return this.rememberAttr(attr);
  }

  async mkdir(path: string, mode: number, caller: Caller): Promise<void> {
    await this.createNode(path, 'dir', mode, caller);
  }

  async mknod(path: string, mode: number, rdev: number, caller: Caller): Promise<void> {
    const type = typeOfMode(mode) ?? 'file';
    if (type === 'dir' || type === 'symlink') throw new FsError('EINVAL');
    await this.createNode(path, type, mode, caller, { rdev });
  }

  async symlink(target: string, path: string, caller: Caller): Promise<void> {
    if (Buffer.byteLength(target) >= PATH_MAX) throw new FsError('ENAMETOOLONG');
    await this.createNode(path, 'symlink', 0o777, caller, { target });
  }

  async readlink(path: string): Promise<string> {
    return this.meta.readlink(await this.resolve(path));
  }

  async rmdir(path: string): Promise<void> {
    this.writable();
    const { parentPath, name } = parentAndName(path);
    if (name === '.') throw new FsError('EINVAL');
    const parent = await this.resolve(parentPath);
    this.forgetEntry(parent, name);
    this.rememberAttr(await this.meta.rmdir(parent, name));
  }

  async unlink(path: string): Promise<void> {
    this.writable();
    const { parentPath, name } = parentAndName(path);
    const parent = await this.resolve(parentPath);
    const hint = this.entries.get(this.entryKey(parent, name))?.value.ino;
    this.forgetEntry(parent, name);
    const unlinked = await this.meta.unlink(parent, name, hint);
    if (unlinked.dir) this.rememberAttr(unlinked.dir);
    else this.attrs.delete(parent);
    this.afterUnlink(unlinked);
  }

  async rename(from: string, to: string): Promise<void> {
    this.writable();
    const src = parentAndName(from);
    const dst = parentAndName(to);
    const srcParent = await this.resolve(src.parentPath);
    const dstParent = await this.resolve(dst.parentPath);
    this.forgetEntry(srcParent, src.name);
    this.forgetEntry(dstParent, dst.name);
    const moved = await this.lookup(srcParent, src.name).catch(() => undefined);
    const replaced = await this.meta.rename(srcParent, src.name, dstParent, dst.name);
    this.forgetEntry(srcParent, src.name);
    this.forgetEntry(dstParent, dst.name);
    this.attrs.delete(srcParent);
    this.attrs.delete(dstParent);
    if (moved) this.attrs.delete(moved.ino);
    if (replaced) this.afterUnlink(replaced);
  }

  async link(from: string, to: string): Promise<void> {
    this.writable();
    const ino = await this.resolve(from);
    const { parentPath, name } = parentAndName(to);
    const parent = await this.resolve(parentPath);
    const attr = await this.readAttr(ino, () => this.meta.link(ino, parent, name));
    this.attrs.delete(parent);
    this.rememberEntry(parent, { name, ino, type: attr.type });
  }

  // ---- orphans: files whose last name is gone ------------------------------------------------
  //
  // An orphan's data is reclaimed once no mount has it open. A mount that has it open says so with
  // a hold key bound to its session (H{ino}/{session}); it adds one when it unlinks the file itself,
  // or when its watch sees another mount orphan a file it has open. The mount that orphaned the file
  // reclaims it after ORPHAN_GRACE_MS unless someone holds it; a holder reclaims it at its last close
  // when no other hold is left; and every mount sweeps orphans that nobody holds (their holders
  // crashed: hold keys die with the session).

  /** After a name is gone: reclaim the inode soon, or after its last handle closes. */
  private afterUnlink({ attr, orphaned }: Unlinked): void {
    this.attrs.delete(attr.ino);
    if (!orphaned) return;
    const file = this.files.get(attr.ino);
    if (file) this.hold(attr.ino, file);
    else this.reclaimLater(attr.ino);
  }

  private hold(ino: number, file: OpenFile): void {
    if (file.orphaned) return;
    file.orphaned = true;
    const session = this.session;
    if (session) this.track(session.handle.attach(keys.hold(ino, session.id), Buffer.from(String(process.pid))));
  }

  private reclaimLater(ino: number): void {
    const timer = setTimeout(() => this.reclaimIfUnheld(ino), ORPHAN_GRACE_MS);
    timer.unref();
    this.pendingReclaims.set(ino, timer);
  }

  /** Destroys an orphan unless a mount (this one included) still has it open. */
  private reclaimIfUnheld(ino: number): void {
    this.pendingReclaims.delete(ino);
    if (this.files.has(ino)) return;
    this.track(
      this.meta.holders(ino).then(async (holders) => {
        if (holders.length === 0) await this.meta.destroy(ino, async (ids) => this.deleteBlocks(ids));
      }),
    );
  }

  /** Last close of an orphan on this mount. */
  private releaseOrphan(ino: number): void {
    const session = this.session;
    if (!session) return this.reclaimIfUnheld(ino);
    this.track(this.meta.dropHold(ino, session.id).then(() => this.reclaimIfUnheld(ino)));
  }

  /** Reclaims orphans nobody holds that are older than the grace time (their mounts died). */
  async sweepOrphans(): Promise<number> {
    const due = nowNs() - BigInt(ORPHAN_GRACE_MS) * 1_000_000n;
    let reclaimed = 0;
    for (const { ino, since } of await this.meta.orphans()) {
      if (since > due || this.files.has(ino) || this.pendingReclaims.has(ino)) continue;
      if ((await this.meta.holders(ino)).length > 0) continue;
      await this.meta.destroy(ino, async (ids) => this.deleteBlocks(ids));
      reclaimed++;
    }
    return reclaimed;
  }

  /** Keeps background work to await at shutdown; its failures leave orphans for the sweep/fsck. */
  private track(work: Promise<unknown>): void {
    const tracked: Promise<void> = work.then(
      () => undefined,
      () => undefined,
    );
    this.background.add(tracked);
    void tracked.finally(() => this.background.delete(tracked));
  }

  // ---- sessions and watches ------------------------------------------------------------------

  /** Registers this mount's session (for holds and fencing) and follows changes made by others. */
  async start(session: { id: string; handle: KvSession }): Promise<void> {
    this.session = session;
    this.locks.sessionChanged();
    await this.unwatch?.().catch(() => undefined);
    this.unwatch = await this.meta.kv.watch('', (change) => this.applyChange(change.key, change.value));
  }

  /**
   * The session was lost (cut off from etcd past its lease): other mounts may have changed what
   * our open files are based on, so their uncommitted writes are dropped and further writes or
   * flushes through those handles fail; caches are emptied. New opens work once a new session is
   * started.
   */
  sessionLost(reason: Error): void {
    this.session = undefined;
    this.locks.sessionChanged();
    for (const file of this.files.values()) file.poison(new FsError('EIO', `write-back data dropped: ${reason.message}`));
    this.entries.clear();
    this.attrs.clear();
    this.xattrNames.clear();
  }

  /** Drops what a change made by any mount makes stale. */
  private applyChange(key: string, value: Buffer | undefined): void {
    if (key[0] === 'L') return this.locks.onRecordChanged(key, value);
    const m = /^([AO])([0-9a-f]{16})(?:([IDCX])(.*))?$/s.exec(key);
    if (!m) return;
    const ino = parseInt(m[2], 16);
    if (m[1] === 'O') {
      const file = this.files.get(ino);
      if (value && file) this.hold(ino, file);
      return;
    }
    // A change whose value is what the cache holds (this mount's own commit, echoed by the watch)
    // leaves it: the cache is as new as that change.
    if (m[3] === 'I') {
      const cached = this.attrs.get(ino);
      if (cached && value && encodeAttr(cached.value).equals(value)) return;
      this.attrs.delete(ino);
    } else if (m[3] === 'D') {
      const cached = this.entries.get(this.entryKey(ino, m[4]));
      if (cached && value && encodeEntry(cached.value.ino, cached.value.type).equals(value)) return;
      this.entries.delete(this.entryKey(ino, m[4]));
    }
    // Block maps (C keys) are not dropped here: an open file reads from the map it has (re-read at
    // every open: close-to-open), so one read() never mixes blocks of two commits; a block deleted
    // under it makes the reader re-read the map (lib/fs/file.ts).
    else if (m[3] === 'X') this.xattrNames.delete(ino);
  }

  /** Deletes blocks nothing references any more, in the background: awaited at unmount, so an
   * unmount right after `rm -rf` does not leave them behind. Failures only leak space (gc). */
  private deleteBlocks(ids: (number | string)[]): void {
    this.track(this.store.delete(ids.map(String)));
  }

  // ---- files -------------------------------------------------------------------------------

  /** Opens a handle. `fresh` is an attribute just read or written by this call's own transaction. */
  private async openInode(ino: number, flags: number, fresh?: Attr): Promise<number> {
    // Close-to-open: every open re-reads the committed attributes, and with them the first block
    // map chunk (one round trip; a file a handle of this mount already uses keeps its own map).
    this.attrs.delete(ino);
    let firstChunk: ChunkMap | undefined;
    let attr: Attr;
    if (fresh) attr = this.rememberAttr(fresh);
    else {
      const read = await this.meta.getattrWithChunk(ino, 0);
      firstChunk = read.map;
      attr = this.withOverlay(this.rememberAttr(read.attr));
    }
    if (attr.type === 'dir') throw new FsError('EISDIR');
    const accessMode = flags & O_ACCMODE;
    if ((accessMode === O_WRONLY || accessMode === O_RDWR || flags & O_TRUNC) && this.options.readOnly) throw new FsError('EROFS');
    let file = this.files.get(ino);
    if (!file) {
      file = new OpenFile(ino, attr, this.meta, this.store, this.cache, {
        commitThreshold: Math.min(this.options.commitThreshold, Math.max(this.meta.blockSize, this.options.maxDirty / 4)),
        maxReadahead: this.maxReadahead,
        writeback: this.options.writeback,
        budget: this.budget,
        onCommit: (committed) => this.rememberAttr(committed),
        deleteBlocks: (ids) => this.deleteBlocks(ids),
      });
      this.files.set(ino, file);
      if (firstChunk) file.seedChunk(0, firstChunk);
    } else {
      file.revalidate(attr);
    }
    file.handles += 1;
    const fh = this.nextHandle++;
    if (this.nextHandle > 0x7fffffff) this.nextHandle = 1;
    this.handles.set(fh, { ino, flags, file, atimeChecked: false });
    return fh;
  }

  async open(path: string, flags: number): Promise<number> {
    return this.openInode(await this.resolve(path), flags);
  }

  async create(path: string, mode: number, flags: number, caller: Caller): Promise<number> {
    const attr = await this.createNode(path, 'file', mode, caller);
    return this.openInode(attr.ino, flags, attr);
  }

  private handle(fh: number): Handle {
    const handle = this.handles.get(fh);
    if (!handle) throw new FsError('EBADF');
    return handle;
  }

  /**
   * fcntl(F_GETLK / F_SETLK / F_SETLKW) on an open file, for the kernel's lock owner. Locks also
   * order the data, as NFS does: what was written under a lock is committed before another mount
   * can take one, and a lock granted through the store re-reads the file's attributes and block
   * map, so the next holder on any mount reads what the last one wrote. (A lock granted on an
   * inode this mount has claimed needs neither: no other mount can have held one since.)
   * A wait (F_SETLKW) ends with EINTR when `interrupted` aborts.
   */
  async lock(fh: number, cmd: number, lock: RecordLock, owner: bigint, interrupted?: AbortSignal): Promise<RecordLock | undefined> {
    const handle = this.handle(fh);
    if (cmd === F_GETLK) return (await this.locks.recordLock(handle.ino, cmd, lock, owner)).conflict;
    if (lock.type === F_UNLCK) {
      await this.commitThenUnlock(handle, () => this.locks.recordLock(handle.ino, cmd, lock, owner));
      return undefined;
    }
    const { granted } = await this.locks.recordLock(handle.ino, cmd, lock, owner, interrupted);
    if (granted === 'store') await this.revalidate(handle);
    return undefined;
  }

  /**
   * flock(2) on an open file; `owner` is the open file description. Data is ordered as with
   * lock(); a wait ends with EINTR when `interrupted` aborts.
   */
  async flock(fh: number, op: number, owner: bigint, interrupted?: AbortSignal): Promise<void> {
    const handle = this.handle(fh);
    if ((op & ~LOCK_NB) === LOCK_UN) return this.commitThenUnlock(handle, () => this.locks.flock(handle.ino, op, owner));
    if ((await this.locks.flock(handle.ino, op, owner, interrupted)) === 'store') await this.revalidate(handle);
  }

  /** Unlocks; first commits the file's pending writes unless the inode is claimed (then sharing the claim commits them). */
  private async commitThenUnlock(handle: Handle, unlock: () => Promise<unknown>): Promise<void> {
    let failed: unknown;
    if (this.locks.holdsAny(handle.ino) && !this.locks.claimed(handle.ino)) {
      try {
        await handle.file.flush();
      } catch (err) {
        failed = err;
      }
    }
    await unlock();
    if (failed) throw failed;
  }

  /** Re-reads the committed attributes and, unless this mount has writes pending, the block map. */
  private async revalidate(handle: Handle): Promise<void> {
    this.attrs.delete(handle.ino);
    handle.file.revalidate(await this.attrOf(handle.ino));
  }

  /** `into`: a buffer to read into (see OpenFile.read); a Buffer when read without waiting. */
  read(fh: number, length: number, position: number, into?: Buffer): Buffer | Promise<Buffer> {
    const handle = this.handle(fh);
    if (!handle.atimeChecked) return this.touchAtime(handle).then(() => handle.file.read(position, length, into));
    return handle.file.read(position, length, into);
  }

  /**
   * relatime, as Linux does for local filesystems: a read updates the access time when it is not
   * newer than the last change or is more than a day old; checked once per open handle, so a
   * stream costs at most one transaction.
   */
  private async touchAtime(handle: Handle): Promise<void> {
    handle.atimeChecked = true;
    if (this.options.readOnly) return;
    try {
      const attr = await this.attrOf(handle.ino);
      const now = nowNs();
      if (attr.atime <= attr.mtime || attr.atime <= attr.ctime || now - attr.atime > DAY_NS) {
        await this.readAttr(handle.ino, () => this.meta.setAtime(handle.ino, now));
      }
    } catch {
      // An access time is not worth failing a read for.
    }
  }

  /** A number when the write was done without waiting (see OpenFile.write); throws FsError. */
  write(fh: number, data: Buffer, position: number): number | Promise<number> {
    this.writable();
    const handle = this.handle(fh);
    if ((handle.flags & O_ACCMODE) === 0) throw new FsError('EBADF');
    return handle.file.write(position, data);
  }

  /**
   * fallocate(2). Mode 0 makes the file at least offset + length long; the new range is a hole,
   * since blocks are only stored when written (so, unlike on a disk, a later write can still
   * fail for want of space). FALLOC_FL_KEEP_SIZE alone has nothing to reserve and succeeds.
   * FALLOC_FL_PUNCH_HOLE (with KEEP_SIZE) and FALLOC_FL_ZERO_RANGE zero the range, committed at
   * once: blocks it covers whole become holes (their space is freed), partly covered ones are
   * rewritten. ZERO_RANGE without KEEP_SIZE then extends the file as mode 0 does. Collapsing
   * and inserting ranges are not supported (EOPNOTSUPP).
   */
  async fallocate(fh: number, mode: number, offset: number, length: number): Promise<void> {
    this.writable();
    const handle = this.handle(fh);
    if ((handle.flags & O_ACCMODE) === 0) throw new FsError('EBADF');
    if (offset < 0 || length <= 0) throw new FsError('EINVAL');
    if (mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) throw new FsError('EOPNOTSUPP');
    const zeroing = mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE);
    // As the kernel's own checks: a punch never changes the size; the two are exclusive.
    if (mode & FALLOC_FL_PUNCH_HOLE && (!(mode & FALLOC_FL_KEEP_SIZE) || mode & FALLOC_FL_ZERO_RANGE)) throw new FsError('EOPNOTSUPP');
    if (zeroing) await handle.file.zeroRange(offset, length);
    if (mode & FALLOC_FL_KEEP_SIZE) return;
    const attr = await handle.file.extend(offset + length);
    if (attr) this.rememberAttr(attr);
  }

  /** close(2) of a descriptor: commit, so the next open anywhere sees the data (close-to-open). */
  flush(fh: number): void | Promise<void> {
    const handle = this.handles.get(fh);
    if (handle) return handle.file.flush();
  }

  async fsync(fh: number): Promise<void> {
    await this.handle(fh).file.flush();
    // An engine whose commits are not durable by themselves (embedded SQLite) syncs them now.
    await this.meta.kv.sync?.();
  }

  /** fsync of a directory: namespace changes are committed when they return; make them durable. */
  async fsyncdir(): Promise<void> {
    await this.meta.kv.sync?.();
  }

  /** The last close of a handle: commit what it wrote, then forget the file if nothing else holds it. */
  release(fh: number): void | Promise<void> {
    const handle = this.handles.get(fh);
    if (!handle) return;
    this.handles.delete(fh);
    const file = handle.file;
    file.handles -= 1;
    const forget = (): void => {
      if (file.handles === 0 && !file.hasPendingWrites) {
        this.files.delete(handle.ino);
        if (file.orphaned) this.releaseOrphan(handle.ino);
      }
    };
    let flushed: void | Promise<void>;
    try {
      flushed = file.flush();
    } catch (err) {
      forget();
      throw err;
    }
    if (!flushed) return forget();
    return flushed.finally(forget);
  }

  // ---- extended attributes -------------------------------------------------------------------

  private checkXattrName(name: string): void {
    if (name.length === 0 || Buffer.byteLength(name) > 255) throw new FsError('ERANGE');
    // No POSIX ACLs here: say so, as filesystems without ACL support do.
    if (name.startsWith('system.')) throw new FsError('EOPNOTSUPP');
  }

  async setxattr(path: string, name: string, value: Buffer, flags: number): Promise<void> {
    this.writable();
    this.checkXattrName(name);
    if (value.length > XATTR_SIZE_MAX) throw new FsError('E2BIG');
    const ino = await this.resolve(path);
    this.xattrNames.delete(ino);
    await this.meta.setXattr(ino, name, Buffer.from(value), flags);
    this.xattrNames.delete(ino);
    this.attrs.delete(ino);
  }

  getxattr(path: string, name: string): Buffer | Promise<Buffer> {
    // The kernel asks for security.capability before every write(2): answered at once when the
    // path and the inode's names are cached and the name is absent.
    const ino = this.resolveCached(path);
    const names = ino === undefined ? undefined : fresh(this.xattrNames, ino);
    if (names && !names.has(name)) throw new FsError('ENODATA', name);
    return this.getxattrWaiting(path, name);
  }

  private async getxattrWaiting(path: string, name: string): Promise<Buffer> {
    const ino = await this.resolve(path);
    if (name.startsWith('system.')) throw new FsError('ENODATA');
    // The kernel asks for security.capability before every write; answer absent names from the
    // cached name list instead of a round trip to the metadata store.
    const names = await this.xattrNamesOf(ino);
    if (names && !names.has(name)) throw new FsError('ENODATA', name);
    return this.meta.getXattr(ino, name);
  }

  async listxattr(path: string): Promise<string[]> {
    const ino = await this.resolve(path);
    return [...((await this.xattrNamesOf(ino)) ?? (await this.meta.listXattrs(ino)))];
  }

  /** An inode's xattr names, cached for attrCacheMs (undefined when caching is off). */
  private async xattrNamesOf(ino: number): Promise<Set<string> | undefined> {
    if (this.options.attrCacheMs <= 0) return undefined;
    const cached = fresh(this.xattrNames, ino);
    if (cached) return cached;
    const names = new Set(await this.meta.listXattrs(ino));
    this.xattrNames.set(ino, { value: names, expires: Date.now() + this.options.attrCacheMs });
    return names;
  }

  async removexattr(path: string, name: string): Promise<void> {
    this.writable();
    this.checkXattrName(name);
    const ino = await this.resolve(path);
    this.xattrNames.delete(ino);
    await this.meta.removeXattr(ino, name);
    this.xattrNames.delete(ino);
    this.attrs.delete(ino);
  }

  // ---- whole filesystem ----------------------------------------------------------------------

  async statfs(): Promise<StatFs> {
    // The backends do not report a capacity; advertise a large one (1 PiB) so tools do not refuse.
    // Counts are 32-bit in the binding, hence 1 MiB units.
    const blockSize = 1 << 20;
    const blocks = 2 ** 30;
    return { blockSize, blocks, blocksFree: blocks, files: 2 ** 32 - 1, filesFree: 2 ** 32 - 1, nameMax: NAME_MAX };
  }

  /** Commits every open file's pending writes (shutdown, sync). */
  async flushAll(): Promise<void> {
    // async: a file that throws at once (poisoned) must not keep the others from flushing.
    await Promise.all([...this.files.values()].map(async (f) => f.flush()));
  }

  /** Flushes, then waits for background reclaims. */
  async close(): Promise<void> {
    clearInterval(this.flushTimer);
    this.locks.close();
    for (const [ino, timer] of this.pendingReclaims) {
      clearTimeout(timer);
      this.reclaimIfUnheld(ino);
    }
    await this.unwatch?.().catch(() => undefined);
    await this.flushAll();
    // Reclaims start block deletes of their own: wait until nothing is left.
    while (this.background.size > 0) await Promise.all([...this.background]);
  }
}

// Filesystem metadata on a transactional key-value engine.
//
// Every namespace change (create, mkdir, link, unlink, rmdir, rename, symlink) is one
// transaction that re-reads and compares what it depends on, so two mounts racing on one name
// can never both win. The rule that keeps directory operations safe: every change to a
// directory's entries also rewrites the directory's attribute key (mtime/ctime/nlink), and every
// transaction that depends on a directory's contents reads that key. Likewise every change to a
// file's block map rewrites the file's attribute key.
//
// This layer deals in inodes, attributes and block ids; it never sees file bytes.

import { FsError, UsageError } from '../errors';
import type { KvEngine, KvTxn } from './kv';
import {
  Attr,
  BlockRef,
  CHUNK_BLOCKS,
  ChunkMap,
  Entry,
  FileType,
  FORMAT_VERSION,
  PARTS_FORMAT_VERSION,
  ROOT_INO,
  VolumeSettings,
  decodeAttr,
  decodeChunk,
  decodeEntry,
  encodeAttr,
  encodeChunk,
  encodeEntry,
  keys,
  nowNs,
  refIds,
  sameRef,
  typeBits,
} from './schema';

const S_ISGID = 0o2000;
/** Chunk keys one transaction may delete; larger removals continue in further transactions. */
const CHUNKS_PER_TXN = 96;
const INODE_BATCH = 256;
const BLOCK_ID_BATCH = 1024;

export interface NewNode {
  type: FileType;
  /** Permission bits (07777); the type bits come from `type`. */
  perm: number;
  uid: number;
  gid: number;
  rdev?: number;
  /** Symlink target. */
  target?: string;
}

export interface AttrChanges {
  perm?: number;
  uid?: number;
  gid?: number;
  atime?: bigint;
  mtime?: bigint;
}

export interface BlockWrite {
  /** Block index within the file. */
  index: number;
  ref: BlockRef;
  /**
   * Set when `ref` is `base` plus new parts: the commit applies only while the file's block is
   * still `base` (else it throws BaseChangedError and the caller stores the whole block).
   */
  base?: BlockRef;
}

/**
 * A commit of parts found that another commit (usually another mount's) replaced the blocks the
 * parts were written over. Nothing was committed; `indexes` are the blocks to store whole.
 */
export class BaseChangedError extends Error {
  constructor(readonly indexes: number[]) {
    super(`blocks ${indexes.join(', ')} changed under a commit of parts`);
    this.name = 'BaseChangedError';
  }
}

/** The outcome of removing a name: the inode it pointed to, and whether that was its last name. */
export interface Unlinked {
  attr: Attr;
  /** True when nlink reached 0: the inode is now an orphan, to be destroyed once no handle needs it. */
  orphaned: boolean;
  /** unlink(): the directory's attributes as the same commit left them. */
  dir?: Attr;
}

/** What a mount says about itself in `session/{id}`. */
export interface SessionInfo {
  id: string;
  host: string;
  pid: number;
  mountpoint: string;
  version: string;
  /** ISO 8601 */
  startedAt: string;
}

export interface VolumeSummary {
  files: number;
  dirs: number;
  symlinks: number;
  /** FIFOs, sockets, device nodes. */
  others: number;
  /** Bytes of data referenced by block maps. */
  bytes: number;
  /** Inodes without a name whose data is not reclaimed yet. */
  orphans: number;
}

export const XATTR_CREATE = 1;
export const XATTR_REPLACE = 2;

/** A range of ids reserved from a counter key with one transaction. */
class IdAllocator {
  private next = 0;
  private end = 0;
  private pending: Promise<void> | undefined;

  constructor(
    private readonly kv: KvEngine,
    private readonly key: string,
    private readonly batch: number,
    private readonly first: number,
  ) {}

  async take(count = 1): Promise<number[]> {
    const ids: number[] = [];
    while (ids.length < count) {
      if (this.next < this.end) {
        ids.push(this.next++);
        continue;
      }
      // One refill at a time; others wait for it instead of reserving ranges of their own.
      if (!this.pending) {
        const want = Math.max(this.batch, count - ids.length);
        this.pending = this.refill(want).finally(() => (this.pending = undefined));
      }
      await this.pending;
    }
    return ids;
  }

  private async refill(count: number): Promise<void> {
    const start = await this.kv.txn(async (tx) => {
      const value = await tx.get(this.key);
      const start = value ? Number(value.toString()) : this.first;
      tx.put(this.key, Buffer.from(String(start + count)));
      return start;
    });
    this.next = start;
    this.end = start + count;
  }
}

function chunkOf(blockIndex: number): number {
  return Math.floor(blockIndex / CHUNK_BLOCKS);
}

export class Meta {
  readonly blockSize: number;
  /** Block maps may list parts (format 3 and later; older volumes stay readable by older kvfs). */
  readonly partsAllowed: boolean;
  private readonly inodes: IdAllocator;
  private readonly blockIds: IdAllocator;

  private constructor(
    readonly kv: KvEngine,
    readonly settings: VolumeSettings,
  ) {
    this.blockSize = settings.blockSize;
    this.partsAllowed = settings.formatVersion >= PARTS_FORMAT_VERSION;
    this.inodes = new IdAllocator(kv, keys.inodeCounter, INODE_BATCH, ROOT_INO + 1);
    this.blockIds = new IdAllocator(kv, keys.blockCounter, BLOCK_ID_BATCH, 1);
  }

  /** Reads the volume's settings; a volume that was never formatted is a usage error. */
  static async loadSettings(kv: KvEngine, describe: string): Promise<VolumeSettings | undefined> {
    const value = await kv.get(keys.setting);
    if (!value) return undefined;
    const settings = JSON.parse(value.toString()) as VolumeSettings;
    if (settings.formatVersion > FORMAT_VERSION) {
      throw new UsageError(
        `volume ${describe} has format version ${settings.formatVersion}, newer than this kvfs understands (${FORMAT_VERSION}); upgrade kvfs`,
      );
    }
    return settings;
  }

  static async open(kv: KvEngine, describe: string): Promise<Meta> {
    const settings = await Meta.loadSettings(kv, describe);
    if (!settings) {
      const data = describe.startsWith('file:') ? '' : ' --data URL';
      throw new UsageError(`no volume at ${describe}; create it with 'kvfs format --meta ${describe}${data}'`);
    }
    return new Meta(kv, settings);
  }

  /**
   * Creates the volume: settings and the root directory, in one transaction. With force, an
   * existing volume's metadata is deleted first (its blocks are left to `kvfs gc`).
   */
  static async format(kv: KvEngine, settings: VolumeSettings, root: { uid: number; gid: number }, force: boolean): Promise<void> {
    if (force) {
      // Delete everything in the volume's namespace, in batches that fit a transaction, except the
      // block id counter: new blocks must never reuse the ids of the old volume's blocks (which
      // stay in the block store until `kvfs gc`).
      let startAfter: string | undefined;
      for (;;) {
        const batch = (await kv.scan('', { startAfter, limit: 100 })).filter(({ key }) => key !== keys.blockCounter);
        if (batch.length === 0) break;
        startAfter = batch[batch.length - 1].key;
        await kv.txn(async (tx) => {
          for (const { key } of batch) tx.delete(key);
        });
      }
    }
    const now = nowNs();
    await kv.txn(async (tx) => {
      if (await tx.get(keys.setting)) {
        throw new UsageError(`a volume named '${settings.name}' already exists there; use --force to replace it (its data is lost)`);
      }
      tx.put(keys.setting, Buffer.from(JSON.stringify(settings, null, 1)));
      const rootAttr: Attr = {
        ino: ROOT_INO,
        type: 'dir',
        mode: typeBits('dir') | 0o755,
        uid: root.uid,
        gid: root.gid,
        nlink: 2,
        size: 4096,
        used: 0,
        rdev: 0,
        atime: now,
        mtime: now,
        ctime: now,
        parent: ROOT_INO,
      };
      tx.put(keys.attr(ROOT_INO), encodeAttr(rootAttr));
    });
  }

  // ---- reads ---------------------------------------------------------------------------

  async getattr(ino: number): Promise<Attr> {
    const value = await this.kv.get(keys.attr(ino));
    if (!value) throw new FsError('ENOENT', `inode ${ino}`);
    return decodeAttr(ino, value);
  }

  /**
   * Several keys in one round trip (etcd: at one revision). Engines without getMany (SQLite, in
   * process) read them one by one, as the callers did before: they need no single snapshot.
   */
  private readMany(list: string[]): Promise<Array<Buffer | undefined>> {
    return this.kv.getMany ? this.kv.getMany(list) : Promise.all(list.map((key) => this.kv.get(key)));
  }

  /**
   * lookup() and the attributes of the inode the name points to. `guess`: the inode the caller
   * believes it points to; when right (the usual case), both are read in one round trip.
   */
  async lookupWithAttr(parent: number, name: string, guess: number): Promise<{ entry: Entry; attr: Attr }> {
    const [entryValue, attrValue] = await this.readMany([keys.entry(parent, name), keys.attr(guess)]);
    if (!entryValue) throw new FsError('ENOENT', name);
    const entry = decodeEntry(name, entryValue);
    if (entry.ino === guess && attrValue) return { entry, attr: decodeAttr(guess, attrValue) };
    return { entry, attr: await this.getattr(entry.ino) };
  }

  /** getattr() and the block map of one chunk, read at one revision in one round trip. */
  async getattrWithChunk(ino: number, chunk: number): Promise<{ attr: Attr; map: ChunkMap }> {
    const [attrValue, chunkValue] = await this.readMany([keys.attr(ino), keys.chunk(ino, chunk)]);
    if (!attrValue) throw new FsError('ENOENT', `inode ${ino}`);
    return { attr: decodeAttr(ino, attrValue), map: decodeChunk(chunkValue) };
  }

  async lookup(parent: number, name: string): Promise<Entry> {
    const value = await this.kv.get(keys.entry(parent, name));
    if (!value) throw new FsError('ENOENT', name);
    return decodeEntry(name, value);
  }

  async readdir(ino: number): Promise<Entry[]> {
    const prefix = keys.entries(ino);
    const entries: Entry[] = [];
    let startAfter: string | undefined;
    for (;;) {
      const batch = await this.kv.scan(prefix, { startAfter, limit: 1000 });
      for (const { key, value } of batch) entries.push(decodeEntry(key.slice(prefix.length), value));
      if (batch.length < 1000) return entries;
      startAfter = batch[batch.length - 1].key;
    }
  }

  async readlink(ino: number): Promise<string> {
    const value = await this.kv.get(keys.symlink(ino));
    if (!value) throw new FsError('EINVAL', `inode ${ino} is not a symlink`);
    return value.toString();
  }

  /** The block map of one chunk (CHUNK_BLOCKS blocks). */
  async readChunk(ino: number, chunk: number): Promise<ChunkMap> {
    return decodeChunk(await this.kv.get(keys.chunk(ino, chunk)));
  }

  /** Every block id a file references (for fsck and gc). */
  async blockIdsOf(ino: number): Promise<number[]> {
    const ids: number[] = [];
    for (const { value } of await this.kv.scan(keys.chunks(ino))) {
      for (const ref of decodeChunk(value).values()) ids.push(...refIds(ref));
    }
    return ids;
  }

  async allocBlockIds(count: number): Promise<number[]> {
    return this.blockIds.take(count);
  }

  // ---- namespace changes -----------------------------------------------------------------

  private async parentDir(tx: KvTxn, parent: number): Promise<Attr> {
    const value = await tx.get(keys.attr(parent));
    if (!value) throw new FsError('ENOENT', `directory inode ${parent}`);
    const attr = decodeAttr(parent, value);
    if (attr.type !== 'dir') throw new FsError('ENOTDIR');
    // A directory that was removed (while some process still had it as cwd) takes no new names.
    if (attr.nlink === 0) throw new FsError('ENOENT');
    return attr;
  }

  private async attrIn(tx: KvTxn, ino: number): Promise<Attr> {
    const value = await tx.get(keys.attr(ino));
    if (!value) throw new FsError('ENOENT', `inode ${ino}`);
    return decodeAttr(ino, value);
  }

  private async entryIn(tx: KvTxn, parent: number, name: string): Promise<Entry | undefined> {
    const value = await tx.get(keys.entry(parent, name));
    return value ? decodeEntry(name, value) : undefined;
  }

  private touchDir(tx: KvTxn, dir: Attr, now: bigint, nlinkDelta = 0): void {
    dir.mtime = now;
    dir.ctime = now;
    dir.nlink += nlinkDelta;
    tx.put(keys.attr(dir.ino), encodeAttr(dir));
  }

  /** Creates a file, directory, symlink or special file. EEXIST if the name is taken. */
  async create(parent: number, name: string, node: NewNode): Promise<Attr> {
    return (await this.createIn(parent, name, node)).attr;
  }

  /** create(), also returning the directory's attributes as the same commit left them. */
  async createIn(parent: number, name: string, node: NewNode): Promise<{ attr: Attr; dir: Attr }> {
    const [ino] = await this.inodes.take();
    return this.kv.txn(async (tx) => {
      await tx.getMany([keys.attr(parent), keys.entry(parent, name)]);
      const dir = await this.parentDir(tx, parent);
      if (await this.entryIn(tx, parent, name)) throw new FsError('EEXIST', name);
      const now = nowNs();
      let perm = node.perm & 0o7777;
      let gid = node.gid;
      // BSD group semantics in a setgid directory: inherit its group; subdirectories stay setgid.
      if (dir.mode & S_ISGID) {
        gid = dir.gid;
        if (node.type === 'dir') perm |= S_ISGID;
      }
      const attr: Attr = {
        ino,
        type: node.type,
        mode: typeBits(node.type) | perm,
        uid: node.uid,
        gid,
        nlink: node.type === 'dir' ? 2 : 1,
        size: node.type === 'symlink' ? Buffer.byteLength(node.target ?? '') : node.type === 'dir' ? 4096 : 0,
        used: 0,
        rdev: node.rdev ?? 0,
        atime: now,
        mtime: now,
        ctime: now,
        parent: node.type === 'dir' ? parent : 0,
      };
      tx.put(keys.attr(ino), encodeAttr(attr));
      tx.put(keys.entry(parent, name), encodeEntry(ino, node.type));
      if (node.type === 'symlink') tx.put(keys.symlink(ino), Buffer.from(node.target ?? ''));
      // A new inode has no block map. Saying so in the commit (a no-op delete) lets an engine with
      // a revision cache (etcd) answer the first commitBlocks' read of chunk 0 without a request.
      if (node.type === 'file') tx.delete(keys.chunk(ino, 0));
      this.touchDir(tx, dir, now, node.type === 'dir' ? 1 : 0);
      return { attr, dir };
    });
  }

  /** Adds a name for an existing non-directory inode. */
  async link(ino: number, parent: number, name: string): Promise<Attr> {
    return this.kv.txn(async (tx) => {
      await tx.getMany([keys.attr(ino), keys.attr(parent), keys.entry(parent, name)]);
      const attr = await this.attrIn(tx, ino);
      if (attr.type === 'dir') throw new FsError('EPERM', 'hard links to directories are not allowed');
      if (attr.nlink === 0) throw new FsError('ENOENT');
      const dir = await this.parentDir(tx, parent);
      if (await this.entryIn(tx, parent, name)) throw new FsError('EEXIST', name);
      const now = nowNs();
      attr.nlink += 1;
      attr.ctime = now;
      tx.put(keys.attr(ino), encodeAttr(attr));
      tx.put(keys.entry(parent, name), encodeEntry(ino, attr.type));
      this.touchDir(tx, dir, now);
      return attr;
    });
  }

  /** Drops one link of a non-directory inode, in the caller's transaction. */
  private dropLink(tx: KvTxn, attr: Attr, now: bigint): Unlinked {
    attr.nlink -= 1;
    attr.ctime = now;
    tx.put(keys.attr(attr.ino), encodeAttr(attr));
    const orphaned = attr.nlink <= 0;
    // The orphan key makes the pending reclaim durable: a crash before destroy() leaves it for fsck/gc.
    if (orphaned) tx.put(keys.orphan(attr.ino), Buffer.from(String(now)));
    return { attr, orphaned };
  }

  /**
   * Removes a name of a non-directory. `hint`: the inode the caller believes the name points to;
   * its attributes are read in the same round trip as the directory's (only a guess: the entry
   * read in the transaction decides).
   */
  async unlink(parent: number, name: string, hint?: number): Promise<Unlinked> {
    return this.kv.txn(async (tx) => {
      await tx.getMany([keys.attr(parent), keys.entry(parent, name), ...(hint !== undefined && hint !== parent ? [keys.attr(hint)] : [])]);
      const dir = await this.parentDir(tx, parent);
      const entry = await this.entryIn(tx, parent, name);
      if (!entry) throw new FsError('ENOENT', name);
      if (entry.type === 'dir') throw new FsError('EISDIR', name);
      const attr = await this.attrIn(tx, entry.ino);
      const now = nowNs();
      tx.delete(keys.entry(parent, name));
      this.touchDir(tx, dir, now);
      return { ...this.dropLink(tx, attr, now), dir };
    });
  }

  /** Fails with ENOTEMPTY unless the directory has no entries. Caller must have read its attr. */
  private async assertEmpty(tx: KvTxn, ino: number): Promise<void> {
    const children = await tx.scan(keys.entries(ino), { limit: 1 });
    if (children.length > 0) throw new FsError('ENOTEMPTY');
  }

  /** Deletes a directory's own keys (attr and xattrs) in the caller's transaction. */
  private async deleteDirKeys(tx: KvTxn, ino: number): Promise<void> {
    tx.delete(keys.attr(ino));
    for (const { key } of await tx.scan(keys.xattrs(ino))) tx.delete(key);
  }

  /** Removes an empty directory; returns the parent's attributes as the same commit left them. */
  async rmdir(parent: number, name: string): Promise<Attr> {
    return this.kv.txn(async (tx) => {
      await tx.getMany([keys.attr(parent), keys.entry(parent, name)]);
      const dir = await this.parentDir(tx, parent);
      const entry = await this.entryIn(tx, parent, name);
      if (!entry) throw new FsError('ENOENT', name);
      if (entry.type !== 'dir') throw new FsError('ENOTDIR', name);
      await this.attrIn(tx, entry.ino);
      await this.assertEmpty(tx, entry.ino);
      await this.deleteDirKeys(tx, entry.ino);
      tx.delete(keys.entry(parent, name));
      this.touchDir(tx, dir, nowNs(), -1);
      return dir;
    });
  }

  /**
   * Moves a name, atomically replacing what the destination name pointed to. Returns what was
   * replaced when that was a non-directory inode (its link count dropped).
   */
  async rename(srcParent: number, srcName: string, dstParent: number, dstName: string): Promise<Unlinked | undefined> {
    return this.kv.txn(async (tx) => {
      await tx.getMany([keys.attr(srcParent), keys.attr(dstParent), keys.entry(srcParent, srcName), keys.entry(dstParent, dstName)]);
      const srcDir = await this.parentDir(tx, srcParent);
      const dstDir = srcParent === dstParent ? srcDir : await this.parentDir(tx, dstParent);
      const src = await this.entryIn(tx, srcParent, srcName);
      if (!src) throw new FsError('ENOENT', srcName);
      const dst = await this.entryIn(tx, dstParent, dstName);
      if (dst && dst.ino === src.ino) return undefined; // two names of one file: nothing to do
      const moved = await this.attrIn(tx, src.ino);
      const now = nowNs();

      if (moved.type === 'dir' && srcParent !== dstParent) {
        // Two such renames on different mounts can touch disjoint keys and together form a cycle
        // cut off from the root (mv /p/a /q/b/c/a while mv /q/b /p/a/d/b): they all read and
        // rewrite one shared key, so they serialize.
        await tx.get(keys.renameLock);
        tx.put(keys.renameLock, Buffer.from(String(now)));
        // The kernel checks this on one mount; re-check against what is committed. The walk reads
        // outside the transaction: comparing every ancestor would put deep trees over etcd's
        // per-transaction limit, and the directories' own keys are compared already.
        for (let ino = dstParent; ino !== ROOT_INO && ino !== 0; ) {
          if (ino === src.ino) throw new FsError('EINVAL', 'cannot move a directory into itself');
          const value = await this.kv.get(keys.attr(ino));
          ino = value ? decodeAttr(ino, value).parent : 0;
        }
      }

      let replaced: Unlinked | undefined;
      let dstNlinkDelta = 0;
      if (dst) {
        const target = await this.attrIn(tx, dst.ino);
        if (moved.type === 'dir') {
          if (target.type !== 'dir') throw new FsError('ENOTDIR', dstName);
          await this.assertEmpty(tx, target.ino);
          await this.deleteDirKeys(tx, target.ino);
          dstNlinkDelta -= 1;
        } else {
          if (target.type === 'dir') throw new FsError('EISDIR', dstName);
          replaced = this.dropLink(tx, target, now);
        }
      }

      tx.delete(keys.entry(srcParent, srcName));
      tx.put(keys.entry(dstParent, dstName), encodeEntry(src.ino, moved.type));
      moved.ctime = now;
      if (moved.type === 'dir') {
        moved.parent = dstParent;
        if (srcParent !== dstParent) dstNlinkDelta += 1;
      }
      // Written before the directories so that a moved directory that is also one of them
      // (impossible: checked above) could not overwrite them; each key is written once.
      tx.put(keys.attr(moved.ino), encodeAttr(moved));
      if (srcParent === dstParent) {
        this.touchDir(tx, srcDir, now, dstNlinkDelta);
      } else {
        this.touchDir(tx, srcDir, now, moved.type === 'dir' ? -1 : 0);
        this.touchDir(tx, dstDir, now, dstNlinkDelta);
      }
      return replaced;
    });
  }

  /**
   * Reclaims an orphan (nlink 0): deletes its block map, symlink, xattrs and attributes, in
   * transactions of bounded size, calling onBlocks with the block ids each one released.
   * Does nothing if the inode got a name again or is already gone.
   */
  async destroy(ino: number, onBlocks: (ids: number[]) => Promise<void>): Promise<void> {
    for (;;) {
      const result = await this.kv.txn(async (tx) => {
        const value = await tx.get(keys.attr(ino));
        if (!value) {
          tx.delete(keys.orphan(ino));
          return { ids: [] as number[], done: true };
        }
        if (decodeAttr(ino, value).nlink > 0) return { ids: [] as number[], done: true };
        const chunks = await tx.scan(keys.chunks(ino), { limit: CHUNKS_PER_TXN });
        const ids: number[] = [];
        for (const { key, value: chunk } of chunks) {
          for (const ref of decodeChunk(chunk).values()) ids.push(...refIds(ref));
          tx.delete(key);
        }
        const done = chunks.length < CHUNKS_PER_TXN;
        if (done) {
          tx.delete(keys.attr(ino));
          tx.delete(keys.symlink(ino));
          tx.delete(keys.orphan(ino));
          for (const { key } of await tx.scan(keys.xattrs(ino))) tx.delete(key);
        } else {
          // Rewrite the attr so a concurrent destroy of the same inode conflicts instead of racing.
          tx.put(keys.attr(ino), value);
        }
        return { ids, done };
      });
      if (result.ids.length) await onBlocks(result.ids);
      if (result.done) return;
    }
  }

  /** Counts inodes by type and sums the bytes their block maps reference (reads all metadata). */
  async summary(): Promise<VolumeSummary> {
    const summary: VolumeSummary = { files: 0, dirs: 0, symlinks: 0, others: 0, bytes: 0, orphans: 0 };
    let startAfter: string | undefined;
    for (;;) {
      const batch = await this.kv.scan('A', { startAfter, limit: 1000 });
      for (const { key, value } of batch) {
        if (!key.endsWith('I') || key.length !== 18) continue;
        const attr = decodeAttr(parseInt(key.slice(1, 17), 16), value);
        if (attr.type === 'file') summary.files++;
        else if (attr.type === 'dir') summary.dirs++;
        else if (attr.type === 'symlink') summary.symlinks++;
        else summary.others++;
        summary.bytes += attr.used;
      }
      if (batch.length < 1000) break;
      startAfter = batch[batch.length - 1].key;
    }
    summary.orphans = (await this.listOrphans()).length;
    return summary;
  }

  async listOrphans(): Promise<number[]> {
    return (await this.orphans()).map((o) => o.ino);
  }

  /** Orphans and when each lost its last name (ns since the epoch). */
  async orphans(): Promise<Array<{ ino: number; since: bigint }>> {
    return (await this.kv.scan(keys.orphans)).map(({ key, value }) => ({ ino: keys.inodeOfOrphan(key), since: BigInt(value.toString() || '0') }));
  }

  /** Sessions (mounts) whose keys still exist. */
  async sessions(): Promise<SessionInfo[]> {
    return (await this.kv.scan(keys.sessions)).map(({ value }) => JSON.parse(value.toString()) as SessionInfo);
  }

  /** Ids of the sessions that hold an orphan open. */
  async holders(ino: number): Promise<string[]> {
    const prefix = keys.holds(ino);
    return (await this.kv.scan(prefix)).map(({ key }) => key.slice(prefix.length));
  }

  async dropHold(ino: number, session: string): Promise<void> {
    await this.kv.txn(async (tx) => tx.delete(keys.hold(ino, session)));
  }

  // ---- attributes ------------------------------------------------------------------------

  async setattr(ino: number, changes: AttrChanges): Promise<Attr> {
    return this.kv.txn(async (tx) => {
      const attr = await this.attrIn(tx, ino);
      if (changes.perm !== undefined) attr.mode = (attr.mode & ~0o7777) | (changes.perm & 0o7777);
      if (changes.uid !== undefined) attr.uid = changes.uid;
      if (changes.gid !== undefined) attr.gid = changes.gid;
      if (changes.atime !== undefined) attr.atime = changes.atime;
      if (changes.mtime !== undefined) attr.mtime = changes.mtime;
      attr.ctime = nowNs();
      tx.put(keys.attr(ino), encodeAttr(attr));
      return attr;
    });
  }

  /** Sets only the access time (reads do not change ctime). */
  async setAtime(ino: number, atime: bigint): Promise<Attr> {
    return this.kv.txn(async (tx) => {
      const attr = await this.attrIn(tx, ino);
      attr.atime = atime;
      tx.put(keys.attr(ino), encodeAttr(attr));
      return attr;
    });
  }

  /**
   * Removes a chunk range's blocks at and beyond `size` in the caller's transaction: whole chunk
   * keys are deleted, the boundary block is shortened. Returns the released block ids and whether
   * more chunk keys remain beyond this transaction's share.
   */
  private async trimChunks(tx: KvTxn, attr: Attr, size: number): Promise<{ ids: number[]; more: boolean }> {
    const ino = attr.ino;
    const firstDropped = Math.ceil(size / this.blockSize); // first block index entirely beyond size
    const { ids, next } = await this.dropBlockRefs(tx, attr, firstDropped, Infinity);
    const more = next !== undefined;
    // The block that straddles `size` keeps its id but stops counting bytes past the new end, so a
    // later extension reads zeros there.
    const tail = size % this.blockSize;
    if (tail > 0) {
      const index = firstDropped - 1;
      const key = keys.chunk(ino, chunkOf(index));
      const map = decodeChunk(await tx.get(key));
      const ref = map.get(index % CHUNK_BLOCKS);
      if (ref && ref.len > tail) {
        attr.used -= ref.len - tail;
        map.set(index % CHUNK_BLOCKS, { ...ref, len: tail });
        tx.put(key, encodeChunk(map));
      }
    }
    return { ids, more };
  }

  /**
   * Removes the references to blocks [first, end) of `attr`'s file in the caller's transaction
   * (attr.used follows), from the chunk key holding `first` on, at most CHUNKS_PER_TXN chunk keys;
   * chunk keys left empty are deleted. Returns the released ids, and the chunk to go on from when
   * keys in the range remain beyond this transaction's share.
   */
  private async dropBlockRefs(tx: KvTxn, attr: Attr, first: number, end: number): Promise<{ ids: number[]; next?: number }> {
    const ino = attr.ino;
    const fromKey = keys.chunk(ino, chunkOf(first));
    const endKey = Number.isFinite(end) ? keys.chunk(ino, chunkOf(end - 1) + 1) : undefined;
    const chunks = (await tx.scan(keys.chunks(ino), { startAfter: keyBefore(fromKey), limit: CHUNKS_PER_TXN + 1 })).filter(
      ({ key }) => key >= fromKey && (endKey === undefined || key < endKey),
    );
    const ids: number[] = [];
    for (const { key, value } of chunks.slice(0, CHUNKS_PER_TXN)) {
      const chunk = keys.chunkIndexOf(key);
      const map = decodeChunk(value);
      let changed = false;
      for (const [i, ref] of map) {
        const index = chunk * CHUNK_BLOCKS + i;
        if (index < first || index >= end) continue;
        ids.push(...refIds(ref));
        attr.used -= ref.len;
        map.delete(i);
        changed = true;
      }
      if (map.size === 0) tx.delete(key);
      else if (changed) tx.put(key, encodeChunk(map));
    }
    return { ids, next: chunks.length > CHUNKS_PER_TXN ? keys.chunkIndexOf(chunks[CHUNKS_PER_TXN].key) : undefined };
  }

  /** Sets a file's size; blocks beyond the new end are released (returned for deletion). */
  async truncate(ino: number, size: number): Promise<{ attr: Attr; released: number[] }> {
    const released: number[] = [];
    let result = await this.kv.txn(async (tx) => {
      const attr = await this.attrIn(tx, ino);
      if (attr.type === 'dir') throw new FsError('EISDIR');
      if (attr.type !== 'file') throw new FsError('EINVAL');
      const trimmed = size < attr.size ? await this.trimChunks(tx, attr, size) : { ids: [], more: false };
      const now = nowNs();
      attr.size = size;
      attr.mtime = now;
      attr.ctime = now;
      tx.put(keys.attr(ino), encodeAttr(attr));
      return { attr, ...trimmed };
    });
    released.push(...result.ids);
    // Very large files: remaining chunk keys beyond the (already committed) new size.
    while (result.more) {
      result = await this.kv.txn(async (tx) => {
        const attr = await this.attrIn(tx, ino);
        const trimmed = await this.trimChunks(tx, attr, Math.max(size, attr.size));
        tx.put(keys.attr(ino), encodeAttr(attr));
        return { attr, ...trimmed };
      });
      released.push(...result.ids);
    }
    return { attr: result.attr, released };
  }

  /**
   * Makes blocks [first, end) of a file holes (fallocate's punch hole and zero range, for the
   * blocks the range covers whole) and sets mtime and ctime; size is unchanged. A few chunk keys
   * per transaction: a crash in between leaves some of the range cleared, never other data.
   * Returns the committed attributes and the ids no longer referenced.
   */
  async clearBlocks(ino: number, first: number, end: number): Promise<{ attr: Attr; released: number[] }> {
    const released: number[] = [];
    for (let from = first; ; ) {
      const result = await this.kv.txn(async (tx) => {
        const attr = await this.attrIn(tx, ino);
        if (attr.type !== 'file') throw new FsError(attr.type === 'dir' ? 'EISDIR' : 'EINVAL');
        const dropped = await this.dropBlockRefs(tx, attr, from, end);
        const now = nowNs();
        attr.mtime = now;
        attr.ctime = now;
        tx.put(keys.attr(ino), encodeAttr(attr));
        return { attr, ...dropped };
      });
      released.push(...result.ids);
      if (result.next === undefined) return { attr: result.attr, released };
      from = Math.max(first, result.next * CHUNK_BLOCKS);
    }
  }

  /**
   * Switches a file's block map to freshly stored blocks, and sets size and times, in one
   * transaction. The size only grows here (a write never shortens a file; truncate does).
   * Returns the committed attributes and the ids of blocks no longer referenced.
   */
  async commitBlocks(ino: number, writes: readonly BlockWrite[], size: number, mtime: bigint): Promise<{ attr: Attr; replaced: number[] }> {
    const byChunk = new Map<number, BlockWrite[]>();
    for (const w of writes) {
      const list = byChunk.get(chunkOf(w.index)) ?? [];
      list.push(w);
      byChunk.set(chunkOf(w.index), list);
    }
    return this.kv.txn(async (tx) => {
      // The attributes and every chunk key this commit rewrites, in one round trip.
      await tx.getMany([keys.attr(ino), ...[...byChunk.keys()].map((chunk) => keys.chunk(ino, chunk))]);
      const attr = await this.attrIn(tx, ino);
      const replaced: number[] = [];
      const changed: number[] = [];
      for (const [chunk, list] of byChunk) {
        const key = keys.chunk(ino, chunk);
        const map = decodeChunk(await tx.get(key));
        for (const { index, ref, base } of list) {
          const old = map.get(index % CHUNK_BLOCKS);
          if (base) {
            // Parts keep the base and its older parts: nothing is replaced, if the base is current.
            if (!old || !sameRef(old, base)) changed.push(index);
          } else if (old && old.id !== ref.id) replaced.push(...refIds(old));
          attr.used += ref.len - (old?.len ?? 0);
          map.set(index % CHUNK_BLOCKS, ref);
        }
        tx.put(key, encodeChunk(map));
      }
      if (changed.length) throw new BaseChangedError(changed);
      attr.size = Math.max(attr.size, size);
      attr.mtime = mtime;
      if (mtime > attr.ctime) attr.ctime = mtime;
      tx.put(keys.attr(ino), encodeAttr(attr));
      return { attr, replaced };
    });
  }

  // ---- extended attributes ---------------------------------------------------------------

  async getXattr(ino: number, name: string): Promise<Buffer> {
    const value = await this.kv.get(keys.xattr(ino, name));
    if (!value) throw new FsError('ENODATA', name);
    return value;
  }

  async listXattrs(ino: number): Promise<string[]> {
    const prefix = keys.xattrs(ino);
    return (await this.kv.scan(prefix)).map(({ key }) => key.slice(prefix.length));
  }

  async setXattr(ino: number, name: string, value: Buffer, flags: number): Promise<void> {
    await this.kv.txn(async (tx) => {
      await tx.getMany([keys.attr(ino), keys.xattr(ino, name)]);
      const attr = await this.attrIn(tx, ino);
      const exists = (await tx.get(keys.xattr(ino, name))) !== undefined;
      if (flags & XATTR_CREATE && exists) throw new FsError('EEXIST', name);
      if (flags & XATTR_REPLACE && !exists) throw new FsError('ENODATA', name);
      tx.put(keys.xattr(ino, name), value);
      attr.ctime = nowNs();
      tx.put(keys.attr(ino), encodeAttr(attr));
    });
  }

  async removeXattr(ino: number, name: string): Promise<void> {
    await this.kv.txn(async (tx) => {
      await tx.getMany([keys.attr(ino), keys.xattr(ino, name)]);
      const attr = await this.attrIn(tx, ino);
      if ((await tx.get(keys.xattr(ino, name))) === undefined) throw new FsError('ENODATA', name);
      tx.delete(keys.xattr(ino, name));
      attr.ctime = nowNs();
      tx.put(keys.attr(ino), encodeAttr(attr));
    });
  }
}

/** The greatest key that sorts before `key` among keys of the same length class (for startAfter). */
function keyBefore(key: string): string {
  const last = key.charCodeAt(key.length - 1);
  return key.slice(0, -1) + String.fromCharCode(last - 1) + '\uffff';
}

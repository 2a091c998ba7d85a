// The data path of one open file: reads through the block cache, writes into dirty blocks held
// in memory, and commits (blocks to the block store first, then the block map to metadata).
//
// Layers a read looks through, newest first: dirty blocks (written, not yet committing), blocks
// being committed, then the committed block map. All handles of one inode on this mount share
// one OpenFile, so every handle (and stat) sees writes made through any other before they are
// committed.

import { AsyncResource } from 'node:async_hooks';
import { FsError } from '../errors';
import type { BlockStore } from '../data/store';
import type { Attr, BlockPart, BlockRef, ChunkMap } from '../meta/schema';
import { CHUNK_BLOCKS, contentId, nowNs } from '../meta/schema';
import { BaseChangedError, type BlockWrite, type Meta } from '../meta/meta';
import type { DirtyBudget } from './budget';
import type { BlockCache } from './cache';
import type { BufferPool } from './pool';

/**
 * The async context this module was loaded in, outside every FUSE request. Commits that a write
 * starts in the background run in it, so they belong to no request (lib/fs/metrics.ts counts
 * them as background instead of adding them to a request that has already answered).
 */
const backgroundScope = new AsyncResource('kvfs.background-commit');

/**
 * Bytes fetched for a read that is not sequential, when the store can read part of a block (a
 * 4 KiB random read then costs a GETRANGE of 64 KiB instead of a GET of the whole block).
 */
const PIECE = 64 * 1024;

/** Map re-reads for one block read while other mounts keep replacing the block (see blockMissing). */
const MISSING_BLOCK_ROUNDS = 8;

/**
 * When a commit stores only the changed bytes of a block as parts (lib/meta/schema.ts
 * BlockPart) instead of the whole block again: while the block would then have at most this many
 * parts, holding at most a quarter of a block between them. Past that the commit stores the
 * whole block (so a read of a block fetches at most 1 + MAX_PARTS objects, and parts never hold
 * much more than the block itself).
 */
const MAX_PARTS = 32;

/** Separate changed ranges a dirty block tracks; more are merged into one covering range. */
const MAX_RANGES = 8;

/** A block being modified in memory. Its buffer grows as needed, up to the block size. */
class DirtyBlock {
  private buf: Buffer;
  /** Bytes of the block that hold file data; past this the block reads as zeros. */
  len: number;
  /**
   * Byte ranges [from, to) written since the block left `baseRef`, sorted and disjoint (gaps a
   * write zero-filled included): what a commit as parts stores.
   */
  readonly ranges: Array<[number, number]> = [];

  /**
   * `capacity`: bytes to allocate now; small files start small, streams get a whole block (from
   * the pool: the block cache gives it back when it drops the committed block).
   */
  constructor(
    base: Buffer,
    capacity: number,
    private readonly blockSize: number,
    private readonly budget: DirtyBudget,
    private readonly pool: BufferPool,
    /** The committed block the buffer started from, when it may be committed as parts of it. */
    readonly baseRef?: BlockRef,
  ) {
    // Unzeroed memory is fine: bytes past `len` are never read, and gaps are zeroed in write().
    this.buf = this.alloc(Math.max(base.length, capacity));
    budget.add(this.buf.length);
    base.copy(this.buf);
    this.len = base.length;
  }

  /** Memory held, as counted in the dirty budget. */
  get capacity(): number {
    return this.buf.length;
  }

  private alloc(size: number): Buffer {
    return size === this.blockSize ? this.pool.take(size) : Buffer.allocUnsafe(size);
  }

  write(offset: number, data: Buffer): void {
    const end = offset + data.length;
    if (end > this.buf.length) {
      // Grow geometrically so appends copy each byte O(1) times on average.
      const grown = this.alloc(Math.min(this.blockSize, Math.max(end, this.buf.length * 2)));
      this.budget.add(grown.length - this.buf.length);
      this.buf.copy(grown, 0, 0, this.len);
      this.buf = grown;
    }
    if (offset > this.len) this.buf.fill(0, this.len, offset);
    data.copy(this.buf, offset);
    this.changed(Math.min(offset, this.len), end);
    this.len = Math.max(this.len, end);
  }

  /** Adds [from, to) to the changed ranges, merging those it touches. */
  private changed(from: number, to: number): void {
    if (from >= to) return;
    const r = this.ranges;
    let i = 0;
    while (i < r.length && r[i][1] < from) i++;
    let j = i;
    while (j < r.length && r[j][0] <= to) {
      from = Math.min(from, r[j][0]);
      to = Math.max(to, r[j][1]);
      j++;
    }
    r.splice(i, j - i, [from, to]);
    if (r.length > MAX_RANGES) r.splice(0, r.length, [r[0][0], r[r.length - 1][1]]);
  }

  /** The block's valid bytes (a view; the block must not be written after it is committed). */
  data(): Buffer {
    return this.buf.subarray(0, this.len);
  }

  /** True when the buffer holds little beyond the valid bytes (worth keeping as it is). */
  get compact(): boolean {
    return this.buf.length - this.len <= 64 * 1024;
  }

  copy(capacity: number): DirtyBlock {
    return new DirtyBlock(this.data(), capacity, this.blockSize, this.budget, this.pool);
  }

  /** The block is committed or superseded: its memory no longer counts as dirty. */
  release(): void {
    this.budget.release(this.buf.length);
  }
}

/** Serializes async critical sections (a tiny mutex). */
class Lock {
  private tail: Promise<void> = Promise.resolve();
  /** Sections queued or running. */
  private held = 0;

  /** True when no section is queued or running: the caller may act at once, synchronously. */
  get idle(): boolean {
    return this.held === 0;
  }

  run<T>(fn: () => Promise<T>): Promise<T> {
    this.held++;
    const result = this.tail.then(fn);
    this.tail = result.then(
      () => void this.held--,
      () => void this.held--,
    );
    return result;
  }
}

/** The committed content a partly overwritten block starts from, and the reference it came through (none for a hole). */
interface Base {
  data: Buffer;
  ref?: BlockRef;
  /** `data` is this write's own memory, not a cached block's. */
  copied?: boolean;
}

export interface OpenFileOptions {
  /** Dirty bytes of one file that start a commit in the background (default 64 MiB). */
  commitThreshold: number;
  /** Most blocks fetched ahead of a sequential reader. */
  maxReadahead: number;
  /** false: every write is committed before it is acknowledged (--writeback off). */
  writeback: boolean;
  /** The mount-wide limit on dirty bytes. */
  budget: DirtyBudget;
  /** Called with the committed attributes after every commit (to refresh attribute caches). */
  onCommit(attr: Attr): void;
  /** Deletes blocks (or parts) no commit references any more, in the background; the filesystem
   * awaits these at unmount. Failures only leak space (gc finds it). */
  deleteBlocks(ids: (number | string)[]): void;
}

export class OpenFile {
  /** Open handles on this mount. */
  handles = 0;
  /** Set once the file's last name is removed: destroy its data after the last close. */
  orphaned = false;
  /** The file size as this mount sees it, uncommitted writes included. */
  size: number;
  /** Modification time of the newest uncommitted write. */
  private pendingMtime: bigint | undefined;
  private dirty = new Map<number, DirtyBlock>();
  /** When the oldest uncommitted write was made (ms since epoch), for --flush-interval. */
  dirtySince = 0;
  private committing: Map<number, DirtyBlock> | undefined;
  private commitDone: Promise<void> | undefined;
  /** Committed block map, by chunk, as last read or committed by this mount. */
  private chunks = new Map<number, ChunkMap>();
  private readonly writeLock = new Lock();
  private readonly commitLock = new Lock();

  constructor(
    readonly ino: number,
    attr: Attr,
    private readonly meta: Meta,
    private readonly store: BlockStore,
    private readonly cache: BlockCache,
    private readonly options: OpenFileOptions,
  ) {
    this.size = attr.size;
  }

  private get blockSize(): number {
    return this.meta.blockSize;
  }

  get hasDirty(): boolean {
    return this.dirty.size > 0;
  }

  get hasPendingWrites(): boolean {
    return this.dirty.size > 0 || this.committing !== undefined;
  }

  /** Overlays this mount's uncommitted size and mtime on committed attributes. */
  overlay(attr: Attr): Attr {
    if (!this.hasPendingWrites) return attr;
    const mtime = this.pendingMtime ?? attr.mtime;
    return { ...attr, size: this.size, mtime, ctime: mtime > attr.ctime ? mtime : attr.ctime };
  }

  /** Set when write-back data had to be dropped: writes and flushes through this file fail. */
  private poisoned: Error | undefined;

  poison(err: Error): void {
    this.poisoned = err;
    for (const block of this.dirty.values()) block.release();
    this.dirty = new Map();
    this.chunks.clear();
    this.chunkLoads.clear();
  }

  /**
   * A chunk's block map read together with (at the same revision as) the attributes this file was
   * opened with; only for a file no handle has used yet. Saves the first read a round trip.
   */
  seedChunk(chunk: number, map: ChunkMap): void {
    if (!this.hasPendingWrites && !this.chunks.has(chunk)) this.chunks.set(chunk, map);
  }

  /** Close-to-open: forget the cached block map (when nothing local depends on it). */
  revalidate(attr: Attr): void {
    if (this.hasPendingWrites) return;
    this.mapsReplaced();
    this.prefetchedThrough = -1;
    this.size = attr.size;
  }

  /** The committed block maps changed under this file (by anyone): forget the cached ones. */
  private mapsReplaced(): void {
    this.generation++;
    this.chunks.clear();
    this.chunkLoads.clear();
  }

  /**
   * Counts changes to what this file's size and block maps are based on (commits, truncates,
   * revalidations), so that attributes read before one of them are not taken as newer.
   */
  generation = 0;

  /**
   * Attributes read from the store while this file is open, by a read that started at
   * `generation`: if another mount's commit changed the size, take it (and drop the block maps),
   * so reads through handles opened before it see what stat now reports, as `tail -f` of a file
   * another mount appends to needs. Without this the kernel heard the new size while reads still
   * ended at the old one: short reads, and pages the kernel zero-filled past them.
   */
  adopt(attr: Attr, generation: number): void {
    if (generation !== this.generation || !this.commitLock.idle || attr.size === this.size) return;
    this.revalidate(attr);
  }

  /**
   * Block map reads in flight, by chunk. Concurrent readers of one chunk share one read, so that
   * two FUSE requests for parts of one block never see the map at two different revisions (one
   * part from before another mount's rewrite, the other from after it: a torn block).
   */
  private chunkLoads = new Map<number, Promise<ChunkMap>>();

  private chunkMap(chunk: number): ChunkMap | Promise<ChunkMap> {
    const map = this.chunks.get(chunk);
    if (map) return map;
    let load = this.chunkLoads.get(chunk);
    if (!load) {
      const started: Promise<ChunkMap> = this.meta.readChunk(this.ino, chunk).then(
        (read) => {
          // Installed only if nothing newer (a commit, a revalidation) superseded this read meanwhile.
          if (this.chunkLoads.get(chunk) === started) {
            this.chunkLoads.delete(chunk);
            this.chunks.set(chunk, read);
          }
          return read;
        },
        (err: unknown) => {
          if (this.chunkLoads.get(chunk) === started) this.chunkLoads.delete(chunk);
          throw err;
        },
      );
      this.chunkLoads.set(chunk, (load = started));
    }
    return load;
  }

  /**
   * Forgets `map` as chunk `chunk`'s block map because a block it names is gone (another mount
   * replaced it), unless a newer map has already taken its place.
   */
  private dropStaleMap(chunk: number, map: ChunkMap): void {
    if (this.chunks.get(chunk) === map) this.chunks.delete(chunk);
  }

  private async committedRef(index: number): Promise<BlockRef | undefined> {
    return (await this.chunkMap(Math.floor(index / CHUNK_BLOCKS))).get(index % CHUNK_BLOCKS);
  }

  /** The committed content of block `index` (its valid bytes only), or undefined for a hole. */
  private async committedBlock(index: number): Promise<Buffer | undefined> {
    return (await this.committedContent(index))?.data;
  }

  /** committedBlock() with the reference it was read through. */
  private async committedContent(index: number): Promise<{ ref: BlockRef; data: Buffer } | undefined> {
    const chunk = Math.floor(index / CHUNK_BLOCKS);
    let missing: number | undefined;
    for (let attempt = 0; ; attempt++) {
      const map = await this.chunkMap(chunk);
      const ref = map.get(index % CHUNK_BLOCKS);
      if (!ref) return undefined;
      const data = await this.cache.getBlock(this.store, ref);
      if (data) return { ref, data: data.length > ref.len ? data.subarray(0, ref.len) : data };
      missing = this.blockMissing(chunk, map, contentId(ref), missing, attempt);
    }
  }

  /**
   * A block that `map` names is gone from the store: another mount replaced it (and deleted the
   * old one) since the map was read, so read the map again. Returns the missing id. A writer
   * that keeps rewriting the file can make that happen more than once in a row; the same block
   * missing again after a fresh map, or too many rounds, is a lost block: EIO.
   */
  private blockMissing(chunk: number, map: ChunkMap, id: number, previous: number | undefined, attempt: number): number {
    if (id === previous || attempt >= MISSING_BLOCK_ROUNDS) throw new FsError('EIO', `block ${id} of inode ${this.ino} is missing from the block store`);
    this.dropStaleMap(chunk, map);
    return id;
  }

  /**
   * Block `index` if it can be had without waiting: its valid bytes, null for a hole, undefined
   * when its block map or its data must be fetched first. Most reads of a streamed file are
   * answered this way, without a promise per block.
   */
  private blockNow(index: number): Buffer | null | undefined {
    const local = this.dirty.get(index) ?? this.committing?.get(index);
    if (local) return local.data();
    const map = this.chunks.get(Math.floor(index / CHUNK_BLOCKS));
    if (!map) return undefined;
    const ref = map.get(index % CHUNK_BLOCKS);
    if (!ref) return null;
    const data = this.cache.peekBlock(ref);
    if (!data) return undefined;
    return data.length > ref.len ? data.subarray(0, ref.len) : data;
  }

  /** Best effort: starts fetching block `index` for a sequential reader. */
  private prefetch(index: number): void {
    if (this.dirty.has(index) || this.committing?.has(index)) return;
    const map = this.chunks.get(Math.floor(index / CHUNK_BLOCKS));
    const ref = map?.get(index % CHUNK_BLOCKS);
    if (ref) this.cache.prefetchBlock(this.store, ref);
    else if (!map) this.committedRef(index).then((r) => r && this.cache.prefetchBlock(this.store, r), () => undefined);
  }

  private lastReadEnd = -1;
  /** Blocks fetched ahead of a sequential reader; doubles while the reader keeps reading on. */
  private readaheadBlocks = 0;
  /** The highest block a prefetch was started for, so each block is asked for once per pass. */
  private prefetchedThrough = -1;

  /**
   * Reads up to `length` bytes at `position`. With `into` (the kernel request's reply buffer), the
   * bytes are placed there and a view of it is returned, saving an allocation and a copy. When
   * every block is at hand (dirty, cached, or a hole: most reads of a stream with readahead) the
   * result is returned synchronously, without a promise.
   */
  read(position: number, length: number, into?: Buffer): Buffer | Promise<Buffer> {
    if (position >= this.size || length <= 0) return Buffer.alloc(0);
    const end = Math.min(this.size, position + length);
    // Not zero-filled: every byte is either copied from a block below or zeroed there (holes,
    // blocks shorter than the range).
    const out = into && into.length >= end - position ? into.subarray(0, end - position) : Buffer.allocUnsafe(end - position);
    const bs = this.blockSize;
    const first = Math.floor(position / bs);
    const last = Math.floor((end - 1) / bs);
    // A read from the start is taken as the start of a sequential pass.
    const sequential = position === this.lastReadEnd || position === 0;
    if (sequential) {
      this.readaheadBlocks = Math.min(this.options.maxReadahead, Math.max(1, this.readaheadBlocks * 2));
      const target = Math.min(Math.ceil(this.size / bs) - 1, last + this.readaheadBlocks);
      for (let next = Math.max(this.prefetchedThrough, last) + 1; next <= target; next++) this.prefetch(next);
      this.prefetchedThrough = Math.max(this.prefetchedThrough, target);
    } else {
      this.readaheadBlocks = 0;
      this.prefetchedThrough = last;
    }
    this.lastReadEnd = end;
    const inPieces = !sequential && bs > PIECE && this.store.getRange !== undefined;
    let pending: Promise<void>[] | undefined;
    for (let index = first; index <= last; index++) {
      const blockStart = index * bs;
      const from = Math.max(position, blockStart);
      const to = Math.min(end, blockStart + bs);
      const place = (data: Buffer | null | undefined): void => {
        const at = from - position;
        let copied = 0;
        if (data && data.length > from - blockStart) copied = data.copy(out, at, from - blockStart, Math.min(to - blockStart, data.length));
        // A hole, or a block shorter than the range (a tail cut by truncate, then extended), reads as zeros.
        if (copied < to - from) out.fill(0, at + copied, at + (to - from));
      };
      const now = this.blockNow(index);
      if (now !== undefined) place(now);
      else if (inPieces) (pending ??= []).push(this.readPieces(index, from - blockStart, to - blockStart, out.subarray(from - position, to - position)));
      else (pending ??= []).push(this.blockContent(index).then(place));
    }
    return pending ? Promise.all(pending).then(() => out) : out;
  }

  /**
   * Bytes [lo, hi) of committed block `index` into `out`, from the pieces of the block that hold
   * them (cached by piece), or from the whole block if it is cached by now.
   */
  private async readPieces(index: number, lo: number, hi: number, out: Buffer): Promise<void> {
    const chunk = Math.floor(index / CHUNK_BLOCKS);
    let missing: number | undefined;
    for (let attempt = 0; ; attempt++) {
      const map = await this.chunkMap(chunk);
      const ref = map.get(index % CHUNK_BLOCKS);
      const len = ref ? Math.min(ref.len, hi) : 0;
      // A block with parts is only read whole (composed), never in pieces of its base.
      const whole = ref && (ref.parts?.length ? await this.cache.getBlock(this.store, ref) : this.cache.peekBlock(ref));
      let pos = lo;
      if (ref?.parts?.length && !whole) {
        missing = this.blockMissing(chunk, map, contentId(ref), missing, attempt);
        continue;
      }
      if (whole) {
        if (Math.min(len, whole.length) > lo) pos += whole.copy(out, 0, lo, Math.min(len, whole.length));
      } else if (ref && len > lo) {
        const first = Math.floor(lo / PIECE);
        const pieces: Promise<Buffer | undefined>[] = [];
        for (let p = first; p * PIECE < len; p++) pieces.push(this.cache.getPiece(this.store, ref.id, p * PIECE, Math.min(PIECE, ref.len - p * PIECE)));
        const got = await Promise.all(pieces);
        if (got.some((piece) => !piece)) {
          missing = this.blockMissing(chunk, map, ref.id, missing, attempt);
          continue;
        }
        for (let k = 0; k < got.length && pos < len; k++) {
          const start = (first + k) * PIECE;
          const piece = got[k]!;
          if (pos < start || start + piece.length <= pos) break; // a short piece: the rest reads as zeros
          pos += piece.copy(out, pos - lo, pos - start, Math.min(len - start, piece.length));
        }
      }
      // A hole, or past the block's valid bytes: zeros.
      if (pos < hi) out.fill(0, pos - lo, hi - lo);
      return;
    }
  }

  private async blockContent(index: number): Promise<Buffer | undefined> {
    const local = this.dirty.get(index) ?? this.committing?.get(index);
    if (local) return local.data();
    return this.committedBlock(index);
  }

  /**
   * Copies `data` into dirty blocks before it returns or resolves (the caller may reuse the
   * buffer then). Most writes of a stream or a small file need no waiting (room in the dirty
   * budget, no other write of this file in progress, no committed block to read first): those
   * are done synchronously and return the byte count, without a promise. Each FUSE write waits
   * for its answer before the kernel sends the next, so this time is on the writer's path.
   */
  write(position: number, data: Buffer): number | Promise<number> {
    if (this.poisoned) throw this.poisoned;
    if (this.options.writeback && this.writeLock.idle && this.options.budget.used < this.options.budget.limit && this.basesNeeded(position, data.length).length === 0) {
      this.place(position, data, new Map());
      return this.afterWrite(data.length);
    }
    return this.writeWaiting(position, data);
  }

  private async writeWaiting(position: number, data: Buffer): Promise<number> {
    await this.options.budget.wait();
    await this.writeLock.run(() => this.placeLocked(position, data));
    return this.afterWrite(data.length);
  }

  /** Reads the committed blocks a write keeps parts of, then places it; the caller holds the write lock. */
  private async placeLocked(position: number, data: Buffer): Promise<void> {
    // Committed content of partly overwritten blocks. Asked again after every read: a block
    // whose commit finished meanwhile is no longer in memory and needs its base read too.
    // (Blocks read stay valid: only writes, which wait for this lock, make blocks dirty.)
    const bases = new Map<number, Base>();
    for (;;) {
      const needed = this.basesNeeded(position, data.length).filter((index) => !bases.has(index));
      if (needed.length === 0) break;
      for (const index of needed) {
        // A base read earlier may be a cached block's buffer, which the cache can drop (and the
        // pool hand to another writer) while this awaits the next one: keep a copy of it.
        for (const [i, base] of bases) if (!base.copied) bases.set(i, { ...base, data: Buffer.from(base.data), copied: true });
        bases.set(index, (await this.committedContent(index)) ?? { data: Buffer.alloc(0), copied: true });
      }
    }
    this.place(position, data, bases);
  }

  /** The blocks a write must read from the store first: partly overwritten, holding committed bytes, not in memory. */
  private basesNeeded(position: number, length: number): number[] {
    const bs = this.blockSize;
    const needed: number[] = [];
    for (let at = position; at < position + length; ) {
      const index = Math.floor(at / bs);
      const inBlock = at % bs;
      const n = Math.min(bs - inBlock, position + length - at);
      // A block wholly overwritten, or entirely past the end (a new file, an append at a block
      // boundary), keeps nothing of its committed content.
      const keepsNothing = (inBlock === 0 && n === bs) || this.size <= index * bs;
      if (!keepsNothing && !this.dirty.has(index) && !this.committing?.has(index)) needed.push(index);
      at += n;
    }
    return needed;
  }

  /** Copies `data` into dirty blocks; `bases` holds the committed content basesNeeded() named. */
  private place(position: number, data: Buffer, bases: Map<number, Base>): void {
    const bs = this.blockSize;
    let offset = 0;
    while (offset < data.length) {
      const at = position + offset;
      const index = Math.floor(at / bs);
      const inBlock = at % bs;
      const n = Math.min(bs - inBlock, data.length - offset);
      let block = this.dirty.get(index);
      if (!block) {
        // Bytes past the file's end in the base block were cut off by a truncate: they read as zeros.
        const validInBlock = Math.max(0, this.size - index * bs);
        // Files past their first block are being streamed: take a whole block at once. A block
        // with committed bytes (an append after fsync) starts at the size it needs and grows
        // geometrically: a whole block per fsynced append was 1 MiB of garbage each time.
        const capacity =
          validInBlock === 0 && (index > 0 || inBlock + n >= 128 * 1024) ? bs : Math.min(bs, Math.max(validInBlock, inBlock + n));
        const inFlight = this.committing?.get(index);
        if (inFlight) block = inFlight.copy(capacity);
        else {
          const base = bases.get(index);
          block = new DirtyBlock(base?.data ?? Buffer.alloc(0), capacity, bs, this.options.budget, this.cache.pool, base?.ref);
        }
        if (this.dirty.size === 0) this.dirtySince = Date.now();
        if (block.len > validInBlock) block.len = validInBlock;
        this.dirty.set(index, block);
      }
      block.write(inBlock, data.subarray(offset, offset + n));
      offset += n;
    }
    this.size = Math.max(this.size, position + data.length);
    this.pendingMtime = nowNs();
  }

  /** After a write is placed: commit it (--writeback off), or start a background commit past the threshold. */
  private afterWrite(written: number): number | Promise<number> {
    if (!this.options.writeback) return this.commit().then(() => written);
    if (this.dirty.size * this.blockSize < this.options.commitThreshold) return written;
    // Keep at most one commit in flight per file: a writer that outruns the store waits here.
    const running = this.commitDone;
    if (running) return running.then(() => (this.commitIfDue(), written));
    this.commitIfDue();
    return written;
  }

  private commitIfDue(): void {
    // Writers that waited for the same commit start one more between them, not one each.
    if (this.commitDone || this.dirty.size * this.blockSize < this.options.commitThreshold) return;
    // A failed background commit puts its blocks back into dirty: the next flush retries them
    // and reports the error if it fails again, so nothing is lost silently.
    const done: Promise<void> = backgroundScope
      .runInAsyncScope(() => this.commit())
      .catch(() => undefined)
      .finally(() => {
        if (this.commitDone === done) this.commitDone = undefined;
      });
    this.commitDone = done;
  }

  /**
   * Commits everything written so far (including blocks a failed background commit gave back).
   * Returns nothing, synchronously, when there is nothing to commit and no commit in progress.
   */
  flush(): void | Promise<void> {
    if (this.poisoned) throw this.poisoned;
    if (!this.hasPendingWrites && this.commitLock.idle) return;
    return this.commit();
  }

  /** Commit: store the dirty blocks under new ids, then switch the block map in one transaction. */
  commit(): Promise<void> {
    return this.commitLock.run(async () => {
      if (this.poisoned) throw this.poisoned;
      if (this.dirty.size === 0) return;
      const blocks = this.dirty;
      this.dirty = new Map();
      this.committing = blocks;
      const size = this.size;
      const mtime = this.pendingMtime ?? nowNs();
      try {
        const writes = await this.storeBlocks(blocks);
        // Dropped while uploading (session lost): these writes must not be committed any more.
        if (this.poisoned) throw this.poisoned;
        let committed: { attr: Attr; replaced: number[] } | undefined;
        while (!committed) {
          try {
            committed = await this.meta.commitBlocks(this.ino, writes, size, mtime);
          } catch (err) {
            if (!(err instanceof BaseChangedError)) throw err;
            // Another mount replaced blocks these parts were written over: store those blocks
            // whole instead, so the last commit of a block wins as a whole, as it does without
            // parts. (Whole blocks cannot conflict so: at most one more round per block.)
            const redo = writes.filter((w) => w.base && err.indexes.includes(w.index));
            if (redo.length === 0) throw err;
            const unused = redo.flatMap((w) => w.ref.parts!.slice(w.base!.parts?.length ?? 0).map((part) => String(part.id)));
            const whole = await this.storeBlocks(new Map(redo.map((w) => [w.index, blocks.get(w.index)!])), false);
            for (const w of whole) writes[writes.findIndex((old) => old.index === w.index)] = w;
            this.options.deleteBlocks(unused);
            if (this.poisoned) throw this.poisoned;
          }
        }
        const { attr, replaced } = committed;
        this.options.onCommit(attr);
        for (const { index, ref, base } of writes) {
          // A map read that started before this commit must not overwrite what it committed.
          this.chunkLoads.delete(Math.floor(index / CHUNK_BLOCKS));
          const map = this.chunks.get(Math.floor(index / CHUNK_BLOCKS));
          if (map) map.set(index % CHUNK_BLOCKS, ref);
          const block = blocks.get(index)!;
          // The base's content is superseded here; the new content is cached under its own id.
          if (base) this.cache.remove(contentId(base));
          this.cache.add(contentId(ref), block.data(), !block.compact);
        }
        this.generation++;
        if (this.dirty.size === 0) this.size = attr.size;
        else this.size = Math.max(this.size, attr.size);
        if (replaced.length) this.releaseBlocks(replaced);
        for (const block of blocks.values()) block.release();
      } catch (err) {
        if (this.poisoned) {
          for (const block of blocks.values()) block.release();
          throw this.poisoned;
        }
        // Keep the data: newer writes to the same blocks win, the rest go back to dirty.
        if (this.dirty.size === 0 && blocks.size > 0) this.dirtySince = Date.now();
        for (const [index, block] of blocks) {
          if (this.dirty.has(index)) block.release();
          else this.dirty.set(index, block);
        }
        throw err;
      } finally {
        this.committing = undefined;
      }
      if (this.dirty.size === 0) this.pendingMtime = undefined;
    });
  }

  /**
   * Stores dirty blocks under fresh ids: each block whole, or (`asParts`, on volumes that allow
   * it) only its changed ranges, as new parts over the committed block it started from, while
   * that keeps the block within MAX_PARTS parts holding at most a quarter of a block. Returns the
   * block map changes to commit.
   */
  private async storeBlocks(blocks: Map<number, DirtyBlock>, asParts = this.meta.partsAllowed): Promise<BlockWrite[]> {
    const plans = [...blocks].map(([index, block]) => ({ index, block, ranges: asParts ? this.partRanges(block) : undefined }));
    const ids = await this.meta.allocBlockIds(plans.reduce((n, p) => n + (p.ranges ? p.ranges.length : 1), 0));
    let next = 0;
    const puts: Promise<void>[] = [];
    const writes = plans.map(({ index, block, ranges }): BlockWrite => {
      if (!ranges) {
        const id = ids[next++];
        puts.push(this.store.put(String(id), block.data()));
        return { index, ref: { id, len: block.len } };
      }
      const base = block.baseRef!;
      const parts = ranges.map(([from, to]): BlockPart => {
        const id = ids[next++];
        puts.push(this.store.put(String(id), block.data().subarray(from, to)));
        return { id, at: from, len: to - from };
      });
      return { index, ref: { id: base.id, len: block.len, parts: [...(base.parts ?? []), ...parts] }, base };
    });
    await Promise.all(puts);
    return writes;
  }

  /** The ranges to store as parts of `block`, or undefined when it is to be stored whole. */
  private partRanges(block: DirtyBlock): Array<[number, number]> | undefined {
    const base = block.baseRef;
    if (!base || block.ranges.length === 0) return undefined;
    const old = base.parts ?? [];
    let bytes = 0;
    for (const part of old) bytes += part.len;
    for (const [from, to] of block.ranges) bytes += to - from;
    if (old.length + block.ranges.length > MAX_PARTS || bytes > this.blockSize / 4) return undefined;
    return block.ranges;
  }

  /** Truncate: commit pending writes, then cut the committed file. */
  async truncate(size: number): Promise<Attr> {
    return this.writeLock.run(() => this.resizeLocked(size));
  }

  /**
   * Grows the file to at least `size` (a hole), under the write lock so that a concurrent write
   * past the old end is never cut back; a file already that long is left alone.
   */
  async extend(size: number): Promise<Attr | undefined> {
    return this.writeLock.run(async () => (size <= this.size ? undefined : this.resizeLocked(size)));
  }

  /**
   * Zeroes [offset, offset + length) within the file's size and commits (fallocate's punch hole
   * and zero range): blocks the range covers whole become holes, the partly covered ones at its
   * edges are written with zeros. The size does not change.
   */
  async zeroRange(offset: number, length: number): Promise<void> {
    return this.writeLock.run(async () => {
      await this.flush();
      const end = Math.min(offset + length, this.size);
      if (end <= offset) return;
      const bs = this.blockSize;
      const first = Math.ceil(offset / bs);
      const last = Math.floor(end / bs);
      const edges: Array<[number, number]> = first < last ? [[offset, first * bs], [last * bs, end]] : [[offset, end]];
      if (first < last) {
        const { attr, released } = await this.meta.clearBlocks(this.ino, first, last);
        this.mapsReplaced();
        this.options.onCommit(attr);
        if (released.length) this.releaseBlocks(released);
      }
      for (const [from, to] of edges) if (from < to) await this.placeLocked(from, Buffer.alloc(to - from));
      await this.flush();
    });
  }

  /** Commits pending writes and sets the committed size; the caller holds the write lock. */
  private async resizeLocked(size: number): Promise<Attr> {
    await this.flush();
    const { attr, released } = await this.meta.truncate(this.ino, size);
    this.mapsReplaced();
    this.size = attr.size;
    if (released.length) this.releaseBlocks(released);
    return attr;
  }

  /** Deletes blocks no longer referenced by this file. */
  private releaseBlocks(ids: number[]): void {
    for (const id of ids) this.cache.remove(id);
    this.options.deleteBlocks(ids);
  }
}

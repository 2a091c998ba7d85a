// The block cache: immutable blocks by id, bounded in bytes. A block id is never reused for other
// content, so a cached block can never be stale; only its deletion matters, and a reader that finds
// a block gone re-reads the block map (lib/fs/file.ts). Pieces of blocks (ranges read for random
// reads) are cached beside whole blocks, under 'ID@OFFSET'; they are as immutable as the block.
// A block with parts (lib/meta/schema.ts BlockPart) is cached composed, under its newest part's id.

import { LRUCache } from 'lru-cache';
import { copyInto, type BlockStore } from '../data/store';
import { contentId, type BlockRef } from '../meta/schema';
import { BufferPool } from './pool';

/** How --cache-size is shared out: cached blocks, and spare buffers kept for reuse. */
export interface CacheBudget {
  /** Bytes of blocks the LRU holds. */
  cachedBytes: number;
  /** Free block buffers the pool keeps for reuse (lib/fs/pool.ts). */
  spareBytes: number;
}

/**
 * Shares out `cacheSize` (--cache-size) so that it bounds all the block memory the cache stands
 * for, not only the cached blocks: also the blocks being fetched ahead of a reader (up to
 * `readaheadBytes`; they are not in the LRU until they arrive) and the pool's spare buffers (an
 * eighth, at least two blocks, at most 64 MiB). Counting only the LRU let a 4 GiB streaming read
 * over Redis peak at 469 MiB resident with 256 MiB, past the bound of cache size + 200 MiB. The
 * LRU gets what is left, and at least half.
 */
export function splitCacheSize(cacheSize: number, readaheadBytes: number, blockSize: number): CacheBudget {
  const spareBytes = Math.min(64 * 1024 * 1024, Math.max(2 * blockSize, Math.floor(cacheSize / 8)));
  const cachedBytes = Math.max(1, Math.floor(cacheSize / 2), cacheSize - spareBytes - readaheadBytes);
  return { cachedBytes, spareBytes };
}

export class BlockCache {
  private readonly lru: LRUCache<number | string, Buffer>;
  /** Block buffers for dirty blocks; blocks this cache drops go back to it (lib/fs/pool.ts). */
  readonly pool: BufferPool;
  /** Fetches in flight, so concurrent readers of one block share one request. */
  private readonly loading = new Map<number | string, Promise<Buffer | undefined>>();

  constructor(budget: CacheBudget) {
    this.pool = new BufferPool(budget.spareBytes);
    this.lru = new LRUCache<number | string, Buffer>({
      maxSize: Math.max(1, budget.cachedBytes),
      sizeCalculation: (b) => Math.max(1, b.length),
      // Only buffers the pool made are taken back; blocks read from the store are left to the GC.
      dispose: (b) => this.pool.give(b),
    });
  }

  get(store: BlockStore, id: number): Promise<Buffer | undefined> {
    const take = (size: number): Buffer => this.pool.take(size);
    // A store that can read into our memory fills a pool buffer directly: no copy below.
    if (store.getInto) return this.load(id, () => store.getInto!(String(id), take));
    return this.load(id, async () => {
      const data = await store.get(String(id));
      // Keep a copy in a pool buffer, which goes back to the pool when the cache drops it: a
      // streaming reader then recycles the same buffers instead of leaving each fetched block
      // (often a view into the client's larger reply buffer) to the GC, which lets the daemon's
      // resident memory run further past the cache size (4 GiB streamed with the default 256 MiB
      // cache: peak RSS 529 -> 501 MiB).
      return data && copyInto(data, take);
    });
  }

  /**
   * The content of the block `ref` names: the stored block, or with parts, the block with its
   * parts laid over it (all fetched at once, composed once, cached under contentId). A block
   * longer than `ref.len` is returned whole (callers use `ref.len` bytes); a composed one is
   * exactly `ref.len`. Undefined when any of its objects is missing (another mount replaced the
   * block and deleted them).
   */
  getBlock(store: BlockStore, ref: BlockRef): Promise<Buffer | undefined> {
    if (!ref.parts?.length) return this.get(store, ref.id);
    return this.load(contentId(ref), async () => {
      const parts = ref.parts!;
      const out = this.pool.take(ref.len);
      // A cached base is copied at once: while this awaits, the cache may drop it and the pool
      // hand its buffer to a writer.
      const cached = this.lru.get(ref.id);
      const fromCache = cached ? cached.copy(out, 0, 0, Math.min(cached.length, ref.len)) : -1;
      const [base, ...pieces] = await Promise.all([cached ? undefined : store.get(String(ref.id)), ...parts.map((part) => store.get(String(part.id)))]);
      if ((!cached && !base) || pieces.some((piece) => !piece)) {
        this.pool.give(out);
        return undefined;
      }
      const copied = base ? base.copy(out, 0, 0, Math.min(base.length, ref.len)) : fromCache;
      if (copied < ref.len) out.fill(0, copied, ref.len);
      parts.forEach((part, k) => {
        if (part.at < ref.len) pieces[k]!.copy(out, part.at, 0, Math.min(part.len, ref.len - part.at));
      });
      return out;
    });
  }

  /** The content of `ref` if it is cached (see getBlock), else undefined; never fetches. */
  peekBlock(ref: BlockRef): Buffer | undefined {
    return this.peek(contentId(ref));
  }

  prefetchBlock(store: BlockStore, ref: BlockRef): void {
    if (!this.lru.has(contentId(ref))) this.getBlock(store, ref).catch(() => undefined);
  }

  /**
   * `length` bytes of block `id` from `offset` (fewer at the block's end), undefined when the
   * block does not exist. Needs store.getRange.
   */
  getPiece(store: BlockStore, id: number, offset: number, length: number): Promise<Buffer | undefined> {
    return this.load(`${id}@${offset}`, async () => {
      const data = await store.getRange!(String(id), offset, length);
      if (!data || data.length === 0) return undefined;
      // A small reply can be a view into a much larger socket buffer: keep only its bytes.
      return data.buffer.byteLength > 2 * data.length ? Buffer.from(data) : data;
    });
  }

  private load(key: number | string, fetch: () => Promise<Buffer | undefined>): Promise<Buffer | undefined> {
    const hit = this.lru.get(key);
    if (hit) return Promise.resolve(hit);
    let pending = this.loading.get(key);
    if (!pending) {
      pending = fetch().then(
        (data) => {
          this.loading.delete(key);
          if (data) this.lru.set(key, data);
          return data;
        },
        (err) => {
          this.loading.delete(key);
          throw err;
        },
      );
      this.loading.set(key, pending);
    }
    return pending;
  }

  /** The block if it is cached (counts as a use), else undefined; never fetches. */
  peek(id: number): Buffer | undefined {
    return this.lru.get(id);
  }

  /**
   * Adds a block this mount just stored; the cache then owns `data`'s buffer. `copy` when it is a
   * view into a much larger buffer: the cache keeps a copy and the buffer goes back to the pool.
   */
  add(id: number, data: Buffer, copy: boolean): void {
    if (!copy) return void this.lru.set(id, data);
    this.lru.set(id, Buffer.from(data));
    this.pool.give(data);
  }

  /** Drops a deleted block (its pieces, if any, age out: they can never be read again). */
  remove(id: number): void {
    this.lru.delete(id);
  }
}

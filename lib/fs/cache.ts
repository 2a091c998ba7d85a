// The block cache: immutable blocks by id, bounded in bytes. A block id is never reused for other
// content, so a cached block can never be stale; only its deletion matters, and a reader that finds
// a block gone re-reads the block map (lib/fs/file.ts).

import { LRUCache } from 'lru-cache';
import type { BlockStore } from '../data/store';
import { BufferPool } from './pool';

export class BlockCache {
  private readonly lru: LRUCache<number, Buffer>;
  /** Block buffers for dirty blocks; blocks this cache drops go back to it (lib/fs/pool.ts). */
  readonly pool = new BufferPool();
  /** Fetches in flight, so concurrent readers of one block share one request. */
  private readonly loading = new Map<number, Promise<Buffer | undefined>>();

  constructor(maxBytes: number) {
    this.lru = new LRUCache<number, Buffer>({
      maxSize: Math.max(1, maxBytes),
      sizeCalculation: (b) => Math.max(1, b.length),
      // Only buffers the pool made are taken back; blocks read from the store are left to the GC.
      dispose: (b) => this.pool.give(b),
    });
  }

  get(store: BlockStore, id: number): Promise<Buffer | undefined> {
    const hit = this.lru.get(id);
    if (hit) return Promise.resolve(hit);
    let pending = this.loading.get(id);
    if (!pending) {
      pending = store.get(String(id)).then(
        (data) => {
          this.loading.delete(id);
          if (data) this.lru.set(id, data);
          return data;
        },
        (err) => {
          this.loading.delete(id);
          throw err;
        },
      );
      this.loading.set(id, pending);
    }
    return pending;
  }

  /** The block if it is cached (counts as a use), else undefined; never fetches. */
  peek(id: number): Buffer | undefined {
    return this.lru.get(id);
  }

  prefetch(store: BlockStore, id: number): void {
    if (!this.lru.has(id)) this.get(store, id).catch(() => undefined);
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

  remove(id: number): void {
    this.lru.delete(id);
  }
}

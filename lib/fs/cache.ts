// The block cache: immutable blocks by id, bounded in bytes. A block id is never reused for other
// content, so a cached block can never be stale; only its deletion matters, and a reader that finds
// a block gone re-reads the block map (lib/fs/file.ts).

import { LRUCache } from 'lru-cache';
import type { BlockStore } from '../data/store';

export class BlockCache {
  private readonly lru: LRUCache<number, Buffer>;
  /** Fetches in flight, so concurrent readers of one block share one request. */
  private readonly loading = new Map<number, Promise<Buffer | undefined>>();

  constructor(maxBytes: number) {
    this.lru = new LRUCache<number, Buffer>({ maxSize: Math.max(1, maxBytes), sizeCalculation: (b) => Math.max(1, b.length) });
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

  /** Adds a block this mount just stored; `copy` when it is a view into a much larger buffer. */
  add(id: number, data: Buffer, copy: boolean): void {
    this.lru.set(id, copy ? Buffer.from(data) : data);
  }

  remove(id: number): void {
    this.lru.delete(id);
  }
}

// Block-sized buffers, reused between the dirty blocks of writers and the block cache.
//
// Without it a streaming writer allocates a fresh buffer for every block. That costs page faults
// on first touch, and V8 counts the memory against its heap limit, so a stream of fresh blocks
// forces a full garbage collection every few tens of MiB (measured: 40-46 per GiB written).
//
// Ownership: a buffer taken from the pool has one owner at a time: a dirty block, then (after its
// commit) the block cache, which gives it back when it drops the block. Readers copy out of a
// block within the run of microtasks in which they found it, so a buffer given back is handed out
// again only after the event loop has turned (setImmediate): no reader can still be copying it.
// Only buffers this pool made come back; anything else given is ignored.

/** Free buffers not taken for this long are dropped (an idle mount holds no spare memory). */
const IDLE_MS = 2000;

export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private freeBytes = 0;
  /** Given back in this turn of the event loop: free from the next one. */
  private returned: Buffer[] = [];
  private settling = false;
  /** Memory this pool made, and which of it is idle (free or returned): guards a double give. */
  private readonly mine = new WeakSet<ArrayBuffer>();
  private readonly idle = new WeakSet<ArrayBuffer>();
  private takenSinceTrim = false;
  private trimTimer: NodeJS.Timeout | undefined;

  /** `maxFreeBytes`: free buffers kept at most; what comes back beyond that is left to the GC. */
  constructor(private readonly maxFreeBytes = 64 * 1024 * 1024) {}

  /** A buffer of exactly `size` bytes, not zeroed. */
  take(size: number): Buffer {
    this.takenSinceTrim = true;
    const list = this.free.get(size);
    const reused = list?.pop();
    if (reused) {
      this.freeBytes -= size;
      this.idle.delete(reused.buffer as ArrayBuffer);
      return reused;
    }
    // Its own ArrayBuffer (never a slice of Node's shared 8 KiB pool), so it can come back whole.
    const fresh = Buffer.allocUnsafeSlow(size);
    this.mine.add(fresh.buffer as ArrayBuffer);
    return fresh;
  }

  /** Gives back a buffer taken here (or any view of it) that its owner no longer uses. */
  give(view: Buffer): void {
    const memory = view.buffer;
    if (!(memory instanceof ArrayBuffer) || !this.mine.has(memory) || this.idle.has(memory)) return;
    this.idle.add(memory);
    this.returned.push(Buffer.from(memory, 0, memory.byteLength));
    if (!this.settling) {
      this.settling = true;
      setImmediate(() => this.settle());
    }
  }

  private settle(): void {
    this.settling = false;
    for (const buf of this.returned) {
      if (this.freeBytes + buf.length > this.maxFreeBytes) continue; // garbage now
      let list = this.free.get(buf.length);
      if (!list) this.free.set(buf.length, (list = []));
      list.push(buf);
      this.freeBytes += buf.length;
    }
    this.returned = [];
    if (this.freeBytes > 0 && !this.trimTimer) {
      this.trimTimer = setInterval(() => this.trim(), IDLE_MS);
      this.trimTimer.unref();
    }
  }

  private trim(): void {
    if (this.takenSinceTrim) {
      this.takenSinceTrim = false;
      return;
    }
    this.free.clear();
    this.freeBytes = 0;
    clearInterval(this.trimTimer);
    this.trimTimer = undefined;
  }

  /** Bytes held free (for tests and status). */
  get idleBytes(): number {
    return this.freeBytes;
  }
}

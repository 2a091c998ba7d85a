// Timers inside the daemon: for every FUSE operation, how long it took and how much of that was
// spent waiting on the metadata engine and on the block store; the rest is the daemon and the
// FUSE path. Served on the control socket (/metrics) for `kvfs lab` and future monitoring.

import { AsyncLocalStorage } from 'node:async_hooks';
import type { BlockStore } from '../data/store';
import type { KvEngine, KvTxn } from '../meta/kv';

export interface OpTimes {
  count: number;
  errors: number;
  /** Milliseconds, summed over all calls. */
  totalMs: number;
  metaMs: number;
  dataMs: number;
}

interface Current {
  metaMs: number;
  dataMs: number;
  /** Set when the operation has answered: later backend time started inside it is background. */
  ended: boolean;
}

/** What the daemon sent to the block store (every put: blocks, and the parts of blocks). */
export interface StoredBytes {
  objects: number;
  bytes: number;
}

function emptyTimes(): OpTimes {
  return { count: 0, errors: 0, totalMs: 0, metaMs: 0, dataMs: 0 };
}

export class Metrics {
  private readonly ops = new Map<string, OpTimes>();
  private readonly current = new AsyncLocalStorage<Current>();
  /** Backend time spent outside any FUSE operation (background commits, sweeps). */
  private readonly background = emptyTimes();
  private readonly stored: StoredBytes = { objects: 0, bytes: 0 };
  readonly startedAt = Date.now();

  /**
   * Runs one operation, attributing the backend waits inside it to `op`. An operation that
   * returns a plain value (done without waiting) is recorded at once and stays synchronous.
   */
  run<T>(op: string, fn: () => T | Promise<T>): T | Promise<T> {
    const current: Current = { metaMs: 0, dataMs: 0, ended: false };
    const start = performance.now();
    let result: T | Promise<T>;
    try {
      result = this.current.run(current, fn);
    } catch (err) {
      this.record(op, current, start, true);
      throw err;
    }
    if (!(result instanceof Promise)) {
      this.record(op, current, start, false);
      return result;
    }
    return result.then(
      (value) => {
        this.record(op, current, start, false);
        return value;
      },
      (err: unknown) => {
        this.record(op, current, start, true);
        throw err;
      },
    );
  }

  private record(op: string, current: Current, start: number, failed: boolean): void {
    current.ended = true;
    const times = this.ops.get(op) ?? emptyTimes();
    const total = performance.now() - start;
    times.count++;
    if (failed) times.errors++;
    times.totalMs += total;
    // Concurrent backend calls inside one operation can add up to more than its duration.
    times.metaMs += Math.min(current.metaMs, total);
    times.dataMs += Math.min(current.dataMs, Math.max(0, total - Math.min(current.metaMs, total)));
    this.ops.set(op, times);
  }

  private async timed<T>(kind: 'metaMs' | 'dataMs', fn: () => Promise<T>): Promise<T> {
    const start = performance.now();
    try {
      return await fn();
    } finally {
      const ms = performance.now() - start;
      // Work started inside an operation can outlive it (a write-back commit that a write set off):
      // once the operation has answered, its time is background, as it would be lost otherwise.
      const current = this.current.getStore();
      if (current && !current.ended) current[kind] += ms;
      else this.background[kind] += ms;
    }
  }

  /** The metadata engine, with every call timed. */
  wrapKv(kv: KvEngine): KvEngine {
    const timed = <T>(fn: () => Promise<T>) => this.timed('metaMs', fn);
    return {
      kind: kv.kind,
      txn: <T>(fn: (tx: KvTxn) => Promise<T>) => timed(() => kv.txn(fn)),
      get: (key) => timed(() => kv.get(key)),
      ...(kv.getMany ? { getMany: (keys: readonly string[]) => timed(() => kv.getMany!(keys)) } : {}),
      scan: (prefix, options) => timed(() => kv.scan(prefix, options)),
      watch: (prefix, onChange) => kv.watch(prefix, onChange),
      openSession: (key, value, ttl) => kv.openSession(key, value, ttl),
      ...(kv.sync ? { sync: () => timed(() => kv.sync!()) } : {}),
      close: () => kv.close(),
    };
  }

  /** The block store, with every call timed. */
  wrapStore(store: BlockStore): BlockStore {
    const timed = <T>(fn: () => Promise<T>) => this.timed('dataMs', fn);
    return {
      kind: store.kind,
      put: (id, data) => {
        this.stored.objects++;
        this.stored.bytes += data.length;
        return timed(() => store.put(id, data));
      },
      get: (id) => timed(() => store.get(id)),
      ...(store.getRange ? { getRange: (id: string, offset: number, length: number) => timed(() => store.getRange!(id, offset, length)) } : {}),
      ...(store.getInto ? { getInto: (id: string, alloc: (size: number) => Buffer) => timed(() => store.getInto!(id, alloc)) } : {}),
      ...(store.size ? { size: (id: string) => timed(() => store.size!(id)) } : {}),
      delete: (ids) => timed(() => store.delete(ids)),
      list: (onBatch) => store.list(onBatch),
      usage: () => store.usage(),
      durabilityWarning: () => store.durabilityWarning(),
      close: () => store.close(),
    };
  }

  snapshot(): { uptimeMs: number; ops: Record<string, OpTimes>; background: OpTimes; stored: StoredBytes } {
    return { uptimeMs: Date.now() - this.startedAt, ops: Object.fromEntries(this.ops), background: { ...this.background }, stored: { ...this.stored } };
  }

  reset(): void {
    this.ops.clear();
    Object.assign(this.background, emptyTimes());
    Object.assign(this.stored, { objects: 0, bytes: 0 });
  }
}

// The workloads of `kvfs bench`, run through the kernel on a mounted directory, and the raw
// backend measurements. They use synchronous fs calls (one request in flight, no thread-pool hop
// in the measurement) and yield to the event loop every 50 ms, so Ctrl-C is noticed.
//
// Never run these in a process that serves a FUSE mount: the daemons are child processes.

import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import type { BlockStore } from '../data/store';
import { BufferPool } from '../fs/pool';
import type { KvEngine } from '../meta/kv';

export const MiB = 1024 * 1024;

/** Thrown when the run was interrupted (Ctrl-C). */
export class BenchAborted extends Error {
  constructor() {
    super('interrupted');
    this.name = 'BenchAborted';
  }
}

/** Cooperative cancellation: workloads call tick() between operations. */
export class Canceller {
  aborted = false;
  private last = performance.now();

  /** Cheap when called often: yields to the event loop at most every 50 ms. */
  async tick(): Promise<void> {
    const now = performance.now();
    if (now - this.last < 50) return;
    this.last = now;
    await new Promise<void>((r) => setImmediate(r));
    this.check();
  }

  check(): void {
    if (this.aborted) throw new BenchAborted();
  }
}

/** Nearest-rank percentile of an unsorted array (ms). */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = Float64Array.from(values).sort();
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

export function median(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** A small deterministic PRNG (mulberry32), so every run reads the same offsets. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const mbps = (bytes: number, ms: number) => bytes / 1e6 / (ms / 1000);

function writeAll(fd: number, buf: Buffer, len: number): void {
  let done = 0;
  while (done < len) done += fs.writeSync(fd, buf, done, len - done);
}

/** Workload 1: sequential write of `size` bytes in 1 MiB writes, then fsync and close. */
export async function seqWrite(path: string, size: number, c: Canceller): Promise<{ MBps: number; seconds: number }> {
  // Different content in every MiB (no store could dedupe it), made before the clock starts.
  const pattern = randomBytes(MiB + 4096);
  const start = performance.now();
  const fd = fs.openSync(path, 'w');
  try {
    for (let off = 0, i = 0; off < size; off += MiB, i++) {
      const len = Math.min(MiB, size - off);
      writeAll(fd, pattern.subarray((i * 4099) % 4096, ((i * 4099) % 4096) + MiB), len);
      await c.tick();
    }
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  const ms = performance.now() - start;
  return { MBps: mbps(size, ms), seconds: ms / 1000 };
}

/** Workload 2: read a whole file sequentially in 1 MiB reads. */
export async function seqRead(path: string, expectSize: number, c: Canceller): Promise<{ MBps: number; seconds: number }> {
  const buf = Buffer.allocUnsafe(MiB);
  const start = performance.now();
  const fd = fs.openSync(path, 'r');
  let total = 0;
  try {
    for (;;) {
      const n = fs.readSync(fd, buf, 0, MiB, null);
      if (n === 0) break;
      total += n;
      await c.tick();
    }
  } finally {
    fs.closeSync(fd);
  }
  const ms = performance.now() - start;
  if (total !== expectSize) throw new Error(`read ${total} bytes of ${path}, expected ${expectSize}`);
  return { MBps: mbps(total, ms), seconds: ms / 1000 };
}

export interface LatencyResult {
  opsPerSec: number;
  p50Ms: number;
  p99Ms: number;
  ops: number;
}

function latencyResult(lat: number[], ms: number): LatencyResult {
  return { opsPerSec: lat.length / (ms / 1000), p50Ms: percentile(lat, 50), p99Ms: percentile(lat, 99), ops: lat.length };
}

/** Workload 3: 4 KiB preads at random 4 KiB-aligned offsets, until maxOps or maxMs. */
export async function randomRead(path: string, size: number, maxOps: number, maxMs: number, seed: number, c: Canceller): Promise<LatencyResult> {
  const buf = Buffer.allocUnsafe(4096);
  const rand = prng(seed);
  const pages = Math.floor(size / 4096);
  const lat: number[] = [];
  const fd = fs.openSync(path, 'r');
  const start = performance.now();
  try {
    while (lat.length < maxOps && performance.now() - start < maxMs) {
      const pos = Math.floor(rand() * pages) * 4096;
      const t = performance.now();
      const n = fs.readSync(fd, buf, 0, 4096, pos);
      lat.push(performance.now() - t);
      if (n !== 4096) throw new Error(`short read of ${n} bytes at ${pos} in ${path}`);
      await c.tick();
    }
  } finally {
    fs.closeSync(fd);
  }
  return latencyResult(lat, performance.now() - start);
}

export interface SmallFilesResult {
  createPerSec: number;
  readPerSec: number;
  statPerSec: number;
  unlinkPerSec: number;
  files: number;
}

/** Called around each measured loop (outside the timing), e.g. to read the daemon's timers. */
export interface Probe {
  start(): Promise<void>;
  stop(name: string): Promise<void>;
}

/** Workload 4: N files in one new directory: create + write 4 KiB + close; read back; stat; unlink. */
export async function smallFiles(dir: string, count: number, c: Canceller, probe?: Probe): Promise<SmallFilesResult> {
  const data = randomBytes(4096);
  const buf = Buffer.allocUnsafe(8192);
  fs.mkdirSync(dir);
  const names = Array.from({ length: count }, (_, i) => join(dir, `f${i}`));
  const timed = async (what: string, each: (name: string) => void): Promise<number> => {
    await probe?.start();
    const start = performance.now();
    for (const name of names) {
      each(name);
      await c.tick();
    }
    const rate = count / ((performance.now() - start) / 1000);
    await probe?.stop(what);
    return rate;
  };
  const createPerSec = await timed('smallCreate', (name) => {
    const fd = fs.openSync(name, 'w');
    try {
      writeAll(fd, data, 4096);
    } finally {
      fs.closeSync(fd);
    }
  });
  const readPerSec = await timed('smallRead', (name) => {
    const fd = fs.openSync(name, 'r');
    let n: number;
    try {
      n = fs.readSync(fd, buf, 0, buf.length, 0);
    } finally {
      fs.closeSync(fd);
    }
    if (n !== 4096) throw new Error(`read ${n} bytes of ${name}, expected 4096`);
  });
  const statPerSec = await timed('smallStat', (name) => {
    if (fs.statSync(name).size !== 4096) throw new Error(`${name} does not have 4096 bytes`);
  });
  const unlinkPerSec = await timed('smallUnlink', (name) => fs.unlinkSync(name));
  fs.rmdirSync(dir);
  return { createPerSec, readPerSec, statPerSec, unlinkPerSec, files: count };
}

// One writer of workload 4b: creates its share of the files with synchronous calls, so every
// worker thread has exactly one request in flight, like a single-threaded `tar x` each.
const PARALLEL_CREATE_WORKER = `
const fs = require('node:fs');
const { join } = require('node:path');
const { workerData, parentPort } = require('node:worker_threads');
const { dir, count, data } = workerData;
const buf = Buffer.from(data);
parentPort.once('message', () => {
  try {
    for (let i = 0; i < count; i++) {
      const fd = fs.openSync(join(dir, 'f' + i), 'w');
      try {
        for (let off = 0; off < buf.length; ) off += fs.writeSync(fd, buf, off, buf.length - off);
      } finally {
        fs.closeSync(fd);
      }
    }
    parentPort.postMessage({ ok: true });
  } catch (err) {
    parentPort.postMessage({ ok: false, error: String(err && err.message || err) });
  }
});
parentPort.postMessage({ ready: true });
`;

/**
 * Workload 4b: the same create + write 4 KiB + close as workload 4, by `writers` threads at
 * once, each in a directory of its own (creates in one directory are serialized by the kernel's
 * directory lock). This is the concurrency the raw 64-concurrent transaction ceiling has, which
 * a single writer cannot use. Returns files per second over all writers; removes the files.
 */
export async function parallelCreates(dir: string, count: number, writers: number, c: Canceller, probe?: Probe): Promise<{ createPerSec: number; files: number; writers: number }> {
  c.check();
  const data = randomBytes(4096);
  const per = Math.max(1, Math.floor(count / writers));
  fs.mkdirSync(dir);
  const workers: Worker[] = [];
  try {
    const ready: Promise<void>[] = [];
    for (let w = 0; w < writers; w++) {
      const wdir = join(dir, `w${w}`);
      fs.mkdirSync(wdir);
      const worker = new Worker(PARALLEL_CREATE_WORKER, { eval: true, workerData: { dir: wdir, count: per, data } });
      workers.push(worker);
      ready.push(new Promise((resolve, reject) => {
        worker.once('message', () => resolve());
        worker.once('error', reject);
      }));
    }
    await Promise.all(ready);
    await probe?.start();
    const start = performance.now();
    const results = await Promise.all(
      workers.map(
        (worker) =>
          new Promise<{ ok: boolean; error?: string }>((resolve, reject) => {
            worker.once('message', resolve);
            worker.once('error', reject);
            worker.postMessage('go');
          }),
      ),
    );
    const ms = performance.now() - start;
    await probe?.stop('parallelCreate');
    const failed = results.find((r) => !r.ok);
    if (failed) throw new Error(`parallel creates: ${failed.error}`);
    return { createPerSec: (per * writers) / (ms / 1000), files: per * writers, writers };
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Workload 5: append 4 KiB then fsync, N times, each timed. The file is removed afterwards. */
export async function appendFsync(path: string, count: number, c: Canceller): Promise<LatencyResult> {
  const data = randomBytes(4096);
  const lat: number[] = [];
  const fd = fs.openSync(path, 'a');
  const start = performance.now();
  try {
    for (let i = 0; i < count; i++) {
      const t = performance.now();
      writeAll(fd, data, 4096);
      fs.fsyncSync(fd);
      lat.push(performance.now() - t);
      await c.tick();
    }
  } finally {
    fs.closeSync(fd);
  }
  const result = latencyResult(lat, performance.now() - start);
  fs.unlinkSync(path);
  return result;
}

// ---------------------------------------------------------------------------------------------
// Raw backends, through the engine classes kvfs uses (lib/meta, lib/data), without kvfs.

export interface BlockResult {
  /** Sequential (one request at a time): MB/s and latency. */
  MBps: number;
  p50Ms: number;
  p99Ms: number;
  /** With `parallel` requests in flight. */
  parallelMBps: number;
  parallel: number;
}

async function timedEach(count: number, each: (i: number) => Promise<void>, c: Canceller): Promise<{ lat: number[]; ms: number }> {
  const lat: number[] = [];
  const start = performance.now();
  for (let i = 0; i < count; i++) {
    const t = performance.now();
    await each(i);
    lat.push(performance.now() - t);
    c.check();
  }
  return { lat, ms: performance.now() - start };
}

async function inParallel(count: number, parallel: number, each: (i: number) => Promise<void>, c: Canceller): Promise<number> {
  let next = 0;
  const start = performance.now();
  await Promise.all(
    Array.from({ length: parallel }, async () => {
      while (next < count) {
        c.check();
        await each(next++);
      }
    }),
  );
  return performance.now() - start;
}

/**
 * Raw block store: put then get of `count` blocks of `blockSize` bytes (new ids each time), one
 * at a time and then `parallel` at a time; also 4 KiB puts for the small-write latency. Deletes
 * what it stored.
 */
export async function rawBlocks(
  store: BlockStore,
  blockSize: number,
  count: number,
  parallel: number,
  tag: string,
  c: Canceller,
): Promise<{ put: BlockResult; get: BlockResult; put4kP50Ms: number }> {
  const data = randomBytes(blockSize);
  const small = randomBytes(4096);
  const ids: string[] = [];
  const id = (kind: string, i: number) => {
    const s = `bench-${tag}-${kind}-${i}`;
    ids.push(s);
    return s;
  };
  // Gets go the way the block cache reads (lib/fs/cache.ts): into a buffer from a BufferPool,
  // given back once read, where the store offers getInto (the Redis store's own GET readers).
  const pool = new BufferPool();
  const getLength = async (key: string): Promise<number | undefined> => {
    if (!store.getInto) return (await store.get(key))?.length;
    let lent: Buffer | undefined;
    try {
      return (await store.getInto(key, (size) => (lent = pool.take(size))))?.length;
    } finally {
      if (lent) pool.give(lent);
    }
  };
  try {
    const seqPut = await timedEach(count, (i) => store.put(id('s', i), data), c);
    const seqGet = await timedEach(
      count,
      async (i) => {
        if ((await getLength(`bench-${tag}-s-${i}`)) !== blockSize) throw new Error(`raw block get: block bench-${tag}-s-${i} missing or short`);
      },
      c,
    );
    const parPutMs = await inParallel(count, parallel, (i) => store.put(id('p', i), data), c);
    const parGetMs = await inParallel(
      count,
      parallel,
      async (i) => {
        if ((await getLength(`bench-${tag}-p-${i}`)) !== blockSize) throw new Error('raw block get: block missing or short');
      },
      c,
    );
    const small4k = await timedEach(Math.max(count, 50), (i) => store.put(id('k', i), small), c);
    const bytes = count * blockSize;
    return {
      put: { MBps: mbps(bytes, seqPut.ms), p50Ms: percentile(seqPut.lat, 50), p99Ms: percentile(seqPut.lat, 99), parallelMBps: mbps(bytes, parPutMs), parallel },
      get: { MBps: mbps(bytes, seqGet.ms), p50Ms: percentile(seqGet.lat, 50), p99Ms: percentile(seqGet.lat, 99), parallelMBps: mbps(bytes, parGetMs), parallel },
      put4kP50Ms: percentile(small4k.lat, 50),
    };
  } finally {
    for (let i = 0; i < ids.length; i += 500) await store.delete(ids.slice(i, i + 500));
  }
}

export interface TxnResult {
  /** Sequential read-modify-write transactions on one key. */
  p50Ms: number;
  p99Ms: number;
  seqPerSec: number;
  /**
   * Sequential transactions each followed by the engine's sync() (what kvfs's fsync waits for on
   * an engine whose commits are not durable at once, the embedded one); the same as p50Ms/p99Ms
   * on engines without sync() (etcd: every commit is durable).
   */
  durableP50Ms: number;
  durableP99Ms: number;
  /** `concurrency` workers, each doing read-modify-write transactions on its own key. */
  perSec: number;
  concurrency: number;
}

/** Raw metadata engine: read-modify-write transactions (get, put of a ~100-byte value). */
export async function rawTxn(kv: KvEngine, count: number, concurrentCount: number, concurrency: number, tag: string, c: Canceller): Promise<TxnResult> {
  const keys = new Set<string>();
  const rmw = async (key: string) => {
    keys.add(key);
    await kv.txn(async (tx) => {
      const old = await tx.get(key);
      const n = old ? Number(JSON.parse(old.toString()).n) + 1 : 1;
      tx.put(key, Buffer.from(JSON.stringify({ n, pad: 'x'.repeat(80) })));
    });
  };
  try {
    const seq = await timedEach(count, () => rmw(`bench-${tag}-seq`), c);
    const sync = kv.sync?.bind(kv);
    const durable = sync
      ? await timedEach(count, async () => {
          await rmw(`bench-${tag}-seq`);
          await sync();
        }, c)
      : seq;
    let done = 0;
    const start = performance.now();
    await Promise.all(
      Array.from({ length: concurrency }, async (_, w) => {
        while (done < concurrentCount) {
          c.check();
          done++;
          await rmw(`bench-${tag}-w${w}`);
        }
      }),
    );
    const ms = performance.now() - start;
    return {
      p50Ms: percentile(seq.lat, 50),
      p99Ms: percentile(seq.lat, 99),
      seqPerSec: count / (seq.ms / 1000),
      durableP50Ms: percentile(durable.lat, 50),
      durableP99Ms: percentile(durable.lat, 99),
      perSec: done / (ms / 1000),
      concurrency,
    };
  } finally {
    const list = [...keys];
    for (let i = 0; i < list.length; i += 100) {
      await kv.txn(async (tx) => {
        for (const k of list.slice(i, i + 100)) tx.delete(k);
      });
    }
  }
}

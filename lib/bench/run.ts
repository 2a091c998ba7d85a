// `kvfs bench`: runs the workloads of lib/bench/workloads.ts on a fresh kvfs volume and, in the
// same run, on their ceilings: a no-op FUSE filesystem (lib/bench/noop.ts) and the raw backends.
//
// The bench process only drives workloads. Each filesystem is served by a child process: kvfs by
// the real CLI (`node bin/kvfs.js mount ...`, foreground), the no-op filesystem by
// lib/bench/noop-main.ts. Workload I/O in the process serving the mount would deadlock.
// Everything started is stopped and every temp dir removed, also on errors and Ctrl-C.
//
// The cost of encryption at rest is measured in the same run: a second volume, formatted with
// --encrypt and a key made for the run, gets the sequential write and the cold and warm reads,
// interleaved with the plain volume's repetitions; and this process measures the AES-256-GCM
// seal/open rate of block-sized buffers with the code the daemon uses (lib/data/encrypted.ts).

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { request } from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { UsageError } from '../errors';
import { measureCipher } from '../data/encrypted';
import { openBlockStore, parseBlockUrl, stripPassword, type BackendSecurity } from '../data/index';
import type { OpTimes, StoredBytes } from '../fs/metrics';
import { mountAt } from '../fuse/mount';
import { openKv, parseMetaUrl } from '../meta/index';
import { Meta } from '../meta/meta';
import {
  appendFsync,
  BenchAborted,
  Canceller,
  median,
  MiB,
  type Probe,
  randomRead,
  rawBlocks,
  rawTxn,
  seqRead,
  seqWrite,
  smallFiles,
  parallelCreates,
} from './workloads';

export const PHASES = ['raw', 'write', 'read', 'encrypted', 'random', 'small', 'append'] as const;
export type Phase = (typeof PHASES)[number];

export interface BenchConfig {
  /** etcd://... or file:///DIR/NAME; a fresh volume with a name derived from NAME is made. */
  metaUrl?: string;
  dataUrl?: string;
  /** Passwords and TLS material for the bench's own connections (raw measurements, clean-up). */
  meta?: BackendSecurity;
  data?: BackendSecurity;
  /**
   * For the child `kvfs format`/`kvfs mount` commands: the TLS options as given, and the
   * passwords (in KVFS_META_PASSWORD/KVFS_DATA_PASSWORD, never on a command line).
   */
  childArgs?: string[];
  childEnv?: NodeJS.ProcessEnv;
  size: number;
  quick: boolean;
  reps: number;
  smallFiles: number;
  appends: number;
  randomOps: number;
  randomMs: number;
  rawBlocks: number;
  rawTxns: number;
  rawConcurrentTxns: number;
  /** Block-sized buffers sealed and opened per repetition for the AES-256-GCM rate. */
  cipherBlocks: number;
  concurrency: number;
  blockParallel: number;
  phases: Phase[];
  /** Run the kvfs daemons under `node --cpu-prof`, profiles into this directory. */
  profileDir?: string;
  /** The command line, for the report (passwords are removed by the caller). */
  command: string;
  /** Progress lines. */
  log: (line: string) => void;
}

/** One measured figure: each repetition and their median. */
export interface Metric {
  median: number;
  runs: number[];
}
export type Figures = Record<string, Record<string, Metric>>;

export interface Comparison {
  workload: string;
  unit: string;
  kvfs: number;
  ceiling: number;
  /** What the ceiling is. */
  ceilingIs: string;
  /** kvfs / ceiling. */
  ratio: number;
  /** 'ratio >= 0.5', 'ratio <= 1.5', or undefined where the issue sets no target. */
  target?: string;
  pass?: boolean;
}

/** One figure on the plain volume beside the same figure on the encrypted one. */
export interface EncryptionCost {
  workload: string;
  unit: string;
  plain: number;
  encrypted: number;
  /** encrypted / plain. */
  ratio: number;
}

export interface BenchReport {
  tool: 'kvfs bench';
  version: string;
  startedAt: string;
  finishedAt: string;
  seconds: number;
  command: string;
  machine: {
    cpus: number;
    cpuModel: string;
    memoryBytes: number;
    kernel: string;
    os: string;
    node: string;
    loadAverageAtStart: number[];
    loadAverageAtEnd?: number[];
    /** MB/s at which this process touched 256 MiB of memory it had never used (see newMemoryRate). */
    newMemoryMBps: number;
    /** Median microseconds for one thread to wake another and be woken back (see wakeupRoundTrip). */
    wakeupRoundTripUs: number;
  };
  config: {
    meta: string;
    data: string;
    volume: string;
    blockSize: number;
    size: number;
    quick: boolean;
    repetitions: number;
    phases: Phase[];
    smallFiles: number;
    appends: number;
    randomReads: { maxOps: number; maxSeconds: number };
    raw: { blocks: number; blockParallel: number; txns: number; concurrentTxns: number; concurrency: number };
    note: string;
  };
  /** kvfsEncrypted: the same workloads on a volume made with --encrypt; raw.aesGcm: cipher rate. */
  results: { kvfs: Figures; noop: Figures; raw: Figures; kvfsEncrypted: Figures };
  comparison: Comparison[];
  /** Encryption at rest: plain beside encrypted, and the cipher rate in the bench process. */
  encryption: { cipher: string; costs: EncryptionCost[]; sealMBps: number; openMBps: number };
  /** Every daemon the run started (all stopped by the end of the run). */
  daemons: Array<{ what: string; pid: number }>;
  /**
   * Where the time of each measured loop went, per filesystem and loop, one entry per
   * repetition: CPU time of the daemon process (all its threads) and of the bench process, and
   * for kvfs its own timers (control socket /metrics, reset before the loop): per FUSE
   * operation the count and the time in the handler, of which waiting on the metadata engine
   * and on the block store; background = backend time outside any operation; stored = objects
   * and bytes put to the block store.
   */
  breakdown: { kvfs: Record<string, Breakdown[]>; noop: Record<string, Breakdown[]>; kvfsEncrypted: Record<string, Breakdown[]> };
  error?: string;
}

export interface Breakdown {
  /** Wall time of the measured loop in the bench process. */
  wallMs: number;
  /** CPU seconds (user + system, all threads) of the daemon serving the mount, and of the bench. */
  daemonCpuS?: number;
  benchCpuS: number;
  /**
   * Seconds the daemon's main (JavaScript) thread and the bench's thread were runnable but
   * waiting for a CPU (/proc/PID/schedstat): the cost of other processes on a busy machine.
   */
  daemonRunQueueS?: number;
  benchRunQueueS?: number;
  /** kvfs only: the daemon's own timers. */
  ops?: Record<string, OpTimes>;
  background?: OpTimes;
  /** kvfs only: objects and bytes the daemon sent to the block store (write amplification). */
  stored?: StoredBytes;
}

const ROOT = path.resolve(__dirname, '..', '..', '..');
const CLI = path.join(ROOT, 'bin', 'kvfs.js');
const NOOP_MAIN = path.join(__dirname, 'noop-main.js');

/** Writer threads of the parallel create workload, each in its own directory. */
const CREATE_WRITERS = 8;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));


/**
 * A command line for the report, with the password of every URL in it replaced by *** (whole:
 * stripPassword ends the user-info at the last '@', so a password containing '@' goes entirely).
 * Each argument is redacted on its own, also in the --opt=URL form.
 */
export function redactArgs(argv: readonly string[]): string {
  return argv
    .map((arg) => {
      const m = /^(--[A-Za-z0-9-]+=)(.*)$/s.exec(arg);
      return m ? m[1] + stripPassword(m[2], '***') : stripPassword(arg, '***');
    })
    .join(' ');
}

/** Replaces the passwords of URLs in a space-separated command line with ***. */
export function redactUrls(text: string): string {
  return redactArgs(text.split(' '));
}

// ---------------------------------------------------------------------------------------------
// Child processes

/** Runs a command to completion, collecting its output. */
function runCommand(cmd: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (err) => (out += `${err.message}\n`));
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out: out.trim() });
    });
  });
}

/** A filesystem daemon in a child process that prints a line containing 'mounted' when ready. */
class Daemon {
  readonly child: ChildProcess;
  private lines: string[] = [];
  readonly exited: Promise<number | null>;
  private status: number | null | undefined;

  constructor(
    readonly what: string,
    args: string[],
    env: NodeJS.ProcessEnv,
  ) {
    // Same process group as the bench: Ctrl-C in a terminal reaches the daemons too, and each
    // commits and unmounts by itself even if the bench cannot.
    this.child = spawn(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    for (const stream of [this.child.stdout!, this.child.stderr!]) {
      let partial = '';
      stream.setEncoding('utf8').on('data', (d: string) => {
        const parts = (partial + d).split('\n');
        partial = parts.pop()!;
        this.lines.push(...parts);
        if (this.lines.length > 200) this.lines.splice(0, this.lines.length - 200);
      });
    }
    this.exited = new Promise((resolve) => {
      this.child.on('error', (err) => this.lines.push(`spawn error: ${err.message}`));
      this.child.on('close', (code, signal) => {
        this.status = code ?? (signal ? 128 + (os.constants.signals[signal] ?? 0) : null);
        resolve(this.status);
      });
    });
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }
  get running(): boolean {
    return this.status === undefined;
  }
  output(): string {
    return this.lines.slice(-20).join('\n');
  }

  async ready(timeoutMs: number): Promise<void> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      if (this.lines.some((l) => /\bmounted\b/.test(l))) return;
      if (!this.running) throw new Error(`${this.what} exited (code ${this.status}) before it was mounted:\n${this.output()}`);
      if (Date.now() > end) throw new Error(`${this.what} did not report 'mounted' within ${timeoutMs / 1000} s:\n${this.output()}`);
      await sleep(20);
    }
  }

  async waitExit(ms: number): Promise<boolean> {
    if (!this.running) return true;
    let timer: NodeJS.Timeout | undefined;
    const done = await Promise.race([this.exited.then(() => true), new Promise<boolean>((r) => (timer = setTimeout(() => r(false), ms)))]);
    clearTimeout(timer);
    return done;
  }

  kill(signal: NodeJS.Signals): void {
    if (this.running && this.pid > 0) {
      try {
        process.kill(this.pid, signal);
      } catch {
        // already gone
      }
    }
  }
}

/** Live things the process-exit safety net must clean up synchronously. */
const live = { daemons: new Set<Daemon>(), mounts: new Set<string>(), dirs: new Set<string>() };

function emergencyCleanup(): void {
  for (const d of live.daemons) d.kill('SIGKILL');
  for (const m of live.mounts) if (mountAt(m)) spawnSync('umount', ['-l', m], { stdio: 'ignore', timeout: 10_000 });
  for (const dir of live.dirs) {
    if (![...live.mounts].some((m) => m.startsWith(dir) && mountAt(m))) fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** A mounted filesystem the workloads run on. */
type TargetName = 'kvfs' | 'noop' | 'kvfsEncrypted';

interface Target {
  name: TargetName;
  label: string;
  mnt: string;
  mount(): Promise<void>;
  unmount(): Promise<void>;
  /** After a remount: make sure the big file exists (the no-op filesystem forgets everything). */
  restore(file: string, size: number): void;
  /** Pid of the daemon serving the mount now. */
  pid(): number | undefined;
}

function makeTarget(
  name: TargetName,
  mnt: string,
  env: NodeJS.ProcessEnv,
  started: (what: string, pid: number) => void,
  mountArgs: () => string[],
  stop: (d: Daemon) => Promise<void>,
): Target {
  let daemon: Daemon | undefined;
  const label = name === 'kvfs' ? 'kvfs' : name === 'noop' ? 'no-op FUSE' : 'kvfs encrypted';
  const target: Target = {
    name,
    label,
    mnt,
    async mount() {
      if (mountAt(mnt)) throw new Error(`${mnt} is already mounted`);
      const d = new Daemon(`${label} daemon`, mountArgs(), env);
      daemon = d;
      live.daemons.add(d);
      started(`${label} daemon`, d.pid);
      live.mounts.add(mnt);
      try {
        await d.ready(60_000);
        if (!mountAt(mnt)) throw new Error(`${label} daemon said 'mounted' but ${mnt} is not mounted:\n${d.output()}`);
      } catch (err) {
        await target.unmount().catch(() => undefined);
        throw err;
      }
    },
    async unmount() {
      const d = daemon;
      daemon = undefined;
      if (d?.running) {
        await stop(d).catch(() => undefined);
        if (!(await d.waitExit(60_000))) {
          d.kill('SIGTERM');
          if (!(await d.waitExit(10_000))) {
            d.kill('SIGKILL');
            await d.waitExit(5_000);
          }
        }
      }
      if (mountAt(mnt)) spawnSync('umount', ['-l', mnt], { stdio: 'ignore', timeout: 10_000 });
      if (d) live.daemons.delete(d);
      live.mounts.delete(mnt);
      if (d && d.running) throw new Error(`${label} daemon (pid ${d.pid}) did not exit`);
    },
    pid: () => daemon?.pid,
    restore(file, size) {
      if (name !== 'noop') return;
      fs.writeFileSync(file, '');
      fs.truncateSync(file, size);
    },
  };
  return target;
}

/** GET a path from a kvfs daemon's control socket (HTTP on a unix socket, JSON). */
function askDaemon<T>(socket: string, urlPath: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: socket, path: urlPath, timeout: 10_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (d: Buffer) => chunks.push(d));
      res.on('end', () => {
        if (res.statusCode !== 200) return reject(new Error(`${urlPath}: status ${res.statusCode}`));
        try {
          resolve(JSON.parse(Buffer.concat(chunks).toString()) as T);
        } catch (err) {
          reject(err);
        }
      });
    });
    req.on('timeout', () => req.destroy(new Error('no answer')));
    req.on('error', reject);
    req.end();
  });
}

/** The control socket of the daemon serving mnt, from the run records in KVFS_HOME/run. */
function controlSocket(home: string, mnt: string): string | undefined {
  const dir = path.join(home, 'run');
  let names: string[] = [];
  try {
    names = fs.readdirSync(dir).filter((n) => n.endsWith('.json'));
  } catch {
    return undefined;
  }
  for (const name of names) {
    try {
      const record = JSON.parse(fs.readFileSync(path.join(dir, name), 'utf8')) as { mountpoint?: string; socket?: string };
      if (record.mountpoint === mnt && record.socket) return record.socket;
    } catch {
      // being written
    }
  }
  return undefined;
}

/** CPU seconds (user + system, all threads) a process has used, from /proc/PID/stat. */
function cpuSeconds(pid: number | undefined): number | undefined {
  if (!pid || pid < 0) return undefined;
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
  } catch {
    return undefined;
  }
}
/** Seconds a thread waited on a run queue (second field of /proc/PID/schedstat, ns). */
function runQueueSeconds(pid: number | 'self' | undefined): number | undefined {
  if (pid === undefined || (typeof pid === 'number' && pid < 0)) return undefined;
  try {
    return Number(fs.readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[1]) / 1e9;
  } catch {
    return undefined;
  }
}
const delta = (a: number | undefined, b: number | undefined) => (a !== undefined && b !== undefined ? b - a : undefined);

/** USER_HZ: 100 on every Linux architecture Node runs on. */
const CLOCK_TICKS = 100;

/**
 * A probe around a measured loop: CPU time of the daemon and of the bench, and for kvfs the
 * daemon's timers (reset before, read after; skipped when it has no /metrics endpoint).
 */
function daemonProbe(home: string | undefined, mnt: string, pid: () => number | undefined, record: (name: string, b: Breakdown) => void): Probe {
  let started = 0;
  let cpu0: number | undefined;
  let rq0: number | undefined;
  let benchRq0: number | undefined;
  let bench0 = process.cpuUsage();
  let working = home !== undefined;
  return {
    async start() {
      const socket = working ? controlSocket(home!, mnt) : undefined;
      if (socket) await askDaemon(socket, '/metrics/reset').catch((e) => { if (process.env.KVFS_DEBUG) console.error('probe reset', e); working = false; });
      cpu0 = cpuSeconds(pid());
      rq0 = runQueueSeconds(pid());
      benchRq0 = runQueueSeconds('self');
      bench0 = process.cpuUsage();
      started = performance.now();
    },
    async stop(name) {
      const wallMs = performance.now() - started;
      const bench = process.cpuUsage(bench0);
      const entry: Breakdown = {
        wallMs,
        daemonCpuS: delta(cpu0, cpuSeconds(pid())),
        benchCpuS: (bench.user + bench.system) / 1e6,
        daemonRunQueueS: delta(rq0, runQueueSeconds(pid())),
        benchRunQueueS: delta(benchRq0, runQueueSeconds('self')),
      };
      record(name, entry);
      const socket = working ? controlSocket(home!, mnt) : undefined;
      if (!socket) return;
      const snap = await askDaemon<{ ops: Record<string, OpTimes>; background: OpTimes; stored?: StoredBytes }>(socket, '/metrics').catch((e) => { if (process.env.KVFS_DEBUG) console.error('probe', e); return undefined; });
      if (snap?.ops) Object.assign(entry, { ops: snap.ops, background: snap.background, stored: snap.stored });
    },
  };
}

// ---------------------------------------------------------------------------------------------
// The run

class Recorder {
  readonly runs: Record<string, Record<string, Record<string, number[]>>> = { kvfs: {}, noop: {}, raw: {}, kvfsEncrypted: {} };

  add(who: string, workload: string, values: Record<string, number>): void {
    const w = (this.runs[who][workload] ??= {});
    for (const [k, v] of Object.entries(values)) (w[k] ??= []).push(v);
  }

  figures(who: string): Figures {
    const out: Figures = {};
    for (const [workload, fields] of Object.entries(this.runs[who])) {
      out[workload] = {};
      for (const [field, runs] of Object.entries(fields)) out[workload][field] = { median: median(runs), runs };
    }
    return out;
  }
}

function fmt(value: number, unit: string): string {
  if (!Number.isFinite(value)) return '-';
  if (unit === 'ms') return value < 1 ? value.toFixed(3) : value < 10 ? value.toFixed(2) : value.toFixed(1);
  return value < 10 ? value.toFixed(2) : value < 100 ? value.toFixed(1) : value.toFixed(0);
}

/** Below this first-touch rate the machine's memory is taken to be newly provisioned. */
const SLOW_NEW_MEMORY_MBPS = 1000;

/**
 * How fast the kernel hands this process memory it has never used: 256 MiB allocated without
 * zero-filling, one byte written per 4 KiB page. On a newly booted VM the hypervisor backs each
 * guest page on its first touch, and that ran at 365-403 MB/s here against 1,400-2,600 MB/s once
 * the machine's memory had been used (BENCHMARKS.md, eighth round). kvfs fills dirty buffers,
 * the page cache and Redis with new memory where the no-op stores nothing, so on such a machine
 * the write figures measure the hypervisor.
 */
function newMemoryRate(): number {
  const size = 256 * 1024 * 1024;
  const start = performance.now();
  const buf = Buffer.allocUnsafeSlow(size);
  for (let i = 0; i < size; i += 4096) buf[i] = 1;
  return Math.round(size / 1e6 / ((performance.now() - start) / 1000));
}

/** Above this a thread wake-up round trip is taken to be slow (idle CPUs halt instead of polling). */
const SLOW_WAKEUP_US = 40;

/**
 * Median microseconds for a ping-pong between this thread and a worker thread through a futex
 * (Atomics.wait/notify), 5 batches of 500. Every FUSE request crosses threads about four times
 * (the application, a libfuse thread, the daemon's event loop and back), so this sets what one
 * request costs on the no-op as on kvfs. On these VMs it was 10-18 us with the guest's idle
 * halt-polling on and 90-134 us with it off (/sys/module/haltpoll/parameters/guest_halt_poll_ns
 * = 0), which moved the no-op's create rate from about 1,000-1,900/s to 300-380/s and with it
 * every ratio that has the no-op as ceiling (BENCHMARKS.md, ninth round).
 */
async function wakeupRoundTrip(): Promise<number> {
  const { Worker } = await import('node:worker_threads');
  const flag = new Int32Array(new SharedArrayBuffer(4));
  const worker = new Worker(
    `const { workerData } = require('node:worker_threads');
     const flag = new Int32Array(workerData);
     for (;;) {
       Atomics.wait(flag, 0, 0);
       if (Atomics.load(flag, 0) === 2) break;
       Atomics.store(flag, 0, 0);
       Atomics.notify(flag, 0);
     }`,
    { eval: true, workerData: flag.buffer },
  );
  try {
    await new Promise<void>((resolve, reject) => worker.once('online', resolve).once('error', reject));
    const batches: number[] = [];
    for (let b = 0; b < 5; b++) {
      const start = performance.now();
      for (let i = 0; i < 500; i++) {
        Atomics.store(flag, 0, 1);
        Atomics.notify(flag, 0);
        Atomics.wait(flag, 0, 1);
      }
      batches.push(((performance.now() - start) * 1000) / 500);
    }
    return Math.round(batches.sort((x, y) => x - y)[2]);
  } finally {
    Atomics.store(flag, 0, 2);
    Atomics.notify(flag, 0);
    await worker.terminate();
  }
}

async function machine(): Promise<BenchReport['machine']> {
  const cpus = os.cpus();
  return {
    cpus: cpus.length,
    cpuModel: cpus[0]?.model ?? 'unknown',
    memoryBytes: os.totalmem(),
    kernel: os.release(),
    os: `${os.type()} ${os.version()}`,
    node: process.version,
    loadAverageAtStart: os.loadavg().map((l) => Math.round(l * 100) / 100),
    newMemoryMBps: newMemoryRate(),
    wakeupRoundTripUs: await wakeupRoundTrip(),
  };
}

/** The volume the bench formats: a fresh name derived from the given one. */
function planVolume(
  cfg: BenchConfig,
  tmp: string,
): { metaUrl: string; encMetaUrl: string; rawMetaUrl: string; rawDataUrl: string; dataUrl?: string; embeddedDirs: string[] } {
  const suffix = `${Date.now().toString(36)}${randomBytes(3).toString('hex')}`;
  if (!cfg.metaUrl) {
    const store = path.join(tmp, 'store');
    return {
      metaUrl: pathToFileURL(path.join(store, 'bench')).href,
      encMetaUrl: pathToFileURL(path.join(store, 'bench-encrypted')).href,
      rawMetaUrl: pathToFileURL(path.join(store, 'raw')).href,
      rawDataUrl: pathToFileURL(path.join(store, 'raw')).href,
      dataUrl: cfg.dataUrl,
      embeddedDirs: [],
    };
  }
  const parsed = parseMetaUrl(cfg.metaUrl, cfg.meta);
  const name = `${parsed.volume.slice(0, 40)}-bench-${suffix}`;
  const withName = (n: string) => cfg.metaUrl!.replace(/\/[^/]*$/, `/${n}`);
  if (parsed.scheme === 'etcd') {
    if (!cfg.dataUrl) throw new UsageError('kvfs bench --meta etcd://... needs --data redis://HOST:PORT (where the fresh volume keeps its blocks)');
    parseBlockUrl(cfg.dataUrl, cfg.data);
    return {
      metaUrl: withName(name),
      encMetaUrl: withName(`${name}-enc`),
      rawMetaUrl: withName(`${name}-raw`),
      rawDataUrl: cfg.dataUrl,
      dataUrl: cfg.dataUrl,
      embeddedDirs: [],
    };
  }
  // Embedded in a directory the user chose (to measure that disk): fresh dirs beside NAME.
  const dir = path.dirname(parsed.dir);
  const volDir = path.join(dir, name);
  const rawDir = path.join(dir, `${name}-raw`);
  const encDir = path.join(dir, `${name}-enc`);
  return {
    metaUrl: pathToFileURL(volDir).href,
    encMetaUrl: pathToFileURL(encDir).href,
    rawMetaUrl: pathToFileURL(rawDir).href,
    rawDataUrl: pathToFileURL(rawDir).href,
    dataUrl: cfg.dataUrl,
    embeddedDirs: [volDir, rawDir, encDir],
  };
}

/** Deletes an etcd volume's keys and its blocks (the bench volume and its scratch namespace). */
async function destroyRemoteVolume(
  metaUrl: string,
  dataUrl: string | undefined,
  uuid: string | undefined,
  security: { meta?: BackendSecurity; data?: BackendSecurity },
): Promise<void> {
  const { kv } = await openKv(metaUrl, { create: false, security: security.meta });
  try {
    for (;;) {
      const pairs = await kv.scan('', { limit: 100 });
      if (pairs.length === 0) break;
      await kv.txn(async (tx) => {
        for (const p of pairs) tx.delete(p.key);
      });
    }
  } finally {
    await kv.close();
  }
  if (dataUrl && uuid) {
    // The raw store, also for the encrypted volume: deleting needs no key.
    const store = await openBlockStore(dataUrl, uuid, { security: security.data });
    try {
      const ids: string[] = [];
      await store.list((batch) => void ids.push(...batch));
      for (let i = 0; i < ids.length; i += 500) await store.delete(ids.slice(i, i + 500));
    } finally {
      await store.close();
    }
  }
}

export async function runBench(cfg: BenchConfig): Promise<BenchReport> {
  const started = new Date();
  const t0 = performance.now();
  const c = new Canceller();
  const rec = new Recorder();
  const log = cfg.log;
  const cleanups: Array<() => Promise<void> | void> = [];
  const has = (p: Phase) => cfg.phases.includes(p);

  let signals = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    signals++;
    c.aborted = true;
    if (signals === 1) log(`kvfs bench: ${sig}: stopping, unmounting and cleaning up (again to force)`);
    else {
      emergencyCleanup();
      process.exit(130);
    }
  };
  const sigs: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  for (const s of sigs) process.on(s, onSignal);
  process.on('exit', emergencyCleanup);

  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kvfs-bench-'));
  fs.chmodSync(tmp, 0o755);
  live.dirs.add(tmp);
  // The child commands get every URL and option explicitly, and the key of the encrypted volume
  // only through --key-file: none of the variables that would choose or change them.
  const env: NodeJS.ProcessEnv = { ...process.env, ...(cfg.childEnv ?? {}), KVFS_HOME: path.join(tmp, 'home') };
  for (const v of ['NODE_OPTIONS', 'KVFS_META', 'KVFS_DATA', 'KVFS_KEY', 'KVFS_KEY_FILE']) delete env[v];
  const childArgs = cfg.childArgs ?? [];
  const security = { meta: cfg.meta, data: cfg.data };

  let plan: ReturnType<typeof planVolume>;
  try {
    plan = planVolume(cfg, tmp);
  } catch (err) {
    fs.rmSync(tmp, { recursive: true, force: true });
    live.dirs.delete(tmp);
    for (const s of sigs) process.off(s, onSignal);
    process.off('exit', emergencyCleanup);
    throw err;
  }
  for (const d of plan.embeddedDirs) live.dirs.add(d);
  const report: BenchReport = {
    tool: 'kvfs bench',
    version: String(require(path.join(ROOT, 'package.json')).version),
    startedAt: started.toISOString(),
    finishedAt: '',
    seconds: 0,
    command: cfg.command,
    machine: await machine(),
    config: {
      meta: parseMetaUrl(plan.metaUrl, cfg.meta).describe,
      data: plan.dataUrl ? parseBlockUrl(plan.dataUrl, cfg.data).describe : `${parseMetaUrl(plan.metaUrl, cfg.meta).describe} (embedded block store)`,
      volume: parseMetaUrl(plan.metaUrl, cfg.meta).volume,
      blockSize: 0,
      size: cfg.size,
      quick: cfg.quick,
      repetitions: cfg.reps,
      phases: cfg.phases,
      smallFiles: cfg.smallFiles,
      appends: cfg.appends,
      randomReads: { maxOps: cfg.randomOps, maxSeconds: cfg.randomMs / 1000 },
      raw: { blocks: cfg.rawBlocks, blockParallel: cfg.blockParallel, txns: cfg.rawTxns, concurrentTxns: cfg.rawConcurrentTxns, concurrency: cfg.concurrency },
      note: 'figures are medians of the repetitions; MB/s = 10^6 bytes/s; ratio = kvfs / ceiling',
    },
    results: { kvfs: {}, noop: {}, raw: {}, kvfsEncrypted: {} },
    comparison: [],
    encryption: { cipher: 'aes-256-gcm', costs: [], sealMBps: NaN, openMBps: NaN },
    breakdown: { kvfs: {}, noop: {}, kvfsEncrypted: {} },
    daemons: [],
  };
  const kvfsHome = env.KVFS_HOME!;
  const probeOf = (t: Target): Probe =>
    daemonProbe(t.name !== 'noop' ? kvfsHome : undefined, t.mnt, () => t.pid(), (name, b) => (report.breakdown[t.name][name] ??= []).push(b));
  const probed = async <T>(t: Target, name: string, fn: () => Promise<T>): Promise<T> => {
    const p = probeOf(t);
    await p.start();
    const result = await fn();
    await p.stop(name);
    return result;
  };

  const targets: Target[] = [];
  try {
    // A fresh volume, formatted by the real CLI.
    // Children get URLs without passwords (those are in their environment, see cfg.childEnv).
    const urlArgs = (metaUrl: string) => ['--meta', stripPassword(metaUrl), ...(plan.dataUrl ? ['--data', stripPassword(plan.dataUrl)] : []), ...childArgs];
    const remote = parseMetaUrl(plan.metaUrl, cfg.meta).scheme === 'etcd';
    const uuids = new Map<string, string>();
    cleanups.push(async () => {
      if (!remote) return;
      await destroyRemoteVolume(plan.metaUrl, plan.dataUrl, uuids.get(plan.metaUrl), security);
      if (uuids.has(plan.encMetaUrl)) await destroyRemoteVolume(plan.encMetaUrl, plan.dataUrl, uuids.get(plan.encMetaUrl), security);
      await destroyRemoteVolume(plan.rawMetaUrl, undefined, undefined, security);
    });
    const format = async (metaUrl: string, extra: string[]) => {
      const formatted = await runCommand(process.execPath, [CLI, 'format', ...urlArgs(metaUrl), ...extra], env, 60_000);
      if (formatted.code !== 0) throw new UsageError(`could not format the bench volume: ${formatted.out.split('\n').pop()}`);
      const { kv, describe } = await openKv(metaUrl, { create: false, security: cfg.meta });
      try {
        const settings = await Meta.loadSettings(kv, describe);
        if (!settings) throw new Error(`the volume ${describe} just formatted has no settings`);
        uuids.set(metaUrl, settings.uuid);
        return settings;
      } finally {
        await kv.close();
      }
    };
    log(`kvfs bench: formatting a fresh volume ${report.config.meta}`);
    report.config.blockSize = (await format(plan.metaUrl, [])).blockSize;
    // The encrypted volume: a key made for this run, in a file only we can read, gone with tmp.
    const keyFile = path.join(tmp, 'bench.key');
    if (has('encrypted')) {
      fs.writeFileSync(keyFile, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
      log(`kvfs bench: formatting a fresh encrypted volume ${parseMetaUrl(plan.encMetaUrl, cfg.meta).describe} (AES-256-GCM, a random key for this run)`);
      await format(plan.encMetaUrl, ['--encrypt', '--key-file', keyFile]);
    }
    const blockSize = report.config.blockSize;
    c.check();

    // Raw backends, through the engines kvfs uses.
    if (has('raw')) {
      const { kv } = await openKv(plan.rawMetaUrl, { security: cfg.meta });
      const store = await openBlockStore(plan.rawDataUrl, `bench-raw-${randomBytes(4).toString('hex')}`, { security: cfg.data }).catch(async (err) => {
        await kv.close();
        throw err;
      });
      try {
        // Unmeasured warm-up: connections, JIT, the SQLite files' first pages.
        await rawBlocks(store, blockSize, 4, 2, 'warm', c);
        await rawTxn(kv, 20, 64, 8, 'warm', c);
        for (let rep = 0; rep < cfg.reps; rep++) {
          const b = await rawBlocks(store, blockSize, cfg.rawBlocks, cfg.blockParallel, `${rep}`, c);
          rec.add('raw', 'blockPut', { MBps: b.put.MBps, p50Ms: b.put.p50Ms, p99Ms: b.put.p99Ms, parallelMBps: b.put.parallelMBps });
          rec.add('raw', 'blockGet', { MBps: b.get.MBps, p50Ms: b.get.p50Ms, p99Ms: b.get.p99Ms, parallelMBps: b.get.parallelMBps });
          rec.add('raw', 'blockPut4k', { p50Ms: b.put4kP50Ms });
          log(
            `raw ${store.kind} block ${blockSize / 1024} KiB  rep ${rep + 1}/${cfg.reps}: put ${fmt(b.put.MBps, '')} MB/s (p50 ${fmt(b.put.p50Ms, 'ms')} ms), ` +
              `get ${fmt(b.get.MBps, '')} MB/s; ${cfg.blockParallel} in flight: put ${fmt(b.put.parallelMBps, '')}, get ${fmt(b.get.parallelMBps, '')} MB/s; 4 KiB put p50 ${fmt(b.put4kP50Ms, 'ms')} ms`,
          );
          const t = await rawTxn(kv, cfg.rawTxns, cfg.rawConcurrentTxns, cfg.concurrency, `${rep}`, c);
          rec.add('raw', 'txn', { p50Ms: t.p50Ms, p99Ms: t.p99Ms, seqPerSec: t.seqPerSec, perSec: t.perSec, durableP50Ms: t.durableP50Ms, durableP99Ms: t.durableP99Ms });
          log(
            `raw ${kv.kind} txn  rep ${rep + 1}/${cfg.reps}: p50 ${fmt(t.p50Ms, 'ms')} ms, p99 ${fmt(t.p99Ms, 'ms')} ms, ` +
              `${fmt(t.seqPerSec, '')}/s one at a time, ${fmt(t.perSec, '')}/s with ${cfg.concurrency} concurrent` +
              (kv.sync ? `; with sync() p50 ${fmt(t.durableP50Ms, 'ms')} ms` : ''),
          );
        }
      } finally {
        await Promise.allSettled([kv.close(), store.close()]);
      }
    }

    // AES-256-GCM in this process, with the daemon's own seal/open code: the cipher's share.
    if (has('encrypted')) {
      measureCipher(blockSize, 4); // unmeasured warm-up
      for (let rep = 0; rep < cfg.reps; rep++) {
        c.check();
        const r = measureCipher(blockSize, cfg.cipherBlocks);
        rec.add('raw', 'aesGcm', { sealMBps: r.sealMBps, openMBps: r.openMBps });
        log(`AES-256-GCM ${blockSize / 1024} KiB blocks, one core  rep ${rep + 1}/${cfg.reps}: seal ${fmt(r.sealMBps, '')} MB/s, open ${fmt(r.openMBps, '')} MB/s`);
        await new Promise<void>((r) => setImmediate(r));
      }
    }

    // The two filesystems side by side, and the encrypted volume beside them for write and read.
    const mntK = path.join(tmp, 'mnt-kvfs');
    const mntN = path.join(tmp, 'mnt-noop');
    const mntE = path.join(tmp, 'mnt-kvfs-encrypted');
    for (const m of [mntK, mntN, mntE]) fs.mkdirSync(m, { mode: 0o755 });
    if (cfg.profileDir) fs.mkdirSync(cfg.profileDir, { recursive: true });
    const nodeArgs = cfg.profileDir ? ['--cpu-prof', `--cpu-prof-dir=${path.resolve(cfg.profileDir)}`] : [];
    const kvfsAt = (name: 'kvfs' | 'kvfsEncrypted', mnt: string, metaUrl: string, extra: string[]) =>
      makeTarget(
        name,
        mnt,
        env,
        (what, pid) => report.daemons.push({ what, pid }),
        () => [...nodeArgs, CLI, 'mount', ...urlArgs(metaUrl), ...extra, mnt],
        async () => {
          const r = await runCommand(process.execPath, [CLI, 'umount', mnt], env, 90_000);
          if (r.code !== 0) throw new Error(r.out);
        },
      );
    const kvfsTarget = kvfsAt('kvfs', mntK, plan.metaUrl, []);
    const noopTarget = makeTarget('noop', mntN, env, (what, pid) => report.daemons.push({ what, pid }), () => [NOOP_MAIN, mntN], async (d) => d.kill('SIGTERM'));
    const encTarget = has('encrypted') ? kvfsAt('kvfsEncrypted', mntE, plan.encMetaUrl, ['--key-file', keyFile]) : undefined;
    /** The targets of every workload; the encrypted volume only joins the write and read loops. */
    const plain = [kvfsTarget, noopTarget];
    targets.push(...plain, ...(encTarget ? [encTarget] : []));
    const plainPhases = cfg.phases.filter((p) => p !== 'raw' && p !== 'encrypted');
    for (const t of targets) {
      if (t === encTarget || plainPhases.length > 0) {
        log(`mounting ${t.label} at ${t.mnt}`);
        await t.mount();
      }
    }
    const pad = (label: string) => label.padEnd(14);
    const bigOf = (t: Target, rep: number) => path.join(t.mnt, `seq-${rep}`);
    /** Whether the sequential write is measured on t (else it only makes the file to read). */
    const writeMeasured = (t: Target) => (t === encTarget ? true : has('write'));
    const repsOf = (t: Target) => (writeMeasured(t) ? cfg.reps : 1);
    const big = (t: Target) => bigOf(t, repsOf(t) - 1);
    const writeTargets = [...(has('write') || has('read') || has('random') ? plain : []), ...(encTarget ? [encTarget] : [])];
    const readTargets = [...(has('read') ? plain : []), ...(encTarget ? [encTarget] : [])];

    if (writeTargets.length > 0) {
      const reps = Math.max(...writeTargets.map(repsOf));
      for (let rep = 0; rep < reps; rep++) {
        for (const t of writeTargets) {
          if (rep >= repsOf(t)) continue;
          c.check();
          const r = await probed(t, 'seqWrite', () => seqWrite(bigOf(t, rep), cfg.size, c));
          if (rep > 0) fs.unlinkSync(bigOf(t, rep - 1));
          if (writeMeasured(t)) {
            rec.add(t.name, 'seqWrite', { MBps: r.MBps });
            log(`seq write ${fmtSize(cfg.size)} incl. fsync  rep ${rep + 1}/${reps}  ${pad(t.label)} ${fmt(r.MBps, '')} MB/s (${r.seconds.toFixed(1)} s)`);
          } else {
            log(`writing the ${fmtSize(cfg.size)} file for the read phases on ${t.label} (not measured)`);
          }
        }
      }
    }

    if (readTargets.length > 0) {
      for (let rep = 0; rep < cfg.reps; rep++) {
        for (const t of readTargets) {
          c.check();
          await t.unmount();
          await t.mount();
          t.restore(big(t), cfg.size);
          const cold = await probed(t, 'seqReadCold', () => seqRead(big(t), cfg.size, c));
          const warm = await probed(t, 'seqReadWarm', () => seqRead(big(t), cfg.size, c));
          rec.add(t.name, 'seqReadCold', { MBps: cold.MBps });
          rec.add(t.name, 'seqReadWarm', { MBps: warm.MBps });
          log(`seq read  rep ${rep + 1}/${cfg.reps}  ${pad(t.label)} cold (after remount) ${fmt(cold.MBps, '')} MB/s, warm ${fmt(warm.MBps, '')} MB/s`);
        }
      }
    }

    if (has('random')) {
      for (let rep = 0; rep < cfg.reps; rep++) {
        for (const t of plain) {
          c.check();
          // Cold, like the cold read: otherwise every read is a hit in the kernel's page cache.
          await t.unmount();
          await t.mount();
          t.restore(big(t), cfg.size);
          const r = await probed(t, 'randomRead', () => randomRead(big(t), cfg.size, cfg.randomOps, cfg.randomMs, 1000 + rep, c));
          rec.add(t.name, 'randomRead', { opsPerSec: r.opsPerSec, p50Ms: r.p50Ms, p99Ms: r.p99Ms });
          log(`4 KiB random read (after remount)  rep ${rep + 1}/${cfg.reps}  ${pad(t.label)} ${fmt(r.opsPerSec, '')}/s, p50 ${fmt(r.p50Ms, 'ms')} ms, p99 ${fmt(r.p99Ms, 'ms')} ms (${r.ops} reads)`);
        }
      }
    }

    if (has('small')) {
      for (let rep = 0; rep < cfg.reps; rep++) {
        for (const t of plain) {
          c.check();
          const r = await smallFiles(path.join(t.mnt, `small-${rep}`), cfg.smallFiles, c, probeOf(t));
          rec.add(t.name, 'smallFiles', { createPerSec: r.createPerSec, readPerSec: r.readPerSec, statPerSec: r.statPerSec, unlinkPerSec: r.unlinkPerSec });
          log(
            `small files x${r.files}  rep ${rep + 1}/${cfg.reps}  ${pad(t.label)} create+write+close ${fmt(r.createPerSec, '')}/s, ` +
              `read ${fmt(r.readPerSec, '')}/s, stat ${fmt(r.statPerSec, '')}/s, unlink ${fmt(r.unlinkPerSec, '')}/s`,
          );
          const p = await parallelCreates(path.join(t.mnt, `parallel-${rep}`), cfg.smallFiles, CREATE_WRITERS, c, probeOf(t));
          rec.add(t.name, 'parallelCreate', { createPerSec: p.createPerSec });
          log(`small files x${p.files}, ${p.writers} writers  rep ${rep + 1}/${cfg.reps}  ${pad(t.label)} create+write+close ${fmt(p.createPerSec, '')}/s`);
        }
      }
    }

    if (has('append')) {
      for (let rep = 0; rep < cfg.reps; rep++) {
        for (const t of plain) {
          c.check();
          const r = await probed(t, 'appendFsync', () => appendFsync(path.join(t.mnt, `append-${rep}`), cfg.appends, c));
          rec.add(t.name, 'appendFsync', { p50Ms: r.p50Ms, p99Ms: r.p99Ms, opsPerSec: r.opsPerSec });
          log(`append 4 KiB + fsync x${r.ops}  rep ${rep + 1}/${cfg.reps}  ${pad(t.label)} p50 ${fmt(r.p50Ms, 'ms')} ms, p99 ${fmt(r.p99Ms, 'ms')} ms`);
        }
      }
    }

    for (const t of targets) {
      log(`unmounting ${t.label}`);
      await t.unmount();
    }
  } catch (err) {
    report.error = err instanceof BenchAborted || c.aborted ? 'interrupted' : (err as Error).message;
    throw c.aborted && !(err instanceof BenchAborted) ? new BenchAborted() : err;
  } finally {
    // Unmount, stop, delete: also after errors and Ctrl-C.
    for (const t of targets) await t.unmount().catch((e) => log(`kvfs bench: ${(e as Error).message}`));
    for (const fn of cleanups.reverse()) {
      try {
        await fn();
      } catch (e) {
        log(`kvfs bench: cleanup: ${(e as Error).message}`);
      }
    }
    for (const dir of [tmp, ...plan.embeddedDirs]) {
      if (![...live.mounts].some((m) => m.startsWith(dir))) {
        fs.rmSync(dir, { recursive: true, force: true });
        live.dirs.delete(dir);
      }
    }
    for (const s of sigs) process.off(s, onSignal);
    process.off('exit', emergencyCleanup);
    report.results = { kvfs: rec.figures('kvfs'), noop: rec.figures('noop'), raw: rec.figures('raw'), kvfsEncrypted: rec.figures('kvfsEncrypted') };
    report.comparison = compare(report.results);
    report.encryption = encryptionCost(report.results);
    report.finishedAt = new Date().toISOString();
    report.machine.loadAverageAtEnd = os.loadavg().map((l) => Math.round(l * 100) / 100);
    report.seconds = Math.round((performance.now() - t0) / 100) / 10;
    lastReport = report;
  }
  return report;
}

/** The report of the last run, also when it failed (for --json after an error). */
export let lastReport: BenchReport | undefined;

function fmtSize(bytes: number): string {
  if (bytes >= 1024 ** 3 && bytes % 1024 ** 3 === 0) return `${bytes / 1024 ** 3} GiB`;
  if (bytes >= MiB && bytes % MiB === 0) return `${bytes / MiB} MiB`;
  return `${bytes} bytes`;
}

// ---------------------------------------------------------------------------------------------
// Comparison with ceilings and the targets

export function compare(r: BenchReport['results']): Comparison[] {
  const out: Comparison[] = [];
  const m = (f: Figures, w: string, k: string): number => f[w]?.[k]?.median ?? NaN;
  const row = (workload: string, unit: string, kvfs: number, ceiling: number, ceilingIs: string, target?: { op: '>=' | '<='; value: number }) => {
    if (!Number.isFinite(kvfs) && !Number.isFinite(ceiling)) return;
    const ratio = kvfs / ceiling;
    out.push({
      workload,
      unit,
      kvfs,
      ceiling,
      ceilingIs,
      ratio,
      target: target ? `ratio ${target.op} ${target.value}` : undefined,
      pass: target && Number.isFinite(ratio) ? (target.op === '>=' ? ratio >= target.value : ratio <= target.value) : undefined,
    });
  };
  const { kvfs: k, noop: n, raw } = r;
  row('seq write 1 MiB + fsync', 'MB/s', m(k, 'seqWrite', 'MBps'), m(n, 'seqWrite', 'MBps'), 'no-op FUSE', { op: '>=', value: 0.5 });
  row('seq read, cold', 'MB/s', m(k, 'seqReadCold', 'MBps'), m(n, 'seqReadCold', 'MBps'), 'no-op FUSE', { op: '>=', value: 0.5 });
  row('seq read, warm', 'MB/s', m(k, 'seqReadWarm', 'MBps'), m(n, 'seqReadWarm', 'MBps'), 'no-op FUSE', { op: '>=', value: 0.8 });
  row('4 KiB random read', 'ops/s', m(k, 'randomRead', 'opsPerSec'), m(n, 'randomRead', 'opsPerSec'), 'no-op FUSE');
  row('4 KiB random read p50', 'ms', m(k, 'randomRead', 'p50Ms'), m(n, 'randomRead', 'p50Ms'), 'no-op FUSE');
  row('4 KiB random read p99', 'ms', m(k, 'randomRead', 'p99Ms'), m(n, 'randomRead', 'p99Ms'), 'no-op FUSE');
  const noopCreate = m(n, 'smallFiles', 'createPerSec');
  const txnRate = m(raw, 'txn', 'perSec');
  const createCeil = Number.isFinite(txnRate) ? Math.min(noopCreate, txnRate) : noopCreate;
  const createIs = Number.isFinite(txnRate) ? (createCeil === txnRate ? 'raw txn rate (< no-op)' : 'no-op FUSE (< raw txn)') : 'no-op FUSE';
  row('small: create+write 4K+close', 'files/s', m(k, 'smallFiles', 'createPerSec'), createCeil, createIs, { op: '>=', value: 0.5 });
  // The same creates from CREATE_WRITERS threads, each in its own directory: the concurrency
  // of the raw 64-concurrent txn ceiling, which one writer cannot use (its next create waits for
  // the previous close's commit). Shown beside the target row, not as a target of its own.
  const noopParallel = m(n, 'parallelCreate', 'createPerSec');
  const parallelCeil = Number.isFinite(txnRate) ? Math.min(noopParallel, txnRate) : noopParallel;
  const parallelIs = Number.isFinite(txnRate) ? (parallelCeil === txnRate ? 'raw txn rate (< no-op)' : 'no-op FUSE (< raw txn)') : 'no-op FUSE';
  row(`small: create, ${CREATE_WRITERS} writers`, 'files/s', m(k, 'parallelCreate', 'createPerSec'), parallelCeil, parallelIs);
  row('small: open+read+close', 'files/s', m(k, 'smallFiles', 'readPerSec'), m(n, 'smallFiles', 'readPerSec'), 'no-op FUSE');
  row('small: stat', 'ops/s', m(k, 'smallFiles', 'statPerSec'), m(n, 'smallFiles', 'statPerSec'), 'no-op FUSE');
  row('small: unlink', 'ops/s', m(k, 'smallFiles', 'unlinkPerSec'), m(n, 'smallFiles', 'unlinkPerSec'), 'no-op FUSE');
  // A durable commit: the txn plus the engine's sync() where it has one (embedded), since kvfs's
  // fsync waits for both; etcd's commits are durable as they stand (durable = plain there).
  const appendCeil = m(raw, 'txn', 'durableP50Ms') + m(raw, 'blockPut', 'p50Ms');
  if (Number.isFinite(appendCeil)) {
    row('append 4K + fsync p50', 'ms', m(k, 'appendFsync', 'p50Ms'), appendCeil, 'durable raw txn p50 + block put p50', { op: '<=', value: 1.5 });
    row('append 4K + fsync p99', 'ms', m(k, 'appendFsync', 'p99Ms'), m(raw, 'txn', 'durableP99Ms') + m(raw, 'blockPut', 'p99Ms'), 'durable raw txn p99 + block put p99');
  }
  row('append 4K + fsync p50 (FUSE)', 'ms', m(k, 'appendFsync', 'p50Ms'), m(n, 'appendFsync', 'p50Ms'), 'no-op FUSE');
  return out;
}

/** Encryption at rest: each figure of the encrypted volume beside the plain volume's. */
export function encryptionCost(r: BenchReport['results']): BenchReport['encryption'] {
  const m = (f: Figures, w: string, k: string): number => f[w]?.[k]?.median ?? NaN;
  const costs: EncryptionCost[] = [];
  for (const [workload, w] of [
    ['seq write 1 MiB + fsync', 'seqWrite'],
    ['seq read, cold', 'seqReadCold'],
    ['seq read, warm', 'seqReadWarm'],
  ] as const) {
    const plain = m(r.kvfs, w, 'MBps');
    const encrypted = m(r.kvfsEncrypted, w, 'MBps');
    if (Number.isFinite(encrypted)) costs.push({ workload, unit: 'MB/s', plain, encrypted, ratio: encrypted / plain });
  }
  return { cipher: 'aes-256-gcm', costs, sealMBps: m(r.raw, 'aesGcm', 'sealMBps'), openMBps: m(r.raw, 'aesGcm', 'openMBps') };
}

const BREAKDOWN_LABELS: Record<string, string> = {
  seqWrite: 'seq write + fsync',
  seqReadCold: 'seq read, cold',
  seqReadWarm: 'seq read, warm',
  randomRead: '4 KiB random read',
  smallCreate: 'small: create+write',
  smallRead: 'small: read',
  smallStat: 'small: stat',
  smallUnlink: 'small: unlink',
  parallelCreate: 'small: create, 8 writers',
  appendFsync: 'append + fsync',
};

/** The table printed at the end of a run. */
export function formatReport(report: BenchReport): string {
  const lines: string[] = [];
  const c = report.config;
  lines.push(
    `kvfs bench: ${c.meta}, data ${c.data}, block size ${c.blockSize / 1024} KiB, file ${fmtSize(c.size)}; ` +
      `${report.machine.cpus} cpus, ${Math.round(report.machine.memoryBytes / 1024 ** 3)} GiB, Linux ${report.machine.kernel}, node ${report.machine.node}, new memory ${report.machine.newMemoryMBps} MB/s, ` +
      `thread wake-up round trip ${report.machine.wakeupRoundTripUs} us`,
  );
  if (report.machine.newMemoryMBps < SLOW_NEW_MEMORY_MBPS) {
    lines.push(
      `note: memory this machine has never used comes at ${report.machine.newMemoryMBps} MB/s (a newly booted VM?): ` +
        'write figures are low until its memory has been used once; run the bench again later.',
    );
  }
  if (report.machine.wakeupRoundTripUs > SLOW_WAKEUP_US) {
    lines.push(
      `note: a thread wake-up round trip takes ${report.machine.wakeupRoundTripUs} us here (idle CPUs halt instead of polling?): ` +
        'every FUSE request pays it several times, on kvfs and on the no-op alike, so per-request rates are low and ratios against the no-op are higher than on a machine that wakes threads fast.',
    );
  }
  lines.push(
    `Medians of ${c.repetitions} repetition${c.repetitions === 1 ? '' : 's'} (each workload alternating kvfs / no-op FUSE); ratio = kvfs / ceiling; MB/s = 10^6 bytes/s.`,
  );
  lines.push('');
  const head = ['workload', 'unit', 'kvfs', 'ceiling', 'ratio', 'target', 'result', 'ceiling is'];
  const rows = report.comparison.map((r) => [
    r.workload,
    r.unit,
    fmt(r.kvfs, r.unit),
    fmt(r.ceiling, r.unit),
    Number.isFinite(r.ratio) ? r.ratio.toFixed(2) : '-',
    r.target ?? '',
    r.pass === undefined ? '' : r.pass ? 'PASS' : 'MISS',
    r.ceilingIs,
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const right = new Set([2, 3, 4]);
  const line = (cells: string[]) => cells.map((cell, i) => (right.has(i) ? cell.padStart(widths[i]) : cell.padEnd(widths[i]))).join('  ').trimEnd();
  lines.push(line(head));
  lines.push(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const r of rows) lines.push(line(r));

  const raw = report.results.raw;
  if (raw.txn || raw.blockPut) {
    const g = (w: string, k: string) => raw[w]?.[k]?.median ?? NaN;
    lines.push('');
    lines.push('Raw backend ceilings (same client code as kvfs, without kvfs):');
    if (raw.blockPut) {
      lines.push(
        `  block put ${c.blockSize / 1024} KiB: ${fmt(g('blockPut', 'MBps'), '')} MB/s one at a time (p50 ${fmt(g('blockPut', 'p50Ms'), 'ms')} ms, p99 ${fmt(g('blockPut', 'p99Ms'), 'ms')} ms), ` +
          `${fmt(g('blockPut', 'parallelMBps'), '')} MB/s with ${c.raw.blockParallel} in flight; 4 KiB put p50 ${fmt(g('blockPut4k', 'p50Ms'), 'ms')} ms`,
      );
      lines.push(
        `  block get ${c.blockSize / 1024} KiB: ${fmt(g('blockGet', 'MBps'), '')} MB/s one at a time (p50 ${fmt(g('blockGet', 'p50Ms'), 'ms')} ms), ` +
          `${fmt(g('blockGet', 'parallelMBps'), '')} MB/s with ${c.raw.blockParallel} in flight`,
      );
    }
    if (raw.txn) {
      lines.push(
        `  metadata txn (read-modify-write): p50 ${fmt(g('txn', 'p50Ms'), 'ms')} ms, p99 ${fmt(g('txn', 'p99Ms'), 'ms')} ms, ` +
          `${fmt(g('txn', 'seqPerSec'), '')}/s one at a time, ${fmt(g('txn', 'perSec'), '')}/s with ${c.raw.concurrency} concurrent` +
          (g('txn', 'durableP50Ms') !== g('txn', 'p50Ms') ? `; followed by sync(): p50 ${fmt(g('txn', 'durableP50Ms'), 'ms')} ms` : ''),
      );
    }
  }
  const enc = report.encryption;
  if (enc && (enc.costs.length > 0 || Number.isFinite(enc.sealMBps))) {
    lines.push('');
    lines.push('Encryption at rest (kvfs format --encrypt, AES-256-GCM): the same workloads on an encrypted volume, same run:');
    const eh = ['workload', 'unit', 'plain', 'encrypted', 'encrypted/plain'];
    const er = enc.costs.map((x) => [x.workload, x.unit, fmt(x.plain, x.unit), fmt(x.encrypted, x.unit), Number.isFinite(x.ratio) ? x.ratio.toFixed(2) : '-']);
    const ew = eh.map((h, i) => Math.max(h.length, ...er.map((r) => r[i].length)));
    const eline = (cells: string[]) => cells.map((cell, i) => (i >= 2 ? cell.padStart(ew[i]) : cell.padEnd(ew[i]))).join('  ').trimEnd();
    if (er.length > 0) {
      lines.push(`  ${eline(eh)}`);
      lines.push(`  ${ew.map((w) => '-'.repeat(w)).join('  ')}`);
      for (const r of er) lines.push(`  ${eline(r)}`);
    }
    if (Number.isFinite(enc.sealMBps)) {
      lines.push(
        `  AES-256-GCM on ${c.blockSize / 1024} KiB blocks, one core of this machine (the daemon's seal/open code): ` +
          `seal ${fmt(enc.sealMBps, '')} MB/s, open ${fmt(enc.openMBps, '')} MB/s`,
      );
    }
  }

  const names = Object.keys(report.breakdown.kvfs);
  if (names.length > 0) {
    const sec = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
    const mb = (bytes: number) => `${(bytes / 1e6).toFixed(bytes < 1e7 ? 2 : 0)} MB`;
    const cpu = (list: Breakdown[] | undefined) => {
      if (!list?.length) return '-';
      const wall = median(list.map((b) => b.wallMs));
      const d = median(list.map((b) => b.daemonCpuS ?? NaN));
      const own = median(list.map((b) => b.benchCpuS));
      const rq = median(list.map((b) => b.daemonRunQueueS ?? NaN));
      const n = (v: number) => (Number.isFinite(v) ? v.toFixed(2) : '-');
      return `wall ${sec(wall)}, daemon CPU ${n(d)} s (waited for a CPU ${n(rq)} s), bench CPU ${own.toFixed(2)} s`;
    };
    lines.push('');
    lines.push('Where the time went, per measured loop (medians): wall time; CPU time of the daemon (all threads)');
    lines.push('and how long its main thread waited for a CPU while runnable (other processes); CPU time of the bench.');
    lines.push('Then the kvfs daemon\'s own timers (last repetition): FUSE requests by op; time inside handlers =');
    lines.push('waiting on metadata + on blocks + the rest (daemon code, copies, GC); backend time outside requests;');
    lines.push('objects and bytes the daemon sent to the block store (blocks and parts of blocks: write amplification).');
    for (const name of names) {
      const list = report.breakdown.kvfs[name];
      lines.push(`  ${BREAKDOWN_LABELS[name] ?? name}: kvfs ${cpu(list)}; no-op ${cpu(report.breakdown.noop[name])}`);
      const b = list[list.length - 1];
      if (!b.ops) continue;
      const ops = Object.entries(b.ops).sort((x, y) => y[1].count - x[1].count);
      const sum = (k: keyof OpTimes) => ops.reduce((acc, [, o]) => acc + o[k], 0);
      const total = sum('totalMs');
      const meta = sum('metaMs');
      const data = sum('dataMs');
      const opList = ops.slice(0, 5).map(([op, o]) => `${op} ${o.count}`).join(', ');
      lines.push(
        `      ${sum('count')} requests (${opList}); in handlers ${sec(total)} = metadata ${sec(meta)} + blocks ${sec(data)} + ` +
          `rest ${sec(total - meta - data)}; background: metadata ${sec(b.background?.metaMs ?? 0)}, blocks ${sec(b.background?.dataMs ?? 0)}` +
          (b.stored?.objects ? `; stored ${b.stored.objects} objects, ${mb(b.stored.bytes)}` : ''),
      );
    }
  }
  const missed = report.comparison.filter((r) => r.pass === false).length;
  const targets = report.comparison.filter((r) => r.pass !== undefined).length;
  lines.push('');
  lines.push(`Targets met: ${targets - missed} of ${targets}. Took ${report.seconds} s.`);
  return lines.join('\n');
}

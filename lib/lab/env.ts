// The lab's environment: its temp dir, the servers, fresh volumes, kvfs mounts (each a
// `kvfs mount` child process), local baseline directories, worker processes, the daemons'
// /metrics, and cleanup that leaves nothing mounted or running, also on Ctrl-C and when the lab
// itself is killed (a detached watchdog then cleans up).
//
// The lab process itself never does file I/O on a kvfs mount: every workload runs in a worker
// child process (lib/lab/worker.ts, or python3 for the lock workers), bounded by a timeout, so a
// hung mount cannot hang the lab.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { startEtcd, startRedis, type EtcdServer, type RedisServer } from '../testbed/servers';
import { nowMs, sleep } from './util';

const ROOT = path.resolve(__dirname, '..', '..', '..');
export const CLI = path.join(ROOT, 'bin', 'kvfs.js');
const WORKER = path.join(__dirname, 'worker.js');

export class LabAborted extends Error {
  constructor() {
    super('interrupted');
  }
}

/** Per FUSE operation, as the daemon's /metrics serves it. */
export interface OpTimes {
  count: number;
  errors: number;
  totalMs: number;
  metaMs: number;
  dataMs: number;
}
export interface MetricsSnapshot {
  uptimeMs: number;
  ops: Record<string, OpTimes>;
  background: OpTimes;
}

/** What a worker process ended with. */
export interface WorkerOutcome<T> {
  result?: T;
  error?: string;
  code: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  stderr: string;
  ms: number;
}

export interface WorkerHandle<T> {
  pid: number;
  done: Promise<WorkerOutcome<T>>;
  kill(signal?: NodeJS.Signals): void;
}

function mountedAt(mnt: string): boolean {
  try {
    return fs
      .readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .some((line) => line.split(' ')[4]?.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))) === mnt);
  } catch {
    return false;
  }
}

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<{ code: number | null; out: string }> {
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

/** GET a path on a daemon's control socket (HTTP over a unix socket, JSON answers). */
function askSocket<T>(socket: string, urlPath: string, timeoutMs = 10_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: socket, path: urlPath, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        try {
          const body = JSON.parse(Buffer.concat(chunks).toString() || 'null') as T & { error?: string };
          if (res.statusCode === 200) resolve(body);
          else reject(new Error(body?.error ?? `status ${res.statusCode}`));
        } catch (err) {
          reject(err);
        }
      });
    });
    req.on('timeout', () => req.destroy(new Error('the daemon did not answer in time')));
    req.on('error', reject);
    req.end();
  });
}

/** One `kvfs mount` daemon, a child process of the lab. */
export class KvfsMount {
  readonly child: ChildProcess;
  private lines: string[] = [];
  private status: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  readonly exited: Promise<void>;
  /** Set when the lab SIGKILLed it. */
  killedAt: number | undefined;

  constructor(
    private readonly lab: Lab,
    readonly label: string,
    readonly metaUrl: string,
    readonly mnt: string,
    readonly args: string[],
  ) {
    this.child = spawn(process.execPath, [CLI, 'mount', '--meta', metaUrl, ...args, mnt], {
      env: lab.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    for (const stream of [this.child.stdout!, this.child.stderr!]) {
      let partial = '';
      stream.setEncoding('utf8').on('data', (d: string) => {
        const parts = (partial + d).split('\n');
        partial = parts.pop()!;
        this.lines.push(...parts);
        if (this.lines.length > 300) this.lines.splice(0, this.lines.length - 300);
      });
    }
    this.exited = new Promise((resolve) => {
      this.child.on('error', (err) => this.lines.push(`spawn error: ${err.message}`));
      this.child.on('close', (code, signal) => {
        this.status = { code, signal };
        resolve();
      });
    });
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }
  get running(): boolean {
    return this.status === undefined;
  }
  get exitStatus() {
    return this.status;
  }
  /** The daemon's output (stdout and stderr), last lines. */
  output(lines = 40): string {
    return this.lines.slice(-lines).join('\n');
  }
  /** Daemon output lines that report errors or warnings (for the report). */
  complaints(): string[] {
    return this.lines.filter((l) => /error|fail|warn|EIO|ETIMEDOUT|errno/i.test(l)).slice(-50);
  }

  async ready(timeoutMs = 60_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      if (this.lines.some((l) => /\bmounted\b/.test(l) && !/unmount/.test(l))) break;
      if (!this.running) throw new Error(`kvfs mount (${this.label}) exited (${JSON.stringify(this.status)}) before it was mounted:\n${this.output()}`);
      if (Date.now() > end) throw new Error(`kvfs mount (${this.label}) did not report 'mounted' within ${timeoutMs / 1000} s:\n${this.output()}`);
      await sleep(20);
    }
    if (!mountedAt(this.mnt)) throw new Error(`kvfs mount (${this.label}) said 'mounted' but ${this.mnt} is not mounted`);
  }

  /** The daemon's control socket ($KVFS_HOME/run/<first 16 hex of sha1(mountpoint)>.sock). */
  get socket(): string {
    return path.join(this.lab.home, 'run', `${createHash('sha1').update(this.mnt).digest('hex').slice(0, 16)}.sock`);
  }

  metrics(): Promise<MetricsSnapshot> {
    return askSocket<MetricsSnapshot>(this.socket, '/metrics');
  }

  async resetMetrics(): Promise<void> {
    await askSocket(this.socket, '/metrics/reset');
  }

  async waitExit(ms: number): Promise<boolean> {
    if (!this.running) return true;
    let timer: NodeJS.Timeout | undefined;
    const done = await Promise.race([this.exited.then(() => true), new Promise<boolean>((r) => (timer = setTimeout(() => r(false), ms)))]);
    clearTimeout(timer);
    return done;
  }

  signal(sig: NodeJS.Signals): void {
    if (this.running && this.pid > 0) {
      try {
        process.kill(this.pid, sig);
      } catch {
        // gone
      }
    }
  }

  /** SIGKILL the daemon (a crash), then detach its dead mount. Returns the kill time (nowMs). */
  async kill(): Promise<number> {
    const t = nowMs();
    this.killedAt = t;
    this.signal('SIGKILL');
    await this.waitExit(10_000);
    if (mountedAt(this.mnt)) spawnSync('umount', ['-l', this.mnt], { stdio: 'ignore', timeout: 10_000 });
    this.lab.forgetMount(this);
    return t;
  }

  /** `kvfs umount`, waiting for the daemon to commit and exit; forced when that fails. */
  async unmount(): Promise<{ clean: boolean; detail: string }> {
    let detail = '';
    let clean = true;
    if (this.running && mountedAt(this.mnt)) {
      const r = await run(process.execPath, [CLI, 'umount', this.mnt], this.lab.env, 90_000);
      if (r.code !== 0) {
        clean = false;
        detail = `kvfs umount: ${r.out.split('\n')[0]}`;
      }
    }
    if (!(await this.waitExit(30_000))) {
      clean = false;
      detail ||= 'daemon still running 30 s after umount';
      this.signal('SIGTERM');
      if (!(await this.waitExit(10_000))) {
        this.signal('SIGKILL');
        await this.waitExit(5000);
      }
    }
    if (mountedAt(this.mnt)) {
      clean = false;
      spawnSync('umount', ['-l', this.mnt], { stdio: 'ignore', timeout: 10_000 });
    }
    if (this.status && this.status.code !== 0 && this.killedAt === undefined) {
      clean = false;
      detail ||= `daemon exited with ${JSON.stringify(this.status)}: ${this.complaints().slice(-3).join(' | ')}`;
    }
    this.lab.forgetMount(this);
    return { clean, detail };
  }
}

export interface LabOptions {
  /** etcd://HOST:PORT[,...]/NAME of servers to use; the lab starts its own when absent. */
  metaUrl?: string;
  dataUrl?: string;
  log: (line: string) => void;
}

export class Lab {
  readonly tmp: string;
  readonly home: string;
  readonly env: NodeJS.ProcessEnv;
  etcd?: EtcdServer;
  redis?: RedisServer;
  /** etcd://HOST:PORT[,...]/ (the volume name is appended) */
  private metaBase = '';
  private volumePrefix = 'lab';
  dataUrl = '';
  aborted = false;
  readonly ownServers: boolean;
  readonly volumes: string[] = [];
  private readonly pids = new Set<number>();
  private readonly mounts = new Set<KvfsMount>();
  private readonly workers = new Set<ChildProcess>();
  private watchdog?: ChildProcess;
  private counter = 0;
  readonly log: (line: string) => void;

  private constructor(opts: LabOptions) {
    this.log = opts.log;
    this.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kvfs-lab-'));
    this.home = path.join(this.tmp, 'home');
    fs.mkdirSync(path.join(this.tmp, 'mnt'), { recursive: true });
    fs.mkdirSync(path.join(this.tmp, 'local'), { recursive: true });
    fs.mkdirSync(path.join(this.tmp, 'logs'), { recursive: true });
    fs.mkdirSync(this.home, { recursive: true });
    this.env = { ...process.env, KVFS_HOME: this.home };
    this.ownServers = !opts.metaUrl;
  }

  static async create(opts: LabOptions): Promise<Lab> {
    const lab = new Lab(opts);
    lab.startWatchdog();
    try {
      if (opts.metaUrl) {
        const m = /^(etcd(?:\+https)?:\/\/[^/]+\/)([^/]*)$/.exec(opts.metaUrl);
        if (!m) throw new Error(`--meta must be etcd://HOST:PORT/NAME, not ${opts.metaUrl}`);
        lab.metaBase = m[1];
        lab.volumePrefix = m[2] || 'lab';
        lab.dataUrl = opts.dataUrl!;
      } else {
        lab.log('lab: starting etcd and redis-server on loopback ports');
        const [etcd, redis] = await Promise.allSettled([
          startEtcd({ dir: path.join(lab.tmp, 'etcd'), onSpawn: (child) => lab.track(child.pid!) }),
          startRedis({ dir: path.join(lab.tmp, 'redis'), appendonly: 'always', onSpawn: (child) => lab.track(child.pid!) }),
        ]);
        if (etcd.status === 'fulfilled') lab.etcd = etcd.value;
        if (redis.status === 'fulfilled') lab.redis = redis.value;
        if (etcd.status === 'rejected') throw etcd.reason;
        if (redis.status === 'rejected') throw redis.reason;
        lab.metaBase = `etcd://${lab.etcd!.hostPort}/`;
        lab.dataUrl = lab.redis!.url;
      }
    } catch (err) {
      await lab.close();
      throw err;
    }
    return lab;
  }

  /** The metadata URL of the servers, for the report (no credentials). */
  describe(): { meta: string; data: string } {
    const strip = (u: string) => u.replace(/\/\/[^@/]*@/, '//');
    return { meta: strip(this.metaBase), data: strip(this.dataUrl) };
  }

  // ---------------------------------------------------------------------------------------------
  // Processes the watchdog must clean up if the lab dies without cleaning up itself

  private writeState(): void {
    try {
      fs.writeFileSync(path.join(this.tmp, 'pids'), [...this.pids].join('\n') + '\n');
      fs.writeFileSync(path.join(this.tmp, 'mounts'), [...this.mounts].map((m) => m.mnt).join('\n') + '\n');
    } catch {
      // the temp dir is being removed
    }
  }

  track(pid: number): void {
    this.pids.add(pid);
    this.writeState();
  }
  untrack(pid: number): void {
    this.pids.delete(pid);
    this.writeState();
  }
  forgetMount(m: KvfsMount): void {
    this.mounts.delete(m);
    this.untrack(m.pid);
  }

  private startWatchdog(): void {
    const script =
      'while kill -0 "$1" 2>/dev/null; do sleep 1; done; ' +
      'for p in $(cat "$2/pids" 2>/dev/null); do kill -CONT "$p" 2>/dev/null; kill -TERM "$p" 2>/dev/null; done; sleep 3; ' +
      'for m in $(cat "$2/mounts" 2>/dev/null); do umount -l "$m" 2>/dev/null; done; ' +
      'for p in $(cat "$2/pids" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done; sleep 1; rm -rf "$2"';
    this.watchdog = spawn('sh', ['-c', script, 'kvfs-lab-watchdog', String(process.pid), this.tmp], { detached: true, stdio: 'ignore' });
    this.watchdog.unref();
  }

  /** Synchronous last resort (process exit, second Ctrl-C). */
  emergencyCleanup(): void {
    for (const w of this.workers) w.kill('SIGKILL');
    for (const m of this.mounts) m.signal('SIGKILL');
    for (const m of this.mounts) if (mountedAt(m.mnt)) spawnSync('umount', ['-l', m.mnt], { stdio: 'ignore', timeout: 10_000 });
    for (const pid of this.pids) {
      try {
        process.kill(pid, 'SIGCONT');
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  }

  check(): void {
    if (this.aborted) throw new LabAborted();
  }

  /** Kills running workers (used on Ctrl-C so that pending awaits end quickly). */
  killWorkers(): void {
    for (const w of this.workers) w.kill('SIGKILL');
  }

  // ---------------------------------------------------------------------------------------------
  // Volumes, mounts and local directories

  private suffix(): string {
    return `${(++this.counter).toString().padStart(2, '0')}-${randomBytes(3).toString('hex')}`;
  }

  /** Formats a fresh volume; returns its metadata URL. */
  async newVolume(tag: string): Promise<string> {
    this.check();
    const name = `${this.volumePrefix.slice(0, 20)}-${tag}-${this.suffix()}`.slice(0, 64);
    const metaUrl = `${this.metaBase}${name}`;
    const r = await run(process.execPath, [CLI, 'format', '--meta', metaUrl, '--data', this.dataUrl], this.env, 60_000);
    if (r.code !== 0) throw new Error(`kvfs format ${name} failed: ${r.out}`);
    this.volumes.push(metaUrl);
    return metaUrl;
  }

  /** Mounts a volume at a fresh mountpoint with the given `kvfs mount` options. */
  async mount(metaUrl: string, tag: string, args: string[] = []): Promise<KvfsMount> {
    this.check();
    const mnt = path.join(this.tmp, 'mnt', `${tag}-${this.suffix()}`);
    fs.mkdirSync(mnt);
    return this.mountAt(metaUrl, mnt, tag, args);
  }

  /** Mounts a volume at a given (unmounted) mountpoint, e.g. again after a crash. */
  async mountAt(metaUrl: string, mnt: string, label: string, args: string[] = []): Promise<KvfsMount> {
    this.check();
    const m = new KvfsMount(this, label, metaUrl, mnt, args);
    this.mounts.add(m);
    if (m.pid > 0) this.track(m.pid);
    try {
      await m.ready();
    } catch (err) {
      await m.unmount().catch(() => undefined);
      throw err;
    }
    return m;
  }

  /** A fresh directory on the local disk (the baseline). */
  localDir(tag: string): string {
    const dir = path.join(this.tmp, 'local', `${tag}-${this.suffix()}`);
    fs.mkdirSync(dir);
    return dir;
  }

  /** A fresh directory for logs outside every mount. */
  logDir(tag: string): string {
    const dir = path.join(this.tmp, 'logs', `${tag}-${this.suffix()}`);
    fs.mkdirSync(dir);
    return dir;
  }

  /** Unmounts whatever is still mounted (after an experiment, also when it failed). */
  async unmountAll(): Promise<void> {
    await Promise.all([...this.mounts].map((m) => m.unmount().catch(() => undefined)));
  }

  // ---------------------------------------------------------------------------------------------
  // Workers

  private spawnWorker<T>(cmd: string, args: string[], timeoutMs: number): WorkerHandle<T> {
    const started = nowMs();
    const child = spawn(cmd, args, { env: this.env, stdio: ['ignore', 'pipe', 'pipe'] });
    const pid = child.pid ?? -1;
    if (pid > 0) this.track(pid);
    this.workers.add(child);
    let out = '';
    let err = '';
    let timedOut = false;
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      err += d;
      if (err.length > 20_000) err = err.slice(-10_000);
    });
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    const done = new Promise<WorkerOutcome<T>>((resolve) => {
      child.on('error', (e) => (err += `spawn error: ${e.message}\n`));
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        this.workers.delete(child);
        if (pid > 0) this.untrack(pid);
        const outcome: WorkerOutcome<T> = { code, signal, timedOut, stderr: err.trim().split('\n').slice(-10).join('\n'), ms: nowMs() - started };
        const line = out.trim().split('\n').pop() ?? '';
        if (line.startsWith('{')) {
          try {
            const parsed = JSON.parse(line) as { ok: boolean; result?: T; error?: string };
            if (parsed.ok) outcome.result = parsed.result;
            else outcome.error = parsed.error ?? 'failed';
          } catch (e) {
            outcome.error = `unreadable worker output: ${(e as Error).message}`;
          }
        } else if (timedOut) {
          outcome.error = `timed out after ${Math.round(timeoutMs / 1000)} s`;
        } else {
          outcome.error = `exited (code ${code}, signal ${signal}) without a result${outcome.stderr ? `: ${outcome.stderr}` : ''}`;
        }
        resolve(outcome);
      });
    });
    return { pid, done, kill: (sig = 'SIGKILL') => void child.kill(sig) };
  }

  /** Starts lib/lab/worker.ts in MODE with ARGS; resolves with its outcome (never rejects). */
  startWorker<T>(mode: string, args: object, timeoutMs: number): WorkerHandle<T> {
    this.check();
    return this.spawnWorker<T>(process.execPath, [WORKER, mode, JSON.stringify(args)], timeoutMs);
  }

  /** Runs a worker to completion; rejects with its error. */
  async worker<T>(mode: string, args: object, timeoutMs: number): Promise<T> {
    const o = await this.startWorker<T>(mode, args, timeoutMs).done;
    this.check();
    if (o.result === undefined) throw new Error(`worker ${mode}: ${o.error}`);
    return o.result;
  }

  /** A python3 worker: SCRIPT gets ARGS (JSON) as argv[1] and prints {"ok":..,"result":..}. */
  startPython<T>(script: string, args: object, timeoutMs: number): WorkerHandle<T> {
    this.check();
    return this.spawnWorker<T>('python3', ['-c', script, JSON.stringify(args)], timeoutMs);
  }

  // ---------------------------------------------------------------------------------------------

  /** Unmounts everything, stops the servers, removes temp dir and volumes on given servers. */
  async close(): Promise<void> {
    this.killWorkers();
    await this.unmountAll();
    if (this.ownServers) {
      await Promise.allSettled([this.etcd?.stop(), this.redis?.stop()]);
    } else {
      await this.destroyVolumes().catch((err) => this.log(`lab: could not delete the lab's volumes: ${(err as Error).message}`));
    }
    for (const m of this.mounts) if (mountedAt(m.mnt)) spawnSync('umount', ['-l', m.mnt], { stdio: 'ignore', timeout: 10_000 });
    const stillMounted = fs.existsSync(path.join(this.tmp, 'mnt')) && fs.readdirSync(path.join(this.tmp, 'mnt')).some((d) => mountedAt(path.join(this.tmp, 'mnt', d)));
    if (!stillMounted) fs.rmSync(this.tmp, { recursive: true, force: true });
    else this.log(`lab: something is still mounted under ${this.tmp}; left it in place`);
    if (this.watchdog?.pid) {
      try {
        process.kill(this.watchdog.pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  }

  /** On servers the user gave: deletes the volumes the lab formatted (keys and blocks). */
  private async destroyVolumes(): Promise<void> {
    if (this.volumes.length === 0) return;
    const { openKv } = await import('../meta/index');
    const { openBlockStore } = await import('../data/index');
    for (const url of this.volumes) {
      const { kv } = await openKv(url, { create: false });
      let uuid: string | undefined;
      try {
        const setting = await kv.get('setting');
        if (setting) uuid = (JSON.parse(setting.toString('utf8')) as { uuid?: string }).uuid;
        for (;;) {
          const pairs = await kv.scan('', { limit: 200 });
          if (pairs.length === 0) break;
          await kv.txn(async (tx) => {
            for (const p of pairs) tx.delete(p.key);
          });
        }
      } finally {
        await kv.close();
      }
      if (uuid) {
        const store = await openBlockStore(this.dataUrl, uuid);
        try {
          const ids: string[] = [];
          await store.list((batch) => void ids.push(...batch));
          for (let i = 0; i < ids.length; i += 500) await store.delete(ids.slice(i, i + 500));
        } finally {
          await store.close();
        }
      }
    }
  }
}

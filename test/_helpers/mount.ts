// Test harness: start backing servers, format a fresh volume, mount it with the real CLI
// (`node bin/kvfs.js mount ...` as a foreground child process) and clean everything up again,
// also after failures and on process exit.
//
// Tests use the mount only through the kernel (fs calls, shell tools), never through lib/.
//
// Backends:
//   'etcd'     — metadata in a real etcd, data in a real Redis (both started by ./servers).
//   'embedded' — `--meta file:///ABS/DIR/VOLUME`, no --data; nothing to start.
import { spawn, spawnSync, ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startEtcd, startRedis } from './servers';

export type Backend = 'etcd' | 'embedded';

type EtcdServer = Awaited<ReturnType<typeof startEtcd>>;
type RedisServer = Awaited<ReturnType<typeof startRedis>>;

// ---------------------------------------------------------------------------------------------
// Locating the CLI

function findRoot(): string {
  if (process.env.KVFS_ROOT) return path.resolve(process.env.KVFS_ROOT);
  let dir = __dirname;
  for (;;) {
    const pkg = path.join(dir, 'package.json');
    if (fs.existsSync(pkg)) {
      try {
        if (JSON.parse(fs.readFileSync(pkg, 'utf8')).name === 'kvfs') return dir;
      } catch {
        /* keep looking */
      }
    }
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`cannot find the kvfs package root above ${__dirname} (set KVFS_ROOT)`);
    dir = up;
  }
}

export const ROOT = findRoot();
export const CLI = path.join(ROOT, 'bin', 'kvfs.js');

// ---------------------------------------------------------------------------------------------
// Process-exit cleanup registry (synchronous: runs from 'exit' and fatal signals)

const live = {
  daemons: new Set<number>(),
  mounts: new Set<string>(),
  serverPids: new Set<number>(),
  dirs: new Set<string>(),
};

let exitHooked = false;
function hookExit(): void {
  if (exitHooked) return;
  exitHooked = true;
  process.once('exit', emergencyCleanup);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      emergencyCleanup();
      process.exit(128 + (os.constants.signals[sig] ?? 0));
    });
  }
}

function emergencyCleanup(): void {
  for (const pid of live.daemons) tryKill(pid, 'SIGKILL');
  for (const mnt of live.mounts) if (isMounted(mnt)) lazyUnmountSync(mnt);
  for (const pid of live.serverPids) tryKill(pid, 'SIGKILL');
  for (const dir of live.dirs) {
    unmountAllUnder(dir);
    if (!mountsUnder(dir)) rmrfSync(dir);
  }
  live.daemons.clear();
  live.mounts.clear();
  live.serverPids.clear();
  live.dirs.clear();
}

function tryKill(pid: number, sig: NodeJS.Signals): boolean {
  try {
    process.kill(pid, sig);
    return true;
  } catch {
    return false;
  }
}

function rmrfSync(dir: string): void {
  try {
    fs.rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
  } catch {
    /* best effort */
  }
}

function lazyUnmountSync(mnt: string): void {
  spawnSync('umount', ['-l', mnt], { stdio: 'ignore', timeout: 10_000 });
  if (isMounted(mnt)) spawnSync('fusermount3', ['-uz', mnt], { stdio: 'ignore', timeout: 10_000 });
}

// ---------------------------------------------------------------------------------------------
// /proc helpers

function unescapeMountField(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

export interface MountEntry {
  source: string;
  target: string;
  fstype: string;
  options: string[];
}

export function procMounts(): MountEntry[] {
  return fs
    .readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const [source, target, fstype, options] = line.split(' ');
      return {
        source: unescapeMountField(source),
        target: unescapeMountField(target),
        fstype,
        options: (options ?? '').split(','),
      };
    });
}

export function mountEntry(mnt: string): MountEntry | undefined {
  const abs = path.resolve(mnt);
  return procMounts()
    .filter((m) => m.target === abs)
    .pop();
}

export function isMounted(mnt: string): boolean {
  return mountEntry(mnt) !== undefined;
}

function mountsUnderList(dir: string): string[] {
  const abs = path.resolve(dir) + '/';
  return procMounts()
    .filter((m) => m.target === abs.slice(0, -1) || m.target.startsWith(abs))
    .map((m) => m.target);
}

function mountsUnder(dir: string): boolean {
  return mountsUnderList(dir).length > 0;
}

/** Lazily unmount everything mounted at or below dir (deepest first, a few rounds for stacked mounts). */
function unmountAllUnder(dir: string): void {
  for (let round = 0; round < 4; round++) {
    const list = mountsUnderList(dir).sort((a, b) => b.length - a.length);
    if (!list.length) return;
    for (const m of list) lazyUnmountSync(m);
  }
}

/** Pids of live processes whose command line contains `needle` (never our own). */
export function processesMatching(needle: string): { pid: number; cmdline: string }[] {
  const out: { pid: number; cmdline: string }[] = [];
  for (const ent of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(ent)) continue;
    const pid = Number(ent);
    if (pid === process.pid) continue;
    let cmdline: string;
    try {
      cmdline = fs.readFileSync(`/proc/${ent}/cmdline`, 'utf8').split('\0').join(' ').trim();
      const stat = fs.readFileSync(`/proc/${ent}/stat`, 'utf8');
      if (/\) Z /.test(stat)) continue; // zombie: already exited, waiting to be reaped
    } catch {
      continue;
    }
    if (cmdline.includes(needle)) out.push({ pid, cmdline });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Small utilities

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export function uniqueName(prefix = 'vol'): string {
  return `${prefix}${Date.now().toString(36)}${randomBytes(4).toString('hex')}`;
}

/** A fresh temp dir, mode 0755 (so uid 65534 can reach a mountpoint inside it), removed by cleanup. */
export function makeTempDir(prefix = 'kvfs-test-'): string {
  hookExit();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  fs.chmodSync(dir, 0o755);
  live.dirs.add(dir);
  return dir;
}

/**
 * Remove a temp dir made by makeTempDir. Anything still mounted inside (a test that went wrong)
 * is lazily unmounted first; if that fails the dir is left alone rather than recursing into a mount.
 */
export function removeTempDir(dir: string): void {
  unmountAllUnder(dir);
  if (mountsUnder(dir)) throw new Error(`refusing to remove ${dir}: something is still mounted inside`);
  rmrfSync(dir);
  live.dirs.delete(dir);
}

async function waitFor(cond: () => boolean, timeoutMs: number, stepMs = 50): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (cond()) return true;
    if (Date.now() >= end) return false;
    await sleep(stepMs);
  }
}

// ---------------------------------------------------------------------------------------------
// Running the CLI

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
  timedOut: boolean;
}

export interface RunOptions {
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  input?: string | Buffer;
}

/** Run `node bin/kvfs.js ...args` to completion (SIGKILL after timeoutMs, default 30 s). */
export function kvfs(args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return run(process.execPath, [CLI, ...args], opts);
}

/** Run any command to completion and collect its output. */
export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const started = Date.now();
  return new Promise((resolve) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd ?? ROOT,
      env: opts.env ?? process.env,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (err) => {
      stderr += `spawn error: ${err.message}\n`;
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: Date.now() - started, timedOut });
    });
    child.stdin.on('error', () => {});
    if (opts.input !== undefined) child.stdin.end(opts.input);
    else child.stdin.end();
  });
}

export function describeRun(what: string, r: RunResult): string {
  return (
    `${what}: exit ${r.code}${r.signal ? ` (signal ${r.signal})` : ''}${r.timedOut ? ' TIMED OUT' : ''} ` +
    `after ${r.ms} ms\n--- stdout ---\n${r.stdout}\n--- stderr ---\n${r.stderr}`
  );
}

// ---------------------------------------------------------------------------------------------
// A foreground `kvfs mount` daemon

export interface Daemon {
  child: ChildProcess;
  pid: number;
  args: string[];
  /** Everything written so far (stdout and stderr interleaved, each line prefixed). */
  log(): string;
  stdout(): string;
  stderr(): string;
  /** Resolves when the `mounted` line appears; rejects if the process exits first or on timeout. */
  ready: Promise<void>;
  /** Resolves with the exit status once the process has exited (never rejects). */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  exitStatus(): { code: number | null; signal: NodeJS.Signals | null } | undefined;
}

/** Spawn `kvfs mount ...args` in the foreground. The caller must eventually end it. */
export function spawnMount(args: string[], opts: { readyTimeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Daemon {
  hookExit();
  const readyTimeoutMs = opts.readyTimeoutMs ?? 20_000;
  const fullArgs = ['mount', ...args];
  const child = spawn(process.execPath, [CLI, ...fullArgs], {
    cwd: ROOT,
    env: opts.env ?? process.env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const pid = child.pid ?? -1;
  if (pid > 0) live.daemons.add(pid);
  let out = '';
  let err = '';
  let log = '';
  let status: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on('error', (e) => {
      err += `spawn error: ${e.message}\n`;
      log += `[spawn error] ${e.message}\n`;
    });
    child.on('close', (code, signal) => {
      status = { code, signal };
      live.daemons.delete(pid);
      log += `[exit] code=${code} signal=${signal}\n`;
      resolve(status);
    });
  });
  const ready = new Promise<void>((resolve, reject) => {
    let done = false;
    const finish = (e?: Error) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (e) reject(e);
      else resolve();
    };
    const timer = setTimeout(
      () =>
        finish(
          new Error(
            `kvfs mount did not print a 'mounted' line within ${readyTimeoutMs} ms\n` +
              `args: ${fullArgs.join(' ')}\n--- daemon output ---\n${log}`,
          ),
        ),
      readyTimeoutMs,
    );
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      log += d.replace(/^(?=.)/gm, '[out] ');
      if (out.split('\n').some((l) => /\bmounted\b/i.test(l) && !/\bunmounted\b/i.test(l))) finish();
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      err += d;
      log += d.replace(/^(?=.)/gm, '[err] ');
    });
    void exited.then(({ code, signal }) =>
      finish(
        new Error(
          `kvfs mount exited (code ${code}, signal ${signal}) before it was mounted\n` +
            `args: ${fullArgs.join(' ')}\n--- daemon output ---\n${log}`,
        ),
      ),
    );
  });
  ready.catch(() => {}); // callers await it; avoid unhandled-rejection noise if they do not
  return {
    child,
    pid,
    args: fullArgs,
    log: () => log,
    stdout: () => out,
    stderr: () => err,
    ready,
    exited,
    exitStatus: () => status,
  };
}

/** Wait for a daemon to exit; undefined on timeout. */
export async function waitExit(
  d: Daemon,
  timeoutMs: number,
): Promise<{ code: number | null; signal: NodeJS.Signals | null } | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const r = await Promise.race([
    d.exited,
    new Promise<undefined>((res) => (timer = setTimeout(() => res(undefined), timeoutMs))),
  ]);
  clearTimeout(timer);
  return r;
}

// ---------------------------------------------------------------------------------------------
// Backing servers

export interface Servers {
  backend: Backend;
  etcd?: EtcdServer;
  redis?: RedisServer;
  /** Scratch directory (embedded stores live here). */
  dir: string;
  metaUrlFor(volume: string): string;
  dataUrl?: string;
  stop(): Promise<void>;
}

export async function startServers(backend: Backend): Promise<Servers> {
  hookExit();
  const dir = makeTempDir('kvfs-srv-');
  if (backend === 'embedded') {
    const storeDir = path.join(dir, 'store');
    fs.mkdirSync(storeDir, { mode: 0o755 });
    return {
      backend,
      dir,
      metaUrlFor: (volume) => `file://${storeDir}/${volume}`,
      dataUrl: undefined,
      stop: async () => removeTempDir(dir),
    };
  }
  let etcd: EtcdServer | undefined;
  let redis: RedisServer | undefined;
  try {
    [etcd, redis] = await Promise.all([startEtcd(), startRedis()]);
  } catch (e) {
    // one of them may have started
    await Promise.allSettled([etcd?.stop(), redis?.stop()]);
    removeTempDir(dir);
    throw e;
  }
  live.serverPids.add(etcd.pid);
  live.serverPids.add(redis.pid);
  const e = etcd;
  const r = redis;
  let stopped = false;
  return {
    backend,
    etcd: e,
    redis: r,
    dir,
    metaUrlFor: (volume) => `etcd://${e.hostPort}/${volume}`,
    dataUrl: `redis://127.0.0.1:${r.port}`,
    stop: async () => {
      if (stopped) return;
      stopped = true;
      await Promise.allSettled([e.stop(), r.stop()]);
      for (const pid of [e.pid, r.pid]) {
        if (await waitFor(() => !pidAlive(pid), 5_000)) continue;
        tryKill(pid, 'SIGKILL');
      }
      live.serverPids.delete(e.pid);
      live.serverPids.delete(r.pid);
      removeTempDir(dir);
    },
  };
}

export function pidAlive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/\) Z /.test(stat);
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// A mounted volume

export interface VolumeOptions {
  backend: Backend;
  /** Extra arguments for `kvfs mount` (before the mountpoint). */
  mountArgs?: string[];
  /** Extra arguments for `kvfs format`. */
  formatArgs?: string[];
  /** Reuse running servers instead of starting new ones (they are then not stopped by stop()). */
  servers?: Servers;
  /** Volume name (default: a unique one). */
  volume?: string;
  readyTimeoutMs?: number;
}

export interface Volume {
  backend: Backend;
  volume: string;
  mnt: string;
  metaUrl: string;
  dataUrl: string | undefined;
  servers: Servers;
  /** Pid of the current daemon. */
  pid: number;
  daemon: Daemon;
  /** Arguments for `kvfs mount` without the mountpoint (for spawning extra mounts in tests). */
  mountArgsFor(extra?: string[]): string[];
  /** Unmount (if mounted) and mount again; mountArgs replaces the original extra mount args. */
  remount(mountArgs?: string[]): Promise<void>;
  /** `kvfs umount`, then wait for the daemon to exit; throws unless both exit 0 and it is unmounted. */
  unmount(): Promise<void>;
  /** Always cleans up (idempotent, never throws). */
  stop(): Promise<void>;
  /** Daemon output of every mount of this volume so far. */
  logs(): string;
}

export async function startVolume(opts: VolumeOptions): Promise<Volume> {
  hookExit();
  const servers = opts.servers ?? (await startServers(opts.backend));
  const ownServers = !opts.servers;
  const volume = opts.volume ?? uniqueName();
  const metaUrl = servers.metaUrlFor(volume);
  const dataUrl = servers.dataUrl;
  const dir = makeTempDir('kvfs-mnt-');
  const mnt = path.join(dir, 'mnt');
  fs.mkdirSync(mnt);
  fs.chmodSync(mnt, 0o755);
  live.mounts.add(mnt);

  let pastLogs = '';
  let currentArgs = opts.mountArgs ?? [];
  let daemon: Daemon | undefined;
  let stopped = false;

  const mountArgsFor = (extra: string[] = currentArgs) => ['--meta', metaUrl, ...extra];

  const vol: Volume = {
    backend: opts.backend,
    volume,
    mnt,
    metaUrl,
    dataUrl,
    servers,
    pid: -1,
    get daemon(): Daemon {
      if (!daemon) throw new Error('not mounted');
      return daemon;
    },
    mountArgsFor,
    logs: () => pastLogs + (daemon ? daemon.log() : ''),
    remount: async (mountArgs?: string[]) => {
      if (mountArgs) currentArgs = mountArgs;
      if (daemon && !daemon.exitStatus()) await vol.unmount();
      await doMount();
    },
    unmount: async () => {
      if (!daemon) throw new Error('unmount: not mounted');
      const d = daemon;
      const r = await kvfs(['umount', mnt], { timeoutMs: 30_000 });
      if (r.code !== 0) throw new Error(describeRun(`kvfs umount ${mnt}`, r) + `\n--- daemon ---\n${d.log()}`);
      const st = await waitExit(d, 30_000);
      if (!st) throw new Error(`daemon ${d.pid} still running 30 s after kvfs umount\n--- daemon ---\n${d.log()}`);
      if (st.code !== 0)
        throw new Error(`daemon exited with code ${st.code} signal ${st.signal} after umount\n--- daemon ---\n${d.log()}`);
      if (isMounted(mnt)) throw new Error(`${mnt} still in /proc/mounts after umount and daemon exit`);
      pastLogs += d.log();
      daemon = undefined;
    },
    stop: async () => {
      if (stopped) return;
      stopped = true;
      try {
        await cleanupMount();
      } catch {
        /* never throw from stop */
      }
      try {
        if (ownServers) await servers.stop();
      } catch {
        /* ignore */
      }
      try {
        if (!mountsUnder(dir)) removeTempDir(dir);
      } catch {
        /* ignore */
      }
      live.mounts.delete(mnt);
    },
  };

  async function cleanupMount(): Promise<void> {
    const d = daemon;
    if (d && !d.exitStatus()) {
      if (isMounted(mnt)) await kvfs(['umount', mnt], { timeoutMs: 10_000 });
      if (!(await waitExit(d, 10_000))) {
        tryKill(d.pid, 'SIGTERM');
        if (!(await waitExit(d, 5_000))) {
          tryKill(d.pid, 'SIGKILL');
          await waitExit(d, 5_000);
        }
      }
    }
    if (d) pastLogs += d.log();
    daemon = undefined;
    unmountAllUnder(dir);
  }

  async function doMount(): Promise<void> {
    if (isMounted(mnt)) throw new Error(`${mnt} is already mounted`);
    const d = spawnMount([...mountArgsFor(), mnt], { readyTimeoutMs: opts.readyTimeoutMs });
    daemon = d;
    vol.pid = d.pid;
    try {
      await d.ready;
    } catch (e) {
      await cleanupMount();
      throw e;
    }
    if (!isMounted(mnt)) {
      const log = d.log();
      await cleanupMount();
      throw new Error(`daemon said 'mounted' but ${mnt} is not in /proc/mounts\n--- daemon ---\n${log}`);
    }
  }

  try {
    const formatArgs = ['format', '--meta', metaUrl, ...(dataUrl ? ['--data', dataUrl] : []), ...(opts.formatArgs ?? [])];
    const r = await kvfs(formatArgs, { timeoutMs: 30_000 });
    if (r.code !== 0) throw new Error(describeRun(`kvfs ${formatArgs.join(' ')}`, r));
    await doMount();
  } catch (e) {
    await vol.stop();
    throw e;
  }
  return vol;
}

// Helpers for tests with several mounts of one volume, crashes and backend outages:
// extra mount daemons of a volume, `kvfs status --json`, polling, lazy unmounts, a Redis server
// that can be killed and restarted on the same port and directory, and a workload child process
// that writes + fsyncs files and logs (outside the mount, only after fsync returned) what it did.
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import {
  Daemon,
  describeRun,
  isMounted,
  kvfs,
  makeTempDir,
  pidAlive,
  removeTempDir,
  sleep,
  spawnMount,
  Volume,
  waitExit,
} from '../_helpers/mount';
import { freePort } from '../_helpers/servers';
import { mulberry32, sha256File } from '../_helpers/ops';

// ---------------------------------------------------------------------------------------------
// Extra mounts of a volume

export interface ExtraMount {
  name: string;
  dir: string;
  mnt: string;
  daemon: Daemon;
  pid: number;
  /** SIGKILL the daemon, wait for it to exit, lazily unmount the dead mountpoint. */
  kill9(): Promise<void>;
  /** Unmount gracefully if possible; always ends the daemon and removes the temp dir. Never throws. */
  stop(): Promise<void>;
}

/** Mounts `vol` a second (third, ...) time with its own daemon and mount options. */
export async function extraMount(vol: Volume, name: string, mountArgs: string[] = []): Promise<ExtraMount> {
  const dir = makeTempDir(`kvfs-${name}-`);
  const mnt = path.join(dir, 'mnt');
  fs.mkdirSync(mnt);
  const daemon = spawnMount([...vol.mountArgsFor(mountArgs), mnt], { readyTimeoutMs: 30_000 });
  let stopped = false;
  const m: ExtraMount = {
    name,
    dir,
    mnt,
    daemon,
    pid: daemon.pid,
    kill9: async () => {
      try {
        process.kill(daemon.pid, 'SIGCONT'); // in case a test stopped it
        process.kill(daemon.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
      await waitExit(daemon, 10_000);
      lazyUnmount(mnt);
    },
    stop: async () => {
      if (stopped) return;
      stopped = true;
      try {
        if (!daemon.exitStatus()) {
          try {
            process.kill(daemon.pid, 'SIGCONT');
          } catch {
            /* gone */
          }
          if (isMounted(mnt)) await kvfs(['umount', mnt], { timeoutMs: 15_000 });
          if (!(await waitExit(daemon, 10_000))) {
            daemon.child.kill('SIGKILL');
            await waitExit(daemon, 5_000);
          }
        }
        lazyUnmount(mnt);
        removeTempDir(dir);
      } catch {
        /* never throw from stop */
      }
    },
  };
  try {
    await daemon.ready;
  } catch (e) {
    await m.stop();
    throw e;
  }
  return m;
}

/** Lazily unmount a (possibly dead) FUSE mountpoint. */
export function lazyUnmount(mnt: string): void {
  if (!isMounted(mnt)) return;
  spawnSync('umount', ['-l', mnt], { stdio: 'ignore', timeout: 10_000 });
  if (isMounted(mnt)) spawnSync('fusermount3', ['-uz', mnt], { stdio: 'ignore', timeout: 10_000 });
}

// ---------------------------------------------------------------------------------------------
// kvfs status / fsck

export interface SessionJson {
  id: string;
  host: string;
  pid: number;
  mountpoint: string;
  version: string;
  startedAt: string;
}

export interface StatusJson {
  usage: { files: number; dirs: number; symlinks: number; others: number; bytes: number; orphans: number };
  data: { blocks: number; bytes: number };
  sessions: SessionJson[];
  warning?: string;
}

export async function status(metaUrl: string): Promise<StatusJson> {
  const r = await kvfs(['status', '--meta', metaUrl, '--json'], { timeoutMs: 60_000 });
  if (r.code !== 0) throw new Error(describeRun('kvfs status --json', r));
  return JSON.parse(r.stdout) as StatusJson;
}

let fsckPresent: boolean | undefined;
/** Whether this build has `kvfs fsck` (issue 5 asks for it; it may not exist yet). */
export async function haveFsck(): Promise<boolean> {
  if (fsckPresent === undefined) {
    const r = await kvfs(['fsck', '--help'], { timeoutMs: 30_000 });
    fsckPresent = r.code === 0 && !/unknown command/.test(r.stderr + r.stdout);
  }
  return fsckPresent;
}

/**
 * `kvfs fsck --meta URL` if the command exists: returns undefined when it is absent (the step is
 * then skipped), else { clean, output }. Clean means exit code 0.
 */
export async function fsck(metaUrl: string): Promise<{ clean: boolean; output: string } | undefined> {
  if (!(await haveFsck())) return undefined;
  const r = await kvfs(['fsck', '--meta', metaUrl], { timeoutMs: 120_000 });
  return { clean: r.code === 0, output: describeRun(`kvfs fsck --meta ${metaUrl}`, r) };
}

// ---------------------------------------------------------------------------------------------
// Polling

/** Calls `probe` until it returns true (exceptions count as false) or `timeoutMs` passed. */
export async function pollUntil(probe: () => boolean | Promise<boolean>, timeoutMs: number, stepMs = 50): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await probe()) return true;
    } catch {
      /* not yet */
    }
    if (Date.now() >= end) return false;
    await sleep(stepMs);
  }
}

/** Tail of a daemon log, for assertion messages. */
export function tail(log: string, lines = 40): string {
  return log.split('\n').slice(-lines).join('\n');
}

// ---------------------------------------------------------------------------------------------
// A Redis we can kill -9 and restart on the same port and directory (the harness's stop() removes
// its directory, so a restart is done here with the same command line).

export interface RestartableRedis {
  port: number;
  dir: string;
  url: string;
  pid(): number;
  kill(signal?: NodeJS.Signals): Promise<void>;
  start(): Promise<void>;
  pause(): void;
  resume(): void;
  stop(): Promise<void>;
}

function redisPing(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect({ host: '127.0.0.1', port });
    let buf = '';
    sock.setTimeout(1000, () => sock.destroy());
    sock.on('connect', () => sock.write('PING\r\n'));
    sock.on('data', (d) => {
      buf += d.toString();
      if (buf.includes('\r\n')) {
        sock.destroy();
        resolve(buf.startsWith('+PONG'));
      }
    });
    sock.on('error', () => resolve(false));
    sock.on('close', () => resolve(false));
  });
}

const liveRedis = new Set<ChildProcess>();
let redisExitHooked = false;

/** redis-server with `--appendonly yes --appendfsync always` (every acknowledged write is on disk). */
export async function startRestartableRedis(): Promise<RestartableRedis> {
  if (!redisExitHooked) {
    redisExitHooked = true;
    process.once('exit', () => {
      for (const c of liveRedis) c.kill('SIGKILL');
    });
  }
  const dir = makeTempDir('kvfs-redis-');
  const port = await freePort();
  let child: ChildProcess | undefined;
  const args = [
    '--port', String(port),
    '--bind', '127.0.0.1',
    '--dir', dir,
    '--save', '',
    '--appendonly', 'yes',
    '--appendfsync', 'always',
    '--daemonize', 'no',
    '--loglevel', 'warning',
  ];
  const exited = (c: ChildProcess) => c.exitCode !== null || c.signalCode !== null;
  const waitGone = async (c: ChildProcess) => {
    const end = Date.now() + 10_000;
    while (!exited(c) && Date.now() < end) await sleep(20);
  };
  const r: RestartableRedis = {
    port,
    dir,
    url: `redis://127.0.0.1:${port}`,
    pid: () => child?.pid ?? -1,
    start: async () => {
      const log = fs.openSync(path.join(dir, 'server.log'), 'a');
      const c = spawn('redis-server', args, { cwd: dir, stdio: ['ignore', log, log] });
      fs.closeSync(log);
      child = c;
      liveRedis.add(c);
      c.once('exit', () => liveRedis.delete(c));
      const end = Date.now() + 20_000;
      while (Date.now() < end) {
        if (exited(c)) break;
        if (await redisPing(port)) return;
        await sleep(50);
      }
      throw new Error(`redis-server did not start on port ${port}:\n${fs.readFileSync(path.join(dir, 'server.log'), 'utf8')}`);
    },
    kill: async (signal = 'SIGKILL') => {
      const c = child;
      if (!c || exited(c)) return;
      c.kill('SIGCONT');
      c.kill(signal);
      await waitGone(c);
    },
    pause: () => child?.kill('SIGSTOP'),
    resume: () => child?.kill('SIGCONT'),
    stop: async () => {
      await r.kill('SIGKILL');
      try {
        removeTempDir(dir);
      } catch {
        /* ignore */
      }
    },
  };
  await r.start();
  return r;
}

// ---------------------------------------------------------------------------------------------
// Workload child: writes files, fsyncs them and their directory, and logs each step to a journal
// outside the mount. A 'done' line is appended only AFTER fsync(file) and fsync(dir) returned.
//
// Journal lines (JSON):
//   {op:'intent', kind:'create'|'replace'|'unlink', path, sha?, t}   before the step starts
//   {op:'done',   kind, path, sha?, t0, t1}                          after fsync(file)+fsync(dir)
//   {op:'error',  kind, path, stage, code, t0, t1}                   a syscall failed (stage = which)
// `path` is relative to the mount.

const WORKER = String.raw`
const fs = require('fs'), path = require('path'), crypto = require('crypto');
const [mnt, journal, seedStr, maxOpsStr, prefix, pauseMsStr] = process.argv.slice(1);
let a = Number(seedStr) >>> 0;
const rnd = () => { a = (a + 0x6d2b79f5) >>> 0; let t = a; t = Math.imul(t ^ (t >>> 15), t | 1); t ^= t + Math.imul(t ^ (t >>> 7), t | 61); return ((t ^ (t >>> 14)) >>> 0) / 4294967296; };
const bytes = (n) => { const b = Buffer.allocUnsafe(n); for (let i = 0; i + 4 <= n; i += 4) b.writeUInt32LE((rnd() * 4294967296) >>> 0, i); for (let i = n - (n % 4); i < n; i++) b[i] = (rnd() * 256) | 0; return b; };
const sha = (b) => crypto.createHash('sha256').update(b).digest('hex');
const jfd = fs.openSync(journal, 'a');
const log = (o) => fs.writeSync(jfd, JSON.stringify(o) + '\n');
const maxOps = Number(maxOpsStr) || Infinity;
const pauseMs = Number(pauseMsStr) || 0;
const dir = path.join(mnt, prefix);
const sleep = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
let stage = 'mkdir';
let fatal = 0;
function attempt(kind, rel, fn) {
  const t0 = Date.now();
  try { fn(); return true; }
  catch (e) {
    if (typeof e.code !== 'string') throw e;
    log({ op: 'error', kind, path: rel, stage, code: e.code, t0, t1: Date.now() });
    if (e.code === 'ENOTCONN' || e.code === 'ECONNABORTED') fatal++;
    if (fatal > 3) process.exit(2);
    return false;
  }
}
function fsyncDir(d) { stage = 'open dir'; const fd = fs.openSync(d, 'r'); try { stage = 'fsync dir'; fs.fsyncSync(fd); } finally { fs.closeSync(fd); } }
function writeFile(p, data) {
  stage = 'open'; const fd = fs.openSync(p, 'w');
  try {
    let off = 0;
    stage = 'write';
    while (off < data.length) { const n = Math.min(data.length - off, 1 + Math.floor(rnd() * 300000)); fs.writeSync(fd, data, off, n, off); off += n; }
    stage = 'fsync'; fs.fsyncSync(fd);
  } catch (e) { try { fs.closeSync(fd); } catch {} throw e; }
  stage = 'close'; fs.closeSync(fd);
}
attempt('mkdir', prefix, () => fs.mkdirSync(dir, { recursive: true }));
const recorded = [];
for (let n = 0; n < maxOps; n++) {
  const r = rnd();
  const size = rnd() < 0.15 ? Math.floor(rnd() * 3 * 1048576) : Math.floor(rnd() * 300000);
  if (r < 0.12 && recorded.length > 2) {
    // atomic replace: write a temp file, fsync, rename over a recorded file, fsync the directory
    const rel = recorded[Math.floor(rnd() * recorded.length)];
    const data = bytes(size), h = sha(data), tmp = path.join(dir, 't' + n);
    const t0 = Date.now();
    if (!attempt('replace', rel, () => writeFile(tmp, data))) continue;
    log({ op: 'intent', kind: 'replace', path: rel, sha: h, t: Date.now() });
    if (!attempt('replace', rel, () => { stage = 'rename'; fs.renameSync(tmp, path.join(mnt, rel)); fsyncDir(dir); })) continue;
    log({ op: 'done', kind: 'replace', path: rel, sha: h, t0, t1: Date.now() });
  } else if (r < 0.18 && recorded.length > 2) {
    const i = Math.floor(rnd() * recorded.length);
    const rel = recorded[i];
    const t0 = Date.now();
    log({ op: 'intent', kind: 'unlink', path: rel, t: t0 });
    if (!attempt('unlink', rel, () => { stage = 'unlink'; fs.unlinkSync(path.join(mnt, rel)); fsyncDir(dir); })) continue;
    recorded.splice(i, 1);
    log({ op: 'done', kind: 'unlink', path: rel, t0, t1: Date.now() });
  } else {
    const rel = prefix + '/f' + n;
    const data = bytes(size), h = sha(data);
    const t0 = Date.now();
    log({ op: 'intent', kind: 'create', path: rel, sha: h, t: t0 });
    if (!attempt('create', rel, () => { writeFile(path.join(mnt, rel), data); fsyncDir(dir); })) { if (pauseMs) sleep(pauseMs); continue; }
    recorded.push(rel);
    log({ op: 'done', kind: 'create', path: rel, sha: h, t0, t1: Date.now() });
  }
  if (pauseMs) sleep(pauseMs);
}
process.exit(0);
`;

export interface JournalLine {
  op: 'intent' | 'done' | 'error';
  kind: 'create' | 'replace' | 'unlink' | 'mkdir';
  path: string;
  sha?: string;
  stage?: string;
  code?: string;
  t?: number;
  t0?: number;
  t1?: number;
}

export interface Worker {
  child: ChildProcess;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stderr(): string;
}

/** Starts the workload in a child process (writes under mnt/prefix, journal outside the mount). */
export function startWorker(mnt: string, journal: string, opts: { seed: number; prefix: string; maxOps?: number; pauseMs?: number }): Worker {
  const child = spawn(
    process.execPath,
    ['-e', WORKER, mnt, journal, String(opts.seed), String(opts.maxOps ?? 0), opts.prefix, String(opts.pauseMs ?? 0)],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  liveWorkers.add(child);
  let err = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('close', (code, signal) => {
      liveWorkers.delete(child);
      resolve({ code, signal });
    }),
  );
  return { child, exited, stderr: () => err };
}

const liveWorkers = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of liveWorkers) c.kill('SIGKILL');
});

export function readJournal(journal: string): JournalLine[] {
  if (!fs.existsSync(journal)) return [];
  return fs
    .readFileSync(journal, 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .flatMap((l) => {
      try {
        return [JSON.parse(l) as JournalLine];
      } catch {
        return []; // a line cut by a kill of the worker
      }
    });
}

/**
 * What each journalled path may contain now: the sha of its last 'done' (or 'absent' after an
 * unlink), plus what an 'intent' after that last 'done' may have already done (a rename that
 * happened but whose directory fsync did not return, an unlink in flight).
 */
export function expectedFiles(lines: JournalLine[]): Map<string, Set<string>> {
  const last = new Map<string, string>();
  const pending = new Map<string, Set<string>>();
  for (const l of lines) {
    if (l.op === 'intent') {
      if (!last.has(l.path)) continue; // never fsynced yet: no promise about it
      let s = pending.get(l.path);
      if (!s) pending.set(l.path, (s = new Set()));
      s.add(l.kind === 'unlink' ? 'absent' : l.sha!);
    } else if (l.op === 'done') {
      last.set(l.path, l.kind === 'unlink' ? 'absent' : l.sha!);
      pending.delete(l.path);
    }
  }
  const out = new Map<string, Set<string>>();
  for (const [p, v] of last) out.set(p, new Set([v, ...(pending.get(p) ?? [])]));
  return out;
}

/** Checks every journalled file on `mnt`; returns a list of problems (empty = all good). */
export function verifyFiles(mnt: string, expected: Map<string, Set<string>>): string[] {
  const problems: string[] = [];
  for (const [rel, ok] of expected) {
    const p = path.join(mnt, rel);
    let actual: string;
    try {
      actual = sha256File(p);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') actual = 'absent';
      else {
        problems.push(`${rel}: reading it failed with ${code ?? String(e)} (expected ${[...ok].join(' or ')})`);
        continue;
      }
    }
    if (!ok.has(actual)) problems.push(`${rel}: content ${actual} but expected ${[...ok].join(' or ')}`);
  }
  return problems;
}

/** Reads every file under dir (all must be readable: the metadata is consistent). */
export function readWholeTree(dir: string): string[] {
  const problems: string[] = [];
  const walk = (d: string) => {
    let names: string[];
    try {
      names = fs.readdirSync(d);
    } catch (e) {
      problems.push(`readdir ${d}: ${(e as NodeJS.ErrnoException).code}`);
      return;
    }
    for (const n of names) {
      const p = path.join(d, n);
      try {
        const st = fs.lstatSync(p);
        if (st.isDirectory()) walk(p);
        else if (st.isFile()) {
          const len = fs.readFileSync(p).length;
          if (len !== st.size) problems.push(`${p}: read ${len} bytes but stat says ${st.size}`);
        }
      } catch (e) {
        problems.push(`${p}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
      }
    }
  };
  walk(dir);
  return problems;
}

export { pidAlive, sleep };

// ---------------------------------------------------------------------------------------------
// The kill -9 loop (issue 5, crash safety), for any backend

export interface CrashLoopResult {
  iterations: number;
  done: number;
  /** Per iteration: milliseconds before the kill and 'done' lines journalled in that run. */
  runs: Array<{ delayMs: number; done: number }>;
  problems: string[];
}

/**
 * Repeats: start the workload on vol, SIGKILL the daemon after a random delay (seeded), stop the
 * workload, lazily unmount, remount, check every file the journal says was fsynced, and that every
 * file in the tree is readable with its stat size. `check` runs after each remount (fsck, ...).
 */
export async function crashLoop(
  vol: Volume,
  opts: { seed: number; iterations: number; minDelayMs: number; maxDelayMs: number; check?: () => Promise<string[]> },
): Promise<CrashLoopResult> {
  const rnd = mulberry32(opts.seed);
  const scratch = makeTempDir('kvfs-crash-journal-');
  const journal = path.join(scratch, 'journal.jsonl');
  const result: CrashLoopResult = { iterations: 0, done: 0, runs: [], problems: [] };
  try {
    for (let iter = 0; iter < opts.iterations; iter++) {
      const before = readJournal(journal).filter((l) => l.op === 'done').length;
      const worker = startWorker(vol.mnt, journal, { seed: opts.seed * 1000 + iter, prefix: `run${iter}` });
      const delayMs = Math.round(opts.minDelayMs + rnd() * (opts.maxDelayMs - opts.minDelayMs));
      await sleep(delayMs);
      const daemon = vol.daemon;
      try {
        process.kill(daemon.pid, 'SIGKILL');
      } catch {
        /* already gone: reported below */
      }
      const st = await waitExit(daemon, 15_000);
      if (!st) result.problems.push(`run ${iter}: daemon ${daemon.pid} did not die from SIGKILL`);
      else if (st.signal !== 'SIGKILL') result.problems.push(`run ${iter}: daemon had exited by itself before the kill (code ${st.code} signal ${st.signal})\n${tail(daemon.log())}`);
      // The workload's calls now fail with ENOTCONN; it must be gone before the lazy unmount
      // uncovers the empty directory underneath.
      if (!(await Promise.race([worker.exited.then(() => true), sleep(3000).then(() => false)]))) {
        worker.child.kill('SIGKILL');
        await worker.exited;
      }
      lazyUnmount(vol.mnt);
      await vol.remount();
      const lines = readJournal(journal);
      const done = lines.filter((l) => l.op === 'done').length - before;
      result.runs.push({ delayMs, done });
      result.done += done;
      for (const p of verifyFiles(vol.mnt, expectedFiles(lines))) result.problems.push(`after kill ${iter} (at ${delayMs} ms): ${p}`);
      for (const p of readWholeTree(vol.mnt)) result.problems.push(`after kill ${iter}: tree: ${p}`);
      if (opts.check) for (const p of await opts.check()) result.problems.push(`after kill ${iter}: ${p}`);
      result.iterations++;
      if (result.problems.length) break;
    }
  } finally {
    try {
      removeTempDir(scratch);
    } catch {
      /* ignore */
    }
  }
  return result;
}

// ---------------------------------------------------------------------------------------------
// A child process that holds file descriptors for a test. A test must not hold an fd on a mount
// whose daemon it freezes: every process it spawns inherits the fd until exec closes it, and
// that close sends a FUSE flush to the frozen daemon, so the spawn (and the test's event loop,
// which waits for the exec) hangs.

const HOLDER = String.raw`
const fs = require('fs'), crypto = require('crypto');
let buf = '';
process.stdin.setEncoding('utf8').on('data', (d) => {
  buf += d;
  let nl;
  while ((nl = buf.indexOf('\n')) >= 0) {
    const line = buf.slice(0, nl); buf = buf.slice(nl + 1);
    const c = JSON.parse(line);
    const t0 = Date.now();
    let out;
    try {
      if (c.op === 'open') out = { fd: fs.openSync(c.path, c.flags) };
      else if (c.op === 'write') { const data = Buffer.from(c.b64, 'base64'); let o = 0; while (o < data.length) o += fs.writeSync(c.fd, data, o, data.length - o, c.pos + o); out = {}; }
      else if (c.op === 'read') { const b = Buffer.alloc(c.len); const n = fs.readSync(c.fd, b, 0, c.len, c.pos); out = { sha: crypto.createHash('sha256').update(b.subarray(0, n)).digest('hex'), n }; }
      else if (c.op === 'fsync') { fs.fsyncSync(c.fd); out = {}; }
      else if (c.op === 'close') { fs.closeSync(c.fd); out = {}; }
      else throw new Error('unknown op ' + c.op);
      out.code = 'OK';
    } catch (e) { out = { code: e.code || String(e) }; }
    out.id = c.id; out.ms = Date.now() - t0;
    process.stdout.write(JSON.stringify(out) + '\n');
  }
});
`;

export interface HolderReply {
  code: string;
  ms: number;
  fd?: number;
  sha?: string;
  n?: number;
}

export interface Holder {
  /** Sends one command; resolves with its reply (commands run one at a time, in order). */
  cmd(c: { op: 'open'; path: string; flags: string } | { op: 'write'; fd: number; data: Buffer; pos: number } | { op: 'read'; fd: number; len: number; pos: number } | { op: 'fsync' | 'close'; fd: number }): Promise<HolderReply>;
  kill(): Promise<void>;
}

export function startHolder(): Holder {
  const child = spawn(process.execPath, ['-e', HOLDER], { stdio: ['pipe', 'pipe', 'inherit'] });
  liveWorkers.add(child);
  const exited = new Promise<void>((resolve) => child.on('close', () => (liveWorkers.delete(child), resolve())));
  const waiting = new Map<number, (r: HolderReply) => void>();
  let nextId = 1;
  let buf = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    buf += d;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const r = JSON.parse(buf.slice(0, nl)) as HolderReply & { id: number };
      buf = buf.slice(nl + 1);
      waiting.get(r.id)?.(r);
      waiting.delete(r.id);
    }
  });
  return {
    cmd: (c) => {
      const id = nextId++;
      const wire = 'data' in c ? { op: c.op, fd: c.fd, pos: c.pos, b64: c.data.toString('base64'), id } : { ...c, id };
      return new Promise<HolderReply>((resolve) => {
        waiting.set(id, resolve);
        child.stdin!.write(JSON.stringify(wire) + '\n');
      });
    },
    kill: async () => {
      child.kill('SIGKILL');
      await exited;
    },
  };
}

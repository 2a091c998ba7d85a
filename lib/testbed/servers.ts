// Real etcd and redis-server processes on free loopback ports, each in a directory the caller
// gives, for everything that measures or tests kvfs against real backends: `kvfs lab` and the
// test suite (test/_helpers/servers.ts adds temp dirs and its safety nets on top). Not used by
// the daemon.
//
// Each server is started, polled until it answers (etcd /health, Redis PING), and retried on
// fresh ports when it exits early (a port taken between freePort() and bind). pause()/resume()
// SIGSTOP/SIGCONT it and resolve once the kernel reports the new state (for stall experiments);
// stop() ends it by pid: SIGCONT + SIGTERM, SIGKILL after 5 s.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as net from 'node:net';
import * as path from 'node:path';
import * as tls from 'node:tls';

export interface ServerProcess {
  readonly name: 'etcd' | 'redis';
  readonly pid: number;
  /** The directory it runs in (its data and server.log). */
  readonly dir: string;
  /** From `etcd --version` / `redis-server --version` (run once per process). */
  readonly version: string;
  /**
   * SIGSTOP the server: it keeps its sockets open but answers nothing (for timeout tests).
   * Resolves once the kernel reports every thread stopped.
   */
  pause(): Promise<void>;
  /** SIGCONT a paused server; resolves once it runs again. */
  resume(): Promise<void>;
  /** SIGCONT + SIGTERM, SIGKILL after 5 s; resolves once it has exited. Idempotent. */
  stop(): Promise<void>;
}

export interface EtcdServer extends ServerProcess {
  /** 'http://127.0.0.1:PORT' (https:// with TLS) */
  readonly endpoint: string;
  /** '127.0.0.1:PORT' (for etcd:// URLs) */
  readonly hostPort: string;
  readonly dataDir: string;
}

export interface RedisServer extends ServerProcess {
  /** 'redis://127.0.0.1:PORT' (rediss:// with TLS) */
  readonly url: string;
  readonly port: number;
}

/** PEM files of a TLS server (and of a client the readiness check may present). */
export interface TlsServerFiles {
  cert: string;
  key: string;
  ca: string;
  client?: { cert: string; key: string };
}

interface CommonOptions {
  /** Directory for the server's files; created, and emptied before each start attempt. */
  dir: string;
  /** Called with each spawned process (e.g. to register it for a safety net). */
  onSpawn?: (child: ChildProcess) => void;
}

export interface StartEtcdOptions extends CommonOptions {
  /**
   * Serve clients over TLS (https:// listen URLs) with these PEM files. `clientCertAuth`
   * (default false) is etcd's --client-cert-auth; `client` is what the readiness check presents.
   */
  tls?: TlsServerFiles & { clientCertAuth?: boolean };
}

export interface StartRedisOptions extends CommonOptions {
  /**
   * Persistence: false (default) is `--save "" --appendonly no`; otherwise `--appendonly yes`
   * with this `--appendfsync` ('always': a block Redis acknowledged is on disk).
   */
  appendonly?: false | 'always' | 'everysec' | 'no';
  /** `--requirepass PASSWORD` (default: none). */
  password?: string;
  /**
   * Serve TLS only (`--port 0 --tls-port PORT`); `url` is then rediss://. `authClients`
   * (default false) makes Redis demand a client certificate signed by `ca`.
   */
  tls?: TlsServerFiles & { authClients?: boolean };
}

/** A TCP port on 127.0.0.1 that was free a moment ago (the caller should retry on EADDRINUSE). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (exited(child)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      child.off('exit', onExit);
      resolve(false);
    }, ms);
    const onExit = (): void => {
      clearTimeout(timer);
      resolve(true);
    };
    child.once('exit', onExit);
  });
}

/** Whether every thread of a process is stopped (state T in /proc/PID/task/TID/stat). */
function isStopped(pid: number): boolean {
  try {
    return fs.readdirSync(`/proc/${pid}/task`).every((tid) => {
      const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
      return state === 'T' || state === 't';
    });
  } catch {
    return false; // gone, or a thread exited while we looked
  }
}

async function waitState(pid: number, stopped: boolean): Promise<void> {
  const deadline = Date.now() + 5000;
  while (isStopped(pid) !== stopped) {
    if (Date.now() > deadline) throw new Error(`process ${pid} did not ${stopped ? 'stop' : 'continue'} within 5 s`);
    await sleep(5);
  }
}

const versions = new Map<string, string>();
function versionOf(cmd: string, pattern: RegExp): string {
  let v = versions.get(cmd);
  if (v === undefined) {
    const r = spawnSync(cmd, ['--version'], { encoding: 'utf8', timeout: 10_000 });
    v = pattern.exec(`${r.stdout ?? ''}${r.stderr ?? ''}`)?.[1] ?? 'unknown';
    versions.set(cmd, v);
  }
  return v;
}

/** Spawns `cmd args(ports)` in opts.dir until ready(ports) answers; up to 3 attempts. */
async function launch(
  name: 'etcd' | 'redis',
  cmd: string,
  opts: CommonOptions,
  portCount: number,
  args: (ports: number[]) => string[],
  ready: (ports: number[]) => Promise<boolean>,
): Promise<{ child: ChildProcess; ports: number[] }> {
  let last = '';
  for (let attempt = 0; attempt < 3; attempt++) {
    fs.rmSync(opts.dir, { recursive: true, force: true });
    fs.mkdirSync(opts.dir, { recursive: true });
    const ports: number[] = [];
    for (let i = 0; i < portCount; i++) ports.push(await freePort());
    const logPath = path.join(opts.dir, 'server.log');
    const log = fs.openSync(logPath, 'a');
    const child = spawn(cmd, args(ports), { cwd: opts.dir, stdio: ['ignore', log, log] });
    fs.closeSync(log);
    if (child.pid === undefined) {
      await new Promise((r) => child.once('error', r));
      throw new Error(`cannot start ${cmd}: is it installed?`);
    }
    opts.onSpawn?.(child);
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline && !exited(child)) {
      if (await ready(ports).catch(() => false)) return { child, ports };
      await sleep(50);
    }
    last = fs.existsSync(logPath) ? fs.readFileSync(logPath, 'utf8').split('\n').slice(-15).join('\n') : '';
    await stopChild(child);
  }
  throw new Error(`${name} did not start; its last output:\n${last}`);
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (exited(child)) return;
  child.kill('SIGCONT'); // a stopped process would not act on SIGTERM
  child.kill('SIGTERM');
  if (!(await waitExit(child, 5000))) {
    child.kill('SIGKILL');
    await waitExit(child, 5000);
  }
}

function controls(name: 'etcd' | 'redis', child: ChildProcess, dir: string, version: string): ServerProcess {
  const pid = child.pid!;
  let stopping: Promise<void> | undefined;
  return {
    name,
    pid,
    dir,
    version,
    async pause() {
      child.kill('SIGSTOP');
      await waitState(pid, true);
    },
    async resume() {
      child.kill('SIGCONT');
      await waitState(pid, false);
    },
    stop() {
      stopping ??= stopChild(child);
      return stopping;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// etcd

function etcdHealthy(endpoint: string, tlsFiles?: TlsServerFiles): Promise<boolean> {
  return new Promise((resolve) => {
    const get = tlsFiles ? https.get : http.get;
    const options: https.RequestOptions = { timeout: 1000 };
    if (tlsFiles) {
      options.ca = fs.readFileSync(tlsFiles.ca);
      if (tlsFiles.client) {
        options.cert = fs.readFileSync(tlsFiles.client.cert);
        options.key = fs.readFileSync(tlsFiles.client.key);
      }
    }
    const req = get(`${endpoint}/health`, options, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve(res.statusCode === 200 && body.includes('"health":"true"')));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
  });
}

/** A single-member etcd on free loopback ports, data in DIR/data (etcd fsyncs every commit). */
export async function startEtcd(opts: StartEtcdOptions): Promise<EtcdServer> {
  const scheme = opts.tls ? 'https' : 'http';
  const dataDir = path.join(opts.dir, 'data');
  const { child, ports } = await launch(
    'etcd',
    'etcd',
    opts,
    2,
    ([client, peerPort]) => {
      const endpoint = `${scheme}://127.0.0.1:${client}`;
      const peer = `http://127.0.0.1:${peerPort}`;
      const args = [
        '--name', 'kvfs',
        '--data-dir', dataDir,
        '--listen-client-urls', endpoint,
        '--advertise-client-urls', endpoint,
        '--listen-peer-urls', peer,
        '--initial-advertise-peer-urls', peer,
        '--initial-cluster', `kvfs=${peer}`,
        '--initial-cluster-state', 'new',
        // 8 GiB, etcd's recommended maximum; the default 2 GiB can fill up in long data runs.
        '--quota-backend-bytes', String(8 * 1024 ** 3),
        // etcd's defaults for --max-txn-ops (128) and --max-request-bytes (1.5 MiB) are kept:
        // the code must work against a stock etcd.
        '--log-level', 'warn',
        '--logger', 'zap',
      ];
      if (opts.tls) {
        args.push('--cert-file', opts.tls.cert, '--key-file', opts.tls.key, '--trusted-ca-file', opts.tls.ca);
        if (opts.tls.clientCertAuth) args.push('--client-cert-auth');
      }
      return args;
    },
    ([client]) => etcdHealthy(`${scheme}://127.0.0.1:${client}`, opts.tls),
  );
  const hostPort = `127.0.0.1:${ports[0]}`;
  return {
    ...controls('etcd', child, opts.dir, versionOf('etcd', /etcd Version: (\S+)/)),
    endpoint: `${scheme}://${hostPort}`,
    hostPort,
    dataDir,
  };
}

// ---------------------------------------------------------------------------------------------
// Redis

function redisPing(port: number, password?: string, tlsFiles?: TlsServerFiles): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = tlsFiles
      ? tls.connect({
          host: '127.0.0.1',
          port,
          ca: fs.readFileSync(tlsFiles.ca),
          ...(tlsFiles.client ? { cert: fs.readFileSync(tlsFiles.client.cert), key: fs.readFileSync(tlsFiles.client.key) } : {}),
        })
      : net.connect({ host: '127.0.0.1', port });
    let buf = '';
    const expect = password === undefined ? '+PONG' : '+OK\r\n+PONG';
    sock.setTimeout(1000, () => sock.destroy());
    sock.on(tlsFiles ? 'secureConnect' : 'connect', () => {
      if (password !== undefined) sock.write(`*2\r\n$4\r\nAUTH\r\n$${Buffer.byteLength(password)}\r\n${password}\r\n`);
      sock.write('PING\r\n');
    });
    sock.on('data', (d) => {
      buf += d.toString('utf8');
      if (buf.split('\r\n').length > (password === undefined ? 1 : 2)) {
        sock.destroy();
        resolve(buf.startsWith(expect));
      }
    });
    sock.on('error', () => resolve(false));
    sock.on('close', () => resolve(false));
  });
}

/** redis-server on a free loopback port, files in DIR. */
export async function startRedis(opts: StartRedisOptions): Promise<RedisServer> {
  const { child, ports } = await launch(
    'redis',
    'redis-server',
    opts,
    1,
    ([port]) => {
      const args = [
        ...(opts.tls ? ['--port', '0', '--tls-port', String(port)] : ['--port', String(port)]),
        '--bind', '127.0.0.1',
        '--dir', opts.dir,
        '--save', '',
        ...(opts.appendonly ? ['--appendonly', 'yes', '--appendfsync', opts.appendonly] : ['--appendonly', 'no']),
        '--daemonize', 'no',
        '--loglevel', 'warning',
      ];
      if (opts.password !== undefined) args.push('--requirepass', opts.password);
      if (opts.tls) {
        args.push('--tls-cert-file', opts.tls.cert, '--tls-key-file', opts.tls.key, '--tls-ca-cert-file', opts.tls.ca);
        args.push('--tls-auth-clients', opts.tls.authClients ? 'yes' : 'no');
      }
      return args;
    },
    ([port]) => redisPing(port, opts.password, opts.tls),
  );
  return {
    ...controls('redis', child, opts.dir, versionOf('redis-server', /v=(\S+)/)),
    url: `${opts.tls ? 'rediss' : 'redis'}://127.0.0.1:${ports[0]}`,
    port: ports[0],
  };
}


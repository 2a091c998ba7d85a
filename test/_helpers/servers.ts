// Real etcd and Redis servers for tests, on free loopback ports, each in its own temp dir.
//
// Every server started here is registered in a module-level set. Three layers make sure none
// outlives the test process: tests call stop() (usually in test.after.always); a process 'exit'
// handler SIGKILLs whatever is left; and a tiny detached watchdog shell per server SIGKILLs it
// when the test process disappears without running exit handlers (e.g. SIGKILL of the worker).
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tls from 'node:tls';

export interface ServerProcess {
  readonly pid: number;
  /**
   * SIGSTOP the server: it keeps its sockets open but answers nothing (for timeout tests).
   * Resolves once the kernel reports every thread stopped; await it before relying on it.
   */
  pause(): Promise<void>;
  /** SIGCONT a paused server; resolves once it runs again. */
  resume(): Promise<void>;
  /** SIGTERM (after SIGCONT), SIGKILL after 5 s, wait for exit, remove the temp dir. Idempotent. */
  stop(): Promise<void>;
}

export interface EtcdServer extends ServerProcess {
  /** 'http://127.0.0.1:PORT' */
  readonly endpoint: string;
  /** '127.0.0.1:PORT' (for etcd:// URLs) */
  readonly hostPort: string;
  readonly dataDir: string;
}

export interface RedisServer extends ServerProcess {
  /** 'redis://127.0.0.1:PORT' */
  readonly url: string;
  readonly port: number;
  readonly dir: string;
}

export interface StartRedisOptions {
  /** Start with `--appendonly yes` (default false: `--save "" --appendonly no`). */
  appendonly?: boolean;
  /** `--requirepass PASSWORD` (default: none). */
  password?: string;
  /**
   * Serve TLS only (`--port 0 --tls-port PORT`) with these PEM files; `url` is then rediss://.
   * `authClients` (default false) makes Redis demand a client certificate signed by `ca`;
   * `client` is the certificate the readiness check presents then.
   */
  tls?: TlsServerFiles & { authClients?: boolean };
}

export interface StartEtcdOptions {
  /**
   * Serve clients over TLS (https:// listen URLs) with these PEM files; `endpoint` is then
   * https://. `clientCertAuth` (default false) is etcd's --client-cert-auth (a client
   * certificate signed by `ca` is required); `client` is what the readiness check presents.
   */
  tls?: TlsServerFiles & { clientCertAuth?: boolean };
}

/** PEM files of a TLS server (and of a client the readiness check may present). */
export interface TlsServerFiles {
  cert: string;
  key: string;
  ca: string;
  client?: { cert: string; key: string };
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

// ---------------------------------------------------------------------------------------------
// Registry and safety nets

interface Managed {
  child: ChildProcess;
  dir: string;
  watchdog?: ChildProcess;
}

const running = new Set<Managed>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const m of running) {
      killQuietly(m.child.pid, 'SIGKILL');
      killQuietly(m.watchdog?.pid, 'SIGKILL');
      try {
        fs.rmSync(m.dir, { recursive: true, force: true });
      } catch {
        // best effort at exit
      }
    }
    running.clear();
  });
}

function killQuietly(pid: number | undefined, signal: NodeJS.Signals): void {
  if (pid === undefined) return;
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

/** Kills the server (and removes its dir) if this process dies without running exit handlers. */
function startWatchdog(serverPid: number, dir: string): ChildProcess {
  const script =
    'while kill -0 "$2" 2>/dev/null; do ' +
    'if ! kill -0 "$1" 2>/dev/null; then kill -9 "$2" 2>/dev/null; rm -rf "$3"; exit 0; fi; ' +
    'sleep 1; done';
  const wd = spawn('sh', ['-c', script, 'kvfs-test-watchdog', String(process.pid), String(serverPid), dir], {
    detached: true,
    stdio: 'ignore',
  });
  wd.unref();
  return wd;
}

function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
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
    const tasks = fs.readdirSync(`/proc/${pid}/task`);
    return tasks.every((tid) => {
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
    await new Promise((r) => setTimeout(r, 5));
  }
}

function makeControls(m: Managed): ServerProcess {
  let stopping: Promise<void> | undefined;
  const pid = m.child.pid!;
  return {
    pid,
    pause: async () => {
      m.child.kill('SIGSTOP');
      await waitState(pid, true);
    },
    resume: async () => {
      m.child.kill('SIGCONT');
      await waitState(pid, false);
    },
    stop: () => {
      stopping ??= (async () => {
        killQuietly(m.watchdog?.pid, 'SIGTERM');
        if (m.child.exitCode === null && m.child.signalCode === null) {
          m.child.kill('SIGCONT'); // a stopped process would not act on SIGTERM
          m.child.kill('SIGTERM');
          if (!(await waitExit(m.child, 5000))) {
            m.child.kill('SIGKILL');
            await waitExit(m.child, 5000);
          }
        }
        running.delete(m);
        await fs.promises.rm(m.dir, { recursive: true, force: true });
      })();
      return stopping;
    },
  };
}

/**
 * Spawns a server and waits until ready() succeeds. Retries with new ports when the process exits
 * early (typically a port taken between freePort() and bind).
 */
async function launch(
  name: string,
  setup: () => Promise<{ cmd: string; args: string[]; dir: string; ready: () => Promise<boolean> }>,
): Promise<Managed> {
  installExitHook();
  let lastError = '';
  for (let attempt = 0; attempt < 3; attempt++) {
    const { cmd, args, dir, ready } = await setup();
    const logPath = path.join(dir, 'server.log');
    const log = fs.openSync(logPath, 'a');
    const child = spawn(cmd, args, { cwd: dir, stdio: ['ignore', log, log] });
    fs.closeSync(log);
    const m: Managed = { child, dir };
    if (child.pid === undefined) {
      await new Promise((r) => child.once('error', r));
      await fs.promises.rm(dir, { recursive: true, force: true });
      throw new Error(`cannot start ${cmd}: is it installed?`);
    }
    running.add(m);
    m.watchdog = startWatchdog(child.pid, dir);
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline && child.exitCode === null && child.signalCode === null) {
      if (await ready().catch(() => false)) return m;
      await new Promise((r) => setTimeout(r, 50));
    }
    lastError = fs.existsSync(logPath) ? fs.readFileSync(logPath, 'utf8').split('\n').slice(-15).join('\n') : '';
    await makeControls(m).stop();
  }
  throw new Error(`${name} did not start; last output:\n${lastError}`);
}

function tempDir(kind: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `kvfs-test-${kind}-`));
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

/** Starts a single-member etcd on free loopback ports in a fresh temp dir. */
export async function startEtcd(opts: StartEtcdOptions = {}): Promise<EtcdServer> {
  let endpoint = '';
  let hostPort = '';
  let dataDir = '';
  const m = await launch('etcd', async () => {
    const dir = tempDir('etcd');
    const [clientPort, peerPort] = [await freePort(), await freePort()];
    hostPort = `127.0.0.1:${clientPort}`;
    endpoint = `${opts.tls ? 'https' : 'http'}://${hostPort}`;
    dataDir = path.join(dir, 'data');
    const peer = `http://127.0.0.1:${peerPort}`;
    const args = [
      '--name', 'kvfs-test',
      '--data-dir', dataDir,
      '--listen-client-urls', endpoint,
      '--advertise-client-urls', endpoint,
      '--listen-peer-urls', peer,
      '--initial-advertise-peer-urls', peer,
      '--initial-cluster', `kvfs-test=${peer}`,
      '--initial-cluster-state', 'new',
      // 8 GiB, etcd's recommended maximum; the default 2 GiB can fill up in long data tests.
      '--quota-backend-bytes', String(8 * 1024 ** 3),
      // keep etcd's defaults for --max-txn-ops (128) and --max-request-bytes (1.5 MiB):
      // the code must work against a stock etcd.
      '--log-level', 'warn',
      '--logger', 'zap',
    ];
    if (opts.tls) {
      args.push('--cert-file', opts.tls.cert, '--key-file', opts.tls.key, '--trusted-ca-file', opts.tls.ca);
      if (opts.tls.clientCertAuth) args.push('--client-cert-auth');
    }
    const ep = endpoint;
    return { cmd: 'etcd', args, dir, ready: () => etcdHealthy(ep, opts.tls) };
  });
  return { ...makeControls(m), endpoint, hostPort, dataDir };
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

/** Starts redis-server on a free loopback port in a fresh temp dir (no persistence by default). */
export async function startRedis(opts: StartRedisOptions = {}): Promise<RedisServer> {
  let port = 0;
  let dir = '';
  const m = await launch('redis-server', async () => {
    dir = tempDir('redis');
    port = await freePort();
    const args = [
      ...(opts.tls ? ['--port', '0', '--tls-port', String(port)] : ['--port', String(port)]),
      '--bind', '127.0.0.1',
      '--dir', dir,
      '--save', '',
      '--appendonly', opts.appendonly ? 'yes' : 'no',
      '--daemonize', 'no',
      '--loglevel', 'warning',
    ];
    if (opts.password !== undefined) args.push('--requirepass', opts.password);
    if (opts.tls) {
      args.push('--tls-cert-file', opts.tls.cert, '--tls-key-file', opts.tls.key, '--tls-ca-cert-file', opts.tls.ca);
      args.push('--tls-auth-clients', opts.tls.authClients ? 'yes' : 'no');
    }
    const p = port;
    return { cmd: 'redis-server', args, dir, ready: () => redisPing(p, opts.password, opts.tls) };
  });
  return { ...makeControls(m), url: `${opts.tls ? 'rediss' : 'redis'}://127.0.0.1:${port}`, port, dir };
}

// The etcd and redis-server the lab starts for itself: free loopback ports, a directory each in
// the lab's temp dir, stopped by pid. The lab can pause them (SIGSTOP) for the stall experiment.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { sleep } from './util';

export interface LabServer {
  readonly name: 'etcd' | 'redis';
  readonly pid: number;
  readonly version: string;
  /** SIGSTOP; resolves once every thread of the process is stopped. */
  pause(): Promise<void>;
  /** SIGCONT; resolves once it runs again. */
  resume(): Promise<void>;
  stop(): Promise<void>;
}

export interface Etcd extends LabServer {
  /** '127.0.0.1:PORT' */
  hostPort: string;
}

export interface Redis extends LabServer {
  url: string;
}

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
    const onExit = () => {
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
    return false;
  }
}

async function waitState(pid: number, stopped: boolean): Promise<void> {
  const deadline = Date.now() + 5000;
  while (isStopped(pid) !== stopped) {
    if (Date.now() > deadline) throw new Error(`process ${pid} did not ${stopped ? 'stop' : 'continue'} within 5 s`);
    await sleep(5);
  }
}

function version(cmd: string, args: string[], pattern: RegExp): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 10_000 });
  return pattern.exec(`${r.stdout ?? ''}${r.stderr ?? ''}`)?.[1] ?? 'unknown';
}

async function launch(
  name: 'etcd' | 'redis',
  cmd: string,
  dir: string,
  args: (ports: number[]) => string[],
  ready: (ports: number[]) => Promise<boolean>,
  portCount: number,
  onPid: (pid: number) => void,
): Promise<{ child: ChildProcess; ports: number[] }> {
  let last = '';
  for (let attempt = 0; attempt < 3; attempt++) {
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(dir, { recursive: true });
    const ports: number[] = [];
    for (let i = 0; i < portCount; i++) ports.push(await freePort());
    const logPath = path.join(dir, 'server.log');
    const log = fs.openSync(logPath, 'a');
    const child = spawn(cmd, args(ports), { cwd: dir, stdio: ['ignore', log, log] });
    fs.closeSync(log);
    if (child.pid === undefined) {
      await new Promise((r) => child.once('error', r));
      throw new Error(`cannot start ${cmd}: is it installed? (or give the lab --meta and --data of running servers)`);
    }
    onPid(child.pid);
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline && !exited(child)) {
      if (await ready(ports).catch(() => false)) return { child, ports };
      await sleep(50);
    }
    last = fs.existsSync(logPath) ? fs.readFileSync(logPath, 'utf8').split('\n').slice(-10).join('\n') : '';
    child.kill('SIGKILL');
    await waitExit(child, 5000);
  }
  throw new Error(`${name} did not start; its last output:\n${last}`);
}

function controls(name: 'etcd' | 'redis', child: ChildProcess, ver: string): LabServer {
  const pid = child.pid!;
  let stopping: Promise<void> | undefined;
  return {
    name,
    pid,
    version: ver,
    async pause() {
      child.kill('SIGSTOP');
      await waitState(pid, true);
    },
    async resume() {
      child.kill('SIGCONT');
      await waitState(pid, false);
    },
    stop() {
      stopping ??= (async () => {
        if (exited(child)) return;
        child.kill('SIGCONT');
        child.kill('SIGTERM');
        if (!(await waitExit(child, 5000))) {
          child.kill('SIGKILL');
          await waitExit(child, 5000);
        }
      })();
      return stopping;
    },
  };
}

function etcdHealthy(hostPort: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.get(`http://${hostPort}/health`, { timeout: 1000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve(res.statusCode === 200 && body.includes('"health":"true"')));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
  });
}

/** A single-member etcd on free loopback ports; data in DIR (etcd fsyncs every commit). */
export async function startEtcd(dir: string, onPid: (pid: number) => void): Promise<Etcd> {
  const { child, ports } = await launch(
    'etcd',
    'etcd',
    dir,
    ([client, peer]) => [
      '--name', 'kvfs-lab',
      '--data-dir', path.join(dir, 'data'),
      '--listen-client-urls', `http://127.0.0.1:${client}`,
      '--advertise-client-urls', `http://127.0.0.1:${client}`,
      '--listen-peer-urls', `http://127.0.0.1:${peer}`,
      '--initial-advertise-peer-urls', `http://127.0.0.1:${peer}`,
      '--initial-cluster', `kvfs-lab=http://127.0.0.1:${peer}`,
      '--initial-cluster-state', 'new',
      '--quota-backend-bytes', String(8 * 1024 ** 3),
      '--log-level', 'warn',
      '--logger', 'zap',
    ],
    ([client]) => etcdHealthy(`127.0.0.1:${client}`),
    2,
    onPid,
  );
  return { ...controls('etcd', child, version('etcd', ['--version'], /etcd Version: (\S+)/)), hostPort: `127.0.0.1:${ports[0]}` };
}

function redisPing(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect({ host: '127.0.0.1', port });
    let buf = '';
    sock.setTimeout(1000, () => sock.destroy());
    sock.on('connect', () => sock.write('PING\r\n'));
    sock.on('data', (d) => {
      buf += d.toString('utf8');
      if (buf.includes('\r\n')) {
        sock.destroy();
        resolve(buf.startsWith('+PONG'));
      }
    });
    sock.on('error', () => resolve(false));
    sock.on('close', () => resolve(false));
  });
}

/**
 * redis-server on a free loopback port, data in DIR, with the append-only file fsynced as
 * `appendfsync` says (the lab uses 'always', so a block Redis acknowledged is on disk as a
 * block fsynced to the local disk is).
 */
export async function startRedis(dir: string, appendfsync: 'always' | 'everysec' | 'no', onPid: (pid: number) => void): Promise<Redis> {
  const { child, ports } = await launch(
    'redis',
    'redis-server',
    dir,
    ([port]) => [
      '--port', String(port),
      '--bind', '127.0.0.1',
      '--dir', dir,
      '--save', '',
      '--appendonly', 'yes',
      '--appendfsync', appendfsync,
      '--daemonize', 'no',
      '--loglevel', 'warning',
    ],
    ([port]) => redisPing(port),
    1,
    onPid,
  );
  return { ...controls('redis', child, version('redis-server', ['--version'], /v=(\S+)/)), url: `redis://127.0.0.1:${ports[0]}` };
}

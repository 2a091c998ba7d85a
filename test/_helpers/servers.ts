// Real etcd and Redis servers for tests, on free loopback ports, each in its own temp dir
// (lib/testbed/servers.ts starts them; this file adds the temp dirs and the safety nets).
//
// Every server started here is registered in a module-level set. Three layers make sure none
// outlives the test process: tests call stop() (usually in test.after.always); a process 'exit'
// handler SIGKILLs whatever is left; and a tiny detached watchdog shell per server SIGKILLs it
// when the test process disappears without running exit handlers (e.g. SIGKILL of the worker).
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as testbed from '../../lib/testbed/servers';

export { freePort, type TlsServerFiles } from '../../lib/testbed/servers';

/** A server of the testbed whose stop() also removes its temp dir. */
export type ServerProcess = testbed.ServerProcess;
export type EtcdServer = testbed.EtcdServer;
export type RedisServer = testbed.RedisServer;

export type StartEtcdOptions = Omit<testbed.StartEtcdOptions, 'dir' | 'onSpawn'>;
export interface StartRedisOptions extends Omit<testbed.StartRedisOptions, 'dir' | 'onSpawn' | 'appendonly'> {
  /** Start with `--appendonly yes --appendfsync everysec` (default false: `--save "" --appendonly no`). */
  appendonly?: boolean;
}

// ---------------------------------------------------------------------------------------------
// Registry and safety nets

interface Managed {
  child: ChildProcess;
  dir: string;
  watchdog: ChildProcess;
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

/** Runs start() in a fresh temp dir with every spawned process under the safety nets. */
async function managed<S extends testbed.ServerProcess>(kind: string, start: (dir: string, onSpawn: (child: ChildProcess) => void) => Promise<S>): Promise<S> {
  installExitHook();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `kvfs-test-${kind}-`));
  const spawned: Managed[] = [];
  const onSpawn = (child: ChildProcess): void => {
    const m: Managed = { child, dir, watchdog: startWatchdog(child.pid!, dir) };
    spawned.push(m);
    running.add(m);
  };
  const forget = (): void => {
    for (const m of spawned) {
      killQuietly(m.watchdog.pid, 'SIGTERM');
      running.delete(m);
    }
  };
  let server: S;
  try {
    server = await start(dir, onSpawn);
  } catch (err) {
    forget();
    await fs.promises.rm(dir, { recursive: true, force: true });
    throw err;
  }
  let stopping: Promise<void> | undefined;
  return {
    ...server,
    stop: () =>
      (stopping ??= (async () => {
        await server.stop();
        forget();
        await fs.promises.rm(dir, { recursive: true, force: true });
      })()),
  };
}

/** Starts a single-member etcd on free loopback ports in a fresh temp dir. */
export function startEtcd(opts: StartEtcdOptions = {}): Promise<EtcdServer> {
  return managed('etcd', (dir, onSpawn) => testbed.startEtcd({ ...opts, dir, onSpawn }));
}

/** Starts redis-server on a free loopback port in a fresh temp dir (no persistence by default). */
export function startRedis(opts: StartRedisOptions = {}): Promise<RedisServer> {
  const { appendonly, ...rest } = opts;
  return managed('redis', (dir, onSpawn) => testbed.startRedis({ ...rest, appendonly: appendonly ? 'everysec' : false, dir, onSpawn }));
}

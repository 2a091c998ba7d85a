// A mount's session: its presence in the metadata store (session/{id}, bound to a lease on etcd),
// which fences its commits and lets other mounts know it is alive. If the session is lost (cut
// off past the lease), the filesystem drops what it can no longer safely commit, and a new
// session is opened as soon as the store answers again.

import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { KvSession } from '../meta/kv';
import type { SessionInfo } from '../meta/meta';
import { keys } from '../meta/schema';
import type { Filesystem } from './fs';

const ORPHAN_SWEEP_MS = 30_000;

export interface Sessions {
  readonly info: SessionInfo;
  stop(): Promise<void>;
}

export interface SessionOptions {
  mountpoint: string;
  version: string;
  /** Seconds a session outlives its last heartbeat (etcd lease TTL; keep-alives every TTL/3). */
  ttlSeconds: number;
}

export async function startSession(fs: Filesystem, options: SessionOptions, log: (line: string) => void): Promise<Sessions> {
  const { mountpoint, version, ttlSeconds } = options;
  const kv = fs.meta.kv;
  let stopped = false;
  let info: SessionInfo = newInfo();
  function newInfo(): SessionInfo {
    return { id: randomUUID(), host: hostname(), pid: process.pid, mountpoint, version, startedAt: new Date().toISOString() };
  }

  let handle: KvSession = await kv.openSession(keys.session(info.id), Buffer.from(JSON.stringify(info)), ttlSeconds);
  await fs.start({ id: info.id, handle });

  const onLost = async (): Promise<void> => {
    if (stopped) return;
    log(`kvfs: session ${info.id} lost (cut off from the metadata store for more than ${ttlSeconds} s); dropping uncommitted writes and reconnecting`);
    fs.sessionLost(new Error(`session ${info.id} expired`));
    await handle.close().catch(() => undefined);
    for (let delay = 500; !stopped; delay = Math.min(delay * 2, 10_000)) {
      try {
        info = newInfo();
        handle = await kv.openSession(keys.session(info.id), Buffer.from(JSON.stringify(info)), ttlSeconds);
        await fs.start({ id: info.id, handle });
        log(`kvfs: new session ${info.id}`);
        void handle.lost.then(onLost);
        return;
      } catch {
        await new Promise((r) => setTimeout(r, delay));
      }
    }
  };
  void handle.lost.then(onLost);

  const sweep = () => fs.sweepOrphans().catch(() => 0);
  void sweep();
  const sweeper = setInterval(sweep, ORPHAN_SWEEP_MS);
  sweeper.unref();

  return {
    get info() {
      return info;
    },
    async stop() {
      stopped = true;
      clearInterval(sweeper);
      await handle.close().catch(() => undefined);
    },
  };
}

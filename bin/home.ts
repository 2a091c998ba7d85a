// $KVFS_HOME (default ~/.kvfs): where kvfs keeps its embedded volumes, logs and the records of
// running mount daemons.

import { createHash } from 'node:crypto';
import { accessSync, constants, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { UsageError } from '../lib/errors';

export function kvfsHome(): string {
  return process.env.KVFS_HOME || join(homedir(), '.kvfs');
}

/** What a running mount daemon records about itself in $KVFS_HOME/run. */
export interface RunRecord {
  pid: number;
  mountpoint: string;
  /** The volume's metadata URL without credentials. */
  volume: string;
  /** Unix socket of the daemon's control endpoint (status, metrics). */
  socket: string;
}

function runDir(): string {
  return join(kvfsHome(), 'run');
}

function idOf(mountpoint: string): string {
  return createHash('sha1').update(mountpoint).digest('hex').slice(0, 16);
}

/** Where a daemon serving this mountpoint puts its control socket. */
export function socketPath(mountpoint: string): string {
  return join(runDir(), `${idOf(mountpoint)}.sock`);
}

/** Records the daemon serving a mountpoint, so `kvfs umount` can wait for it and `kvfs status` find it. */
export function writeRunRecord(record: RunRecord): void {
  try {
    mkdirSync(runDir(), { recursive: true });
    writeFileSync(join(runDir(), `${idOf(record.mountpoint)}.json`), JSON.stringify(record));
  } catch {
    // Best effort: without it `kvfs umount` does not wait and `kvfs status` cannot ask the daemon.
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Records of daemons that are still running (stale ones, left by a crash, are skipped). */
export function runRecords(): RunRecord[] {
  let names: string[];
  try {
    names = readdirSync(runDir()).filter((n) => n.endsWith('.json'));
  } catch {
    return [];
  }
  const records: RunRecord[] = [];
  for (const name of names) {
    try {
      const record = JSON.parse(readFileSync(join(runDir(), name), 'utf8')) as RunRecord;
      if (alive(record.pid)) records.push(record);
    } catch {
      // A record being written or a stray file.
    }
  }
  return records;
}

export function runRecordFor(mountpoint: string): RunRecord | undefined {
  return runRecords().find((r) => r.mountpoint === mountpoint);
}

export function removeRunRecord(mountpoint: string): void {
  const record = runRecordFor(mountpoint);
  if (record && record.pid !== process.pid) return;
  rmSync(join(runDir(), `${idOf(mountpoint)}.json`), { force: true });
  rmSync(socketPath(mountpoint), { force: true });
}

export { alive as processAlive };

/**
 * The embedded default volume, $KVFS_HOME/volumes/default, as a metadata URL. Fails with one line
 * when $KVFS_HOME cannot be created or written.
 */
export function defaultMetaUrl(): string {
  const dir = join(kvfsHome(), 'volumes', 'default');
  try {
    mkdirSync(join(kvfsHome(), 'volumes'), { recursive: true });
    accessSync(join(kvfsHome(), 'volumes'), constants.W_OK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? String(err);
    throw new UsageError(`cannot write to ${kvfsHome()} (${code}); set KVFS_HOME to a writable directory, or pass --meta URL`);
  }
  return pathToFileURL(dir).href;
}

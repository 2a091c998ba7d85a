// $KVFS_HOME (default ~/.kvfs): where kvfs keeps its embedded volumes, logs and pid files.

import { createHash } from 'node:crypto';
import { accessSync, constants, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { UsageError } from '../lib/errors';

export function kvfsHome(): string {
  return process.env.KVFS_HOME || join(homedir(), '.kvfs');
}

function pidFile(mountpoint: string): string {
  const id = createHash('sha1').update(mountpoint).digest('hex').slice(0, 16);
  return join(kvfsHome(), 'run', `${id}.pid`);
}

/** Records the daemon serving a mountpoint, so `kvfs umount` can wait for it to finish. */
export function writePid(mountpoint: string): void {
  try {
    mkdirSync(join(kvfsHome(), 'run'), { recursive: true });
    writeFileSync(pidFile(mountpoint), String(process.pid));
  } catch {
    // Best effort: without it `kvfs umount` just does not wait for the daemon to exit.
  }
}

export function readPid(mountpoint: string): number | undefined {
  try {
    const pid = Number(readFileSync(pidFile(mountpoint), 'utf8'));
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

export function removePid(mountpoint: string): void {
  if (readPid(mountpoint) === process.pid) rmSync(pidFile(mountpoint), { force: true });
}

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

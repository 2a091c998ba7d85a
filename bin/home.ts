// $KVFS_HOME (default ~/.kvfs): where kvfs keeps its embedded volumes, logs and pid files.

import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

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

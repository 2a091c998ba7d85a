import { UsageError } from '../../lib/errors';
import { mountAt, unmountPath } from '../../lib/fuse/mount';
import { resolve } from 'node:path';
import { parse } from '../args';
import { processAlive, runRecordFor } from '../home';

export const help = `Usage: kvfs umount MOUNTPOINT

Unmounts a kvfs filesystem and waits (up to 60 s) for its daemon to commit
what it holds and exit. Fails if files on it are still open (EBUSY); close them,
or detach it anyway with: umount -l MOUNTPOINT

Options:
  -h, --help   show this help`;

export async function umountCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parse('umount', argv, {}, { min: 1, max: 1, names: 'a MOUNTPOINT' });
  if (values.help) return console.log(help), 0;
  const mountpoint = resolve(positionals[0]);
  const mounted = mountAt(mountpoint);
  if (!mounted) throw new UsageError(`${mountpoint} is not mounted`);
  if (mounted.fstype !== 'fuse.kvfs') throw new UsageError(`${mountpoint} is not a kvfs mount (it is ${mounted.fstype})`);
  const pid = runRecordFor(mountpoint)?.pid;
  await unmountPath(mountpoint);
  if (pid !== undefined && pid !== process.pid) {
    const deadline = Date.now() + 60_000;
    while (processAlive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    if (processAlive(pid)) throw new UsageError(`unmounted ${mountpoint}, but its daemon (pid ${pid}) is still running after 60 s`);
  }
  return 0;
}

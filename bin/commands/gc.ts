import { UsageError } from '../../lib/errors';
import { gc, idRanges } from '../../lib/fs/gc';
import { parse, parseSeconds, str } from '../args';
import { BACKEND_HELP, BACKEND_OPTIONS, resolveBackends } from '../backend-options';
import { defaultMetaUrl } from '../home';
import { openForMaintenance } from './fsck';

export const help = `Usage: kvfs gc [--meta URL] [--delete] [--grace SECONDS] [--orphans] [--json]

Finds blocks in the block store that no block map references (left by crashes
between storing a commit's blocks and committing it, by failed commits, by
'kvfs format --force') and deletes them. Dry run by default: says how many
blocks and bytes would be freed; --delete deletes them.

Safe while the volume is mounted and written: gc lists the stored blocks and
reads every block map, waits the grace period, reads the block maps again, and
deletes only blocks that were unreferenced both times and whose ids were handed
out before gc started. A commit stores its blocks before the transaction that
references them, and finishes within the mounts' --backend-timeout (default 10 s)
per request; the grace must be longer than that, so that the blocks of every
commit in flight are seen referenced by the second reading. An embedded volume
cannot be mounted while gc runs (gc holds it), so it needs no grace.

Orphans (files unlinked while open) keep their blocks until they are reclaimed:
mounts do that after the last close. --delete --orphans destroys, with their
blocks, the orphans no live mount holds open that were unlinked more than the
grace period ago (left by mounts that died); the dry run lists them.

Options:
  --meta URL         the volume (default: the embedded $KVFS_HOME/volumes/default)
  --data URL         where its blocks are, if not where the volume says
  --delete           delete the unreferenced blocks (default: dry run)
  --grace SECONDS    wait between the two readings of the block maps (default 30;
                     keep it well above the mounts' --backend-timeout)
  --orphans          with --delete, also destroy orphans nobody holds open
  --json             print the report as JSON (with every unreferenced block id)
  --backend-timeout SECONDS
                     fail when a backend does not answer in time (default 10)
  -h, --help         show this help

${BACKEND_HELP}`;

const OPTIONS = {
  ...BACKEND_OPTIONS,
  meta: { type: 'string' },
  data: { type: 'string' },
  delete: { type: 'boolean' },
  grace: { type: 'string' },
  orphans: { type: 'boolean' },
  json: { type: 'boolean' },
  'backend-timeout': { type: 'string' },
} as const;

function size(bytes: number): string {
  if (bytes >= 1024 ** 3) return `${(bytes / 1024 ** 3).toFixed(1)} GiB`;
  if (bytes >= 1024 ** 2) return `${(bytes / 1024 ** 2).toFixed(1)} MiB`;
  if (bytes >= 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${bytes} bytes`;
}

export async function gcCommand(argv: string[]): Promise<number> {
  const { values } = parse('gc', argv, OPTIONS, { min: 0, max: 0, names: '' });
  if (values.help) return console.log(help), 0;
  const backends = resolveBackends(values);
  const metaUrl = backends.metaUrl ?? defaultMetaUrl();
  const timeoutMs = parseSeconds(str(values['backend-timeout']) ?? '10', '--backend-timeout') * 1000;
  const graceMs = parseSeconds(str(values.grace) ?? '30', '--grace') * 1000;
  const doDelete = Boolean(values.delete);
  const json = Boolean(values.json);
  const volume = await openForMaintenance('gc', metaUrl, backends, timeoutMs);
  try {
    const embedded = volume.meta.kv.kind === 'sqlite';
    if (!embedded && doDelete && graceMs < 10_000) {
      console.error(
        `kvfs gc: warning: a grace of ${graceMs / 1000} s is shorter than the default backend timeout of a mount (10 s): ` +
          'a commit in flight on a slow mount could lose its blocks',
      );
    }
    if (!embedded && graceMs <= 0 && doDelete) {
      throw new UsageError('--grace must be more than 0 for a volume on etcd: mounts may be committing blocks right now');
    }
    const report = await gc(volume.meta, volume.store, volume.describe, {
      delete: doDelete,
      graceMs,
      orphans: Boolean(values.orphans),
      onProgress: (line) => console.error(line),
    });
    if (json) {
      console.log(JSON.stringify(report, null, 2));
      return 0;
    }
    console.log(
      `kvfs gc: volume ${volume.settings.name} (${volume.describe}): ${report.stored} blocks stored, ${report.referenced} referenced by block maps`,
    );
    const kept: string[] = [];
    if (report.rescued) kept.push(`${report.rescued} referenced by commits made while gc waited`);
    if (report.newer) kept.push(`${report.newer} with ids handed out after gc started`);
    if (report.foreign) kept.push(`${report.foreign} with ids kvfs does not make`);
    if (kept.length) console.log(`kvfs gc: kept unreferenced blocks: ${kept.join(', ')}`);
    const g = report.garbage;
    if (g.blocks === 0) {
      console.log('kvfs gc: no unreferenced blocks');
    } else if (report.dryRun) {
      console.log(`kvfs gc: ${g.blocks} unreferenced blocks, ${size(g.bytes)} (${g.bytes} bytes), would be deleted (ids ${idRanges(g.ids)})`);
      console.log('kvfs gc: dry run, nothing deleted; run with --delete to delete them');
    } else {
      console.log(`kvfs gc: deleted ${report.deleted.blocks} unreferenced blocks, ${size(report.deleted.bytes)} (${report.deleted.bytes} bytes) (ids ${idRanges(g.ids)})`);
    }
    for (const o of report.orphans) {
      console.log(
        `kvfs gc: orphan inode ${o.ino}: ${o.size} bytes, ${o.blocks} blocks${o.since ? `, unlinked ${o.since}` : ''}` +
          `${o.holders ? `, held open by ${o.holders} mount${o.holders === 1 ? '' : 's'}` : ''}: ${o.action}${o.error ? ` (${o.error})` : ''}`,
      );
    }
    return report.orphans.some((o) => o.action === 'failed') ? 1 : 0;
  } finally {
    await volume.close();
  }
}

import { UsageError } from '../../lib/errors';
import { CheckResult, FsckReport, fsck, kindName, Problem, ProblemKind } from '../../lib/fs/fsck';
import { openVolume, Volume } from '../../lib/fs/volume';
import { parseMetaUrl } from '../../lib/meta/index';
import { parse, parseSeconds, str } from '../args';
import { BACKEND_HELP, BACKEND_OPTIONS, Backends, resolveBackends } from '../backend-options';
import { defaultMetaUrl } from '../home';

export const help = `Usage: kvfs fsck [--meta URL] [--repair] [--json]

Checks a volume's metadata and its blocks, and reports each problem with the
path(s) involved (inodes no entry reaches are shown as <unreachable inode N>):
  - dangling entries: a directory entry whose inode has no attributes
  - link counts: of files (the number of entries naming them) and of directories
    (2 + subdirectories), a directory's recorded parent, entries with a wrong type
  - block maps naming blocks that are missing from the block store (path, block
    index and id), block references longer than the block size or beyond the end
    of the file, and a file's bytes used that differ from its block map
  - inodes no entry reaches, keys of inodes that have no attributes, counters
    behind the numbers in use
Orphans (files unlinked while open, waiting for their last close) are listed
separately: they are not damage.

Exit status: 0 when the volume is clean, 1 when problems were found; with
--repair, 0 when none are left after the repairs, 1 when some are.

Options:
  --meta URL     the volume (default: the embedded $KVFS_HOME/volumes/default)
  --data URL     where its blocks are, if not where the volume says
  --repair       fix what can be fixed safely, and say what was left:
                   dangling entries are deleted; link counts, bytes used and a
                   directory's parent are set to what the tree says; unreachable
                   inodes are moved into /lost+found (created, mode 0700) as #INO;
                   references to missing blocks are removed (those bytes then
                   read as zeros: fsck says where data was lost); references
                   beyond the end of a file are dropped (kvfs gc frees the blocks).
                 Data blocks are never deleted. Each repair is one transaction
                 that re-reads what it depends on; what changed meanwhile is left.
                 An embedded volume must not be mounted (fsck needs it to itself);
                 stop the mounts of an etcd volume before repairing it too.
  --json         print the report as JSON
  --backend-timeout SECONDS
                 fail when a backend does not answer in time (default 10)
  -h, --help     show this help

${BACKEND_HELP}`;

const OPTIONS = {
  ...BACKEND_OPTIONS,
  meta: { type: 'string' },
  data: { type: 'string' },
  repair: { type: 'boolean' },
  json: { type: 'boolean' },
  'backend-timeout': { type: 'string' },
} as const;

/** Opens a volume for fsck or gc; an embedded volume that is mounted gives one clear line. */
export async function openForMaintenance(command: string, metaUrl: string, backends: Backends, timeoutMs: number): Promise<Volume> {
  try {
    return await openVolume(metaUrl, { timeoutMs, dataUrl: backends.dataUrl, meta: backends.meta, data: backends.data });
  } catch (err) {
    if (err instanceof UsageError && /in use by another kvfs process/.test(err.message)) {
      throw new UsageError(
        `volume ${parseMetaUrl(metaUrl, backends.meta).describe} is in use by another kvfs process (mounted?); an embedded volume serves one process at a time: unmount it, then run kvfs ${command}`,
      );
    }
    throw err;
  }
}

function counts(problems: Problem[]): string {
  const byKind = new Map<ProblemKind, number>();
  for (const p of problems) byKind.set(p.kind, (byKind.get(p.kind) ?? 0) + 1);
  return [...byKind].map(([kind, n]) => `${n} ${kindName(kind, n)}`).join(', ');
}

function problemLine(p: Problem): string {
  return `${kindName(p.kind, 1)}: ${p.message}`;
}

function printCheck(result: CheckResult, round: number): void {
  if (round > 1) console.log(`kvfs fsck: checking again after the repairs (round ${round}):`);
  for (const p of result.problems) console.log(problemLine(p));
}

export async function fsckCommand(argv: string[]): Promise<number> {
  const { values } = parse('fsck', argv, OPTIONS, { min: 0, max: 0, names: '' });
  if (values.help) return console.log(help), 0;
  const backends = resolveBackends(values);
  const metaUrl = backends.metaUrl ?? defaultMetaUrl();
  const timeoutMs = parseSeconds(str(values['backend-timeout']) ?? '10', '--backend-timeout') * 1000;
  const repair = Boolean(values.repair);
  const json = Boolean(values.json);
  const volume = await openForMaintenance('fsck', metaUrl, backends, timeoutMs);
  let report: FsckReport;
  try {
    if (repair && volume.meta.kv.kind !== 'sqlite') {
      const sessions = await volume.meta.sessions().catch(() => []);
      console.error(
        `kvfs fsck: warning: repairing ${volume.describe}, which other hosts may have mounted; stop its mounts for repairs ` +
          `(each repair re-reads what it changes, but a mount may act on what it cached before)` +
          (sessions.length ? `. Mounted now: ${sessions.map((s) => `${s.host}:${s.mountpoint} (pid ${s.pid})`).join(', ')}` : ''),
      );
    }
    if (!json) console.log(`kvfs fsck: checking volume ${volume.settings.name} (${volume.describe})${repair ? ', repairing' : ''}`);
    report = await fsck(volume.meta, volume.store, volume.describe, {
      repair,
      onProgress: (line) => console.error(line),
      onCheck: json ? undefined : printCheck,
      onRepair: json ? undefined : (p) => console.log(`${p.repair!.status === 'repaired' ? 'repaired' : 'left'}: ${kindName(p.kind, 1)} ${p.path}: ${p.repair!.detail}`),
    });
  } finally {
    await volume.close();
  }

  if (json) {
    console.log(JSON.stringify(report, null, 2));
  } else {
    const first = report.rounds[0];
    const s = first.stats;
    for (const o of first.orphans) {
      console.log(
        `orphan pending reclaim: ${o.path}, ${o.size} bytes, ${o.used} bytes in blocks` +
          (o.since ? `, unlinked ${o.since}` : '') +
          (o.holders ? `, held open by ${o.holders} mount${o.holders === 1 ? '' : 's'}` : ', not held open (a mount or kvfs gc --delete --orphans reclaims it)'),
      );
    }
    console.log(
      `kvfs fsck: checked ${s.inodes} inodes (${s.dirs} directories, ${s.files} files), ${s.entries} entries, ${s.blockRefs} block references (a block with its parts counts once), ${s.storedBlocks} stored objects (blocks and parts)`,
    );
    const found = report.rounds.flatMap((r) => r.problems);
    const orphans = first.orphans.length ? `; ${first.orphans.length} orphan${first.orphans.length === 1 ? '' : 's'} pending reclaim` : '';
    if (found.length === 0) {
      console.log(`kvfs fsck: no problems${orphans}`);
    } else if (!repair) {
      console.log(`kvfs fsck: ${found.length} problem${found.length === 1 ? '' : 's'} (${counts(found)})${orphans}; run kvfs fsck --repair to fix what can be fixed`);
    } else {
      console.log(`kvfs fsck: ${found.length} problem${found.length === 1 ? '' : 's'} found (${counts(found)}), ${report.repaired} repaired, ${report.left.length} left${orphans}`);
      for (const p of report.left) console.log(`  left: ${problemLine(p)} (${p.repair?.detail ?? ''})`);
    }
  }
  return report.left.length ? 1 : 0;
}

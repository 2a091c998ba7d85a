import { UsageError } from '../../lib/errors';
import { openVolume, VolumeStatus, volumeStatus } from '../../lib/fs/volume';
import { parseMetaUrl } from '../../lib/meta/index';
import { askControl } from '../control';
import { formatSize, parse, parseSeconds, str } from '../args';
import { BACKEND_HELP, BACKEND_OPTIONS, resolveBackends } from '../backend-options';
import { defaultMetaUrl, runRecords } from '../home';

export const help = `Usage: kvfs status [--meta URL] [--json]

Shows a volume's settings, the space and number of files it uses, and the mounts
of it running on this host. For an embedded volume that is mounted, the mount
daemon answers (it holds the volume).

Options:
  --meta URL     the volume (default: $KVFS_META, else the embedded
                 $KVFS_HOME/volumes/default)
  --data URL     where its blocks are, if not at the URL recorded by format
                 (default: $KVFS_DATA, else the recorded URL)
  --json         print the status as JSON
  --backend-timeout SECONDS
                 fail when a backend does not answer in time (default 10)
  -h, --help     show this help

${BACKEND_HELP}`;

const OPTIONS = {
  ...BACKEND_OPTIONS,
  meta: { type: 'string' },
  data: { type: 'string' },
  json: { type: 'boolean' },
  'backend-timeout': { type: 'string' },
} as const;

interface Mount {
  pid: number;
  mountpoint: string;
}

function print(status: VolumeStatus, mounts: Mount[]): void {
  const s = status.settings;
  const u = status.usage;
  const rows: Array<[string, string]> = [
    ['volume', s.name],
    ['uuid', s.uuid],
    ['metadata', `${status.meta.url} (${status.meta.engine})`],
    ['data', `${status.data.url} (${status.data.engine})`],
    ['block size', formatSize(s.blockSize)],
    ['format', `version ${s.formatVersion}, created ${s.createdAt}`],
    ['files', `${u.files} files, ${u.dirs} directories, ${u.symlinks} symlinks, ${u.others} other`],
    ['used', `${u.bytes} bytes of file data; the store holds ${status.data.blocks} blocks, ${status.data.bytes} bytes`],
  ];
  if (u.orphans) rows.push(['orphans', `${u.orphans} unlinked inodes waiting to be reclaimed`]);
  for (const [k, v] of rows) console.log(`${(k + ':').padEnd(13)} ${v}`);
  // Sessions are what the volume itself knows (every host, for etcd); run records what this host knows.
  const sessions = status.sessions ?? [];
  console.log(`mounts:       ${sessions.length === 0 ? (mounts.length ? mounts.map((m) => `${m.mountpoint} (pid ${m.pid})`).join(', ') : 'none') : sessions.length}`);
  for (const m of sessions) console.log(`  ${m.host}:${m.mountpoint}  pid ${m.pid}  since ${m.startedAt}  kvfs ${m.version}  session ${m.id}`);
  if (status.warning) console.log(`warning:      ${status.warning}`);
}

export async function statusCommand(argv: string[]): Promise<number> {
  const { values } = parse('status', argv, OPTIONS, { min: 0, max: 0, names: '' });
  if (values.help) return console.log(help), 0;
  const backends = resolveBackends(values);
  const metaUrl = backends.metaUrl ?? defaultMetaUrl();
  const describe = parseMetaUrl(metaUrl, backends.meta).describe;
  const timeoutMs = parseSeconds(str(values['backend-timeout']) ?? '10', '--backend-timeout') * 1000;
  const mounts = runRecords().filter((r) => r.volume === describe);

  let status: VolumeStatus;
  try {
    const volume = await openVolume(metaUrl, { timeoutMs, dataUrl: backends.dataUrl, meta: backends.meta, data: backends.data });
    try {
      status = await volumeStatus(volume);
    } finally {
      await volume.close();
    }
  } catch (err) {
    // An embedded volume in use: ask the daemon that holds it.
    if (!(err instanceof UsageError) || !/in use by another kvfs process/.test(err.message) || mounts.length === 0) throw err;
    status = await askControl<VolumeStatus>(mounts[0].socket, '/status');
  }
  if (values.json) console.log(JSON.stringify({ ...status, mounts: mounts.map(({ pid, mountpoint }) => ({ pid, mountpoint })) }, null, 2));
  else print(status, mounts);
  return 0;
}

import { UsageError } from '../../lib/errors';
import { formatVolume } from '../../lib/fs/volume';
import { formatSize, parse, parseSeconds, parseSize, str } from '../args';
import { BACKEND_HELP, BACKEND_OPTIONS, resolveBackends } from '../backend-options';
import { defaultMetaUrl } from '../home';

export const help = `Usage: kvfs format [--meta URL --data URL] [options]

Creates a volume: its settings (data URL, block size, uuid, format version,
creation time; with --encrypt the cipher and a check value of the key, never the
key) and an empty root directory are stored under the volume's own
prefix in the metadata store, so several volumes can share one etcd and one
Redis. Refuses to replace an existing volume unless --force.

Options:
  --meta URL          where the volume's metadata lives:
                      etcd://[USER@]HOST:PORT[,HOST:PORT...]/VOLUME (TLS:
                      etcd+https://...), or embedded (one host, no servers)
                      file:///ABSOLUTE/DIR/VOLUME. Default: $KVFS_META, else
                      the embedded volume $KVFS_HOME/volumes/default
                      ($KVFS_HOME defaults to ~/.kvfs)
  --data URL          where its blocks live: redis://[USER@]HOST:PORT[/DB]
                      (TLS: rediss://...); default $KVFS_DATA. The volume
                      records it without its password. Needed for etcd;
                      embedded volumes keep blocks in their own directory
  --block-size SIZE   size of a data block, 64K to 4M (default 1M)
  --encrypt           encrypt every block with AES-256-GCM before it leaves the
                      daemon, with the key from --key-file FILE (or
                      KVFS_KEY_FILE, KVFS_KEY): 32 bytes as 64 hex digits, made
                      with  openssl rand -hex 32 > FILE; chmod 600 FILE
                      Every mount of the volume then needs the key (fsck only to
                      repair a shared block; status and gc never). Keep a copy:
                      without the key the data cannot be read by anyone.
                      Names, sizes, owners, modes, times and xattrs stay in
                      clear in the metadata store (see docs/security.md)
  --force             replace an existing volume of that name (its files are
                      lost; run 'kvfs gc' later to free its blocks)
  --backend-timeout SECONDS
                      fail when a backend does not answer in time (default 10)
  -h, --help          show this help

${BACKEND_HELP}`;

const OPTIONS = {
  ...BACKEND_OPTIONS,
  meta: { type: 'string' },
  data: { type: 'string' },
  'block-size': { type: 'string' },
  force: { type: 'boolean' },
  encrypt: { type: 'boolean' },
  'backend-timeout': { type: 'string' },
} as const;

export async function formatCommand(argv: string[]): Promise<number> {
  const { values } = parse('format', argv, OPTIONS, { min: 0, max: 0, names: '' });
  if (values.help) return console.log(help), 0;
  const backends = resolveBackends(values);
  const metaUrl = backends.metaUrl ?? defaultMetaUrl();
  const dataUrl = backends.dataUrl;
  const blockSize = parseSize(str(values['block-size']) ?? '1M', '--block-size');
  if (blockSize < 64 * 1024 || blockSize > 4 * 1024 * 1024 || (blockSize & (blockSize - 1)) !== 0) {
    throw new UsageError(`--block-size must be a power of two from 64K to 4M, not ${formatSize(blockSize)}`);
  }
  const timeoutMs = parseSeconds(str(values['backend-timeout']) ?? '10', '--backend-timeout') * 1000;
  const key = backends.data.key;
  if (values.encrypt && !key) {
    throw new UsageError(
      'kvfs format --encrypt needs a key: --key-file FILE, KVFS_KEY_FILE=FILE or KVFS_KEY=HEX, 64 hex digits (make one with: openssl rand -hex 32 > FILE; chmod 600 FILE)',
    );
  }
  if (!values.encrypt && key) {
    throw new UsageError(`a key was given (${key.from}) but not --encrypt: add --encrypt to make an encrypted volume, or leave the key out`);
  }
  const settings = await formatVolume(metaUrl, {
    dataUrl,
    blockSize,
    force: Boolean(values.force),
    encrypt: key,
    timeoutMs,
    meta: backends.meta,
    data: backends.data,
    uid: process.getuid?.() ?? 0,
    gid: process.getgid?.() ?? 0,
  });
  const encrypted = settings.encryption ? `, blocks encrypted with ${settings.encryption.cipher} (key from ${key?.from})` : '';
  console.log(`kvfs: formatted volume ${settings.name} (uuid ${settings.uuid}, block size ${formatSize(blockSize)}, data at ${settings.dataUrl}${encrypted})`);
  return 0;
}

import { spawn } from 'node:child_process';
import { mkdirSync, openSync, readFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { UsageError } from '../../lib/errors';
import { Filesystem } from '../../lib/fs/fs';
import { openVolume, volumeStatus } from '../../lib/fs/volume';
import { Metrics } from '../../lib/fs/metrics';
import { startSession } from '../../lib/fs/session';
import { checkMountpoint, mount } from '../../lib/fuse/mount';
import { formatSize, parse, parseSeconds, parseSize, str } from '../args';
import { BACKEND_HELP, BACKEND_OPTIONS, backgroundLaunch, resolveBackends } from '../backend-options';
import { defaultMetaUrl, kvfsHome, removeRunRecord, socketPath, writeRunRecord } from '../home';
import { serveControl } from '../control';

export const help = `Usage: kvfs mount [--meta URL] MOUNTPOINT [options]

Mounts a volume made by 'kvfs format'. Without --meta (or $KVFS_META) it mounts
the embedded default volume $KVFS_HOME/volumes/default, creating it on first use. Runs in the foreground, prints one line
when the mount is ready, and stays until the filesystem is unmounted (umount,
fusermount3 -u, kvfs umount) or it gets SIGINT/SIGTERM; then it commits what it
holds, unmounts and exits 0.

Options:
  --meta URL            the volume: etcd://[USER@]HOST:PORT[,HOST:PORT...]/VOLUME
                        (TLS: etcd+https://...) or file:///ABSOLUTE/DIR/VOLUME
                        (embedded, one daemon at a time). Default: $KVFS_META
  --data URL            where blocks live, overriding the URL recorded by format
                        (another host may reach Redis at another address):
                        redis://[USER@]HOST:PORT[/DB] or rediss://... (TLS).
                        Default: $KVFS_DATA, else the recorded URL
  -d, --background      return once the mount is ready; the daemon keeps running
                        and logs to --log
  --log FILE            log file in the background (default
                        $KVFS_HOME/log/mount-NAME.log)
  --no-allow-other      only the mounting user may use the mount (default: every
                        user may, with permissions checked as on a disk, when
                        root mounts, or another user and /etc/fuse.conf has
                        user_allow_other; otherwise only the mounting user)
  --read-only           refuse every change with EROFS
  --attr-cache SECONDS  how long the daemon trusts cached attributes before asking
                        the metadata store again (default 1; 0 = always ask).
                        Changes made through this mount are seen at once; changes
                        made by other mounts within this time.
  --entry-cache SECONDS the same for name lookups (default 1)
  --kernel-cache SECONDS
                        how long the kernel caches attributes and names without
                        asking the daemon (default 0). Above 0 saves a round trip
                        into the daemon per lookup/stat, but breaks close-to-open
                        across mounts: an open() after another mount's close() may
                        see the old size and content for up to this long (kvfs lab
                        measured 1 s behind with 1). Two hard links to one file may
                        also show different link counts or times for that long
                        (libfuse2's path API gives each name its own kernel inode).
  --cache-size SIZE     memory for blocks read (default 256M): cached blocks,
                        blocks fetched ahead of a sequential reader (up to a
                        quarter) and spare block buffers (an eighth, at most 64M)
  --writeback on|off    on (default): writes return once copied into memory and
                        are committed on fsync, close, --flush-interval or
                        --max-dirty; what was neither fsynced nor closed is lost if
                        the daemon dies. off: every write is committed before it
                        returns (slow; for comparison)
  --flush-interval SECONDS
                        commit data that has been dirty this long even if the
                        file stays open (default 5); the commit starts at the
                        latest this long after the oldest uncommitted write
  --max-dirty SIZE      uncommitted data all open files may hold; writers then
                        wait for commits (default 512M)
  --locks global|local  global (default): fcntl/lockf and flock locks hold across
                        every mount of the volume (kept in the metadata store; each
                        lock change is a transaction, and locks of a mount that died
                        go with its session). local: the kernel arbitrates them on
                        this mount alone (faster; processes on other mounts do not
                        see them)
  --direct-io           no kernel page cache for file data: every read and write
                        goes to the daemon. Needed when processes on different
                        mounts keep one file open and take turns under locks
                        (SQLite with journal_mode DELETE or TRUNCATE on several
                        hosts): otherwise a file kept open may read pages another
                        mount has since changed. Shared mmap then fails (ENODEV),
                        so SQLite's WAL mode cannot be used on such a mount
  --session-ttl SECONDS how long this mount stays registered after it stops
                        answering (crash, cut off); after that other mounts reclaim
                        files it held open, and its uncommitted writes are refused
                        (default 20)
  --backend-timeout SECONDS
                        a backend request not answered in this time fails the
                        operation with ETIMEDOUT (default 10)
  -h, --help            show this help

${BACKEND_HELP}

With -d, the daemon gets any password through its environment, never on its
command line.

An encrypted volume (kvfs format --encrypt) needs its key: --key-file FILE, or
KVFS_KEY_FILE / KVFS_KEY. Without it, with a wrong key, or with a key for a
volume that is not encrypted, the mount fails with one line and exit code 1
before anything is mounted. Blocks are sealed (AES-256-GCM) before they leave
the daemon; a block that fails authentication (changed, or swapped with another,
in the block store) makes the read fail with EIO, never return wrong data.`;

const OPTIONS = {
  ...BACKEND_OPTIONS,
  meta: { type: 'string' },
  data: { type: 'string' },
  background: { type: 'boolean', short: 'd' },
  log: { type: 'string' },
  'no-allow-other': { type: 'boolean' },
  'read-only': { type: 'boolean' },
  'attr-cache': { type: 'string' },
  'entry-cache': { type: 'string' },
  'kernel-cache': { type: 'string' },
  'cache-size': { type: 'string' },
  writeback: { type: 'string' },
  'flush-interval': { type: 'string' },
  'max-dirty': { type: 'string' },
  'backend-timeout': { type: 'string' },
  'session-ttl': { type: 'string' },
  locks: { type: 'string' },
  'direct-io': { type: 'boolean' },
} as const;

/**
 * Whether this process may mount with allow_other: root may; another user only when
 * /etc/fuse.conf has `user_allow_other` (fusermount refuses it otherwise, and the mount fails).
 */
function mayAllowOther(): boolean {
  if (process.getuid?.() === 0) return true;
  try {
    return readFileSync('/etc/fuse.conf', 'utf8')
      .split('\n')
      .some((line) => line.replace(/#.*/, '').trim() === 'user_allow_other');
  } catch {
    return false;
  }
}

/**
 * -d: start this same command as a detached daemon and return when it reports the mount ready.
 * Passwords typed into --meta/--data URLs reach the daemon through its environment
 * (KVFS_META_PASSWORD / KVFS_DATA_PASSWORD), so its command line, which `ps` shows to every
 * user for as long as it runs, holds none.
 */
async function startInBackground(argv: string[], mountpoint: string, logFile: string | undefined): Promise<number> {
  const log = logFile ?? join(kvfsHome(), 'log', `mount-${basename(mountpoint) || 'root'}.log`);
  mkdirSync(resolve(log, '..'), { recursive: true });
  const out = openSync(log, 'a');
  const { args, env } = backgroundLaunch(argv, ['-d', '--background']);
  const child = spawn(process.execPath, [require.main?.filename ?? process.argv[1], 'mount', ...args], {
    detached: true,
    env,
    stdio: ['ignore', out, out, 'ipc'],
  });
  return new Promise((done) => {
    child.on('message', (msg: { ready?: string }) => {
      if (msg.ready) {
        console.log(`${msg.ready} (pid ${child.pid}, log ${log})`);
        child.disconnect();
        child.unref();
        done(0);
      }
    });
    child.on('exit', (code) => {
      const lines = readFileSync(log, 'utf8').trim().split('\n');
      console.error(lines[lines.length - 1] || `kvfs: the mount daemon exited with code ${code}`);
      done(1);
    });
  });
}

export async function mountCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parse('mount', argv, OPTIONS, { min: 1, max: 1, names: 'a MOUNTPOINT' });
  if (values.help) return console.log(help), 0;
  const backends = resolveBackends(values);
  const metaGiven = backends.metaUrl;
  const attrCache = parseSeconds(str(values['attr-cache']) ?? '1', '--attr-cache');
  const entryCache = parseSeconds(str(values['entry-cache']) ?? '1', '--entry-cache');
  const kernelCache = parseSeconds(str(values['kernel-cache']) ?? '0', '--kernel-cache');
  const cacheBytes = parseSize(str(values['cache-size']) ?? '256M', '--cache-size');
  const locks = str(values.locks) ?? 'global';
  if (locks !== 'global' && locks !== 'local') throw new UsageError(`--locks takes global or local, not '${locks}'`);
  const writeback = str(values.writeback) ?? 'on';
  if (writeback !== 'on' && writeback !== 'off') throw new UsageError(`--writeback takes on or off, not '${writeback}'`);
  const flushInterval = parseSeconds(str(values['flush-interval']) ?? '5', '--flush-interval');
  const maxDirty = parseSize(str(values['max-dirty']) ?? '512M', '--max-dirty');
  if (maxDirty < 1024 * 1024) throw new UsageError('--max-dirty must be at least 1M');
  const sessionTtl = parseSeconds(str(values['session-ttl']) ?? '20', '--session-ttl');
  if (sessionTtl < 2) throw new UsageError('--session-ttl must be at least 2 seconds');
  const backendTimeout = parseSeconds(str(values['backend-timeout']) ?? '10', '--backend-timeout');
  if (backendTimeout <= 0) throw new UsageError('--backend-timeout must be more than 0');

  // Cheap local checks first, so bad input fails before any connection is made.
  const mountpoint = checkMountpoint(positionals[0]);
  if (values.background) return startInBackground(argv, mountpoint, str(values.log));

  const metaUrl = metaGiven ?? defaultMetaUrl();
  const metrics = new Metrics();
  // While a backend is down every request fails at once (lib/stall-gate.ts): one line per kind of
  // failure every few seconds, with a count, instead of one per request.
  const failureLog = new RateLimitedLog((line) => console.error(`kvfs: ${line}`), 5000);
  const volume = await openVolume(metaUrl, {
    metrics,
    dataUrl: backends.dataUrl,
    meta: backends.meta,
    data: backends.data,
    timeoutMs: backendTimeout * 1000,
    requireKey: true,
    onAuthFailure: (_id, err) => console.error(`kvfs: ${err.message.replace(/^EIO: /, '')} (reads of it fail with EIO)`),
    // Zero set-up: the default embedded volume is created on first mount.
    createIfMissing: metaGiven
      ? undefined
      : {
          blockSize: 1024 * 1024,
          uid: process.getuid?.() ?? 0,
          gid: process.getgid?.() ?? 0,
          onCreate: (s) => console.log(`kvfs: created the default volume '${s.name}' in ${metaUrl.replace(/^file:\/\//, '')}`),
        },
  });
  const fs = new Filesystem(volume.meta, volume.store, {
    attrCacheMs: attrCache * 1000,
    entryCacheMs: entryCache * 1000,
    readOnly: Boolean(values['read-only']),
    cacheBytes,
    commitThreshold: 64 * 1024 * 1024,
    writeback: writeback === 'on',
    maxDirty,
    flushIntervalMs: flushInterval * 1000,
  });
  // The session first: it fences every commit and must exist before the first operation arrives.
  const version = (require('../../../package.json') as { version: string }).version;
  let sessions;
  let mounted;
  try {
    sessions = await startSession(fs, { mountpoint, version, ttlSeconds: Math.round(sessionTtl) }, (line) => console.error(line));
    mounted = await mount(fs, mountpoint, {
      source: `kvfs:${volume.settings.name}`,
      allowOther: !values['no-allow-other'] && mayAllowOther(),
      readOnly: Boolean(values['read-only']),
      attrTimeout: kernelCache,
      entryTimeout: kernelCache,
      // Longer than the backend timeout, so the daemon's own error (with its errno) wins.
      opTimeout: backendTimeout * 2 + 5,
      locks,
      directIo: Boolean(values['direct-io']),
      metrics,
      observe: (op, errno, ms) => {
        if (errno === 5 || errno === 110) failureLog.report(`${op} failed with errno ${errno}`, ` after ${ms.toFixed(0)} ms`);
      },
    });
  } catch (err) {
    await fs.close().catch(() => undefined);
    await sessions?.stop();
    await volume.close();
    throw err;
  }
  const warning = await volume.store.durabilityWarning().catch(() => undefined);
  if (warning) console.error(`kvfs: warning: ${warning}`);
  const socket = socketPath(mountpoint);
  await serveControl(socket, {
    '/status': () => volumeStatus(volume),
    '/metrics': async () => metrics.snapshot(),
    '/metrics/reset': async () => (metrics.reset(), metrics.snapshot()),
  }).catch((err) =>
    console.error(`kvfs: no control socket (${(err as Error).message}); kvfs status cannot ask this daemon`),
  );
  writeRunRecord({ pid: process.pid, mountpoint, volume: volume.describe, socket });
  const encrypted = volume.settings.encryption ? `, blocks encrypted with ${volume.settings.encryption.cipher}` : '';
  const ready = `kvfs: mounted ${volume.describe} (block size ${formatSize(volume.settings.blockSize)}${encrypted}) at ${mountpoint}`;
  console.log(ready);
  if (process.send) {
    process.send({ ready });
    process.disconnect?.();
  }

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    console.error(`kvfs: ${signal}: committing and unmounting ${mountpoint}`);
    await fs.flushAll().catch((err) => console.error(`kvfs: commit before unmount failed: ${(err as Error).message}`));
    try {
      await mounted.unmount(false);
    } catch {
      // Busy: detach it; files still open on it then fail with ENOTCONN once we exit.
      await mounted.unmount(true).catch((err) => console.error(`kvfs: ${(err as Error).message}`));
    }
  };
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('unhandledRejection', (err) => console.error(`kvfs: unexpected error: ${(err as Error)?.stack ?? err}`));

  await mounted.gone;
  let code = 0;
  try {
    await fs.close();
  } catch (err) {
    console.error(`kvfs: could not commit everything before exit: ${(err as Error).message}`);
    code = 1;
  }
  await sessions.stop();
  await volume.close().catch(() => undefined);
  removeRunRecord(mountpoint);
  return code;
}

/** Logs a line per key at most every `intervalMs`; the next one says how many were held back. */
class RateLimitedLog {
  private readonly last = new Map<string, { at: number; held: number }>();

  constructor(
    private readonly write: (line: string) => void,
    private readonly intervalMs: number,
  ) {}

  report(key: string, detail: string): void {
    const now = Date.now();
    const seen = this.last.get(key);
    if (seen && now - seen.at < this.intervalMs) {
      seen.held++;
      return;
    }
    const held = seen?.held ? ` (and ${seen.held} more like it in the last ${Math.round((now - seen.at) / 1000)} s)` : '';
    this.write(`${new Date(now).toISOString()} ${key}${detail}${held}`);
    this.last.set(key, { at: now, held: 0 });
  }
}

// Opening and formatting a volume by URL: the metadata engine, its settings, and the block store
// the settings point to.

import { randomUUID } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import { FsError, UsageError } from '../errors';
import { openBlockStore, stripPassword, type BackendSecurity, type DataSecurity } from '../data/index';
import { CIPHER, EncryptedBlocks, encryptionSettings, keyMatches, type EncryptionKey, type EncryptionSettings } from '../data/encrypted';
import type { BlockStore } from '../data/store';
import { openKv, parseMetaUrl } from '../meta/index';
import { Meta, SessionInfo, VolumeSummary } from '../meta/meta';
import type { Metrics } from './metrics';
import { FORMAT_VERSION, VolumeSettings } from '../meta/schema';

export interface Volume {
  meta: Meta;
  store: BlockStore;
  settings: VolumeSettings;
  /** The metadata URL without credentials, for messages. */
  describe: string;
  /** Where the blocks are (may hold credentials: redact before showing). */
  dataUrl: string;
  close(): Promise<void>;
}

/** Passwords and TLS material for the two backends, and the encryption key (never stored, never shown). */
export interface VolumeSecurity {
  meta?: BackendSecurity;
  data?: DataSecurity;
}

export interface OpenOptions extends VolumeSecurity {
  /** Overrides the data URL recorded at format time. */
  dataUrl?: string;
  /** Bound on every backend request, ms. */
  timeoutMs: number;
  /** Times every backend call (for the daemon's /metrics). */
  metrics?: Metrics;
  /**
   * An encrypted volume without a key is an error (mount). Otherwise (fsck, gc, status) it opens
   * with a locked block store: listing, deleting, sizes, usage and whether a block exists work;
   * reading a stored block's contents or writing one fails with EACCES saying the key is needed. A wrong key, or a key for a volume that is not
   * encrypted, is always an error.
   */
  requireKey?: boolean;
  /** Encrypted volumes: told once per block that fails authentication (reads of it get EIO). */
  onAuthFailure?: (id: string, err: FsError) => void;
  /** Format the volume first if it does not exist (the zero-set-up embedded default). */
  createIfMissing?: { blockSize: number; uid: number; gid: number; onCreate(settings: VolumeSettings): void };
}

/** The embedded block store lives beside the embedded metadata, in the volume's directory. */
function embeddedDataUrl(metaUrl: string, security?: BackendSecurity): string | undefined {
  const parsed = parseMetaUrl(metaUrl, security);
  return parsed.scheme === 'file' ? pathToFileURL(parsed.dir).href : undefined;
}

/** Where a volume's blocks are: the override, else beside embedded metadata, else as recorded. */
function dataUrlFor(metaUrl: string, settings: VolumeSettings, override: string | undefined, security?: BackendSecurity): string {
  if (override) return override;
  if (settings.dataUrl.startsWith('file:')) return embeddedDataUrl(metaUrl, security) ?? settings.dataUrl;
  return settings.dataUrl;
}

/** An embedded volume is held by one process at a time: say so plainly. */
function explainBusy(err: unknown, describe: string): unknown {
  if (err instanceof FsError && err.code === 'EBUSY') {
    return new UsageError(
      `volume ${describe} is in use by another kvfs process (an embedded volume serves one daemon; use etcd and Redis to share a volume between mounts)`,
    );
  }
  return err;
}

/**
 * The data URL with any password removed (a user name stays): what gets stored in the volume
 * settings and shown by status. Works for every scheme (redis://, rediss://, etcd+https://, ...).
 */
export function redactUrl(url: string): string {
  return stripPassword(url);
}

const KEY_SOURCES = '--key-file FILE, KVFS_KEY_FILE=FILE or KVFS_KEY=HEX';

/**
 * Checks the key given for a volume against its settings before any block is touched; UsageError
 * with one line saying what is wrong and what to do.
 */
export function checkVolumeKey(settings: VolumeSettings, describe: string, key: EncryptionKey | undefined, requireKey: boolean): void {
  const enc = settings.encryption;
  if (!enc) {
    if (key) {
      throw new UsageError(
        `volume ${describe} is not encrypted, but a key was given (${key.from}); leave the key out to use it in clear, or make an encrypted volume with kvfs format --encrypt`,
      );
    }
    return;
  }
  if (enc.cipher !== CIPHER || enc.kdf !== 'hkdf-sha256') {
    throw new UsageError(`volume ${describe} is encrypted with ${enc.cipher}/${enc.kdf}, which this kvfs does not know; upgrade kvfs`);
  }
  if (!key) {
    if (!requireKey) return;
    throw new UsageError(`volume ${describe} is encrypted: give its key with ${KEY_SOURCES} (the 64 hex digits it was formatted with)`);
  }
  if (!keyMatches(key, settings.uuid, enc as EncryptionSettings)) {
    throw new UsageError(`the key from ${key.from} is not the key of volume ${describe} (its key check does not match); give the key the volume was formatted with`);
  }
}

async function closeQuietly(...things: Array<{ close(): Promise<void> } | undefined>): Promise<void> {
  await Promise.all(things.map((t) => t?.close().catch(() => undefined)));
}

/**
 * Embedded volume (meta.db + file blocks): small blocks go into meta.db (lib/data/files.ts says
 * why). Every opener of such a volume for reading or changing blocks goes through here, so none
 * misses them. True when done: the store's deletes then wait for what they must themselves
 * (rows none, files a sync of meta.db), and need no deleteAfterSync.
 */
async function keepSmallBlocksInMeta(store: BlockStore, kv: { readonly kind: string }): Promise<boolean> {
  if (store.kind !== 'files' || kv.kind !== 'sqlite') return false;
  const [{ FileBlocks }, { SqliteKv }] = await Promise.all([import('../data/files'), import('../meta/sqlite')]);
  if (!(store instanceof FileBlocks && kv instanceof SqliteKv)) return false;
  store.keepSmallBlocksIn(kv);
  return true;
}

export async function openVolume(metaUrl: string, options: OpenOptions): Promise<Volume> {
  const opened = await openKv(metaUrl, { timeoutMs: options.timeoutMs, security: options.meta }).catch((err) => {
    throw explainBusy(err, parseMetaUrl(metaUrl, options.meta).describe);
  });
  const { volume, describe } = opened;
  const kv = options.metrics ? options.metrics.wrapKv(opened.kv) : opened.kv;
  let store: BlockStore | undefined;
  try {
    const create = options.createIfMissing;
    const key = options.data?.key;
    if (create && !(await Meta.loadSettings(kv, describe))) {
      if (key) {
        throw new UsageError(
          `volume ${describe} does not exist yet and would be created without encryption, but a key was given (${key.from}); make it with kvfs format --encrypt first`,
        );
      }
      const settings = newSettings(volume, options.dataUrl ?? embeddedDataUrl(metaUrl, options.meta) ?? '', create.blockSize);
      await Meta.format(kv, settings, { uid: create.uid, gid: create.gid }, false);
      create.onCreate(settings);
    }
    const meta = await Meta.open(kv, describe);
    checkVolumeKey(meta.settings, describe, key, Boolean(options.requireKey));
    const dataUrl = dataUrlFor(metaUrl, meta.settings, options.dataUrl, options.meta);
    store = await openBlockStore(dataUrl, meta.settings.uuid, { timeoutMs: options.timeoutMs, security: options.data }).catch(
      (err) => {
        throw explainBusy(err, describe);
      },
    );
    const ordered = await keepSmallBlocksInMeta(store, opened.kv);
    // Timing wraps the encryption too: the cost of sealing shows as block time in /metrics.
    if (meta.settings.encryption) {
      store = new EncryptedBlocks(store, { volumeUuid: meta.settings.uuid, key, describe, onAuthFailure: options.onAuthFailure });
    }
    if (opened.kv.sync && !ordered) store = deleteAfterSync(store, () => opened.kv.sync!());
    const usable = options.metrics ? options.metrics.wrapStore(store) : store;
    return {
      meta,
      store: usable,
      settings: meta.settings,
      describe,
      dataUrl,
      close: () => closeQuietly(kv, usable),
    };
  } catch (err) {
    await closeQuietly(kv, store);
    throw err;
  }
}

/**
 * A block is deleted only after the commit that dropped it is durable: with an engine whose
 * commits reach the disk later (KvEngine.sync), a power loss could otherwise bring back a block
 * map naming a block that is gone. One sync covers all deletes waiting at the time.
 */
function deleteAfterSync(store: BlockStore, sync: () => Promise<void>): BlockStore {
  return {
    kind: store.kind,
    put: (id, data) => store.put(id, data),
    get: (id) => store.get(id),
    // Every optional method passes through, or the layers above lose it (random reads fell back
    // to whole blocks on embedded metadata with Redis data when getRange was missing here).
    ...(store.getRange ? { getRange: (id: string, offset: number, length: number) => store.getRange!(id, offset, length) } : {}),
    ...(store.getInto ? { getInto: (id: string, alloc: (size: number) => Buffer) => store.getInto!(id, alloc) } : {}),
    ...(store.size ? { size: (id: string) => store.size!(id) } : {}),
    delete: async (ids) => {
      await sync();
      await store.delete(ids);
    },
    list: (onBatch) => store.list(onBatch),
    usage: () => store.usage(),
    durabilityWarning: () => store.durabilityWarning(),
    close: () => store.close(),
  };
}

function newSettings(name: string, dataUrl: string, blockSize: number): VolumeSettings {
  return {
    name,
    uuid: randomUUID(),
    dataUrl: redactUrl(dataUrl),
    blockSize,
    formatVersion: FORMAT_VERSION,
    createdAt: new Date().toISOString(),
  };
}

/** Makes settings encrypted with `key` (after the uuid is final: the key check depends on it). */
function encrypt(settings: VolumeSettings, key: EncryptionKey): void {
  settings.encryption = encryptionSettings(key, settings.uuid);
}

export interface FormatOptions extends VolumeSecurity {
  /** Where blocks go; default (embedded metadata only): beside the metadata. */
  dataUrl?: string;
  blockSize: number;
  force: boolean;
  /** Encrypt every block with this key (AES-256-GCM); the volume records only a key check value. */
  encrypt?: EncryptionKey;
  timeoutMs: number;
  /** Owner of the root directory. */
  uid: number;
  gid: number;
}

export async function formatVolume(metaUrl: string, options: FormatOptions): Promise<VolumeSettings> {
  const dataUrl = options.dataUrl ?? embeddedDataUrl(metaUrl, options.meta);
  if (!dataUrl) throw new UsageError('kvfs format needs --data URL (or KVFS_DATA) for an etcd volume (e.g. redis://127.0.0.1:6379)');
  const { kv, volume, describe } = await openKv(metaUrl, { timeoutMs: options.timeoutMs, security: options.meta }).catch((err) => {
    throw explainBusy(err, parseMetaUrl(metaUrl, options.meta).describe);
  });
  const settings = newSettings(volume, dataUrl, options.blockSize);
  let store: BlockStore | undefined;
  try {
    // Replacing a volume keeps its uuid: its old blocks stay in the same store, unreferenced,
    // for `kvfs gc` (and an embedded block store only accepts the volume it belongs to).
    const existing = await Meta.loadSettings(kv, describe);
    if (existing && !options.force) {
      throw new UsageError(`a volume named '${volume}' already exists at ${describe}; use --force to replace it (its data is lost)`);
    }
    if (existing) settings.uuid = existing.uuid;
    if (options.encrypt) encrypt(settings, options.encrypt);
    // Make sure the data store answers before anything is written.
    store = await openBlockStore(dataUrl, settings.uuid, { timeoutMs: options.timeoutMs, security: options.data }).catch((err) => {
      throw explainBusy(err, describe);
    });
    await store.get('0');
    await Meta.format(kv, settings, { uid: options.uid, gid: options.gid }, options.force);
    return settings;
  } finally {
    await closeQuietly(kv, store);
  }
}

export interface VolumeStatus {
  settings: VolumeSettings;
  /** Metadata URL without credentials, and the engine behind it. */
  meta: { url: string; engine: string };
  data: { url: string; engine: string; blocks: number; bytes: number };
  usage: VolumeSummary;
  /** Mounts of the volume, on any host, that are alive (etcd: their leases are kept alive). */
  sessions: SessionInfo[];
  /** Why fsynced data might not survive a restart of the block store, if it might not. */
  warning?: string;
}

/** Everything `kvfs status` shows about a volume (reads all of its metadata). */
export async function volumeStatus(volume: Volume): Promise<VolumeStatus> {
  const [usage, stored, sessions, warning] = await Promise.all([
    volume.meta.summary(),
    volume.store.usage(),
    volume.meta.sessions(),
    volume.store.durabilityWarning(),
  ]);
  return {
    settings: volume.settings,
    meta: { url: volume.describe, engine: volume.meta.kv.kind },
    data: { url: redactUrl(volume.dataUrl), engine: volume.store.kind, ...stored },
    usage,
    sessions,
    warning,
  };
}

// Opening and formatting a volume by URL: the metadata engine, its settings, and the block store
// the settings point to.

import { randomUUID } from 'node:crypto';
import { openBlockStore } from '../data/index';
import type { BlockStore } from '../data/store';
import { openKv } from '../meta/index';
import { Meta } from '../meta/meta';
import { FORMAT_VERSION, VolumeSettings } from '../meta/schema';

export interface Volume {
  meta: Meta;
  store: BlockStore;
  settings: VolumeSettings;
  /** The metadata URL without credentials, for messages. */
  describe: string;
  close(): Promise<void>;
}

export interface OpenOptions {
  /** Overrides the data URL recorded at format time. */
  dataUrl?: string;
  /** Bound on every backend request, ms. */
  timeoutMs: number;
}

/** The data URL with any password removed: what gets stored in the volume settings. */
export function redactUrl(url: string): string {
  return url.replace(/^([a-z]+:\/\/)([^@/]*)@/i, (_, scheme: string, cred: string) => `${scheme}${cred.split(':')[0] ? cred.split(':')[0] + '@' : ''}`);
}

async function closeQuietly(...things: Array<{ close(): Promise<void> } | undefined>): Promise<void> {
  await Promise.all(things.map((t) => t?.close().catch(() => undefined)));
}

export async function openVolume(metaUrl: string, options: OpenOptions): Promise<Volume> {
  const { kv, describe } = await openKv(metaUrl, { timeoutMs: options.timeoutMs });
  let store: BlockStore | undefined;
  try {
    const meta = await Meta.open(kv, describe);
    store = await openBlockStore(options.dataUrl ?? meta.settings.dataUrl, meta.settings.uuid, { timeoutMs: options.timeoutMs });
    const opened = store;
    return {
      meta,
      store: opened,
      settings: meta.settings,
      describe,
      close: () => closeQuietly(kv, opened),
    };
  } catch (err) {
    await closeQuietly(kv, store);
    throw err;
  }
}

export interface FormatOptions {
  dataUrl: string;
  blockSize: number;
  force: boolean;
  timeoutMs: number;
  /** Owner of the root directory. */
  uid: number;
  gid: number;
}

export async function formatVolume(metaUrl: string, options: FormatOptions): Promise<VolumeSettings> {
  const { kv, volume } = await openKv(metaUrl, { timeoutMs: options.timeoutMs });
  const uuid = randomUUID();
  let store: BlockStore | undefined;
  try {
    // Make sure the data store answers before anything is written.
    store = await openBlockStore(options.dataUrl, uuid, { timeoutMs: options.timeoutMs });
    await store.get('0');
    const settings: VolumeSettings = {
      name: volume,
      uuid,
      dataUrl: redactUrl(options.dataUrl),
      blockSize: options.blockSize,
      formatVersion: FORMAT_VERSION,
      createdAt: new Date().toISOString(),
    };
    await Meta.format(kv, settings, { uid: options.uid, gid: options.gid }, options.force);
    return settings;
  } finally {
    await closeQuietly(kv, store);
  }
}

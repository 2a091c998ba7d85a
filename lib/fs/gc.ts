// kvfs gc: finds blocks in the block store that no block map references, and deletes them.
//
// Unreferenced blocks are left by a crash between storing a commit's blocks and committing the
// transaction that references them, by a commit that failed (its blocks are stored again under
// new ids when it is retried), by a failed delete of replaced blocks, and by `kvfs format --force`
// (which keeps the volume's uuid, so the old volume's blocks stay under the same key prefix).
//
// Safe while the volume is mounted and written. A commit stores its blocks first and references
// them in a transaction afterwards, so a block that is unreferenced now may be referenced a
// moment later. gc therefore:
//
//   1. reads `counter/block` (C0), then lists the stored ids, then reads every block map
//      (every `A{ino}C{chunk}` key) and takes candidates = stored - referenced;
//   2. keeps only candidates with an id below C0. Ids at or above C0 were reserved after gc
//      started, so they can only belong to commits still in flight. (Below C0 is not enough on
//      its own: a daemon reserves ids 1024 at a time ahead of use, so an id below C0 may have
//      been uploaded a moment ago by a commit that is about to reference it.)
//   3. waits a grace period and reads every block map again; a candidate referenced now is kept.
//      A block that was in the listing of step 1 was stored before that listing; its commit
//      references it within the time a commit takes (each backend request is bounded by the
//      daemon's --backend-timeout, default 10 s; a commit is the block uploads, which run in
//      parallel, then one transaction). So a grace longer than that (default 30 s) means that every
//      block of a commit that was going to succeed is seen referenced by the second reading.
//      A commit that takes longer than the grace (a daemon frozen, say by SIGSTOP, between its
//      upload and its transaction) can lose its blocks: keep the grace well above the longest
//      backend timeout of the volume's mounts.
//   4. deletes what is left, in batches, with progress.
//
// An embedded volume is held by one process at a time: when gc could open it, no mount is
// running and no commit is in flight, so no grace period is needed.
//
// Orphans (inodes whose last name is gone, `O{ino}`) keep their block maps until they are
// destroyed, so their blocks are never unreferenced garbage. Mounts reclaim them after the last
// close, and sweep orphans left by mounts that died. `gc --delete --orphans` destroys, with
// their blocks, the orphans that no live mount holds open (hold keys `H{ino}/{session}` live with
// their mount's session) and that lost their last name more than the grace period ago (a mount
// that has the file open registers its hold shortly after the unlink).

import type { BlockStore } from '../data/store';
import type { Meta } from '../meta/meta';
import { decodeAttr, decodeChunk, keys, refIds } from '../meta/schema';

export interface GcOptions {
  /** Delete (default: dry run). */
  delete?: boolean;
  /** Wait between the two readings of the block maps, ms (default 30,000). */
  graceMs?: number;
  /** Destroy unheld orphans (with delete). */
  orphans?: boolean;
  /** Progress lines (stderr in the CLI). */
  onProgress?: (line: string) => void;
  /** A progress line every this many blocks or keys (default 10,000). */
  progressEvery?: number;
}

export interface OrphanReport {
  ino: number;
  /** When its last name went away (ISO 8601), if recorded. */
  since?: string;
  size: number;
  used: number;
  blocks: number;
  /** Mounts that hold it open (live sessions). */
  holders: number;
  /** What gc did or would do. */
  action: 'destroyed' | 'would destroy' | 'kept: held open by a mount' | 'kept: unlinked less than the grace period ago' | 'kept: has names again' | 'kept: run with --delete --orphans to destroy' | 'failed';
  error?: string;
}

export interface GcReport {
  volume: string;
  dryRun: boolean;
  /** The block counter read at the start: only ids below it are deleted. */
  blockCounter: number;
  stored: number;
  referenced: number;
  /** Unreferenced in the first reading. */
  candidates: number;
  /** Unreferenced but with ids at or above the counter (reserved after gc started): kept. */
  newer: number;
  /** Unreferenced in the first reading, referenced in the second: kept (commits in flight). */
  rescued: number;
  /** Stored ids that are not block ids kvfs makes (not decimal numbers): kept. */
  foreign: number;
  /** Grace period actually waited, ms. */
  graceMs: number;
  /** Unreferenced blocks (deleted unless dry run). */
  garbage: { blocks: number; bytes: number; ids: number[] };
  deleted: { blocks: number; bytes: number };
  orphans: OrphanReport[];
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Every block id the volume's block maps reference now. */
async function referencedIds(meta: Meta, every: number, progress: (line: string) => void, what: string): Promise<Set<number>> {
  const ids = new Set<number>();
  let startAfter: string | undefined;
  let read = 0;
  let next = every;
  for (;;) {
    const batch = await meta.kv.scan('A', { startAfter, limit: 1000 });
    for (const { key, value } of batch) {
      // A{16 hex}C{8 hex}
      if (key.length !== 26 || key[17] !== 'C') continue;
      try {
        for (const ref of decodeChunk(value).values()) for (const id of refIds(ref)) ids.add(id);
      } catch {
        // An undecodable block map: fsck reports it. Its blocks cannot be told apart, so gc stops.
        throw new Error(`block map ${key} cannot be decoded; run kvfs fsck (gc deletes nothing while a block map is unreadable)`);
      }
    }
    read += batch.length;
    if (read >= next) {
      progress(`kvfs gc: ${what}: read ${read} metadata keys, ${ids.size} referenced blocks so far`);
      next = (Math.floor(read / every) + 1) * every;
    }
    if (batch.length < 1000) return ids;
    startAfter = batch[batch.length - 1].key;
  }
}

/** Sizes of blocks (undefined: gone), a few requests at a time. */
async function blockSizes(store: BlockStore, ids: number[], onDone: (n: number) => void): Promise<Map<number, number | undefined>> {
  const sizes = new Map<number, number | undefined>();
  let i = 0;
  const worker = async () => {
    while (i < ids.length) {
      const id = ids[i++];
      sizes.set(id, store.size ? await store.size(String(id)) : (await store.get(String(id)))?.length);
      onDone(sizes.size);
    }
  };
  await Promise.all(Array.from({ length: 8 }, worker));
  return sizes;
}

export async function gc(meta: Meta, store: BlockStore, volume: string, options: GcOptions = {}): Promise<GcReport> {
  const progress = options.onProgress ?? (() => undefined);
  const every = options.progressEvery ?? 10_000;
  const dryRun = !options.delete;
  // The embedded engine is exclusive: nobody else has the volume open, nothing is in flight.
  const graceMs = meta.kv.kind === 'sqlite' ? 0 : (options.graceMs ?? 30_000);

  // 1. Counter, stored ids, referenced ids.
  const counterValue = await meta.kv.get(keys.blockCounter);
  const blockCounter = counterValue ? Number(counterValue.toString()) : 1;
  const stored: number[] = [];
  let foreign = 0;
  let next = every;
  await store.list((ids) => {
    for (const id of ids) {
      if (/^[1-9][0-9]{0,15}$/.test(id) && Number.isSafeInteger(Number(id))) stored.push(Number(id));
      else foreign++;
    }
    if (stored.length + foreign >= next) {
      progress(`kvfs gc: listed ${stored.length + foreign} stored blocks`);
      next = (Math.floor((stored.length + foreign) / every) + 1) * every;
    }
  });
  const refs1 = await referencedIds(meta, every, progress, 'first reading');
  const unreferenced = stored.filter((id) => !refs1.has(id));
  const candidates = unreferenced.filter((id) => id < blockCounter);
  const newer = unreferenced.length - candidates.length;

  // 2. Grace period, second reading.
  let garbageIds = candidates;
  let rescued = 0;
  if (candidates.length > 0 && graceMs > 0) {
    progress(`kvfs gc: waiting ${graceMs / 1000} s for commits in flight, then reading the block maps again`);
    await sleep(graceMs);
    const refs2 = await referencedIds(meta, every, progress, 'second reading');
    garbageIds = candidates.filter((id) => !refs2.has(id));
    rescued = candidates.length - garbageIds.length;
  }
  garbageIds.sort((a, b) => a - b);

  // 3. Sizes (and whether they are still there: a mount may have deleted some meanwhile).
  const sizes = await blockSizes(store, garbageIds, (n) => {
    if (n % every === 0) progress(`kvfs gc: measured ${n} of ${garbageIds.length} unreferenced blocks`);
  });
  const present = garbageIds.filter((id) => sizes.get(id) !== undefined);
  const bytes = present.reduce((sum, id) => sum + (sizes.get(id) ?? 0), 0);

  // 4. Delete.
  const deleted = { blocks: 0, bytes: 0 };
  if (!dryRun) {
    const BATCH = 500;
    let nextReport = every;
    for (let i = 0; i < present.length; i += BATCH) {
      const batch = present.slice(i, i + BATCH);
      await store.delete(batch.map(String));
      deleted.blocks += batch.length;
      for (const id of batch) deleted.bytes += sizes.get(id) ?? 0;
      if (deleted.blocks >= nextReport) {
        progress(`kvfs gc: deleted ${deleted.blocks} of ${present.length} blocks`);
        nextReport = (Math.floor(deleted.blocks / every) + 1) * every;
      }
    }
  }

  const orphans = await handleOrphans(meta, store, { wanted: Boolean(options.orphans), dryRun, graceMs });

  return {
    volume,
    dryRun,
    blockCounter,
    stored: stored.length + foreign,
    referenced: refs1.size,
    candidates: candidates.length,
    newer,
    rescued,
    foreign,
    graceMs,
    garbage: { blocks: present.length, bytes, ids: present },
    deleted,
    orphans,
  };
}

async function handleOrphans(meta: Meta, store: BlockStore, options: { wanted: boolean; dryRun: boolean; graceMs: number }): Promise<OrphanReport[]> {
  const embedded = meta.kv.kind === 'sqlite';
  const sessions = new Set((await meta.kv.scan(keys.sessions)).map(({ key }) => key.slice(keys.sessions.length)));
  const reports: OrphanReport[] = [];
  const nowNs = BigInt(Date.now()) * 1_000_000n;
  for (const { key, value } of await meta.kv.scan(keys.orphans)) {
    const ino = keys.inodeOfOrphan(key);
    const since = BigInt(value.toString() || '0');
    const attrValue = await meta.kv.get(keys.attr(ino));
    const attr = attrValue ? decodeAttr(ino, attrValue) : undefined;
    const blocks = (await meta.blockIdsOf(ino)).length;
    // Embedded: gc holds the volume, so no mount runs; hold keys left behind are stale.
    const holders = embedded ? 0 : (await meta.holders(ino)).filter((s) => sessions.has(s)).length;
    const report: OrphanReport = {
      ino,
      since: since > 0n ? new Date(Number(since / 1_000_000n)).toISOString() : undefined,
      size: attr?.size ?? 0,
      used: attr?.used ?? 0,
      blocks,
      holders,
      action: 'kept: run with --delete --orphans to destroy',
    };
    reports.push(report);
    if (attr && attr.nlink > 0) {
      report.action = 'kept: has names again';
      continue;
    }
    if (holders > 0) {
      report.action = 'kept: held open by a mount';
      continue;
    }
    if (!embedded && nowNs - since < BigInt(options.graceMs) * 1_000_000n) {
      report.action = 'kept: unlinked less than the grace period ago';
      continue;
    }
    if (!options.wanted) continue;
    if (options.dryRun) {
      report.action = 'would destroy';
      continue;
    }
    try {
      await meta.destroy(ino, async (ids) => store.delete(ids.map(String)));
      report.action = 'destroyed';
    } catch (err) {
      report.action = 'failed';
      report.error = (err as Error).message;
    }
  }
  return reports;
}

/** "1-5, 9, 12-14" for a sorted list of ids, at most `max` ranges. */
export function idRanges(ids: number[], max = 20): string {
  const ranges: string[] = [];
  let i = 0;
  while (i < ids.length) {
    let j = i;
    while (j + 1 < ids.length && ids[j + 1] === ids[j] + 1) j++;
    ranges.push(i === j ? String(ids[i]) : `${ids[i]}-${ids[j]}`);
    i = j + 1;
  }
  return ranges.length > max ? `${ranges.slice(0, max).join(', ')}, ... (${ranges.length - max} more ranges)` : ranges.join(', ');
}

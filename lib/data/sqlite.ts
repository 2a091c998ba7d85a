// BlockStore embedded in the daemon: one SQLite database of blocks, DIR/blocks.db, for
// single-host use (lib/meta/sqlite.ts keeps the metadata in DIR/meta.db). New volumes get the
// one-file-per-block store instead (lib/data/files.ts: puts off the event loop, several at once);
// this one stays for volumes that have a blocks.db (lib/data/index.ts decides by what is on disk).
//
// Why a separate file with 64 KiB pages, a rowid table and synchronous=FULL (measured on the
// project's build machine with better-sqlite3 12, WAL, one put per transaction): with 64 KiB
// pages 1 MiB blobs were written at about 850 MB/s and read at 7-8 GB/s, against 250-350 MB/s
// and 0.8-1.3 GB/s with the 4 KiB pages the metadata wants; a WITHOUT ROWID table was 2-3x
// slower for large rows. FULL cost nothing measurable for blocks of 64 KiB and more and about
// 2x for 4 KiB blocks (5,000 vs 14,000 puts/s); in exchange every put is durable when it
// resolves, so "write the blocks, then commit the metadata that names them" holds across power
// loss without coupling the two files.
//
// Puts made in one turn of the event loop (all blocks of one commit) go into one transaction,
// one fsync for the commit instead of one per block. Deletes are gathered for a few ms and
// applied without an fsync of their own: they only ever follow the metadata commit that dropped
// the blocks, and a delete lost in a power failure leaves an unreferenced block for `kvfs gc`
// (measured: append 4 KiB + fsync went from 4.0 to 2.0 fsyncs per append).
//
// Exclusivity as for the metadata: locking_mode=EXCLUSIVE, another opener gets FsError EBUSY.
// The directory is bound to one volume: the first open records the volume's uuid and later
// opens with another uuid are refused, so two volumes never share (and gc) one block store.
import * as path from 'node:path';
import type Database from 'better-sqlite3';
import { FsError } from '../errors';
import { bindToVolume, openExclusiveSqlite, sqliteError } from '../meta/sqlite';
import type { BlockStore } from './store';

export interface SqliteBlocksOptions {
  /** Directory holding DIR/blocks.db. */
  dir: string;
  /** Create DIR and DIR/blocks.db when missing (default true); false: FsError ENOENT instead. */
  create?: boolean;
  /** The volume these blocks belong to; recorded at first open and checked afterwards. */
  volumeUuid: string;
}

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS blocks (id TEXT PRIMARY KEY, size INTEGER NOT NULL, data BLOB NOT NULL);
  CREATE TABLE IF NOT EXISTS info (name TEXT PRIMARY KEY, value TEXT NOT NULL);
`;

/** ids per DELETE transaction and per list() batch. */
const BATCH = 1000;
/** Most bytes of blocks written in one transaction (one fsync); more go into further ones. */
const PUT_BATCH_BYTES = 64 * 1024 * 1024;
/** How long deletes wait to be gathered into one transaction, ms. */
const DELETE_DELAY_MS = 20;

interface PendingPut {
  id: string;
  data: Buffer;
  resolve: () => void;
  reject: (err: unknown) => void;
}

export class SqliteBlocks implements BlockStore {
  readonly kind = 'sqlite';
  /** The database file. */
  readonly file: string;
  private readonly db: Database.Database;
  private readonly stmt: {
    put: Database.Statement<[string, number, Buffer]>;
    get: Database.Statement<[string], { data: Buffer }>;
    del: Database.Statement<[string]>;
    listFirst: Database.Statement<[number], { id: string }>;
    list: Database.Statement<[string, number], { id: string }>;
    usage: Database.Statement<[], { blocks: number; bytes: number }>;
  };
  private closed = false;
  /**
   * Puts not written yet, by id. Puts made in one turn of the event loop (a commit stores all its
   * blocks at once) are written in one transaction, so they cost one fsync instead of one each.
   */
  private pendingPuts = new Map<string, PendingPut>();
  /** Deletes not applied yet, and who waits for them. */
  private pendingDeletes = new Set<string>();
  private deleteWaiters: Array<{ resolve: () => void; reject: (err: unknown) => void }> = [];
  private deleteTimer: NodeJS.Timeout | undefined;

  /** Opens DIR/blocks.db; FsError EBUSY if in use, EINVAL if it belongs to another volume. */
  constructor(options: SqliteBlocksOptions) {
    if (!options.dir || !path.isAbsolute(options.dir)) throw new TypeError(`SqliteBlocks: dir must be an absolute path, got ${options.dir}`);
    if (!options.volumeUuid) throw new TypeError('SqliteBlocks: volumeUuid is required');
    this.file = path.join(options.dir, 'blocks.db');
    this.db = openExclusiveSqlite(this.file, {
      role: 'blocks',
      pageSize: 65536,
      synchronous: 'FULL',
      schema: SCHEMA,
      create: options.create ?? true,
    });
    try {
      bindToVolume(this.db, options.volumeUuid, this.file);
      this.stmt = {
        put: this.db.prepare('INSERT OR REPLACE INTO blocks (id, size, data) VALUES (?, ?, ?)'),
        get: this.db.prepare('SELECT data FROM blocks WHERE id = ?'),
        del: this.db.prepare('DELETE FROM blocks WHERE id = ?'),
        listFirst: this.db.prepare('SELECT id FROM blocks ORDER BY id LIMIT ?'),
        list: this.db.prepare('SELECT id FROM blocks WHERE id > ? ORDER BY id LIMIT ?'),
        usage: this.db.prepare('SELECT count(*) AS blocks, coalesce(sum(size), 0) AS bytes FROM blocks'),
      };
    } catch (err) {
      this.db.close();
      throw sqliteError(err, `open blocks store ${this.file}`);
    }
  }

  private run<T>(what: string, fn: () => T): T {
    if (this.closed) throw new FsError('EIO', `sqlite blocks ${what}: store is closed`);
    try {
      return fn();
    } catch (err) {
      throw sqliteError(err, `sqlite blocks ${what}`);
    }
  }

  /** Resolves once the block is durable (its transaction committed with synchronous=FULL). */
  put(id: string, data: Buffer): Promise<void> {
    if (this.closed) return Promise.reject(new FsError('EIO', 'sqlite blocks put: store is closed'));
    return new Promise<void>((resolve, reject) => {
      if (this.pendingPuts.size === 0) setImmediate(() => this.writePuts());
      // A later put of the same id (same bytes: ids are never reused) supersedes the earlier one.
      const earlier = this.pendingPuts.get(id);
      this.pendingPuts.set(id, {
        id,
        data,
        resolve: earlier ? () => (earlier.resolve(), resolve()) : resolve,
        reject: earlier ? (err) => (earlier.reject(err), reject(err)) : reject,
      });
      // A put after a delete of the same id wins over it.
      this.pendingDeletes.delete(id);
    });
  }

  /** Writes the gathered puts, in transactions of at most PUT_BATCH_BYTES. */
  private writePuts(): void {
    const all = [...this.pendingPuts.values()];
    this.pendingPuts = new Map();
    for (let i = 0; i < all.length; ) {
      const batch: PendingPut[] = [];
      let bytes = 0;
      while (i < all.length && (batch.length === 0 || bytes + all[i].data.length <= PUT_BATCH_BYTES)) {
        bytes += all[i].data.length;
        batch.push(all[i++]);
      }
      try {
        this.run('put', () => this.putMany(batch));
      } catch (err) {
        for (const p of batch) p.reject(err);
        continue;
      }
      for (const p of batch) p.resolve();
    }
  }

  private readonly putMany = (batch: PendingPut[]): void =>
    this.db.transaction((list: PendingPut[]) => {
      for (const p of list) this.stmt.put.run(p.id, p.data.length, p.data);
    })(batch);

  async get(id: string): Promise<Buffer | undefined> {
    const pending = this.pendingPuts.get(id);
    if (pending) return pending.data;
    return this.run('get', () => this.stmt.get.get(id)?.data);
  }

  /**
   * Resolves once the blocks are deleted. Deletes are gathered for DELETE_DELAY_MS and applied
   * without an fsync of their own (synchronous=NORMAL for that transaction): a delete lost in a
   * power failure only leaves an unreferenced block for gc, and a block is deleted only after
   * the metadata that dropped it was committed. So a commit that replaces a block does not wait
   * for, or pay for, its deletion.
   */
  delete(ids: readonly string[]): Promise<void> {
    if (this.closed) return Promise.reject(new FsError('EIO', 'sqlite blocks delete: store is closed'));
    if (ids.length === 0) return Promise.resolve();
    for (const id of ids) this.pendingDeletes.add(id);
    const done = new Promise<void>((resolve, reject) => this.deleteWaiters.push({ resolve, reject }));
    this.deleteTimer ??= setTimeout(() => this.applyDeletes(), DELETE_DELAY_MS);
    return done;
  }

  private applyDeletes(): void {
    this.deleteTimer = undefined;
    const ids = [...this.pendingDeletes];
    const waiters = this.deleteWaiters;
    this.pendingDeletes = new Set();
    this.deleteWaiters = [];
    try {
      const delMany = this.db.transaction((batch: readonly string[]) => {
        for (const id of batch) this.stmt.del.run(id);
      });
      this.run('delete', () => this.db.pragma('synchronous = NORMAL'));
      try {
        for (let i = 0; i < ids.length; i += BATCH) this.run('delete', () => delMany(ids.slice(i, i + BATCH)));
        // Give the freed pages back to the file system a little at a time.
        this.run('delete', () => this.db.pragma('incremental_vacuum(256)'));
      } finally {
        this.run('delete', () => this.db.pragma('synchronous = FULL'));
      }
    } catch (err) {
      for (const w of waiters) w.reject(err);
      return;
    }
    for (const w of waiters) w.resolve();
  }

  async list(onBatch: (ids: string[]) => Promise<void> | void): Promise<void> {
    let after: string | undefined;
    for (;;) {
      const rows = this.run('list', () => (after === undefined ? this.stmt.listFirst.all(BATCH) : this.stmt.list.all(after, BATCH)));
      const ids = rows.map((r) => r.id);
      if (ids.length === 0) return;
      await onBatch(ids);
      if (ids.length < BATCH) return;
      after = ids[ids.length - 1];
    }
  }

  /** Every put is committed with synchronous=FULL: durable when it resolves. */
  async durabilityWarning(): Promise<string | undefined> {
    return undefined;
  }

  async usage(): Promise<{ blocks: number; bytes: number }> {
    const row = this.run('usage', () => this.stmt.usage.get())!;
    return { blocks: row.blocks, bytes: row.bytes };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    // Apply what is still gathered before the connection goes.
    if (this.pendingPuts.size > 0) this.writePuts();
    if (this.deleteTimer) {
      clearTimeout(this.deleteTimer);
      this.applyDeletes();
    }
    this.closed = true;
    this.db.close();
  }
}

// KvEngine embedded in the daemon: one SQLite database (better-sqlite3) per volume, for
// single-host use. File: <volume dir>/meta.db.
//
// Durability: WAL journal with synchronous=NORMAL. A txn whose commit resolved is in the WAL,
// written to the OS, so it survives kill -9 of the daemon; it survives power loss (or an OS
// crash) once sync() has returned, which fsyncs the WAL off the event loop and is shared by every
// caller waiting at the time (kvfs calls it for fsync(2), fdatasync(2) and fsyncdir, and before
// deleting blocks that a commit dropped). SQLite recovers a prefix of the commits, so after power
// loss the metadata is as of some moment at or after the last sync(), never torn. Why not FULL:
// its fsync per commit was 2 of the 3 fsyncs of every file created (create, block map at close).
// At open, a WAL left by an earlier process (killed) is fsynced first, so nothing this process
// does (gc, deletes) rests on commits that a power loss could still undo.
//
// Exclusivity: the connection uses locking_mode=EXCLUSIVE and takes the write lock at open
// (BEGIN IMMEDIATE; COMMIT), and never releases it until close. SQLite's POSIX lock on the
// database file is then held by this process, so any other opener - another kvfs daemon, an
// fsck, the sqlite3 shell, and also a second opener in the same process - gets SQLITE_BUSY at
// once, which becomes FsError EBUSY. The kernel drops the lock when the process dies, so a
// crashed daemon never leaves a stale lock behind (unlike a pid/lock file).
//
// Transactions: better-sqlite3 runs every statement synchronously on the one connection, so
// there is no parallelism to gain; txn() therefore serializes transaction functions through
// an in-process queue. A txn opens BEGIN IMMEDIATE, applies put/delete directly (reads see
// them), and COMMITs when the function resolves (ROLLBACK when it throws or wrote nothing).
// So txns never conflict and never rerun. Reads outside a txn wait for the running txn, so they
// never see uncommitted writes. Calling kv.txn() from inside a txn function would wait for
// itself: it fails at once with FsError EDEADLK (the etcd engine does the same, for parity).
// Waiting for the queue is bounded by timeoutMs -> FsError ETIMEDOUT.
//
// watch() reports only changes committed through this engine object (one host, one daemon),
// delivered asynchronously after the commit, in commit order.
import { AsyncLocalStorage } from 'node:async_hooks';
import * as fs from 'node:fs';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { FsError, type ErrnoName } from '../errors';
import type { KvChange, KvEngine, KvPair, KvSession, KvTxn, ScanOptions } from './kv';

export interface SqliteKvOptions {
  /** The volume's directory. The metadata lives in DIR/meta.db. */
  dir: string;
  /** Create DIR and DIR/meta.db when missing (default true); false: FsError ENOENT instead. */
  create?: boolean;
  /** Longest wait in ms for the transaction queue (a txn runs one at a time). Default 10000. */
  timeoutMs?: number;
  /** Where errors thrown by watch callbacks go. Default: process.emitWarning. */
  onBackgroundError?: (err: Error) => void;
}

// ---------------------------------------------------------------------------------------------
// Shared by both embedded stores (lib/data/sqlite.ts uses these too).

/** The one place where SQLite / better-sqlite3 failures become FsError. */
export function sqliteError(err: unknown, what: string): FsError {
  if (err instanceof FsError) return err;
  const e = err instanceof Error ? err : new Error(String(err));
  const code = String((e as { code?: unknown }).code ?? '');
  const map: Array<[RegExp, ErrnoName, string]> = [
    [/^SQLITE_(BUSY|LOCKED)/, 'EBUSY', 'database is locked'],
    [/^SQLITE_FULL/, 'ENOSPC', 'disk full'],
    [/^SQLITE_READONLY/, 'EROFS', 'database is read-only'],
    [/^SQLITE_(PERM|AUTH)/, 'EACCES', 'permission denied'],
    [/^SQLITE_TOOBIG/, 'E2BIG', 'value too big'],
    [/^SQLITE_CANTOPEN/, 'EIO', 'cannot open database file'],
    [/^SQLITE_(CORRUPT|NOTADB)/, 'EIO', 'database file is corrupt or not a kvfs database'],
  ];
  for (const [re, errno, text] of map) {
    if (re.test(code)) return new FsError(errno, `${what}: ${text} (${e.message})`, { cause: e });
  }
  if (/database connection is not open/.test(e.message)) return new FsError('EIO', `${what}: store is closed`, { cause: e });
  return new FsError('EIO', `${what}: ${e.message}`, { cause: e });
}

export interface OpenSqliteOptions {
  /** Page size for a new database file (ignored for an existing one). */
  pageSize?: number;
  /** 'FULL' (fsync at every commit) or 'NORMAL'. */
  synchronous: 'FULL' | 'NORMAL';
  /** What the file is, for messages ('metadata', 'blocks'). */
  role: string;
  /** Statements creating the schema (IF NOT EXISTS). */
  schema: string;
  /** Create the file (and its directory) when missing. false: FsError ENOENT instead. */
  create: boolean;
}

/**
 * Binds a block store's database to one volume: the first open records the volume's uuid (in an
 * `info (name, value)` table), later opens with another uuid get FsError EINVAL, so two volumes
 * never share (and gc) one block store. `where` names the store in the message.
 */
export function bindToVolume(db: Database.Database, volumeUuid: string, where: string): void {
  const owner = db.prepare<[], { value: string }>("SELECT value FROM info WHERE name = 'volume_uuid'").get()?.value;
  if (owner === undefined) {
    db.prepare("INSERT INTO info (name, value) VALUES ('volume_uuid', ?)").run(volumeUuid);
  } else if (owner !== volumeUuid) {
    throw new FsError('EINVAL', `${where} holds the blocks of volume ${owner}, not of ${volumeUuid}`);
  }
}

/**
 * Opens (creating if needed) a database for exclusive use by this process: WAL journal,
 * locking_mode=EXCLUSIVE with the lock taken now. Another holder -> FsError EBUSY.
 */
export function openExclusiveSqlite(file: string, options: OpenSqliteOptions): Database.Database {
  const what = `open ${options.role} store ${file}`;
  if (!options.create && !fs.existsSync(file)) {
    throw new FsError('ENOENT', `${what}: no such file (is the path right, and the volume formatted?)`);
  }
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true });
  } catch (err) {
    throw new FsError('EIO', `${what}: cannot create directory: ${(err as Error).message}`, { cause: err });
  }
  let db: Database.Database | undefined;
  try {
    // timeout 0: a locked database fails at once instead of waiting 5 s.
    db = new Database(file, { timeout: 0, fileMustExist: !options.create });
    db.pragma('locking_mode = EXCLUSIVE');
    if (options.pageSize) db.pragma(`page_size = ${options.pageSize}`);
    db.pragma('auto_vacuum = INCREMENTAL'); // only takes effect on a new, empty database
    db.pragma('journal_mode = WAL');
    db.exec('BEGIN IMMEDIATE; COMMIT'); // take the exclusive lock now and keep it
    db.pragma(`synchronous = ${options.synchronous}`);
    db.pragma('journal_size_limit = 67108864'); // truncate the WAL back to 64 MiB after checkpoints
    db.exec(options.schema);
    return db;
  } catch (err) {
    db?.close();
    const code = String((err as { code?: unknown }).code ?? '');
    if (/^SQLITE_(BUSY|LOCKED)/.test(code)) {
      throw new FsError(
        'EBUSY',
        `${what}: the volume is in use by another process (another kvfs daemon or tool has it open)`,
        { cause: err },
      );
    }
    throw sqliteError(err, what);
  }
}

/** fdatasync (fsync for a directory) in the thread pool; closes the descriptor after when asked. */
function fsyncAsync(fd: number, closeAfter: boolean): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const done = (err: NodeJS.ErrnoException | null): void => {
      if (closeAfter) fs.closeSync(fd);
      if (err) reject(err);
      else resolve();
    };
    if (closeAfter) fs.fsync(fd, done);
    else fs.fdatasync(fd, done);
  });
}

/** fsync of a file (and of its directory) if it exists; FsError EIO when that fails. */
function syncIfExists(file: string): void {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch {
    return;
  }
  try {
    fs.fsyncSync(fd);
    const dir = fs.openSync(path.dirname(file), 'r');
    try {
      fs.fsyncSync(dir);
    } finally {
      fs.closeSync(dir);
    }
  } catch (err) {
    throw new FsError('EIO', `fsync ${file}: ${(err as Error).message}`, { cause: err });
  } finally {
    fs.closeSync(fd);
  }
}

// ---------------------------------------------------------------------------------------------

const utf8 = (s: string): Buffer => Buffer.from(s, 'utf8');

/** The [start, end) byte range of a prefix scan; end undefined = no upper bound. */
function scanRange(prefix: string, startAfter: string | undefined): { start: Buffer; end: Buffer | undefined } {
  const p = utf8(prefix);
  let start = p;
  if (startAfter !== undefined) {
    const after = Buffer.concat([utf8(startAfter), Buffer.from([0])]);
    if (Buffer.compare(after, start) > 0) start = after;
  }
  for (let i = p.length - 1; i >= 0; i--) {
    if (p[i] < 0xff) {
      const end = Buffer.from(p.subarray(0, i + 1));
      end[i]++;
      return { start, end };
    }
  }
  return { start, end: undefined };
}

function checkLimit(options: ScanOptions | undefined): number {
  const limit = options?.limit;
  if (limit === undefined) return -1; // SQLite: LIMIT -1 = no limit
  if (!Number.isInteger(limit) || limit < 0) throw new FsError('EINVAL', `scan limit must be a non-negative integer, got ${limit}`);
  return limit;
}

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
  CREATE TABLE IF NOT EXISTS session_keys (key BLOB PRIMARY KEY) WITHOUT ROWID;
  CREATE TABLE IF NOT EXISTS small_blocks (id TEXT PRIMARY KEY, data BLOB NOT NULL);
`;

class SqliteTxn implements KvTxn {
  /** Keys written, in order, with their final value (undefined = deleted), for watchers. */
  readonly changes = new Map<string, Buffer | undefined>();
  finished = false;

  constructor(private readonly kv: SqliteKv) {}

  private checkOpen(): void {
    if (this.finished) throw new FsError('EINVAL', 'transaction used after it finished (missing await?)');
  }

  async get(key: string): Promise<Buffer | undefined> {
    this.checkOpen();
    return this.kv.readNow(key);
  }

  async getMany(keys: readonly string[]): Promise<Array<Buffer | undefined>> {
    this.checkOpen();
    return keys.map((key) => this.kv.readNow(key));
  }

  async scan(prefix: string, options?: ScanOptions): Promise<KvPair[]> {
    this.checkOpen();
    return this.kv.scanNow(prefix, options);
  }

  put(key: string, value: Buffer): void {
    this.checkOpen();
    if (!Buffer.isBuffer(value)) throw new FsError('EINVAL', `value for ${JSON.stringify(key)} is not a Buffer`);
    this.kv.writeNow(key, value);
    this.changes.delete(key); // keep the map in order of last write
    this.changes.set(key, value);
  }

  delete(key: string): void {
    this.checkOpen();
    this.kv.writeNow(key, undefined);
    this.changes.delete(key);
    this.changes.set(key, undefined);
  }
}

interface Listener {
  prefix: string;
  onChange: (change: KvChange) => void;
  stopped: boolean;
}

export class SqliteKv implements KvEngine {
  readonly kind = 'sqlite';
  /** The database file. */
  readonly file: string;
  private readonly db: Database.Database;
  private readonly timeoutMs: number;
  private readonly onBackgroundError: (err: Error) => void;
  private readonly inTxn = new AsyncLocalStorage<SqliteKv>();
  private readonly listeners = new Set<Listener>();
  private readonly stmt: {
    get: Database.Statement<[Buffer], { value: Buffer }>;
    scan: Database.Statement<[Buffer, Buffer, number], { key: Buffer; value: Buffer }>;
    scanOpen: Database.Statement<[Buffer, number], { key: Buffer; value: Buffer }>;
    put: Database.Statement<[Buffer, Buffer]>;
    del: Database.Statement<[Buffer]>;
    blobPut: Database.Statement<[string, Buffer]>;
    blobGet: Database.Statement<[string], { data: Buffer }>;
    blobSize: Database.Statement<[string], { n: number }>;
    blobDel: Database.Statement<[string]>;
    blobList: Database.Statement<[string, number], { id: string }>;
    blobUsage: Database.Statement<[], { blocks: number; bytes: number | null }>;
  };
  /** The WAL, which sync() fsyncs. */
  private readonly walFile: string;
  /** Transactions committed, and how many of them an fsync of the WAL has made durable. */
  private commits = 0;
  private synced = 0;
  /** The fsync in flight, which later sync() callers wait for before starting their own. */
  private syncing: Promise<void> | undefined;
  /**
   * The WAL, opened at the first sync and kept open (one trip to the thread pool per sync instead
   * of three). SQLite keeps the same WAL file until the connection closes: checkpoints rewind or
   * truncate it, never replace it. Its directory entry is fsynced when it is opened.
   */
  private walFd: number | undefined;
  /** Queue of transactions (and outside reads waiting for one): true while one runs. */
  private busy = false;
  private readonly waiters: Array<() => void> = [];
  private closed = false;
  /** Keys of the sessions this engine opened and has not closed (see openSession). */
  private readonly liveSessionKeys = new Set<string>();

  /** Opens DIR/meta.db; throws FsError EBUSY if another process (or engine) has it open. */
  constructor(options: SqliteKvOptions) {
    if (!options.dir || !path.isAbsolute(options.dir)) throw new TypeError(`SqliteKv: dir must be an absolute path, got ${options.dir}`);
    const timeoutMs = options.timeoutMs ?? 10_000;
    if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) throw new TypeError(`SqliteKv: timeoutMs must be a positive number, got ${timeoutMs}`);
    this.timeoutMs = timeoutMs;
    this.onBackgroundError = options.onBackgroundError ?? ((err) => process.emitWarning(err));
    this.file = path.join(options.dir, 'meta.db');
    this.walFile = `${this.file}-wal`;
    // Commits left in the WAL by a process that was killed are on disk before we build on them.
    syncIfExists(this.walFile);
    this.db = openExclusiveSqlite(this.file, { role: 'metadata', synchronous: 'NORMAL', schema: SCHEMA, create: options.create ?? true });
    this.stmt = {
      get: this.db.prepare('SELECT value FROM kv WHERE key = ?'),
      scan: this.db.prepare('SELECT key, value FROM kv WHERE key >= ? AND key < ? ORDER BY key LIMIT ?'),
      scanOpen: this.db.prepare('SELECT key, value FROM kv WHERE key >= ? ORDER BY key LIMIT ?'),
      put: this.db.prepare('INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value'),
      del: this.db.prepare('DELETE FROM kv WHERE key = ?'),
      blobPut: this.db.prepare('INSERT INTO small_blocks (id, data) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET data = excluded.data'),
      blobGet: this.db.prepare('SELECT data FROM small_blocks WHERE id = ?'),
      blobSize: this.db.prepare('SELECT length(data) AS n FROM small_blocks WHERE id = ?'),
      blobDel: this.db.prepare('DELETE FROM small_blocks WHERE id = ?'),
      blobList: this.db.prepare('SELECT id FROM small_blocks WHERE id > ? ORDER BY id LIMIT ?'),
      blobUsage: this.db.prepare('SELECT count(*) AS blocks, sum(length(data)) AS bytes FROM small_blocks'),
    };
  }

  // --- synchronous primitives (the caller holds the queue or runs inside a txn) -------------

  /** @internal */
  readNow(key: string): Buffer | undefined {
    try {
      return this.stmt.get.get(utf8(key))?.value;
    } catch (err) {
      throw sqliteError(err, 'sqlite get');
    }
  }

  /** @internal */
  scanNow(prefix: string, options?: ScanOptions): KvPair[] {
    const limit = checkLimit(options);
    const { start, end } = scanRange(prefix, options?.startAfter);
    try {
      const rows = end ? this.stmt.scan.all(start, end, limit) : this.stmt.scanOpen.all(start, limit);
      return rows.map((r) => ({ key: r.key.toString('utf8'), value: r.value }));
    } catch (err) {
      throw sqliteError(err, 'sqlite scan');
    }
  }

  /** @internal */
  writeNow(key: string, value: Buffer | undefined): void {
    // After some errors (disk full, I/O) SQLite rolls the transaction back by itself; writing on
    // would autocommit each statement and break atomicity.
    if (!this.db.inTransaction) throw new FsError('EIO', 'sqlite write: the transaction was already rolled back after an error');
    try {
      if (value === undefined) this.stmt.del.run(utf8(key));
      else this.stmt.put.run(utf8(key), value);
    } catch (err) {
      throw sqliteError(err, 'sqlite write');
    }
  }

  // --- the queue --------------------------------------------------------------------------

  private checkOpen(what: string): void {
    if (this.closed) throw new FsError('EIO', `sqlite ${what}: store is closed`);
  }

  private async acquire(what: string): Promise<void> {
    this.checkOpen(what);
    if (!this.busy) {
      this.busy = true;
      return;
    }
    await new Promise<void>((resolve, reject) => {
      const waiter = (): void => {
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new FsError('ETIMEDOUT', `sqlite ${what}: waited ${this.timeoutMs} ms for a running transaction`, { retryable: true }));
      }, this.timeoutMs);
      this.waiters.push(waiter);
    });
    this.checkOpen(what);
  }

  private release(): void {
    const next = this.waiters.shift();
    if (next) next(); // hand over: busy stays true
    else this.busy = false;
  }

  /** Runs a read against committed state: directly when no txn runs, else after it. */
  private async read<T>(what: string, fn: () => T): Promise<T> {
    this.checkOpen(what);
    // Inside our own txn function: read through (sees the txn's own writes).
    if (this.inTxn.getStore() === this || !this.busy) return fn();
    await this.acquire(what);
    try {
      return fn();
    } finally {
      this.release();
    }
  }

  // --- KvEngine ---------------------------------------------------------------------------

  get(key: string): Promise<Buffer | undefined> {
    return this.read('get', () => this.readNow(key));
  }

  scan(prefix: string, options?: ScanOptions): Promise<KvPair[]> {
    return this.read('scan', () => this.scanNow(prefix, options));
  }

  async txn<T>(fn: (tx: KvTxn) => Promise<T>): Promise<T> {
    if (this.inTxn.getStore() === this) {
      throw new FsError('EDEADLK', 'kv.txn() called inside a transaction function of the same engine');
    }
    await this.acquire('txn');
    let changes: Map<string, Buffer | undefined> | undefined;
    let result: T;
    try {
      try {
        this.db.exec('BEGIN IMMEDIATE');
      } catch (err) {
        throw sqliteError(err, 'sqlite begin');
      }
      const tx = new SqliteTxn(this);
      try {
        result = await this.inTxn.run(this, () => fn(tx));
      } finally {
        tx.finished = true;
        if (tx.changes.size === 0 && this.db.inTransaction) this.db.exec('ROLLBACK');
      }
      if (tx.changes.size > 0) {
        if (!this.db.inTransaction) throw new FsError('EIO', 'sqlite commit: the transaction was already rolled back after an error');
        try {
          this.db.exec('COMMIT');
        } catch (err) {
          throw sqliteError(err, 'sqlite commit');
        }
        this.commits++;
        changes = tx.changes;
      }
    } catch (err) {
      if (this.db.open && this.db.inTransaction) this.db.exec('ROLLBACK');
      throw err;
    } finally {
      this.release();
    }
    if (changes) this.notify(changes);
    return result;
  }

  // --- small blocks (lib/data/files.ts SmallBlockTable) -----------------------------------
  // The file block store keeps small blocks here instead of in a file each. Every write is its
  // own commit, taken through the txn queue (a statement run while a txn is open would join
  // it), so it lands in the WAL before the block-map txn that names the block, and SQLite's
  // prefix recovery keeps "blocks durable before the metadata that names them" across power loss
  // without an fsync per block. Reads need no queue: no txn writes this table.

  private async blobWrite<T>(what: string, fn: () => T): Promise<T> {
    if (this.inTxn.getStore() === this) throw new FsError('EDEADLK', `sqlite ${what} called inside a transaction function`);
    await this.acquire(what);
    try {
      const result = this.db.transaction(fn)();
      this.commits++;
      return result;
    } catch (err) {
      throw sqliteError(err, `sqlite ${what}`);
    } finally {
      this.release();
    }
  }

  putBlob(id: string, data: Buffer): Promise<void> {
    return this.blobWrite('put block', () => void this.stmt.blobPut.run(id, data));
  }

  /** A read of the small_blocks table (no queue needed: no txn writes it), errors as FsError. */
  private blobRead<T>(what: string, fn: () => T): T {
    this.checkOpen(what);
    try {
      return fn();
    } catch (err) {
      throw sqliteError(err, `sqlite ${what}`);
    }
  }

  getBlob(id: string): Buffer | undefined {
    return this.blobRead('get block', () => this.stmt.blobGet.get(id)?.data);
  }

  blobSize(id: string): number | undefined {
    return this.blobRead('block size', () => this.stmt.blobSize.get(id)?.n);
  }

  /** Deletes the rows of `ids`; resolves to those that were there. */
  deleteBlobs(ids: readonly string[]): Promise<string[]> {
    return this.blobWrite('delete blocks', () => ids.filter((id) => this.stmt.blobDel.run(id).changes > 0));
  }

  /** Up to `limit` ids after `after` (''), in id order. */
  listBlobs(after: string, limit: number): string[] {
    return this.blobRead('list blocks', () => this.stmt.blobList.all(after, limit).map((r) => r.id));
  }

  blobUsage(): { blocks: number; bytes: number } {
    return this.blobRead('block usage', () => {
      const r = this.stmt.blobUsage.get();
      return { blocks: r?.blocks ?? 0, bytes: r?.bytes ?? 0 };
    });
  }

  /**
   * Makes every transaction committed before this call durable against power loss: one fsync of
   * the WAL (in the thread pool, not on the event loop), shared with the callers waiting at the
   * time. FsError EIO when the fsync fails.
   */
  async sync(): Promise<void> {
    this.checkOpen('sync');
    const target = this.commits;
    while (this.synced < target) {
      // An fsync already in flight may have started before our commit: wait, then check again.
      this.syncing ??= this.syncWal().finally(() => (this.syncing = undefined));
      await this.syncing;
    }
  }

  private async syncWal(): Promise<void> {
    const upTo = this.commits;
    try {
      if (this.walFd === undefined) {
        const fd = fs.openSync(this.walFile, 'r');
        try {
          // SQLite fsyncs the directory at its first sync of a new WAL; we do it at ours.
          await fsyncAsync(fs.openSync(path.dirname(this.walFile), 'r'), true);
        } catch (err) {
          fs.closeSync(fd);
          throw err;
        }
        this.walFd = fd;
      }
      await fsyncAsync(this.walFd, false);
    } catch (err) {
      throw new FsError('EIO', `sqlite sync ${this.walFile}: ${(err as Error).message}`, { cause: err });
    }
    this.synced = Math.max(this.synced, upTo);
  }

  private notify(changes: Map<string, Buffer | undefined>): void {
    if (this.listeners.size === 0) return;
    const listeners = [...this.listeners];
    setImmediate(() => {
      for (const [key, value] of changes) {
        for (const l of listeners) {
          if (l.stopped || !key.startsWith(l.prefix)) continue;
          try {
            l.onChange({ key, value });
          } catch (err) {
            this.onBackgroundError(err instanceof Error ? err : new Error(String(err)));
          }
        }
      }
    });
  }

  async watch(prefix: string, onChange: (change: KvChange) => void): Promise<() => Promise<void>> {
    this.checkOpen('watch');
    const l: Listener = { prefix, onChange, stopped: false };
    this.listeners.add(l);
    return async () => {
      l.stopped = true;
      this.listeners.delete(l);
    };
  }

  /** One host, one daemon (the database lock guarantees it): a session never expires. */
  /**
   * A session's keys are recorded in session_keys, so that they can go as an etcd lease's keys
   * do when their holder dies: meta.db is open in one process at a time, so at the next
   * openSession every recorded key of a session this engine did not open belongs to a daemon
   * that died (kill -9, power loss) and is deleted in the same transaction.
   */
  async openSession(key: string, value: Buffer, _ttlSeconds: number): Promise<KvSession> {
    const attached = new Set<string>([key]);
    const record = this.db.prepare<[Buffer]>('INSERT OR IGNORE INTO session_keys (key) VALUES (?)');
    const forget = this.db.prepare<[Buffer]>('DELETE FROM session_keys WHERE key = ?');
    await this.txn(async (tx) => {
      const recorded = this.db.prepare<[], { key: Buffer }>('SELECT key FROM session_keys').all();
      for (const row of recorded) {
        const stale = row.key.toString('utf8');
        if (this.liveSessionKeys.has(stale)) continue;
        tx.delete(stale);
        forget.run(row.key);
      }
      tx.put(key, value);
      record.run(utf8(key));
    });
    this.liveSessionKeys.add(key);
    return {
      lost: new Promise<void>(() => undefined),
      attach: async (k, v) => {
        attached.add(k);
        this.liveSessionKeys.add(k);
        await this.txn(async (tx) => {
          tx.put(k, v);
          record.run(utf8(k));
        });
      },
      close: async () => {
        if (!this.db.open) return;
        await this.txn(async (tx) =>
          attached.forEach((k) => {
            tx.delete(k);
            forget.run(utf8(k));
            this.liveSessionKeys.delete(k);
          }),
        );
      },
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await this.acquire('close').catch(() => undefined); // let a running txn finish
    this.closed = true;
    if (this.walFd !== undefined) fs.closeSync(this.walFd);
    this.walFd = undefined;
    for (const l of this.listeners) l.stopped = true;
    this.listeners.clear();
    this.db.close();
    // Fail whoever still waits.
    for (const w of this.waiters.splice(0)) w();
  }
}

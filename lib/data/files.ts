// BlockStore embedded in the daemon, one file per block: DIR/blocks/XX/ID, the way JuiceFS's
// local `file` storage keeps objects. The store of new embedded volumes; a volume whose directory
// holds a blocks.db keeps using that (lib/data/sqlite.ts, chosen in lib/data/index.ts).
//
// Why files and not blocks.db: better-sqlite3 writes and fsyncs every block synchronously on the
// daemon's only thread, and its WAL writes each block twice (WAL, then checkpoint). Here every
// put goes through Node's fs promises, i.e. libuv's thread pool: several blocks are written and
// fsynced at once while the event loop keeps answering FUSE requests. Small blocks (a file of a
// few KiB) are the exception: written with synchronous calls, as blocks.db did (SMALL_PUT).
//
// Durability: put() resolves once the block file is written and fdatasynced and its directory
// entry fsynced, so "blocks durable before the metadata that names them" holds across power loss.
// A put is written in place (no temporary file and rename): a put that did not resolve is named by
// no block map, so a torn file left by a crash is only an unreferenced block for `kvfs gc`; get()
// of a block whose put is in flight answers from memory. Deletes are unlinks without an fsync: a
// delete lost in a power failure leaves an unreferenced block, as in blocks.db.
//
// Small blocks in meta.db: with keepSmallBlocksIn() (lib/fs/volume.ts calls it for an embedded
// volume whose metadata is the SQLite meta.db next to DIR/blocks) a put of up to SMALL_PUT bytes
// becomes a row of meta.db's small_blocks table, its own commit ahead of the block-map commit
// that names it. SQLite recovers a prefix of the commits after a power loss, so the block cannot
// be lost while the block map survives, and the file + directory fsyncs (about 2 ms of every
// small file's close) are not needed: they move to the next meta.db sync, as the block map's
// own durability already does. Reads, deletes, list and usage look at both places (blocks put
// as files before, or larger ones).
//
// Exclusivity and ownership as for blocks.db: DIR/blocks/volume.db is a small SQLite database
// holding the volume's uuid, opened with locking_mode=EXCLUSIVE, so a second opener gets FsError
// EBUSY and a store of another volume FsError EINVAL; the kernel drops the lock when a daemon dies.
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { promisify } from 'node:util';
import type Database from 'better-sqlite3';
import { FsError } from '../errors';
import { bindToVolume, openExclusiveSqlite, sqliteError } from '../meta/sqlite';
import { AlignedSlots, ALIGN, alignUp } from './direct-io';
import { copyInto, type BlockStore } from './store';

/** A table in the metadata database that holds small blocks (SqliteKv in lib/meta/sqlite.ts). */
export interface SmallBlockTable {
  /** Resolves once the block is committed ahead of every later metadata commit. */
  putBlob(id: string, data: Buffer): Promise<void>;
  getBlob(id: string): Buffer | undefined;
  blobSize(id: string): number | undefined;
  /** Resolves to the ids that were in the table. */
  deleteBlobs(ids: readonly string[]): Promise<string[]>;
  /** Up to `limit` ids after `after` ('' for the first), in id order. */
  listBlobs(after: string, limit: number): string[];
  /** Makes every commit so far (block maps included) durable against power loss. */
  sync(): Promise<void>;
  blobUsage(): { blocks: number; bytes: number };
}

export interface FileBlocksOptions {
  /** The volume's directory; blocks go to DIR/blocks/. */
  dir: string;
  /** Create DIR/blocks when missing (default true); false: FsError ENOENT instead. */
  create?: boolean;
  /** The volume these blocks belong to; recorded at first open and checked afterwards. */
  volumeUuid: string;
  /**
   * Read and write block files with O_DIRECT, past the page cache (default true; see
   * direct-io.ts). Falls back to buffered I/O by itself on a filesystem that refuses it.
   */
  directIo?: boolean;
}

/** Subdirectories of DIR/blocks (by a hash of the id): 256 keep each directory small. */
const FANOUT = 256;
/** ids per list() batch. */
const BATCH = 1000;
/**
 * Puts up to this size are written with synchronous calls on the event loop: for a small block
 * the seven trips to the thread pool and back (open, write, fdatasync, close, directory fsync)
 * cost more than the calls themselves, and a file created with 4 KiB pays them on every close.
 */
const SMALL_PUT = 64 * 1024;
/** Most unlinks in flight at once. */
const DELETE_PARALLEL = 16;
const OWNER_SCHEMA = 'CREATE TABLE IF NOT EXISTS info (name TEXT PRIMARY KEY, value TEXT NOT NULL);';

/** The file name of a block id: kept as is when plain, otherwise %XX-escaped (reversible). */
function fileName(id: string): string {
  if (/^[A-Za-z0-9_-][A-Za-z0-9._-]*$/.test(id)) return id;
  if (id === '') throw new FsError('EINVAL', 'file blocks: empty block id');
  return encodeURIComponent(id).replace(/[.!'()*~]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

function idOf(name: string): string {
  return name.includes('%') ? decodeURIComponent(name) : name;
}

/** The fan-out directory of an id: FNV-1a of its bytes, two hex digits. */
function shard(id: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < id.length; i++) h = Math.imul(h ^ id.charCodeAt(i), 0x01000193);
  return ((h >>> 0) % FANOUT).toString(16).padStart(2, '0');
}

/** Where the block `id` of the store in `dir` (the volume's directory) is kept. */
export function blockFile(dir: string, id: string): string {
  return path.join(dir, 'blocks', shard(id), fileName(id));
}

function fsError(err: unknown, what: string): FsError {
  if (err instanceof FsError) return err;
  const code = String((err as NodeJS.ErrnoException).code ?? '');
  const known = ['ENOSPC', 'EACCES', 'EROFS', 'EIO', 'ENAMETOOLONG', 'EDQUOT'] as const;
  const errno = (known as readonly string[]).includes(code) ? (code as (typeof known)[number]) : 'EIO';
  return new FsError(errno === 'EDQUOT' ? 'ENOSPC' : errno, `file blocks ${what}: ${(err as Error).message}`, { cause: err });
}

async function syncPath(p: string): Promise<void> {
  const fh = await fsp.open(p, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** fsyncs of one directory, through a descriptor kept open: callers waiting at the same time share one. */
class DirSync {
  private requested = 0;
  private done = 0;
  private running: Promise<void> | undefined;
  private fd: number | undefined;

  constructor(private readonly dir: string) {}

  private descriptor(): number {
    this.fd ??= fs.openSync(this.dir, 'r');
    return this.fd;
  }

  /** fsync now, blocking the event loop (for small puts, written the same way). */
  syncNow(): void {
    this.requested++;
    fs.fsyncSync(this.descriptor());
    this.done = this.requested;
  }

  close(): void {
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
  }

  /** Resolves after an fsync of the directory that started after this call. */
  async sync(): Promise<void> {
    const target = ++this.requested;
    while (this.done < target) {
      this.running ??= this.run().finally(() => (this.running = undefined));
      await this.running;
    }
  }

  private async run(): Promise<void> {
    const upTo = this.requested;
    const fd = this.descriptor();
    await new Promise<void>((resolve, reject) => fs.fsync(fd, (err) => (err ? reject(err) : resolve())));
    this.done = Math.max(this.done, upTo);
  }
}

export class FileBlocks implements BlockStore {
  readonly kind = 'files';
  /** DIR/blocks. */
  readonly root: string;
  private readonly owner: Database.Database;
  private readonly dirSyncs = new Map<string, DirSync>();
  /** Blocks being written, by id: get() answers from here until the file is complete. */
  private readonly writing = new Map<string, Buffer>();
  /** Puts in flight, awaited by close(). */
  private readonly inFlight = new Set<Promise<void>>();
  private closed = false;
  /** Where small puts go instead of files (keepSmallBlocksIn). */
  private small: SmallBlockTable | undefined;
  /** O_DIRECT for block files; off for good after the first EINVAL or without the arena (direct-io.ts). */
  private direct: boolean;
  private readonly slots = new AlignedSlots();

  /** Opens DIR/blocks; FsError EBUSY if in use, EINVAL if it belongs to another volume. */
  constructor(options: FileBlocksOptions) {
    if (!options.dir || !path.isAbsolute(options.dir)) throw new TypeError(`FileBlocks: dir must be an absolute path, got ${options.dir}`);
    if (!options.volumeUuid) throw new TypeError('FileBlocks: volumeUuid is required');
    this.root = path.join(options.dir, 'blocks');
    this.direct = options.directIo ?? true;
    const create = options.create ?? true;
    const ownerFile = path.join(this.root, 'volume.db');
    const isNew = !fs.existsSync(ownerFile);
    this.owner = openExclusiveSqlite(ownerFile, { role: 'blocks', synchronous: 'FULL', schema: OWNER_SCHEMA, create });
    try {
      bindToVolume(this.owner, options.volumeUuid, this.root);
      if (isNew) {
        // All fan-out directories at once, durable before any block goes into them.
        for (let i = 0; i < FANOUT; i++) fs.mkdirSync(path.join(this.root, i.toString(16).padStart(2, '0')), { recursive: true });
        for (const d of [this.root, path.dirname(this.root)]) {
          const fd = fs.openSync(d, 'r');
          try {
            fs.fsyncSync(fd);
          } finally {
            fs.closeSync(fd);
          }
        }
      }
    } catch (err) {
      this.owner.close();
      throw err instanceof FsError ? err : sqliteError(err, `open blocks store ${this.root}`);
    }
  }

  /**
   * From now on, puts of up to SMALL_PUT bytes go to `table`, which must be the metadata
   * database of this volume (the ordering argument at the top of this file needs the block map
   * in the same SQLite WAL). delete() then also orders itself after the commit that dropped the
   * blocks (the caller needs no sync first): a row's delete is a later commit of the same WAL,
   * and files are unlinked only after table.sync().
   */
  keepSmallBlocksIn(table: SmallBlockTable): void {
    this.small = table;
  }

  private check(what: string): void {
    if (this.closed) throw new FsError('EIO', `file blocks ${what}: store is closed`);
  }

  private pathOf(id: string): { dir: string; file: string } {
    const dir = path.join(this.root, shard(id));
    return { dir, file: path.join(dir, fileName(id)) };
  }

  private dirSync(dir: string): DirSync {
    let s = this.dirSyncs.get(dir);
    if (!s) this.dirSyncs.set(dir, (s = new DirSync(dir)));
    return s;
  }

  /** Resolves once the block file and its directory entry are fsynced. */
  put(id: string, data: Buffer): Promise<void> {
    try {
      this.check('put');
    } catch (err) {
      return Promise.reject(err);
    }
    const small = this.small;
    if (small && data.length <= SMALL_PUT) return this.inBackground(id, data, () => small.putBlob(id, data));
    if (data.length <= SMALL_PUT) {
      try {
        this.writeNow(id, data);
        return Promise.resolve();
      } catch (err) {
        return Promise.reject(fsError(err, `put ${id}`));
      }
    }
    return this.inBackground(id, data, () => this.write(id, data));
  }

  /**
   * Runs a put that waits (for the thread pool, or for meta.db's txn queue): get() answers from
   * `writing` meanwhile, and close() waits for it.
   */
  private inBackground(id: string, data: Buffer, put: () => Promise<void>): Promise<void> {
    this.writing.set(id, data);
    const work = put().then(
      () => undefined,
      (err: unknown) => Promise.reject(fsError(err, `put ${id}`)),
    );
    this.inFlight.add(work);
    return work.finally(() => {
      this.inFlight.delete(work);
      if (this.writing.get(id) === data) this.writing.delete(id);
    });
  }

  private async write(id: string, data: Buffer): Promise<void> {
    const { dir, file } = this.pathOf(id);
    try {
      await this.writeFile(file, data);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      // A fan-out directory removed by hand: make it again (and durable).
      await fsp.mkdir(dir, { recursive: true });
      await syncPath(this.root);
      await this.writeFile(file, data);
    }
    await this.dirSync(dir).sync();
  }

  /** Direct I/O is on and its aligned memory could be had (else off for good). */
  private useDirect(): boolean {
    if (this.direct && !this.slots.available()) this.direct = false;
    return this.direct;
  }

  /** An error of a direct open or I/O: EINVAL (refused) turns direct I/O off for good, else rethrown. */
  private directRefused(err: unknown): void {
    if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
    this.direct = false;
  }

  /** The block's file, written and fdatasynced: with O_DIRECT where it works (direct-io.ts). */
  private async writeFile(file: string, data: Buffer): Promise<void> {
    if (this.useDirect() && data.length <= this.slots.slotSize && (await this.writeDirect(file, data))) return;
    const fh = await fsp.open(file, 'w');
    try {
      await fh.writeFile(data);
      await fh.datasync();
    } finally {
      await fh.close();
    }
  }

  /**
   * Writes through an aligned slot, the length rounded up to ALIGN and the file truncated back.
   * False (and buffered I/O from now on) when this filesystem refuses O_DIRECT: EINVAL at open
   * (tmpfs before Linux 6.6, some FUSE filesystems) or at the write (alignment it does not take).
   */
  private async writeDirect(file: string, data: Buffer): Promise<boolean> {
    let fd: number;
    try {
      fd = await openAsync(file, DIRECT_WRITE, 0o644);
    } catch (err) {
      this.directRefused(err);
      return false;
    }
    try {
      const padded = alignUp(data.length);
      try {
        await this.slots.with(async (slot) => {
          data.copy(slot);
          slot.fill(0, data.length, padded);
          for (let done = 0; done < padded; ) done += (await writeAsync(fd, slot, done, padded - done, done)).bytesWritten;
        });
      } catch (err) {
        this.directRefused(err);
        return false;
      }
      if (padded !== data.length) await ftruncateAsync(fd, data.length);
      await fdatasyncAsync(fd);
    } finally {
      fs.closeSync(fd);
    }
    return true;
  }

  /** A small put, with synchronous calls (see SMALL_PUT). */
  private writeNow(id: string, data: Buffer): void {
    const { dir, file } = this.pathOf(id);
    let fd: number;
    try {
      fd = fs.openSync(file, 'w');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      fs.mkdirSync(dir, { recursive: true });
      const root = fs.openSync(this.root, 'r');
      try {
        fs.fsyncSync(root);
      } finally {
        fs.closeSync(root);
      }
      fd = fs.openSync(file, 'w');
    }
    try {
      for (let done = 0; done < data.length; ) done += fs.writeSync(fd, data, done, data.length - done, done);
      fs.fdatasyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    this.dirSync(dir).syncNow();
  }

  async get(id: string): Promise<Buffer | undefined> {
    this.check('get');
    return this.inMemory(id) ?? this.fromFile(id, 'get', (file) => this.readWhole(file, Buffer.allocUnsafe));
  }

  /** get() into the caller's buffer: the file is read straight into it (see BlockStore.getInto). */
  async getInto(id: string, alloc: (size: number) => Buffer): Promise<Buffer | undefined> {
    this.check('get');
    const held = this.inMemory(id);
    if (held) return copyInto(held, alloc);
    return this.fromFile(id, 'get', (file) => this.readWhole(file, alloc));
  }

  /** A block file's bytes into a buffer from `alloc`: with O_DIRECT where it works. */
  private async readWhole(file: string, alloc: (size: number) => Buffer): Promise<Buffer> {
    if (this.useDirect()) {
      const got = await this.readDirect(file, alloc);
      if (got) return got;
    }
    return readWholeFile(file, alloc);
  }

  /**
   * Reads through an aligned slot and copies into the caller's buffer. Undefined (and buffered
   * I/O from now on, as in writeDirect) when the filesystem refuses O_DIRECT; undefined too for
   * a file larger than a slot (not a block of any volume), read buffered by the caller.
   */
  private async readDirect(file: string, alloc: (size: number) => Buffer): Promise<Buffer | undefined> {
    let fd: number;
    try {
      fd = await openAsync(file, DIRECT_READ);
    } catch (err) {
      this.directRefused(err);
      return undefined;
    }
    try {
      const size = fs.fstatSync(fd).size;
      if (size > this.slots.slotSize) return undefined;
      const padded = alignUp(size);
      return await this.slots.with(async (slot) => {
        let done = 0;
        // Reads stop at the end of the file; a short read that is still aligned is continued.
        while (done < size) {
          const { bytesRead } = await readAsync(fd, slot, done, padded - done, done);
          done += bytesRead;
          if (bytesRead === 0 || done % ALIGN !== 0) break;
        }
        const into = alloc(size);
        const n = slot.copy(into, 0, 0, Math.min(done, size));
        return n < size ? into.subarray(0, n) : into;
      });
    } catch (err) {
      this.directRefused(err);
      return undefined;
    } finally {
      fs.closeSync(fd);
    }
  }

  /** Part of a block (random reads of large blocks): one open and one read, not the whole file. */
  async getRange(id: string, offset: number, length: number): Promise<Buffer | undefined> {
    this.check('get');
    const whole = this.inMemory(id);
    if (whole) return whole.length > offset ? whole.subarray(offset, offset + length) : undefined;
    if (length <= 0) return undefined;
    return this.fromFile(id, 'get', (file) => readFileRange(file, offset, length));
  }

  async size(id: string): Promise<number | undefined> {
    this.check('size');
    const pending = this.writing.get(id);
    if (pending) return pending.length;
    const small = this.small?.blobSize(id);
    if (small !== undefined) return small;
    return this.fromFile(id, 'size', async (file) => (await fsp.stat(file)).size);
  }

  /** A block still being written, or one kept as a meta.db row. */
  private inMemory(id: string): Buffer | undefined {
    return this.writing.get(id) ?? this.small?.getBlob(id);
  }

  /** `read` of the block's file: undefined when there is none, other failures as FsError. */
  private async fromFile<T>(id: string, what: string, read: (file: string) => Promise<T>): Promise<T | undefined> {
    try {
      return await read(this.pathOf(id).file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw fsError(err, `${what} ${id}`);
    }
  }

  /** Unlinks, without an fsync: a delete lost in a power failure only leaves a block for gc. */
  async delete(ids: readonly string[]): Promise<void> {
    this.check('delete');
    if (this.small && ids.length > 0) {
      // No unlink (a trip to the thread pool for ENOENT) for the ids that were rows.
      const rows = new Set(await this.small.deleteBlobs(ids));
      if (rows.size > 0) ids = ids.filter((id) => !rows.has(id));
      if (ids.length === 0) return;
      await this.small.sync();
    }
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < ids.length) {
        const id = ids[next++];
        try {
          await fsp.unlink(this.pathOf(id).file);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw fsError(err, `delete ${id}`);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(DELETE_PARALLEL, ids.length) }, worker));
  }

  /** The block ids of each fan-out directory, in batches of at most BATCH. */
  async list(onBatch: (ids: string[]) => Promise<void> | void): Promise<void> {
    this.check('list');
    if (this.small) {
      for (let after = ''; ; ) {
        const ids = this.small.listBlobs(after, BATCH);
        if (ids.length === 0) break;
        await onBatch(ids);
        after = ids[ids.length - 1];
      }
    }
    await this.listFiles(onBatch);
  }

  private async listFiles(onBatch: (ids: string[]) => Promise<void> | void): Promise<void> {
    let batch: string[] = [];
    for (let i = 0; i < FANOUT; i++) {
      let names: string[];
      try {
        names = await fsp.readdir(path.join(this.root, i.toString(16).padStart(2, '0')));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
        throw fsError(err, 'list');
      }
      for (const name of names) {
        batch.push(idOf(name));
        if (batch.length >= BATCH) {
          await onBatch(batch);
          batch = [];
        }
      }
    }
    if (batch.length > 0) await onBatch(batch);
  }

  /** Counts the files and sums their sizes (one stat per block). */
  async usage(): Promise<{ blocks: number; bytes: number }> {
    this.check('usage');
    const small = this.small?.blobUsage() ?? { blocks: 0, bytes: 0 };
    let blocks = small.blocks;
    let bytes = small.bytes;
    await this.listFiles(async (ids) => {
      const sizes = await Promise.all(ids.map((id) => fsp.stat(this.pathOf(id).file).then((s) => s.size, () => undefined)));
      for (const s of sizes) {
        if (s === undefined) continue;
        blocks++;
        bytes += s;
      }
    });
    return { blocks, bytes };
  }

  /** Every put is fsynced (file and directory entry) before it resolves. */
  async durabilityWarning(): Promise<string | undefined> {
    return undefined;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await Promise.allSettled([...this.inFlight]);
    this.closed = true;
    for (const d of this.dirSyncs.values()) d.close();
    this.owner.close();
  }
}

const openAsync = promisify(fs.open);
const readAsync = promisify(fs.read);
const writeAsync = promisify(fs.write);
const ftruncateAsync = promisify(fs.ftruncate);
const fdatasyncAsync = promisify(fs.fdatasync);
const DIRECT_WRITE = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC | fs.constants.O_DIRECT;
const DIRECT_READ = fs.constants.O_RDONLY | fs.constants.O_DIRECT;

/**
 * A block file's bytes in two trips to the thread pool (open, read) where fs.promises.readFile
 * takes four or five (open, fstat, reads of 512 KiB, close): fstat and close of an open file
 * need no disk I/O, so they run on the event loop.
 */
async function readWholeFile(file: string, alloc: (size: number) => Buffer): Promise<Buffer> {
  return withFd(file, async (fd) => {
    const buf = alloc(fs.fstatSync(fd).size);
    return buf.subarray(0, await readFully(fd, buf, 0)); // shorter only if it shrank under us
  });
}

/** Up to `length` bytes from `offset` (fewer at the end of the file, undefined past it). */
async function readFileRange(file: string, offset: number, length: number): Promise<Buffer | undefined> {
  return withFd(file, async (fd) => {
    const buf = Buffer.allocUnsafe(length);
    const n = await readFully(fd, buf, offset);
    return n > 0 ? buf.subarray(0, n) : undefined;
  });
}

async function withFd<T>(file: string, use: (fd: number) => Promise<T>): Promise<T> {
  const fd = await openAsync(file, 'r');
  try {
    return await use(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Fills `buf` from `position` on, until it is full or the file ends; the bytes read. */
async function readFully(fd: number, buf: Buffer, position: number): Promise<number> {
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await readAsync(fd, buf, done, buf.length - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done;
}

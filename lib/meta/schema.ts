// What kvfs stores in the metadata engine, and how it is encoded.
//
// Key layout, inside the volume's own namespace (etcd: prefix `kvfs/VOLUME/`):
//
//   setting                       VolumeSettings (JSON)
//   counter/inode                 next free inode number (decimal)
//   counter/block                 next free block id (decimal)
//   A{ino}I                       inode attributes (JSON, see AttrRecord)
//   A{ino}D{name}                 directory entry: child inode and type (JSON, see EntryRecord)
//   A{ino}C{chunk}                block map of one chunk of a file (JSON, see ChunkRecord)
//   A{ino}S                       symlink target (raw bytes)
//   A{ino}X{name}                 extended attribute value (raw bytes)
//   O{ino}                        orphan: inode whose last name is gone, data not yet reclaimed
//                                 (value: when, in ns since the epoch)
//   H{ino}/{session}              a mount still has that orphan open (lives with the session)
//   L{ino}                        lock version: rewritten by every lock change on the inode
//   L{ino}/{session}              that session's fcntl and flock locks on the inode (JSON)
//   session/{id}                  a mount: host, pid, mountpoint, version, start (lives with its lease)
//
// {ino} and {chunk} are 16 and 8 hex digits, so everything about one inode is one key range and
// a range read returns a whole directory or a file's whole block map in order (as JuiceFS's
// `A{ino}` layout does).

/**
 * The newest format this kvfs reads. 1: blocks in clear. 2: blocks may be encrypted
 * (VolumeSettings.encryption); only encrypted volumes were recorded as 2, so that a kvfs that
 * cannot decrypt refuses them instead of serving ciphertext as file data. 3: block maps may list
 * parts (BlockRef.parts), which a kvfs of format 2 would ignore and so serve old data; volumes
 * formatted since are 3, encrypted or not. Volumes of formats 1 and 2 are read and written as
 * they are, without parts.
 */
export const FORMAT_VERSION = 3;
/** The first format whose block maps may list parts. */
export const PARTS_FORMAT_VERSION = 3;

/** Blocks per chunk key. A commit therefore touches few keys; a file of N blocks has N/256 keys. */
export const CHUNK_BLOCKS = 256;

export const ROOT_INO = 1;

export interface VolumeSettings {
  name: string;
  uuid: string;
  /** Where blocks live (credentials are never stored). */
  dataUrl: string;
  blockSize: number;
  formatVersion: number;
  /** ISO 8601 */
  createdAt: string;
  /**
   * Present when blocks are encrypted: cipher ('aes-256-gcm'), key derivation ('hkdf-sha256')
   * and key check value, never the key (see lib/data/encrypted.ts).
   */
  encryption?: { cipher: string; kdf: string; keyCheck: string };
}

export type FileType = 'file' | 'dir' | 'symlink' | 'fifo' | 'socket' | 'char' | 'block';

export const S_IFMT = 0o170000;
const TYPE_BITS: Record<FileType, number> = {
  file: 0o100000,
  dir: 0o040000,
  symlink: 0o120000,
  fifo: 0o010000,
  socket: 0o140000,
  char: 0o020000,
  block: 0o060000,
};

export function typeBits(type: FileType): number {
  return TYPE_BITS[type];
}

export function typeOfMode(mode: number): FileType | undefined {
  const bits = mode & S_IFMT;
  for (const [name, value] of Object.entries(TYPE_BITS)) if (value === bits) return name as FileType;
  return undefined;
}

/** Inode attributes as the filesystem layer sees them. Times are nanoseconds since the epoch. */
export interface Attr {
  ino: number;
  type: FileType;
  /** Full st_mode, type bits included. */
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  size: number;
  /** Bytes of stored blocks the file references (st_blocks; sparse files use less than size). */
  used: number;
  rdev: number;
  atime: bigint;
  mtime: bigint;
  ctime: bigint;
  /** Parent directory (directories only; 0 otherwise). */
  parent: number;
}

/** The JSON form of Attr: times as decimal strings of nanoseconds (JSON has no 64-bit integers). */
interface AttrRecord {
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  size: number;
  used?: number;
  rdev: number;
  atime: string;
  mtime: string;
  ctime: string;
  parent?: number;
}

export function encodeAttr(attr: Attr): Buffer {
  const record: AttrRecord = {
    mode: attr.mode,
    uid: attr.uid,
    gid: attr.gid,
    nlink: attr.nlink,
    size: attr.size,
    used: attr.used,
    rdev: attr.rdev,
    atime: attr.atime.toString(),
    mtime: attr.mtime.toString(),
    ctime: attr.ctime.toString(),
  };
  if (attr.parent) record.parent = attr.parent;
  return Buffer.from(JSON.stringify(record));
}

export function decodeAttr(ino: number, value: Buffer): Attr {
  const r = JSON.parse(value.toString()) as AttrRecord;
  const type = typeOfMode(r.mode);
  if (!type) throw new Error(`inode ${ino} has an invalid mode ${r.mode.toString(8)}`);
  return {
    ino,
    type,
    mode: r.mode,
    uid: r.uid,
    gid: r.gid,
    nlink: r.nlink,
    size: r.size,
    used: r.used ?? 0,
    rdev: r.rdev,
    atime: BigInt(r.atime),
    mtime: BigInt(r.mtime),
    ctime: BigInt(r.ctime),
    parent: r.parent ?? 0,
  };
}

export interface Entry {
  name: string;
  ino: number;
  type: FileType;
}

interface EntryRecord {
  i: number;
  t: FileType;
}

export function encodeEntry(ino: number, type: FileType): Buffer {
  const record: EntryRecord = { i: ino, t: type };
  return Buffer.from(JSON.stringify(record));
}

export function decodeEntry(name: string, value: Buffer): Entry {
  const r = JSON.parse(value.toString()) as EntryRecord;
  return { name, ino: r.i, type: r.t };
}

/**
 * Bytes written over a block after it was stored, stored apart as their own object (format 3):
 * the object `id` holds exactly the `len` bytes that go at offset `at` of the block. A commit
 * that changed little of a block (an append, a database page) stores only those bytes instead
 * of the whole block again, as JuiceFS's slices do; a later commit writes the whole block anew
 * once the parts pile up (lib/fs/file.ts).
 */
export interface BlockPart {
  id: number;
  at: number;
  len: number;
}

/** One block of a file: the block's id in the block store and how many of its bytes are valid. */
export interface BlockRef {
  id: number;
  /** Bytes of the block that belong to the file; the rest of the block reads as zeros. */
  len: number;
  /** Parts over the stored block, oldest first (each newer one wins where they overlap). */
  parts?: readonly BlockPart[];
}

/** Every object in the block store a block reference uses: its base block, then its parts. */
export function refIds(ref: BlockRef): number[] {
  return ref.parts ? [ref.id, ...ref.parts.map((p) => p.id)] : [ref.id];
}

/**
 * The id a block's current content is known by (the block cache's key): its newest part, else its
 * base. Unique per content: every commit that changes a block stores at least one new object.
 */
export function contentId(ref: BlockRef): number {
  return ref.parts && ref.parts.length > 0 ? ref.parts[ref.parts.length - 1].id : ref.id;
}

/** Same block, same parts (a commit that adds parts checks that its base is still current). */
export function sameRef(a: BlockRef, b: BlockRef): boolean {
  return a.id === b.id && contentId(a) === contentId(b) && (a.parts?.length ?? 0) === (b.parts?.length ?? 0);
}

/** A chunk's block map: index within the chunk -> block. Missing indexes are holes. */
export type ChunkMap = Map<number, BlockRef>;

/** [id, len] or, with parts, [id, len, [id, at, len, id, at, len, ...]]. */
type ChunkRecord = Record<string, [number, number] | [number, number, number[]]>;

export function encodeChunk(map: ChunkMap): Buffer {
  const record: ChunkRecord = {};
  for (const [index, ref] of [...map].sort((a, b) => a[0] - b[0])) {
    record[index] = ref.parts && ref.parts.length > 0 ? [ref.id, ref.len, ref.parts.flatMap((p) => [p.id, p.at, p.len])] : [ref.id, ref.len];
  }
  return Buffer.from(JSON.stringify(record));
}

export function decodeChunk(value: Buffer | undefined): ChunkMap {
  const map: ChunkMap = new Map();
  if (!value) return map;
  const record = JSON.parse(value.toString()) as ChunkRecord;
  for (const [index, [id, len, flat]] of Object.entries(record)) {
    if (!flat) {
      map.set(Number(index), { id, len });
      continue;
    }
    if (!Array.isArray(flat) || flat.length % 3 !== 0) throw new Error(`bad parts of block ${index}`);
    const parts: BlockPart[] = [];
    for (let k = 0; k < flat.length; k += 3) parts.push({ id: flat[k], at: flat[k + 1], len: flat[k + 2] });
    map.set(Number(index), { id, len, parts });
  }
  return map;
}

const hex = (n: number, width: number) => n.toString(16).padStart(width, '0');

export const keys = {
  setting: 'setting',
  inodeCounter: 'counter/inode',
  blockCounter: 'counter/block',
  inode: (ino: number) => `A${hex(ino, 16)}`,
  attr: (ino: number) => `A${hex(ino, 16)}I`,
  entries: (ino: number) => `A${hex(ino, 16)}D`,
  entry: (ino: number, name: string) => `A${hex(ino, 16)}D${name}`,
  chunks: (ino: number) => `A${hex(ino, 16)}C`,
  chunk: (ino: number, chunk: number) => `A${hex(ino, 16)}C${hex(chunk, 8)}`,
  chunkIndexOf: (key: string) => parseInt(key.slice(-8), 16),
  symlink: (ino: number) => `A${hex(ino, 16)}S`,
  xattrs: (ino: number) => `A${hex(ino, 16)}X`,
  xattr: (ino: number, name: string) => `A${hex(ino, 16)}X${name}`,
  /** Rewritten by every rename that moves a directory to another parent (serializes them). */
  renameLock: 'lock/rename',
  sessions: 'session/',
  session: (id: string) => `session/${id}`,
  /** A mount's claim on an orphan it still has open: H{ino}/{session id}, bound to the session. */
  holds: (ino: number) => `H${hex(ino, 16)}/`,
  hold: (ino: number, session: string) => `H${hex(ino, 16)}/${session}`,
  /** Rewritten by every lock change on the inode (lib/fs/locks.ts): L{ino}. */
  lockVersion: (ino: number) => `L${hex(ino, 16)}`,
  /** Locks of one session on the inode: L{ino}/{session id}. */
  locks: (ino: number) => `L${hex(ino, 16)}/`,
  lock: (ino: number, session: string) => `L${hex(ino, 16)}/${session}`,
  orphans: 'O',
  orphan: (ino: number) => `O${hex(ino, 16)}`,
  inodeOfOrphan: (key: string) => parseInt(key.slice(1), 16),
};

let clockOrigin = { wall: BigInt(Date.now()) * 1_000_000n, mono: process.hrtime.bigint() };

/** The current time in nanoseconds: wall clock, with sub-millisecond resolution from hrtime. */
export function nowNs(): bigint {
  const now = clockOrigin.wall + (process.hrtime.bigint() - clockOrigin.mono);
  const wall = BigInt(Date.now()) * 1_000_000n;
  // Follow the wall clock when it was stepped (NTP), else keep the finer monotonic reading.
  if (now - wall > 5_000_000n || wall - now > 5_000_000n) {
    clockOrigin = { wall, mono: process.hrtime.bigint() };
    return wall;
  }
  return now;
}

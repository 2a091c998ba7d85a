// Encryption at rest: a BlockStore wrapper that seals every block with AES-256-GCM before it
// leaves the daemon, and opens (authenticates, then decrypts) every block it reads.
//
// Keys. The volume key is 32 bytes chosen by the user (64 hex digits, e.g. `openssl rand -hex 32`)
// and never stored. Two keys are derived from it with HKDF-SHA256, salted with the volume uuid:
//   - the block key (info 'kvfs v1 block key'), which encrypts the blocks;
//   - the key check value (info 'kvfs v1 key check'), stored in the volume settings, so that a
//     mount can tell a wrong key at once instead of failing every read. HKDF outputs for distinct
//     infos are independent: the check value says nothing about the block key.
//
// A stored block is
//   [1 byte version = 1][12 bytes random nonce][ciphertext, as long as the block][16 bytes GCM tag]
// and its associated data (authenticated, not stored) binds it to its place:
//   'kvfs block v1' NUL VOLUME_UUID NUL BLOCK_ID
// so a block that was changed, swapped with another block (of this or another volume, even under
// the same key), or written under another key fails authentication: get() then throws
// FsError('EIO'), and a read through the mount gets EIO, never wrong data. A random 96-bit nonce
// per block is safe for about 2^32 blocks per key (NIST SP 800-38D), 4 PiB of 1 MiB blocks.
//
// What this does not protect: block ids, block sizes (the ciphertext is 29 bytes longer than the
// block) and everything in the metadata store (names, sizes, owners, modes, times, xattrs).
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { inspect } from 'node:util';
import { FsError, UsageError } from '../errors';
import type { BlockStore } from './store';

export const CIPHER = 'aes-256-gcm';
export const KEY_BYTES = 32;
const VERSION = 1;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
/** Bytes a sealed block is longer than the block. */
export const SEAL_OVERHEAD = 1 + NONCE_BYTES + TAG_BYTES;
const HOW_TO_MAKE = 'make one with: openssl rand -hex 32 > FILE; chmod 600 FILE';

/** What an encrypted volume records in its settings: enough to check a key, never the key. */
export interface EncryptionSettings {
  cipher: typeof CIPHER;
  kdf: 'hkdf-sha256';
  /** HKDF-SHA256(key, salt = volume uuid, info 'kvfs v1 key check'), 32 bytes, hex. */
  keyCheck: string;
}

/**
 * A volume key, as given by the user. The bytes are kept in a private field and never printed:
 * String(), JSON.stringify() and util.inspect() show only where the key came from.
 */
export class EncryptionKey {
  readonly #bytes: Buffer;
  /** Where the key came from, for messages ('--key-file /etc/kvfs/vol1.key', 'KVFS_KEY'). */
  readonly from: string;

  private constructor(bytes: Buffer, from: string) {
    this.#bytes = bytes;
    this.from = from;
  }

  /** 64 hex digits (surrounding white space ignored); UsageError saying what is wrong otherwise. */
  static fromHex(text: string, from: string): EncryptionKey {
    const hex = text.trim();
    if (hex === '') throw new UsageError(`${from} is empty: it must hold a 32-byte key as 64 hex digits (${HOW_TO_MAKE})`);
    if (!/^[0-9a-fA-F]+$/.test(hex) || hex.length !== KEY_BYTES * 2) {
      const what = /^[0-9a-fA-F]+$/.test(hex) ? `${hex.length} hex digits` : 'characters that are not hex digits';
      throw new UsageError(`${from} does not hold a key: expected 64 hex digits (32 bytes), found ${what} (${HOW_TO_MAKE})`);
    }
    return new EncryptionKey(Buffer.from(hex, 'hex'), from);
  }

  /** A fresh random key (the bench's throw-away volumes). */
  static random(from: string): EncryptionKey {
    return new EncryptionKey(randomBytes(KEY_BYTES), from);
  }

  /** The key as 64 hex digits, for writing a key file. */
  toHex(): string {
    return this.#bytes.toString('hex');
  }

  /** HKDF-SHA256 of the key, salted with the volume uuid. */
  derive(volumeUuid: string, info: string): Buffer {
    return Buffer.from(hkdfSync('sha256', this.#bytes, Buffer.from(volumeUuid, 'utf8'), Buffer.from(info, 'utf8'), KEY_BYTES));
  }

  toString(): string {
    return `[key from ${this.from}]`;
  }
  toJSON(): string {
    return this.toString();
  }
  [inspect.custom](): string {
    return this.toString();
  }
}

/** The settings an encrypted volume records at format time. */
export function encryptionSettings(key: EncryptionKey, volumeUuid: string): EncryptionSettings {
  return { cipher: CIPHER, kdf: 'hkdf-sha256', keyCheck: key.derive(volumeUuid, 'kvfs v1 key check').toString('hex') };
}

/** Whether the key is the one the volume was formatted with (constant-time compare). */
export function keyMatches(key: EncryptionKey, volumeUuid: string, settings: EncryptionSettings): boolean {
  const want = Buffer.from(settings.keyCheck, 'hex');
  const got = key.derive(volumeUuid, 'kvfs v1 key check');
  return want.length === got.length && timingSafeEqual(want, got);
}

/** The key a volume's blocks are sealed with. */
export function blockKey(key: EncryptionKey, volumeUuid: string): Buffer {
  return key.derive(volumeUuid, 'kvfs v1 block key');
}

function associatedData(volumeUuid: string, id: string): Buffer {
  return Buffer.from(`kvfs block v1\0${volumeUuid}\0${id}`, 'utf8');
}

/** Seals one block: version, random nonce, ciphertext, tag. */
export function sealBlock(key: Buffer, volumeUuid: string, id: string, data: Buffer): Buffer {
  const out = Buffer.allocUnsafe(SEAL_OVERHEAD + data.length);
  out[0] = VERSION;
  const nonce = randomBytes(NONCE_BYTES);
  nonce.copy(out, 1);
  const cipher = createCipheriv(CIPHER, key, nonce, { authTagLength: TAG_BYTES });
  cipher.setAAD(associatedData(volumeUuid, id));
  const body = 1 + NONCE_BYTES;
  let n = cipher.update(data).copy(out, body);
  n += cipher.final().copy(out, body + n);
  cipher.getAuthTag().copy(out, body + n);
  return out;
}

/** Opens one sealed block; FsError('EIO') unless it authenticates as block `id` of this volume. */
export function openBlock(key: Buffer, volumeUuid: string, id: string, sealed: Buffer): Buffer {
  const fail = (why: string) =>
    new FsError('EIO', `block ${id} ${why}: it was changed or swapped in the block store, or sealed with another key; its data is not returned`);
  if (sealed.length < SEAL_OVERHEAD) throw fail(`is ${sealed.length} bytes, too short to be an encrypted block`);
  if (sealed[0] !== VERSION) throw fail(`has an unknown encryption format ${sealed[0]}`);
  const nonce = sealed.subarray(1, 1 + NONCE_BYTES);
  const tag = sealed.subarray(sealed.length - TAG_BYTES);
  const decipher = createDecipheriv(CIPHER, key, nonce, { authTagLength: TAG_BYTES });
  decipher.setAAD(associatedData(volumeUuid, id));
  decipher.setAuthTag(tag);
  const first = decipher.update(sealed.subarray(1 + NONCE_BYTES, sealed.length - TAG_BYTES));
  let last: Buffer;
  try {
    last = decipher.final();
  } catch {
    first.fill(0); // unauthenticated plaintext never leaves this function
    throw fail('failed authentication');
  }
  return last.length === 0 ? first : Buffer.concat([first, last]);
}

export interface EncryptedBlocksOptions {
  volumeUuid: string;
  /**
   * The volume's key, already checked with keyMatches(). Undefined: the store is locked: list,
   * delete, size, usage work (gc, status), and get of a missing block (undefined); get of a
   * stored block and put fail with EACCES saying a key is needed.
   */
  key: EncryptionKey | undefined;
  /** How to name the volume in the locked message. */
  describe: string;
  /**
   * Called once per block id whose stored value fails authentication (the daemon logs it: the
   * application only sees EIO).
   */
  onAuthFailure?: (id: string, err: FsError) => void;
}

/** A BlockStore that keeps only sealed blocks in `inner`. */
export class EncryptedBlocks implements BlockStore {
  readonly kind: string;
  readonly #key: Buffer | undefined;
  private readonly uuid: string;
  private readonly describe: string;
  private readonly onAuthFailure?: (id: string, err: FsError) => void;
  private readonly reported = new Set<string>();

  constructor(
    private readonly inner: BlockStore,
    options: EncryptedBlocksOptions,
  ) {
    this.kind = `${inner.kind}+${CIPHER}`;
    this.uuid = options.volumeUuid;
    this.describe = options.describe;
    this.onAuthFailure = options.onAuthFailure;
    this.#key = options.key ? blockKey(options.key, options.volumeUuid) : undefined;
  }

  /** Whether blocks can be read and written (a key was given). */
  get unlocked(): boolean {
    return this.#key !== undefined;
  }

  private keyOrFail(): Buffer {
    if (this.#key) return this.#key;
    throw new FsError(
      'EACCES',
      `volume ${this.describe} is encrypted and no key was given: pass --key-file FILE (or set KVFS_KEY_FILE or KVFS_KEY) to read or write its blocks`,
    );
  }

  async put(id: string, data: Buffer): Promise<void> {
    const key = this.keyOrFail();
    await this.inner.put(id, sealBlock(key, this.uuid, id, data));
  }

  /** Whether a block exists needs no key (fsck confirming a missing block); its contents do. */
  async get(id: string): Promise<Buffer | undefined> {
    const sealed = await this.inner.get(id);
    if (sealed === undefined) return undefined;
    const key = this.keyOrFail();
    try {
      return openBlock(key, this.uuid, id, sealed);
    } catch (err) {
      if (err instanceof FsError && this.onAuthFailure && !this.reported.has(id) && this.reported.size < 1000) {
        this.reported.add(id);
        this.onAuthFailure(id, err);
      }
      throw err;
    }
  }

  /** The data size of a stored block, from its sealed length: needs no key, nor a valid seal. */
  async size(id: string): Promise<number | undefined> {
    const stored = this.inner.size ? await this.inner.size(id) : (await this.inner.get(id))?.length;
    return stored === undefined ? undefined : Math.max(0, stored - SEAL_OVERHEAD);
  }

  delete(ids: readonly string[]): Promise<void> {
    return this.inner.delete(ids);
  }

  list(onBatch: (ids: string[]) => Promise<void> | void): Promise<void> {
    return this.inner.list(onBatch);
  }

  /** Blocks and bytes as stored (each block SEAL_OVERHEAD bytes longer than its data). */
  usage(): Promise<{ blocks: number; bytes: number }> {
    return this.inner.usage();
  }

  durabilityWarning(): Promise<string | undefined> {
    return this.inner.durabilityWarning();
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/** Rate of sealing and opening block-sized buffers in this process (kvfs bench). */
export function measureCipher(blockSize: number, count: number): { sealMBps: number; openMBps: number } {
  const key = randomBytes(KEY_BYTES);
  const data = randomBytes(blockSize);
  const sealed: Buffer[] = [];
  // Unmeasured warm-up (cipher setup, JIT).
  for (let i = 0; i < 4; i++) openBlock(key, 'bench', `w${i}`, sealBlock(key, 'bench', `w${i}`, data));
  let t = performance.now();
  for (let i = 0; i < count; i++) sealed.push(sealBlock(key, 'bench', String(i), data));
  const sealMs = performance.now() - t;
  t = performance.now();
  for (let i = 0; i < count; i++) openBlock(key, 'bench', String(i), sealed[i]);
  const openMs = performance.now() - t;
  const mb = (blockSize * count) / 1e6;
  return { sealMBps: mb / (sealMs / 1000), openMBps: mb / (openMs / 1000) };
}

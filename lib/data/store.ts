// The block store interface: immutable blocks by id.
//
// The block store never sees inodes, paths or offsets (as JuiceFS pkg/chunk). A block is written
// once under a fresh id and never changed; the metadata engine decides which ids a file uses.
// Every backend must pass the shared conformance suite in test/_suites/blocks.ts.

/** `data` copied into a buffer from `alloc(data.length)`: getInto() for bytes already in memory. */
export function copyInto(data: Buffer, alloc: (size: number) => Buffer): Buffer {
  const into = alloc(data.length);
  data.copy(into);
  return into;
}

export interface BlockStore {
  /** Short backend name for messages and status ('redis', 'sqlite'). */
  readonly kind: string;
  /**
   * Store a block. Resolves only once the backend has accepted it, and holds no reference to
   * `data` after that (the caller reuses the buffer: lib/fs/pool.ts).
   */
  put(id: string, data: Buffer): Promise<void>;
  /** The block's bytes, or undefined if no such block exists. */
  get(id: string): Promise<Buffer | undefined>;
  /**
   * Optional: `length` bytes of the block from `offset` (fewer at its end), for reads that need
   * a small part of a large block. Undefined if no such block exists, and may be undefined (or
   * empty) for a range past the block's end. Stores that transform whole blocks (encryption)
   * leave it out.
   */
  getRange?(id: string, offset: number, length: number): Promise<Buffer | undefined>;
  /**
   * Optional: get() into memory the caller provides. `alloc(size)` is called once with the
   * block's size and returns a buffer of exactly that size, which the store fills; resolves to it
   * (a shorter view if the block turned out shorter), or undefined if no such block exists. Lets
   * the block cache read straight into its pool buffers instead of copying every block once
   * more. Stores whose replies arrive in their own buffers leave it out.
   */
  getInto?(id: string, alloc: (size: number) => Buffer): Promise<Buffer | undefined>;
  /**
   * Optional: the size of a block's data without reading it for the caller (gc measuring blocks
   * it may delete), undefined if no such block exists. Stores that transform blocks (encryption)
   * provide it so that it works without a key and for blocks that would not decrypt.
   */
  size?(id: string): Promise<number | undefined>;
  /** Delete blocks; ids that do not exist are ignored. */
  delete(ids: readonly string[]): Promise<void>;
  /** Every stored block id, in batches (for gc and fsck); order unspecified. */
  list(onBatch: (ids: string[]) => Promise<void> | void): Promise<void>;
  /** Number of blocks and bytes stored (approximate where the backend cannot say exactly). */
  usage(): Promise<{ blocks: number; bytes: number }>;
  /**
   * Why a block stored now might not survive a restart of the store itself (e.g. Redis without
   * appendonly), with the setting that fixes it; undefined when stored blocks are durable.
   */
  durabilityWarning(): Promise<string | undefined>;
  close(): Promise<void>;
}

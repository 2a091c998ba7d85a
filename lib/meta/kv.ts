// The metadata engine interface: a small transactional key-value store.
//
// All filesystem semantics (inodes, entries, block maps) are written once, in lib/meta/meta.ts,
// on top of this interface. A backend only has to provide optimistic transactions over string
// keys and binary values, the way JuiceFS reduces etcd/TiKV to "run this function in a
// transaction, retry on conflict" (pkg/meta/tkv.go).
//
// Every backend must pass the shared conformance suite in test/_suites/kv.ts.

/** One key and its value, as returned by range reads. */
export interface KvPair {
  key: string;
  value: Buffer;
}

/** Options for prefix scans. Keys are compared as UTF-8 byte strings. */
export interface ScanOptions {
  /** Only keys strictly greater than this one (for paging). */
  startAfter?: string;
  /** At most this many pairs (default: all). */
  limit?: number;
}

/**
 * A transaction in progress. Reads see the store as of the first read plus this transaction's
 * own buffered writes. Writes are buffered and applied atomically by commit.
 *
 * Conflict rule: the commit fails (and the whole function is retried by KvEngine.txn) if any
 * key read with get() was changed by someone else since it was read. Keys seen only through
 * scan() are NOT conflict-checked: protect a range by also get()-ing a key that every writer of
 * that range changes (for a directory, the directory's own attribute key).
 */
export interface KvTxn {
  get(key: string): Promise<Buffer | undefined>;
  /**
   * get() of several keys, in one round trip where the backend allows (etcd: one Txn request of
   * range operations). Every key is conflict-checked as with get(). Values in the order of `keys`.
   */
  getMany(keys: readonly string[]): Promise<Array<Buffer | undefined>>;
  scan(prefix: string, options?: ScanOptions): Promise<KvPair[]>;
  put(key: string, value: Buffer): void;
  delete(key: string): void;
}

/** What a change event from watch() says. */
export interface KvChange {
  key: string;
  /** The new value, or undefined when the key was deleted. */
  value: Buffer | undefined;
}

/**
 * A client's presence in the store: a key that exists while the client is alive and connected,
 * and disappears on its own `ttl` seconds after the client stops refreshing it (crash, cut off).
 * While a session is open, every commit of the engine is fenced on it: once the session key is
 * gone, commits fail with FsError ESTALE instead of overwriting what others did meanwhile
 * (the fencing Torus used for its writers).
 */
export interface KvSession {
  /** Resolves when the session was lost (expired or deleted) while open. */
  readonly lost: Promise<void>;
  /** Puts a key that lives and dies with the session (deleted when it ends or expires). */
  attach(key: string, value: Buffer): Promise<void>;
  /** Ends the session: its key and attached keys are deleted. */
  close(): Promise<void>;
}

export interface KvEngine {
  /** Short backend name for messages and status ('etcd', 'sqlite'). */
  readonly kind: string;
  /**
   * Run fn in an optimistic transaction and commit its writes atomically; on conflict run fn
   * again (fn must therefore have no side effects besides the transaction). A transaction that
   * wrote nothing commits nothing. Errors thrown by fn abort the transaction and propagate.
   */
  txn<T>(fn: (tx: KvTxn) => Promise<T>): Promise<T>;
  /** A single consistent read outside a transaction. */
  get(key: string): Promise<Buffer | undefined>;
  /**
   * Optional: get() of several keys at one revision, in one round trip (etcd: one Txn request of
   * range operations). Without it, callers read the keys one by one.
   */
  getMany?(keys: readonly string[]): Promise<Array<Buffer | undefined>>;
  /** Keys under prefix in key order. */
  scan(prefix: string, options?: ScanOptions): Promise<KvPair[]>;
  /**
   * Calls onChange for every change under prefix made by anyone, including this client,
   * until the returned function is called. Backends without cross-process change feeds
   * (embedded: one host, one daemon) may only report their own changes.
   */
  watch(prefix: string, onChange: (change: KvChange) => void): Promise<() => Promise<void>>;
  /**
   * Opens a session under `key` (see KvSession). At most one per engine. The embedded engine
   * serves one process, so its sessions never expire and fencing is a no-op.
   */
  openSession(key: string, value: Buffer, ttlSeconds: number): Promise<KvSession>;
  /**
   * Makes every transaction that resolved before this call durable against power loss (and an OS
   * crash). Only engines whose commits are not durable by themselves have it (embedded SQLite:
   * a commit survives kill -9 at once, power loss after sync()); without it, every resolved
   * commit is durable. kvfs calls it for fsync and before deleting blocks a commit dropped.
   */
  sync?(): Promise<void>;
  close(): Promise<void>;
}

// KvEngine on etcd v3 (through the `etcd3` client), confined to one key namespace.
//
// Transactions are optimistic, as JuiceFS's tkv_etcd.go and etcd3's stm(): every read of a txn
// is served at the revision of the txn's first read (a consistent snapshot), get() records the
// key's mod_revision (0 when absent), writes are buffered, and commit is one etcd Txn
//   if (every key read with get() still has the mod_revision we saw) then (all puts/deletes)
// retried from scratch with a small jittered backoff when the comparison fails.
//
// Limits the filesystem layer must respect:
// - one commit holds at most `maxTxnOps` keys read with get() (each becomes a compare) AND at
//   most `maxTxnOps` keys written (etcd's --max-txn-ops, default 128, limits compares and
//   operations separately, not their sum), and roughly `maxRequestBytes` of keys and values
//   (etcd's --max-request-bytes, default 1.5 MiB). Exceeding either fails with FsError E2BIG
//   before anything is sent; it is not retryable, and a txn is never split.
// - after `maxAttempts` conflicting attempts the txn fails with FsError EAGAIN (retryable).
// - every request is bounded by `timeoutMs` -> FsError ETIMEDOUT (retryable). A timed-out commit
//   may or may not have been applied; it is not retried automatically. After a timeout, requests
//   fail at once with ETIMEDOUT until etcd answers a probe again (lib/stall-gate.ts), so a
//   stalled etcd costs an application one timeout, not one per operation.
// All etcd/gRPC failures are translated to FsError in one function, etcdError().
import { AsyncLocalStorage } from 'node:async_hooks';
import {
  ClientClosedError,
  CompareResult,
  CompareTarget,
  Etcd3,
  GRPCDeadlineExceededError,
  GRPCUnavailableError,
  isRecoverableError,
  type IKeyValue,
  type IOptions,
  type IRangeResponse,
  type IRequestOp,
  type Namespace,
  type Watcher,
} from 'etcd3';
import { StallGate } from '../stall-gate';
import { FsError, type ErrnoName } from '../errors';
import type { KvChange, KvEngine, KvPair, KvSession, KvTxn, ScanOptions } from './kv';

export interface EtcdKvOptions {
  /** etcd client endpoints, e.g. ['http://127.0.0.1:2379']. At least one. */
  hosts: string[];
  /**
   * Key prefix of this engine's namespace (e.g. 'kvfs/VOLUME/'). Every key this engine reads or
   * writes is stored under it; keys outside are never touched. Must not be empty.
   */
  prefix: string;
  /** etcd user name and password, when etcd has auth enabled. */
  auth?: { username: string; password: string };
  /**
   * Connect over TLS with these PEM buffers: `ca` (default: Node's built-in CAs) and optionally a
   * client certificate `cert` + `key` (etcd's --client-cert-auth). Hosts are then 'https://...'.
   */
  tls?: { ca?: Buffer; cert?: Buffer; key?: Buffer };
  /** Time limit in ms for each etcd request (and for setting up a watch). Default 10000. */
  timeoutMs?: number;
  /** How many times txn() runs a conflicting function before failing with EAGAIN. Default 50. */
  maxAttempts?: number;
  /**
   * Most keys read with get() (compares), and separately most keys written (operations), in one
   * commit. Default 128, etcd's --max-txn-ops default.
   */
  maxTxnOps?: number;
  /** Most bytes of keys + values in one commit. Default 1.5 MiB - 64 KiB, under etcd's default. */
  maxRequestBytes?: number;
  /**
   * Where failures that have no caller go (a watch cancelled by etcd and re-established, a
   * throwing watch callback). Default: process.emitWarning.
   */
  onBackgroundError?: (err: Error) => void;
}

const DEFAULTS = {
  timeoutMs: 10_000,
  maxAttempts: 50,
  maxTxnOps: 128,
  maxRequestBytes: 1.5 * 1024 * 1024 - 64 * 1024,
};

/** Per-entry overhead added to key+value bytes when estimating a commit's request size. */
const OP_OVERHEAD_BYTES = 32;

type FaultPolicy = NonNullable<NonNullable<IOptions['faultHandling']>['global']>;

/** No circuit breaker, no retry: each call goes once to one host. */
function passThroughPolicy(): FaultPolicy {
  const signal = new AbortController().signal;
  return { execute: async (fn: (ctx: { signal: AbortSignal }) => unknown) => fn({ signal }) } as unknown as FaultPolicy;
}

/**
 * Sends a call to the next host while the previous one refused it (UNAVAILABLE: connection
 * refused, reset, DNS failure), at most once per host. Anything else is final: a timeout has used
 * up the request's time, and a commit that timed out must not be sent twice.
 */
function failoverPolicy(hostCount: number): FaultPolicy {
  const signal = new AbortController().signal;
  return {
    execute: async (fn: (ctx: { signal: AbortSignal }) => unknown) => {
      for (let i = 1; ; i++) {
        try {
          return await fn({ signal });
        } catch (err) {
          if (i >= hostCount || !(err instanceof GRPCUnavailableError)) throw err;
        }
      }
    },
  } as unknown as FaultPolicy;
}

/** The one place where etcd / gRPC / client failures become FsError. */
export function etcdError(err: unknown, what: string): FsError {
  if (err instanceof FsError) return err;
  const e = err instanceof Error ? err : new Error(String(err));
  const msg = e.message;
  const make = (code: ErrnoName, text: string, retryable = false): FsError =>
    new FsError(code, `${what}: ${text}`, { cause: e, retryable });
  if (e instanceof GRPCDeadlineExceededError || /deadline exceeded/i.test(msg)) {
    return make('ETIMEDOUT', 'etcd did not answer in time', true);
  }
  if (e instanceof ClientClosedError) return make('EIO', 'etcd client is closed');
  if (msg.includes('etcdserver: request timed out')) return make('ETIMEDOUT', 'etcd could not commit in time', true);
  if (msg.includes('etcdserver: too many requests')) return make('EIO', 'etcd is overloaded', true);
  if (msg.includes('too many operations in txn request')) return make('E2BIG', 'too many operations for one etcd txn');
  if (msg.includes('request is too large') || /larger than max/i.test(msg)) {
    return make('E2BIG', 'request too large for etcd');
  }
  if (msg.includes('database space exceeded')) return make('ENOSPC', 'etcd database space exceeded (quota)');
  if (msg.includes('required revision has been compacted') || msg.includes('future rev')) {
    return make('EAGAIN', msg, true);
  }
  if (/permission denied|authentication failed|invalid auth token|user name is empty|not capable/i.test(msg)) {
    return make('EACCES', msg);
  }
  if (
    e instanceof GRPCUnavailableError ||
    /ECONNREFUSED|ECONNRESET|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN|No connection established|UNAVAILABLE|leader changed|no leader|timed out|Connection dropped|Cancelled|CANCELLED/i.test(msg)
  ) {
    return make('EIO', `etcd unavailable: ${msg}`, true);
  }
  if (isRecoverableError(e)) return make('EIO', msg, true);
  return make('EIO', msg);
}

let ipServerNameWarningQuieted = false;

/**
 * grpc-js always sends the target host as the TLS server name, also when it is an IP address,
 * and Node then prints "DeprecationWarning: Setting the TLS ServerName to an IP address is not
 * permitted by RFC 6066" (DEP0123) on stderr. The certificate is still checked against the
 * address (IP SANs), so the warning says nothing the user can act on: drop that one warning.
 */
function quietIpServerNameWarning(hosts: string[]): void {
  if (ipServerNameWarningQuieted || !hosts.some((h) => /^(https?:\/\/)?(\[[0-9a-f:.]+\]|\d+\.\d+\.\d+\.\d+)(:\d+)?$/i.test(h))) return;
  ipServerNameWarningQuieted = true;
  const original = process.emitWarning;
  process.emitWarning = function emitWarning(this: unknown, warning: string | Error, ...rest: unknown[]) {
    const code = typeof rest[0] === 'object' && rest[0] !== null ? (rest[0] as { code?: unknown }).code : rest[1];
    if (code === 'DEP0123') return;
    return (original as (...args: unknown[]) => void).call(process, warning, ...rest);
  } as typeof process.emitWarning;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new FsError('ETIMEDOUT', `${what}: etcd did not answer within ${ms} ms`, { retryable: true })), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

function cancelQuietly(w: Watcher): void {
  Promise.resolve()
    .then(() => w.cancel())
    .catch(() => undefined);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

const utf8 = (s: string): Buffer => Buffer.from(s, 'utf8');
const compareKeys = (a: string, b: string): number => Buffer.compare(utf8(a), utf8(b));

/** The [start, end) byte range of a prefix scan, or undefined when it is empty. */
function scanRange(prefix: string, startAfter: string | undefined): { start: Buffer; end: Buffer } | undefined {
  const p = utf8(prefix);
  let start = p;
  if (startAfter !== undefined) {
    const after = Buffer.concat([utf8(startAfter), Buffer.from([0])]);
    if (Buffer.compare(after, start) > 0) start = after;
  }
  // End of the prefix: increment its last byte below 0xff. An empty prefix (or one of only 0xff
  // bytes) ends at the end of the namespace, which etcd3's namespace spells as the key "\0".
  let end = Buffer.from([0]);
  for (let i = p.length - 1; i >= 0; i--) {
    if (p[i] < 0xff) {
      end = Buffer.from(p.subarray(0, i + 1));
      end[i]++;
      break;
    }
  }
  if (!(end.length === 1 && end[0] === 0) && Buffer.compare(start, end) >= 0) return undefined;
  return { start, end };
}

function inScan(key: string, prefix: string, startAfter: string | undefined): boolean {
  return key.startsWith(prefix) && (startAfter === undefined || compareKeys(key, startAfter) > 0);
}

function checkLimit(options: ScanOptions | undefined): number | undefined {
  const limit = options?.limit;
  if (limit === undefined) return undefined;
  if (!Number.isInteger(limit) || limit < 0) throw new FsError('EINVAL', `scan limit must be a non-negative integer, got ${limit}`);
  return limit;
}

/** Keys read by one getMany request (one etcd Txn of range operations). */
const GET_MANY_BATCH = 64;

/** Keys per range request when scanning: keeps every response far below gRPC's message limit. */
const SCAN_PAGE = 1000;

/**
 * Reads [range.start, range.end) page by page (up to `limit` pairs). fetch reads one page; the
 * caller makes every page read at the same revision, so the pages form one snapshot.
 */
async function pagedScan(
  range: { start: Buffer; end: Buffer },
  limit: number | undefined,
  fetch: (page: { start: Buffer; end: Buffer }, n: number) => Promise<IRangeResponse>,
): Promise<KvPair[]> {
  const out: KvPair[] = [];
  let start = range.start;
  for (;;) {
    const n = limit === undefined ? SCAN_PAGE : Math.min(SCAN_PAGE, limit - out.length);
    const res = await fetch({ start, end: range.end }, n);
    for (const kv of res.kvs) out.push({ key: kv.key.toString('utf8'), value: kv.value });
    if (!res.more || res.kvs.length === 0 || (limit !== undefined && out.length >= limit)) return out;
    start = Buffer.concat([res.kvs[res.kvs.length - 1].key, Buffer.from([0])]);
  }
}

function staleSession(key: string): FsError {
  return new FsError('ESTALE', `this mount's session (${key}) expired: it was cut off from etcd for too long, and its uncommitted changes are refused so that they cannot overwrite what other mounts did meanwhile`);
}

/** What the engine last learned of a key: value and mod_revision ('0': absent) as of revision `seen`. */
interface Known {
  value: Buffer | undefined;
  modRevision: string;
  seen: bigint;
}

/** Most keys, and bytes of keys + values, the revision cache holds; the least recently learned go first. */
const CACHE_KEYS = 50_000;
const CACHE_BYTES = 32 * 1024 * 1024;
/** Values larger than this are not cached. */
const CACHE_VALUE_BYTES = 64 * 1024;

/** Internal signal: the snapshot revision of this attempt is gone; run the function again. */
class RetryTxn extends Error {}

class EtcdTxn implements KvTxn {
  /** Keys read with get(): value seen and mod_revision ('0' when absent). */
  readonly reads = new Map<string, { value: Buffer | undefined; modRevision: string }>();
  /** Buffered writes in order of first write; undefined value = delete. */
  readonly writes = new Map<string, Buffer | undefined>();
  finished = false;
  /** Set when the snapshot became unreadable (compacted); the attempt must be retried. */
  doomed = false;
  private revision: string | undefined;
  private firstRead: Promise<unknown> | undefined;
  /** Keys whose read was served from the engine's cache (see EtcdKv.known). */
  readonly cached: string[] = [];

  /** `useCache`: whether reads may be served from what the engine already knows. */
  constructor(
    private readonly kv: EtcdKv,
    private readonly useCache: boolean,
  ) {}

  private checkOpen(): void {
    if (this.finished) throw new FsError('EINVAL', 'transaction used after it finished (missing await?)');
  }

  /** Runs a range request at this txn's snapshot revision (the first read fixes it). */
  private async range<R extends { header: { revision: string } }>(build: (rev: string | undefined) => Promise<R>): Promise<R> {
    if (this.revision === undefined && this.firstRead) await this.firstRead.catch(() => undefined);
    try {
      if (this.revision === undefined) {
        const p = build(undefined);
        this.firstRead = p;
        const res = await p;
        this.revision ??= res.header.revision;
        return res;
      }
      return await build(this.revision);
    } catch (err) {
      const fe = etcdError(err, 'etcd txn read');
      if (fe.code === 'EAGAIN') {
        this.doomed = true;
        throw new RetryTxn(fe.message);
      }
      throw fe;
    }
  }

  /** Serves a read from what the engine already knows of the key, when this attempt may. */
  private fromCache(key: string): boolean {
    if (!this.useCache) return false;
    const known = this.kv.known(key);
    if (!known) return false;
    this.reads.set(key, { value: known.value, modRevision: known.modRevision });
    this.cached.push(key);
    return true;
  }

  /** Records a read made at this txn's snapshot, and tells the engine's cache about it. */
  private learn(key: string, kv: IKeyValue | undefined): void {
    const entry = { value: kv ? kv.value : undefined, modRevision: kv ? kv.mod_revision : '0' };
    if (!this.reads.has(key)) this.reads.set(key, entry);
    if (this.revision !== undefined) this.kv.learn(key, entry.value, entry.modRevision, this.revision);
  }

  async get(key: string): Promise<Buffer | undefined> {
    this.checkOpen();
    if (this.writes.has(key)) return this.writes.get(key);
    const seen = this.reads.get(key);
    if (seen) return seen.value;
    if (this.fromCache(key)) return this.reads.get(key)!.value;
    const res = await this.range((rev) => this.kv.request('get', (ns, opts) => {
      const b = ns.get(key).options(opts);
      if (rev !== undefined) b.revision(rev);
      return b.exec();
    }));
    this.learn(key, res.kvs[0]);
    if (this.writes.has(key)) return this.writes.get(key);
    return this.reads.get(key)!.value;
  }

  async getMany(keys: readonly string[]): Promise<Array<Buffer | undefined>> {
    this.checkOpen();
    const wanted = [...new Set(keys)].filter((k) => !this.writes.has(k) && !this.reads.has(k) && !this.fromCache(k));
    // Batches stay far below etcd's --max-txn-ops, which also bounds read-only txns.
    for (let from = 0; from < wanted.length; from += GET_MANY_BATCH) {
      const missing = wanted.slice(from, from + GET_MANY_BATCH);
      if (missing.length === 1) {
        await this.get(missing[0]);
        continue;
      }
      // One Txn request without compares whose operations are the range reads: one round trip,
      // every read at the same revision (etcd answers it on its read path; nothing is written).
      const res = await this.range((rev) =>
        this.kv.request('get', (ns, opts) =>
          ns.kv.txn(
            {
              compare: [],
              success: missing.map((k) => ({ request_range: { key: this.kv.fullKey(k), ...(rev !== undefined ? { revision: rev } : {}) } })),
              failure: [],
            } as Parameters<typeof ns.kv.txn>[0],
            opts,
          ),
        ),
      );
      missing.forEach((k, i) => this.learn(k, res.responses[i]?.response_range?.kvs[0]));
    }
    return keys.map((k) => (this.writes.has(k) ? this.writes.get(k) : this.reads.get(k)?.value));
  }

  async scan(prefix: string, options?: ScanOptions): Promise<KvPair[]> {
    this.checkOpen();
    const limit = checkLimit(options);
    const startAfter = options?.startAfter;
    const mine = [...this.writes].filter(([k]) => inScan(k, prefix, startAfter));
    const deletes = mine.filter(([, v]) => v === undefined).length;
    const range = scanRange(prefix, startAfter);
    let base: KvPair[] = [];
    if (range && limit !== 0) {
      // Ask for enough base pairs that, after our own deletes drop some, `limit` remain.
      const want = limit === undefined ? undefined : limit + deletes;
      base = await pagedScan(range, want, (page, n) =>
        this.range((rev) => this.kv.request('scan', (ns, opts) => {
          const b = ns.getAll().inRange(page).limit(n).options(opts);
          if (rev !== undefined) b.revision(rev);
          return b.exec();
        })),
      );
    }
    if (mine.length === 0) return limit === undefined ? base : base.slice(0, limit);
    const merged = new Map<string, Buffer>();
    for (const p of base) merged.set(p.key, p.value);
    for (const [k, v] of mine) {
      if (v === undefined) merged.delete(k);
      else merged.set(k, v);
    }
    const out = [...merged].map(([key, value]) => ({ key, value })).sort((a, b) => compareKeys(a.key, b.key));
    return limit === undefined ? out : out.slice(0, limit);
  }

  put(key: string, value: Buffer): void {
    this.checkOpen();
    if (!Buffer.isBuffer(value)) throw new FsError('EINVAL', `value for ${JSON.stringify(key)} is not a Buffer`);
    this.writes.set(key, value);
  }

  delete(key: string): void {
    this.checkOpen();
    this.writes.set(key, undefined);
  }
}

export class EtcdKv implements KvEngine {
  readonly kind = 'etcd';
  readonly prefix: string;
  private readonly client: Etcd3;
  private readonly ns: Namespace;
  private readonly prefixBuf: Buffer;
  private readonly timeoutMs: number;
  private readonly maxAttempts: number;
  private readonly maxTxnOps: number;
  private readonly maxRequestBytes: number;
  private readonly onBackgroundError: (err: Error) => void;
  private readonly inTxn = new AsyncLocalStorage<EtcdKv>();
  private readonly watchers = new Set<() => Promise<void>>();
  private closed = false;
  /** After a request timed out, fails requests at once until etcd answers a probe again. */
  private readonly gate: StallGate;
  /** The open session every commit is fenced on: its key must still have this create revision. */
  private fence: { key: string; createRevision: string; lost: boolean } | undefined;
  /**
   * The revision cache: the value and mod_revision of keys this engine read or committed, kept
   * current by its watches. A transaction reads a key from here instead of asking etcd; that is
   * safe without any coherence because the commit compares the key's mod_revision, so a stale
   * entry only makes the commit fail, and the function then runs again with fresh reads. An
   * attempt that used the cache and ends without committing (it threw, or wrote nothing) is run
   * again with fresh reads too, so what a transaction returns or throws is never based on a
   * stale value. Keys are cached only under a prefix being watched (otherwise other mounts'
   * changes would make every first attempt fail), and the cache is emptied when a watch
   * (re)starts, as changes may have been missed.
   */
  private readonly cache = new Map<string, Known>();
  private cacheBytes = 0;
  private readonly watchedPrefixes: string[] = [];

  constructor(options: EtcdKvOptions) {
    if (!options.hosts || options.hosts.length === 0) throw new TypeError('EtcdKv: at least one host is required');
    if (!options.prefix) throw new TypeError('EtcdKv: a non-empty key prefix is required');
    const positive = (name: keyof typeof DEFAULTS): number => {
      const v = options[name] ?? DEFAULTS[name];
      if (!Number.isFinite(v) || v <= 0) throw new TypeError(`EtcdKv: ${name} must be a positive number, got ${v}`);
      return v;
    };
    this.timeoutMs = positive('timeoutMs');
    this.maxAttempts = Math.floor(positive('maxAttempts'));
    this.maxTxnOps = Math.floor(positive('maxTxnOps'));
    this.maxRequestBytes = positive('maxRequestBytes');
    this.onBackgroundError = options.onBackgroundError ?? ((err) => process.emitWarning(err));
    this.prefix = options.prefix;
    this.prefixBuf = utf8(options.prefix);
    const timeoutMs = this.timeoutMs;
    if (options.tls) quietIpServerNameWarning(options.hosts);
    this.client = new Etcd3({
      hosts: options.hosts,
      auth: options.auth,
      // grpc's createSsl(rootCerts, privateKey, certChain); null root certs = the default CAs.
      credentials: options.tls
        ? ({ rootCertificate: options.tls.ca ?? null, privateKey: options.tls.key, certChain: options.tls.cert } as unknown as IOptions['credentials'])
        : undefined,
      // gRPC's default 4 MiB limit on received messages is too small for big watch batches.
      grpcOptions: { 'grpc.max_receive_message_length': 256 * 1024 * 1024 },
      // Each unary call (token requests included) carries a gRPC deadline; streams (watch) do not.
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + timeoutMs }),
      // etcd3's defaults retry 3 times and open a 5 s circuit breaker per host, which turns one
      // slow request into 30+ s and keeps failing after the server is back. We bound every
      // request ourselves and only fail over between hosts on a refused connection.
      faultHandling: { host: () => passThroughPolicy(), global: failoverPolicy(options.hosts.length) },
    });
    this.ns = this.client.namespace(this.prefixBuf);
    this.gate = new StallGate(`etcd at ${options.hosts.join(',')}`, () =>
      this.send('probe', (ns, opts) => ns.get('\0ping').options(opts).exec()),
    );
  }

  /**
   * Runs one etcd request with the time bound and error translation. Exposed for EtcdTxn only.
   * @internal
   */
  async request<T>(what: string, fn: (ns: Namespace, opts: { deadline: number }) => Promise<T>): Promise<T> {
    if (this.closed) throw new FsError('EIO', `etcd ${what}: engine is closed`);
    return this.gate.run(`etcd ${what}`, () => this.send(what, fn));
  }

  /** One request with the time bound and error translation, not held back by the stall gate. */
  private async send<T>(what: string, fn: (ns: Namespace, opts: { deadline: number }) => Promise<T>): Promise<T> {
    try {
      return await withTimeout(fn(this.ns, { deadline: Date.now() + this.timeoutMs }), this.timeoutMs, `etcd ${what}`);
    } catch (err) {
      throw etcdError(err, `etcd ${what}`);
    }
  }

  /**
   * The key as stored in etcd (with this engine's prefix), for requests that bypass the
   * namespace (raw Txn requests). @internal
   */
  fullKey(key: string): Buffer {
    return Buffer.concat([this.prefixBuf, utf8(key)]);
  }

  /** One cheap linearizable read: resolves when etcd answers, else rejects with FsError. */
  async ping(): Promise<void> {
    await this.request('ping', (ns, opts) => ns.get('\0ping').options(opts).exec());
  }

  async get(key: string): Promise<Buffer | undefined> {
    const res = await this.request('get', (ns, opts) => ns.get(key).options(opts).exec());
    const kv = res.kvs[0];
    this.learn(key, kv?.value, kv ? kv.mod_revision : '0', res.header.revision);
    return kv?.value;
  }

  async getMany(keys: readonly string[]): Promise<Array<Buffer | undefined>> {
    if (keys.length > GET_MANY_BATCH) throw new FsError('E2BIG', `etcd getMany: ${keys.length} keys, at most ${GET_MANY_BATCH} in one request`);
    if (keys.length <= 1) return Promise.all(keys.map((k) => this.get(k)));
    const res = await this.request('get', (ns, opts) =>
      ns.kv.txn({ compare: [], success: keys.map((k) => ({ request_range: { key: this.fullKey(k) } })), failure: [] } as Parameters<typeof ns.kv.txn>[0], opts),
    );
    return keys.map((k, i) => {
      const kv = res.responses[i]?.response_range?.kvs[0];
      this.learn(k, kv?.value, kv ? kv.mod_revision : '0', res.header.revision);
      return kv?.value;
    });
  }

  async scan(prefix: string, options?: ScanOptions): Promise<KvPair[]> {
    const limit = checkLimit(options);
    const range = scanRange(prefix, options?.startAfter);
    if (!range || limit === 0) return [];
    let rev: string | undefined;
    return pagedScan(range, limit, async (page, n) => {
      const res = await this.request('scan', (ns, opts) => {
        const b = ns.getAll().inRange(page).limit(n).options(opts);
        if (rev !== undefined) b.revision(rev);
        return b.exec();
      });
      rev ??= res.header.revision;
      return res;
    });
  }

  async txn<T>(fn: (tx: KvTxn) => Promise<T>): Promise<T> {
    if (this.inTxn.getStore() === this) {
      throw new FsError('EDEADLK', 'kv.txn() called inside a transaction function of the same engine');
    }
    // A transaction is fenced on the session open when it starts: if that session is lost while
    // it runs, it must fail, even if a new session has been opened by the time it commits.
    const fence = this.fence;
    let useCache = true;
    for (let attempt = 1; ; attempt++) {
      const tx = new EtcdTxn(this, useCache);
      let result: T;
      try {
        result = await this.inTxn.run(this, () => fn(tx));
      } catch (err) {
        tx.finished = true;
        if (tx.doomed) {
          await this.backoff(attempt, err);
          continue;
        }
        // The error may come from a stale cached value: only an attempt with fresh reads decides.
        if (tx.cached.length === 0) throw err;
        this.forget(tx.cached);
        useCache = false;
        continue;
      }
      tx.finished = true;
      if (tx.doomed) {
        await this.backoff(attempt, undefined);
        continue;
      }
      if (tx.writes.size === 0) {
        // Nothing was committed, so nothing compared the cached reads: read them again.
        if (tx.cached.length === 0) return result;
        useCache = false;
        continue;
      }
      if (await this.commit(tx, fence)) return result;
      // A conflict of an attempt that read from the cache is most likely a stale entry rather
      // than a concurrent writer: run again at once, reading from etcd.
      if (tx.cached.length > 0 && useCache) {
        useCache = false;
        continue;
      }
      await this.backoff(attempt, undefined);
    }
  }

  /** @internal What the revision cache knows of a key (for EtcdTxn reads). */
  known(key: string): Known | undefined {
    return this.cache.get(key);
  }

  /**
   * @internal Tells the revision cache the state of a key as of revision `seen` (a read at that
   * revision, a commit, a watch event). Older news than what it has is ignored.
   */
  learn(key: string, value: Buffer | undefined, modRevision: string, seen: string | bigint): void {
    if (!this.watchedPrefixes.some((p) => key.startsWith(p))) return;
    const at = BigInt(seen);
    const old = this.cache.get(key);
    if (old) {
      if (old.seen >= at) return;
      this.forget([key]); // re-inserted below: Map order is the eviction order
    }
    if (value && value.length > CACHE_VALUE_BYTES) return;
    this.cache.set(key, { value, modRevision, seen: at });
    this.cacheBytes += key.length + (value?.length ?? 0);
    while (this.cache.size > CACHE_KEYS || this.cacheBytes > CACHE_BYTES) this.forget([this.cache.keys().next().value as string]);
  }

  private forget(keys: Iterable<string>): void {
    for (const k of keys) {
      const known = this.cache.get(k);
      if (!known) continue;
      this.cache.delete(k);
      this.cacheBytes -= k.length + (known.value?.length ?? 0);
    }
  }

  private clearCache(): void {
    this.cache.clear();
    this.cacheBytes = 0;
  }

  private async backoff(attempt: number, cause: unknown): Promise<void> {
    if (attempt >= this.maxAttempts) {
      throw new FsError('EAGAIN', `etcd txn: still conflicting after ${attempt} attempts`, { retryable: true, cause });
    }
    // Jittered, growing with the attempt number: 0..1 ms, 0..4 ms, ... capped at 0..100 ms.
    await sleep(Math.random() * Math.min(100, attempt * attempt));
  }

  /** true = committed, false = a key read with get() changed since (conflict). */
  private async commit(tx: EtcdTxn, fence: EtcdKv['fence']): Promise<boolean> {
    // etcd checks max(compares, then-ops, else-ops) <= --max-txn-ops, not their sum
    // (etcdserver/api/v3rpc/key.go checkTxnRequest; verified against etcd 3.4).
    if (tx.reads.size + (fence ? 1 : 0) > this.maxTxnOps || tx.writes.size > this.maxTxnOps) {
      throw new FsError(
        'E2BIG',
        `etcd txn: ${tx.reads.size} keys read and ${tx.writes.size} keys written; etcd allows at most ${this.maxTxnOps} of each in one txn`,
      );
    }
    let bytes = 0;
    for (const k of tx.reads.keys()) bytes += this.prefixBuf.length + Buffer.byteLength(k) + OP_OVERHEAD_BYTES;
    for (const [k, v] of tx.writes) bytes += this.prefixBuf.length + Buffer.byteLength(k) + (v?.length ?? 0) + OP_OVERHEAD_BYTES;
    if (bytes > this.maxRequestBytes) {
      throw new FsError('E2BIG', `etcd txn: about ${bytes} bytes, more than the ${this.maxRequestBytes} allowed in one request`);
    }
    const full = (k: string): Buffer => Buffer.concat([this.prefixBuf, utf8(k)]);
    const compare: Array<Record<string, unknown>> = [...tx.reads].map(([k, r]) => ({
      key: full(k),
      target: CompareTarget.Mod,
      result: CompareResult.Equal,
      mod_revision: r.modRevision,
    }));
    if (fence) {
      if (fence.lost) throw staleSession(fence.key);
      compare.push({ key: full(fence.key), target: CompareTarget.Create, result: CompareResult.Equal, create_revision: fence.createRevision });
    }
    const success: IRequestOp[] = [...tx.writes].map(([k, v]) =>
      v === undefined ? { request_delete_range: { key: full(k) } } : { request_put: { key: full(k), value: v } },
    );
    let res;
    try {
      res = await this.request('commit', (ns, opts) => ns.kv.txn({ compare, success, failure: [] } as Parameters<typeof ns.kv.txn>[0], opts));
    } catch (err) {
      // A commit that timed out may or may not have been applied.
      this.forget(tx.writes.keys());
      throw err;
    }
    if (!res.succeeded) {
      // Some key read changed since: do not serve what this attempt read again.
      this.forget(tx.reads.keys());
      if (fence && !(await this.get(fence.key).then((v) => v !== undefined))) {
        fence.lost = true;
        throw staleSession(fence.key);
      }
      return false;
    }
    // Every key the commit wrote now has the commit's revision as its mod_revision.
    const rev = res.header.revision;
    for (const [k, v] of tx.writes) this.learn(k, v, v === undefined ? '0' : rev, rev);
    return true;
  }

  async openSession(key: string, value: Buffer, ttlSeconds: number): Promise<KvSession> {
    if (this.fence) throw new FsError('EBUSY', 'etcd: a session is already open on this engine');
    const lease = this.ns.lease(ttlSeconds, { autoKeepAlive: true });
    let markLost: () => void = () => undefined;
    const lost = new Promise<void>((resolve) => (markLost = resolve));
    let closing = false;
    let fence: NonNullable<EtcdKv['fence']> | undefined;
    lease.on('lost', () => {
      if (closing) return;
      if (fence) fence.lost = true;
      markLost();
    });
    try {
      await this.request('session put', () => lease.put(key).value(value).exec());
      const res = await this.request('session get', (ns, opts) => ns.get(key).options(opts).exec());
      const createRevision = res.kvs[0]?.create_revision;
      if (!createRevision) throw new FsError('EIO', `etcd: session key ${key} vanished right after it was written`);
      fence = { key, createRevision, lost: false };
      this.fence = fence;
    } catch (err) {
      closing = true;
      await lease.revoke().catch(() => undefined);
      throw err;
    }
    return {
      lost,
      attach: async (k, v) => {
        await this.request('session attach', () => lease.put(k).value(v).exec());
      },
      close: async () => {
        closing = true;
        // Transactions that started under this session stay fenced on it and now fail.
        if (fence) fence.lost = true;
        if (this.fence === fence) this.fence = undefined;
        await withTimeout(lease.revoke(), this.timeoutMs, 'etcd lease revoke').catch(() => undefined);
      },
    };
  }

  async watch(prefix: string, onChange: (change: KvChange) => void): Promise<() => Promise<void>> {
    if (this.closed) throw new FsError('EIO', 'etcd watch: engine is closed');
    let current: Watcher | undefined;
    let stopped = false;
    const deliver = (change: KvChange): void => {
      if (stopped) return;
      try {
        onChange(change);
      } catch (err) {
        this.onBackgroundError(err instanceof Error ? err : new Error(String(err)));
      }
    };
    const start = async (): Promise<Watcher> => {
      const w = this.ns.watch().prefix(prefix).watcher();
      w.on('error', () => undefined); // never an unhandled 'error' event, whatever the phase
      w.on('put', (kv) => {
        const key = kv.key.toString('utf8');
        this.learn(key, kv.value, kv.mod_revision, kv.mod_revision);
        deliver({ key, value: kv.value });
      });
      w.on('delete', (kv) => {
        const key = kv.key.toString('utf8');
        this.learn(key, undefined, '0', kv.mod_revision);
        deliver({ key, value: undefined });
      });
      const connected = new Promise<void>((resolve, reject) => {
        w.once('connected', () => resolve());
        w.once('error', reject);
      });
      try {
        await withTimeout(connected, this.timeoutMs, 'etcd watch');
      } catch (err) {
        cancelQuietly(w);
        throw etcdError(err, 'etcd watch');
      }
      // Changes made while this prefix was not watched (or the watch was down) never reached the cache.
      this.clearCache();
      // After connecting, an error means etcd cancelled the watch (e.g. its revision was
      // compacted away while disconnected): changes may have been missed. Report and re-watch.
      w.on('error', (err) => {
        if (stopped) return;
        this.onBackgroundError(new Error(`etcd watch on ${JSON.stringify(prefix)} was cancelled (${err.message}); re-watching, changes may have been missed`));
        cancelQuietly(w);
        const retry = (): void => {
          if (stopped || this.closed) return;
          start().then((nw) => {
            if (stopped) cancelQuietly(nw);
            else current = nw;
          }, () => setTimeout(retry, 1000));
        };
        retry();
      });
      return w;
    };
    current = await start();
    this.watchedPrefixes.push(prefix);
    const unwatch = async (): Promise<void> => {
      if (stopped) return;
      stopped = true;
      this.watchers.delete(unwatch);
      const i = this.watchedPrefixes.indexOf(prefix);
      if (i >= 0) this.watchedPrefixes.splice(i, 1);
      this.clearCache();
      const w = current;
      if (w) await withTimeout(Promise.resolve().then(() => w.cancel()), this.timeoutMs, 'etcd unwatch').catch(() => undefined);
    };
    this.watchers.add(unwatch);
    return unwatch;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await Promise.all([...this.watchers].map((u) => u()));
    this.closed = true;
    this.gate.close();
    this.client.close();
  }
}

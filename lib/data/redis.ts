// BlockStore on Redis (ioredis): each block is one string key PREFIX + id.
//
// Throughput: one ioredis connection tops out at 80-200 MB/s for large SETs (the client is the
// limit), so the store keeps a small pool of connections and sends each request to the ready
// connection with the fewest requests in flight.
//
// Failure behaviour (what the filesystem layer sees):
// - every command is bounded by timeoutMs (ioredis commandTimeout) -> FsError ETIMEDOUT,
//   retryable. A timed-out put may still be applied later; puts are idempotent (same id, same
//   bytes), so retrying is safe. After a timeout, commands fail at once with ETIMEDOUT until
//   Redis answers a PING again (lib/stall-gate.ts): a stalled Redis costs one timeout, not one
//   per operation.
// - no offline queue: while a connection is down, requests go to another ready connection, and
//   when none is ready they fail at once with FsError EIO (retryable) instead of waiting.
//   Connections reconnect in the background (backoff up to 2 s).
// All ioredis/Redis failures are translated to FsError in one function, redisError().
import type { Socket } from 'node:net';
import Redis, { Command, type RedisOptions } from 'ioredis';
import { FsError } from '../errors';
import { StallGate } from '../stall-gate';
import { BulkGetConnection } from './redis-get';
import { copyInto, type BlockStore } from './store';

export interface RedisBlocksOptions {
  host: string;
  port: number;
  /** Redis 6 ACL user name (optional). */
  username?: string;
  password?: string;
  /** Database index (SELECT). Default 0. */
  db?: number;
  /**
   * Connect over TLS (rediss://) with these PEM buffers: `ca` replaces Node's default CAs when
   * given; `cert` + `key` are a client certificate for servers with tls-auth-clients.
   */
  tls?: { ca?: Buffer; cert?: Buffer; key?: Buffer };
  /** Prepended to every block id to form the Redis key, e.g. 'kvfs:VOLUME_UUID:b:'. Required. */
  prefix: string;
  /** Connections in the pool. Default 4. */
  connections?: number;
  /** Time limit in ms for each command, and for connecting. Default 10000. */
  timeoutMs?: number;
}

/** What Redis says about its own persistence (CONFIG GET), for a warning at mount. */
export interface RedisPersistence {
  /** `appendonly yes`. */
  appendonly: boolean;
  /** The `save` setting, '' when RDB snapshots are off. */
  save: string;
}

const DEFAULT_CONNECTIONS = 4;
const DEFAULT_TIMEOUT_MS = 10_000;
/** Keys per UNLINK, per SCAN step, per STRLEN pipeline. */
const BATCH = 500;

/** The one place where ioredis / Redis failures become FsError. */
export function redisError(err: unknown, what: string): FsError {
  if (err instanceof FsError) return err;
  const e = err instanceof Error ? err : new Error(String(err));
  const msg = e.message;
  const code = String((e as { code?: unknown }).code ?? '');
  const make = (errno: 'ETIMEDOUT' | 'EIO' | 'ENOSPC' | 'EACCES' | 'EROFS', text: string, retryable: boolean): FsError =>
    new FsError(errno, `${what}: ${text}`, { cause: e, retryable });
  if (/Command timed out/i.test(msg)) return make('ETIMEDOUT', 'Redis did not answer in time', true);
  if (/^OOM/.test(msg)) return make('ENOSPC', `Redis is out of memory (maxmemory): ${msg}`, false);
  if (/^(NOAUTH|WRONGPASS|NOPERM)/.test(msg)) return make('EACCES', `Redis refused access: ${msg}`, false);
  if (/^READONLY/.test(msg)) return make('EROFS', `Redis is a read-only replica: ${msg}`, false);
  if (/^(LOADING|BUSY|MASTERDOWN|TRYAGAIN|CLUSTERDOWN)/.test(msg)) return make('EIO', `Redis is busy: ${msg}`, true);
  if (
    /^(ECONNREFUSED|ECONNRESET|EPIPE|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN)$/.test(code) ||
    /Stream isn't writeable|Connection is closed|connect ETIMEDOUT|Reached the max retries|not connected/i.test(msg)
  ) {
    return make('EIO', `Redis unavailable: ${msg}`, true);
  }
  return make('EIO', msg, false);
}

interface Conn {
  redis: Redis;
  inFlight: number;
  lastError?: Error;
}

function withTimeout<T>(p: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(onTimeout()), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/**
 * SET KEY VALUE, written to the socket without copying the value. ioredis's own Command builds
 * one buffer of the whole request, copying every block once more (measured: 0.28 s of CPU per
 * GiB written, plus the garbage). This writes the header and the value as separate chunks of a
 * corked socket, which Node sends with one writev. ioredis writes the returned trailer right
 * after, in the same corked batch, and queues the command for its reply as usual. ioredis only
 * calls toWritable when it writes the command to the connection at once (no offline queue),
 * and the value is never changed after it is handed to put().
 */
class SetCommand extends Command {
  constructor(
    private readonly key: string,
    private readonly value: Buffer,
  ) {
    super('set', [key, value]);
  }

  override toWritable(socket: Socket): string {
    socket.cork();
    socket.write(`*3\r\n$3\r\nset\r\n$${Buffer.byteLength(this.key)}\r\n${this.key}\r\n$${this.value.length}\r\n`);
    socket.write(this.value);
    process.nextTick(() => socket.uncork());
    return '\r\n';
  }
}

/** Escapes the glob characters of a SCAN MATCH pattern. */
function globEscape(s: string): string {
  return s.replace(/[*?[\]\\]/g, (c) => `\\${c}`);
}

export class RedisBlocks implements BlockStore {
  readonly kind = 'redis';
  readonly prefix: string;
  /** 'HOST:PORT[/DB]' for messages. */
  readonly address: string;
  private readonly conns: Conn[];
  private readonly timeoutMs: number;
  private closed = false;
  /** After a command timed out, fails commands at once until Redis answers a PING again. */
  private readonly gate: StallGate;
  /** Whole-block GETs into the caller's buffer (lib/data/redis-get.ts), beside the ioredis pool. */
  private readonly readers: BulkGetConnection[];
  /** When a reader that was down was last asked to reconnect (ms since epoch). */
  private lastReconnect = 0;

  /** Creates the pool without connecting; use RedisBlocks.open() or call connect(). */
  constructor(options: RedisBlocksOptions) {
    if (!options.prefix) throw new TypeError('RedisBlocks: a non-empty key prefix is required');
    const n = options.connections ?? DEFAULT_CONNECTIONS;
    if (!Number.isInteger(n) || n < 1 || n > 64) throw new TypeError(`RedisBlocks: connections must be an integer 1..64, got ${n}`);
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) throw new TypeError(`RedisBlocks: timeoutMs must be a positive number, got ${timeoutMs}`);
    this.prefix = options.prefix;
    this.timeoutMs = timeoutMs;
    this.address = `${options.host}:${options.port}${options.db ? `/${options.db}` : ''}`;
    this.gate = new StallGate(`Redis at ${this.address}`, () => this.send('probe', (r) => r.ping()));
    const redisOptions: RedisOptions = {
      host: options.host,
      port: options.port,
      username: options.username,
      password: options.password,
      db: options.db ?? 0,
      ...(options.tls
        ? {
            tls: {
              ...(options.tls.ca ? { ca: options.tls.ca } : {}),
              ...(options.tls.cert ? { cert: options.tls.cert } : {}),
              ...(options.tls.key ? { key: options.tls.key } : {}),
            },
          }
        : {}),
      connectionName: 'kvfs-blocks',
      lazyConnect: true,
      commandTimeout: timeoutMs,
      connectTimeout: timeoutMs,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      keepAlive: 30_000,
      retryStrategy: (times) => Math.min(times * 100, 2000),
    };
    const readerOptions = { host: options.host, port: options.port, username: options.username, password: options.password, db: options.db, timeoutMs };
    // Over TLS (rediss://) blocks are read through ioredis (see lib/data/redis-get.ts).
    this.readers = options.tls ? [] : Array.from({ length: n }, () => new BulkGetConnection(readerOptions));
    this.conns = Array.from({ length: n }, () => {
      const conn: Conn = { redis: new Redis(redisOptions), inFlight: 0 };
      // Without a listener ioredis logs every connection error; keep the last one for messages,
      // but not ioredis's own follow-up ("Reached the max retries ...", a command failed because
      // the connection had just failed), which would hide why it failed (TLS, WRONGPASS).
      conn.redis.on('error', (err: Error) => {
        if (conn.lastError && /Reached the max retries|Connection is closed/i.test(err.message)) return;
        conn.lastError = err;
      });
      // Once ready, later failures are news again.
      conn.redis.on('ready', () => {
        conn.lastError = undefined;
      });
      return conn;
    });
  }

  /** Connects every pool connection (bounded by timeoutMs); FsError when Redis is unreachable. */
  async connect(): Promise<void> {
    try {
      await withTimeout(
        Promise.all(this.conns.map((c) => c.redis.connect())),
        this.timeoutMs,
        () => new FsError('ETIMEDOUT', `connect to Redis at ${this.address}: no answer within ${this.timeoutMs} ms`, { retryable: true }),
      );
    } catch (err) {
      for (const c of this.conns) c.redis.disconnect();
      // connect() rejects with a bare "Connection is closed"; the socket error says why.
      const why = err instanceof FsError ? err : (this.conns.find((c) => c.lastError)?.lastError ?? err);
      throw redisError(why, `connect to Redis at ${this.address}`);
    }
    // The block readers are an optimization: where they cannot connect, getInto() uses ioredis.
    await Promise.all(this.readers.map((r) => r.connect().catch(() => undefined)));
  }

  /** new RedisBlocks(options) + connect(). */
  static async open(options: RedisBlocksOptions): Promise<RedisBlocks> {
    const store = new RedisBlocks(options);
    await store.connect();
    return store;
  }

  private key(id: string): string {
    return this.prefix + id;
  }

  /** Runs one request on the least busy ready connection, translating failures. */
  private async exec<T>(what: string, fn: (redis: Redis) => Promise<T>): Promise<T> {
    if (this.closed) throw new FsError('EIO', `redis ${what}: store is closed`);
    return this.gate.run(`redis ${what}`, () => this.send(what, fn));
  }

  /** exec() without the stall gate (for the gate's own probe). */
  private async send<T>(what: string, fn: (redis: Redis) => Promise<T>): Promise<T> {
    let best: Conn | undefined;
    for (const c of this.conns) {
      if (c.redis.status === 'ready' && (!best || c.inFlight < best.inFlight)) best = c;
    }
    if (!best) {
      const last = this.conns.find((c) => c.lastError)?.lastError;
      throw new FsError('EIO', `redis ${what}: not connected to Redis at ${this.address}${last ? ` (${last.message})` : ''}`, {
        retryable: true,
        cause: last,
      });
    }
    best.inFlight++;
    try {
      return await fn(best.redis);
    } catch (err) {
      throw redisError(err, `redis ${what}`);
    } finally {
      best.inFlight--;
    }
  }

  async put(id: string, data: Buffer): Promise<void> {
    await this.exec('put', (r) => r.sendCommand(new SetCommand(this.key(id), data)) as Promise<unknown>);
  }

  async get(id: string): Promise<Buffer | undefined> {
    const v = await this.exec('get', (r) => r.getBuffer(this.key(id)));
    return v ?? undefined;
  }

  /**
   * GET into the caller's buffer, on the least busy block reader; through ioredis (and one more
   * copy) while no reader is connected. Reconnects readers that went down, at most once a second.
   */
  async getInto(id: string, alloc: (size: number) => Buffer): Promise<Buffer | undefined> {
    if (this.closed) throw new FsError('EIO', 'redis get: store is closed');
    let best: BulkGetConnection | undefined;
    let down = false;
    for (const r of this.readers) {
      if (!r.isReady) down = true;
      else if (!best || r.inFlight < best.inFlight) best = r;
    }
    if (down && Date.now() - this.lastReconnect > 1000) {
      this.lastReconnect = Date.now();
      for (const r of this.readers) if (!r.isReady) r.connect().catch(() => undefined);
    }
    const reader = best;
    if (!reader) {
      const v = await this.get(id);
      return v && copyInto(v, alloc);
    }
    return this.gate.run('redis get', async () => {
      try {
        return await reader.get(this.key(id), alloc);
      } catch (err) {
        throw redisError(err, 'redis get');
      }
    });
  }

  /** GETRANGE. Redis answers '' both for a missing key and past the end: both are undefined. */
  async getRange(id: string, offset: number, length: number): Promise<Buffer | undefined> {
    if (length <= 0) return undefined;
    const v = await this.exec('get', (r) => r.getrangeBuffer(this.key(id), offset, offset + length - 1));
    return v && v.length > 0 ? v : undefined;
  }

  async delete(ids: readonly string[]): Promise<void> {
    const batches: string[][] = [];
    for (let i = 0; i < ids.length; i += BATCH) batches.push(ids.slice(i, i + BATCH).map((id) => this.key(id)));
    // UNLINK frees the memory in a background thread; batches go out over the whole pool.
    await Promise.all(batches.map((keys) => this.exec('delete', (r) => r.unlink(...keys))));
  }

  /**
   * SCAN MATCH PREFIX* over the database. SCAN may return a key twice; ids are de-duplicated
   * (kept in memory for the duration of the listing).
   */
  async list(onBatch: (ids: string[]) => Promise<void> | void): Promise<void> {
    await this.scanIds(async (keys) => {
      if (keys.length > 0) await onBatch(keys.map((k) => k.slice(this.prefix.length)));
    });
  }

  private async scanIds(onKeys: (keys: string[]) => Promise<void>): Promise<void> {
    const seen = new Set<string>();
    const pattern = `${globEscape(this.prefix)}*`;
    let cursor = '0';
    do {
      const [next, keys] = await this.exec('scan', (r) => r.scan(cursor, 'MATCH', pattern, 'COUNT', BATCH));
      cursor = next;
      const fresh = keys.filter((k) => !seen.has(k));
      for (const k of fresh) seen.add(k);
      await onKeys(fresh);
    } while (cursor !== '0');
  }

  /** Exact: SCAN for the keys, STRLEN for the sizes (O(number of keys in the database)). */
  async usage(): Promise<{ blocks: number; bytes: number }> {
    let blocks = 0;
    let bytes = 0;
    await this.scanIds(async (keys) => {
      if (keys.length === 0) return;
      const lengths = await this.exec('usage', async (r) => {
        const pipe = r.pipeline();
        for (const k of keys) pipe.strlen(k);
        const res = (await pipe.exec()) ?? [];
        return res.map(([err, n]) => {
          if (err) throw err;
          return Number(n);
        });
      });
      // A key deleted between SCAN and STRLEN still counts as a block of 0 bytes: approximate.
      blocks += lengths.length;
      for (const n of lengths) bytes += n;
    });
    return { blocks, bytes };
  }

  /** Redis's persistence settings (CONFIG GET appendonly / save). */
  async persistence(): Promise<RedisPersistence> {
    return this.exec('persistence', async (r) => {
      const [aof, save] = await Promise.all([r.config('GET', 'appendonly'), r.config('GET', 'save')]);
      const value = (pair: unknown): string => (Array.isArray(pair) && pair.length >= 2 ? String(pair[1]) : '');
      return { appendonly: value(aof) === 'yes', save: value(save) };
    });
  }

  async durabilityWarning(): Promise<string | undefined> {
    let p: RedisPersistence;
    try {
      p = await this.persistence();
    } catch {
      return undefined; // CONFIG may be renamed or forbidden; nothing to say then
    }
    if (p.appendonly) return undefined;
    const snapshots = p.save ? `only RDB snapshots (save ${p.save}), so blocks written since the last snapshot` : 'no persistence at all, so every block';
    return `Redis at ${this.address} has appendonly no and ${snapshots} would be lost if Redis restarts, even after fsync; set 'appendonly yes' (and appendfsync everysec or always) in redis.conf`;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.gate.close();
    for (const r of this.readers) r.close();
    await Promise.all(
      this.conns.map(async (c) => {
        if (c.redis.status === 'ready') {
          await withTimeout(c.redis.quit(), 1000, () => new Error('quit timed out')).catch(() => undefined);
        }
        c.redis.disconnect();
      }),
    );
  }
}

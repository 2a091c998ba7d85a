// Block stores by URL scheme:
//   redis://[USER:PASSWORD@]HOST[:PORT][/DB]   keys 'kvfs:VOLUME_UUID:b:' + block id
//   file:///ABSOLUTE/DIR                       embedded SQLite, DIR/blocks.db
// Backends are loaded on first use.
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { FsError, UsageError } from '../errors';
import type { BlockStore } from './store';

const DEFAULT_REDIS_PORT = 6379;
const VOLUME_UUID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export type BlockUrl =
  | {
      scheme: 'redis';
      host: string;
      port: number;
      db: number;
      username?: string;
      password?: string;
      /** The URL without credentials. */
      describe: string;
    }
  | { scheme: 'file'; dir: string; describe: string };

export interface OpenBlockStoreOptions {
  /** Per-request time limit in ms, also for connecting. Default 10000. */
  timeoutMs?: number;
  /** Redis: connections in the pool. Default 4. */
  connections?: number;
  /** Embedded: create the directory and database when missing. Default true. */
  create?: boolean;
}

const FORMS = 'redis://[USER:PASSWORD@]HOST:PORT[/DB] or file:///ABSOLUTE/DIR';

function bad(url: string, what: string): UsageError {
  const shown = url.replace(/^([a-z][a-z0-9+.-]*:\/\/)([^@/]*)@/i, (_, s: string, c: string) => `${s}${c.split(':')[0]}:***@`);
  return new UsageError(`invalid block store URL ${JSON.stringify(shown)}: ${what}; expected ${FORMS}`);
}

/** The Redis key prefix of a volume's blocks. */
export function redisBlockPrefix(volumeUuid: string): string {
  return `kvfs:${volumeUuid}:b:`;
}

/** Parses and checks a block store URL; UsageError with a one-line reason when it is wrong. */
export function parseBlockUrl(url: string): BlockUrl {
  if (typeof url !== 'string' || url.trim() === '') throw bad(String(url), 'empty');
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw bad(url, 'not a URL');
  }
  if (u.search || u.hash) throw bad(url, 'query strings and fragments are not supported');
  if (u.protocol === 'redis:') {
    if (!u.hostname) throw bad(url, 'no host');
    const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
    const port = u.port === '' ? DEFAULT_REDIS_PORT : Number(u.port);
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw bad(url, `bad port ${JSON.stringify(u.port)}`);
    const p = u.pathname.replace(/\/$/, '');
    let db = 0;
    if (p !== '') {
      if (!/^\/\d{1,5}$/.test(p)) throw bad(url, `the path must be a database number (/0, /1, ...), not ${JSON.stringify(u.pathname)}`);
      db = Number(p.slice(1));
    }
    let username: string | undefined;
    let password: string | undefined;
    try {
      username = u.username ? decodeURIComponent(u.username) : undefined;
      password = u.password ? decodeURIComponent(u.password) : undefined;
    } catch {
      throw bad(url, 'bad percent-encoding in the user name or password');
    }
    const hostShown = host.includes(':') ? `[${host}]` : host;
    return { scheme: 'redis', host, port, db, username, password, describe: `redis://${hostShown}:${port}${db ? `/${db}` : ''}` };
  }
  if (u.protocol === 'file:') {
    if (u.host !== '' && u.host !== 'localhost') throw bad(url, `file URLs must be local (file:///...), not on host ${JSON.stringify(u.host)}`);
    let dir: string;
    try {
      dir = path.resolve(fileURLToPath(u));
    } catch (err) {
      throw bad(url, (err as Error).message);
    }
    return { scheme: 'file', dir, describe: `file://${dir}` };
  }
  throw bad(url, `unknown scheme ${JSON.stringify(u.protocol.slice(0, -1))}`);
}

/**
 * Opens the block store a URL names, for the volume with this uuid. UsageError for a bad URL
 * and when Redis cannot be reached or refuses the credentials (within timeoutMs); FsError EBUSY
 * when an embedded store is open in another process.
 */
export async function openBlockStore(url: string, volumeUuid: string, options: OpenBlockStoreOptions = {}): Promise<BlockStore> {
  const parsed = parseBlockUrl(url);
  if (!VOLUME_UUID.test(volumeUuid)) throw new TypeError(`openBlockStore: bad volume uuid ${JSON.stringify(volumeUuid)}`);
  if (parsed.scheme === 'redis') {
    const { RedisBlocks } = await import('./redis');
    const store = new RedisBlocks({
      host: parsed.host,
      port: parsed.port,
      db: parsed.db,
      username: parsed.username,
      password: parsed.password,
      prefix: redisBlockPrefix(volumeUuid),
      connections: options.connections,
      timeoutMs: options.timeoutMs,
    });
    try {
      await store.connect();
    } catch (err) {
      const where = parsed.describe.replace(/^redis:\/\//, '');
      throw new UsageError(`cannot reach Redis at ${where}: ${reason(err)}`);
    }
    return store;
  }
  const { SqliteBlocks } = await import('./sqlite');
  return new SqliteBlocks({ dir: parsed.dir, volumeUuid, create: options.create });
}

function reason(err: unknown): string {
  const cause = (err as { cause?: unknown })?.cause;
  const text = `${err instanceof Error ? err.message : String(err)} ${cause instanceof Error ? cause.message : ''}`;
  const code = String((cause as { code?: unknown })?.code ?? '');
  if (code === 'ECONNREFUSED' || /ECONNREFUSED/.test(text)) return 'connection refused; is redis-server running?';
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') return 'unknown host name';
  if (err instanceof FsError && err.code === 'ETIMEDOUT') return `${err.message}; is the address right and the server running?`;
  if (err instanceof FsError && err.code === 'EACCES') return `access denied (${cause instanceof Error ? cause.message : err.message}); check USER:PASSWORD in the URL`;
  if (/Protocol error/i.test(text)) return 'the server there does not speak the Redis protocol';
  if (cause instanceof Error) return cause.message;
  return err instanceof Error ? err.message : String(err);
}

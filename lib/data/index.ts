// Block stores by URL scheme:
//   redis://[USER[:PASSWORD]@]HOST[:PORT][/DB]    keys 'kvfs:VOLUME_UUID:b:' + block id
//   rediss://[USER[:PASSWORD]@]HOST[:PORT][/DB]   the same over TLS
//   file:///ABSOLUTE/DIR                          embedded: one file per block under DIR/blocks/
//                                                 (lib/data/files.ts), or DIR/blocks.db where a
//                                                 volume made before has one (lib/data/sqlite.ts)
// Backends are loaded on first use.
//
// Secrets: a password may come in the URL or, better, beside it (BackendSecurity.password, which
// the CLI reads from the environment or a file). Parsed URLs keep it out of `describe`, and every
// message shows URLs through redactUrl()/stripPassword().
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { FsError, UsageError } from '../errors';
import type { EncryptionKey } from './encrypted';
import type { BlockStore } from './store';

/** PEM material for a TLS connection to a backend. */
export interface TlsMaterial {
  /** CA certificates that may sign the server's certificate. Default: the system trust store. */
  ca?: Buffer;
  /** Client certificate (chain) and its private key, for servers that require one. */
  cert?: Buffer;
  key?: Buffer;
}

/** Credentials and TLS settings that travel beside a backend URL, never inside stored settings. */
export interface BackendSecurity {
  /**
   * Password for the URL's user when the URL itself has none (Redis: also for Redis's default
   * user when the URL names no user). A password in the URL wins.
   */
  password?: string;
  /** Where `password` came from, for messages (e.g. 'KVFS_DATA_PASSWORD'); never the password. */
  passwordFrom?: string;
  /** CA / client certificate. For Redis they need a rediss:// URL; for etcd they turn TLS on. */
  tls?: TlsMaterial;
}

/**
 * What travels beside the data URL: the backend's credentials, and the volume's encryption key
 * (lib/data/encrypted.ts) when the volume is encrypted. Never stored, never shown.
 */
export interface DataSecurity extends BackendSecurity {
  /** The key of an encrypted volume (--key-file, KVFS_KEY_FILE, KVFS_KEY). */
  key?: EncryptionKey;
}

/**
 * The URL with the password removed (mask undefined: 'USER@' is kept, ':PASSWORD' dropped) or
 * replaced by `mask` ('USER:***@'). The user-info ends at the last '@' before the path, as the
 * WHATWG URL parser reads it, so a password containing '@' is removed whole.
 */
export function stripPassword(url: string, mask?: string): string {
  const m = /^([a-z][a-z0-9+.-]*:\/\/)([^/?#]*)(.*)$/is.exec(url);
  if (!m) return url;
  const [, scheme, authority, rest] = m;
  const at = authority.lastIndexOf('@');
  if (at < 0) return url;
  const cred = authority.slice(0, at);
  const host = authority.slice(at + 1);
  const colon = cred.indexOf(':');
  const user = colon < 0 ? cred : cred.slice(0, colon);
  if (colon < 0) return url; // no password
  if (mask !== undefined) return `${scheme}${user}:${mask}@${host}${rest}`;
  return `${scheme}${user ? `${user}@` : ''}${host}${rest}`;
}

/** Whether a URL carries a password in its user-info. */
export function hasPassword(url: string): boolean {
  return stripPassword(url) !== url;
}

const SYSTEM_CA_FILES = [
  '/etc/ssl/certs/ca-certificates.crt', // Debian, Ubuntu, Alpine, Arch
  '/etc/pki/tls/certs/ca-bundle.crt', // Fedora, RHEL, CentOS
  '/etc/ssl/ca-bundle.pem', // openSUSE
  '/etc/ssl/cert.pem', // macOS, Alpine, BSDs
];
let systemCa: Buffer | null | undefined;

/**
 * The system's trust store as one PEM bundle ($SSL_CERT_FILE, else the distribution's bundle),
 * or undefined when there is none (then Node's built-in Mozilla list applies).
 */
export function systemCaBundle(): Buffer | undefined {
  if (systemCa === undefined) {
    systemCa = null;
    for (const file of [process.env.SSL_CERT_FILE, ...SYSTEM_CA_FILES]) {
      if (!file) continue;
      try {
        systemCa = readFileSync(file);
        break;
      } catch {
        // try the next one
      }
    }
  }
  return systemCa ?? undefined;
}

const UNTRUSTED_CODES = new Set([
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'CERT_UNTRUSTED',
  'CERT_SIGNATURE_FAILURE',
]);

/**
 * A one-line explanation of a TLS failure talking to a backend, or undefined when the text is not
 * about TLS. `side` names the options: --meta-ca or --data-ca, and so on.
 */
export function explainTlsFailure(text: string, code: string, side: 'meta' | 'data', hasClientCert: boolean): string | undefined {
  const detail = text.replace(/\s+/g, ' ').trim();
  if (
    UNTRUSTED_CODES.has(code) ||
    /self[- ]signed certificate|unable to (verify|get local issuer|get issuer)|certificate (is )?not trusted|certificate signature failure/i.test(text)
  ) {
    const why =
      /(self[- ]signed certificate(?: in certificate chain)?|unable to (?:verify the first certificate|get local issuer certificate|get issuer certificate(?: locally)?|verify leaf signature))/i.exec(text)?.[1] ??
      code.toLowerCase().replace(/_/g, ' ');
    return `the server's TLS certificate is not trusted (${why}); pass --${side}-ca FILE with the CA certificate that signed it`;
  }
  if (code === 'CERT_HAS_EXPIRED' || /certificate has expired/i.test(text)) return `the server's TLS certificate has expired`;
  if (code === 'CERT_NOT_YET_VALID' || /certificate is not yet valid/i.test(text)) return `the server's TLS certificate is not valid yet (check the clocks)`;
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID' || /does not match certificate's altnames|Hostname\/IP does not match/i.test(text)) {
    return `the server's TLS certificate is not issued for this host name (${/Host[^:]*: [^.]*\./.exec(detail)?.[0] ?? detail}); connect by a name or address the certificate lists`;
  }
  if (/alert (bad certificate|certificate required|unknown ca|handshake failure)|certificate required/i.test(text)) {
    return hasClientCert
      ? `the server refused our client certificate (${/alert [a-z ]+/i.exec(text)?.[0] ?? 'TLS alert'}); is --${side}-cert signed by a CA the server trusts?`
      : `the server requires a client certificate (${/alert [a-z ]+/i.exec(text)?.[0] ?? 'TLS alert'}); pass --${side}-cert FILE and --${side}-key FILE`;
  }
  if (/wrong version number|packet length too long|unknown protocol|http request/i.test(text)) {
    return `the server does not speak TLS there (${/(wrong version number|packet length too long|unknown protocol|http request)/i.exec(text)?.[1]}); use a plain URL or the server's TLS port`;
  }
  if (/private key|key values mismatch|PEM|no start line|bad decrypt|KEY_VALUES_MISMATCH/i.test(text)) {
    return `the client certificate or key cannot be used (${detail.slice(0, 200)}); check --${side}-cert and --${side}-key`;
  }
  return undefined;
}

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
      /** rediss://: connect over TLS. Absent for redis://. */
      tls?: true;
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
  /** Redis: password from outside the URL, CA and client certificate. */
  security?: BackendSecurity;
}

const FORMS = 'redis[s]://[USER[:PASSWORD]@]HOST:PORT[/DB] or file:///ABSOLUTE/DIR';

function bad(url: string, what: string): UsageError {
  return new UsageError(`invalid block store URL ${JSON.stringify(stripPassword(url, '***'))}: ${what}; expected ${FORMS}`);
}

/** The Redis key prefix of a volume's blocks. */
export function redisBlockPrefix(volumeUuid: string): string {
  return `kvfs:${volumeUuid}:b:`;
}

/**
 * Parses and checks a block store URL; UsageError with a one-line reason when it is wrong.
 * `security.password` fills in a password the URL leaves out.
 */
export function parseBlockUrl(url: string, security?: BackendSecurity): BlockUrl {
  if (typeof url !== 'string' || url.trim() === '') throw bad(String(url), 'empty');
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw bad(url, 'not a URL');
  }
  if (u.search || u.hash) throw bad(url, 'query strings and fragments are not supported');
  const tlsGiven = Boolean(security?.tls && (security.tls.ca || security.tls.cert || security.tls.key));
  if (u.protocol === 'redis:' || u.protocol === 'rediss:') {
    const tls = u.protocol === 'rediss:';
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
    if (password === undefined && security?.password !== undefined) password = security.password;
    if (tlsGiven && !tls) {
      throw new UsageError(
        `--data-ca, --data-cert and --data-key are for TLS, but ${JSON.stringify(stripPassword(url, '***'))} is plain TCP; use rediss://${u.host}${p} (Redis's tls-port)`,
      );
    }
    const hostShown = host.includes(':') ? `[${host}]` : host;
    const describe = `${tls ? 'rediss' : 'redis'}://${hostShown}:${port}${db ? `/${db}` : ''}`;
    return { scheme: 'redis', host, port, db, username, password, ...(tls ? { tls: true as const } : {}), describe };
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
 * and when Redis cannot be reached, refuses the credentials or fails TLS (within timeoutMs);
 * FsError EBUSY when an embedded store is open in another process.
 */
export async function openBlockStore(url: string, volumeUuid: string, options: OpenBlockStoreOptions = {}): Promise<BlockStore> {
  const security = options.security;
  const parsed = parseBlockUrl(url, security);
  if (!VOLUME_UUID.test(volumeUuid)) throw new TypeError(`openBlockStore: bad volume uuid ${JSON.stringify(volumeUuid)}`);
  if (parsed.scheme === 'redis') {
    const { RedisBlocks } = await import('./redis');
    const tls = security?.tls ?? {};
    const store = new RedisBlocks({
      host: parsed.host,
      port: parsed.port,
      db: parsed.db,
      username: parsed.username,
      password: parsed.password,
      tls: parsed.tls ? { ca: tls.ca ?? systemCaBundle(), cert: tls.cert, key: tls.key } : undefined,
      prefix: redisBlockPrefix(volumeUuid),
      connections: options.connections,
      timeoutMs: options.timeoutMs,
    });
    try {
      await store.connect();
    } catch (err) {
      const where = parsed.describe.replace(/^rediss?:\/\//, '');
      throw new UsageError(`cannot reach Redis at ${where}: ${reason(err, parsed, security)}`);
    }
    return store;
  }
  // Embedded: the store on disk decides; a new volume gets the file store (faster: lib/data/files.ts).
  if (existsSync(path.join(parsed.dir, 'blocks.db'))) {
    const { SqliteBlocks } = await import('./sqlite');
    return new SqliteBlocks({ dir: parsed.dir, volumeUuid, create: options.create });
  }
  const { FileBlocks } = await import('./files');
  return new FileBlocks({ dir: parsed.dir, volumeUuid, create: options.create });
}

function reason(err: unknown, parsed: Extract<BlockUrl, { scheme: 'redis' }>, security: BackendSecurity | undefined): string {
  const cause = (err as { cause?: unknown })?.cause;
  const causeText = cause instanceof Error ? cause.message : '';
  const text = `${err instanceof Error ? err.message : String(err)} ${causeText}`;
  const code = String((cause as { code?: unknown })?.code ?? '');
  const tls = Boolean(parsed.tls);
  if (code === 'ECONNREFUSED' || /ECONNREFUSED/.test(text)) return 'connection refused; is redis-server running?';
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') return 'unknown host name';
  if (tls) {
    const why = explainTlsFailure(text, code, 'data', Boolean(security?.tls?.cert));
    if (why) return why;
  }
  if (err instanceof FsError && err.code === 'EACCES') {
    const user = parsed.username ?? 'default';
    const from = parsed.password === undefined ? '' : ` (password from ${security?.passwordFrom && parsed.password === security.password ? security.passwordFrom : 'the URL'})`;
    if (parsed.password === undefined && /^(NOAUTH|WRONGPASS)/.test(causeText)) {
      if (parsed.username !== undefined) {
        return `authentication failed for user '${user}', given without a password (${causeText.replace(/\.\s*$/, '')}); give the password in KVFS_DATA_PASSWORD, --data-password-file FILE, or the URL as redis://USER:PASSWORD@HOST:PORT`;
      }
      return `Redis requires a password (NOAUTH); give it in KVFS_DATA_PASSWORD, --data-password-file FILE, or the URL as redis://[USER]:PASSWORD@HOST:PORT`;
    }
    const said = (causeText || err.message).replace(/\.\s*$/, '');
    if (/^WRONGPASS/.test(causeText)) return `authentication failed for user '${user}'${from}: ${said}; check USER:PASSWORD`;
    return `access denied for user '${user}'${from}: ${said}; check USER:PASSWORD and the user's ACL`;
  }
  if (err instanceof FsError && err.code === 'ETIMEDOUT') {
    return `${err.message}; is the address right and the server running?${tls ? ' (rediss:// needs the server\'s tls-port)' : ''}`;
  }
  if (/ECONNRESET|socket hang up|Connection is closed|Reached the max retries/i.test(text)) {
    return tls
      ? `the server closed the connection during the TLS handshake; if it requires client certificates (tls-auth-clients yes), pass --data-cert FILE and --data-key FILE`
      : `the server closed the connection; if it only serves TLS (tls-port), use rediss://`;
  }
  if (/Protocol error/i.test(text)) return 'the server there does not speak the Redis protocol';
  if (cause instanceof Error) return cause.message;
  return err instanceof Error ? err.message : String(err);
}

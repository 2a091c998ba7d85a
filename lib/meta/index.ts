// Metadata engines by URL scheme (as JuiceFS's meta.NewClient(uri)):
//   etcd://[USER[:PASSWORD]@]HOST[:PORT][,HOST[:PORT]...]/VOLUME   keys under 'kvfs/VOLUME/'
//   etcd+https://...                                               the same over TLS
//   file:///ABSOLUTE/DIR/VOLUME                                    embedded SQLite in that dir
// Backends are loaded on first use, so etcd users never load the SQLite binding and vice versa.
// A password may also come beside the URL (BackendSecurity.password: the CLI reads it from the
// environment or a file), and TLS material with it; neither is ever part of `describe`.
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { explainTlsFailure, stripPassword, systemCaBundle, type BackendSecurity } from '../data/index';
import { FsError, UsageError } from '../errors';
import type { KvEngine } from './kv';

export type { BackendSecurity, TlsMaterial } from '../data/index';

export const VOLUME_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const DEFAULT_ETCD_PORT = 2379;

export type MetaUrl =
  | {
      scheme: 'etcd';
      /** 'http://HOST:PORT' (TLS: 'https://HOST:PORT') for each endpoint. */
      hosts: string[];
      volume: string;
      /** Namespace of the volume's keys: 'kvfs/VOLUME/'. */
      prefix: string;
      auth?: { username: string; password: string };
      /** Connect over TLS (etcd+https://, or CA / client certificate given). Absent otherwise. */
      tls?: true;
      /** The URL without credentials. */
      describe: string;
    }
  | {
      scheme: 'file';
      /** Absolute directory holding the volume's files; its last component is the volume. */
      dir: string;
      volume: string;
      describe: string;
    };

export interface OpenKvOptions {
  /** Per-request time limit in ms (etcd), longest wait for the txn queue (embedded). Default 10000. */
  timeoutMs?: number;
  /** etcd: attempts of a conflicting txn before EAGAIN. Default 50. */
  maxAttempts?: number;
  /** etcd: contact the server once before returning, so a bad address fails here. Default true. */
  check?: boolean;
  /** Where failures without a caller go (watch problems). Default process.emitWarning. */
  onBackgroundError?: (err: Error) => void;
  /** Embedded: create the volume directory and database when missing. Default true. */
  create?: boolean;
  /** etcd: password from outside the URL, CA and client certificate. */
  security?: BackendSecurity;
}

export interface OpenedKv {
  kv: KvEngine;
  volume: string;
  /** The URL without credentials, for messages and status. */
  describe: string;
}

interface Backend {
  /** What the URL looks like, for messages. */
  form: string;
  parse(url: string, security: BackendSecurity | undefined): MetaUrl;
  open(parsed: MetaUrl, options: OpenKvOptions): Promise<KvEngine>;
}

const FORMS = 'etcd[+https]://[USER@]HOST:PORT[,HOST:PORT...]/VOLUME or file:///ABSOLUTE/DIR/VOLUME';

function bad(url: string, what: string, form = FORMS): UsageError {
  return new UsageError(`invalid metadata URL ${JSON.stringify(redact(url))}: ${what}; expected ${form}`);
}

/** The URL with any password replaced, for messages. */
function redact(url: string): string {
  return stripPassword(url, '***');
}

function checkVolume(url: string, volume: string, form: string): string {
  if (!VOLUME_NAME.test(volume)) {
    throw bad(url, `volume name ${JSON.stringify(volume)} must be 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit`, form);
  }
  return volume;
}

function decode(url: string, s: string, form: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw bad(url, 'bad percent-encoding in the user name or password', form);
  }
}

const etcdBackend: Backend = {
  form: 'etcd[+https]://[USER[:PASSWORD]@]HOST:PORT[,HOST:PORT...]/VOLUME',
  parse(url, security) {
    const form = this.form;
    // The user-info ends at the last '@' before the path (a password may contain '@').
    const m = /^etcd(\+https)?:\/\/(?:([^/?#]*)@)?([^/@?#]*)(\/[^?#]*)?([?#].*)?$/i.exec(url);
    if (!m) throw bad(url, 'not an etcd URL', form);
    const [, httpsScheme, cred, hostList, pathPart, rest] = m;
    const tlsMaterial = security?.tls;
    const tls = Boolean(httpsScheme) || Boolean(tlsMaterial && (tlsMaterial.ca || tlsMaterial.cert || tlsMaterial.key));
    if (rest) throw bad(url, 'query strings and fragments are not supported', form);
    if (!hostList) throw bad(url, 'no host', form);
    const hosts: string[] = [];
    const shown: string[] = [];
    for (const h of hostList.split(',')) {
      const hm = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::(\d{1,5}))?$/.exec(h);
      if (!hm) throw bad(url, `bad host ${JSON.stringify(h)}`, form);
      const port = hm[2] === undefined ? DEFAULT_ETCD_PORT : Number(hm[2]);
      if (port < 1 || port > 65535) throw bad(url, `bad port in ${JSON.stringify(h)}`, form);
      hosts.push(`${tls ? 'https' : 'http'}://${hm[1]}:${port}`);
      shown.push(`${hm[1]}:${port}`);
    }
    const segments = (pathPart ?? '').split('/').filter((s) => s !== '');
    if (segments.length !== 1) throw bad(url, segments.length === 0 ? 'no volume name' : 'the path must be just /VOLUME', form);
    const volume = checkVolume(url, segments[0], form);
    let auth: { username: string; password: string } | undefined;
    if (cred !== undefined) {
      const i = cred.indexOf(':');
      const username = decode(url, i < 0 ? cred : cred.slice(0, i), form);
      if (username === '') throw bad(url, 'an etcd password needs a user name: USER:PASSWORD', form);
      if (i >= 0) {
        auth = { username, password: decode(url, cred.slice(i + 1), form) };
      } else if (security?.password !== undefined) {
        auth = { username, password: security.password };
      } else {
        throw bad(url, `no password for etcd user ${JSON.stringify(username)}: give it in KVFS_META_PASSWORD or --meta-password-file FILE (or as USER:PASSWORD in the URL)`, form);
      }
    } else if (security?.password !== undefined) {
      throw bad(url, `a password was given${security.passwordFrom ? ` (${security.passwordFrom})` : ''} but the URL names no etcd user; write etcd://USER@HOST:PORT/VOLUME`, form);
    }
    const describe = `etcd${tls ? '+https' : ''}://${shown.join(',')}/${volume}`;
    return { scheme: 'etcd', hosts, volume, prefix: `kvfs/${volume}/`, auth, ...(tls ? { tls: true as const } : {}), describe };
  },
  async open(parsed, options) {
    if (parsed.scheme !== 'etcd') throw new TypeError('not an etcd URL');
    const { EtcdKv } = await import('./etcd');
    const material = options.security?.tls ?? {};
    const kv = new EtcdKv({
      hosts: parsed.hosts,
      prefix: parsed.prefix,
      auth: parsed.auth,
      tls: parsed.tls ? { ca: material.ca ?? systemCaBundle(), cert: material.cert, key: material.key } : undefined,
      timeoutMs: options.timeoutMs,
      maxAttempts: options.maxAttempts,
      onBackgroundError: options.onBackgroundError,
    });
    if (options.check ?? true) {
      try {
        await kv.ping();
      } catch (err) {
        await kv.close().catch(() => undefined);
        throw new UsageError(`cannot reach etcd at ${parsed.hosts.map((h) => h.replace(/^https?:\/\//, '')).join(',')}: ${reason(err, parsed, options.security)}`);
      }
    }
    return kv;
  },
};

/** A short human reason for a failed first contact. */
function reason(err: unknown, parsed: Extract<MetaUrl, { scheme: 'etcd' }>, security: BackendSecurity | undefined): string {
  const cause = (err as { cause?: unknown })?.cause;
  const text = `${err instanceof Error ? err.message : String(err)} ${String(cause ?? '')}`;
  const code = String((cause as { code?: unknown })?.code ?? '');
  if (parsed.tls) {
    const why = explainTlsFailure(text, code, 'meta', Boolean(security?.tls?.cert));
    if (why) return why;
  }
  if (err instanceof FsError && err.code === 'ETIMEDOUT') {
    return `${err.message}; is the address right and the server running?${parsed.tls ? ' (and does it serve TLS there?)' : ''}`;
  }
  if (err instanceof FsError && err.code === 'EACCES') {
    const detail = err.message.replace(/^EACCES: (etcd [a-z]+: )?/, '');
    if (!parsed.auth && security?.tls?.cert) {
      return `access denied (${detail}); etcd takes the user from the client certificate's common name when the URL names none: that user needs read and write permission on kvfs/${parsed.volume}/, or name a user in the URL (etcd://USER@HOST:PORT/VOLUME) with its password in KVFS_META_PASSWORD or --meta-password-file FILE`;
    }
    if (!parsed.auth) {
      return `access denied (${detail}); etcd has authentication enabled: name the user in the URL (etcd://USER@HOST:PORT/VOLUME) and give the password in KVFS_META_PASSWORD or --meta-password-file FILE`;
    }
    const from = security?.passwordFrom && parsed.auth.password === security.password ? security.passwordFrom : 'the URL';
    if (/authentication failed|invalid user ID or password/i.test(detail)) {
      return `authentication failed for etcd user '${parsed.auth.username}' (password from ${from}): ${detail}; check USER:PASSWORD`;
    }
    return `access denied for etcd user '${parsed.auth.username}' (${detail}); check USER:PASSWORD and that the user's role may read and write the prefix kvfs/${parsed.volume}/`;
  }
  if (/ECONNREFUSED|connection refused/i.test(text)) return 'connection refused; is etcd running?';
  if (/ENOTFOUND|EAI_AGAIN|Name resolution/i.test(text)) return 'unknown host name';
  if (!parsed.tls && /ECONNRESET|Failed to connect|Protocol error|socket hang up|Connection dropped/i.test(text)) {
    return 'the server closed the connection; if etcd serves TLS there (https:// client URLs), use etcd+https:// (and --meta-ca FILE)';
  }
  if (/UNIMPLEMENTED|HTTP status code|Protocol error/i.test(text)) return 'the server there is not an etcd v3 (gRPC) endpoint';
  if (cause instanceof Error) return cause.message;
  return err instanceof Error ? err.message : String(err);
}

const fileBackend: Backend = {
  form: 'file:///ABSOLUTE/DIR/VOLUME',
  parse(url, security) {
    const form = this.form;
    const t = security?.tls;
    if (security?.password !== undefined || (t && (t.ca || t.cert || t.key))) {
      throw bad(url, 'an embedded volume takes no password, CA or client certificate (those options are for etcd)', form);
    }
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      throw bad(url, 'not a URL', form);
    }
    if (u.host !== '' && u.host !== 'localhost') throw bad(url, `file URLs must be local (file:///...), not on host ${JSON.stringify(u.host)}`, form);
    if (u.search || u.hash) throw bad(url, 'query strings and fragments are not supported', form);
    let dir: string;
    try {
      dir = fileURLToPath(u);
    } catch (err) {
      throw bad(url, (err as Error).message, form);
    }
    dir = path.resolve(dir);
    if (dir === path.parse(dir).root) throw bad(url, 'the path must end in the volume directory', form);
    const volume = checkVolume(url, path.basename(dir), form);
    return { scheme: 'file', dir, volume, describe: `file://${dir}` };
  },
  async open(parsed, options) {
    if (parsed.scheme !== 'file') throw new TypeError('not a file URL');
    const { SqliteKv } = await import('./sqlite');
    return new SqliteKv({
      dir: parsed.dir,
      timeoutMs: options.timeoutMs,
      onBackgroundError: options.onBackgroundError,
      create: options.create,
    });
  },
};

const backends = new Map<string, Backend>([
  ['etcd:', etcdBackend],
  ['etcd+https:', etcdBackend],
  ['file:', fileBackend],
]);

/**
 * Parses and checks a metadata URL; UsageError with a one-line reason when it is wrong.
 * `security.password` is the password of the URL's user when the URL has none.
 */
export function parseMetaUrl(url: string, security?: BackendSecurity): MetaUrl {
  if (typeof url !== 'string' || url.trim() === '') throw bad(String(url), 'empty');
  const scheme = /^([a-z][a-z0-9+.-]*:)/i.exec(url)?.[1].toLowerCase();
  const backend = scheme && backends.get(scheme);
  if (!backend) throw bad(url, scheme ? `unknown scheme ${JSON.stringify(scheme.slice(0, -1))}` : 'no scheme');
  return backend.parse(url, security);
}

/**
 * Opens the metadata engine a URL names. UsageError for a bad URL or an unreachable etcd;
 * FsError EBUSY when an embedded volume is open in another process.
 */
export async function openKv(url: string, options: OpenKvOptions = {}): Promise<OpenedKv> {
  const parsed = parseMetaUrl(url, options.security);
  const backend = backends.get(`${parsed.scheme}:`)!;
  const kv = await backend.open(parsed, options);
  return { kv, volume: parsed.volume, describe: parsed.describe };
}

// The backend options every command that opens a volume shares (format, mount, status, ...):
// where the URLs come from (--meta/--data or KVFS_META/KVFS_DATA), passwords kept off the
// command line (KVFS_META_PASSWORD/KVFS_DATA_PASSWORD, --meta-password-file/--data-password-file),
// TLS material (--meta-ca/--meta-cert/--meta-key, --data-ca/--data-cert/--data-key), and the
// encryption key of an encrypted volume (--key-file, KVFS_KEY_FILE, KVFS_KEY).
//
// A command merges BACKEND_OPTIONS into its own option spec and BACKEND_HELP into its help, and
// calls resolveBackends() on the parsed values. Secrets never go back out: resolveBackends()
// hides a password typed into a URL on the command line from `ps` (it rewrites the process
// title), and backgroundLaunch() re-executes `kvfs mount -d` with passwords in the environment
// rather than in argv.
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import { EncryptionKey } from '../lib/data/encrypted';
import { hasPassword, stripPassword, type BackendSecurity, type DataSecurity, type TlsMaterial } from '../lib/data/index';
import { UsageError } from '../lib/errors';
import type { OptionSpec, Parsed } from './args';

/** Environment variables read by resolveBackends(). */
export const ENV = {
  meta: 'KVFS_META',
  data: 'KVFS_DATA',
  metaPassword: 'KVFS_META_PASSWORD',
  dataPassword: 'KVFS_DATA_PASSWORD',
  keyFile: 'KVFS_KEY_FILE',
  key: 'KVFS_KEY',
} as const;

/** Options shared by format, mount and status (merged into each command's spec). */
export const BACKEND_OPTIONS = {
  'meta-ca': { type: 'string' },
  'meta-cert': { type: 'string' },
  'meta-key': { type: 'string' },
  'meta-password-file': { type: 'string' },
  'data-ca': { type: 'string' },
  'data-cert': { type: 'string' },
  'data-key': { type: 'string' },
  'data-password-file': { type: 'string' },
  'key-file': { type: 'string' },
} as const satisfies OptionSpec;

/** The help text of BACKEND_OPTIONS and of the environment (appended to each command's help). */
export const BACKEND_HELP = `Credentials and TLS (see docs/security.md):
  --meta-ca FILE        CA certificate(s), PEM, that signed etcd's certificate.
                        Any --meta-ca/--meta-cert/--meta-key turns TLS on, as an
                        etcd+https:// URL does (default CA: the system trust store)
  --meta-cert FILE      client certificate, PEM, for etcd's --client-cert-auth
  --meta-key FILE       its private key (PEM, not encrypted)
  --meta-password-file FILE
                        the etcd password of the user the URL names
                        (etcd://USER@HOST:PORT/VOLUME): the first line of FILE
  --data-ca FILE        CA certificate(s), PEM, for a rediss:// (TLS) Redis
                        (default: the system trust store)
  --data-cert FILE      client certificate, PEM, for Redis's tls-auth-clients
  --data-key FILE       its private key (PEM, not encrypted)
  --data-password-file FILE
                        the Redis password, for the URL's user or else Redis's
                        default user: the first line of FILE
  --key-file FILE       the key of an encrypted volume (kvfs format --encrypt):
                        32 bytes as 64 hex digits, e.g. made with
                        openssl rand -hex 32 > FILE; chmod 600 FILE

Environment:
  ${ENV.meta}             metadata URL when --meta is not given
  ${ENV.data}             data URL when --data is not given (not used for the
                        embedded default volume)
  ${ENV.metaPassword}    etcd password when neither the URL nor
                        --meta-password-file gives one (etcd URLs only)
  ${ENV.dataPassword}    Redis password when neither the URL nor
                        --data-password-file gives one
  ${ENV.keyFile}         file holding the key, when --key-file is not given
  ${ENV.key}              the key itself (64 hex digits), when neither
                        --key-file nor ${ENV.keyFile} is given

A password in a URL on the command line can be seen by other users (ps) while
kvfs starts: prefer the environment or a password file. Passwords and keys are
never stored in the volume, logged, or shown by kvfs status. A key given for a
volume that is not encrypted is an error.`;

/** What resolveBackends() found: the URLs to use and the secrets that go beside them. */
export interface Backends {
  /** --meta, else $KVFS_META; undefined when neither (the command picks its default). */
  metaUrl?: string;
  /** --data, else $KVFS_DATA (only with a metaUrl); undefined when neither. */
  dataUrl?: string;
  /** Password and TLS material for the metadata store (etcd). */
  meta: BackendSecurity;
  /** Password and TLS material for the block store (Redis), and the encryption key if given. */
  data: DataSecurity;
}

type Values = Parsed['values'];

const str = (v: string | boolean | undefined): string | undefined => (typeof v === 'string' ? v : undefined);

/** `cannot read WHAT: why`, where WHAT names the option or variable and the file. */
function fileError(option: string, file: string, err: unknown, what = `--${option} ${file}`): UsageError {
  const code = (err as NodeJS.ErrnoException)?.code;
  const why =
    code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : code === 'EISDIR' ? 'it is a directory' : (err as Error)?.message ?? String(err);
  return new UsageError(`cannot read ${what}: ${why}`);
}

function readOptionFile(option: string, file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw fileError(option, file, err);
  }
}

/** The first line of a password file (without its line ending). */
function readPasswordFile(option: string, file: string): string {
  const text = readOptionFile(option, file).toString('utf8');
  const password = text.split(/\r?\n/)[0];
  if (!password) throw new UsageError(`--${option} ${file} is empty: its first line must be the password`);
  return password;
}

/** Reads and checks --SIDE-ca/--SIDE-cert/--SIDE-key; undefined when none is given. */
function readTls(values: Values, side: 'meta' | 'data'): TlsMaterial | undefined {
  const caFile = str(values[`${side}-ca`]);
  const certFile = str(values[`${side}-cert`]);
  const keyFile = str(values[`${side}-key`]);
  if (!caFile && !certFile && !keyFile) return undefined;
  if (Boolean(certFile) !== Boolean(keyFile)) {
    throw new UsageError(`--${side}-cert and --${side}-key go together: give both (the client certificate and its private key) or neither`);
  }
  const tls: TlsMaterial = {};
  if (caFile) {
    tls.ca = readOptionFile(`${side}-ca`, caFile);
    try {
      new X509Certificate(tls.ca);
    } catch {
      throw new UsageError(`--${side}-ca ${caFile} is not a PEM certificate (expected -----BEGIN CERTIFICATE-----)`);
    }
  }
  if (certFile && keyFile) {
    tls.cert = readOptionFile(`${side}-cert`, certFile);
    tls.key = readOptionFile(`${side}-key`, keyFile);
    try {
      new X509Certificate(tls.cert);
    } catch {
      throw new UsageError(`--${side}-cert ${certFile} is not a PEM certificate (expected -----BEGIN CERTIFICATE-----)`);
    }
    try {
      createPrivateKey(tls.key);
    } catch (err) {
      const encrypted = /passphrase|encrypted/i.test((err as Error).message) || tls.key.includes('ENCRYPTED');
      throw new UsageError(`--${side}-key ${keyFile} is not ${encrypted ? 'an unencrypted' : 'a PEM'} private key${encrypted ? ' (remove its passphrase: openssl pkey -in KEY -out KEY.plain)' : ''}`);
    }
    try {
      createSecureContext({ cert: tls.cert, key: tls.key });
    } catch (err) {
      throw new UsageError(`--${side}-key ${keyFile} does not belong to --${side}-cert ${certFile} (${(err as Error).message.split('\n')[0]})`);
    }
  }
  return tls;
}

/**
 * The encryption key: --key-file, else $KVFS_KEY_FILE, else $KVFS_KEY; undefined when none.
 * A key file readable by other users gets a warning on stderr (never the key itself).
 */
export function resolveKey(values: Values, env: NodeJS.ProcessEnv = process.env): EncryptionKey | undefined {
  const option = str(values['key-file']);
  const file = option ?? (env[ENV.keyFile] || undefined);
  if (file !== undefined) {
    const from = option !== undefined ? `--key-file ${file}` : `${ENV.keyFile}=${file}`;
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw fileError('key-file', file, err, from);
    }
    const key = EncryptionKey.fromHex(text, from);
    try {
      const mode = statSync(file).mode & 0o777;
      if (mode & 0o077) console.error(`kvfs: warning: the key file ${file} can be read by other users (mode ${mode.toString(8)}); chmod 600 ${file}`);
    } catch {
      // read above; a race at worst
    }
    return key;
  }
  const inline = env[ENV.key];
  if (inline) return EncryptionKey.fromHex(inline, ENV.key);
  return undefined;
}

/**
 * The password for one side: the URL's own wins; else --SIDE-password-file; else the
 * environment (for the metadata side only with an etcd URL: an embedded volume has none).
 */
function resolvePassword(values: Values, side: 'meta' | 'data', url: string | undefined, urlFrom: string, env: NodeJS.ProcessEnv): Pick<BackendSecurity, 'password' | 'passwordFrom'> {
  const option = `${side}-password-file`;
  const file = str(values[option]);
  if (url !== undefined && hasPassword(url)) {
    if (file) throw new UsageError(`the ${side === 'meta' ? 'etcd' : 'Redis'} password is given twice, in ${urlFrom} and in --${option}: keep only the file`);
    return {};
  }
  if (file) return { password: readPasswordFile(option, file), passwordFrom: `--${option} ${file}` };
  const name = side === 'meta' ? ENV.metaPassword : ENV.dataPassword;
  const fromEnv = env[name];
  if (!fromEnv) return {};
  if (side === 'meta' && !(url !== undefined && /^etcd(\+https)?:/i.test(url))) return {};
  return { password: fromEnv, passwordFrom: name };
}

/**
 * Resolves the backend options of a parsed command line (values of BACKEND_OPTIONS plus --meta
 * and, when the command has it, --data). Reads the password and certificate files (UsageError
 * naming the option when one is missing or wrong). Also hides a password typed on the command
 * line from `ps` (see hideArgvPasswords).
 */
export function resolveBackends(values: Values, env: NodeJS.ProcessEnv = process.env): Backends {
  const metaArg = str(values.meta);
  const dataArg = str(values.data);
  const metaUrl = metaArg ?? (env[ENV.meta] || undefined);
  // $KVFS_DATA belongs with a chosen volume: the embedded default volume (no --meta, no
  // $KVFS_META) keeps its blocks beside its metadata whatever the environment says.
  const dataUrl = dataArg ?? (metaUrl !== undefined ? env[ENV.data] || undefined : undefined);
  if ((metaArg && hasPassword(metaArg)) || (dataArg && hasPassword(dataArg))) hideArgvPasswords();
  const meta: BackendSecurity = {
    ...resolvePassword(values, 'meta', metaUrl, metaArg !== undefined ? '--meta' : ENV.meta, env),
  };
  const metaTls = readTls(values, 'meta');
  if (metaTls) meta.tls = metaTls;
  const data: DataSecurity = {
    ...resolvePassword(values, 'data', dataUrl, dataArg !== undefined ? '--data' : ENV.data, env),
  };
  const dataTls = readTls(values, 'data');
  if (dataTls) data.tls = dataTls;
  const key = resolveKey(values, env);
  if (key) data.key = key;
  return { metaUrl, dataUrl, meta, data };
}

/** A URL with its password, if any, removed; the argument form '--opt=URL' too. */
function redactArg(arg: string): string {
  const m = /^(--[A-Za-z0-9-]+=)(.*)$/s.exec(arg);
  return m ? m[1] + stripPassword(m[2]) : stripPassword(arg);
}

let hidden = false;

/**
 * Rewrites this process's command line as `ps` and /proc/PID/cmdline show it, without the
 * passwords of URLs in it. Node's process.title writes over the memory of the original argv
 * (Linux), and the redacted line is never longer than the original, so nothing is truncated.
 * The process name (/proc/PID/comm, which setting the title also changes) is put back.
 * Best effort: other users could read the password in the moment before this runs.
 */
export function hideArgvPasswords(): void {
  if (hidden || process.platform !== 'linux') return;
  hidden = true;
  try {
    const comm = readFileSync('/proc/self/comm', 'utf8').trim();
    const args = readFileSync('/proc/self/cmdline', 'utf8').split('\0');
    if (args[args.length - 1] === '') args.pop();
    const redacted = args.map(redactArg);
    if (redacted.every((a, i) => a === args[i])) return;
    process.title = redacted.join(' ');
    try {
      writeFileSync('/proc/self/comm', comm);
    } catch {
      // cosmetic only
    }
  } catch {
    // no /proc: nothing we can do
  }
}

/**
 * The arguments and environment to re-execute a command in the background (kvfs mount -d)
 * without any password on its command line: passwords in --meta/--data URLs move to
 * KVFS_META_PASSWORD/KVFS_DATA_PASSWORD, where only the same user (and root) can read them.
 * `drop` are flags to leave out (e.g. -d itself).
 */
export function backgroundLaunch(argv: string[], drop: string[], env: NodeJS.ProcessEnv = process.env): { args: string[]; env: NodeJS.ProcessEnv } {
  const childEnv: NodeJS.ProcessEnv = { ...env };
  const args: string[] = [];
  const take = (side: 'meta' | 'data', url: string): string => {
    const bare = stripPassword(url);
    if (bare !== url) childEnv[side === 'meta' ? ENV.metaPassword : ENV.dataPassword] = passwordOf(url);
    return bare;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--') {
      args.push(...argv.slice(i));
      break;
    }
    if (drop.includes(a)) continue;
    const inline = /^--(meta|data)=(.*)$/s.exec(a);
    if (inline) {
      args.push(`--${inline[1]}=${take(inline[1] as 'meta' | 'data', inline[2])}`);
    } else if ((a === '--meta' || a === '--data') && i + 1 < argv.length) {
      args.push(a, take(a.slice(2) as 'meta' | 'data', argv[++i]));
    } else {
      args.push(a);
    }
  }
  return { args, env: childEnv };
}

/**
 * How a command that runs other kvfs commands (kvfs bench) hands them its backend options: the
 * TLS file options as given, and the passwords, wherever they came from (URL, file, environment),
 * in KVFS_META_PASSWORD/KVFS_DATA_PASSWORD. The children's URLs must then be passed without
 * passwords (stripPassword). The key is not passed on.
 */
export function childBackendLaunch(values: Values, backends: Backends): { args: string[]; env: NodeJS.ProcessEnv } {
  const args: string[] = [];
  for (const option of ['meta-ca', 'meta-cert', 'meta-key', 'data-ca', 'data-cert', 'data-key'] as const) {
    const file = str(values[option]);
    if (file !== undefined) args.push(`--${option}`, file);
  }
  const env: NodeJS.ProcessEnv = {};
  const metaPassword = backends.meta.password ?? (backends.metaUrl ? passwordOf(backends.metaUrl) : '');
  const dataPassword = backends.data.password ?? (backends.dataUrl ? passwordOf(backends.dataUrl) : '');
  if (metaPassword) env[ENV.metaPassword] = metaPassword;
  if (dataPassword) env[ENV.dataPassword] = dataPassword;
  return { args, env };
}

/** The decoded password of a URL's user-info ('' when none). */
function passwordOf(url: string): string {
  const m = /^[a-z][a-z0-9+.-]*:\/\/([^/?#]*)@/is.exec(url);
  if (!m) return '';
  const cred = m[1];
  const i = cred.indexOf(':');
  if (i < 0) return '';
  try {
    return decodeURIComponent(cred.slice(i + 1));
  } catch {
    return cred.slice(i + 1);
  }
}

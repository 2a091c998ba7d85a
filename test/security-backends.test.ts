// Backends over TLS with authentication, against real servers: etcd with TLS, client-certificate
// auth and etcd authentication enabled; Redis with TLS and passwords (an ACL user, and the
// default user with --requirepass behind --tls-auth-clients yes). Certificates are made here with
// openssl. Volumes are formatted and mounted with credentials from the environment, from files,
// and typed into URLs, and no password may show in the daemon's command line (ps), its log,
// `kvfs status` (text and JSON), or the volume's stored settings. Wrong passwords, untrusted
// certificates and missing files must fail with one clear line and exit 1, mounting nothing.
import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Etcd3, Range } from 'etcd3';
import Redis from 'ioredis';
import {
  describeRun,
  isMounted,
  kvfs,
  makeTempDir,
  pidAlive,
  removeTempDir,
  run,
  sleep,
  spawnMount,
  uniqueName,
  waitExit,
  type Daemon,
  type RunResult,
} from './_helpers/mount';
import { startEtcd, startRedis, type EtcdServer, type RedisServer } from './_helpers/servers';

// ---------------------------------------------------------------------------------------------
// Certificates

interface Pki {
  dir: string;
  ca: string;
  otherCa: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  /** A client certificate whose common name is an etcd user (kvfs-cn). */
  cnCert: string;
  cnKey: string;
}

function openssl(cwd: string, args: string[]): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

/** A CA, a second unrelated CA, a server certificate (127.0.0.1, localhost) and a client one. */
function makePki(dir: string): Pki {
  const selfSigned = (name: string, cn: string) =>
    openssl(dir, [
      'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.crt`, '-days', '2',
      '-subj', `/CN=${cn}`, '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    ]);
  selfSigned('ca', 'kvfs test CA');
  selfSigned('otherca', 'some other CA');
  const leaf = (name: string, cn: string, usage: string) => {
    openssl(dir, ['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`]);
    fs.writeFileSync(
      path.join(dir, `${name}.ext`),
      `subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=${usage}\nbasicConstraints=CA:FALSE\n`,
    );
    openssl(dir, [
      'x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.crt`, '-days', '2',
      '-extfile', `${name}.ext`,
    ]);
  };
  leaf('server', 'localhost', 'serverAuth,clientAuth');
  // A CN that is no etcd user: etcd must authenticate our requests by password, not by certificate.
  leaf('client', 'kvfs-test-client', 'clientAuth');
  leaf('cnuser', 'kvfs-cn', 'clientAuth');
  const p = (f: string) => path.join(dir, f);
  return {
    dir,
    ca: p('ca.crt'),
    otherCa: p('otherca.crt'),
    serverCert: p('server.crt'),
    serverKey: p('server.key'),
    clientCert: p('client.crt'),
    clientKey: p('client.key'),
    cnCert: p('cnuser.crt'),
    cnKey: p('cnuser.key'),
  };
}

// ---------------------------------------------------------------------------------------------
// Servers and secrets

const tag = randomBytes(6).toString('hex');
/** etcd root (used by the test only) and the least-privileged user kvfs runs as. */
const ETCD_ROOT_PASSWORD = `EtcdRoot-${tag}`;
const ETCD_PASSWORD = `Et@cd/${tag}%x`; // '@', '/' and '%' must survive URLs and files
/** Redis ACL user 'kvfs' on the TLS Redis. */
const REDIS_PASSWORD = `Rd-user-${tag}`;
/** --requirepass of the Redis that also demands client certificates. */
const REDIS_MTLS_PASSWORD = `Rd-mtls-${tag}`;
const SECRETS = [ETCD_ROOT_PASSWORD, ETCD_PASSWORD, encodeURIComponent(ETCD_PASSWORD), REDIS_PASSWORD, REDIS_MTLS_PASSWORD, tag];

let pki: Pki;
let etcd: EtcdServer;
/** TLS, ACL user kvfs, no client certificates. */
let redis: RedisServer;
/** TLS with --tls-auth-clients yes and --requirepass. */
let redisMtls: RedisServer;
let scratch: string;
let home: string;
const daemons = new Set<number>();
const mounts = new Set<string>();

function adminEtcd(): Etcd3 {
  return new Etcd3({
    hosts: [etcd.endpoint],
    credentials: { rootCertificate: fs.readFileSync(pki.ca), certChain: fs.readFileSync(pki.clientCert), privateKey: fs.readFileSync(pki.clientKey) },
    auth: { username: 'root', password: ETCD_ROOT_PASSWORD },
  });
}

test.before(async () => {
  scratch = makeTempDir('kvfs-security-');
  home = path.join(scratch, 'home');
  fs.mkdirSync(home);
  const pkiDir = path.join(scratch, 'pki');
  fs.mkdirSync(pkiDir);
  pki = makePki(pkiDir);
  const tls = { cert: pki.serverCert, key: pki.serverKey, ca: pki.ca, client: { cert: pki.clientCert, key: pki.clientKey } };
  [etcd, redis, redisMtls] = await Promise.all([
    startEtcd({ tls: { ...tls, clientCertAuth: true } }),
    startRedis({ password: `unused-default-${tag}`, tls }),
    startRedis({ password: REDIS_MTLS_PASSWORD, tls: { ...tls, authClients: true } }),
  ]);

  // etcd: a root user (needed to enable auth) and a user 'kvfs' that may only use kvfs/.
  const boot = new Etcd3({
    hosts: [etcd.endpoint],
    credentials: { rootCertificate: fs.readFileSync(pki.ca), certChain: fs.readFileSync(pki.clientCert), privateKey: fs.readFileSync(pki.clientKey) },
  });
  try {
    await boot.role('root').create().catch(() => undefined); // exists already in some versions
    await boot.user('root').create(ETCD_ROOT_PASSWORD);
    await boot.user('root').addRole('root');
    await boot.role('kvfs').create();
    await boot.role('kvfs').grant({ permission: 'Readwrite', range: Range.prefix('kvfs/') });
    await boot.user('kvfs').create(ETCD_PASSWORD);
    await boot.user('kvfs').addRole('kvfs');
    // Authenticated by its certificate's common name (etcd --client-cert-auth), never by password.
    await boot.user('kvfs-cn').create(randomBytes(16).toString('hex'));
    await boot.user('kvfs-cn').addRole('kvfs');
    await boot.auth.authEnable();
  } finally {
    boot.close();
  }
  // Auth is really on: without a user, etcd refuses.
  const anon = new Etcd3({
    hosts: [etcd.endpoint],
    credentials: { rootCertificate: fs.readFileSync(pki.ca), certChain: fs.readFileSync(pki.clientCert), privateKey: fs.readFileSync(pki.clientKey) },
  });
  try {
    await anon.get('kvfs/x').string().then(
      () => {
        throw new Error('etcd auth is not enabled');
      },
      (err: Error) => {
        if (!/permission denied|user name is empty/i.test(err.message)) throw err;
      },
    );
  } finally {
    anon.close();
  }

  // Redis: an ACL user for kvfs on the first server.
  const admin = new Redis({
    host: '127.0.0.1',
    port: redis.port,
    password: `unused-default-${tag}`,
    tls: { ca: fs.readFileSync(pki.ca) },
    lazyConnect: true,
  });
  try {
    await admin.connect();
    await admin.call('ACL', 'SETUSER', 'kvfs', 'on', `>${REDIS_PASSWORD}`, '~kvfs:*', '+@all');
  } finally {
    admin.disconnect();
  }
});

test.after.always(async () => {
  for (const mnt of mounts) {
    if (isMounted(mnt)) await kvfs(['umount', mnt], { timeoutMs: 15_000, env: env() });
    if (isMounted(mnt)) execFileSync('umount', ['-l', mnt], { stdio: 'ignore' });
  }
  for (const pid of daemons) {
    for (let i = 0; i < 50 && pidAlive(pid); i++) await sleep(100);
    if (pidAlive(pid)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  }
  await Promise.allSettled([etcd?.stop(), redis?.stop(), redisMtls?.stop()]);
  if (scratch) removeTempDir(scratch);
});

// ---------------------------------------------------------------------------------------------
// Helpers

/** The environment of a kvfs process: ours without KVFS_* leftovers, plus `extra`. */
function env(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const base: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('KVFS_') || k === 'KVFS_ROOT') base[k] = v;
  return { ...base, KVFS_HOME: home, ...extra };
}

const metaTls = () => ['--meta-ca', pki.ca, '--meta-cert', pki.clientCert, '--meta-key', pki.clientKey];
const etcdUrl = (vol: string, cred = 'kvfs') => `etcd+https://${cred}@${etcd.hostPort}/${vol}`;

function secretFile(name: string, content: string): string {
  const file = path.join(scratch, name);
  fs.writeFileSync(file, content, { mode: 0o600 });
  return file;
}

function newMountpoint(): string {
  const mnt = path.join(scratch, `mnt-${uniqueName('m')}`);
  fs.mkdirSync(mnt, { mode: 0o755 });
  mounts.add(mnt);
  return mnt;
}

function assertNoSecret(t: ExecutionContext, what: string, text: string): void {
  for (const s of SECRETS) t.false(text.includes(s), `${what} must not contain a password (${JSON.stringify(s.slice(0, 6))}...):\n${text}`);
}

/** Clock ticks since boot when this test file started (field 22 of /proc/self/stat). */
const startedAt = Number(fs.readFileSync('/proc/self/stat', 'utf8').split(') ')[1].split(' ')[19]);

/**
 * node processes started since this file started whose command line mentions `needle`. Only those
 * command lines are read: reading another process's /proc/PID/cmdline can block for as long as
 * that process is stuck in a page fault (say, on some other hung FUSE mount on this host).
 */
function newNodeProcessesMentioning(needle: string): string[] {
  const found: string[] = [];
  for (const ent of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(ent) || Number(ent) === process.pid) continue;
    try {
      if (fs.readFileSync(`/proc/${ent}/comm`, 'utf8').trim() !== 'node') continue;
      const stat = fs.readFileSync(`/proc/${ent}/stat`, 'utf8').split(') ')[1].split(' ');
      if (stat[0] === 'Z' || Number(stat[19]) < startedAt) continue;
      const cmdline = fs.readFileSync(`/proc/${ent}/cmdline`, 'utf8').split('\0').join(' ');
      if (cmdline.includes(needle)) found.push(`${ent}: ${cmdline}`);
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

function stderrLines(r: RunResult): string[] {
  return r.stderr.split('\n').filter((l) => l.trim() !== '');
}

/** Exit 1, one line on stderr matching `pattern`, no secret anywhere, nothing mounted, no daemon left. */
async function assertCleanFailure(t: ExecutionContext, what: string, r: RunResult, pattern: RegExp, mnt?: string): Promise<void> {
  const info = describeRun(what, r);
  t.false(r.timedOut, `${what}: must not hang\n${info}`);
  t.is(r.code, 1, `${what}: exit code\n${info}`);
  const lines = stderrLines(r);
  t.log(`${what}: ${lines.join(' | ')}`);
  t.is(lines.length, 1, `${what}: exactly one line on stderr\n${info}`);
  t.regex(lines[0] ?? '', /^kvfs: /, `${what}\n${info}`);
  t.regex(lines[0] ?? '', pattern, `${what}: the message says what is wrong\n${info}`);
  assertNoSecret(t, `${what}: output`, r.stdout + r.stderr);
  if (mnt) {
    t.false(isMounted(mnt), `${what}: nothing mounted at ${mnt}`);
    await sleep(200);
    t.deepEqual(newNodeProcessesMentioning(mnt), [], `${what}: no process left for ${mnt}`);
  }
}

async function formatOk(t: ExecutionContext, args: string[], extraEnv: Record<string, string> = {}): Promise<RunResult> {
  const r = await kvfs(['format', ...args], { env: env(extraEnv), timeoutMs: 30_000 });
  t.is(r.code, 0, describeRun(`kvfs format ${args.join(' ')}`, r));
  assertNoSecret(t, 'format output', r.stdout + r.stderr);
  return r;
}

/** Every key and value of a volume's namespace in etcd, as text (read as etcd's root). */
async function volumeKeys(vol: string): Promise<{ setting: string; all: string }> {
  const admin = adminEtcd();
  try {
    const setting = (await admin.get(`kvfs/${vol}/setting`).string()) ?? '';
    const all = Object.entries(await admin.getAll().prefix(`kvfs/${vol}/`).strings())
      .map(([k, v]) => `${k}=${v}`)
      .join('\n');
    return { setting, all };
  } finally {
    admin.close();
  }
}

async function unmountDaemon(t: ExecutionContext, mnt: string, pid: number, extraEnv: Record<string, string> = {}): Promise<void> {
  const u = await kvfs(['umount', mnt], { env: env(extraEnv), timeoutMs: 30_000 });
  t.is(u.code, 0, describeRun('kvfs umount', u));
  for (let i = 0; i < 100 && pidAlive(pid); i++) await sleep(100);
  t.false(pidAlive(pid), `daemon ${pid} exits after umount`);
  t.false(isMounted(mnt));
}

async function statusChecks(t: ExecutionContext, vol: string, args: string[], extraEnv: Record<string, string>): Promise<void> {
  for (const json of [false, true]) {
    const s = await kvfs(['status', ...args, ...(json ? ['--json'] : [])], { env: env(extraEnv), timeoutMs: 30_000 });
    t.is(s.code, 0, describeRun('kvfs status', s));
    t.true(s.stdout.includes(vol), describeRun('kvfs status names the volume', s));
    assertNoSecret(t, `kvfs status${json ? ' --json' : ''}`, s.stdout + s.stderr);
    if (json) {
      const parsed = JSON.parse(s.stdout) as { settings: { dataUrl: string }; data: { url: string }; meta: { url: string } };
      t.is(parsed.meta.url, `etcd+https://${etcd.hostPort}/${vol}`);
      t.regex(parsed.data.url, /^rediss:\/\/([a-z]+@)?127\.0\.0\.1:\d+(\/\d+)?$/);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Working set-ups

test.serial('TLS + passwords from the environment; kvfs mount -d with passwords typed into URLs keeps them off the daemon command line', async (t) => {
  const vol = uniqueName('sec');
  const dataUrl = `rediss://kvfs@127.0.0.1:${redis.port}`;
  // format: URLs and passwords only in the environment.
  await formatOk(t, [...metaTls(), '--data-ca', pki.ca], {
    KVFS_META: etcdUrl(vol),
    KVFS_DATA: dataUrl,
    KVFS_META_PASSWORD: ETCD_PASSWORD,
    KVFS_DATA_PASSWORD: REDIS_PASSWORD,
  });
  const stored = await volumeKeys(vol);
  t.is((JSON.parse(stored.setting) as { dataUrl: string }).dataUrl, dataUrl, 'the stored data URL keeps the user, not the password');
  assertNoSecret(t, 'stored settings', stored.setting);

  // mount -d with the passwords in the URLs on the command line (the worst case).
  const mnt = newMountpoint();
  const log = path.join(scratch, `${vol}.log`);
  const metaWithPw = `etcd+https://kvfs:${encodeURIComponent(ETCD_PASSWORD)}@${etcd.hostPort}/${vol}`;
  const dataWithPw = `rediss://kvfs:${REDIS_PASSWORD}@127.0.0.1:${redis.port}`;
  const m = await kvfs(['mount', '-d', '--log', log, '--meta', metaWithPw, `--data=${dataWithPw}`, ...metaTls(), '--data-ca', pki.ca, mnt], {
    env: env(),
    timeoutMs: 30_000,
  });
  t.is(m.code, 0, describeRun('kvfs mount -d', m));
  const pid = Number(/\(pid (\d+)/.exec(m.stdout)?.[1]);
  t.true(pid > 0, describeRun('mount -d reports the daemon pid', m));
  daemons.add(pid);
  assertNoSecret(t, 'mount -d output', m.stdout + m.stderr);
  t.true(isMounted(mnt));

  // The filesystem works through TLS and authentication.
  const data = randomBytes(3 * 1024 * 1024 + 17);
  fs.writeFileSync(path.join(mnt, 'file.bin'), data);
  t.true(fs.readFileSync(path.join(mnt, 'file.bin')).equals(data));
  fs.mkdirSync(path.join(mnt, 'dir'));
  fs.writeFileSync(path.join(mnt, 'dir', 'small'), 'hello over TLS\n');
  t.is(fs.readFileSync(path.join(mnt, 'dir', 'small'), 'utf8'), 'hello over TLS\n');

  // The daemon's command line (as ps shows it to every user) has no password...
  const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
  t.true(cmdline.includes(mnt), cmdline);
  t.true(cmdline.includes(`etcd+https://kvfs@${etcd.hostPort}/${vol}`), `the URL is there, without its password: ${cmdline}`);
  assertNoSecret(t, 'daemon /proc/PID/cmdline', cmdline);
  // -q: look at that process only (see newNodeProcessesMentioning).
  const ps = await run('ps', ['-q', String(pid), '-o', 'args=']);
  t.true(ps.stdout.includes(mnt), describeRun('ps', ps));
  assertNoSecret(t, 'ps -o args', ps.stdout);
  // ...they reached it through its environment, which only its user and root can read.
  const environ = fs.readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
  t.true(environ.includes(`KVFS_META_PASSWORD=${ETCD_PASSWORD}`));
  t.true(environ.includes(`KVFS_DATA_PASSWORD=${REDIS_PASSWORD}`));
  t.is(fs.statSync(`/proc/${pid}/environ`).mode & 0o077, 0, '/proc/PID/environ is private to its user');

  // status, text and JSON, with the credentials from the environment.
  await statusChecks(t, vol, [...metaTls(), '--data-ca', pki.ca], {
    KVFS_META: etcdUrl(vol),
    KVFS_META_PASSWORD: ETCD_PASSWORD,
    KVFS_DATA_PASSWORD: REDIS_PASSWORD,
  });

  await unmountDaemon(t, mnt, pid);
  const logText = fs.readFileSync(log, 'utf8');
  t.regex(logText, /mounted etcd\+https:/);
  t.notRegex(logText, /DeprecationWarning/, 'no TLS ServerName warning in the log');
  assertNoSecret(t, 'daemon log', logText);
  assertNoSecret(t, 'every key of the volume in etcd', (await volumeKeys(vol)).all);
});

test.serial('password files; Redis demanding client certificates; a foreground daemon hides a password typed on its command line', async (t) => {
  const vol = uniqueName('sec');
  const metaPw = secretFile(`${vol}.etcd.pw`, `${ETCD_PASSWORD}\n`);
  const dataPw = secretFile(`${vol}.redis.pw`, `${REDIS_MTLS_PASSWORD}\r\n`);
  const dataTls = ['--data-ca', pki.ca, '--data-cert', pki.clientCert, '--data-key', pki.clientKey];
  // etcd:// plus --meta-ca turns TLS on as well.
  const metaUrl = `etcd://kvfs@${etcd.hostPort}/${vol}`;
  await formatOk(t, [
    '--meta', metaUrl, '--meta-password-file', metaPw, ...metaTls(),
    '--data', `rediss://127.0.0.1:${redisMtls.port}/2`, '--data-password-file', dataPw, ...dataTls,
  ]);
  const stored = await volumeKeys(vol);
  t.is((JSON.parse(stored.setting) as { dataUrl: string }).dataUrl, `rediss://127.0.0.1:${redisMtls.port}/2`);

  // Foreground daemon with the passwords from files.
  const mnt = newMountpoint();
  let d: Daemon = spawnMount(['--meta', metaUrl, '--meta-password-file', metaPw, ...metaTls(), '--data-password-file', dataPw, ...dataTls, mnt], { env: env() });
  daemons.add(d.pid);
  await d.ready;
  fs.writeFileSync(path.join(mnt, 'a.txt'), 'files and client certificates\n');
  t.is(fs.readFileSync(path.join(mnt, 'a.txt'), 'utf8'), 'files and client certificates\n');
  await statusChecks(t, vol, ['--meta', metaUrl, '--meta-password-file', metaPw, ...metaTls(), '--data-password-file', dataPw, ...dataTls], {});
  await unmountDaemon(t, mnt, d.pid);
  assertNoSecret(t, 'foreground daemon output', d.log());

  // Passwords typed into the URLs of a foreground mount: the daemon rewrites its own command line.
  const metaWithPw = `etcd://kvfs:${encodeURIComponent(ETCD_PASSWORD)}@${etcd.hostPort}/${vol}`;
  const dataWithPw = `rediss://:${REDIS_MTLS_PASSWORD}@127.0.0.1:${redisMtls.port}/2`;
  d = spawnMount(['--meta', metaWithPw, ...metaTls(), '--data', dataWithPw, ...dataTls, mnt], { env: env() });
  daemons.add(d.pid);
  await d.ready;
  t.is(fs.readFileSync(path.join(mnt, 'a.txt'), 'utf8'), 'files and client certificates\n');
  const cmdline = fs.readFileSync(`/proc/${d.pid}/cmdline`, 'utf8');
  t.true(cmdline.includes(mnt), cmdline);
  t.true(cmdline.includes(`etcd://kvfs@${etcd.hostPort}/${vol}`), cmdline);
  assertNoSecret(t, 'foreground daemon /proc/PID/cmdline', cmdline);
  t.is(fs.readFileSync(`/proc/${d.pid}/comm`, 'utf8').trim(), 'node', 'the process name stays');
  const ps = await run('ps', ['-q', String(d.pid), '-o', 'args=']);
  t.true(ps.stdout.includes(mnt), describeRun('ps', ps));
  assertNoSecret(t, 'ps -o args', ps.stdout);
  await unmountDaemon(t, mnt, d.pid);
  assertNoSecret(t, 'foreground daemon output', d.log());
  assertNoSecret(t, 'every key of the volume in etcd', (await volumeKeys(vol)).all);
});

// ---------------------------------------------------------------------------------------------
// Clear failures

test.serial('wrong passwords: one clear line, exit 1, nothing mounted', async (t) => {
  const vol = uniqueName('sec');
  await formatOk(t, ['--meta', etcdUrl(vol), ...metaTls(), '--data', `rediss://kvfs@127.0.0.1:${redis.port}`, '--data-ca', pki.ca], {
    KVFS_META_PASSWORD: ETCD_PASSWORD,
    KVFS_DATA_PASSWORD: REDIS_PASSWORD,
  });
  const mnt = newMountpoint();
  const good = { KVFS_META_PASSWORD: ETCD_PASSWORD, KVFS_DATA_PASSWORD: REDIS_PASSWORD };
  const mountWith = (extraEnv: Record<string, string>, extra: string[] = []) =>
    kvfs(['mount', '--meta', etcdUrl(vol), ...metaTls(), '--data-ca', pki.ca, ...extra, mnt], { env: env(extraEnv), timeoutMs: 30_000 });

  let r = await mountWith({ ...good, KVFS_META_PASSWORD: `wrong-${tag}` });
  await assertCleanFailure(t, 'wrong etcd password', r, /etcd.*authentication failed.*check USER:PASSWORD/, mnt);
  r = await mountWith({ ...good, KVFS_DATA_PASSWORD: `wrong-${tag}` });
  await assertCleanFailure(t, 'wrong Redis password', r, /Redis.*authentication failed.*check USER:PASSWORD/, mnt);
  r = await mountWith({ ...good, KVFS_DATA_PASSWORD: `wrong-${tag}` }, ['-d', '--log', path.join(scratch, `${vol}-bad.log`)]);
  await assertCleanFailure(t, 'wrong Redis password, mount -d', r, /Redis.*authentication failed.*check USER:PASSWORD/, mnt);
  r = await mountWith({ KVFS_DATA_PASSWORD: REDIS_PASSWORD });
  await assertCleanFailure(t, 'no etcd password', r, /no password for etcd user "kvfs".*KVFS_META_PASSWORD/, mnt);
  r = await kvfs(['mount', '--meta', `etcd+https://${etcd.hostPort}/${vol}`, ...metaTls(), mnt], { env: env(good), timeoutMs: 30_000 });
  await assertCleanFailure(t, 'no etcd user', r, /no etcd user|authentication enabled/, mnt);
  r = await mountWith({ KVFS_META_PASSWORD: ETCD_PASSWORD });
  await assertCleanFailure(t, 'no Redis password', r, /Redis.*(NOAUTH|authentication failed|password)/, mnt);
  r = await kvfs(['format', '--force', '--meta', etcdUrl(vol), ...metaTls(), '--data', `rediss://kvfs@127.0.0.1:${redis.port}`, '--data-ca', pki.ca], {
    env: env({ ...good, KVFS_DATA_PASSWORD: `wrong-${tag}` }),
  });
  await assertCleanFailure(t, 'format with a wrong Redis password', r, /authentication failed.*check USER:PASSWORD/);
  r = await kvfs(['status', '--meta', etcdUrl(vol), ...metaTls(), '--data-ca', pki.ca, '--json'], { env: env({ ...good, KVFS_META_PASSWORD: `wrong-${tag}` }) });
  await assertCleanFailure(t, 'status with a wrong etcd password', r, /authentication failed.*check USER:PASSWORD/);
});

test.serial('untrusted or missing certificates: one clear line, exit 1, nothing mounted', async (t) => {
  const vol = uniqueName('sec');
  const good = { KVFS_META_PASSWORD: ETCD_PASSWORD, KVFS_DATA_PASSWORD: REDIS_PASSWORD };
  await formatOk(t, ['--meta', etcdUrl(vol), ...metaTls(), '--data', `rediss://kvfs@127.0.0.1:${redis.port}`, '--data-ca', pki.ca], good);
  const mnt = newMountpoint();
  const mountWith = (args: string[], extraEnv: Record<string, string> = good) =>
    kvfs(['mount', '--meta', etcdUrl(vol), ...args, mnt], { env: env(extraEnv), timeoutMs: 30_000 });
  const clientCert = ['--meta-cert', pki.clientCert, '--meta-key', pki.clientKey];

  // Redis's certificate checked against the system trust store, then against the wrong CA.
  let r = await mountWith([...metaTls()]);
  await assertCleanFailure(t, 'Redis certificate, system CAs', r, /Redis.*certificate.*not trusted.*--data-ca/, mnt);
  r = await mountWith([...metaTls(), '--data-ca', pki.otherCa]);
  await assertCleanFailure(t, 'Redis certificate, another CA', r, /Redis.*certificate.*not trusted.*--data-ca/, mnt);
  // etcd's certificate, likewise.
  r = await mountWith([...clientCert, '--data-ca', pki.ca]);
  await assertCleanFailure(t, 'etcd certificate, system CAs', r, /etcd.*certificate.*not trusted.*--meta-ca/, mnt);
  r = await mountWith(['--meta-ca', pki.otherCa, ...clientCert, '--data-ca', pki.ca]);
  await assertCleanFailure(t, 'etcd certificate, another CA', r, /etcd.*certificate.*not trusted.*--meta-ca/, mnt);
  // Servers that demand a client certificate, given none.
  r = await mountWith(['--meta-ca', pki.ca, '--data-ca', pki.ca]);
  await assertCleanFailure(t, 'etcd without a client certificate', r, /etcd.*client certificate.*--meta-cert/, mnt);
  r = await kvfs(
    ['format', '--meta', etcdUrl(uniqueName('sec')), ...metaTls(), '--data', `rediss://127.0.0.1:${redisMtls.port}`, '--data-ca', pki.ca],
    { env: env({ KVFS_META_PASSWORD: ETCD_PASSWORD, KVFS_DATA_PASSWORD: REDIS_MTLS_PASSWORD }) },
  );
  await assertCleanFailure(t, 'Redis without a client certificate', r, /Redis.*client certificate.*--data-cert/);
  // A plain URL to a TLS-only server.
  r = await mountWith([...metaTls(), '--data', `redis://kvfs@127.0.0.1:${redis.port}`]);
  await assertCleanFailure(t, 'redis:// to a TLS port', r, /Redis.*rediss:\/\//, mnt);
  r = await kvfs(['mount', '--meta', `etcd://kvfs@${etcd.hostPort}/${vol}`, '--data-ca', pki.ca, mnt], { env: env(good), timeoutMs: 30_000 });
  await assertCleanFailure(t, 'etcd:// to a TLS port', r, /etcd.*etcd\+https:\/\//, mnt);

  // Files that are missing, empty, or not what they should be: found before any connection.
  const empty = secretFile(`${vol}.empty`, '\n');
  const cases: Array<[string, string[], RegExp]> = [
    ['missing --data-cert', [...metaTls(), '--data-ca', pki.ca, '--data-cert', path.join(scratch, 'nope.crt'), '--data-key', pki.clientKey], /cannot read --data-cert .*nope\.crt: no such file/],
    ['missing --meta-ca', ['--meta-ca', path.join(scratch, 'nope-ca.crt'), ...clientCert], /cannot read --meta-ca .*: no such file/],
    ['--meta-cert without --meta-key', ['--meta-ca', pki.ca, '--meta-cert', pki.clientCert], /--meta-cert and --meta-key go together/],
    ['a key that is not the certificate\'s', ['--meta-ca', pki.ca, '--meta-cert', pki.clientCert, '--meta-key', pki.serverKey], /--meta-key .* does not belong to --meta-cert/],
    ['a CA file that is no certificate', ['--meta-ca', pki.clientKey, ...clientCert], /--meta-ca .* is not a PEM certificate/],
    ['missing password file', [...metaTls(), '--data-ca', pki.ca, '--data-password-file', path.join(scratch, 'nope.pw')], /cannot read --data-password-file .*: no such file/],
    ['empty password file', [...metaTls(), '--data-ca', pki.ca, '--meta-password-file', empty], /--meta-password-file .* is empty/],
    ['CA options on a plain redis:// URL', [...metaTls(), '--data', `redis://127.0.0.1:${redis.port}`, '--data-ca', pki.ca], /--data-ca.*rediss:\/\//],
  ];
  for (const [what, args, pattern] of cases) {
    r = await mountWith(args);
    await assertCleanFailure(t, what, r, pattern, mnt);
  }
  // The same checks for the -d parent: it fails at once, and no daemon is started.
  r = await mountWith(['-d', '--log', path.join(scratch, `${vol}-d.log`), ...metaTls(), '--data-ca', pki.ca, '--data-cert', path.join(scratch, 'nope.crt'), '--data-key', pki.clientKey]);
  await assertCleanFailure(t, 'missing --data-cert with -d', r, /cannot read --data-cert/, mnt);
});

test.serial('etcd user from the client certificate (no password), Redis ACL user with the password in a file', async (t) => {
  const vol = uniqueName('sec');
  const meta = ['--meta', `etcd+https://${etcd.hostPort}/${vol}`, '--meta-ca', pki.ca, '--meta-cert', pki.cnCert, '--meta-key', pki.cnKey];
  const dataPw = secretFile(`${vol}.redis.pw`, REDIS_PASSWORD);
  const data = ['--data-ca', pki.ca, '--data-password-file', dataPw];
  await formatOk(t, [...meta, '--data', `rediss://kvfs@localhost:${redis.port}`, ...data]);
  const mnt = newMountpoint();
  const d = spawnMount([...meta, ...data, mnt], { env: env() });
  daemons.add(d.pid);
  await d.ready;
  fs.writeFileSync(path.join(mnt, 'cn.txt'), 'authenticated by certificate\n');
  t.is(fs.readFileSync(path.join(mnt, 'cn.txt'), 'utf8'), 'authenticated by certificate\n');
  await unmountDaemon(t, mnt, d.pid);
  // The same certificate, but a volume outside the user's prefix is refused by etcd.
  const admin = adminEtcd();
  try {
    await admin.role('kvfs').revoke({ permission: 'Readwrite', range: Range.prefix('kvfs/') });
    await admin.role('kvfs').grant({ permission: 'Readwrite', range: Range.prefix('kvfs/only-this/') });
    const r = await kvfs(['status', ...meta, ...data], { env: env() });
    await assertCleanFailure(t, 'etcd user without permission on the volume', r, /access denied.*permission denied/);
  } finally {
    await admin.role('kvfs').revoke({ permission: 'Readwrite', range: Range.prefix('kvfs/only-this/') }).catch(() => undefined);
    await admin.role('kvfs').grant({ permission: 'Readwrite', range: Range.prefix('kvfs/') });
    admin.close();
  }
});

// Credentials and TLS options without servers: URL redaction, parsing of rediss:// and
// etcd+https:// URLs with passwords from outside the URL, where passwords come from
// (URL, file, environment), the -d re-execution moving passwords out of argv, and the help text.
import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BACKEND_OPTIONS, ENV, backgroundLaunch, resolveBackends } from '../bin/backend-options';
import { help as formatHelp } from '../bin/commands/format';
import { help as mountHelp } from '../bin/commands/mount';
import { help as statusHelp } from '../bin/commands/status';
import { explainTlsFailure, hasPassword, parseBlockUrl, stripPassword } from '../lib/data/index';
import { UsageError } from '../lib/errors';
import { redactUrl } from '../lib/fs/volume';
import { parseMetaUrl } from '../lib/meta/index';

const SECRET = 'S3cr@t/pw';
const ENC = encodeURIComponent(SECRET);

test('stripPassword and redactUrl remove whole passwords, keep user names', (t) => {
  t.is(stripPassword('redis://u:p@ss@h:1/2'), 'redis://u@h:1/2', "a password with '@' goes whole");
  t.is(stripPassword('redis://u:p@ss@h:1/2', '***'), 'redis://u:***@h:1/2');
  t.is(stripPassword('rediss://:pw@h:6380'), 'rediss://h:6380');
  t.is(stripPassword('rediss://user@h:6380'), 'rediss://user@h:6380');
  t.is(stripPassword('redis://h:6379'), 'redis://h:6379');
  t.is(stripPassword('etcd+https://root:x@a:1,b:2/vol'), 'etcd+https://root@a:1,b:2/vol');
  t.is(stripPassword('file:///var/lib/kvfs/v'), 'file:///var/lib/kvfs/v');
  t.is(redactUrl(`rediss://kvfs:${ENC}@10.0.0.1:6380/3`), 'rediss://kvfs@10.0.0.1:6380/3');
  t.is(redactUrl(`redis://:${ENC}@h:1`), 'redis://h:1');
  t.true(hasPassword(`redis://u:${ENC}@h`));
  t.false(hasPassword('redis://u@h'));
});

test('rediss:// URLs, and passwords from beside the URL', (t) => {
  t.deepEqual(parseBlockUrl('rediss://127.0.0.1:6380'), {
    scheme: 'redis',
    host: '127.0.0.1',
    port: 6380,
    db: 0,
    username: undefined,
    password: undefined,
    tls: true,
    describe: 'rediss://127.0.0.1:6380',
  });
  t.like(parseBlockUrl('rediss://kvfs@h/2', { password: SECRET }), { username: 'kvfs', password: SECRET, db: 2, tls: true, describe: 'rediss://h:6379/2' });
  t.like(parseBlockUrl('redis://h:1', { password: SECRET }), { username: undefined, password: SECRET });
  t.like(parseBlockUrl(`redis://u:${ENC}@h:1`, { password: 'other' }), { password: SECRET }, "the URL's own password wins");
  t.false('tls' in parseBlockUrl('redis://h:1'), 'plain redis:// has no tls key');
  const err = t.throws(() => parseBlockUrl(`redis://u:${ENC}@h:1`, { tls: { ca: Buffer.from('x') } }), { instanceOf: UsageError });
  t.regex(err!.message, /--data-ca.*rediss:\/\//);
  t.false(err!.message.includes(SECRET) || err!.message.includes(ENC));
  const bad = t.throws(() => parseBlockUrl(`rediss://u:${ENC}@h:1/x`), { instanceOf: UsageError });
  t.false(bad!.message.includes(SECRET) || bad!.message.includes(ENC) || bad!.message.includes('S3cr'));
});

test('etcd+https:// URLs, TLS implied by certificates, users with passwords from beside the URL', (t) => {
  t.deepEqual(parseMetaUrl('etcd+https://127.0.0.1:2379/vol1'), {
    scheme: 'etcd',
    hosts: ['https://127.0.0.1:2379'],
    volume: 'vol1',
    prefix: 'kvfs/vol1/',
    auth: undefined,
    tls: true,
    describe: 'etcd+https://127.0.0.1:2379/vol1',
  });
  t.like(parseMetaUrl('etcd://a:1,b:2/v', { tls: { ca: Buffer.from('x') } }), { hosts: ['https://a:1', 'https://b:2'], tls: true, describe: 'etcd+https://a:1,b:2/v' });
  t.false('tls' in parseMetaUrl('etcd://a:1/v'));
  t.like(parseMetaUrl('etcd://kvfs@h:1/v', { password: SECRET }), { auth: { username: 'kvfs', password: SECRET }, describe: 'etcd://h:1/v' });
  t.like(parseMetaUrl(`etcd://kvfs:${ENC}@h:1/v`, { password: 'other' }), { auth: { username: 'kvfs', password: SECRET } });
  t.like(parseMetaUrl('etcd://u:p@ss@h:1/v'), { auth: { username: 'u', password: 'p@ss' }, hosts: ['http://h:1'] });
  const noPw = t.throws(() => parseMetaUrl('etcd://kvfs@h:1/v'), { instanceOf: UsageError });
  t.regex(noPw!.message, /no password for etcd user "kvfs".*KVFS_META_PASSWORD.*--meta-password-file/);
  const noUser = t.throws(() => parseMetaUrl('etcd://h:1/v', { password: SECRET, passwordFrom: 'KVFS_META_PASSWORD' }), { instanceOf: UsageError });
  t.regex(noUser!.message, /names no etcd user/);
  t.false(noUser!.message.includes(SECRET));
  const embedded = t.throws(() => parseMetaUrl('file:///tmp/x/v', { password: SECRET }), { instanceOf: UsageError });
  t.regex(embedded!.message, /embedded volume takes no password/);
  const bad = t.throws(() => parseMetaUrl(`etcd://u:${ENC}@h:1/a/b`), { instanceOf: UsageError });
  t.false(bad!.message.includes(ENC) || bad!.message.includes('S3cr'), bad!.message);
});

test('TLS failures are explained with the option to use', (t) => {
  t.regex(explainTlsFailure('self-signed certificate in certificate chain', 'SELF_SIGNED_CERT_IN_CHAIN', 'data', false)!, /not trusted \(self-signed certificate in certificate chain\); pass --data-ca FILE/);
  t.regex(explainTlsFailure('14 UNAVAILABLE: No connection established. Last error: Error: unable to verify the first certificate.', '', 'meta', false)!, /not trusted.*--meta-ca/);
  t.regex(explainTlsFailure('SSL alert number 42 sslv3 alert bad certificate', '', 'meta', false)!, /requires a client certificate.*--meta-cert FILE and --meta-key FILE/);
  t.regex(explainTlsFailure('tlsv13 alert certificate required', '', 'data', true)!, /refused our client certificate.*--data-cert/);
  t.regex(explainTlsFailure("Hostname/IP does not match certificate's altnames: IP: 10.0.0.1 is not in the cert's list: 127.0.0.1", 'ERR_TLS_CERT_ALTNAME_INVALID', 'data', false)!, /not issued for this host name/);
  t.is(explainTlsFailure('connect ECONNREFUSED 127.0.0.1:1', 'ECONNREFUSED', 'data', false), undefined);
});

function tmpFile(t: { teardown(fn: () => void): void }, content: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvfs-secopt-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'pw');
  fs.writeFileSync(file, content, { mode: 0o600 });
  return file;
}

test('where passwords and URLs come from: URL, then file, then environment', (t) => {
  const file = tmpFile(t, `${SECRET}\nsecond line ignored\n`);
  const env = { [ENV.meta]: 'etcd://kvfs@h:1/v', [ENV.data]: 'rediss://kvfs@h:2', [ENV.metaPassword]: 'from-env-m', [ENV.dataPassword]: 'from-env-d' };
  // Everything from the environment.
  t.deepEqual(resolveBackends({}, env), {
    metaUrl: 'etcd://kvfs@h:1/v',
    dataUrl: 'rediss://kvfs@h:2',
    meta: { password: 'from-env-m', passwordFrom: 'KVFS_META_PASSWORD' },
    data: { password: 'from-env-d', passwordFrom: 'KVFS_DATA_PASSWORD' },
  });
  // Options beat the environment; a file beats an environment password.
  const r = resolveBackends({ meta: 'etcd://other@h:9/w', 'meta-password-file': file, data: 'redis://h:3' }, env);
  t.is(r.metaUrl, 'etcd://other@h:9/w');
  t.is(r.dataUrl, 'redis://h:3');
  t.deepEqual(r.meta, { password: SECRET, passwordFrom: `--meta-password-file ${file}` });
  t.deepEqual(r.data, { password: 'from-env-d', passwordFrom: 'KVFS_DATA_PASSWORD' });
  // A URL's own password is used as is (nothing beside it), and twice is an error.
  t.deepEqual(resolveBackends({}, { ...env, [ENV.data]: `redis://u:${ENC}@h:2` }).data, {});
  const twice = t.throws(() => resolveBackends({ 'data-password-file': file }, { ...env, [ENV.data]: `redis://u:${ENC}@h:2` }), { instanceOf: UsageError });
  t.regex(twice!.message, /given twice, in KVFS_DATA and in --data-password-file/);
  t.false(twice!.message.includes(SECRET) || twice!.message.includes(ENC));
  // The etcd password from the environment is not forced on an embedded volume; nor is KVFS_DATA.
  t.deepEqual(resolveBackends({ meta: 'file:///tmp/kvfs/v' }, env).meta, {});
  t.is(resolveBackends({}, { [ENV.data]: 'redis://h:1' }).dataUrl, undefined, 'KVFS_DATA needs a chosen volume');
  // Empty or missing files.
  t.throws(() => resolveBackends({ 'meta-password-file': tmpFile(t, '\n') }, env), { message: /--meta-password-file .* is empty/ });
  t.throws(() => resolveBackends({ 'data-password-file': '/nonexistent/pw' }, env), { message: 'cannot read --data-password-file /nonexistent/pw: no such file' });
  t.throws(() => resolveBackends({ 'data-cert': '/nonexistent/c.pem' }, env), { message: /--data-cert and --data-key go together/ });
  t.throws(() => resolveBackends({ 'data-ca': '/nonexistent/ca.pem' }, env), { message: 'cannot read --data-ca /nonexistent/ca.pem: no such file' });
});

test('kvfs mount -d re-executes itself with passwords in the environment, not in argv', (t) => {
  const argv = ['-d', '--meta', `etcd+https://kvfs:${ENC}@h:1/v`, `--data=rediss://:${ENC}x@h:2/1`, '--meta-ca', '/ca.pem', '--background', '/mnt/x'];
  const { args, env } = backgroundLaunch(argv, ['-d', '--background'], { PATH: '/bin' });
  t.deepEqual(args, ['--meta', 'etcd+https://kvfs@h:1/v', '--data=rediss://h:2/1', '--meta-ca', '/ca.pem', '/mnt/x']);
  t.deepEqual(env, { PATH: '/bin', KVFS_META_PASSWORD: SECRET, KVFS_DATA_PASSWORD: `${SECRET}x` });
  t.false(args.join(' ').includes(ENC));
  // Without passwords in argv nothing changes but the dropped flags.
  const plain = backgroundLaunch(['--meta', 'etcd://h:1/v', '-d', '/m'], ['-d'], { [ENV.metaPassword]: 'kept' });
  t.deepEqual(plain, { args: ['--meta', 'etcd://h:1/v', '/m'], env: { [ENV.metaPassword]: 'kept' } });
});

test('format, mount and status document every shared option and variable', (t) => {
  for (const [name, text] of [['format', formatHelp], ['mount', mountHelp], ['status', statusHelp]] as const) {
    for (const option of Object.keys(BACKEND_OPTIONS)) t.true(text.includes(`--${option}`), `${name} --help documents --${option}`);
    for (const variable of Object.values(ENV)) t.true(text.includes(variable), `${name} --help documents ${variable}`);
    t.true(text.includes('docs/security.md'), `${name} --help points to docs/security.md`);
  }
});

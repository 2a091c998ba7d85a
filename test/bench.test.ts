// `kvfs bench --quick` on the embedded store: every workload is measured on kvfs and on its
// ceilings, the cost of encryption beside the plain figures, the JSON holds positive numbers for
// all of them, and nothing is left behind (no mount, no daemon, no temp dir). No timing
// assertions: figures vary with the machine. Also: the command line in the report never holds a
// password, and the bench takes the shared backend options (a password-protected Redis).
import test from 'ava';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Etcd3 } from 'etcd3';
import Redis from 'ioredis';
import { redactArgs, redactUrls } from '../lib/bench/run';
import { describeRun, kvfs, makeTempDir, pidAlive, procMounts, removeTempDir } from './_helpers/mount';
import { startEtcd, startRedis } from './_helpers/servers';

const WORKLOADS: Record<string, string[]> = {
  seqWrite: ['MBps'],
  seqReadCold: ['MBps'],
  seqReadWarm: ['MBps'],
  randomRead: ['opsPerSec', 'p50Ms', 'p99Ms'],
  smallFiles: ['createPerSec', 'readPerSec', 'statPerSec', 'unlinkPerSec'],
  parallelCreate: ['createPerSec'],
  appendFsync: ['p50Ms', 'p99Ms'],
};
const RAW: Record<string, string[]> = {
  blockPut: ['MBps', 'p50Ms', 'p99Ms', 'parallelMBps'],
  blockGet: ['MBps', 'p50Ms', 'parallelMBps'],
  txn: ['p50Ms', 'p99Ms', 'seqPerSec', 'perSec'],
};

interface Metric {
  median: number;
  runs: number[];
}

test('kvfs bench --quick measures every workload on kvfs and its ceilings, and cleans up', async (t) => {
  // The bench makes its temp dir (mounts, volume, KVFS_HOME) under TMPDIR: this one is ours.
  const dir = makeTempDir('kvfs-bench-test-');
  const tmp = path.join(dir, 'tmp');
  fs.mkdirSync(tmp);
  const jsonFile = path.join(dir, 'bench.json');
  try {
    const r = await kvfs(['bench', '--quick', '--size', '16M', '--json', jsonFile], {
      timeoutMs: 240_000,
      env: { ...process.env, TMPDIR: tmp },
    });
    t.is(r.code, 0, describeRun('kvfs bench', r));
    t.regex(r.stdout, /workload\s+unit\s+kvfs\s+ceiling\s+ratio/);
    t.regex(r.stdout, /[Mm]edians/);

    const report = JSON.parse(fs.readFileSync(jsonFile, 'utf8'));
    t.true(report.config.meta.startsWith(`file://${tmp}/`), report.config.meta);
    t.is(report.config.repetitions, 1);
    t.is(report.config.size, 16 * 1024 * 1024);
    t.true(report.machine.cpus > 0 && report.machine.memoryBytes > 0, JSON.stringify(report.machine));
    t.is(typeof report.machine.kernel, 'string');
    t.is(typeof report.machine.node, 'string');
    // The new-memory note is printed exactly when the measured rate is below its threshold.
    t.true(report.machine.newMemoryMBps > 0, JSON.stringify(report.machine));
    t.is(/^note: memory this machine has never used comes at \d+ MB\/s/m.test(r.stdout), report.machine.newMemoryMBps < 1000, r.stdout);
    // So is the wake-up note, for the thread ping-pong figure the header gives.
    t.true(report.machine.wakeupRoundTripUs > 0, JSON.stringify(report.machine));
    t.regex(r.stdout, new RegExp(`thread wake-up round trip ${report.machine.wakeupRoundTripUs} us`));
    t.is(/^note: a thread wake-up round trip takes \d+ us here/m.test(r.stdout), report.machine.wakeupRoundTripUs > 40, r.stdout);
    t.regex(report.command, /kvfs bench --quick/);

    const positive = (who: string, workload: string, field: string) => {
      const m = report.results[who]?.[workload]?.[field] as Metric | undefined;
      t.truthy(m, `${who}.${workload}.${field} is missing`);
      if (!m) return;
      t.true(Number.isFinite(m.median) && m.median > 0, `${who}.${workload}.${field} = ${m.median}`);
      t.is(m.runs.length, 1, `${who}.${workload}.${field} runs`);
    };
    for (const who of ['kvfs', 'noop']) {
      for (const [workload, fields] of Object.entries(WORKLOADS)) for (const f of fields) positive(who, workload, f);
    }
    for (const [workload, fields] of Object.entries(RAW)) for (const f of fields) positive('raw', workload, f);
    // Encryption at rest: write and read on an encrypted volume, the cipher rate, side by side.
    for (const workload of ['seqWrite', 'seqReadCold', 'seqReadWarm']) positive('kvfsEncrypted', workload, 'MBps');
    positive('raw', 'aesGcm', 'sealMBps');
    positive('raw', 'aesGcm', 'openMBps');
    t.is(report.encryption.cipher, 'aes-256-gcm');
    t.deepEqual(
      report.encryption.costs.map((c: { workload: string }) => c.workload),
      ['seq write 1 MiB + fsync', 'seq read, cold', 'seq read, warm'],
    );
    for (const c of report.encryption.costs) t.true(c.plain > 0 && c.encrypted > 0 && c.ratio > 0, JSON.stringify(c));
    t.true(report.encryption.sealMBps > 0 && report.encryption.openMBps > 0, JSON.stringify(report.encryption));
    t.regex(r.stdout, /Encryption at rest .*AES-256-GCM/);
    t.regex(r.stdout, /seq write 1 MiB \+ fsync\s+MB\/s\s+[\d.]+\s+[\d.]+\s+[\d.]+\n/);
    t.regex(r.stdout, /AES-256-GCM on 1024 KiB blocks.*seal [\d.]+ MB\/s, open [\d.]+ MB\/s/);
    t.true(report.breakdown.kvfsEncrypted.seqReadCold?.[0].wallMs > 0, 'breakdown of the encrypted volume');

    // Where the time went: CPU time of both daemons for every loop, and the kvfs daemon's timers.
    for (const loop of ['seqWrite', 'seqReadCold', 'seqReadWarm', 'randomRead', 'smallCreate', 'smallRead', 'smallStat', 'smallUnlink', 'appendFsync']) {
      for (const who of ['kvfs', 'noop']) {
        const entries = report.breakdown[who][loop];
        t.is(entries?.length, 1, `breakdown.${who}.${loop}`);
        t.true(entries?.[0].wallMs > 0 && entries?.[0].daemonCpuS >= 0, `breakdown.${who}.${loop}: ${JSON.stringify(entries)}`);
      }
    }

    t.true(report.comparison.length >= 10);
    for (const row of report.comparison) {
      t.true(row.kvfs > 0 && row.ceiling > 0 && row.ratio > 0, JSON.stringify(row));
    }
    const targets = report.comparison.filter((row: { target?: string }) => row.target);
    t.is(targets.length, 5, JSON.stringify(targets));
    for (const row of targets) t.is(typeof row.pass, 'boolean');

    // Nothing left behind: no mount, no daemon, and the bench's own temp dir is gone.
    t.deepEqual(
      procMounts().filter((m) => m.target.startsWith(dir)),
      [],
    );
    // Every daemon it started has exited (checked by pid: scanning all of /proc can block on a
    // process that is stuck in someone else's FUSE mount).
    t.true(report.daemons.length >= 6, JSON.stringify(report.daemons));
    for (const d of report.daemons as Array<{ what: string; pid: number }>) t.false(pidAlive(d.pid), `${d.what} (pid ${d.pid}) is still running`);
    t.deepEqual(fs.readdirSync(tmp), []);
  } finally {
    removeTempDir(dir);
  }
});

test('the command line in the report never holds a password, also one containing @', (t) => {
  const argv = ['kvfs', 'bench', '--meta', 'etcd://root:p@ss:w@rd@127.0.0.1:2379/v', '--data=rediss://kvfs:s3@cr@t@h:6380/1', '--quick'];
  const shown = redactArgs(argv);
  t.is(shown, 'kvfs bench --meta etcd://root:***@127.0.0.1:2379/v --data=rediss://kvfs:***@h:6380/1 --quick');
  for (const part of ['p@ss', 'w@rd', 'rd@', 's3@cr', 'cr@t', 't@h']) t.false(shown.includes(part), part);
  t.is(redactUrls(argv.join(' ')), shown);
});

/** A CA, and a server and a client certificate it signed (for 127.0.0.1), in dir. */
function makePki(dir: string): { ca: string; serverCert: string; serverKey: string; clientCert: string; clientKey: string } {
  const openssl = (args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', '/CN=kvfs bench test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  for (const [name, usage] of [['server', 'serverAuth'], ['client', 'clientAuth']]) {
    openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`]);
    fs.writeFileSync(path.join(dir, `${name}.ext`), `subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=${usage}\nbasicConstraints=CA:FALSE\n`);
    openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.crt`, '-days', '2', '-extfile', `${name}.ext`]);
  }
  const p = (f: string) => path.join(dir, f);
  return { ca: p('ca.crt'), serverCert: p('server.crt'), serverKey: p('server.key'), clientCert: p('client.crt'), clientKey: p('client.key') };
}

test('kvfs bench takes the shared backend options: etcd + a TLS Redis demanding a client certificate and a password', async (t) => {
  const dir = makeTempDir('kvfs-bench-auth-');
  const tmp = path.join(dir, 'tmp');
  fs.mkdirSync(tmp);
  const pkiDir = path.join(dir, 'pki');
  fs.mkdirSync(pkiDir);
  const pki = makePki(pkiDir);
  const password = 'b@nch:pw/1';
  const pwFile = path.join(dir, 'redis.pw');
  fs.writeFileSync(pwFile, `${password}\n`, { mode: 0o600 });
  const tls = { cert: pki.serverCert, key: pki.serverKey, ca: pki.ca, client: { cert: pki.clientCert, key: pki.clientKey }, authClients: true };
  const [etcd, redis] = await Promise.all([startEtcd(), startRedis({ password, tls })]);
  try {
    const jsonFile = path.join(dir, 'bench.json');
    t.regex(redis.url, /^rediss:/);
    const args = [
      'bench', '--quick', '--size', '4M', '--phases', 'raw,write,read,encrypted', '--reps', '1', '--meta', `etcd://${etcd.hostPort}/b`,
      '--data', redis.url, '--data-password-file', pwFile, '--data-ca', pki.ca, '--data-cert', pki.clientCert, '--data-key', pki.clientKey, '--json', jsonFile,
    ];
    const r = await kvfs(args, { timeoutMs: 240_000, env: { ...process.env, TMPDIR: tmp, KVFS_KEY: 'ab'.repeat(32) } });
    t.is(r.code, 0, describeRun('kvfs bench with a Redis password', r));
    t.false(r.stdout.includes(password) || r.stderr.includes(password), 'the password is never printed');
    const report = JSON.parse(fs.readFileSync(jsonFile, 'utf8'));
    t.false(JSON.stringify(report).includes(password), 'the report holds no password');
    t.true(report.results.kvfsEncrypted.seqReadCold.MBps.median > 0);
    t.true(report.results.kvfs.seqReadCold.MBps.median > 0);
    t.true(report.results.raw.blockPut.MBps.median > 0, 'the raw measurements connect with the same options');
    t.regex(report.config.data, /^rediss:\/\/127\.0\.0\.1:\d+$/);
    for (const d of report.daemons as Array<{ what: string; pid: number }>) t.false(pidAlive(d.pid), `${d.what} (pid ${d.pid}) is still running`);
    t.deepEqual(fs.readdirSync(tmp), []);
    // Both volumes (plain and encrypted) and the scratch namespace are gone from etcd and Redis.
    const client = new Etcd3({ hosts: etcd.endpoint });
    const raw = new Redis({
      host: '127.0.0.1',
      port: redis.port,
      password,
      tls: { ca: fs.readFileSync(pki.ca), cert: fs.readFileSync(pki.clientCert), key: fs.readFileSync(pki.clientKey) },
    });
    try {
      t.deepEqual(await client.getAll().prefix('kvfs/').keys(), []);
      t.deepEqual(await raw.keys('kvfs:*'), []);
    } finally {
      client.close();
      raw.disconnect();
    }
  } finally {
    await Promise.allSettled([etcd.stop(), redis.stop()]);
    removeTempDir(dir);
  }
});

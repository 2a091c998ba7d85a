// `kvfs lab --quick` on a subset of experiments: report.json holds each experiment with numbers
// on kvfs and on the local disk and a finding, report.html is self-contained with inline SVG
// charts, and nothing is left mounted or running. No timing assertions: figures vary with the
// machine. The one outcome checked is a kvfs guarantee: no fsynced record is lost when the daemon
// is killed.
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describeRun, kvfs, makeTempDir, processesMatching, procMounts, removeTempDir } from './_helpers/mount';

const ONLY = ['fsync', 'durability', 'staleness'];

interface Headline {
  label: string;
  unit: string;
  kvfs: number | null;
  local: number | null;
}

test('kvfs lab --quick measures fsync, durability and staleness on kvfs and local disk, writes JSON and HTML, and cleans up', async (t) => {
  // The lab makes its temp dir (servers, mounts, KVFS_HOME, local baseline) under TMPDIR: this one is ours.
  const dir = makeTempDir('kvfs-lab-test-');
  const tmp = path.join(dir, 'tmp');
  fs.mkdirSync(tmp);
  const out = path.join(dir, 'out');
  try {
    const r = await kvfs(['lab', '--quick', '--only', ONLY.join(','), '--out', out, '--seed', '7'], {
      timeoutMs: 280_000,
      env: { ...process.env, TMPDIR: tmp },
    });
    t.is(r.code, 0, describeRun('kvfs lab', r));
    t.regex(r.stdout, /experiment\s+measure\s+kvfs\s+local/);
    t.regex(r.stdout, /Findings:/);
    for (const name of ONLY) t.regex(r.stderr, new RegExp(`lab: ${name}:`), `progress for ${name}`);

    const report = JSON.parse(fs.readFileSync(path.join(out, 'report.json'), 'utf8'));
    t.is(report.tool, 'kvfs lab');
    t.true(report.quick);
    t.is(report.seed, 7);
    t.deepEqual(report.order, ONLY);
    t.true(report.machine.cpus > 0, JSON.stringify(report.machine));
    t.is(report.servers.started, true);
    t.regex(report.servers.meta, /^etcd:\/\/127\.0\.0\.1:\d+\/$/);
    for (const name of ONLY) {
      const e = report.experiments[name];
      t.truthy(e, `${name} missing`);
      if (!e) continue;
      t.is(e.status, 'ok', `${name}: ${e.error}`);
      t.true(typeof e.finding === 'string' && e.finding.length > 20, `${name} finding: ${e.finding}`);
      t.true(/\d/.test(e.finding), `${name} finding has numbers: ${e.finding}`);
      t.true(Object.keys(e.config).length > 0, `${name} config`);
      t.true(e.headline.length > 0, `${name} headline`);
      for (const h of e.headline as Headline[]) {
        t.true(typeof h.kvfs === 'number' && Number.isFinite(h.kvfs), `${name} / ${h.label}: kvfs = ${h.kvfs}`);
        t.true(typeof h.local === 'number' && Number.isFinite(h.local), `${name} / ${h.label}: local = ${h.local}`);
      }
      // Every experiment on kvfs recorded where the daemons' time went.
      t.true(e.breakdown.length > 0, `${name} breakdown`);
      for (const p of e.breakdown) t.true(p.total.count > 0 && p.total.totalMs >= p.total.metaMs, `${name}/${p.phase}: ${JSON.stringify(p.total)}`);
    }

    // Internal sense of the numbers.
    const fsync = report.experiments.fsync.results;
    for (const target of ['kvfsOn', 'kvfsOff', 'local']) {
      const d = fsync[target].total;
      t.true(d.n > 0 && d.p50 > 0 && d.p50 <= d.p99 && d.p99 <= d.max, `fsync ${target}: ${JSON.stringify(d)}`);
      t.true(fsync[target].cdf.length > 1, `fsync ${target} cdf`);
    }
    const dur = report.experiments.durability.results;
    t.true(dur.kvfs.rounds >= 1 && dur.local.rounds >= 1, JSON.stringify(dur.kvfs));
    t.true(dur.kvfs.fsyncedRecords > 0, 'some records were fsynced before the kills');
    t.is(dur.kvfs.lostFsynced, 0, `fsynced records lost when the daemon was killed: ${JSON.stringify(dur.rounds)}`);
    for (const round of dur.rounds) {
      t.true(round.journal.acked >= round.journal.fsyncedUpTo, JSON.stringify(round));
      t.true(round.journal.lostFsynced + round.journal.lostUnfsynced <= round.journal.acked, JSON.stringify(round));
    }
    const stale = report.experiments.staleness.results;
    for (const key of ['default', 'zero', 'long', 'local']) {
      t.truthy(stale[key]?.read, `staleness ${key}`);
      t.true(stale[key].updates > 0 && stale[key].read.eligible > 0, `staleness ${key}: ${JSON.stringify(stale[key].read)}`);
      t.true(stale[key].read.violations <= stale[key].read.eligible);
    }

    // report.html: self-contained, one section per experiment, each with its chart.
    const html = fs.readFileSync(path.join(out, 'report.html'), 'utf8');
    t.true(html.includes('<svg'), 'report.html has inline SVG');
    t.false(/<script|<link|src=|href="https?:/i.test(html), 'report.html loads nothing from outside');
    t.true(html.includes('id="summary"'));
    for (const name of ONLY) {
      const section = new RegExp(`<section id="${name}"[\\s\\S]*?</section>`).exec(html)?.[0] ?? '';
      t.true(section.includes('<svg'), `section ${name} has a chart`);
    }

    // Nothing left behind: no mount, no process (servers, daemons, workers, watchdog), no temp dir.
    t.deepEqual(
      procMounts().filter((m) => m.target.startsWith(dir)),
      [],
    );
    t.deepEqual(processesMatching(tmp), []);
    // redis-server rewrites its command line to "redis-server 127.0.0.1:PORT".
    const redisPort = /:(\d+)$/.exec(report.servers.data)?.[1];
    t.truthy(redisPort, report.servers.data);
    t.deepEqual(processesMatching(`127.0.0.1:${redisPort}`), []);
    t.deepEqual(fs.readdirSync(tmp), []);
  } finally {
    removeTempDir(dir);
  }
});

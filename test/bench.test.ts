// `kvfs bench --quick` on the embedded store: every workload is measured on kvfs and on its
// ceilings, the JSON holds positive numbers for all of them, and nothing is left behind (no
// mount, no daemon, no temp dir). No timing assertions: figures vary with the machine.
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describeRun, kvfs, makeTempDir, pidAlive, procMounts, removeTempDir } from './_helpers/mount';

const WORKLOADS: Record<string, string[]> = {
  seqWrite: ['MBps'],
  seqReadCold: ['MBps'],
  seqReadWarm: ['MBps'],
  randomRead: ['opsPerSec', 'p50Ms', 'p99Ms'],
  smallFiles: ['createPerSec', 'readPerSec', 'statPerSec', 'unlinkPerSec'],
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
    t.true(report.daemons.length >= 4, JSON.stringify(report.daemons));
    for (const d of report.daemons as Array<{ what: string; pid: number }>) t.false(pidAlive(d.pid), `${d.what} (pid ${d.pid}) is still running`);
    t.deepEqual(fs.readdirSync(tmp), []);
  } finally {
    removeTempDir(dir);
  }
});

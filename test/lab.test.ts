// `kvfs lab --quick` with every experiment, run once for the whole file (test.before), then:
//   1. the run itself: exit 0, progress and summary on the terminal, nothing left mounted or running;
//   2. report.json makes internal sense: every experiment ran and has numbers on kvfs and on the
//      local disk, and the kvfs guarantees on one mount hold (no fsynced record lost when the
//      daemon is killed, the lock control and the SQLite control on one mount lose nothing, and a
//      backend stall loses no acknowledged transaction). Cross-mount figures (locks and SQLite on
//      two mounts, staleness) are measurements, not assertions; no timing is asserted either;
//   3. report.html opened in headless Chromium (Debian's `chromium`, driven by playwright-core;
//      no browser download): every section is visible with a chart of non-zero size, the summary
//      table is there, nothing is fetched from outside; a screenshot of the first screen is kept
//      as an artifact in $KVFS_TEST_ARTIFACTS (default: test-artifacts/ in the repository).
import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { chromium } from 'playwright-core';
import { EXPERIMENTS } from '../lib/lab/types';
import { ROOT, describeRun, kvfs, makeTempDir, processesMatching, procMounts, removeTempDir, type RunResult } from './_helpers/mount';

// The limit for --quick is 3 minutes on this machine; allow for a loaded CI machine.
const LAB_TIMEOUT_MS = 420_000;
const CHROMIUM = process.env.KVFS_CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = path.resolve(process.env.KVFS_TEST_ARTIFACTS ?? path.join(ROOT, 'test-artifacts'));

interface Headline {
  label: string;
  unit: string;
  kvfs: number | null;
  local: number | null;
}

let dir = '';
let tmp = '';
let out = '';
let run: RunResult | undefined;
let leftMounts: string[] = [];
let leftProcesses: string[] = [];
let leftFiles: string[] = [];
// eslint-disable-next-line @typescript-eslint/no-explicit-any
let report: any;

test.before('kvfs lab --quick (every experiment)', async (t) => {
  t.timeout(LAB_TIMEOUT_MS + 30_000);
  // The lab makes its temp dir (servers, mounts, KVFS_HOME, local baseline) under TMPDIR: this one is ours.
  dir = makeTempDir('kvfs-lab-test-');
  tmp = path.join(dir, 'tmp');
  fs.mkdirSync(tmp);
  out = path.join(dir, 'out');
  run = await kvfs(['lab', '--quick', '--out', out, '--seed', '7'], { timeoutMs: LAB_TIMEOUT_MS, env: { ...process.env, TMPDIR: tmp } });
  t.log(`kvfs lab --quick took ${(run.ms / 1000).toFixed(0)} s`);
  try {
    report = JSON.parse(fs.readFileSync(path.join(out, 'report.json'), 'utf8'));
  } catch {
    report = undefined;
  }
  // What the lab left behind, looked at right after it exited.
  leftMounts = procMounts()
    .filter((m) => m.target.startsWith(dir))
    .map((m) => m.target);
  leftProcesses = processesMatching(tmp).map((p) => `${p.pid} ${p.cmdline}`);
  const redisPort = /:(\d+)$/.exec(String(report?.servers?.data ?? ''))?.[1];
  // redis-server rewrites its command line to "redis-server 127.0.0.1:PORT".
  if (redisPort) leftProcesses.push(...processesMatching(`127.0.0.1:${redisPort}`).map((p) => `${p.pid} ${p.cmdline}`));
  leftFiles = fs.readdirSync(tmp);
  // Keep the reports as artifacts beside the screenshot.
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  for (const f of ['report.json', 'report.html']) {
    if (fs.existsSync(path.join(out, f))) fs.copyFileSync(path.join(out, f), path.join(ARTIFACTS, `lab-quick-${f}`));
  }
});

test.after.always(() => {
  if (dir) removeTempDir(dir);
});

test.serial('kvfs lab --quick runs every experiment, exits 0 and leaves nothing mounted or running', (t) => {
  if (!run) return t.fail('the lab did not run');
  t.is(run.code, 0, describeRun('kvfs lab', run));
  t.regex(run.stdout, /experiment\s+measure\s+kvfs\s+local/);
  t.regex(run.stdout, /Findings:/);
  for (const name of EXPERIMENTS) t.regex(run.stderr, new RegExp(`lab: ${name}:`), `progress for ${name}`);
  t.truthy(report, 'report.json was written');
  t.deepEqual(leftMounts, [], 'mounts left');
  t.deepEqual(leftProcesses, [], 'processes left (servers, daemons, workers, watchdog)');
  t.deepEqual(leftFiles, [], 'the lab removed its temp dir');
});

test.serial('report.json: every experiment has numbers on kvfs and on the local disk, and the single-mount guarantees hold', (t) => {
  if (!report) return t.fail(`no report.json; ${run ? describeRun('kvfs lab', run) : ''}`);
  t.is(report.tool, 'kvfs lab');
  t.true(report.quick);
  t.is(report.seed, 7);
  t.deepEqual(report.order, [...EXPERIMENTS]);
  t.true(report.machine.cpus > 0, JSON.stringify(report.machine));
  t.is(report.servers.started, true);
  t.regex(report.servers.meta, /^etcd:\/\/127\.0\.0\.1:\d+\/$/);
  for (const name of EXPERIMENTS) {
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
      // breakdown splits the kvfs daemons' time between etcd, Redis and the daemon: the local
      // disk has no such parts (its summary cells show "–"). Every other experiment ran on both.
      if (name === 'breakdown') t.is(h.local, null, `${name} / ${h.label}: local`);
      else t.true(typeof h.local === 'number' && Number.isFinite(h.local), `${name} / ${h.label}: local = ${h.local}`);
    }
    if (name === 'breakdown') continue;
    // Every experiment on kvfs recorded where the daemons' time went.
    t.true(e.breakdown.length > 0, `${name} breakdown`);
    for (const p of e.breakdown) t.true(p.total.count > 0 && p.total.totalMs >= p.total.metaMs, `${name}/${p.phase}: ${JSON.stringify(p.total)}`);
  }
  const R = (name: string) => report.experiments[name]?.results ?? {};

  // fsync: a latency distribution on each target.
  for (const target of ['kvfsOn', 'kvfsOff', 'local']) {
    const d = R('fsync')[target]?.total;
    t.true(d?.n > 0 && d.p50 > 0 && d.p50 <= d.p99 && d.p99 <= d.max, `fsync ${target}: ${JSON.stringify(d)}`);
    t.true(R('fsync')[target]?.cdf.length > 1, `fsync ${target} cdf`);
  }

  // sqlite: every journal/synchronous combination committed on both.
  const combos = Object.entries(R('sqlite')) as Array<[string, { kvfs?: { txPerSec: number }; local?: { txPerSec: number } }]>;
  t.is(combos.length, 4, Object.keys(R('sqlite')).join(', '));
  for (const [combo, x] of combos) t.true((x.kvfs?.txPerSec ?? 0) > 0 && (x.local?.txPerSec ?? 0) > 0, `sqlite ${combo}: ${JSON.stringify(x)}`);

  // durability: no fsynced record is lost when the daemon is killed (default settings).
  const dur = R('durability');
  t.true(dur.kvfs.rounds >= 1 && dur.local.rounds >= 1, JSON.stringify(dur.kvfs));
  t.true(dur.kvfs.fsyncedRecords > 0, 'some records were fsynced before the kills');
  t.is(dur.kvfs.lostFsynced, 0, `fsynced records lost when the daemon was killed: ${JSON.stringify(dur.rounds)}`);
  t.is(dur.kvfs.corruptRecords, 0, 'torn or corrupt records');
  t.is(dur.local.lostFsynced + dur.local.lostUnfsyncedJournal + dur.local.lostStream, 0, 'a killed writer on the local disk loses nothing it wrote');
  for (const round of dur.rounds) {
    t.true(round.journal.acked >= round.journal.fsyncedUpTo, JSON.stringify(round));
    t.true(round.journal.lostFsynced + round.journal.lostUnfsynced <= round.journal.acked, JSON.stringify(round));
  }

  // staleness: every setting measured (violations are measurements).
  for (const key of ['default', 'zero', 'long', 'kernel', 'local']) {
    const x = R('staleness')[key];
    t.truthy(x?.read, `staleness ${key}: ${x?.error}`);
    if (!x?.read) continue;
    t.true(x.updates > 0 && x.read.eligible > 0, `staleness ${key}: ${JSON.stringify(x.read)}`);
    t.true(x.read.violations <= x.read.eligible, `staleness ${key}`);
  }

  // locks: the control (all workers on one mount) and the local disk lose no increment.
  for (const kind of ['flock', 'fcntl']) {
    for (const where of ['one mount', 'two mounts', 'local disk']) {
      const x = R('locks')[`${kind}, ${where}`];
      t.truthy(x, `locks ${kind}, ${where} missing`);
      if (!x) continue;
      t.true(x.increments > 0 && x.lost !== null, `locks ${kind}, ${where}: ${JSON.stringify(x)}`);
      if (where !== 'two mounts') t.is(x.lost, 0, `locks ${kind}, ${where}: increments lost (${JSON.stringify(x.errors)})`);
    }
  }

  // sqlite2: two writers through one mount (the control) and on the local disk lose no row.
  for (const journal of ['DELETE', 'WAL']) {
    for (const where of ['one mount', 'two mounts', 'local disk']) {
      const x = R('sqlite2')[`${journal}, ${where}`];
      t.truthy(x, `sqlite2 ${journal}, ${where} missing`);
      if (!x) continue;
      t.true(x.attempted > 0 && x.lostRows !== null, `sqlite2 ${journal}, ${where}: ${JSON.stringify(x)}`);
      if (where !== 'two mounts') {
        t.true(x.acked > 0, `sqlite2 ${journal}, ${where}: acknowledged rows`);
        t.is(x.lostRows, 0, `sqlite2 ${journal}, ${where}: acknowledged rows lost (${JSON.stringify(x.errors)})`);
        t.true(x.integrityOk, `sqlite2 ${journal}, ${where}: integrity_check ${JSON.stringify(x.integrity)} ${x.checkError ?? ''}`);
      }
    }
  }

  // stall: a paused backend loses no acknowledged (fsynced) transaction on its mount.
  for (const key of ['redis', 'etcd']) {
    const x = R('stall')[key];
    t.truthy(x, `stall ${key} missing`);
    if (!x) continue;
    t.is(x.lostAcked, 0, `stall ${key}: acknowledged transactions lost: ${JSON.stringify(x)}`);
  }

  // breakdown: one entry for every experiment that ran on kvfs.
  const summarised = (R('breakdown').experiments ?? []).map((x: { experiment: string }) => x.experiment);
  t.deepEqual(summarised, EXPERIMENTS.filter((n) => n !== 'breakdown'));
});

test.serial('report.html renders every section with its chart in headless Chromium; screenshot of the first screen', async (t) => {
  t.timeout(120_000);
  const html = path.join(out, 'report.html');
  if (!fs.existsSync(html)) return t.fail(`no report.html; ${run ? describeRun('kvfs lab', run) : ''}`);
  if (!fs.existsSync(CHROMIUM)) {
    return t.fail(`${CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium; .ci/run does) or set KVFS_CHROMIUM to a Chromium binary`);
  }
  const text = fs.readFileSync(html, 'utf8');
  t.false(/<script|<link|src=|href="https?:/i.test(text), 'report.html loads nothing from outside');

  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvfs-lab-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    // No network here: these keep Chromium from trying to reach its services.
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 900 },
    timeout: 60_000,
  });
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    const outside: string[] = [];
    page.on('request', (req) => {
      if (!req.url().startsWith('file:') && !req.url().startsWith('data:')) outside.push(req.url());
    });
    await page.goto(`file://${html}`, { waitUntil: 'load', timeout: 60_000 });
    t.is(await page.title(), 'kvfs lab report');

    const summary = page.locator('section#summary table.summary');
    t.true(await summary.isVisible(), 'the summary table is visible');
    const rows = await summary.locator('tbody tr').count();
    t.true(rows >= EXPERIMENTS.length, `summary rows: ${rows}`);
    for (const name of EXPERIMENTS) t.is(await summary.locator(`a[href="#${name}"]`).count(), 1, `summary links to ${name}`);

    for (const name of EXPERIMENTS) {
      const section = page.locator(`section#${name}`);
      t.is(await section.count(), 1, `one section ${name}`);
      t.true(await section.isVisible(), `section ${name} is visible`);
      t.true(await section.locator('.finding').isVisible(), `section ${name} shows its finding`);
      t.is(await section.locator('.error').count(), 0, `section ${name} has no error: ${await section.locator('.error').allTextContents()}`);
      const sizes = await section.locator('svg').evaluateAll((svgs) =>
        svgs.map((s) => {
          const r = s.getBoundingClientRect();
          return { width: r.width, height: r.height, shapes: s.querySelectorAll('path,rect,line,circle,polyline').length };
        }),
      );
      t.true(sizes.length > 0, `section ${name} has a chart`);
      for (const [i, s] of sizes.entries()) t.true(s.width > 50 && s.height > 50 && s.shapes > 0, `section ${name}, chart ${i + 1}: ${JSON.stringify(s)}`);
    }
    t.deepEqual(outside, [], 'requests outside the file');

    fs.mkdirSync(ARTIFACTS, { recursive: true });
    const shot = path.join(ARTIFACTS, 'lab-quick-first-screen.png');
    await page.screenshot({ path: shot, fullPage: false });
    t.true(fs.statSync(shot).size > 10_000, 'the screenshot has content');
    t.log(`screenshot of the report's first screen: ${shot}`);
  } finally {
    await context.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
});

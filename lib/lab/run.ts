// `kvfs lab`: runs the experiments of lib/lab/experiments on kvfs and on the local disk, and
// writes report.json and report.html into the output directory.

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Lab, LabAborted } from './env';
import { buildBreakdown, renderBreakdown } from './experiments/breakdown';
import { durabilityExperiment } from './experiments/durability';
import { fsyncExperiment } from './experiments/fsync';
import { locksExperiment } from './experiments/locks';
import { sqliteExperiment } from './experiments/sqlite';
import { sqlite2Experiment } from './experiments/sqlite2';
import { SkipExperiment, stallExperiment } from './experiments/stall';
import { stalenessExperiment } from './experiments/staleness';
import { renderHtml, terminalSummary, type Renderers } from './report';
import { EXPERIMENTS, RunContext, type Experiment, type ExperimentName, type ExperimentReport, type LabReport } from './types';
import { fmt, nowMs, rng, roundAll } from './util';

export { terminalSummary };

export const RUNNABLE: Experiment[] = [
  fsyncExperiment,
  sqliteExperiment,
  durabilityExperiment,
  stalenessExperiment,
  locksExperiment,
  sqlite2Experiment,
  stallExperiment,
];

const BREAKDOWN = {
  name: 'breakdown' as const,
  title: 'Where the time goes',
  question: 'Of the time each FUSE operation takes in the daemon, how much is waiting on etcd, on Redis, and the daemon and FUSE path itself?',
};

export interface LabConfig {
  metaUrl?: string;
  dataUrl?: string;
  out: string;
  quick: boolean;
  only: ExperimentName[];
  seed: number;
  command: string;
  log: (line: string) => void;
}

function machine(): Record<string, unknown> {
  const cpus = os.cpus();
  return {
    cpus: cpus.length,
    cpuModel: cpus[0]?.model ?? 'unknown',
    memoryBytes: os.totalmem(),
    kernel: os.release(),
    node: process.version,
    loadAverageAtStart: os.loadavg().map((l) => Math.round(l * 100) / 100),
  };
}

/** The filesystem a directory is on, from /proc/self/mountinfo (longest mount point prefix). */
function filesystemOf(dir: string): { fstype: string; device: string } {
  let best = { len: -1, fstype: 'unknown', device: 'unknown' };
  try {
    for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
      const f = line.split(' ');
      const sep = f.indexOf('-');
      if (f.length < 10 || sep < 0) continue;
      const mnt = f[4];
      if ((dir === mnt || dir.startsWith(mnt.endsWith('/') ? mnt : `${mnt}/`)) && mnt.length > best.len) {
        best = { len: mnt.length, fstype: f[sep + 1], device: f[sep + 2] };
      }
    }
  } catch {
    // not Linux
  }
  return { fstype: best.fstype, device: best.device };
}

export async function runLab(cfg: LabConfig): Promise<LabReport> {
  const started = new Date();
  const t0 = nowMs();
  const log = cfg.log;
  fs.mkdirSync(cfg.out, { recursive: true });
  const report: LabReport = {
    tool: 'kvfs lab',
    version: (require('../../../package.json') as { version: string }).version,
    startedAt: started.toISOString(),
    finishedAt: '',
    seconds: 0,
    command: cfg.command,
    quick: cfg.quick,
    seed: cfg.seed,
    machine: machine(),
    servers: {},
    local: { dir: '', fstype: '', device: '' },
    experiments: {},
    order: [],
  };
  const renderers: Renderers = Object.fromEntries([...RUNNABLE.map((e) => [e.name, e.render] as const), ['breakdown', renderBreakdown]]);
  const write = () => {
    report.finishedAt = new Date().toISOString();
    report.seconds = (nowMs() - t0) / 1000;
    fs.writeFileSync(path.join(cfg.out, 'report.json'), `${JSON.stringify(roundAll(report, 4), null, 1)}\n`);
    fs.writeFileSync(path.join(cfg.out, 'report.html'), renderHtml(roundAll(report, 4), renderers));
  };

  let lab: Lab | undefined;
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    signals++;
    if (signals === 1) {
      log(`lab: ${sig}: stopping; unmounting and stopping what the lab started (again to force)`);
      if (lab) {
        lab.aborted = true;
        lab.killWorkers();
      }
    } else {
      lab?.emergencyCleanup();
      process.exit(130);
    }
  };
  const sigs: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  for (const s of sigs) process.on(s, onSignal);
  const onExit = () => lab?.emergencyCleanup();
  process.on('exit', onExit);

  let aborted: unknown;
  try {
    lab = await Lab.create({ metaUrl: cfg.metaUrl, dataUrl: cfg.dataUrl, log });
    const servers = lab.describe();
    report.servers = {
      ...servers,
      started: lab.ownServers,
      ...(lab.etcd ? { etcdVersion: lab.etcd.version } : {}),
      ...(lab.redis ? { redisVersion: lab.redis.version, redisAppendfsync: 'always', redisAppendonly: 'yes' } : {}),
    };
    const localDir = path.join(lab.tmp, 'local');
    report.local = { dir: localDir, ...filesystemOf(localDir) };
    const random = rng(cfg.seed);
    const selected = RUNNABLE.filter((e) => cfg.only.includes(e.name));
    for (const exp of selected) {
      if (lab.aborted) break;
      const ctx = new RunContext(lab, exp.name, cfg.quick, () => random());
      const e0 = nowMs();
      log(`lab: ${exp.name}: ${exp.title} (${report.order.length + 1}/${selected.length + (cfg.only.includes('breakdown') ? 1 : 0)}, ${fmt((nowMs() - t0) / 1000)} s so far)`);
      const entry: ExperimentReport = {
        name: exp.name,
        title: exp.title,
        question: exp.question,
        status: 'ok',
        seconds: 0,
        config: {},
        results: {},
        headline: [],
        finding: '',
        breakdown: [],
        notes: [],
      };
      try {
        const out = await exp.run(ctx);
        Object.assign(entry, { config: out.config, results: out.results, headline: out.headline, finding: out.finding });
        entry.notes.push(...(out.notes ?? []));
        log(`lab: ${exp.name}: ${out.finding}`);
      } catch (err) {
        if (err instanceof SkipExperiment) {
          entry.status = 'skipped';
          entry.error = err.message;
          log(`lab: ${exp.name}: skipped: ${err.message}`);
        } else {
          entry.status = 'failed';
          entry.error = lab.aborted ? 'interrupted' : (err as Error).message;
          log(`lab: ${exp.name}: FAILED: ${entry.error}`);
          if (lab.aborted || err instanceof LabAborted) aborted = err;
        }
      }
      await lab.unmountAll();
      entry.breakdown = ctx.breakdown;
      entry.notes.push(...ctx.notes);
      entry.seconds = (nowMs() - e0) / 1000;
      report.experiments[exp.name] = entry;
      report.order.push(exp.name);
      write();
    }
    if (cfg.only.includes('breakdown') && !lab.aborted) {
      const out = buildBreakdown(Object.values(report.experiments) as ExperimentReport[]);
      report.experiments.breakdown = { ...BREAKDOWN, status: 'ok', seconds: 0, breakdown: [], notes: out.notes ?? [], config: out.config, results: out.results, headline: out.headline, finding: out.finding };
      report.order.push('breakdown');
      log(`lab: breakdown: ${out.finding}`);
    }
  } finally {
    if (lab) {
      log('lab: unmounting and stopping servers');
      await lab.close().catch((err) => log(`lab: cleanup: ${(err as Error).message}`));
    }
    for (const s of sigs) process.off(s, onSignal);
    process.off('exit', onExit);
    report.machine.loadAverageAtEnd = os.loadavg().map((l) => Math.round(l * 100) / 100);
    // Keep the report's order as the experiments' canonical order.
    report.order.sort((a, b) => EXPERIMENTS.indexOf(a) - EXPERIMENTS.indexOf(b));
    write();
  }
  if (aborted) throw new LabAborted();
  return report;
}

// The shape of report.json and of an experiment module.

import type { KvfsMount, Lab, MetricsSnapshot } from './env';
import { nowMs } from './util';

export const EXPERIMENTS = ['fsync', 'sqlite', 'durability', 'staleness', 'locks', 'sqlite2', 'stall', 'breakdown'] as const;
export type ExperimentName = (typeof EXPERIMENTS)[number];

/** One comparable figure for the first screen: kvfs beside the local disk. */
export interface Headline {
  label: string;
  unit: string;
  kvfs: number | null;
  local: number | null;
  /** Which direction is good (for colouring only). */
  better: 'lower' | 'higher';
}

export interface OpShare {
  op: string;
  count: number;
  errors: number;
  totalMs: number;
  /** Waiting on the metadata engine (etcd). */
  metaMs: number;
  /** Waiting on the block store (Redis). */
  dataMs: number;
  /** The rest: the daemon and the FUSE path. */
  otherMs: number;
}

/** The daemons' timers over one phase of an experiment (reset before, read after). */
export interface BreakdownPhase {
  experiment: string;
  phase: string;
  mounts: number;
  wallMs: number;
  ops: OpShare[];
  total: Omit<OpShare, 'op'>;
  /** Backend time outside any FUSE operation (background commits). */
  background: { metaMs: number; dataMs: number };
  error?: string;
}

export interface ExperimentReport {
  name: ExperimentName;
  title: string;
  question: string;
  status: 'ok' | 'failed' | 'skipped';
  seconds: number;
  config: Record<string, unknown>;
  results: Record<string, unknown>;
  headline: Headline[];
  finding: string;
  breakdown: BreakdownPhase[];
  notes: string[];
  error?: string;
}

export interface LabReport {
  tool: 'kvfs lab';
  version: string;
  startedAt: string;
  finishedAt: string;
  seconds: number;
  command: string;
  quick: boolean;
  seed: number;
  machine: Record<string, unknown>;
  servers: Record<string, unknown>;
  local: { dir: string; fstype: string; device: string };
  experiments: Partial<Record<ExperimentName, ExperimentReport>>;
  order: ExperimentName[];
}

export type ExperimentOutput = Pick<ExperimentReport, 'config' | 'results' | 'headline' | 'finding'> & { notes?: string[] };

export interface Experiment {
  name: ExperimentName;
  title: string;
  question: string;
  run(ctx: RunContext): Promise<ExperimentOutput>;
  /** The section's charts and tables (HTML). */
  render(r: ExperimentReport): string;
}

function share(snapshots: MetricsSnapshot[]): Pick<BreakdownPhase, 'ops' | 'total' | 'background'> {
  const byOp = new Map<string, OpShare>();
  const background = { metaMs: 0, dataMs: 0 };
  for (const s of snapshots) {
    for (const [op, t] of Object.entries(s.ops ?? {})) {
      const o = byOp.get(op) ?? { op, count: 0, errors: 0, totalMs: 0, metaMs: 0, dataMs: 0, otherMs: 0 };
      o.count += t.count;
      o.errors += t.errors;
      o.totalMs += t.totalMs;
      o.metaMs += t.metaMs;
      o.dataMs += t.dataMs;
      o.otherMs += Math.max(0, t.totalMs - t.metaMs - t.dataMs);
      byOp.set(op, o);
    }
    background.metaMs += s.background?.metaMs ?? 0;
    background.dataMs += s.background?.dataMs ?? 0;
  }
  const ops = [...byOp.values()].sort((a, b) => b.totalMs - a.totalMs);
  const total = { count: 0, errors: 0, totalMs: 0, metaMs: 0, dataMs: 0, otherMs: 0 };
  for (const o of ops) {
    total.count += o.count;
    total.errors += o.errors;
    total.totalMs += o.totalMs;
    total.metaMs += o.metaMs;
    total.dataMs += o.dataMs;
    total.otherMs += o.otherMs;
  }
  return { ops, total, background };
}

/** What an experiment gets: the lab, its settings, and the breakdown recorder. */
export class RunContext {
  readonly breakdown: BreakdownPhase[] = [];
  readonly notes: string[] = [];

  constructor(
    readonly lab: Lab,
    readonly experiment: ExperimentName,
    readonly quick: boolean,
    readonly random: () => number,
  ) {}

  log(line: string): void {
    this.lab.log(`  ${this.experiment}: ${line}`);
  }

  async resetMetrics(mounts: KvfsMount[]): Promise<void> {
    await Promise.all(mounts.map((m) => m.resetMetrics().catch(() => undefined)));
  }

  /** Reads the daemons' timers and records them as one phase of this experiment. */
  async recordMetrics(phase: string, mounts: KvfsMount[], wallMs: number): Promise<void> {
    const snapshots: MetricsSnapshot[] = [];
    let error: string | undefined;
    for (const m of mounts) {
      try {
        snapshots.push(await m.metrics());
      } catch (err) {
        error = `metrics of ${m.label}: ${(err as Error).message}`;
      }
    }
    this.breakdown.push({ experiment: this.experiment, phase, mounts: mounts.length, wallMs, ...share(snapshots), ...(error ? { error } : {}) });
  }

  /** Runs fn as a measured phase: the mounts' timers are reset before and read after. */
  async phase<T>(phase: string, mounts: KvfsMount[], fn: () => Promise<T>): Promise<T> {
    await this.resetMetrics(mounts);
    const t0 = nowMs();
    const result = await fn();
    await this.recordMetrics(phase, mounts, nowMs() - t0);
    return result;
  }
}

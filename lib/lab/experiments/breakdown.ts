// 8. Where the time goes: for every phase of every experiment that ran on kvfs, the daemons'
// own timers (/metrics on their control sockets, reset before the phase and read after it):
// the share of FUSE operation time spent waiting on etcd, on Redis, and the rest (the daemon and
// the FUSE path).

import { figure, table } from '../markup';
import { COLORS, stackedBars } from '../svg';
import type { BreakdownPhase, ExperimentOutput, ExperimentReport } from '../types';
import { fmt } from '../util';

interface ExperimentTotals {
  experiment: string;
  phases: number;
  ops: number;
  totalMs: number;
  metaMs: number;
  dataMs: number;
  otherMs: number;
  backgroundMetaMs: number;
  backgroundDataMs: number;
  /** The operations that took the most time. */
  top: Array<{ op: string; count: number; meanMs: number; etcdPct: number; redisPct: number; otherPct: number }>;
}

const pct = (part: number, total: number) => (total > 0 ? (100 * part) / total : 0);

export function buildBreakdown(reports: ExperimentReport[]): ExperimentOutput {
  const phases: BreakdownPhase[] = reports.flatMap((r) => r.breakdown ?? []);
  const byExp = new Map<string, ExperimentTotals>();
  const opsByExp = new Map<string, Map<string, { count: number; totalMs: number; metaMs: number; dataMs: number; otherMs: number }>>();
  for (const p of phases) {
    const t = byExp.get(p.experiment) ?? { experiment: p.experiment, phases: 0, ops: 0, totalMs: 0, metaMs: 0, dataMs: 0, otherMs: 0, backgroundMetaMs: 0, backgroundDataMs: 0, top: [] };
    t.phases++;
    t.ops += p.total.count;
    t.totalMs += p.total.totalMs;
    t.metaMs += p.total.metaMs;
    t.dataMs += p.total.dataMs;
    t.otherMs += p.total.otherMs;
    t.backgroundMetaMs += p.background.metaMs;
    t.backgroundDataMs += p.background.dataMs;
    byExp.set(p.experiment, t);
    const ops = opsByExp.get(p.experiment) ?? new Map();
    for (const o of p.ops) {
      const a = ops.get(o.op) ?? { count: 0, totalMs: 0, metaMs: 0, dataMs: 0, otherMs: 0 };
      a.count += o.count;
      a.totalMs += o.totalMs;
      a.metaMs += o.metaMs;
      a.dataMs += o.dataMs;
      a.otherMs += o.otherMs;
      ops.set(o.op, a);
    }
    opsByExp.set(p.experiment, ops);
  }
  for (const [exp, t] of byExp) {
    t.top = [...(opsByExp.get(exp) ?? new Map()).entries()]
      .sort((a, b) => b[1].totalMs - a[1].totalMs)
      .slice(0, 5)
      .map(([op, a]) => ({ op, count: a.count, meanMs: a.count ? a.totalMs / a.count : 0, etcdPct: pct(a.metaMs, a.totalMs), redisPct: pct(a.dataMs, a.totalMs), otherPct: pct(a.otherMs, a.totalMs) }));
  }
  const experiments = [...byExp.values()];
  const all = experiments.reduce((a, t) => ({ totalMs: a.totalMs + t.totalMs, metaMs: a.metaMs + t.metaMs, dataMs: a.dataMs + t.dataMs, otherMs: a.otherMs + t.otherMs }), { totalMs: 0, metaMs: 0, dataMs: 0, otherMs: 0 });
  const shares = { etcdPct: pct(all.metaMs, all.totalMs), redisPct: pct(all.dataMs, all.totalMs), daemonPct: pct(all.otherMs, all.totalMs) };
  const dominant = (t: { metaMs: number; dataMs: number; otherMs: number; totalMs: number }) => {
    const parts = [
      ['etcd', t.metaMs],
      ['Redis', t.dataMs],
      ['the daemon/FUSE path', t.otherMs],
    ] as const;
    const [name, ms] = [...parts].sort((a, b) => b[1] - a[1])[0];
    return `${name} ${fmt(pct(ms, t.totalMs))} %`;
  };
  const errors = phases.filter((p) => p.error).map((p) => `${p.experiment}/${p.phase}: ${p.error}`);
  const finding =
    all.totalMs > 0
      ? `Of ${fmt(all.totalMs / 1000)} s of FUSE operation time in the daemons, ${fmt(shares.etcdPct)} % waited on etcd, ${fmt(shares.redisPct)} % on Redis and ${fmt(shares.daemonPct)} % was the daemon and FUSE path; ` +
        `largest part by experiment: ${experiments.map((t) => `${t.experiment} ${dominant(t)}`).join(', ')}.`
      : `No daemon timers were collected${errors.length ? ` (${errors[0]})` : ''}.`;
  return {
    config: {
      source: "each mount daemon's /metrics on its control socket ($KVFS_HOME/run/*.sock), reset before and read after each phase; phases with two mounts add both daemons",
      etcd: 'time inside metadata engine calls (etcd transactions, gets, scans)',
      redis: 'time inside block store calls (Redis puts, gets, deletes)',
      daemon: 'the rest of each FUSE operation in the daemon: locks, caches, copying, JavaScript, the binding; the kernel side of FUSE is not included',
      note: 'background commits (write-back flushes outside any operation) are listed separately per experiment',
    },
    results: { overall: { ...all, ...shares }, experiments, phases },
    headline: [
      { label: 'daemon op time waiting on etcd', unit: '%', kvfs: all.totalMs > 0 ? shares.etcdPct : null, local: null, better: 'lower' },
      { label: 'daemon op time waiting on Redis', unit: '%', kvfs: all.totalMs > 0 ? shares.redisPct : null, local: null, better: 'lower' },
      { label: 'daemon op time in daemon/FUSE path', unit: '%', kvfs: all.totalMs > 0 ? shares.daemonPct : null, local: null, better: 'lower' },
    ],
    finding,
    notes: errors,
  };
}

export function breakdownBars(phases: BreakdownPhase[], withExperiment: boolean): string {
  const rows = phases.map((p) => ({
    label: `${withExperiment ? `${p.experiment}: ` : ''}${p.phase}`.slice(0, 40),
    parts: [
      { name: 'etcd', value: p.total.metaMs, color: COLORS.etcd },
      { name: 'Redis', value: p.total.dataMs, color: COLORS.redis },
      { name: 'daemon + FUSE path', value: p.total.otherMs, color: COLORS.daemon },
    ],
    note: `${fmt(p.total.totalMs / 1000)} s, ${fmt(p.total.count)} ops`,
  }));
  return stackedBars(rows, 720);
}

export function renderBreakdown(r: ExperimentReport): string {
  const res = r.results as { experiments?: ExperimentTotals[]; phases?: BreakdownPhase[] };
  const exps = res.experiments ?? [];
  const perExp = stackedBars(
    exps.map((t) => ({
      label: t.experiment,
      parts: [
        { name: 'etcd', value: t.metaMs, color: COLORS.etcd },
        { name: 'Redis', value: t.dataMs, color: COLORS.redis },
        { name: 'daemon + FUSE path', value: t.otherMs, color: COLORS.daemon },
      ],
      note: `${fmt(t.totalMs / 1000)} s in ${fmt(t.ops)} ops`,
    })),
    720,
  );
  const rows = exps.flatMap((t) => t.top.map((o) => [t.experiment, o.op, o.count, o.meanMs, o.etcdPct, o.redisPct, o.otherPct]));
  const bg = exps.map((t) => [t.experiment, t.backgroundMetaMs, t.backgroundDataMs]);
  return (
    figure(perExp, 'Share of FUSE operation time in the daemons, by experiment.') +
    figure(breakdownBars(res.phases ?? [], true), 'The same for every measured phase.') +
    table(['experiment', 'operation', 'count', 'mean ms', 'etcd %', 'Redis %', 'daemon + FUSE %'], rows, 'Operations that took the most time') +
    table(['experiment', 'background etcd ms', 'background Redis ms'], bg, 'Backend time outside any operation (write-back flushes, session upkeep)')
  );
}

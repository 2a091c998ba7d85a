// 1. fsync latency: 4 KiB append + fsync, on kvfs (write-back on and off) and the local disk.

import { figure, table } from '../markup';
import { COLORS, lineChart } from '../svg';
import type { Experiment, ExperimentReport } from '../types';
import { cdfPoints, distribution, fmt, type Distribution } from '../util';

interface TargetResult {
  label: string;
  appends: number;
  elapsedMs: number;
  total: Distribution;
  write: Distribution;
  fsync: Distribution;
  cdf: Array<[number, number]>;
  /** Latency by append number (thinned), to show how it changes as the file grows. */
  byIndex: Array<[number, number]>;
  /** Median latency by where the append lands in its 1 MiB block (4 quarters). */
  byBlockQuarter: number[];
  error?: string;
}

const TARGETS = [
  { key: 'kvfsOn', label: 'kvfs, write-back on', args: ['--writeback', 'on'], color: COLORS.kvfs },
  { key: 'kvfsOff', label: 'kvfs, write-back off', args: ['--writeback', 'off'], color: COLORS.kvfsOff },
  { key: 'local', label: 'local disk', args: [], color: COLORS.local },
] as const;

function thin(values: number[], max: number): Array<[number, number]> {
  const step = Math.max(1, Math.ceil(values.length / max));
  const out: Array<[number, number]> = [];
  for (let i = 0; i < values.length; i += step) out.push([i + 1, values[i]]);
  return out;
}

/** Median latency of the appends landing in each quarter of a 1 MiB block (warm-up: 10 appends). */
function quarters(total: number[]): number[] {
  const buckets: number[][] = [[], [], [], []];
  total.forEach((v, i) => {
    const offset = (i + 10) * 4096;
    buckets[Math.floor((offset % (1024 * 1024)) / (256 * 1024))].push(v);
  });
  return buckets.map((b) => distribution(b).p50);
}

export const fsyncExperiment: Experiment = {
  name: 'fsync',
  title: 'fsync latency',
  question: 'How long does appending 4 KiB and calling fsync() take, and how is it distributed?',

  async run(ctx) {
    const { lab, quick } = ctx;
    const count = { kvfsOn: quick ? 200 : 2000, kvfsOff: quick ? 150 : 1000, local: quick ? 200 : 2000 };
    const maxMs = quick ? 15_000 : 60_000;
    const results: Record<string, TargetResult> = {};
    const volume = await lab.newVolume('fsync');
    for (const t of TARGETS) {
      lab.check();
      const n = count[t.key];
      ctx.log(`${t.label}: ${n} appends of 4 KiB + fsync`);
      const mount = t.key === 'local' ? undefined : await lab.mount(volume, `fsync-${t.key}`, [...t.args]);
      try {
        const dir = mount ? mount.mnt : lab.localDir('fsync');
        const work = () =>
          lab.worker<{ total: number[]; write: number[]; fsync: number[]; elapsedMs: number }>(
            'fsyncAppend',
            { file: `${dir}/append-${t.key}.dat`, count: n, warmup: 10, size: 4096, maxMs },
            maxMs + 120_000,
          );
        const r = mount ? await ctx.phase(t.label, [mount], work) : await work();
        results[t.key] = {
          label: t.label,
          appends: r.total.length,
          elapsedMs: r.elapsedMs,
          total: distribution(r.total),
          write: distribution(r.write),
          fsync: distribution(r.fsync),
          cdf: cdfPoints(r.total),
          byIndex: thin(r.total, 600),
          byBlockQuarter: quarters(r.total),
        };
      } finally {
        if (mount) await mount.unmount();
      }
    }
    const on = results.kvfsOn.total;
    const off = results.kvfsOff.total;
    const local = results.local.total;
    const times = on.p50 / local.p50;
    const slower = times >= 1;
    const finding =
      `4 KiB append+fsync: kvfs (write-back on) p50 ${fmt(on.p50)} ms, p99 ${fmt(on.p99)} ms, p99.9 ${fmt(on.p999)} ms; ` +
      `local disk p50 ${fmt(local.p50)} ms, p99 ${fmt(local.p99)} ms — kvfs is ${fmt(slower ? times : 1 / times)}× ${slower ? 'slower' : 'faster'} at the median` +
      `; write-back off: p50 ${fmt(off.p50)} ms` +
      (Number.isFinite(results.kvfsOn.byBlockQuarter[3] / results.kvfsOn.byBlockQuarter[0])
        ? `; appends in the last quarter of a 1 MiB block take ${fmt(results.kvfsOn.byBlockQuarter[3] / results.kvfsOn.byBlockQuarter[0])}× the median of the first quarter.`
        : '.');
    return {
      config: {
        appends: count,
        appendSize: 4096,
        warmupAppends: 10,
        maxSecondsPerTarget: maxMs / 1000,
        timed: 'pwrite of 4 KiB at the end of the file, then fsync; one process, one file per target',
        mounts: { kvfsOn: '--writeback on (defaults otherwise)', kvfsOff: '--writeback off' },
      },
      results,
      headline: [
        { label: 'append+fsync p50', unit: 'ms', kvfs: on.p50, local: local.p50, better: 'lower' },
        { label: 'append+fsync p99', unit: 'ms', kvfs: on.p99, local: local.p99, better: 'lower' },
      ],
      finding,
    };
  },

  render(r: ExperimentReport) {
    const res = r.results as Record<string, TargetResult>;
    const series = TARGETS.filter((t) => res[t.key]).map((t) => ({ name: t.label, color: t.color, points: res[t.key].cdf, step: true }));
    const byIndex = TARGETS.filter((t) => res[t.key]).map((t) => ({ name: t.label, color: t.color, points: res[t.key].byIndex, dots: true }));
    const rows = TARGETS.filter((t) => res[t.key]).flatMap((t) =>
      (['total', 'write', 'fsync'] as const).map((k) => {
        const d = res[t.key][k];
        return [t.label, k === 'total' ? 'write + fsync' : k, d.n, d.p50, d.p90, d.p99, d.p999, d.max];
      }),
    );
    return (
      figure(lineChart({ series, xLabel: 'latency of one 4 KiB append + fsync (ms, log scale)', yLabel: 'fraction of appends', logX: true, yMin: 0, yMax: 1 }), 'CDF: the further left, the faster; the top of each curve is the slowest append.') +
      table(['target', 'timed', 'n', 'p50 ms', 'p90 ms', 'p99 ms', 'p99.9 ms', 'max ms'], rows) +
      table(
        ['target', 'p50 ms, 1st quarter of a 1 MiB block', '2nd', '3rd', '4th'],
        TARGETS.filter((t) => res[t.key]?.byBlockQuarter).map((t) => [t.label, ...res[t.key].byBlockQuarter]),
        'Where in its 1 MiB block (kvfs: one stored block) an append lands',
      ) +
      figure(lineChart({ series: byIndex, xLabel: 'append number (the file grows by 4 KiB each)', yLabel: 'ms (log scale)', logY: true, height: 220 }), 'Each append in order. kvfs keeps data in 1 MiB blocks (256 appends); a pattern with that period would come from the block being stored again as it fills.')
    );
  },
};

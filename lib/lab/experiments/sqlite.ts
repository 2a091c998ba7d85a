// 2. SQLite transactions: single-row autocommit INSERTs, journal DELETE and WAL, synchronous FULL
// and NORMAL; transactions per second and latency percentiles, kvfs against the local disk.

import { figure, table } from '../markup';
import { COLORS, barChart, lineChart } from '../svg';
import type { Experiment, ExperimentReport } from '../types';
import { cdfPoints, distribution, fmt, sum, type Distribution } from '../util';

interface Run {
  txPerSec: number;
  transactions: number;
  latency: Distribution;
  cdf: Array<[number, number]>;
  journalMode?: string;
  errors: Record<string, number>;
  error?: string;
}

const COMBOS = [
  { journal: 'DELETE', sync: 'FULL' },
  { journal: 'DELETE', sync: 'NORMAL' },
  { journal: 'WAL', sync: 'FULL' },
  { journal: 'WAL', sync: 'NORMAL' },
] as const;

const key = (c: { journal: string; sync: string }) => `${c.journal}/${c.sync}`;

export const sqliteExperiment: Experiment = {
  name: 'sqlite',
  title: 'SQLite transactions',
  question: 'How many single-row autocommit transactions per second does SQLite commit, by journal mode and synchronous setting?',

  async run(ctx) {
    const { lab, quick } = ctx;
    const maxTx = quick ? 300 : 2000;
    const maxMs = quick ? 2000 : 10_000;
    const volume = await lab.newVolume('sqlite');
    const mount = await lab.mount(volume, 'sqlite');
    const localDir = lab.localDir('sqlite');
    const results: Record<string, { kvfs?: Run; local?: Run }> = {};
    try {
      for (const c of COMBOS) {
        for (const where of ['kvfs', 'local'] as const) {
          lab.check();
          ctx.log(`${where}, journal ${c.journal}, synchronous ${c.sync}: up to ${maxTx} transactions or ${maxMs / 1000} s`);
          const dir = where === 'kvfs' ? mount.mnt : localDir;
          const work = () =>
            lab.startWorker<{ latencies: number[]; elapsedMs: number; journalMode: string; errors: Record<string, number> }>(
              'sqliteBench',
              { db: `${dir}/bench-${c.journal}-${c.sync}.db`, journal: c.journal, sync: c.sync, maxTx, maxMs, warmup: 5 },
              maxMs + 120_000,
            ).done;
          const o = where === 'kvfs' ? await ctx.phase(key(c), [mount], work) : await work();
          lab.check();
          const entry = (results[key(c)] ??= {});
          if (!o.result) {
            entry[where] = { txPerSec: 0, transactions: 0, latency: distribution([]), cdf: [], errors: {}, error: o.error };
            continue;
          }
          const r = o.result;
          entry[where] = {
            txPerSec: r.latencies.length / (r.elapsedMs / 1000),
            transactions: r.latencies.length,
            latency: distribution(r.latencies),
            cdf: cdfPoints(r.latencies),
            journalMode: r.journalMode,
            errors: r.errors,
          };
        }
      }
    } finally {
      await mount.unmount();
    }
    const kv = (c: (typeof COMBOS)[number]) => results[key(c)]?.kvfs;
    const lo = (c: (typeof COMBOS)[number]) => results[key(c)]?.local;
    const best = [...COMBOS].sort((a, b) => (kv(b)?.txPerSec ?? 0) - (kv(a)?.txPerSec ?? 0))[0];
    const worst = [...COMBOS].sort((a, b) => (kv(a)?.txPerSec ?? 0) - (kv(b)?.txPerSec ?? 0))[0];
    const errs = sum(COMBOS.map((c) => sum(Object.values(kv(c)?.errors ?? {}))));
    const failed = COMBOS.filter((c) => kv(c)?.error).map(key);
    const part = (c: (typeof COMBOS)[number]) => {
      const k = kv(c);
      const l = lo(c);
      return `${key(c)} ${fmt(k?.txPerSec ?? NaN)} tx/s (p99 ${fmt(k?.latency.p99 ?? NaN)} ms) vs local ${fmt(l?.txPerSec ?? NaN)} tx/s`;
    };
    const finding =
      `On kvfs SQLite committed ${fmt(kv(worst)?.txPerSec ?? NaN)}–${fmt(kv(best)?.txPerSec ?? NaN)} tx/s across the four settings: best ${part(best)}` +
      `${best !== worst ? `, worst ${part(worst)}` : ''}` +
      `; ${errs === 0 && failed.length === 0 ? 'no transaction failed' : `${errs} transactions failed${failed.length ? `, runs that could not run: ${failed.join(', ')}` : ''}`}.`;
    const d = results['DELETE/FULL'];
    const w = results['WAL/NORMAL'];
    return {
      config: {
        maxTransactions: maxTx,
        maxSeconds: maxMs / 1000,
        warmupTransactions: 5,
        statement: 'INSERT INTO t (v) VALUES (100-byte blob), autocommit (one transaction each), one connection, better-sqlite3 in a worker process',
        mount: 'kvfs defaults (write-back on)',
        combinations: COMBOS.map(key),
      },
      results,
      headline: [
        { label: 'SQLite tx/s, DELETE+FULL', unit: 'tx/s', kvfs: d?.kvfs?.txPerSec ?? null, local: d?.local?.txPerSec ?? null, better: 'higher' },
        { label: 'SQLite tx/s, WAL+NORMAL', unit: 'tx/s', kvfs: w?.kvfs?.txPerSec ?? null, local: w?.local?.txPerSec ?? null, better: 'higher' },
      ],
      finding,
    };
  },

  render(r: ExperimentReport) {
    const res = r.results as Record<string, { kvfs?: Run; local?: Run }>;
    const groups = COMBOS.map((c) => ({
      label: `${c.journal} ${c.sync}`,
      values: [
        { name: 'kvfs', value: res[key(c)]?.kvfs?.txPerSec ?? null, color: COLORS.kvfs },
        { name: 'local disk', value: res[key(c)]?.local?.txPerSec ?? null, color: COLORS.local },
      ],
    }));
    const dashes = { FULL: false, NORMAL: true } as const;
    const series = COMBOS.flatMap((c) =>
      (['kvfs', 'local'] as const)
        .filter((w) => res[key(c)]?.[w]?.cdf.length)
        .map((w) => ({
          name: `${w === 'kvfs' ? 'kvfs' : 'local'} ${c.journal} ${c.sync}`,
          color: w === 'kvfs' ? (c.journal === 'WAL' ? '#a6361d' : COLORS.kvfs) : c.journal === 'WAL' ? '#0b5e47' : COLORS.local,
          dashed: dashes[c.sync],
          points: res[key(c)][w]!.cdf,
          step: true,
        })),
    );
    const rows = COMBOS.flatMap((c) =>
      (['kvfs', 'local'] as const).map((w) => {
        const x = res[key(c)]?.[w];
        return [
          `${c.journal} / ${c.sync}`,
          w === 'kvfs' ? 'kvfs' : 'local disk',
          x?.journalMode ?? null,
          x?.transactions ?? null,
          x?.txPerSec ?? null,
          x?.latency.p50 ?? null,
          x?.latency.p90 ?? null,
          x?.latency.p99 ?? null,
          x?.latency.p999 ?? null,
          x ? x.error ?? (Object.entries(x.errors).map(([k, v]) => `${k}: ${v}`).join(', ') || '0') : null,
        ];
      }),
    );
    return (
      figure(barChart({ groups, yLabel: 'transactions per second (log scale)', logY: true, unit: 'tx/s' }), 'Committed single-row transactions per second.') +
      figure(lineChart({ series, xLabel: 'latency of one transaction (ms, log scale)', yLabel: 'fraction of transactions', logX: true, yMin: 0, yMax: 1 }), 'CDF of transaction latency (dashed: synchronous NORMAL).') +
      table(['journal / synchronous', 'where', 'journal mode in effect', 'transactions', 'tx/s', 'p50 ms', 'p90 ms', 'p99 ms', 'p99.9 ms', 'errors'], rows)
    );
  },
};

// 4. Cross-mount staleness: a writer on mount A updates a file (open, write, close) with
// increasing values; on mount B one reader polls with open/read/close and another with stat.
// For each value: how long after A's close() returned B first saw it (or a later one); and
// close-to-open violations: reads that began after A's close() returned yet show an older value.

import * as path from 'node:path';
import type { KvfsMount } from '../env';
import { figure, table, zeroGood } from '../markup';
import { PALETTE, lineChart } from '../svg';
import type { Experiment, ExperimentReport } from '../types';
import { cdfPoints, distribution, fmt, sum, type Distribution } from '../util';

type Sample = [number, number, number];
type Update = [number, number, number];

interface PollResult {
  samples: number;
  delay: Distribution;
  cdf: Array<[number, number]>;
  /** Values B never showed while it polled. */
  unseen: number;
  /** Polls that began after at least one close() returned on A. */
  eligible: number;
  violations: number;
  /** How long after the missed close() returned the violating polls began. */
  violationAge: Distribution;
  errors: Record<string, number>;
}

interface ConfigResult {
  label: string;
  args: string[];
  where: 'kvfs' | 'local';
  updates: number;
  closeMs: Distribution;
  writerErrors: Record<string, number>;
  read?: PollResult;
  stat?: PollResult;
  error?: string;
}

function analyze(updates: Update[], samples: Sample[], errors: Record<string, number>): PollResult {
  const ups = [...updates].sort((a, b) => a[0] - b[0]);
  const byEnd = [...samples].sort((a, b) => a[1] - b[1]);
  const byStart = [...samples].sort((a, b) => a[0] - b[0]);
  const delays: number[] = [];
  let unseen = 0;
  let k = 0;
  // Values whose close() returned after the last poll began could not have been seen: not counted.
  const lastPollStart = byStart.length ? byStart[byStart.length - 1][0] : -Infinity;
  for (const [v, , tClose] of ups) {
    if (tClose >= lastPollStart) continue;
    while (k < byEnd.length && byEnd[k][2] < v) k++;
    if (k >= byEnd.length) {
      unseen++;
      continue;
    }
    delays.push(byEnd[k][1] - tClose);
  }
  // Close-to-open: a poll that began after close(v) returned must show v or later.
  const closeOf = new Map(ups.map(([v, , tClose]) => [v, tClose]));
  let eligible = 0;
  let violations = 0;
  const ages: number[] = [];
  let u = -1;
  for (const [t0, , v] of byStart) {
    while (u + 1 < ups.length && ups[u + 1][2] < t0) u++;
    if (u < 0) continue;
    eligible++;
    const expected = ups[u][0];
    if (v < expected) {
      violations++;
      const missed = closeOf.get(v + 1) ?? ups[u][2];
      ages.push(t0 - missed);
    }
  }
  return { samples: samples.length, delay: distribution(delays), cdf: cdfPoints(delays), unseen, eligible, violations, violationAge: distribution(ages), errors };
}

export const stalenessExperiment: Experiment = {
  name: 'staleness',
  title: 'Cross-mount staleness',
  question: 'After a writer on mount A closes a file, how soon does a reader on mount B see the new contents, and does close-to-open hold?',

  async run(ctx) {
    const { lab, quick } = ctx;
    const count = quick ? 15 : 100;
    const intervalMs = 100;
    const startDelayMs = 1000;
    const pauseMs = 2;
    const configs: Array<{ key: string; label: string; args: string[] }> = [
      { key: 'default', label: 'default: attr/entry cache 1 s', args: [] },
      { key: 'zero', label: 'attr/entry cache 0', args: ['--attr-cache', '0', '--entry-cache', '0'] },
      { key: 'long', label: 'attr/entry cache 30 s (etcd watches)', args: ['--attr-cache', '30', '--entry-cache', '30'] },
      { key: 'kernel', label: 'default + --kernel-cache 1', args: ['--kernel-cache', '1'] },
    ];
    const volume = await lab.newVolume('staleness');
    const results: Record<string, ConfigResult> = {};
    for (const c of [...configs, { key: 'local', label: 'local disk (one directory)', args: [] }]) {
      lab.check();
      const where = c.key === 'local' ? 'local' : 'kvfs';
      const tailMs = c.key === 'long' ? (quick ? 3000 : 8000) : quick ? 1500 : 3000;
      ctx.log(`${c.label}: ${count} updates every ${intervalMs} ms on A, polling on B`);
      let a: KvfsMount | undefined;
      let b: KvfsMount | undefined;
      const entry: ConfigResult = { label: c.label, args: c.args, where, updates: 0, closeMs: distribution([]), writerErrors: {} };
      results[c.key] = entry;
      try {
        let dirA: string;
        let dirB: string;
        if (where === 'kvfs') {
          a = await lab.mount(volume, `stale-${c.key}-A`, c.args);
          b = await lab.mount(volume, `stale-${c.key}-B`, c.args);
          dirA = a.mnt;
          dirB = b.mnt;
        } else {
          dirA = dirB = lab.localDir('staleness');
        }
        const name = `value-${c.key}.txt`;
        await lab.worker('writeText', { file: path.join(dirA, name), text: 'v=00000000\n.....' }, 60_000);
        const durationMs = startDelayMs + count * (intervalMs + 20) + tailMs;
        const work = async () => {
          const writer = lab.startWorker<{ updates: Update[]; errors: Record<string, number> }>(
            'staleWriter',
            { file: path.join(dirA, name), count, intervalMs, startDelayMs },
            durationMs + 120_000,
          );
          const reader = lab.startWorker<{ samples: Sample[]; errors: Record<string, number> }>(
            'staleReader',
            { file: path.join(dirB, name), mode: 'read', durationMs, pauseMs, untilValue: count, maxExtraMs: 30_000 },
            durationMs + 150_000,
          );
          const stat = lab.startWorker<{ samples: Sample[]; errors: Record<string, number> }>(
            'staleReader',
            { file: path.join(dirB, name), mode: 'stat', durationMs, pauseMs, untilValue: count, maxExtraMs: 30_000 },
            durationMs + 150_000,
          );
          return Promise.all([writer.done, reader.done, stat.done]);
        };
        const [w, r, s] = a && b ? await ctx.phase(c.label, [a, b], work) : await work();
        lab.check();
        if (!w.result) throw new Error(`writer: ${w.error}`);
        const updates = w.result.updates;
        entry.updates = updates.length;
        entry.closeMs = distribution(updates.map((x) => x[2] - x[1]));
        entry.writerErrors = w.result.errors;
        if (r.result) entry.read = analyze(updates, r.result.samples, r.result.errors);
        else entry.error = `reader: ${r.error}`;
        if (s.result) entry.stat = analyze(updates, s.result.samples, s.result.errors);
        else entry.error = `${entry.error ? `${entry.error}; ` : ''}stat poller: ${s.error}`;
        ctx.log(
          `  read: p50 ${fmt(entry.read?.delay.p50)} ms, p99 ${fmt(entry.read?.delay.p99)} ms, ${entry.read?.violations} violations of ${entry.read?.eligible}; ` +
            `stat: p99 ${fmt(entry.stat?.delay.p99)} ms, ${entry.stat?.violations} stale`,
        );
      } finally {
        await Promise.all([a?.unmount(), b?.unmount()]);
      }
    }
    const k = (key: string) => results[key];
    const describe = (key: string) => {
      const x = k(key);
      if (!x?.read) return `${x?.label ?? key}: no data (${x?.error ?? 'not run'})`;
      return (
        `${x.label}: read p50 ${fmt(x.read.delay.p50)} / p99 ${fmt(x.read.delay.p99)} ms, ${x.read.violations} close-to-open violations in ${x.read.eligible} reads` +
        `${x.read.unseen ? `, ${x.read.unseen} values never seen` : ''}; stat p99 ${fmt(x.stat?.delay.p99)} ms` +
        `${x.stat && x.stat.violations ? ` (${x.stat.violations} stale stats, up to ${fmt(x.stat.violationAge.max)} ms behind)` : ''}`
      );
    };
    // The daemon's own caches (invalidated by etcd watches) are meant to keep close-to-open;
    // the kernel cache is not, and the finding says plainly what it measured there.
    const daemonKeys = configs.map((c) => c.key).filter((key) => key !== 'kernel');
    const kvKeys = configs.map((c) => c.key);
    const held = daemonKeys.filter((key) => k(key)?.read && k(key).read!.violations === 0).map((key) => k(key).label);
    const broke = daemonKeys.filter((key) => (k(key)?.read?.violations ?? 0) > 0).map((key) => `${k(key).label} (${k(key).read!.violations} of ${k(key).read!.eligible} reads)`);
    const daemonReads = sum(daemonKeys.map((key) => k(key)?.read?.eligible ?? 0));
    const daemonSentence =
      broke.length === 0
        ? `With the daemon's caches (${held.join('; ')}), close-to-open held: 0 of ${daemonReads} reads on mount B that began after A's close() returned showed an older value`
        : `With the daemon's caches, close-to-open held with ${held.length ? held.join('; ') : 'no setting'} and was VIOLATED with ${broke.join('; ')}`;
    const kc = k('kernel')?.read;
    const kernelSentence = !kc
      ? ''
      : kc.violations > 0
        ? `--kernel-cache 1 breaks close-to-open across mounts: ${kc.violations} of ${kc.eligible} reads on B that began after A's close() returned showed an older value, up to ${fmt(kc.violationAge.max)} ms behind ` +
          `(B saw new values after p50 ${fmt(kc.delay.p50)} ms); keep --kernel-cache 0 when more than one mount uses a volume.`
        : `With --kernel-cache 1, close-to-open held in this run (0 of ${kc.eligible} reads stale), although the kernel may answer open() from its cache for up to 1 s.`;
    const range = (pick: (x: PollResult) => number) => {
      const v = daemonKeys.map((key) => k(key)?.read).filter((x): x is PollResult => Boolean(x)).map(pick);
      return v.length ? `${fmt(Math.min(...v))}–${fmt(Math.max(...v))}` : '–';
    };
    const lr = k('local')?.read;
    const finding =
      `${daemonSentence}; B saw each new value after p50 ${range((x) => x.delay.p50)} ms, p99 ${range((x) => x.delay.p99)} ms ` +
      `(local disk: p99 ${fmt(lr?.delay.p99)} ms, ${lr?.violations ?? '–'} violations). ${kernelSentence}`.trim();
    // Every setting's figures, for the section (the table has them too).
    const notes = kvKeys.map(describe);
    const d = k('default');
    const l = k('local');
    return {
      config: {
        updates: count,
        intervalMs,
        pollPauseMs: pauseMs,
        value: 'each update rewrites the file with the value in its first line and a size of 16 + value bytes (stat sees the value as the size)',
        writer: 'mount A: open(r+), write at offset 0, close; the delay is measured from the moment close() returned',
        readers: 'mount B: one process polls open/read/close, one polls stat; each poll is timed start and end',
        violation: 'a poll that began after close() of value v returned on A but shows a value below v',
        configs: Object.fromEntries([...configs.map((c) => [c.key, c.args.join(' ') || '(defaults)'])]),
      },
      results,
      headline: [
        { label: 'close-to-open violations (default caches)', unit: 'reads', kvfs: d?.read?.violations ?? null, local: l?.read?.violations ?? null, better: 'lower' },
        { label: 'open/read sees a close, p99 (default)', unit: 'ms', kvfs: d?.read?.delay.p99 ?? null, local: l?.read?.delay.p99 ?? null, better: 'lower' },
        { label: 'stat sees a close, p99 (default)', unit: 'ms', kvfs: d?.stat?.delay.p99 ?? null, local: l?.stat?.delay.p99 ?? null, better: 'lower' },
        { label: 'close-to-open violations, --kernel-cache 1', unit: 'reads', kvfs: k('kernel')?.read?.violations ?? null, local: l?.read?.violations ?? null, better: 'lower' },
      ],
      finding,
      notes,
    };
  },

  render(r: ExperimentReport) {
    const res = r.results as Record<string, ConfigResult>;
    const keys = Object.keys(res);
    const clamp = (pts: Array<[number, number]>) => pts.map(([x, y]) => [Math.max(0.1, x), y] as [number, number]);
    const series = (kind: 'read' | 'stat') =>
      keys
        .filter((key) => res[key][kind]?.cdf.length)
        .map((key, i) => ({ name: res[key].label, color: key === 'local' ? '#1b9e77' : PALETTE[[0, 1, 3, 4, 5][i % 5]], points: clamp(res[key][kind]!.cdf), step: true }));
    const rows = keys.flatMap((key) =>
      (['read', 'stat'] as const).map((kind) => {
        const x = res[key][kind];
        return [
          res[key].label,
          kind === 'read' ? 'open/read/close' : 'stat',
          x?.samples ?? null,
          x?.delay.p50 ?? null,
          x?.delay.p90 ?? null,
          x?.delay.p99 ?? null,
          x?.delay.max ?? null,
          x?.unseen ?? null,
          x?.eligible ?? null,
          kind === 'read' ? zeroGood(x?.violations) : x?.violations ?? null,
          x && x.violations ? x.violationAge.max : null,
          res[key].error ?? (x ? Object.entries(x.errors).map(([e, n]) => `${e}: ${n}`).join(', ') : ''),
        ];
      }),
    );
    return (
      figure(lineChart({ series: series('read'), xLabel: "delay from A's close() returning to B's open/read/close showing the value (ms, log; ≤0.1 drawn at 0.1)", yLabel: 'fraction of values', logX: true, yMin: 0, yMax: 1 }), 'open/read/close on B: CDF of the delay per value.') +
      figure(lineChart({ series: series('stat'), xLabel: "delay until B's stat shows the new size (ms, log)", yLabel: 'fraction of values', logX: true, yMin: 0, yMax: 1 }), 'stat on B: CDF of the delay per value.') +
      table(['setting', 'poll', 'polls', 'p50 ms', 'p90 ms', 'p99 ms', 'max ms', 'never seen', 'polls after a close', 'stale polls (read: violations)', 'most stale, ms', 'errors'], rows)
    );
  },
};

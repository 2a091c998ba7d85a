// 3. Durability window: with write-back on, a writer appends numbered records to two files, one
// fsynced every 10th record ("journal") and one never fsynced ("stream"), and logs, outside the
// mount, each record whose write() returned and each fsync() that returned. The daemon is
// SIGKILLed at a random moment; after a remount the files are read back and compared with the
// log. Baseline: the same writer on the local disk, where the writer itself is SIGKILLed (a
// process crash; the local disk's equivalent of the daemon dying would be a kernel crash, which
// the lab cannot cause).

import * as fs from 'node:fs';
import * as path from 'node:path';
import { figure, table, zeroGood } from '../markup';
import { COLORS, barChart, lineChart } from '../svg';
import type { Experiment, ExperimentReport, RunContext } from '../types';
import { fmt, fromRanges, maxOf, nowMs, sleep, sum } from '../util';

interface FileOutcome {
  /** Records whose write() returned (logged before the kill). */
  acked: number;
  /** Highest record covered by an fsync() that returned. */
  fsyncedUpTo: number;
  /** Valid records found after the crash. */
  survived: number;
  /** Acknowledged records covered by a returned fsync that are missing. */
  lostFsynced: number;
  /** Acknowledged records not covered by an fsync that are missing. */
  lostUnfsynced: number;
  lastSurviving: number;
  /** Whether the surviving records are exactly 1..lastSurviving. */
  prefix: boolean;
  /** Acknowledged records after the last surviving one. */
  windowRecords: number;
  /** Time from the acknowledgement of the oldest lost record (the one after the last surviving one) to the kill. */
  windowMs: number;
  /** Records found that the log did not show as acknowledged (the write was under way). */
  presentUnacked: number;
  invalidRecords: number;
  zeroRecords: number;
  readError?: string;
}

interface Round {
  round: number;
  where: 'kvfs' | 'local';
  killAfterMs: number;
  /** Records per second the writer managed (journal). */
  rate: number;
  writerStoppedBy: string;
  journal: FileOutcome;
  stream: FileOutcome;
}

interface LogData {
  start: number;
  ackTimes: Record<'j' | 's', Map<number, number>>;
  fsynced: number;
  firstAckAt?: number;
}

function parseLog(file: string): LogData {
  const data: LogData = { start: NaN, ackTimes: { j: new Map(), s: new Map() }, fsynced: 0 };
  let text = '';
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return data;
  }
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    if (f[0] === 'S') data.start = Number(f[1]);
    else if (f[0] === 'A' && f.length === 4 && (f[1] === 'j' || f[1] === 's')) {
      data.ackTimes[f[1]].set(Number(f[2]), Number(f[3]));
      data.firstAckAt ??= Number(f[3]);
    } else if (f[0] === 'F' && f.length === 4) data.fsynced = Math.max(data.fsynced, Number(f[2]));
  }
  return data;
}

function outcome(
  acks: Map<number, number>,
  fsyncedUpTo: number,
  found: { valid: Array<[number, number]>; invalid: number; zero: number; error?: string },
  killAt: number,
  start: number,
): FileOutcome {
  const survivors = fromRanges(found.valid ?? []);
  const acked = maxOf(acks.keys());
  let lostFsynced = 0;
  let lostUnfsynced = 0;
  for (let s = 1; s <= acked; s++) {
    if (survivors.has(s)) continue;
    if (s <= fsyncedUpTo) lostFsynced++;
    else lostUnfsynced++;
  }
  const lastSurviving = maxOf(survivors);
  let presentUnacked = 0;
  for (const s of survivors) if (s > acked) presentUnacked++;
  // The window: from the acknowledgement of the oldest lost record (the one after the last
  // surviving one) to the kill.
  const firstLostAck = acks.get(lastSurviving + 1) ?? start;
  return {
    acked,
    fsyncedUpTo,
    survived: survivors.size,
    lostFsynced,
    lostUnfsynced,
    lastSurviving,
    prefix: survivors.size === lastSurviving,
    windowRecords: Math.max(0, acked - lastSurviving),
    windowMs: acked > lastSurviving ? Math.max(0, killAt - firstLostAck) : 0,
    presentUnacked,
    invalidRecords: found.invalid ?? 0,
    zeroRecords: found.zero ?? 0,
    ...(found.error ? { readError: found.error } : {}),
  };
}

async function waitForFirstAck(log: string, ms: number): Promise<void> {
  const end = nowMs() + ms;
  while (nowMs() < end) {
    try {
      if (/\nA /.test(fs.readFileSync(log, 'utf8').slice(0, 4096))) return;
    } catch {
      // not there yet
    }
    await sleep(20);
  }
}

async function round(ctx: RunContext, where: 'kvfs' | 'local', n: number, volume: string, killAfterMs: number, fsyncEvery: number): Promise<Round> {
  const { lab } = ctx;
  const logDir = lab.logDir(`durability-${where}-${n}`);
  const log = path.join(logDir, 'acks.log');
  const mount = where === 'kvfs' ? await lab.mount(volume, 'durability', ['--writeback', 'on', '--flush-interval', String(FLUSH_INTERVAL_MS / 1000)]) : undefined;
  const root = mount ? mount.mnt : lab.localDir('durability');
  const dir = path.join(root, `round-${n}`);
  let killAt = 0;
  let writerStoppedBy = '';
  let verify;
  try {
    if (mount) await ctx.resetMetrics([mount]);
    const writer = lab.startWorker<{ stoppedBy: string }>('durabilityWriter', { dir, log, fsyncEvery, maxMs: killAfterMs + 60_000 }, killAfterMs + 120_000);
    await waitForFirstAck(log, 30_000);
    const t0 = nowMs();
    await sleep(killAfterMs);
    lab.check();
    if (mount) {
      await ctx.recordMetrics(`round ${n}, until the kill`, [mount], nowMs() - t0);
      killAt = await mount.kill();
    } else {
      killAt = nowMs();
      writer.kill('SIGKILL');
    }
    const o = await writer.done;
    writerStoppedBy = o.result?.stoppedBy ?? (o.signal ? `writer ${o.signal}` : o.error ?? 'unknown');
  } finally {
    if (mount?.running) await mount.unmount();
  }
  // Read back: for kvfs through a fresh mount of the volume.
  const reader = where === 'kvfs' ? await lab.mount(volume, 'durability-verify') : undefined;
  try {
    const base = reader ? path.join(reader.mnt, `round-${n}`) : dir;
    type Found = { valid: Array<[number, number]>; invalid: number; zero: number; error?: string };
    const j = await lab.worker<Found>('readRecords', { file: path.join(base, 'journal.dat') }, 120_000);
    const s = await lab.worker<Found>('readRecords', { file: path.join(base, 'stream.dat') }, 120_000);
    verify = { j, s };
  } finally {
    if (reader) await reader.unmount();
  }
  const data = parseLog(log);
  const journal = outcome(data.ackTimes.j, data.fsynced, verify.j, killAt, data.start);
  const stream = outcome(data.ackTimes.s, 0, verify.s, killAt, data.start);
  const first = data.firstAckAt ?? data.start;
  const rate = journal.acked / Math.max(0.001, (killAt - first) / 1000);
  return { round: n, where, killAfterMs, rate, writerStoppedBy, journal, stream };
}

/** --flush-interval of the writer's mount (kvfs's default). */
const FLUSH_INTERVAL_MS = 5000;

export const durabilityExperiment: Experiment = {
  name: 'durability',
  title: 'Durability window',
  question: 'When the daemon is killed, which acknowledged writes are lost: fsynced ones, unfsynced ones, how many and how many milliseconds worth?',

  async run(ctx) {
    const { lab, quick } = ctx;
    const rounds = quick ? 3 : 8;
    const localRounds = quick ? 1 : 3;
    const fsyncEvery = 10;
    const killRange = quick ? [500, 7000] : [500, 7500];
    const volume = await lab.newVolume('durability');
    const all: Round[] = [];
    for (const [where, count] of [['kvfs', rounds], ['local', localRounds]] as const) {
      // Stratified: one random moment in each of `count` equal slices of the range, in random
      // order, so that the kills cover the whole range (before and after the flush interval).
      const slice = (killRange[1] - killRange[0]) / count;
      const moments = Array.from({ length: count }, (_, i) => Math.round(killRange[0] + (i + ctx.random()) * slice));
      for (let i = moments.length - 1; i > 0; i--) {
        const j = Math.floor(ctx.random() * (i + 1));
        [moments[i], moments[j]] = [moments[j], moments[i]];
      }
      for (let n = 1; n <= count; n++) {
        lab.check();
        const killAfterMs = moments[n - 1];
        ctx.log(`${where} round ${n}/${count}: kill the ${where === 'kvfs' ? 'daemon' : 'writer'} after ${fmt(killAfterMs / 1000)} s`);
        const r = await round(ctx, where, n, volume, killAfterMs, fsyncEvery);
        ctx.log(
          `  journal: ${r.journal.acked} acknowledged, fsynced up to ${r.journal.fsyncedUpTo}, lost ${r.journal.lostFsynced} fsynced + ${r.journal.lostUnfsynced} unfsynced; ` +
            `stream: lost ${r.stream.lostUnfsynced} of ${r.stream.acked} (${fmt(r.stream.windowMs)} ms)`,
        );
        all.push(r);
      }
    }
    const kv = all.filter((r) => r.where === 'kvfs');
    const lo = all.filter((r) => r.where === 'local');
    const agg = (rs: Round[]) => ({
      rounds: rs.length,
      fsyncedRecords: sum(rs.map((r) => r.journal.fsyncedUpTo)),
      lostFsynced: sum(rs.map((r) => r.journal.lostFsynced + r.stream.lostFsynced)),
      ackedUnfsyncedJournal: sum(rs.map((r) => Math.max(0, r.journal.acked - r.journal.fsyncedUpTo))),
      lostUnfsyncedJournal: sum(rs.map((r) => r.journal.lostUnfsynced)),
      maxJournalWindowRecords: Math.max(0, ...rs.map((r) => r.journal.windowRecords)),
      maxJournalWindowMs: Math.max(0, ...rs.map((r) => r.journal.windowMs)),
      ackedStream: sum(rs.map((r) => r.stream.acked)),
      lostStream: sum(rs.map((r) => r.stream.lostUnfsynced)),
      maxStreamWindowRecords: Math.max(0, ...rs.map((r) => r.stream.windowRecords)),
      maxStreamWindowMs: Math.max(0, ...rs.map((r) => r.stream.windowMs)),
      corruptRecords: sum(rs.map((r) => r.journal.invalidRecords + r.stream.invalidRecords)),
      nonPrefix: rs.filter((r) => !r.journal.prefix || !r.stream.prefix).length,
      readErrors: rs.filter((r) => r.journal.readError || r.stream.readError).length,
    });
    const K = agg(kv);
    const L = agg(lo);
    const finding =
      `Over ${K.rounds} daemon kills, ${K.lostFsynced} of ${K.fsyncedRecords} fsynced records were lost` +
      `${K.lostFsynced === 0 ? ' (fsync held every time)' : ' (fsync did NOT hold)'}; ` +
      `acknowledged but not yet fsynced: ${K.lostUnfsyncedJournal} of ${K.ackedUnfsyncedJournal} lost from the journal (window at most ${K.maxJournalWindowRecords} records / ${fmt(K.maxJournalWindowMs)} ms); ` +
      `the never-fsynced file lost ${K.lostStream} of ${K.ackedStream} acknowledged records (window up to ${fmt(K.maxStreamWindowMs)} ms of writes, ` +
      `${K.maxStreamWindowMs > FLUSH_INTERVAL_MS ? 'longer than' : 'within'} the ${FLUSH_INTERVAL_MS / 1000} s flush interval)` +
      `${K.corruptRecords ? `; ${K.corruptRecords} corrupt records` : '; no torn or corrupt records'}${K.nonPrefix ? `; ${K.nonPrefix} rounds left holes` : ''}. ` +
      `Local disk, writer killed: ${L.lostFsynced + L.lostUnfsyncedJournal + L.lostStream} acknowledged records lost in ${L.rounds} rounds.`;
    return {
      config: {
        rounds,
        localRounds,
        fsyncEvery,
        recordBytes: 32,
        killAfterMs: { from: killRange[0], to: killRange[1], distribution: 'one uniform random moment in each of `rounds` equal slices of the range, in random order (seeded: see seed)' },
        mount: `--writeback on --flush-interval ${FLUSH_INTERVAL_MS / 1000} (kvfs's defaults)`,
        files: { journal: `fsync after every ${fsyncEvery}th record`, stream: 'never fsynced (relies on the write-back flush)' },
        kill: 'kvfs: SIGKILL of the mount daemon, then a fresh mount reads the files; local: SIGKILL of the writer process',
        log: 'acknowledgements and returned fsyncs are logged by the writer to a file on the local disk, after each call returns',
      },
      results: { kvfs: K, local: L, rounds: all },
      headline: [
        { label: 'fsynced records lost (all kills)', unit: 'records', kvfs: K.lostFsynced, local: L.lostFsynced, better: 'lower' },
        { label: 'unfsynced window, fsync every 10 (max)', unit: 'ms', kvfs: K.maxJournalWindowMs, local: L.maxJournalWindowMs, better: 'lower' },
        { label: 'never-fsynced file: acked records lost', unit: 'records', kvfs: K.lostStream, local: L.lostStream, better: 'lower' },
      ],
      finding,
    };
  },

  render(r: ExperimentReport) {
    const res = r.results as { rounds: Round[] };
    const rounds = res.rounds ?? [];
    const groups = rounds.map((x) => ({
      label: `${x.where} #${x.round} (${fmt(x.killAfterMs / 1000)} s)`,
      values: [
        { name: 'fsynced records lost', value: x.journal.lostFsynced, color: COLORS.bad },
        { name: 'journal: unfsynced acked records lost', value: x.journal.lostUnfsynced, color: COLORS.kvfs },
        { name: 'stream (never fsynced): acked records lost', value: x.stream.lostUnfsynced, color: COLORS.kvfsOff },
      ],
    }));
    const scatter = [
      { name: 'journal (fsync every 10th)', color: COLORS.kvfs, dots: true, points: rounds.filter((x) => x.where === 'kvfs').map((x) => [x.killAfterMs / 1000, Math.max(0.01, x.journal.windowMs)] as [number, number]) },
      { name: 'stream (never fsynced)', color: COLORS.kvfsOff, dots: true, points: rounds.filter((x) => x.where === 'kvfs').map((x) => [x.killAfterMs / 1000, Math.max(0.01, x.stream.windowMs)] as [number, number]) },
    ];
    const rows = rounds.map((x) => [
      `${x.where} #${x.round}`,
      x.killAfterMs / 1000,
      Math.round(x.rate),
      x.journal.acked,
      x.journal.fsyncedUpTo,
      zeroGood(x.journal.lostFsynced),
      x.journal.lostUnfsynced,
      x.journal.windowMs,
      x.stream.acked,
      x.stream.lostUnfsynced,
      x.stream.windowMs,
      zeroGood(x.journal.invalidRecords + x.stream.invalidRecords),
      x.journal.prefix && x.stream.prefix ? 'yes' : 'no',
      x.writerStoppedBy,
    ]);
    return (
      figure(barChart({ groups, yLabel: 'records lost (log scale; 0 shows no bar)', logY: true, height: 260 }), 'Acknowledged records lost per kill. Red bars would be fsynced records lost.') +
      figure(
        lineChart({ series: scatter, xLabel: 'seconds after the first record when the daemon was killed', yLabel: 'window lost (ms, log)', logY: true, height: 220, xMin: 0 }),
        'Milliseconds of acknowledged writes lost per kill (0 drawn at 0.01). The write-back flush interval is 5 s.',
      ) +
      table(
        ['round', 'kill after s', 'records/s', 'journal acked', 'fsynced up to', 'fsynced lost', 'unfsynced lost', 'window ms', 'stream acked', 'stream lost', 'stream window ms', 'corrupt', 'prefix', 'writer stopped by'],
        rows,
      )
    );
  },
};

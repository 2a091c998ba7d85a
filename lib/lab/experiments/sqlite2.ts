// 6. SQLite on two hosts: two processes insert rows into one database concurrently, each through
// its own mount of the volume, with journal DELETE and WAL. Afterwards a fresh mount runs
// PRAGMA integrity_check and counts the rows each writer was told were committed. Control: both
// writers on one mount; and both in one local directory.

import * as path from 'node:path';
import type { KvfsMount } from '../env';
import { figure, table, zeroGood } from '../markup';
import { COLORS, barChart } from '../svg';
import type { Experiment, ExperimentReport } from '../types';
import { distribution, fromRanges, nowMs, sleep, sum } from '../util';

interface WriterResult {
  acked: Array<[number, number]>;
  attempted: number;
  errors: Record<string, number>;
  messages: string[];
  latencies: number[];
  elapsedMs: number;
  journalMode?: string;
}

interface CheckResult {
  openError?: string;
  integrity?: string[];
  integrityError?: string;
  rows?: number;
  byWriter?: Record<string, Array<[number, number]>>;
  readError?: string;
  journalMode?: string;
}

interface ConfigResult {
  label: string;
  journal: 'DELETE' | 'WAL';
  where: Placement;
  attempted: number;
  acked: number;
  errors: Record<string, number>;
  messages: string[];
  txPerSec: number;
  latencyP50: number;
  latencyP99: number;
  integrityOk: boolean;
  integrity: string[];
  rowsFound: number | null;
  /** Rows a writer was told were committed that are not in the database afterwards. */
  lostRows: number | null;
  /** Rows in the database that no writer was told were committed. */
  unackedRows: number | null;
  /** The database could not be opened or its rows read afterwards (lostRows then counts every acknowledged row). */
  unreadable: boolean;
  checkError?: string;
  error?: string;
}

type Placement = 'one mount' | 'two mounts' | 'two mounts, --direct-io' | 'local disk';

/**
 * Where the two writers run. 'two mounts, --direct-io' (journal DELETE only: the kernel refuses
 * the shared mmap WAL needs on such a mount) bypasses each mount's page cache, which a
 * connection kept open otherwise reads stale pages from; the quick run leaves it out for time.
 */
function placements(journal: 'DELETE' | 'WAL', quick: boolean): Placement[] {
  return journal === 'DELETE' && !quick ? ['one mount', 'two mounts', 'two mounts, --direct-io', 'local disk'] : ['one mount', 'two mounts', 'local disk'];
}

export const sqlite2Experiment: Experiment = {
  name: 'sqlite2',
  title: 'SQLite on two hosts',
  question: 'What happens to one SQLite database written concurrently through two mounts (as from two hosts)?',

  async run(ctx) {
    const { lab, quick } = ctx;
    const rows = quick ? 20 : 200;
    const maxMs = quick ? 10_000 : 40_000;
    const busyTimeoutMs = 10_000;
    const volume = await lab.newVolume('sqlite2');
    const results: Record<string, ConfigResult> = {};
    for (const journal of ['DELETE', 'WAL'] as const) {
      for (const where of placements(journal, quick)) {
        lab.check();
        const key = `${journal}, ${where}`;
        ctx.log(`${key}: 2 writers × ${rows} single-row transactions`);
        let a: KvfsMount | undefined;
        let b: KvfsMount | undefined;
        const name = `db-${journal}-${where.replace(/[ ,]+/g, '-')}.sqlite`;
        let dirs: string[];
        let outcomes;
        try {
          if (where === 'local disk') {
            const d = lab.localDir('sqlite2');
            dirs = [d, d];
          } else {
            const args = where === 'two mounts, --direct-io' ? ['--direct-io'] : [];
            a = await lab.mount(volume, `sqlite2-A`, args);
            if (where !== 'one mount') b = await lab.mount(volume, `sqlite2-B`, args);
            dirs = [a.mnt, (b ?? a).mnt];
          }
          await lab.worker('sqliteInit', { db: path.join(dirs[0], name), journal, sync: 'FULL' }, 60_000);
          if (b) await sleep(1200); // past B's caches: both see the created database
          const work = async () => {
            const startAt = nowMs() + 800;
            const hs = dirs.map((d, i) =>
              lab.startWorker<WriterResult>('sqliteWriter', { db: path.join(d, name), writer: i + 1, rows, maxMs, sync: 'FULL', busyTimeoutMs, startAt }, maxMs + busyTimeoutMs + 120_000),
            );
            return Promise.all(hs.map((h) => h.done));
          };
          const mounts = [a, b].filter((m): m is KvfsMount => m !== undefined);
          outcomes = mounts.length ? await ctx.phase(key, mounts, work) : await work();
        } finally {
          await Promise.all([a?.unmount(), b?.unmount()]);
        }
        lab.check();
        // Check what was committed: for kvfs through a fresh mount.
        const verifier = where === 'local disk' ? undefined : await lab.mount(volume, 'sqlite2-verify');
        let check: CheckResult;
        try {
          check = await lab
            .worker<CheckResult>('sqliteCheck', { db: path.join(verifier ? verifier.mnt : dirs[0], name) }, 120_000)
            .catch((err: Error) => ({ openError: err.message }));
        } finally {
          await verifier?.unmount();
        }
        const writers = outcomes.map((o) => o.result);
        const failed = outcomes.filter((o) => !o.result).map((o) => o.error ?? 'failed');
        let lost: number | null = null;
        let unacked: number | null = null;
        const acked = sum(writers.map((w) => (w ? fromRanges(w.acked).size : 0)));
        // A database that cannot be opened or read gives none of its acknowledged rows back.
        const unreadable = !check.byWriter;
        if (unreadable) lost = acked;
        if (check.byWriter) {
          lost = 0;
          unacked = 0;
          writers.forEach((w, i) => {
            if (!w) return;
            const found = fromRanges(check.byWriter?.[String(i + 1)] ?? []);
            const acked = fromRanges(w.acked);
            for (const s of acked) if (!found.has(s)) lost!++;
            for (const s of found) if (!acked.has(s)) unacked!++;
          });
        }
        const errors: Record<string, number> = {};
        for (const w of writers) for (const [e, n] of Object.entries(w?.errors ?? {})) errors[e] = (errors[e] ?? 0) + n;
        const lat = distribution(writers.flatMap((w) => w?.latencies ?? []));
        const elapsed = Math.max(1, ...writers.map((w) => w?.elapsedMs ?? 0));
        const integrity = check.integrity ?? [];
        results[key] = {
          label: key,
          journal,
          where,
          attempted: sum(writers.map((w) => w?.attempted ?? 0)),
          acked,
          errors,
          messages: writers.flatMap((w) => w?.messages ?? []).slice(0, 6),
          txPerSec: acked / (elapsed / 1000),
          latencyP50: lat.p50,
          latencyP99: lat.p99,
          integrityOk: integrity.length === 1 && integrity[0] === 'ok',
          integrity: check.integrity ?? [],
          rowsFound: check.rows ?? null,
          lostRows: lost,
          unackedRows: unacked,
          unreadable,
          ...(check.openError || check.integrityError || check.readError ? { checkError: check.openError ?? check.integrityError ?? check.readError } : {}),
          ...(failed.length ? { error: failed.join('; ') } : {}),
        };
        const x = results[key];
        ctx.log(`  ${x.acked}/${x.attempted} acknowledged, ${sum(Object.values(errors))} errors, integrity ${x.integrityOk ? 'ok' : x.checkError ?? x.integrity.slice(0, 2).join('; ')}, lost ${x.lostRows}`);
      }
    }
    const r = (j: string, w: string) => results[`${j}, ${w}`];
    const say = (x: ConfigResult | undefined) =>
      x
        ? `${x.integrityOk ? 'integrity ok' : `integrity_check ${x.checkError ? `could not run (${x.checkError.split(':')[0]})` : `FAILED (${x.integrity[0] ?? ''})`}`}, ` +
          `${x.acked} of ${x.attempted} transactions acknowledged, ` +
          `${x.unreadable ? `rows unreadable: all ${x.acked} acknowledged rows lost` : `${x.lostRows ?? '?'} of ${x.acked} acknowledged rows lost`}, ${sum(Object.values(x.errors))} errors seen by the writers` +
          `${x.error ? `; a writer process failed (${x.error.split(';')[0].replace(/ without a result.*/, '').slice(0, 80)})` : ''}`
        : 'not run';
    const finding =
      `Two mounts, DELETE journal: ${say(r('DELETE', 'two mounts'))}; WAL: ${say(r('WAL', 'two mounts'))}. ` +
      (r('DELETE', 'two mounts, --direct-io') ? `Two mounts with --direct-io, DELETE journal: ${say(r('DELETE', 'two mounts, --direct-io'))}. ` : '') +
      `Control on one mount: DELETE ${say(r('DELETE', 'one mount'))}; WAL ${say(r('WAL', 'one mount'))}. ` +
      `Local disk: DELETE ${say(r('DELETE', 'local disk'))}; WAL ${say(r('WAL', 'local disk'))}.`;
    const twoBad = (j: string) => {
      const x = r(j, 'two mounts');
      return x ? (x.integrityOk ? 0 : 1) : null;
    };
    return {
      config: {
        writers: 2,
        rowsPerWriter: rows,
        maxSeconds: maxMs / 1000,
        synchronous: 'FULL',
        busyTimeoutMs,
        statement: 'INSERT INTO t (writer, seq, payload) VALUES (?, ?, 200-byte blob), autocommit',
        placement: {
          'two mounts': 'writer 1 on mount A, writer 2 on mount B',
          'two mounts, --direct-io': 'the same, both mounts with --direct-io (no kernel page cache; DELETE only, full run only)',
          'one mount': 'both writers on mount A',
          'local disk': 'both in one local directory',
        },
        check: 'after unmounting, a fresh mount opens the database: PRAGMA integrity_check, and every acknowledged (writer, seq) is looked up',
      },
      results,
      headline: [
        { label: 'SQLite DELETE, 2 mounts: acked rows lost', unit: 'rows', kvfs: r('DELETE', 'two mounts')?.lostRows ?? null, local: r('DELETE', 'local disk')?.lostRows ?? null, better: 'lower' },
        ...(r('DELETE', 'two mounts, --direct-io')
          ? [{ label: 'SQLite DELETE, 2 mounts --direct-io: acked rows lost', unit: 'rows', kvfs: r('DELETE', 'two mounts, --direct-io').lostRows, local: r('DELETE', 'local disk')?.lostRows ?? null, better: 'lower' as const }]
          : []),
        { label: 'SQLite WAL, 2 mounts: acked rows lost', unit: 'rows', kvfs: r('WAL', 'two mounts')?.lostRows ?? null, local: r('WAL', 'local disk')?.lostRows ?? null, better: 'lower' },
        {
          label: 'integrity_check failures, 2 mounts (of 2)',
          unit: 'databases',
          kvfs: twoBad('DELETE') === null && twoBad('WAL') === null ? null : (twoBad('DELETE') ?? 0) + (twoBad('WAL') ?? 0),
          local: (['DELETE', 'WAL'] as const).filter((j) => r(j, 'local disk') && !r(j, 'local disk').integrityOk).length,
          better: 'lower',
        },
      ],
      finding,
    };
  },

  render(rep: ExperimentReport) {
    const res = rep.results as Record<string, ConfigResult>;
    const groups = (['DELETE', 'WAL'] as const).map((j) => ({
      label: `${j} journal`,
      values: (['one mount', 'two mounts', 'two mounts, --direct-io', 'local disk'] as const).filter((w) => w !== 'two mounts, --direct-io' || res[`${j}, ${w}`]).map((w) => {
        const x = res[`${j}, ${w}`];
        return {
          name: w === 'local disk' ? 'local disk' : `kvfs, ${w}`,
          value: x ? (x.acked ? (100 * (x.lostRows ?? x.acked)) / x.acked : 0) : null,
          color: w === 'local disk' ? COLORS.local : w === 'two mounts' ? COLORS.kvfs : COLORS.kvfsOff,
          note: x ? `${x.lostRows ?? '?'} lost${x.unreadable ? ' (unreadable)' : x.integrityOk ? '' : ', corrupt'}` : undefined,
        };
      }),
    }));
    const rows = Object.values(res).map((x) => [
      x.label,
      x.attempted,
      x.acked,
      x.error ?? (Object.entries(x.errors).map(([e, n]) => `${e}: ${n}`).join(', ') || '0'),
      x.txPerSec,
      x.latencyP99,
      x.integrityOk ? { text: 'ok', cls: 'good' } : { text: x.checkError ?? x.integrity.slice(0, 3).join('; '), cls: 'bad' },
      x.rowsFound,
      zeroGood(x.lostRows),
      x.unackedRows,
    ]);
    const msgs = Object.values(res)
      .filter((x) => x.messages.length)
      .map((x) => `<li><b>${x.label}</b>: ${x.messages.map((m) => m.replace(/[<>&]/g, '')).join(' · ')}</li>`)
      .join('');
    return (
      figure(barChart({ groups, yLabel: 'acknowledged rows lost (%)', height: 240 }), 'Rows each writer was told were committed but that are missing afterwards (a database that cannot be read counts all of them).') +
      table(['configuration', 'attempted', 'acknowledged', 'errors seen by the writers', 'tx/s', 'p99 ms', 'integrity_check', 'rows found', 'acked rows lost', 'rows not acked'], rows) +
      (msgs ? `<details><summary>first error messages</summary><ul>${msgs}</ul></details>` : '')
    );
  },
};

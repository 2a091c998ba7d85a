// 7. Backend stall: SQLite inserts (journal DELETE, synchronous FULL) run on a mount with
// --backend-timeout 2 while the lab SIGSTOPs Redis, and in a second run etcd, for a few seconds.
// Measured: the longest transaction, the errors the application saw, how soon it recovered after
// SIGCONT, and (after a remount) whether every acknowledged transaction is there.

import * as path from 'node:path';
import type { KvfsMount } from '../env';
import type { ServerProcess } from '../../testbed/servers';
import { figure, table, zeroGood } from '../markup';
import { COLORS, lineChart } from '../svg';
import type { Experiment, ExperimentReport } from '../types';
import { fmt, fromRanges, nowMs, sleep, sum } from '../util';

export class SkipExperiment extends Error {}

type Sample = [number, number, string];

interface TargetResult {
  label: string;
  paused: 'redis' | 'etcd' | 'none';
  stallMs: number;
  /** Seconds from the workload's first transaction. */
  pausedAtS: number | null;
  resumedAtS: number | null;
  transactions: number;
  acked: number;
  errors: Record<string, number>;
  longestOpMs: number;
  longestOpStartS: number;
  /** Transactions that completed while the server was paused. */
  ackedWhilePaused: number;
  /** From the pause to the first failed transaction's end. */
  firstErrorAfterPauseMs: number | null;
  /** From SIGCONT to the end of the first successful transaction that started after it. */
  recoveryMs: number | null;
  lostAcked: number | null;
  unackedPresent: number | null;
  integrityOk: boolean | null;
  integrity: string[];
  unmount: string;
  daemonMessages: string[];
  /** [seconds since start, latency ms, 1 = error] (thinned). */
  timeline: Array<[number, number, number]>;
  error?: string;
}

export const stallExperiment: Experiment = {
  name: 'stall',
  title: 'Backend stall',
  question: 'What does a transactional application see when Redis, then etcd, stops answering for a few seconds, and is anything acknowledged lost?',

  async run(ctx) {
    const { lab, quick } = ctx;
    if (!lab.ownServers || !lab.etcd || !lab.redis) {
      throw new SkipExperiment('needs servers the lab started itself (it pauses them with SIGSTOP); run without --meta/--data');
    }
    const warmMs = quick ? 1500 : 3000;
    const stallMs = quick ? 3000 : 6000;
    const afterMs = quick ? 2000 : 5000;
    const timeoutS = 2;
    const volume = await lab.newVolume('stall');
    const results: Record<string, TargetResult> = {};
    const targets: Array<{ key: string; server?: ServerProcess; label: string }> = [
      { key: 'redis', server: lab.redis, label: `Redis paused ${stallMs / 1000} s` },
      { key: 'etcd', server: lab.etcd, label: `etcd paused ${stallMs / 1000} s` },
      { key: 'local', label: 'local disk (nothing paused)' },
    ];
    for (const t of targets) {
      lab.check();
      ctx.log(`${t.label}: SQLite inserts (DELETE journal, synchronous FULL)${t.server ? `, --backend-timeout ${timeoutS}` : ''}`);
      let mount: KvfsMount | undefined;
      let pausedAt: number | null = null;
      let resumedAt: number | null = null;
      let unmount = '';
      let out;
      try {
        if (t.server) mount = await lab.mount(volume, `stall-${t.key}`, ['--backend-timeout', String(timeoutS)]);
        const file = path.join(mount ? mount.mnt : lab.localDir('stall'), `${t.key}-stall.sqlite`);
        await lab.worker('sqliteInit', { db: file, journal: 'DELETE', sync: 'FULL' }, 60_000);
        const total = warmMs + stallMs + afterMs;
        const work = async () => {
          const h = lab.startWorker<{ samples: Sample[]; acked: Array<[number, number]> }>('stallWorkload', { db: file, durationMs: total, journal: 'DELETE', sync: 'FULL' }, total + 120_000);
          if (t.server) {
            await sleep(warmMs + 300);
            pausedAt = nowMs();
            await t.server.pause();
            try {
              await sleep(stallMs);
            } finally {
              resumedAt = nowMs();
              await t.server.resume();
            }
          }
          return h.done;
        };
        const o = mount ? await ctx.phase(t.label, [mount], work) : await work();
        if (!o.result) throw new Error(`workload: ${o.error}`);
        out = { file, ...o.result };
      } finally {
        if (mount) {
          const u = await mount.unmount();
          unmount = u.clean ? 'clean' : u.detail;
        }
      }
      lab.check();
      const verifier = t.server ? await lab.mount(volume, 'stall-verify') : undefined;
      let check: { integrity?: string[]; byWriter?: Record<string, Array<[number, number]>>; openError?: string; readError?: string };
      try {
        const file = verifier ? path.join(verifier.mnt, path.basename(out.file)) : out.file;
        check = await lab.worker<typeof check>('sqliteCheck', { db: file }, 120_000).catch((err: Error) => ({ openError: err.message }));
      } finally {
        await verifier?.unmount();
      }
      const samples = out.samples;
      const start = samples.length ? samples[0][0] : 0;
      const rel = (t: number) => (t - start) / 1000;
      const errs: Record<string, number> = {};
      for (const s of samples) if (s[2]) errs[s[2]] = (errs[s[2]] ?? 0) + 1;
      let longest = 0;
      let longestStart = 0;
      for (const s of samples) {
        if (s[1] - s[0] > longest) {
          longest = s[1] - s[0];
          longestStart = s[0];
        }
      }
      const pa = pausedAt as number | null;
      const re = resumedAt as number | null;
      const firstErr = pa === null ? undefined : samples.find((s) => s[2] && s[1] >= pa);
      const recovered = re === null ? undefined : samples.find((s) => !s[2] && s[0] >= re);
      const ackedSet = fromRanges(out.acked);
      const found = check.byWriter ? fromRanges(check.byWriter['1'] ?? []) : undefined;
      let lost: number | null = null;
      let unacked: number | null = null;
      if (found) {
        lost = 0;
        unacked = 0;
        for (const s of ackedSet) if (!found.has(s)) lost++;
        for (const s of found) if (!ackedSet.has(s)) unacked++;
      }
      const step = Math.max(1, Math.ceil(samples.length / 2500));
      const timeline: Array<[number, number, number]> = [];
      for (let i = 0; i < samples.length; i++) {
        if (i % step === 0 || samples[i][2] || samples[i][1] - samples[i][0] > 100) timeline.push([rel(samples[i][0]), samples[i][1] - samples[i][0], samples[i][2] ? 1 : 0]);
      }
      results[t.key] = {
        label: t.label,
        paused: (t.server?.name ?? 'none') as TargetResult['paused'],
        stallMs: t.server ? stallMs : 0,
        pausedAtS: pa === null ? null : rel(pa),
        resumedAtS: re === null ? null : rel(re),
        transactions: samples.length,
        acked: ackedSet.size,
        errors: errs,
        longestOpMs: longest,
        longestOpStartS: rel(longestStart),
        ackedWhilePaused: pa === null || re === null ? 0 : samples.filter((s) => !s[2] && s[1] >= pa && s[1] <= re).length,
        firstErrorAfterPauseMs: firstErr && pa !== null ? firstErr[1] - pa : null,
        recoveryMs: recovered && re !== null ? recovered[1] - re : null,
        lostAcked: lost,
        unackedPresent: unacked,
        integrityOk: check.integrity ? check.integrity.length === 1 && check.integrity[0] === 'ok' : null,
        integrity: check.integrity ?? [check.openError ?? check.readError ?? 'not checked'],
        unmount: t.server ? unmount : 'n/a',
        daemonMessages: mount ? mount.complaints().slice(-8) : [],
        timeline,
      };
      const x = results[t.key];
      ctx.log(`  longest ${fmt(x.longestOpMs)} ms, ${sum(Object.values(errs))} errors, lost ${x.lostAcked}, integrity ${x.integrityOk}`);
    }
    const say = (key: string) => {
      const x = results[key];
      if (!x) return `${key}: not run`;
      const nErr = sum(Object.values(x.errors));
      return (
        `${x.label}: longest transaction ${fmt(x.longestOpMs)} ms, ${nErr} failed${nErr ? ` (${Object.keys(x.errors).join(', ')})` : ''}, ` +
        `recovered ${x.recoveryMs === null ? 'never (within the run)' : `${fmt(x.recoveryMs)} ms after SIGCONT`}, ` +
        `${x.lostAcked ?? '?'} of ${x.acked} acknowledged lost, integrity ${x.integrityOk === null ? 'unchecked' : x.integrityOk ? 'ok' : 'FAILED'}`
      );
    };
    const finding = `${say('redis')}. ${say('etcd')}. Local disk: longest ${fmt(results.local?.longestOpMs)} ms.`;
    return {
      config: {
        backendTimeoutS: timeoutS,
        stallMs,
        warmMs,
        afterMs,
        workload: 'one process, SQLite INSERT autocommit, journal DELETE, synchronous FULL, back to back; on an error the connection is reopened',
        pause: 'SIGSTOP of the server process (it keeps its sockets open and answers nothing), SIGCONT after the stall',
        check: 'after unmounting, a fresh mount runs PRAGMA integrity_check and looks up every acknowledged row',
      },
      results,
      headline: [
        { label: 'longest transaction, Redis paused', unit: 'ms', kvfs: results.redis?.longestOpMs ?? null, local: results.local?.longestOpMs ?? null, better: 'lower' },
        { label: 'longest transaction, etcd paused', unit: 'ms', kvfs: results.etcd?.longestOpMs ?? null, local: results.local?.longestOpMs ?? null, better: 'lower' },
        {
          label: 'acknowledged transactions lost (both stalls)',
          unit: 'tx',
          kvfs: results.redis?.lostAcked === null || results.etcd?.lostAcked === null ? null : (results.redis?.lostAcked ?? 0) + (results.etcd?.lostAcked ?? 0),
          local: results.local?.lostAcked ?? null,
          better: 'lower',
        },
      ],
      finding,
    };
  },

  render(rep: ExperimentReport) {
    const res = rep.results as Record<string, TargetResult>;
    let html = '';
    for (const key of ['redis', 'etcd', 'local']) {
      const x = res[key];
      if (!x) continue;
      const ok = x.timeline.filter((p) => !p[2]).map((p) => [p[0], Math.max(0.01, p[1])] as [number, number]);
      const bad = x.timeline.filter((p) => p[2]).map((p) => [p[0], Math.max(0.01, p[1])] as [number, number]);
      const bands = x.pausedAtS !== null && x.resumedAtS !== null ? [{ from: x.pausedAtS, to: x.resumedAtS, label: `${x.paused} paused` }] : [];
      html += figure(
        lineChart({
          series: [
            { name: 'committed', color: key === 'local' ? COLORS.local : COLORS.kvfs, points: ok, dots: true },
            { name: 'failed', color: COLORS.bad, points: bad, dots: true },
          ],
          bands,
          xLabel: 'seconds since the first transaction (each dot: one transaction, at its start)',
          yLabel: 'transaction latency (ms, log)',
          logY: true,
          height: 220,
          xMin: 0,
        }),
        x.label,
      );
    }
    const rows = Object.values(res).map((x) => [
      x.label,
      x.transactions,
      x.acked,
      Object.entries(x.errors).map(([e, n]) => `${e}: ${n}`).join(', ') || '0',
      x.longestOpMs,
      x.ackedWhilePaused,
      x.firstErrorAfterPauseMs,
      x.recoveryMs,
      zeroGood(x.lostAcked),
      x.unackedPresent,
      x.integrityOk === null ? x.integrity.join('; ') : x.integrityOk ? { text: 'ok', cls: 'good' } : { text: x.integrity.slice(0, 3).join('; '), cls: 'bad' },
      x.unmount,
    ]);
    const msgs = Object.values(res)
      .filter((x) => x.daemonMessages.length)
      .map((x) => `<li><b>${x.label}</b>:<pre>${x.daemonMessages.join('\n').replace(/[<>&]/g, '')}</pre></li>`)
      .join('');
    return (
      html +
      table(['run', 'transactions', 'committed', 'errors seen by SQLite', 'longest ms', 'committed while paused', 'first error after pause, ms', 'recovery after SIGCONT, ms', 'acked lost', 'present, not acked', 'integrity_check', 'unmount'], rows) +
      (msgs ? `<details><summary>daemon messages</summary><ul>${msgs}</ul></details>` : '')
    );
  },
};

// 5. Locks across mounts: worker processes increment a shared counter file, each increment under
// an exclusive flock() or fcntl() lock (python3's fcntl module), reading and rewriting the counter
// with open/read/close and open/write/close while holding the lock. With the workers split over
// two mounts, and as the control all on one mount; and on the local disk.

import * as path from 'node:path';
import type { KvfsMount } from '../env';
import { figure, table, zeroGood } from '../markup';
import { COLORS, barChart } from '../svg';
import type { Experiment, ExperimentReport } from '../types';
import { distribution, fmt, nowMs, sleep, sum, type Distribution } from '../util';

const SCRIPT = String.raw`
import fcntl, json, os, sys, time
a = json.loads(sys.argv[1])
kind = a['kind']
n = a['iterations']
while time.monotonic() * 1000 < a['startAt']:
    time.sleep(0.001)
lock_fd = os.open(a['lock'], os.O_RDWR | os.O_CREAT, 0o644)
def lock():
    if kind == 'flock':
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
    else:
        fcntl.lockf(lock_fd, fcntl.LOCK_EX)
def unlock():
    if kind == 'flock':
        fcntl.flock(lock_fd, fcntl.LOCK_UN)
    else:
        fcntl.lockf(lock_fd, fcntl.LOCK_UN)
errors = {}
messages = []
done = 0
waits = []
t_start = time.monotonic()
for i in range(n):
    if (time.monotonic() - t_start) * 1000 > a['maxMs']:
        break
    try:
        t0 = time.monotonic()
        lock()
        waits.append(round((time.monotonic() - t0) * 1000, 3))
        try:
            with open(a['counter'], 'r') as f:
                text = f.read()
            v = int(text.split()[0]) if text.strip() else 0
            with open(a['counter'], 'r+') as f:
                f.write(str(v + 1).ljust(19) + '\n')
        finally:
            unlock()
        done += 1
    except Exception as e:
        key = type(e).__name__ + (':' + os.strerror(e.errno) if getattr(e, 'errno', None) else '')
        errors[key] = errors.get(key, 0) + 1
        if len(messages) < 5:
            messages.append(str(e))
        if sum(errors.values()) > 50:
            break
os.close(lock_fd)
print(json.dumps({'ok': True, 'result': {'done': done, 'errors': errors, 'messages': messages, 'waits': waits, 'elapsedMs': (time.monotonic() - t_start) * 1000}}))
`;

interface WorkerResult {
  done: number;
  errors: Record<string, number>;
  messages: string[];
  waits: number[];
  elapsedMs: number;
}

interface ConfigResult {
  label: string;
  kind: 'flock' | 'fcntl';
  where: 'one mount' | 'two mounts' | 'local disk';
  workers: number;
  /** Increments the workers completed (each under the lock). */
  increments: number;
  /** The counter read afterwards, through each mount. */
  counter: number | null;
  counterOtherMount?: number | null;
  lost: number | null;
  lostPercent: number | null;
  incrementsPerSec: number;
  lockWait: Distribution;
  errors: Record<string, number>;
  messages: string[];
  error?: string;
}

export const locksExperiment: Experiment = {
  name: 'locks',
  title: 'Locks across mounts',
  question: 'Do flock() and fcntl() locks keep processes on two mounts from losing increments of a shared counter?',

  async run(ctx) {
    const { lab, quick } = ctx;
    const iterations = quick ? 20 : 150;
    // Each worker also stops after maxMs (lock changes are metadata transactions: slow under load).
    const maxMs = quick ? 10_000 : 30_000;
    const perMount = 2;
    const volume = await lab.newVolume('locks');
    const a = await lab.mount(volume, 'locks-A');
    const b = await lab.mount(volume, 'locks-B');
    const localDir = lab.localDir('locks');
    const results: Record<string, ConfigResult> = {};
    try {
      for (const kind of ['flock', 'fcntl'] as const) {
        for (const where of ['one mount', 'two mounts', 'local disk'] as const) {
          lab.check();
          const key = `${kind}, ${where}`;
          const workers = perMount * 2;
          ctx.log(`${key}: ${workers} processes × ${iterations} increments (at most ${maxMs / 1000} s)`);
          const dirs: string[] =
            where === 'local disk' ? Array(workers).fill(localDir) : where === 'one mount' ? Array(workers).fill(a.mnt) : [a.mnt, a.mnt, b.mnt, b.mnt];
          const name = `counter-${kind}-${where.replace(/ /g, '-')}`;
          const first = dirs[0];
          await lab.worker('writeText', { file: path.join(first, name), text: `${'0'.padEnd(19)}\n` }, 60_000);
          await lab.worker('writeText', { file: path.join(first, `${name}.lock`), text: '' }, 60_000);
          if (where === 'two mounts') await sleep(1200); // let B's caches expire: both start from the same file
          const work = async () => {
            const startAt = nowMs() + 800;
            const handles = dirs.map((d) =>
              lab.startPython<WorkerResult>(SCRIPT, { kind, iterations, maxMs, startAt, lock: path.join(d, `${name}.lock`), counter: path.join(d, name) }, 600_000),
            );
            return Promise.all(handles.map((h) => h.done));
          };
          const mounts: KvfsMount[] = where === 'local disk' ? [] : where === 'one mount' ? [a] : [a, b];
          const outcomes = mounts.length ? await ctx.phase(key, mounts, work) : await work();
          lab.check();
          const ok = outcomes.filter((o) => o.result).map((o) => o.result!);
          const failed = outcomes.filter((o) => !o.result).map((o) => o.error ?? 'failed');
          if (where === 'two mounts') await sleep(1200); // past the attribute caches, so both reads below are fresh
          const read = async (dir: string) => {
            const t = await lab.worker<{ text: string }>('readText', { file: path.join(dir, name) }, 60_000).catch(() => undefined);
            const v = t ? Number.parseInt(t.text.trim(), 10) : NaN;
            return Number.isFinite(v) ? v : null;
          };
          const counter = await read(dirs[0]);
          const other = where === 'two mounts' ? await read(b.mnt) : undefined;
          const increments = sum(ok.map((r) => r.done));
          const elapsed = Math.max(1, ...ok.map((r) => r.elapsedMs));
          const lost = counter === null ? null : increments - counter;
          const errors: Record<string, number> = {};
          for (const r of ok) for (const [e, n] of Object.entries(r.errors)) errors[e] = (errors[e] ?? 0) + n;
          results[key] = {
            label: key,
            kind,
            where,
            workers,
            increments,
            counter,
            ...(other !== undefined ? { counterOtherMount: other } : {}),
            lost,
            lostPercent: lost === null || increments === 0 ? null : (100 * lost) / increments,
            incrementsPerSec: increments / (elapsed / 1000),
            lockWait: distribution(ok.flatMap((r) => r.waits)),
            errors,
            messages: ok.flatMap((r) => r.messages).slice(0, 5),
            ...(failed.length ? { error: failed.join('; ') } : {}),
          };
          ctx.log(`  ${increments} increments, counter ${counter}, lost ${lost}`);
        }
      }
    } finally {
      await Promise.all([a.unmount(), b.unmount()]);
    }
    const r = (kind: string, where: string) => results[`${kind}, ${where}`];
    const say = (x: ConfigResult | undefined) => (x ? `${x.lost ?? '?'} of ${x.increments} (${fmt(x.lostPercent ?? NaN)} %)` : 'not run');
    const finding =
      `Across two mounts, flock lost ${say(r('flock', 'two mounts'))} increments and fcntl lost ${say(r('fcntl', 'two mounts'))}` +
      `${(r('flock', 'two mounts')?.lost ?? 0) > 0 || (r('fcntl', 'two mounts')?.lost ?? 0) > 0 ? ' — the locks do not reach across mounts' : ' — no increment was lost'}; ` +
      `on one mount (control) flock lost ${say(r('flock', 'one mount'))} and fcntl ${say(r('fcntl', 'one mount'))}; ` +
      `local disk: flock ${say(r('flock', 'local disk'))}, fcntl ${say(r('fcntl', 'local disk'))}.`;
    return {
      config: {
        workersPerConfig: perMount * 2,
        iterationsPerWorker: iterations,
        maxSecondsPerWorker: maxMs / 1000,
        workers: 'python3 processes; on two mounts two on A and two on B; the control puts all four on A',
        increment: 'lock (flock LOCK_EX or fcntl.lockf LOCK_EX on a separate lock file) → open/read/close the counter → open/write/close it (+1) → unlock',
        mount: 'kvfs defaults',
      },
      results,
      headline: [
        { label: 'flock: increments lost, 2 mounts', unit: 'increments', kvfs: r('flock', 'two mounts')?.lost ?? null, local: r('flock', 'local disk')?.lost ?? null, better: 'lower' },
        { label: 'fcntl: increments lost, 2 mounts', unit: 'increments', kvfs: r('fcntl', 'two mounts')?.lost ?? null, local: r('fcntl', 'local disk')?.lost ?? null, better: 'lower' },
        { label: 'flock: increments lost, 1 mount (control)', unit: 'increments', kvfs: r('flock', 'one mount')?.lost ?? null, local: r('flock', 'local disk')?.lost ?? null, better: 'lower' },
      ],
      finding,
    };
  },

  render(rep: ExperimentReport) {
    const res = rep.results as Record<string, ConfigResult>;
    const groups = (['flock', 'fcntl'] as const).map((kind) => ({
      label: kind,
      values: (['one mount', 'two mounts', 'local disk'] as const).map((where) => ({
        name: where === 'local disk' ? 'local disk' : `kvfs, ${where}`,
        value: res[`${kind}, ${where}`]?.lostPercent ?? null,
        color: where === 'local disk' ? COLORS.local : where === 'one mount' ? COLORS.kvfsOff : COLORS.kvfs,
        note: res[`${kind}, ${where}`] ? `${res[`${kind}, ${where}`].lost ?? '?'} lost` : undefined,
      })),
    }));
    const rows = Object.values(res).map((x) => [
      x.label,
      x.workers,
      x.increments,
      x.counter,
      x.counterOtherMount ?? null,
      zeroGood(x.lost),
      x.lostPercent,
      x.incrementsPerSec,
      x.lockWait.p50,
      x.lockWait.p99,
      x.error ?? (Object.entries(x.errors).map(([e, n]) => `${e}: ${n}`).join(', ') || '0'),
    ]);
    return (
      figure(barChart({ groups, yLabel: 'increments lost (% of completed)', height: 240 }), 'Lost increments: the counter should equal the number of increments the workers completed under the lock.') +
      table(['configuration', 'workers', 'increments done', 'counter (A)', 'counter (B)', 'lost', 'lost %', 'increments/s', 'lock wait p50 ms', 'p99 ms', 'errors'], rows)
    );
  },
};

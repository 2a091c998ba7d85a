import * as fs from 'node:fs';
import * as path from 'node:path';
import { UsageError } from '../../lib/errors';
import { BenchAborted } from '../../lib/bench/workloads';
import { formatReport, lastReport, Phase, PHASES, redactArgs, runBench } from '../../lib/bench/run';
import { parse, parseSize, str } from '../args';
import { BACKEND_HELP, BACKEND_OPTIONS, childBackendLaunch, resolveBackends } from '../backend-options';

export const help = `Usage: kvfs bench [--meta URL] [--data URL] [--size SIZE] [--json FILE] [--quick]

Measures kvfs on a fresh volume, and in the same run the ceilings it is measured
against, then prints each kvfs figure beside its ceiling, the ratio, and the
targets of issue 4 (PASS/MISS). Workloads, each on kvfs and on a no-op FUSE
filesystem (same binding and mount options, stores nothing, answers at once):
  1. sequential write of SIZE in 1 MiB writes, then fsync and close (MB/s)
  2. sequential read in 1 MiB reads, cold (just remounted) and warm (again) (MB/s)
  3. 4 KiB reads at random aligned offsets of that file (ops/s, p50, p99)
  4. small files in one directory: create + write 4 KiB + close, read back,
     stat, unlink (ops/s each); then the same creates from 8 threads at once,
     each in its own directory (the concurrency of the raw txn ceiling)
  5. append 4 KiB + fsync (p50, p99)
and the cost of encryption at rest: workloads 1 and 2 also on a second fresh
volume made with 'kvfs format --encrypt' (a random key for the run), printed
beside the plain figures, and the AES-256-GCM seal/open rate of block-sized
buffers in this process (the daemon's own code, one core);
and the raw backends through the same client code kvfs uses, without kvfs:
block put/get of block-sized values, and read-modify-write metadata
transactions one at a time (latency) and 64 concurrent (throughput).
Each measurement is repeated (3 times, once with --quick) and the medians are
reported. Progress goes to stderr, the table to stdout.
The header gives the rate at which the machine hands out memory it has never used;
below 1000 MB/s (seen on newly booted VMs) a note says that write figures are low
until the machine's memory has been used once: run again later.
It also gives how long one thread takes to wake another and be woken back (every
FUSE request crosses threads several times); above 40 us (VMs whose idle CPUs halt
instead of polling) a note says that per-request rates are low on kvfs and the
no-op alike, and ratios against the no-op higher than on a faster machine.

The volumes are formatted for the run and deleted afterwards; both filesystems
are mounted by child processes (kvfs with 'kvfs mount') in a temp dir and always
unmounted, also on errors and Ctrl-C. Needs root or /dev/fuse access, like mount.

Options:
  --meta URL        where to make the fresh volume: omitted, an embedded volume
                    in a temp dir; file:///ABSOLUTE/DIR/NAME, an embedded volume
                    NAME-bench-... in DIR (to measure that disk);
                    etcd://HOST:PORT[,HOST:PORT...]/NAME, a volume NAME-bench-...
                    on that etcd (needs --data). A scratch namespace NAME-bench-...-raw
                    is used for the raw measurements.
  --data URL        where its blocks go: redis[s]://[USER@]HOST:PORT[/DB]
                    (needed with etcd). Passwords and TLS: the options and
                    variables below, as for every command; the daemons the
                    bench starts get passwords in their environment
  --size SIZE       size of the file of workloads 1-3 (default 1G; 64M with --quick)
  --json FILE       also write every number (each repetition and the medians),
                    the machine and the command to FILE
  --quick           a small run (64M, 1 repetition, fewer files and operations)
                    that finishes in well under a minute
  --files N         small files per repetition (default 1000; 100 with --quick)
  --appends N       appends per repetition (default 300; 30 with --quick)
  --reps N          repetitions of each measurement (default 3; 1 with --quick)
  --phases LIST     only these, comma-separated, of: ${PHASES.join(', ')}
                    (default all; read and random write the file unmeasured
                    when write is left out; encrypted is workloads 1 and 2 on
                    the encrypted volume and the AES-256-GCM rate)
  --profile DIR     run the kvfs daemon under 'node --cpu-prof', one
                    .cpuprofile per mount in DIR (open in Chrome DevTools); the
                    daemon is remounted before each cold read
  -h, --help        show this help

${BACKEND_HELP.replace(/\n  --key-file FILE[^]*?chmod 600 FILE\n/, '\n')}

The encrypted volume always uses a key made for the run (in its temp dir,
removed with it); --key-file, KVFS_KEY_FILE and KVFS_KEY are not used.`;

const OPTIONS = {
  ...BACKEND_OPTIONS,
  meta: { type: 'string' },
  data: { type: 'string' },
  size: { type: 'string' },
  json: { type: 'string' },
  quick: { type: 'boolean' },
  reps: { type: 'string' },
  files: { type: 'string' },
  appends: { type: 'string' },
  phases: { type: 'string' },
  profile: { type: 'string' },
} as const;

export async function benchCommand(argv: string[]): Promise<number> {
  const { values } = parse('bench', argv, OPTIONS, { min: 0, max: 0, names: '' });
  if (values.help) return console.log(help), 0;
  const quick = Boolean(values.quick);
  const size = parseSize(str(values.size) ?? (quick ? '64M' : '1G'), '--size');
  if (size < 1024 * 1024) throw new UsageError(`--size must be at least 1M, not ${str(values.size)}`);
  if (size % 4096 !== 0) throw new UsageError('--size must be a multiple of 4K');
  const count = (option: string, fallback: number, max: number): number => {
    const text = str(values[option]) ?? String(fallback);
    if (!/^\d+$/.test(text) || Number(text) < 1 || Number(text) > max) throw new UsageError(`--${option} must be a whole number from 1 to ${max}, not '${text}'`);
    return Number(text);
  };
  const reps = count('reps', quick ? 1 : 3, 100);
  const files = count('files', quick ? 100 : 1000, 1_000_000);
  const appends = count('appends', quick ? 30 : 300, 1_000_000);
  let phases: Phase[] = [...PHASES];
  const phaseText = str(values.phases);
  if (phaseText !== undefined) {
    phases = [];
    for (const p of phaseText.split(',').map((s) => s.trim()).filter(Boolean)) {
      if (!(PHASES as readonly string[]).includes(p)) throw new UsageError(`unknown phase '${p}' in --phases; use some of: ${PHASES.join(', ')}`);
      phases.push(p as Phase);
    }
    if (phases.length === 0) throw new UsageError(`--phases needs at least one of: ${PHASES.join(', ')}`);
  }
  const json = str(values.json);
  if (json !== undefined) {
    // Fail now, not after minutes of measuring.
    try {
      fs.accessSync(path.dirname(path.resolve(json)), fs.constants.W_OK);
      if (fs.existsSync(json)) fs.accessSync(json, fs.constants.W_OK);
    } catch (err) {
      throw new UsageError(`cannot write --json ${json}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  }
  if (!fs.existsSync('/dev/fuse')) {
    throw new UsageError('/dev/fuse is missing: load the fuse kernel module (modprobe fuse), or in a container pass --device /dev/fuse --cap-add SYS_ADMIN');
  }

  if (str(values['key-file']) !== undefined) {
    throw new UsageError('kvfs bench makes its own key for the encrypted volume it measures: leave out --key-file');
  }
  const backends = resolveBackends(values, { ...process.env, KVFS_KEY: undefined, KVFS_KEY_FILE: undefined });
  const child = childBackendLaunch(values, backends);

  const log = (line: string) => process.stderr.write(`${line}\n`);
  const write = () => {
    if (json !== undefined && lastReport) fs.writeFileSync(json, `${JSON.stringify(lastReport, null, 2)}\n`);
  };
  try {
    const report = await runBench({
      metaUrl: backends.metaUrl,
      dataUrl: backends.dataUrl,
      meta: backends.meta,
      data: { password: backends.data.password, passwordFrom: backends.data.passwordFrom, tls: backends.data.tls },
      childArgs: child.args,
      childEnv: child.env,
      size,
      quick,
      reps,
      smallFiles: files,
      appends,
      randomOps: quick ? 2000 : 20000,
      randomMs: quick ? 1000 : 5000,
      rawBlocks: quick ? 16 : 64,
      blockParallel: 4,
      rawTxns: quick ? 50 : 300,
      rawConcurrentTxns: quick ? 256 : 2000,
      cipherBlocks: quick ? 32 : 256,
      concurrency: 64,
      phases,
      profileDir: str(values.profile),
      command: redactArgs(['kvfs', 'bench', ...argv]),
      log,
    });
    write();
    console.log(formatReport(report));
    if (json !== undefined) log(`kvfs bench: wrote ${json}`);
    return 0;
  } catch (err) {
    write();
    if (err instanceof BenchAborted) {
      log('kvfs bench: interrupted; everything it started is stopped and removed');
      return 130;
    }
    throw err;
  }
}

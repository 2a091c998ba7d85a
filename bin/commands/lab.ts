import * as fs from 'node:fs';
import * as path from 'node:path';
import { UsageError } from '../../lib/errors';
import { LabAborted } from '../../lib/lab/env';
import { runLab, terminalSummary } from '../../lib/lab/run';
import { EXPERIMENTS, type ExperimentName } from '../../lib/lab/types';
import { parse, str } from '../args';

export const help = `Usage: kvfs lab [--meta URL --data URL] [--out DIR] [--quick] [--only NAME,...]

Measures where consistency and latency break down for transactional workloads on
kvfs, beside the same workloads on a directory of the local disk, and writes
DIR/report.json, a self-contained DIR/report.html (inline SVG charts) and a
summary table on stdout; progress goes to stderr. Experiments (names for --only):
  fsync       4 KiB append + fsync latency: p50/p90/p99/p99.9 and CDF
              (write-back on and off)
  sqlite      single-row autocommit SQLite transactions, journal DELETE and
              WAL x synchronous FULL and NORMAL: tx/s and latency
  durability  the mount daemon is SIGKILLed at random moments while a writer
              appends records (some fsynced); acknowledged records lost,
              fsynced and not, and the window in records and ms
  staleness   a writer on mount A, readers on mount B (open/read/close and
              stat): delay until B sees each value, close-to-open violations,
              for several cache settings
  locks       a counter incremented under flock and fcntl locks by processes
              on two mounts (and on one mount, the control): lost increments
  sqlite2     two SQLite writers on one database through two mounts (DELETE
              and WAL): errors, integrity_check, lost rows
  stall       Redis, then etcd, paused (SIGSTOP) during SQLite inserts on a
              mount with --backend-timeout 2: longest transaction, errors,
              acknowledged transactions lost
  breakdown   for every experiment, the share of each operation's time spent
              on etcd, on Redis and in the daemon/FUSE path (the daemons'
              /metrics)

It starts its own etcd and redis-server (appendonly yes, appendfsync always) on
loopback ports in a temp dir unless --meta and --data are given, formats fresh
volumes, mounts them with 'kvfs mount' child processes, runs every workload in
worker processes, and stops and removes everything it started at the end (also on
Ctrl-C). Takes up to 15 minutes (--quick: up to 3). Needs root or /dev/fuse
access like mount, etcd and redis-server on the PATH (unless given), and
python3 (locks).

Options:
  --meta URL        etcd://HOST:PORT[,HOST:PORT...]/NAME: use this etcd; fresh
                    volumes NAME-EXPERIMENT-... are made and deleted afterwards
                    (needs --data; the stall experiment is then skipped, as it
                    pauses the servers)
  --data URL        redis://[USER:PASSWORD@]HOST:PORT[/DB] for their blocks
  --out DIR         where to write report.json and report.html (default
                    ./kvfs-lab-YYYYMMDD-HHMMSS)
  --quick           fewer iterations and rounds (a smoke run of about 3 minutes)
  --only LIST       only these experiments, comma-separated (default: all);
                    breakdown summarises the others that run (alone, it runs
                    fsync and sqlite)
  --seed N          seed of the random choices (kill moments); default: from the
                    clock, recorded in the report
  -h, --help        show this help`;

const OPTIONS = {
  meta: { type: 'string' },
  data: { type: 'string' },
  out: { type: 'string' },
  quick: { type: 'boolean' },
  only: { type: 'string' },
  seed: { type: 'string' },
} as const;

function defaultOut(): string {
  const d = new Date();
  const p = (n: number) => String(n).padStart(2, '0');
  return `kvfs-lab-${d.getFullYear()}${p(d.getMonth() + 1)}${p(d.getDate())}-${p(d.getHours())}${p(d.getMinutes())}${p(d.getSeconds())}`;
}

export async function labCommand(argv: string[]): Promise<number> {
  const { values } = parse('lab', argv, OPTIONS, { min: 0, max: 0, names: '' });
  if (values.help) return console.log(help), 0;
  const meta = str(values.meta);
  const data = str(values.data);
  if ((meta === undefined) !== (data === undefined)) throw new UsageError('kvfs lab takes --meta and --data together (etcd and Redis to use), or neither (it starts its own)');
  if (meta !== undefined && !/^etcd(\+https)?:\/\/[^/]+\/[A-Za-z0-9][A-Za-z0-9._-]{0,40}$/.test(meta)) {
    throw new UsageError(`--meta must be etcd://HOST:PORT/NAME (NAME: letters, digits, . _ -), not '${meta}'; the lab needs etcd, as it mounts volumes twice`);
  }
  if (data !== undefined && !/^rediss?:\/\//.test(data)) throw new UsageError(`--data must be redis://HOST:PORT[/DB], not '${data}'`);
  let only: ExperimentName[] = [...EXPERIMENTS];
  const onlyText = str(values.only);
  if (onlyText !== undefined) {
    only = [];
    for (const name of onlyText.split(',').map((s) => s.trim()).filter(Boolean)) {
      if (!(EXPERIMENTS as readonly string[]).includes(name)) throw new UsageError(`unknown experiment '${name}' in --only; use some of: ${EXPERIMENTS.join(', ')}`);
      if (!only.includes(name as ExperimentName)) only.push(name as ExperimentName);
    }
    if (only.length === 0) throw new UsageError(`--only needs at least one of: ${EXPERIMENTS.join(', ')}`);
    if (only.length === 1 && only[0] === 'breakdown') {
      process.stderr.write('kvfs lab: breakdown summarises other experiments; running fsync and sqlite for it\n');
      only = ['fsync', 'sqlite', 'breakdown'];
    }
  }
  const seedText = str(values.seed);
  if (seedText !== undefined && !/^\d{1,10}$/.test(seedText)) throw new UsageError(`--seed must be a whole number, not '${seedText}'`);
  const seed = seedText !== undefined ? Number(seedText) : Date.now() % 2 ** 31;
  const out = path.resolve(str(values.out) ?? defaultOut());
  try {
    fs.mkdirSync(out, { recursive: true });
    fs.accessSync(out, fs.constants.W_OK);
  } catch (err) {
    throw new UsageError(`cannot write to --out ${out}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  if (!fs.existsSync('/dev/fuse')) {
    throw new UsageError('/dev/fuse is missing: load the fuse kernel module (modprobe fuse), or in a container pass --device /dev/fuse --cap-add SYS_ADMIN');
  }
  const log = (line: string) => process.stderr.write(`${line}\n`);
  const command = ['kvfs', 'lab', ...argv].join(' ').replace(/([a-z][a-z0-9+.-]*:\/\/)([^@/\s]*)@/gi, '$1***@');
  try {
    const report = await runLab({ metaUrl: meta, dataUrl: data, out, quick: Boolean(values.quick), only, seed, command, log });
    console.log(terminalSummary(report));
    log(`kvfs lab: ${report.seconds.toFixed(0)} s; wrote ${path.join(out, 'report.json')} and ${path.join(out, 'report.html')}`);
    const failed = Object.values(report.experiments).filter((e) => e?.status === 'failed');
    return failed.length ? 1 : 0;
  } catch (err) {
    if (err instanceof LabAborted) {
      log(`kvfs lab: interrupted; everything it started is stopped and removed; partial report in ${out}`);
      return 130;
    }
    throw err;
  }
}

// Randomized differential test: the same seeded sequence of filesystem operations is applied to
// a kvfs mount and to a local directory (ext4), and every result is compared: success vs errno,
// bytes read, stat type/size/mode/nlink, sorted readdir listings, readlink targets. Every 100 ops
// and at the end the whole trees are compared (content sha256, modes, sizes, nlink, link targets).
//
// Operations are generated from the seed and the state of the LOCAL tree only, so a sequence is
// fully determined by its seed and can be replayed:
//   KVFS_RANDOM_SEEDS=3 KVFS_RANDOM_OPS=120 npx ava dist/test/random-etcd.test.js
// (KVFS_RANDOM_VERBOSE=1 logs every op.)
import type { ExecutionContext, TestFn } from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Backend, makeTempDir, mountEntry, removeTempDir, startVolume, Volume } from '../_helpers/mount';
import { mulberry32, prngBytes, sha256 } from '../_helpers/ops';
import { NO_CACHE } from './posix';

type T = ExecutionContext<unknown>;

export type Op =
  | { op: 'create'; path: string; flags: 'w' | 'wx' | 'a'; len: number; seed: number }
  | { op: 'write'; path: string; pos: number; len: number; seed: number }
  | { op: 'read'; path: string; pos: number; len: number }
  | { op: 'truncate'; path: string; size: number }
  | { op: 'unlink'; path: string }
  | { op: 'mkdir'; path: string; mode: number }
  | { op: 'rmdir'; path: string }
  | { op: 'rename'; from: string; to: string }
  | { op: 'link'; from: string; to: string }
  | { op: 'symlink'; target: string; path: string }
  | { op: 'readlink'; path: string }
  | { op: 'chmod'; path: string; mode: number }
  | { op: 'stat'; path: string; follow: boolean }
  | { op: 'readdir'; path: string };

type Result = Record<string, unknown>;

const NAMES = ['a', 'b', 'c', 'd', 'e'];
const MODES = [0o644, 0o600, 0o755, 0o700, 0o444, 0o000, 0o777, 0o4755, 0o2750, 0o1777, 0o640];
const DIR_MODES = [0o755, 0o700, 0o777, 0o750];

function statResult(st: fs.Stats): Result {
  const type = st.isFile()
    ? 'file'
    : st.isDirectory()
      ? 'dir'
      : st.isSymbolicLink()
        ? 'symlink'
        : st.isFIFO()
          ? 'fifo'
          : st.isSocket()
            ? 'socket'
            : 'other';
  return {
    type,
    // directory sizes are filesystem-specific (ext4: 4096 per block); everything else must match
    size: type === 'dir' ? undefined : st.size,
    mode: (st.mode & 0o7777).toString(8),
    nlink: st.nlink,
  };
}

/** Apply one op under root; never throws for errno failures. */
export function applyOp(root: string, op: Op): Result {
  const p = (rel: string) => path.join(root, rel);
  try {
    switch (op.op) {
      case 'create': {
        const fd = fs.openSync(p(op.path), op.flags, 0o644);
        try {
          if (op.len) fs.writeSync(fd, prngBytes(op.seed, op.len));
          return { ok: true, size: fs.fstatSync(fd).size };
        } finally {
          fs.closeSync(fd);
        }
      }
      case 'write': {
        const fd = fs.openSync(p(op.path), 'r+');
        try {
          const data = prngBytes(op.seed, op.len);
          let done = 0;
          while (done < data.length) done += fs.writeSync(fd, data, done, data.length - done, op.pos + done);
          return { ok: true, size: fs.fstatSync(fd).size };
        } finally {
          fs.closeSync(fd);
        }
      }
      case 'read': {
        const fd = fs.openSync(p(op.path), 'r');
        try {
          const buf = Buffer.alloc(op.len);
          let got = 0;
          while (got < op.len) {
            const n = fs.readSync(fd, buf, got, op.len - got, op.pos + got);
            if (n === 0) break;
            got += n;
          }
          const data = buf.subarray(0, got);
          return { ok: true, n: got, sha: sha256(data), zeros: data.every((b) => b === 0) };
        } finally {
          fs.closeSync(fd);
        }
      }
      case 'truncate':
        fs.truncateSync(p(op.path), op.size);
        return { ok: true, size: fs.statSync(p(op.path)).size };
      case 'unlink':
        fs.unlinkSync(p(op.path));
        return { ok: true };
      case 'mkdir':
        fs.mkdirSync(p(op.path), op.mode);
        return { ok: true, ...statResult(fs.lstatSync(p(op.path))) };
      case 'rmdir':
        fs.rmdirSync(p(op.path));
        return { ok: true };
      case 'rename':
        fs.renameSync(p(op.from), p(op.to));
        return { ok: true, ...statResult(fs.lstatSync(p(op.to))) };
      case 'link':
        fs.linkSync(p(op.from), p(op.to));
        return { ok: true, ...statResult(fs.lstatSync(p(op.to))) };
      case 'symlink':
        fs.symlinkSync(op.target, p(op.path));
        return { ok: true, ...statResult(fs.lstatSync(p(op.path))) };
      case 'readlink':
        return { ok: true, target: fs.readlinkSync(p(op.path)) };
      case 'chmod':
        fs.chmodSync(p(op.path), op.mode);
        return { ok: true, ...statResult(fs.statSync(p(op.path))) };
      case 'stat':
        return { ok: true, ...statResult(op.follow ? fs.statSync(p(op.path)) : fs.lstatSync(p(op.path))) };
      case 'readdir':
        return { ok: true, names: fs.readdirSync(p(op.path)).sort() };
    }
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (typeof code !== 'string') throw e;
    return { err: code };
  }
}

interface Entry {
  rel: string;
  type: string;
}

/** All entries below root (symlinks not followed), sorted. */
function listTree(root: string): Entry[] {
  const out: Entry[] = [];
  const rec = (rel: string) => {
    for (const name of fs.readdirSync(rel ? path.join(root, rel) : root).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const st = fs.lstatSync(path.join(root, r));
      const type = st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : st.isFile() ? 'file' : 'other';
      out.push({ rel: r, type });
      if (type === 'dir') rec(r);
    }
  };
  rec('');
  return out;
}

/** A comparable description of the whole tree. */
export function describeTree(root: string): Record<string, Result> {
  const out: Record<string, Result> = {};
  for (const { rel } of listTree(root)) {
    const p = path.join(root, rel);
    const st = fs.lstatSync(p);
    const r: Result = statResult(st);
    try {
      if (st.isFile()) r.sha = sha256(fs.readFileSync(p));
      if (st.isSymbolicLink()) r.target = fs.readlinkSync(p);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (typeof code !== 'string') throw e;
      r.error = code; // a read error is a difference, reported with the path
    }
    out[rel] = r;
  }
  return out;
}

/** Generates ops from a PRNG and the current local tree. */
export class OpGenerator {
  private readonly rnd: () => number;
  constructor(seed: number) {
    this.rnd = mulberry32(seed);
  }

  private int(n: number): number {
    return Math.floor(this.rnd() * n);
  }
  private pick<X>(xs: readonly X[]): X {
    return xs[this.int(xs.length)];
  }
  private chance(p: number): boolean {
    return this.rnd() < p;
  }

  private newPath(entries: Entry[]): string {
    const dirs = entries.filter((e) => e.type === 'dir');
    if (dirs.length && this.chance(0.6)) return `${this.pick(dirs).rel}/${this.pick(NAMES)}`;
    const depth = 1 + this.int(this.chance(0.7) ? 1 : 3);
    return Array.from({ length: depth }, () => this.pick(NAMES)).join('/');
  }

  /** An existing path of one of the types (70%), else any new/random path. */
  private somePath(entries: Entry[], types?: string[]): string {
    const pool = types ? entries.filter((e) => types.includes(e.type)) : entries;
    if (pool.length && this.chance(0.8)) return this.pick(pool).rel;
    return this.newPath(entries);
  }

  private size(): number {
    const r = this.rnd();
    if (r < 0.5) return this.int(5000);
    if (r < 0.85) return this.int(150_000);
    return this.int(3 * 1024 * 1024);
  }

  private symlinkTarget(entries: Entry[]): string {
    const r = this.rnd();
    if (r < 0.5 && entries.length) return this.pick(entries).rel; // relative to the seed root: valid only at top level
    if (r < 0.7) return this.pick(NAMES); // sibling
    if (r < 0.8) return `${this.pick(NAMES)}/../${this.pick(NAMES)}`;
    if (r < 0.9) return 'missing/target';
    return '.';
  }

  next(root: string): Op {
    const entries = listTree(root);
    const w: [Op['op'], number][] = [
      ['create', 12],
      ['write', 14],
      ['read', 10],
      ['truncate', 6],
      ['unlink', 6],
      ['mkdir', 9],
      ['rmdir', 4],
      ['rename', 11],
      ['link', 5],
      ['symlink', 5],
      ['readlink', 3],
      ['chmod', 4],
      ['stat', 8],
      ['readdir', 5],
    ];
    const total = w.reduce((s, [, n]) => s + n, 0);
    let x = this.int(total);
    let kind: Op['op'] = 'stat';
    for (const [k, n] of w) {
      if (x < n) {
        kind = k;
        break;
      }
      x -= n;
    }
    const files = ['file'];
    switch (kind) {
      case 'create':
        return {
          op: 'create',
          path: this.chance(0.3) ? this.somePath(entries, ['file', 'symlink']) : this.newPath(entries),
          flags: this.pick(['w', 'wx', 'a'] as const),
          len: this.chance(0.2) ? 0 : this.size() % 200_000,
          seed: this.int(1e9),
        };
      case 'write': {
        const big = this.chance(0.1);
        return {
          op: 'write',
          path: this.somePath(entries, this.chance(0.9) ? files : undefined),
          pos: big ? this.int(4 * 1024 * 1024) : this.int(200_000),
          len: 1 + (big ? this.int(600_000) : this.int(20_000)),
          seed: this.int(1e9),
        };
      }
      case 'read':
        return { op: 'read', path: this.somePath(entries, files), pos: this.chance(0.2) ? 0 : this.size(), len: 1 + this.int(300_000) };
      case 'truncate':
        return { op: 'truncate', path: this.somePath(entries, files), size: this.size() };
      case 'unlink':
        return { op: 'unlink', path: this.somePath(entries) };
      case 'mkdir':
        return { op: 'mkdir', path: this.newPath(entries), mode: this.pick(DIR_MODES) };
      case 'rmdir':
        return { op: 'rmdir', path: this.somePath(entries, this.chance(0.8) ? ['dir'] : undefined) };
      case 'rename':
        return {
          op: 'rename',
          from: this.somePath(entries),
          to: this.chance(0.35) ? this.somePath(entries) : this.newPath(entries),
        };
      case 'link':
        return { op: 'link', from: this.somePath(entries, this.chance(0.85) ? files : undefined), to: this.newPath(entries) };
      case 'symlink':
        return { op: 'symlink', target: this.symlinkTarget(entries), path: this.newPath(entries) };
      case 'readlink':
        return { op: 'readlink', path: this.somePath(entries, this.chance(0.8) ? ['symlink'] : undefined) };
      case 'chmod':
        return { op: 'chmod', path: this.somePath(entries), mode: this.pick(MODES) };
      case 'stat':
        return { op: 'stat', path: this.somePath(entries), follow: this.chance(0.3) };
      case 'readdir':
        return { op: 'readdir', path: this.chance(0.15) ? '.' : this.somePath(entries, this.chance(0.8) ? ['dir'] : undefined) };
    }
  }
}

function firstDifference(a: Record<string, Result>, b: Record<string, Result>): { path: string; text: string } | undefined {
  const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
  for (const k of keys) {
    const x = JSON.stringify(a[k]);
    const y = JSON.stringify(b[k]);
    if (x !== y) return { path: k, text: `${k}:\n  kvfs:  ${x}\n  local: ${y}` };
  }
  return undefined;
}

export interface RandomOptions {
  seeds?: number[];
  ops?: number;
  /** Extra mount options (e.g. tiny cache and dirty limits, so eviction and back-pressure happen). */
  mountArgs?: string[];
  formatArgs?: string[];
}

function envSeeds(): number[] | undefined {
  const s = process.env.KVFS_RANDOM_SEEDS;
  return s ? s.split(',').map((x) => Number(x.trim())) : undefined;
}

export function randomSuite(test: TestFn, backend: Backend, opts: RandomOptions = {}): void {
  const seeds = envSeeds() ?? opts.seeds ?? [1, 2, 3, 4];
  const nOps = Number(process.env.KVFS_RANDOM_OPS ?? opts.ops ?? 400);
  const verbose = process.env.KVFS_RANDOM_VERBOSE === '1';
  let vol: Volume | undefined;
  let local: string | undefined;

  test.before(async () => {
    local = makeTempDir('kvfs-random-local-');
    vol = await startVolume({ backend, mountArgs: [...NO_CACHE, ...(opts.mountArgs ?? [])], formatArgs: opts.formatArgs });
  });

  test.after.always(async () => {
    await vol?.stop();
    if (local) removeTempDir(local);
  });

  test.afterEach.always((t) => {
    if (!t.passed && vol) t.log(`daemon log (tail):\n${vol.logs().split('\n').slice(-30).join('\n')}`);
  });

  for (const seed of seeds) {
    test(`random ops, seed ${seed}, ${nOps} ops: kvfs matches a local directory`, (t) => {
      t.timeout(10 * 60_000);
      runSeed(t, seed, nOps, vol!, local!, verbose);
    });
  }
}

function runSeed(t: T, seed: number, nOps: number, vol: Volume, local: string, verbose: boolean): void {
  const e = mountEntry(vol.mnt);
  if (!e || !e.fstype.startsWith('fuse')) throw new Error(`${vol.mnt} is not a kvfs mount (${e ? e.fstype : 'not mounted'})`);
  const kroot = path.join(vol.mnt, `seed-${seed}`);
  const lroot = path.join(local, `seed-${seed}`);
  fs.mkdirSync(kroot);
  fs.mkdirSync(lroot);
  const gen = new OpGenerator(seed);
  const history: string[] = [];
  const started = Date.now();
  const replay = (i: number) => `replay: KVFS_RANDOM_SEEDS=${seed} KVFS_RANDOM_OPS=${i + 1}`;
  // the last ops, plus every earlier op that mentions one of the given paths (or their parents)
  const context = (paths: string[]) => {
    const names = new Set<string>();
    for (const p of paths) for (let q = p; q && q !== '.'; q = path.posix.dirname(q)) names.add(q);
    const related = history.slice(0, -12).filter((h) => [...names].some((n) => h.includes(`"${n}"`)));
    return (
      (related.length ? `earlier ops on ${[...paths].join(', ')} (and parents):\n  ${related.join('\n  ')}\n` : '') +
      `last ops:\n  ${history.slice(-12).join('\n  ')}`
    );
  };
  const opPaths = (op: Op) => ('path' in op ? [op.path] : 'from' in op ? [op.from, op.to] : []);
  const counts: Record<string, { ok: number; err: number }> = {};
  for (let i = 0; i < nOps; i++) {
    const op = gen.next(lroot);
    const line = `#${i} ${JSON.stringify(op)}`;
    history.push(line);
    if (verbose) t.log(line);
    const k = applyOp(kroot, op);
    const l = applyOp(lroot, op);
    const c = (counts[op.op] ??= { ok: 0, err: 0 });
    if (l.ok) c.ok++;
    else c.err++;
    if (JSON.stringify(k) !== JSON.stringify(l)) {
      t.fail(
        `seed ${seed}, op #${i}: ${JSON.stringify(op)}\n` +
          `  kvfs:  ${JSON.stringify(k)}\n  local: ${JSON.stringify(l)}\n` +
          `${replay(i)}\n${context(opPaths(op))}`,
      );
      return;
    }
    if ((i + 1) % 100 === 0 || i === nOps - 1) {
      const diff = firstDifference(describeTree(kroot), describeTree(lroot));
      if (diff) {
        t.fail(`seed ${seed}: trees differ after op #${i}: ${diff.text}\n${replay(i)}\n${context([diff.path])}`);
        return;
      }
    }
  }
  const kt = describeTree(kroot);
  t.deepEqual(kt, describeTree(lroot), `seed ${seed}: final trees`);
  t.log(
    `seed ${seed}: ${nOps} ops in ${((Date.now() - started) / 1000).toFixed(1)} s, ${Object.keys(kt).length} entries at the end; ` +
      Object.entries(counts)
        .map(([k, v]) => `${k} ${v.ok}/${v.ok + v.err}`)
        .join(', '),
  );
}

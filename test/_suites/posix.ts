// POSIX behaviour of a mounted kvfs volume, checked only through the kernel: Node's fs, shell
// tools, and an unprivileged user (uid/gid 65534 via setpriv). Errors are compared by errno code.
//
// posixSuite(test, backend): one volume per test file, every test in its own subdirectory.
// cliSuite(test, backend):   the CLI's mount lifecycle and bad-input handling (backend-neutral).
//
// A test file per backend is three lines, e.g. test/posix-embedded.test.ts:
//   import test from 'ava';
//   import { posixSuite } from './_suites/posix';
//   posixSuite(test, 'embedded');
// (likewise cliSuite in cli-embedded.test.ts and randomSuite from ./_suites/random).
//
// Extended attributes go through Python's os.*xattr (see ../_helpers/ops.ts): Debian's `attr`
// package (setfattr/getfattr) is not installed here.
//
// Caching: the POSIX suite mounts with `--attr-cache 0 --entry-cache 0`. With libfuse2's path API
// every name (also each hard link of one inode) has its own kernel node, and while the kernel
// caches attributes a change made through one name (nlink, mode, times) is not visible through
// another until the cache expires. The POSIX checks here are about the filesystem, not about the
// cache, so the cache is off; tests about caching must mount their own volume.
import type { ExecutionContext, TestFn } from 'ava';
import { spawn } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import {
  Backend,
  describeRun,
  isMounted,
  kvfs,
  makeTempDir,
  mountEntry,
  processesMatching,
  removeTempDir,
  run,
  RunResult,
  sleep,
  startServers,
  startVolume,
  Servers,
  uniqueName,
  Volume,
  waitExit,
} from '../_helpers/mount';
import {
  codeOf,
  lstat,
  mulberry32,
  nodeAs,
  NOBODY,
  prngBytes,
  pread,
  pwrite,
  sh,
  sha256,
  sha256File,
  shOk,
  stat,
  xattr1,
  xattrs,
} from '../_helpers/ops';

type T = ExecutionContext<unknown>;

/** Prints "name d_type d_ino" for each entry of argv[1], straight from readdir(3) (glibc's struct dirent on Linux). */
const READDIR_PY = `
import ctypes, sys
class Dirent(ctypes.Structure):
    _fields_ = [('d_ino', ctypes.c_uint64), ('d_off', ctypes.c_int64), ('d_reclen', ctypes.c_ushort), ('d_type', ctypes.c_ubyte), ('d_name', ctypes.c_char * 256)]
libc = ctypes.CDLL(None, use_errno=True)
libc.opendir.restype = ctypes.c_void_p
libc.readdir.argtypes = [ctypes.c_void_p]
libc.readdir.restype = ctypes.POINTER(Dirent)
libc.closedir.argtypes = [ctypes.c_void_p]
d = libc.opendir(sys.argv[1].encode())
assert d, 'opendir failed'
while True:
    e = libc.readdir(d)
    if not e: break
    print(e.contents.d_name.decode(), e.contents.d_type, e.contents.d_ino)
libc.closedir(d)
`;

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const SEC = 1_000_000_000n;
const FUSE_SUPER_MAGIC = 0x65735546;

/** The mount options for POSIX checks: no kernel attribute/entry caching (see the header). */
export const NO_CACHE = ['--attr-cache', '0', '--entry-cache', '0'];

function slug(s: string): string {
  return s.replace(/[^A-Za-z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 40);
}

const nowNs = () => BigInt(Date.now()) * 1_000_000n;

function fmtNs(ns: bigint): string {
  const neg = ns < 0n;
  const a = neg ? -ns : ns;
  return `${neg ? '-' : ''}${a / SEC}.${(a % SEC).toString().padStart(9, '0')}`;
}

type TimeField = 'atime' | 'mtime' | 'ctime';
const NS = { atime: 'atimeNs', mtime: 'mtimeNs', ctime: 'ctimeNs' } as const;

interface TimeExpect {
  path: string;
  /** Where the same object is found after the operation (for renames). */
  pathAfter?: string;
  label: string;
  advance?: TimeField[];
  keep?: TimeField[];
}

/**
 * Stat each path, run op, stat again, and check that the listed times advanced (to "now") or did
 * not change. A short sleep first makes sure "now" is later than the old times.
 */
async function timesAround(t: T, what: string, exps: TimeExpect[], op: () => unknown): Promise<void> {
  const before = exps.map((e) => lstat(e.path));
  await sleep(30);
  const t0 = nowNs();
  await op();
  const t1 = nowNs();
  exps.forEach((e, i) => {
    const after = lstat(e.pathAfter ?? e.path);
    for (const f of e.advance ?? []) {
      const b = before[i][NS[f]];
      const a = after[NS[f]];
      t.true(a > b, `${what}: ${f} of ${e.label} should advance (before ${fmtNs(b)}, after ${fmtNs(a)})`);
      t.true(
        a >= t0 - SEC && a <= t1 + SEC,
        `${what}: ${f} of ${e.label} should be the time of the operation (${fmtNs(a)} not within 1 s of [${fmtNs(t0)}, ${fmtNs(t1)}])`,
      );
    }
    for (const f of e.keep ?? []) {
      t.is(fmtNs(after[NS[f]]), fmtNs(before[i][NS[f]]), `${what}: ${f} of ${e.label} should not change`);
    }
  });
}

/** Read a whole file; a read error becomes a failed assertion (and an empty buffer) so the test goes on. */
function readOrFail(t: T, p: string, what: string): Buffer {
  try {
    return fs.readFileSync(p);
  } catch (e) {
    t.fail(`${what}: reading ${path.basename(p)} failed with ${(e as NodeJS.ErrnoException).code}`);
    return Buffer.alloc(0);
  }
}

function lsA(out: string): string[] {
  return out.split('\n').filter(Boolean);
}

function modeOf(p: string): number {
  return Number(lstat(p).mode) & 0o7777;
}

function typeOf(st: fs.BigIntStats): string {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isFIFO()) return 'fifo';
  if (st.isSocket()) return 'socket';
  if (st.isCharacterDevice()) return 'chardev';
  if (st.isBlockDevice()) return 'blockdev';
  return 'unknown';
}

// ---------------------------------------------------------------------------------------------
// Whole-tree snapshots (for remount checks)

interface StatSnap {
  type: string;
  mode: string;
  nlink: number;
  uid: number;
  gid: number;
  size: string;
  rdev: string;
  atime: string;
  mtime: string;
  ctime: string;
}

function walk(root: string): string[] {
  const out: string[] = [];
  const rec = (rel: string) => {
    for (const name of fs.readdirSync(path.join(root, rel)).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      out.push(r);
      if (lstat(path.join(root, r)).isDirectory()) rec(r);
    }
  };
  rec('');
  return out;
}

function statPass(root: string, rels: string[]): Record<string, StatSnap> {
  const out: Record<string, StatSnap> = {};
  for (const rel of ['.', ...rels]) {
    const st = lstat(path.join(root, rel));
    out[rel] = {
      type: typeOf(st),
      mode: (Number(st.mode) & 0o7777).toString(8),
      nlink: Number(st.nlink),
      uid: Number(st.uid),
      gid: Number(st.gid),
      size: st.isDirectory() ? '-' : String(st.size),
      rdev: String(st.rdev),
      atime: fmtNs(st.atimeNs),
      mtime: fmtNs(st.mtimeNs),
      ctime: fmtNs(st.ctimeNs),
    };
  }
  return out;
}

async function contentPass(root: string, rels: string[]): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  const xops: { op: 'list'; path: string }[] = [];
  const xrels: string[] = [];
  for (const rel of rels) {
    const p = path.join(root, rel);
    const st = lstat(p);
    if (st.isFile()) out[rel] = { sha: sha256File(p) };
    else if (st.isSymbolicLink()) out[rel] = { link: fs.readlinkSync(p) };
    else if (st.isDirectory()) out[rel] = { entries: fs.readdirSync(p).sort() };
    else out[rel] = {};
    if (st.isFile() || st.isDirectory()) {
      xops.push({ op: 'list', path: p });
      xrels.push(rel);
    }
  }
  const lists = await xattrs(xops);
  const gets: { op: 'get'; path: string; name: string }[] = [];
  const keys: [string, string][] = [];
  lists.forEach((l, i) => {
    for (const name of l.names ?? []) {
      gets.push({ op: 'get', path: xops[i].path, name });
      keys.push([xrels[i], name]);
    }
  });
  const vals = gets.length ? await xattrs(gets) : [];
  vals.forEach((v, i) => {
    const [rel, name] = keys[i];
    const o = out[rel] as { xattrs?: Record<string, string> };
    (o.xattrs ??= {})[name] = v.ok ? v.value!.toString('hex') : `error ${v.code}`;
  });
  return out;
}

// ---------------------------------------------------------------------------------------------

export function posixSuite(test: TestFn, backend: Backend): void {
  let vol: Volume | undefined;
  let counter = 0;

  test.before(async () => {
    vol = await startVolume({ backend, mountArgs: NO_CACHE });
  });

  test.after.always(async () => {
    await vol?.stop();
  });

  test.afterEach.always((t) => {
    if (!t.passed && vol) t.log(`daemon log (tail):\n${vol.logs().split('\n').slice(-40).join('\n')}`);
  });

  /** The mountpoint; throws unless the kvfs mount is really there (never test the bare dir below it). */
  function mounted(): string {
    if (!vol) throw new Error('volume not mounted (before hook failed)');
    const e = mountEntry(vol.mnt);
    if (!e || !e.fstype.startsWith('fuse')) throw new Error(`${vol.mnt} is not a kvfs mount any more (${e ? e.fstype : 'not mounted'})`);
    return vol.mnt;
  }

  /** A fresh directory for this test inside the mount. */
  function dirFor(t: T): string {
    const mnt = mounted();
    const d = path.join(mnt, `${++counter}-${slug(t.title)}`);
    fs.mkdirSync(d);
    return d;
  }

  // -------------------------------------------------------------------------------------------
  // Remount: serial tests run before the concurrent ones in AVA, so no other test is using the
  // mount while it is briefly gone.

  test.serial('unmount and remount keeps content, modes, owners, times, links, xattrs', async (t) => {
    const d = dirFor(t);
    const rnd = prngBytes(42, 3 * MiB + 17);
    fs.writeFileSync(path.join(d, 'data'), rnd, { mode: 0o640 });
    fs.writeFileSync(path.join(d, 'empty'), '');
    fs.mkdirSync(path.join(d, 'sub'), { mode: 0o700 });
    fs.mkdirSync(path.join(d, 'sub', 'deeper'));
    fs.writeFileSync(path.join(d, 'sub', 'deeper', 'small'), 'small file\n');
    fs.linkSync(path.join(d, 'data'), path.join(d, 'sub', 'data-link'));
    fs.symlinkSync('sub/deeper/small', path.join(d, 'symlink'));
    fs.symlinkSync('does/not/exist', path.join(d, 'dangling'));
    await shOk('mkfifo', ['-m', '0620', path.join(d, 'fifo')]);
    await shOk('mknod', [path.join(d, 'null'), 'c', '1', '3']);
    fs.chownSync(path.join(d, 'sub', 'deeper', 'small'), 1234, 5678);
    fs.chmodSync(path.join(d, 'sub', 'deeper'), 0o2751);
    const sparse = path.join(d, 'sparse');
    pwrite(sparse, 100 * MiB, 'tail', 'w');
    for (const r of await xattrs([
      { op: 'set', path: path.join(d, 'data'), name: 'user.one', value: 'first' },
      { op: 'set', path: path.join(d, 'data'), name: 'user.bin', value: Buffer.from([0, 1, 2, 255, 0]) },
      { op: 'set', path: path.join(d, 'sub'), name: 'user.dir', value: 'on a directory' },
    ]))
      t.true(r.ok, `setxattr before remount: ${r.code}`);
    await shOk('touch', ['-d', '2001-02-03 04:05:06.123456789', path.join(d, 'empty')]);
    await shOk('touch', ['-d', '1999-12-31 23:59:59.5', path.join(d, 'sub')]);
    await sleep(20);

    const rels = walk(d);
    const content1 = await contentPass(d, rels);
    const stats1 = statPass(d, rels);

    const oldPid = vol!.pid;
    await vol!.unmount(); // asserts: kvfs umount exit 0, daemon exit 0, gone from /proc/mounts
    t.false(isMounted(vol!.mnt));
    t.deepEqual(processesMatching(vol!.mnt), [], 'no process still refers to the mountpoint');
    t.deepEqual(fs.readdirSync(vol!.mnt), [], 'the bare mountpoint is empty');
    await vol!.remount();
    t.not(vol!.pid, oldPid);

    const stats2 = statPass(d, rels); // before any read: reads may update atimes
    const content2 = await contentPass(d, walk(d));
    t.deepEqual(stats2, stats1, 'stat of every entry is unchanged after remount');
    t.deepEqual(content2, content1, 'content, link targets, listings and xattrs are unchanged after remount');
    t.is(lstat(path.join(d, 'data')).ino, lstat(path.join(d, 'sub', 'data-link')).ino, 'hard links share st_ino after remount');
    // and the remounted volume is writable
    pwrite(path.join(d, 'data'), 5, 'XYZ');
    rnd.write('XYZ', 5);
    t.is(sha256File(path.join(d, 'sub', 'data-link')), sha256(rnd));
  });

  // -------------------------------------------------------------------------------------------
  // stat fields

  test('new file and directory: type, mode, nlink, uid/gid, size, blocks, times', async (t) => {
    const d = dirFor(t);
    const f = path.join(d, 'f');
    const t0 = nowNs();
    await sleep(5);
    fs.writeFileSync(f, 'hello', { mode: 0o640 });
    const st = lstat(f);
    const t1 = nowNs();
    t.true(st.isFile());
    t.is(Number(st.mode) & 0o7777, 0o640);
    t.is(Number(st.mode) & 0o170000, 0o100000);
    t.is(st.nlink, 1n);
    t.is(st.uid, 0n);
    t.is(st.gid, 0n);
    t.is(st.size, 5n);
    t.true(st.blksize > 0n, 'st_blksize > 0');
    t.true(st.ino > 0n, 'st_ino > 0');
    for (const f2 of ['atime', 'mtime', 'ctime'] as const)
      t.true(st[NS[f2]] >= t0 - SEC && st[NS[f2]] <= t1 + SEC, `${f2} of a new file is the creation time (${fmtNs(st[NS[f2]])})`);

    const big = path.join(d, 'big');
    fs.writeFileSync(big, prngBytes(1, 300_000));
    const bst = lstat(big);
    t.is(bst.size, 300_000n);
    t.true(bst.blocks * 512n >= 300_000n, `st_blocks (${bst.blocks}) covers the size`);
    t.true(bst.blocks * 512n < 300_000n + 8n * BigInt(MiB), `st_blocks (${bst.blocks}) is not absurdly large`);
    t.not(bst.ino, st.ino, 'two files have different st_ino');

    fs.writeFileSync(path.join(d, 'g'), '', { mode: 0o777 });
    t.is(modeOf(path.join(d, 'g')), 0o755, 'umask 022 applies on create');

    const parentNlink = lstat(d).nlink;
    fs.mkdirSync(path.join(d, 'sub'));
    const dst = lstat(path.join(d, 'sub'));
    t.true(dst.isDirectory());
    t.is(Number(dst.mode) & 0o7777, 0o755, 'mkdir 0777 with umask 022');
    t.is(dst.nlink, 2n, 'new directory has nlink 2');
    t.is(lstat(d).nlink, parentNlink + 1n, "mkdir increments the parent's nlink");
    fs.mkdirSync(path.join(d, 'private'), { mode: 0o700 });
    t.is(modeOf(path.join(d, 'private')), 0o700);
    fs.mkdirSync(path.join(d, 'sub', 'a'));
    fs.mkdirSync(path.join(d, 'sub', 'b'));
    fs.writeFileSync(path.join(d, 'sub', 'file'), 'x');
    t.is(lstat(path.join(d, 'sub')).nlink, 4n, 'nlink of a directory is 2 + number of subdirectories');
    t.is(lstat(path.join(d, 'sub', 'a', '..')).ino, lstat(path.join(d, 'sub')).ino, 'a/.. is the parent');
  });

  test('ls -a lists . and .. and every entry; readdir of an empty dir', async (t) => {
    const d = dirFor(t);
    for (const n of ['b', 'a', 'c']) fs.writeFileSync(path.join(d, n), n);
    fs.mkdirSync(path.join(d, 'dir'));
    fs.symlinkSync('a', path.join(d, 'link'));
    await shOk('mkfifo', [path.join(d, 'pipe')]);
    t.deepEqual(lsA(await shOk('ls', ['-a1', d])), ['.', '..', 'a', 'b', 'c', 'dir', 'link', 'pipe']);
    t.deepEqual(fs.readdirSync(d).sort(), ['a', 'b', 'c', 'dir', 'link', 'pipe']);
    t.deepEqual(lsA(await shOk('ls', ['-a1', path.join(d, 'dir')])), ['.', '..']);
    t.deepEqual(fs.readdirSync(path.join(d, 'dir')), []);
    const types = Object.fromEntries(
      fs.readdirSync(d, { withFileTypes: true }).map((e) => [e.name, e.isFile() ? 'f' : e.isDirectory() ? 'd' : e.isSymbolicLink() ? 'l' : e.isFIFO() ? 'p' : '?']),
    );
    t.deepEqual(types, { a: 'f', b: 'f', c: 'f', dir: 'd', link: 'l', pipe: 'p' });
    // What readdir(3) itself returns (Node and Python stat entries whose d_type is unknown, so
    // they cannot tell): each entry's d_type, and d_ino equal to the st_ino stat gives.
    const listing = await shOk('python3', ['-c', READDIR_PY, d]);
    const dirents = Object.fromEntries(listing.trim().split('\n').map((line) => line.split(' ')).map(([name, type, ino]) => [name, { type: Number(type), ino: Number(ino) }]));
    const DT = { a: 8, b: 8, c: 8, dir: 4, link: 10, pipe: 1, '.': 4, '..': 4 } as const;
    for (const [name, type] of Object.entries(DT)) {
      t.is(dirents[name]?.type, type, `d_type of ${name}`);
      t.is(dirents[name]?.ino, Number(fs.lstatSync(path.join(d, name)).ino), `d_ino of ${name} is its st_ino`);
    }
    t.is(codeOf(() => fs.readdirSync(path.join(d, 'a'))), 'ENOTDIR');
    t.is(codeOf(() => fs.readdirSync(path.join(d, 'missing'))), 'ENOENT');
  });

  test('readdir of a large directory returns every entry exactly once', async (t) => {
    const d = dirFor(t);
    const names: string[] = [];
    for (let i = 0; i < 600; i++) names.push(`entry-${i}-${'x'.repeat(i % 97)}`);
    for (const n of names) fs.writeFileSync(path.join(d, n), '');
    const got = fs.readdirSync(d);
    t.is(got.length, names.length, 'entry count');
    t.deepEqual([...got].sort(), [...names].sort());
    const ls = lsA(await shOk('ls', ['-a1', d]));
    t.is(ls.length, names.length + 2);
    // delete every other entry while listing again
    names.filter((_, i) => i % 2 === 0).forEach((n) => fs.unlinkSync(path.join(d, n)));
    t.deepEqual(fs.readdirSync(d).sort(), names.filter((_, i) => i % 2 === 1).sort());
  });

  test('mkdir, rmdir and unlink error codes', async (t) => {
    const d = dirFor(t);
    fs.mkdirSync(path.join(d, 'dir'));
    fs.writeFileSync(path.join(d, 'dir', 'x'), 'x');
    fs.writeFileSync(path.join(d, 'file'), 'f');
    fs.mkdirSync(path.join(d, 'empty'));
    t.is(codeOf(() => fs.mkdirSync(path.join(d, 'dir'))), 'EEXIST', 'mkdir existing dir');
    t.is(codeOf(() => fs.mkdirSync(path.join(d, 'file'))), 'EEXIST', 'mkdir over a file');
    t.is(codeOf(() => fs.mkdirSync(path.join(d, 'missing', 'x'))), 'ENOENT', 'mkdir in a missing dir');
    t.is(codeOf(() => fs.mkdirSync(path.join(d, 'file', 'x'))), 'ENOTDIR', 'mkdir under a file');
    t.is(codeOf(() => fs.rmdirSync(path.join(d, 'dir'))), 'ENOTEMPTY', 'rmdir non-empty');
    t.is(codeOf(() => fs.rmdirSync(path.join(d, 'file'))), 'ENOTDIR', 'rmdir a file');
    t.is(codeOf(() => fs.rmdirSync(path.join(d, 'missing'))), 'ENOENT', 'rmdir missing');
    t.is(codeOf(() => fs.unlinkSync(path.join(d, 'dir'))), 'EISDIR', 'unlink a dir');
    t.is(codeOf(() => fs.unlinkSync(path.join(d, 'missing'))), 'ENOENT', 'unlink missing');
    t.is(codeOf(() => fs.openSync(path.join(d, 'dir'), 'r+')), 'EISDIR', 'open a dir for writing');
    t.is(codeOf(() => fs.writeFileSync(path.join(d, 'file', 'x'), '')), 'ENOTDIR', 'create under a file');
    const n = lstat(d).nlink;
    t.is(codeOf(() => fs.rmdirSync(path.join(d, 'empty'))), 'OK');
    t.is(codeOf(() => lstat(path.join(d, 'empty'))), 'ENOENT', 'removed dir is gone');
    t.is(lstat(d).nlink, n - 1n, "rmdir decrements the parent's nlink");
    fs.unlinkSync(path.join(d, 'dir', 'x'));
    t.is(codeOf(() => fs.rmdirSync(path.join(d, 'dir'))), 'OK', 'rmdir after emptying');
    fs.unlinkSync(path.join(d, 'file'));
    t.deepEqual(fs.readdirSync(d), []);
    t.is(codeOf(() => fs.mkdirSync(path.join(d, 'dir'))), 'OK', 're-create a removed name');
  });

  test('open flags: O_CREAT|O_EXCL, O_TRUNC, O_APPEND, O_RDONLY', async (t) => {
    const d = dirFor(t);
    const f = path.join(d, 'f');
    const fd = fs.openSync(f, 'wx', 0o600);
    fs.writeSync(fd, 'first');
    fs.closeSync(fd);
    t.is(codeOf(() => fs.openSync(f, 'wx')), 'EEXIST', 'O_EXCL on an existing file');
    fs.mkdirSync(path.join(d, 'dir'));
    t.is(codeOf(() => fs.openSync(path.join(d, 'dir'), 'wx')), 'EEXIST', 'O_EXCL on an existing dir');
    fs.symlinkSync('nowhere', path.join(d, 'dangling'));
    t.is(codeOf(() => fs.openSync(path.join(d, 'dangling'), 'wx')), 'EEXIST', 'O_EXCL on a dangling symlink');
    t.is(codeOf(() => lstat(path.join(d, 'nowhere'))), 'ENOENT', 'O_EXCL did not create the symlink target');
    t.is(codeOf(() => fs.openSync(path.join(d, 'missing'), 'r')), 'ENOENT');
    t.is(codeOf(() => fs.openSync(path.join(d, 'missing', 'x'), 'w')), 'ENOENT');

    // read-only handle cannot write
    const ro = fs.openSync(f, 'r');
    t.is(codeOf(() => fs.writeSync(ro, 'x')), 'EBADF');
    fs.closeSync(ro);

    // O_TRUNC
    fs.writeFileSync(f, 'a much longer content than before');
    const tr = fs.openSync(f, 'w');
    t.is(fs.fstatSync(tr).size, 0, 'O_TRUNC empties the file');
    fs.writeSync(tr, 'new');
    fs.closeSync(tr);
    t.is(fs.readFileSync(f, 'utf8'), 'new');
    t.is(lstat(f).size, 3n);

    // O_APPEND: every write goes to the end, whatever the offset
    fs.writeFileSync(f, 'abc');
    const ap = fs.openSync(f, 'a');
    fs.writeSync(ap, 'def');
    fs.writeSync(ap, 'X', 0); // pwrite at 0 with O_APPEND appends on Linux
    fs.closeSync(ap);
    t.is(fs.readFileSync(f, 'utf8'), 'abcdefX');
    const ap2 = fs.openSync(f, 'a+');
    fs.writeSync(ap2, '!');
    const buf = Buffer.alloc(20);
    const n = fs.readSync(ap2, buf, 0, 20, 0);
    fs.closeSync(ap2);
    t.is(buf.subarray(0, n).toString(), 'abcdefX!');
    // open O_CREAT through a dangling symlink creates the target
    fs.writeFileSync(path.join(d, 'dangling'), 'via link');
    t.is(fs.readFileSync(path.join(d, 'nowhere'), 'utf8'), 'via link');
    t.true(lstat(path.join(d, 'dangling')).isSymbolicLink());
  });

  // -------------------------------------------------------------------------------------------
  // data

  test('read and write at arbitrary offsets match a model', async (t) => {
    const d = dirFor(t);
    const f = path.join(d, 'f');
    const rnd = mulberry32(7);
    let model = Buffer.alloc(0);
    fs.writeFileSync(f, '');
    const fd = fs.openSync(f, 'r+');
    const apply = (pos: number, data: Buffer) => {
      fs.writeSync(fd, data, 0, data.length, pos);
      if (pos + data.length > model.length) {
        const grown = Buffer.alloc(pos + data.length);
        model.copy(grown);
        model = grown;
      }
      data.copy(model, pos);
    };
    // boundary writes first: around 4 KiB, 64 KiB, 128 KiB, 1 MiB, 4 MiB
    for (const b of [4 * KiB, 64 * KiB, 128 * KiB, MiB, 4 * MiB]) apply(b - 1, Buffer.from([0xa1, 0xb2]));
    for (let i = 0; i < 150; i++) {
      const pos = Math.floor(rnd() * 5 * MiB);
      const len = 1 + Math.floor(rnd() * (rnd() < 0.2 ? 600_000 : 9000));
      apply(pos, prngBytes(1000 + i, len));
      if (i % 10 === 0) {
        const rp = Math.floor(rnd() * model.length);
        const rl = Math.floor(rnd() * 300_000);
        const got = Buffer.alloc(rl);
        const n = fs.readSync(fd, got, 0, rl, rp);
        t.is(n, Math.min(rl, model.length - rp), `read length at ${rp}+${rl}`);
        t.true(got.subarray(0, n).equals(model.subarray(rp, rp + n)), `read at ${rp}+${rl} after write #${i}`);
        t.is(fs.fstatSync(fd).size, model.length, `fstat size after write #${i}`);
      }
    }
    fs.closeSync(fd);
    t.is(lstat(f).size, BigInt(model.length));
    t.is(sha256File(f), sha256(model), 'whole file equals the model');
    // reads at and past EOF
    t.is(pread(f, model.length, 100).length, 0, 'read at EOF returns 0 bytes');
    t.is(pread(f, model.length + 12345, 100).length, 0, 'read past EOF returns 0 bytes');
    t.true(pread(f, model.length - 10, 100).equals(model.subarray(model.length - 10)), 'short read at the end');
  });

  test('truncate and ftruncate grow and shrink; shrink-then-grow reads zeros', async (t) => {
    const d = dirFor(t);
    const f = path.join(d, 'f');
    const data = prngBytes(3, 3 * MiB + 333);
    fs.writeFileSync(f, data);
    fs.truncateSync(f, 1.5 * MiB + 7);
    t.is(lstat(f).size, BigInt(1.5 * MiB + 7));
    t.true(readOrFail(t, f, 'after shrink').equals(data.subarray(0, 1.5 * MiB + 7)), 'shrink keeps the prefix');
    fs.truncateSync(f, 3 * MiB);
    const grown = readOrFail(t, f, 'after shrink then grow');
    t.is(grown.length, 3 * MiB);
    t.true(grown.subarray(0, 1.5 * MiB + 7).equals(data.subarray(0, 1.5 * MiB + 7)), 'grow keeps the prefix');
    t.true(grown.subarray(1.5 * MiB + 7).equals(Buffer.alloc(1.5 * MiB - 7)), 'grown region reads zeros (old data must not reappear)');

    const fd = fs.openSync(f, 'r+');
    fs.ftruncateSync(fd, 10);
    t.is(fs.fstatSync(fd).size, 10);
    fs.ftruncateSync(fd, 5000);
    const b = Buffer.alloc(5000);
    t.is(fs.readSync(fd, b, 0, 5000, 0), 5000);
    t.true(b.subarray(0, 10).equals(data.subarray(0, 10)));
    t.true(b.subarray(10).equals(Buffer.alloc(4990)), 'ftruncate-grown region reads zeros');
    // write after a shrink inside the same block
    fs.ftruncateSync(fd, 3);
    fs.writeSync(fd, Buffer.from('Z'), 0, 1, 100);
    fs.closeSync(fd);
    const after = readOrFail(t, f, 'after ftruncate shrink and a write past EOF');
    t.is(after.length, 101);
    t.true(after.subarray(3, 100).equals(Buffer.alloc(97)), 'gap between old EOF and a later write reads zeros');
    fs.truncateSync(f, 0);
    t.is(lstat(f).size, 0n);
    t.is(fs.readFileSync(f).length, 0);
    t.is(codeOf(() => fs.truncateSync(path.join(d, 'missing'), 0)), 'ENOENT');
    t.is(codeOf(() => fs.truncateSync(d, 0)), 'EISDIR');
  });

  test('fallocate: mode 0 grows the file with zeros, --keep-size and ranges inside change nothing, collapsing is refused', async (t) => {
    const d = dirFor(t);
    const f = path.join(d, 'f');
    const data = prngBytes(4, 5000);
    fs.writeFileSync(f, data);
    const total = 4096 + 3 * MiB;
    const grow = await run('fallocate', ['-o', '4096', '-l', String(3 * MiB), f]);
    t.is(grow.code, 0, describeRun('fallocate -o 4096 -l 3M', grow));
    t.is(lstat(f).size, BigInt(total));
    const got = readOrFail(t, f, 'after fallocate');
    t.true(got.subarray(0, 5000).equals(data), 'the data written before is kept');
    t.true(got.subarray(5000).equals(Buffer.alloc(total - 5000)), 'the allocated range reads zeros');
    const inside = await run('fallocate', ['-o', '0', '-l', '100', f]);
    t.is(inside.code, 0, describeRun('fallocate inside the file', inside));
    const keep = await run('fallocate', ['--keep-size', '-l', String(8 * MiB), f]);
    t.is(keep.code, 0, describeRun('fallocate --keep-size', keep));
    t.is(lstat(f).size, BigInt(total), 'neither changes the size');
    const collapse = await run('fallocate', ['--collapse-range', '-o', '0', '-l', String(MiB), f]);
    t.not(collapse.code, 0, 'collapsing a range is refused (EOPNOTSUPP)');
    t.true(readOrFail(t, f, 'after a refused collapse').subarray(0, 5000).equals(data), 'and changes nothing');
    // posix_fallocate on a file still open for writing, past data not yet committed.
    const fd = fs.openSync(path.join(d, 'g'), 'w');
    fs.writeSync(fd, data);
    const py = await run('python3', ['-c', `import os; fd = os.open(${JSON.stringify(path.join(d, 'g'))}, os.O_WRONLY); os.posix_fallocate(fd, 0, 1 << 20); os.close(fd)`]);
    t.is(py.code, 0, describeRun('posix_fallocate', py));
    fs.writeSync(fd, Buffer.from('tail'), 0, 4, 6000);
    fs.closeSync(fd);
    const g = readOrFail(t, path.join(d, 'g'), 'after posix_fallocate');
    t.is(g.length, 1 << 20);
    t.true(g.subarray(0, 5000).equals(data) && g.subarray(6000, 6004).toString() === 'tail', 'writes before and after are kept');
  });

  test('fallocate --punch-hole and --zero-range: the range reads zeros, the rest is kept, the space is freed', async (t) => {
    const d = dirFor(t);
    const f = path.join(d, 'f');
    const size = 5 * MiB + 12_345;
    const expected = prngBytes(5, size);
    fs.writeFileSync(f, expected);
    const blocksBefore = lstat(f).blocks;
    // Across several whole blocks (whatever the block size), starting and ending inside blocks.
    const punch = await run('fallocate', ['--punch-hole', '-o', '1000', '-l', String(3 * MiB + 500), f]);
    t.is(punch.code, 0, describeRun('fallocate --punch-hole', punch));
    expected.fill(0, 1000, 1000 + 3 * MiB + 500);
    t.is(lstat(f).size, BigInt(size), 'punching keeps the size');
    t.true(lstat(f).blocks < blocksBefore, `space is freed: st_blocks ${blocksBefore} -> ${lstat(f).blocks}`);
    // Inside one block, and over the end of the file with --keep-size.
    const small = await run('fallocate', ['--zero-range', '-o', String(4 * MiB + 7), '-l', '3000', f]);
    t.is(small.code, 0, describeRun('fallocate --zero-range', small));
    expected.fill(0, 4 * MiB + 7, 4 * MiB + 3007);
    const tail = await run('fallocate', ['--zero-range', '--keep-size', '-o', String(size - 100), '-l', String(MiB), f]);
    t.is(tail.code, 0, describeRun('fallocate --zero-range --keep-size past the end', tail));
    expected.fill(0, size - 100);
    t.is(lstat(f).size, BigInt(size), '--keep-size keeps the size');
    t.true(readOrFail(t, f, 'after punching and zeroing').equals(expected), 'zeros exactly in the ranges, the data elsewhere');
    // Without --keep-size, zeroing past the end extends the file with zeros.
    const grow = await run('fallocate', ['--zero-range', '-o', String(size - 10), '-l', '1010', f]);
    t.is(grow.code, 0, describeRun('fallocate --zero-range past the end', grow));
    t.is(lstat(f).size, BigInt(size + 1000));
    const grown = readOrFail(t, f, 'after zeroing past the end');
    t.true(grown.subarray(0, size - 10).equals(expected.subarray(0, size - 10)) && grown.subarray(size - 10).equals(Buffer.alloc(1010)));
    // While another descriptor has writes in the range not yet committed: they are zeroed too.
    const fd = fs.openSync(f, 'r+');
    fs.writeSync(fd, Buffer.alloc(4096, 0x61), 0, 4096, 2 * MiB);
    const over = await run('fallocate', ['--punch-hole', '-o', String(2 * MiB + 100), '-l', '1000', f]);
    fs.closeSync(fd);
    t.is(over.code, 0, describeRun('fallocate --punch-hole over unflushed writes', over));
    const back = readOrFail(t, f, 'after punching over unflushed writes');
    t.true(back.subarray(2 * MiB, 2 * MiB + 100).equals(Buffer.alloc(100, 0x61)), 'the write before the punched range is kept');
    t.true(back.subarray(2 * MiB + 100, 2 * MiB + 1100).equals(Buffer.alloc(1000)), 'the punched range reads zeros');
    t.true(back.subarray(2 * MiB + 1100, 2 * MiB + 4096).equals(Buffer.alloc(2996, 0x61)), 'the write after it is kept');
  });

  test('unlink removes the name; an open handle keeps working until close', async (t) => {
    const d = dirFor(t);
    const f = path.join(d, 'f');
    fs.writeFileSync(f, 'still here');
    fs.writeFileSync(path.join(d, 'other'), 'o');
    const fd = fs.openSync(f, 'r+');
    fs.unlinkSync(f);
    t.is(codeOf(() => lstat(f)), 'ENOENT');
    t.deepEqual(
      fs.readdirSync(d).filter((n) => !n.startsWith('.fuse_hidden')),
      ['other'],
    );
    const b = Buffer.alloc(64);
    t.is(b.subarray(0, fs.readSync(fd, b, 0, 64, 0)).toString(), 'still here', 'read through the open handle after unlink');
    fs.writeSync(fd, '!!', 10);
    t.is(fs.fstatSync(fd).size, 12);
    t.is(b.subarray(0, fs.readSync(fd, b, 0, 64, 0)).toString(), 'still here!!');
    fs.closeSync(fd);
    await sleep(100);
    t.deepEqual(fs.readdirSync(d), ['other'], 'nothing left behind after the last close');
    fs.writeFileSync(f, 'new');
    t.is(fs.readFileSync(f, 'utf8'), 'new', 're-created name is a new file');
  });

  test('data written on one handle is visible to a second handle before close', async (t) => {
    const d = dirFor(t);
    const f = path.join(d, 'f');
    fs.writeFileSync(f, '');
    const w = fs.openSync(f, 'r+');
    const r = fs.openSync(f, 'r');
    const chunk = prngBytes(9, 200_000);
    fs.writeSync(w, chunk, 0, chunk.length, 0);
    t.is(fs.fstatSync(r).size, chunk.length, 'fstat on the other handle sees the new size');
    t.is(lstat(f).size, BigInt(chunk.length), 'stat by path sees the new size');
    const b = Buffer.alloc(chunk.length + 10);
    t.is(fs.readSync(r, b, 0, b.length, 0), chunk.length);
    t.true(b.subarray(0, chunk.length).equals(chunk), 'the other handle reads the data');
    fs.writeSync(w, Buffer.from('tail'), 0, 4, 1_000_000);
    t.is(fs.fstatSync(r).size, 1_000_004);
    const tail = Buffer.alloc(4);
    fs.readSync(r, tail, 0, 4, 1_000_000);
    t.is(tail.toString(), 'tail');
    // and a new process sees it too (before close)
    t.is((await shOk('stat', ['-c', '%s', f])).trim(), '1000004');
    t.is(await shOk('tail', ['-c', '4', f]), 'tail');
    fs.closeSync(r);
    fs.closeSync(w);
  });

  test('fsync and fdatasync succeed on files and directories', async (t) => {
    const d = dirFor(t);
    const f = path.join(d, 'f');
    const fd = fs.openSync(f, 'w');
    fs.writeSync(fd, prngBytes(5, 70_000));
    t.notThrows(() => fs.fsyncSync(fd));
    fs.writeSync(fd, 'more');
    t.notThrows(() => fs.fdatasyncSync(fd));
    fs.closeSync(fd);
    t.is(lstat(f).size, 70_004n);
    const dfd = fs.openSync(d, 'r');
    t.notThrows(() => fs.fsyncSync(dfd), 'fsync on a directory');
    fs.closeSync(dfd);
    await shOk('dd', ['if=/dev/zero', `of=${path.join(d, 'dd')}`, 'bs=64k', 'count=4', 'conv=fsync', 'status=none']);
    t.is(lstat(path.join(d, 'dd')).size, 256n * 1024n);
  });

  test('2 GiB file written with dd bs=1M reads back byte-exact', async (t) => {
    t.timeout(20 * 60_000);
    const d = dirFor(t);
    const f = path.join(d, 'big');
    const size = 2 * GiB;
    const chunk = MiB;
    // Deterministic data: AES-128-CTR keystream over zeros (fast, incompressible).
    const cipher = createCipheriv('aes-128-ctr', Buffer.alloc(16, 0x5a), Buffer.alloc(16, 0xa5));
    const zero = Buffer.alloc(chunk);
    const srcHash = createHash('sha256');
    const started = Date.now();
    const dd = spawn('dd', [`of=${f}`, 'bs=1M', 'iflag=fullblock', 'conv=fsync', 'status=none'], {
      stdio: ['pipe', 'ignore', 'pipe'],
    });
    let ddErr = '';
    dd.stderr.setEncoding('utf8').on('data', (s: string) => (ddErr += s));
    dd.stdin.on('error', () => {}); // EPIPE if dd dies; reported through its exit code
    const closed = once(dd, 'close') as Promise<[number | null, NodeJS.Signals | null]>;
    let alive = true;
    void closed.then(() => (alive = false));
    for (let off = 0; off < size && alive; off += chunk) {
      const block = cipher.update(zero);
      srcHash.update(block);
      if (!dd.stdin.write(block)) await Promise.race([once(dd.stdin, 'drain'), closed]);
    }
    dd.stdin.end();
    const [code] = await closed;
    const writeMs = Date.now() - started;
    t.is(code, 0, `dd failed: ${ddErr}`);
    t.is(lstat(f).size, BigInt(size));
    t.true(lstat(f).blocks * 512n >= BigInt(size), 'st_blocks covers the whole (non-sparse) file');
    const r0 = Date.now();
    const out = await shOk('sha256sum', [f], { timeoutMs: 15 * 60_000 });
    const readMs = Date.now() - r0;
    t.is(out.split(' ')[0], srcHash.digest('hex'), 'sha256 of the file equals sha256 of the generated data');
    t.log(`2 GiB: write ${(size / MiB / (writeMs / 1000)).toFixed(0)} MiB/s, read ${(size / MiB / (readMs / 1000)).toFixed(0)} MiB/s`);
    fs.unlinkSync(f);
  });

  test('sparse files: write at 5 GiB, holes read zeros, du stays small', async (t) => {
    const d = dirFor(t);
    const f = path.join(d, 'sparse');
    const off = 5 * GiB;
    pwrite(f, off, 'hello', 'w');
    t.is(lstat(f).size, BigInt(off + 5));
    t.true(pread(f, 0, 128 * KiB).equals(Buffer.alloc(128 * KiB)), 'start of the hole reads zeros');
    t.true(pread(f, 2.5 * GiB, 64 * KiB).equals(Buffer.alloc(64 * KiB)), 'middle of the hole reads zeros');
    const end = pread(f, off - 10, 100);
    t.is(end.length, 15);
    t.true(end.subarray(0, 10).equals(Buffer.alloc(10)));
    t.is(end.subarray(10).toString(), 'hello');
    pwrite(f, GiB + 123, 'mid');
    const around = pread(f, GiB + 100, 100);
    t.true(around.subarray(0, 23).equals(Buffer.alloc(23)));
    t.is(around.subarray(23, 26).toString(), 'mid');
    t.true(around.subarray(26).equals(Buffer.alloc(74)));
    const st = lstat(f);
    t.true(st.blocks * 512n <= 64n * BigInt(MiB), `st_blocks of a 5 GiB sparse file is small (${st.blocks})`);
    const du = Number((await shOk('du', ['-k', f])).split('\t')[0]);
    t.true(du <= 64 * 1024, `du -k reports ${du} KiB`);
    t.is(Number((await shOk('du', ['-k', '--apparent-size', f])).split('\t')[0]), Math.ceil((off + 5) / 1024));
    // sparse by ftruncate
    const g = path.join(d, 'ftrunc');
    const fd = fs.openSync(g, 'w');
    fs.ftruncateSync(fd, 8 * GiB);
    fs.closeSync(fd);
    t.is(lstat(g).size, BigInt(8 * GiB));
    t.true(pread(g, 7 * GiB, 4096).equals(Buffer.alloc(4096)));
    t.true(lstat(g).blocks * 512n <= 64n * BigInt(MiB), 'extending with ftruncate allocates nothing');
    fs.unlinkSync(f);
    fs.unlinkSync(g);
  });

  // -------------------------------------------------------------------------------------------
  // rename

  test('rename files: within and across dirs, replacing an existing file', async (t) => {
    const d = dirFor(t);
    fs.mkdirSync(path.join(d, 'a'));
    fs.mkdirSync(path.join(d, 'b'));
    fs.writeFileSync(path.join(d, 'a', 'f'), 'content f', { mode: 0o604 });
    fs.renameSync(path.join(d, 'a', 'f'), path.join(d, 'a', 'g'));
    t.is(codeOf(() => lstat(path.join(d, 'a', 'f'))), 'ENOENT');
    t.is(fs.readFileSync(path.join(d, 'a', 'g'), 'utf8'), 'content f');
    t.is(modeOf(path.join(d, 'a', 'g')), 0o604, 'mode survives rename');
    fs.renameSync(path.join(d, 'a', 'g'), path.join(d, 'b', 'h'));
    t.deepEqual(fs.readdirSync(path.join(d, 'a')), []);
    t.deepEqual(fs.readdirSync(path.join(d, 'b')), ['h']);
    t.is(fs.readFileSync(path.join(d, 'b', 'h'), 'utf8'), 'content f');

    // replace an existing file that has a second hard link
    fs.writeFileSync(path.join(d, 'b', 'victim'), 'old victim');
    fs.linkSync(path.join(d, 'b', 'victim'), path.join(d, 'a', 'victim-link'));
    t.is(lstat(path.join(d, 'a', 'victim-link')).nlink, 2n);
    fs.renameSync(path.join(d, 'b', 'h'), path.join(d, 'b', 'victim'));
    t.is(fs.readFileSync(path.join(d, 'b', 'victim'), 'utf8'), 'content f', 'target now has the source content');
    t.deepEqual(fs.readdirSync(path.join(d, 'b')), ['victim']);
    t.is(lstat(path.join(d, 'a', 'victim-link')).nlink, 1n, "the replaced inode's other link loses one nlink");
    t.is(fs.readFileSync(path.join(d, 'a', 'victim-link'), 'utf8'), 'old victim', 'the replaced inode keeps its data');

    // rename onto itself and between two links of one inode: no-ops
    fs.renameSync(path.join(d, 'b', 'victim'), path.join(d, 'b', 'victim'));
    t.is(fs.readFileSync(path.join(d, 'b', 'victim'), 'utf8'), 'content f');
    fs.linkSync(path.join(d, 'b', 'victim'), path.join(d, 'b', 'twin'));
    fs.renameSync(path.join(d, 'b', 'victim'), path.join(d, 'b', 'twin'));
    t.deepEqual(fs.readdirSync(path.join(d, 'b')).sort(), ['twin', 'victim'], 'rename between links of one inode does nothing');
    t.is(lstat(path.join(d, 'b', 'twin')).nlink, 2n);

    // symlinks move as symlinks
    fs.symlinkSync('../b/twin', path.join(d, 'a', 'sl'));
    fs.renameSync(path.join(d, 'a', 'sl'), path.join(d, 'sl'));
    t.is(fs.readlinkSync(path.join(d, 'sl')), '../b/twin');

    t.is(codeOf(() => fs.renameSync(path.join(d, 'missing'), path.join(d, 'x'))), 'ENOENT');
    t.is(codeOf(() => fs.renameSync(path.join(d, 'b', 'twin'), path.join(d, 'nodir', 'x'))), 'ENOENT');
    t.is(codeOf(() => fs.renameSync(path.join(d, 'b', 'twin'), path.join(d, 'b', 'twin', 'x'))), 'ENOTDIR');
  });

  test('rename directories: move with contents, replace empty dir, error cases', async (t) => {
    const d = dirFor(t);
    const p = (...s: string[]) => path.join(d, ...s);
    fs.mkdirSync(p('src', 'x', 'y'), { recursive: true });
    fs.writeFileSync(p('src', 'x', 'y', 'deep'), 'deep file');
    fs.writeFileSync(p('src', 'top'), 'top file');
    fs.mkdirSync(p('dst'));
    const nSrcParent = lstat(d).nlink;
    const nDst = lstat(p('dst')).nlink;

    fs.renameSync(p('src'), p('dst', 'moved'));
    t.is(codeOf(() => lstat(p('src'))), 'ENOENT');
    t.is(fs.readFileSync(p('dst', 'moved', 'x', 'y', 'deep'), 'utf8'), 'deep file', 'deep contents reachable under the new name');
    t.is(fs.readFileSync(p('dst', 'moved', 'top'), 'utf8'), 'top file');
    t.is(codeOf(() => lstat(p('src', 'x', 'y', 'deep'))), 'ENOENT', 'old deep path is gone');
    t.is(lstat(d).nlink, nSrcParent - 1n, 'old parent loses a link');
    t.is(lstat(p('dst')).nlink, nDst + 1n, 'new parent gains a link');
    t.is(lstat(p('dst', 'moved', 'x', '..')).ino, lstat(p('dst', 'moved')).ino, '.. of a moved subtree');
    // create inside the moved tree
    fs.writeFileSync(p('dst', 'moved', 'x', 'y', 'new'), 'n');
    t.deepEqual(fs.readdirSync(p('dst', 'moved', 'x', 'y')).sort(), ['deep', 'new']);

    // replace an empty directory
    fs.mkdirSync(p('empty'));
    fs.renameSync(p('dst', 'moved'), p('empty'));
    t.is(fs.readFileSync(p('empty', 'x', 'y', 'deep'), 'utf8'), 'deep file', 'dir replaced an empty dir');
    t.deepEqual(fs.readdirSync(p('dst')), []);

    // onto a non-empty directory
    fs.mkdirSync(p('full'));
    fs.writeFileSync(p('full', 'f'), 'f');
    fs.mkdirSync(p('other'));
    t.is(codeOf(() => fs.renameSync(p('other'), p('full'))), 'ENOTEMPTY', 'rename dir onto non-empty dir');
    t.deepEqual(fs.readdirSync(p('full')), ['f'], 'non-empty target untouched');
    t.true(lstat(p('other')).isDirectory(), 'source untouched');

    // type mismatches
    fs.writeFileSync(p('file'), 'x');
    t.is(codeOf(() => fs.renameSync(p('file'), p('other'))), 'EISDIR', 'file onto dir');
    t.is(codeOf(() => fs.renameSync(p('other'), p('file'))), 'ENOTDIR', 'dir onto file');
    t.is(fs.readFileSync(p('file'), 'utf8'), 'x');

    // into itself / its own subdirectory
    t.is(codeOf(() => fs.renameSync(p('empty'), p('empty', 'x', 'inside'))), 'EINVAL', 'dir into its own subdir');
    t.is(codeOf(() => fs.renameSync(p('empty'), p('empty', 'self'))), 'EINVAL', 'dir into itself');
    t.is(fs.readFileSync(p('empty', 'x', 'y', 'deep'), 'utf8'), 'deep file', 'tree intact after EINVAL');

    // shell mv of a tree across directories, then rm -r
    await shOk('mv', [p('empty'), p('full', 'tree')]);
    t.is(fs.readFileSync(p('full', 'tree', 'x', 'y', 'new'), 'utf8'), 'n');
    await shOk('rm', ['-r', p('full')]);
    t.deepEqual(fs.readdirSync(d).sort(), ['dst', 'file', 'other']);
  });

  // -------------------------------------------------------------------------------------------
  // links

  test('hard links: nlink counts, shared data and attributes, error cases', async (t) => {
    const d = dirFor(t);
    const f = path.join(d, 'f');
    fs.mkdirSync(path.join(d, 'sub'));
    fs.writeFileSync(f, 'shared');
    fs.linkSync(f, path.join(d, 'g'));
    fs.linkSync(f, path.join(d, 'sub', 'h'));
    for (const n of ['f', 'g', 'sub/h']) t.is(lstat(path.join(d, n)).nlink, 3n, `nlink of ${n} with three links`);
    t.is(lstat(path.join(d, 'g')).ino, lstat(f).ino, 'links share st_ino');
    t.is(lstat(path.join(d, 'sub', 'h')).ino, lstat(f).ino, 'links share st_ino');
    pwrite(path.join(d, 'g'), 0, 'SHARED, changed through g');
    t.is(fs.readFileSync(f, 'utf8'), 'SHARED, changed through g', 'data written through one link is seen through another');
    t.is(fs.readFileSync(path.join(d, 'sub', 'h'), 'utf8'), 'SHARED, changed through g');
    fs.chmodSync(path.join(d, 'sub', 'h'), 0o600);
    t.is(modeOf(f), 0o600, 'chmod through one link is seen through another');
    fs.truncateSync(f, 6);
    t.is(lstat(path.join(d, 'g')).size, 6n, 'truncate through one link is seen through another');
    fs.unlinkSync(f);
    t.is(lstat(path.join(d, 'g')).nlink, 2n);
    t.is(lstat(path.join(d, 'sub', 'h')).nlink, 2n);
    fs.unlinkSync(path.join(d, 'sub', 'h'));
    t.is(lstat(path.join(d, 'g')).nlink, 1n);
    t.is(fs.readFileSync(path.join(d, 'g'), 'utf8'), 'SHARED');

    fs.writeFileSync(path.join(d, 'x'), 'x');
    t.is(codeOf(() => fs.linkSync(path.join(d, 'g'), path.join(d, 'x'))), 'EEXIST', 'link onto existing name');
    t.is(codeOf(() => fs.linkSync(path.join(d, 'missing'), path.join(d, 'y'))), 'ENOENT', 'link to missing');
    t.is(codeOf(() => fs.linkSync(path.join(d, 'sub'), path.join(d, 'dirlink'))), 'EPERM', 'link to a directory');
    t.is(codeOf(() => fs.linkSync(path.join(d, 'g'), path.join(d, 'nodir', 'y'))), 'ENOENT');
    // hard link to a symlink links the symlink itself
    fs.symlinkSync('g', path.join(d, 'sl'));
    fs.linkSync(path.join(d, 'sl'), path.join(d, 'sl2'));
    t.true(lstat(path.join(d, 'sl2')).isSymbolicLink());
    t.is(fs.readlinkSync(path.join(d, 'sl2')), 'g');
    t.is(lstat(path.join(d, 'sl')).nlink, 2n);
  });

  test('symlinks: readlink, dangling, relative, to dirs, loops', async (t) => {
    const d = dirFor(t);
    fs.mkdirSync(path.join(d, 'dir'));
    fs.writeFileSync(path.join(d, 'dir', 'target'), 'target data');
    fs.symlinkSync('dir/target', path.join(d, 'l'));
    const st = lstat(path.join(d, 'l'));
    t.true(st.isSymbolicLink());
    t.is(st.size, BigInt('dir/target'.length), 'lstat size is the target length');
    t.is(Number(st.mode) & 0o777, 0o777, 'symlink mode is 0777');
    t.is(fs.readlinkSync(path.join(d, 'l')), 'dir/target');
    t.is(fs.readFileSync(path.join(d, 'l'), 'utf8'), 'target data', 'reading follows the link');
    t.true(stat(path.join(d, 'l')).isFile(), 'stat follows the link');
    fs.symlinkSync('../l', path.join(d, 'dir', 'up'));
    t.is(fs.readFileSync(path.join(d, 'dir', 'up'), 'utf8'), 'target data', 'relative ../ chain');
    fs.symlinkSync('dir', path.join(d, 'dl'));
    t.deepEqual(fs.readdirSync(path.join(d, 'dl')).sort(), ['target', 'up'], 'readdir through a link to a dir');
    t.is(fs.readFileSync(path.join(d, 'dl', 'target'), 'utf8'), 'target data');

    fs.symlinkSync('no/such/thing', path.join(d, 'dangling'));
    t.true(lstat(path.join(d, 'dangling')).isSymbolicLink(), 'lstat of a dangling link');
    t.is(fs.readlinkSync(path.join(d, 'dangling')), 'no/such/thing');
    t.is(codeOf(() => stat(path.join(d, 'dangling'))), 'ENOENT', 'stat of a dangling link');
    t.is(codeOf(() => fs.readFileSync(path.join(d, 'dangling'))), 'ENOENT');

    fs.symlinkSync('loop2', path.join(d, 'loop1'));
    fs.symlinkSync('loop1', path.join(d, 'loop2'));
    t.is(codeOf(() => stat(path.join(d, 'loop1'))), 'ELOOP');

    t.is(codeOf(() => fs.symlinkSync('x', path.join(d, 'l'))), 'EEXIST', 'symlink onto an existing name');
    t.is(codeOf(() => fs.readlinkSync(path.join(d, 'dir', 'target'))), 'EINVAL', 'readlink of a regular file');
    const long = 'seg/'.repeat(1000) + 'end'; // 4003 bytes
    fs.symlinkSync(long, path.join(d, 'long'));
    t.is(fs.readlinkSync(path.join(d, 'long')), long, 'a 4003-byte target round-trips');
    const abs = path.join(d, 'dir', 'target');
    fs.symlinkSync(abs, path.join(d, 'abs'));
    t.is(fs.readFileSync(path.join(d, 'abs'), 'utf8'), 'target data', 'absolute target');
    fs.unlinkSync(path.join(d, 'l'));
    t.is(fs.readFileSync(abs, 'utf8'), 'target data', 'unlinking a symlink leaves the target');
  });

  test('special files: FIFO, unix socket, character and block devices', async (t) => {
    const d = dirFor(t);
    const fifo = path.join(d, 'fifo');
    await shOk('mkfifo', ['-m', '0640', fifo]);
    let st = lstat(fifo);
    t.true(st.isFIFO(), 'mkfifo makes a FIFO');
    t.is(Number(st.mode) & 0o7777, 0o640);
    // data through the FIFO (the kernel does the piping)
    const reader = spawn('cat', [fifo], { stdio: ['ignore', 'pipe', 'pipe'] });
    let got = '';
    reader.stdout.setEncoding('utf8').on('data', (s: string) => (got += s));
    const wfd = await fs.promises.open(fifo, 'w');
    await wfd.write('through the pipe\n');
    await wfd.close();
    await once(reader, 'close');
    t.is(got, 'through the pipe\n');

    const sockPath = path.join(d, 'sock');
    const server = net.createServer((c) => c.end('hello from socket'));
    await new Promise<void>((res, rej) => {
      server.once('error', rej);
      server.listen(sockPath, () => res());
    });
    try {
      t.true(lstat(sockPath).isSocket(), 'bind creates a socket file');
      const reply = await new Promise<string>((res, rej) => {
        const c = net.connect(sockPath);
        let s = '';
        c.setEncoding('utf8').on('data', (x: string) => (s += x));
        c.on('end', () => res(s));
        c.on('error', rej);
        setTimeout(() => rej(new Error('connect timeout')), 5000).unref();
      }).catch((e: NodeJS.ErrnoException) => `error ${e.code ?? e.message}`);
      t.is(reply, 'hello from socket', 'connect to the socket through the mount');
    } finally {
      await new Promise((r) => server.close(r));
    }

    await shOk('mknod', [path.join(d, 'null'), 'c', '1', '3']);
    st = lstat(path.join(d, 'null'));
    t.true(st.isCharacterDevice());
    t.is(st.rdev, 259n, 'rdev of a 1:3 char device');
    await shOk('mknod', ['-m', '0600', path.join(d, 'loop'), 'b', '7', '0']);
    st = lstat(path.join(d, 'loop'));
    t.true(st.isBlockDevice());
    t.is(st.rdev, 1792n, 'rdev of a 7:0 block device');
    t.is(Number(st.mode) & 0o7777, 0o600);
    const ls = (await shOk('ls', ['-l', path.join(d, 'null')])).trim();
    t.regex(ls, /^c.* 1, +3 /, 'ls -l shows major, minor');
    t.is(codeOf(() => fs.mkdirSync(fifo)), 'EEXIST');
    fs.unlinkSync(fifo);
    fs.unlinkSync(path.join(d, 'null'));
    fs.unlinkSync(path.join(d, 'loop'));
    t.deepEqual(fs.readdirSync(d).filter((n) => n !== 'sock'), []);
  });

  // -------------------------------------------------------------------------------------------
  // attributes

  test('chmod and chown (as root) and their limits as an unprivileged user', async (t) => {
    const d = dirFor(t);
    const f = path.join(d, 'f');
    fs.writeFileSync(f, 'x');
    for (const m of [0o600, 0o4755, 0o2711, 0o1777, 0o000, 0o777, 0o644]) {
      fs.chmodSync(f, m);
      t.is(modeOf(f), m, `chmod ${m.toString(8)}`);
    }
    t.true(lstat(f).isFile(), 'chmod keeps the file type');
    fs.mkdirSync(path.join(d, 'dir'));
    fs.chmodSync(path.join(d, 'dir'), 0o1777);
    t.is(modeOf(path.join(d, 'dir')), 0o1777);
    t.true(lstat(path.join(d, 'dir')).isDirectory());

    fs.chownSync(f, 1234, 5678);
    t.is(lstat(f).uid, 1234n);
    t.is(lstat(f).gid, 5678n);
    fs.chownSync(f, -1, 42); // only the group
    t.is(lstat(f).uid, 1234n);
    t.is(lstat(f).gid, 42n);
    await shOk('chown', ['777:888', f]);
    t.is((await shOk('stat', ['-c', '%u:%g', f])).trim(), '777:888');

    fs.symlinkSync('f', path.join(d, 'sl'));
    fs.lchownSync(path.join(d, 'sl'), 4321, 8765);
    t.is(lstat(path.join(d, 'sl')).uid, 4321n, 'lchown changes the link');
    t.is(lstat(f).uid, 777n, 'lchown leaves the target');

    // unprivileged: cannot chmod/chown what it does not own; can chmod its own file
    fs.chmodSync(d, 0o777);
    const rootFile = path.join(d, 'rootfile');
    fs.writeFileSync(rootFile, 'r');
    t.deepEqual(await nodeAs(NOBODY, 'fs.chmodSync(arg, 0o777)', rootFile), { ok: false, code: 'EPERM' }, 'chmod of a root file as nobody');
    t.deepEqual(await nodeAs(NOBODY, `fs.chownSync(arg, ${NOBODY}, ${NOBODY})`, rootFile), { ok: false, code: 'EPERM' }, 'chown of a root file as nobody');
    const own = path.join(d, 'own');
    t.deepEqual(await nodeAs(NOBODY, 'fs.writeFileSync(arg, "mine"); fs.chmodSync(arg, 0o600)', own), { ok: true, value: null });
    t.is(modeOf(own), 0o600);
    t.deepEqual(await nodeAs(NOBODY, 'fs.chownSync(arg, 0, 0)', own), { ok: false, code: 'EPERM' }, 'giving a file away as nobody');
    t.is(lstat(own).uid, BigInt(NOBODY));
  });

  test('utimens: touch -d with ns, touch -a, touch -m, utimes with distinct times', async (t) => {
    const d = dirFor(t);
    const f = path.join(d, 'f');
    fs.writeFileSync(f, 'x');
    // 2001-02-03T04:05:06.123456789Z
    const T1 = 981173106n * SEC + 123456789n;
    await shOk('touch', ['-d', '2001-02-03 04:05:06.123456789', f]);
    let st = lstat(f);
    t.is(fmtNs(st.mtimeNs), fmtNs(T1), 'touch -d sets mtime to the nanosecond');
    t.is(fmtNs(st.atimeNs), fmtNs(T1), 'touch -d sets atime to the nanosecond');

    const T2 = 1012615506n * SEC + 987654321n; // 2002-02-02T02:05:06.987654321Z
    await shOk('touch', ['-m', '-d', '2002-02-02 02:05:06.987654321', f]);
    st = lstat(f);
    t.is(fmtNs(st.mtimeNs), fmtNs(T2), 'touch -m sets mtime');
    t.is(fmtNs(st.atimeNs), fmtNs(T1), 'touch -m leaves atime alone');

    const T3 = 1044151506n * SEC + 500000000n; // 2003-02-02T02:05:06.5Z
    await shOk('touch', ['-a', '-d', '2003-02-02 02:05:06.5', f]);
    st = lstat(f);
    t.is(fmtNs(st.atimeNs), fmtNs(T3), 'touch -a sets atime');
    t.is(fmtNs(st.mtimeNs), fmtNs(T2), 'touch -a leaves mtime alone');

    fs.utimesSync(f, 1_000_000_000.25, 1_100_000_000.75);
    st = lstat(f);
    t.is(fmtNs(st.atimeNs), '1000000000.250000000', 'utimes sets atime');
    t.is(fmtNs(st.mtimeNs), '1100000000.750000000', 'utimes sets mtime (distinct from atime)');

    // far future (beyond 2038) and before the epoch
    await shOk('touch', ['-m', '-d', '2100-01-01 00:00:00.000000001', f]);
    t.is(fmtNs(lstat(f).mtimeNs), '4102444800.000000001', 'mtime in 2100');
    await shOk('touch', ['-m', '-d', '1969-12-31 23:59:58', f]);
    t.is(fmtNs(lstat(f).mtimeNs), '-2.000000000', 'mtime before the epoch');

    // touch without a date sets both to now, and ctime advances
    await timesAround(t, 'touch (now)', [{ path: f, label: 'file', advance: ['atime', 'mtime', 'ctime'] }], () => shOk('touch', [f]));

    // directories
    await shOk('touch', ['-d', '2001-02-03 04:05:06.123456789', d]);
    t.is(fmtNs(lstat(d).mtimeNs), fmtNs(T1), 'touch -d on a directory');

    // unprivileged: may set "now" with write permission, may not set explicit times on others' files
    fs.chmodSync(f, 0o666);
    t.deepEqual(await nodeAs(NOBODY, 'fs.utimesSync(arg, 1000, 2000)', f), { ok: false, code: 'EPERM' }, 'explicit times on a file nobody does not own');
    fs.chmodSync(f, 0o644);
    const r = await sh('touch', [f], { uid: NOBODY });
    t.not(r.code, 0, 'touch (now) without write permission fails');
  });

  test('cp -p, cp -a and tar x keep exact modification times', async (t) => {
    const d = dirFor(t);
    const src = makeTempDir('kvfs-src-');
    try {
      fs.mkdirSync(path.join(src, 'tree', 'sub'), { recursive: true });
      fs.writeFileSync(path.join(src, 'tree', 'a'), prngBytes(11, 50_000));
      fs.writeFileSync(path.join(src, 'tree', 'sub', 'b'), 'bbb');
      fs.chmodSync(path.join(src, 'tree', 'a'), 0o640);
      fs.symlinkSync('a', path.join(src, 'tree', 'link'));
      await shOk('touch', ['-d', '2005-06-07 08:09:10.123456789', path.join(src, 'tree', 'a')]);
      await shOk('touch', ['-m', '-d', '2006-01-01 00:00:01.5', path.join(src, 'tree', 'sub', 'b')]);
      await shOk('touch', ['-a', '-d', '2004-01-01 00:00:00.25', path.join(src, 'tree', 'sub', 'b')]);
      await shOk('touch', ['-d', '2007-07-07 07:07:07.777777777', path.join(src, 'tree', 'sub')]);
      await shOk('touch', ['-d', '2008-08-08 08:08:08.888888888', path.join(src, 'tree')]);
      // stat the sources now: copying reads them, which updates their atime (relatime)
      const srcStats = new Map(['a', 'sub/b', 'sub', '.'].map((rel) => [rel, lstat(path.join(src, 'tree', rel))]));
      const srcSt = (rel: string) => srcStats.get(rel)!;

      // cp -p of one file
      await shOk('cp', ['-p', path.join(src, 'tree', 'a'), path.join(d, 'a')]);
      t.is(fmtNs(lstat(path.join(d, 'a')).mtimeNs), fmtNs(srcSt('a').mtimeNs), 'cp -p keeps mtime exactly');
      t.is(fmtNs(lstat(path.join(d, 'a')).atimeNs), fmtNs(srcSt('a').atimeNs), 'cp -p keeps atime exactly');
      t.is(modeOf(path.join(d, 'a')), 0o640, 'cp -p keeps mode');
      await shOk('cp', ['-p', path.join(src, 'tree', 'sub', 'b'), path.join(d, 'b')]);
      t.is(fmtNs(lstat(path.join(d, 'b')).mtimeNs), fmtNs(srcSt('sub/b').mtimeNs), 'cp -p keeps mtime when atime differs');
      t.is(fmtNs(lstat(path.join(d, 'b')).atimeNs), fmtNs(srcSt('sub/b').atimeNs), 'cp -p keeps atime when mtime differs');

      // cp -a of a tree (directory times set after their contents)
      await shOk('cp', ['-a', path.join(src, 'tree'), path.join(d, 'cpa')]);
      for (const rel of ['a', 'sub/b', 'sub', '.'])
        t.is(fmtNs(lstat(path.join(d, 'cpa', rel)).mtimeNs), fmtNs(srcSt(rel).mtimeNs), `cp -a keeps mtime of ${rel}`);
      t.is(fs.readlinkSync(path.join(d, 'cpa', 'link')), 'a');
      t.is(sha256File(path.join(d, 'cpa', 'a')), sha256File(path.join(src, 'tree', 'a')));

      // tar x (pax format carries nanoseconds)
      const tarball = path.join(src, 't.tar');
      await shOk('tar', ['--format=posix', '-cf', tarball, '-C', path.join(src, 'tree'), '.']);
      fs.mkdirSync(path.join(d, 'untar'));
      await shOk('tar', ['-xf', tarball, '-C', path.join(d, 'untar')]);
      for (const rel of ['a', 'sub/b', 'sub'])
        t.is(fmtNs(lstat(path.join(d, 'untar', rel)).mtimeNs), fmtNs(srcSt(rel).mtimeNs), `tar x keeps mtime of ${rel}`);
      t.is(modeOf(path.join(d, 'untar', 'a')), 0o640, 'tar x keeps mode');
      t.is(fs.readlinkSync(path.join(d, 'untar', 'link')), 'a');
      t.is(sha256File(path.join(d, 'untar', 'a')), sha256File(path.join(src, 'tree', 'a')));
      // round trip: tar c from the mount and compare listings with the source
      const r = await sh('sh', ['-c', `cd ${path.join(d, 'untar')} && tar --format=posix --sort=name -cf - . | tar -tvf - --full-time | sort`]);
      t.is(r.code, 0, r.stderr);
      const want = await shOk('sh', ['-c', `tar -tvf ${tarball} --full-time | sort`]);
      t.is(r.stdout, want, 'tar listing (modes, sizes, mtimes, link targets) of the extracted tree equals the source');
    } finally {
      removeTempDir(src);
    }
  });

  test('statfs: df and stat -f report sane numbers', async (t) => {
    const mnt = mounted();
    const s = fs.statfsSync(mnt);
    t.is(s.type, FUSE_SUPER_MAGIC, 'f_type is FUSE');
    t.true(s.bsize > 0, 'f_bsize > 0');
    t.true(s.blocks > 0, 'f_blocks > 0');
    t.true(s.bfree <= s.blocks, 'f_bfree <= f_blocks');
    t.true(s.bavail <= s.bfree, 'f_bavail <= f_bfree');
    t.true(s.files >= s.ffree, 'f_files >= f_ffree');
    t.is((await shOk('stat', ['-f', '-c', '%l', mnt])).trim(), '255', 'name length limit 255');
    const df = await shOk('df', ['-P', mnt]);
    const line = df.trim().split('\n').pop()!;
    t.true(line.endsWith(` ${mnt}`), `df shows the mountpoint: ${line}`);
    const dfi = await sh('df', ['-i', mnt]);
    t.is(dfi.code, 0, 'df -i works');
  });

  test('xattrs: set/get/list/remove with XATTR_CREATE and XATTR_REPLACE', async (t) => {
    const d = dirFor(t);
    const f = path.join(d, 'f');
    fs.writeFileSync(f, 'x');
    const x = (op: Parameters<typeof xattr1>[0]) => xattr1(op);
    t.deepEqual((await x({ op: 'list', path: f })).names, [], 'new file has no xattrs');
    t.true((await x({ op: 'set', path: f, name: 'user.a', value: 'v1' })).ok);
    t.is((await x({ op: 'get', path: f, name: 'user.a' })).value?.toString(), 'v1');
    t.is((await x({ op: 'set', path: f, name: 'user.a', value: 'v2', flags: 'create' })).code, 'EEXIST', 'XATTR_CREATE on existing');
    t.is((await x({ op: 'get', path: f, name: 'user.a' })).value?.toString(), 'v1', 'failed create left the value');
    t.is((await x({ op: 'set', path: f, name: 'user.b', value: 'v', flags: 'replace' })).code, 'ENODATA', 'XATTR_REPLACE on missing');
    t.is((await x({ op: 'get', path: f, name: 'user.b' })).code, 'ENODATA', 'failed replace created nothing');
    t.true((await x({ op: 'set', path: f, name: 'user.a', value: 'v3', flags: 'replace' })).ok, 'XATTR_REPLACE on existing');
    t.is((await x({ op: 'get', path: f, name: 'user.a' })).value?.toString(), 'v3');
    t.true((await x({ op: 'set', path: f, name: 'user.b', value: 'bee', flags: 'create' })).ok, 'XATTR_CREATE on missing');
    t.true((await x({ op: 'set', path: f, name: 'user.empty', value: '' })).ok, 'empty value');
    t.deepEqual((await x({ op: 'get', path: f, name: 'user.empty' })).value, Buffer.alloc(0));
    const bin = Buffer.concat([Buffer.from([0, 0, 255, 10, 13]), prngBytes(12, 4000)]);
    t.true((await x({ op: 'set', path: f, name: 'user.bin', value: bin })).ok, 'binary value');
    t.deepEqual((await x({ op: 'get', path: f, name: 'user.bin' })).value, bin, 'binary value round-trips');
    t.deepEqual((await x({ op: 'list', path: f })).names, ['user.a', 'user.b', 'user.bin', 'user.empty']);
    t.is((await x({ op: 'get', path: f, name: 'user.missing' })).code, 'ENODATA', 'get missing');
    t.true((await x({ op: 'remove', path: f, name: 'user.a' })).ok);
    t.is((await x({ op: 'remove', path: f, name: 'user.a' })).code, 'ENODATA', 'remove missing');
    t.is((await x({ op: 'get', path: f, name: 'user.a' })).code, 'ENODATA', 'removed');
    t.deepEqual((await x({ op: 'list', path: f })).names, ['user.b', 'user.bin', 'user.empty']);
    // many attributes
    const many = Array.from({ length: 30 }, (_, i) => `user.k${String(i).padStart(2, '0')}`);
    const rs = await xattrs(many.map((name, i) => ({ op: 'set' as const, path: f, name, value: `value ${i}` })));
    t.true(rs.every((r) => r.ok));
    t.deepEqual((await x({ op: 'list', path: f })).names, [...many, 'user.b', 'user.bin', 'user.empty'].sort());
    // directories, and attributes follow renames and hard links
    t.true((await x({ op: 'set', path: d, name: 'user.dir', value: 'd' })).ok, 'xattr on a directory');
    t.is((await x({ op: 'get', path: d, name: 'user.dir' })).value?.toString(), 'd');
    fs.renameSync(f, path.join(d, 'g'));
    t.is((await x({ op: 'get', path: path.join(d, 'g'), name: 'user.b' })).value?.toString(), 'bee', 'xattr survives rename');
    fs.linkSync(path.join(d, 'g'), path.join(d, 'h'));
    t.true((await x({ op: 'set', path: path.join(d, 'h'), name: 'user.vialink', value: '1' })).ok);
    t.is((await x({ op: 'get', path: path.join(d, 'g'), name: 'user.vialink' })).value?.toString(), '1', 'xattr shared by hard links');
    // permissions: user.* needs write permission
    fs.chmodSync(d, 0o755);
    t.is((await xattr1({ op: 'set', path: path.join(d, 'g'), name: 'user.nobody', value: 'n' }, NOBODY)).code, 'EACCES', 'setxattr without write permission');
    t.is((await xattr1({ op: 'get', path: path.join(d, 'g'), name: 'user.b' }, NOBODY)).value?.toString(), 'bee', 'getxattr with read permission');
    t.is((await x({ op: 'set', path: f, name: 'user.x', value: '1' })).code, 'ENOENT', 'setxattr on a missing file');
  });

  test('name length: 255 bytes work, 256 bytes fail with ENAMETOOLONG', async (t) => {
    const d = dirFor(t);
    const ok = 'n'.repeat(255);
    const bad = 'n'.repeat(256);
    fs.writeFileSync(path.join(d, ok), 'ok');
    t.is(fs.readFileSync(path.join(d, ok), 'utf8'), 'ok');
    t.deepEqual(fs.readdirSync(d), [ok]);
    t.is(codeOf(() => fs.writeFileSync(path.join(d, bad), 'x')), 'ENAMETOOLONG', 'create');
    t.is(codeOf(() => fs.mkdirSync(path.join(d, bad))), 'ENAMETOOLONG', 'mkdir');
    t.is(codeOf(() => fs.symlinkSync('x', path.join(d, bad))), 'ENAMETOOLONG', 'symlink');
    t.is(codeOf(() => fs.linkSync(path.join(d, ok), path.join(d, bad))), 'ENAMETOOLONG', 'link');
    t.is(codeOf(() => fs.renameSync(path.join(d, ok), path.join(d, bad))), 'ENAMETOOLONG', 'rename');
    t.is(codeOf(() => lstat(path.join(d, bad))), 'ENAMETOOLONG', 'lookup');
    t.deepEqual(fs.readdirSync(d), [ok], 'nothing was created');
    // bytes, not characters: 85 x '€' (3 bytes each) = 255 bytes, 86 = 258
    const euro85 = '€'.repeat(85);
    fs.mkdirSync(path.join(d, euro85));
    t.true(lstat(path.join(d, euro85)).isDirectory());
    t.is(codeOf(() => fs.mkdirSync(path.join(d, '€'.repeat(86)))), 'ENAMETOOLONG', '258-byte UTF-8 name');
    fs.renameSync(path.join(d, ok), path.join(d, euro85, ok));
    t.is(fs.readFileSync(path.join(d, euro85, ok), 'utf8'), 'ok');
  });

  test('permissions as uid 65534: EACCES in a root 0755 dir, success in a 0777 dir', async (t) => {
    const d = dirFor(t);
    const closed = path.join(d, 'closed');
    const open = path.join(d, 'open');
    fs.mkdirSync(closed, { mode: 0o755 });
    fs.mkdirSync(open);
    fs.chmodSync(open, 0o777);
    fs.writeFileSync(path.join(closed, 'rootfile'), 'secret-ish');
    fs.chmodSync(path.join(closed, 'rootfile'), 0o644);
    fs.writeFileSync(path.join(closed, 'private'), 'private');
    fs.chmodSync(path.join(closed, 'private'), 0o600);

    const as = (body: string, arg: unknown) => nodeAs(NOBODY, body, arg);
    t.deepEqual(await as('fs.writeFileSync(arg, "x")', path.join(closed, 'new')), { ok: false, code: 'EACCES' }, 'create in root 0755 dir');
    t.deepEqual(await as('fs.mkdirSync(arg)', path.join(closed, 'newdir')), { ok: false, code: 'EACCES' }, 'mkdir in root 0755 dir');
    t.deepEqual(await as('fs.unlinkSync(arg)', path.join(closed, 'rootfile')), { ok: false, code: 'EACCES' }, 'unlink in root 0755 dir');
    t.deepEqual(await as('fs.renameSync(arg, arg + "2")', path.join(closed, 'rootfile')), { ok: false, code: 'EACCES' }, 'rename in root 0755 dir');
    t.deepEqual(await as('return fs.readFileSync(arg, "utf8")', path.join(closed, 'rootfile')), { ok: true, value: 'secret-ish' }, 'read 0644');
    t.deepEqual(await as('fs.writeFileSync(arg, "x")', path.join(closed, 'rootfile')), { ok: false, code: 'EACCES' }, 'write 0644 root file');
    t.deepEqual(await as('fs.truncateSync(arg, 0)', path.join(closed, 'rootfile')), { ok: false, code: 'EACCES' }, 'truncate 0644 root file');
    t.deepEqual(await as('return fs.readFileSync(arg, "utf8")', path.join(closed, 'private')), { ok: false, code: 'EACCES' }, 'read 0600 root file');
    t.deepEqual(await as('return fs.readdirSync(arg).sort()', closed), { ok: true, value: ['private', 'rootfile'] }, 'list root 0755 dir');
    t.is(fs.readFileSync(path.join(closed, 'rootfile'), 'utf8'), 'secret-ish', 'unchanged');
    t.is(codeOf(() => lstat(path.join(closed, 'new'))), 'ENOENT', 'nothing created');

    // search permission
    const locked = path.join(d, 'locked');
    fs.mkdirSync(locked, { mode: 0o700 });
    fs.writeFileSync(path.join(locked, 'in'), 'x');
    t.deepEqual(await as('fs.statSync(arg)', path.join(locked, 'in')), { ok: false, code: 'EACCES' }, 'stat inside a 0700 root dir');
    t.deepEqual(await as('fs.readdirSync(arg)', locked), { ok: false, code: 'EACCES' }, 'readdir of a 0700 root dir');

    // 0777 dir: works, new entries belong to 65534
    t.deepEqual(
      await as('fs.writeFileSync(path.join(arg, "mine"), "by nobody"); fs.mkdirSync(path.join(arg, "mydir")); fs.symlinkSync("mine", path.join(arg, "mylink")); return fs.readFileSync(path.join(arg, "mine"), "utf8")', open),
      { ok: true, value: 'by nobody' },
      'create in a 0777 dir',
    );
    for (const n of ['mine', 'mydir', 'mylink']) {
      const st = lstat(path.join(open, n));
      t.is(st.uid, BigInt(NOBODY), `${n} is owned by uid 65534`);
      t.is(st.gid, BigInt(NOBODY), `${n} has gid 65534`);
    }
    t.is(modeOf(path.join(open, 'mine')), 0o644, 'default mode 0666 & ~022');
    t.deepEqual(await as('fs.appendFileSync(arg, "!"); fs.renameSync(arg, arg + ".renamed"); return fs.readFileSync(arg + ".renamed", "utf8")', path.join(open, 'mine')), {
      ok: true,
      value: 'by nobody!',
    });
    // chmod 0666 on a root file lets nobody write it
    fs.chmodSync(path.join(closed, 'rootfile'), 0o666);
    t.deepEqual(await as('fs.appendFileSync(arg, "+")', path.join(closed, 'rootfile')), { ok: true, value: null }, 'write a 0666 root file');
    // sticky directory: nobody cannot remove root's file
    const sticky = path.join(d, 'sticky');
    fs.mkdirSync(sticky);
    fs.chmodSync(sticky, 0o1777);
    fs.writeFileSync(path.join(sticky, 'roots'), 'r');
    t.deepEqual(await as('fs.unlinkSync(arg)', path.join(sticky, 'roots')), { ok: false, code: 'EPERM' }, 'unlink root file in a sticky dir');
    t.deepEqual(await as('fs.writeFileSync(arg, "n"); fs.unlinkSync(arg)', path.join(sticky, 'own')), { ok: true, value: null }, 'own file in a sticky dir');
    // with a shell tool too
    const r = await sh('touch', [path.join(closed, 'by-touch')], { uid: NOBODY });
    t.not(r.code, 0, 'touch in a root 0755 dir fails for nobody');
    t.is(codeOf(() => lstat(path.join(closed, 'by-touch'))), 'ENOENT');
  });

  test('concurrent creates in one directory from several processes all land', async (t) => {
    const d = dirFor(t);
    const procs = 6;
    const per = 40;
    const script = (p: number) => `i=0; while [ $i -lt ${per} ]; do : > "${d}/p${p}_$i" || exit 1; i=$((i+1)); done; mkdir "${d}/dir${p}"`;
    const rs = await Promise.all(Array.from({ length: procs }, (_, p) => sh('sh', ['-c', script(p)], { timeoutMs: 120_000 })));
    rs.forEach((r, p) => t.is(r.code, 0, describeRun(`writer ${p}`, r)));
    const names = fs.readdirSync(d);
    t.is(names.length, procs * per + procs);
    t.is(new Set(names).size, names.length, 'no duplicates');
    t.is(lstat(d).nlink, BigInt(2 + procs), 'parent nlink counts every new subdir');
  });

  // -------------------------------------------------------------------------------------------
  // timestamps changed by each operation

  test('times: write and truncate update mtime+ctime; chmod/chown only ctime', async (t) => {
    const d = dirFor(t);
    const f = path.join(d, 'f');
    fs.writeFileSync(f, 'initial');
    const file = (advance: TimeField[], keep: TimeField[] = []) => ({ path: f, label: 'file', advance, keep });
    const dir = { path: d, label: 'parent dir', keep: ['mtime', 'ctime'] as TimeField[] };
    await timesAround(t, 'write', [file(['mtime', 'ctime']), dir], () => pwrite(f, 3, 'XYZ'));
    await timesAround(t, 'append', [file(['mtime', 'ctime']), dir], () => fs.appendFileSync(f, 'more'));
    await timesAround(t, 'truncate shrink', [file(['mtime', 'ctime']), dir], () => fs.truncateSync(f, 2));
    await timesAround(t, 'truncate grow', [file(['mtime', 'ctime']), dir], () => fs.truncateSync(f, 2000));
    await timesAround(t, 'ftruncate', [file(['mtime', 'ctime']), dir], () => {
      const fd = fs.openSync(f, 'r+');
      fs.ftruncateSync(fd, 10);
      fs.closeSync(fd);
    });
    await timesAround(t, 'open O_TRUNC', [file(['mtime', 'ctime']), dir], () => fs.closeSync(fs.openSync(f, 'w')));
    await timesAround(t, 'chmod', [file(['ctime'], ['mtime']), dir], () => fs.chmodSync(f, 0o600));
    await timesAround(t, 'chown', [file(['ctime'], ['mtime']), dir], () => fs.chownSync(f, 1000, 1000));
    await timesAround(t, 'setxattr', [file(['ctime'], ['mtime']), dir], async () => {
      const r = await xattr1({ op: 'set', path: f, name: 'user.t', value: '1' });
      if (!r.ok) throw new Error(`setxattr failed: ${r.code}`);
    });
    await timesAround(t, 'stat and readdir', [file([], ['mtime', 'ctime']), dir], () => {
      lstat(f);
      fs.readdirSync(d);
    });
    fs.writeFileSync(f, 'some data to read');
    await timesAround(t, 'read', [file([], ['mtime', 'ctime'])], () => fs.readFileSync(f));
  });

  test('times: read updates atime (atime older than mtime)', async (t) => {
    const d = dirFor(t);
    const f = path.join(d, 'f');
    fs.writeFileSync(f, 'data');
    await shOk('touch', ['-a', '-d', '2000-01-01', f]);
    t.is(fmtNs(lstat(f).atimeNs), '946684800.000000000', 'atime set by touch -a');
    await timesAround(t, 'read', [{ path: f, label: 'file', advance: ['atime'], keep: ['mtime'] }], () => fs.readFileSync(f));
  });

  test('times: create, unlink, mkdir, rmdir, symlink, link, rename update the parent dirs', async (t) => {
    const d = dirFor(t);
    const p = (...s: string[]) => path.join(d, ...s);
    fs.mkdirSync(p('a'));
    fs.mkdirSync(p('b'));
    const parent = (dir: string, label: string) => ({ path: dir, label, advance: ['mtime', 'ctime'] as TimeField[] });
    const untouched = (dir: string, label: string) => ({ path: dir, label, keep: ['mtime', 'ctime'] as TimeField[] });
    await timesAround(t, 'create', [parent(p('a'), 'a'), untouched(p('b'), 'b')], () => fs.writeFileSync(p('a', 'f'), 'f'));
    await timesAround(t, 'mkdir', [parent(p('a'), 'a')], () => fs.mkdirSync(p('a', 'sub')));
    await timesAround(t, 'mkfifo', [parent(p('a'), 'a')], () => shOk('mkfifo', [p('a', 'fifo')]));
    await timesAround(t, 'symlink', [parent(p('a'), 'a')], () => fs.symlinkSync('f', p('a', 'sl')));
    await timesAround(t, 'link', [parent(p('b'), 'b (new name)'), { path: p('a', 'f'), label: 'linked file', advance: ['ctime'], keep: ['mtime'] }, untouched(p('a'), 'a (old name)')], () =>
      fs.linkSync(p('a', 'f'), p('b', 'f-link')),
    );
    await timesAround(t, 'unlink one of two links', [parent(p('b'), 'b'), { path: p('a', 'f'), label: 'remaining link', advance: ['ctime'], keep: ['mtime'] }], () =>
      fs.unlinkSync(p('b', 'f-link')),
    );
    await timesAround(t, 'rename within dir', [parent(p('a'), 'a'), { path: p('a', 'f'), pathAfter: p('a', 'g'), label: 'renamed file', advance: ['ctime'], keep: ['mtime'] }], () =>
      fs.renameSync(p('a', 'f'), p('a', 'g')),
    );
    await timesAround(t, 'rename across dirs', [parent(p('a'), 'source dir'), parent(p('b'), 'target dir'), { path: p('a', 'g'), pathAfter: p('b', 'g'), label: 'moved file', advance: ['ctime'], keep: ['mtime'] }], () =>
      fs.renameSync(p('a', 'g'), p('b', 'g')),
    );
    fs.writeFileSync(p('a', 'victim'), 'v');
    await timesAround(t, 'rename replacing a file', [parent(p('a'), 'target dir'), parent(p('b'), 'source dir')], () => fs.renameSync(p('b', 'g'), p('a', 'victim')));
    await timesAround(t, 'rename a dir across dirs', [parent(p('a'), 'source dir'), parent(p('b'), 'target dir'), { path: p('a', 'sub'), pathAfter: p('b', 'sub'), label: 'moved dir', advance: ['ctime'] }], () =>
      fs.renameSync(p('a', 'sub'), p('b', 'sub')),
    );
    await timesAround(t, 'rmdir', [parent(p('b'), 'b')], () => fs.rmdirSync(p('b', 'sub')));
    await timesAround(t, 'unlink', [parent(p('a'), 'a')], () => fs.unlinkSync(p('a', 'victim')));
    await timesAround(t, 'create inside a subdir', [untouched(d, 'grandparent')], () => fs.writeFileSync(p('a', 'deeper'), 'x'));
  });
}

// ---------------------------------------------------------------------------------------------
// CLI lifecycle and bad input (backend-neutral)

function stderrLines(r: { stderr: string }): string[] {
  return r.stderr.split('\n').filter((l) => l.trim() !== '');
}

/**
 * Exit 1 without hanging, exactly one line on stderr, nothing mounted at mnt, no process left.
 * The commands give up on a backend after about 5-10 s; the bound is 30 s so that a loaded
 * machine (a second node process starting takes seconds there) does not fail it.
 */
export async function assertCleanFailure(t: T, what: string, r: RunResult, opts: { mnt?: string; tokens: string[] }): Promise<void> {
  const info = describeRun(what, r);
  t.false(r.timedOut, `${what}: must not hang\n${info}`);
  t.is(r.code, 1, `${what}: exit code\n${info}`);
  t.true(r.ms < 30_000, `${what}: must fail within 30 s (took ${r.ms} ms)`);
  t.is(stderrLines(r).length, 1, `${what}: exactly one line on stderr\n${info}`);
  if (opts.mnt) t.false(isMounted(opts.mnt), `${what}: nothing mounted at ${opts.mnt}`);
  await sleep(200);
  for (const tok of opts.tokens) t.deepEqual(processesMatching(tok), [], `${what}: no process left mentioning ${tok}`);
}

/** Returns a getter for the servers it started (available once its before hook has run). */
export function cliSuite(test: TestFn, backend: Backend): { servers: () => Servers } {
  let servers: Servers | undefined;
  const volumes: Volume[] = [];

  test.before(async () => {
    servers = await startServers(backend);
  });

  test.after.always(async () => {
    await Promise.allSettled(volumes.map((v) => v.stop()));
    await servers?.stop();
  });

  const newVolume = async (extra: Partial<Parameters<typeof startVolume>[0]> = {}) => {
    const v = await startVolume({ backend, servers, ...extra });
    volumes.push(v);
    return v;
  };

  /** Format a volume without mounting it. */
  const format = async (volume: string, extra: string[] = []) => {
    const args = ['format', '--meta', servers!.metaUrlFor(volume), ...(servers!.dataUrl ? ['--data', servers!.dataUrl] : []), ...extra];
    return kvfs(args);
  };

  const freshMountpoint = () => {
    const dir = makeTempDir('kvfs-cli-');
    const mnt = path.join(dir, 'mnt');
    fs.mkdirSync(mnt, { mode: 0o755 });
    return { dir, mnt };
  };

  test('--help exits 0 and prints usage', async (t) => {
    const r = await kvfs(['--help']);
    t.is(r.code, 0, describeRun('kvfs --help', r));
    t.regex(r.stdout + r.stderr, /mount/);
  });

  test('format refuses to overwrite an existing volume unless --force', async (t) => {
    const volume = uniqueName();
    const r1 = await format(volume);
    t.is(r1.code, 0, describeRun('first format', r1));
    const r2 = await format(volume);
    await assertCleanFailure(t, 'second format without --force', r2, { tokens: [volume] });
    // put something in it, then --force must give an empty volume
    const v = await newVolume({ volume: `${volume}x` });
    fs.writeFileSync(path.join(v.mnt, 'old'), 'old');
    await v.unmount();
    const r3 = await kvfs(['format', '--meta', v.metaUrl, ...(v.dataUrl ? ['--data', v.dataUrl] : [])]);
    await assertCleanFailure(t, 'format of a used volume without --force', r3, { tokens: [v.volume] });
    const r4 = await kvfs(['format', '--meta', v.metaUrl, ...(v.dataUrl ? ['--data', v.dataUrl] : []), '--force']);
    t.is(r4.code, 0, describeRun('format --force', r4));
    await v.remount();
    t.deepEqual(fs.readdirSync(v.mnt), [], 'a re-formatted volume is empty');
    await v.stop();
  });

  test('mount of an unknown volume fails cleanly', async (t) => {
    const { dir, mnt } = freshMountpoint();
    const volume = uniqueName('nosuch');
    const r = await kvfs(['mount', '--meta', servers!.metaUrlFor(volume), mnt], { timeoutMs: 20_000 });
    await assertCleanFailure(t, 'mount unknown volume', r, { mnt, tokens: [mnt, volume] });
    removeTempDir(dir);
  });

  test('mount on a missing mountpoint, a file, or an already mounted dir fails cleanly', async (t) => {
    const v = await newVolume();
    const { dir } = freshMountpoint();
    const missing = path.join(dir, 'missing');
    let r = await kvfs(['mount', '--meta', v.metaUrl, missing], { timeoutMs: 20_000 });
    await assertCleanFailure(t, 'mount on a missing dir', r, { mnt: missing, tokens: [missing] });
    t.false(fs.existsSync(missing), 'the missing mountpoint was not created');

    const file = path.join(dir, 'file');
    fs.writeFileSync(file, 'x');
    r = await kvfs(['mount', '--meta', v.metaUrl, file], { timeoutMs: 20_000 });
    await assertCleanFailure(t, 'mount on a file', r, { mnt: file, tokens: [file] });
    t.is(fs.readFileSync(file, 'utf8'), 'x');

    fs.writeFileSync(path.join(v.mnt, 'still'), 'works');
    r = await kvfs(['mount', '--meta', v.metaUrl, v.mnt], { timeoutMs: 20_000 });
    t.is(r.code, 1, describeRun('mount on an already mounted dir', r));
    t.true(r.ms < 10_000, `fails within 10 s (${r.ms} ms)`);
    t.is(stderrLines(r).length, 1, describeRun('one line on stderr', r));
    t.is(procMountsCount(v.mnt), 1, 'still exactly one mount there');
    t.is(fs.readFileSync(path.join(v.mnt, 'still'), 'utf8'), 'works', 'the first mount still works');
    await sleep(200);
    t.deepEqual(
      processesMatching(v.mnt).filter((p) => p.pid !== v.pid),
      [],
      'no extra process left',
    );
    await v.unmount();
    removeTempDir(dir);
  });

  test('foreground mount: one "mounted" line; SIGTERM and SIGINT flush, unmount, exit 0', async (t) => {
    const v = await newVolume();
    t.is(v.daemon.stdout().split('\n').filter(Boolean).length, 1, `exactly one line on stdout: ${JSON.stringify(v.daemon.stdout())}`);
    const entry = mountEntry(v.mnt);
    t.truthy(entry);
    t.regex(entry!.fstype, /^fuse/);
    for (const sig of ['SIGTERM', 'SIGINT'] as const) {
      const data = prngBytes(sig.length, 3 * MiB);
      const fd = fs.openSync(path.join(v.mnt, sig), 'w');
      fs.writeSync(fd, data);
      fs.closeSync(fd);
      const d = v.daemon;
      d.child.kill(sig);
      const st = await waitExit(d, 30_000);
      t.deepEqual(st, { code: 0, signal: null }, `${sig}: daemon exits 0\n${d.log()}`);
      t.false(isMounted(v.mnt), `${sig}: unmounted`);
      await v.remount();
      t.is(sha256File(path.join(v.mnt, sig)), sha256(data), `${sig}: data written before the signal is there after remount`);
    }
  });

  test('external umount ends the foreground daemon with exit 0', async (t) => {
    const v = await newVolume();
    fs.writeFileSync(path.join(v.mnt, 'f'), 'x');
    const d = v.daemon;
    const r = await sh('umount', [v.mnt]);
    t.is(r.code, 0, describeRun('umount', r));
    const st = await waitExit(d, 30_000);
    t.deepEqual(st, { code: 0, signal: null }, `daemon exit after external umount\n${d.log()}`);
    t.false(isMounted(v.mnt));
    await v.remount();
    t.is(fs.readFileSync(path.join(v.mnt, 'f'), 'utf8'), 'x');
  });

  test('mount -d returns once mounted; kvfs umount stops the background daemon', async (t) => {
    const v = await newVolume();
    await v.unmount();
    const r = await kvfs(['mount', ...v.mountArgsFor([]), '-d', v.mnt], { timeoutMs: 30_000 });
    try {
      t.is(r.code, 0, describeRun('kvfs mount -d', r));
      t.true(isMounted(v.mnt), 'mounted when -d returns');
      fs.writeFileSync(path.join(v.mnt, 'bg'), 'background');
      t.is(fs.readFileSync(path.join(v.mnt, 'bg'), 'utf8'), 'background');
      const u = await kvfs(['umount', v.mnt]);
      t.is(u.code, 0, describeRun('kvfs umount', u));
      t.false(isMounted(v.mnt));
      const gone = await waitUntil(() => processesMatching(v.mnt).length === 0, 15_000);
      t.true(gone, `background daemon exits after umount: ${JSON.stringify(processesMatching(v.mnt))}`);
    } finally {
      if (isMounted(v.mnt)) await kvfs(['umount', v.mnt]);
      for (const p of processesMatching(v.mnt)) tryKill(p.pid);
    }
    await v.remount();
    t.is(fs.readFileSync(path.join(v.mnt, 'bg'), 'utf8'), 'background', 'data from the background mount persisted');
  });

  test('--read-only: reads work, every change fails with EROFS', async (t) => {
    const v = await newVolume();
    fs.mkdirSync(path.join(v.mnt, 'dir'));
    fs.writeFileSync(path.join(v.mnt, 'f'), 'content');
    await v.remount(['--read-only', ...NO_CACHE]);
    const p = (n: string) => path.join(v.mnt, n);
    t.is(fs.readFileSync(p('f'), 'utf8'), 'content');
    t.deepEqual(fs.readdirSync(v.mnt).sort(), ['dir', 'f']);
    t.is(codeOf(() => fs.writeFileSync(p('new'), 'x')), 'EROFS', 'create');
    t.is(codeOf(() => fs.openSync(p('f'), 'r+')), 'EROFS', 'open for write');
    t.is(codeOf(() => fs.mkdirSync(p('d2'))), 'EROFS', 'mkdir');
    t.is(codeOf(() => fs.unlinkSync(p('f'))), 'EROFS', 'unlink');
    t.is(codeOf(() => fs.rmdirSync(p('dir'))), 'EROFS', 'rmdir');
    t.is(codeOf(() => fs.renameSync(p('f'), p('g'))), 'EROFS', 'rename');
    t.is(codeOf(() => fs.chmodSync(p('f'), 0o600)), 'EROFS', 'chmod');
    t.is(codeOf(() => fs.truncateSync(p('f'), 0)), 'EROFS', 'truncate');
    t.is(codeOf(() => fs.symlinkSync('f', p('sl'))), 'EROFS', 'symlink');
    t.is((await xattr1({ op: 'set', path: p('f'), name: 'user.x', value: '1' })).code, 'EROFS', 'setxattr');
    t.is(fs.readFileSync(p('f'), 'utf8'), 'content');
    await v.remount(NO_CACHE);
    fs.writeFileSync(p('new'), 'writable again');
    t.is(fs.readFileSync(p('new'), 'utf8'), 'writable again');
  });

  test('allow_other by default; --no-allow-other keeps other users out', async (t) => {
    const v = await newVolume();
    fs.writeFileSync(path.join(v.mnt, 'f'), 'x');
    t.deepEqual(await nodeAs(NOBODY, 'return fs.readdirSync(arg)', v.mnt), { ok: true, value: ['f'] }, 'other users can list by default');
    await v.remount(['--no-allow-other', ...NO_CACHE]);
    t.deepEqual(await nodeAs(NOBODY, 'return fs.readdirSync(arg)', v.mnt), { ok: false, code: 'EACCES' }, 'other users are refused with --no-allow-other');
    t.deepEqual(fs.readdirSync(v.mnt), ['f'], 'the mounting user still has access');
  });

  test('format --block-size: data at random offsets round-trips', async (t) => {
    const v = await newVolume({ formatArgs: ['--block-size', String(64 * KiB)], mountArgs: NO_CACHE });
    const f = path.join(v.mnt, 'f');
    const rnd = mulberry32(99);
    let model = Buffer.alloc(0);
    fs.writeFileSync(f, '');
    for (let i = 0; i < 60; i++) {
      const pos = Math.floor(rnd() * 2 * MiB);
      const data = prngBytes(i, 1 + Math.floor(rnd() * 200_000));
      pwrite(f, pos, data);
      if (pos + data.length > model.length) {
        const g = Buffer.alloc(pos + data.length);
        model.copy(g);
        model = g;
      }
      data.copy(model, pos);
    }
    t.is(sha256File(f), sha256(model));
    await v.remount();
    t.is(sha256File(f), sha256(model), 'after remount');
  });

  return {
    servers: () => {
      if (!servers) throw new Error('servers not started (before hook failed)');
      return servers;
    },
  };
}

function procMountsCount(mnt: string): number {
  return fs
    .readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .filter((l) => l.split(' ')[1] === mnt).length;
}

async function waitUntil(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (cond()) return true;
    await sleep(100);
  }
  return cond();
}

function tryKill(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    /* gone */
  }
}


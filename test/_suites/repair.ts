// `kvfs fsck` and `kvfs gc` against real servers and real mounts, through the CLI.
//
// fsckSuite(test, backend): a clean volume after a workload is clean; damage planted directly in
//   the metadata store (with the KvEngine, while the volume is not mounted: the embedded store is
//   exclusive) and in the block store is reported with the right paths, repaired, and the mount
//   works afterwards.
// gcSuite(test, backend): unreferenced blocks (uploaded directly, or left by `format --force`) are
//   listed by the dry run and deleted by --delete, referenced ones never; orphans; progress; and
//   (etcd only: an embedded volume cannot be mounted while gc holds it) gc racing a writer on the
//   mount and a commit that lands during gc's grace period.
//
// Damage is planted through lib/ (openVolume -> the KvEngine and the BlockStore): that is the point
// of these tests. Everything else goes through the kernel and the `kvfs` command.
import type { ExecutionContext, TestFn } from 'ava';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openVolume } from '../../lib/fs/volume';
import type { BlockStore } from '../../lib/data/store';
import type { KvEngine } from '../../lib/meta/kv';
import type { Meta } from '../../lib/meta/meta';
import { Attr, decodeAttr, decodeChunk, decodeEntry, encodeAttr, encodeChunk, encodeEntry, keys, nowNs, refIds } from '../../lib/meta/schema';
import { Backend, CLI, describeRun, kvfs, ROOT, RunResult, Servers, startServers, startVolume, Volume } from '../_helpers/mount';
import { pwrite, sh, sha256, sha256File } from '../_helpers/ops';

type T = ExecutionContext<unknown>;

const KiB = 1024;
const MiB = 1024 * KiB;
const BS = 64 * KiB;
const FORMAT = ['--block-size', '64K'];

// ---------------------------------------------------------------------------------------------
// Helpers

interface Lib {
  meta: Meta;
  store: BlockStore;
  kv: KvEngine;
}

/** Opens the volume through lib/ (for an embedded volume: only while it is not mounted). */
async function withLib<R>(vol: Volume, fn: (lib: Lib) => Promise<R>): Promise<R> {
  const v = await openVolume(vol.metaUrl, { timeoutMs: 10_000 });
  try {
    return await fn({ meta: v.meta, store: v.store, kv: v.meta.kv });
  } finally {
    await v.close();
  }
}

async function inoOf(kv: KvEngine, p: string): Promise<number> {
  let ino = 1;
  for (const name of p.split('/').filter(Boolean)) {
    const v = await kv.get(keys.entry(ino, name));
    if (!v) throw new Error(`no ${name} in ${p}`);
    ino = decodeEntry(name, v).ino;
  }
  return ino;
}

async function attrOf(kv: KvEngine, ino: number): Promise<Attr> {
  const v = await kv.get(keys.attr(ino));
  if (!v) throw new Error(`no attributes for inode ${ino}`);
  return decodeAttr(ino, v);
}

async function editAttr(kv: KvEngine, ino: number, fn: (a: Attr) => void): Promise<void> {
  await kv.txn(async (tx) => {
    const a = decodeAttr(ino, (await tx.get(keys.attr(ino)))!);
    fn(a);
    tx.put(keys.attr(ino), encodeAttr(a));
  });
}

async function storedIds(store: BlockStore): Promise<Set<string>> {
  const ids = new Set<string>();
  await store.list((batch) => batch.forEach((id) => ids.add(id)));
  return ids;
}

/** Every block id the volume's block maps reference. */
async function referencedIds(kv: KvEngine): Promise<Set<string>> {
  const ids = new Set<string>();
  for (const { key, value } of await kv.scan('A')) {
    if (key.length === 26 && key[17] === 'C') for (const ref of decodeChunk(value).values()) for (const id of refIds(ref)) ids.add(String(id));
  }
  return ids;
}

/** A set of ids as a sorted array (ava compares sets in insertion order). */
function sorted(ids: Iterable<string | number>): number[] {
  return [...ids].map(Number).sort((a, b) => a - b);
}

/** Waits until the mount has reclaimed its orphans (it does so about 2 s after an unlink). */
async function settled(vol: Volume): Promise<void> {
  const deadline = Date.now() + 20_000;
  while ((await withLib(vol, async ({ kv }) => (await kv.scan(keys.orphans)).length)) > 0) {
    if (Date.now() > deadline) throw new Error('orphans were not reclaimed within 20 s');
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** The proxy below, as a script for its own process. */
const PROXY_SCRIPT = `
const net = require('node:net');
const [port, rate] = process.argv.slice(1).map(Number);
let nextFree = Date.now();
const server = net.createServer((client) => {
  const upstream = net.connect(port, '127.0.0.1');
  const end = () => { client.destroy(); upstream.destroy(); };
  client.on('error', end).on('close', end);
  upstream.on('error', end).on('close', end);
  upstream.pipe(client);
  client.on('data', (chunk) => {
    const now = Date.now();
    nextFree = Math.max(nextFree, now) + (chunk.length / rate) * 1000;
    const delay = nextFree - now;
    if (delay < 1) return void upstream.write(chunk);
    client.pause();
    setTimeout(() => { upstream.write(chunk); client.resume(); }, delay);
  });
});
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
process.stdin.on('end', () => process.exit(0)).resume();
`;

/**
 * A TCP proxy to Redis, in its own process, that lets requests through at `bytesPerSecond` in
 * total (replies are not slowed): a mount that reaches Redis through it takes a while to store a
 * big commit's blocks, and stores the first of them long before the commit's transaction. gc
 * talks to Redis directly. (Its own process: a test that blocks its event loop on a synchronous
 * read of the mount must not stall the daemon's traffic.) It exits when this process goes away.
 */
async function throttledProxy(port: number, bytesPerSecond: number): Promise<{ url: string; close(): Promise<void> }> {
  const child = spawn(process.execPath, ['-e', PROXY_SCRIPT, String(port), String(bytesPerSecond)], { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise<void>((resolve) => child.on('close', () => resolve()));
  const proxyPort = await new Promise<number>((resolve, reject) => {
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (out.includes('\n')) resolve(Number(out.trim()));
    });
    void exited.then(() => reject(new Error('the throttling proxy exited before it listened')));
  });
  return {
    url: `redis://127.0.0.1:${proxyPort}`,
    close: async () => {
      child.stdin!.end();
      child.kill('SIGTERM');
      await exited;
    },
  };
}

/** sha256 of every regular file under dir, by relative path. */
function checksums(dir: string, skip: (rel: string) => boolean = () => false): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (rel: string) => {
    for (const ent of fs.readdirSync(path.join(dir, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${ent.name}` : ent.name;
      if (skip(r)) continue;
      if (ent.isDirectory()) walk(r);
      else if (ent.isFile()) out.set(r, sha256File(path.join(dir, r)));
    }
  };
  walk('');
  return out;
}

function sameChecksums(t: T, what: string, expected: Map<string, string>, actual: Map<string, string>): void {
  const bad: string[] = [];
  for (const [p, h] of expected) if (actual.get(p) !== h) bad.push(`${p}: ${actual.has(p) ? 'differs' : 'missing'}`);
  t.deepEqual(bad, [], `${what}: files that do not read back as written`);
}

function ok(t: T, what: string, r: RunResult, code = 0): void {
  t.is(r.code, code, describeRun(what, r));
}

function parseJson<R>(t: T, what: string, r: RunResult): R {
  try {
    return JSON.parse(r.stdout) as R;
  } catch {
    t.fail(describeRun(`${what}: output is not JSON`, r));
    throw new Error('not JSON');
  }
}

interface JsonProblem {
  kind: string;
  ino: number;
  path: string;
  paths?: string[];
  message: string;
  index?: number;
  blockId?: number;
  repair?: { status: string; detail: string };
}
interface JsonFsck {
  rounds: Array<{ problems: JsonProblem[]; orphans: Array<{ ino: number; path: string; holders: number }>; stats: Record<string, number> }>;
  left: JsonProblem[];
  repaired: number;
  clean: boolean;
}
interface JsonGc {
  dryRun: boolean;
  blockCounter: number;
  stored: number;
  referenced: number;
  candidates: number;
  newer: number;
  rescued: number;
  graceMs: number;
  garbage: { blocks: number; bytes: number; ids: number[] };
  deleted: { blocks: number; bytes: number };
  orphans: Array<{ ino: number; action: string; blocks: number; holders: number }>;
}

const fsckArgs = (vol: Volume, ...extra: string[]) => ['fsck', '--meta', vol.metaUrl, ...extra];
const gcArgs = (vol: Volume, ...extra: string[]) => ['gc', '--meta', vol.metaUrl, ...extra];

async function fsckJson(t: T, vol: Volume, ...extra: string[]): Promise<{ r: RunResult; report: JsonFsck }> {
  const r = await kvfs(fsckArgs(vol, '--json', ...extra), { timeoutMs: 120_000 });
  return { r, report: parseJson<JsonFsck>(t, 'kvfs fsck --json', r) };
}

async function gcJson(t: T, vol: Volume, ...extra: string[]): Promise<{ r: RunResult; report: JsonGc }> {
  const r = await kvfs(gcArgs(vol, '--json', ...extra), { timeoutMs: 180_000 });
  return { r, report: parseJson<JsonGc>(t, 'kvfs gc --json', r) };
}

/**
 * A workload that leaves every kind of inode behind: directories, small and multi-block files,
 * hard links, symlinks, a sparse file, a FIFO, overwritten and truncated files, renames, unlinks.
 */
async function workload(t: T, mnt: string): Promise<void> {
  const p = (rel: string) => path.join(mnt, rel);
  fs.mkdirSync(p('d/sub/deep'), { recursive: true });
  fs.mkdirSync(p('e'));
  fs.writeFileSync(p('small.txt'), 'hello, fsck\n');
  fs.writeFileSync(p('big.bin'), randomBytes(300_000)); // 5 blocks of 64K, the last one short
  fs.writeFileSync(p('d/sub/deep/x.bin'), randomBytes(MiB + 1));
  fs.writeFileSync(p('e/inner.txt'), 'inside e\n');
  fs.linkSync(p('big.bin'), p('d/hl.bin'));
  fs.symlinkSync('d/sub', p('link'));
  fs.symlinkSync('/nowhere/at/all', p('d/dangling-symlink'));
  pwrite(p('sparse.bin'), 0, 'head', 'w');
  pwrite(p('sparse.bin'), 5 * MiB + 123, randomBytes(1000));
  pwrite(p('big.bin'), 70_000, randomBytes(10_000)); // replaces block 1
  fs.writeFileSync(p('trunc.bin'), randomBytes(200_000));
  fs.truncateSync(p('trunc.bin'), 100_000);
  fs.writeFileSync(p('gone.bin'), randomBytes(100_000));
  fs.unlinkSync(p('gone.bin'));
  fs.writeFileSync(p('d/renamed-from'), 'moved\n');
  fs.renameSync(p('d/renamed-from'), p('d/sub/renamed-to'));
  fs.mkdirSync(p('tmpdir'));
  fs.rmdirSync(p('tmpdir'));
  const r = await sh('mkfifo', [p('d/fifo')]);
  t.is(r.code, 0, describeRun('mkfifo', r));
}

// ---------------------------------------------------------------------------------------------
// fsck

export function fsckSuite(test: TestFn, backend: Backend): void {
  let servers: Servers | undefined;
  const volumes: Volume[] = [];
  test.before(async () => {
    servers = await startServers(backend);
  });
  test.after.always(async () => {
    await Promise.allSettled(volumes.map((v) => v.stop()));
    await servers?.stop();
  });
  const newVolume = async () => {
    const v = await startVolume({ backend, servers, formatArgs: FORMAT });
    volumes.push(v);
    return v;
  };

  test.serial(`fsck: a volume after a workload is clean (${backend})`, async (t) => {
    const vol = await newVolume();
    await workload(t, vol.mnt);
    if (backend === 'etcd') {
      // An etcd volume can be checked while mounted; an orphan held open is listed, not damage.
      const held = path.join(vol.mnt, 'held-open.bin');
      fs.writeFileSync(held, randomBytes(150_000));
      const fd = fs.openSync(held, 'r');
      try {
        fs.unlinkSync(held);
        const { r, report } = await fsckJson(t, vol);
        ok(t, 'fsck of a mounted volume with a file open after unlink', r);
        t.deepEqual(report.rounds[0].problems, []);
        // libfuse2 may instead rename a file unlinked while open on the same mount to .fuse_hidden*
        // (README, 'What each mount sees'); then there is no orphan, and no problem either.
        const hidden = fs.readdirSync(vol.mnt).some((n) => n.startsWith('.fuse_hidden'));
        if (hidden) {
          t.log('the unlinked open file was renamed to .fuse_hidden* by libfuse2, not orphaned');
        } else {
          t.is(report.rounds[0].orphans.length, 1, 'the open unlinked file is an orphan pending reclaim');
          t.regex(report.rounds[0].orphans[0].path, /^<orphan inode \d+>$/);
          const text = await kvfs(fsckArgs(vol));
          ok(t, 'fsck (text)', text);
          t.regex(text.stdout, /orphan pending reclaim: <orphan inode \d+>/);
          t.regex(text.stdout, /kvfs fsck: no problems; 1 orphan pending reclaim/);
        }
        t.is(fs.readSync(fd, Buffer.alloc(10), 0, 10, 0), 10, 'the open file still reads');
      } finally {
        fs.closeSync(fd);
      }
      // --repair on a mounted etcd volume: a warning, and nothing to do.
      const rep = await kvfs(fsckArgs(vol, '--repair'));
      ok(t, 'fsck --repair on a clean mounted etcd volume', rep);
      t.regex(rep.stderr, /warning: .*stop its mounts for repairs/);
      t.regex(rep.stderr, /Mounted now: .*\(pid \d+\)/);
    } else {
      const r = await kvfs(fsckArgs(vol));
      ok(t, 'fsck of a mounted embedded volume', r, 1);
      t.regex(r.stderr, /in use by another kvfs process.*unmount it, then run kvfs fsck/);
      t.is(r.stdout, '');
      const rep = await kvfs(fsckArgs(vol, '--repair'));
      ok(t, 'fsck --repair of a mounted embedded volume', rep, 1);
      t.regex(rep.stderr, /in use/);
    }
    await vol.unmount();
    const { r, report } = await fsckJson(t, vol);
    ok(t, 'fsck after the workload', r);
    t.deepEqual(report.rounds[0].problems, []);
    t.deepEqual(report.left, []);
    t.true(report.clean);
    t.deepEqual(report.rounds[0].orphans, [], 'the orphan was reclaimed at its last close');
    const stats = report.rounds[0].stats;
    t.true(stats.inodes >= 14 && stats.blockRefs >= 20 && stats.storedBlocks >= stats.blockRefs, JSON.stringify(stats));
    const text = await kvfs(fsckArgs(vol));
    ok(t, 'fsck (text)', text);
    t.regex(text.stdout, /^kvfs fsck: no problems$/m);
  });

  test.serial(`fsck: planted damage is reported with its paths, repaired, and the mount works (${backend})`, async (t) => {
    const vol = await newVolume();
    await workload(t, vol.mnt);
    const before = checksums(vol.mnt);
    const bigBefore = fs.readFileSync(path.join(vol.mnt, 'big.bin'));
    await vol.unmount();

    const planted = await withLib(vol, async ({ meta, store, kv }) => {
      const ino = (p: string) => inoOf(kv, p);
      const small = await ino('/small.txt');
      const big = await ino('/big.bin');
      const d = await ino('/d');
      const sub = await ino('/d/sub');
      const deep = await ino('/d/sub/deep');
      const x = await ino('/d/sub/deep/x.bin');
      const e = await ino('/e');
      // A dangling entry: a name for an inode that does not exist.
      await kv.txn(async (tx) => tx.put(keys.entry(1, 'ghost'), encodeEntry(987_654, 'file')));
      // Wrong link counts: a file, a directory.
      await editAttr(kv, small, (a) => (a.nlink = 3));
      await editAttr(kv, d, (a) => (a.nlink = 9));
      // A directory's parent field pointing elsewhere.
      await editAttr(kv, sub, (a) => (a.parent = 1));
      // A file's bytes-used count off.
      await editAttr(kv, small, (a) => (a.used = 4242));
      // A block reference far beyond the end of a file, to a block that exists.
      const [beyondId] = await meta.allocBlockIds(1);
      await store.put(String(beyondId), randomBytes(BS));
      await kv.txn(async (tx) => {
        const map = decodeChunk(await tx.get(keys.chunk(small, 0)));
        map.set(40, { id: beyondId, len: BS });
        tx.put(keys.chunk(small, 0), encodeChunk(map));
      });
      // A block missing from the block store: block 2 of big.bin (bytes 131072-196607).
      const chunk = decodeChunk(await kv.get(keys.chunk(big, 0)));
      const lostId = chunk.get(2)!.id;
      await store.delete([String(lostId)]);
      // Unreachable: a file (its only entry removed) and a directory with a file in it.
      await kv.txn(async (tx) => tx.delete(keys.entry(deep, 'x.bin')));
      await kv.txn(async (tx) => tx.delete(keys.entry(1, 'e')));
      return { small, big, d, sub, x, e, lostId, beyondId };
    });

    // --- the check ---
    const { r, report } = await fsckJson(t, vol);
    ok(t, 'fsck of the damaged volume', r, 1);
    const problems = report.rounds[0].problems;
    const find = (kind: string, p: string) => problems.find((q) => q.kind === kind && q.path === p);
    const expect = (kind: string, p: string) => t.truthy(find(kind, p), `a ${kind} problem at ${p}; got ${JSON.stringify(problems, null, 1)}`);
    expect('dangling-entry', '/ghost');
    expect('nlink', '/small.txt');
    expect('dir-nlink', '/d');
    expect('dir-nlink', '/'); // e's entry is gone, the root still counts it
    expect('dir-parent', '/d/sub');
    expect('used', '/small.txt');
    expect('block-beyond-eof', '/small.txt');
    expect('missing-block', '/big.bin');
    expect('unreachable', `<unreachable inode ${planted.x}>`);
    expect('unreachable', `<unreachable inode ${planted.e}>`);
    const missing = find('missing-block', '/big.bin')!;
    t.is(missing.index, 2);
    t.is(missing.blockId, planted.lostId);
    t.is(find('block-beyond-eof', '/small.txt')!.blockId, planted.beyondId);
    t.deepEqual(find('nlink', '/small.txt')!.paths, undefined);
    t.is(problems.length, 10, JSON.stringify(problems, null, 1));
    t.false(report.clean);

    const text = await kvfs(fsckArgs(vol));
    ok(t, 'fsck (text) of the damaged volume', text, 1);
    t.regex(text.stdout, /dangling entry: \/ghost names inode 987654, which has no attributes/);
    t.regex(text.stdout, /wrong link count: \/small\.txt \(inode \d+\) has link count 3, but 1 entry names it/);
    t.regex(text.stdout, new RegExp(`missing block: /big\\.bin: block 2 \\(bytes 131072-196607\\) is block id ${planted.lostId}, which is missing`));
    t.regex(text.stdout, new RegExp(`unreachable inode: directory inode ${planted.e} is not reachable from the root \\(no entry names it\\); 1 entries below it`));
    t.regex(text.stdout, /kvfs fsck: 10 problems \(.*\); run kvfs fsck --repair/);

    // --- the repair ---
    const rep = await kvfs(fsckArgs(vol, '--repair'), { timeoutMs: 120_000 });
    ok(t, 'fsck --repair', rep);
    t.regex(rep.stdout, /repaired: dangling entry \/ghost: entry removed/);
    t.regex(rep.stdout, new RegExp(`repaired: unreachable inode <unreachable inode ${planted.x}>: moved to /lost\\+found/#${planted.x}`));
    t.regex(rep.stdout, new RegExp(`repaired: unreachable inode <unreachable inode ${planted.e}>: moved to /lost\\+found/#${planted.e}`));
    t.regex(rep.stdout, /repaired: missing block \/big\.bin: 65536 bytes of data lost; data lost at bytes 131072-196607 \(block 2, id \d+\): reads as zeros/);
    t.regex(rep.stdout, /kvfs fsck: 10 problems found \(.*\), 10 repaired, 0 left/);
    if (backend === 'etcd') t.regex(rep.stderr, /warning: repairing .* stop its mounts for repairs/);
    else t.is(rep.stderr, '');

    const again = await fsckJson(t, vol);
    ok(t, 'fsck after the repair', again.r);
    t.deepEqual(again.report.rounds[0].problems, []);
    t.true(again.report.clean);

    // The block beyond the end of small.txt is now unreferenced: gc's business.
    const g = await gcJson(t, vol, '--grace', '1');
    ok(t, 'gc dry run after the repair', g.r);
    t.true(g.report.garbage.ids.includes(planted.beyondId), JSON.stringify(g.report.garbage));

    // --- the mount works ---
    await vol.remount();
    const m = (rel: string) => path.join(vol.mnt, rel);
    const ls = await sh('ls', ['-la', vol.mnt, m('lost+found'), m('d'), m(`lost+found/#${planted.e}`)]);
    t.is(ls.code, 0, describeRun('ls', ls));
    t.deepEqual(fs.readdirSync(vol.mnt).sort(), ['big.bin', 'd', 'link', 'lost+found', 'small.txt', 'sparse.bin', 'trunc.bin']);
    t.is(fs.statSync(m('lost+found')).mode & 0o7777, 0o700);
    t.deepEqual(fs.readdirSync(m('lost+found')).sort(), [`#${planted.e}`, `#${planted.x}`].sort());
    t.is(sha256File(m(`lost+found/#${planted.x}`)), before.get('d/sub/deep/x.bin') as string);
    t.is(sha256File(m(`lost+found/#${planted.e}/inner.txt`)), before.get('e/inner.txt') as string);
    const cat = await sh('cat', [m('small.txt'), m(`lost+found/#${planted.e}/inner.txt`)]);
    t.is(cat.stdout, 'hello, fsck\ninside e\n');
    t.is(fs.statSync(m('small.txt')).nlink, 1);
    t.is(fs.statSync(m('small.txt')).size, 12);
    t.is(fs.statSync(m('big.bin')).nlink, 2);
    t.is(fs.statSync(m('d')).nlink, 3); // d/sub
    t.is(fs.statSync(vol.mnt).nlink, 2 + 2); // d, lost+found
    t.is(fs.statSync(m('lost+found')).nlink, 3); // #e
    // big.bin: zeros where the lost block was, everything else as written (also through the link).
    const expected = Buffer.from(bigBefore);
    expected.fill(0, 131072, 196608);
    t.is(sha256(fs.readFileSync(m('big.bin'))), sha256(expected));
    t.is(sha256File(m('d/hl.bin')), sha256(expected));
    const after = checksums(vol.mnt, (rel) => rel.startsWith('lost+found') || rel === 'big.bin' || rel === 'd/hl.bin');
    const rest = new Map([...before].filter(([p]) => !['big.bin', 'd/hl.bin', 'd/sub/deep/x.bin', 'e/inner.txt'].includes(p)));
    sameChecksums(t, 'after the repair', rest, after);
    // ... and takes changes: a new file in the repaired directory, a directory moved out of lost+found.
    fs.writeFileSync(m('d/sub/new.txt'), 'new\n');
    fs.renameSync(m(`lost+found/#${planted.e}`), m('e'));
    t.is(fs.readFileSync(m('e/inner.txt'), 'utf8'), 'inside e\n');
    await vol.unmount();
    const last = await fsckJson(t, vol);
    ok(t, 'fsck after using the repaired volume', last.r);
    t.true(last.report.clean, JSON.stringify(last.report.left));
  });

  test.serial(`fsck: a block written over in place keeps its parts; a missing part is reported and repaired (${backend})`, async (t) => {
    const vol = await newVolume();
    const p = path.join(vol.mnt, 'parts.bin');
    fs.writeFileSync(p, randomBytes(50_000)); // one block (64K)
    pwrite(p, 1000, randomBytes(100));
    pwrite(p, 20_000, randomBytes(200));
    const content = fs.readFileSync(p);
    await vol.unmount();
    const ref = await withLib(vol, async ({ kv }) => decodeChunk(await kv.get(keys.chunk(await inoOf(kv, '/parts.bin'), 0))).get(0)!);
    t.deepEqual(
      ref.parts?.map(({ at, len }) => [at, len]),
      [
        [1000, 100],
        [20_000, 200],
      ],
      'two small writes over a committed block are stored as two parts',
    );
    const clean = await fsckJson(t, vol);
    ok(t, 'fsck of a volume with parts', clean.r);
    t.deepEqual(clean.report.rounds[0].problems, []);
    await vol.remount();
    t.true(fs.readFileSync(p).equals(content), 'the block reads back with its parts after a remount');
    await vol.unmount();

    const lostId = ref.parts![1].id;
    await withLib(vol, ({ store }) => store.delete([String(lostId)]));
    const damaged = await fsckJson(t, vol);
    ok(t, 'fsck with a part missing', damaged.r, 1);
    const problems = damaged.report.rounds[0].problems;
    t.deepEqual(
      problems.map((q) => [q.kind, q.path, q.index, q.blockId]),
      [['missing-block', '/parts.bin', 0, lostId]],
      JSON.stringify(problems, null, 1),
    );
    const text = await kvfs(fsckArgs(vol));
    t.regex(text.stdout, new RegExp(`missing block: /parts\\.bin: block 0 \\(bytes 0-49999\\) is block id ${ref.id} with part ${lostId}, which is missing`));
    const rep = await kvfs(fsckArgs(vol, '--repair'), { timeoutMs: 120_000 });
    ok(t, 'fsck --repair', rep);
    t.regex(rep.stdout, new RegExp(`data lost at bytes 0-49999 \\(block 0, id ${lostId}\\): reads as zeros`));
    await vol.remount();
    t.true(fs.readFileSync(p).equals(Buffer.alloc(50_000)), 'the block reads as zeros after the repair');
  });

  test.serial(`fsck: lost attributes, cycles, extra names, wrong types, shared blocks, counters (${backend})`, async (t) => {
    const vol = await newVolume();
    const m = (rel: string) => path.join(vol.mnt, rel);
    fs.mkdirSync(m('a/b'), { recursive: true });
    fs.mkdirSync(m('c'));
    fs.mkdirSync(m('g'));
    fs.writeFileSync(m('c/data.bin'), randomBytes(200_000));
    fs.writeFileSync(m('a/b/f.txt'), 'in the cycle\n');
    fs.writeFileSync(m('s.txt'), 's\n');
    fs.writeFileSync(m('L.bin'), randomBytes(100_000));
    fs.writeFileSync(m('M.bin'), randomBytes(100_000));
    const before = checksums(vol.mnt);
    const L = fs.readFileSync(m('L.bin'));
    const M = fs.readFileSync(m('M.bin'));
    await vol.unmount();
    const planted = await withLib(vol, async ({ kv }) => {
      const a = await inoOf(kv, '/a');
      const b = await inoOf(kv, '/a/b');
      const c = await inoOf(kv, '/c');
      const data = await inoOf(kv, '/c/data.bin');
      // A cycle: /a is unlinked from the root, and b gets an entry naming a (a -> b -> a).
      await kv.txn(async (tx) => {
        tx.delete(keys.entry(1, 'a'));
        tx.put(keys.entry(b, 'loop'), encodeEntry(a, 'dir'));
      });
      // data.bin loses its attributes (its block map stays): its entry dangles, its keys stray.
      await kv.txn(async (tx) => tx.delete(keys.attr(data)));
      // A symlink target without an inode.
      await kv.txn(async (tx) => tx.put(keys.symlink(555_555), Buffer.from('/x')));
      // The inode counter behind the inodes in use.
      await kv.txn(async (tx) => tx.put(keys.inodeCounter, Buffer.from('2')));
      const g = await inoOf(kv, '/g');
      const sTxt = await inoOf(kv, '/s.txt');
      const l = await inoOf(kv, '/L.bin');
      const mm = await inoOf(kv, '/M.bin');
      await kv.txn(async (tx) => {
        // An entry with the wrong type; a second name for a directory; an orphan key on a named file.
        tx.put(keys.entry(1, 'c'), encodeEntry(c, 'file'));
        tx.put(keys.entry(1, 'h'), encodeEntry(g, 'dir'));
        tx.put(keys.orphan(sTxt), Buffer.from(String(nowNs())));
        tx.put(keys.orphan(777_777), Buffer.from(String(nowNs()))); // of an inode that does not exist
        // L.bin's block 0 claims more than a block; M.bin's block 1 is L.bin's block 0 (1000 bytes).
        const lm = decodeChunk(await tx.get(keys.chunk(l, 0)));
        const l0 = lm.get(0)!;
        lm.set(0, { id: l0.id, len: 200_000 });
        tx.put(keys.chunk(l, 0), encodeChunk(lm));
        const mmap = decodeChunk(await tx.get(keys.chunk(mm, 0)));
        mmap.set(1, { id: l0.id, len: 1000 });
        tx.put(keys.chunk(mm, 0), encodeChunk(mmap));
      });
      return { a, b, c, data, g, sTxt, l, mm };
    });
    const { r, report } = await fsckJson(t, vol);
    ok(t, 'fsck', r, 1);
    const problems = report.rounds[0].problems;
    const kinds = problems.map((p) => `${p.kind} ${p.path}`).sort();
    t.true(kinds.includes(`unreachable <unreachable inode ${planted.a}>`), kinds.join('\n'));
    t.true(kinds.includes('dangling-entry /c/data.bin'), kinds.join('\n'));
    t.true(kinds.includes(`stray-keys <inode ${planted.data}>`), kinds.join('\n'));
    t.true(kinds.includes('stray-keys <inode 555555>'), kinds.join('\n'));
    t.true(kinds.includes('inode-counter counter/inode'), kinds.join('\n'));
    for (const k of ['entry-type /c', 'dir-names /h', 'stale-orphan /s.txt', 'stale-orphan <orphan inode 777777>', 'block-len /L.bin', 'shared-block /L.bin']) {
      t.true(kinds.includes(k), `${k} in\n${kinds.join('\n')}`);
    }
    t.deepEqual(problems.find((p) => p.kind === 'shared-block')!.paths, ['/L.bin', '/M.bin']);
    const stray = problems.find((p) => p.kind === 'stray-keys' && p.ino === planted.data)!;
    t.regex(stray.message, /can be recovered/);

    const rep = await kvfs(fsckArgs(vol, '--repair'), { timeoutMs: 120_000 });
    ok(t, 'fsck --repair', rep);
    t.regex(rep.stdout, new RegExp(`block map recovered as /lost\\+found/#${planted.data}`));
    t.regex(rep.stdout, /repaired: block referenced more than once \/L\.bin: \/M\.bin block 1 now uses a copy \(id \d+\)/);
    t.regex(rep.stdout, /repaired: directory with several names \/h: entry removed/);
    const again = await fsckJson(t, vol);
    ok(t, 'fsck after the repair', again.r);
    t.true(again.report.clean, JSON.stringify(again.report.left, null, 1));

    await vol.remount();
    t.deepEqual(fs.readdirSync(m('lost+found')).sort(), [`#${planted.a}`, `#${planted.data}`].sort());
    // The cycle is broken at a: b's entry for it is gone, a is in lost+found with b below it.
    t.deepEqual(fs.readdirSync(m(`lost+found/#${planted.a}/b`)), ['f.txt']);
    t.is(fs.readFileSync(m(`lost+found/#${planted.a}/b/f.txt`), 'utf8'), 'in the cycle\n');
    // data.bin's bytes, recovered from its block map (size: up to the end of its last block).
    t.is(sha256File(m(`lost+found/#${planted.data}`)), before.get('c/data.bin') as string);
    t.is(fs.statSync(m(`lost+found/#${planted.data}`)).mode & 0o7777, 0o600);
    t.deepEqual(fs.readdirSync(m('c')), []);
    t.deepEqual(fs.readdirSync(vol.mnt).sort(), ['L.bin', 'M.bin', 'c', 'g', 'lost+found', 's.txt']);
    t.true(fs.statSync(m('c')).isDirectory());
    t.is(fs.readFileSync(m('s.txt'), 'utf8'), 's\n');
    t.is(sha256File(m('L.bin')), sha256(L), 'L.bin: its block clamped to the block size, its bytes unchanged');
    const expectedM = Buffer.alloc(100_000);
    M.copy(expectedM, 0, 0, BS);
    L.copy(expectedM, BS, 0, 1000);
    t.is(sha256File(m('M.bin')), sha256(expectedM), "M.bin: a copy of L.bin's block, zeros after its 1000 bytes");
    fs.writeFileSync(m('fresh.txt'), 'fresh\n');
    await vol.unmount();
    // New inodes get fresh numbers: the counter was raised past every inode in use.
    await withLib(vol, async ({ kv }) => {
      t.true(Number((await kv.get(keys.inodeCounter))!.toString()) > 555_555);
      t.true((await inoOf(kv, '/fresh.txt')) > 555_555);
    });
    const last = await fsckJson(t, vol);
    ok(t, 'fsck after new files', last.r);
    t.true(last.report.clean, JSON.stringify(last.report.left, null, 1));
  });

  test.serial(`fsck: what --repair cannot fix is left alone and reported (${backend})`, async (t) => {
    const vol = await newVolume();
    const m = (rel: string) => path.join(vol.mnt, rel);
    fs.mkdirSync(m('u'));
    fs.writeFileSync(m('u/child.txt'), 'child\n');
    fs.symlinkSync('u/child.txt', m('link'));
    fs.writeFileSync(m('ok.txt'), 'ok\n');
    await vol.unmount();
    const planted = await withLib(vol, async ({ kv }) => {
      const u = await inoOf(kv, '/u');
      const link = await inoOf(kv, '/link');
      const ok = await inoOf(kv, '/ok.txt');
      await kv.txn(async (tx) => {
        tx.put(keys.attr(u), Buffer.from('{"mode": garbage'));
        tx.delete(keys.symlink(link));
      });
      await editAttr(kv, ok, (a) => (a.nlink = 2));
      return { u, link, ok };
    });
    const { r, report } = await fsckJson(t, vol);
    ok(t, 'fsck', r, 1);
    const kinds = report.rounds[0].problems.map((p) => `${p.kind} ${p.path}`).sort();
    t.deepEqual(kinds, [`bad-value ${keys.attr(planted.u)}`, 'nlink /ok.txt', 'symlink-target /link'], 'the directory with undecodable attributes: its entry is not dangling, its child not unreachable');
    const rep = await kvfs(fsckArgs(vol, '--repair'));
    ok(t, 'fsck --repair', rep, 1);
    t.regex(rep.stdout, /repaired: wrong link count \/ok\.txt: link count set to 1/);
    t.regex(rep.stdout, /left: symlink without a target \/link: fsck cannot repair this/);
    t.regex(rep.stdout, /kvfs fsck: 3 problems found \(.*\), 1 repaired, 2 left/);
    t.regex(rep.stdout, /^  left: undecodable key: key "A[0-9a-f]{16}I" cannot be decoded/m);
    const again = await fsckJson(t, vol, '--repair');
    ok(t, 'fsck --repair again', again.r, 1);
    t.is(again.report.left.length, 2);
    t.is(again.report.repaired, 0);
    await withLib(vol, async ({ kv }) => {
      t.truthy(await kv.get(keys.entry(1, 'u')), 'the entry of the undecodable directory is kept');
      t.truthy(await kv.get(keys.entry(planted.u, 'child.txt')), 'and what is in it');
      t.is(await kv.get(keys.entry(1, 'lost+found')), undefined, 'nothing was moved');
    });
  });

  if (backend === 'etcd') {
    test.serial(`fsck: repairs the detached cycle two concurrent cross-directory renames can make (${backend})`, async (t) => {
      // Two "mounts" (two engines) rename at once: /p/a -> /q/b/c/a and /q/b -> /p/a/d/b. Meta.rename
      // checks "not into itself" by walking the ancestors outside its transaction, and the two
      // transactions touch disjoint keys, so both can commit and leave a -> d -> b -> c -> a
      // detached from the root. (If meta.ts closes that window, one fails with EINVAL: also fine.)
      const vol = await newVolume();
      await vol.unmount();
      const one = await openVolume(vol.metaUrl, { timeoutMs: 10_000 });
      const two = await openVolume(vol.metaUrl, { timeoutMs: 10_000 });
      let outcome: PromiseSettledResult<unknown>[];
      const ids: Record<string, number> = {};
      try {
        const dir = async (parent: number, name: string) => (ids[name] = (await one.meta.create(parent, name, { type: 'dir', perm: 0o755, uid: 0, gid: 0 })).ino);
        await dir(await dir(await dir(1, 'p'), 'a'), 'd');
        await dir(await dir(await dir(1, 'q'), 'b'), 'c');
        outcome = await Promise.allSettled([one.meta.rename(ids.p, 'a', ids.c, 'a'), two.meta.rename(ids.q, 'b', ids.d, 'b')]);
      } finally {
        await one.close();
        await two.close();
      }
      const { r, report } = await fsckJson(t, vol);
      if (outcome.every((o) => o.status === 'fulfilled')) {
        t.log('both renames committed: the tree has a detached cycle');
        ok(t, 'fsck', r, 1);
        t.deepEqual(report.rounds[0].problems.map((p) => `${p.kind} ${p.path}`), [`unreachable <unreachable inode ${ids.a}>`]);
        const rep = await kvfs(fsckArgs(vol, '--repair'));
        ok(t, 'fsck --repair', rep);
        t.regex(rep.stdout, new RegExp(`moved to /lost\\+found/#${ids.a}`));
        await vol.remount();
        t.true(fs.statSync(path.join(vol.mnt, `lost+found/#${ids.a}/d/b/c`)).isDirectory());
        t.deepEqual(fs.readdirSync(path.join(vol.mnt, `lost+found/#${ids.a}/d/b/c`)), [], "c's entry for a (the cycle) is gone");
        await vol.unmount();
        const after = await fsckJson(t, vol);
        ok(t, 'fsck after the repair', after.r);
      } else {
        t.log(`a rename failed: ${outcome.map((o) => (o.status === 'rejected' ? (o.reason as Error).message : 'ok')).join(', ')}`);
        ok(t, 'fsck', r);
      }
    });
  }

  test.serial(`fsck: bad input (${backend})`, async (t) => {
    const r = await kvfs(['fsck', '--meta', servers!.metaUrlFor('no-such-volume')]);
    ok(t, 'fsck of a volume that does not exist', r, 1);
    t.regex(r.stderr, /no volume at/);
    const bad = await kvfs(['fsck', '--bogus']);
    ok(t, 'fsck --bogus', bad, 1);
    t.regex(bad.stderr, /see kvfs fsck --help/);
    const help = await kvfs(['fsck', '--help']);
    ok(t, 'fsck --help', help);
    t.regex(help.stdout, /--repair/);
  });
}

// ---------------------------------------------------------------------------------------------
// gc

export function gcSuite(test: TestFn, backend: Backend): void {
  let servers: Servers | undefined;
  const volumes: Volume[] = [];
  test.before(async () => {
    servers = await startServers(backend);
  });
  test.after.always(async () => {
    await Promise.allSettled(volumes.map((v) => v.stop()));
    await servers?.stop();
  });
  const newVolume = async (mountArgs?: string[]) => {
    const v = await startVolume({ backend, servers, formatArgs: FORMAT, mountArgs });
    volumes.push(v);
    return v;
  };
  /** etcd: gc runs while the volume is mounted; embedded: it cannot, so unmount first. */
  const unmountIfEmbedded = async (vol: Volume) => {
    if (backend === 'embedded') await vol.unmount();
  };
  const remountIfEmbedded = async (vol: Volume) => {
    if (backend === 'embedded') await vol.remount();
  };

  test.serial(`gc: the dry run lists unreferenced blocks, --delete deletes exactly those (${backend})`, async (t) => {
    const vol = await newVolume();
    await workload(t, vol.mnt);
    const sums = checksums(vol.mnt);
    if (backend === 'etcd') await settled(vol); // gone.bin's blocks: the mount's to reclaim
    if (backend === 'embedded') {
      const r = await kvfs(gcArgs(vol));
      ok(t, 'gc of a mounted embedded volume', r, 1);
      t.regex(r.stderr, /in use by another kvfs process.*unmount it, then run kvfs gc/);
    }
    await unmountIfEmbedded(vol);
    const planted = await withLib(vol, async ({ meta, store, kv }) => {
      const ids = await meta.allocBlockIds(5);
      const sizes = [1, 1000, 4096, 65_000, BS];
      for (let i = 0; i < ids.length; i++) await store.put(String(ids[i]), randomBytes(sizes[i]));
      // An id beyond the block counter: as if reserved after gc started. Kept.
      const counter = Number((await kv.get(keys.blockCounter))!.toString());
      const newer = counter + 5000;
      await store.put(String(newer), randomBytes(100));
      const stored = await storedIds(store);
      const referenced = await referencedIds(kv);
      // Blocks a mount left behind (replaced blocks whose deletion had not finished), if any.
      const leftovers = [...stored].filter((id) => !referenced.has(id) && !ids.includes(Number(id)) && Number(id) !== newer).map(Number);
      return { ids, bytes: sizes.reduce((a, b) => a + b, 0), newer, stored, referenced, leftovers };
    });
    for (const id of planted.ids) t.false(planted.referenced.has(String(id)));
    if (planted.leftovers.length) t.log(`unreferenced blocks left by the workload's mount: ${planted.leftovers.join(', ')}`);
    const garbage = [...planted.ids, ...planted.leftovers].sort((a, b) => a - b);

    const dry = await gcJson(t, vol, '--grace', '1');
    ok(t, 'gc dry run', dry.r);
    t.true(dry.report.dryRun);
    t.deepEqual(dry.report.garbage.ids, garbage);
    t.is(dry.report.garbage.blocks, garbage.length);
    if (planted.leftovers.length === 0) t.is(dry.report.garbage.bytes, planted.bytes);
    t.is(dry.report.newer, 1);
    t.is(dry.report.deleted.blocks, 0);
    t.is(dry.report.stored, planted.stored.size);
    t.is(dry.report.referenced, planted.referenced.size);
    const text = await kvfs(gcArgs(vol, '--grace', '1'));
    ok(t, 'gc dry run (text)', text);
    if (planted.leftovers.length === 0) {
      t.regex(text.stdout, new RegExp(`5 unreferenced blocks, .* \\(${planted.bytes} bytes\\), would be deleted \\(ids ${planted.ids[0]}-${planted.ids[4]}\\)`));
    }
    t.regex(text.stdout, /dry run, nothing deleted/);
    t.regex(text.stdout, /1 with ids handed out after gc started/);
    await withLib(vol, async ({ store }) => t.deepEqual(sorted(await storedIds(store)), sorted(planted.stored), 'the dry run deleted nothing'));

    const del = await gcJson(t, vol, '--delete', '--grace', '1');
    ok(t, 'gc --delete', del.r);
    t.false(del.report.dryRun);
    t.deepEqual(del.report.garbage.ids, garbage);
    t.is(del.report.deleted.blocks, garbage.length);
    if (planted.leftovers.length === 0) t.deepEqual(del.report.deleted, { blocks: 5, bytes: planted.bytes });
    await withLib(vol, async ({ store, kv }) => {
      const now = await storedIds(store);
      const expected = new Set([...planted.stored].filter((id) => !garbage.includes(Number(id))));
      t.deepEqual(sorted(now), sorted(expected), 'exactly the unreferenced blocks were deleted');
      for (const id of await referencedIds(kv)) t.true(now.has(id), `referenced block ${id} is still stored`);
      t.true(now.has(String(planted.newer)));
    });
    const again = await gcJson(t, vol, '--delete', '--grace', '1');
    ok(t, 'a second gc --delete', again.r);
    t.is(again.report.garbage.blocks, 0);
    const text2 = await kvfs(gcArgs(vol, '--grace', '1'));
    t.regex(text2.stdout, /no unreferenced blocks/);

    await remountIfEmbedded(vol);
    // A fresh mount: nothing is served from the daemon's block cache.
    if (backend === 'etcd') await vol.remount();
    sameChecksums(t, 'after gc --delete', sums, checksums(vol.mnt));
    await vol.unmount();
    const f = await fsckJson(t, vol);
    ok(t, 'fsck after gc', f.r);
    t.true(f.report.clean);
  });

  test.serial(`gc: frees the blocks of a volume replaced by format --force (${backend})`, async (t) => {
    const vol = await newVolume();
    await workload(t, vol.mnt);
    await vol.unmount();
    const old = await withLib(vol, async ({ store, kv }) => ({ stored: await storedIds(store), referenced: await referencedIds(kv) }));
    t.true(old.stored.size >= 20);
    const fmt = await kvfs(['format', '--meta', vol.metaUrl, ...(vol.dataUrl ? ['--data', vol.dataUrl] : []), ...FORMAT, '--force']);
    ok(t, 'format --force', fmt);
    await vol.remount();
    fs.writeFileSync(path.join(vol.mnt, 'new.bin'), randomBytes(500_000));
    fs.mkdirSync(path.join(vol.mnt, 'nd'));
    fs.writeFileSync(path.join(vol.mnt, 'nd/small'), 'small\n');
    const sums = checksums(vol.mnt);
    await unmountIfEmbedded(vol);

    const dry = await gcJson(t, vol, '--grace', '1');
    ok(t, 'gc dry run', dry.r);
    t.deepEqual(dry.report.garbage.ids, sorted(old.stored), 'every block of the old volume, and nothing else');
    const del = await gcJson(t, vol, '--delete', '--grace', '1');
    ok(t, 'gc --delete', del.r);
    t.is(del.report.deleted.blocks, old.stored.size);
    await withLib(vol, async ({ store, kv }) => {
      const now = await storedIds(store);
      for (const id of old.stored) t.false(now.has(id), `old block ${id} deleted`);
      t.deepEqual(sorted(now), sorted(await referencedIds(kv)), 'what is left is exactly what the new volume references');
    });
    await remountIfEmbedded(vol);
    if (backend === 'etcd') await vol.remount();
    sameChecksums(t, 'the new volume after gc', sums, checksums(vol.mnt));
  });

  test.serial(`gc: orphans are listed, and destroyed only with --delete --orphans (${backend})`, async (t) => {
    const vol = await newVolume();
    fs.writeFileSync(path.join(vol.mnt, 'orphan.bin'), randomBytes(300_000));
    fs.writeFileSync(path.join(vol.mnt, 'keep.bin'), randomBytes(100_000));
    const keepSum = sha256File(path.join(vol.mnt, 'keep.bin'));
    // Mounts reclaim orphans themselves (a sweep at start and every 30 s): plant it while unmounted.
    await vol.unmount();
    const planted = await withLib(vol, async ({ meta, kv }) => {
      const ino = await inoOf(kv, '/orphan.bin');
      const blocks = (await meta.blockIdsOf(ino)).map(String);
      // What a crash between unlink and reclaim leaves: no name, nlink 0, an orphan key (a minute old).
      await kv.txn(async (tx) => {
        const a = decodeAttr(ino, (await tx.get(keys.attr(ino)))!);
        a.nlink = 0;
        tx.put(keys.attr(ino), encodeAttr(a));
        tx.delete(keys.entry(1, 'orphan.bin'));
        const root = decodeAttr(1, (await tx.get(keys.attr(1)))!);
        root.mtime = root.ctime = nowNs();
        tx.put(keys.attr(1), encodeAttr(root));
        tx.put(keys.orphan(ino), Buffer.from(String(nowNs() - 60_000_000_000n)));
      });
      return { ino, blocks };
    });
    t.is(planted.blocks.length, 5);

    const f = await fsckJson(t, vol);
    ok(t, 'fsck: an orphan is not damage', f.r);
    t.deepEqual(f.report.rounds[0].problems, []);
    t.deepEqual(f.report.rounds[0].orphans.map((o) => o.ino), [planted.ino]);

    const dry = await gcJson(t, vol, '--grace', '1', '--orphans');
    ok(t, 'gc dry run --orphans', dry.r);
    t.deepEqual(dry.report.orphans.map((o) => [o.ino, o.action, o.blocks]), [[planted.ino, 'would destroy', 5]]);
    t.is(dry.report.garbage.blocks, 0, "an orphan's blocks are referenced, not garbage");
    const plain = await gcJson(t, vol, '--delete', '--grace', '1');
    ok(t, 'gc --delete without --orphans', plain.r);
    t.is(plain.report.orphans[0].action, 'kept: run with --delete --orphans to destroy');
    await withLib(vol, async ({ store }) => {
      const ids = await storedIds(store);
      for (const id of planted.blocks) t.true(ids.has(id));
    });
    const text = await kvfs(gcArgs(vol, '--delete', '--orphans', '--grace', '1'));
    ok(t, 'gc --delete --orphans', text);
    t.regex(text.stdout, new RegExp(`orphan inode ${planted.ino}: 300000 bytes, 5 blocks, unlinked .*: destroyed`));
    await withLib(vol, async ({ store, kv }) => {
      const ids = await storedIds(store);
      for (const id of planted.blocks) t.false(ids.has(id), `block ${id} of the orphan deleted`);
      t.is(await kv.get(keys.attr(planted.ino)), undefined);
      t.is(await kv.get(keys.orphan(planted.ino)), undefined);
    });
    const after = await fsckJson(t, vol);
    ok(t, 'fsck after', after.r);
    t.true(after.report.clean);
    t.deepEqual(after.report.rounds[0].orphans, []);
    await vol.remount();
    t.is(sha256File(path.join(vol.mnt, 'keep.bin')), keepSum);
  });

  test.serial(`gc: progress for many blocks (${backend})`, async (t) => {
    const vol = await newVolume();
    fs.writeFileSync(path.join(vol.mnt, 'f.bin'), randomBytes(200_000));
    await unmountIfEmbedded(vol);
    const N = 12_000;
    await withLib(vol, async ({ meta, store }) => {
      const ids = await meta.allocBlockIds(N);
      for (let i = 0; i < N; i += 500) await Promise.all(ids.slice(i, i + 500).map((id) => store.put(String(id), Buffer.from(String(id)))));
    });
    const dry = await kvfs(gcArgs(vol, '--grace', '1'), { timeoutMs: 180_000 });
    ok(t, 'gc dry run', dry);
    t.regex(dry.stderr, /kvfs gc: listed 1\d{4} stored blocks/);
    t.regex(dry.stdout, new RegExp(`${N} unreferenced blocks`));
    const del = await kvfs(gcArgs(vol, '--delete', '--grace', '1'), { timeoutMs: 180_000 });
    ok(t, 'gc --delete', del);
    t.regex(del.stderr, new RegExp(`kvfs gc: deleted 10000 of ${N} blocks`));
    t.regex(del.stdout, new RegExp(`deleted ${N} unreferenced blocks`));
    await withLib(vol, async ({ store, kv }) => t.deepEqual(sorted(await storedIds(store)), sorted(await referencedIds(kv))));
  });

  test.serial(`gc: a volume unmounted right after rm -rf and overwrites holds no unreferenced blocks (${backend})`, async (t) => {
    // The daemon deletes blocks in the background; unmount must wait for those deletes instead of
    // leaving every block of the removed files for gc to find. 1 MiB blocks: the embedded store
    // keeps smaller ones in its database, where a delete is done before it returns.
    const MiB = 1024 * KiB;
    const vol = await startVolume({ backend, servers, formatArgs: ['--block-size', '1M'] });
    volumes.push(vol);
    const dir = path.join(vol.mnt, 'd');
    fs.mkdirSync(dir);
    for (let i = 0; i < 20; i++) fs.writeFileSync(path.join(dir, `f${i}`), randomBytes(3 * MiB - i));
    // Rewritten in place after a commit: each commit replaces the blocks of the one before.
    const kept = path.join(vol.mnt, 'kept.bin');
    for (let round = 0; round < 5; round++) fs.writeFileSync(kept, randomBytes(4 * MiB));
    const keptSum = sha256File(kept);
    fs.rmSync(dir, { recursive: true });
    await vol.unmount();
    await withLib(vol, async ({ store, kv }) => {
      const stored = await storedIds(store);
      const referenced = await referencedIds(kv);
      t.is(referenced.size, 4, 'kept.bin is four blocks');
      t.deepEqual(sorted([...stored].filter((id) => !referenced.has(id))), [], 'blocks stored but referenced by nothing');
    });
    await vol.remount();
    t.is(sha256File(kept), keptSum);
  });

  test.serial(`gc: bad input (${backend})`, async (t) => {
    const bad = await kvfs(['gc', '--grace', 'soon', '--meta', servers!.metaUrlFor('x')]);
    ok(t, 'gc --grace soon', bad, 1);
    t.regex(bad.stderr, /--grace 'soon' is not a duration/);
    const none = await kvfs(['gc', '--meta', servers!.metaUrlFor('no-such-volume')]);
    ok(t, 'gc of a volume that does not exist', none, 1);
    t.regex(none.stderr, /no volume at/);
  });

  if (backend !== 'etcd') return;

  test.serial(`gc: a commit that lands during the grace period keeps its block (${backend})`, async (t) => {
    const vol = await newVolume();
    fs.writeFileSync(path.join(vol.mnt, 'slow.bin'), '');
    const payload = randomBytes(3000);
    // Blocks stored before gc starts (ids below its counter), not referenced yet: one is about to be
    // committed (a slow commit), the other never will be.
    const { ino, inFlight, abandoned } = await withLib(vol, async ({ meta, store, kv }) => {
      const ino = await inoOf(kv, '/slow.bin');
      const [inFlight, abandoned] = await meta.allocBlockIds(2);
      await store.put(String(inFlight), payload);
      await store.put(String(abandoned), randomBytes(100));
      return { ino, inFlight, abandoned };
    });
    await withLib(vol, async ({ meta, store }) => {
      const child = spawn(process.execPath, [CLI, ...gcArgs(vol, '--delete', '--grace', '3', '--json')], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
      const waiting = new Promise<void>((resolve) => {
        child.stderr.setEncoding('utf8').on('data', (d: string) => {
          stderr += d;
          if (/waiting 3 s for commits in flight/.test(stderr)) resolve();
        });
      });
      const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
      const first = await Promise.race([waiting.then(() => 'waiting'), exited.then(() => 'exited')]);
      t.is(first, 'waiting', `gc: ${stderr}`);
      // The slow commit lands while gc waits.
      await meta.commitBlocks(ino, [{ index: 0, ref: { id: inFlight, len: payload.length } }], payload.length, nowNs());
      const code = await exited;
      t.is(code, 0, stderr);
      const report = JSON.parse(stdout) as JsonGc;
      t.is(report.candidates, 2);
      t.is(report.rescued, 1);
      t.deepEqual(report.garbage.ids, [abandoned]);
      t.truthy(await store.get(String(inFlight)), 'the block committed during the grace period is kept');
      t.is(await store.get(String(abandoned)), undefined, 'the abandoned block is deleted');
    });
    await vol.remount();
    t.is(sha256File(path.join(vol.mnt, 'slow.bin')), sha256(payload));
  });

  test.serial(`gc: running while a writer writes and closes files never deletes a block that ends up referenced (${backend})`, async (t) => {
    // The mount reaches Redis through a proxy at 12 MB/s: a 16 MiB commit takes about 1.3 s.
    const proxy = await throttledProxy(servers!.redis!.port, 12 * 1024 * 1024);
    t.teardown(() => proxy.close());
    // A long backend timeout: on a loaded test machine a commit can be slow, and the writer should
    // not fail for it. gc's grace (5 s) is what must exceed how long commits really take here.
    const vol = await newVolume(['--data', proxy.url, '--backend-timeout', '30']);
    const dir = path.join(vol.mnt, 'w');
    fs.mkdirSync(dir);
    const expected = new Map<string, string>();
    let stop = false;
    let writes = 0;
    const bigData = randomBytes(16 * MiB);
    const writer = (async () => {
      let n = 0;
      while (!stop) {
        const name = n % 3 === 0 ? `big${n % 4}` : `f${n % 40}`;
        const p = path.join(dir, name);
        const k = n % 7;
        if (k === 6 && expected.has(name)) {
          await fs.promises.unlink(p);
          expected.delete(name);
        } else if (k === 5 && expected.has(name)) {
          // Overwrite a piece in the middle: replaces a block of an existing file.
          const fh = await fs.promises.open(p, 'r+');
          await fh.write(randomBytes(5000), 0, 5000, 70_000);
          await fh.close();
          expected.set(name, sha256(await fs.promises.readFile(p)));
        } else {
          // Some files of 16 MiB (under a few names): such a commit stores 256 blocks before its
          // transaction, a window in which gc sees stored blocks that are not referenced yet.
          const big = n % 3 === 0;
          let data: Buffer;
          if (big) {
            bigData.writeUInt32LE(n, 0); // a new version of the content each time
            bigData.writeUInt32LE(n, bigData.length - 4);
            data = bigData;
          } else data = randomBytes(1 + ((n * 7919) % 400_000));
          await fs.promises.writeFile(p, data);
          expected.set(name, sha256(data));
        }
        n++;
        writes++;
      }
    })();
    try {
      // Leftovers to collect, too.
      const junk = await withLib(vol, async ({ meta, store }) => {
        const ids = await meta.allocBlockIds(20);
        for (const id of ids) await store.put(String(id), randomBytes(2000));
        return ids;
      });
      const deleted: number[] = [];
      let rescued = 0;
      let newer = 0;
      // At least 4 rounds, and more (up to 15) until gc has seen a commit in flight.
      for (let round = 0; round < 15 && (round < 4 || rescued + newer === 0); round++) {
        const { r, report } = await gcJson(t, vol, '--delete', '--grace', '5');
        ok(t, `gc --delete round ${round}`, r);
        deleted.push(...report.garbage.ids);
        rescued += report.rescued;
        newer += report.newer;
        t.log(`gc round ${round}: ${report.stored} stored, ${report.referenced} referenced, ${report.candidates} candidates, ${report.rescued} rescued, ${report.newer} newer, ${report.garbage.blocks} deleted`);
        // A deleted block referenced right afterwards was in flight: gc must never do that. (Checked
        // at once: the writer rewrites every file soon, which would hide it from the final check.)
        const now = await withLib(vol, async ({ kv }) => referencedIds(kv));
        t.deepEqual(report.garbage.ids.filter((id) => now.has(String(id))), [], `gc round ${round} deleted blocks that are referenced now`);
      }
      for (const id of junk) t.true(deleted.includes(id), `leftover block ${id} deleted`);
      // The race did happen: gc saw blocks of commits in flight, and kept them.
      t.true(rescued + newer > 0, `gc saw no commit in flight (rescued ${rescued}, newer ${newer})`);
    } finally {
      stop = true;
      await writer.catch((err: Error) => {
        throw new Error(`the writer failed after ${writes} writes: ${err.message}\n--- daemon ---\n${vol.logs().slice(-4000)}`);
      });
    }
    t.true(writes >= 20, `the writer made ${writes} writes`);
    const f = await fsckJson(t, vol);
    t.deepEqual(
      f.report.rounds[0].problems.filter((p) => p.kind === 'missing-block'),
      [],
      'no block map names a deleted block',
    );
    ok(t, 'fsck after the race', f.r);
    // Through a fresh mount (straight to Redis), so that nothing comes from the daemon's block cache.
    await vol.remount([]);
    sameChecksums(t, 'after gc raced the writer', new Map([...expected].map(([k, v]) => [`w/${k}`, v])), checksums(vol.mnt));
  });
}


// Several daemons mounting ONE etcd + Redis volume on this machine (issue 5): close-to-open,
// namespace changes seen through the entry/attribute caches and through etcd watches, concurrent
// whole-file writers (never a torn block), rename and O_EXCL races, and files unlinked on one
// mount while open on another.
//
// Mounts: A and B with the default caches (1 s), W with `--attr-cache 30 --entry-cache 30` (only
// the etcd watch can make it see other mounts' changes quickly).
import test, { ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { makeTempDir, removeTempDir, sleep, startVolume, Volume } from './_helpers/mount';
import { codeOf, codeOfAsync, mulberry32, prngBytes } from './_helpers/ops';
import { ExtraMount, extraMount, fsck, pollUntil, status, tail } from './_suites/multimount';

const BLOCK = 64 * 1024;

let vol: Volume;
let B: ExtraMount;
let W: ExtraMount;
let A: string; // A's mountpoint

test.before(async () => {
  vol = await startVolume({ backend: 'etcd', formatArgs: ['--block-size', '64K'] });
  A = vol.mnt;
  B = await extraMount(vol, 'B');
  W = await extraMount(vol, 'W', ['--attr-cache', '30', '--entry-cache', '30']);
});

test.after.always(async () => {
  await B?.stop();
  await W?.stop();
  await vol?.stop();
});

function logs(): string {
  return `--- A ---\n${tail(vol.logs())}\n--- B ---\n${tail(B.daemon.log())}\n--- W ---\n${tail(W.daemon.log())}`;
}

function daemonsAlive(t: ExecutionContext): void {
  t.is(vol.daemon.exitStatus(), undefined, `daemon A exited\n${logs()}`);
  t.is(B.daemon.exitStatus(), undefined, `daemon B exited\n${logs()}`);
  t.is(W.daemon.exitStatus(), undefined, `daemon W exited\n${logs()}`);
}

// ---------------------------------------------------------------------------------------------
// 1. close-to-open

test.serial('close-to-open: after close on one mount, an open on another sees the new size and content', async (t) => {
  const rnd = mulberry32(101);
  const names = ['c2o', 'sub/c2o2'];
  fs.mkdirSync(path.join(A, 'sub'));
  const failures: string[] = [];
  for (let i = 0; i < 40; i++) {
    // sizes grow and shrink: empty, sub-block, exactly a block, many blocks, past a block by 1
    const choices = [0, 1, 100, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 777, 20 * BLOCK + 5];
    const size = rnd() < 0.5 ? choices[Math.floor(rnd() * choices.length)] : Math.floor(rnd() * 1_500_000);
    const data = prngBytes(1000 + i, size);
    const name = names[i % names.length];
    // alternate the writing side, and read on both other mounts
    const [writer, readers] = i % 3 === 2 ? [B.mnt, [A, W.mnt]] : [A, [B.mnt, W.mnt]];
    fs.writeFileSync(path.join(writer, name), data);
    for (const r of readers) {
      const fd = fs.openSync(path.join(r, name), 'r');
      try {
        const st = fs.fstatSync(fd);
        const got = fs.readFileSync(fd);
        if (st.size !== size || !got.equals(data))
          failures.push(`iteration ${i}: wrote ${size} bytes on ${writer}; open on ${r} saw fstat size ${st.size}, read ${got.length} bytes, ${got.equals(data) ? 'same' : 'DIFFERENT'} content`);
      } finally {
        fs.closeSync(fd);
      }
    }
  }
  t.deepEqual(failures, [], logs());
  daemonsAlive(t);
});

test.serial('a reader on B keeping the file open follows appends made on A (tail -F): the new sizes and exactly the appended bytes, never zeros', async (t) => {
  t.timeout(120_000);
  const rel = 'followed.log';
  const onA = path.join(A, rel);
  const onB = path.join(B.mnt, rel);
  const rnd = mulberry32(103);
  let expected = Buffer.from('first line\n');
  fs.writeFileSync(onA, expected);
  t.true(await pollUntil(() => fs.statSync(onB).size === expected.length, 3000), 'B sees the first line');
  const tailDir = makeTempDir('kvfs-tail-');
  const tailOut = path.join(tailDir, 'tail.out');
  const tailProcess = spawn('tail', ['-c', '+1', '-F', '-s', '0.1', onB], { stdio: ['ignore', fs.openSync(tailOut, 'w'), 'ignore'] });
  const fd = fs.openSync(onB, 'r');
  const problems: string[] = [];
  let readUpTo = 0;
  try {
    for (let i = 0; i < 80 && problems.length < 5; i++) {
      // Lines of up to 4 KiB, so the file crosses several 64 KiB blocks; each append is a close on A.
      const line = Buffer.from(prngBytes(2000 + i, 1 + Math.floor(rnd() * 4096)).toString('base64') + '\n');
      fs.appendFileSync(onA, line);
      expected = Buffer.concat([expected, line]);
      if (!(await pollUntil(() => fs.fstatSync(fd).size === expected.length, 3000))) {
        problems.push(`append ${i}: fstat on B's fd shows ${fs.fstatSync(fd).size} bytes, A wrote ${expected.length}, 3 s later`);
        continue;
      }
      // What is new, asked for with room to spare (a read past the end must stop at it).
      const fresh = Buffer.alloc(expected.length - readUpTo + 8192);
      const n = fs.readSync(fd, fresh, 0, fresh.length, readUpTo);
      if (!fresh.subarray(0, n).equals(expected.subarray(readUpTo)))
        problems.push(`append ${i}: B's fd read ${n} bytes at ${readUpTo}, expected ${expected.length - readUpTo}: ${fresh.subarray(0, n).includes(0) ? 'with zeros' : 'different'}`);
      readUpTo += n;
      if (i % 10 === 9) {
        const whole = Buffer.alloc(expected.length + 100);
        const m = fs.readSync(fd, whole, 0, whole.length, 0);
        if (!whole.subarray(0, m).equals(expected)) problems.push(`append ${i}: rereading the whole file through B's fd gave ${m} bytes, not the ${expected.length} A wrote`);
      }
    }
    const followed = await pollUntil(() => fs.readFileSync(tailOut).equals(expected), 10_000, 100);
    const got = fs.readFileSync(tailOut);
    if (!followed) problems.push(`tail -F on B printed ${got.length} bytes (${got.includes(0) ? 'with zeros' : 'no zeros'}), A wrote ${expected.length}`);
  } finally {
    fs.closeSync(fd);
    tailProcess.kill();
    removeTempDir(tailDir);
  }
  t.deepEqual(problems, [], logs());
  daemonsAlive(t);
});

// ---------------------------------------------------------------------------------------------
// 2. namespace changes seen by other mounts

interface Step {
  what: string;
  /** The change, made on A. */
  change(a: string): void;
  /** True once mount `m` shows it. */
  seen(m: string): boolean;
}

function exists(p: string): boolean {
  return codeOf(() => fs.lstatSync(p)) === 'OK';
}

function steps(d: string): Step[] {
  const p = (m: string, ...rest: string[]) => path.join(m, d, ...rest);
  return [
    {
      what: 'create',
      change: (a) => fs.writeFileSync(p(a, 'f1'), 'hello'),
      seen: (m) => exists(p(m, 'f1')) && fs.readdirSync(p(m)).includes('f1'),
    },
    {
      what: 'write (size)',
      change: (a) => fs.writeFileSync(p(a, 'f1'), 'hello world, longer'),
      seen: (m) => fs.statSync(p(m, 'f1')).size === 19,
    },
    {
      what: 'chmod',
      change: (a) => fs.chmodSync(p(a, 'f1'), 0o600),
      seen: (m) => (fs.statSync(p(m, 'f1')).mode & 0o777) === 0o600,
    },
    {
      what: 'utimens',
      change: (a) => fs.utimesSync(p(a, 'f1'), 1_000_000, 1_234_567),
      seen: (m) => fs.statSync(p(m, 'f1')).mtimeMs === 1_234_567_000,
    },
    {
      what: 'truncate',
      change: (a) => fs.truncateSync(p(a, 'f1'), 3),
      seen: (m) => fs.statSync(p(m, 'f1')).size === 3,
    },
    {
      what: 'link',
      change: (a) => fs.linkSync(p(a, 'f1'), p(a, 'f1link')),
      seen: (m) => exists(p(m, 'f1link')) && fs.statSync(p(m, 'f1')).nlink === 2,
    },
    {
      what: 'rename',
      change: (a) => fs.renameSync(p(a, 'f1'), p(a, 'f2')),
      seen: (m) => !exists(p(m, 'f1')) && exists(p(m, 'f2')) && !fs.readdirSync(p(m)).includes('f1'),
    },
    {
      what: 'symlink',
      change: (a) => fs.symlinkSync('f2', p(a, 'sl')),
      seen: (m) => fs.readlinkSync(p(m, 'sl')) === 'f2',
    },
    {
      what: 'mkdir',
      change: (a) => fs.mkdirSync(p(a, 'dir')),
      seen: (m) => fs.statSync(p(m, 'dir')).isDirectory(),
    },
    {
      what: 'create inside the new directory',
      change: (a) => fs.writeFileSync(p(a, 'dir', 'inner'), 'x'),
      seen: (m) => fs.readdirSync(p(m, 'dir')).includes('inner'),
    },
    {
      what: 'rename a directory',
      change: (a) => fs.renameSync(p(a, 'dir'), p(a, 'dir2')),
      seen: (m) => !exists(p(m, 'dir')) && fs.readFileSync(p(m, 'dir2', 'inner'), 'utf8') === 'x',
    },
    {
      what: 'unlink',
      change: (a) => fs.unlinkSync(p(a, 'dir2', 'inner')),
      seen: (m) => !exists(p(m, 'dir2', 'inner')) && fs.readdirSync(p(m, 'dir2')).length === 0,
    },
    {
      what: 'rmdir',
      change: (a) => fs.rmdirSync(p(a, 'dir2')),
      seen: (m) => !exists(p(m, 'dir2')),
    },
    {
      what: 'unlink of a hard link (nlink drops)',
      change: (a) => fs.unlinkSync(p(a, 'f1link')),
      seen: (m) => !exists(p(m, 'f1link')) && fs.statSync(p(m, 'f2')).nlink === 1,
    },
    {
      what: 'chmod of a directory',
      change: (a) => fs.chmodSync(p(a), 0o711),
      seen: (m) => (fs.statSync(p(m)).mode & 0o777) === 0o711,
    },
  ];
}

/** Make every name and attribute the steps look at cached on `m` (a stale cache is the risk). */
function warm(m: string, d: string): void {
  for (const n of ['', 'f1', 'f2', 'f1link', 'sl', 'dir', 'dir2', 'dir/inner', 'dir2/inner']) {
    try {
      fs.lstatSync(path.join(m, d, n));
      if (n === '' || n.startsWith('dir')) fs.readdirSync(path.join(m, d, n));
    } catch {
      /* ENOENT is cached too, maybe */
    }
  }
}

async function namespaceVisibility(t: ExecutionContext, observer: () => string, dirName: string, withinMs: number): Promise<void> {
  fs.mkdirSync(path.join(A, dirName));
  const late: string[] = [];
  const timings: string[] = [];
  for (const step of steps(dirName)) {
    const m = observer();
    warm(m, dirName);
    await sleep(50);
    warm(m, dirName);
    const start = Date.now();
    step.change(A);
    if (!step.seen(A)) late.push(`${step.what}: not even visible on A itself`);
    const ok = await pollUntil(() => step.seen(m), withinMs, 25);
    timings.push(`${step.what}: ${ok ? `${Date.now() - start} ms` : 'NOT SEEN'}`);
    if (!ok) late.push(`${step.what}: not visible on ${m} within ${withinMs} ms`);
  }
  t.log(timings.join(', '));
  t.deepEqual(late, [], logs());
}

test.serial('namespace changes on A are visible on B (default 1 s caches) within 3 s', async (t) => {
  await namespaceVisibility(t, () => B.mnt, 'ns-default', 3000);
});

test.serial('namespace changes on A are visible within 3 s on a mount with 30 s caches (etcd watches)', async (t) => {
  await namespaceVisibility(t, () => W.mnt, 'ns-watch', 3000);
});

// ---------------------------------------------------------------------------------------------
// 3. concurrent writers

const CW_BLOCKS = 6;
const CW_SIZE = CW_BLOCKS * BLOCK - 1000; // last block partial

/** Every block of write (writer, iteration) is its tag repeated: a torn block cannot match. */
function pattern(writer: string, iteration: number): Buffer {
  const out = Buffer.alloc(CW_SIZE);
  for (let b = 0; b < CW_BLOCKS; b++) {
    const tag = Buffer.from(`<${writer}:${String(iteration).padStart(4, '0')}:${String(b).padStart(2, '0')}>`);
    const start = b * BLOCK;
    const end = Math.min(CW_SIZE, start + BLOCK);
    for (let o = start; o < end; o += tag.length) tag.copy(out, o, 0, Math.min(tag.length, end - o));
  }
  return out;
}

/**
 * The (writer, iteration) of each block, or a description of why a block is torn. `allowZero`:
 * an all-zero block is accepted (a reader that opened the file before another mount truncated it
 * reads the cut blocks as a hole; that is not a torn block).
 */
function decodeBlocks(buf: Buffer, allowZero = false): Array<{ writer: string; iteration: number } | string | null> {
  const out: Array<{ writer: string; iteration: number } | string | null> = [];
  for (let b = 0; b * BLOCK < buf.length; b++) {
    const block = buf.subarray(b * BLOCK, Math.min(buf.length, (b + 1) * BLOCK));
    if (allowZero && block.every((x) => x === 0)) {
      out.push(null);
      continue;
    }
    const m = /^<([AB]):(\d{4}):(\d{2})>/.exec(block.subarray(0, 16).toString('latin1'));
    if (!m || Number(m[3]) !== b) {
      out.push(`block ${b} starts with ${JSON.stringify(block.subarray(0, 16).toString('latin1'))}`);
      continue;
    }
    const expect = pattern(m[1], Number(m[2])).subarray(b * BLOCK, b * BLOCK + block.length);
    if (!expect.equals(block)) {
      let at = 0;
      while (at < block.length && block[at] === expect[at]) at++;
      out.push(`block ${b} is torn: starts as ${m[1]}:${m[2]} but differs at byte ${at} (${JSON.stringify(block.subarray(at, at + 16).toString('latin1'))})`);
      continue;
    }
    out.push({ writer: m[1], iteration: Number(m[2]) });
  }
  return out;
}

test.serial('two mounts rewriting one file: whole blocks of the last writes, never torn, no errors', async (t) => {
  t.timeout(180_000);
  const rel = 'contended.bin';
  fs.writeFileSync(path.join(A, rel), pattern('A', 0));
  const N = 40;
  const errors: string[] = [];
  const torn: string[] = [];
  let writing = true;
  const writer = async (name: 'A' | 'B', mnt: string) => {
    for (let i = 1; i <= N; i++) {
      const code = await codeOfAsync(fs.promises.writeFile(path.join(mnt, rel), pattern(name, i)));
      if (code !== 'OK') errors.push(`${name} write ${i}: ${code}`);
    }
  };
  // A third mount reads while they write: whatever it sees must be made of whole blocks.
  const reader = async () => {
    let reads = 0;
    while (writing) {
      try {
        const buf = await fs.promises.readFile(path.join(W.mnt, rel));
        for (const d of decodeBlocks(buf, true)) if (typeof d === 'string') torn.push(`reader on W, size ${buf.length}: ${d}`);
        reads++;
      } catch (e) {
        errors.push(`reader on W: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
      }
      await sleep(5);
    }
    return reads;
  };
  const r = reader();
  await Promise.all([writer('A', A), writer('B', B.mnt)]);
  writing = false;
  t.log(`reader on W made ${await r} reads`);
  t.deepEqual(errors, [], logs());
  t.deepEqual(torn.slice(0, 10), [], `${torn.length} torn reads`);

  // Final content, as every mount sees it: each block is block i of one writer's LAST write.
  const finals = [A, B.mnt, W.mnt].map((m) => fs.readFileSync(path.join(m, rel)));
  t.true(finals[1].equals(finals[0]) && finals[2].equals(finals[0]), 'mounts disagree about the final content');
  const final = finals[0];
  t.is(final.length, CW_SIZE);
  const decoded = decodeBlocks(final);
  for (const [b, d] of decoded.entries()) {
    if (typeof d === 'string' || d === null) t.fail(`final content: ${d ?? `block ${b} is all zeros`}`);
    else t.is(d.iteration, N, `final block ${b} is from ${d.writer}'s write ${d.iteration}, not from a last write (${N})`);
  }
  t.log(`final blocks from: ${decoded.map((d) => (typeof d === 'string' || d === null ? '?' : d.writer)).join('')}`);
  daemonsAlive(t);
});

// ---------------------------------------------------------------------------------------------
// 4. rename and O_EXCL races

test.serial('rename races onto one name, O_EXCL and mkdir races: exactly one wins, the tree stays consistent', async (t) => {
  t.timeout(180_000);
  const d = 'races';
  fs.mkdirSync(path.join(A, d));
  const rounds = 25;
  const problems: string[] = [];
  let aWins = 0;
  let bWins = 0;
  for (let i = 0; i < rounds; i++) {
    // --- two different files renamed onto the same target, one from each mount
    const srcA = `srcA${i}`;
    const srcB = `srcB${i}`;
    const target = `target${i}`;
    fs.writeFileSync(path.join(A, d, srcA), `from A ${i}`);
    fs.writeFileSync(path.join(A, d, srcB), `from B ${i}`);
    if (i % 2 === 0) fs.writeFileSync(path.join(A, d, target), 'old target'); // sometimes over an existing file
    await pollUntil(() => exists(path.join(B.mnt, d, srcB)), 3000);
    const [ra, rb] = await Promise.all([
      codeOfAsync(fs.promises.rename(path.join(A, d, srcA), path.join(A, d, target))),
      codeOfAsync(fs.promises.rename(path.join(B.mnt, d, srcB), path.join(B.mnt, d, target))),
    ]);
    if (ra !== 'OK' || rb !== 'OK') problems.push(`round ${i}: rename onto one target: A ${ra}, B ${rb} (both should succeed)`);
    for (const m of [A, B.mnt]) {
      const content = await pollUntil(() => !exists(path.join(m, d, srcA)) && !exists(path.join(m, d, srcB)), 3000);
      if (!content) problems.push(`round ${i}: a renamed source still exists on ${m}`);
    }
    const ta = fs.readFileSync(path.join(A, d, target), 'utf8');
    if (ta !== `from A ${i}` && ta !== `from B ${i}`) problems.push(`round ${i}: target holds ${JSON.stringify(ta)}`);
    const same = await pollUntil(() => fs.readFileSync(path.join(B.mnt, d, target), 'utf8') === ta, 3000);
    if (!same) problems.push(`round ${i}: target differs between mounts`);

    // --- both mounts create one name with O_EXCL
    const excl = `excl${i}`;
    const [ca, cb] = await Promise.all([
      codeOfAsync(fs.promises.writeFile(path.join(A, d, excl), 'A', { flag: 'wx' })),
      codeOfAsync(fs.promises.writeFile(path.join(B.mnt, d, excl), 'B', { flag: 'wx' })),
    ]);
    const codes = [ca, cb].sort().join(',');
    if (codes !== 'EEXIST,OK') problems.push(`round ${i}: O_EXCL create on both mounts gave A ${ca}, B ${cb} (expected one OK and one EEXIST)`);
    else {
      const winner = ca === 'OK' ? 'A' : 'B';
      if (winner === 'A') aWins++;
      else bWins++;
      const content = fs.readFileSync(path.join(A, d, excl), 'utf8');
      if (content !== winner) problems.push(`round ${i}: O_EXCL winner was ${winner} but the file holds ${JSON.stringify(content)}`);
    }

    // --- both mounts mkdir one name
    const dir = `dir${i}`;
    const [ma, mb] = await Promise.all([
      codeOfAsync(fs.promises.mkdir(path.join(A, d, dir))),
      codeOfAsync(fs.promises.mkdir(path.join(B.mnt, d, dir))),
    ]);
    if ([ma, mb].sort().join(',') !== 'EEXIST,OK') problems.push(`round ${i}: mkdir on both mounts gave A ${ma}, B ${mb}`);

    // --- both mounts rename one directory into a different place: exactly one succeeds
    const moved = `moved${i}`;
    const [mva, mvb] = await Promise.all([
      codeOfAsync(fs.promises.rename(path.join(A, d, dir), path.join(A, d, `${moved}a`))),
      codeOfAsync(fs.promises.rename(path.join(B.mnt, d, dir), path.join(B.mnt, d, `${moved}b`))),
    ]);
    if ([mva, mvb].sort().join(',') !== 'ENOENT,OK') problems.push(`round ${i}: renaming one directory on both mounts gave A ${mva}, B ${mvb} (expected one OK, one ENOENT)`);
  }
  t.log(`O_EXCL wins: A ${aWins}, B ${bWins}`);
  t.deepEqual(problems, [], logs());

  // The tree: each name once, identical listings on all mounts, link counts right.
  const expected = new Set<string>();
  for (let i = 0; i < rounds; i++) expected.add(`target${i}`).add(`excl${i}`);
  const listings = await Promise.all(
    [A, B.mnt, W.mnt].map(async (m) => {
      let list: string[] = [];
      await pollUntil(() => {
        list = fs.readdirSync(path.join(m, d)).sort();
        return list.filter((n) => !n.startsWith('moved')).join('/') === [...expected].sort().join('/') && list.length === 3 * rounds;
      }, 3000);
      return list;
    }),
  );
  t.deepEqual(listings[0], listings[1], 'A and B list different names');
  t.deepEqual(listings[0], listings[2], 'A and W list different names');
  t.is(listings[0].filter((n) => !n.startsWith('moved')).length, 2 * rounds, `listing: ${listings[0].join(' ')}`);
  t.is(listings[0].filter((n) => n.startsWith('moved')).length, rounds, `listing: ${listings[0].join(' ')}`);
  t.is(new Set(listings[0]).size, listings[0].length, 'a name is listed twice');
  for (const n of listings[0]) {
    const st = fs.lstatSync(path.join(A, d, n));
    t.is(st.nlink, st.isDirectory() ? 2 : 1, `${n}: nlink ${st.nlink}`);
  }
  t.is(fs.lstatSync(path.join(A, d)).nlink, 2 + rounds, 'directory link count (2 + subdirectories)');

  // The files displaced by the races are reclaimed: no orphans left behind.
  let s = await status(vol.metaUrl);
  for (let k = 0; k < 10 && s.usage.orphans !== 0; k++) {
    await sleep(1000);
    s = await status(vol.metaUrl);
  }
  t.is(s.usage.orphans, 0, `orphans left after the races: ${JSON.stringify(s.usage)}`);

  // fsck: `kvfs fsck` is part of issue 5 but may not exist yet; the step is skipped then.
  const check = await fsck(vol.metaUrl);
  if (check === undefined) t.log('kvfs fsck is not available in this build: consistency checked through the mounts only');
  else t.true(check.clean, check.output);
  daemonsAlive(t);
});

// ---------------------------------------------------------------------------------------------
// 5. open-unlinked across mounts

test.serial('a file unlinked on B while open on A stays readable and writable through the fd, and is reclaimed after the close', async (t) => {
  t.timeout(120_000);
  const rel = 'held.bin';
  const size = 40 * BLOCK + 123; // 41 blocks
  const data = prngBytes(55, size);
  fs.writeFileSync(path.join(A, rel), data);
  const fd = fs.openSync(path.join(A, rel), 'r+');
  let closed = false;
  try {
    await pollUntil(() => exists(path.join(B.mnt, rel)), 3000);
    fs.unlinkSync(path.join(B.mnt, rel));
    t.is(codeOf(() => fs.statSync(path.join(B.mnt, rel))), 'ENOENT');
    t.true(await pollUntil(() => !exists(path.join(A, rel)), 3000), 'the name is still there on A');
    await sleep(3500);

    const back = Buffer.alloc(size);
    t.is(fs.readSync(fd, back, 0, size, 0), size);
    t.true(back.equals(data), 'reading the unlinked file through the fd on A gave different bytes');
    const patch = prngBytes(56, 3 * BLOCK);
    fs.writeSync(fd, patch, 0, patch.length, 5 * BLOCK + 10);
    fs.fsyncSync(fd);
    await sleep(2500); // past the orphan grace time: a mount that reclaimed it too early would have done so now
    const after = Buffer.alloc(size);
    t.is(fs.readSync(fd, after, 0, size, 0), size);
    patch.copy(data, 5 * BLOCK + 10);
    t.true(after.equals(data), 'after writing through the fd, reading it back differs');
    const before = await status(vol.metaUrl);
    t.is(before.usage.orphans, 1, `the unlinked open file should be the one orphan: ${JSON.stringify(before.usage)}`);
    t.true(before.data.blocks >= 41, `blocks stored: ${before.data.blocks}`);
    fs.closeSync(fd);
    closed = true;
    const start = Date.now();
    let now = before;
    const reclaimed = await pollUntil(async () => {
      now = await status(vol.metaUrl);
      return now.usage.orphans === 0 && now.data.blocks <= before.data.blocks - 41;
    }, 6000, 200);
    t.true(
      reclaimed,
      `after the last close: orphans ${now.usage.orphans}, blocks ${before.data.blocks} -> ${now.data.blocks} (expected a drop of 41) ` +
        `within ${Date.now() - start} ms\n${logs()}`,
    );
  } finally {
    if (!closed) fs.closeSync(fd);
  }
  daemonsAlive(t);
});

// Known limitation, kept as a failing test until fixed: fstat() of the open file after another
// mount unlinked it arrives as a getattr BY PATH (libfuse2's path API passes no handle) and gets
// ENOENT; reads and writes through the fd work (previous test). fstat matters: cat, cp, Node's
// readFile(fd) and SQLite call it on open files.
test.serial.failing('fstat() through an fd on A of a file another mount unlinked', async (t) => {
  const rel = 'held-fstat.bin';
  const data = prngBytes(58, 3 * BLOCK + 7);
  fs.writeFileSync(path.join(A, rel), data);
  const fd = fs.openSync(path.join(A, rel), 'r');
  let result: number | string;
  try {
    await pollUntil(() => exists(path.join(B.mnt, rel)), 3000);
    fs.unlinkSync(path.join(B.mnt, rel));
    t.true(await pollUntil(() => !exists(path.join(A, rel)), 3000), 'the name is still there on A');
    try {
      result = fs.fstatSync(fd).size;
    } catch (e) {
      result = (e as NodeJS.ErrnoException).code ?? String(e);
    }
  } finally {
    fs.closeSync(fd);
  }
  // Let the orphan be reclaimed before the next test counts files and blocks.
  await pollUntil(async () => (await status(vol.metaUrl)).usage.orphans === 0, 6000, 200);
  t.is(result, data.length, `fstat(2) on A's fd of the file unlinked on B: ${result}`);
});

// A file unlinked on the mount that has it open is renamed to .fuse_hidden* there until its last
// close (libfuse2's default, documented in the README: hard_remove would break fstat). What must
// hold: the name is gone everywhere, the fd keeps working (fstat included), and after the close the
// hidden name is gone, the directory is empty on every mount and the data is reclaimed.
test.serial('a file unlinked on A while open on A: the name is gone on both mounts; after the close the directory is empty and the data reclaimed', async (t) => {
  t.timeout(120_000);
  const d = 'held-local';
  fs.mkdirSync(path.join(A, d));
  const data = prngBytes(57, 10 * BLOCK + 1); // 11 blocks
  fs.writeFileSync(path.join(A, d, 'f'), data);
  const before = await status(vol.metaUrl);
  const fd = fs.openSync(path.join(A, d, 'f'), 'r+');
  const problems: string[] = [];
  try {
    fs.unlinkSync(path.join(A, d, 'f'));
    if (exists(path.join(A, d, 'f'))) problems.push('the name is still there on A after the unlink');
    if (!(await pollUntil(() => !exists(path.join(B.mnt, d, 'f')), 3000))) problems.push('the name is still there on B 3 s after the unlink');
    const back = Buffer.alloc(data.length);
    const n = fs.readSync(fd, back, 0, back.length, 0);
    if (n !== data.length || !back.equals(data)) problems.push(`A read ${n} bytes through its fd, ${back.equals(data) ? 'same' : 'different'} content`);
    const patch = Buffer.from('written after the unlink');
    fs.writeSync(fd, patch, 0, patch.length, 100);
    fs.fsyncSync(fd);
    const st = codeOf(() => fs.fstatSync(fd));
    if (st !== 'OK') problems.push(`fstat(2) of the open unlinked file on A: ${st}`);
  } finally {
    fs.closeSync(fd);
  }
  const emptyOn = async (m: string) => pollUntil(() => fs.readdirSync(path.join(m, d)).length === 0, 3000);
  for (const m of [A, B.mnt]) if (!(await emptyOn(m))) problems.push(`after the close, ${m} still lists ${JSON.stringify(fs.readdirSync(path.join(m, d)))}`);
  const rm = codeOf(() => fs.rmdirSync(path.join(B.mnt, d)));
  if (rm !== 'OK') problems.push(`rmdir of the empty directory on B after the close: ${rm}`);
  let now = before;
  const reclaimed = await pollUntil(async () => {
    now = await status(vol.metaUrl);
    return now.usage.orphans === 0 && now.usage.files === before.usage.files - 1 && now.data.blocks <= before.data.blocks - 11;
  }, 6000, 200);
  if (!reclaimed) problems.push(`after the close: ${JSON.stringify(now.usage)}, blocks ${before.data.blocks} -> ${now.data.blocks} (expected one file and 11 blocks fewer)`);
  t.deepEqual(problems, [], logs());
  daemonsAlive(t);
});

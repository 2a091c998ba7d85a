// Sessions of mounts of one etcd + Redis volume (issue 5): a mount killed with SIGKILL disappears
// from `kvfs status` when its lease expires and a file it held open, unlinked by another mount, is
// reclaimed by the survivors' sweep; a mount whose lease expired while it was frozen is fenced: its uncommitted
// writes fail with EIO at close()/fsync() instead of overwriting what another mount committed.
import test, { ExecutionContext } from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { sleep, startVolume, Volume } from './_helpers/mount';
import { codeOf, prngBytes, sha256 } from './_helpers/ops';
import { ExtraMount, extraMount, fsck, pollUntil, SessionJson, startHolder, status, StatusJson, tail } from './_suites/multimount';

const MiB = 1024 * 1024;

let vol: Volume;
const extra: ExtraMount[] = [];

test.before(async () => {
  vol = await startVolume({ backend: 'etcd' });
});

test.after.always(async () => {
  for (const m of extra) await m.stop();
  await vol?.stop();
});

function isSession(s: SessionJson, m: { pid: number; mnt: string }): boolean {
  return s.pid === m.pid && path.resolve(s.mountpoint) === path.resolve(m.mnt);
}

test.serial('a killed mount leaves the session list within 10 s; a file it held open-unlinked is reclaimed by the survivors', async (t) => {
  t.timeout(180_000);
  const C = await extraMount(vol, 'C', ['--session-ttl', '3']);
  extra.push(C);
  const A = vol.mnt;
  const logs = () => `--- A ---\n${tail(vol.logs())}\n--- C ---\n${tail(C.daemon.log())}`;
  // AVA stops a test at its first failed assertion: collect the checks that should not hide the
  // later steps, and assert them together at the end.
  const problems: string[] = [];
  const check = (ok: boolean, what: string) => ok || problems.push(what);

  let s = await status(vol.metaUrl);
  t.true(s.sessions.some((x) => isSession(x, C)), `C (pid ${C.pid}, ${C.mnt}) is not in the sessions: ${JSON.stringify(s.sessions)}`);
  t.true(s.sessions.some((x) => isSession(x, { pid: vol.pid, mnt: A })), `A (pid ${vol.pid}, ${A}) is not in the sessions: ${JSON.stringify(s.sessions)}`);
  for (const x of s.sessions) for (const k of ['id', 'host', 'pid', 'mountpoint', 'version', 'startedAt'] as const) t.truthy(x[k], `session field ${k}`);

  // A file open on C and unlinked through A: an orphan that C holds. 3 MiB + 5: 4 blocks.
  // (A file unlinked through C itself would become C's .fuse_hidden* name instead: see the next test.)
  const data = prngBytes(61, 3 * MiB + 5);
  fs.writeFileSync(path.join(A, 'held-by-C'), data);
  const baseline = await status(vol.metaUrl);
  // The fd on C lives in a helper process (see startHolder).
  const holder = startHolder();
  try {
    const o = await holder.cmd({ op: 'open', path: path.join(C.mnt, 'held-by-C'), flags: 'r' });
    t.is(o.code, 'OK');
    fs.unlinkSync(path.join(A, 'held-by-C'));
    await sleep(3500); // past the 2 s orphan grace time: nobody may reclaim it while C holds it
    const r = await holder.cmd({ op: 'read', fd: o.fd!, len: data.length + 10, pos: 0 });
    t.like(r, { code: 'OK', sha: sha256(data), n: data.length }, 'C reads the file A unlinked');
    check(fs.readdirSync(A).length === 0, `A lists ${JSON.stringify(fs.readdirSync(A))} after the unlink`);
    s = await status(vol.metaUrl);
    check(s.usage.orphans === 1, `the file held open on C should be an orphan now: ${JSON.stringify(s.usage)}`);
    t.true(s.data.blocks >= baseline.data.blocks, `blocks ${baseline.data.blocks} -> ${s.data.blocks} while held: reclaimed while C holds it`);
  } catch (e) {
    await holder.kill();
    throw e;
  }

  // SIGKILL C while it holds it; its mountpoint is dead and is lazily unmounted.
  const killedAt = Date.now();
  await C.kill9();
  await holder.kill();

  let after: StatusJson = s;
  const gone = await pollUntil(async () => {
    after = await status(vol.metaUrl);
    return !after.sessions.some((x) => isSession(x, C));
  }, 10_000, 250);
  check(gone, `C's session is still listed ${Date.now() - killedAt} ms after the kill: ${JSON.stringify(after.sessions)}`);
  t.log(`C's session ${gone ? 'disappeared' : 'still listed'} ${Date.now() - killedAt} ms after SIGKILL`);
  check(after.sessions.some((x) => isSession(x, { pid: vol.pid, mnt: A })), 'A is no longer listed');

  // The survivors' sweep (every 30 s) reclaims the orphan nobody holds any more.
  const reclaimed = await pollUntil(async () => {
    after = await status(vol.metaUrl);
    return after.usage.orphans === 0 && after.usage.files === 0 && after.data.blocks <= s.data.blocks - 4;
  }, 45_000 - (Date.now() - killedAt), 1000);
  const summary =
    `${Math.round((Date.now() - killedAt) / 1000)} s after C died: ${JSON.stringify(after.usage)}, blocks ${s.data.blocks} -> ${after.data.blocks} ` +
    `(expected no files, no orphans, 4 blocks fewer)`;
  t.log(summary);
  check(reclaimed, summary);
  check(vol.daemon.exitStatus() === undefined, 'A exited');
  const c = await fsck(vol.metaUrl);
  if (c && !c.clean) problems.push(c.output);
  t.deepEqual(problems, [], logs());
});

// README: a file unlinked while open on the same mount is renamed to .fuse_hidden* until its last
// close there; "a daemon killed in between leaves it behind, and `rm` removes it".
test.serial('a file unlinked on a mount that has it open, then SIGKILL of that mount: the .fuse_hidden* name left behind can be removed and its data is reclaimed', async (t) => {
  t.timeout(120_000);
  const C = await extraMount(vol, 'C2', ['--session-ttl', '3']);
  extra.push(C);
  const A = vol.mnt;
  const dir = path.join(A, 'hidden');
  fs.mkdirSync(dir);
  const data = prngBytes(62, 3 * MiB + 5);
  fs.writeFileSync(path.join(dir, 'f'), data);
  const before = await status(vol.metaUrl);
  const holder = startHolder();
  try {
    const o = await holder.cmd({ op: 'open', path: path.join(C.mnt, 'hidden', 'f'), flags: 'r' });
    t.is(o.code, 'OK');
    fs.unlinkSync(path.join(C.mnt, 'hidden', 'f'));
    const r = await holder.cmd({ op: 'read', fd: o.fd!, len: data.length + 10, pos: 0 });
    t.like(r, { code: 'OK', sha: sha256(data), n: data.length }, 'C reads the file it unlinked');
    t.true(await pollUntil(() => !fs.readdirSync(dir).includes('f'), 3000), 'the name f is gone on A');
  } finally {
    await C.kill9();
    await holder.kill();
  }
  const left = fs.readdirSync(dir);
  t.log(`left behind after the kill: ${JSON.stringify(left)}`);
  t.true(left.every((n) => n.startsWith('.fuse_hidden')), `unexpected names: ${JSON.stringify(left)}`);
  for (const n of left) {
    t.true(fs.readFileSync(path.join(dir, n)).equals(data), `${n} holds the file's data`);
    fs.unlinkSync(path.join(dir, n));
  }
  fs.rmdirSync(dir);
  let now = before;
  const reclaimed = await pollUntil(async () => {
    now = await status(vol.metaUrl);
    return now.usage.orphans === 0 && now.usage.files === before.usage.files - 1 && now.data.blocks <= before.data.blocks - 4;
  }, 10_000, 500);
  t.true(reclaimed, `after rm of the hidden name: ${JSON.stringify(now.usage)}, blocks ${before.data.blocks} -> ${now.data.blocks}`);
});

/**
 * D writes two files and is frozen (SIGSTOP) for 8 s before it commits them; its 3 s lease runs out
 * meanwhile and E rewrites both files. After SIGCONT, D closes one and fsyncs the other at once.
 */
async function fencing(t: ExecutionContext, tag: string, extraArgs: string[]): Promise<void> {
  t.timeout(180_000);
  const D = await extraMount(vol, `D${tag}`, ['--session-ttl', '3', '--backend-timeout', '2', ...extraArgs]);
  extra.push(D);
  const E = vol.mnt;
  const logs = () => `--- E ---\n${tail(vol.logs())}\n--- D ---\n${tail(D.daemon.log(), 60)}`;

  const e0 = prngBytes(71, 2 * MiB + 100);
  const e1 = prngBytes(72, MiB + 333); // what E commits while D is frozen (a different size)
  const d1 = prngBytes(73, 2 * MiB + 100); // what D writes and never gets to commit
  for (const name of [`fenced-close${tag}`, `fenced-fsync${tag}`]) fs.writeFileSync(path.join(E, name), e0);
  t.true(await pollUntil(() => codeOf(() => fs.statSync(path.join(D.mnt, `fenced-fsync${tag}`))) === 'OK', 3000));

  // AVA stops a test at its first failed assertion: the checks below are collected and asserted
  // together at the end, so that one failure does not hide the others.
  const problems: string[] = [];
  const check = (ok: boolean, what: string) => ok || problems.push(what);

  // The fds on D live in a helper process (see startHolder: this process must hold none on D).
  const holder = startHolder();
  try {
    const oc = await holder.cmd({ op: 'open', path: path.join(D.mnt, `fenced-close${tag}`), flags: 'r+' });
    const of = await holder.cmd({ op: 'open', path: path.join(D.mnt, `fenced-fsync${tag}`), flags: 'r+' });
    t.is(oc.code, 'OK');
    t.is(of.code, 'OK');
    const fdClose = oc.fd!;
    const fdFsync = of.fd!;
    t.is((await holder.cmd({ op: 'write', fd: fdClose, data: d1, pos: 0 })).code, 'OK');
    t.is((await holder.cmd({ op: 'write', fd: fdFsync, data: d1, pos: 0 })).code, 'OK');
    // Freeze D's daemon right away (its flush interval is at least 5 s: nothing of d1 is committed yet).
    process.kill(D.pid, 'SIGSTOP');
    const stoppedAt = Date.now();
    try {
      await sleep(500);
      // E rewrites both files while D is frozen and D's lease runs out (TTL 3 s).
      for (const name of [`fenced-close${tag}`, `fenced-fsync${tag}`]) await fs.promises.writeFile(path.join(E, name), e1);
      await sleep(Math.max(0, 5000 - (Date.now() - stoppedAt)));
      const s = await status(vol.metaUrl);
      check(!s.sessions.some((x) => x.pid === D.pid), `D's session is still listed 5 s into the freeze (TTL 3 s): ${JSON.stringify(s.sessions)}`);
      await sleep(Math.max(0, 8000 - (Date.now() - stoppedAt)));
    } finally {
      process.kill(D.pid, 'SIGCONT');
    }

    // At once after SIGCONT: close one file, fsync the other. Both must fail with EIO.
    const [closeR, fsyncR] = await Promise.all([holder.cmd({ op: 'close', fd: fdClose }), holder.cmd({ op: 'fsync', fd: fdFsync })]);
    const closeAfterFsync = await holder.cmd({ op: 'close', fd: fdFsync });
    t.log(`D after SIGCONT: close ${closeR.code} (${closeR.ms} ms), fsync ${fsyncR.code} (${fsyncR.ms} ms), then close ${closeAfterFsync.code}`);
    check(closeR.code === 'EIO', `close() on D of a file written before D's session expired returned ${closeR.code}, expected EIO`);
    check(fsyncR.code === 'EIO', `fsync() on D of a file written before D's session expired returned ${fsyncR.code}, expected EIO`);
  } finally {
    process.kill(D.pid, 'SIGCONT');
    await holder.kill();
  }

  // E's content stays, now and after D had time for any background flush.
  for (const delay of [0, 6000]) {
    await sleep(delay);
    for (const name of [`fenced-close${tag}`, `fenced-fsync${tag}`]) {
      const got = fs.readFileSync(path.join(E, name));
      if (!got.equals(e1))
        problems.push(`${name} on E ${delay} ms after D's close/fsync: ${got.length} bytes, ${got.equals(d1) ? "D's stale write overwrote E's" : got.equals(e0) ? 'the old content' : 'unexpected content'}`);
    }
  }

  // D says its session was lost, gets a new one, and new opens work.
  check(await pollUntil(() => /session .*lost/i.test(D.daemon.log()), 10_000), `D does not log the session loss`);
  let lastErr = '';
  const works = await pollUntil(() => {
    try {
      fs.writeFileSync(path.join(D.mnt, `after-fence${tag}`), 'D is back');
      return fs.readFileSync(path.join(D.mnt, `after-fence${tag}`), 'utf8') === 'D is back';
    } catch (e) {
      lastErr = (e as NodeJS.ErrnoException).code ?? String(e);
      return false;
    }
  }, 20_000, 500);
  check(works, `new opens on D still fail 20 s after SIGCONT (${lastErr})`);
  if (works) {
    check(await pollUntil(() => fs.readFileSync(path.join(E, `after-fence${tag}`), 'utf8') === 'D is back', 3000), 'E does not see what D wrote after reconnecting');
    const onD = fs.readFileSync(path.join(D.mnt, `fenced-close${tag}`));
    check(onD.equals(e1), `D reads ${onD.length} bytes of fenced-close${tag} after reconnecting, not E's ${e1.length}`);
  }
  const s = await status(vol.metaUrl);
  check(s.sessions.some((x) => isSession(x, D)), `D has no new session: ${JSON.stringify(s.sessions)}`);
  check(D.daemon.exitStatus() === undefined, `D's daemon exited`);
  t.deepEqual(problems, [], logs());
  await D.stop();
}

test.serial('a mount frozen past its session TTL is fenced: close/fsync fail with EIO, the other mount keeps its content', async (t) => {
  await fencing(t, '', []);
});

test.serial('fencing with --flush-interval 60 (only close/fsync commit): EIO, the other mount keeps its content', async (t) => {
  await fencing(t, '-f60', ['--flush-interval', '60']);
});

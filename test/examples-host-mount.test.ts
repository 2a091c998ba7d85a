// examples/host-mount/run.sh: runs it as a user would and checks what it prints, and that it leaves
// nothing behind (servers, daemons, mounts, its temp dir) -- also when one of its steps fails.
import test, { ExecutionContext } from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CLI, describeRun, makeTempDir, pidAlive, procMounts, removeTempDir, ROOT, run, RunResult } from './_helpers/mount';

const SCRIPT = path.join(ROOT, 'examples', 'host-mount', 'run.sh');

/** Pids and paths the script reported, and a check that none of them is still around. */
function assertLeftNothing(t: ExecutionContext, r: RunResult): void {
  const out = r.stdout + r.stderr;
  const work = /in (\/\S+kvfs-host-mount-\w+)\n/.exec(out)?.[1];
  t.truthy(work, 'the script names its work dir');
  const pids = [
    ...[...out.matchAll(/(?:etcd|redis-server) pid (\d+)/g)].map((m) => Number(m[1])),
    ...[...out.matchAll(/\(pid (\d+), log /g)].map((m) => Number(m[1])),
  ];
  t.true(pids.length >= 2, `pids reported: ${pids.join(', ')}`);
  t.deepEqual(pids.filter(pidAlive), [], 'a server or daemon of the script is still running');
  if (work) {
    t.deepEqual(procMounts().filter((m) => m.target.startsWith(work)).map((m) => m.target), [], 'still mounted');
    t.false(fs.existsSync(work), `${work} was not removed`);
  }
}

test('host-mount/run.sh: etcd + Redis + format + mount + use + umount + remount, with the public CLI', async (t) => {
  const r = await run('bash', [SCRIPT], { cwd: '/', timeoutMs: 180_000 });
  t.is(r.code, 0, describeRun('run.sh', r));
  const out = r.stdout;
  t.regex(out, /^kvfs: formatted volume example \(uuid [0-9a-f-]{36}, block size 1 MiB, data at redis:\/\/127\.0\.0\.1:\d+\)$/m);
  t.is(out.match(/^kvfs: mounted etcd:\/\/127\.0\.0\.1:\d+\/example /gm)?.length, 2, 'mounted twice');
  t.regex(out, /^kvfs:example \S+\/mnt fuse\.kvfs rw,.*allow_other/m);
  t.true(
    out.includes(
      ['.', './docs', './docs/hello.txt', './docs/notes', './docs/notes/hello-link', './docs/notes/numbers.txt', './docs/random.bin', 'hello from kvfs', '1000', ''].join('\n'),
    ),
    out,
  );
  const sums = /random\.bin sha256 ([0-9a-f]{64}) \(written: ([0-9a-f]{64})\)/.exec(out);
  t.truthy(sums);
  t.is(sums?.[1], sums?.[2], 'read back what was written');
  t.regex(out, /^files: +3 files, 3 directories, 1 symlinks/m);
  t.true(out.includes('hello from kvfs\nrandom.bin: same sha256 after the remount\nnumbers.txt: 1000 lines\n'));
  t.true(out.endsWith('done\n'));
  t.is(r.stderr, '', 'nothing on stderr');
  assertLeftNothing(t, r);
});

test('host-mount/run.sh cleans up when a step fails while mounted', async (t) => {
  // A kvfs command that fails on `status` (run while the volume is mounted), and works otherwise.
  const dir = makeTempDir('kvfs-example-bin-');
  t.teardown(() => removeTempDir(dir));
  const wrapper = path.join(dir, 'kvfs-failing-status');
  fs.writeFileSync(wrapper, `#!/bin/sh\n[ "$1" = status ] && { echo "status: injected failure" >&2; exit 3; }\nexec '${process.execPath}' '${CLI}' "$@"\n`, {
    mode: 0o755,
  });
  const r = await run('bash', [SCRIPT], { cwd: '/', timeoutMs: 180_000, env: { ...process.env, KVFS: wrapper } });
  t.is(r.code, 3, describeRun('run.sh with a failing step', r));
  t.regex(r.stdout, /^kvfs: mounted /m);
  t.regex(r.stderr, /status: injected failure\nrun\.sh: FAILED \(exit 3\)\n$/);
  assertLeftNothing(t, r);
});

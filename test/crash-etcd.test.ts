// kill -9 loop on an etcd + Redis volume (issue 5, crash safety): a workload writes files, fsyncs
// each and its directory, and journals path + sha256 outside the mount only after fsync returned;
// the daemon is SIGKILLed at a random (seeded) moment, the dead mount lazily unmounted, the volume
// mounted again, and every journalled file must read back byte-exact.
import test from 'ava';
import { startVolume, Volume } from './_helpers/mount';
import { crashLoop, fsck, tail } from './_suites/multimount';

let vol: Volume;

test.before(async () => {
  vol = await startVolume({ backend: 'etcd' });
});

test.after.always(async () => {
  await vol?.stop();
});

test.serial('SIGKILL of the daemon at random moments never loses a file that was fsynced (etcd + Redis)', async (t) => {
  t.timeout(240_000);
  let fsckSkipped = false;
  const r = await crashLoop(vol, {
    seed: 5005,
    iterations: 8,
    minDelayMs: 200,
    maxDelayMs: 3500,
    check: async () => {
      // `kvfs fsck` belongs to issue 5 but may not exist yet: the step is skipped then.
      const c = await fsck(vol.metaUrl);
      if (c === undefined) fsckSkipped = true;
      return c === undefined || c.clean ? [] : [c.output];
    },
  });
  t.log(`runs (ms before kill: files fsynced): ${r.runs.map((x) => `${x.delayMs}:${x.done}`).join(', ')}`);
  if (fsckSkipped) t.log('kvfs fsck is not available in this build: consistency checked by reading the whole tree');
  t.deepEqual(r.problems, [], tail(vol.logs(), 60));
  t.is(r.iterations, 8);
  t.true(r.done >= 8, `only ${r.done} files were fsynced in all runs: the workload barely ran`);
});

// kill -9 loop on an embedded (SQLite) volume: see crash-etcd.test.ts. The embedded store is
// locked by its daemon, so fsck (if present) runs after the final unmount.
import test from 'ava';
import { startVolume, Volume } from './_helpers/mount';
import { crashLoop, fsck, tail } from './_suites/multimount';

let vol: Volume;

test.before(async () => {
  vol = await startVolume({ backend: 'embedded' });
});

test.after.always(async () => {
  await vol?.stop();
});

test.serial('SIGKILL of the daemon at random moments never loses a file that was fsynced (embedded)', async (t) => {
  t.timeout(240_000);
  const r = await crashLoop(vol, { seed: 6006, iterations: 8, minDelayMs: 200, maxDelayMs: 3500 });
  t.log(`runs (ms before kill: files fsynced): ${r.runs.map((x) => `${x.delayMs}:${x.done}`).join(', ')}`);
  t.deepEqual(r.problems, [], tail(vol.logs(), 60));
  t.is(r.iterations, 8);
  t.true(r.done >= 8, `only ${r.done} files were fsynced in all runs: the workload barely ran`);
  await vol.unmount();
  // `kvfs fsck` belongs to issue 5 but may not exist yet: the step is skipped then.
  const c = await fsck(vol.metaUrl);
  if (c === undefined) t.log('kvfs fsck is not available in this build: consistency checked by reading the whole tree');
  else t.true(c.clean, c.output);
});

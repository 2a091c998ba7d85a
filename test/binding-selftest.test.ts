// The patched fuse-native binding (patches/): its own self test mounts an in-memory filesystem
// and checks every fix through the kernel (nanosecond times, UTIME_OMIT, caller ids, 64-bit
// numbers, big writes, handles, xattr ERANGE, thread-local reuse, close-on-exec /dev/fuse).
// Run here so that CI checks the binding npm ci just built, not only kvfs on top of it.
import test from 'ava';
import * as path from 'node:path';
import { ROOT, describeRun, run } from './_helpers/mount';

test('the patched binding passes its self test', async (t) => {
  const r = await run(process.execPath, [path.join(ROOT, 'patches', 'selftest.js')], { timeoutMs: 120_000 });
  t.is(r.code, 0, describeRun('patches/selftest.js', r));
  const summary = /^(\d+) passed, (\d+) failed$/m.exec(r.stdout);
  t.truthy(summary, r.stdout);
  t.true(Number(summary?.[1]) >= 42, r.stdout);
  t.is(summary?.[2], '0', r.stdout);
});

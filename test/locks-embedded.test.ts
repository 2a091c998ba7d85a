// fcntl and flock locks on an embedded volume: the shared lock suite with every process on one
// mount. Locks go to the daemon (not the kernel) on every mount, so this checks the daemon's
// arbitration between processes of one mount.
import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startVolume, Volume } from './_helpers/mount';
import { alarmedWait, lockSuite } from './_suites/locks';
import { tail } from './_suites/multimount';

let vol: Volume;

test.before(async () => {
  vol = await startVolume({ backend: 'embedded' });
});

test.after.always(async () => {
  await vol?.stop();
});

lockSuite(test, 'on one mount', () => ({ A: vol.mnt, B: vol.mnt, logs: () => tail(vol.logs()) }));

// The suite checks that an alarm ends a blocking flock or fcntl wait on kvfs; this is the same
// check on a local disk, so a failure there is kvfs's and not the harness's.
for (const kind of ['flock', 'fcntl'] as const) {
  test.serial(`control: on a local disk an alarm ends a blocking ${kind} wait`, async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvfs-alarm-'));
    try {
      t.is(await alarmedWait(kind, path.join(dir, 'lock')), 'timed out');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}

// fcntl and flock locks on an embedded volume: the shared lock suite with every process on one
// mount. Locks go to the daemon (not the kernel) on every mount, so this checks the daemon's
// arbitration between processes of one mount.
import test from 'ava';
import { startVolume, Volume } from './_helpers/mount';
import { lockSuite } from './_suites/locks';
import { tail } from './_suites/multimount';

let vol: Volume;

test.before(async () => {
  vol = await startVolume({ backend: 'embedded' });
});

test.after.always(async () => {
  await vol?.stop();
});

lockSuite(test, 'on one mount', () => ({ A: vol.mnt, B: vol.mnt, logs: () => tail(vol.logs()) }));

// Issue 4: streaming a 4 GiB file keeps the daemon's resident memory under the cache size plus
// 200 MiB. The file is written, the volume remounted (a fresh daemon, caches empty), and the file
// read through once in 1 MiB reads, each checked; then the new daemon's peak resident set
// (VmHWM, from the kernel) is compared with the bound. etcd + Redis, the path with the most
// client-side buffering (reply buffers, socket chunks); default --cache-size (256 MiB).
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { startVolume, Volume } from './_helpers/mount';
import { prngBytes } from './_helpers/ops';

const MiB = 1024 * 1024;
const FILE_MIB = 4096;
const CACHE_MIB = 256; // kvfs mount's default --cache-size
const BOUND_MIB = CACHE_MIB + 200;

let vol: Volume;

test.before(async () => {
  vol = await startVolume({ backend: 'etcd' });
});

test.after.always(async () => {
  // Redis keeps the 4 GiB in memory: delete the file before the servers go, for the suites after.
  await fs.promises.rm(path.join(vol.mnt, 'big.bin'), { force: true }).catch(() => undefined);
  await vol?.stop();
});

/** MiB `i` of the file: one random MiB, its first 8 bytes replaced by i (each MiB differs). */
function chunk(base: Buffer, i: number, into: Buffer): Buffer {
  base.copy(into);
  into.writeBigUInt64LE(BigInt(i), 0);
  return into;
}

/** Peak and current resident set of a process, in MiB (/proc/PID/status). */
function residentMiB(pid: number): { peak: number; now: number } {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)![1]);
  return { peak: kb('VmHWM') / 1024, now: kb('VmRSS') / 1024 };
}

test.serial('streaming a 4 GiB file: daemon peak resident memory < cache size + 200 MiB', async (t) => {
  const file = path.join(vol.mnt, 'big.bin');
  const base = prngBytes(41, MiB);
  const buf = Buffer.alloc(MiB);
  const out = await fs.promises.open(file, 'w');
  try {
    for (let i = 0; i < FILE_MIB; i++) await out.write(chunk(base, i, buf), 0, MiB, i * MiB);
    await out.sync();
  } finally {
    await out.close();
  }

  await vol.remount();
  const pid = vol.daemon.pid;
  const before = residentMiB(pid);
  const expected = Buffer.alloc(MiB);
  const input = await fs.promises.open(file, 'r');
  let bad = -1;
  try {
    for (let i = 0; i < FILE_MIB; i++) {
      const { bytesRead } = await input.read(buf, 0, MiB, null);
      if (bytesRead !== MiB || !buf.equals(chunk(base, i, expected))) {
        bad = i;
        break;
      }
    }
    const { bytesRead } = await input.read(buf, 0, 1, null);
    t.is(bytesRead, 0, 'nothing past 4 GiB');
  } finally {
    await input.close();
  }
  t.is(bad, -1, `MiB ${bad} of the file reads back different`);
  const after = residentMiB(pid);
  t.log(`daemon ${pid}: resident ${before.now.toFixed(0)} MiB after mount, peak ${after.peak.toFixed(0)} MiB while streaming (bound ${BOUND_MIB})`);
  t.true(after.peak < BOUND_MIB, `peak resident ${after.peak.toFixed(0)} MiB, bound ${BOUND_MIB} MiB`);
});

// Write-back across mounts: data flushed by the interval reaches a second mount, and a reader on
// another mount streaming a file while it is appended sees only committed sizes and content.
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Daemon, kvfs, makeTempDir, removeTempDir, sleep, spawnMount, startVolume, Volume } from './_helpers/mount';
import { prngBytes } from './_helpers/ops';

let a: Volume;
let b: { dir: string; mnt: string; daemon: Daemon };

test.before(async () => {
  a = await startVolume({ backend: 'etcd', mountArgs: ['--flush-interval', '0.5'] });
  const dir = makeTempDir('kvfs-wb-b-');
  const mnt = path.join(dir, 'mnt');
  fs.mkdirSync(mnt);
  const daemon = spawnMount([...a.mountArgsFor(['--attr-cache', '0', '--entry-cache', '0']), mnt]);
  await daemon.ready;
  b = { dir, mnt, daemon };
});

test.after.always(async () => {
  if (b) {
    await kvfs(['umount', b.mnt]).catch(() => undefined);
    b.daemon.child.kill('SIGKILL');
    await b.daemon.exited;
    removeTempDir(b.dir);
  }
  await a?.stop();
});

test.serial('data flushed by the interval, file still open, reads back byte-exact on a second mount', async (t) => {
  const data = prngBytes(7, 3 * 1024 * 1024 + 12345);
  const fd = fs.openSync(path.join(a.mnt, 'interval.bin'), 'w');
  try {
    fs.writeSync(fd, data);
    // No fsync, no close: only the flush interval (0.5 s) can commit it.
    let seen: Buffer | undefined;
    for (let i = 0; i < 50 && !(seen && seen.equals(data)); i++) {
      await sleep(200);
      seen = fs.readFileSync(path.join(b.mnt, 'interval.bin'));
    }
    t.true(seen?.equals(data), `mount B read ${seen?.length} bytes, expected ${data.length} identical bytes`);
  } finally {
    fs.closeSync(fd);
  }
});

test.serial('a reader on another mount sees only committed sizes and content while the file is appended', async (t) => {
  const file = 'stream.bin';
  const chunk = 256 * 1024 + 17;
  const source = prngBytes(8, chunk * 24);
  let written = 0;
  const fd = fs.openSync(path.join(a.mnt, file), 'w');
  fs.fsyncSync(fd);
  let done = false;
  const writer = (async () => {
    try {
      for (let off = 0; off < source.length; off += chunk) {
        written = off + chunk;
        fs.writeSync(fd, source, off, chunk, off);
        fs.fsyncSync(fd);
        await sleep(20);
      }
    } finally {
      fs.closeSync(fd);
      done = true;
    }
  })();
  let reads = 0;
  while (!done) {
    // Commits happen at each fsync and, with the 0.5 s flush interval, possibly between the 128 KiB
    // pieces of one write; whichever it was, B must see a prefix of what A had written, whole.
    const content = fs.readFileSync(path.join(b.mnt, file));
    const size = content.length;
    t.true(size <= written, `mount B saw size ${size}, more than the ${written} bytes written so far`);
    t.true(content.equals(source.subarray(0, size)), `mount B read content that differs from what was committed (size ${size})`);
    reads++;
    await sleep(10);
  }
  await writer;
  t.true(reads > 0);
  t.true(fs.readFileSync(path.join(b.mnt, file)).equals(source));
});

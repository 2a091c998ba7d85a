// Parts (lib/meta/schema.ts BlockPart): a commit that changed a few bytes of a committed block
// stores only those bytes, not the whole block again. What a user can check on etcd + Redis: the
// bytes sent to Redis per append + fsync and per SQLite transaction, content byte-exact on a
// second mount and after a remount, and two mounts committing into one block.
import test from 'ava';
import Database from 'better-sqlite3';
import Redis from 'ioredis';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { sleep, startVolume, Volume } from './_helpers/mount';
import { mulberry32, prngBytes } from './_helpers/ops';
import { ExtraMount, extraMount } from './_suites/multimount';

const KiB = 1024;
let vol: Volume;
/** A second mount of the volume without attribute or entry caches: every open sees the latest commit. */
let other: ExtraMount;
let redis: Redis;

test.before(async () => {
  vol = await startVolume({ backend: 'etcd' }); // the default block size, 1 MiB
  other = await extraMount(vol, 'parts-b', ['--attr-cache', '0', '--entry-cache', '0']);
  redis = new Redis({ host: '127.0.0.1', port: vol.servers.redis!.port });
});

test.after.always(async () => {
  redis?.disconnect();
  await other?.stop();
  await vol?.stop();
});

/** Bytes Redis has received from all its clients so far. */
async function redisInputBytes(): Promise<number> {
  const m = /total_net_input_bytes:(\d+)/.exec(await redis.info('stats'));
  if (!m) throw new Error('redis INFO stats has no total_net_input_bytes');
  return Number(m[1]);
}

/** Polls until `read()` equals `expected` (another mount sees a commit at its next open). */
async function seesSoon(read: () => Buffer, expected: Buffer, ms = 5000): Promise<boolean> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (read().equals(expected)) return true;
    if (Date.now() > deadline) return false;
    await sleep(100);
  }
}

test.serial('append 4 KiB + fsync x200: Redis receives about the appended bytes, not the block at every fsync; both mounts read it byte-exact, also after a remount', async (t) => {
  const rel = 'log.bin';
  const data = prngBytes(21, 200 * 4 * KiB);
  const before = await redisInputBytes();
  const fd = fs.openSync(path.join(vol.mnt, rel), 'a');
  try {
    for (let i = 0; i < 200; i++) {
      fs.writeSync(fd, data, i * 4 * KiB, 4 * KiB);
      fs.fsyncSync(fd);
    }
  } finally {
    fs.closeSync(fd);
  }
  const perAppend = ((await redisInputBytes()) - before) / 200;
  t.log(`${Math.round(perAppend)} bytes sent to Redis per append + fsync`);
  // Storing the whole block at every fsync sends 400 KiB per append on average here (the block
  // grows to 800 KiB); parts send the 4 KiB, and the whole block once every 33 appends
  // (lib/fs/file.ts MAX_PARTS).
  t.true(perAppend < 64 * KiB, `${Math.round(perAppend)} bytes sent to Redis per append + fsync`);
  t.true(fs.readFileSync(path.join(vol.mnt, rel)).equals(data), 'the writing mount reads what was appended');
  t.true(fs.readFileSync(path.join(other.mnt, rel)).equals(data), 'the other mount reads what was appended');
  await vol.remount();
  t.true(fs.readFileSync(path.join(vol.mnt, rel)).equals(data), 'after a remount');
});

test.serial('small overwrites, truncates and extensions with fsync: every mount reads what a local file would hold', async (t) => {
  const rel = 'rw.bin';
  const file = path.join(vol.mnt, rel);
  let model = prngBytes(22, 3 * 1024 * KiB + 123); // 4 blocks, the last one short
  fs.writeFileSync(file, model);
  const random = mulberry32(23);
  const int = (n: number) => Math.floor(random() * n);
  const resize = (size: number) => {
    const next = Buffer.alloc(size);
    model.copy(next, 0, 0, Math.min(size, model.length));
    model = next;
  };
  const fd = fs.openSync(file, 'r+');
  const mismatches: string[] = [];
  try {
    for (let i = 0; i < 150; i++) {
      const op = int(10);
      if (op < 7) {
        const data = prngBytes(100 + i, 1 + int(9000));
        const at = int(model.length + 5000);
        fs.writeSync(fd, data, 0, data.length, at);
        if (at + data.length > model.length) resize(at + data.length);
        data.copy(model, at);
      } else {
        const size = op < 9 ? int(model.length + 1) : model.length + int(300 * KiB);
        fs.ftruncateSync(fd, size);
        resize(size);
      }
      if (i % 3 === 0) {
        fs.fsyncSync(fd);
        // Committed: a fresh open on the other mount reads exactly this.
        if (!fs.readFileSync(path.join(other.mnt, rel)).equals(model)) mismatches.push(`after op ${i}`);
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  t.deepEqual(mismatches, [], 'the other mount read something else after these fsyncs');
  t.true(fs.readFileSync(file).equals(model), 'the writing mount');
  t.true(await seesSoon(() => fs.readFileSync(path.join(other.mnt, rel)), model), 'the other mount, after the close');
  await vol.remount();
  t.true(fs.readFileSync(file).equals(model), 'after a remount');
});

test.serial('SQLite: a one-row transaction sends a few pages to Redis, not the database block; the database checks out on the other mount', async (t) => {
  const rel = 'app.db';
  const db = new Database(path.join(vol.mnt, rel));
  let size: number;
  let perCommit: number;
  try {
    db.pragma('journal_mode = DELETE');
    db.pragma('synchronous = FULL');
    db.exec('CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT NOT NULL)');
    const insert = db.prepare('INSERT INTO events (body) VALUES (?)');
    db.transaction(() => {
      for (let i = 0; i < 3000; i++) insert.run(`event ${i} ${'x'.repeat(80)}`);
    })();
    size = fs.statSync(path.join(vol.mnt, rel)).size;
    const before = await redisInputBytes();
    for (let i = 0; i < 30; i++) insert.run(`row ${i}`); // one transaction each
    perCommit = ((await redisInputBytes()) - before) / 30;
  } finally {
    db.close();
  }
  t.log(`database ${size} bytes; ${Math.round(perCommit)} bytes sent to Redis per one-row transaction`);
  t.true(size > 200 * KiB, `the database is ${size} bytes, all in one block`);
  // Whole-block commits would send the database (the block it is in) at every transaction.
  t.true(perCommit < 64 * KiB, `${Math.round(perCommit)} bytes sent to Redis per one-row transaction`);
  const ro = new Database(path.join(other.mnt, rel), { readonly: true, fileMustExist: true });
  try {
    t.is(ro.pragma('integrity_check', { simple: true }), 'ok');
    t.is((ro.prepare('SELECT count(*) AS n FROM events').get() as { n: number }).n, 3030);
  } finally {
    ro.close();
  }
});

test.serial('two mounts committing into one block: parts written over a block another mount replaced are stored whole, the later commit wins the block, every mount agrees', async (t) => {
  const rel = 'shared.bin';
  const base = prngBytes(31, 200_000);
  fs.writeFileSync(path.join(vol.mnt, rel), base);
  t.true(await seesSoon(() => fs.readFileSync(path.join(other.mnt, rel)), base), 'the other mount sees the file');
  // The other mount changes the block in memory, over the committed block...
  const fdOther = fs.openSync(path.join(other.mnt, rel), 'r+');
  fs.writeSync(fdOther, Buffer.alloc(1000, 0x42), 0, 1000, 150_000);
  // ...this mount commits a part over that same block...
  const fd = fs.openSync(path.join(vol.mnt, rel), 'r+');
  fs.writeSync(fd, Buffer.alloc(1000, 0x41), 0, 1000, 10_000);
  fs.fsyncSync(fd);
  fs.closeSync(fd);
  // ...and then the other mount commits: its part would go over a block that is no longer there.
  fs.fsyncSync(fdOther);
  fs.closeSync(fdOther);
  // Whole-block last-writer-wins, as without parts: the other mount's block, this mount's write gone.
  const expected = Buffer.from(base);
  expected.fill(0x42, 150_000, 151_000);
  t.true(await seesSoon(() => fs.readFileSync(path.join(vol.mnt, rel)), expected), 'this mount reads the later commit');
  t.true(fs.readFileSync(path.join(other.mnt, rel)).equals(expected), 'the other mount reads its commit');
  await vol.remount();
  t.true(fs.readFileSync(path.join(vol.mnt, rel)).equals(expected), 'after a remount');
});

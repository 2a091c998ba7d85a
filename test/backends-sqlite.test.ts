// The embedded engines (SQLite): both shared suites plus locking and durability tests.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import test from 'ava';
import { openBlockStore } from '../lib/data/index';
import { SqliteBlocks } from '../lib/data/sqlite';
import { FsError } from '../lib/errors';
import { openKv } from '../lib/meta/index';
import { SqliteKv } from '../lib/meta/sqlite';
import { runNode } from './_helpers/ops';
import { blockSuite } from './_suites/blocks';
import { kvSuite } from './_suites/kv';

function tempDir(): { dir: string; remove(): Promise<void> } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvfs-test-sqlite-'));
  return { dir, remove: () => fs.promises.rm(dir, { recursive: true, force: true }) };
}

kvSuite(test, async () => {
  const { dir, remove } = tempDir();
  const kv = new SqliteKv({ dir: path.join(dir, 'vol') });
  return { kv, cleanup: async () => { await kv.close(); await remove(); } };
});

blockSuite(test, async () => {
  const { dir, remove } = tempDir();
  const store = new SqliteBlocks({ dir, volumeUuid: 'uuid-1' });
  return { store, cleanup: async () => { await store.close(); await remove(); } };
});

const b = (s: string): Buffer => Buffer.from(s);

const distLib = path.join(__dirname, '..', 'lib');

test('sqlite: a second opener of the same volume is refused (same process)', async (t) => {
  const { dir, remove } = tempDir();
  t.teardown(remove);
  const kv = new SqliteKv({ dir });
  t.teardown(() => kv.close());
  const err = t.throws(() => new SqliteKv({ dir }));
  t.is((err as FsError).code, 'EBUSY');
  const blocks = new SqliteBlocks({ dir, volumeUuid: 'u' });
  t.teardown(() => blocks.close());
  const err2 = t.throws(() => new SqliteBlocks({ dir, volumeUuid: 'u' }));
  t.is((err2 as FsError).code, 'EBUSY');
});

test('sqlite: a second opener of the same volume is refused (other process), and can open after close', async (t) => {
  const { dir, remove } = tempDir();
  t.teardown(remove);
  const tryOpen = `
    const { SqliteKv } = require(process.argv[1] + '/meta/sqlite');
    const { SqliteBlocks } = require(process.argv[1] + '/data/sqlite');
    for (const open of [() => new SqliteKv({ dir: process.argv[2] }), () => new SqliteBlocks({ dir: process.argv[2], volumeUuid: 'u' })]) {
      try { open().close(); console.log('opened'); } catch (e) { console.log(e.code); }
    }`;
  const kv = new SqliteKv({ dir });
  const blocks = new SqliteBlocks({ dir, volumeUuid: 'u' });
  t.is((await runNode(tryOpen, [distLib, dir])).out.trim(), 'EBUSY\nEBUSY');
  await kv.close();
  await blocks.close();
  t.is((await runNode(tryOpen, [distLib, dir])).out.trim(), 'opened\nopened');
});

test('sqlite: data survives close and reopen', async (t) => {
  const { dir, remove } = tempDir();
  t.teardown(remove);
  let kv = new SqliteKv({ dir });
  let blocks = new SqliteBlocks({ dir, volumeUuid: 'u' });
  await kv.txn(async (tx) => {
    tx.put('a', b('1'));
    tx.put('b', b('2'));
  });
  await blocks.put('blk', b('block'));
  await kv.close();
  await blocks.close();
  kv = new SqliteKv({ dir });
  blocks = new SqliteBlocks({ dir, volumeUuid: 'u' });
  t.teardown(() => kv.close());
  t.teardown(() => blocks.close());
  t.deepEqual((await kv.scan('')).map((p) => `${p.key}=${p.value}`), ['a=1', 'b=2']);
  t.is((await blocks.get('blk'))?.toString(), 'block');
});

test('sqlite: committed txns and stored blocks survive kill -9', async (t) => {
  const { dir, remove } = tempDir();
  t.teardown(remove);
  const writer = `
    const { SqliteKv } = require(process.argv[1] + '/meta/sqlite');
    const { SqliteBlocks } = require(process.argv[1] + '/data/sqlite');
    (async () => {
      const kv = new SqliteKv({ dir: process.argv[2] });
      const blocks = new SqliteBlocks({ dir: process.argv[2], volumeUuid: 'u' });
      for (let i = 0; i < 50; i++) {
        await blocks.put('b' + i, Buffer.alloc(10000, i));
        await kv.txn(async (tx) => { tx.put('k' + i, Buffer.from(String(i))); });
      }
      console.log('committed');
      setInterval(() => {}, 1000);
    })().catch((e) => { console.log('error ' + e.message); process.exit(1); });`;
  const { out, signal } = await runNode(writer, [distLib, dir], { killOn: 'committed' });
  t.is(out.trim(), 'committed');
  t.is(signal, 'SIGKILL');
  const kv = new SqliteKv({ dir });
  const blocks = new SqliteBlocks({ dir, volumeUuid: 'u' });
  t.teardown(() => kv.close());
  t.teardown(() => blocks.close());
  t.is((await kv.scan('k')).length, 50);
  t.is((await kv.get('k49'))?.toString(), '49');
  t.true((await blocks.get('b49'))?.equals(Buffer.alloc(10000, 49)));
  t.deepEqual(await blocks.usage(), { blocks: 50, bytes: 500000 });
});

test('sqlite: sync() makes the commits so far durable; concurrent callers share fsyncs', async (t) => {
  const { dir, remove } = tempDir();
  t.teardown(remove);
  const kv = new SqliteKv({ dir });
  await kv.sync(); // nothing committed yet: resolves at once
  const commits = Array.from({ length: 20 }, (_, i) => kv.txn(async (tx) => tx.put(`k${i}`, b(String(i)))).then(() => kv.sync()));
  await Promise.all(commits);
  t.true(fs.existsSync(path.join(dir, 'meta.db-wal')));
  t.is((await kv.scan('k')).length, 20);
  await kv.close();
  await t.throwsAsync(kv.sync(), { instanceOf: FsError, code: 'EIO' });
  // What it synced is still there after a reopen.
  const again = new SqliteKv({ dir });
  t.teardown(() => again.close());
  t.is((await again.get('k19'))?.toString(), '19');
});

test('sqlite: create: false refuses a missing volume and creates nothing', async (t) => {
  const { dir, remove } = tempDir();
  t.teardown(remove);
  const missing = path.join(dir, 'nope', 'vol');
  await t.throwsAsync(openKv(`file://${missing}`, { create: false }), { instanceOf: FsError, code: 'ENOENT' });
  await t.throwsAsync(openBlockStore(`file://${missing}`, 'u', { create: false }), { instanceOf: FsError });
  t.false(fs.existsSync(path.join(dir, 'nope')));
});

test('sqlite: a block directory belongs to one volume', async (t) => {
  const { dir, remove } = tempDir();
  t.teardown(remove);
  const one = new SqliteBlocks({ dir, volumeUuid: 'vol-one' });
  await one.close();
  const err = t.throws(() => new SqliteBlocks({ dir, volumeUuid: 'vol-two' }));
  t.is((err as FsError).code, 'EINVAL');
  const again = new SqliteBlocks({ dir, volumeUuid: 'vol-one' });
  await again.close();
});

test('sqlite: openKv and openBlockStore with file:// URLs', async (t) => {
  const { dir, remove } = tempDir();
  t.teardown(remove);
  const volDir = path.join(dir, 'myvol');
  const { kv, volume, describe } = await openKv(`file://${volDir}`);
  t.teardown(() => kv.close());
  t.is(volume, 'myvol');
  t.is(describe, `file://${volDir}`);
  t.is(kv.kind, 'sqlite');
  // A volume directory that has a blocks.db keeps it (new ones get the file store: backends-files).
  await new SqliteBlocks({ dir: volDir, volumeUuid: 'some-uuid' }).close();
  const store = await openBlockStore(`file://${volDir}`, 'some-uuid');
  t.teardown(() => store.close());
  t.is(store.kind, 'sqlite');
  await kv.txn(async (tx) => tx.put('x', b('y')));
  await store.put('id', b('z'));
  t.deepEqual(fs.readdirSync(volDir).filter((f) => f.endsWith('.db')).sort(), ['blocks.db', 'meta.db']);
  // the volume is locked while open
  await t.throwsAsync(openKv(`file://${volDir}`), { instanceOf: FsError });
});

test('sqlite: reads outside a txn never see its uncommitted writes', async (t) => {
  const { dir, remove } = tempDir();
  t.teardown(remove);
  const kv = new SqliteKv({ dir });
  t.teardown(() => kv.close());
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  let started!: () => void;
  const inside = new Promise<void>((r) => (started = r));
  const running = kv.txn(async (tx) => {
    tx.put('k', b('uncommitted'));
    started();
    await gate;
    throw new Error('abort');
  });
  await inside;
  const read = kv.get('k');
  release();
  await t.throwsAsync(running, { message: 'abort' });
  t.is(await read, undefined);
});

// The file block store with small blocks kept in meta.db (FileBlocks.keepSmallBlocksIn(SqliteKv),
// as lib/fs/volume.ts opens every embedded volume): the shared block suite, and blocks stored as
// files before the table was attached stay readable, listable and deletable.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import test from 'ava';
import { blockFile, FileBlocks } from '../lib/data/files';
import { SqliteKv } from '../lib/meta/sqlite';
import { blockSuite } from './_suites/blocks';

function open(dir: string): { store: FileBlocks; kv: SqliteKv; close(): Promise<void> } {
  const kv = new SqliteKv({ dir });
  const store = new FileBlocks({ dir, volumeUuid: 'uuid-1' });
  store.keepSmallBlocksIn(kv);
  return { store, kv, close: async () => { await store.close(); await kv.close(); } };
}

blockSuite(test, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvfs-test-files-meta-'));
  const { store, close } = open(dir);
  return { store, cleanup: async () => { await close(); await fs.promises.rm(dir, { recursive: true, force: true }); } };
});

test('files + meta.db: small blocks are rows of meta.db, large ones files; blocks stored as files before stay usable', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvfs-test-files-meta-'));
  t.teardown(() => fs.promises.rm(dir, { recursive: true, force: true }));
  // A volume written before small blocks moved to meta.db: a small block as a file.
  const before = new FileBlocks({ dir, volumeUuid: 'uuid-1' });
  await before.put('1', Buffer.alloc(4096, 1));
  await before.close();
  t.true(fs.existsSync(blockFile(dir, '1')));

  const v = open(dir);
  await v.store.put('2', Buffer.alloc(4096, 2));
  await v.store.put('3', Buffer.alloc(1 << 20, 3));
  t.false(fs.existsSync(blockFile(dir, '2')), 'a small block is not a file');
  t.true(v.kv.getBlob('2')?.equals(Buffer.alloc(4096, 2)));
  t.true(fs.existsSync(blockFile(dir, '3')), 'a large block is a file');
  for (const [id, n, fill] of [['1', 4096, 1], ['2', 4096, 2], ['3', 1 << 20, 3]] as const) {
    t.true((await v.store.get(id))?.equals(Buffer.alloc(n, fill)), `block ${id}`);
    t.is(await v.store.size(id), n);
  }
  const ids: string[] = [];
  await v.store.list((batch) => void ids.push(...batch));
  t.deepEqual(ids.sort(), ['1', '2', '3']);
  t.deepEqual(await v.store.usage(), { blocks: 3, bytes: 8192 + (1 << 20) });
  await v.store.delete(['1', '2']);
  t.is(await v.store.get('1'), undefined);
  t.is(await v.store.get('2'), undefined);
  await v.close();

  // Rows survive a reopen (they are commits of meta.db).
  const w = open(dir);
  t.teardown(() => w.close());
  await w.store.put('4', Buffer.alloc(100, 4));
  await w.close();
  const x = open(dir);
  t.teardown(() => x.close());
  t.true((await x.store.get('4'))?.equals(Buffer.alloc(100, 4)));
  t.true((await x.store.get('3'))?.equals(Buffer.alloc(1 << 20, 3)));
});

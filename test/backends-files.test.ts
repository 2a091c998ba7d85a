// The embedded one-file-per-block store (lib/data/files.ts): the shared block suite, locking,
// ownership, kill -9, and which store openBlockStore picks for a new and for an existing volume.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import test from 'ava';
import { openBlockStore } from '../lib/data/index';
import { blockFile, FileBlocks } from '../lib/data/files';
import { SqliteBlocks } from '../lib/data/sqlite';
import { FsError } from '../lib/errors';
import { runNode } from './_helpers/ops';
import { blockSuite } from './_suites/blocks';

function tempDir(): { dir: string; remove(): Promise<void> } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvfs-test-files-'));
  return { dir, remove: () => fs.promises.rm(dir, { recursive: true, force: true }) };
}

blockSuite(test, async () => {
  const { dir, remove } = tempDir();
  const store = new FileBlocks({ dir, volumeUuid: 'uuid-1' });
  return { store, cleanup: async () => { await store.close(); await remove(); } };
});

// The buffered path, which a filesystem that refuses O_DIRECT falls back to.
blockSuite(test, async () => {
  const { dir, remove } = tempDir();
  const store = new FileBlocks({ dir, volumeUuid: 'uuid-1', directIo: false });
  return { store, cleanup: async () => { await store.close(); await remove(); } };
}, 'buffered I/O');

const distLib = path.join(__dirname, '..', 'lib');

test('files: a second opener is refused (same process and other process), a store of another volume too', async (t) => {
  const { dir, remove } = tempDir();
  t.teardown(remove);
  const store = new FileBlocks({ dir, volumeUuid: 'u' });
  t.is((t.throws(() => new FileBlocks({ dir, volumeUuid: 'u' })) as FsError).code, 'EBUSY');
  const tryOpen = `
    const { FileBlocks } = require(process.argv[1] + '/data/files');
    try { new FileBlocks({ dir: process.argv[2], volumeUuid: 'u' }).close(); console.log('opened'); } catch (e) { console.log(e.code); }`;
  t.is((await runNode(tryOpen, [distLib, dir])).out.trim(), 'EBUSY');
  await store.close();
  t.is((await runNode(tryOpen, [distLib, dir])).out.trim(), 'opened');
  t.is((t.throws(() => new FileBlocks({ dir, volumeUuid: 'other' })) as FsError).code, 'EINVAL');
});

test('files: stored blocks survive kill -9, ids that need escaping round-trip', async (t) => {
  const { dir, remove } = tempDir();
  t.teardown(remove);
  const writer = `
    const { FileBlocks } = require(process.argv[1] + '/data/files');
    (async () => {
      const blocks = new FileBlocks({ dir: process.argv[2], volumeUuid: 'u' });
      await Promise.all(Array.from({ length: 50 }, (_, i) => blocks.put('b' + i, Buffer.alloc(10000, i))));
      await blocks.put('odd/id .x', Buffer.from('odd'));
      await blocks.put('..', Buffer.from('dots'));
      console.log('stored');
      setInterval(() => {}, 1000);
    })().catch((e) => { console.log('error ' + e.message); process.exit(1); });`;
  const { out, signal } = await runNode(writer, [distLib, dir], { killOn: 'stored' });
  t.is(out.trim(), 'stored');
  t.is(signal, 'SIGKILL');
  const blocks = new FileBlocks({ dir, volumeUuid: 'u' });
  t.teardown(() => blocks.close());
  t.true((await blocks.get('b49'))?.equals(Buffer.alloc(10000, 49)));
  t.is((await blocks.get('odd/id .x'))?.toString(), 'odd');
  t.is((await blocks.get('..'))?.toString(), 'dots');
  t.deepEqual(await blocks.usage(), { blocks: 52, bytes: 500007 });
  t.true(fs.existsSync(blockFile(dir, 'b7')));
  const ids: string[] = [];
  await blocks.list((batch) => void ids.push(...batch));
  t.true(ids.includes('odd/id .x') && ids.includes('..'));
});

test('files: openBlockStore gives a new volume the file store, and a volume with a blocks.db keeps it', async (t) => {
  const { dir, remove } = tempDir();
  t.teardown(remove);
  const fresh = path.join(dir, 'new');
  const store = await openBlockStore(`file://${fresh}`, 'u1');
  t.is(store.kind, 'files');
  await store.put('1', Buffer.from('x'));
  await store.close();
  t.true(fs.existsSync(path.join(fresh, 'blocks', 'volume.db')));
  t.false(fs.existsSync(path.join(fresh, 'blocks.db')));

  const old = path.join(dir, 'old');
  const legacy = new SqliteBlocks({ dir: old, volumeUuid: 'u2' });
  await legacy.put('1', Buffer.from('y'));
  await legacy.close();
  const reopened = await openBlockStore(`file://${old}`, 'u2');
  t.teardown(() => reopened.close());
  t.is(reopened.kind, 'sqlite');
  t.is((await reopened.get('1'))?.toString(), 'y');
  t.false(fs.existsSync(path.join(old, 'blocks')));

  await t.throwsAsync(openBlockStore(`file://${path.join(dir, 'missing')}`, 'u3', { create: false }), { instanceOf: FsError, code: 'ENOENT' });
});

test('files: with too little address space for O_DIRECT buffers (ulimit -v) blocks still round-trip, buffered', async (t) => {
  const { dir, remove } = tempDir();
  t.teardown(remove);
  // V8 reserves about 10.5 GB of address space for any WebAssembly.Memory (guard regions), and
  // Node itself needs under 1 GB: a limit of 8 GB leaves Node room and refuses the arena.
  const script = `
    const { FileBlocks } = require(process.argv[1] + '/data/files');
    (async () => {
      const blocks = new FileBlocks({ dir: process.argv[2], volumeUuid: 'u' });
      const data = require('crypto').randomBytes((1 << 20) + 123);
      await blocks.put('big', data);
      const back = await blocks.get('big');
      let arena = 'reserved';
      try { new WebAssembly.Memory({ initial: 512, maximum: 512 }); } catch { arena = 'refused'; }
      console.log((back.equals(data) ? 'same' : 'different') + ', arena ' + arena);
      await blocks.close();
    })().catch((e) => { console.log('error ' + e.message); process.exit(1); });`;
  const { out, code, signal } = await runNode(script, [distLib, dir], { addressSpaceKb: 8_000_000 });
  t.is(out.trim(), 'same, arena refused', `exit ${code}, signal ${signal}`);
  t.is(code, 0);
});

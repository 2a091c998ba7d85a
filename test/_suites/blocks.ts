// Conformance suite for BlockStore (lib/data/store.ts). Every block backend runs it in one line:
//   blockSuite(test, async () => ({ store, cleanup }))   (a label as third argument for a second run)
// The factory must return a fresh, empty, isolated store on every call.
import { randomBytes } from 'node:crypto';
import type { ExecutionContext, TestFn } from 'ava';
import type { BlockStore } from '../../lib/data/store';

export type BlockFactory = () => Promise<{ store: BlockStore; cleanup(): Promise<void> }>;

async function listAll(store: BlockStore): Promise<{ ids: string[]; batches: number }> {
  const ids: string[] = [];
  let batches = 0;
  await store.list(async (batch) => {
    batches++;
    await new Promise((r) => setImmediate(r)); // list must wait for an async onBatch
    ids.push(...batch);
  });
  return { ids: ids.sort(), batches };
}

/** `label` tells two runs of the suite in one test file apart (ava needs unique titles). */
export function blockSuite(test: TestFn, factory: BlockFactory, label?: string): void {
  const blocks = label ? `blocks (${label})` : 'blocks';
  async function open(t: ExecutionContext): Promise<BlockStore> {
    const { store, cleanup } = await factory();
    t.teardown(cleanup);
    return store;
  }

  const sizes: Array<[string, number]> = [
    ['empty', 0],
    ['1 byte', 1],
    ['4 KiB', 4096],
    // Lengths that are no multiple of 4096 above 64 KiB (padded and truncated by O_DIRECT writes).
    ['64 KiB + 1 byte', 65537],
    ['1 MiB - 1 byte', (1 << 20) - 1],
    ['1 MiB', 1 << 20],
    ['4 MiB', 4 << 20],
  ];
  for (const [name, size] of sizes) {
    test(`${blocks}: ${name} block round-trips byte-exact`, async (t) => {
      const store = await open(t);
      const data = randomBytes(size);
      await store.put(`blk-${size}`, data);
      const got = await store.get(`blk-${size}`);
      t.true(Buffer.isBuffer(got), 'get returns a Buffer');
      t.is(got!.length, size);
      t.true(got!.equals(data), 'same bytes');
    });
  }

  test(`${blocks}: size (where a store has it) is the length of the data, undefined when missing`, async (t) => {
    const store = await open(t);
    if (!store.size) return t.pass('this store has no size()');
    for (const n of [0, 1, 5000]) await store.put(`s${n}`, randomBytes(n));
    for (const n of [0, 1, 5000]) t.is(await store.size(`s${n}`), n);
    t.is(await store.size('missing'), undefined);
  });

  test(`${blocks}: getRange (where a store has it) returns the range, fewer bytes at the end, undefined when missing`, async (t) => {
    const store = await open(t);
    if (!store.getRange) return t.pass('this store has no getRange()');
    // A large block (a file on the file store) and a small one (a meta.db row there).
    for (const size of [300_000, 5000]) {
      const data = randomBytes(size);
      await store.put(`r${size}`, data);
      t.true((await store.getRange(`r${size}`, 0, 4096))!.equals(data.subarray(0, 4096)), `${size}: head`);
      t.true((await store.getRange(`r${size}`, 1234, 777))!.equals(data.subarray(1234, 2011)), `${size}: middle`);
      t.true((await store.getRange(`r${size}`, size - 100, 4096))!.equals(data.subarray(size - 100)), `${size}: cut at the end`);
      const past = await store.getRange(`r${size}`, size + 10, 100);
      t.true(past === undefined || past.length === 0, `${size}: past the end`);
    }
    t.is(await store.getRange('no-such-block', 0, 100), undefined);
  });

  test(`${blocks}: getInto (where a store has it) fills the buffer it asked for, undefined when missing`, async (t) => {
    const store = await open(t);
    if (!store.getInto) return t.pass('this store has no getInto()');
    // A large block (a file on the file store) and a small one (a meta.db row there).
    for (const size of [300_000, 5000]) {
      const data = randomBytes(size);
      await store.put(`i${size}`, data);
      const asked: number[] = [];
      const given: Buffer[] = [];
      const got = await store.getInto(`i${size}`, (n) => {
        asked.push(n);
        const b = Buffer.alloc(n, 0xee);
        given.push(b);
        return b;
      });
      t.deepEqual(asked, [size], `${size}: one buffer of the block's size`);
      t.true(got!.equals(data), `${size}: the block's bytes`);
      t.is(got!.buffer, given[0].buffer, `${size}: in the buffer it was given`);
    }
    t.is(await store.getInto('no-such-block', () => t.fail('no buffer for a missing block') as never), undefined);
  });

  test(`${blocks}: a missing id reads as undefined`, async (t) => {
    const store = await open(t);
    t.is(await store.get('no-such-block'), undefined);
    await store.put('present', Buffer.from('x'));
    t.is(await store.get('presen'), undefined);
    t.is(await store.get('present-'), undefined);
  });

  test(`${blocks}: put of an existing id with the same bytes is harmless`, async (t) => {
    const store = await open(t);
    const data = randomBytes(1000);
    await store.put('same', data);
    await store.put('same', data);
    t.true((await store.get('same'))!.equals(data));
    t.deepEqual((await listAll(store)).ids, ['same']);
  });

  test(`${blocks}: delete removes blocks and ignores missing ids`, async (t) => {
    const store = await open(t);
    for (const id of ['d1', 'd2', 'd3']) await store.put(id, Buffer.from(id));
    await store.delete([]);
    await store.delete(['d1', 'nope', 'd3', 'd3']);
    t.is(await store.get('d1'), undefined);
    t.is(await store.get('d3'), undefined);
    t.is((await store.get('d2'))!.toString(), 'd2');
    await store.delete(['never', 'existed']);
    t.deepEqual((await listAll(store)).ids, ['d2']);
  });

  test(`${blocks}: list sees exactly the stored ids, across batches`, async (t) => {
    const store = await open(t);
    t.deepEqual((await listAll(store)).ids, []);
    const ids = Array.from({ length: 2345 }, (_, i) => `id-${i.toString(16).padStart(6, '0')}`);
    const payload = Buffer.from('p');
    for (let i = 0; i < ids.length; i += 100) await Promise.all(ids.slice(i, i + 100).map((id) => store.put(id, payload)));
    const { ids: listed, batches } = await listAll(store);
    t.deepEqual(listed, [...ids].sort());
    t.true(batches >= 1);
    await store.delete(ids.slice(0, 2000));
    t.deepEqual((await listAll(store)).ids, ids.slice(2000).sort());
  });

  test(`${blocks}: usage counts blocks and bytes`, async (t) => {
    const store = await open(t);
    t.deepEqual(await store.usage(), { blocks: 0, bytes: 0 });
    const lengths = [0, 1, 4096, 100_000];
    await Promise.all(lengths.map((n, i) => store.put(`u${i}`, randomBytes(n))));
    const total = lengths.reduce((a, c) => a + c, 0);
    const u = await store.usage();
    t.is(u.blocks, lengths.length);
    t.true(u.bytes >= total && u.bytes <= total + 64 * 1024, `bytes ${u.bytes} close to ${total}`);
    await store.delete(['u3']);
    const after = await store.usage();
    t.true(after.bytes < u.bytes - 90_000);
    t.true(after.blocks === u.blocks - 1);
  });

  test(`${blocks}: concurrent puts and gets`, async (t) => {
    const store = await open(t);
    const blocks = Array.from({ length: 64 }, (_, i) => [`c${i}`, randomBytes(64 * 1024 + i)] as const);
    await Promise.all(blocks.map(([id, data]) => store.put(id, data)));
    const got = await Promise.all(blocks.map(([id]) => store.get(id)));
    t.true(got.every((g, i) => g !== undefined && g.equals(blocks[i][1])));
    t.is((await listAll(store)).ids.length, 64);
  });

  test(`${blocks}: two instances from the factory are isolated`, async (t) => {
    const one = await open(t);
    const two = await open(t);
    await one.put('shared-id', Buffer.from('one'));
    t.is(await two.get('shared-id'), undefined);
    t.deepEqual((await listAll(two)).ids, []);
    await two.put('shared-id', Buffer.from('two'));
    t.is((await one.get('shared-id'))!.toString(), 'one');
    await two.delete(['shared-id']);
    t.is((await one.get('shared-id'))!.toString(), 'one');
  });
}

// The block buffer pool and the block cache that gives buffers back to it (no servers needed).
import test from 'ava';
import { setImmediate as turn } from 'node:timers/promises';
import { BlockCache } from '../lib/fs/cache';
import { BufferPool } from '../lib/fs/pool';

const BLOCK = 64 * 1024;

test('pool: a buffer given back is handed out again only after the event loop turns', async (t) => {
  const pool = new BufferPool();
  const a = pool.take(BLOCK);
  t.is(a.length, BLOCK);
  pool.give(a.subarray(0, 100)); // a view of it counts as the buffer
  const b = pool.take(BLOCK);
  t.not(b.buffer, a.buffer, 'not reused within the same turn');
  await turn();
  const c = pool.take(BLOCK);
  t.is(c.buffer, a.buffer);
  t.is(c.length, BLOCK);
});

test('pool: a second give of the same buffer, and buffers it did not make, are ignored', async (t) => {
  const pool = new BufferPool();
  const a = pool.take(BLOCK);
  pool.give(a);
  pool.give(a);
  pool.give(Buffer.allocUnsafeSlow(BLOCK));
  await turn();
  t.is(pool.idleBytes, BLOCK);
  t.is(pool.take(BLOCK).buffer, a.buffer);
  t.not(pool.take(BLOCK).buffer, a.buffer);
});

test('cache: a block stays intact while cached; once dropped its buffer is reused', async (t) => {
  const cache = new BlockCache({ cachedBytes: 2 * BLOCK, spareBytes: 4 * BLOCK });
  const a = cache.pool.take(BLOCK).fill(1);
  cache.add(1, a, false);
  cache.add(2, cache.pool.take(BLOCK).fill(2), false);
  await turn();
  t.is(cache.pool.idleBytes, 0, 'nothing is free while both blocks are cached');
  cache.add(3, cache.pool.take(BLOCK).fill(3), false); // evicts block 1
  t.is(cache.peek(1), undefined);
  t.true(cache.peek(2)!.every((x) => x === 2));
  await turn();
  const reused = cache.pool.take(BLOCK);
  t.is(reused.buffer, a.buffer);
  t.true(cache.peek(3)!.every((x) => x === 3));
});

test('cache: add with copy keeps a copy and gives the original back', async (t) => {
  const cache = new BlockCache({ cachedBytes: 4 * BLOCK, spareBytes: 4 * BLOCK });
  const a = cache.pool.take(BLOCK).fill(7);
  cache.add(1, a.subarray(0, 1000), true);
  await turn();
  const reused = cache.pool.take(BLOCK);
  t.is(reused.buffer, a.buffer);
  reused.fill(0);
  const kept = cache.peek(1)!;
  t.is(kept.length, 1000);
  t.true(kept.every((x) => x === 7));
});

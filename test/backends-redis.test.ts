// RedisBlocks against a real redis-server: the shared block suite plus Redis-specific tests.
import { randomUUID } from 'node:crypto';
import test from 'ava';
import Redis from 'ioredis';
import { openBlockStore, redisBlockPrefix } from '../lib/data/index';
import { RedisBlocks } from '../lib/data/redis';
import { FsError, UsageError } from '../lib/errors';
import { freePort, startRedis, type RedisServer } from './_helpers/servers';
import { blockSuite } from './_suites/blocks';

let server: RedisServer;

test.before(async () => {
  server = await startRedis();
});

test.after.always(async () => {
  await server?.stop();
});

async function wipe(store: RedisBlocks): Promise<void> {
  const ids: string[] = [];
  await store.list((batch) => {
    ids.push(...batch);
  });
  await store.delete(ids);
}

blockSuite(test, async () => {
  const store = await RedisBlocks.open({ host: '127.0.0.1', port: server.port, prefix: `kvfs-test:${randomUUID()}:b:` });
  return {
    store,
    cleanup: async () => {
      await wipe(store);
      await store.close();
    },
  };
});

/** Calls fn until it resolves (a store that was stalled answers again after its probe does). */
async function retryUntil(fn: () => Promise<unknown>, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      await fn();
      return;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

async function elapsed(p: Promise<unknown>): Promise<{ err: unknown; ms: number; value?: unknown }> {
  const start = Date.now();
  try {
    const value = await p;
    return { err: undefined, ms: Date.now() - start, value };
  } catch (err) {
    return { err, ms: Date.now() - start };
  }
}

test('redis: openBlockStore puts blocks under kvfs:UUID:b:', async (t) => {
  const uuid = randomUUID();
  const store = await openBlockStore(`${server.url}/3`, uuid);
  t.teardown(() => store.close());
  t.is(store.kind, 'redis');
  await store.put('abc', Buffer.from('data'));
  const raw = new Redis({ port: server.port, host: '127.0.0.1', db: 3 });
  t.teardown(() => raw.disconnect());
  t.deepEqual(await raw.keys('*'), [`${redisBlockPrefix(uuid)}abc`]);
  t.is(redisBlockPrefix(uuid), `kvfs:${uuid}:b:`);
  await store.delete(['abc']);
});

test('redis: an unreachable server is a clear UsageError within the timeout', async (t) => {
  const port = await freePort();
  const { err, ms } = await elapsed(openBlockStore(`redis://127.0.0.1:${port}`, 'vol', { timeoutMs: 2000 }));
  t.true(err instanceof UsageError, String(err));
  t.regex((err as Error).message, /cannot reach Redis at 127\.0\.0\.1:\d+: connection refused/);
  t.true(ms < 2500, `took ${ms} ms`);
});

test('redis: a paused server gives ETIMEDOUT within the timeout, then fails at once until it answers again', async (t) => {
  const own = await startRedis();
  t.teardown(() => own.stop());
  const store = await RedisBlocks.open({ host: '127.0.0.1', port: own.port, prefix: 'p:', timeoutMs: 1000 });
  t.teardown(() => store.close());
  await store.put('a', Buffer.from('1'));
  await own.pause();
  try {
    const ops = [
      () => store.put('b', Buffer.alloc(1 << 20)),
      () => store.get('a'),
      () => store.getInto('a', (n) => Buffer.alloc(n)),
      () => store.usage(),
    ];
    for (const [i, op] of ops.entries()) {
      const { err, ms } = await elapsed(op());
      t.true(err instanceof FsError, String(err));
      t.is((err as FsError).code, 'ETIMEDOUT');
      t.true((err as FsError).retryable);
      // The first request waits out the timeout; later ones do not wait it out again.
      if (i === 0) t.true(ms >= 900 && ms < 2500, `took ${ms} ms`);
      else t.true(ms < 900, `request ${i + 1} waited ${ms} ms for a server known to be stalled`);
    }
  } finally {
    await own.resume();
  }
  await retryUntil(() => store.put('c', Buffer.from('3')), 10_000);
  t.is((await store.get('a'))?.toString(), '1');
  t.is((await store.get('c'))?.toString(), '3');
  t.is((await store.getInto('c', (n) => Buffer.alloc(n)))?.toString(), '3');
});

test('redis: a dead server fails requests at once, not after a queue', async (t) => {
  const own = await startRedis();
  t.teardown(() => own.stop());
  const store = await RedisBlocks.open({ host: '127.0.0.1', port: own.port, prefix: 'd:', timeoutMs: 5000 });
  t.teardown(() => store.close());
  await store.put('a', Buffer.from('1'));
  await own.stop();
  await new Promise((r) => setTimeout(r, 100));
  for (const op of [() => store.get('a'), () => store.getInto('a', (n) => Buffer.alloc(n))]) {
    const { err, ms } = await elapsed(op());
    t.true(err instanceof FsError, String(err));
    t.is((err as FsError).code, 'EIO');
    t.true((err as FsError).retryable);
    t.true(ms < 1000, `took ${ms} ms`);
  }
});

test('redis: getInto reads whole blocks with AUTH and SELECT, and again after the server drops every connection', async (t) => {
  const own = await startRedis();
  t.teardown(() => own.stop());
  const admin = new Redis({ port: own.port, host: '127.0.0.1' });
  t.teardown(() => admin.disconnect());
  await admin.config('SET', 'requirepass', 's3cret pass');
  const store = await RedisBlocks.open({ host: '127.0.0.1', port: own.port, password: 's3cret pass', db: 3, prefix: 'g:', timeoutMs: 2000 });
  t.teardown(() => store.close());
  const blocks = [0, 1, 5, 65_536, 1 << 20].map((size, i) => Buffer.from(Array.from({ length: size }, (_, j) => (j * 31 + i) & 0xff)));
  for (const [i, b] of blocks.entries()) await store.put(`b${i}`, b);
  const readAll = async (): Promise<void> => {
    const got = await Promise.all(blocks.map((_, i) => store.getInto(`b${i}`, (n) => Buffer.alloc(n, 0xaa))));
    for (const [i, b] of blocks.entries()) t.true(got[i]!.equals(b), `block ${i} (${b.length} bytes)`);
    t.is(await store.getInto('missing', () => Buffer.alloc(0)), undefined);
  };
  await readAll();
  // The blocks went to db 3 (SELECT), under the prefix.
  await admin.auth('s3cret pass');
  await admin.select(3);
  // ... and were read by the block readers (unnamed connections on db 3), not by ioredis's pool.
  const readers = async (): Promise<string[]> =>
    String(await admin.client('LIST'))
      .split('\n')
      .filter((l) => / name= /.test(l) && / db=3 /.test(l) && / cmd=get /.test(l));
  t.true((await readers()).length >= 1, 'a block reader connection served GETs');
  t.is((await admin.getBuffer('g:b4'))?.length, 1 << 20);
  // Every client connection is killed; reads fail or fall back, then work again once reconnected.
  await admin.client('KILL', 'TYPE', 'normal');
  await retryUntil(readAll, 10_000);
  await new Promise((r) => setTimeout(r, 1100)); // past the reconnect interval of the block readers
  await retryUntil(readAll, 10_000);
  await admin.auth('s3cret pass'); // the admin connection was killed too (ioredis reconnected it)
  t.true((await readers()).length >= 1, 'block readers reconnected');
});

test('redis: persistence() reports appendonly and save', async (t) => {
  const store = await RedisBlocks.open({ host: '127.0.0.1', port: server.port, prefix: 'x:' });
  t.teardown(() => store.close());
  t.deepEqual(await store.persistence(), { appendonly: false, save: '' });
  const aof = await startRedis({ appendonly: true });
  t.teardown(() => aof.stop());
  const store2 = await RedisBlocks.open({ host: '127.0.0.1', port: aof.port, prefix: 'x:' });
  t.teardown(() => store2.close());
  t.is((await store2.persistence()).appendonly, true);
});

test('redis: requests are spread over the connection pool', async (t) => {
  const prefix = `kvfs-test:${randomUUID()}:b:`;
  const store = await RedisBlocks.open({ host: '127.0.0.1', port: server.port, prefix, connections: 3 });
  t.teardown(async () => {
    await wipe(store);
    await store.close();
  });
  const raw = new Redis({ port: server.port, host: '127.0.0.1' });
  t.teardown(() => raw.disconnect());
  const before = String(await raw.client('LIST')).split('\n').filter((l) => l.includes('name=kvfs-blocks')).length;
  t.true(before >= 3);
  await Promise.all(Array.from({ length: 30 }, (_, i) => store.put(`k${i}`, Buffer.alloc(256 * 1024))));
  // every pool connection has executed commands (cmd= is the last command of the connection)
  const lines = String(await raw.client('LIST')).split('\n').filter((l) => l.includes('name=kvfs-blocks'));
  t.true(lines.filter((l) => / cmd=set /.test(l)).length >= 2, lines.join('\n'));
});

test('redis: getRange reads part of a block; a missing block or a range past its end is undefined', async (t) => {
  const store = await RedisBlocks.open({ host: '127.0.0.1', port: server.port, prefix: `kvfs-test:${randomUUID()}:b:` });
  t.teardown(async () => {
    await wipe(store);
    await store.close();
  });
  const data = Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 7 + 3) & 0xff));
  await store.put('r1', data);
  t.deepEqual(await store.getRange('r1', 0, 4096), data.subarray(0, 4096));
  t.deepEqual(await store.getRange('r1', 65_536, 65_536), data.subarray(65_536, 131_072));
  t.deepEqual(await store.getRange('r1', 262_144, 65_536), data.subarray(262_144), 'short at the end');
  t.is(await store.getRange('r1', 300_000, 10), undefined);
  t.is(await store.getRange('missing', 0, 4096), undefined);
});

test('redis: bad block store URLs are UsageErrors', async (t) => {
  for (const url of ['redis://', 'redis://h:0', 'redis://h:99999', 'redis://h:1/x', 'redis://h:1/1/2', 'redis://h:1?db=1', 'mongodb://h', 'nonsense', '']) {
    await t.throwsAsync(openBlockStore(url, 'vol'), { instanceOf: UsageError }, url);
  }
});

// EtcdKv against a real etcd: the shared KV suite plus etcd-specific failure and limit tests.
import { randomUUID } from 'node:crypto';
import test from 'ava';
import { Etcd3 } from 'etcd3';
import { FsError, UsageError } from '../lib/errors';
import { EtcdKv } from '../lib/meta/etcd';
import { openKv } from '../lib/meta/index';
import type { KvChange } from '../lib/meta/kv';
import { freePort, startEtcd, type EtcdServer } from './_helpers/servers';
import { kvSuite } from './_suites/kv';

let server: EtcdServer;
let root: Etcd3;

test.before(async () => {
  server = await startEtcd();
  root = new Etcd3({ hosts: server.endpoint });
});

test.after.always(async () => {
  root?.close();
  await server?.stop();
});

function fresh(options: Partial<ConstructorParameters<typeof EtcdKv>[0]> = {}): { kv: EtcdKv; prefix: string; cleanup(): Promise<void> } {
  const prefix = `kvfs-test/${randomUUID()}/`;
  const kv = new EtcdKv({ hosts: [server.endpoint], prefix, ...options });
  return {
    kv,
    prefix,
    cleanup: async () => {
      await kv.close();
      await root.delete().prefix(prefix);
    },
  };
}

kvSuite(test, async () => fresh());

const b = (s: string): Buffer => Buffer.from(s);

async function elapsed(p: Promise<unknown>): Promise<{ err: unknown; ms: number }> {
  const start = Date.now();
  try {
    await p;
    return { err: undefined, ms: Date.now() - start };
  } catch (err) {
    return { err, ms: Date.now() - start };
  }
}

test('etcd: keys live under the namespace prefix', async (t) => {
  const { kv, prefix, cleanup } = fresh();
  t.teardown(cleanup);
  await kv.txn(async (tx) => tx.put('a/b', b('v')));
  t.is(await root.get(`${prefix}a/b`).string(), 'v');
  t.deepEqual(await root.getAll().prefix(prefix).keys(), [`${prefix}a/b`]);
});

test('etcd: an endpoint with nothing listening fails fast with a retryable error', async (t) => {
  const port = await freePort();
  const kv = new EtcdKv({ hosts: [`http://127.0.0.1:${port}`], prefix: 'x/', timeoutMs: 1500 });
  t.teardown(() => kv.close());
  for (const op of [() => kv.get('k'), () => kv.scan(''), () => kv.txn(async (tx) => tx.put('k', b('v')))]) {
    const { err, ms } = await elapsed(op());
    t.true(err instanceof FsError, String(err));
    t.true(['EIO', 'ETIMEDOUT'].includes((err as FsError).code), (err as FsError).code);
    t.true((err as FsError).retryable);
    t.true(ms < 2500, `took ${ms} ms`);
  }
  const w = await elapsed(kv.watch('', () => undefined));
  t.true(w.err instanceof FsError);
  t.true(w.ms < 2500, `watch took ${w.ms} ms`);
});

test('etcd: openKv on an unreachable etcd is a UsageError within the timeout', async (t) => {
  const port = await freePort();
  const { err, ms } = await elapsed(openKv(`etcd://127.0.0.1:${port}/vol`, { timeoutMs: 1500 }));
  t.true(err instanceof UsageError, String(err));
  t.true(ms < 2500, `took ${ms} ms`);
});

test('etcd: a paused server gives ETIMEDOUT within the timeout, then fails at once until it answers again', async (t) => {
  const own = await startEtcd();
  t.teardown(() => own.stop());
  const kv = new EtcdKv({ hosts: [own.endpoint], prefix: 'p/', timeoutMs: 1000 });
  t.teardown(() => kv.close());
  await kv.txn(async (tx) => tx.put('k', b('1')));
  await own.pause();
  try {
    const ops = [() => kv.get('k'), () => kv.txn(async (tx) => tx.put('k', b('2'))), () => kv.get('k')];
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
  // The timed-out commit may or may not have been applied; afterwards everything works.
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      await kv.txn(async (tx) => tx.put('k', b('3')));
      break;
    } catch (err) {
      if (Date.now() > deadline) throw err;
    }
  }
  t.is((await kv.get('k'))?.toString(), '3');
});

test('etcd: a commit over the txn size limit is E2BIG and writes nothing', async (t) => {
  const { kv, cleanup } = fresh();
  t.teardown(cleanup);
  const tooMany = await t.throwsAsync(
    kv.txn(async (tx) => {
      for (let i = 0; i < 129; i++) tx.put(`k${i}`, b('v'));
    }),
  );
  t.is((tooMany as FsError).code, 'E2BIG');
  t.false((tooMany as FsError).retryable);
  t.deepEqual(await kv.scan(''), []);
  // the limit itself is fine
  await kv.txn(async (tx) => {
    for (let i = 0; i < 128; i++) tx.put(`k${i}`, b('v'));
  });
  t.is((await kv.scan('')).length, 128);
  // reads (compares) are limited separately: 128 reads + 128 writes is fine, 129 reads is not
  await kv.txn(async (tx) => {
    for (let i = 0; i < 128; i++) await tx.get(`k${i}`);
    for (let i = 0; i < 128; i++) tx.put(`n${i}`, b('v'));
  });
  t.is((await kv.scan('n')).length, 128);
  const reads = await t.throwsAsync(
    kv.txn(async (tx) => {
      for (let i = 0; i < 129; i++) await tx.get(`r${i}`);
      tx.put('m', b('v'));
    }),
  );
  t.is((reads as FsError).code, 'E2BIG');
  t.is(await kv.get('m'), undefined);
  // too many bytes
  const big = await t.throwsAsync(kv.txn(async (tx) => tx.put('big', Buffer.alloc(2 << 20))));
  t.is((big as FsError).code, 'E2BIG');
});

test('etcd: endless conflicts end in a retryable EAGAIN', async (t) => {
  const { kv, prefix, cleanup } = fresh({ maxAttempts: 4 });
  t.teardown(cleanup);
  const other = new EtcdKv({ hosts: [server.endpoint], prefix });
  t.teardown(() => other.close());
  let runs = 0;
  const err = await t.throwsAsync(
    kv.txn(async (tx) => {
      runs++;
      await tx.get('hot');
      await other.txn(async (o) => o.put('hot', b(String(runs))));
      tx.put('hot', b('mine'));
    }),
  );
  t.is((err as FsError).code, 'EAGAIN');
  t.true((err as FsError).retryable);
  t.is(runs, 4);
  t.is((await kv.get('hot'))?.toString(), '4');
});

test('etcd: watch sees changes made by another client', async (t) => {
  const { kv, prefix, cleanup } = fresh();
  t.teardown(cleanup);
  const other = new EtcdKv({ hosts: [server.endpoint], prefix });
  t.teardown(() => other.close());
  const events: KvChange[] = [];
  const unwatch = await kv.watch('dir/', (c) => events.push(c));
  t.teardown(unwatch);
  await other.txn(async (tx) => {
    tx.put('dir/a', b('1'));
    tx.put('elsewhere', b('x'));
  });
  await other.txn(async (tx) => tx.delete('dir/a'));
  const deadline = Date.now() + 5000;
  while (events.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  t.deepEqual(events.map((e) => [e.key, e.value?.toString()]), [['dir/a', '1'], ['dir/a', undefined]]);
});

test('etcd: openKv gives the volume its kvfs/VOLUME/ namespace', async (t) => {
  const volume = `vol-${randomUUID().slice(0, 8)}`;
  const { kv, volume: v, describe } = await openKv(`etcd://${server.hostPort}/${volume}`);
  t.teardown(async () => {
    await kv.close();
    await root.delete().prefix(`kvfs/${volume}/`);
  });
  t.is(v, volume);
  t.is(describe, `etcd://${server.hostPort}/${volume}`);
  t.is(kv.kind, 'etcd');
  await kv.txn(async (tx) => tx.put('hello', b('world')));
  t.is(await root.get(`kvfs/${volume}/hello`).string(), 'world');
});

test('etcd: a second endpoint is used when the first refuses connections', async (t) => {
  const dead = await freePort();
  const kv = new EtcdKv({ hosts: [`http://127.0.0.1:${dead}`, server.endpoint], prefix: `kvfs-test/${randomUUID()}/`, timeoutMs: 3000 });
  t.teardown(() => kv.close());
  for (let i = 0; i < 5; i++) {
    await kv.txn(async (tx) => tx.put(`k${i}`, b('v')));
    t.is((await kv.get(`k${i}`))?.toString(), 'v');
  }
  await root.delete().prefix(kv.prefix);
});

test('etcd: transactions served from the revision cache never act on a stale value', async (t) => {
  const { kv, prefix, cleanup } = fresh();
  t.teardown(cleanup);
  const other = new EtcdKv({ hosts: [server.endpoint], prefix });
  t.teardown(() => other.close());
  // Both engines watch, so both cache what they read and commit.
  t.teardown(await kv.watch('', () => undefined));
  t.teardown(await other.watch('', () => undefined));
  const increment = (e: EtcdKv): Promise<void> =>
    e.txn(async (tx) => {
      const v = Number((await tx.get('n'))?.toString() ?? '0');
      tx.put('n', b(String(v + 1)));
    });
  await Promise.all([kv, other].map(async (e) => {
    for (let i = 0; i < 40; i++) await increment(e);
  }));
  t.is((await kv.get('n'))?.toString(), '80');

  // A cache entry made stale on purpose (as if the watch had not delivered a change yet).
  await kv.txn(async (tx) => tx.put('k', b('new')));
  const stale = (): void => kv.learn('k', b('old'), '1', 10n ** 15n);
  stale();
  t.is(await kv.txn(async (tx) => (await tx.get('k'))?.toString()), 'new', 'a read-only txn reads again');
  stale();
  t.is(
    await kv.txn(async (tx) => {
      const [v] = await tx.getMany(['k', 'none']);
      if (v?.toString() === 'old') throw new FsError('EEXIST', 'acted on the stale value');
      return 'ok';
    }),
    'ok',
    'an error is only thrown on fresh reads',
  );
  stale();
  await kv.txn(async (tx) => tx.put('k2', b(`${(await tx.get('k'))?.toString()}+`)));
  t.is((await root.get(`${prefix}k2`).string()), 'new+', 'a commit of a stale read fails and runs again');
});

// Conformance suite for KvEngine (lib/meta/kv.ts). Every metadata backend runs it in one line:
//   kvSuite(test, async () => ({ kv, cleanup }))
// The factory must return a fresh, empty, isolated engine on every call.
import type { ExecutionContext, TestFn } from 'ava';
import { FsError } from '../../lib/errors';
import type { KvChange, KvEngine, KvTxn } from '../../lib/meta/kv';

export type KvFactory = () => Promise<{ kv: KvEngine; cleanup(): Promise<void> }>;

const b = (s: string): Buffer => Buffer.from(s, 'utf8');
const str = (v: Buffer | undefined): string | undefined => v?.toString('utf8');
const byteOrder = (a: string, c: string): number => Buffer.compare(b(a), b(c));
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function put(kv: KvEngine, entries: Record<string, string>): Promise<void> {
  await kv.txn(async (tx) => {
    for (const [k, v] of Object.entries(entries)) tx.put(k, b(v));
  });
}

async function waitFor(t: ExecutionContext, what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) {
      t.fail(`timed out waiting for ${what}`);
      return;
    }
    await sleep(10);
  }
}

export function kvSuite(test: TestFn, factory: KvFactory): void {
  async function open(t: ExecutionContext): Promise<KvEngine> {
    const { kv, cleanup } = await factory();
    t.teardown(cleanup);
    return kv;
  }

  test('kv: put, get, overwrite, delete', async (t) => {
    const kv = await open(t);
    t.is(await kv.get('missing'), undefined);
    await put(kv, { a: '1', b: '2' });
    t.is(str(await kv.get('a')), '1');
    t.is(str(await kv.get('b')), '2');
    await put(kv, { a: 'one' });
    t.is(str(await kv.get('a')), 'one');
    await kv.txn(async (tx) => tx.delete('a'));
    t.is(await kv.get('a'), undefined);
    t.is(str(await kv.get('b')), '2');
    // deleting a missing key is fine
    await kv.txn(async (tx) => tx.delete('never-there'));
    t.is(await kv.get('never-there'), undefined);
  });

  test('kv: values are binary and byte-exact, including empty', async (t) => {
    const kv = await open(t);
    const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    const big = Buffer.alloc(100 * 1024, 0xa5);
    await kv.txn(async (tx) => {
      tx.put('bin', all);
      tx.put('empty', Buffer.alloc(0));
      tx.put('big', big);
    });
    t.true((await kv.get('bin'))!.equals(all));
    const empty = await kv.get('empty');
    t.true(Buffer.isBuffer(empty), 'an empty value is present, not undefined');
    t.is(empty!.length, 0);
    t.true((await kv.get('big'))!.equals(big));
    const scanned = await kv.scan('empty');
    t.is(scanned.length, 1);
    t.is(scanned[0].value.length, 0);
  });

  test('kv: txn returns the function result', async (t) => {
    const kv = await open(t);
    t.is(await kv.txn(async () => 42), 42);
    await put(kv, { x: 'y' });
    t.is(await kv.txn(async (tx) => str(await tx.get('x'))), 'y');
  });

  test('kv: scan with prefix returns only that prefix, in key order', async (t) => {
    const kv = await open(t);
    await put(kv, { 'a/1': '1', 'a/2': '2', 'a/10': '10', ab: 'x', a: 'x', 'b/1': 'x', '`': 'x' });
    const got = await kv.scan('a/');
    t.deepEqual(got.map((p) => p.key), ['a/1', 'a/10', 'a/2']);
    t.deepEqual(got.map((p) => str(p.value)), ['1', '10', '2']);
    t.deepEqual((await kv.scan('')).map((p) => p.key), ['`', 'a', 'a/1', 'a/10', 'a/2', 'ab', 'b/1']);
    t.deepEqual(await kv.scan('nothing/'), []);
    t.deepEqual((await kv.scan('a/1')).map((p) => p.key), ['a/1', 'a/10']);
  });

  test('kv: scan startAfter and limit page through a prefix', async (t) => {
    const kv = await open(t);
    const keys = Array.from({ length: 25 }, (_, i) => `p/${String(i).padStart(3, '0')}`);
    await put(kv, Object.fromEntries([...keys.map((k) => [k, k]), ['o', 'x'], ['q', 'x']]));
    const seen: string[] = [];
    let after: string | undefined;
    for (let i = 0; i < 10; i++) {
      const page = await kv.scan('p/', { startAfter: after, limit: 10 });
      if (page.length === 0) break;
      t.true(page.length <= 10);
      seen.push(...page.map((p) => p.key));
      after = page[page.length - 1].key;
    }
    t.deepEqual(seen, keys);
    t.deepEqual((await kv.scan('p/', { limit: 3 })).map((p) => p.key), keys.slice(0, 3));
    t.deepEqual(await kv.scan('p/', { limit: 0 }), []);
    t.deepEqual((await kv.scan('p/', { startAfter: 'p/010' })).map((p) => p.key), keys.slice(11));
    // startAfter between entries, before the prefix, after the prefix
    t.deepEqual((await kv.scan('p/', { startAfter: 'p/0105' })).map((p) => p.key), keys.slice(11));
    t.deepEqual((await kv.scan('p/', { startAfter: 'a' })).map((p) => p.key), keys);
    t.deepEqual(await kv.scan('p/', { startAfter: 'p0' }), []);
    t.deepEqual(await kv.scan('p/', { startAfter: 'z' }), []);
  });

  test('kv: scans of thousands of keys are complete and ordered', async (t) => {
    const kv = await open(t);
    const keys = Array.from({ length: 2500 }, (_, i) => `many/${String(i).padStart(5, '0')}`);
    // 100 writes per txn: etcd allows at most 128 operations in one
    for (let i = 0; i < keys.length; i += 100) {
      await kv.txn(async (tx) => {
        for (const k of keys.slice(i, i + 100)) tx.put(k, b(k));
      });
    }
    const all = await kv.scan('many/');
    t.is(all.length, keys.length);
    t.deepEqual(all.map((p) => p.key), keys);
    t.true(all.every((p) => str(p.value) === p.key));
    t.deepEqual((await kv.scan('many/', { startAfter: keys[1000], limit: 1200 })).map((p) => p.key), keys.slice(1001, 2201));
    const inTxn = await kv.txn(async (tx) => {
      tx.delete(keys[0]);
      tx.put('many/zzz', b('z'));
      return tx.scan('many/');
    });
    t.is(inTxn.length, keys.length);
    t.is(inTxn[0].key, keys[1]);
    t.is(inTxn[inTxn.length - 1].key, 'many/zzz');
  });

  test('kv: keys sort in UTF-8 byte order, including non-ASCII', async (t) => {
    const kv = await open(t);
    // U+FFFD sorts before U+1F600 in UTF-8 but after it in UTF-16 (JavaScript string order).
    const keys = ['k/z', 'k/é', 'k/A', 'k/\u{1F600}', 'k/\uFFFD', 'k/~', 'k/a', 'k/ü/x', 'k/日本', 'k/\u007f'];
    await put(kv, Object.fromEntries(keys.map((k) => [k, k])));
    const expected = [...keys].sort(byteOrder);
    t.not(expected.join(), [...keys].sort().join(), 'the test data tells byte order from JS order');
    const got = await kv.scan('k/');
    t.deepEqual(got.map((p) => p.key), expected);
    t.deepEqual(got.map((p) => str(p.value)), expected);
    t.deepEqual((await kv.scan('k/ü')).map((p) => p.key), ['k/ü/x']);
    t.deepEqual((await kv.scan('k/', { startAfter: 'k/\uFFFD' })).map((p) => p.key), expected.slice(expected.indexOf('k/\uFFFD') + 1));
    t.is(str(await kv.get('k/日本')), 'k/日本');
  });

  test('kv: a throwing txn writes nothing and its error propagates', async (t) => {
    const kv = await open(t);
    await put(kv, { keep: 'old' });
    const boom = new Error('boom');
    const err = await t.throwsAsync(
      kv.txn(async (tx) => {
        tx.put('keep', b('new'));
        tx.put('other', b('x'));
        tx.delete('keep');
        await tx.get('keep');
        throw boom;
      }),
    );
    t.is(err, boom);
    t.is(str(await kv.get('keep')), 'old');
    t.is(await kv.get('other'), undefined);
    // FsErrors from the function keep their code
    const fe = await t.throwsAsync(kv.txn(async () => { throw new FsError('ENOENT', 'x'); }));
    t.is((fe as FsError).code, 'ENOENT');
  });

  test('kv: reads inside a txn see its own writes', async (t) => {
    const kv = await open(t);
    await put(kv, { 'd/a': 'a', 'd/b': 'b', 'd/c': 'c' });
    await kv.txn(async (tx) => {
      tx.put('d/new', b('n'));
      tx.put('d/a', b('A'));
      tx.delete('d/b');
      t.is(str(await tx.get('d/new')), 'n');
      t.is(str(await tx.get('d/a')), 'A');
      t.is(await tx.get('d/b'), undefined);
      t.deepEqual((await tx.scan('d/')).map((p) => `${p.key}=${str(p.value)}`), ['d/a=A', 'd/c=c', 'd/new=n']);
      t.deepEqual((await tx.scan('d/', { limit: 2 })).map((p) => p.key), ['d/a', 'd/c']);
      t.deepEqual((await tx.scan('d/', { startAfter: 'd/a', limit: 1 })).map((p) => p.key), ['d/c']);
      tx.put('d/b', b('again'));
      t.is(str(await tx.get('d/b')), 'again');
    });
    t.deepEqual((await kv.scan('d/')).map((p) => `${p.key}=${str(p.value)}`), ['d/a=A', 'd/b=again', 'd/c=c', 'd/new=n']);
  });

  test('kv: concurrent read-modify-write txns never lose an update', async (t) => {
    const kv = await open(t);
    const increment = (): Promise<void> =>
      kv.txn(async (tx) => {
        const v = Number(str(await tx.get('counter')) ?? '0');
        tx.put('counter', b(String(v + 1)));
      });
    const worker = async (): Promise<void> => {
      for (let i = 0; i < 50; i++) await increment();
    };
    await Promise.all([worker(), worker()]);
    t.is(str(await kv.get('counter')), '100');
  });

  test('kv: getMany reads several keys, sees own writes, and conflict-checks each', async (t) => {
    const kv = await open(t);
    await put(kv, { 'many/a': 'A', 'many/b': 'B' });
    const seen = await kv.txn(async (tx) => {
      tx.put('many/c', b('C'));
      tx.delete('many/b');
      return (await tx.getMany(['many/a', 'many/b', 'many/c', 'many/none', 'many/a'])).map(str);
    });
    t.deepEqual(seen, ['A', undefined, 'C', undefined, 'A']);
    t.deepEqual(await kv.txn(async (tx) => (await tx.getMany([])).length), 0);
    // Two read-modify-write txns reading their counters through getMany never lose an update.
    const increment = (): Promise<void> =>
      kv.txn(async (tx) => {
        const [x, y] = await tx.getMany(['many/x', 'many/y']);
        tx.put('many/x', b(String(Number(str(x) ?? '0') + 1)));
        tx.put('many/y', b(String(Number(str(y) ?? '0') + 1)));
      });
    const worker = async (): Promise<void> => {
      for (let i = 0; i < 30; i++) await increment();
    };
    await Promise.all([worker(), worker()]);
    t.is(str(await kv.get('many/x')), '60');
    t.is(str(await kv.get('many/y')), '60');
  });

  test('kv: reads in a txn are a consistent snapshot', async (t) => {
    const kv = await open(t);
    await put(kv, { 'pair/a': '0', 'pair/b': '0' });
    // Someone else changes both keys while the txn runs. The writer starts outside the txn
    // function (calling kv.txn inside it would be a nested txn); the embedded engine may make
    // it wait until our txn is done, so the txn does not wait for it for ever.
    let firstReadDone!: () => void;
    const firstRead = new Promise<void>((r) => (firstReadDone = r));
    const writer = firstRead.then(() => put(kv, { 'pair/a': '1', 'pair/b': '1' }));
    let runs = 0;
    const seen = await kv.txn(async (tx) => {
      runs++;
      const a = str(await tx.get('pair/a'));
      if (runs === 1) {
        firstReadDone();
        await Promise.race([writer, sleep(300)]);
      }
      const bb = str((await tx.scan('pair/b'))[0]?.value);
      const b2 = str(await tx.get('pair/b'));
      tx.put('pair/seen', b(`${a}${bb}${b2}`));
      return `${a}${bb}${b2}`;
    });
    await writer;
    t.true(seen === '000' || seen === '111', `saw ${seen} after ${runs} run(s)`);
    t.is(str(await kv.get('pair/seen')), seen);
  });

  test('kv: a txn that only reads commits nothing', async (t) => {
    const kv = await open(t);
    await put(kv, { 'ro/x': '1' });
    const events: KvChange[] = [];
    const unwatch = await kv.watch('ro/', (c) => events.push(c));
    t.teardown(unwatch);
    const v = await kv.txn(async (tx) => {
      await tx.get('ro/x');
      await tx.get('ro/missing');
      await tx.scan('ro/');
      return 'done';
    });
    t.is(v, 'done');
    await kv.txn(async () => undefined);
    await put(kv, { 'ro/marker': 'm' });
    await waitFor(t, 'the marker event', () => events.some((e) => e.key === 'ro/marker'));
    t.deepEqual(events.map((e) => e.key), ['ro/marker']);
  });

  test('kv: watch reports puts and deletes under its prefix until unwatched', async (t) => {
    const kv = await open(t);
    const events: KvChange[] = [];
    const other: KvChange[] = [];
    const unwatch = await kv.watch('w/', (c) => events.push(c));
    const unwatchOther = await kv.watch('x/', (c) => other.push(c));
    t.teardown(unwatchOther);
    await put(kv, { 'w/1': 'a' });
    await kv.txn(async (tx) => {
      tx.put('w/2', b('b'));
      tx.put('v/ignored', b('z'));
    });
    await kv.txn(async (tx) => tx.delete('w/1'));
    await waitFor(t, 'three events', () => events.length >= 3);
    t.deepEqual(events.map((e) => [e.key, str(e.value)]), [['w/1', 'a'], ['w/2', 'b'], ['w/1', undefined]]);
    await unwatch();
    await put(kv, { 'w/3': 'c', 'x/1': 'marker' });
    await waitFor(t, 'the marker event', () => other.length >= 1);
    await sleep(50);
    t.is(events.length, 3, 'no events after unwatch');
  });

  test('kv: nested txn on the same engine is refused', async (t) => {
    const kv = await open(t);
    const err = await t.throwsAsync(kv.txn(async () => kv.txn(async () => 1)));
    t.is((err as FsError).code, 'EDEADLK');
  });

  test('kv: a transaction object is dead after its txn', async (t) => {
    const kv = await open(t);
    let saved: KvTxn | undefined;
    await kv.txn(async (tx) => {
      saved = tx;
    });
    t.throws(() => saved!.put('late', b('x')));
    t.is(await kv.get('late'), undefined);
  });

  test('kv: two instances from the factory are isolated', async (t) => {
    const one = await open(t);
    const two = await open(t);
    const seen: KvChange[] = [];
    const unwatch = await two.watch('', (c) => seen.push(c));
    t.teardown(unwatch);
    await put(one, { 'iso/k': 'one' });
    t.is(await two.get('iso/k'), undefined);
    t.deepEqual(await two.scan(''), []);
    await put(two, { 'iso/k': 'two' });
    t.is(str(await one.get('iso/k')), 'one');
    t.is(str(await two.get('iso/k')), 'two');
    t.deepEqual((await one.scan('')).map((p) => p.key), ['iso/k']);
    await waitFor(t, "two's own event", () => seen.length >= 1);
    await sleep(50);
    t.deepEqual(seen.map((e) => str(e.value)), ['two']);
  });
}

// EncryptedBlocks (lib/data/encrypted.ts) over real backends: the shared block-store suite over
// Redis, plus what the wrapper adds: the stored values are sealed and
// bound to their block id and volume, a wrong key is detected by the key check, a locked store
// (no key) refuses to read or write, and the key never shows in strings, JSON or inspect.
import { randomBytes, randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { inspect } from 'node:util';
import test from 'ava';
import Redis from 'ioredis';
import { resolveKey } from '../bin/backend-options';
import { EncryptedBlocks, EncryptionKey, encryptionSettings, keyMatches, SEAL_OVERHEAD } from '../lib/data/encrypted';
import { openBlockStore } from '../lib/data/index';
import { RedisBlocks } from '../lib/data/redis';
import { FsError, UsageError } from '../lib/errors';
import { startRedis, type RedisServer } from './_helpers/servers';
import { blockSuite } from './_suites/blocks';

let server: RedisServer;

test.before(async () => {
  server = await startRedis();
});

test.after.always(async () => {
  await server?.stop();
});

const KEY_HEX = 'a1'.repeat(32);
const key = () => EncryptionKey.fromHex(KEY_HEX, 'test key');

async function wipe(store: RedisBlocks): Promise<void> {
  const ids: string[] = [];
  await store.list((batch) => void ids.push(...batch));
  await store.delete(ids);
}

// The suite over Redis (test/backends-encrypted-sqlite.test.ts: over SQLite).
blockSuite(test, async () => {
  const uuid = randomUUID();
  const inner = await RedisBlocks.open({ host: '127.0.0.1', port: server.port, prefix: `kvfs-test:${uuid}:b:` });
  const store = new EncryptedBlocks(inner, { volumeUuid: uuid, key: key(), describe: 'test' });
  return {
    store,
    cleanup: async () => {
      await wipe(inner);
      await store.close();
    },
  };
});

async function redisPair(t: import('ava').ExecutionContext, uuid = randomUUID(), k = key()) {
  const inner = await openBlockStore(server.url, uuid);
  const store = new EncryptedBlocks(inner, { volumeUuid: uuid, key: k, describe: 'vol' });
  const raw = new Redis({ host: '127.0.0.1', port: server.port });
  const prefix = `kvfs:${uuid}:b:`;
  t.teardown(async () => {
    const keys = await raw.keys(`${prefix}*`);
    if (keys.length) await raw.del(...keys);
    raw.disconnect();
    await store.close();
  });
  return { store, raw, prefix, uuid };
}

test('encrypted: stored values are sealed: not the plaintext, 29 bytes longer, new nonce on every put', async (t) => {
  const { store, raw, prefix } = await redisPair(t);
  const data = Buffer.from('secret block contents '.repeat(100));
  await store.put('1', data);
  const sealed = (await raw.getBuffer(`${prefix}1`))!;
  t.is(sealed.length, data.length + SEAL_OVERHEAD);
  t.is(SEAL_OVERHEAD, 29);
  t.false(sealed.includes(Buffer.from('secret')));
  await store.put('1', data);
  const again = (await raw.getBuffer(`${prefix}1`))!;
  t.false(again.equals(sealed), 'a second put of the same bytes stores a different ciphertext');
  t.true((await store.get('1'))!.equals(data));
});

test('encrypted: a changed byte anywhere, a truncated value, or a swapped block fails with EIO', async (t) => {
  const { store, raw, prefix } = await redisPair(t);
  const a = randomBytes(10_000);
  const b = randomBytes(10_000);
  await store.put('10', a);
  await store.put('11', b);
  const sealedA = (await raw.getBuffer(`${prefix}10`))!;
  const sealedB = (await raw.getBuffer(`${prefix}11`))!;
  for (const pos of [0, 1, 12, 13, 5000, sealedA.length - 17, sealedA.length - 1]) {
    const bad = Buffer.from(sealedA);
    bad[pos] ^= 0x80;
    await raw.set(`${prefix}10`, bad);
    const err = await t.throwsAsync(store.get('10'), { instanceOf: FsError }, `byte ${pos}`);
    t.is((err as FsError).code, 'EIO');
  }
  t.is(await store.size('10'), 10_000, 'size needs no valid seal (gc can measure and delete such a block)');
  await raw.set(`${prefix}10`, sealedA.subarray(0, 20));
  t.is(((await t.throwsAsync(store.get('10'))) as FsError).code, 'EIO');
  // Swapped: each value is intact, but sealed for the other id.
  await raw.set(`${prefix}10`, sealedB);
  await raw.set(`${prefix}11`, sealedA);
  t.is(((await t.throwsAsync(store.get('10'))) as FsError).code, 'EIO');
  t.is(((await t.throwsAsync(store.get('11'))) as FsError).code, 'EIO');
  await raw.set(`${prefix}10`, sealedA);
  await raw.set(`${prefix}11`, sealedB);
  t.true((await store.get('10'))!.equals(a));
  t.true((await store.get('11'))!.equals(b));
});

test('encrypted: a block of another volume under the same key, or a block under another key, fails with EIO', async (t) => {
  const one = await redisPair(t);
  const two = await redisPair(t);
  await one.store.put('5', Buffer.from('volume one'));
  await two.raw.set(`${two.prefix}5`, (await one.raw.getBuffer(`${one.prefix}5`))!);
  t.is(((await t.throwsAsync(two.store.get('5'))) as FsError).code, 'EIO');
  const other = await redisPair(t, one.uuid, EncryptionKey.fromHex('b2'.repeat(32), 'other'));
  t.is(((await t.throwsAsync(other.store.get('5'))) as FsError).code, 'EIO');
});

test('encrypted: the key check tells the right key from a wrong one, per volume', (t) => {
  const uuid = randomUUID();
  const s = encryptionSettings(key(), uuid);
  t.is(s.cipher, 'aes-256-gcm');
  t.regex(s.keyCheck, /^[0-9a-f]{64}$/);
  t.false(s.keyCheck.includes(KEY_HEX));
  t.true(keyMatches(key(), uuid, s));
  t.false(keyMatches(EncryptionKey.fromHex('a1'.repeat(31) + 'a0', 'x'), uuid, s));
  t.false(keyMatches(key(), randomUUID(), s), 'the check value is bound to the volume');
  t.not(encryptionSettings(key(), randomUUID()).keyCheck, s.keyCheck);
});

test('encrypted: keys are 64 hex digits, and never shown', (t) => {
  for (const bad of ['', 'abc', 'a1'.repeat(31), 'a1'.repeat(33), 'g'.repeat(64), `${'a1'.repeat(32)}x`]) {
    const err = t.throws(() => EncryptionKey.fromHex(bad, '--key-file K'), { instanceOf: UsageError }, JSON.stringify(bad));
    t.regex(err!.message, /^--key-file K (is empty|does not hold a key)/);
    t.regex(err!.message, /openssl rand -hex 32/);
  }
  const k = EncryptionKey.fromHex(` ${'A1'.repeat(32)}\n`, '--key-file K');
  t.is(k.toHex(), KEY_HEX);
  for (const shown of [String(k), JSON.stringify({ k }), inspect(k), inspect({ k }, { showHidden: true, depth: 5 }), `${k}`]) {
    t.false(shown.toLowerCase().includes(KEY_HEX), shown);
  }
  t.is(String(k), '[key from --key-file K]');
});

test('encrypted: without a key the store is locked: get of a stored block and put fail with EACCES; list, delete, size, usage and get of a missing block work', async (t) => {
  const uuid = randomUUID();
  const { store } = await redisPair(t, uuid);
  await store.put('1', Buffer.from('x'));
  const locked = new EncryptedBlocks(await openBlockStore(server.url, uuid), { volumeUuid: uuid, key: undefined, describe: 'etcd://h/vol' });
  t.teardown(() => locked.close());
  t.false(locked.unlocked);
  t.is(await locked.get('nope'), undefined, 'whether a block exists needs no key');
  for (const op of [() => locked.get('1'), () => locked.put('2', Buffer.from('y'))]) {
    const err = await t.throwsAsync(op(), { instanceOf: FsError });
    t.is((err as FsError).code, 'EACCES');
    t.regex((err as Error).message, /volume etcd:\/\/h\/vol is encrypted and no key was given: pass --key-file FILE/);
  }
  const ids: string[] = [];
  await locked.list((batch) => void ids.push(...batch));
  t.deepEqual(ids, ['1']);
  t.is((await locked.usage()).blocks, 1);
  t.is(await locked.size('1'), 1, 'size needs no key');
  await locked.delete(['1']);
  t.is(await store.get('1'), undefined);
});

test('the key comes from --key-file, else KVFS_KEY_FILE, else KVFS_KEY; a key file others can read gets a warning', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvfs-test-key-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = (name: string, hex: string, mode: number) => {
    const p = path.join(dir, name);
    fs.writeFileSync(p, `${hex}\n`, { mode });
    fs.chmodSync(p, mode);
    return p;
  };
  const a = file('a', 'aa'.repeat(32), 0o600);
  const b = file('b', 'bb'.repeat(32), 0o600);
  const open = file('open', 'cc'.repeat(32), 0o644);
  const warnings: string[] = [];
  const original = console.error;
  console.error = (line: string) => void warnings.push(line);
  try {
    t.is(resolveKey({ 'key-file': a }, { KVFS_KEY_FILE: b, KVFS_KEY: 'dd'.repeat(32) })?.toHex(), 'aa'.repeat(32));
    t.is(resolveKey({}, { KVFS_KEY_FILE: b, KVFS_KEY: 'dd'.repeat(32) })?.from, `KVFS_KEY_FILE=${b}`);
    t.is(resolveKey({}, { KVFS_KEY: 'dd'.repeat(32) })?.from, 'KVFS_KEY');
    t.is(resolveKey({}, {}), undefined);
    t.deepEqual(warnings, []);
    t.is(resolveKey({ 'key-file': open }, {})?.toHex(), 'cc'.repeat(32));
  } finally {
    console.error = original;
  }
  t.is(warnings.length, 1);
  t.regex(warnings[0], /the key file .* can be read by other users \(mode 644\); chmod 600/);
  t.false(warnings[0].includes('cc'.repeat(32)));
  const missing = t.throws(() => resolveKey({}, { KVFS_KEY_FILE: path.join(dir, 'nope') }), { instanceOf: UsageError });
  t.regex(missing!.message, /^cannot read KVFS_KEY_FILE=.*nope: no such file$/);
  const bad = t.throws(() => resolveKey({}, { KVFS_KEY: 'xyz' }), { instanceOf: UsageError });
  t.regex(bad!.message, /^KVFS_KEY does not hold a key/);
  t.false(bad!.message.includes('xyz'));
});

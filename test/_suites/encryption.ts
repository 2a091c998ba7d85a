// Encryption at rest through the real CLI and a real mount, on one backend (etcd + Redis, or
// embedded): format --encrypt, files round-trip, the stored blocks hold no plaintext, a changed or
// swapped block reads as EIO, and a mount without the key, with a wrong key or with a key for a
// volume in clear fails at once (exit 1, one line, nothing mounted, no process left).
//
// The stored blocks are read and changed with the backend's own client (ioredis on Redis; the
// block files of the embedded store, or better-sqlite3 on a blocks.db), always while the volume is unmounted: an embedded store is locked
// by its daemon, and a daemon that wrote a block keeps it in its cache.
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ExecutionContext, TestFn } from 'ava';
import Database from 'better-sqlite3';
import Redis from 'ioredis';
import {
  type Backend,
  describeRun,
  isMounted,
  kvfs,
  makeTempDir,
  processesMatching,
  removeTempDir,
  type RunResult,
  type Servers,
  sleep,
  startServers,
  startVolume,
  uniqueName,
  type Volume,
} from '../_helpers/mount';
import { codeOf, pread, sha256 } from '../_helpers/ops';
import { blockFile } from '../../lib/data/files';

type T = ExecutionContext;

/**
 * A command that failed cleanly: exit 1 (not killed by the harness's timeout), exactly one line on
 * stderr, nothing mounted at mnt, no process left mentioning it. No time limit: the machine is shared.
 */
async function assertCleanFailure(t: T, what: string, r: RunResult, opts: { mnt: string; tokens: string[] }): Promise<void> {
  const info = describeRun(what, r);
  t.false(r.timedOut, `${what}: must not hang\n${info}`);
  t.is(r.code, 1, `${what}: exit code\n${info}`);
  t.is(r.stderr.split('\n').filter((l) => l.trim() !== '').length, 1, `${what}: exactly one line on stderr\n${info}`);
  t.false(isMounted(opts.mnt), `${what}: nothing mounted at ${opts.mnt}`);
  await sleep(200);
  for (const tok of opts.tokens) t.deepEqual(processesMatching(tok), [], `${what}: no process left mentioning ${tok}`);
}

/** The stored (sealed) blocks of one volume, through the backend's own client. */
interface RawBlocks {
  ids(): Promise<string[]>;
  get(id: string): Promise<Buffer>;
  set(id: string, value: Buffer): Promise<void>;
  close(): Promise<void>;
}

async function rawBlocks(servers: Servers, metaUrl: string, uuid: string): Promise<RawBlocks> {
  if (servers.backend === 'etcd') {
    const redis = new Redis({ host: '127.0.0.1', port: servers.redis!.port });
    const prefix = `kvfs:${uuid}:b:`;
    return {
      ids: async () => (await redis.keys(`${prefix}*`)).map((k) => k.slice(prefix.length)).sort((a, b) => Number(a) - Number(b)),
      get: async (id) => {
        const v = await redis.getBuffer(prefix + id);
        if (!v) throw new Error(`no block ${id} in Redis`);
        return v;
      },
      set: async (id, value) => void (await redis.set(prefix + id, value)),
      close: async () => void redis.disconnect(),
    };
  }
  const volDir = new URL(metaUrl).pathname;
  if (!fs.existsSync(path.join(volDir, 'blocks.db'))) {
    // The file store: DIR/blocks/XX/ID, and small blocks in meta.db's small_blocks table.
    const root = path.join(volDir, 'blocks');
    const meta = new Database(path.join(volDir, 'meta.db'));
    const small = (id: string): Buffer | undefined =>
      meta.prepare<[string], { data: Buffer }>('SELECT data FROM small_blocks WHERE id = ?').get(id)?.data;
    return {
      ids: async () =>
        fs
          .readdirSync(root)
          .filter((d) => /^[0-9a-f]{2}$/.test(d))
          .flatMap((d) => fs.readdirSync(path.join(root, d)))
          .concat(meta.prepare<[], { id: string }>('SELECT id FROM small_blocks').all().map((r) => r.id))
          .sort((a, b) => Number(a) - Number(b)),
      get: async (id) => small(id) ?? fs.readFileSync(blockFile(volDir, id)),
      set: async (id, value) => {
        if (small(id)) meta.prepare('UPDATE small_blocks SET data = ? WHERE id = ?').run(value, id);
        else fs.writeFileSync(blockFile(volDir, id), value);
      },
      close: async () => void meta.close(),
    };
  }
  const db = new Database(path.join(volDir, 'blocks.db'));
  return {
    ids: async () => db.prepare<[], { id: string }>('SELECT id FROM blocks').all().map((r) => r.id).sort((a, b) => Number(a) - Number(b)),
    get: async (id) => {
      const row = db.prepare<[string], { data: Buffer }>('SELECT data FROM blocks WHERE id = ?').get(id);
      if (!row) throw new Error(`no block ${id} in blocks.db`);
      return row.data;
    },
    set: async (id, value) => void db.prepare('UPDATE blocks SET data = ? WHERE id = ?').run(value, id),
    close: async () => void db.close(),
  };
}

const BLOCK = 64 * 1024;
const MARKER = 'kvfs-plaintext-marker-';
/** A recognisable text: every block of it contains MARKER many times. */
function markedText(bytes: number): Buffer {
  const line = `${MARKER}0123456789 the quick brown fox jumps over the lazy dog\n`;
  return Buffer.from(line.repeat(Math.ceil(bytes / line.length)).slice(0, bytes));
}

export function encryptionSuite(test: TestFn, backend: Backend): void {
  let servers: Servers;
  let keyDir: string;
  const volumes: Volume[] = [];

  test.before(async () => {
    servers = await startServers(backend);
    keyDir = makeTempDir('kvfs-keys-');
  });
  test.after.always(async () => {
    await Promise.allSettled(volumes.map((v) => v.stop()));
    await servers?.stop();
    if (keyDir) removeTempDir(keyDir);
  });

  /** A fresh key file (mode 0600) and its hex. */
  const newKey = (): { file: string; hex: string } => {
    const hex = randomBytes(32).toString('hex');
    const file = path.join(keyDir, `${uniqueName('key')}.hex`);
    fs.writeFileSync(file, `${hex}\n`, { mode: 0o600 });
    return { file, hex };
  };

  /** An encrypted volume with 64 KiB blocks, mounted with its key. */
  const encryptedVolume = async (key: { file: string }): Promise<Volume> => {
    const v = await startVolume({
      backend,
      servers,
      formatArgs: ['--encrypt', '--key-file', key.file, '--block-size', '64K'],
      mountArgs: ['--key-file', key.file],
    });
    volumes.push(v);
    return v;
  };

  const settingsOf = async (t: T, v: Volume, extra: string[]): Promise<{ uuid: string; formatVersion: number; encryption?: Record<string, string> }> => {
    const r = await kvfs(['status', '--json', '--meta', v.metaUrl, ...extra]);
    t.is(r.code, 0, describeRun('kvfs status', r));
    return JSON.parse(r.stdout).settings;
  };

  const noKeyIn = (t: T, hex: string, what: string, ...texts: string[]) => {
    for (const text of texts) t.false(text.toLowerCase().includes(hex), `${what} shows the key`);
  };

  const readCode = (file: string): string => codeOf(() => fs.readFileSync(file));

  test(`${backend}: format --encrypt, files round-trip through the mount, stored blocks hold no plaintext`, async (t) => {
    const key = newKey();
    const v = await encryptedVolume(key);
    const settings = await settingsOf(t, v, ['--key-file', key.file]);
    t.is(settings.encryption?.cipher, 'aes-256-gcm');
    t.is(settings.encryption?.kdf, 'hkdf-sha256');
    t.regex(settings.encryption?.keyCheck ?? '', /^[0-9a-f]{64}$/);
    t.not(settings.encryption?.keyCheck, key.hex);
    t.is(settings.formatVersion, 3); // FORMAT_VERSION: encrypted (2) and parts (3)

    const small = Buffer.from(`${MARKER}small file\n`);
    const text = markedText(5 * BLOCK + 1234); // 6 blocks, the last one short
    const random = randomBytes(3 * BLOCK);
    fs.writeFileSync(path.join(v.mnt, 'small.txt'), small);
    fs.writeFileSync(path.join(v.mnt, 'text.txt'), text);
    fs.mkdirSync(path.join(v.mnt, 'dir'));
    fs.writeFileSync(path.join(v.mnt, 'dir', 'random.bin'), random);
    t.true(fs.readFileSync(path.join(v.mnt, 'text.txt')).equals(text));
    t.true(pread(path.join(v.mnt, 'text.txt'), 3 * BLOCK - 100, 200).equals(text.subarray(3 * BLOCK - 100, 3 * BLOCK + 100)), 'read across a block boundary');

    // Cold: a fresh daemon reads every block back from the store and decrypts it.
    await v.remount();
    t.true(fs.readFileSync(path.join(v.mnt, 'small.txt')).equals(small));
    t.is(sha256(fs.readFileSync(path.join(v.mnt, 'text.txt'))), sha256(text));
    t.is(sha256(fs.readFileSync(path.join(v.mnt, 'dir', 'random.bin'))), sha256(random));
    await v.unmount();

    const raw = await rawBlocks(servers, v.metaUrl, settings.uuid);
    const ids = await raw.ids();
    t.true(ids.length >= 1 + 6 + 3, `blocks stored: ${ids.join(',')}`);
    const lengths = new Map<number, number>();
    for (const id of ids) {
      const value = await raw.get(id);
      t.false(value.includes(MARKER), `stored block ${id} contains the plaintext marker`);
      t.false(value.includes(random.subarray(0, 32)) || value.includes(random.subarray(BLOCK, BLOCK + 32)), `stored block ${id} contains plaintext`);
      lengths.set(value.length, (lengths.get(value.length) ?? 0) + 1);
    }
    // Full blocks are stored 29 bytes longer (version, nonce, tag); nothing is stored in clear.
    t.true((lengths.get(BLOCK + 29) ?? 0) >= 5 + 3, JSON.stringify([...lengths]));
    t.false(lengths.has(BLOCK), 'a stored block has the plaintext length');
    await raw.close();

    await v.remount();
    t.is(sha256(fs.readFileSync(path.join(v.mnt, 'text.txt'))), sha256(text), 'data intact after inspection');
    noKeyIn(t, key.hex, 'the daemon log', v.logs());
    t.deepEqual(processesMatching(key.hex), [], 'no command line holds the key');
  });

  test(`${backend}: a changed block and swapped blocks read as EIO, never as wrong data`, async (t) => {
    const key = newKey();
    const v = await encryptedVolume(key);
    const a = randomBytes(5 * BLOCK);
    const b = markedText(2 * BLOCK);
    const fileA = path.join(v.mnt, 'a.bin');
    const fileB = path.join(v.mnt, 'b.txt');
    const { uuid } = await settingsOf(t, v, ['--key-file', key.file]);
    const idsNow = async (): Promise<string[]> => {
      const raw = await rawBlocks(servers, v.metaUrl, uuid);
      try {
        return await raw.ids();
      } finally {
        await raw.close();
      }
    };
    // A's blocks are those that appear with A (written in a mount of their own).
    fs.writeFileSync(fileA, a);
    await v.unmount();
    const idsA = await idsNow();
    t.is(idsA.length, 5);
    await v.remount();
    fs.writeFileSync(fileB, b);
    await v.unmount();
    const idsB = (await idsNow()).filter((id) => !idsA.includes(id));
    t.is(idsB.length, 2);

    const raw = await rawBlocks(servers, v.metaUrl, uuid);
    let rawOpen = true;
    const closeRaw = async () => {
      if (rawOpen) await raw.close();
      rawOpen = false;
    };
    t.teardown(closeRaw);
    // 1. Flip one byte of A's last block.
    const last = idsA[4];
    const original = await raw.get(last);
    const flipped = Buffer.from(original);
    flipped[Math.floor(flipped.length / 2)] ^= 0x01;
    await raw.set(last, flipped);
    await closeRaw();
    await v.remount();
    t.is(readCode(fileA), 'EIO', 'reading a file with a changed block');
    t.true(pread(fileA, 0, 4096).equals(a.subarray(0, 4096)), "A's first block still reads");
    t.true(fs.readFileSync(fileB).equals(b), 'other files still read');
    const said = new RegExp(`kvfs: block ${last} failed authentication: it was changed or swapped`);
    for (let i = 0; i < 100 && !said.test(v.daemon.log()); i++) await sleep(100); // its output arrives through a pipe
    t.regex(v.daemon.log(), said, 'the daemon says which block');
    await v.unmount();

    // 2. Put it back: readable again. Then swap two of A's blocks, and one of A's with one of B's.
    const raw2 = await rawBlocks(servers, v.metaUrl, uuid);
    try {
      await raw2.set(last, original);
      const [x, y] = [await raw2.get(idsA[1]), await raw2.get(idsA[2])];
      await raw2.set(idsA[1], y);
      await raw2.set(idsA[2], x);
      const [p, q] = [await raw2.get(idsA[4]), await raw2.get(idsB[0])];
      await raw2.set(idsA[4], q);
      await raw2.set(idsB[0], p);
    } finally {
      await raw2.close();
    }
    await v.remount();
    t.is(readCode(fileA), 'EIO', 'reading a file whose blocks were swapped');
    t.is(codeOf(() => pread(fileA, 1 * BLOCK, 4096)), 'EIO', 'the swapped block itself');
    t.is(readCode(fileB), 'EIO', 'a block swapped in from another file');
    t.true(pread(fileA, 0, 4096).equals(a.subarray(0, 4096)), 'an untouched block still reads');
    await v.unmount();

    // 3. Swap everything back: all data intact.
    const raw3 = await rawBlocks(servers, v.metaUrl, uuid);
    try {
      const [x, y] = [await raw3.get(idsA[1]), await raw3.get(idsA[2])];
      await raw3.set(idsA[1], y);
      await raw3.set(idsA[2], x);
      const [p, q] = [await raw3.get(idsA[4]), await raw3.get(idsB[0])];
      await raw3.set(idsA[4], q);
      await raw3.set(idsB[0], p);
    } finally {
      await raw3.close();
    }
    await v.remount();
    t.is(sha256(fs.readFileSync(fileA)), sha256(a));
    t.true(fs.readFileSync(fileB).equals(b));
  });

  test(`${backend}: mount without the key, with a wrong or malformed key, or a key for a volume in clear, fails at once and cleanly`, async (t) => {
    const key = newKey();
    const v = await encryptedVolume(key);
    fs.writeFileSync(path.join(v.mnt, 'kept.txt'), markedText(3 * BLOCK));
    await v.unmount();
    const wrong = newKey();
    const malformed = path.join(keyDir, `${uniqueName('bad')}.hex`);
    fs.writeFileSync(malformed, 'not-a-key\n', { mode: 0o600 });
    const env = (extra: NodeJS.ProcessEnv): NodeJS.ProcessEnv => {
      const e: NodeJS.ProcessEnv = { ...process.env, ...extra };
      for (const k of ['KVFS_KEY', 'KVFS_KEY_FILE']) if (!(k in extra)) delete e[k];
      return e;
    };
    const tries: Array<{ what: string; args: string[]; env: NodeJS.ProcessEnv; message: RegExp }> = [
      { what: 'no key', args: [], env: env({}), message: /is encrypted: give its key with --key-file FILE/ },
      { what: 'no key, -d', args: ['-d'], env: env({}), message: /is encrypted: give its key/ },
      { what: 'wrong key file', args: ['--key-file', wrong.file], env: env({}), message: /the key from --key-file .* is not the key of volume/ },
      { what: 'wrong KVFS_KEY', args: [], env: env({ KVFS_KEY: wrong.hex }), message: /the key from KVFS_KEY is not the key of volume/ },
      { what: 'wrong key, -d', args: ['-d', '--key-file', wrong.file], env: env({}), message: /is not the key of volume/ },
      { what: 'malformed key file', args: ['--key-file', malformed], env: env({}), message: /does not hold a key: expected 64 hex digits .*openssl rand -hex 32/ },
      { what: 'missing key file', args: ['--key-file', path.join(keyDir, 'nope')], env: env({}), message: /cannot read --key-file .*: no such file/ },
    ];
    for (const k of tries) {
      const r: RunResult = await kvfs(['mount', '--meta', v.metaUrl, ...k.args, v.mnt], { env: k.env, timeoutMs: 60_000 });
      await assertCleanFailure(t, `mount, ${k.what}`, r, { mnt: v.mnt, tokens: [v.mnt] });
      t.regex(r.stderr, k.message, `${k.what}: ${r.stderr}`);
      noKeyIn(t, key.hex, k.what, r.stdout, r.stderr);
      noKeyIn(t, wrong.hex, k.what, r.stdout, r.stderr);
    }

    // fsck reads blocks only with the key; a wrong key is refused there too.
    const fsckWrong = await kvfs(['fsck', '--meta', v.metaUrl, '--key-file', wrong.file]);
    t.is(fsckWrong.code, 1, describeRun('fsck with a wrong key', fsckWrong));
    t.regex(fsckWrong.stderr, /is not the key of volume/);
    const fsckOk = await kvfs(['fsck', '--meta', v.metaUrl, '--key-file', key.file]);
    t.is(fsckOk.code, 0, describeRun('fsck with the key', fsckOk));
    // status, fsck and gc read no block contents here: they work without the key.
    for (const args of [['status', '--json'], ['fsck'], ['gc']]) {
      const r = await kvfs([...args, '--meta', v.metaUrl], { env: env({}) });
      t.is(r.code, 0, describeRun(`${args[0]} without the key`, r));
      if (args[0] === 'status') t.is(JSON.parse(r.stdout).settings.encryption.cipher, 'aes-256-gcm');
    }

    // A key for a volume in clear: refused, so nobody believes a volume in clear is encrypted.
    const plainName = uniqueName('plain');
    const plainMeta = servers.metaUrlFor(plainName);
    const f = await kvfs(['format', '--meta', plainMeta, ...(servers.dataUrl ? ['--data', servers.dataUrl] : [])]);
    t.is(f.code, 0, describeRun('format in clear', f));
    const { dir, mnt } = (() => {
      const d = makeTempDir('kvfs-enc-plain-');
      const m = path.join(d, 'mnt');
      fs.mkdirSync(m, { mode: 0o755 });
      return { dir: d, mnt: m };
    })();
    t.teardown(() => removeTempDir(dir));
    const m = await kvfs(['mount', '--meta', plainMeta, '--key-file', key.file, mnt], { env: env({}), timeoutMs: 60_000 });
    await assertCleanFailure(t, 'mount of a volume in clear with a key', m, { mnt, tokens: [mnt] });
    t.regex(m.stderr, /is not encrypted, but a key was given \(--key-file /);
    // format: --encrypt without a key, and a key without --encrypt.
    const noKey = await kvfs(['format', '--meta', servers.metaUrlFor(uniqueName()), '--encrypt', ...(servers.dataUrl ? ['--data', servers.dataUrl] : [])], { env: env({}) });
    t.is(noKey.code, 1, describeRun('format --encrypt without a key', noKey));
    t.regex(noKey.stderr, /--encrypt needs a key: --key-file FILE, KVFS_KEY_FILE=FILE or KVFS_KEY=HEX.*openssl rand -hex 32/);
    const noFlag = await kvfs(['format', '--meta', servers.metaUrlFor(uniqueName()), ...(servers.dataUrl ? ['--data', servers.dataUrl] : [])], { env: env({ KVFS_KEY: key.hex }) });
    t.is(noFlag.code, 1, describeRun('format with a key, without --encrypt', noFlag));
    t.regex(noFlag.stderr, /a key was given \(KVFS_KEY\) but not --encrypt/);
    noKeyIn(t, key.hex, 'format', noFlag.stdout, noFlag.stderr);

    // The right key: everything is there.
    await v.remount(['--key-file', key.file]);
    t.true(fs.readFileSync(path.join(v.mnt, 'kept.txt')).equals(markedText(3 * BLOCK)));
    t.true(isMounted(v.mnt));
  });

  test(`${backend}: format --force with another key: kvfs gc, without any key, frees the blocks no key opens now`, async (t) => {
    const key = newKey();
    const v = await encryptedVolume(key);
    fs.writeFileSync(path.join(v.mnt, 'f.bin'), randomBytes(3 * BLOCK + 5));
    await v.unmount();
    const other = newKey();
    const data = servers.dataUrl ? ['--data', servers.dataUrl] : [];
    const f = await kvfs(['format', '--force', '--meta', v.metaUrl, ...data, '--encrypt', '--key-file', other.file, '--block-size', '64K']);
    t.is(f.code, 0, describeRun('format --force with another key', f));
    const gc = await kvfs(['gc', '--meta', v.metaUrl, '--grace', '0.2', '--delete']);
    t.is(gc.code, 0, describeRun('gc --delete without a key', gc));
    t.regex(gc.stdout, /deleted 4 unreferenced blocks, .*\(196613 bytes\)/);
    const { uuid } = await settingsOf(t, v, []);
    const raw = await rawBlocks(servers, v.metaUrl, uuid);
    try {
      t.deepEqual(await raw.ids(), []);
    } finally {
      await raw.close();
    }
    await v.remount(['--key-file', other.file]);
    t.deepEqual(fs.readdirSync(v.mnt), []);
  });

  test(`${backend}: the key from the environment (KVFS_KEY_FILE, KVFS_KEY) mounts in the background`, async (t) => {
    const key = newKey();
    const v = await encryptedVolume(key);
    fs.writeFileSync(path.join(v.mnt, 'f.txt'), 'hello');
    await v.unmount();
    for (const extra of [{ KVFS_KEY_FILE: key.file }, { KVFS_KEY: key.hex }]) {
      const env: NodeJS.ProcessEnv = { ...process.env, ...extra, KVFS_HOME: path.join(keyDir, uniqueName('home')) };
      const r = await kvfs(['mount', '-d', '--meta', v.metaUrl, v.mnt], { env, timeoutMs: 60_000 });
      t.is(r.code, 0, describeRun(`mount -d with ${Object.keys(extra)[0]}`, r));
      t.regex(r.stdout, /blocks encrypted with aes-256-gcm/);
      try {
        t.is(fs.readFileSync(path.join(v.mnt, 'f.txt'), 'utf8'), 'hello');
        t.deepEqual(processesMatching(key.hex), [], 'no command line holds the key');
      } finally {
        const u = await kvfs(['umount', v.mnt], { env, timeoutMs: 60_000 });
        t.is(u.code, 0, describeRun('umount', u));
      }
      t.false(isMounted(v.mnt));
    }
  });
}

// EncryptedBlocks (lib/data/encrypted.ts) over the embedded SQLite block store: the shared
// block-store suite (test/backends-encrypted.test.ts runs it over Redis, with the wrapper's own tests).
import { randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import test from 'ava';
import { EncryptedBlocks, EncryptionKey } from '../lib/data/encrypted';
import { SqliteBlocks } from '../lib/data/sqlite';
import { blockSuite } from './_suites/blocks';

blockSuite(test, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvfs-test-enc-'));
  const uuid = randomUUID();
  const key = EncryptionKey.fromHex('c3'.repeat(32), 'test key');
  const store = new EncryptedBlocks(new SqliteBlocks({ dir, volumeUuid: uuid }), { volumeUuid: uuid, key, describe: 'test' });
  return {
    store,
    cleanup: async () => {
      await store.close();
      await fs.promises.rm(dir, { recursive: true, force: true });
    },
  };
});

// URL parsing of the backend registries (no servers needed).
import test from 'ava';
import { parseBlockUrl } from '../lib/data/index';
import { UsageError } from '../lib/errors';
import { parseMetaUrl } from '../lib/meta/index';

test('meta URL: etcd forms', (t) => {
  t.deepEqual(parseMetaUrl('etcd://127.0.0.1:2379/vol1'), {
    scheme: 'etcd',
    hosts: ['http://127.0.0.1:2379'],
    volume: 'vol1',
    prefix: 'kvfs/vol1/',
    auth: undefined,
    describe: 'etcd://127.0.0.1:2379/vol1',
  });
  const multi = parseMetaUrl('etcd://a.example:1,b.example:2,[::1]:3/My_vol-2.x/');
  t.like(multi, { hosts: ['http://a.example:1', 'http://b.example:2', 'http://[::1]:3'], volume: 'My_vol-2.x', prefix: 'kvfs/My_vol-2.x/' });
  const auth = parseMetaUrl('etcd://root:p%40ss@h:1/v');
  t.like(auth, { auth: { username: 'root', password: 'p@ss' }, describe: 'etcd://h:1/v' });
  t.like(parseMetaUrl('etcd://h/v'), { hosts: ['http://h:2379'] });
});

test('meta URL: file form', (t) => {
  t.deepEqual(parseMetaUrl('file:///var/lib/kvfs/vol1'), { scheme: 'file', dir: '/var/lib/kvfs/vol1', volume: 'vol1', describe: 'file:///var/lib/kvfs/vol1' });
  t.like(parseMetaUrl('file:///var/lib/kvfs/vol1/'), { dir: '/var/lib/kvfs/vol1', volume: 'vol1' });
});

test('meta URL: bad ones are UsageErrors with one line', (t) => {
  const bad = [
    '',
    'vol1',
    'http://h:1/v',
    'etcd://h:1',
    'etcd://h:1/',
    'etcd://h:1/a/b',
    'etcd://h:99999/v',
    'etcd://h:1/-v',
    'etcd://h:1/v?x=1',
    'etcd:///v',
    'etcd://h:1,,h2:2/v',
    'etcd://user@h:1/v',
    `etcd://h:1/${'v'.repeat(65)}`,
    'file://host/dir/vol',
    'file:///',
    'file:///dir/bad%20name',
    'file:///dir/vol?x',
  ];
  for (const url of bad) {
    const err = t.throws(() => parseMetaUrl(url), { instanceOf: UsageError }, url);
    t.false(err!.message.includes('\n'), url);
    t.true(err!.message.includes('expected'), url);
  }
  const err = t.throws(() => parseMetaUrl('etcd://root:secret@h:1/a/b'));
  t.false(err!.message.includes('secret'), 'passwords are not echoed');
});

test('block URL: forms', (t) => {
  t.deepEqual(parseBlockUrl('redis://127.0.0.1:6380'), { scheme: 'redis', host: '127.0.0.1', port: 6380, db: 0, username: undefined, password: undefined, describe: 'redis://127.0.0.1:6380' });
  t.like(parseBlockUrl('redis://u:p%2Fw@h/2'), { host: 'h', port: 6379, db: 2, username: 'u', password: 'p/w', describe: 'redis://h:6379/2' });
  t.like(parseBlockUrl('redis://:pw@[::1]:7000/'), { host: '::1', port: 7000, password: 'pw', username: undefined, describe: 'redis://[::1]:7000' });
  t.deepEqual(parseBlockUrl('file:///data/blocks'), { scheme: 'file', dir: '/data/blocks', describe: 'file:///data/blocks' });
  const err = t.throws(() => parseBlockUrl('redis://u:secret@h:1/x'), { instanceOf: UsageError });
  t.false(err!.message.includes('secret'));
});

// examples/streaming/server.js serving a 50 MB file from a kvfs mount: ranges fetched with Node's
// HTTP client (start, middle, across a block boundary, end, open-ended, suffix, past the end,
// several at once) are compared byte for byte with the source; 416, HEAD, If-Range, ignored
// Range headers, 404/403, and a client that goes away mid-stream.
import test, { ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { ROOT, sleep, startVolume } from './_helpers/mount';
import { mulberry32, prngBytes, sha256 } from './_helpers/ops';

const SERVER = path.join(ROOT, 'examples', 'streaming', 'server.js');
const SIZE = 50 * 1024 * 1024 + 12_345; // 50 MiB and a partial last block

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

function request(port: number, urlPath: string, headers: Record<string, string> = {}, method = 'GET'): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: urlPath, method, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.setTimeout(120_000, () => req.destroy(new Error(`timeout: ${method} ${urlPath} ${JSON.stringify(headers)}`)));
    req.on('error', reject);
    req.end();
  });
}

async function startServer(t: ExecutionContext, dir: string): Promise<{ port: number; pid: number; log(): string; stop(): Promise<number | null> }> {
  const child = spawn(process.execPath, [SERVER, dir, '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (log += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (log += d));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  /** SIGTERM (SIGKILL after 5 s); resolves with the exit code. */
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    }
    return child.exitCode;
  };
  t.teardown(stop);
  const deadline = Date.now() + 10_000;
  for (;;) {
    const m = /listening on http:\/\/127\.0\.0\.1:(\d+)\//.exec(log);
    if (m) return { port: Number(m[1]), pid: child.pid!, log: () => log, stop };
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`server did not start:\n${log}`);
    await sleep(20);
  }
}

test('streaming/server.js serves byte ranges of a 50 MB file on kvfs', async (t) => {
  const vol = await startVolume({ backend: 'etcd' });
  t.teardown(() => vol.stop());
  const media = path.join(vol.mnt, 'media');
  fs.mkdirSync(media);
  const source = prngBytes(20240607, SIZE);
  fs.writeFileSync(path.join(media, 'movie.mp4'), source);
  fs.writeFileSync(path.join(media, 'small.txt'), '0123456789');
  fs.writeFileSync(path.join(media, 'empty.bin'), '');
  fs.symlinkSync('/etc/hostname', path.join(media, 'outside'));
  fs.mkdirSync(path.join(media, 'sub dir'));
  fs.writeFileSync(path.join(media, 'sub dir', 'a b.txt'), 'spaces');

  const server = await startServer(t, media);
  const get = (range?: string, extra: Record<string, string> = {}, urlPath = '/movie.mp4', method = 'GET') =>
    request(server.port, urlPath, { ...(range ? { Range: range } : {}), ...extra }, method);

  // Satisfiable single ranges: 206, Content-Range, exactly those bytes.
  const cases: [string, number, number][] = [
    ['bytes=0-99', 0, 99], // the start
    ['bytes=25000000-26048575', 25_000_000, 26_048_575], // 1 MiB in the middle, across a block boundary
    ['bytes=1048570-1048590', 1_048_570, 1_048_590], // a few bytes across the first block boundary
    [`bytes=${SIZE - 100}-${SIZE - 1}`, SIZE - 100, SIZE - 1], // the end
    [`bytes=${SIZE - 10}-${SIZE + 1000}`, SIZE - 10, SIZE - 1], // a last byte past the end is cut
    [`bytes=${SIZE - 3_000_000}-`, SIZE - 3_000_000, SIZE - 1], // open-ended
    ['bytes=-1000', SIZE - 1000, SIZE - 1], // suffix
    ['bytes=7-7', 7, 7], // one byte
    [`bytes=-${SIZE + 5}`, 0, SIZE - 1], // a suffix longer than the file: all of it
  ];
  for (const [range, start, end] of cases) {
    const r = await get(range);
    t.is(r.status, 206, range);
    t.is(r.headers['content-range'], `bytes ${start}-${end}/${SIZE}`, range);
    t.is(r.headers['content-length'], String(end - start + 1), range);
    t.is(r.headers['accept-ranges'], 'bytes', range);
    t.is(r.body.length, end - start + 1, range);
    t.true(r.body.equals(source.subarray(start, end + 1)), `${range}: the bytes differ from the source`);
  }

  // The whole file.
  const whole = await get();
  t.is(whole.status, 200);
  t.is(whole.headers['content-length'], String(SIZE));
  t.is(whole.headers['accept-ranges'], 'bytes');
  t.is(whole.headers['content-type'], 'video/mp4');
  t.is(sha256(whole.body), sha256(source));

  // Several ranges at once, as a player seeking around does (seeded, so reproducible).
  const rnd = mulberry32(7);
  const parallel = Array.from({ length: 12 }, () => {
    const start = Math.floor(rnd() * SIZE);
    const len = 1 + Math.floor(rnd() * 3 * 1024 * 1024);
    return [start, Math.min(SIZE - 1, start + len - 1)] as const;
  });
  const replies = await Promise.all(parallel.map(([s, e]) => get(`bytes=${s}-${e}`)));
  replies.forEach((r, k) => {
    const [s, e] = parallel[k];
    t.is(r.status, 206);
    t.true(r.body.equals(source.subarray(s, e + 1)), `parallel range ${s}-${e}`);
  });

  // Unsatisfiable: 416 with the size.
  for (const range of [`bytes=${SIZE}-`, `bytes=${SIZE + 10}-${SIZE + 20}`, 'bytes=-0']) {
    const r = await get(range);
    t.is(r.status, 416, range);
    t.is(r.headers['content-range'], `bytes */${SIZE}`, range);
  }
  const emptyRange = await get('bytes=0-0', {}, '/empty.bin');
  t.is(emptyRange.status, 416, 'any range of an empty file');
  t.is(emptyRange.headers['content-range'], 'bytes */0');
  const empty = await get(undefined, {}, '/empty.bin');
  t.deepEqual([empty.status, empty.headers['content-length'], empty.body.length], [200, '0', 0]);

  // Range headers that are not one byte range are ignored: the whole (small) file, 200.
  for (const range of ['bytes=5-2', 'bytes=0-1,4-5', 'items=0-3', 'bytes=x-y', 'bytes=-']) {
    const r = await get(range, {}, '/small.txt');
    t.deepEqual([range, r.status, r.body.toString()], [range, 200, '0123456789']);
  }

  // HEAD: the headers of GET, no body.
  const head = await get(undefined, {}, '/movie.mp4', 'HEAD');
  t.deepEqual([head.status, head.headers['content-length'], head.headers['accept-ranges'], head.body.length], [200, String(SIZE), 'bytes', 0]);
  const headRange = await get('bytes=100-199', {}, '/movie.mp4', 'HEAD');
  t.deepEqual([headRange.status, headRange.headers['content-range'], headRange.headers['content-length'], headRange.body.length], [206, `bytes 100-199/${SIZE}`, '100', 0]);

  // If-Range: honoured with the current ETag, the whole file when it does not match.
  const small = await get(undefined, {}, '/small.txt', 'HEAD');
  t.regex(small.headers.etag ?? '', /^W\/"[0-9a-f]+-[0-9a-f]+"$/);
  t.is((await get('bytes=0-9', { 'If-Range': small.headers.etag! }, '/small.txt')).status, 206);
  t.is((await get('bytes=0-9', { 'If-Range': head.headers.etag! }, '/small.txt')).status, 200, "another file's ETag");
  const stale = await get('bytes=0-3', { 'If-Range': 'W/"0-0"' }, '/small.txt');
  t.deepEqual([stale.status, stale.body.toString()], [200, '0123456789']);
  t.is((await get('bytes=0-3', { 'If-Range': small.headers['last-modified']! }, '/small.txt')).status, 206);

  // Names, errors.
  const spaced = await get('bytes=1-3', {}, '/sub%20dir/a%20b.txt');
  t.deepEqual([spaced.status, spaced.body.toString()], [206, 'pac']);
  t.is((await get(undefined, {}, '/missing.mp4')).status, 404);
  t.is((await get(undefined, {}, '/sub%20dir')).status, 404, 'a directory');
  t.is((await get(undefined, {}, '/../../etc/passwd')).status, 404, '.. stays inside the directory');
  t.is((await get(undefined, {}, '/%2e%2e/%2e%2e/etc/passwd')).status, 404);
  t.is((await get(undefined, {}, '/outside')).status, 403, 'a symlink out of the directory');
  t.is((await request(server.port, '/movie.mp4', {}, 'DELETE')).status, 405);
  t.true(fs.existsSync(path.join(media, 'movie.mp4')));

  // A client that goes away after the first chunk: the server closes the file and carries on.
  const fdsBefore = fs.readdirSync(`/proc/${server.pid}/fd`).length;
  await new Promise<void>((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port: server.port, path: '/movie.mp4', agent: false }, (res) => {
      res.once('data', () => {
        req.destroy();
        resolve();
      });
    });
    req.on('error', (e: NodeJS.ErrnoException) => (e.code === 'ECONNRESET' ? resolve() : reject(e)));
  });
  let fdsAfter = 0;
  for (let k = 0; k < 100; k++) {
    fdsAfter = fs.readdirSync(`/proc/${server.pid}/fd`).length;
    if (fdsAfter <= fdsBefore) break;
    await sleep(50);
  }
  t.true(fdsAfter <= fdsBefore, `the server holds ${fdsAfter - fdsBefore} more descriptors after the aborted request`);
  const after = await get('bytes=-16');
  t.true(after.body.equals(source.subarray(SIZE - 16)));
  t.is(await server.stop(), 0, 'SIGTERM stops the server cleanly');
  t.notRegex(server.log(), /Error|error:/, 'nothing logged but the listening line');
});

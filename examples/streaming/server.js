#!/usr/bin/env node
// Serves the files of a directory -- a kvfs mount -- over HTTP with Range requests, the way a video
// player or a model loader reads a large file: a piece at a time, from wherever it seeks to.
// Plain Node (http, fs, path), no framework. Each response streams from the file with
// fs.createReadStream, so memory use does not depend on the file size; kvfs fetches the blocks
// a read needs, and each range reads only the blocks it covers.
//
//   node examples/streaming/server.js DIRECTORY [PORT [HOST]]      (default port 8080, 127.0.0.1)
//   curl -r 1000000-1999999 -o piece http://127.0.0.1:8080/video.mp4
//
// What it implements (RFC 9110):
//   GET and HEAD of regular files; other methods 405, directories and missing files 404, paths
//   leaving DIRECTORY (.., symlinks pointing outside) 403.
//   Accept-Ranges: bytes on every file response; Content-Length; Last-Modified; a weak ETag.
//   Range: bytes=FIRST-LAST, bytes=FIRST- (to the end), bytes=-N (the last N bytes). A LAST past
//   the end is cut to the end. A satisfiable single range: 206 with Content-Range. A range that
//   starts at or after the end of the file (or bytes=-0, or any range of an empty file): 416 with
//   Content-Range: bytes */SIZE. A Range header that is not a single byte range (several ranges,
//   another unit, malformed): ignored, as the RFC allows -- the whole file, 200.
//   If-Range with an ETag or date that no longer matches: the whole file, 200.
// It prints one line, "listening on http://HOST:PORT/", once it accepts connections (PORT 0 picks a
// free port), and stops on SIGINT/SIGTERM.
'use strict';

const fs = require('fs');
const http = require('http');
const path = require('path');
const { pipeline } = require('stream');

const TYPES = {
  '.bin': 'application/octet-stream',
  '.html': 'text/html; charset=utf-8',
  '.json': 'application/json',
  '.mkv': 'video/x-matroska',
  '.mp3': 'audio/mpeg',
  '.mp4': 'video/mp4',
  '.safetensors': 'application/octet-stream',
  '.txt': 'text/plain; charset=utf-8',
  '.webm': 'video/webm',
};

/**
 * The Range header against a file of `size` bytes:
 *   null                        no usable Range header: send the whole file
 *   { unsatisfiable: true }     416
 *   { start, end }              206 with bytes start..end (inclusive)
 */
function parseRange(header, size) {
  if (header === undefined) return null;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return null; // not one byte range: ignored
  if (m[1] === '') {
    // bytes=-N: the last N bytes
    const n = Number(m[2]);
    if (!Number.isSafeInteger(n)) return null;
    if (n === 0 || size === 0) return { unsatisfiable: true };
    return { start: Math.max(0, size - n), end: size - 1 };
  }
  const start = Number(m[1]);
  const last = m[2] === '' ? Infinity : Number(m[2]);
  if (!Number.isSafeInteger(start) || (last !== Infinity && !Number.isSafeInteger(last))) return null;
  if (last < start) return null; // invalid: ignored
  if (start >= size) return { unsatisfiable: true };
  return { start, end: Math.min(last, size - 1) };
}

/** The file under root that a request path names, or an HTTP status if there is none. */
function resolveFile(root, urlPath) {
  let rel;
  try {
    rel = decodeURIComponent(urlPath.split('?')[0]);
  } catch {
    return 400;
  }
  if (rel.includes('\0')) return 400;
  const file = path.join(root, path.normalize('/' + rel));
  if (file !== root && !file.startsWith(root + path.sep)) return 403;
  return file;
}

function createServer(directory) {
  const root = fs.realpathSync(directory);
  return http.createServer((req, res) => {
    const fail = (status, headers = {}) => {
      res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8', ...headers });
      res.end(req.method === 'HEAD' ? undefined : `${status} ${http.STATUS_CODES[status]}\n`);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return fail(405, { Allow: 'GET, HEAD' });
    const file = resolveFile(root, req.url || '/');
    if (typeof file === 'number') return fail(file);

    // One open file descriptor for stat and read: the size we announce is the size we read.
    fs.open(file, 'r', (err, fd) => {
      if (err) return fail(err.code === 'ENOENT' || err.code === 'ENOTDIR' ? 404 : err.code === 'EACCES' ? 403 : 500);
      const close = () => fs.close(fd, () => {});
      fs.realpath(file, (err2, real) => {
        if (err2 || (real !== root && !real.startsWith(root + path.sep))) {
          close();
          return fail(err2 ? 404 : 403); // a symlink out of the directory
        }
        fs.fstat(fd, (err3, st) => {
          if (err3 || !st.isFile()) {
            close();
            return fail(err3 ? 500 : 404);
          }
          const etag = `W/"${st.size.toString(16)}-${Math.floor(st.mtimeMs).toString(16)}"`;
          const headers = {
            'Accept-Ranges': 'bytes',
            'Content-Type': TYPES[path.extname(file).toLowerCase()] || 'application/octet-stream',
            'Last-Modified': st.mtime.toUTCString(),
            ETag: etag,
          };
          let range = parseRange(req.headers.range, st.size);
          const ifRange = req.headers['if-range'];
          if (range && ifRange !== undefined && ifRange !== etag && ifRange !== headers['Last-Modified']) range = null;
          if (range && range.unsatisfiable) {
            close();
            return fail(416, { 'Content-Range': `bytes */${st.size}`, 'Accept-Ranges': 'bytes' });
          }
          const start = range ? range.start : 0;
          const end = range ? range.end : st.size - 1;
          headers['Content-Length'] = String(end - start + 1);
          if (range) headers['Content-Range'] = `bytes ${start}-${end}/${st.size}`;
          res.writeHead(range ? 206 : 200, headers);
          if (req.method === 'HEAD' || st.size === 0) {
            close();
            return res.end();
          }
          // autoClose closes fd when the stream ends or is destroyed (client gone: pipeline destroys it).
          const stream = fs.createReadStream(file, { fd, start, end, highWaterMark: 1024 * 1024 });
          pipeline(stream, res, (e) => {
            if (e && e.code !== 'ERR_STREAM_PREMATURE_CLOSE') console.error(`${req.method} ${req.url}: ${e.message}`);
          });
        });
      });
    });
  });
}

module.exports = { createServer, parseRange };

if (require.main === module) {
  const [directory, port = '8080', host = '127.0.0.1'] = process.argv.slice(2);
  if (!directory || !fs.existsSync(directory) || !fs.statSync(directory).isDirectory()) {
    console.error('usage: node server.js DIRECTORY [PORT [HOST]]');
    process.exit(2);
  }
  const server = createServer(directory);
  server.listen(Number(port), host, () => {
    const a = server.address();
    console.log(`listening on http://${a.address}:${a.port}/`);
  });
  const stop = () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

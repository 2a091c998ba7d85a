// A workload process of `kvfs lab`: `node worker.js MODE JSON-ARGS`. Every file operation on a
// kvfs mount happens in one of these (never in the lab process, never in a daemon). The worker
// prints one JSON line, {"ok":true,"result":...} or {"ok":false,"error":"..."}, and exits.
// Timestamps are CLOCK_MONOTONIC milliseconds (nowMs), comparable across processes.

import * as fs from 'node:fs';
import * as path from 'node:path';
import { nowMs, toRanges } from './util';

type Args = Record<string, unknown>;
type Sqlite = typeof import('better-sqlite3');

const sleepArray = new Int32Array(new SharedArrayBuffer(4));
function sleepSync(ms: number): void {
  if (ms > 0) Atomics.wait(sleepArray, 0, 0, ms);
}

function code(err: unknown): string {
  const e = err as { code?: string; message?: string };
  return e?.code ?? e?.message?.split('\n')[0] ?? String(err);
}

function r4(v: number): number {
  return Math.round(v * 10_000) / 10_000;
}

// -----------------------------------------------------------------------------------------------
// 1. fsync: append 4 KiB + fsync

function fsyncAppend(a: Args) {
  const file = String(a.file);
  const count = Number(a.count);
  const warmup = Number(a.warmup ?? 10);
  const size = Number(a.size ?? 4096);
  const buf = Buffer.alloc(size, 0x61);
  const fd = fs.openSync(file, 'w');
  const total: number[] = [];
  const write: number[] = [];
  const fsync: number[] = [];
  let offset = 0;
  const started = nowMs();
  for (let i = 0; i < warmup + count; i++) {
    const t0 = nowMs();
    fs.writeSync(fd, buf, 0, size, offset);
    const t1 = nowMs();
    fs.fsyncSync(fd);
    const t2 = nowMs();
    offset += size;
    if (i >= warmup) {
      total.push(r4(t2 - t0));
      write.push(r4(t1 - t0));
      fsync.push(r4(t2 - t1));
    }
    if (a.maxMs !== undefined && nowMs() - started > Number(a.maxMs) && total.length >= 20) break;
  }
  fs.closeSync(fd);
  return { total, write, fsync, bytes: offset, elapsedMs: nowMs() - started };
}

// -----------------------------------------------------------------------------------------------
// 2. SQLite single-row autocommit transactions

function openDb(file: string, journal?: string, sync?: string, busyMs = 5000) {
  const Database = require('better-sqlite3') as Sqlite;
  const db = new Database(file, { timeout: busyMs });
  let journalMode: string | undefined;
  journalMode = String(journal ? db.pragma(`journal_mode = ${journal}`, { simple: true }) : db.pragma('journal_mode', { simple: true }));
  if (sync) db.pragma(`synchronous = ${sync}`);
  db.pragma(`busy_timeout = ${busyMs}`);
  return { db, journalMode };
}

function sqliteBench(a: Args) {
  const { db, journalMode } = openDb(String(a.db), String(a.journal), String(a.sync));
  db.exec('CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB)');
  const insert = db.prepare('INSERT INTO t (v) VALUES (?)');
  const payload = Buffer.alloc(100, 0x62);
  const warmup = Number(a.warmup ?? 5);
  const maxTx = Number(a.maxTx);
  const maxMs = Number(a.maxMs);
  const lat: number[] = [];
  const errors: Record<string, number> = {};
  for (let i = 0; i < warmup; i++) insert.run(payload);
  const started = nowMs();
  while (lat.length < maxTx && nowMs() - started < maxMs) {
    const t0 = nowMs();
    try {
      insert.run(payload);
      lat.push(r4(nowMs() - t0));
    } catch (err) {
      errors[code(err)] = (errors[code(err)] ?? 0) + 1;
      if (Object.values(errors).reduce((x, y) => x + y, 0) > 20) break;
    }
  }
  const elapsedMs = nowMs() - started;
  const rows = (db.prepare('SELECT count(*) AS n FROM t').get() as { n: number }).n;
  db.close();
  return { latencies: lat, elapsedMs, journalMode, errors, rows };
}

// -----------------------------------------------------------------------------------------------
// 3. Durability: numbered records, some fsynced; a log of what was acknowledged, outside the mount

export const RECORD = 32;

function record(seq: number): Buffer {
  const check = ((seq * 2654435761) >>> 0).toString(16).padStart(8, '0');
  const text = `R${String(seq).padStart(10, '0')} ${check} `.padEnd(RECORD - 1, '.') + '\n';
  return Buffer.from(text, 'latin1');
}

function durabilityWriter(a: Args) {
  const dir = String(a.dir);
  const fsyncEvery = Number(a.fsyncEvery);
  const maxMs = Number(a.maxMs);
  const pauseEvery = Number(a.pauseEvery ?? 0);
  const log = fs.openSync(String(a.log), 'a');
  const line = (text: string) => fs.writeSync(log, `${text}\n`);
  const files: Array<{ name: string; fd: number }> = [];
  let seq = 0;
  let stream = '';
  const started = nowMs();
  line(`S ${started}`);
  try {
    stream = 'j';
    fs.mkdirSync(dir, { recursive: true });
    files.push({ name: 'j', fd: fs.openSync(path.join(dir, 'journal.dat'), 'w') });
    stream = 's';
    files.push({ name: 's', fd: fs.openSync(path.join(dir, 'stream.dat'), 'w') });
    for (seq = 1; nowMs() - started < maxMs; seq++) {
      const rec = record(seq);
      for (const f of files) {
        stream = f.name;
        fs.writeSync(f.fd, rec, 0, RECORD, (seq - 1) * RECORD);
        line(`A ${f.name} ${seq} ${nowMs()}`);
      }
      if (seq % fsyncEvery === 0) {
        stream = 'j';
        fs.fsyncSync(files[0].fd);
        line(`F j ${seq} ${nowMs()}`);
      }
      if (pauseEvery && seq % pauseEvery === 0) sleepSync(1);
    }
  } catch (err) {
    line(`E ${stream} ${seq} ${code(err)} ${nowMs()}`);
    return { stoppedBy: code(err), records: seq - 1 };
  }
  for (const f of files) {
    try {
      fs.closeSync(f.fd);
    } catch {
      // the mount may be gone
    }
  }
  line(`D ${seq - 1} ${nowMs()}`);
  return { stoppedBy: 'time', records: seq - 1 };
}

/** Which numbered records a file holds: valid ones as ranges, and what else is there. */
function readRecords(a: Args) {
  let data: Buffer;
  try {
    data = fs.readFileSync(String(a.file));
  } catch (err) {
    return { error: code(err), size: 0, valid: [], invalid: 0, zero: 0, tailBytes: 0 };
  }
  const valid: number[] = [];
  let invalid = 0;
  let zero = 0;
  const n = Math.floor(data.length / RECORD);
  for (let i = 0; i < n; i++) {
    const chunk = data.subarray(i * RECORD, (i + 1) * RECORD);
    if (chunk.equals(record(i + 1))) valid.push(i + 1);
    else if (chunk.every((b) => b === 0)) zero++;
    else invalid++;
  }
  return { size: data.length, valid: toRanges(valid), invalid, zero, tailBytes: data.length - n * RECORD };
}

// -----------------------------------------------------------------------------------------------
// 4. Staleness: a writer updates a file with increasing values; readers poll it

function staleContent(v: number): Buffer {
  return Buffer.from(`v=${String(v).padStart(8, '0')}\n`.padEnd(16 + v, '.'), 'latin1');
}

function staleWriter(a: Args) {
  const file = String(a.file);
  const count = Number(a.count);
  const intervalMs = Number(a.intervalMs);
  // The lab created the file with value 0 (16 bytes) before the readers started.
  sleepSync(Number(a.startDelayMs));
  const updates: Array<[number, number, number]> = [];
  const errors: Record<string, number> = {};
  for (let v = 1; v <= count; v++) {
    const t0 = nowMs();
    try {
      const fd = fs.openSync(file, 'r+');
      const c = staleContent(v);
      fs.writeSync(fd, c, 0, c.length, 0);
      fs.closeSync(fd);
      updates.push([v, r4(t0), r4(nowMs())]);
    } catch (err) {
      errors[code(err)] = (errors[code(err)] ?? 0) + 1;
    }
    sleepSync(intervalMs);
  }
  return { updates, errors };
}

function staleReader(a: Args) {
  const file = String(a.file);
  const mode = String(a.mode);
  const durationMs = Number(a.durationMs);
  const pauseMs = Number(a.pauseMs);
  // Polls for durationMs, and past that (up to maxExtraMs more) until it has seen untilValue, the
  // writer's last value: a writer slowed down by load must not outlast the polling.
  const untilValue = a.untilValue === undefined ? -Infinity : Number(a.untilValue);
  const maxExtraMs = Number(a.maxExtraMs ?? 0);
  const samples: Array<[number, number, number]> = [];
  const errors: Record<string, number> = {};
  const started = nowMs();
  let last = -Infinity;
  for (;;) {
    const elapsed = nowMs() - started;
    if (elapsed >= durationMs && (last >= untilValue || elapsed >= durationMs + maxExtraMs)) break;
    const t0 = nowMs();
    try {
      let v: number;
      if (mode === 'stat') {
        v = fs.statSync(file).size - 16;
      } else {
        const text = fs.readFileSync(file, 'latin1');
        const m = /^v=(\d+)/.exec(text);
        v = m ? Number(m[1]) : -1;
      }
      samples.push([r4(t0), r4(nowMs()), v]);
      last = Math.max(last, v);
    } catch (err) {
      errors[code(err)] = (errors[code(err)] ?? 0) + 1;
    }
    sleepSync(pauseMs);
  }
  return { samples, errors };
}

// -----------------------------------------------------------------------------------------------
// 6. Concurrent SQLite writers; 7. a transactional workload through a backend stall

function sqliteInit(a: Args) {
  const { db, journalMode } = openDb(String(a.db), String(a.journal), a.sync ? String(a.sync) : undefined);
  db.exec('CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, writer INTEGER NOT NULL, seq INTEGER NOT NULL, payload BLOB)');
  db.close();
  return { journalMode };
}

function sqliteWriter(a: Args) {
  const writer = Number(a.writer);
  const rows = Number(a.rows);
  const maxMs = Number(a.maxMs);
  let started = nowMs();
  const acked: number[] = [];
  const errors: Record<string, number> = {};
  const messages: string[] = [];
  const latencies: number[] = [];
  let db: import('better-sqlite3').Database | undefined;
  let journalMode: string | undefined;
  const note = (err: unknown) => {
    errors[code(err)] = (errors[code(err)] ?? 0) + 1;
    if (messages.length < 5) messages.push(`${code(err)}: ${(err as Error).message?.split('\n')[0]}`);
  };
  const payload = Buffer.alloc(200, 0x63);
  while (a.startAt !== undefined && nowMs() < Number(a.startAt)) sleepSync(1);
  started = nowMs();
  let attempted = 0;
  for (let seq = 1; seq <= rows && nowMs() - started < maxMs; seq++) {
    attempted++;
    try {
      if (!db?.open) {
        ({ db, journalMode } = openDb(String(a.db), undefined, String(a.sync), Number(a.busyTimeoutMs)));
      }
      const t0 = nowMs();
      db.prepare('INSERT INTO t (writer, seq, payload) VALUES (?, ?, ?)').run(writer, seq, payload);
      latencies.push(r4(nowMs() - t0));
      acked.push(seq);
    } catch (err) {
      note(err);
      if (/CORRUPT|NOTADB|CANTOPEN/.test(code(err))) {
        try {
          db?.close();
        } catch {
          // already broken
        }
        db = undefined;
      }
      sleepSync(5);
    }
  }
  try {
    db?.close();
  } catch (err) {
    note(err);
  }
  return { acked: toRanges(acked), attempted, errors, messages, latencies, elapsedMs: nowMs() - started, journalMode };
}

function sqliteCheck(a: Args) {
  const Database = require('better-sqlite3') as Sqlite;
  let db;
  try {
    db = new Database(String(a.db), { timeout: 10_000 });
  } catch (err) {
    return { openError: `${code(err)}: ${(err as Error).message}` };
  }
  const out: {
    integrity?: string[];
    integrityError?: string;
    rows?: number;
    byWriter?: Record<string, Array<[number, number]>>;
    readError?: string;
    journalMode?: string;
  } = {};
  try {
    out.journalMode = String(db.pragma('journal_mode', { simple: true }));
  } catch (err) {
    out.readError = `${code(err)}: ${(err as Error).message}`;
  }
  try {
    out.integrity = (db.pragma('integrity_check') as Array<{ integrity_check: string }>).map((r) => r.integrity_check).slice(0, 20);
  } catch (err) {
    out.integrityError = `${code(err)}: ${(err as Error).message}`;
  }
  try {
    const rows = db.prepare('SELECT writer, seq FROM t ORDER BY writer, seq').all() as Array<{ writer: number; seq: number }>;
    out.rows = rows.length;
    const by: Record<string, number[]> = {};
    for (const r of rows) (by[String(r.writer)] ??= []).push(r.seq);
    out.byWriter = Object.fromEntries(Object.entries(by).map(([w, seqs]) => [w, toRanges(seqs)]));
  } catch (err) {
    out.readError = `${code(err)}: ${(err as Error).message}`;
  }
  try {
    db.close();
  } catch {
    // ignore
  }
  return out;
}

function stallWorkload(a: Args) {
  const durationMs = Number(a.durationMs);
  const started = nowMs();
  const samples: Array<[number, number, string]> = [];
  const acked: number[] = [];
  let db: import('better-sqlite3').Database | undefined;
  let journalMode: string | undefined;
  const payload = Buffer.alloc(200, 0x64);
  for (let seq = 1; nowMs() - started < durationMs; seq++) {
    const t0 = nowMs();
    try {
      if (!db?.open) ({ db, journalMode } = openDb(String(a.db), String(a.journal), String(a.sync)));
      db.prepare('INSERT INTO t (writer, seq, payload) VALUES (1, ?, ?)').run(seq, payload);
      samples.push([r4(t0), r4(nowMs()), '']);
      acked.push(seq);
    } catch (err) {
      samples.push([r4(t0), r4(nowMs()), code(err)]);
      if (!/BUSY|LOCKED/.test(code(err))) {
        try {
          db?.close();
        } catch {
          // broken connection
        }
        db = undefined;
      }
      sleepSync(10);
    }
  }
  try {
    db?.close();
  } catch {
    // reported through the samples already
  }
  return { samples, acked: toRanges(acked), journalMode };
}

// -----------------------------------------------------------------------------------------------

function readText(a: Args) {
  return { text: fs.readFileSync(String(a.file), 'utf8') };
}

function writeText(a: Args) {
  fs.writeFileSync(String(a.file), String(a.text));
  return {};
}

const MODES: Record<string, (a: Args) => unknown> = {
  fsyncAppend,
  sqliteBench,
  durabilityWriter,
  readRecords,
  staleWriter,
  staleReader,
  sqliteInit,
  sqliteWriter,
  sqliteCheck,
  stallWorkload,
  readText,
  writeText,
};

if (require.main === module) {
  const [mode, json] = process.argv.slice(2);
  let out: string;
  try {
    const fn = MODES[mode];
    if (!fn) throw new Error(`unknown worker mode ${mode}`);
    out = JSON.stringify({ ok: true, result: fn(JSON.parse(json ?? '{}') as Args) });
  } catch (err) {
    out = JSON.stringify({ ok: false, error: `${code(err)}: ${(err as Error).message?.split('\n')[0]}` });
  }
  process.stdout.write(`${out}\n`, () => process.exit(0));
}

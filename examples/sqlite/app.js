#!/usr/bin/env node
// An application that keeps its SQLite database on kvfs, with the settings that are safe there
// (README.md in this directory explains them). It records "events": each a random payload and its
// SHA-256, written in transactions that also update a running total in another table, so that a
// check can tell a torn or half-applied transaction from a whole one.
//
//   node examples/sqlite/app.js DB write [--rows N] [--batch N] [--journal delete|truncate|wal] [--print-commits]
//   node examples/sqlite/app.js DB check
//
// write: appends N events (default 1000), --batch per transaction (default 50); prints a summary
//        line, and with --print-commits a line "committed TOTAL" after every commit returns.
// check: PRAGMA integrity_check, every payload against its digest, and the running total against
//        the number of rows; prints them, exits 1 if anything is wrong.
//
// Uses better-sqlite3 (a dependency of kvfs, so it is in the repository's node_modules).
'use strict';

const crypto = require('crypto');
const Database = require('better-sqlite3');

function usage() {
  console.error('usage: node app.js DB write [--rows N] [--batch N] [--journal delete|truncate|wal] [--print-commits]\n       node app.js DB check');
  process.exit(2);
}

/**
 * Open with the settings that are safe on kvfs:
 * - journal_mode DELETE (or TRUNCATE) by default: works from any number of hosts, one at a time.
 *   WAL only when asked: it keeps its index in the -shm file through shared memory, which is only
 *   shared between processes of one mount on one host.
 * - synchronous FULL: every commit fsyncs the journal and the database before it returns, and
 *   kvfs turns each fsync into stored blocks plus a committed metadata transaction.
 * - busy_timeout: wait for another writer *on this mount* instead of failing at once. (kvfs does
 *   not pass POSIX locks to the daemon: writers on other mounts are not seen; see README.md.)
 */
function open(file, journal) {
  const db = new Database(file);
  db.pragma('busy_timeout = 5000');
  if (journal) {
    const mode = db.pragma(`journal_mode = ${journal}`, { simple: true });
    if (String(mode).toLowerCase() !== journal) throw new Error(`journal_mode ${journal} refused (got ${mode})`);
  }
  db.pragma('synchronous = FULL');
  return db;
}

function schema(db) {
  db.exec(`
    CREATE TABLE IF NOT EXISTS events (
      id      INTEGER PRIMARY KEY,
      at      TEXT NOT NULL,
      payload BLOB NOT NULL,
      digest  TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS events_digest ON events (digest);
    CREATE TABLE IF NOT EXISTS totals (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT OR IGNORE INTO totals (name, value) VALUES ('events', 0);
  `);
}

function write(file, opts) {
  const db = open(file, opts.journal);
  schema(db);
  const insert = db.prepare('INSERT INTO events (at, payload, digest) VALUES (?, ?, ?)');
  const bump = db.prepare("UPDATE totals SET value = value + ? WHERE name = 'events'");
  const total = db.prepare("SELECT value FROM totals WHERE name = 'events'").pluck();
  const batch = db.transaction((n) => {
    for (let i = 0; i < n; i++) {
      const payload = crypto.randomBytes(64 + crypto.randomInt(8192));
      insert.run(new Date().toISOString(), payload, crypto.createHash('sha256').update(payload).digest('hex'));
    }
    bump.run(n);
  });
  const started = Date.now();
  let done = 0;
  let commits = 0;
  while (done < opts.rows) {
    const n = Math.min(opts.batch, opts.rows - done);
    batch(n); // BEGIN ... COMMIT; returns after the commit's fsyncs
    done += n;
    commits++;
    if (opts.printCommits) console.log(`committed ${total.get()}`);
  }
  const mode = db.pragma('journal_mode', { simple: true });
  const sync = db.pragma('synchronous', { simple: true });
  console.log(
    `wrote ${done} events in ${commits} transactions in ${Date.now() - started} ms ` +
      `(journal_mode=${mode}, synchronous=${sync === 2 ? 'FULL' : sync}); events now ${total.get()}`,
  );
  db.close();
}

function check(file) {
  const db = open(file, undefined);
  const integrity = db.pragma('integrity_check', { simple: true });
  const rows = db.prepare('SELECT count(*) FROM events').pluck().get();
  const total = db.prepare("SELECT value FROM totals WHERE name = 'events'").pluck().get();
  let bad = 0;
  for (const row of db.prepare('SELECT payload, digest FROM events').iterate()) {
    if (crypto.createHash('sha256').update(row.payload).digest('hex') !== row.digest) bad++;
  }
  const journal = db.pragma('journal_mode', { simple: true });
  db.close();
  console.log(`integrity_check: ${integrity}`);
  console.log(`events: ${rows} (running total ${total})`);
  console.log(`payload digests: ${bad === 0 ? 'ok' : `${bad} wrong`}`);
  console.log(`journal_mode: ${journal}`);
  return integrity === 'ok' && rows === total && bad === 0;
}

function main(argv) {
  const [file, command, ...rest] = argv;
  if (!file || !command) usage();
  const opts = { rows: 1000, batch: 50, journal: 'delete', printCommits: false };
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i];
    if (a === '--rows') opts.rows = Number(rest[++i]);
    else if (a === '--batch') opts.batch = Number(rest[++i]);
    else if (a === '--journal') opts.journal = String(rest[++i]).toLowerCase();
    else if (a === '--print-commits') opts.printCommits = true;
    else usage();
  }
  if (!(opts.rows >= 0 && opts.batch > 0) || !['delete', 'truncate', 'wal'].includes(opts.journal)) usage();
  if (command === 'write') write(file, opts);
  else if (command === 'check') process.exitCode = check(file) ? 0 : 1;
  else usage();
}

main(process.argv.slice(2));

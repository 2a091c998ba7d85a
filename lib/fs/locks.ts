// Locks that reach across mounts: POSIX record locks (fcntl/lockf) and BSD locks (flock), kept
// in the metadata store so that every mount of a volume sees them (JuiceFS keeps them in its
// metadata engine the same way). The kernel hands each lock request of this mount to the daemon
// (the binding's lock/flock ops), so processes on one mount are arbitrated here as well.
//
// Keys (see lib/meta/schema.ts):
//   L{ino}            a version that every lock change on the inode rewrites: the key every lock
//                     transaction reads, so two mounts changing locks on one file conflict and
//                     one of them retries (the records below are only scanned)
//   L{ino}/{session}  that session's record for the inode (JSON): its exact locks, or a claim
//
// Claims keep the common case fast. A lock request on an inode no other mount has locks on (or
// waits for) claims the inode: the record says only "claimed", and from then on this daemon
// arbitrates that inode's locks in memory, with no transaction per lock (SQLite takes and drops
// several locks per transaction). A mount that needs a lock on a claimed inode writes its record
// with a "waiting" mark; the claimer, told by its watch on the volume, replaces its claim with
// its exact locks, and from then on every change on that inode is a transaction on exact records
// until none but one mount's remain. An idle claim (no locks held for a while) is given up.
//
// A lock belongs to a session and an owner (the kernel's lock owner: a process's file table for
// POSIX locks, an open file description for flock). Records of a session whose session key is
// gone (a mount that died, or one cut off past --session-ttl) count for nothing and are removed
// by the next change on that inode. The embedded engine serves one daemon at a time, so there
// every other session is gone.
//
// Waiting (F_SETLKW, flock without LOCK_NB): on a claimed inode, until this daemon's own state
// changes; otherwise by polling the store, 10 ms at first and then up to every 100 ms. A wait
// ends when the lock is granted, when its owner unlocks (its process closed the file: EINTR),
// when the waiting process gets a signal (the kernel interrupts the request, the binding aborts
// `interrupted`: EINTR, so Ctrl-C, alarms and `flock -w` work), or when the mount shuts down (EINTR).

import { FsError } from '../errors';
import type { KvEngine, KvTxn } from '../meta/kv';
import { keys } from '../meta/schema';

export const F_RDLCK = 0;
export const F_WRLCK = 1;
export const F_UNLCK = 2;
export const F_GETLK = 5;
export const F_SETLK = 6;
export const F_SETLKW = 7;
export const LOCK_SH = 1;
export const LOCK_EX = 2;
export const LOCK_NB = 4;
export const LOCK_UN = 8;

/** The largest offset (OFFSET_MAX): a lock with length 0 reaches it. */
const END_OF_FILE = (1n << 63n) - 1n;
/** A claim with no locks held is given up after this long, ms. */
const IDLE_CLAIM_MS = 2000;
/** How long a request that must not wait waits for a claimer to publish its locks, ms. */
const CLAIM_ANSWER_MS = 3000;
/** A waiting mark is written again this often, in case the claimer's watch missed it, ms. */
const WANT_NUDGE_MS = 1000;

/** A POSIX lock request or answer, as the binding passes it. */
export interface RecordLock {
  type: number;
  start: bigint;
  /** 0n: to the end of the file. */
  len: bigint;
  pid: number;
}

/** One lock: kind, owner, exclusive or shared, range (inclusive end), pid. */
interface Held {
  kind: 'posix' | 'flock';
  owner: string;
  exclusive: boolean;
  start: bigint;
  end: bigint;
  pid: number;
}

/** A session's record as stored: a claim, or exact locks (and whether it waits for a claim). */
interface LockRecord {
  claim: boolean;
  waiting: boolean;
  held: Held[];
}

interface StoredRecord {
  c?: 1;
  w?: 1;
  l?: Array<{ k: 'p' | 'f'; o: string; x: boolean; s: string; e: string; p: number }>;
}

function encode(r: LockRecord): Buffer {
  const stored: StoredRecord = {};
  if (r.claim) stored.c = 1;
  if (r.waiting) stored.w = 1;
  if (!r.claim && r.held.length > 0) {
    stored.l = r.held.map((h) => ({ k: h.kind === 'posix' ? 'p' : 'f', o: h.owner, x: h.exclusive, s: String(h.start), e: String(h.end), p: h.pid }));
  }
  return Buffer.from(JSON.stringify(stored));
}

function decode(value: Buffer): LockRecord {
  const stored = JSON.parse(value.toString()) as StoredRecord;
  return {
    claim: stored.c === 1,
    waiting: stored.w === 1,
    held: (stored.l ?? []).map((h) => ({ kind: h.k === 'p' ? 'posix' : 'flock', owner: h.o, exclusive: h.x, start: BigInt(h.s), end: BigInt(h.e), pid: h.p })),
  };
}

/** What a request asks for. `exclusive` undefined: unlock. */
interface Want {
  kind: 'posix' | 'flock';
  owner: string;
  exclusive: boolean | undefined;
  start: bigint;
  end: bigint;
  pid: number;
}

function conflicts(a: Held, b: Want): boolean {
  return a.kind === b.kind && a.owner !== b.owner && (a.exclusive || b.exclusive === true) && a.start <= b.end && b.start <= a.end;
}

/** The locks with `want` applied: the owner's range cut out (POSIX) or dropped (flock), then added. */
function apply(held: Held[], want: Want): Held[] {
  const out: Held[] = [];
  for (const h of held) {
    if (h.kind !== want.kind || h.owner !== want.owner) out.push(h);
    else if (want.kind === 'posix' && (h.end < want.start || h.start > want.end)) out.push(h);
    else if (want.kind === 'posix') {
      // A new lock or an unlock replaces the owner's locks over its range: keep what sticks out.
      if (h.start < want.start) out.push({ ...h, end: want.start - 1n });
      if (h.end > want.end) out.push({ ...h, start: want.end + 1n });
    }
  }
  if (want.exclusive !== undefined) {
    out.push({ kind: want.kind, owner: want.owner, exclusive: want.exclusive, start: want.start, end: want.end, pid: want.pid });
  }
  return out;
}

/**
 * Rewrites the inode's lock version, the key every lock transaction reads (so concurrent changes
 * conflict), or deletes it when no record is left on the inode.
 */
function touchVersion(tx: KvTxn, ino: number, recordsLeft = true): void {
  if (recordsLeft) tx.put(keys.lockVersion(ino), Buffer.from(String(Date.now())));
  else tx.delete(keys.lockVersion(ino));
}

/** This daemon's view of one inode's locks. */
interface InodeState {
  /** claimed: arbitrated here, in memory. shared: every change is a transaction on exact records. */
  mode: 'claimed' | 'shared';
  /** This session's locks on the inode (in shared mode, as last committed). */
  held: Held[];
  /** Serializes this daemon's changes to the inode's locks. */
  queue: Promise<unknown>;
  /** Wakes this daemon's waiters when the inode's locks change here. */
  changed: Set<() => void>;
  /** Requests in progress; the state is dropped only when none are. */
  pending: number;
  idle?: NodeJS.Timeout;
}

/** How a lock was granted: decided here on a claimed inode, or through the store. */
export type Granted = 'claim' | 'store';

/** What one attempt found. */
type Attempt = { outcome: 'done' } | { outcome: 'blocked'; by?: Held } | { outcome: 'claimed' };

export class LockTable {
  private readonly inodes = new Map<number, InodeState>();
  /** Waiting requests, by inode/kind/owner; an unlock by the owner (or shutdown) cancels them. */
  private readonly waiting = new Map<string, Set<() => void>>();
  private closed = false;

  constructor(
    private readonly kv: KvEngine,
    /** The current session id; undefined while there is none (locks then fail with EIO). */
    private readonly sessionId: () => string | undefined,
    /** Commits what this mount wrote to the inode: called before a claim is given to another mount. */
    private readonly beforeShare: (ino: number) => Promise<void>,
  ) {}

  /**
   * fcntl F_GETLK / F_SETLK / F_SETLKW on `ino` for `owner`. F_GETLK answers with the conflicting
   * lock (type F_UNLCK: none); the others with `granted`: 'claim' when decided here on a claimed
   * inode (no other mount can have held a lock on it since), 'store' when through the store.
   */
  async recordLock(ino: number, cmd: number, lock: RecordLock, owner: bigint, interrupted?: AbortSignal): Promise<{ conflict?: RecordLock; granted: Granted }> {
    if (lock.start < 0n || lock.len < 0n) throw new FsError('EINVAL', 'lock range');
    const end = lock.len === 0n ? END_OF_FILE : lock.start + lock.len - 1n;
    if (end > END_OF_FILE) throw new FsError('EOVERFLOW', 'lock range');
    const unlock = lock.type === F_UNLCK;
    if (!unlock && lock.type !== F_RDLCK && lock.type !== F_WRLCK) throw new FsError('EINVAL', `lock type ${lock.type}`);
    const want: Want = { kind: 'posix', owner: String(owner), exclusive: unlock ? undefined : lock.type === F_WRLCK, start: lock.start, end, pid: lock.pid };
    if (cmd === F_GETLK) {
      if (unlock) throw new FsError('EINVAL', 'F_GETLK with F_UNLCK');
      const { by, granted } = await this.request(ino, want, { wait: false, test: true });
      if (!by) return { conflict: { type: F_UNLCK, start: lock.start, len: lock.len, pid: 0 }, granted };
      return { conflict: { type: by.exclusive ? F_WRLCK : F_RDLCK, start: by.start, len: by.end === END_OF_FILE ? 0n : by.end - by.start + 1n, pid: by.pid }, granted };
    }
    if (cmd !== F_SETLK && cmd !== F_SETLKW) throw new FsError('EINVAL', `lock command ${cmd}`);
    return { granted: (await this.request(ino, want, { wait: cmd === F_SETLKW, test: false, interrupted })).granted };
  }

  /** flock(2): LOCK_SH, LOCK_EX or LOCK_UN, with LOCK_NB not to wait. `granted` as for recordLock. */
  async flock(ino: number, op: number, owner: bigint, interrupted?: AbortSignal): Promise<Granted> {
    const base = op & ~LOCK_NB;
    if (base !== LOCK_SH && base !== LOCK_EX && base !== LOCK_UN) throw new FsError('EINVAL', `flock operation ${op}`);
    const want: Want = { kind: 'flock', owner: String(owner), exclusive: base === LOCK_UN ? undefined : base === LOCK_EX, start: 0n, end: END_OF_FILE, pid: 0 };
    return (await this.request(ino, want, { wait: (op & LOCK_NB) === 0, test: false, interrupted })).granted;
  }

  /** Whether this session holds any lock on the inode. */
  holdsAny(ino: number): boolean {
    return (this.inodes.get(ino)?.held.length ?? 0) > 0;
  }

  /** Whether this mount has claimed the inode (no other mount holds or waits for locks on it). */
  claimed(ino: number): boolean {
    return this.inodes.get(ino)?.mode === 'claimed';
  }

  /**
   * A change under L{ino}/ seen by the volume's watch. Another session's record on an inode this
   * daemon has claimed means it wants a lock there: publish ours and share the inode.
   */
  onRecordChanged(key: string, value: Buffer | undefined): void {
    const m = /^L([0-9a-f]{16})\/(.+)$/s.exec(key);
    if (!m || value === undefined) return;
    const ino = parseInt(m[1], 16);
    const state = this.inodes.get(ino);
    if (!state || state.mode !== 'claimed' || m[2] === this.sessionId()) return;
    void this.serialize(state, () => this.share(ino, state)).catch(() => undefined);
  }

  /** Ends every wait and forgets every claim (the mount is going away). */
  close(): void {
    this.closed = true;
    this.forgetAll();
  }

  /** The session changed (lost, then a new one): what was held or claimed under the old one is gone. */
  sessionChanged(): void {
    this.forgetAll();
  }

  private forgetAll(): void {
    for (const state of this.inodes.values()) {
      clearTimeout(state.idle);
      for (const wake of state.changed) wake();
    }
    this.inodes.clear();
    for (const set of this.waiting.values()) for (const cancel of set) cancel();
    this.waiting.clear();
  }

  /**
   * Applies `want` (or with `test`, only looks for a conflict, F_GETLK), waiting for conflicting
   * locks to go when `wait`. Resolves with the conflicting lock for a test, else undefined.
   * `interrupted` aborting (the waiting process got a signal) ends a wait with EINTR.
   */
  private async request(
    ino: number,
    want: Want,
    how: { wait: boolean; test: boolean; interrupted?: AbortSignal },
  ): Promise<{ by?: Held; granted: Granted }> {
    const cancelKey = `${ino}/${want.kind}/${want.owner}`;
    if (want.exclusive === undefined) {
      // The owner unlocks (or its process closed the file): a lock it still waits for is not wanted.
      const set = this.waiting.get(cancelKey);
      if (set) for (const cancel of set) cancel();
      // libfuse unlocks at every close: nothing to do unless this session has locks here.
      if (!this.holdsAny(ino)) return { granted: 'claim' };
    }
    let cancelled = false;
    const cancel = (): void => {
      cancelled = true;
      wakeNow?.();
    };
    let wakeNow: (() => void) | undefined;
    let set = this.waiting.get(cancelKey);
    if (!set) this.waiting.set(cancelKey, (set = new Set()));
    set.add(cancel);
    const interrupted = how.interrupted;
    interrupted?.addEventListener('abort', cancel, { once: true });
    if (interrupted?.aborted) cancelled = true;
    const state = this.stateOf(ino);
    state.pending += 1;
    let markedWaiting = false;
    try {
      const started = Date.now();
      let lastNudge = 0;
      let delay = 10;
      for (;;) {
        if (this.closed || cancelled) throw new FsError('EINTR', 'lock wait ended');
        const nudge = Date.now() - lastNudge >= WANT_NUDGE_MS;
        const granted: Granted = state.mode === 'claimed' ? 'claim' : 'store';
        const attempt = await this.serialize(state, () => (state.mode === 'claimed' ? this.tryLocal(ino, state, want, how.test) : this.tryShared(ino, state, want, how.test, nudge)));
        if (attempt.outcome === 'claimed' && nudge) lastNudge = Date.now();
        markedWaiting = attempt.outcome === 'claimed';
        if (attempt.outcome === 'done') return { granted };
        if (attempt.outcome === 'blocked') {
          if (how.test) return { by: attempt.by, granted };
          if (!how.wait) throw new FsError('EAGAIN', `inode ${ino} is locked by another owner`);
        }
        // Claimed elsewhere: even a request that must not wait waits for the claimer's answer.
        if (attempt.outcome === 'claimed' && !how.wait && Date.now() - started > CLAIM_ANSWER_MS) {
          throw new FsError('EAGAIN', `inode ${ino} is locked by another mount that did not answer`);
        }
        const local = state.mode === 'claimed' && attempt.outcome === 'blocked';
        await new Promise<void>((resolve) => {
          const timer = setTimeout(done, local ? 100 : delay * (0.5 + Math.random()));
          function done(): void {
            clearTimeout(timer);
            state.changed.delete(done);
            wakeNow = undefined;
            resolve();
          }
          wakeNow = done;
          if (local) state.changed.add(done);
        });
        if (!local) delay = Math.min(100, delay * 2);
      }
    } finally {
      interrupted?.removeEventListener('abort', cancel);
      set.delete(cancel);
      if (set.size === 0) this.waiting.delete(cancelKey);
      state.pending -= 1;
      // Gave up while another mount's claim was in the way: take back the waiting mark.
      if (markedWaiting && !this.closed) void this.serialize(state, () => this.unmarkWaiting(ino)).catch(() => undefined);
      if (state.pending === 0 && state.mode === 'shared' && state.held.length === 0 && this.inodes.get(ino) === state) this.inodes.delete(ino);
    }
  }

  private stateOf(ino: number): InodeState {
    let state = this.inodes.get(ino);
    if (!state) this.inodes.set(ino, (state = { mode: 'shared', held: [], queue: Promise.resolve(), changed: new Set(), pending: 0 }));
    return state;
  }

  private serialize<T>(state: InodeState, fn: () => Promise<T>): Promise<T> {
    const result = state.queue.then(fn);
    state.queue = result.catch(() => undefined);
    return result;
  }

  /** After a change: wakes this daemon's waiters; an idle claim is given up after a while. */
  private settle(ino: number, state: InodeState): void {
    for (const wake of [...state.changed]) wake();
    if (state.held.length > 0 || this.inodes.get(ino) !== state) return;
    if (state.mode === 'claimed') {
      // Keep an idle claim a little (SQLite locks and unlocks at every transaction), then give it up.
      clearTimeout(state.idle);
      state.idle = setTimeout(() => void this.serialize(state, () => this.release(ino, state)).catch(() => undefined), IDLE_CLAIM_MS);
      state.idle.unref();
    }
  }

  /** A claimed inode: decided here, no transaction. */
  private async tryLocal(ino: number, state: InodeState, want: Want, test: boolean): Promise<Attempt> {
    const by = want.exclusive === undefined ? undefined : state.held.find((h) => conflicts(h, want));
    if (by) return { outcome: 'blocked', by };
    if (test) return { outcome: 'done' };
    clearTimeout(state.idle);
    state.held = apply(state.held, want);
    this.settle(ino, state);
    return { outcome: 'done' };
  }

  /** A shared (or not yet known) inode: one transaction on the exact records. */
  private async tryShared(ino: number, state: InodeState, want: Want, test: boolean, nudge: boolean): Promise<Attempt> {
    const me = this.currentSession();
    const result = await this.kv.txn(async (tx): Promise<{ attempt: Attempt; claimed?: boolean; held?: Held[] }> => {
      const { mine, others, dead } = await this.readRecords(tx, ino, me);
      const mineHeld = mine?.held ?? [];
      for (const key of dead) tx.delete(key);
      if (others.some((o) => o.claim)) {
        // Ask the claimer to publish its locks (its watch sees our record change).
        if (!mine?.waiting || nudge) {
          tx.put(keys.lock(ino, me), encode({ claim: false, waiting: true, held: mineHeld }));
          touchVersion(tx, ino);
        } else if (dead.length > 0) touchVersion(tx, ino);
        return { attempt: { outcome: 'claimed' } };
      }
      const all = [...others.flatMap((o) => o.held), ...mineHeld];
      const by = want.exclusive === undefined ? undefined : all.find((h) => conflicts(h, want));
      if (by || test) {
        // No claim in the way any more: our waiting mark has done its work.
        if (mine?.waiting) {
          if (mineHeld.length > 0) tx.put(keys.lock(ino, me), encode({ claim: false, waiting: false, held: mineHeld }));
          else tx.delete(keys.lock(ino, me));
        }
        if (dead.length > 0 || mine?.waiting) touchVersion(tx, ino);
        return { attempt: by ? { outcome: 'blocked', by } : { outcome: 'done' } };
      }
      const next = apply(mineHeld, want);
      const othersActive = others.some((o) => o.waiting || o.held.length > 0);
      const claim = !othersActive && want.exclusive !== undefined;
      if (claim) tx.put(keys.lock(ino, me), encode({ claim: true, waiting: false, held: [] }));
      else if (next.length > 0) tx.put(keys.lock(ino, me), encode({ claim: false, waiting: false, held: next }));
      else tx.delete(keys.lock(ino, me));
      // Nothing left on the inode: leave no key behind.
      touchVersion(tx, ino, claim || next.length > 0 || others.length > 0);
      return { attempt: { outcome: 'done' }, claimed: claim, held: next };
    });
    // Only once committed (a transaction function may run several times).
    if (result.held) {
      state.held = result.held;
      if (result.claimed) state.mode = 'claimed';
      this.settle(ino, state);
    }
    return result.attempt;
  }

  /** Takes back this session's waiting mark on the inode (a request gave up). */
  private async unmarkWaiting(ino: number): Promise<void> {
    const me = this.currentSession();
    await this.kv.txn(async (tx) => {
      const { mine } = await this.readRecords(tx, ino, me);
      if (!mine?.waiting) return;
      if (mine.held.length > 0) tx.put(keys.lock(ino, me), encode({ ...mine, waiting: false }));
      else tx.delete(keys.lock(ino, me));
      touchVersion(tx, ino);
    });
  }

  /** Another mount wants a lock on an inode we claimed: publish our exact locks instead. */
  private async share(ino: number, state: InodeState): Promise<void> {
    if (state.mode !== 'claimed' || this.inodes.get(ino) !== state) return;
    const me = this.currentSession();
    // What was written under our locks must be committed before another mount can take one.
    await this.beforeShare(ino);
    await this.kv.txn(async (tx) => {
      await tx.get(keys.lockVersion(ino));
      if (state.held.length > 0) tx.put(keys.lock(ino, me), encode({ claim: false, waiting: false, held: state.held }));
      else tx.delete(keys.lock(ino, me));
      touchVersion(tx, ino);
    });
    clearTimeout(state.idle);
    state.mode = 'shared';
    this.settle(ino, state);
    if (state.pending === 0 && state.held.length === 0) this.inodes.delete(ino);
  }

  /** Gives up an idle claim. */
  private async release(ino: number, state: InodeState): Promise<void> {
    if (state.mode !== 'claimed' || state.held.length > 0 || state.pending > 0 || this.inodes.get(ino) !== state) return;
    const me = this.currentSession();
    await this.kv.txn(async (tx) => {
      const { others, dead } = await this.readRecords(tx, ino, me);
      for (const key of dead) tx.delete(key);
      tx.delete(keys.lock(ino, me));
      touchVersion(tx, ino, others.length > 0);
    });
    if (this.inodes.get(ino) === state && state.held.length === 0 && state.pending === 0) this.inodes.delete(ino);
    else state.mode = 'shared'; // a request came in meanwhile: it goes by the records from now on
  }

  /** The inode's records: this session's, other live sessions', and keys of dead sessions. */
  private async readRecords(tx: KvTxn, ino: number, me: string): Promise<{ mine?: LockRecord; others: LockRecord[]; dead: string[] }> {
    await tx.get(keys.lockVersion(ino));
    const pairs = await tx.scan(keys.locks(ino));
    let mine: LockRecord | undefined;
    const others: LockRecord[] = [];
    const dead: string[] = [];
    for (const { key, value } of pairs) {
      const session = key.slice(keys.locks(ino).length);
      if (session === me) {
        mine = decode(value);
        continue;
      }
      // One daemon at a time on the embedded engine: any other session's record is left over.
      const alive = this.kv.kind !== 'sqlite' && (await tx.get(keys.session(session))) !== undefined;
      if (alive) others.push(decode(value));
      else dead.push(key);
    }
    return { mine, others, dead };
  }

  private currentSession(): string {
    const id = this.sessionId();
    if (!id) throw new FsError('EIO', 'no session with the metadata store: locks are unavailable until the mount reconnects');
    return id;
  }
}

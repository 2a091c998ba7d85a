// Locks that reach across mounts: POSIX record locks (fcntl/lockf) and BSD locks (flock), kept
// in the metadata store so that every mount of a volume sees them (JuiceFS keeps them in its
// metadata engine the same way). The kernel hands each lock request of this mount to the daemon
// (the binding's lock/flock ops), so processes on one mount are arbitrated here as well.
//
// Keys (see lib/meta/schema.ts):
//   L{ino}            a version that every lock change on the inode rewrites: the key every lock
//                     transaction reads, so two mounts changing locks on one file conflict and
//                     one of them retries (the records below are only scanned)
//   L{ino}/{session}  this session's locks on the inode (JSON records)
// A lock belongs to a session and an owner (the kernel's lock owner: a process's file table for
// POSIX locks, an open file description for flock). Locks of a session whose session key is gone
// (a mount that died, or one cut off past --session-ttl) count for nothing and are removed by the
// next change on that inode. The embedded engine serves one daemon at a time, so there every
// other session is gone.
//
// Waiting (F_SETLKW, flock without LOCK_NB) polls the store, 10 ms at first and then up to every
// 100 ms, until the lock is granted, the owner unlocks (its process closed the file: the wait
// ends with EINTR), or the mount shuts down.

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

/** A POSIX lock request or answer, as the binding passes it. */
export interface RecordLock {
  type: number;
  start: bigint;
  /** 0n: to the end of the file. */
  len: bigint;
  pid: number;
}

/** One lock as stored: kind, owner, exclusive or shared, range (inclusive end), pid. */
interface Held {
  kind: 'posix' | 'flock';
  owner: string;
  exclusive: boolean;
  start: bigint;
  end: bigint;
  pid: number;
}

interface StoredHeld {
  k: 'p' | 'f';
  o: string;
  x: boolean;
  s: string;
  e: string;
  p: number;
}

function encode(list: Held[]): Buffer {
  const stored: StoredHeld[] = list.map((h) => ({ k: h.kind === 'posix' ? 'p' : 'f', o: h.owner, x: h.exclusive, s: String(h.start), e: String(h.end), p: h.pid }));
  return Buffer.from(JSON.stringify(stored));
}

function decode(value: Buffer): Held[] {
  const stored = JSON.parse(value.toString()) as StoredHeld[];
  return stored.map((h) => ({ kind: h.k === 'p' ? 'posix' : 'flock', owner: h.o, exclusive: h.x, start: BigInt(h.s), end: BigInt(h.e), pid: h.p }));
}

/** What a request asks for, in the terms the conflict check uses. */
interface Want {
  kind: 'posix' | 'flock';
  owner: string;
  /** undefined: unlock. */
  exclusive: boolean | undefined;
  start: bigint;
  end: bigint;
  pid: number;
}

function conflicts(a: Held, b: Want): boolean {
  return a.kind === b.kind && (a.exclusive || b.exclusive === true) && a.start <= b.end && b.start <= a.end;
}

/** The owner's records with `want` applied: its range cut out (POSIX) or dropped (flock), then added. */
function apply(mine: Held[], want: Want): Held[] {
  const out: Held[] = [];
  for (const h of mine) {
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

export class LockTable {
  /** Inodes on which this session holds any lock: unlocks elsewhere need no transaction. */
  private readonly heldOn = new Set<number>();
  /** Waiting requests, by inode/kind/owner; an unlock by the owner (or shutdown) ends them. */
  private readonly waiting = new Map<string, Set<() => void>>();
  private closed = false;

  constructor(
    private readonly kv: KvEngine,
    /** The current session id; undefined while there is none (locks then fail with EIO). */
    private readonly sessionId: () => string | undefined,
  ) {}

  /** fcntl F_GETLK / F_SETLK / F_SETLKW on `ino` for `owner`. */
  async recordLock(ino: number, cmd: number, lock: RecordLock, owner: bigint): Promise<RecordLock | undefined> {
    if (lock.start < 0n || lock.len < 0n) throw new FsError('EINVAL', 'lock range');
    const end = lock.len === 0n ? END_OF_FILE : lock.start + lock.len - 1n;
    if (end > END_OF_FILE) throw new FsError('EOVERFLOW', 'lock range');
    const unlock = lock.type === F_UNLCK;
    if (!unlock && lock.type !== F_RDLCK && lock.type !== F_WRLCK) throw new FsError('EINVAL', `lock type ${lock.type}`);
    const want: Want = { kind: 'posix', owner: String(owner), exclusive: unlock ? undefined : lock.type === F_WRLCK, start: lock.start, end, pid: lock.pid };
    if (cmd === F_GETLK) {
      if (unlock) throw new FsError('EINVAL', 'F_GETLK with F_UNLCK');
      const found = await this.kv.txn((tx) => this.conflict(tx, ino, want));
      if (!found) return { type: F_UNLCK, start: lock.start, len: lock.len, pid: 0 };
      return { type: found.exclusive ? F_WRLCK : F_RDLCK, start: found.start, len: found.end === END_OF_FILE ? 0n : found.end - found.start + 1n, pid: found.pid };
    }
    if (cmd !== F_SETLK && cmd !== F_SETLKW) throw new FsError('EINVAL', `lock command ${cmd}`);
    await this.change(ino, want, cmd === F_SETLKW);
    return undefined;
  }

  /** flock(2): LOCK_SH, LOCK_EX or LOCK_UN, with LOCK_NB not to wait. */
  async flock(ino: number, op: number, owner: bigint): Promise<void> {
    const base = op & ~LOCK_NB;
    if (base !== LOCK_SH && base !== LOCK_EX && base !== LOCK_UN) throw new FsError('EINVAL', `flock operation ${op}`);
    const want: Want = { kind: 'flock', owner: String(owner), exclusive: base === LOCK_UN ? undefined : base === LOCK_EX, start: 0n, end: END_OF_FILE, pid: 0 };
    await this.change(ino, want, (op & LOCK_NB) === 0);
  }

  /** Whether this session holds any lock on the inode. */
  holdsAny(ino: number): boolean {
    return this.heldOn.has(ino);
  }

  /** Ends every wait (the mount is going away). */
  close(): void {
    this.closed = true;
    for (const set of this.waiting.values()) for (const wake of set) wake();
    this.waiting.clear();
  }

  /** The session changed (lost, then a new one): locks held under the old one are gone. */
  sessionChanged(): void {
    this.heldOn.clear();
  }

  private async change(ino: number, want: Want, wait: boolean): Promise<void> {
    const waitKey = `${ino}/${want.kind}/${want.owner}`;
    if (want.exclusive === undefined) {
      // The owner unlocks (or closed the file): a lock it still waits for is no longer wanted.
      const set = this.waiting.get(waitKey);
      if (set) for (const wake of set) wake();
      // flush() unlocks at every close: no transaction unless this session holds locks here.
      if (!this.heldOn.has(ino)) return;
    }
    let cancelled = false;
    let delay = 10;
    for (;;) {
      const result = await this.kv.txn((tx) => this.tryChange(tx, ino, want));
      if (result !== 'blocked') {
        // Only once committed: a transaction function may run several times.
        if (result === 'holding') this.heldOn.add(ino);
        else this.heldOn.delete(ino);
        return;
      }
      if (!wait) throw new FsError('EAGAIN', `inode ${ino} is locked by another owner`);
      if (this.closed || cancelled) throw new FsError('EINTR', 'lock wait ended');
      await new Promise<void>((resolve) => {
        const wake = (): void => {
          cancelled = true;
          clearTimeout(timer);
          resolve();
        };
        const timer = setTimeout(() => {
          this.waiting.get(waitKey)?.delete(wake);
          resolve();
        }, delay * (0.5 + Math.random()));
        let set = this.waiting.get(waitKey);
        if (!set) this.waiting.set(waitKey, (set = new Set()));
        set.add(wake);
      });
      const set = this.waiting.get(waitKey);
      if (set && set.size === 0) this.waiting.delete(waitKey);
      if (this.closed || cancelled) throw new FsError('EINTR', 'lock wait ended');
      delay = Math.min(100, delay * 2);
    }
  }

  /** Every live lock on the inode, with this session's own records apart; dead sessions' keys. */
  private async read(tx: KvTxn, ino: number, me: string): Promise<{ mine: Held[]; others: Held[]; dead: string[] }> {
    await tx.get(keys.lockVersion(ino));
    const pairs = await tx.scan(keys.locks(ino));
    const mine: Held[] = [];
    const others: Held[] = [];
    const dead: string[] = [];
    for (const { key, value } of pairs) {
      const session = key.slice(keys.locks(ino).length);
      if (session === me) {
        mine.push(...decode(value));
        continue;
      }
      // One daemon at a time on the embedded engine: any other session's locks are left over.
      const alive = this.kv.kind !== 'sqlite' && (await tx.get(keys.session(session))) !== undefined;
      if (alive) others.push(...decode(value));
      else dead.push(key);
    }
    return { mine, others, dead };
  }

  private async conflict(tx: KvTxn, ino: number, want: Want): Promise<Held | undefined> {
    const { mine, others } = await this.read(tx, ino, this.currentSession());
    return [...others, ...mine.filter((h) => h.owner !== want.owner)].find((h) => conflicts(h, want));
  }

  /**
   * One attempt: 'blocked' when another owner's lock is in the way (nothing written then), else
   * whether this session still holds locks on the inode afterwards.
   */
  private async tryChange(tx: KvTxn, ino: number, want: Want): Promise<'blocked' | 'holding' | 'free'> {
    const me = this.currentSession();
    const { mine, others, dead } = await this.read(tx, ino, me);
    if (want.exclusive !== undefined) {
      const inTheWay = [...others, ...mine.filter((h) => h.owner !== want.owner)].some((h) => conflicts(h, want));
      if (inTheWay) return 'blocked';
    }
    const next = apply(mine, want);
    for (const key of dead) tx.delete(key);
    if (next.length > 0) tx.put(keys.lock(ino, me), encode(next));
    else tx.delete(keys.lock(ino, me));
    // Nothing left on the inode: leave no key behind.
    if (next.length === 0 && others.length === 0) tx.delete(keys.lockVersion(ino));
    else tx.put(keys.lockVersion(ino), Buffer.from(String(Date.now())));
    return next.length > 0 ? 'holding' : 'free';
  }

  private currentSession(): string {
    const id = this.sessionId();
    if (!id) throw new FsError('EIO', 'no session with the metadata store: locks are unavailable until the mount reconnects');
    return id;
  }
}

// kvfs fsck: checks a volume's metadata against itself and against the block store, and repairs
// what can be repaired without losing anything that is still there.
//
// The check reads the whole key space of the volume in one scan (one consistent snapshot on both
// engines: etcd serves every page of an unbounded scan at one revision, SQLite answers it with
// one query), builds the directory tree from the root (inode 1) through directory entries, and
// lists the stored block ids once. Problems are reported with the paths involved; inodes that no
// entry reaches are shown as "<unreachable inode N>" (and what lies below them as
// "<unreachable inode N>/name/...").
//
// Repairs follow the rules of lib/meta/meta.ts: each is one kv.txn that re-reads (get) every key
// it depends on and compares it with what the check saw (or with what an earlier repair wrote),
// so a repair never acts on a state that changed meanwhile; such a problem is left ("changed
// since the check") for the next run. Every change to a directory's entries rewrites the
// directory's attribute key in the same transaction. Data blocks are never deleted: a repair at
// most removes references (to blocks that are missing, or that lie beyond the end of a file; the
// latter are then unreferenced and `kvfs gc` frees them).
//
// After the repairs the volume is checked again; repairs that uncover further problems (a
// deleted dangling entry whose inode still had a block map, ...) get further rounds.

import type { BlockStore } from '../data/store';
import type { KvEngine, KvPair, KvTxn } from '../meta/kv';
import type { Meta } from '../meta/meta';
import {
  Attr,
  CHUNK_BLOCKS,
  ChunkMap,
  FileType,
  ROOT_INO,
  decodeAttr,
  decodeChunk,
  decodeEntry,
  encodeAttr,
  encodeChunk,
  encodeEntry,
  keys,
  nowNs,
  refIds,
  typeBits,
} from '../meta/schema';

export const LOST_FOUND = 'lost+found';

export type ProblemKind =
  | 'root-missing'
  | 'bad-value'
  | 'dangling-entry'
  | 'stray-keys'
  | 'entry-type'
  | 'dir-names'
  | 'unreachable'
  | 'nlink'
  | 'dir-nlink'
  | 'dir-parent'
  | 'stale-orphan'
  | 'symlink-target'
  | 'missing-block'
  | 'block-len'
  | 'block-beyond-eof'
  | 'shared-block'
  | 'used'
  | 'inode-counter'
  | 'block-counter';

/** Short names for summaries, singular and plural. */
const KIND_NAMES: Record<ProblemKind, [string, string]> = {
  'root-missing': ['missing root directory', 'missing root directories'],
  'bad-value': ['undecodable key', 'undecodable keys'],
  'dangling-entry': ['dangling entry', 'dangling entries'],
  'stray-keys': ['inode with stray keys', 'inodes with stray keys'],
  'entry-type': ['entry with a wrong type', 'entries with a wrong type'],
  'dir-names': ['directory with several names', 'directories with several names'],
  unreachable: ['unreachable inode', 'unreachable inodes'],
  nlink: ['wrong link count', 'wrong link counts'],
  'dir-nlink': ['wrong directory link count', 'wrong directory link counts'],
  'dir-parent': ['wrong parent of a directory', 'wrong parents of directories'],
  'stale-orphan': ['stale orphan key', 'stale orphan keys'],
  'symlink-target': ['symlink without a target', 'symlinks without a target'],
  'missing-block': ['missing block', 'missing blocks'],
  'block-len': ['block reference with a bad length', 'block references with a bad length'],
  'block-beyond-eof': ['block reference beyond the end of its file', 'block references beyond the end of their files'],
  'shared-block': ['block referenced more than once', 'blocks referenced more than once'],
  used: ['wrong count of bytes used', 'wrong counts of bytes used'],
  'inode-counter': ['inode counter behind the inodes in use', 'inode counters behind the inodes in use'],
  'block-counter': ['block counter behind the blocks in use', 'block counters behind the blocks in use'],
};

export function kindName(kind: ProblemKind, count: number): string {
  return KIND_NAMES[kind][count === 1 ? 0 : 1];
}

export interface Problem {
  kind: ProblemKind;
  /** The inode concerned (0 when none). */
  ino: number;
  /** Where it is: the inode's path, or the entry's path for entry problems. */
  path: string;
  /** Every name of the inode, when there are several (link counts). */
  paths?: string[];
  message: string;
  /** Block problems: index of the block in the file, and its id. */
  index?: number;
  blockId?: number;
  /** Whether --repair can fix this kind of problem. */
  repairable: boolean;
  /** Set by --repair. */
  repair?: { status: 'repaired' | 'left'; detail: string };
}

export interface PendingOrphan {
  ino: number;
  path: string;
  /** When the last name went away (ISO 8601), if recorded. */
  since?: string;
  size: number;
  used: number;
  /** Mounts (sessions) that hold it open. */
  holders: number;
}

export interface CheckStats {
  keys: number;
  inodes: number;
  dirs: number;
  files: number;
  entries: number;
  /** Block references in block maps. */
  blockRefs: number;
  /** Blocks in the block store (the volume's own, shared stores are listed by prefix). */
  storedBlocks: number;
}

export interface CheckResult {
  problems: Problem[];
  orphans: PendingOrphan[];
  stats: CheckStats;
}

export interface FsckReport {
  volume: string;
  /** The problems of each check; with --repair, every round after the first checks the repaired volume. */
  rounds: CheckResult[];
  /** Problems still there after the last round (= the first round's without --repair). */
  left: Problem[];
  repaired: number;
  /** No problems left (pending orphans are not problems). */
  clean: boolean;
}

export interface FsckOptions {
  repair?: boolean;
  /** Progress lines for long runs (stderr in the CLI). */
  onProgress?: (line: string) => void;
  /** Print progress every this many keys or blocks (default 100,000). */
  progressEvery?: number;
  /** Called as soon as each round's check is done, before its repairs (streaming output). */
  onCheck?: (result: CheckResult, round: number) => void;
  /** Called after each repair with the problem (its `repair` set). */
  onRepair?: (problem: Problem) => void;
  /** Most check/repair rounds (default 4). */
  maxRounds?: number;
}

// ---------------------------------------------------------------------------------------------
// The snapshot

interface EntryRec {
  parent: number;
  name: string;
  ino: number;
  type: FileType;
  key: string;
}

interface ChunkRec {
  chunk: number;
  map: ChunkMap;
  key: string;
}

interface Snapshot {
  values: Map<string, Buffer>;
  attrs: Map<number, Attr>;
  /** Entries by parent directory, in key (name) order. */
  entries: Map<number, EntryRec[]>;
  chunks: Map<number, ChunkRec[]>;
  symlinks: Set<number>;
  /** Keys per inode that has no attributes (xattrs, symlink targets, entries, chunks). */
  inodeKeys: Map<number, string[]>;
  orphans: Map<number, bigint>;
  holds: Map<number, string[]>;
  sessions: Set<string>;
  inodeCounter: number | undefined;
  blockCounter: number | undefined;
  badValues: Array<{ key: string; error: string }>;
  /** Inodes whose attributes cannot be decoded: they exist, fsck cannot tell more. */
  badAttrs: Set<number>;
  keyCount: number;
}

const HEX16 = /^[0-9a-f]{16}$/;
const HEX8 = /^[0-9a-f]{8}$/;

function parseSnapshot(pairs: KvPair[]): Snapshot {
  const s: Snapshot = {
    values: new Map(),
    attrs: new Map(),
    entries: new Map(),
    chunks: new Map(),
    symlinks: new Set(),
    inodeKeys: new Map(),
    orphans: new Map(),
    holds: new Map(),
    sessions: new Set(),
    inodeCounter: undefined,
    blockCounter: undefined,
    badValues: [],
    badAttrs: new Set(),
    keyCount: pairs.length,
  };
  const inodeKey = (ino: number, key: string) => {
    const list = s.inodeKeys.get(ino) ?? [];
    list.push(key);
    s.inodeKeys.set(ino, list);
  };
  for (const { key, value } of pairs) {
    s.values.set(key, value);
    try {
      if (key === keys.inodeCounter) s.inodeCounter = Number(value.toString());
      else if (key === keys.blockCounter) s.blockCounter = Number(value.toString());
      else if (key.startsWith(keys.sessions)) s.sessions.add(key.slice(keys.sessions.length));
      else if (key[0] === 'O' && HEX16.test(key.slice(1))) s.orphans.set(keys.inodeOfOrphan(key), BigInt(value.toString() || '0'));
      else if (key[0] === 'H' && HEX16.test(key.slice(1, 17)) && key[17] === '/') {
        const ino = parseInt(key.slice(1, 17), 16);
        s.holds.set(ino, [...(s.holds.get(ino) ?? []), key.slice(18)]);
      } else if (key[0] === 'A' && key.length >= 18 && HEX16.test(key.slice(1, 17))) {
        const ino = parseInt(key.slice(1, 17), 16);
        const tag = key[17];
        const rest = key.slice(18);
        if (tag === 'I' && rest === '') s.attrs.set(ino, decodeAttr(ino, value));
        else if (tag === 'D') {
          const e = decodeEntry(rest, value);
          if (!Number.isSafeInteger(e.ino) || e.ino <= 0) throw new Error(`bad inode number ${e.ino}`);
          const list = s.entries.get(ino) ?? [];
          list.push({ parent: ino, name: rest, ino: e.ino, type: e.type, key });
          s.entries.set(ino, list);
        } else if (tag === 'C' && HEX8.test(rest)) {
          const map = decodeChunk(value);
          for (const ref of map.values()) {
            if (!Number.isSafeInteger(ref.id) || !Number.isFinite(ref.len)) throw new Error('bad block reference');
            for (const part of ref.parts ?? []) {
              if (!Number.isSafeInteger(part.id) || !Number.isSafeInteger(part.at) || !Number.isSafeInteger(part.len) || part.at < 0 || part.len <= 0) {
                throw new Error('bad block part');
              }
            }
          }
          const list = s.chunks.get(ino) ?? [];
          list.push({ chunk: parseInt(rest, 16), map, key });
          s.chunks.set(ino, list);
        } else if (tag === 'S' && rest === '') s.symlinks.add(ino);
        else if (tag !== 'X') throw new Error('unknown kind of inode key');
        if (tag !== 'I') inodeKey(ino, key);
      }
      // Other keys (setting, sessions, keys of later versions) are not fsck's business.
    } catch (err) {
      s.badValues.push({ key, error: (err as Error).message });
      if (key[0] === 'A' && key.length === 18 && key[17] === 'I' && HEX16.test(key.slice(1, 17))) s.badAttrs.add(parseInt(key.slice(1, 17), 16));
    }
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Paths

/** A name as shown in a path: control characters and backslashes escaped. */
function showName(name: string): string {
  // eslint-disable-next-line no-control-regex
  return name.replace(/[\\\x00-\x1f\x7f]/g, (c) => (c === '\\' ? '\\\\' : `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`));
}

function joinPath(dir: string, name: string): string {
  return dir === '/' ? `/${showName(name)}` : `${dir}/${showName(name)}`;
}

const unreachableRoot = (ino: number) => `<unreachable inode ${ino}>`;
const orphanPath = (ino: number) => `<orphan inode ${ino}>`;

// ---------------------------------------------------------------------------------------------
// The check

/** What the repairs of one round need besides the problems: the snapshot and the plan. */
interface Plan {
  snap: Snapshot;
  /** Unreachable inodes to move into lost+found, with the entries that name them now (cycles). */
  moves: Array<{ ino: number; problem: Problem; namedBy: EntryRec[] }>;
  /** Entries to delete: dangling ones, extra names of directories. */
  dropEntries: Array<{ entry: EntryRec; problem: Problem; reason: 'dangling' | 'alias' }>;
  retype: Array<{ entry: EntryRec; type: FileType; problem: Problem }>;
  strays: Array<{ ino: number; keys: string[]; recover: boolean; problem: Problem }>;
  fileNlink: Array<{ ino: number; names: EntryRec[]; problem: Problem }>;
  dirNlink: Array<{ ino: number; problem: Problem }>;
  dirParent: Array<{ ino: number; entry: EntryRec | undefined; problem: Problem }>;
  staleOrphans: Array<{ ino: number; problem: Problem }>;
  /** Files whose block maps or used count need fixing, with the missing block ids. */
  blockFixes: Map<number, { missing: Set<number>; problems: Problem[] }>;
  counters: Array<{ key: string; atLeast: number; problem: Problem }>;
  /** Blocks referenced more than once: every reference but the first gets a copy. */
  copies: Array<{ id: number; keep: { ino: number; index: number }; others: Array<{ ino: number; index: number }>; problem: Problem }>;
  rootMissing?: Problem;
  /** Paths as the check saw them. */
  pathOf: (ino: number) => string;
}

async function readSnapshot(kv: KvEngine, progress: (line: string) => void): Promise<Snapshot> {
  const pairs = await kv.scan('');
  return parseSnapshot(pairs);
}

/** Lists the store's ids and returns the referenced ids it does not hold. */
async function missingIds(store: BlockStore, referenced: Set<number>, every: number, progress: (line: string) => void): Promise<{ missing: Set<number>; stored: number }> {
  const missing = new Set(referenced);
  let stored = 0;
  let next = every;
  await store.list((ids) => {
    for (const id of ids) {
      stored++;
      if (/^[1-9][0-9]*$/.test(id)) missing.delete(Number(id));
    }
    if (stored >= next) {
      progress(`kvfs fsck: listed ${stored} stored blocks`);
      next = (Math.floor(stored / every) + 1) * every;
    }
  });
  return { missing, stored };
}

async function check(meta: Meta, store: BlockStore, options: FsckOptions): Promise<{ result: CheckResult; plan: Plan }> {
  const progress = options.onProgress ?? (() => undefined);
  const every = options.progressEvery ?? 100_000;
  const kv = meta.kv;
  const bs = meta.blockSize;
  const snap = await readSnapshot(kv, progress);
  const problems: Problem[] = [];
  const plan: Plan = {
    snap,
    moves: [],
    dropEntries: [],
    retype: [],
    strays: [],
    fileNlink: [],
    dirNlink: [],
    dirParent: [],
    staleOrphans: [],
    blockFixes: new Map(),
    counters: [],
    copies: [],
    pathOf: (ino) => `<inode ${ino}>`,
  };
  const add = (p: Omit<Problem, 'repairable'>, repairable = true): Problem => {
    const problem: Problem = { ...p, repairable };
    problems.push(problem);
    return problem;
  };
  const stats: CheckStats = {
    keys: snap.keyCount,
    inodes: snap.attrs.size,
    dirs: 0,
    files: 0,
    entries: 0,
    blockRefs: 0,
    storedBlocks: 0,
  };
  for (const a of snap.attrs.values()) {
    if (a.type === 'dir') stats.dirs++;
    else if (a.type === 'file') stats.files++;
  }

  for (const { key, error } of snap.badValues) {
    add({ kind: 'bad-value', ino: 0, path: key, message: `key ${JSON.stringify(key)} cannot be decoded (${error}); fsck leaves it and what depends on it alone` }, false);
  }

  const root = snap.attrs.get(ROOT_INO);
  if (!root || root.type !== 'dir') {
    plan.rootMissing = add(
      {
        kind: 'root-missing',
        ino: ROOT_INO,
        path: '/',
        message: root ? `the root inode 1 is a ${root.type}, not a directory` : 'the root directory (inode 1) has no attributes',
      },
      !root,
    );
    return { result: { problems, orphans: [], stats }, plan };
  }

  // --- entries: valid ones name an existing inode from an existing directory ----------------
  const isDir = (ino: number) => snap.attrs.get(ino)?.type === 'dir';
  /** Valid entries naming each inode. */
  const namedBy = new Map<number, EntryRec[]>();
  /** Entries that will not exist after the repairs (for the expected directory link counts). */
  const dropped = new Set<string>();
  for (const [parent, list] of snap.entries) {
    stats.entries += list.length;
    if (!isDir(parent) && !snap.badAttrs.has(parent)) continue; // stray keys, below
    for (const e of list) {
      const target = snap.attrs.get(e.ino);
      if (!target) continue; // dangling, below (needs the parent's path)
      const names = namedBy.get(e.ino) ?? [];
      names.push(e);
      namedBy.set(e.ino, names);
    }
  }

  // --- the tree from the root -------------------------------------------------------------
  const paths = new Map<number, string>();
  /** Every path of each reached inode (hard links). */
  const allPaths = new Map<number, string[]>();
  const walk = (start: number, startPath: string) => {
    paths.set(start, startPath);
    allPaths.set(start, [startPath]);
    const queue = [start];
    for (let q = 0; q < queue.length; q++) {
      const dir = queue[q];
      const dirPath = paths.get(dir)!;
      for (const e of snap.entries.get(dir) ?? []) {
        const bad = snap.badAttrs.has(e.ino);
        if (!snap.attrs.has(e.ino) && !bad) continue;
        const p = joinPath(dirPath, e.name);
        if (paths.has(e.ino)) {
          allPaths.get(e.ino)!.push(p);
          continue;
        }
        paths.set(e.ino, p);
        allPaths.set(e.ino, [p]);
        if (isDir(e.ino) || (bad && snap.entries.has(e.ino))) queue.push(e.ino);
      }
    }
  };
  walk(ROOT_INO, '/');
  // What lies below a directory whose attributes cannot be decoded is left where it is.
  for (const ino of snap.badAttrs) if (!paths.has(ino) && snap.entries.has(ino)) walk(ino, `<undecodable inode ${ino}>`);

  // Pending orphans: not damage. An orphan key is valid for a non-directory with nlink 0 and no name.
  const pendingOrphans = new Set<number>();
  for (const [ino] of snap.orphans) {
    const a = snap.attrs.get(ino);
    if (a && a.type !== 'dir' && a.nlink === 0 && !(namedBy.get(ino)?.length)) pendingOrphans.add(ino);
  }

  // Unreachable inodes: roots of unreachable subtrees have no valid entry; what remains after
  // walking from them hangs in directory cycles, broken at the lowest directory inode.
  const unreachableRoots: number[] = [];
  for (const ino of [...snap.attrs.keys()].sort((a, b) => a - b)) {
    if (paths.has(ino) || pendingOrphans.has(ino)) continue;
    if (!(namedBy.get(ino)?.length)) {
      unreachableRoots.push(ino);
      walk(ino, unreachableRoot(ino));
    }
  }
  for (;;) {
    const left = [...snap.attrs.keys()].filter((ino) => !paths.has(ino) && !pendingOrphans.has(ino)).sort((a, b) => a - b);
    if (left.length === 0) break;
    const dir = left.find((ino) => isDir(ino)) ?? left[0];
    unreachableRoots.push(dir);
    walk(dir, unreachableRoot(dir));
  }
  for (const ino of unreachableRoots) {
    const a = snap.attrs.get(ino)!;
    const names = namedBy.get(ino) ?? [];
    const what = a.type === 'dir' ? `directory` : a.type;
    const below = a.type === 'dir' ? countBelow(snap, ino) : 0;
    const problem = add({
      kind: 'unreachable',
      ino,
      path: unreachableRoot(ino),
      message:
        `${what} inode ${ino} is not reachable from the root` +
        (names.length ? ` (it hangs in a directory cycle, named by ${names.map((n) => `entry ${JSON.stringify(n.name)} of inode ${n.parent}`).join(', ')})` : ' (no entry names it)') +
        (below ? `; ${below} entries below it` : '') +
        (a.type === 'file' ? `; ${a.size} bytes` : ''),
    });
    plan.moves.push({ ino, problem, namedBy: names });
    for (const n of names) dropped.add(n.key);
  }

  const pathOf = (ino: number) => paths.get(ino) ?? (pendingOrphans.has(ino) ? orphanPath(ino) : `<inode ${ino}>`);
  plan.pathOf = pathOf;

  // --- dangling entries and entries under non-directories -----------------------------------
  for (const [parent, list] of snap.entries) {
    if (!isDir(parent)) continue;
    for (const e of list) {
      const target = snap.attrs.get(e.ino);
      const p = joinPath(pathOf(parent), e.name);
      if (!target && snap.badAttrs.has(e.ino)) continue;
      if (!target) {
        const problem = add({
          kind: 'dangling-entry',
          ino: e.ino,
          path: p,
          message: `${p} names inode ${e.ino}, which has no attributes`,
        });
        plan.dropEntries.push({ entry: e, problem, reason: 'dangling' });
        dropped.add(e.key);
      } else if (target.type !== e.type) {
        const problem = add({
          kind: 'entry-type',
          ino: e.ino,
          path: p,
          message: `${p} says inode ${e.ino} is a ${e.type}, but it is a ${target.type}`,
        });
        plan.retype.push({ entry: e, type: target.type, problem });
      }
    }
  }

  // Keys of inodes without attributes (or entries under a non-directory).
  const strayInodes = new Set<number>();
  for (const ino of snap.inodeKeys.keys()) if (!snap.attrs.has(ino) && !snap.badAttrs.has(ino)) strayInodes.add(ino);
  for (const parent of snap.entries.keys()) if (snap.attrs.has(parent) && !isDir(parent)) strayInodes.add(parent);
  for (const ino of [...strayInodes].sort((a, b) => a - b)) {
    const a = snap.attrs.get(ino);
    const list = a ? (snap.entries.get(ino) ?? []).map((e) => e.key) : snap.inodeKeys.get(ino) ?? [];
    const chunks = a ? [] : snap.chunks.get(ino) ?? [];
    const recover = chunks.length > 0;
    let refs = 0;
    for (const c of chunks) refs += c.map.size;
    const problem = add({
      kind: 'stray-keys',
      ino,
      path: a ? pathOf(ino) : `<inode ${ino}>`,
      message: a
        ? `${pathOf(ino)} is a ${a.type} but has ${list.length} directory entries`
        : `inode ${ino} has no attributes but ${list.length} keys remain` +
          (recover ? ` (a block map of ${refs} blocks: its data can be recovered into /${LOST_FOUND})` : ''),
    });
    plan.strays.push({ ino, keys: list, recover, problem });
  }

  // --- names and link counts ----------------------------------------------------------------
  for (const ino of snap.orphans.keys()) {
    if (snap.attrs.has(ino) || snap.badAttrs.has(ino)) continue;
    const problem = add({ kind: 'stale-orphan', ino, path: orphanPath(ino), message: `orphan key of inode ${ino}, which has no attributes` });
    plan.staleOrphans.push({ ino, problem });
  }
  const unreachableSet = new Set(unreachableRoots);
  for (const [ino, a] of snap.attrs) {
    const names = namedBy.get(ino) ?? [];
    if (a.type === 'dir') {
      if (ino === ROOT_INO) {
        for (const n of names) {
          const p = joinPath(pathOf(n.parent), n.name);
          const problem = add({ kind: 'dir-names', ino, path: p, message: `${p} names the root directory` });
          plan.dropEntries.push({ entry: n, problem, reason: 'alias' });
          dropped.add(n.key);
        }
      } else if (!unreachableSet.has(ino) && names.length > 1) {
        const keep = names.find((n) => n.parent === a.parent) ?? names.find((n) => joinPath(pathOf(n.parent), n.name) === paths.get(ino)) ?? names[0];
        for (const n of names) {
          if (n === keep) continue;
          const p = joinPath(pathOf(n.parent), n.name);
          const problem = add({
            kind: 'dir-names',
            ino,
            path: p,
            paths: names.map((m) => joinPath(pathOf(m.parent), m.name)),
            message: `directory inode ${ino} has ${names.length} names; ${p} is an extra one (it stays ${joinPath(pathOf(keep.parent), keep.name)})`,
          });
          plan.dropEntries.push({ entry: n, problem, reason: 'alias' });
          dropped.add(n.key);
        }
      }
      // parent field
      const keep = ino === ROOT_INO ? undefined : unreachableSet.has(ino) ? undefined : names.find((n) => !dropped.has(n.key));
      const wantParent = ino === ROOT_INO ? ROOT_INO : keep?.parent;
      if (wantParent !== undefined && a.parent !== wantParent) {
        const problem = add({
          kind: 'dir-parent',
          ino,
          path: pathOf(ino),
          message: `${pathOf(ino)} records parent inode ${a.parent}, but inode ${wantParent} names it`,
        });
        plan.dirParent.push({ ino, entry: keep, problem });
      }
    } else {
      if (snap.orphans.has(ino) && !pendingOrphans.has(ino)) {
        const problem = add({
          kind: 'stale-orphan',
          ino,
          path: pathOf(ino),
          message: `${pathOf(ino)} has an orphan key, but ${names.length ? `${names.length} entries name it` : `its link count is ${a.nlink}`}`,
        });
        plan.staleOrphans.push({ ino, problem });
      }
      if (pendingOrphans.has(ino) || unreachableSet.has(ino)) continue;
      if (a.nlink !== names.length) {
        const all = allPaths.get(ino) ?? [pathOf(ino)];
        const problem = add({
          kind: 'nlink',
          ino,
          path: pathOf(ino),
          paths: all.length > 1 ? all : undefined,
          message: `${pathOf(ino)} (inode ${ino}) has link count ${a.nlink}, but ${names.length} ${names.length === 1 ? 'entry names' : 'entries name'} it${all.length > 1 ? `: ${all.join(', ')}` : ''}`,
        });
        plan.fileNlink.push({ ino, names, problem });
      }
    }
    if (a.type === 'symlink' && !snap.symlinks.has(ino)) {
      add({ kind: 'symlink-target', ino, path: pathOf(ino), message: `symlink ${pathOf(ino)} (inode ${ino}) has no target` }, false);
    }
  }
  // Directory link counts: 2 + subdirectories. A count that is right either for the entries as
  // they are or for the entries that stay after the repairs (extra names and cycle links are
  // removed) is not reported: directories whose entries the repairs remove are recounted then.
  for (const [ino, a] of snap.attrs) {
    if (a.type !== 'dir') continue;
    let now = 0;
    let after = 0;
    for (const e of snap.entries.get(ino) ?? []) {
      // An entry whose inode's attributes cannot be decoded counts as its own type says.
      if (!(isDir(e.ino) || (snap.badAttrs.has(e.ino) && e.type === 'dir'))) continue;
      now++;
      if (!dropped.has(e.key)) after++;
    }
    if (a.nlink !== 2 + now && a.nlink !== 2 + after) {
      const problem = add({
        kind: 'dir-nlink',
        ino,
        path: pathOf(ino),
        message: `directory ${pathOf(ino)} (inode ${ino}) has link count ${a.nlink}, but ${after} subdirector${after === 1 ? 'y' : 'ies'} (should be ${2 + after})`,
      });
      plan.dirNlink.push({ ino, problem });
    }
  }

  // --- block maps ---------------------------------------------------------------------------
  const referenced = new Set<number>();
  /** Where each block id is referenced, for ids referenced more than once. */
  const shared = new Map<number, Array<{ ino: number; index: number }>>();
  for (const [ino, list] of snap.chunks) {
    for (const c of list) {
      for (const ref of c.map.values()) {
        stats.blockRefs++;
        for (const id of refIds(ref)) {
          if (referenced.has(id)) shared.set(id, []);
          referenced.add(id);
        }
      }
    }
  }
  if (shared.size > 0) {
    for (const [ino, list] of snap.chunks) {
      if (!snap.attrs.has(ino)) continue;
      for (const c of list) for (const [i, ref] of c.map) for (const id of refIds(ref)) shared.get(id)?.push({ ino, index: c.chunk * CHUNK_BLOCKS + i });
    }
  }
  if (snap.keyCount >= every) progress(`kvfs fsck: read ${snap.keyCount} metadata keys (${stats.inodes} inodes, ${stats.blockRefs} block references); listing the block store`);
  const listed = await missingIds(store, referenced, every, progress);
  stats.storedBlocks = listed.stored;
  // A block replaced (and deleted) by a commit after the metadata was read is not missing: confirm
  // each one against the block map as it is now and the store.
  const confirmed = new Set<number>();
  if (listed.missing.size > 0) {
    const stillReferenced = new Set<number>();
    for (const [ino, list] of snap.chunks) {
      for (const c of list) {
        let hit = false;
        for (const ref of c.map.values()) if (refIds(ref).some((id) => listed.missing.has(id))) hit = true;
        if (!hit) continue;
        const now = decodeChunk(await kv.get(keys.chunk(ino, c.chunk)));
        for (const ref of now.values()) for (const id of refIds(ref)) if (listed.missing.has(id)) stillReferenced.add(id);
      }
    }
    for (const id of stillReferenced) if ((await store.get(String(id))) === undefined) confirmed.add(id);
  }

  const fixFor = (ino: number) => {
    let f = plan.blockFixes.get(ino);
    if (!f) plan.blockFixes.set(ino, (f = { missing: new Set(), problems: [] }));
    return f;
  };
  let maxBlockId = 0;
  for (const [ino, list] of snap.chunks) {
    const a = snap.attrs.get(ino);
    if (!a) continue; // stray keys
    const p = pathOf(ino);
    let sum = 0;
    for (const c of list) {
      for (const [i, ref] of c.map) {
        const index = c.chunk * CHUNK_BLOCKS + i;
        const offset = index * bs;
        sum += Math.min(Math.max(ref.len, 0), bs);
        const ids = refIds(ref);
        maxBlockId = Math.max(maxBlockId, ...ids);
        for (const id of ids) {
          if (!confirmed.has(id)) continue;
          const what = id === ref.id ? `block id ${id}` : `block id ${ref.id} with part ${id}`;
          const problem = add({
            kind: 'missing-block',
            ino,
            path: p,
            index,
            blockId: id,
            message: `${p}: block ${index} (bytes ${offset}-${offset + ref.len - 1}) is ${what}, which is missing from the block store`,
          });
          const f = fixFor(ino);
          f.missing.add(id);
          f.problems.push(problem);
        }
        if (!(ref.len > 0 && ref.len <= bs)) {
          fixFor(ino).problems.push(
            add({
              kind: 'block-len',
              ino,
              path: p,
              index,
              blockId: ref.id,
              message: `${p}: block ${index} (id ${ref.id}) claims ${ref.len} bytes; the block size is ${bs}`,
            }),
          );
        } else if (a.type === 'file' && offset + ref.len > a.size) {
          fixFor(ino).problems.push(
            add({
              kind: 'block-beyond-eof',
              ino,
              path: p,
              index,
              blockId: ref.id,
              message:
                offset >= a.size
                  ? `${p}: block ${index} (id ${ref.id}) lies entirely beyond the end of the file (size ${a.size})`
                  : `${p}: block ${index} (id ${ref.id}) holds ${ref.len} bytes, ${offset + ref.len - a.size} past the end of the file (size ${a.size})`,
            }),
          );
        }
        for (const id of ids) {
          const uses = shared.get(id);
          if (!uses || uses.length <= 1 || confirmed.has(id)) continue;
          shared.delete(id); // report each shared id once, where it is first referenced
          const where = uses.map((u) => `${pathOf(u.ino)} block ${u.index}`);
          const problem = add({
            kind: 'shared-block',
            ino,
            path: p,
            paths: uses.map((u) => pathOf(u.ino)),
            index,
            blockId: id,
            message: `block id ${id} is referenced ${uses.length} times (${where.join(', ')}); when one of them is replaced or removed, the block is deleted under the others`,
          });
          plan.copies.push({ id, keep: uses[0], others: uses.slice(1), problem });
        }
      }
    }
    if (a.type === 'file' && a.used !== sum) {
      fixFor(ino).problems.push(
        add({ kind: 'used', ino, path: p, message: `${p} (inode ${ino}) counts ${a.used} bytes used, its block map references ${sum}` }),
      );
    }
    if (a.type !== 'file') {
      add({ kind: 'stray-keys', ino, path: p, message: `${p} is a ${a.type} but has a block map` }, false);
    }
  }
  for (const [ino, a] of snap.attrs) {
    if (a.type === 'file' && a.used !== 0 && !snap.chunks.has(ino)) {
      fixFor(ino).problems.push(
        add({ kind: 'used', ino, path: pathOf(ino), message: `${pathOf(ino)} (inode ${ino}) counts ${a.used} bytes used, its block map is empty` }),
      );
    }
  }

  // --- counters: a counter behind what is in use would hand out an id twice -----------------
  let maxIno = 0;
  for (const ino of snap.attrs.keys()) if (ino > maxIno) maxIno = ino;
  for (const ino of snap.inodeKeys.keys()) if (ino > maxIno) maxIno = ino;
  const nextIno = snap.inodeCounter ?? ROOT_INO + 1;
  if (maxIno >= nextIno && maxIno > ROOT_INO) {
    const problem = add({
      kind: 'inode-counter',
      ino: 0,
      path: keys.inodeCounter,
      message: `the next inode number is ${nextIno}, but inode ${maxIno} exists (new files would reuse inode numbers)`,
    });
    plan.counters.push({ key: keys.inodeCounter, atLeast: maxIno + 1, problem });
  }
  const nextBlock = snap.blockCounter ?? 1;
  if (maxBlockId >= nextBlock) {
    const problem = add({
      kind: 'block-counter',
      ino: 0,
      path: keys.blockCounter,
      message: `the next block id is ${nextBlock}, but block id ${maxBlockId} is in use (new writes would overwrite blocks)`,
    });
    plan.counters.push({ key: keys.blockCounter, atLeast: maxBlockId + 1, problem });
  }

  const orphans: PendingOrphan[] = [...pendingOrphans].sort((a, b) => a - b).map((ino) => {
    const a = snap.attrs.get(ino)!;
    const since = snap.orphans.get(ino) ?? 0n;
    // Embedded: fsck holds the volume, so no mount runs; hold keys left by a crashed one are stale.
    const holders = kv.kind === 'sqlite' ? 0 : (snap.holds.get(ino) ?? []).filter((h) => snap.sessions.has(h)).length;
    return {
      ino,
      path: orphanPath(ino),
      since: since > 0n ? new Date(Number(since / 1_000_000n)).toISOString() : undefined,
      size: a.size,
      used: a.used,
      holders,
    };
  });
  return { result: { problems, orphans, stats }, plan };
}

function countBelow(snap: Snapshot, dir: number): number {
  let n = 0;
  const seen = new Set<number>([dir]);
  const queue = [dir];
  for (let q = 0; q < queue.length; q++) {
    const d = queue[q];
    for (const e of snap.entries.get(d) ?? []) {
      n++;
      if (!seen.has(e.ino) && snap.attrs.get(e.ino)?.type === 'dir') {
        seen.add(e.ino);
        queue.push(e.ino);
      }
    }
  }
  return n;
}

// ---------------------------------------------------------------------------------------------
// Repairs

/** The state a repair depended on changed after the check. */
class Changed extends Error {
  constructor(what: string) {
    super(`${what} changed since the check (the volume is in use); run fsck again`);
  }
}

class Unrepairable extends Error {}

const sameValue = (a: Buffer | undefined, b: Buffer | undefined) => (a === undefined || b === undefined ? a === b : a.equals(b));

/**
 * Runs repair transactions that compare what they depend on with the check's snapshot, updated
 * with what earlier repairs wrote.
 */
class Repairer {
  private readonly written = new Map<string, Buffer | undefined>();

  constructor(
    readonly kv: KvEngine,
    private readonly snap: Snapshot,
  ) {}

  /** What the check saw under key, or what a repair wrote there since. */
  known(key: string): Buffer | undefined {
    return this.written.has(key) ? this.written.get(key) : this.snap.values.get(key);
  }

  /** Forget what we knew about a key (changed outside our transactions, e.g. by meta.create). */
  refresh(key: string, value: Buffer | undefined): void {
    this.written.set(key, value);
  }

  async txn<T>(fn: (tx: KvTxn, expect: (key: string, what: string) => Promise<Buffer | undefined>) => Promise<T>): Promise<T> {
    let writes = new Map<string, Buffer | undefined>();
    const result = await this.kv.txn(async (tx) => {
      writes = new Map();
      const recording: KvTxn = {
        get: (k) => tx.get(k),
        getMany: (ks) => tx.getMany(ks),
        scan: (p, o) => tx.scan(p, o),
        put: (k, v) => {
          writes.set(k, v);
          tx.put(k, v);
        },
        delete: (k) => {
          writes.set(k, undefined);
          tx.delete(k);
        },
      };
      const expect = async (key: string, what: string) => {
        const value = await tx.get(key);
        if (!sameValue(value, this.known(key))) throw new Changed(what);
        return value;
      };
      return fn(recording, expect);
    });
    for (const [k, v] of writes) this.written.set(k, v);
    return result;
  }
}

function touch(tx: KvTxn, dir: Attr, now: bigint, nlinkDelta = 0): void {
  dir.mtime = now;
  dir.ctime = now;
  dir.nlink += nlinkDelta;
  tx.put(keys.attr(dir.ino), encodeAttr(dir));
}

async function attrIn(tx: KvTxn, ino: number, what: string): Promise<Attr> {
  const value = await tx.get(keys.attr(ino));
  if (!value) throw new Changed(what);
  return decodeAttr(ino, value);
}

async function repairAll(meta: Meta, store: BlockStore, plan: Plan, done: (p: Problem, status: 'repaired' | 'left', detail: string) => void): Promise<void> {
  const kv = meta.kv;
  const snap = plan.snap;
  const r = new Repairer(kv, snap);
  const attempt = async (problems: Problem | Problem[], work: () => Promise<string>) => {
    const list = Array.isArray(problems) ? problems : [problems];
    try {
      const detail = await work();
      for (const p of list) done(p, 'repaired', detail);
    } catch (err) {
      if (err instanceof Changed || err instanceof Unrepairable) for (const p of list) done(p, 'left', err.message);
      else {
        const e = err as Error;
        for (const p of list) done(p, 'left', `repair failed: ${e.message}`);
      }
    }
  };

  // 0. The root directory.
  if (plan.rootMissing) {
    await attempt(plan.rootMissing, async () => {
      await r.txn(async (tx, expect) => {
        await expect(keys.attr(ROOT_INO), 'the root directory');
        const now = nowNs();
        const uid = process.getuid?.() ?? 0;
        const gid = process.getgid?.() ?? 0;
        const attr: Attr = { ino: ROOT_INO, type: 'dir', mode: typeBits('dir') | 0o755, uid, gid, nlink: 2, size: 4096, used: 0, rdev: 0, atime: now, mtime: now, ctime: now, parent: ROOT_INO };
        tx.put(keys.attr(ROOT_INO), encodeAttr(attr));
      });
      return 'created a new root directory (mode 0755); the next round checks what it holds';
    });
    return;
  }

  // 1. Counters first: anything created from here on (lost+found) gets a fresh number.
  for (const c of plan.counters) {
    await attempt(c.problem, async () => {
      await kv.txn(async (tx) => {
        const v = await tx.get(c.key);
        const now = v ? Number(v.toString()) : 0;
        if (now < c.atLeast) tx.put(c.key, Buffer.from(String(c.atLeast)));
      });
      return `raised ${c.key} to ${c.atLeast}`;
    });
  }

  // 2. Dangling entries and extra names of directories: delete the entry, rewrite its directory.
  for (const { entry, problem, reason } of plan.dropEntries) {
    await attempt(problem, async () => {
      await r.txn(async (tx, expect) => {
        await expect(entry.key, `entry ${problem.path}`);
        const target = await expect(keys.attr(entry.ino), `inode ${entry.ino}`);
        if (reason === 'dangling' && target) throw new Changed(`inode ${entry.ino}`);
        const dir = await attrIn(tx, entry.parent, `the directory of ${problem.path}`);
        tx.delete(entry.key);
        touch(tx, dir, nowNs());
      });
      return 'entry removed';
    });
  }

  // 3. Entry types.
  for (const { entry, type, problem } of plan.retype) {
    await attempt(problem, async () => {
      await r.txn(async (tx, expect) => {
        await expect(entry.key, `entry ${problem.path}`);
        const target = await expect(keys.attr(entry.ino), `inode ${entry.ino}`);
        if (!target || decodeAttr(entry.ino, target).type !== type) throw new Changed(`inode ${entry.ino}`);
        const dir = await attrIn(tx, entry.parent, `the directory of ${problem.path}`);
        tx.put(entry.key, encodeEntry(entry.ino, type));
        touch(tx, dir, nowNs());
      });
      return `entry now says ${type}`;
    });
  }

  // 4. Stale orphan keys (the inode has names, or a link count): the inode is kept.
  for (const { ino, problem } of plan.staleOrphans) {
    await attempt(problem, async () => {
      await r.txn(async (tx, expect) => {
        await expect(keys.orphan(ino), `the orphan key of inode ${ino}`);
        await expect(keys.attr(ino), `inode ${ino}`);
        tx.delete(keys.orphan(ino));
      });
      return 'orphan key removed (the inode is kept)';
    });
  }

  // 5. lost+found: unreachable inodes, and inodes without attributes whose block maps remain.
  const needLostFound = plan.moves.length > 0 || plan.strays.some((s) => s.recover);
  let lostFound: number | undefined;
  let lostFoundError: string | undefined;
  if (needLostFound) {
    try {
      lostFound = await ensureLostFound(meta, r);
    } catch (err) {
      lostFoundError = (err as Error).message;
    }
  }

  // 5a. Keys of inodes without attributes.
  for (const s of plan.strays) {
    await attempt(s.problem, async () => {
      if (s.recover) {
        if (lostFound === undefined) throw new Unrepairable(`cannot recover into /${LOST_FOUND}: ${lostFoundError}`);
        const name = await recoverStray(r, s.ino, s.keys, lostFound, meta.blockSize);
        return `block map recovered as /${LOST_FOUND}/${name} (a regular file, mode 0600)`;
      }
      for (let i = 0; i < s.keys.length; i += 100) {
        const batch = s.keys.slice(i, i + 100);
        await r.txn(async (tx, expect) => {
          const a = snap.attrs.get(s.ino);
          // For entries under a non-directory, the inode's attributes must still say so.
          if (a) await expect(keys.attr(s.ino), `inode ${s.ino}`);
          else if (await tx.get(keys.attr(s.ino))) throw new Changed(`inode ${s.ino}`);
          for (const k of batch) tx.delete(k);
        });
      }
      return `${s.keys.length} stray keys removed`;
    });
  }

  // 5b. Unreachable inodes into lost+found as #INO.
  for (const m of plan.moves) {
    await attempt(m.problem, async () => {
      if (lostFound === undefined) throw new Unrepairable(`cannot move into /${LOST_FOUND}: ${lostFoundError}`);
      const lf = lostFound;
      if (m.ino === lf) throw new Unrepairable(`it is /${LOST_FOUND} itself`);
      const name = await r.txn(async (tx, expect) => {
        const value = await expect(keys.attr(m.ino), `inode ${m.ino}`);
        if (!value) throw new Changed(`inode ${m.ino}`);
        const attr = decodeAttr(m.ino, value);
        const now = nowNs();
        // Every directory this changes, read once and written once at the end.
        const dirs = new Map<number, Attr>([[lf, await attrIn(tx, lf, `/${LOST_FOUND}`)]]);
        // Entries that still name it (directory cycles) go; their directories are rewritten.
        for (const n of m.namedBy) {
          await expect(n.key, `entry ${JSON.stringify(n.name)} of inode ${n.parent}`);
          if (!dirs.has(n.parent)) dirs.set(n.parent, await attrIn(tx, n.parent, `directory inode ${n.parent}`));
          const dir = dirs.get(n.parent)!;
          tx.delete(n.key);
          dir.mtime = now;
          dir.ctime = now;
          if (attr.type === 'dir') dir.nlink -= 1;
        }
        const name = await freeName(tx, lf, `#${m.ino}`);
        tx.put(keys.entry(lf, name), encodeEntry(m.ino, attr.type));
        attr.ctime = now;
        if (attr.type === 'dir') attr.parent = lf;
        else attr.nlink = 1;
        tx.put(keys.attr(m.ino), encodeAttr(attr));
        tx.delete(keys.orphan(m.ino));
        const lfAttr = dirs.get(lf)!;
        lfAttr.mtime = now;
        lfAttr.ctime = now;
        if (attr.type === 'dir') lfAttr.nlink += 1;
        for (const dir of dirs.values()) tx.put(keys.attr(dir.ino), encodeAttr(dir));
        return name;
      });
      return `moved to /${LOST_FOUND}/${name}`;
    });
  }

  // 6. Link counts of files: the names the check found must all still be there.
  for (const { ino, names, problem } of plan.fileNlink) {
    await attempt(problem, async () => {
      const n = await r.txn(async (tx, expect) => {
        const value = await expect(keys.attr(ino), `inode ${ino}`);
        if (!value) throw new Changed(`inode ${ino}`);
        for (const e of names) await expect(e.key, `entry ${JSON.stringify(e.name)} of inode ${e.parent}`);
        const attr = decodeAttr(ino, value);
        attr.nlink = names.length;
        attr.ctime = nowNs();
        tx.put(keys.attr(ino), encodeAttr(attr));
        if (names.length > 0) tx.delete(keys.orphan(ino));
        return names.length;
      });
      return `link count set to ${n}`;
    });
  }

  // 7. Parents of directories.
  for (const { ino, entry, problem } of plan.dirParent) {
    await attempt(problem, async () => {
      const parent = await r.txn(async (tx, expect) => {
        const attr = await attrIn(tx, ino, `inode ${ino}`);
        if (entry) await expect(entry.key, `entry ${JSON.stringify(entry.name)} of inode ${entry.parent}`);
        const want = entry ? entry.parent : ROOT_INO;
        if (attr.parent !== want) {
          attr.parent = want;
          tx.put(keys.attr(ino), encodeAttr(attr));
        }
        return want;
      });
      return `parent set to inode ${parent}`;
    });
  }

  // 8. Link counts of directories, counted in the transaction (after the entry repairs above).
  //    Every change to a directory's entries rewrites its attributes, which this reads.
  const dirs = new Map<number, Problem | undefined>(plan.dirNlink.map((d) => [d.ino, d.problem]));
  for (const { entry } of plan.dropEntries) if (!dirs.has(entry.parent)) dirs.set(entry.parent, undefined);
  for (const m of plan.moves) for (const n of m.namedBy) if (!dirs.has(n.parent)) dirs.set(n.parent, undefined);
  for (const [ino, problem] of dirs) {
    const work = async () => {
      const n = await r.txn(async (tx) => {
        const attr = await attrIn(tx, ino, `directory inode ${ino}`);
        if (attr.type !== 'dir') throw new Changed(`inode ${ino}`);
        let subdirs = 0;
        let startAfter: string | undefined;
        for (;;) {
          const batch = await tx.scan(keys.entries(ino), { startAfter, limit: 1000 });
          for (const { key, value } of batch) if (decodeEntry(key, value).type === 'dir') subdirs++;
          if (batch.length < 1000) break;
          startAfter = batch[batch.length - 1].key;
        }
        if (attr.nlink !== 2 + subdirs) {
          attr.nlink = 2 + subdirs;
          tx.put(keys.attr(ino), encodeAttr(attr));
        }
        return attr.nlink;
      });
      return `link count set to ${n}`;
    };
    if (problem) await attempt(problem, work);
    else await work().catch(() => undefined); // a directory an entry repair touched: the next round checks it
  }

  // 9. Shared blocks: each further reference gets its own copy (stored first, then referenced;
  //    a copy whose transaction fails is only an unreferenced block for gc).
  for (const c of plan.copies) {
    await attempt(c.problem, async () => {
      const data = await store.get(String(c.id));
      if (!data) throw new Unrepairable(`block ${c.id} is missing from the block store`);
      const done: string[] = [];
      for (const o of c.others) {
        const [copy] = await meta.allocBlockIds(1);
        await store.put(String(copy), data);
        await r.txn(async (tx) => {
          const attr = await attrIn(tx, o.ino, `inode ${o.ino}`);
          const key = keys.chunk(o.ino, Math.floor(o.index / CHUNK_BLOCKS));
          const map = decodeChunk(await tx.get(key));
          const ref = map.get(o.index % CHUNK_BLOCKS);
          if (!ref || !refIds(ref).includes(c.id)) throw new Changed(`the block map of inode ${o.ino}`);
          // The same id twice in one reference (base and part, or two parts): all of them get the copy.
          map.set(o.index % CHUNK_BLOCKS, {
            id: ref.id === c.id ? copy : ref.id,
            len: ref.len,
            ...(ref.parts && { parts: ref.parts.map((part) => (part.id === c.id ? { ...part, id: copy } : part)) }),
          });
          tx.put(key, encodeChunk(map));
          attr.ctime = nowNs();
          tx.put(keys.attr(o.ino), encodeAttr(attr));
        });
        done.push(`${plan.pathOf(o.ino)} block ${o.index} now uses a copy (id ${copy})`);
      }
      return done.join('; ');
    });
  }

  // 10. Block maps and bytes used, per file, counted in the transaction.
  for (const [ino, fix] of plan.blockFixes) {
    await attempt(fix.problems, async () => repairBlocks(r, ino, fix.missing, meta.blockSize));
  }
}

/** A name in dir that is free: base, else base.1, base.2, ... */
async function freeName(tx: KvTxn, dir: number, base: string): Promise<string> {
  for (let i = 0; ; i++) {
    const name = i === 0 ? base : `${base}.${i}`;
    if (!(await tx.get(keys.entry(dir, name)))) return name;
  }
}

/** /lost+found, created (mode 0700) when missing. */
async function ensureLostFound(meta: Meta, r: Repairer): Promise<number> {
  const existing = await meta.kv.get(keys.entry(ROOT_INO, LOST_FOUND));
  if (existing) {
    const e = decodeEntry(LOST_FOUND, existing);
    const attr = await meta.kv.get(keys.attr(e.ino));
    if (!attr || decodeAttr(e.ino, attr).type !== 'dir') throw new Unrepairable(`/${LOST_FOUND} exists and is not a directory; rename it`);
    return e.ino;
  }
  const attr = await meta.create(ROOT_INO, LOST_FOUND, { type: 'dir', perm: 0o700, uid: 0, gid: 0 });
  // meta.create rewrote the root's attributes and added an entry: later comparisons expect them.
  r.refresh(keys.attr(ROOT_INO), await meta.kv.get(keys.attr(ROOT_INO)));
  r.refresh(keys.entry(ROOT_INO, LOST_FOUND), await meta.kv.get(keys.entry(ROOT_INO, LOST_FOUND)));
  r.refresh(keys.attr(attr.ino), await meta.kv.get(keys.attr(attr.ino)));
  return attr.ino;
}

/**
 * Gives an inode that lost its attributes but kept a block map new attributes (a regular file,
 * 0600, root's) and the name /lost+found/#INO; its other stray keys (entries, symlink target)
 * are deleted in the same transaction when few, else in later ones.
 */
async function recoverStray(r: Repairer, ino: number, strayKeys: string[], lf: number, bs: number): Promise<string> {
  const chunkPrefix = keys.chunks(ino);
  const others = strayKeys.filter((k) => !k.startsWith(chunkPrefix) && !k.startsWith(keys.xattrs(ino)));
  const name = await r.txn(async (tx, expect) => {
    if (await tx.get(keys.attr(ino))) throw new Changed(`inode ${ino}`);
    let size = 0;
    let used = 0;
    for (const { key, value } of await tx.scan(chunkPrefix)) {
      const chunk = keys.chunkIndexOf(key);
      for (const [i, ref] of decodeChunk(value)) {
        const len = Math.max(0, Math.min(ref.len, bs));
        used += ref.len;
        size = Math.max(size, (chunk * CHUNK_BLOCKS + i) * bs + len);
      }
    }
    const now = nowNs();
    const attr: Attr = { ino, type: 'file', mode: typeBits('file') | 0o600, uid: 0, gid: 0, nlink: 1, size, used, rdev: 0, atime: now, mtime: now, ctime: now, parent: 0 };
    const lfAttr = await attrIn(tx, lf, `/${LOST_FOUND}`);
    const name = await freeName(tx, lf, `#${ino}`);
    tx.put(keys.attr(ino), encodeAttr(attr));
    tx.put(keys.entry(lf, name), encodeEntry(ino, 'file'));
    touch(tx, lfAttr, now);
    for (const k of others.slice(0, 100)) {
      await expect(k, `key ${k}`);
      tx.delete(k);
    }
    return name;
  });
  for (let i = 100; i < others.length; i += 100) {
    const batch = others.slice(i, i + 100);
    await r.txn(async (tx) => {
      for (const k of batch) tx.delete(k);
    });
  }
  return name;
}

/** Chunk keys one block repair transaction rewrites (etcd allows 128 operations per txn). */
const CHUNKS_PER_REPAIR = 100;

/**
 * Removes references to missing blocks, clamps lengths to the block size, drops what lies beyond
 * the end of the file and recounts `used`, all against the block map as it is in the transaction
 * (every change to a file's block map rewrites its attributes, which the transaction reads).
 */
async function repairBlocks(r: Repairer, ino: number, missing: Set<number>, bs: number): Promise<string> {
  const notes: string[] = [];
  let lost = 0;
  let round = 0;
  for (;;) {
    const result = await r.txn(async (tx) => {
      const attr = await attrIn(tx, ino, `inode ${ino}`);
      if (attr.type !== 'file') throw new Changed(`inode ${ino}`);
      const chunks = await tx.scan(keys.chunks(ino));
      let used = 0;
      let changedKeys = 0;
      const txNotes: string[] = [];
      let txLost = 0;
      for (const { key, value } of chunks) {
        const chunk = keys.chunkIndexOf(key);
        const map = decodeChunk(value);
        let changed = false;
        const mayChange = changedKeys < CHUNKS_PER_REPAIR;
        for (const [i, ref] of [...map]) {
          const index = chunk * CHUNK_BLOCKS + i;
          const offset = index * bs;
          let len = ref.len;
          let drop = false;
          const lostId = refIds(ref).find((id) => missing.has(id));
          if (lostId !== undefined) {
            // A missing part loses the whole block too: the base without it is not the file's data.
            drop = true;
            txLost += Math.min(Math.max(len, 0), bs);
            txNotes.push(`data lost at bytes ${offset}-${offset + Math.min(Math.max(len, 1), bs) - 1} (block ${index}, id ${lostId}): reads as zeros`);
          } else if (!(len > 0)) {
            drop = true;
            txNotes.push(`block ${index} (id ${ref.id}) with length ${len} removed`);
          } else {
            if (len > bs) {
              txNotes.push(`block ${index} (id ${ref.id}) length ${len} clamped to ${bs}`);
              len = bs;
            }
            if (offset >= attr.size) {
              drop = true;
              txNotes.push(`block ${index} (id ${ref.id}) beyond the end of the file removed (kvfs gc frees it)`);
            } else if (offset + len > attr.size) {
              txNotes.push(`block ${index} (id ${ref.id}) shortened to end with the file`);
              len = attr.size - offset;
            }
          }
          if (!mayChange) {
            used += ref.len;
            continue;
          }
          if (drop) {
            map.delete(i);
            changed = true;
          } else {
            if (len !== ref.len) {
              map.set(i, { ...ref, len });
              changed = true;
            }
            used += len;
          }
        }
        if (changed) {
          changedKeys++;
          if (map.size === 0) tx.delete(key);
          else tx.put(key, encodeChunk(map));
        }
      }
      const more = changedKeys >= CHUNKS_PER_REPAIR;
      if (changedKeys > 0 || attr.used !== used) {
        if (attr.used !== used) txNotes.push(`bytes used ${attr.used} -> ${used}`);
        attr.used = used;
        attr.ctime = nowNs();
        tx.put(keys.attr(ino), encodeAttr(attr));
      }
      return { notes: txNotes, lost: txLost, more };
    });
    notes.push(...result.notes);
    lost += result.lost;
    if (!result.more || ++round > 1000) break;
  }
  if (notes.length === 0) return 'nothing to change any more';
  return (lost ? `${lost} bytes of data lost; ` : '') + summarizeNotes(notes);
}

function summarizeNotes(notes: string[]): string {
  const unique = [...new Set(notes)];
  return unique.length > 6 ? `${unique.slice(0, 6).join('; ')}; and ${unique.length - 6} more` : unique.join('; ');
}

// ---------------------------------------------------------------------------------------------

const signature = (p: Problem) => `${p.kind}|${p.ino}|${p.path}|${p.index ?? ''}|${p.blockId ?? ''}`;

/** Checks the volume and, with options.repair, repairs it (see the header). */
export async function fsck(meta: Meta, store: BlockStore, volume: string, options: FsckOptions = {}): Promise<FsckReport> {
  const rounds: CheckResult[] = [];
  const maxRounds = options.repair ? (options.maxRounds ?? 4) : 1;
  /** Each problem as first reported (later rounds update its repair status). */
  const seen = new Map<string, Problem>();
  let final: CheckResult;
  for (let round = 1; ; round++) {
    const { result, plan } = await check(meta, store, options);
    final = result;
    const fresh = result.problems.filter((p) => !seen.has(signature(p)));
    // After a repair round: stop once a check finds nothing it has not reported (and tried) before.
    if (round > 1 && fresh.length === 0) break;
    const shown: CheckResult = { ...result, problems: round === 1 ? result.problems : fresh };
    rounds.push(shown);
    for (const p of shown.problems) seen.set(signature(p), p);
    options.onCheck?.(shown, round);
    if (!options.repair || result.problems.length === 0) break;
    if (round > maxRounds) break;
    await repairAll(meta, store, plan, (p, status, detail) => {
      const first = seen.get(signature(p)) ?? p;
      const isNew = !first.repair;
      first.repair = { status, detail };
      if (isNew) options.onRepair?.(first);
    });
    for (const p of shown.problems) {
      if (p.repair) continue;
      p.repair = { status: 'left', detail: p.repairable ? 'not repaired (it depended on another repair that failed)' : 'fsck cannot repair this' };
      options.onRepair?.(p);
    }
  }
  let left = final.problems;
  if (options.repair) {
    left = final.problems.map((p) => {
      const first = seen.get(signature(p));
      if (first && first.repair?.status === 'repaired') first.repair = { status: 'left', detail: `${first.repair.detail}, but the problem is still there` };
      return { ...p, repair: first?.repair ?? { status: 'left', detail: 'still there after the repairs' } };
    });
  }
  let repaired = 0;
  for (const p of seen.values()) if (p.repair?.status === 'repaired') repaired++;
  return { volume, rounds, left, repaired, clean: left.length === 0 };
}

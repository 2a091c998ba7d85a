// Helpers for driving a mounted filesystem the way a user would: Node fs calls, shell tools,
// and an unprivileged user (uid/gid 65534 through setpriv). Errors are compared by errno code.
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { run, RunResult } from './mount';

export const NOBODY = 65534;

/** The error code a synchronous call fails with, or 'OK'. */
export function codeOf(fn: () => unknown): string {
  try {
    fn();
    return 'OK';
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (typeof code !== 'string') throw e;
    return code;
  }
}

/** The error code a promise rejects with, or 'OK'. */
export async function codeOfAsync(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'OK';
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (typeof code !== 'string') throw e;
    return code;
  }
}

export function lstat(p: string): fs.BigIntStats {
  return fs.lstatSync(p, { bigint: true });
}

export function stat(p: string): fs.BigIntStats {
  return fs.statSync(p, { bigint: true });
}

export function sha256(buf: Buffer | string): string {
  return createHash('sha256').update(buf).digest('hex');
}

export function sha256File(p: string): string {
  const h = createHash('sha256');
  const fd = fs.openSync(p, 'r');
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

/** Read `len` bytes at `pos` (short at EOF). */
export function pread(p: string, pos: number, len: number): Buffer {
  const fd = fs.openSync(p, 'r');
  try {
    const buf = Buffer.alloc(len);
    let got = 0;
    while (got < len) {
      const n = fs.readSync(fd, buf, got, len - got, pos + got);
      if (n === 0) break;
      got += n;
    }
    return buf.subarray(0, got);
  } finally {
    fs.closeSync(fd);
  }
}

/** Write `data` at `pos` (file must exist unless flags say otherwise). */
export function pwrite(p: string, pos: number, data: Buffer | string, flags = 'r+'): void {
  const fd = fs.openSync(p, flags);
  try {
    const buf = typeof data === 'string' ? Buffer.from(data) : data;
    let done = 0;
    while (done < buf.length) done += fs.writeSync(fd, buf, done, buf.length - done, pos + done);
  } finally {
    fs.closeSync(fd);
  }
}

/** Run a command (optionally as another uid/gid via setpriv, with no supplementary groups). */
export function sh(cmd: string, args: string[], opts: { uid?: number; timeoutMs?: number; input?: string | Buffer; cwd?: string } = {}): Promise<RunResult> {
  const env = { ...process.env, LC_ALL: 'C', TZ: 'UTC' };
  if (opts.uid !== undefined) {
    const uid = String(opts.uid);
    return run('setpriv', ['--reuid', uid, '--regid', uid, '--clear-groups', cmd, ...args], {
      env,
      timeoutMs: opts.timeoutMs,
      input: opts.input,
      cwd: opts.cwd ?? '/',
    });
  }
  return run(cmd, args, { env, timeoutMs: opts.timeoutMs, input: opts.input, cwd: opts.cwd ?? '/' });
}

/** Like sh, but throws with the output unless the exit code is 0. */
export async function shOk(cmd: string, args: string[], opts: { uid?: number; timeoutMs?: number; input?: string | Buffer; cwd?: string } = {}): Promise<string> {
  const r = await sh(cmd, args, opts);
  if (r.code !== 0)
    throw new Error(`${cmd} ${args.join(' ')} failed: exit ${r.code} signal ${r.signal}${r.timedOut ? ' (timed out)' : ''}\n${r.stderr}${r.stdout}`);
  return r.stdout;
}

export type AsResult = { ok: true; value: unknown } | { ok: false; code: string };

/**
 * Run `body` (the text of a JS function body that gets `fs`, `path` and `arg` and may return a
 * JSON value) in a fresh node process as uid/gid `uid` with no supplementary groups.
 * Resolves with { ok, value } or { ok: false, code } where code is the errno code thrown.
 */
export async function nodeAs(uid: number, body: string, arg: unknown = null): Promise<AsResult> {
  const script =
    `const fs=require('fs'),path=require('path');const arg=JSON.parse(process.argv[1]);` +
    `let out;try{const value=(function(){${body}\n})();out={ok:true,value:value===undefined?null:value}}` +
    `catch(e){if(typeof e.code!=='string'){console.error(e&&e.stack||e);process.exit(3)}out={ok:false,code:e.code}}` +
    `process.stdout.write(JSON.stringify(out))`;
  const r = await sh(process.execPath, ['-e', script, JSON.stringify(arg)], { uid, timeoutMs: 60_000 });
  if (r.code !== 0) throw new Error(`node as uid ${uid} failed: exit ${r.code}\n${r.stderr}`);
  return JSON.parse(r.stdout) as AsResult;
}

// ---------------------------------------------------------------------------------------------
// Extended attributes. Debian's `attr` package (setfattr/getfattr) is not installed on these
// machines, so we use Python's os.*xattr, which make the same syscalls.

export const HAVE_SETFATTR = spawnSync('sh', ['-c', 'command -v setfattr && command -v getfattr'], { stdio: 'pipe' }).status === 0;

const PYTHON = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

const XATTR_PY = `
import errno, json, os, sys
ops = json.loads(sys.argv[1])
res = []
for op in ops:
    try:
        kind = op['op']; p = op['path']; follow = op.get('follow', True)
        if kind == 'set':
            flags = {'create': os.XATTR_CREATE, 'replace': os.XATTR_REPLACE}.get(op.get('flags'), 0)
            os.setxattr(p, op['name'], bytes.fromhex(op['hex']), flags, follow_symlinks=follow)
            res.append({'ok': True})
        elif kind == 'get':
            res.append({'ok': True, 'hex': os.getxattr(p, op['name'], follow_symlinks=follow).hex()})
        elif kind == 'list':
            res.append({'ok': True, 'names': sorted(os.listxattr(p, follow_symlinks=follow))})
        elif kind == 'remove':
            os.removexattr(p, op['name'], follow_symlinks=follow)
            res.append({'ok': True})
        else:
            raise ValueError(kind)
    except OSError as e:
        res.append({'ok': False, 'code': errno.errorcode.get(e.errno, str(e.errno))})
print(json.dumps(res))
`;

export type XattrOp =
  | { op: 'set'; path: string; name: string; value: Buffer | string; flags?: 'create' | 'replace'; follow?: boolean }
  | { op: 'get'; path: string; name: string; follow?: boolean }
  | { op: 'list'; path: string; follow?: boolean }
  | { op: 'remove'; path: string; name: string; follow?: boolean };

export interface XattrResult {
  ok: boolean;
  code?: string;
  /** get: the value */
  value?: Buffer;
  /** list: sorted names */
  names?: string[];
}

export async function xattrs(ops: XattrOp[], uid?: number): Promise<XattrResult[]> {
  const wire = ops.map((o) =>
    o.op === 'set' ? { ...o, value: undefined, hex: Buffer.from(o.value).toString('hex') } : o,
  );
  const r = await sh(PYTHON, ['-c', XATTR_PY, JSON.stringify(wire)], { uid, timeoutMs: 60_000 });
  if (r.code !== 0) throw new Error(`python xattr helper failed: exit ${r.code}\n${r.stderr}`);
  return (JSON.parse(r.stdout) as { ok: boolean; code?: string; hex?: string; names?: string[] }[]).map((x) => ({
    ok: x.ok,
    code: x.code,
    names: x.names,
    value: x.hex !== undefined ? Buffer.from(x.hex, 'hex') : undefined,
  }));
}

export async function xattr1(op: XattrOp, uid?: number): Promise<XattrResult> {
  return (await xattrs([op], uid))[0];
}

// ---------------------------------------------------------------------------------------------
// Deterministic pseudo-random data

/** mulberry32: a tiny seeded PRNG returning floats in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `len` deterministic bytes from a seed (not cryptographic; fast enough for MiBs). */
export function prngBytes(seed: number, len: number): Buffer {
  const rnd = mulberry32(seed);
  const buf = Buffer.allocUnsafe(len);
  let i = 0;
  for (; i + 4 <= len; i += 4) buf.writeUInt32LE((rnd() * 4294967296) >>> 0, i);
  for (; i < len; i++) buf[i] = (rnd() * 256) | 0;
  return buf;
}

/**
 * Runs `script` in a new Node (`node -e script ...args`): its stdout, exit code and signal.
 * `killOn`: SIGKILL it once stdout contains this. `addressSpaceKb`: run it under `ulimit -v`.
 */
export function runNode(
  script: string,
  args: string[],
  options: { killOn?: string; addressSpaceKb?: number } = {},
): Promise<{ out: string; code: number | null; signal: NodeJS.Signals | null }> {
  const { killOn, addressSpaceKb } = options;
  const [command, argv] = addressSpaceKb
    ? ['bash', ['-c', `ulimit -v ${addressSpaceKb} && exec "$0" -e "$@"`, process.execPath, script, ...args]]
    : [process.execPath, ['-e', script, ...args]];
  return new Promise((resolve, reject) => {
    const child = spawn(command, argv, { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (killOn && out.includes(killOn)) child.kill('SIGKILL');
    });
    child.on('error', reject);
    // 'close', not 'exit': only then has all of the child's output been read.
    child.on('close', (code, signal) => resolve({ out, code, signal }));
  });
}

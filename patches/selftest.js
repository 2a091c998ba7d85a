#!/usr/bin/env node
'use strict'
// Self-test of the patched fuse-native binding (see patches/README.md).
// Mounts a small in-memory filesystem on a temp dir and checks, through the kernel with child
// processes, the behaviour the kvfs patch promises. Needs root (allow_other, setpriv, umount).
// Usage: node patches/selftest.js        exit 0 = all passed; non-zero with a message otherwise.

const fs = require('fs')
const os = require('os')
const path = require('path')
const { execFile } = require('child_process')

const ROOT = path.resolve(__dirname, '..')
const OVERALL_TIMEOUT_MS = 120 * 1000
const CHILD_TIMEOUT_MS = 30 * 1000

let Fuse
try {
  Fuse = require(require.resolve('fuse-native', { paths: [ROOT] }))
} catch (err) {
  fail('cannot load the patched fuse-native from ' + ROOT + '/node_modules: ' + err.message)
}

if (process.getuid() !== 0) fail('must run as root (allow_other, setpriv, umount)')

const base = fs.mkdtempSync(path.join(os.tmpdir(), 'kvfs-fuse-selftest-'))
fs.chmodSync(base, 0o755) // uid 65534 must reach the mount point
const MNT = path.join(base, 'mnt')
fs.mkdirSync(MNT)

const S_IFDIR = 0o040000
const S_IFREG = 0o100000
const GiB = 1024 * 1024 * 1024
const GiBn = 1024n * 1024n * 1024n
const INO_BASE = 0x100000000 // > 2^32: checks that st_ino is passed with 64 bits

// ---------------------------------------------------------------- the in-memory filesystem
const nodes = new Map()
let nextIno = 2
const log = { create: [], utimens: [], writes: [], reads: [], fgetattr: [], chown: [], fh: [], locks: [], flocks: [], fallocates: [] }
let slowGetattrMs = 0
let inFlight = 0
let peakInFlight = 0

function nowNs () { return BigInt(Date.now()) * 1000000n }

function addNode (p, mode, uid, gid) {
  const t = nowNs()
  const n = { ino: INO_BASE + nextIno++, mode, uid, gid, size: 0, data: Buffer.alloc(0), atime: t, mtime: t, ctime: t, nlink: mode & S_IFDIR ? 2 : 1 }
  nodes.set(p, n)
  return n
}
nodes.set('/', { ino: 1, mode: S_IFDIR | 0o777, uid: 0, gid: 0, size: 4096, data: null, atime: new Date(0), mtime: new Date(0), ctime: new Date(0), nlink: 2 })

function statOf (n) {
  return {
    mode: n.mode, uid: n.uid, gid: n.gid, size: n.size, nlink: n.nlink, ino: n.ino,
    blksize: 4096, blocks: typeof n.size === 'bigint' ? (n.size + 511n) / 512n : Math.ceil(n.size / 512), atime: n.atime, mtime: n.mtime, ctime: n.ctime
  }
}

const MAX_STORED = 64 * 1024 * 1024 // bytes beyond this are accepted but read back as zeros

const ops = {
  getattr (p, cb) {
    const n = nodes.get(p)
    const reply = () => n ? cb(0, statOf(n)) : cb(Fuse.ENOENT)
    if (slowGetattrMs && p.startsWith('/slow-')) {
      peakInFlight = Math.max(peakInFlight, ++inFlight)
      return setTimeout(() => { inFlight--; reply() }, slowGetattrMs)
    }
    reply()
  },
  fgetattr (p, fd, cb) {
    log.fgetattr.push({ path: p, fd })
    const n = nodes.get(p)
    if (!n) return cb(Fuse.ENOENT)
    cb(0, statOf(n))
  },
  readdir (p, cb) {
    const prefix = p === '/' ? '/' : p + '/'
    const names = []
    for (const k of nodes.keys()) {
      if (k !== p && k.startsWith(prefix) && !k.slice(prefix.length).includes('/')) names.push(k.slice(prefix.length))
    }
    cb(0, names)
  },
  create (p, mode, cb) {
    const ctx = fuse.getContext() // synchronously, first thing: the contract
    log.create.push({ path: p, ctx: { ...ctx } })
    addNode(p, mode, ctx.uid, ctx.gid)
    cb(0, handleFor(p))
  },
  open (p, flags, cb) {
    if (!nodes.has(p)) return cb(Fuse.ENOENT)
    cb(0, handleFor(p))
  },
  release (p, fd, cb) { log.fh.push({ op: 'release', path: p, fd }); cb(0) },
  read (p, fd, buf, len, pos, cb) {
    log.reads.push({ path: p, fd, len, pos })
    const n = nodes.get(p)
    if (!n) return cb(Fuse.ENOENT)
    if (pos >= n.size) return cb(0)
    const end = Math.min(n.size, pos + len)
    buf.fill(0, 0, end - pos)
    if (pos < n.data.length) n.data.copy(buf, 0, pos, Math.min(end, n.data.length))
    cb(end - pos)
  },
  write (p, fd, buf, len, pos, cb) {
    log.writes.push({ path: p, fd, len, pos })
    const n = nodes.get(p)
    if (!n) return cb(Fuse.ENOENT)
    if (pos + len <= MAX_STORED) {
      if (n.data.length < pos + len) {
        const grown = Buffer.alloc(pos + len)
        n.data.copy(grown)
        n.data = grown
      }
      buf.copy(n.data, pos, 0, len)
    }
    n.size = Math.max(n.size, pos + len)
    n.mtime = n.ctime = nowNs()
    cb(len)
  },
  truncate (p, size, cb) { resize(p, size, cb) },
  ftruncate (p, fd, size, cb) { resize(p, size, cb) },
  utimens (p, atime, mtime, cb) {
    log.utimens.push({ path: p, atime, mtime })
    const n = nodes.get(p)
    if (!n) return cb(Fuse.ENOENT)
    if (atime !== null) n.atime = atime
    if (mtime !== null) n.mtime = mtime
    n.ctime = nowNs()
    cb(0)
  },
  chown (p, uid, gid, cb) {
    log.chown.push({ path: p, uid, gid })
    const n = nodes.get(p)
    if (!n) return cb(Fuse.ENOENT)
    if (uid !== 0xffffffff) n.uid = uid
    if (gid !== 0xffffffff) n.gid = gid
    cb(0)
  },
  chmod (p, mode, cb) {
    const n = nodes.get(p)
    if (!n) return cb(Fuse.ENOENT)
    n.mode = (n.mode & ~0o7777) | (mode & 0o7777)
    cb(0)
  },
  unlink (p, cb) { nodes.delete(p) ? cb(0) : cb(Fuse.ENOENT) },
  getxattr (p, name, position, cb) {
    if (name === 'user.long') return cb(0, Buffer.alloc(100, 0x61))
    cb(0, null)
  },
  listxattr (p, cb) { cb(0, ['user.long']) },
  // Record the lock calls; F_GETLK answers with a made-up conflicting lock.
  lock (p, fd, cmd, lock, owner, cb) {
    log.locks.push({ path: p, fd, cmd, ...lock, owner })
    if (cmd === 5) return cb(0, { type: 1, start: 5n * GiBn, len: 7n, pid: process.pid })
    cb(0)
  },
  flock (p, fd, op, owner, cb) { log.flocks.push({ path: p, fd, op, owner }); cb(0) },
  // Record fallocate; mode 0 grows the file like the daemon does.
  fallocate (p, fd, mode, offset, length, cb) {
    log.fallocates.push({ path: p, fd, mode, offset, length })
    if (mode !== 0) return cb(0)
    const n = nodes.get(p)
    if (!n) return cb(Fuse.ENOENT)
    n.size = Math.max(n.size, offset + length)
    cb(0)
  }
}

// Handle numbers: files named fh-<n> get handle n, everything else handle 1.
function handleFor (p) {
  const m = /^\/fh-(\d+)$/.exec(p)
  return m ? Number(m[1]) : 1
}

function resize (p, size, cb) {
  const n = nodes.get(p)
  if (!n) return cb(Fuse.ENOENT)
  n.size = size
  if (n.data.length > size) n.data = n.data.subarray(0, size)
  n.mtime = n.ctime = nowNs()
  cb(0)
}

const fuse = new Fuse(MNT, ops, {
  defaultPermissions: true,
  allowOther: true,
  useIno: true,
  attrTimeout: 0,
  entryTimeout: 0,
  fsname: 'kvfs-selftest,big_writes,max_write=1048576,max_read=1048576',
  timeout: 20 * 1000
})

// ---------------------------------------------------------------- helpers
function fail (msg) {
  console.error('selftest FAILED: ' + msg)
  process.exit(1)
}

function run (cmd, args, opts = {}) {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: CHILD_TIMEOUT_MS, env: { ...process.env, TZ: 'UTC', LC_ALL: 'C' }, ...opts }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`${cmd} ${args.join(' ')}: ${(stderr || err.message).trim()}`))
      resolve(stdout.trim())
    })
  })
}

let passed = 0
const failures = []
function check (name, cond, detail) {
  if (cond) {
    passed++
    console.log('  ok    ' + name)
  } else {
    failures.push(name)
    console.log('  FAIL  ' + name + (detail ? '  -- ' + detail : ''))
  }
}

function isMounted () {
  const info = fs.readFileSync('/proc/self/mountinfo', 'utf8')
  return info.split('\n').some(line => line.split(' ')[4] === MNT)
}

const T0 = Date.now()
const TIME = '2001-02-03 04:05:06.123456789'
const TIME_NS = 981173106123456789n
const TIME2 = '2002-03-04 05:06:07.987654321'
const TIME3 = '2003-04-05 06:07:08.000000001'

// ---------------------------------------------------------------- the checks
/** Waits up to `tries` x 20 ms until `cond()` holds, for what the kernel sends after a syscall returned. */
async function until (cond, tries) {
  for (let i = 0; i < tries && !cond(); i++) await new Promise(resolve => setTimeout(resolve, 20))
}

async function main () {
  await new Promise((resolve, reject) => fuse.mount(err => err ? reject(err) : resolve()))
  if (!isMounted()) throw new Error('mount did not appear in /proc/self/mountinfo')
  const f = path.join(MNT, 'f')

  console.log('utimens with nanoseconds, UTIME_OMIT, UTIME_NOW', ((Date.now() - T0) / 1000).toFixed(1) + ' s')
  await run('touch', ['-d', TIME, f])
  check('touch -d sets mtime with ns', await run('stat', ['-c', '%y', f]) === TIME + ' +0000', await run('stat', ['-c', '%y', f]))
  check('touch -d sets atime with ns', await run('stat', ['-c', '%x', f]) === TIME + ' +0000')
  const u0 = log.utimens[log.utimens.length - 1]
  check('utimens handler got BigInt ns (atime, mtime)', u0 && u0.atime === TIME_NS && u0.mtime === TIME_NS, u0 && `${u0.atime} ${u0.mtime}`)

  await run('touch', ['-m', '-d', TIME2, f])
  const u1 = log.utimens[log.utimens.length - 1]
  check('touch -m reaches handler with atime null', u1 !== u0 && u1.atime === null && typeof u1.mtime === 'bigint', u1 && `${u1.atime} ${u1.mtime}`)
  check('touch -m changes mtime', await run('stat', ['-c', '%y', f]) === TIME2 + ' +0000')
  check('touch -m leaves atime', await run('stat', ['-c', '%x', f]) === TIME + ' +0000')

  await run('touch', ['-a', '-d', TIME3, f])
  const u2 = log.utimens[log.utimens.length - 1]
  check('touch -a reaches handler with mtime null', u2 !== u1 && u2.mtime === null && typeof u2.atime === 'bigint', u2 && `${u2.atime} ${u2.mtime}`)
  check('touch -a changes atime', await run('stat', ['-c', '%x', f]) === TIME3 + ' +0000')
  check('touch -a leaves mtime', await run('stat', ['-c', '%y', f]) === TIME2 + ' +0000')

  const before = nowNs()
  await run('touch', [f])
  const u3 = log.utimens[log.utimens.length - 1]
  const after = nowNs() + 1000000n
  check('touch (UTIME_NOW) is resolved to the current time', u3 !== u2 && u3.atime >= before - 1000000n && u3.atime <= after && u3.mtime === u3.atime, u3 && `${u3.atime} ${u3.mtime}`)

  await run('touch', ['-d', '1969-12-31 23:59:59.5', f])
  check('negative times (before 1970) pass both ways', await run('stat', ['-c', '%y', f]) === '1969-12-31 23:59:59.500000000 +0000',
    await run('stat', ['-c', '%y', f]))

  nodes.get('/').mtime = new Date(Date.UTC(2010, 0, 2, 3, 4, 5, 678))
  check('Date stat times still accepted', await run('stat', ['-c', '%y', MNT]) === '2010-01-02 03:04:05.678000000 +0000')
  nodes.get('/').mtime = Date.UTC(2011, 0, 2, 3, 4, 5, 9)
  check('number (ms) stat times still accepted', await run('stat', ['-c', '%y', MNT]) === '2011-01-02 03:04:05.009000000 +0000')

  console.log('caller context (getContext)', ((Date.now() - T0) / 1000).toFixed(1) + ' s')
  const x = path.join(MNT, 'x')
  await run('setpriv', ['--reuid', '65534', '--regid', '65534', '--clear-groups', 'touch', x])
  const c = log.create.find(e => e.path === '/x')
  check('create handler saw uid/gid 65534', c && c.ctx.uid === 65534 && c.ctx.gid === 65534, c && JSON.stringify(c.ctx))
  check('create handler saw a pid', c && c.ctx.pid > 0)
  check('file owned by 65534:65534', await run('stat', ['-c', '%u:%g', x]) === '65534:65534')
  await run('touch', [path.join(MNT, 'y')])
  const cy = log.create.find(e => e.path === '/y')
  check('root caller seen as uid/gid 0', cy && cy.ctx.uid === 0 && cy.ctx.gid === 0, cy && JSON.stringify(cy.ctx))
  check('fgetattr (after create) goes to ops.fgetattr with the handle', log.fgetattr.some(e => e.path === '/y' && e.fd === 1))

  console.log('stat: ino, size and blocks above 32 bits', ((Date.now() - T0) / 1000).toFixed(1) + ' s')
  const want = String(nodes.get('/x').ino)
  check('st_ino passes 64 bits (use_ino)', await run('stat', ['-c', '%i', x]) === want, await run('stat', ['-c', '%i', x]) + ' want ' + want)
  const big = path.join(MNT, 'big')
  await run('truncate', ['-s', '3T', big])
  check('size above 4 GiB', await run('stat', ['-c', '%s', big]) === String(3 * 1024 * GiB))
  check('blocks above 2^32', await run('stat', ['-c', '%b', big]) === String(3 * 1024 * GiB / 512))
  const bn = addNode('/bigint', S_IFREG | 0o644, 0, 0)
  bn.ino = (1n << 62n) + 5n
  bn.size = (1n << 44n) + 3n
  const bstat = await run('stat', ['-c', '%i %s', path.join(MNT, 'bigint')])
  check('bigint ino and size pass through', bstat === `${(1n << 62n) + 5n} ${(1n << 44n) + 3n}`, bstat)

  console.log('write sizes with big_writes, offsets above 4 GiB', ((Date.now() - T0) / 1000).toFixed(1) + ' s')
  log.writes.length = 0
  const dd = path.join(MNT, 'dd')
  await run('dd', ['if=/dev/zero', 'of=' + dd, 'bs=1M', 'count=8', 'status=none'])
  const sizes = log.writes.filter(w => w.path === '/dd').map(w => w.len)
  check('dd bs=1M arrives in >= 128 KiB writes', sizes.length > 0 && sizes.every(s => s >= 128 * 1024) && sizes.reduce((a, b) => a + b, 0) === 8 * 1024 * 1024,
    `${sizes.length} writes: ${[...new Set(sizes)].join(',')}`)
  const sparse = path.join(MNT, 'sparse')
  await run('dd', ['if=/dev/zero', 'of=' + sparse, 'bs=1', 'count=1', 'seek=5G', 'conv=notrunc', 'status=none'])
  check('write position above 4 GiB', log.writes.some(w => w.path === '/sparse' && w.pos === 5 * GiB && w.len === 1),
    JSON.stringify(log.writes.filter(w => w.path === '/sparse')))
  check('file size after it', await run('stat', ['-c', '%s', sparse]) === String(5 * GiB + 1))
  await run('dd', ['if=' + sparse, 'of=/dev/null', 'bs=4096', 'count=1', 'skip=' + (5 * GiB / 4096), 'status=none'])
  check('read position above 4 GiB', log.reads.some(r => r.path === '/sparse' && r.pos === 5 * GiB),
    JSON.stringify(log.reads.filter(r => r.path === '/sparse')))

  const fa = path.join(MNT, 'falloc')
  await run('touch', [fa])
  await run('fallocate', ['-o', String(5 * GiB), '-l', '7', fa])
  const f0 = log.fallocates.find(e => e.path === '/falloc')
  check('fallocate reaches the handler (mode 0, offset above 4 GiB, length)', f0 && f0.mode === 0 && f0.offset === 5 * GiB && f0.length === 7 && f0.fd === 1, JSON.stringify(f0))
  check('fallocate mode 0 grows the file', await run('stat', ['-c', '%s', fa]) === String(5 * GiB + 7))
  await run('fallocate', ['-n', '-l', '4096', fa])
  const f1 = log.fallocates.filter(e => e.path === '/falloc')[1]
  check('fallocate --keep-size arrives with FALLOC_FL_KEEP_SIZE', f1 && f1.mode === 1 && f1.offset === 0 && f1.length === 4096, JSON.stringify(f1))

  console.log('handle numbers', ((Date.now() - T0) / 1000).toFixed(1) + ' s')
  for (const h of [1, 0x7fffffff, 0xfffffffe]) {
    const p = path.join(MNT, 'fh-' + h)
    await run('dd', ['if=/dev/zero', 'of=' + p, 'bs=4096', 'count=1', 'status=none'])
    const w = log.writes.find(e => e.path === '/fh-' + h)
    // The kernel sends RELEASE after close(2) has returned (in the background): wait for it.
    const released = () => log.fh.find(e => e.path === '/fh-' + h && e.op === 'release')
    await until(released, 100)
    const r = released()
    check(`handle ${h} reaches write and release`, w && w.fd === h && r && r.fd === h, JSON.stringify({ w, r }))
  }

  console.log('chown, xattr', ((Date.now() - T0) / 1000).toFixed(1) + ' s')
  await run('chgrp', ['123', x])
  const ch = log.chown[log.chown.length - 1]
  check('chgrp: chown(uid=0xffffffff "unchanged", gid=123)', ch && ch.uid === 0xffffffff && ch.gid === 123, JSON.stringify(ch))
  const py = 'import ctypes,os,sys\n' +
    'libc=ctypes.CDLL(None,use_errno=True)\n' +
    'b=ctypes.create_string_buffer(8)\n' +
    'r1=libc.getxattr(sys.argv[1].encode(),b"user.long",b,8); e1=ctypes.get_errno()\n' +
    'r2=libc.listxattr(sys.argv[1].encode(),b,4); e2=ctypes.get_errno()\n' +
    'print(r1,e1==34,r2,e2==34,len(os.getxattr(sys.argv[1],"user.long")))'
  const xr = await run('python3', ['-c', py, x])
  check('getxattr/listxattr with a small buffer give ERANGE; full size works', xr === '-1 True -1 True 100', xr)

  console.log('record and BSD locks reach JS', ((Date.now() - T0) / 1000).toFixed(1) + ' s')
  const lockPy = 'import fcntl,os,struct,sys\n' +
    'fd=os.open(sys.argv[1],os.O_RDWR)\n' +
    'fcntl.lockf(fd,fcntl.LOCK_EX|fcntl.LOCK_NB,100,6*1024**3,os.SEEK_SET)\n' +
    'r=fcntl.fcntl(fd,fcntl.F_GETLK,struct.pack("hhqqi",fcntl.F_WRLCK,0,0,0,0))\n' +
    't,w,st,ln,pid=struct.unpack("hhqqi",r)\n' +
    'fcntl.flock(fd,fcntl.LOCK_SH)\n' +
    'print(t,st,ln,pid)\n' +
    'os.close(fd)'
  const lockOut = await run('python3', ['-c', lockPy, x])
  const setlk = log.locks.find(l => l.cmd === 6 && l.type === 1)
  check('fcntl F_SETLK reaches ops.lock with type, 64-bit start, len and an owner',
    setlk && setlk.path === '/x' && setlk.start === 6n * GiBn && setlk.len === 100n && typeof setlk.owner === 'bigint' && setlk.owner !== 0n, JSON.stringify(setlk, (k, v) => typeof v === 'bigint' ? String(v) : v))
  check('F_GETLK returns the conflicting lock JS answered with', lockOut === `1 ${5n * GiBn} 7 ${process.pid}`, lockOut)
  const sh = log.flocks.find(f => f.op === 1)
  check('flock(LOCK_SH) reaches ops.flock with an owner', sh && sh.path === '/x' && typeof sh.owner === 'bigint', JSON.stringify(log.flocks, (k, v) => typeof v === 'bigint' ? String(v) : v))
  // release (with LOCK_UN) is sent after close() returns: wait for it
  await until(() => log.flocks.some(f => f.op === 8), 50)
  check('close unlocks: F_UNLCK of the whole file for the same owner, LOCK_UN at release',
    log.locks.some(l => l.cmd === 6 && l.type === 2 && l.start === 0n && l.len === 0n && l.owner === setlk?.owner) && log.flocks.some(f => f.op === 8 && f.owner === sh?.owner),
    JSON.stringify({ locks: log.locks.length, flocks: log.flocks.map(f => f.op) }))

  console.log('FUSE thread reuse under concurrency', ((Date.now() - T0) / 1000).toFixed(1) + ' s')
  // libfuse's mt loop starts a thread per concurrent request and ends threads beyond 10 idle ones.
  // Each new thread used to get a new thread-locals buffer + uv_async_t that were never freed
  // (unpatched: about 20 more per burst, e.g. 21 -> 43 -> 65).
  // (stat of existing files: lookups of new names in one directory are serialized by the kernel,
  // since libfuse2 does not ask for FUSE_PARALLEL_DIROPS.)
  const N = 30
  for (let i = 0; i < N; i++) addNode('/slow-' + i, S_IFREG | 0o644, 0, 0)
  slowGetattrMs = 150
  const counts = []
  for (let burst = 0; burst < 3; burst++) {
    await run('sh', ['-c', `for i in $(seq 0 ${N - 1}); do stat "${MNT}/slow-$i" >/dev/null & done; wait`])
    await new Promise(resolve => setTimeout(resolve, 300)) // let surplus idle threads exit
    counts.push(fuse._threads.size)
  }
  slowGetattrMs = 0
  check(`thread locals reused, not leaked (${counts.join(' -> ')} after bursts of ${N}, peak ${peakInFlight} in flight)`,
    peakInFlight >= 15 && counts[counts.length - 1] <= peakInFlight + 10)

  // A child that inherited /dev/fuse kept the connection alive after the daemon died (the mount
  // hung instead of failing with ENOTCONN); the descriptor is close-on-exec now.
  const childFds = await run('sh', ['-c', 'for f in /proc/$$/fd/*; do readlink "$f"; done; true'])
  const ownFuseFds = fs.readdirSync('/proc/self/fd').filter(fd => { try { return fs.readlinkSync('/proc/self/fd/' + fd) === '/dev/fuse' } catch { return false } })
  check('/dev/fuse is open in the daemon but not inherited by its children (close-on-exec)',
    ownFuseFds.length > 0 && !childFds.split('\n').includes('/dev/fuse'), `daemon fds on /dev/fuse: ${ownFuseFds.length}; child: ${childFds.replace(/\n/g, ' ')}`)

  console.log('unmount', ((Date.now() - T0) / 1000).toFixed(1) + ' s')
  await run('umount', [MNT])
  check('umount MNT as root unmounts', !isMounted())
  const unmountErr = await new Promise(resolve => fuse.unmount(resolve))
  check('fuse.unmount() after an external umount succeeds (releases the native side)', !unmountErr, unmountErr && unmountErr.message)
}

// ---------------------------------------------------------------- run with cleanup
let cleaning = null
async function cleanup () {
  if (cleaning) return cleaning
  cleaning = (async () => {
    for (const args of [[MNT], ['-l', MNT]]) {
      if (!isMounted()) break
      await run('umount', args).catch(err => console.error('  ' + err.message))
    }
    const left = isMounted()
    if (!left) fs.rmSync(base, { recursive: true, force: true })
    return !left
  })()
  return cleaning
}

async function finish (code, msg) {
  const unmounted = await cleanup()
  if (!unmounted) {
    console.error('selftest FAILED: could not unmount ' + MNT)
    process.exit(2)
  }
  if (msg) console.error(msg)
  process.exit(code)
}

const watchdog = setTimeout(() => finish(1, `selftest FAILED: timed out after ${OVERALL_TIMEOUT_MS / 1000} s`), OVERALL_TIMEOUT_MS)
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => finish(1, 'selftest FAILED: interrupted by ' + sig))
process.on('uncaughtException', err => finish(1, 'selftest FAILED: ' + (err.stack || err)))

main().then(() => {
  clearTimeout(watchdog)
  if (failures.length) return finish(1, `selftest FAILED: ${failures.length} check(s) failed: ${failures.join('; ')}`)
  console.log(`${passed} passed, 0 failed`)
  return finish(0)
}, err => finish(1, 'selftest FAILED: ' + (err.stack || err)))

#!/usr/bin/env node
'use strict'
// postinstall step (package.json: "postinstall": "node patches/apply.js").
// 1. applies patches/*.patch to node_modules with patch-package (idempotent: an already applied
//    patch is recognised and skipped);
// 2. compiles the patched fuse-native binding from source with node-gyp into
//    node_modules/fuse-native/build/Release/fuse.node, which node-gyp-build loads before the
//    unpatched prebuilds/ (skipped when a stamp shows the same sources were already built;
//    `node patches/apply.js --force` rebuilds anyway);
// 3. checks that require('fuse-native') now loads the patched binary.
// Any failure: one "patches/apply.js: FAILED: ..." line and exit code 1.
// See patches/README.md.

const fs = require('fs')
const path = require('path')
const crypto = require('crypto')
const { spawnSync } = require('child_process')

const ROOT = path.resolve(__dirname, '..')
const PATCH_DIR = 'patches'
const FUSE_NATIVE_VERSION = '2.2.6'
const MARKER = 'fuse_native_get_context' // present in both patched files and the patched binary
const STAMP = path.join('build', 'Release', '.kvfs-patch-stamp')
const FORCE = process.argv.includes('--force')

function log (msg) { console.log('patches/apply.js: ' + msg) }

function fail (msg, output) {
  if (output) {
    const lines = String(output).trimEnd().split('\n')
    console.error(lines.slice(-40).join('\n'))
  }
  console.error('patches/apply.js: FAILED: ' + msg)
  process.exit(1)
}

function run (cmd, args, opts) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, ...opts })
  const output = (r.stdout || '') + (r.stderr || '')
  if (r.error) return { ok: false, output: output + String(r.error) }
  return { ok: r.status === 0, output }
}

function resolveFrom (id) {
  try {
    return require.resolve(id, { paths: [ROOT] })
  } catch (_) {
    return null
  }
}

// ---------------------------------------------------------------- locate fuse-native
const fuseNativePkg = resolveFrom('fuse-native/package.json')
if (!fuseNativePkg) fail('node_modules/fuse-native is not installed (run npm ci)')
const FUSE_DIR = path.dirname(fuseNativePkg)
const version = JSON.parse(fs.readFileSync(fuseNativePkg, 'utf8')).version
if (version !== FUSE_NATIVE_VERSION) {
  fail(`fuse-native ${version} is installed but patches/ is for ${FUSE_NATIVE_VERSION}; remake the patch (see patches/README.md)`)
}

// ---------------------------------------------------------------- 1. patch
const patchPackage = resolveFrom('patch-package/index.js')
if (!patchPackage) fail('patch-package is not installed (it is a dependency in package.json; run npm ci)')
{
  const r = run(process.execPath, [patchPackage, '--patch-dir', PATCH_DIR, '--error-on-fail', '--error-on-warn'],
    { cwd: ROOT, env: { ...process.env, FORCE_COLOR: '0' } })
  if (!r.ok) fail('patch-package could not apply ' + PATCH_DIR + '/ (output above)', r.output)
}
for (const f of ['fuse-native.c', 'index.js']) {
  if (!fs.readFileSync(path.join(FUSE_DIR, f), 'utf8').includes(MARKER)) {
    fail(`node_modules/fuse-native/${f} is not patched after running patch-package`)
  }
}
log('patch applied to node_modules/fuse-native')

// ---------------------------------------------------------------- 2. build
const patchFiles = fs.readdirSync(path.join(ROOT, PATCH_DIR)).filter(f => f.endsWith('.patch')).sort()
const hash = crypto.createHash('sha256')
for (const f of patchFiles) hash.update(f).update(fs.readFileSync(path.join(ROOT, PATCH_DIR, f)))
for (const f of ['fuse-native.c', 'binding.gyp']) hash.update(fs.readFileSync(path.join(FUSE_DIR, f)))
hash.update([process.version, process.versions.modules, process.platform, process.arch].join(' '))
const stampValue = hash.digest('hex')
const stampPath = path.join(FUSE_DIR, STAMP)
const target = path.join(FUSE_DIR, 'build', 'Release', 'fuse.node')

function findNodeGyp () {
  const candidates = []
  // npm sets this for lifecycle scripts: its own bundled node-gyp
  if (process.env.npm_config_node_gyp) candidates.push(process.env.npm_config_node_gyp)
  // npm's bundled node-gyp next to this node (e.g. /usr/lib/node_modules/npm/...)
  candidates.push(path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'))
  // a node-gyp installed in the project
  candidates.push(resolveFrom('node-gyp/bin/node-gyp.js'))
  // npm's bundled node-gyp found through the npm on PATH
  for (const dir of (process.env.PATH || '').split(path.delimiter)) {
    const npm = path.join(dir, 'npm')
    if (!dir || !fs.existsSync(npm)) continue
    try {
      const npmBin = fs.realpathSync(npm) // .../npm/bin/npm-cli.js
      candidates.push(path.join(path.dirname(npmBin), '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'))
    } catch (_) {}
  }
  return candidates.find(c => c && fs.existsSync(c)) || null
}

if (!FORCE && fs.existsSync(target) && fs.existsSync(stampPath) && fs.readFileSync(stampPath, 'utf8').trim() === stampValue) {
  log('binding already built from these sources (' + path.relative(ROOT, target) + '); use --force to rebuild')
} else {
  const nodeGyp = findNodeGyp()
  if (!nodeGyp) fail('node-gyp not found (npm normally bundles it: .../lib/node_modules/npm/node_modules/node-gyp)')
  const args = [nodeGyp, 'rebuild']
  // Build against the local node headers. npm passes its `nodedir` setting as npm_config_nodedir
  // (read by node-gyp itself); when run by hand, use the headers installed beside this node.
  if (!process.env.npm_config_nodedir) {
    const prefix = path.resolve(path.dirname(process.execPath), '..')
    if (fs.existsSync(path.join(prefix, 'include', 'node', 'node_api.h'))) args.push('--nodedir=' + prefix)
  }
  const t0 = Date.now()
  fs.rmSync(stampPath, { force: true })
  const r = run(process.execPath, args, { cwd: FUSE_DIR })
  if (!r.ok) fail('node-gyp rebuild of node_modules/fuse-native failed (output above; needs python3, make, g++ and node headers)', r.output)
  if (!fs.existsSync(target)) fail('node-gyp succeeded but ' + path.relative(ROOT, target) + ' is missing', r.output)
  log(`compiled ${path.relative(ROOT, target)} in ${((Date.now() - t0) / 1000).toFixed(1)} s`)
}

// ---------------------------------------------------------------- 3. verify
{
  const check = `
    const dir = ${JSON.stringify(FUSE_DIR)}
    const loaded = require(${JSON.stringify(resolveFrom('node-gyp-build') || 'node-gyp-build')}).path(dir)
    if (loaded !== ${JSON.stringify(target)}) throw new Error('node-gyp-build picks ' + loaded)
    const Fuse = require(dir) // throws if the loaded binding is not the patched one
    if (typeof Fuse.prototype.getContext !== 'function') throw new Error('Fuse.prototype.getContext missing')
  `
  const r = run(process.execPath, ['-e', check], { cwd: ROOT })
  if (!r.ok) fail('the patched binding does not load', r.output)
}
fs.writeFileSync(stampPath, stampValue + '\n')
log('require("fuse-native") loads the patched build/Release/fuse.node')

// examples/docker/ cannot run here (no Docker engine), so this keeps it correct another way:
//
// 1. docker-compose.yml is parsed (a small parser for the YAML subset the file is written in; it
//    rejects anything outside it) and its services, volumes, devices, capabilities, propagation,
//    paths and command lines are checked against each other, against the Dockerfile, against
//    `kvfs mount --help` (and format, status), and against examples/docker/README.md.
// 2. Its command lines are run for real on this host against a real etcd and Redis, with the
//    service names replaced by their loopback addresses and /mnt/kvfs by a temp dir: the one-shot
//    format step (twice: the second must keep the volume), the kvfs service through the image's
//    entrypoint, its healthcheck, the app-init step, the app itself for a moment, and `docker
//    stop` (SIGTERM).
import test, { ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { CLI, describeRun, isMounted, kvfs, makeTempDir, mountEntry, removeTempDir, ROOT, run, RunResult, sleep, startServers } from './_helpers/mount';

const DIR = path.join(ROOT, 'examples', 'docker');
const COMPOSE_FILE = path.join(DIR, 'docker-compose.yml');
const README_FILE = path.join(DIR, 'README.md');
const DOCKERFILE = path.join(DIR, 'Dockerfile');

// ---------------------------------------------------------------------------------------------
// A YAML subset: block mappings and sequences (also "- key: value" items and sequences at their
// key's indentation), plain / 'single' / "double" quoted scalars, one-line flow sequences of
// scalars, {} and comments. Plain scalars resolve as in YAML 1.2's core schema (true/false, null/~,
// integers, floats; everything else a string). Anything else -- anchors, aliases, tags, block
// scalars, multi-line flow collections, tabs, duplicate keys -- is an error, so the file cannot
// drift into something this parser would misread.

type Yaml = null | boolean | number | string | Yaml[] | { [key: string]: Yaml };

interface Line {
  no: number;
  indent: number;
  text: string;
}

class YamlError extends Error {}

function fail(no: number, msg: string): never {
  throw new YamlError(`docker-compose.yml line ${no}: ${msg}`);
}

/** Cuts a comment off (a # at the start or after a space, outside quotes). */
function stripComment(s: string, no: number): string {
  let quote: string | null = null;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (quote === '"') {
      if (c === '\\') i++;
      else if (c === '"') quote = null;
    } else if (quote === "'") {
      if (c === "'" && s[i + 1] === "'") i++;
      else if (c === "'") quote = null;
    } else if ((c === '"' || c === "'") && /(^|[\s[{,:-])$/.test(s.slice(0, i).replace(/ +$/, '').slice(-1) || '')) {
      quote = c;
    } else if (c === '#' && (i === 0 || s[i - 1] === ' ')) {
      return s.slice(0, i).replace(/ +$/, '');
    }
  }
  if (quote) fail(no, 'unterminated quoted string (multi-line scalars are not supported)');
  return s.replace(/ +$/, '');
}

function isSeqItem(text: string): boolean {
  return text === '-' || text.startsWith('- ');
}

/** End index (exclusive) of a quoted scalar starting at s[start]. */
function quotedEnd(s: string, start: number, no: number): number {
  const q = s[start];
  for (let i = start + 1; i < s.length; i++) {
    if (q === '"' && s[i] === '\\') i++;
    else if (q === "'" && s[i] === "'" && s[i + 1] === "'") i++;
    else if (s[i] === q) return i + 1;
  }
  fail(no, `unterminated ${q}-quoted string`);
}

/** Index of the ':' that ends a mapping key, or -1 if the text is not "key: ..." at all. */
function keyColon(text: string, no: number): number {
  if (text.startsWith('"') || text.startsWith("'")) {
    const end = quotedEnd(text, 0, no);
    return text[end] === ':' && (end + 1 === text.length || text[end + 1] === ' ') ? end : -1;
  }
  if (/^[[{]/.test(text)) return -1;
  for (let i = 0; i < text.length; i++) {
    if (text[i] === ':' && (i + 1 === text.length || text[i + 1] === ' ')) return i;
  }
  return -1;
}

function unquote(s: string, no: number): string {
  if (s.startsWith("'")) {
    if (quotedEnd(s, 0, no) !== s.length) fail(no, `text after a quoted string: ${s}`);
    return s.slice(1, -1).replace(/''/g, "'");
  }
  if (quotedEnd(s, 0, no) !== s.length) fail(no, `text after a quoted string: ${s}`);
  const escapes: Record<string, string> = { '"': '"', '\\': '\\', '/': '/', n: '\n', t: '\t', r: '\r', '0': '\0' };
  return s.slice(1, -1).replace(/\\(.)/g, (_, c: string) => escapes[c] ?? fail(no, `unsupported escape \\${c}`));
}

function scalar(s: string, no: number): Yaml {
  if (s.startsWith('"') || s.startsWith("'")) return unquote(s, no);
  if (/^[&*!|>%@`]/.test(s)) fail(no, `unsupported YAML feature: ${s}`);
  if (/: |:$/.test(s)) fail(no, `a plain scalar with ': ' in it: ${s}`);
  if (/^(true|True|TRUE)$/.test(s)) return true;
  if (/^(false|False|FALSE)$/.test(s)) return false;
  if (/^(null|Null|NULL|~)$/.test(s)) return null;
  if (/^[-+]?\d+$/.test(s)) return Number(s);
  if (/^[-+]?(\d+\.\d*|\.\d+)([eE][-+]?\d+)?$/.test(s)) return Number(s);
  return s;
}

function inline(s: string, no: number): Yaml {
  if (s === '{}') return {};
  if (s.startsWith('{')) fail(no, 'flow mappings are not supported');
  if (!s.startsWith('[')) return scalar(s, no);
  if (!s.endsWith(']')) fail(no, 'a flow sequence must end on its line');
  const body = s.slice(1, -1).trim();
  if (body === '') return [];
  const items: Yaml[] = [];
  let i = 0;
  for (;;) {
    while (body[i] === ' ') i++;
    let end: number;
    if (body[i] === '"' || body[i] === "'") end = quotedEnd(body, i, no);
    else {
      end = body.indexOf(',', i);
      if (end < 0) end = body.length;
    }
    const item = body.slice(i, end).trim();
    if (/^[[{]/.test(item)) fail(no, 'nested flow collections are not supported');
    items.push(scalar(item, no));
    i = end;
    while (body[i] === ' ') i++;
    if (i >= body.length) return items;
    if (body[i] !== ',') fail(no, `expected ',' in a flow sequence: ${s}`);
    i++;
  }
}

function parseYaml(text: string): Yaml {
  const lines: Line[] = [];
  text.split('\n').forEach((raw, idx) => {
    const no = idx + 1;
    const lead = /^[ \t]*/.exec(raw)![0];
    if (lead.includes('\t')) fail(no, 'tab in indentation');
    const body = stripComment(raw.slice(lead.length), no);
    if (body === '') return;
    if (body === '---' && lines.length === 0) return;
    if (/^(---|\.\.\.)/.test(body)) fail(no, 'multiple documents are not supported');
    if (body.startsWith('? ')) fail(no, 'complex keys are not supported');
    lines.push({ no, indent: lead.length, text: body });
  });
  let i = 0;

  const block = (indent: number): Yaml => (isSeqItem(lines[i].text) ? seq(indent) : map(indent));

  const seq = (indent: number): Yaml[] => {
    const out: Yaml[] = [];
    while (i < lines.length && lines[i].indent === indent && isSeqItem(lines[i].text)) {
      const line = lines[i];
      const rest = line.text.slice(1).replace(/^ +/, '');
      const col = indent + (line.text.length - rest.length);
      if (rest === '') {
        i++;
        out.push(i < lines.length && lines[i].indent > indent ? block(lines[i].indent) : null);
      } else if (isSeqItem(rest) || keyColon(rest, line.no) >= 0) {
        lines[i] = { no: line.no, indent: col, text: rest }; // "- key: v": a mapping at the key's column
        out.push(block(col));
      } else {
        i++;
        out.push(inline(rest, line.no));
      }
    }
    if (i < lines.length && lines[i].indent > indent) fail(lines[i].no, 'unexpected indentation');
    return out;
  };

  const map = (indent: number): { [key: string]: Yaml } => {
    const out: { [key: string]: Yaml } = {};
    while (i < lines.length && lines[i].indent === indent) {
      const line = lines[i];
      if (isSeqItem(line.text)) fail(line.no, 'a sequence item where a mapping key was expected');
      const c = keyColon(line.text, line.no);
      if (c < 0) fail(line.no, `expected "key: value": ${line.text}`);
      const rawKey = line.text.slice(0, c);
      const key = rawKey.startsWith('"') || rawKey.startsWith("'") ? unquote(rawKey, line.no) : rawKey;
      if (key === '<<' || /^[&*!]/.test(key)) fail(line.no, `unsupported key ${key}`);
      if (Object.prototype.hasOwnProperty.call(out, key)) fail(line.no, `duplicate key ${key}`);
      const rest = line.text.slice(c + 1).trim();
      i++;
      if (rest !== '') out[key] = inline(rest, line.no);
      else if (i < lines.length && lines[i].indent > indent) out[key] = block(lines[i].indent);
      else if (i < lines.length && lines[i].indent === indent && isSeqItem(lines[i].text)) out[key] = seq(indent);
      else out[key] = null;
    }
    if (i < lines.length && lines[i].indent > indent) fail(lines[i].no, 'unexpected indentation');
    return out;
  };

  if (lines.length === 0) return null;
  const doc = block(lines[0].indent);
  if (i < lines.length) fail(lines[i].no, 'unexpected dedent below the top level');
  return doc;
}

// ---------------------------------------------------------------------------------------------
// Typed access to the parsed file (a wrong shape is a test failure with the path in the message)

type Obj = { [key: string]: Yaml };

function obj(v: Yaml | undefined, where: string): Obj {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error(`${where}: expected a mapping, got ${JSON.stringify(v)}`);
  return v;
}
function arr(v: Yaml | undefined, where: string): Yaml[] {
  if (!Array.isArray(v)) throw new Error(`${where}: expected a sequence, got ${JSON.stringify(v)}`);
  return v;
}
function strs(v: Yaml | undefined, where: string): string[] {
  return arr(v, where).map((x, k) => {
    if (typeof x !== 'string') throw new Error(`${where}[${k}]: expected a string, got ${JSON.stringify(x)}`);
    return x;
  });
}
function str(v: Yaml | undefined, where: string): string {
  if (typeof v !== 'string') throw new Error(`${where}: expected a string, got ${JSON.stringify(v)}`);
  return v;
}

interface BindMount {
  source: string;
  target: string;
  propagation?: string;
  createHostPath?: boolean;
}

function binds(service: Obj, name: string): BindMount[] {
  return arr(service.volumes ?? [], `${name}.volumes`)
    .map((v, k) => obj(v, `${name}.volumes[${k}]`))
    .filter((v) => v.type === 'bind')
    .map((v, k) => {
      const bind = v.bind === undefined ? {} : obj(v.bind, `${name}.volumes[${k}].bind`);
      return {
        source: str(v.source, `${name}.volumes[${k}].source`),
        target: str(v.target, `${name}.volumes[${k}].target`),
        propagation: bind.propagation === undefined ? undefined : str(bind.propagation, 'propagation'),
        createHostPath: bind.create_host_path === undefined ? undefined : Boolean(bind.create_host_path),
      };
    });
}

// ---------------------------------------------------------------------------------------------
// Command lines

/** kvfs COMMAND's options, read from `kvfs COMMAND --help`: name -> takes a value. */
async function helpOptions(command: string): Promise<Record<string, { type: 'string' | 'boolean'; short?: string }>> {
  const r = await kvfs([command, '--help']);
  if (r.code !== 0) throw new Error(describeRun(`kvfs ${command} --help`, r));
  const options: Record<string, { type: 'string' | 'boolean'; short?: string }> = {};
  for (const line of r.stdout.split('\n')) {
    const m = /^ {2}(?:-(\w), )?--([a-z][a-z-]*)(?: ([A-Z]+))?/.exec(line);
    if (m) options[m[2]] = { type: m[3] ? 'string' : 'boolean', ...(m[1] ? { short: m[1] } : {}) };
  }
  if (!options.help) throw new Error(`could not read the options of kvfs ${command} --help:\n${r.stdout}`);
  return options;
}

/** argv (after `kvfs COMMAND`) parsed strictly by the options its --help lists. */
async function parseKvfs(command: string, argv: string[]): Promise<{ values: Record<string, string | boolean | undefined>; positionals: string[] }> {
  const options = await helpOptions(command);
  const parsed = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  return { values: parsed.values as Record<string, string | boolean | undefined>, positionals: parsed.positionals };
}

/** A shell command line of plain words (no quoting needed in these files) -> words. */
function words(line: string): string[] {
  if (/["'`$\\;|&<>]/.test(line.replace(/\s\|\|\s|\s&&\s|>\/dev\/null|2>&1/g, ' '))) throw new Error(`not a plain command line: ${line}`);
  return line.trim().split(/\s+/);
}

/** The README's fenced code blocks, with backslash-continued lines joined into one. */
function readmeCommands(readme: string): string[][] {
  const blocks: string[][] = [];
  const re = /^```[a-z]*\n([\s\S]*?)^```$/gm;
  for (let m; (m = re.exec(readme)); ) blocks.push(m[1].replace(/\\\n\s*/g, ' ').split('\n').map((l) => l.trim()).filter(Boolean));
  return blocks;
}

function etcdUrl(meta: string): { host: string; port: number; volume: string } {
  const m = /^etcd:\/\/([^:/]+):(\d+)\/([A-Za-z0-9._-]+)$/.exec(meta);
  if (!m) throw new Error(`not an etcd URL: ${meta}`);
  return { host: m[1], port: Number(m[2]), volume: m[3] };
}

function isInside(child: string, parent: string): boolean {
  return child === parent || child.startsWith(parent + '/');
}

// ---------------------------------------------------------------------------------------------
// The file, parsed once

interface Parsed {
  compose: Obj;
  services: Obj;
  svc(name: string): Obj;
  /** the kvfs service's pieces */
  kvfs: { command: string[]; meta: string; mountpoint: string; bind: BindMount };
  format: { status: string[]; format: string[] };
  app: { bind: BindMount; user: string };
}

async function load(): Promise<Parsed> {
  const text = fs.readFileSync(COMPOSE_FILE, 'utf8');
  const compose = obj(parseYaml(text), 'the file');
  const services = obj(compose.services, 'services');
  const svc = (name: string) => obj(services[name], `services.${name}`);

  const kcmd = strs(svc('kvfs').command, 'kvfs.command');
  if (kcmd[0] !== 'mount') throw new Error(`kvfs.command must be a kvfs mount invocation: ${kcmd.join(' ')}`);
  const parsed = await parseKvfs('mount', kcmd.slice(1));
  const kbinds = binds(svc('kvfs'), 'kvfs');
  if (kbinds.length !== 1) throw new Error(`kvfs must have exactly one bind mount, has ${kbinds.length}`);

  const fcmd = strs(svc('kvfs-format').command, 'kvfs-format.command');
  if (fcmd.length !== 1) throw new Error('kvfs-format.command: one shell line');
  const [statusPart, formatPart, ...more] = fcmd[0].split(' || ');
  if (more.length || !formatPart) throw new Error(`kvfs-format.command must be "kvfs status ... || kvfs format ...": ${fcmd[0]}`);
  const status = words(statusPart.replace(/\s*>\/dev\/null 2>&1\s*$/, ''));
  const format = words(formatPart);

  const abinds = binds(svc('app'), 'app');
  if (abinds.length !== 1) throw new Error(`app must have exactly one bind mount, has ${abinds.length}`);
  return {
    compose,
    services,
    svc,
    kvfs: { command: kcmd, meta: str(parsed.values.meta, 'kvfs --meta'), mountpoint: parsed.positionals[0], bind: kbinds[0] },
    format: { status, format },
    app: { bind: abinds[0], user: str(svc('app').user, 'app.user') },
  };
}

// ---------------------------------------------------------------------------------------------

test('the compose-file parser reads YAML as a YAML library does, and refuses what it does not know', (t) => {
  const text = fs.readFileSync(COMPOSE_FILE, 'utf8');
  const mine = parseYaml(text);
  // Optional cross-check with the `yaml` package when it happens to be installed (it is not a
  // dependency of kvfs, only of one of its dependencies).
  let yamlLib: { parse(s: string): unknown } | undefined;
  try {
    yamlLib = require(require.resolve('yaml', { paths: [ROOT] })) as { parse(s: string): unknown };
  } catch {
    t.log('the yaml package is not installed: cross-check skipped');
  }
  if (yamlLib) t.deepEqual(mine, yamlLib.parse(text) as Yaml);

  t.deepEqual(parseYaml('a:\n  - x\n  - "y: z"   # c\n  - k: 1\n    l: [a, "b c", \'d\'\'e\']\nb:\n- true\n- ~\nc: {}\n'), {
    a: ['x', 'y: z', { k: 1, l: ['a', 'b c', "d'e"] }],
    b: [true, null],
    c: {},
  });
  for (const bad of ['a: &x 1', 'a: *x', 'a: |\n  text', 'a: !tag x', 'a: 1\na: 2', 'a:\n\t- x', 'a: [1,\n  2]', 'a: {b: 1}', 'a: "x', 'a: b: c']) {
    t.throws(() => parseYaml(bad), { instanceOf: YamlError }, bad);
  }
});

test('docker-compose.yml: services, devices, capabilities, propagation and paths are consistent', async (t) => {
  const c = await load();
  t.deepEqual(Object.keys(c.services).sort(), ['app', 'app-init', 'etcd', 'kvfs', 'kvfs-format', 'redis']);

  // etcd and Redis: what the kvfs URLs point at.
  const etcdCmd = strs(c.svc('etcd').command, 'etcd.command');
  const flag = (name: string) => etcdCmd.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
  const meta = etcdUrl(c.kvfs.meta);
  t.is(meta.host, 'etcd', 'kvfs --meta names the etcd service');
  t.is(flag('listen-client-urls'), `http://0.0.0.0:${meta.port}`, 'etcd listens on the port kvfs uses, on every interface');
  t.is(flag('advertise-client-urls'), `http://etcd:${meta.port}`);
  t.truthy(flag('data-dir'));
  const etcdVol = obj(arr(c.svc('etcd').volumes, 'etcd.volumes')[0], 'etcd.volumes[0]');
  t.like(etcdVol, { type: 'volume', target: flag('data-dir') }, 'etcd keeps its data in a named volume');
  const redisCmd = strs(c.svc('redis').command, 'redis.command');
  t.is(redisCmd[0], 'redis-server');
  t.is(redisCmd[redisCmd.indexOf('--appendonly') + 1], 'yes', 'Redis persists blocks (appendonly yes)');
  t.like(obj(arr(c.svc('redis').volumes, 'redis.volumes')[0], 'redis.volumes[0]'), { type: 'volume', target: '/data' });
  const named = Object.keys(obj(c.compose.volumes, 'volumes')).sort();
  t.deepEqual(named, [etcdVol.source, obj(arr(c.svc('redis').volumes, '')[0], '').source].sort() as string[], 'named volumes declared');
  for (const s of ['etcd', 'redis']) t.truthy(obj(c.svc(s).healthcheck, `${s}.healthcheck`).test, `${s} has a healthcheck`);

  // kvfs-format: "status || format", on the same volume as the mount, with Redis as data.
  t.deepEqual(strs(c.svc('kvfs-format').entrypoint, 'kvfs-format.entrypoint'), ['/bin/sh', '-c']);
  t.deepEqual(c.format.status.slice(0, 2), ['kvfs', 'status']);
  t.deepEqual(c.format.format.slice(0, 2), ['kvfs', 'format']);
  const st = await parseKvfs('status', c.format.status.slice(2));
  const fm = await parseKvfs('format', c.format.format.slice(2));
  t.is(st.values.meta, c.kvfs.meta);
  t.is(fm.values.meta, c.kvfs.meta);
  t.deepEqual(st.positionals, []);
  t.deepEqual(fm.positionals, []);
  t.is(fm.values.data, 'redis://redis:6379', 'the data URL names the redis service and its default port');
  t.falsy(fm.values.force, 'never --force: that would throw the volume away on every start');
  t.like(obj(c.svc('kvfs-format').depends_on, 'kvfs-format.depends_on'), {
    etcd: { condition: 'service_healthy' },
    redis: { condition: 'service_healthy' },
  });

  // kvfs: privileged, /dev/fuse, SYS_ADMIN, an rshared bind, mounting below the bind's target.
  const k = c.svc('kvfs');
  t.is(k.privileged, true);
  t.true(strs(k.devices, 'kvfs.devices').some((d) => d.split(':')[0] === '/dev/fuse'), 'kvfs gets /dev/fuse');
  t.true(strs(k.cap_add, 'kvfs.cap_add').includes('SYS_ADMIN'));
  t.is(c.kvfs.bind.propagation, 'rshared', 'the FUSE mount must propagate to the host');
  t.is(c.kvfs.bind.source, c.kvfs.bind.target, 'the same path inside and outside, so the paths in the README hold everywhere');
  t.true(isInside(c.kvfs.mountpoint, c.kvfs.bind.target) && c.kvfs.mountpoint !== c.kvfs.bind.target, 'mounted one level below the bound directory (see the entrypoint)');
  t.is(path.dirname(c.kvfs.mountpoint), c.kvfs.bind.target);
  t.true(path.isAbsolute(c.kvfs.mountpoint));
  t.is(k.init, true);
  t.is(k.restart, 'unless-stopped');
  t.regex(str(k.stop_grace_period, 'kvfs.stop_grace_period'), /^\d+s$/);
  t.like(obj(k.depends_on, 'kvfs.depends_on'), { 'kvfs-format': { condition: 'service_completed_successfully' } });
  const hc = strs(obj(k.healthcheck, 'kvfs.healthcheck').test, 'kvfs.healthcheck.test');
  t.is(hc[0], 'CMD');
  t.true(hc.join(' ').includes(` ${c.kvfs.mountpoint} fuse.kvfs `), 'the healthcheck looks for the kvfs mount at the mountpoint');

  // One image, built from the repository root with the Dockerfile in examples/docker.
  for (const s of ['kvfs', 'kvfs-format']) {
    const b = obj(c.svc(s).build, `${s}.build`);
    t.is(path.resolve(DIR, str(b.context, 'context')), ROOT, `${s}: build context is the repository root`);
    t.is(path.resolve(ROOT, str(b.dockerfile, 'dockerfile')), DOCKERFILE);
    t.is(c.svc(s).image, 'kvfs:local');
  }

  // app-init creates the app's directory on kvfs, owned by the app's user.
  const initBinds = binds(c.svc('app-init'), 'app-init');
  t.is(initBinds.length, 1);
  t.is(initBinds[0].source, c.kvfs.mountpoint, 'app-init binds the kvfs mount itself');
  const initCmd = strs(c.svc('app-init').command, 'app-init.command');
  t.deepEqual(initCmd.slice(0, 2), ['sh', '-c']);
  const appDirInInit = initBinds[0].target + c.app.bind.source.slice(c.kvfs.mountpoint.length);
  t.is(initCmd[2], `mkdir -p ${appDirInInit} && chown ${c.app.user} ${appDirInInit}`);
  t.like(obj(c.svc('app-init').depends_on, 'app-init.depends_on'), { kvfs: { condition: 'service_healthy' } });

  // app: a plain bind mount of a directory inside the kvfs mount, as an unprivileged user.
  t.true(isInside(c.app.bind.source, c.kvfs.mountpoint) && c.app.bind.source !== c.kvfs.mountpoint, 'the app binds a directory inside the kvfs mount');
  t.is(c.app.bind.target, '/data');
  t.is(c.app.bind.propagation, undefined, 'the app needs no propagation (it is restarted after kvfs is)');
  t.is(c.app.bind.createHostPath, false, 'the app must not start on the host disk when kvfs is not mounted');
  t.regex(c.app.user, /^[1-9]\d*:[1-9]\d*$/, 'the app runs as a non-root uid:gid');
  t.like(obj(c.svc('app').depends_on, 'app.depends_on'), {
    kvfs: { condition: 'service_healthy', restart: true },
    'app-init': { condition: 'service_completed_successfully' },
  });
  t.true(strs(c.svc('app').command, 'app.command').join(' ').includes(c.app.bind.target + '/'), 'the app writes to its bind mount');

  // No service but kvfs is privileged or gets devices / capabilities.
  for (const [name, s] of Object.entries(c.services)) {
    if (name === 'kvfs') continue;
    const o = obj(s, name);
    t.deepEqual([name, o.privileged, o.devices, o.cap_add], [name, undefined, undefined, undefined]);
  }
});

test('the Dockerfile builds what the compose file and the entrypoint expect', async (t) => {
  const c = await load();
  const lines = fs
    .readFileSync(DOCKERFILE, 'utf8')
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  const instr = (name: string) => lines.filter((l) => l.split(/\s+/)[0].toUpperCase() === name).map((l) => l.slice(name.length).trim());
  t.deepEqual(instr('FROM'), ['node:20-bookworm']);
  const runs = instr('RUN').join(' && ');
  t.regex(runs, /apt-get install\b[^&]*\blibfuse2\b/);
  t.regex(runs, /apt-get install\b[^&]*\bfuse3\b/);
  t.regex(runs, /\bnpm ci\b/);
  const workdir = instr('WORKDIR').pop()!;
  t.deepEqual(instr('COPY'), ['. .'], 'the whole repository: npm ci builds dist/ from bin/ and lib/ and applies patches/');
  const entry = JSON.parse(instr('ENTRYPOINT')[0]) as string[];
  t.deepEqual(entry, [path.posix.join(workdir, 'examples/docker/kvfs-entrypoint.sh')]);
  t.regex(runs, new RegExp(`ln -s ${workdir}/bin/kvfs\\.js /usr/local/bin/kvfs`), 'kvfs on PATH, as the entrypoint and compose commands call it');
  t.true(fs.existsSync(path.join(ROOT, 'bin', 'kvfs.js')));
  const script = fs.readFileSync(path.join(DIR, 'kvfs-entrypoint.sh'), 'utf8');
  t.true(script.startsWith('#!/bin/sh\n'));
  t.regex(script, /^exec kvfs "\$@"$/m);
  t.true((fs.statSync(path.join(DIR, 'kvfs-entrypoint.sh')).mode & 0o111) !== 0, 'the entrypoint is executable');
  const ignore = fs.readFileSync(path.join(DIR, 'Dockerfile.dockerignore'), 'utf8').split('\n');
  for (const p of ['node_modules', 'dist']) t.true(ignore.includes(p), `${p} stays out of the build context`);
  const sh = await run('sh', ['-n', path.join(DIR, 'kvfs-entrypoint.sh')]);
  t.is(sh.code, 0, describeRun('sh -n kvfs-entrypoint.sh', sh));
  t.is(c.svc('kvfs').image, 'kvfs:local');
});

test('README.md gives the same mount and run lines as docker-compose.yml', async (t) => {
  const c = await load();
  const readme = fs.readFileSync(README_FILE, 'utf8');
  const blocks = readmeCommands(readme);
  const all = blocks.flat();
  const find = (pred: (w: string[]) => boolean, what: string): string[] => {
    const hit = all.map((l) => l.split(/\s+/)).find(pred);
    if (!hit) throw new Error(`README.md has no ${what}`);
    return hit;
  };
  const meta = etcdUrl(c.kvfs.meta);
  const hostMeta = `etcd://127.0.0.1:${meta.port}/${meta.volume}`;

  // kvfs on the host: format and mount of the same volume at the same mountpoint.
  const hostMount = find((w) => w[0] === 'kvfs' && w[1] === 'mount', '`kvfs mount` line');
  const hm = await parseKvfs('mount', hostMount.slice(2));
  t.is(hm.values.meta, hostMeta);
  t.deepEqual(hm.positionals, [c.kvfs.mountpoint]);
  const hostFormat = find((w) => w[0] === 'kvfs' && w[1] === 'format', '`kvfs format` line');
  const hf = await parseKvfs('format', hostFormat.slice(2));
  t.is(hf.values.meta, hostMeta);
  t.is(hf.values.data, 'redis://127.0.0.1:6379');
  t.true(all.includes(`mkdir -p ${c.kvfs.mountpoint}`));
  t.true(all.includes(`mkdir -p ${c.app.bind.source} && chown ${c.app.user} ${c.app.bind.source}`));

  // docker run lines: the app, and kvfs in a container.
  const appRuns = all.map((l) => l.split(/\s+/)).filter((w) => w[0] === 'docker' && w[1] === 'run' && w.includes('--name') && w[w.indexOf('--name') + 1] === 'app');
  t.is(appRuns.length, 2, 'an app run line in each of the two setups');
  for (const w of appRuns) {
    t.is(w[w.indexOf('-v') + 1], `${c.app.bind.source}:${c.app.bind.target}`);
    t.is(w[w.indexOf('--user') + 1], c.app.user);
    t.is(w[w.indexOf('-v') + 2], str(c.svc('app').image, 'app.image'));
  }
  const kr = find((w) => w[0] === 'docker' && w[1] === 'run' && w.includes('kvfs:local') && w.includes('mount'), 'docker run line for kvfs');
  const opt = (name: string) => kr[kr.indexOf(name) + 1];
  t.true(kr.includes('--privileged'));
  t.is(opt('--device'), '/dev/fuse');
  t.is(opt('--cap-add'), 'SYS_ADMIN');
  t.is(opt('-v'), `${c.kvfs.bind.source}:${c.kvfs.bind.target}:${c.kvfs.bind.propagation}`);
  t.is(opt('--restart'), str(c.svc('kvfs').restart, 'kvfs.restart'));
  t.true(kr.includes('--init'));
  t.is(`${opt('--stop-timeout')}s`, str(c.svc('kvfs').stop_grace_period, 'kvfs.stop_grace_period'));
  t.true(readme.includes(`stop_grace_period: ${c.svc('kvfs').stop_grace_period}`));
  const afterImage = kr.slice(kr.indexOf('kvfs:local') + 1);
  t.deepEqual(afterImage, c.kvfs.command.map((a) => (a === c.kvfs.meta ? hostMeta : a)), 'the same kvfs command as the compose file');
  t.true(all.includes(`mount --bind ${c.kvfs.bind.source} ${c.kvfs.bind.source} && mount --make-rshared ${c.kvfs.bind.source}`));
  t.true(all.includes(`findmnt -o TARGET,PROPAGATION --target ${c.kvfs.bind.source}`));
  const build = find((w) => w[0] === 'docker' && w[1] === 'build', 'docker build line');
  t.deepEqual(build, ['docker', 'build', '-t', 'kvfs:local', '-f', path.relative(ROOT, DOCKERFILE), '.']);
  const up = find((w) => w[0] === 'docker' && w[1] === 'compose' && w.includes('up'), 'docker compose up line');
  t.is(path.resolve(ROOT, up[up.indexOf('-f') + 1]), COMPOSE_FILE);

  // The daemon-restart story and its recovery.
  t.true(readme.includes('Transport endpoint is not connected'));
  t.regex(readme, /existing bind mount keeps pointing at the dead\s+connection/);
  const recovery = blocks.find((b) => b.some((l) => l.startsWith('umount -l')));
  t.deepEqual(recovery, [`umount -l ${c.kvfs.mountpoint}`, hostMount.join(' '), 'docker restart app']);
  t.true(readme.includes('docker compose restart kvfs app'));
  for (const word of ['allow_other', 'rshared', '/dev/fuse', 'SYS_ADMIN', 'ENOTCONN', 'EACCES', 'EROFS']) t.true(readme.includes(word), word);
  // Every file the README links to exists.
  for (const m of readme.matchAll(/\]\(([^)#]+)\)/g)) t.true(fs.existsSync(path.join(DIR, m[1])), `link ${m[1]}`);
});

// ---------------------------------------------------------------------------------------------
// Running the compose file's commands on this host

/** `sh -c LINE` or argv with compose's names and paths replaced by this host's. */
function substitute(s: string, map: [string | RegExp, string][]): string {
  for (const [from, to] of map) s = typeof from === 'string' ? s.split(from).join(to) : s.replace(from, to);
  return s;
}

test("the compose file's commands work against a real etcd and Redis", async (t) => {
  const c = await load();
  const servers = await startServers('etcd');
  t.teardown(() => servers.stop());
  const work = makeTempDir('kvfs-compose-');
  t.teardown(() => removeTempDir(work));
  const host = path.join(work, 'host'); // stands for the Docker host's /mnt/kvfs
  fs.mkdirSync(host);
  const bin = path.join(work, 'bin'); // the image's /usr/local/bin/kvfs
  fs.mkdirSync(bin);
  fs.writeFileSync(path.join(bin, 'kvfs'), `#!/bin/sh\nexec '${process.execPath}' '${CLI}' "$@"\n`, { mode: 0o755 });
  const env = { ...process.env, PATH: `${bin}:${process.env.PATH}`, KVFS_HOME: path.join(work, 'home'), LC_ALL: 'C' };
  const map: [string | RegExp, string][] = [
    [`etcd:${etcdUrl(c.kvfs.meta).port}`, servers.etcd!.hostPort],
    ['redis:6379', `127.0.0.1:${servers.redis!.port}`],
    [new RegExp(`${c.kvfs.bind.source}(?=/|\\s|'|$)`, 'g'), host],
  ];
  const sub = (s: string) => substitute(s, map);
  const sh = (line: string, uid?: number): Promise<RunResult> =>
    uid === undefined ? run('sh', ['-c', line], { env }) : run('setpriv', ['--reuid', String(uid), '--regid', String(uid), '--clear-groups', 'sh', '-c', line], { env, cwd: '/' });

  // What the README says to run on the host before `docker compose up`.
  const readme = readmeCommands(fs.readFileSync(README_FILE, 'utf8')).find((b) => b.some((l) => l.startsWith('docker compose')))!;
  for (const line of readme.filter((l) => l.startsWith('mkdir '))) {
    const r = await sh(sub(line));
    t.is(r.code, 0, describeRun(line, r));
  }

  // kvfs-format, twice: formats the first time, leaves the volume alone the second.
  const formatLine = sub(strs(c.svc('kvfs-format').command, '')[0]);
  const f1 = await sh(formatLine);
  t.is(f1.code, 0, describeRun(formatLine, f1));
  t.regex(f1.stdout, /formatted volume vol1/);
  const meta = sub(c.kvfs.meta);
  const uuid = async () => {
    const r = await kvfs(['status', '--meta', meta, '--json'], { env });
    t.is(r.code, 0, describeRun('kvfs status', r));
    return (JSON.parse(r.stdout) as { settings: { uuid: string } }).settings.uuid;
  };
  const before = await uuid();
  const f2 = await sh(formatLine);
  t.is(f2.code, 0, describeRun(formatLine, f2));
  t.notRegex(f2.stdout + f2.stderr, /formatted/);
  t.is(await uuid(), before, 'the second start kept the volume');

  // The healthcheck fails until kvfs is mounted.
  const hc = strs(obj(c.svc('kvfs').healthcheck, '').test, '').slice(1).map(sub);
  const health = () => run(hc[0], hc.slice(1), { env });
  t.not((await health()).code, 0);

  // kvfs: the image's entrypoint with the service's command, in the foreground as in a container.
  const mnt = sub(c.kvfs.mountpoint);
  const daemon = spawn('sh', [path.join(DIR, 'kvfs-entrypoint.sh'), ...c.kvfs.command.map(sub)], { env, cwd: '/', stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  daemon.stdout.setEncoding('utf8').on('data', (d: string) => (log += d));
  daemon.stderr.setEncoding('utf8').on('data', (d: string) => (log += d));
  const exited = new Promise<number | null>((resolve) => daemon.on('close', (code) => resolve(code)));
  t.teardown(async () => {
    if (daemon.exitCode === null && daemon.signalCode === null) {
      daemon.kill('SIGKILL');
      await exited;
    }
  });
  const deadline = Date.now() + 20_000;
  while (!/^kvfs: mounted /m.test(log)) {
    if (daemon.exitCode !== null || Date.now() > deadline) {
      t.fail(`kvfs did not mount:\n${log}`);
      return;
    }
    await sleep(50);
  }
  t.is(mountEntry(mnt)?.fstype, 'fuse.kvfs');
  const h = await health();
  t.is(h.code, 0, describeRun('healthcheck', h));

  // app-init (root), then the app (its user) for a moment, in its own process group.
  const initLine = sub(strs(c.svc('app-init').command, '')[2]).split(binds(c.svc('app-init'), '')[0].target).join(mnt);
  const init = await sh(initLine);
  t.is(init.code, 0, describeRun(initLine, init));
  const appDir = sub(c.app.bind.source);
  const [uid, gid] = c.app.user.split(':').map(Number);
  t.like(fs.statSync(appDir), { uid, gid });
  const appCmd = strs(c.svc('app').command, '').map((a) => a.split(c.app.bind.target + '/').join(appDir + '/'));
  const app = spawn('setpriv', ['--reuid', String(uid), '--regid', String(gid), '--clear-groups', ...appCmd], { env, cwd: '/', detached: true, stdio: 'ignore' });
  const appExited = new Promise<void>((resolve) => app.on('close', () => resolve()));
  const killApp = async () => {
    try {
      process.kill(-app.pid!, 'SIGKILL');
    } catch {
      /* gone */
    }
    await appExited;
  };
  t.teardown(killApp);
  const heartbeat = path.join(appDir, 'heartbeat.log');
  for (let k = 0; k < 100 && !(fs.existsSync(heartbeat) && fs.statSync(heartbeat).size > 0); k++) await sleep(50);
  await killApp();
  t.regex(fs.readFileSync(heartbeat, 'utf8'), /\d{4}\n$/, 'the app wrote its heartbeat (a date line) to /data');
  t.like(fs.statSync(heartbeat), { uid, gid });

  // docker stop: SIGTERM to the daemon (tini passes it on); it commits, unmounts and exits 0.
  daemon.kill('SIGTERM');
  t.is(await exited, 0, log);
  t.false(isMounted(mnt));
});

// Who may use a mount (docs/security.md, "Access and permissions"): a user other than root mounts
// an embedded volume with the default options (no allow_other unless /etc/fuse.conf allows it, so
// the mount works instead of failing in fusermount), uses it, and other users, root included, get
// EACCES; with --read-only changes fail with EROFS.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import test from 'ava';
import { CLI, describeRun, isMounted, makeTempDir, removeTempDir, run, sleep } from './_helpers/mount';
import { NOBODY } from './_helpers/ops';

const fuseConfAllowsOther = (() => {
  try {
    return fs.readFileSync('/etc/fuse.conf', 'utf8').split('\n').some((l) => l.replace(/#.*/, '').trim() === 'user_allow_other');
  } catch {
    return false;
  }
})();
const canSetpriv = process.getuid?.() === 0 && spawnSync('setpriv', ['--version'], { stdio: 'ignore' }).status === 0;

const asNobody = (args: string[], env: NodeJS.ProcessEnv) =>
  run('setpriv', ['--reuid', String(NOBODY), '--regid', String(NOBODY), '--clear-groups', process.execPath, CLI, ...args], { env, timeoutMs: 30_000 });

(canSetpriv && !fuseConfAllowsOther ? test : test.skip)('a mount by another user than root is that user\'s alone; --read-only refuses changes', async (t) => {
  const dir = makeTempDir('kvfs-access-');
  fs.chmodSync(dir, 0o777);
  const mnt = path.join(dir, 'mnt');
  const home = path.join(dir, 'home');
  for (const d of [mnt, home]) {
    fs.mkdirSync(d);
    fs.chmodSync(d, 0o777);
  }
  const env = { ...process.env, KVFS_HOME: home };
  const meta = `file://${dir}/vol`;
  try {
    const f = await asNobody(['format', '--meta', meta], env);
    t.is(f.code, 0, describeRun('format as nobody', f));
    for (const readOnly of [false, true]) {
      const m = await asNobody(['mount', '-d', '--meta', meta, ...(readOnly ? ['--read-only'] : []), mnt], env);
      t.is(m.code, 0, describeRun(`mount -d as nobody${readOnly ? ' --read-only' : ''}`, m));
      try {
        t.true(isMounted(mnt));
        t.is(
          (() => {
            try {
              fs.statSync(path.join(mnt, 'x'));
              return 'OK';
            } catch (e) {
              return (e as NodeJS.ErrnoException).code;
            }
          })(),
          'EACCES',
          'root may not use a mount of another user without allow_other',
        );
        const script = readOnly
          ? `try { require('fs').writeFileSync(process.argv[1] + '/y', 'y'); console.log('OK') } catch (e) { console.log(e.code) }`
          : `const fs = require('fs'); fs.writeFileSync(process.argv[1] + '/x', 'mine'); console.log(fs.readFileSync(process.argv[1] + '/x', 'utf8'), fs.statSync(process.argv[1] + '/x').uid)`;
        const w = await run('setpriv', ['--reuid', String(NOBODY), '--regid', String(NOBODY), '--clear-groups', process.execPath, '-e', script, mnt], { timeoutMs: 20_000 });
        t.is(w.stdout.trim(), readOnly ? 'EROFS' : `mine ${NOBODY}`, describeRun('the owner uses the mount', w));
      } finally {
        const u = await asNobody(['umount', mnt], env);
        t.is(u.code, 0, describeRun('umount as nobody', u));
        for (let i = 0; i < 100 && isMounted(mnt); i++) await sleep(100);
      }
      t.false(isMounted(mnt));
    }
  } finally {
    if (isMounted(mnt)) spawnSync('umount', ['-l', mnt]);
    removeTempDir(dir);
  }
});

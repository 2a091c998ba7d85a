// Entry of the no-op FUSE daemon that `kvfs bench` starts as a child process:
//   node dist/lib/bench/noop-main.js MOUNTPOINT
// Prints one line containing 'mounted' when ready; unmounts and exits 0 on SIGINT/SIGTERM, when
// someone else unmounts it, or when its parent (the bench) is gone.

import { mountAt } from '../fuse/mount';
import { mountNoop } from './noop';

async function main(): Promise<number> {
  const target = process.argv[2];
  if (!target) {
    console.error('usage: noop-main MOUNTPOINT');
    return 2;
  }
  const parent = process.ppid;
  const mounted = await mountNoop(target);
  console.log(`kvfs-noop: mounted at ${mounted.mountpoint}`);

  let stopping = false;
  await new Promise<void>((done) => {
    const stop = () => {
      if (stopping) return;
      stopping = true;
      clearInterval(timer);
      mounted
        .unmount()
        .catch(() => require('node:child_process').spawnSync('umount', ['-l', mounted.mountpoint], { stdio: 'ignore' }))
        .finally(done);
    };
    const timer = setInterval(() => {
      if (!mountAt(mounted.mountpoint)) {
        stopping = true;
        clearInterval(timer);
        done();
      } else if (process.ppid !== parent) {
        stop(); // the bench died without stopping us
      }
    }, 250);
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
    process.on('SIGHUP', stop);
  });
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(`kvfs-noop: ${(err as Error).message}`);
    process.exit(1);
  },
);

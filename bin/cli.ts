// The kvfs command line: one file per command in bin/commands, wired up here.

import { UsageError } from '../lib/errors';
import { benchCommand, help as benchHelp } from './commands/bench';
import { formatCommand, help as formatHelp } from './commands/format';
import { labCommand, help as labHelp } from './commands/lab';
import { fsckCommand, help as fsckHelp } from './commands/fsck';
import { gcCommand, help as gcHelp } from './commands/gc';
import { mountCommand, help as mountHelp } from './commands/mount';
import { statusCommand, help as statusHelp } from './commands/status';
import { umountCommand, help as umountHelp } from './commands/umount';

const COMMANDS: Record<string, { run: (argv: string[]) => Promise<number>; help: string; summary: string }> = {
  format: { run: formatCommand, help: formatHelp, summary: 'create a volume (metadata in etcd, blocks in Redis)' },
  mount: { run: mountCommand, help: mountHelp, summary: 'mount a volume (foreground; -d for background)' },
  umount: { run: umountCommand, help: umountHelp, summary: 'unmount and wait for the daemon to finish' },
  status: { run: statusCommand, help: statusHelp, summary: "show a volume's settings, usage and mounts" },
  fsck: { run: fsckCommand, help: fsckHelp, summary: 'check a volume and report problems with their paths (--repair to fix)' },
  gc: { run: gcCommand, help: gcHelp, summary: 'find and delete blocks no file references (dry run unless --delete)' },
  bench: { run: benchCommand, help: benchHelp, summary: 'measure kvfs against a no-op FUSE filesystem and the raw backends' },
  lab: { run: labCommand, help: labHelp, summary: 'measure where consistency and latency break down (report.html)' },
};

function usage(): string {
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(8)} ${c.summary}`);
  return `Usage: kvfs COMMAND [options]

kvfs is a FUSE filesystem that keeps inodes and directory entries in etcd and
file data blocks in Redis, or both in an embedded store ($KVFS_HOME, default
~/.kvfs) when no --meta is given.

Commands:
${lines.join('\n')}

Run 'kvfs COMMAND --help' for a command's options.
Example:
  kvfs format --meta etcd://127.0.0.1:2379/vol1 --data redis://127.0.0.1:6379
  kvfs mount --meta etcd://127.0.0.1:2379/vol1 /mnt/kvfs`;
}

export async function main(argv: string[]): Promise<void> {
  const [name, ...rest] = argv;
  let code: number;
  try {
    if (!name || name === '-h' || name === '--help' || name === 'help') {
      console.log(usage());
      code = name ? 0 : 1;
    } else if (name === '--version' || name === '-V') {
      console.log(require('../../package.json').version);
      code = 0;
    } else {
      const command = COMMANDS[name];
      if (!command) throw new UsageError(`unknown command '${name}'; run kvfs --help for the list`);
      code = await command.run(rest);
    }
  } catch (err) {
    if (err instanceof UsageError) {
      console.error(`kvfs: ${err.message}`);
    } else {
      const e = err as Error & { code?: string };
      console.error(`kvfs: ${e.message?.split('\n')[0] ?? String(err)}`);
      if (process.env.KVFS_DEBUG) console.error(e.stack);
    }
    code = 1;
  }
  // fuse-native and backend clients can keep the event loop alive: exit explicitly.
  process.exit(code);
}

// Small helpers shared by the commands: option parsing with one-line errors, sizes, durations.

import { parseArgs, ParseArgsConfig } from 'node:util';
import { UsageError } from '../lib/errors';

export type OptionSpec = NonNullable<ParseArgsConfig['options']>;

export interface Parsed {
  values: Record<string, string | boolean | undefined>;
  positionals: string[];
}

/** parseArgs, with its errors turned into one line that names the command's --help. */
export function parse(command: string, argv: string[], options: OptionSpec, positionals: { min: number; max: number; names: string }): Parsed {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError(`${(err as Error).message.split('\n')[0]}; see kvfs ${command} --help`);
  }
  const values = parsed.values as Parsed['values'];
  if (!values.help) {
    const n = parsed.positionals.length;
    if (n < positionals.min) throw new UsageError(`kvfs ${command} needs ${positionals.names}; see kvfs ${command} --help`);
    if (n > positionals.max) throw new UsageError(`unexpected argument '${parsed.positionals[positionals.max]}'; see kvfs ${command} --help`);
  }
  return { values, positionals: parsed.positionals };
}

const UNITS: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

/** "4096", "64K", "1M", "1MiB", "2G" -> bytes. */
export function parseSize(text: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$/i.exec(text.trim());
  if (!m) throw new UsageError(`${what} '${text}' is not a size; use a number with an optional unit, like 1M or 64K`);
  return Math.round(Number(m[1]) * UNITS[m[2].toLowerCase()]);
}

/** "1", "0.5", "2s", "500ms" -> seconds. */
export function parseSeconds(text: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s)?$/.exec(text.trim());
  if (!m) throw new UsageError(`${what} '${text}' is not a duration; use seconds, like 1 or 0.5 (or 500ms)`);
  return m[2] === 'ms' ? Number(m[1]) / 1000 : Number(m[1]);
}

export function formatSize(bytes: number): string {
  for (const [unit, size] of [['GiB', 1024 ** 3], ['MiB', 1024 ** 2], ['KiB', 1024]] as const) {
    if (bytes >= size && bytes % size === 0) return `${bytes / size} ${unit}`;
  }
  return `${bytes} bytes`;
}

export function str(value: string | boolean | undefined): string | undefined {
  return typeof value === 'string' ? value : undefined;
}

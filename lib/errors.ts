// One error type for the whole daemon: every failure that reaches an application carries an errno.
// Backend failures are translated into FsError in one place per backend (see lib/meta/etcd.ts,
// lib/data/redis.ts), so the FUSE adapter only ever maps FsError -> -errno.
import { constants } from 'node:os';

export type ErrnoName = keyof typeof constants.errno;

export class FsError extends Error {
  /** Positive errno number, as in <errno.h>. */
  readonly errno: number;
  /** Symbolic name, e.g. 'ENOENT'. */
  readonly code: ErrnoName;
  /** True when retrying the same operation later may succeed (backend down, timeout). */
  readonly retryable: boolean;

  constructor(code: ErrnoName, message?: string, options?: { cause?: unknown; retryable?: boolean }) {
    super(message ? `${code}: ${message}` : code, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'FsError';
    this.code = code;
    this.errno = constants.errno[code];
    this.retryable = options?.retryable ?? false;
  }
}

export function fsError(code: ErrnoName, message?: string): FsError {
  return new FsError(code, message);
}

/** The errno to hand to the kernel for any thrown value: FsError keeps its own, anything else is EIO. */
export function errnoOf(err: unknown): number {
  if (err instanceof FsError) return err.errno;
  return constants.errno.EIO;
}

/** A user-facing configuration/usage error: printed as one line by the CLI, exit code 1. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

// One error type for the whole daemon: every failure that reaches an application carries an errno.
// Backend failures are translated into FsError in one place per backend (see lib/meta/etcd.ts,
// lib/data/redis.ts), so the FUSE adapter only ever maps FsError -> -errno.
import { constants } from 'node:os';

export type ErrnoName = keyof typeof constants.errno;

/**
 * Outcomes that are answers, not faults (a name that does not exist, a lock that is taken): they
 * are thrown on hot paths (every create looks its name up first) and nobody reads their stack,
 * whose capture was about 3% of the daemon's CPU per create (profile of 3,300 creates).
 */
const WITHOUT_STACK = new Set<ErrnoName>(['ENOENT', 'EEXIST', 'ENODATA', 'ENOTEMPTY', 'EAGAIN']);

export class FsError extends Error {
  /** Positive errno number, as in <errno.h>. */
  readonly errno: number;
  /** Symbolic name, e.g. 'ENOENT'. */
  readonly code: ErrnoName;
  /** True when retrying the same operation later may succeed (backend down, timeout). */
  readonly retryable: boolean;

  constructor(code: ErrnoName, message?: string, options?: { cause?: unknown; retryable?: boolean }) {
    const limit = Error.stackTraceLimit;
    if (WITHOUT_STACK.has(code)) Error.stackTraceLimit = 0;
    try {
      super(message ? `${code}: ${message}` : code, options?.cause === undefined ? undefined : { cause: options.cause });
    } finally {
      Error.stackTraceLimit = limit;
    }
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

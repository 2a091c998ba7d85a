// The write-back limit: bytes of dirty (written, not yet committed) data held by all open files
// of a mount. Past the limit, writers wait while the oldest data is committed instead of memory
// growing; if those commits fail, the waiting writes fail with their error rather than hang.

export class DirtyBudget {
  /** Bytes currently held by dirty and committing blocks (their buffers' sizes). */
  used = 0;

  constructor(
    /** --max-dirty, bytes. */
    readonly limit: number,
    /** Commits dirty files; resolves when those commits are done, rejects if one failed. */
    private readonly relieve: () => Promise<void>,
  ) {}

  add(bytes: number): void {
    this.used += bytes;
  }

  release(bytes: number): void {
    this.used -= bytes;
  }

  /** Resolves once there is room for more dirty data. */
  async wait(): Promise<void> {
    while (this.used >= this.limit) {
      const before = this.used;
      await this.relieve();
      // Others may refill the budget while we wait; but never spin when commits free nothing.
      if (this.used >= before) return;
    }
  }
}

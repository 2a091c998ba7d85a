// Fail fast while a backend is stalled.
//
// Every backend request is bounded by --backend-timeout. Without this gate, an application
// whose backend froze would wait out that bound once per operation: SQLite's write, fsync,
// then the flush and close of its error path took three timeouts in a row in `kvfs lab`. Once a
// request has timed out, the gate counts the backend as stalled: further requests fail at once
// with ETIMEDOUT, and one probe at a time (a cheap request, outside the gate) asks the backend
// again until it answers. The first answer, to the probe or to any request still in flight,
// ends the stall. Other failures (connection refused, a server error) do not stall the gate:
// they come back at once by themselves.
import { FsError } from './errors';

/** Time between a failed probe and the next one, ms. */
const PROBE_RETRY_MS = 200;

export class StallGate {
  private stalledSince: number | undefined;
  private probing = false;
  private closed = false;

  /**
   * `backend` names it in messages ('etcd at 127.0.0.1:2379'); `ping` is one cheap request
   * bounded by the backend's own timeout, that rejects when the backend does not answer.
   */
  constructor(
    private readonly backend: string,
    private readonly ping: () => Promise<unknown>,
  ) {}

  /** Whether requests are being refused at the moment. */
  get stalled(): boolean {
    return this.stalledSince !== undefined;
  }

  /** Runs one backend request, or fails at once while the backend is stalled. */
  async run<T>(what: string, request: () => Promise<T>): Promise<T> {
    if (this.stalledSince !== undefined) {
      // Fail after one turn of the event loop, not synchronously: a caller that retries in a
      // loop must not starve the probe (and everything else) of I/O.
      await new Promise<void>((resolve) => setImmediate(resolve));
      if (this.stalledSince === undefined) return this.run(what, request);
      throw new FsError(
        'ETIMEDOUT',
        `${what}: ${this.backend} has not answered for ${Date.now() - this.stalledSince} ms (a request timed out); failing at once until it answers again`,
        { retryable: true },
      );
    }
    try {
      const result = await request();
      this.stalledSince = undefined;
      return result;
    } catch (err) {
      if (err instanceof FsError && err.code === 'ETIMEDOUT') this.trip();
      throw err;
    }
  }

  /** Stops probing (the engine is closing). */
  close(): void {
    this.closed = true;
  }

  private trip(): void {
    if (this.stalledSince === undefined) this.stalledSince = Date.now();
    if (this.probing || this.closed) return;
    this.probing = true;
    void this.probe();
  }

  private async probe(): Promise<void> {
    try {
      while (this.stalledSince !== undefined && !this.closed) {
        try {
          await this.ping();
          this.stalledSince = undefined;
        } catch {
          await new Promise<void>((resolve) => setTimeout(resolve, PROBE_RETRY_MS).unref());
        }
      }
    } finally {
      this.probing = false;
    }
  }
}

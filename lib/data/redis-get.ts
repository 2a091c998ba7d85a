// GET of whole blocks on a plain socket, straight into the caller's buffer (RedisBlocks.getInto).
//
// Why not ioredis: its reply parser gathers a large bulk reply from the socket's chunks and
// concatenates them into slices of a shared buffer that it re-allocates every few replies, so
// every block read from Redis is allocated and copied twice more and the garbage collector runs
// all the time. Measured on this machine, 1 GiB in 1 MiB GETs over four connections: ioredis
// `getBuffer` plus the copy into a pool buffer 601-614 MB/s and 2.0 s of CPU; this reader
// 2000-2225 MB/s and 0.4-0.5 s. The socket reads into one fixed buffer per connection (Node's
// `onread`), and the reply's bytes are copied once, into the buffer the caller provides.
//
// Plain TCP only: Node's TLS sockets do not document `onread`, so rediss:// volumes read through
// ioredis. Only GET and the connection set-up (AUTH, SELECT) are spoken here; everything else stays on
// ioredis. Failures are plain Errors worded like ioredis's ("Command timed out", "Connection is
// closed", Redis's own "-ERR ..." text) so that redisError() maps them the same way. A timeout
// or any protocol surprise closes the connection: replies could no longer be matched to requests.
import * as net from 'node:net';

export interface BulkGetOptions {
  host: string;
  port: number;
  username?: string;
  password?: string;
  db?: number;
  /** Time limit for connecting and for each GET, ms. */
  timeoutMs: number;
}

/** Bytes the socket reads at a time (the kernel's socket buffer drains in pieces of this). */
const READ_BUFFER = 256 * 1024;

interface Pending {
  /** Where the bulk reply goes; undefined for the set-up commands (+OK expected). */
  alloc?: (size: number) => Buffer;
  resolve(value: Buffer | undefined): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

/** A command as a RESP array of bulk strings. */
function encodeCommand(args: string[]): string {
  let out = `*${args.length}\r\n`;
  for (const a of args) out += `$${Buffer.byteLength(a)}\r\n${a}\r\n`;
  return out;
}

export class BulkGetConnection {
  private socket: net.Socket | undefined;
  private readonly queue: Pending[] = [];
  private ready = false;
  // Reply parser state: a header line being gathered, or a bulk body being copied.
  private line = '';
  private body: Buffer | undefined;
  private bodyDone = 0;
  /** Bytes of the current reply still to skip (the CRLF after a bulk body). */
  private skip = 0;
  private inBody = false;

  constructor(private readonly options: BulkGetOptions) {}

  /** Whether get() may be called. */
  get isReady(): boolean {
    return this.ready;
  }

  /** Requests sent and not yet answered. */
  get inFlight(): number {
    return this.queue.length;
  }

  /** A connect() in progress, which a second call joins instead of restarting it. */
  private connecting: Promise<void> | undefined;

  /** Connects and authenticates; rejects (and leaves the connection closed) on failure. */
  connect(): Promise<void> {
    this.connecting ??= this.open().finally(() => (this.connecting = undefined));
    return this.connecting;
  }

  private async open(): Promise<void> {
    this.close();
    const o = this.options;
    const onread = {
      buffer: Buffer.allocUnsafe(READ_BUFFER),
      callback: (n: number, buf: Buffer): boolean => {
        this.onData(buf, n);
        return true; // keep reading
      },
    };
    const socket = net.connect({ host: o.host, port: o.port, onread });
    this.socket = socket;
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 30_000);
    // A socket error with a code (ECONNREFUSED, ECONNRESET...) is passed on: redisError() maps it.
    const lost = (err?: Error): void => {
      if (this.socket === socket) this.close(err && (err as NodeJS.ErrnoException).code ? err : undefined);
    };
    socket.on('error', lost);
    socket.on('close', () => lost());
    const setup: string[][] = [];
    if (o.password !== undefined) setup.push(o.username ? ['AUTH', o.username, o.password] : ['AUTH', o.password]);
    if (o.db) setup.push(['SELECT', String(o.db)]);
    setup.push(['PING']);
    // Commands written before the connection is up are sent once it is.
    await Promise.all(setup.map((args) => this.request(args)));
    this.ready = true;
  }

  /** The value of `key` in a buffer from `alloc(size)`, undefined when the key does not exist. */
  get(key: string, alloc: (size: number) => Buffer): Promise<Buffer | undefined> {
    if (!this.ready) return Promise.reject(new Error('Connection is closed'));
    return this.request(['GET', key], alloc);
  }

  private request(args: string[], alloc?: (size: number) => Buffer): Promise<Buffer | undefined> {
    const socket = this.socket;
    if (!socket) return Promise.reject(new Error('Connection is closed'));
    return new Promise((resolve, reject) => {
      // The reply may still come: nothing after it could be matched any more.
      const timer = setTimeout(() => this.close(new Error('Command timed out')), this.options.timeoutMs);
      this.queue.push({ alloc, resolve, reject, timer });
      socket.write(encodeCommand(args));
    });
  }

  private settle(err: Error | undefined, value?: Buffer): void {
    const p = this.queue.shift();
    if (!p) return this.protocolError('a reply nobody asked for');
    clearTimeout(p.timer);
    if (err) p.reject(err);
    else p.resolve(value);
  }

  private protocolError(what: string): void {
    this.close(new Error(`Redis protocol error: ${what}`));
  }

  /**
   * Parses `n` bytes of `buf` (reused by the socket after this returns: copy what is kept). Stops
   * when a reply closed the connection (a protocol error): the rest belongs to no request.
   */
  private onData(buf: Buffer, n: number): void {
    const socket = this.socket;
    let i = 0;
    while (i < n && this.socket === socket) {
      if (this.skip > 0) {
        const step = Math.min(this.skip, n - i);
        this.skip -= step;
        i += step;
        if (this.skip === 0) {
          const body = this.body;
          this.body = undefined;
          this.settle(undefined, body);
        }
      } else if (this.inBody) {
        const body = this.body!;
        const step = Math.min(body.length - this.bodyDone, n - i);
        buf.copy(body, this.bodyDone, i, i + step);
        this.bodyDone += step;
        i += step;
        if (this.bodyDone === body.length) {
          this.inBody = false;
          this.skip = 2; // CRLF
        }
      } else {
        const nl = buf.indexOf(10, i);
        if (nl < 0 || nl >= n) {
          this.line += buf.toString('latin1', i, n);
          if (this.line.length > 64 * 1024) return this.protocolError('a reply line without an end');
          return;
        }
        const line = this.line + buf.toString('latin1', i, nl > 0 && buf[nl - 1] === 13 ? nl - 1 : nl);
        this.line = '';
        i = nl + 1;
        this.onLine(line);
      }
    }
  }

  /** Handles one reply header line (a protocol error closes the connection). */
  private onLine(line: string): void {
    const head = this.queue[0];
    if (!head) return this.protocolError('a reply nobody asked for');
    const type = line[0];
    if (type === '-') return this.settle(new Error(line.slice(1)));
    if (type === '+' && !head.alloc) return this.settle(undefined);
    if (type !== '$' || !head.alloc) return this.protocolError(`unexpected reply ${JSON.stringify(line.slice(0, 40))}`);
    const size = Number(line.slice(1));
    if (size === -1) return this.settle(undefined, undefined);
    if (!Number.isSafeInteger(size) || size < 0) return this.protocolError(`bad bulk length ${line}`);
    this.body = head.alloc(size);
    if (this.body.length !== size) return this.protocolError(`alloc(${size}) gave ${this.body.length} bytes`);
    this.bodyDone = 0;
    if (size === 0) this.skip = 2;
    else this.inBody = true;
  }

  /**
   * Closes the connection: requests in flight fail with `err` ("Connection is closed" by
   * default), and the reply parser starts afresh on the next connection.
   */
  close(err: Error = new Error('Connection is closed')): void {
    const socket = this.socket;
    if (!socket) return;
    this.socket = undefined;
    this.ready = false;
    for (const p of this.queue.splice(0)) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.line = '';
    this.body = undefined;
    this.inBody = false;
    this.skip = 0;
    socket.destroy();
  }
}

// Block files read and written with O_DIRECT, past the kernel's page cache (lib/data/files.ts).
//
// Why: a block file is written once and read back into the daemon's own block cache, and the
// FUSE mount's page cache already holds what applications read, so the page cache of the block
// files is a third copy. Filling it is the most expensive part of a buffered write here: measured
// on these VMs, 1 GiB of 1 MiB block files written + fdatasynced 4 at a time took 3.7-4.2 s of
// system CPU buffered and 0.8-0.9 s with O_DIRECT (244-319 vs 516-582 MB/s), and read back
// cold 1,075 MB/s at 0.5 s of CPU (BENCHMARKS.md, ninth round).
//
// O_DIRECT needs the memory address, the file offset and the length aligned to the device's
// logical block size. Node cannot allocate aligned Buffers, but a WebAssembly.Memory is mapped
// on page boundaries: its bytes are cut into SLOTS slots of MAX_BLOCK bytes, each aligned to 64
// KiB, and every direct read or write goes through one (a copy in or out: cheaper than the page
// cache's). Lengths are rounded up to ALIGN (the pad is zeroed; a write is then truncated back).
// Memory: the arena is reserved once (32 MiB) and only the pages used are ever resident.

/** Alignment of lengths; the slots themselves are 64 KiB-aligned. 4096 covers every common device. */
export const ALIGN = 4096;
/** The largest block a volume can have (kvfs format --block-size). */
const MAX_BLOCK = 4 * 1024 * 1024;
/** Direct I/Os at once (libuv's thread pool runs 4 by default). */
const SLOTS = 8;
const WASM_PAGE = 64 * 1024;

/** The one part of the WebAssembly API used here (not in this project's TypeScript libs). */
declare const WebAssembly: { Memory: new (size: { initial: number; maximum: number }) => { buffer: ArrayBuffer } };

export function alignUp(n: number): number {
  return Math.ceil(n / ALIGN) * ALIGN;
}

/** Aligned buffers for O_DIRECT, taken and given back; take() waits while all are in use. */
export class AlignedSlots {
  /** Largest length a slot holds. */
  readonly slotSize = MAX_BLOCK;
  private free: Buffer[] | undefined;
  private readonly waiting: Array<(slot: Buffer) => void> = [];

  private slots(): Buffer[] {
    if (!this.free) {
      const pages = (SLOTS * MAX_BLOCK) / WASM_PAGE;
      const arena = Buffer.from(new WebAssembly.Memory({ initial: pages, maximum: pages }).buffer);
      this.free = Array.from({ length: SLOTS }, (_, i) => arena.subarray(i * MAX_BLOCK, (i + 1) * MAX_BLOCK));
    }
    return this.free;
  }

  /**
   * Whether the arena exists or can be made now. V8 reserves address space for a Memory well
   * beyond its size (guard regions), which a low `ulimit -v` can refuse: then no direct I/O.
   */
  available(): boolean {
    try {
      this.slots();
      return true;
    } catch {
      return false;
    }
  }

  /** A whole slot (slotSize bytes, aligned). */
  take(): Promise<Buffer> {
    const slot = this.slots().pop();
    if (slot) return Promise.resolve(slot);
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  give(slot: Buffer): void {
    const next = this.waiting.shift();
    if (next) next(slot);
    else this.slots().push(slot);
  }

  /** Runs `use` with a slot, given back when it settles. */
  async with<T>(use: (slot: Buffer) => Promise<T>): Promise<T> {
    const slot = await this.take();
    try {
      return await use(slot);
    } finally {
      this.give(slot);
    }
  }
}

/**
 * Small byte arrays carved out of large shared slabs. Every `new Uint8Array(n)` gets a backing store of
 * its own (a malloc, a registry entry, a sweep when it dies): on the vCPU paths, where one is made per
 * queue message and per log entry, that bookkeeping showed as the largest share of a backup's CPU
 * (docs/PERFORMANCE.md). A carved array is a view of the current slab; a slab lives while any view of it
 * does and is never reused, so a carved array is as independent as a fresh one (it may be kept, its
 * bytes are never written by anybody else).
 */
export class Slab {
  private buf: Uint8Array;
  private at = 0;

  /** `slabBytes`: size of each slab; arrays above `maxCarveBytes` get their own buffer. */
  constructor(
    private readonly slabBytes = 256 * 1024,
    private readonly maxCarveBytes = slabBytes / 8,
  ) {
    this.buf = new Uint8Array(0);
  }

  /** `n` bytes nobody else uses (zero, as carved from a fresh slab; never handed out twice). */
  alloc(n: number): Uint8Array {
    if (n > this.maxCarveBytes) return new Uint8Array(n);
    if (this.at + n > this.buf.length) {
      this.buf = new Uint8Array(this.slabBytes);
      this.at = 0;
    }
    const out = this.buf.subarray(this.at, this.at + n);
    this.at += (n + 7) & ~7; // 8-byte aligned starts
    return out;
  }

  /** A copy of `src` in a carved array. */
  copy(src: Uint8Array): Uint8Array {
    const out = this.alloc(src.length);
    out.set(src);
    return out;
  }
}

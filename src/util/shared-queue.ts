/**
 * A bounded single-producer single-consumer message queue in a SharedArrayBuffer, for the I/O thread
 * to feed the vCPU worker while the guest runs (the worker polls it at budget checkpoints and blocks on
 * it with Atomics.wait when idle; a postMessage could not be received while wasm is running).
 *
 * Layout: Int32 header [writeBytes, readBytes, wakeCounter, closed], then `capacity` data bytes. A
 * message is a u32 length and its bytes, wrapping byte-wise. The producer never blocks: `push` returns
 * false when full, and the caller applies backpressure.
 */
const HDR_INTS = 4;
const W = 0;
const R = 1;
const WAKE = 2;
const CLOSED = 3;

export class SharedQueue {
  readonly sab: SharedArrayBuffer;
  private readonly hdr: Int32Array;
  private readonly data: Uint8Array;
  readonly capacity: number;

  constructor(sabOrCapacity: SharedArrayBuffer | number) {
    this.sab = typeof sabOrCapacity === 'number' ? new SharedArrayBuffer(HDR_INTS * 4 + sabOrCapacity) : sabOrCapacity;
    this.hdr = new Int32Array(this.sab, 0, HDR_INTS);
    this.data = new Uint8Array(this.sab, HDR_INTS * 4);
    this.capacity = this.data.length;
  }

  private used(): number {
    return (Atomics.load(this.hdr, W) - Atomics.load(this.hdr, R)) >>> 0;
  }

  get freeBytes(): number {
    return this.capacity - this.used();
  }

  private copyIn(at: number, src: Uint8Array): number {
    let off = 0;
    while (off < src.length) {
      const pos = at % this.capacity;
      const n = Math.min(src.length - off, this.capacity - pos);
      this.data.set(src.subarray(off, off + n), pos);
      off += n;
      at = (at + n) >>> 0;
    }
    return at;
  }

  private copyOut(at: number, dst: Uint8Array): number {
    let off = 0;
    while (off < dst.length) {
      const pos = at % this.capacity;
      const n = Math.min(dst.length - off, this.capacity - pos);
      dst.set(this.data.subarray(pos, pos + n), off);
      off += n;
      at = (at + n) >>> 0;
    }
    return at;
  }

  /** Producer: enqueue one message; false (nothing written) when there is not room. */
  push(msg: Uint8Array): boolean {
    if (msg.length + 4 > this.capacity) throw new RangeError(`message of ${msg.length} bytes exceeds queue capacity ${this.capacity}`);
    if (this.freeBytes < msg.length + 4) return false;
    const len = new Uint8Array(4);
    new DataView(len.buffer).setUint32(0, msg.length, true);
    let w = Atomics.load(this.hdr, W) >>> 0;
    w = this.copyIn(w, len);
    w = this.copyIn(w, msg);
    Atomics.store(this.hdr, W, w | 0);
    Atomics.add(this.hdr, WAKE, 1);
    Atomics.notify(this.hdr, WAKE);
    return true;
  }

  /** Consumer: dequeue one message, or undefined when empty. */
  pop(): Uint8Array | undefined {
    if (this.used() === 0) return undefined;
    let r = Atomics.load(this.hdr, R) >>> 0;
    const lenBuf = new Uint8Array(4);
    r = this.copyOut(r, lenBuf);
    const len = new DataView(lenBuf.buffer).getUint32(0, true);
    const msg = new Uint8Array(len);
    r = this.copyOut(r, msg);
    Atomics.store(this.hdr, R, r | 0);
    return msg;
  }

  get isEmpty(): boolean {
    return this.used() === 0;
  }

  /** Consumer: block until a message may be present, the queue is closed, or `timeoutMs` passes. */
  wait(timeoutMs: number): void {
    const seen = Atomics.load(this.hdr, WAKE);
    if (!this.isEmpty || this.closed) return;
    Atomics.wait(this.hdr, WAKE, seen, Math.max(0, timeoutMs));
  }

  /** Wakes the consumer without a message (e.g. a stop request). */
  wake(): void {
    Atomics.add(this.hdr, WAKE, 1);
    Atomics.notify(this.hdr, WAKE);
  }

  close(): void {
    Atomics.store(this.hdr, CLOSED, 1);
    this.wake();
  }

  get closed(): boolean {
    return Atomics.load(this.hdr, CLOSED) === 1;
  }
}

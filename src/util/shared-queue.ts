/**
 * A bounded single-producer single-consumer message queue in a SharedArrayBuffer, for the I/O thread
 * to feed the vCPU worker while the guest runs (the worker polls it at budget checkpoints and blocks on
 * it with Atomics.wait when idle; a postMessage could not be received while wasm is running).
 *
 * Layout: Int32 header [writeBytes, readBytes, wakeCounter, closed, consumerWaiting], then `capacity`
 * data bytes. A message is a u32 length (little-endian) and its bytes, wrapping byte-wise. The producer
 * never blocks: `push` returns false when full, and the caller applies backpressure.
 *
 * Wake-ups: a futex wake (Atomics.notify) costs a system call, so the producer only notifies while the
 * consumer says it is waiting (`consumerWaiting`, set before it re-checks the queue and blocks; all
 * accesses are sequentially consistent, so either the producer sees the flag or the consumer sees the
 * message). `push(msg, false)` defers even that: the producer calls `notify()` once after a burst (one
 * wake-up per event-loop turn instead of one per message).
 *
 * Polling waits (`wait(ms, pending, true)`): the consumer says it will look again within `ms` by itself
 * (`consumerWaiting` = 2), so the producer makes no system call at all. A replaying backup waits this
 * way while log keeps arriving: its replay is off the clients' path (the backup acknowledges on
 * receipt), so a bounded delay of a millisecond or two costs nothing, and the futex wake per batch it saves was
 * the largest share of the backup's I/O thread (docs/PERFORMANCE.md). A producer that needs the
 * consumer at once regardless (a stop, a go-live) calls `wake()`.
 */
import { Slab } from './slab.js';

const HDR_INTS = 5;
const W = 0;
const R = 1;
const WAKE = 2;
const CLOSED = 3;
const WAITING = 4;
/** `consumerWaiting` values: blocked until notified (or its timeout), or polling (back within its timeout). */
const WAITING_BLOCKED = 1;
const WAITING_POLLING = 2;

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
    const pos = at % this.capacity;
    if (pos + src.length <= this.capacity) {
      this.data.set(src, pos);
      return (at + src.length) >>> 0;
    }
    const first = this.capacity - pos;
    this.data.set(src.subarray(0, first), pos);
    this.data.set(src.subarray(first), 0);
    return (at + src.length) >>> 0;
  }

  private copyOut(at: number, dst: Uint8Array): number {
    const pos = at % this.capacity;
    if (pos + dst.length <= this.capacity) {
      dst.set(this.data.subarray(pos, pos + dst.length));
      return (at + dst.length) >>> 0;
    }
    const first = this.capacity - pos;
    dst.set(this.data.subarray(pos, this.capacity), 0);
    dst.set(this.data.subarray(0, dst.length - first), first);
    return (at + dst.length) >>> 0;
  }

  private putU32(at: number, v: number): number {
    const c = this.capacity;
    const d = this.data;
    d[at % c] = v & 0xff;
    d[(at + 1) % c] = (v >>> 8) & 0xff;
    d[(at + 2) % c] = (v >>> 16) & 0xff;
    d[(at + 3) % c] = (v >>> 24) & 0xff;
    return (at + 4) >>> 0;
  }

  private getU32(at: number): number {
    const c = this.capacity;
    const d = this.data;
    return (d[at % c]! | (d[(at + 1) % c]! << 8) | (d[(at + 2) % c]! << 16) | (d[(at + 3) % c]! << 24)) >>> 0;
  }

  /**
   * Producer: enqueue one message made of `head` and `body` (one message, two parts: no concatenation
   * needed); false (nothing written) when there is not room. With `notify` false the consumer is not
   * woken: the caller calls `notify()` after its burst.
   */
  push(head: Uint8Array, notify = true, body?: Uint8Array): boolean {
    const len = head.length + (body?.length ?? 0);
    if (len + 4 > this.capacity) throw new RangeError(`message of ${len} bytes exceeds queue capacity ${this.capacity}`);
    if (this.freeBytes < len + 4) return false;
    let w = Atomics.load(this.hdr, W) >>> 0;
    w = this.putU32(w, len);
    w = this.copyIn(w, head);
    if (body) w = this.copyIn(w, body);
    Atomics.store(this.hdr, W, w | 0);
    Atomics.add(this.hdr, WAKE, 1);
    if (notify) this.notify();
    return true;
  }

  /** Producer: wakes the consumer if it is blocked waiting (after pushes with `notify` false), not if it polls; true if it woke it. */
  notify(): boolean {
    if (Atomics.load(this.hdr, WAITING) !== WAITING_BLOCKED) return false;
    Atomics.notify(this.hdr, WAKE);
    return true;
  }

  /** Where popped messages are carved from (one backing store per slab, not per message). */
  private readonly slab = new Slab();

  /** Consumer: dequeue one message (the consumer's to keep), or undefined when empty. */
  pop(): Uint8Array | undefined {
    if (this.used() === 0) return undefined;
    let r = Atomics.load(this.hdr, R) >>> 0;
    const len = this.getU32(r);
    r = (r + 4) >>> 0;
    const msg = this.slab.alloc(len);
    r = this.copyOut(r, msg);
    Atomics.store(this.hdr, R, r | 0);
    return msg;
  }

  get isEmpty(): boolean {
    return this.used() === 0;
  }

  /**
   * Consumer: block until a message may be present, the queue is closed, or `timeoutMs` passes. `pending`
   * is other work announced by a `wake()` after it is published (guest threads' requests): checked after
   * the wake counter is read, so such work is never slept through. `poll`: the consumer comes back after
   * `timeoutMs` by itself, so pushes do not wake it (only `wake()` does).
   */
  wait(timeoutMs: number, pending?: () => boolean, poll = false): void {
    Atomics.store(this.hdr, WAITING, poll ? WAITING_POLLING : WAITING_BLOCKED);
    const seen = Atomics.load(this.hdr, WAKE);
    if (!this.isEmpty || this.closed || pending?.() === true) {
      Atomics.store(this.hdr, WAITING, 0);
      return;
    }
    Atomics.wait(this.hdr, WAKE, seen, Math.max(0, timeoutMs));
    Atomics.store(this.hdr, WAITING, 0);
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

  /** What the consumer is doing now: blocked until notified, polling (back by itself), or neither. */
  get consumerState(): 'blocked' | 'polling' | 'running' {
    const w = Atomics.load(this.hdr, WAITING);
    return w === WAITING_BLOCKED ? 'blocked' : w === WAITING_POLLING ? 'polling' : 'running';
  }

  get closed(): boolean {
    return Atomics.load(this.hdr, CLOSED) === 1;
  }
}

/**
 * Two connected in-memory byte streams (Node 20 has no `stream.duplexPair`): what one end writes the
 * other reads, with backpressure (a write completes only when the reader wants more), ends and destroys
 * propagated. `FtvmClient` hands one end to the proxy logic and the other to the application.
 */
import { Duplex } from 'node:stream';

class End extends Duplex {
  peer!: End;
  private pendingWrite: (() => void) | undefined;

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (this.peer.destroyed) {
      cb(new Error('the other end is closed'));
      return;
    }
    if (this.peer.push(chunk)) cb();
    else this.peer.pendingWrite = cb; // released when the reader asks for more
  }

  override _final(cb: (err?: Error | null) => void): void {
    if (!this.peer.destroyed) this.peer.push(null);
    cb();
  }

  override _read(): void {
    const w = this.pendingWrite;
    this.pendingWrite = undefined;
    w?.();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    const w = this.pendingWrite;
    this.pendingWrite = undefined;
    w?.();
    if (!this.peer.destroyed) this.peer.destroy();
    cb(err);
  }
}

export function duplexPair(): [Duplex, Duplex] {
  const a = new End();
  const b = new End();
  a.peer = b;
  b.peer = a;
  return [a, b];
}

/**
 * The recent output of proxied connections on a replaying replica (docs/PROXY.md). A replica's replay
 * produces the same output bytes as its primary but releases none of them; when the replica goes live,
 * a proxy re-attaching a connection says how many output bytes it already has, and the new primary sends
 * the rest — released by the old primary but still in flight, or never released — from this tail.
 * Bounded: at most `maxBytesPerConn` per connection (older bytes are dropped; a proxy that is further
 * behind is refused with FTVM_ERR_PROXY_OFFSET) and at most `maxClosed` connections the guest closed.
 */
import type { ProxiedConn } from './devices.js';

/** Default bound of the output kept per proxied connection on a replica. */
export const PROXY_TAIL_MAX_BYTES = 1024 * 1024;
export const PROXY_TAILS_MAX_CLOSED = 1024;

export class ConnTail {
  private chunks: Uint8Array[] = [];
  private held = 0;
  tag = '';
  inBytes = 0;
  /** Output bytes the guest sent on the connection in all (the tail ends here). */
  outBytes = 0;
  closed = false;

  constructor(private readonly maxBytes: number) {}

  append(data: Uint8Array): void {
    if (data.length === 0) return;
    this.chunks.push(data);
    this.held += data.length;
    while (this.held > this.maxBytes && this.chunks.length > 0) {
      const first = this.chunks[0]!;
      const over = this.held - this.maxBytes;
      if (first.length <= over) {
        this.chunks.shift();
        this.held -= first.length;
      } else {
        this.chunks[0] = first.subarray(over);
        this.held -= over;
      }
    }
  }

  /** The held bytes: output offsets [outBytes - length, outBytes). */
  bytes(): Uint8Array {
    const out = new Uint8Array(this.held);
    let at = 0;
    for (const c of this.chunks) {
      out.set(c, at);
      at += c.length;
    }
    return out;
  }
}

export class ProxyTails {
  private readonly open = new Map<number, ConnTail>();
  private readonly closed = new Map<number, ConnTail>();

  constructor(
    private readonly maxBytesPerConn = PROXY_TAIL_MAX_BYTES,
    private readonly maxClosed = PROXY_TAILS_MAX_CLOSED,
  ) {}

  /** An output of the replaying guest; `px` is the connection's proxied state when it is one. */
  output(kind: 'net' | 'close' | 'console', conn: number, data: Uint8Array, px: ProxiedConn | undefined): void {
    if (kind === 'net' && px !== undefined) {
      let t = this.open.get(conn);
      if (t === undefined) {
        t = new ConnTail(this.maxBytesPerConn);
        this.open.set(conn, t);
      }
      t.tag = px.tag;
      t.inBytes = px.inBytes;
      t.outBytes = px.outBytes;
      t.append(data);
    } else if (kind === 'close') {
      const t = this.open.get(conn);
      if (t === undefined) return;
      this.open.delete(conn);
      t.closed = true;
      this.closed.set(conn, t);
      if (this.closed.size > this.maxClosed) this.closed.delete(this.closed.keys().next().value!);
    }
  }

  get(conn: number): ConnTail | undefined {
    return this.open.get(conn);
  }

  closedTails(): IterableIterator<[number, ConnTail]> {
    return this.closed.entries();
  }
}

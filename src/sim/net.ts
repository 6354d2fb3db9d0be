/**
 * The simulated network under the logging channel: TCP connections as two ordered byte streams
 * (src/channel/transport.ts ChannelSocket), carrying the bytes the real ChannelConnection writes —
 * length-prefixed, HMAC'd frames — so the frame codec, the HELLO handshake and its checks, the MACs and
 * the LOG batch bytes all run under simulation. A direction can be held (partition: nothing is
 * delivered until it heals, then everything arrives, in order, as TCP retransmission would) or broken
 * (a cut: each side receives a prefix of what was in flight, then sees the connection closed). Each
 * direction has a bandwidth: what is written and not yet delivered is the sender's `writableLength`, and
 * 'drain' fires when it empties after passing the high-water mark (the primary's snapshot stream waits
 * for it beyond 4 MiB). Nothing is duplicated or reordered within a connection.
 */
import { EventEmitter } from 'node:events';
import type { ChannelSocket } from '../channel/transport.js';

/** net.Socket's default high-water mark: a write beyond it returns false and 'drain' follows. */
const HIGH_WATER_BYTES = 16 * 1024;

interface Item {
  /** Bytes, or null: the close marker (FIN/RST). */
  data: Buffer | null;
  reason: string;
  at: number;
}

export class Dir {
  q: Item[] = [];
  head = 0;
  lastAt = 0;
  /** A close marker was queued (or the receiver is gone): later writes vanish. */
  dead = false;
  blocked = false;
  scheduled = false;
  /** Bytes written and not yet delivered (the sender's writableLength). */
  pendingBytes = 0;
  needDrain = false;
  /** The most bytes buffered since the last 'drain'. */
  peakBytes = 0;
  constructor(
    readonly conn: Conn,
    readonly to: 0 | 1,
  ) {}
  get pending(): number {
    return this.q.length - this.head;
  }
  truncate(keep: number): void {
    for (let i = this.head + keep; i < this.q.length; i++) this.pendingBytes -= this.q[i]!.data?.length ?? 0;
    this.q.length = this.head + keep;
  }
}

/** One side of a connection, as the ChannelConnection above it sees its socket. */
export class SimSocket extends EventEmitter implements ChannelSocket {
  closed = false;
  constructor(
    readonly conn: Conn,
    readonly side: 0 | 1,
    readonly owner: unknown,
    readonly hostIndex: number,
    private readonly net: Network,
    readonly remoteAddress: string,
    readonly remotePort: number,
  ) {
    super();
  }
  get peer(): SimSocket {
    return this.conn.ends[1 - this.side]!;
  }
  get writableLength(): number {
    return this.conn.dirs[this.side].pendingBytes;
  }
  write(data: Uint8Array): boolean {
    return this.net.write(this, data);
  }
  end(): void {
    this.net.closeLocal(this, 'peer closed the connection');
  }
  /** The simulated network has no system calls to save: writes go out as they are made. */
  cork(): void {}
  uncork(): void {}
  destroy(): void {
    this.net.closeLocal(this, 'peer closed the connection');
  }
}

export class Conn {
  readonly ends: [SimSocket, SimSocket];
  readonly dirs: [Dir, Dir];
  constructor(
    readonly id: number,
    net: Network,
    dialer: { owner: unknown; host: number; name: string; port: number },
    acceptor: { owner: unknown; host: number; name: string; port: number },
  ) {
    this.ends = [new SimSocket(this, 0, dialer.owner, dialer.host, net, acceptor.name, acceptor.port), new SimSocket(this, 1, acceptor.owner, acceptor.host, net, dialer.name, dialer.port)];
    // dirs[i] carries bytes from ends[i] to ends[1 - i]
    this.dirs = [new Dir(this, 1), new Dir(this, 0)];
  }
}

export interface NetHost {
  now(): number;
  /** A one-way delay on the link between two hosts, drawn now (latency plus bytes at the link's bandwidth). */
  delay(fromHost: number, toHost: number, bytes: number): number;
  /** Whether the link from → to is held by a partition right now. */
  blocked(fromHost: number, toHost: number): boolean;
  /** Schedules fn on `owner`'s process (deferred while it is paused, dropped if dead). */
  schedule(owner: unknown, atMs: number, fn: () => void): void;
  random(): number;
  /** 'drain' fires on a sender that had up to this many bytes buffered (statistics). */
  onDrain?(bufferedMaxBytes: number): void;
}

export class Network {
  private nextId = 1;
  readonly conns = new Set<Conn>();

  constructor(private readonly host: NetHost) {}

  connect(dialer: { owner: unknown; host: number; name: string; port: number }, acceptor: { owner: unknown; host: number; name: string; port: number }): Conn {
    const c = new Conn(this.nextId++, this, dialer, acceptor);
    this.conns.add(c);
    c.dirs[0].blocked = this.host.blocked(dialer.host, acceptor.host);
    c.dirs[1].blocked = this.host.blocked(acceptor.host, dialer.host);
    return c;
  }

  write(from: SimSocket, data: Uint8Array): boolean {
    if (from.closed) return false;
    const d = from.conn.dirs[from.side];
    if (d.dead) return true; // written into a socket whose peer is gone: lost
    const to = from.peer;
    const at = Math.max(d.lastAt, this.host.now() + this.host.delay(from.hostIndex, to.hostIndex, data.length));
    d.lastAt = at;
    d.q.push({ data: Buffer.from(data), reason: '', at });
    d.pendingBytes += data.length;
    if (d.pendingBytes > d.peakBytes) d.peakBytes = d.pendingBytes;
    this.arm(d);
    if (d.pendingBytes > HIGH_WATER_BYTES) {
      d.needDrain = true;
      return false;
    }
    return true;
  }

  /** This end closes its socket: what it wrote still arrives, then a close; what comes to it is lost. */
  closeLocal(end: SimSocket, reason: string): void {
    if (end.closed) return;
    end.closed = true;
    this.pushClose(end.conn.dirs[end.side], reason);
    const inbound = end.conn.dirs[1 - end.side]!;
    inbound.dead = true;
    inbound.truncate(0);
    this.maybeForget(end.conn);
    // net.Socket emits 'close' asynchronously.
    this.host.schedule(end.owner, this.host.now(), () => end.emit('close'));
  }

  /** Queues a close (FIN/RST) behind whatever this direction still carries; nothing follows it. */
  private pushClose(d: Dir, reason: string): void {
    if (d.dead) return;
    const from = d.conn.ends[1 - d.to]!;
    const at = Math.max(d.lastAt, this.host.now() + this.host.delay(from.hostIndex, d.conn.ends[d.to].hostIndex, 0));
    d.lastAt = at;
    d.q.push({ data: null, reason, at });
    d.dead = true;
    this.arm(d);
  }

  /**
   * The network breaks the connection (RST): each direction delivers a random prefix of what is in
   * flight (unless `dropAll`), then a close.
   */
  cut(c: Conn, reason: string, dropAll = false): void {
    for (const side of [0, 1] as const) {
      const d = c.dirs[side];
      if (d.dead) continue;
      const keep = dropAll ? 0 : Math.floor(this.host.random() * (d.pending + 1));
      d.truncate(keep);
      this.pushClose(d, reason);
    }
  }

  /** The process behind `end` vanished (kill -9 or power loss). */
  vanish(end: SimSocket, kernelCloses: boolean): void {
    if (end.closed) return;
    end.closed = true;
    const out = end.conn.dirs[end.side];
    if (!out.dead) {
      if (kernelCloses) {
        // The kernel delivers what was written, then FIN/RST.
        this.pushClose(out, 'peer closed the connection');
      } else {
        // Power loss: a prefix of what was in flight gets out; the peer hears nothing more.
        out.truncate(Math.floor(this.host.random() * (out.pending + 1)));
        out.dead = true;
      }
    }
    const inbound = end.conn.dirs[1 - end.side]!;
    inbound.dead = true;
    inbound.truncate(0);
  }

  /** A restarted host answers the survivor's next segment with RST: the half-open connection closes. */
  resetHalfOpen(end: SimSocket): void {
    if (end.peer.closed) return;
    const d = end.conn.dirs[end.side]; // towards the survivor
    d.dead = false;
    d.truncate(0);
    this.pushClose(d, 'connection reset by peer');
  }

  setBlocked(c: Conn, side: 0 | 1, blocked: boolean): void {
    const d = c.dirs[side];
    if (d.blocked === blocked) return;
    d.blocked = blocked;
    if (!blocked) {
      // Healed: what was held arrives now (retransmitted), in order.
      const from = c.ends[side];
      let t = this.host.now();
      for (let i = d.head; i < d.q.length; i++) {
        const it = d.q[i]!;
        t = Math.max(t, it.at, this.host.now() + this.host.delay(from.hostIndex, c.ends[1 - side]!.hostIndex, 0));
        it.at = t;
      }
      d.lastAt = Math.max(d.lastAt, t);
      this.arm(d);
    }
  }

  private arm(d: Dir): void {
    if (d.scheduled || d.blocked || d.pending === 0) return;
    d.scheduled = true;
    const recv = d.conn.ends[d.to];
    this.host.schedule(recv.owner, d.q[d.head]!.at, () => this.read(d));
  }

  /** The socket was accepted (its owner listens for data now): what arrived meanwhile is read. */
  accepted(end: SimSocket): void {
    this.arm(end.conn.dirs[1 - end.side]!);
  }

  /** One socket read: every byte that has arrived by now, as one chunk (sometimes split in two). */
  private read(d: Dir): void {
    d.scheduled = false;
    if (d.blocked) return;
    const recv = d.conn.ends[d.to];
    // Not accepted yet: the kernel holds what arrived (accepted() reads it).
    if (!recv.closed && recv.listenerCount('data') === 0) return;
    const now = this.host.now();
    const chunks: Buffer[] = [];
    let closeReason: string | undefined;
    while (d.head < d.q.length && d.q[d.head]!.at <= now && !recv.closed) {
      const it = d.q[d.head++]!;
      if (it.data === null) {
        closeReason = it.reason;
        break;
      }
      d.pendingBytes -= it.data.length;
      chunks.push(it.data);
    }
    if (d.head > 64 && d.head * 2 > d.q.length) {
      d.q.splice(0, d.head);
      d.head = 0;
    }
    const sender = d.conn.ends[1 - d.to]!;
    if (d.needDrain && d.pendingBytes === 0) {
      d.needDrain = false;
      this.host.onDrain?.(d.peakBytes);
      d.peakBytes = 0;
      if (!sender.closed) this.host.schedule(sender.owner, now, () => !sender.closed && sender.emit('drain'));
    }
    if (chunks.length > 0 && !recv.closed) {
      const all = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
      if (all.length > 1 && this.host.random() < 0.1) {
        // TCP may hand a frame over in pieces: the connection reassembles it.
        const cut = 1 + Math.floor(this.host.random() * (all.length - 1));
        recv.emit('data', all.subarray(0, cut));
        if (!recv.closed) recv.emit('data', all.subarray(cut));
      } else {
        recv.emit('data', all);
      }
    }
    if (closeReason !== undefined && !recv.closed) {
      recv.closed = true;
      // Our own unsent data is discarded with the socket.
      const out = d.conn.dirs[recv.side];
      out.dead = true;
      out.truncate(0);
      this.maybeForget(d.conn);
      recv.emit('close');
    }
    if (recv.closed) {
      d.truncate(0);
      this.maybeForget(d.conn);
    } else {
      this.arm(d);
    }
  }

  private maybeForget(c: Conn): void {
    if (c.ends[0].closed && c.ends[1].closed) this.conns.delete(c);
  }
}

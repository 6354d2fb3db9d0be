/**
 * The simulated logging channel: TCP connections as two ordered byte streams that can be held
 * (partition: nothing is delivered until it heals, then everything arrives, in order, as TCP
 * retransmission would) or broken (a cut: each side receives a prefix of what was in flight, then sees
 * the connection closed). Nothing is duplicated or reordered within a connection; duplicates and
 * "reordering" only happen across connections, when the primary redials and resends from the backup's
 * position — exactly what TCP allows.
 *
 * An end "opens" when it has the peer's HELLO and accepts it (connection.ts checkHello: roles, epochs).
 */
import type { Frame } from '../channel/frames.js';
import type { GuestState } from './guest.js';

export type HelloRole = 'primary' | 'backup' | 'standby';

/** A node's channel identity, read at handshake time (connection.ts LocalIdentity). */
export interface Identity {
  role: HelloRole;
  epoch: number;
  nextSeq: number;
}

export type Hello = { k: 'hello'; role: HelloRole; epoch: number; nextSeq: number; from: string };

export type Msg =
  | Hello
  | { k: 'frame'; frame: Frame }
  /** The running VM's snapshot (SNAPSHOT frames BEGIN + chunks, as one message of `bytes`). */
  | { k: 'snapshot'; state: GuestState; epoch: number; bytes: number }
  /** REFUSE: sent just before closing a refused connection. */
  | { k: 'refuse'; reason: string }
  /** FIN/RST: the peer closed the connection (or the network broke it). */
  | { k: 'close'; reason: string };

/** connection.ts checkHello (the parts the simulation models: roles and epochs). */
export function checkHello(id: Identity, h: Hello): string | undefined {
  if (h.role === id.role) return `both ends are ${h.role}s`;
  if ((id.role === 'primary') === (h.role === 'primary')) return `a ${id.role} does not pair with a ${h.role}`;
  if (id.role === 'standby' || h.role === 'standby') return undefined;
  if (h.epoch < id.epoch) return `FTVM_ERR_STALE_EPOCH: the peer is at epoch ${h.epoch}, older than ours (${id.epoch})`;
  if (h.epoch > id.epoch) return `FTVM_ERR_STALE_EPOCH: the peer is at epoch ${h.epoch}, newer than ours (${id.epoch}): this node is fenced`;
  return undefined;
}

interface Item {
  msg: Msg;
  at: number;
}

export class Dir {
  q: Item[] = [];
  head = 0;
  lastAt = 0;
  /** A close marker was queued (or the receiver is gone): later sends vanish. */
  dead = false;
  blocked = false;
  scheduled = false;
  constructor(
    readonly conn: Conn,
    readonly to: 0 | 1,
  ) {}
  get pending(): number {
    return this.q.length - this.head;
  }
}

/** One side of a connection: a ChannelConnection (events: open, frame, refused, close). */
export class End {
  opened = false;
  closed = false;
  identity: (() => Identity) | undefined;
  onOpen: ((hello: Hello) => void) | undefined;
  private msgFns: Array<(m: Msg) => void> = [];
  private closeFns: Array<(reason: string) => void> = [];
  private refusedFns: Array<(reason: string) => void> = [];
  constructor(
    readonly conn: Conn,
    readonly side: 0 | 1,
    readonly owner: unknown,
    readonly hostIndex: number,
  ) {}
  get isOpen(): boolean {
    return this.opened && !this.closed;
  }
  get peer(): End {
    return this.conn.ends[1 - this.side]!;
  }
  on(fn: (m: Msg) => void): void {
    this.msgFns.push(fn);
  }
  off(fn: (m: Msg) => void): void {
    this.msgFns = this.msgFns.filter((f) => f !== fn);
  }
  onceClose(fn: (reason: string) => void): void {
    this.closeFns.push(fn);
  }
  onceRefused(fn: (reason: string) => void): void {
    this.refusedFns.push(fn);
  }
  emitMsg(m: Msg): void {
    for (const f of this.msgFns.slice()) {
      if (this.closed) return;
      f(m);
    }
  }
  emitClose(reason: string): void {
    const fns = this.closeFns;
    this.closeFns = [];
    this.msgFns = [];
    for (const f of fns) f(reason);
  }
  emitRefused(reason: string): void {
    const fns = this.refusedFns;
    this.refusedFns = [];
    for (const f of fns) f(reason);
  }
}

export class Conn {
  readonly ends: [End, End];
  readonly dirs: [Dir, Dir];
  constructor(
    readonly id: number,
    dialer: { owner: unknown; host: number },
    acceptor: { owner: unknown; host: number },
  ) {
    this.ends = [new End(this, 0, dialer.owner, dialer.host), new End(this, 1, acceptor.owner, acceptor.host)];
    // dirs[i] carries messages from ends[i] to ends[1 - i]
    this.dirs = [new Dir(this, 1), new Dir(this, 0)];
  }
}

export interface NetHost {
  now(): number;
  /** A one-way delay on the link between two hosts, drawn now. */
  delay(fromHost: number, toHost: number, bytes: number): number;
  /** Whether the link from → to is held by a partition right now. */
  blocked(fromHost: number, toHost: number): boolean;
  /** Schedules a read on the receiving end's process (deferred while it is paused, dropped if dead). */
  schedule(owner: unknown, atMs: number, fn: () => void): void;
  random(): number;
}

export class Network {
  private nextId = 1;
  readonly conns = new Set<Conn>();

  constructor(private readonly host: NetHost) {}

  connect(dialer: { owner: unknown; host: number }, acceptor: { owner: unknown; host: number }): Conn {
    const c = new Conn(this.nextId++, dialer, acceptor);
    this.conns.add(c);
    c.dirs[0].blocked = this.host.blocked(dialer.host, acceptor.host);
    c.dirs[1].blocked = this.host.blocked(acceptor.host, dialer.host);
    return c;
  }

  send(from: End, msg: Msg, bytes = 32): void {
    if (from.closed) return;
    const d = from.conn.dirs[from.side];
    if (d.dead) return;
    const to = from.peer;
    const at = Math.max(d.lastAt, this.host.now() + this.host.delay(from.hostIndex, to.hostIndex, bytes));
    d.lastAt = at;
    d.q.push({ msg, at });
    this.arm(d);
  }

  /** This end closes its socket: what it sent still arrives, then a close; what comes to it is lost. */
  closeLocal(end: End, reason: string): void {
    if (end.closed) return;
    end.closed = true;
    this.pushClose(end.conn.dirs[end.side], reason);
    const inbound = end.conn.dirs[1 - end.side]!;
    inbound.dead = true;
    inbound.q.length = inbound.head;
    this.maybeForget(end.conn);
    end.emitClose(reason);
  }

  /** connection.ts refuse(): a REFUSE frame, then close. */
  refuse(end: End, reason: string): void {
    this.send(end, { k: 'refuse', reason });
    this.closeLocal(end, `refused: ${reason}`);
  }

  /** Queues a close (FIN/RST) behind whatever this direction still carries; nothing follows it. */
  private pushClose(d: Dir, reason: string): void {
    if (d.dead) return;
    const from = d.conn.ends[1 - d.to]!;
    const at = Math.max(d.lastAt, this.host.now() + this.host.delay(from.hostIndex, d.conn.ends[d.to].hostIndex, 0));
    d.lastAt = at;
    d.q.push({ msg: { k: 'close', reason }, at });
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
      const pending = d.pending;
      const keep = dropAll ? 0 : Math.floor(this.host.random() * (pending + 1));
      d.q.length = d.head + keep;
      this.pushClose(d, reason);
    }
  }

  /** The process behind `end` vanished (kill -9 or power loss). */
  vanish(end: End, kernelCloses: boolean): void {
    if (end.closed) return;
    end.closed = true;
    const out = end.conn.dirs[end.side];
    if (!out.dead) {
      if (kernelCloses) {
        // The kernel delivers what was written, then FIN/RST.
        this.pushClose(out, 'peer closed the connection');
      } else {
        // Power loss: a prefix of what was in flight gets out; the peer hears nothing more.
        const keep = Math.floor(this.host.random() * (out.pending + 1));
        out.q.length = out.head + keep;
        out.dead = true;
      }
    }
    const inbound = end.conn.dirs[1 - end.side]!;
    inbound.dead = true;
    inbound.q.length = inbound.head;
  }

  /** A restarted host answers the survivor's next segment with RST: the half-open connection closes. */
  resetHalfOpen(end: End): void {
    if (end.peer.closed) return;
    const d = end.conn.dirs[end.side]; // towards the survivor
    d.dead = false;
    d.q.length = d.head;
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

  /** One socket read: every message that has arrived by now. */
  private read(d: Dir): void {
    d.scheduled = false;
    if (d.blocked) return;
    const recv = d.conn.ends[d.to];
    const now = this.host.now();
    while (d.head < d.q.length && d.q[d.head]!.at <= now && !recv.closed) {
      const it = d.q[d.head++]!;
      if (it.msg.k === 'close') {
        recv.closed = true;
        // Our own unsent data is discarded with the socket.
        const out = d.conn.dirs[recv.side];
        out.dead = true;
        out.q.length = out.head;
        this.maybeForget(d.conn);
        recv.emitClose(it.msg.reason);
        break;
      }
      if (it.msg.k === 'hello') {
        if (recv.opened) {
          this.closeLocal(recv, 'unexpected HELLO');
          break;
        }
        const problem = recv.identity ? checkHello(recv.identity(), it.msg) : 'nobody listens';
        if (problem !== undefined) {
          this.refuse(recv, problem);
          break;
        }
        recv.opened = true;
        recv.onOpen?.(it.msg);
        continue;
      }
      if (!recv.opened) {
        this.closeLocal(recv, 'no HELLO');
        break;
      }
      if (it.msg.k === 'refuse') {
        recv.emitRefused(it.msg.reason);
        this.closeLocal(recv, `peer refused: ${it.msg.reason}`);
        break;
      }
      recv.emitMsg(it.msg);
    }
    if (d.head > 64 && d.head * 2 > d.q.length) {
      d.q.splice(0, d.head);
      d.head = 0;
    }
    if (recv.closed) {
      d.q.length = d.head;
      this.maybeForget(d.conn);
    } else {
      this.arm(d);
    }
  }

  private maybeForget(c: Conn): void {
    if (c.ends[0].closed && c.ends[1].closed) this.conns.delete(c);
  }
}

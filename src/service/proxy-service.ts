/**
 * The replica side of the proxy protocol (docs/PROXY.md): a serving primary's proxy port. Each client
 * connection of a proxy (`ftvm proxy`) is one virtual connection of the VM, opened with a tag — the
 * proxy's id and its connection number — that the log keeps (NIC_OPEN), so a replica that goes live
 * knows every proxied connection, its logged input and the output the guest sent (Devices.proxied, and
 * the replay's output tail). Per connection this side keeps:
 *   input:  `inNext` (bytes taken from the proxy, in order) and `inAcked` (logged and acknowledged by the
 *           backup: INACK lets the proxy drop them);
 *   output: released output the proxy has not confirmed (OUTACK), bounded; sent within a window of
 *           `OUT_WINDOW_BYTES` beyond the proxy's confirmation (the proxy's own buffer is bounded so).
 * A proxy session that breaks leaves its connections detached; the proxy re-attaches them (ATTACH with
 * its offsets) to this primary or, after a failover, to the new one. Nobody re-attaching within
 * `reattachTimeoutMs` closes the connection for the guest (a restarted proxy has a new id).
 */
import net from 'node:net';
import type { ProxiedAtGoLive, WireOutput } from '../machine/vcpu-protocol.js';
import type { Keyring } from '../security/secrets.js';
import type { Logger } from '../util/log.js';
import { attachVerdict, OffsetQueue } from '../proxy/offsets.js';
import { HEARTBEAT_MS, MAX_CHUNK_BYTES, PFrame, PROXY_ID_BYTES, ProxyWire, type ProxyFrame } from '../proxy/wire.js';
import type { InputSink } from './clients.js';

/** Output sent to a proxy beyond what it confirmed (per connection). */
export const OUT_WINDOW_BYTES = 1024 * 1024;
/** Released output a proxied client has not taken, per connection, before it is dropped. */
export const PROXY_OUT_MAX_BYTES = 64 * 1024 * 1024;
export const DEFAULT_REATTACH_TIMEOUT_MS = 30_000;
const HANDSHAKE_TIMEOUT_MS = 2_000;
const MAX_SESSIONS = 64;

export interface ProxyServiceOptions {
  host: string;
  port: number;
  keys: Keyring;
  vmName: string;
  log: Logger;
  reattachTimeoutMs?: number;
}

interface Session {
  wire: ProxyWire;
  proxyIdHex: string;
  conns: Map<number, ProxiedConnState>;
}

interface ProxiedConnState {
  conn: number;
  tag: string;
  pconn: number;
  session: Session | undefined;
  /** The proxy re-attached (or opened) it on `session`: input and output may flow. */
  attached: boolean;
  inNext: number;
  inEof: boolean;
  inAcked: number;
  /** The output from the proxy's last confirmation on (out.end: all output the guest sent). */
  out: OffsetQueue;
  outSent: number;
  outAcked: number;
  guestClosed: boolean;
  closeSent: boolean;
  /** The client left (EOF gone): output is discarded. */
  gone: boolean;
  detachTimer: NodeJS.Timeout | undefined;
}

export function tagOf(proxyId: Uint8Array, pconn: number): Uint8Array {
  const t = new Uint8Array(PROXY_ID_BYTES + 4);
  t.set(proxyId, 0);
  new DataView(t.buffer).setUint32(PROXY_ID_BYTES, pconn >>> 0, false);
  return t;
}

export class ProxyService {
  private server: net.Server | undefined;
  private readonly sessions = new Set<Session>();
  private readonly byConn = new Map<number, ProxiedConnState>();
  private readonly byTag = new Map<string, ProxiedConnState>();
  private readonly reattachTimeoutMs: number;
  refusals = 0;

  constructor(
    private readonly opts: ProxyServiceOptions,
    private readonly allocConn: () => number,
  ) {
    this.reattachTimeoutMs = opts.reattachTimeoutMs ?? DEFAULT_REATTACH_TIMEOUT_MS;
  }

  private sink!: InputSink;

  get address(): net.AddressInfo | undefined {
    const a = this.server?.address();
    return a && typeof a === 'object' ? a : undefined;
  }

  get connections(): number {
    return this.byConn.size;
  }

  owns(conn: number): boolean {
    return this.byConn.has(conn);
  }

  /** A replica that went live: the proxied connections its log knows wait for their proxy. */
  adopt(list: readonly ProxiedAtGoLive[]): void {
    for (const p of list) {
      const pconn = Buffer.from(p.tag, 'hex').readUInt32BE(PROXY_ID_BYTES);
      const start = p.outBytes - p.tail.length;
      const s: ProxiedConnState = {
        conn: p.conn,
        tag: p.tag,
        pconn,
        session: undefined,
        attached: false,
        inNext: p.inBytes,
        inEof: p.inEof,
        inAcked: p.inBytes,
        out: new OffsetQueue(start, p.tail),
        outSent: start,
        outAcked: start,
        guestClosed: p.closed,
        closeSent: false,
        gone: false,
        detachTimer: undefined,
      };
      if (!p.closed) this.byConn.set(p.conn, s);
      this.byTag.set(p.tag, s);
      this.armDetach(s);
    }
    if (list.length > 0) this.opts.log.info({ proxied: list.length }, 'proxied connections wait for their proxies to re-attach');
  }

  private heartbeat: NodeJS.Timeout | undefined;

  async start(sink: InputSink): Promise<void> {
    this.sink = sink;
    // Proxies take a silent session for a stopped or cut-off replica and look for the serving primary.
    this.heartbeat = setInterval(() => {
      for (const s of this.sessions) s.wire.send({ t: PFrame.HEARTBEAT });
    }, HEARTBEAT_MS);
    this.heartbeat.unref();
    const server = net.createServer({ noDelay: true }, (s) => this.accept(s));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.opts.port, this.opts.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  }

  private accept(sock: net.Socket): void {
    if (this.sessions.size >= MAX_SESSIONS) {
      sock.destroy();
      return;
    }
    const wire = new ProxyWire(sock, { keys: this.opts.keys, side: 'replica', vmName: this.opts.vmName, sendBufferMaxBytes: 256 * 1024 * 1024 });
    const timer = setTimeout(() => wire.close('FTVM_ERR_TIMEOUT', 'no proxy HELLO in time'), HANDSHAKE_TIMEOUT_MS);
    timer.unref();
    let session: Session | undefined;
    wire.on('open', (h: { proxyId: Uint8Array }) => {
      clearTimeout(timer);
      session = { wire, proxyIdHex: Buffer.from(h.proxyId).toString('hex'), conns: new Map() };
      this.sessions.add(session);
      this.opts.log.info({ proxy: session.proxyIdHex, remote: wire.remote }, 'proxy session opened');
    });
    wire.on('frame', (f: ProxyFrame) => {
      if (session !== undefined) this.onFrame(session, f);
    });
    wire.on('close', (c: { code: string; reason: string }) => {
      clearTimeout(timer);
      if (c.code !== 'FTVM_ERR_CHANNEL_CLOSED') {
        this.refusals++;
        this.opts.log.warn({ remote: wire.remote, code: c.code, reason: c.reason }, 'proxy session refused or broken');
      }
      if (session === undefined) return;
      this.sessions.delete(session);
      this.opts.log.info({ proxy: session.proxyIdHex, code: c.code, reason: c.reason }, 'proxy session closed');
      for (const s of session.conns.values()) {
        if (s.session !== session) continue;
        s.session = undefined;
        s.attached = false;
        this.armDetach(s);
      }
      session.conns.clear();
    });
  }

  private armDetach(s: ProxiedConnState): void {
    if (s.detachTimer !== undefined) clearTimeout(s.detachTimer);
    s.detachTimer = setTimeout(() => {
      s.detachTimer = undefined;
      if (s.session !== undefined) return;
      this.opts.log.info({ conn: s.conn, tag: s.tag }, 'no proxy re-attached the connection: closing it');
      this.forget(s, true);
    }, this.reattachTimeoutMs);
    s.detachTimer.unref();
  }

  /** Drops the connection's state; `closeInput`: tell the guest the client is gone. */
  private forget(s: ProxiedConnState, closeInput: boolean): void {
    if (s.detachTimer !== undefined) clearTimeout(s.detachTimer);
    s.detachTimer = undefined;
    if (closeInput && !s.inEof && !s.guestClosed) {
      s.inEof = true;
      this.sink.input('close', s.conn);
    }
    s.session?.conns.delete(s.pconn);
    s.session = undefined;
    s.gone = true;
    s.out.clear();
    this.byTag.delete(s.tag);
    if (s.guestClosed) this.byConn.delete(s.conn);
  }

  private refuseConn(session: Session, pconn: number, s: ProxiedConnState | undefined, code: string, message: string): void {
    this.refusals++;
    this.opts.log.warn({ proxy: session.proxyIdHex, pconn, conn: s?.conn, code, message }, 'proxied connection refused');
    session.wire.send({ t: PFrame.REFUSED, pconn, code, message });
    if (s !== undefined) this.forget(s, true);
  }

  private newConn(session: Session, pconn: number, tag: string): ProxiedConnState {
    const conn = this.allocConn();
    const s: ProxiedConnState = {
      conn, tag, pconn, session, attached: true,
      inNext: 0, inEof: false, inAcked: 0,
      out: new OffsetQueue(), outSent: 0, outAcked: 0,
      guestClosed: false, closeSent: false, gone: false, detachTimer: undefined,
    };
    this.byConn.set(conn, s);
    this.byTag.set(tag, s);
    session.conns.set(pconn, s);
    this.sink.input('open', conn, Buffer.from(tag, 'hex'));
    return s;
  }

  private onFrame(session: Session, f: ProxyFrame): void {
    if (f.t === PFrame.OPEN || f.t === PFrame.ATTACH) {
      const tag = Buffer.from(tagOf(Buffer.from(session.proxyIdHex, 'hex'), f.pconn)).toString('hex');
      const known = this.byTag.get(tag);
      if (f.t === PFrame.OPEN) {
        if (known !== undefined || session.conns.has(f.pconn)) {
          this.refuseConn(session, f.pconn, undefined, 'FTVM_ERR_PROXY_PROTOCOL', `connection ${f.pconn} is open already`);
          return;
        }
        this.newConn(session, f.pconn, tag);
        return;
      }
      const v = attachVerdict(known === undefined ? undefined : { inLogged: known.inNext, outAcked: known.outAcked, outEnd: known.out.end }, f);
      if (v.verdict === 'open') {
        // Its OPEN never reached the log this replica holds: open it now, from the start.
        this.newConn(session, f.pconn, tag);
        session.wire.send({ t: PFrame.ATTACHED, pconn: f.pconn, inLogged: 0, eofLogged: false });
        return;
      }
      if (v.verdict === 'refuse' || known === undefined) {
        this.refuseConn(session, f.pconn, known, 'FTVM_ERR_PROXY_OFFSET', `connection ${f.pconn}: ${v.verdict === 'refuse' ? v.message : 'unknown'}`);
        return;
      }
      if (known.session !== undefined && known.session !== session) known.session.conns.delete(known.pconn);
      known.session = session;
      known.attached = true;
      session.conns.set(f.pconn, known);
      if (known.detachTimer !== undefined) clearTimeout(known.detachTimer);
      known.detachTimer = undefined;
      this.trim(known, f.outDelivered);
      known.outSent = f.outDelivered;
      known.closeSent = false;
      session.wire.send({ t: PFrame.ATTACHED, pconn: f.pconn, inLogged: known.inNext, eofLogged: known.inEof });
      if (known.inAcked > f.inAcked) session.wire.send({ t: PFrame.INACK, pconn: f.pconn, offset: known.inAcked });
      this.pump(known);
      return;
    }
    if (f.t !== PFrame.DATA && f.t !== PFrame.EOF && f.t !== PFrame.OUTACK) {
      session.wire.refuse('FTVM_ERR_PROXY_PROTOCOL', `frame type ${f.t} from a proxy`);
      return;
    }
    const s = session.conns.get(f.pconn);
    if (s === undefined || !s.attached || s.session !== session) {
      if (f.t === PFrame.OUTACK) return; // a late confirmation of a connection already closed
      this.refuseConn(session, f.pconn, undefined, 'FTVM_ERR_PROXY_PROTOCOL', `connection ${f.pconn} is not attached`);
      return;
    }
    switch (f.t) {
      case PFrame.DATA:
        if (f.offset !== s.inNext || s.inEof) {
          this.refuseConn(session, f.pconn, s, 'FTVM_ERR_PROXY_OFFSET', `input at offset ${f.offset}; the VM expects ${s.inNext}${s.inEof ? ' (after the end of input)' : ''}`);
          return;
        }
        if (f.data.length === 0) return;
        s.inNext += f.data.length;
        if (!s.guestClosed) this.sink.input('data', s.conn, f.data);
        return;
      case PFrame.EOF:
        if (f.offset !== s.inNext) {
          this.refuseConn(session, f.pconn, s, 'FTVM_ERR_PROXY_OFFSET', `end of input at offset ${f.offset}; the VM holds ${s.inNext}`);
          return;
        }
        if (!s.inEof) {
          s.inEof = true;
          if (!s.guestClosed) this.sink.input('close', s.conn);
        }
        if (f.gone) {
          s.gone = true;
          s.out.clear();
          s.outSent = s.outAcked = s.out.end;
          session.conns.delete(s.pconn);
          this.byTag.delete(s.tag);
          s.session = undefined;
          if (s.guestClosed) this.byConn.delete(s.conn);
        }
        return;
      case PFrame.OUTACK:
        if (f.offset > s.outSent || f.offset < s.outAcked) {
          this.refuseConn(session, f.pconn, s, 'FTVM_ERR_PROXY_OFFSET', `output confirmed to ${f.offset}; sent [${s.outAcked}, ${s.outSent}]`);
          return;
        }
        this.trim(s, f.offset);
        if (s.guestClosed && s.closeSent && s.outAcked === s.out.end) {
          session.conns.delete(s.pconn);
          this.byTag.delete(s.tag);
          this.byConn.delete(s.conn);
          s.session = undefined;
          return;
        }
        this.pump(s);
        return;
    }
  }

  /** Drops output below `offset` (the proxy holds it). */
  private trim(s: ProxiedConnState, offset: number): void {
    s.outAcked = Math.max(s.outAcked, offset);
    s.out.trimTo(s.outAcked);
  }

  /** Sends output within the window, then CLOSE once the guest closed and everything went. */
  private pump(s: ProxiedConnState): void {
    const session = s.session;
    if (session === undefined || !s.attached || s.gone) return;
    while (s.outSent < s.out.end && s.outSent - s.outAcked < OUT_WINDOW_BYTES) {
      const data = s.out.read(s.outSent, Math.min(MAX_CHUNK_BYTES, OUT_WINDOW_BYTES - (s.outSent - s.outAcked)));
      if (data.length === 0) break;
      if (!session.wire.send({ t: PFrame.OUT, pconn: s.pconn, offset: s.outSent, data })) return;
      s.outSent += data.length;
    }
    if (s.guestClosed && !s.closeSent && s.outSent === s.out.end) {
      s.closeSent = true;
      session.wire.send({ t: PFrame.CLOSE, pconn: s.pconn, offset: s.out.end });
    }
  }

  /** Released output of a proxied connection. */
  deliver(o: WireOutput): void {
    const s = this.byConn.get(o.conn);
    if (s === undefined) return;
    if (o.kind === 'close') {
      s.guestClosed = true;
      if (s.gone || this.byTag.get(s.tag) !== s) this.byConn.delete(s.conn);
      this.pump(s);
      return;
    }
    if (o.kind !== 'net' || s.gone) return;
    s.out.push(o.data);
    if (s.out.end - s.outAcked > PROXY_OUT_MAX_BYTES) {
      const session = s.session;
      this.opts.log.warn({ conn: s.conn, unread: s.out.end - s.outAcked }, 'proxied client stopped reading; dropping it');
      if (session !== undefined) this.refuseConn(session, s.pconn, s, 'FTVM_ERR_PROXY_OVERFLOW', `more than ${PROXY_OUT_MAX_BYTES} bytes of output unread`);
      else this.forget(s, true);
      return;
    }
    this.pump(s);
  }

  /** Input the backup acknowledged (or that a primary alone logged): (conn, bytes) pairs. */
  inputLogged(pairs: readonly number[]): void {
    for (let k = 0; k + 1 < pairs.length; k += 2) {
      const s = this.byConn.get(pairs[k]!);
      if (s === undefined) continue;
      s.inAcked = Math.min(s.inNext, s.inAcked + pairs[k + 1]!);
      if (s.session !== undefined && s.attached) s.session.wire.send({ t: PFrame.INACK, pconn: s.pconn, offset: s.inAcked });
    }
  }

  async close(): Promise<void> {
    if (this.heartbeat !== undefined) clearInterval(this.heartbeat);
    for (const s of this.sessions) s.wire.close('FTVM_ERR_CHANNEL_CLOSED', 'the replica is stopping');
    for (const s of this.byConn.values()) if (s.detachTimer) clearTimeout(s.detachTimer);
    for (const s of this.byTag.values()) if (s.detachTimer) clearTimeout(s.detachTimer);
    const server = this.server;
    if (server) await new Promise<void>((r) => server.close(() => r()));
  }
}

/**
 * `ftvm proxy`: the stable address of a VM (docs/PROXY.md) — the role VMware FT's moving IP address
 * plays. Each client TCP connection becomes one virtual connection of the VM, carried to the serving
 * primary's proxy port over one authenticated, multiplexed session (src/proxy/wire.ts). The proxy keeps,
 * per connection, the input the backup has not yet acknowledged (bounded: the client's socket is paused
 * past `inputMaxBytes`) and counts the output it received. When the session breaks (the primary died or
 * the link did), the proxy finds the serving primary among `replicas` and re-attaches every connection
 * with its offsets: input the VM's log does not hold is sent again, output the client already has is
 * not, output the old primary never released comes from the new primary's replay. The client sees a
 * pause.
 */
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { duplexPair } from '../client/duplex-pair.js';
import type { Keyring } from '../security/secrets.js';
import type { Logger } from '../util/log.js';
import { fixedReplicas, type ReplicaSource } from './discovery.js';
import { OffsetQueue } from './offsets.js';
import { MAX_CHUNK_BYTES, PFrame, ProxyWire, type ProxyFrame } from './wire.js';

export const PROXY_INPUT_MAX_BYTES = 4 * 1024 * 1024;
/** A client socket holding more unsent output than this stops confirming output (the replica's window then holds it). */
const CLIENT_WRITE_HIGH_BYTES = 1024 * 1024;

export interface ProxyAddr {
  host: string;
  port: number;
}

export interface ProxyOptions {
  /** Where clients connect; absent: no listener (an embedded proxy: `connectStream`, src/client/ftvm-client.ts). */
  listen?: ProxyAddr;
  vmName: string;
  keys: Keyring;
  /**
   * Where to look for the serving primary: the replicas' proxy ports (`--proxy-listen` of each replica
   * and standby slot), or a source asked again at every round of looking (`arbiterReplicas`: the VM's
   * arbiter record and member entries, src/proxy/discovery.ts).
   */
  replicas: ProxyAddr[] | ReplicaSource;
  log: Logger;
  inputMaxBytes?: number;
  maxConnections?: number;
  /** A replica that does not complete the handshake within this long is skipped. */
  connectTimeoutMs?: number;
  /** A session silent this long (no frame, not even HEARTBEAT) is dropped: the replica stopped or was cut off. */
  sessionTimeoutMs?: number;
}

interface ClientConn {
  pconn: number;
  sock: Duplex;
  /** Input from the client not yet acknowledged: offsets [input.base (acknowledged), input.end (sent by the client)). */
  input: OffsetQueue;
  /** Input sent on the current session (offset). */
  inRepl: number;
  eofFromClient: boolean;
  eofRepl: boolean;
  /** OPEN was sent on some session: later sessions ATTACH. */
  opened: boolean;
  attached: boolean;
  outDelivered: number;
  outAckedSent: number;
  /** The client left: the connection is dropped once the replica is told. */
  gone: boolean;
  paused: boolean;
}

const addrText = (a: ProxyAddr): string => `${a.host}:${a.port}`;

export class FtvmProxy {
  private server: net.Server | undefined;
  private readonly conns = new Map<number, ClientConn>();
  private nextPconn = 1;
  private wire: ProxyWire | undefined;
  private readonly proxyId = randomBytes(16);
  private readonly findReplicas: ReplicaSource;
  /** The replica whose session was lost last: tried after the others in the next round. */
  private lastLost: string | undefined;
  private stopped = false;
  private connecting = false;
  private readonly inputMaxBytes: number;
  /** Sessions opened (1 + re-attachments after a failover or a broken link). */
  sessions = 0;
  refused = 0;
  private ackTimer: NodeJS.Immediate | undefined;
  private readonly ackDue = new Set<ClientConn>();

  constructor(private readonly opts: ProxyOptions) {
    this.inputMaxBytes = opts.inputMaxBytes ?? PROXY_INPUT_MAX_BYTES;
    this.findReplicas = typeof opts.replicas === 'function' ? opts.replicas : fixedReplicas(opts.replicas);
  }

  get address(): net.AddressInfo | undefined {
    const a = this.server?.address();
    return a && typeof a === 'object' ? a : undefined;
  }

  get id(): string {
    return this.proxyId.toString('hex');
  }

  private sessionWaiters: Array<() => void> = [];

  /** Resolves once a session with the serving primary is open. */
  whenSession(): Promise<void> {
    if (this.wire?.isOpen === true) return Promise.resolve();
    return new Promise((r) => this.sessionWaiters.push(r));
  }

  /** A new virtual connection of the VM as an in-memory stream (no TCP hop): the application's end. */
  connectStream(): Duplex {
    const [mine, theirs] = duplexPair();
    this.accept(mine);
    return theirs;
  }

  async start(): Promise<void> {
    if (this.opts.listen === undefined) {
      void this.connect();
      return;
    }
    const listen = this.opts.listen;
    const server = net.createServer({ noDelay: true }, (s) => this.accept(s));
    server.maxConnections = this.opts.maxConnections ?? 10_000;
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(listen.port, listen.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.opts.log.info({ listen: this.address, replicas: Array.isArray(this.opts.replicas) ? this.opts.replicas.map(addrText) : 'from the arbiter', proxyId: this.id }, 'proxy listening');
    void this.connect();
  }

  private accept(sock: Duplex): void {
    const c: ClientConn = {
      pconn: this.nextPconn++,
      sock,
      input: new OffsetQueue(),
      inRepl: 0,
      eofFromClient: false,
      eofRepl: false,
      opened: false,
      attached: false,
      outDelivered: 0,
      outAckedSent: 0,
      gone: false,
      paused: false,
    };
    this.conns.set(c.pconn, c);
    sock.on('data', (chunk: Buffer) => {
      c.input.push(chunk);
      if (!c.paused && c.input.heldBytes > this.inputMaxBytes) {
        c.paused = true;
        sock.pause();
      }
      this.flushInput(c);
    });
    sock.on('end', () => {
      c.eofFromClient = true;
      this.flushInput(c);
    });
    sock.on('drain', () => this.ackOut(c));
    sock.on('error', () => undefined);
    sock.on('close', () => {
      if (c.gone) return;
      c.gone = true;
      c.eofFromClient = true;
      if (!c.opened) {
        this.conns.delete(c.pconn);
        return;
      }
      this.flushInput(c);
    });
    const w = this.wire;
    if (w?.isOpen === true) {
      c.opened = true;
      c.attached = true;
      w.send({ t: PFrame.OPEN, pconn: c.pconn });
    }
  }

  /** Sends the input the current session lacks, then the end of input (and forgets a client gone). */
  private flushInput(c: ClientConn): void {
    const w = this.wire;
    if (w === undefined || !w.isOpen || !c.attached) return;
    while (c.inRepl < c.input.end) {
      const data = c.input.read(c.inRepl, MAX_CHUNK_BYTES);
      if (data.length === 0) break;
      if (!w.send({ t: PFrame.DATA, pconn: c.pconn, offset: c.inRepl, data })) return;
      c.inRepl += data.length;
    }
    if (c.inRepl !== c.input.end) return;
    if ((c.eofFromClient && !c.eofRepl) || c.gone) {
      c.eofRepl = true;
      w.send({ t: PFrame.EOF, pconn: c.pconn, offset: c.input.end, gone: c.gone });
      if (c.gone) this.conns.delete(c.pconn);
    }
  }

  /** Confirms the output handed to the client's socket (coalesced per event-loop turn). */
  private ackOut(c: ClientConn): void {
    this.ackDue.add(c);
    this.ackTimer ??= setImmediate(() => {
      this.ackTimer = undefined;
      const w = this.wire;
      for (const d of this.ackDue) {
        if (d.sock.writableLength > CLIENT_WRITE_HIGH_BYTES) continue; // 'drain' confirms later
        if (w?.isOpen === true && d.attached && d.outDelivered > d.outAckedSent) {
          w.send({ t: PFrame.OUTACK, pconn: d.pconn, offset: d.outDelivered });
          d.outAckedSent = d.outDelivered;
        }
      }
      this.ackDue.clear();
    });
  }

  private async connect(): Promise<void> {
    if (this.connecting || this.stopped) return;
    this.connecting = true;
    try {
      let round = 0;
      while (!this.stopped) {
        const found = await this.findReplicas();
        // The replica just lost goes last (it is gone, stopped or cut off; if it still serves, the
        // round comes back to it).
        const list = [...found.filter((a) => addrText(a) !== this.lastLost), ...found.filter((a) => addrText(a) === this.lastLost)];
        for (const addr of list) {
          if (this.stopped) break;
          const w = await this.tryReplica(addr);
          if (w !== undefined) {
            this.lastLost = undefined;
            this.onSession(w, addr);
            return;
          }
        }
        round++;
        await new Promise((r) => setTimeout(r, Math.min(200, 20 * round)));
      }
    } finally {
      this.connecting = false;
    }
  }

  private tryReplica(addr: ProxyAddr): Promise<ProxyWire | undefined> {
    return new Promise((resolve) => {
      const sock = net.connect({ host: addr.host, port: addr.port });
      const w = new ProxyWire(sock, { keys: this.opts.keys, side: 'proxy', vmName: this.opts.vmName, proxyId: this.proxyId, sendBufferMaxBytes: 256 * 1024 * 1024 });
      const timer = setTimeout(() => w.close('FTVM_ERR_TIMEOUT', 'no WELCOME in time'), this.opts.connectTimeoutMs ?? 1000);
      const done = (ok: boolean): void => {
        clearTimeout(timer);
        w.removeAllListeners('open');
        w.removeAllListeners('close');
        resolve(ok ? w : undefined);
      };
      w.once('open', () => done(true));
      w.once('close', (c: { code: string; reason: string }) => {
        if (c.code !== 'FTVM_ERR_CHANNEL_CLOSED' && c.code !== 'FTVM_ERR_TIMEOUT') this.opts.log.warn({ replica: `${addr.host}:${addr.port}`, code: c.code, reason: c.reason }, 'replica refused the proxy');
        done(false);
      });
    });
  }

  private onSession(w: ProxyWire, addr: ProxyAddr): void {
    this.wire = w;
    this.sessions++;
    let heardMs = Date.now();
    const timeoutMs = this.opts.sessionTimeoutMs ?? 1500;
    const watchdog = setInterval(() => {
      if (Date.now() - heardMs > timeoutMs) w.close('FTVM_ERR_TIMEOUT', `the replica was silent for ${Date.now() - heardMs} ms`);
    }, Math.max(50, Math.floor(timeoutMs / 4)));
    watchdog.unref();
    w.on('frame', () => (heardMs = Date.now()));
    this.opts.log.info({ replica: `${addr.host}:${addr.port}`, connections: this.conns.size, session: this.sessions }, 'proxy session open: re-attaching connections');
    for (const wake of this.sessionWaiters.splice(0)) wake();
    w.on('frame', (f: ProxyFrame) => this.onFrame(w, f));
    w.on('close', (c: { code: string; reason: string }) => {
      clearInterval(watchdog);
      if (this.wire === w) this.wire = undefined;
      this.lastLost = addrText(addr);
      for (const conn of this.conns.values()) conn.attached = false;
      if (!this.stopped) {
        this.opts.log.warn({ replica: `${addr.host}:${addr.port}`, code: c.code, reason: c.reason }, 'proxy session lost: finding the serving primary');
        void this.connect();
      }
    });
    for (const c of [...this.conns.values()]) {
      if (!c.opened) {
        c.opened = true;
        c.attached = true;
        c.inRepl = 0;
        w.send({ t: PFrame.OPEN, pconn: c.pconn });
        this.flushInput(c);
      } else {
        w.send({ t: PFrame.ATTACH, pconn: c.pconn, inSent: c.input.end, inAcked: c.input.base, outDelivered: c.outDelivered, eofSent: c.eofFromClient });
      }
    }
  }

  private drop(c: ClientConn, why: string): void {
    this.conns.delete(c.pconn);
    c.gone = true;
    this.opts.log.warn({ pconn: c.pconn, why }, 'dropping a client connection');
    c.sock.destroy();
  }

  private onFrame(w: ProxyWire, f: ProxyFrame): void {
    if (f.t === PFrame.ERROR) {
      this.opts.log.warn({ code: f.code, message: f.message }, 'the replica refused the session');
      return;
    }
    if (!('pconn' in f)) return;
    const c = this.conns.get(f.pconn);
    if (c === undefined) return; // a connection this proxy already forgot
    switch (f.t) {
      case PFrame.ATTACHED: {
        if (f.inLogged < c.input.base || f.inLogged > c.input.end) {
          this.drop(c, `the VM holds input to ${f.inLogged}; this proxy has [${c.input.base}, ${c.input.end}]`);
          return;
        }
        c.attached = true;
        c.inRepl = f.inLogged;
        c.eofRepl = f.eofLogged;
        c.outAckedSent = c.outDelivered;
        this.flushInput(c);
        return;
      }
      case PFrame.REFUSED:
        this.refused++;
        this.opts.log.warn({ pconn: f.pconn, code: f.code, message: f.message }, 'the VM refused a proxied connection');
        this.drop(c, f.code);
        return;
      case PFrame.INACK: {
        if (f.offset > c.input.base) {
          c.input.trimTo(f.offset);
          if (c.paused && c.input.heldBytes <= this.inputMaxBytes / 2) {
            c.paused = false;
            c.sock.resume();
          }
        }
        return;
      }
      case PFrame.OUT: {
        if (f.offset !== c.outDelivered) {
          if (f.offset + f.data.length <= c.outDelivered) return;
          this.opts.log.error({ pconn: f.pconn, offset: f.offset, delivered: c.outDelivered }, 'output out of order from the replica: dropping the session');
          w.close('FTVM_ERR_PROXY_OFFSET', 'output out of order');
          return;
        }
        c.outDelivered += f.data.length;
        if (!c.gone) c.sock.write(f.data);
        this.ackOut(c);
        return;
      }
      case PFrame.CLOSE:
        if (f.offset !== c.outDelivered) return; // more output first (cannot happen: OUT precedes CLOSE)
        w.send({ t: PFrame.OUTACK, pconn: c.pconn, offset: f.offset });
        this.conns.delete(c.pconn);
        c.gone = true;
        c.sock.end();
        return;
    }
  }

  get openConnections(): number {
    return this.conns.size;
  }

  async close(): Promise<void> {
    this.stopped = true;
    this.wire?.close('FTVM_ERR_CHANNEL_CLOSED', 'the proxy is stopping');
    for (const c of this.conns.values()) c.sock.destroy();
    this.conns.clear();
    const server = this.server;
    if (server) await new Promise<void>((r) => server.close(() => r()));
  }
}

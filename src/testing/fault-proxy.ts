/**
 * A fault-injecting TCP proxy for tests: put it between a primary and its backup's logging channel, or
 * between clients and a server, and break the network on cue.
 *
 * It listens on 127.0.0.1 only and connects only to loopback addresses (127.0.0.0/8): it can never send
 * traffic off this machine.
 *
 * Each accepted connection is paired with a new connection to the target. Faults apply to every current and
 * future connection, and each direction is controlled on its own: `'up'` is client → target, `'down'` is
 * target → client.
 *
 * | control | effect |
 * |---|---|
 * | `hold(dir)` | stop forwarding; bytes are buffered (beyond `maxHeldBytes` per connection, default 64 MiB, the source socket is paused, so the sender feels TCP backpressure) |
 * | `release(dir)` | forward everything held, in order, and flow normally again (also ends a blackhole) |
 * | `delay(dir, ms)` | forward each chunk `ms` after it arrived, preserving order (`0` ends the delay) |
 * | `blackhole(dir)` | silently drop bytes (and anything held): a partition that keeps TCP up. A FIN is not dropped but deferred until the direction is released |
 * | `cut()` | reset (RST) every current connection and refuse new ones (the listener is closed: ECONNREFUSED) |
 * | `heal()` | undo every fault: accept again, release held bytes, stop dropping, no delay |
 *
 * With `captureMaxBytes`, the first bytes of each direction (over all connections, up to that bound) are
 * kept for inspection: `captured(dir)` (what an eavesdropper on the wire would see).
 *
 * Resets travel through at once (a connection reset on one side is reset on the other), whatever the
 * faults. `close()` destroys every socket the proxy opened.
 */
import { once } from 'node:events';
import net from 'node:net';
import { performance } from 'node:perf_hooks';

export type Direction = 'up' | 'down';
export type DirectionArg = Direction | 'both';

export type FaultProxyErrorCode = 'FTVM_ERR_BAD_ARGUMENT' | 'FTVM_ERR_PROXY_LISTEN' | 'FTVM_ERR_PROXY_CLOSED';

export class FaultProxyError extends Error {
  readonly code: FaultProxyErrorCode;
  constructor(code: FaultProxyErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'FaultProxyError';
  }
}

export interface FaultProxyOptions {
  /** Port to listen on (127.0.0.1); 0 picks a free one. Default 0. */
  listenPort?: number;
  /** Must be a loopback address: `127.x.y.z` or `localhost`. Default `127.0.0.1`. */
  targetHost?: string;
  targetPort: number;
  /** Per connection and direction, bytes buffered (held or delayed) before the source is paused. Default 64 MiB. */
  maxHeldBytes?: number;
  /** Keep the first this many bytes received in each direction (`captured`). Default 0 (none). */
  captureMaxBytes?: number;
}

export interface DirectionStats {
  /** Bytes read from the source side. */
  received: number;
  /** Bytes written to the destination side. */
  forwarded: number;
  /** Bytes dropped by a blackhole (or lost with a connection that was reset while they were buffered). */
  dropped: number;
  /** Bytes buffered now (held or delayed), over all connections. */
  buffered: number;
  mode: 'pass' | 'hold' | 'blackhole';
  delayMs: number;
}

export interface FaultProxyStats {
  /** Connections open now. */
  connections: number;
  /** Connections accepted since start. */
  accepted: number;
  cut: boolean;
  up: DirectionStats;
  down: DirectionStats;
}

/** Fault state of one direction, shared by all connections. */
interface DirectionState {
  mode: 'pass' | 'hold' | 'blackhole';
  delayMs: number;
  received: number;
  forwarded: number;
  dropped: number;
  /** Captured bytes (bounded by captureMax). */
  capture: Buffer[];
  captured: number;
  captureMax: number;
}

interface Chunk {
  readonly data: Buffer;
  /** performance.now() at which it may be forwarded. */
  readonly due: number;
}

/** Resets a socket (RST) if it is connected, else destroys it. Never throws. */
function abort(socket: net.Socket): void {
  if (socket.destroyed) return;
  try {
    if (socket.connecting) socket.destroy();
    else socket.resetAndDestroy();
  } catch {
    socket.destroy();
  }
}

function directions(dir: DirectionArg): Direction[] {
  if (dir === 'both') return ['up', 'down'];
  if (dir === 'up' || dir === 'down') return [dir];
  throw new FaultProxyError('FTVM_ERR_BAD_ARGUMENT', `direction must be 'up', 'down' or 'both', not ${String(dir)}`);
}

/** Accepts `localhost` and IPv4 loopback literals; returns the IPv4 address to connect to. */
function loopbackTarget(host: string): string {
  if (host === 'localhost') return '127.0.0.1';
  if (net.isIPv4(host) && host.startsWith('127.')) return host;
  throw new FaultProxyError('FTVM_ERR_BAD_ARGUMENT', `target host must be a loopback address (127.0.0.0/8), not ${JSON.stringify(host)}`);
}

/** One direction of one connection: reads `src`, writes `dst`, obeying the direction's fault state. */
class Flow {
  private readonly queue: (Chunk | undefined)[] = [];
  private queueHead = 0;
  private buffered = 0;
  private timer: NodeJS.Timeout | null = null;
  /** The source sent FIN; forward it once everything before it is out. */
  private endPending = false;
  private ended = false;
  private dstBlocked = false;
  private paused = false;

  constructor(
    private readonly state: DirectionState,
    private readonly src: net.Socket,
    private readonly dst: net.Socket,
    private readonly maxHeldBytes: number,
  ) {
    src.on('data', (data: Buffer) => this.onData(data));
    src.on('end', () => {
      this.endPending = true;
      this.pump();
    });
    dst.on('drain', () => {
      this.dstBlocked = false;
      this.updatePause();
    });
  }

  get bufferedBytes(): number {
    return this.buffered;
  }

  /** Re-reads the fault state: forwards what is due, drops what a blackhole eats. */
  pump(): void {
    if (this.dst.destroyed) return;
    if (this.state.mode === 'blackhole') this.dropQueued();
    if (this.state.mode === 'pass') {
      const now = performance.now();
      for (let c = this.queue[this.queueHead]; c; c = this.queue[this.queueHead]) {
        if (c.due > now) {
          this.armTimer(c.due - now);
          break;
        }
        this.queue[this.queueHead++] = undefined;
        this.buffered -= c.data.length;
        this.forward(c.data);
      }
      if (this.queueHead === this.queue.length) {
        this.queue.length = 0;
        this.queueHead = 0;
        if (this.endPending && !this.ended) {
          this.ended = true;
          this.dst.end();
        }
      }
    }
    this.updatePause();
  }

  /** Forgets buffered bytes (the connection is going away). */
  dispose(): number {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    const lost = this.buffered;
    this.queue.length = 0;
    this.queueHead = 0;
    this.buffered = 0;
    return lost;
  }

  private onData(data: Buffer): void {
    const s = this.state;
    s.received += data.length;
    if (s.captured < s.captureMax) {
      const part = data.subarray(0, s.captureMax - s.captured);
      s.capture.push(Buffer.from(part));
      s.captured += part.length;
    }
    if (s.mode === 'blackhole') {
      s.dropped += data.length;
      return;
    }
    if (s.mode === 'pass' && s.delayMs === 0 && this.queueHead === this.queue.length) {
      this.forward(data);
      this.updatePause();
      return;
    }
    this.queue.push({ data, due: performance.now() + s.delayMs });
    this.buffered += data.length;
    this.pump();
  }

  private forward(data: Buffer): void {
    this.state.forwarded += data.length;
    if (!this.dst.write(data)) this.dstBlocked = true;
  }

  private dropQueued(): void {
    this.state.dropped += this.buffered;
    this.dispose();
  }

  private armTimer(ms: number): void {
    if (this.timer !== null) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.pump();
    }, Math.max(1, Math.ceil(ms)));
  }

  private updatePause(): void {
    const shouldPause = this.dstBlocked || this.buffered > this.maxHeldBytes;
    if (shouldPause === this.paused || this.src.destroyed) return;
    this.paused = shouldPause;
    if (shouldPause) this.src.pause();
    else this.src.resume();
  }
}

interface Connection {
  readonly client: net.Socket;
  readonly target: net.Socket;
  readonly up: Flow;
  readonly down: Flow;
}

export class FaultProxy {
  /** Starts listening on 127.0.0.1. */
  static async start(options: FaultProxyOptions): Promise<FaultProxy> {
    const targetHost = loopbackTarget(options.targetHost ?? '127.0.0.1');
    const { targetPort } = options;
    if (!Number.isInteger(targetPort) || targetPort <= 0 || targetPort > 65535) {
      throw new FaultProxyError('FTVM_ERR_BAD_ARGUMENT', `bad target port ${String(targetPort)}`);
    }
    const listenPort = options.listenPort ?? 0;
    if (!Number.isInteger(listenPort) || listenPort < 0 || listenPort > 65535) {
      throw new FaultProxyError('FTVM_ERR_BAD_ARGUMENT', `bad listen port ${String(listenPort)}`);
    }
    const maxHeldBytes = options.maxHeldBytes ?? 64 * 1024 * 1024;
    const captureMax = options.captureMaxBytes ?? 0;
    if (!Number.isInteger(captureMax) || captureMax < 0 || captureMax > 256 * 1024 * 1024) throw new FaultProxyError('FTVM_ERR_BAD_ARGUMENT', `bad captureMaxBytes ${String(captureMax)}`);
    const proxy = new FaultProxy(targetHost, targetPort, maxHeldBytes, captureMax);
    await proxy.listen(listenPort);
    return proxy;
  }

  /** The port the proxy listens on (127.0.0.1). Kept across `cut()`/`heal()`. */
  get port(): number {
    return this.listenPort;
  }
  readonly targetHost: string;
  readonly targetPort: number;

  private readonly maxHeldBytes: number;
  private listenPort = 0;
  private server: net.Server | null = null;
  private readonly connections = new Set<Connection>();
  private readonly state: Record<Direction, DirectionState> = {
    up: { mode: 'pass', delayMs: 0, received: 0, forwarded: 0, dropped: 0, capture: [], captured: 0, captureMax: 0 },
    down: { mode: 'pass', delayMs: 0, received: 0, forwarded: 0, dropped: 0, capture: [], captured: 0, captureMax: 0 },
  };
  private accepted = 0;
  private isCut = false;
  private isClosed = false;

  private constructor(targetHost: string, targetPort: number, maxHeldBytes: number, captureMax: number) {
    this.state.up.captureMax = captureMax;
    this.state.down.captureMax = captureMax;
    this.targetHost = targetHost;
    this.targetPort = targetPort;
    this.maxHeldBytes = maxHeldBytes;
  }

  /** The bytes captured in `dir` so far (see `captureMaxBytes`). */
  captured(dir: Direction): Buffer {
    return Buffer.concat(this.state[dir].capture);
  }

  /** Stops forwarding in `dir`, buffering what arrives. */
  hold(dir: DirectionArg): void {
    for (const d of directions(dir)) this.state[d].mode = 'hold';
  }

  /** Forwards everything held in `dir`, in order, then flows normally; also ends a blackhole. */
  release(dir: DirectionArg): void {
    for (const d of directions(dir)) this.state[d].mode = 'pass';
    this.pumpAll();
  }

  /** Forwards each chunk in `dir` `ms` after it arrived, in order. `delay(dir, 0)` ends the delay. */
  delay(dir: DirectionArg, ms: number): void {
    if (!Number.isFinite(ms) || ms < 0) throw new FaultProxyError('FTVM_ERR_BAD_ARGUMENT', `bad delay ${ms}`);
    for (const d of directions(dir)) this.state[d].delayMs = ms;
    this.pumpAll();
  }

  /** Drops every byte in `dir` (and what was held), keeping the connections up. */
  blackhole(dir: DirectionArg): void {
    for (const d of directions(dir)) this.state[d].mode = 'blackhole';
    this.pumpAll();
  }

  /** Resets every connection and refuses new ones until `heal()`. */
  cut(): void {
    if (this.isClosed) return;
    this.isCut = true;
    this.server?.close();
    this.server = null;
    for (const c of [...this.connections]) this.teardown(c);
  }

  /** Undoes every fault: accepts connections again (on the same port), releases held bytes, no blackhole, no delay. */
  async heal(): Promise<void> {
    if (this.isClosed) throw new FaultProxyError('FTVM_ERR_PROXY_CLOSED', 'the proxy is closed');
    for (const d of ['up', 'down'] as const) {
      this.state[d].mode = 'pass';
      this.state[d].delayMs = 0;
    }
    this.pumpAll();
    if (this.isCut) {
      this.isCut = false;
      await this.listen(this.listenPort);
    }
  }

  /** Bytes forwarded in `dir` so far (over all connections). */
  bytes(dir: Direction): number {
    return this.state[dir].forwarded;
  }

  stats(): FaultProxyStats {
    const dirStats = (d: Direction): DirectionStats => {
      let buffered = 0;
      for (const c of this.connections) buffered += c[d].bufferedBytes;
      const s = this.state[d];
      return { received: s.received, forwarded: s.forwarded, dropped: s.dropped, buffered, mode: s.mode, delayMs: s.delayMs };
    };
    return { connections: this.connections.size, accepted: this.accepted, cut: this.isCut, up: dirStats('up'), down: dirStats('down') };
  }

  /** Stops listening and destroys every socket the proxy opened; resolves when they are all closed. */
  async close(): Promise<void> {
    if (this.isClosed) return;
    this.isClosed = true;
    const server = this.server;
    this.server = null;
    const sockets: net.Socket[] = [];
    for (const c of [...this.connections]) {
      sockets.push(c.client, c.target);
      this.teardown(c);
    }
    await Promise.all([
      server ? new Promise<void>((resolve) => server.close(() => resolve())) : Promise.resolve(),
      ...sockets.map((s) => (s.closed ? Promise.resolve() : once(s, 'close').then(() => undefined))),
    ]);
  }

  private pumpAll(): void {
    for (const c of this.connections) {
      c.up.pump();
      c.down.pump();
    }
  }

  private async listen(port: number): Promise<void> {
    // Re-listening on the same port after a cut can meet EADDRINUSE for a moment: retry briefly.
    const deadline = performance.now() + 3000;
    for (;;) {
      const server = net.createServer({ allowHalfOpen: true }, (socket) => this.onConnection(socket));
      try {
        await new Promise<void>((resolve, reject) => {
          server.once('error', reject);
          server.listen({ host: '127.0.0.1', port }, () => {
            server.removeListener('error', reject);
            resolve();
          });
        });
      } catch (err) {
        server.close();
        if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE' && port !== 0 && performance.now() < deadline) {
          await new Promise((r) => setTimeout(r, 50));
          continue;
        }
        throw new FaultProxyError('FTVM_ERR_PROXY_LISTEN', `cannot listen on 127.0.0.1:${port}: ${String(err)}`, { cause: err });
      }
      server.on('error', () => {
        /* a listening server's errors are reported to its connections */
      });
      if (this.isClosed || this.isCut) {
        // close() or cut() came while we were binding.
        server.close();
        return;
      }
      this.server = server;
      const addr = server.address();
      if (addr !== null && typeof addr === 'object') this.listenPort = addr.port;
      return;
    }
  }

  private onConnection(client: net.Socket): void {
    if (this.isClosed || this.isCut) {
      abort(client);
      return;
    }
    this.accepted++;
    const target = net.connect({ host: this.targetHost, port: this.targetPort, allowHalfOpen: true });
    client.setNoDelay(true);
    target.setNoDelay(true);
    const conn: Connection = {
      client,
      target,
      up: new Flow(this.state.up, client, target, this.maxHeldBytes),
      down: new Flow(this.state.down, target, client, this.maxHeldBytes),
    };
    this.connections.add(conn);
    // An error or reset on either side resets the other at once.
    const onError = (): void => this.teardown(conn);
    client.on('error', onError);
    target.on('error', onError);
    const onClose = (hadError: boolean): void => {
      if (hadError) this.teardown(conn);
      else if (client.destroyed && target.destroyed) this.forget(conn);
    };
    client.on('close', onClose);
    target.on('close', onClose);
  }

  private teardown(conn: Connection): void {
    abort(conn.client);
    abort(conn.target);
    this.forget(conn);
  }

  private forget(conn: Connection): void {
    if (!this.connections.delete(conn)) return;
    this.state.up.dropped += conn.up.dispose();
    this.state.down.dropped += conn.down.dispose();
  }
}

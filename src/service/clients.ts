/**
 * Client-facing networking of a live VM: each TCP connection to the service port is a virtual
 * connection of the guest's NIC. Opening, data and the client's end of input become input events for
 * the vCPU (logged on delivery); the guest's sends and closes come back as released outputs.
 */
import net from 'node:net';
import type { ProxiedAtGoLive, WireOutput } from '../machine/vcpu-protocol.js';
import type { Keyring } from '../security/secrets.js';
import type { Logger } from '../util/log.js';
import { ProxyService } from './proxy-service.js';

/** The proxy port of a serving primary (docs/PROXY.md). */
export interface ProxyPortOptions {
  host: string;
  port: number;
  keys: Keyring;
  vmName: string;
  reattachTimeoutMs?: number;
}

export interface InputSink {
  input(kind: 'open' | 'data' | 'close', conn: number, data?: Uint8Array): void;
  /** Bytes of input not yet taken by the guest: the service pauses sockets while this is high. */
  readonly backlogBytes: number;
}

export interface ClientServiceOptions {
  host: string;
  port: number;
  log: Logger;
  /** Pause reading client sockets while the vCPU input backlog exceeds this. */
  backlogPauseBytes?: number;
  /**
   * Per connection: stop reading a client's socket while more than this many of its bytes were taken
   * in but not yet consumed by the guest (reported through `consumed`); resume below half of it. A
   * client that sends to a guest that does not read pauses only itself.
   */
  connectionInputMaxBytes?: number;
  /** Refuse connections beyond this many. */
  maxConnections?: number;
  /** Drop a client whose unsent replies exceed this (it stopped reading). */
  clientSendMaxBytes?: number;
  /** Also serve proxies (`ftvm proxy`) on this address: their connections share the id space. */
  proxy?: ProxyPortOptions;
}

/** Default per-connection bound of unconsumed input. */
export const CONNECTION_INPUT_MAX_BYTES = 4 * 1024 * 1024;

/** Input accounting of one client connection (per-connection backpressure). */
interface ConnInput {
  /** Bytes handed to the vCPU and not yet reported consumed by the guest. */
  unconsumedBytes: number;
  /** Paused because of this connection's own backlog. */
  paused: boolean;
  /** The guest closed the connection: later input is dropped here (the guest would never see it). */
  closed: boolean;
}

export class ClientService {
  private server: net.Server | undefined;
  private readonly sockets = new Map<number, net.Socket>();
  private readonly inputs = new Map<number, ConnInput>();
  private readonly connectionInputMaxBytes: number;
  private nextConn = 1;
  private sink: InputSink | undefined;
  private paused = false;
  private readonly backlogPauseBytes: number;
  private readonly maxConnections: number;
  private readonly clientSendMaxBytes: number;
  private timer: NodeJS.Timeout | undefined;
  connectionsTotal = 0;
  bytesIn = 0;
  bytesOut = 0;

  private readonly proxy: ProxyService | undefined;

  constructor(private readonly opts: ClientServiceOptions) {
    if (opts.proxy !== undefined) this.proxy = new ProxyService({ ...opts.proxy, log: opts.log.child({ part: 'proxy-port' }) }, () => this.nextConn++);
    this.backlogPauseBytes = opts.backlogPauseBytes ?? 8 * 1024 * 1024;
    this.maxConnections = opts.maxConnections ?? 10_000;
    this.clientSendMaxBytes = opts.clientSendMaxBytes ?? 64 * 1024 * 1024;
    this.connectionInputMaxBytes = opts.connectionInputMaxBytes ?? CONNECTION_INPUT_MAX_BYTES;
  }

  /** Connections paused because they have too much unconsumed input of their own. */
  get pausedConnections(): number {
    let n = 0;
    for (const i of this.inputs.values()) if (i.paused) n++;
    return n;
  }

  /**
   * The guest consumed input: (conn, bytes) pairs, as the vCPU reports them. Resumes a connection
   * paused for its own backlog once that is below half the bound.
   */
  consumed(pairs: readonly number[]): void {
    for (let k = 0; k + 1 < pairs.length; k += 2) {
      const conn = pairs[k]!;
      const i = this.inputs.get(conn);
      if (i === undefined) continue; // the connection is gone
      i.unconsumedBytes = Math.max(0, i.unconsumedBytes - pairs[k + 1]!);
      if (i.paused && i.unconsumedBytes <= this.connectionInputMaxBytes / 2) {
        i.paused = false;
        if (!this.paused) this.sockets.get(conn)?.resume();
      }
    }
  }

  /** Connection ids must never be reused within a VM's life: continue after the highest seen. */
  set firstConnectionId(id: number) {
    this.nextConn = Math.max(this.nextConn, id);
  }

  get address(): net.AddressInfo | undefined {
    const a = this.server?.address();
    return a && typeof a === 'object' ? a : undefined;
  }

  get openConnections(): number {
    return this.sockets.size + (this.proxy?.connections ?? 0);
  }

  /** The proxy port's address, when it serves one. */
  get proxyAddress(): net.AddressInfo | undefined {
    return this.proxy?.address;
  }

  /** A replica that went live: its proxied connections wait for their proxies (docs/PROXY.md). */
  adoptProxied(list: readonly ProxiedAtGoLive[]): void {
    this.proxy?.adopt(list);
  }

  /** Client input the backup acknowledged: (conn, bytes) pairs (proxied connections' INACK). */
  inputLogged(pairs: readonly number[]): void {
    this.proxy?.inputLogged(pairs);
  }

  /**
   * Binds the service address before `start` (a backup that just won the arbiter's claim, while its
   * vCPU finishes the takeover): connections are accepted but held, paused and unread (their bytes
   * wait in the kernel), at most `maxConnections` of them, until `start` serves them in the order they
   * came. A client that connects in that window is answered as soon as the node serves instead of
   * being refused and retrying. A failure here (EADDRINUSE) is left to `start`, which binds again.
   */
  listen(): Promise<void> {
    this.listening ??= this.bind(true).catch((err: unknown) => {
      this.server = undefined;
      for (const h of this.held.splice(0)) h.destroy();
      throw err;
    });
    return this.listening;
  }

  private listening: Promise<void> | undefined;
  /** Connections accepted by an early `listen`, waiting for `start` (bounded by maxConnections). */
  private readonly held: net.Socket[] = [];

  private async bind(early: boolean): Promise<void> {
    const server = net.createServer({ noDelay: true, pauseOnConnect: early }, (s) => {
      if (this.sink !== undefined) this.accept(s);
      else if (this.held.length < this.maxConnections) {
        s.on('error', () => undefined);
        this.held.push(s);
      } else s.destroy();
    });
    this.server = server;
    server.maxConnections = this.maxConnections;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.opts.port, this.opts.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  }

  async start(sink: InputSink): Promise<void> {
    let bound = false;
    if (this.listening !== undefined) {
      const early = this.listening;
      this.listening = undefined; // a retry after a failed early bind binds afresh
      bound = await early.then(
        () => true,
        () => false,
      );
    }
    this.sink = sink;
    if (bound) {
      for (const s of this.held.splice(0)) {
        if (s.destroyed) continue;
        this.accept(s);
      }
    } else {
      try {
        await this.bind(false);
      } catch (err) {
        this.sink = undefined;
        throw err;
      }
    }
    const server = this.server!;
    if (this.proxy !== undefined) {
      try {
        await this.proxy.start(sink);
      } catch (err) {
        await new Promise<void>((r) => server.close(() => r()));
        throw err;
      }
    }
  }

  private accept(s: net.Socket): void {
    const conn = this.nextConn++;
    this.connectionsTotal++;
    this.sockets.set(conn, s);
    const input: ConnInput = { unconsumedBytes: 0, paused: false, closed: false };
    this.inputs.set(conn, input);
    const sink = this.sink!;
    sink.input('open', conn);
    s.on('data', (chunk: Buffer) => {
      this.bytesIn += chunk.length;
      if (input.closed) return;
      sink.input('data', conn, chunk);
      input.unconsumedBytes += chunk.length;
      if (!input.paused && input.unconsumedBytes > this.connectionInputMaxBytes) {
        input.paused = true;
        s.pause();
      }
      this.checkBackpressure();
    });
    s.on('end', () => {
      // The client will send nothing more (a half-close): tell the guest; replies can still go out.
      sink.input('close', conn);
    });
    s.on('error', () => undefined); // 'close' follows
    s.on('close', (hadError) => {
      this.inputs.delete(conn);
      if (this.sockets.get(conn) === s) {
        this.sockets.delete(conn);
        if (hadError || !s.readableEnded) sink.input('close', conn);
      }
    });
    if (this.paused) s.pause();
    else s.resume(); // a connection held since an early listen was accepted paused
  }

  /**
   * Pauses every client socket while the vCPU's input backlog is high. Checked on every read; while
   * paused (no reads), a 2 ms timer checks for the backlog to drain. An idle service has no timer.
   */
  private checkBackpressure(): void {
    const high = (this.sink?.backlogBytes ?? 0) > this.backlogPauseBytes;
    if (high === this.paused) return;
    this.paused = high;
    for (const [conn, s] of this.sockets) {
      if (high) s.pause();
      else if (this.inputs.get(conn)?.paused !== true) s.resume();
    }
    if (high) {
      this.timer ??= setInterval(() => this.checkBackpressure(), 2);
      this.timer.unref();
    } else if (this.timer) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }

  /** Performs released outputs: bytes to clients, closes. Console output goes to the log. */
  deliver(outputs: readonly WireOutput[]): void {
    for (const o of outputs) {
      if (o.kind === 'console') {
        this.opts.log.info({ fd: o.fd, text: Buffer.from(o.data).toString('utf8') }, 'guest console');
        continue;
      }
      if (this.proxy?.owns(o.conn) === true) {
        this.proxy.deliver(o);
        continue;
      }
      const s = this.sockets.get(o.conn);
      if (s === undefined) continue; // the client is gone: discard, as a NIC would
      if (o.kind === 'net') {
        this.bytesOut += o.data.length;
        if (s.writableLength > this.clientSendMaxBytes) {
          this.opts.log.warn({ conn: o.conn }, 'client stopped reading; dropping it');
          s.destroy();
          continue;
        }
        s.write(o.data);
      } else {
        this.sockets.delete(o.conn);
        const input = this.inputs.get(o.conn);
        if (input !== undefined) {
          input.closed = true;
          input.paused = false;
          s.resume(); // drain what the client still sends, so the socket can close
        }
        s.end();
      }
    }
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.listening?.catch(() => undefined);
    for (const s of this.held.splice(0)) s.destroy();
    for (const s of this.sockets.values()) s.destroy();
    this.sockets.clear();
    this.inputs.clear();
    await this.proxy?.close();
    const server = this.server;
    if (server) await new Promise<void>((r) => server.close(() => r()));
  }
}

/**
 * Channel endpoints: the backup listens, the primary dials (and redials with backoff). Each yields one
 * authenticated ChannelConnection at a time, over TLS-PSK or plain TCP (transport.ts).
 */
import { EventEmitter } from 'node:events';
import type { Logger } from '../util/log.js';
import { realClock } from '../env/real-clock.js';
import type { Timer } from '../replication/env.js';
import { Keyring } from '../security/secrets.js';
import { FtvmError } from '../util/errors.js';
import { ChannelConnection, type ConnectionOptions } from './connection.js';
import type { HelloFrame } from './frames.js';
import { DEFAULT_CHANNEL_SECURITY, tcpChannelTransport, type ChannelServer, type ChannelSocket, type ChannelTransport } from './transport.js';

export interface EndpointOptions extends ConnectionOptions {
  /** How to listen and dial (default: TLS-PSK over TCP). The simulator's is virtual. */
  transport?: ChannelTransport;
}

/** How long a listener retries an address still held (EADDRINUSE), and how often. */
const LISTEN_RETRY_MS = 5_000;
const LISTEN_RETRY_STEP_MS = 100;

/** Events: 'connection' (ChannelConnection, after its handshake opened). */
export class ChannelListener extends EventEmitter {
  private server: ChannelServer | undefined;
  private current: ChannelConnection | undefined;

  constructor(
    private readonly host: string,
    private readonly port: number,
    private readonly opts: EndpointOptions,
    private readonly replaceCurrent = true,
  ) {
    super();
  }

  get address(): { address: string; port: number } | undefined {
    return this.server?.address;
  }

  /**
   * Listens. A restarted node often finds its fixed port still held for a moment (its predecessor's
   * process is being torn down after kill -9): EADDRINUSE is retried for LISTEN_RETRY_MS, then refused
   * with FTVM_ERR_ADDRESS_IN_USE naming the address.
   */
  async start(): Promise<void> {
    const transport = this.opts.transport ?? tcpChannelTransport(DEFAULT_CHANNEL_SECURITY);
    const clock = this.opts.clock ?? realClock;
    const giveUpAt = clock.now() + LISTEN_RETRY_MS;
    for (let attempt = 1; ; attempt++) {
      try {
        this.server = await transport.listen(this.host, this.port, Keyring.of(this.opts.secret), this.opts.log, (s, keys) => this.accept(s, keys));
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err;
        if (clock.now() >= giveUpAt) {
          throw new FtvmError('FTVM_ERR_ADDRESS_IN_USE', `the channel address ${this.host}:${this.port} is in use (still held after ${LISTEN_RETRY_MS} ms): is another node listening there?`, { cause: err });
        }
        if (attempt === 1) this.opts.log.warn({ channel: `${this.host}:${this.port}` }, 'the channel address is in use; retrying');
        await clock.sleep(LISTEN_RETRY_STEP_MS);
      }
    }
  }

  private accept(s: ChannelSocket, keys: Keyring): void {
    const c = new ChannelConnection(s, { ...this.opts, secret: keys });
    c.once('open', (hello: HelloFrame) => {
      // One primary at a time: an authenticated newcomer (a restarted primary) replaces the old link
      // (unless the owner decides, as a standby receiving a clone does).
      if (this.replaceCurrent && this.current && this.current !== c) this.current.close('replaced by a new connection from the primary');
      this.current = c;
      this.emit('connection', c, hello);
    });
    c.once('close', () => {
      if (this.current === c) this.current = undefined;
    });
  }

  async close(): Promise<void> {
    this.current?.close('shutting down');
    await this.server?.close();
  }
}

/** Dials the backup and keeps redialing while not connected. Events: 'connection'. */
export class ChannelDialer extends EventEmitter {
  private current: ChannelConnection | undefined;
  /** The connection being dialed (not open yet). */
  private dialing: ChannelConnection | undefined;
  private stopped = false;
  private closed = false;
  private timer: Timer | undefined;
  private backoffMs: number;

  constructor(
    private readonly host: string,
    private readonly port: number,
    private readonly opts: EndpointOptions & { log: Logger; retryMinMs?: number; retryMaxMs?: number },
  ) {
    super();
    this.backoffMs = opts.retryMinMs ?? 20;
  }

  start(): void {
    this.dial();
  }

  private dial(): void {
    if (this.stopped) return;
    const transport = this.opts.transport ?? tcpChannelTransport(DEFAULT_CHANNEL_SECURITY);
    const { socket, keys } = transport.connect(Keyring.of(this.opts.secret), this.host, this.port);
    const c = new ChannelConnection(socket, { ...this.opts, secret: keys });
    this.dialing = c;
    let opened = false;
    c.once('open', (hello: HelloFrame) => {
      if (this.dialing === c) this.dialing = undefined;
      if (this.closed) {
        // Dialed before close() and opened after it: the owner has moved on (a primary whose epoch
        // changed, a join that ended). Emitting it would hand the owner a link it no longer wants.
        c.close('the dialer was closed');
        return;
      }
      opened = true;
      this.backoffMs = this.opts.retryMinMs ?? 20;
      this.current = c;
      this.emit('connection', c, hello);
    });
    c.once('close', (reason: string) => {
      if (this.dialing === c) this.dialing = undefined;
      if (this.current === c) this.current = undefined;
      if (!opened) this.opts.log.debug({ reason }, 'channel: dial failed');
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.stopped || this.timer) return;
    this.timer = (this.opts.clock ?? realClock).after(this.backoffMs, () => {
      this.timer = undefined;
      this.dial();
    });
    this.backoffMs = Math.min(this.backoffMs * 2, this.opts.retryMaxMs ?? 1000);
  }

  /**
   * Takes an open connection (made elsewhere, e.g. the one a join ran on) as this dialer's current
   * one: when it closes, the dialer redials.
   */
  adopt(c: ChannelConnection): void {
    this.stopped = false;
    this.current = c;
    c.once('close', () => {
      if (this.current === c) this.current = undefined;
      this.schedule();
    });
  }

  /** Stops redialing; the current connection (if any) stays open and is the caller's now. */
  detach(): void {
    this.stopped = true;
    this.timer?.cancel();
    this.current = undefined;
  }

  /** Stops redialing and closes the connection, and one still being dialed (it is never emitted). */
  close(): void {
    this.stopped = true;
    this.closed = true;
    this.timer?.cancel();
    this.current?.close('shutting down');
    this.dialing?.close('shutting down');
  }
}

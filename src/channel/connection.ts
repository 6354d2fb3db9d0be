/**
 * One logging-channel connection over TCP: length-prefixed frames, each authenticated with HMAC-SHA256.
 *
 * Wire: u32 length | body | 16-byte MAC, where length = body + 16 and ≤ maxFrameBytes. Frames written in
 * one event-loop turn are sent together (the socket is corked until the turn ends).
 * Handshake: each side sends HELLO, MAC'd with a key derived from the shared secret. A side that cannot
 * verify the peer's HELLO closes the connection before reading anything else, so a peer without the
 * secret never gets a single entry in. After both HELLOs, every frame is MAC'd with a session key
 * (derived from the secret and both nonces) over a per-direction frame counter: forged, corrupted,
 * replayed or reordered frames fail verification and the connection is dropped, with a log line. The
 * replica keeps running; the primary redials.
 *
 * Protocol 4 over TLS: frames after the HELLOs carry no MAC (the length counts the body only). TLS 1.3
 * already authenticates every record with keys from the same secret (the PSK) and a fresh ECDHE
 * exchange, per direction, and its record sequence numbers reject replayed, reordered or dropped
 * records; the HMAC on top of it authenticated the same bytes a second time. The HELLOs keep their MAC
 * (they bind the session to the roles and the secret, once per connection), and over plain TCP
 * (`--insecure-channel`) every frame keeps its HMAC. A peer of another version gets a REFUSE MAC'd as
 * it expects, so that it reports the version refusal clearly.
 */
import { EventEmitter } from 'node:events';
import { ByteWriter } from '../log/codec.js';
import { Keyring } from '../security/secrets.js';
import { FtvmError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { realClock } from '../env/real-clock.js';
import type { NodeClock } from '../replication/env.js';
import type { ChannelSocket } from './transport.js';
import { FrameSplitter, MAC_BYTES, deriveKey, sealFrame, verifyFrameMac } from './framing.js';
import { FRAME_TYPE_NAMES, FrameType, PROTOCOL_VERSION, decodeFrameBody, encodeFrameBody, encodeFrameParts, type Frame, type HelloFrame, type ReplicationMode, type Role } from './frames.js';

/** From this protocol version on, frames over TLS carry no MAC of their own (see the top). */
const MAC_FREE_TLS_VERSION = 4;
export const DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024;

export interface LocalIdentity {
  role: Role;
  vmName: string;
  moduleHash: Uint8Array;
  /** Read at handshake time (a backup's epoch grows when a pair is armed). A standby sends 0. */
  epoch: number;
  /** Test-only: speak another protocol version (to show that old peers are refused). */
  protocolVersion?: number;
  /** Primary: first seq it will send. Backup: next seq it expects. Read at handshake time. */
  nextSeq: () => number;
  /** `host:port` of this process's liveness port, sent in HELLO (src/channel/liveness.ts). */
  liveness?: () => string;
  /** The replication mode (default replay, which HELLO does not spell out); a peer of another mode is refused. */
  mode?: ReplicationMode;
}

export interface ConnectionOptions {
  /**
   * The shared secret, or a keyring: HELLO is sent under its current secret, and a peer's HELLO is
   * accepted under any secret it accepts (a rotation window).
   */
  secret: Uint8Array | Keyring;
  identity: LocalIdentity;
  log: Logger;
  maxFrameBytes?: number;
  /** Refuse the socket's data beyond this many buffered unsent bytes (the caller applies backpressure). */
  sendBufferMaxBytes?: number;
  /** Extra checks of the peer's HELLO; return a refusal reason, or undefined to accept. */
  checkHello?: (hello: HelloFrame) => { code: string; reason: string } | undefined;
  /** Timers and nonces (default: the real clock; the simulator's is virtual). */
  clock?: NodeClock;
}

function helloKeyOf(secret: Uint8Array): Buffer {
  return deriveKey(secret, 'ftvm-hello-v1');
}

/**
 * Events: 'open' (peer HELLO, after both sides verified), 'frame' (Frame), 'close' (reason string),
 * 'drain'.
 */
export class ChannelConnection extends EventEmitter {
  private readonly keys: Keyring;
  private readonly helloKey: Buffer;
  private sessionKey: Buffer | undefined;
  private readonly nonce: Uint8Array;
  private readonly clock: NodeClock;
  private sendCounter = 0n;
  private recvCounter = 0n;
  private readonly frames: FrameSplitter;
  private readonly writer = new ByteWriter(1024);
  private readonly maxFrameBytes: number;
  private readonly sendBufferMaxBytes: number;
  peerHello: HelloFrame | undefined;
  private closed = false;
  /**
   * Whether session frames carry a MAC: unless the transport is TLS and the peer speaks protocol ≥ 4
   * (decided when its HELLO arrives; HELLOs always carry one).
   */
  private macFrames = true;
  /** The transport authenticates every byte itself (TLS). */
  private readonly transportAuthenticated: boolean;
  /** The peer's IP address as this side sees it. */
  get remoteHost(): string | undefined {
    return this.socket.remoteAddress;
  }
  get remote(): string {
    return `${this.socket.remoteAddress ?? '?'}:${this.socket.remotePort ?? '?'}`;
  }

  constructor(
    private readonly socket: ChannelSocket,
    private readonly opts: ConnectionOptions,
  ) {
    super();
    this.clock = opts.clock ?? realClock;
    this.nonce = this.clock.randomBytes(16);
    this.maxFrameBytes = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    this.frames = new FrameSplitter(this.maxFrameBytes);
    this.sendBufferMaxBytes = opts.sendBufferMaxBytes ?? 64 * 1024 * 1024;
    this.keys = Keyring.of(opts.secret);
    this.helloKey = helloKeyOf(this.keys.current);
    this.transportAuthenticated = socket.encrypted === true;
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => this.close(`socket error: ${err.message}`));
    socket.on('close', () => this.close('peer closed the connection'));
    socket.on('drain', () => this.emit('drain'));
    this.sendHello();
  }

  /** Whether this connection's frames carry their own MAC (false: TLS authenticates them). */
  get framesMacd(): boolean {
    return this.macFrames;
  }

  get isOpen(): boolean {
    return this.sessionKey !== undefined && !this.closed;
  }

  /** Bytes queued in the socket and not yet sent. */
  get bufferedBytes(): number {
    return this.socket.writableLength;
  }

  private sendHello(): void {
    const id = this.opts.identity;
    const hello: HelloFrame = {
      type: FrameType.HELLO,
      version: id.protocolVersion ?? PROTOCOL_VERSION,
      role: id.role,
      vmName: id.vmName,
      moduleHash: id.moduleHash,
      epoch: id.epoch,
      arch: process.arch,
      nonce: this.nonce,
      nextSeq: id.nextSeq(),
      liveness: id.liveness?.() ?? '',
      ...(id.mode !== undefined && id.mode !== 'replay' ? { mode: id.mode } : {}),
    };
    const { head, tail } = encodeFrameParts(hello, this.writer);
    this.writeRaw(head, tail, this.helloKey, 0n);
  }

  /**
   * Writes one frame: u32 length | head | tail | MAC, in a single buffer (the payload is copied once).
   * Frames written in one event-loop turn leave together: the socket is corked at the first and uncorked
   * at the end of the turn (setImmediate), so a burst of LOG frames or ACKs becomes one TLS record and
   * one system call.
   */
  private writeRaw(head: Uint8Array, tail: Uint8Array | undefined, key: Buffer | undefined, counter: bigint): void {
    const dir = this.opts.identity.role === 'primary' ? 1 : 2; // a standby speaks as a backup
    const out = sealFrame(head, tail, key, dir, counter);
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      void this.clock.yieldIo().then(this.uncork);
    }
    this.socket.write(out);
  }

  private corked = false;
  private readonly uncork = (): void => {
    if (!this.corked) return;
    this.corked = false;
    this.socket.uncork();
  };

  /**
   * Sends an authenticated frame. Returns false when the socket's buffer is past the limit: the frame
   * was not sent and the caller must wait for 'drain'.
   */
  send(frame: Frame): boolean {
    if (!this.isOpen) throw new FtvmError('FTVM_ERR_CHANNEL_CLOSED', 'channel is not open');
    if (this.socket.writableLength > this.sendBufferMaxBytes) return false;
    const { head, tail } = encodeFrameParts(frame, this.writer);
    const bodyLen = head.length + (tail?.length ?? 0);
    if (bodyLen + MAC_BYTES > this.maxFrameBytes) throw new FtvmError('FTVM_ERR_FRAME_TOO_LARGE', `frame of ${bodyLen} bytes exceeds ${this.maxFrameBytes}`);
    this.sendCounter++;
    this.writeRaw(head, tail, this.macFrames ? this.sessionKey! : undefined, this.sendCounter);
    return true;
  }

  private refuse(code: string, reason: string): void {
    this.opts.log.warn({ peer: this.remote, code, reason }, `channel: refused peer: ${reason}`);
    if (this.sessionKey !== undefined) {
      try {
        this.sendCounter++;
        const { head, tail } = encodeFrameParts({ type: FrameType.REFUSE, code, reason }, this.writer);
        this.writeRaw(head, tail, this.macFrames ? this.sessionKey : undefined, this.sendCounter);
      } catch {
        // closing anyway
      }
    }
    this.close(`refused: ${reason}`, true);
  }

  private onData(chunk: Buffer): void {
    if (this.closed) return;
    this.frames.push(chunk);
    while (!this.closed) {
      const f = this.frames.next(this.sessionKey === undefined || this.macFrames ? MAC_BYTES : 0);
      if (f === undefined) return;
      if ('badLength' in f) {
        const len = f.badLength;
        this.opts.log.warn({ peer: this.remote, len, max: this.maxFrameBytes }, 'channel: frame size out of bounds; dropping the connection');
        this.close(`frame of ${len} bytes is out of bounds (max ${this.maxFrameBytes})`);
        return;
      }
      this.onFrameBytes(f.body, f.tag);
    }
  }

  private onFrameBytes(body: Buffer, tag: Buffer): void {
    const peerDir = this.opts.identity.role === 'primary' ? 2 : 1;
    if (this.sessionKey === undefined) {
      // The first frame must be the peer's HELLO under the hello key of a secret we accept.
      const peerSecret = this.keys.accepted.find((s) => verifyFrameMac(helloKeyOf(s), peerDir, 0n, body, tag));
      if (peerSecret === undefined) {
        this.opts.log.warn({ peer: this.remote }, 'channel: refused peer: HELLO authentication failed (wrong secret?)');
        this.close('authentication failed');
        return;
      }
      let hello: Frame;
      try {
        hello = decodeFrameBody(body);
      } catch (err) {
        this.opts.log.warn({ peer: this.remote, err: (err as Error).message }, 'channel: malformed HELLO; dropping the connection');
        this.close('malformed HELLO');
        return;
      }
      if (hello.type !== FrameType.HELLO) {
        this.opts.log.warn({ peer: this.remote }, `channel: expected HELLO, got ${FRAME_TYPE_NAMES[hello.type]}; dropping the connection`);
        this.close('no HELLO');
        return;
      }
      // The peer knows a secret: derive the session key, so that even a refusal reaches it authenticated.
      // It comes from the secret of the primary's HELLO, which both ends know (they may differ during a
      // rotation: each signs with its current secret, and accepts the other's).
      const primary = this.opts.identity.role === 'primary';
      const [p, b] = primary ? [this.nonce, hello.nonce] : [hello.nonce, this.nonce];
      this.sessionKey = deriveKey(primary ? this.keys.current : peerSecret, 'ftvm-session-v1', p, b);
      // Both ends decide alike: the transport is the same socket, and only equal versions go on.
      this.macFrames = !(this.transportAuthenticated && hello.version >= MAC_FREE_TLS_VERSION && (this.opts.identity.protocolVersion ?? PROTOCOL_VERSION) >= MAC_FREE_TLS_VERSION);
      const problem = this.checkHello(hello);
      if (problem) {
        this.refuse(problem.code, problem.reason);
        return;
      }
      this.peerHello = hello;
      this.emit('open', hello);
      return;
    }
    this.recvCounter++;
    if (this.macFrames && !verifyFrameMac(this.sessionKey, peerDir, this.recvCounter, body, tag)) {
      this.opts.log.warn({ peer: this.remote, frame: Number(this.recvCounter) }, 'channel: frame failed authentication (forged, corrupted or replayed); dropping the connection');
      this.close('frame authentication failed');
      return;
    }
    let frame: Frame;
    try {
      frame = decodeFrameBody(body);
    } catch (err) {
      this.opts.log.warn({ peer: this.remote, err: (err as Error).message }, 'channel: malformed frame; dropping the connection');
      this.close('malformed frame');
      return;
    }
    if (frame.type === FrameType.REFUSE) {
      this.opts.log.error({ peer: this.remote, code: frame.code, reason: frame.reason }, `channel: the peer refused us: ${frame.reason}`);
      this.emit('refused', frame);
      this.close(`peer refused: ${frame.reason}`);
      return;
    }
    if (frame.type === FrameType.HELLO) {
      this.opts.log.warn({ peer: this.remote }, 'channel: unexpected second HELLO; dropping the connection');
      this.close('unexpected HELLO');
      return;
    }
    this.emit('frame', frame);
  }

  private checkHello(h: HelloFrame): { code: string; reason: string } | undefined {
    const id = this.opts.identity;
    if (h.version !== PROTOCOL_VERSION) return { code: 'FTVM_ERR_PEER_REFUSED', reason: `protocol version ${h.version} (this node speaks ${PROTOCOL_VERSION})` };
    // Before anything else about the VM: a replay node and a checkpoint node of the same VM must not pair.
    const peerMode = h.mode ?? 'replay';
    const ourMode = id.mode ?? 'replay';
    if (peerMode !== ourMode) return { code: 'FTVM_ERR_MODE_MISMATCH', reason: `the peer runs --mode ${peerMode}, this node --mode ${ourMode}` };
    if (h.role === id.role) return { code: 'FTVM_ERR_PEER_REFUSED', reason: `both ends are ${h.role}s` };
    if ((id.role === 'primary') === (h.role === 'primary')) return { code: 'FTVM_ERR_PEER_REFUSED', reason: `a ${id.role} does not pair with a ${h.role}` };
    if (h.vmName !== id.vmName) return { code: 'FTVM_ERR_PEER_REFUSED', reason: `the peer runs VM "${h.vmName}", this node "${id.vmName}"` };
    if (!Buffer.from(h.moduleHash).equals(Buffer.from(id.moduleHash))) {
      return { code: 'FTVM_ERR_MODULE_MISMATCH', reason: `the peer's guest module differs (sha256 ${Buffer.from(h.moduleHash).toString('hex').slice(0, 16)}…, ours ${Buffer.from(id.moduleHash).toString('hex').slice(0, 16)}…)` };
    }
    // Replay re-executes the guest, so NaN bit patterns must match; a checkpoint copies memory as it is.
    if (ourMode === 'replay' && h.arch !== process.arch) return { code: 'FTVM_ERR_PEER_REFUSED', reason: `the peer runs on ${h.arch}, this node on ${process.arch}: NaN bit patterns may differ` };
    // A standby has no epoch of its own: it takes the recruiting primary's (and checks it at the arbiter).
    if (id.role === 'standby' || h.role === 'standby') return this.opts.checkHello?.(h);
    if (h.epoch < id.epoch) return { code: 'FTVM_ERR_STALE_EPOCH', reason: `the peer is at epoch ${h.epoch}, older than ours (${id.epoch})` };
    if (h.epoch > id.epoch) return { code: 'FTVM_ERR_STALE_EPOCH', reason: `the peer is at epoch ${h.epoch}, newer than ours (${id.epoch}): this node is fenced` };
    return this.opts.checkHello?.(h);
  }

  /**
   * Closes the connection. `flush`: end it gracefully so that what was just written (a REFUSE) reaches
   * the peer — over TLS, a destroy would drop records still being encrypted — and destroy it after a
   * second at the latest.
   */
  close(reason: string, flush = false): void {
    if (this.closed) return;
    this.closed = true;
    this.uncork(); // frames written in this turn go out first, as they would have without corking
    if (flush) {
      this.socket.end();
      this.clock.after(1000, () => this.socket.destroy(), true);
    } else {
      this.socket.destroy();
    }
    this.emit('close', reason);
  }
}

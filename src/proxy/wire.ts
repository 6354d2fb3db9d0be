/**
 * The proxy protocol's wire (docs/PROXY.md): length-prefixed frames between a proxy (`ftvm proxy`) and a
 * replica's proxy port, each authenticated with HMAC-SHA256, as the logging channel's are
 * (src/channel/connection.ts): the proxy's HELLO is MAC'd with a key derived from the VM secret and the
 * replica's WELCOME with the secret that verified it; every later frame is MAC'd with a session key
 * derived from the secret and both nonces over a per-direction counter, so a frame forged, altered,
 * replayed (in this session or from another) or reordered fails and the connection is dropped.
 *
 * Wire: u32 length | u8 type | body | 16-byte MAC (length = 1 + body + 16 ≤ MAX_FRAME_BYTES).
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type net from 'node:net';
import { FrameSplitter, deriveKey, readLenString, sealFrame, verifyFrameMac, writeLenString } from '../channel/framing.js';
import { ByteReader, ByteWriter } from '../log/codec.js';
import type { Keyring } from '../security/secrets.js';
import { FtvmError } from '../util/errors.js';

export const PROXY_PROTOCOL_VERSION = 1;
/** A frame's largest size; DATA and OUT frames carry at most MAX_CHUNK_BYTES. */
export const MAX_FRAME_BYTES = 1024 * 1024;
export const MAX_CHUNK_BYTES = 256 * 1024;
export const PROXY_ID_BYTES = 16;
/** A replica sends HEARTBEAT this often on every proxy session. */
export const HEARTBEAT_MS = 200;

export const PFrame = {
  HELLO: 1,
  WELCOME: 2,
  /** proxy → replica: a new client connection. pconn */
  OPEN: 10,
  /** proxy → replica: re-attach a connection. pconn, inSent, inAcked, outDelivered, eofSent */
  ATTACH: 11,
  /** proxy → replica: client input. pconn, offset, bytes */
  DATA: 12,
  /** proxy → replica: the client's end of input. pconn, offset (= all input), gone (u8: the client left) */
  EOF: 13,
  /** proxy → replica: output the proxy holds (credit and trim). pconn, offset */
  OUTACK: 14,
  /** replica → proxy: re-attached. pconn, inLogged, eofLogged */
  ATTACHED: 20,
  /** replica → proxy: a connection refused. pconn, code, message */
  REFUSED: 21,
  /** replica → proxy: output. pconn, offset, bytes */
  OUT: 22,
  /** replica → proxy: the guest closed the connection. pconn, final output offset */
  CLOSE: 23,
  /** replica → proxy: input logged and acknowledged by the backup. pconn, offset */
  INACK: 24,
  /** replica → proxy: the session is refused (then closed). code, message */
  ERROR: 25,
  /** replica → proxy: the replica is alive and serving (every HEARTBEAT_MS; the proxy drops a silent session). */
  HEARTBEAT: 26,
} as const;

export type ProxyFrame =
  | { t: typeof PFrame.OPEN; pconn: number }
  | { t: typeof PFrame.ATTACH; pconn: number; inSent: number; inAcked: number; outDelivered: number; eofSent: boolean }
  | { t: typeof PFrame.DATA; pconn: number; offset: number; data: Uint8Array }
  | { t: typeof PFrame.EOF; pconn: number; offset: number; gone: boolean }
  | { t: typeof PFrame.OUTACK; pconn: number; offset: number }
  | { t: typeof PFrame.ATTACHED; pconn: number; inLogged: number; eofLogged: boolean }
  | { t: typeof PFrame.REFUSED; pconn: number; code: string; message: string }
  | { t: typeof PFrame.OUT; pconn: number; offset: number; data: Uint8Array }
  | { t: typeof PFrame.CLOSE; pconn: number; offset: number }
  | { t: typeof PFrame.INACK; pconn: number; offset: number }
  | { t: typeof PFrame.ERROR; code: string; message: string }
  | { t: typeof PFrame.HEARTBEAT };

const str = writeLenString;
const rstr = (r: ByteReader, max = 1024): string => readLenString(r, max);

export function encodeProxyFrame(f: ProxyFrame, w: ByteWriter): void {
  w.u8(f.t);
  switch (f.t) {
    case PFrame.OPEN:
      w.varint(f.pconn);
      return;
    case PFrame.ATTACH:
      w.varint(f.pconn);
      w.varint(f.inSent);
      w.varint(f.inAcked);
      w.varint(f.outDelivered);
      w.u8(f.eofSent ? 1 : 0);
      return;
    case PFrame.DATA:
    case PFrame.OUT:
      w.varint(f.pconn);
      w.varint(f.offset);
      w.varint(f.data.length);
      w.bytes(f.data);
      return;
    case PFrame.EOF:
      w.varint(f.pconn);
      w.varint(f.offset);
      w.u8(f.gone ? 1 : 0);
      return;
    case PFrame.OUTACK:
    case PFrame.CLOSE:
    case PFrame.INACK:
      w.varint(f.pconn);
      w.varint(f.offset);
      return;
    case PFrame.ATTACHED:
      w.varint(f.pconn);
      w.varint(f.inLogged);
      w.u8(f.eofLogged ? 1 : 0);
      return;
    case PFrame.REFUSED:
      w.varint(f.pconn);
      str(w, f.code);
      str(w, f.message);
      return;
    case PFrame.ERROR:
      str(w, f.code);
      str(w, f.message);
      return;
    case PFrame.HEARTBEAT:
      return;
  }
}

export function decodeProxyFrame(body: Uint8Array): ProxyFrame {
  const r = new ByteReader(body);
  const t = r.u8();
  let f: ProxyFrame;
  switch (t) {
    case PFrame.OPEN:
      f = { t, pconn: r.varint() };
      break;
    case PFrame.ATTACH:
      f = { t, pconn: r.varint(), inSent: r.varint(), inAcked: r.varint(), outDelivered: r.varint(), eofSent: r.u8() === 1 };
      break;
    case PFrame.DATA:
    case PFrame.OUT: {
      const pconn = r.varint();
      const offset = r.varint();
      const n = r.varint();
      if (n > MAX_CHUNK_BYTES) throw new FtvmError('FTVM_ERR_BAD_FRAME', `a chunk of ${n} bytes exceeds ${MAX_CHUNK_BYTES}`);
      f = { t, pconn, offset, data: r.bytes(n) };
      break;
    }
    case PFrame.EOF:
      f = { t, pconn: r.varint(), offset: r.varint(), gone: r.u8() === 1 };
      break;
    case PFrame.OUTACK:
    case PFrame.CLOSE:
    case PFrame.INACK:
      f = { t, pconn: r.varint(), offset: r.varint() };
      break;
    case PFrame.ATTACHED:
      f = { t, pconn: r.varint(), inLogged: r.varint(), eofLogged: r.u8() === 1 };
      break;
    case PFrame.REFUSED:
      f = { t, pconn: r.varint(), code: rstr(r), message: rstr(r) };
      break;
    case PFrame.ERROR:
      f = { t, code: rstr(r), message: rstr(r) };
      break;
    case PFrame.HEARTBEAT:
      f = { t };
      break;
    default:
      throw new FtvmError('FTVM_ERR_BAD_FRAME', `unknown proxy frame type ${t}`);
  }
  if (r.remaining !== 0) throw new FtvmError('FTVM_ERR_BAD_FRAME', `${r.remaining} bytes after a proxy frame of type ${t}`);
  return f;
}

function helloKeyOf(secret: Uint8Array): Buffer {
  return deriveKey(secret, 'ftvm-proxy-hello-v1');
}

export interface ProxyHello {
  version: number;
  vmName: string;
  proxyId: Uint8Array;
}

export interface WireOptions {
  keys: Keyring;
  /** 'proxy' dials and sends HELLO; 'replica' answers with WELCOME. */
  side: 'proxy' | 'replica';
  vmName: string;
  /** proxy side: its id (16 bytes, new for every proxy process). */
  proxyId?: Uint8Array;
  /** Drop the connection when the socket holds more than this many unsent bytes. */
  sendBufferMaxBytes?: number;
}

/**
 * One proxy-protocol connection. Events: 'open' (ProxyHello, once both sides verified), 'frame'
 * (ProxyFrame), 'close' ({code, reason}), 'drain'.
 */
export class ProxyWire extends EventEmitter {
  private sessionKey: Buffer | undefined;
  private readonly nonce = randomBytes(16);
  private sendCounter = 0n;
  private recvCounter = 0n;
  private readonly frames = new FrameSplitter(MAX_FRAME_BYTES);
  private readonly writer = new ByteWriter(1024, MAX_FRAME_BYTES);
  private closed = false;
  private peerSecret: Uint8Array | undefined;
  hello: ProxyHello | undefined;
  private corked = false;

  constructor(
    readonly socket: net.Socket,
    private readonly opts: WireOptions,
  ) {
    super();
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => this.close('FTVM_ERR_CHANNEL_CLOSED', `socket error: ${err.message}`));
    socket.on('close', () => this.close('FTVM_ERR_CHANNEL_CLOSED', 'the peer closed the connection'));
    socket.on('drain', () => this.emit('drain'));
    if (opts.side === 'proxy') {
      const w = new ByteWriter(128);
      w.u8(PFrame.HELLO);
      w.varint(PROXY_PROTOCOL_VERSION);
      str(w, opts.vmName);
      w.bytes(opts.proxyId!);
      w.bytes(this.nonce);
      this.writeRaw(w.finish(), helloKeyOf(opts.keys.current), 0n);
    }
  }

  get isOpen(): boolean {
    return this.sessionKey !== undefined && !this.closed;
  }

  get bufferedBytes(): number {
    return this.socket.writableLength;
  }

  get remote(): string {
    return `${this.socket.remoteAddress ?? '?'}:${this.socket.remotePort ?? '?'}`;
  }

  private dir(out: boolean): number {
    return (this.opts.side === 'proxy') === out ? 1 : 2;
  }

  private writeRaw(body: Uint8Array, key: Uint8Array, counter: bigint): void {
    const out = sealFrame(body, undefined, key, this.dir(true), counter);
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      setImmediate(() => {
        this.corked = false;
        this.socket.uncork();
      });
    }
    this.socket.write(out);
  }

  /** Sends a frame; false when the connection is not open. */
  send(f: ProxyFrame): boolean {
    if (!this.isOpen) return false;
    if (this.socket.writableLength > (this.opts.sendBufferMaxBytes ?? 64 * 1024 * 1024)) {
      this.close('FTVM_ERR_PROXY_OVERFLOW', 'the peer does not read: its send buffer passed the bound');
      return false;
    }
    this.writer.reset();
    encodeProxyFrame(f, this.writer);
    this.sendCounter++;
    this.writeRaw(this.writer.bytesView(), this.sessionKey!, this.sendCounter);
    return true;
  }

  /** Refuses the session with a coded error (sent when the session is open), then closes. */
  refuse(code: string, message: string): void {
    if (this.isOpen) this.send({ t: PFrame.ERROR, code, message });
    this.close(code, message, true);
  }

  close(code: string, reason: string, flush = false): void {
    if (this.closed) return;
    this.closed = true;
    if (flush) this.socket.end();
    else this.socket.destroy();
    this.emit('close', { code, reason });
  }

  private onData(chunk: Buffer): void {
    if (this.closed) return;
    this.frames.push(chunk);
    while (!this.closed) {
      const f = this.frames.next();
      if (f === undefined) return;
      if ('badLength' in f) {
        this.close('FTVM_ERR_BAD_FRAME', `a frame of ${f.badLength} bytes`);
        return;
      }
      try {
        this.onFrame(f.body, f.tag);
      } catch (err) {
        const e = err as FtvmError;
        this.close(e.code ?? 'FTVM_ERR_BAD_FRAME', e.message);
      }
    }
  }

  private onFrame(body: Uint8Array, tag: Uint8Array): void {
    const peerDir = this.dir(false);
    if (this.sessionKey === undefined) {
      if (this.opts.side === 'replica') {
        const secret = this.opts.keys.accepted.find((s) => verifyFrameMac(helloKeyOf(s), peerDir, 0n, body, tag));
        if (secret === undefined) throw new FtvmError('FTVM_ERR_AUTH', 'a proxy HELLO that does not verify under the VM secret');
        const r = new ByteReader(body);
        if (r.u8() !== PFrame.HELLO) throw new FtvmError('FTVM_ERR_BAD_FRAME', 'expected HELLO');
        const version = r.varint();
        const vmName = rstr(r, 256);
        const proxyId = r.bytes(PROXY_ID_BYTES);
        const peerNonce = r.bytes(16);
        if (version !== PROXY_PROTOCOL_VERSION) throw new FtvmError('FTVM_ERR_PEER_REFUSED', `proxy protocol version ${version}; this replica speaks ${PROXY_PROTOCOL_VERSION}`);
        if (vmName !== this.opts.vmName) throw new FtvmError('FTVM_ERR_PEER_REFUSED', `the proxy is for VM "${vmName}"; this is "${this.opts.vmName}"`);
        this.peerSecret = secret;
        const w = new ByteWriter(64);
        w.u8(PFrame.WELCOME);
        w.bytes(this.nonce);
        this.writeRaw(w.finish(), helloKeyOf(secret), 0n);
        this.sessionKey = deriveKey(secret, 'ftvm-proxy-session-v1', peerNonce, this.nonce);
        this.hello = { version, vmName, proxyId };
        this.emit('open', this.hello);
      } else {
        const secret = this.opts.keys.accepted.find((s) => verifyFrameMac(helloKeyOf(s), peerDir, 0n, body, tag));
        if (secret === undefined) throw new FtvmError('FTVM_ERR_AUTH', 'a WELCOME that does not verify under the VM secret');
        const r = new ByteReader(body);
        if (r.u8() !== PFrame.WELCOME) throw new FtvmError('FTVM_ERR_BAD_FRAME', 'expected WELCOME');
        const peerNonce = r.bytes(16);
        this.sessionKey = deriveKey(this.opts.keys.current, 'ftvm-proxy-session-v1', this.nonce, peerNonce);
        this.hello = { version: PROXY_PROTOCOL_VERSION, vmName: this.opts.vmName, proxyId: this.opts.proxyId! };
        this.emit('open', this.hello);
      }
      return;
    }
    this.recvCounter++;
    if (!verifyFrameMac(this.sessionKey, peerDir, this.recvCounter, body, tag)) {
      throw new FtvmError('FTVM_ERR_AUTH', `proxy frame ${this.recvCounter} does not verify (forged, altered, replayed or reordered)`);
    }
    const f = decodeProxyFrame(body);
    this.emit('frame', f);
  }
}

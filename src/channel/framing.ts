/**
 * The authenticated frame shape shared by the logging channel (src/channel/connection.ts) and the proxy
 * protocol (src/proxy/wire.ts):
 *
 *   u32 length (LE) | body | 16-byte MAC        length = body + 16
 *
 * The MAC is HMAC-SHA256(key, u8 direction | u64 counter (LE) | body), truncated to 16 bytes. The
 * handshake frames are MAC'd with a key derived from the shared secret (counter 0), every later frame
 * with a session key derived from the secret and both nonces, over a per-direction counter; each
 * protocol has its own labels, so a frame of one is never valid in the other. Also the length-prefixed
 * UTF-8 strings both frame codecs write with the log codec's varints.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { ByteReader, ByteWriter } from '../log/codec.js';
import { FtvmError } from '../util/errors.js';

export const MAC_BYTES = 16;

/** HMAC-SHA256(secret, label | parts…): the hello key (no parts) or a session key (the nonces). */
export function deriveKey(secret: Uint8Array, label: string, ...parts: Uint8Array[]): Buffer {
  const h = createHmac('sha256', secret).update(label);
  for (const p of parts) h.update(p);
  return h.digest();
}

/** The MAC of a frame body (`body` then `body2`, when it comes in two parts). */
export function frameMac(key: Uint8Array, dir: number, counter: bigint, body: Uint8Array, body2?: Uint8Array): Buffer {
  const h = createHmac('sha256', key);
  const hdr = Buffer.allocUnsafe(9);
  hdr[0] = dir;
  hdr.writeBigUInt64LE(counter, 1);
  h.update(hdr);
  h.update(body);
  if (body2 !== undefined && body2.length > 0) h.update(body2);
  return h.digest().subarray(0, MAC_BYTES);
}

/** Whether `tag` is the MAC of `body` under this key, direction and counter (constant time). */
export function verifyFrameMac(key: Uint8Array, dir: number, counter: bigint, body: Uint8Array, tag: Uint8Array): boolean {
  return timingSafeEqual(frameMac(key, dir, counter, body), tag);
}

/** One frame on the wire: u32 length | head | tail | MAC, in a single buffer (the body is copied once). */
export function sealFrame(head: Uint8Array, tail: Uint8Array | undefined, key: Uint8Array | undefined, dir: number, counter: bigint): Buffer {
  // No key: a frame without a MAC of its own (the logging channel's frames over TLS, protocol 4+).
  const bodyLen = head.length + (tail?.length ?? 0);
  const len = bodyLen + (key !== undefined ? MAC_BYTES : 0);
  const out = Buffer.allocUnsafe(4 + len);
  out.writeUInt32LE(len, 0);
  out.set(head, 4);
  if (tail !== undefined) out.set(tail, 4 + head.length);
  if (key !== undefined) out.set(frameMac(key, dir, counter, out.subarray(4, 4 + bodyLen)), 4 + bodyLen);
  return out;
}

/**
 * Splits a byte stream into frames. `next()` gives the next whole frame's body and MAC, `{ badLength }`
 * for a length outside [1 + MAC, maxFrameBytes] (the stream is then unusable: close it), or undefined
 * until more bytes come. Holds at most one partial frame (≤ maxFrameBytes + 4) plus what one read adds.
 */
export class FrameSplitter {
  private buf: Buffer = Buffer.alloc(0);

  constructor(private readonly maxFrameBytes: number) {}

  push(chunk: Buffer): void {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
  }

  /** `macBytes`: the MAC each frame ends with (MAC_BYTES, or 0 for frames without one). */
  next(macBytes: number = MAC_BYTES): { body: Buffer; tag: Buffer } | { badLength: number } | undefined {
    if (this.buf.length < 4) return undefined;
    const len = this.buf.readUInt32LE(0);
    if (len < macBytes + 1 || len > this.maxFrameBytes) return { badLength: len };
    if (this.buf.length < 4 + len) return undefined;
    const body = this.buf.subarray(4, 4 + len - macBytes);
    const tag = this.buf.subarray(4 + len - macBytes, 4 + len);
    this.buf = this.buf.subarray(4 + len);
    return { body, tag };
  }
}

/** A string as varint byte length | UTF-8 bytes. */
export function writeLenString(w: ByteWriter, s: string): void {
  const b = Buffer.from(s, 'utf8');
  w.varint(b.length);
  w.bytes(b);
}

/** Reads a string written by writeLenString; longer than `max` bytes is FTVM_ERR_BAD_FRAME. */
export function readLenString(r: ByteReader, max: number): string {
  const n = r.varint();
  if (n > max) throw new FtvmError('FTVM_ERR_BAD_FRAME', `string of ${n} bytes exceeds ${max}`);
  return Buffer.from(r.bytesView(n)).toString('utf8');
}

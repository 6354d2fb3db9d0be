/**
 * The offset bookkeeping of the proxy protocol (docs/PROXY.md, "Offsets" and "Re-attach"), shared by
 * both ends: `OffsetQueue`, a stream's bytes from an offset on (the proxy's unacknowledged client input,
 * the replica's unconfirmed output), and `attachVerdict`, the replica's check of a re-attach's offsets.
 * Pure: no I/O, no timers (test/proxy-offsets.property.test.ts drives them with fast-check).
 */
import assert from 'node:assert/strict';

/** The bytes of a stream in [base, end), kept as the chunks they came in. */
export class OffsetQueue {
  private chunks: Uint8Array[] = [];
  private baseOffset: number;
  private endOffset: number;

  constructor(base = 0, first?: Uint8Array) {
    this.baseOffset = base;
    this.endOffset = base;
    if (first !== undefined) this.push(first);
  }

  /** Offset of the first byte held. */
  get base(): number {
    return this.baseOffset;
  }

  /** Offset after the last byte held (all bytes ever pushed). */
  get end(): number {
    return this.endOffset;
  }

  get heldBytes(): number {
    return this.endOffset - this.baseOffset;
  }

  push(b: Uint8Array): void {
    if (b.length === 0) return;
    this.chunks.push(b);
    this.endOffset += b.length;
  }

  /** Forgets the bytes before `offset` (clamped to [base, end]). */
  trimTo(offset: number): void {
    let drop = Math.min(offset, this.endOffset) - this.baseOffset;
    if (drop <= 0) return;
    this.baseOffset += drop;
    while (drop > 0) {
      const h = this.chunks[0];
      assert.ok(h !== undefined, 'OffsetQueue: fewer bytes held than [base, end) says');
      if (h.length <= drop) {
        this.chunks.shift();
        drop -= h.length;
      } else {
        this.chunks[0] = h.subarray(drop);
        drop = 0;
      }
    }
  }

  /** Forgets everything: the stream goes on at `end` with nothing held. */
  clear(): void {
    this.chunks = [];
    this.baseOffset = this.endOffset;
  }

  /** Up to `maxBytes` bytes from offset `from` (base ≤ from ≤ end); empty at the end. */
  read(from: number, maxBytes: number): Uint8Array {
    assert.ok(from >= this.baseOffset && from <= this.endOffset, `OffsetQueue: read at ${from} outside [${this.baseOffset}, ${this.endOffset}]`);
    const parts: Uint8Array[] = [];
    let got = 0;
    let at = this.baseOffset;
    for (const c of this.chunks) {
      if (got >= maxBytes) break;
      const end = at + c.length;
      if (end > from + got) {
        const start = from + got - at;
        const piece = c.subarray(start, Math.min(c.length, start + (maxBytes - got)));
        parts.push(piece);
        got += piece.length;
      }
      at = end;
    }
    if (parts.length === 0) return new Uint8Array(0);
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  }
}

/** What the replica holds of a proxied connection, for an ATTACH. */
export interface HeldOffsets {
  /** Input bytes the VM's log delivered. */
  inLogged: number;
  /** Output the proxy confirmed (OUTACK) — the first byte the replica still holds. */
  outAcked: number;
  /** All output the guest sent. */
  outEnd: number;
}

/** An ATTACH's offsets: what the proxy holds. */
export interface AttachOffsets {
  inSent: number;
  inAcked: number;
  outDelivered: number;
}

/**
 * The replica's decision on an ATTACH: re-attach (the offsets fit what it holds: inAcked ≤ inLogged ≤
 * inSent, outDelivered within the output held), open anew (a connection it does not know, with nothing
 * acknowledged either way: its OPEN never reached this replica's log), or refuse (FTVM_ERR_PROXY_OFFSET).
 */
export function attachVerdict(held: HeldOffsets | undefined, f: AttachOffsets): { verdict: 'attach' | 'open' } | { verdict: 'refuse'; message: string } {
  if (held === undefined) {
    if (f.inAcked === 0 && f.outDelivered === 0) return { verdict: 'open' };
    return { verdict: 'refuse', message: 'unknown to this VM, but the proxy has acknowledged input or output of it' };
  }
  if (!(f.inAcked <= held.inLogged && held.inLogged <= f.inSent) || f.outDelivered < held.outAcked || f.outDelivered > held.outEnd) {
    return {
      verdict: 'refuse',
      message: `offsets do not match the VM: input acked ${f.inAcked} sent ${f.inSent} vs logged ${held.inLogged}; output delivered ${f.outDelivered} vs held [${held.outAcked}, ${held.outEnd}]`,
    };
  }
  return { verdict: 'attach' };
}

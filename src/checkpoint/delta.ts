/**
 * Memory deltas for checkpoint replication (state transfer, the mode for guests that cannot be
 * replayed): what changed in guest memory since the last checkpoint, small enough to ship every few
 * milliseconds.
 *
 * - Dirty pages are found by comparing each page with a shadow copy of the last checkpoint (a native
 *   memcmp per page: no write barrier in the guest, so any module — threaded ones included — can be
 *   tracked). The shadow is the backup's view of memory, kept by the primary.
 * - A dirty page is sent as its XOR against the shadow, run-length encoded: runs of unchanged bytes
 *   (zeros in the XOR) cost a varint, changed bytes are sent as they are XORed (RemusDB's "XOR + RLE"
 *   page deltas; a one-word change of a 4 KiB page costs about ten bytes).
 * - Memory can only grow (wasm): pages beyond the shadow compare against zeros.
 * - With the store barrier (`--dirty-tracking barrier`, src/machine/dirty-pages.ts) the snapshot says which
 *   pages were written since the previous one: only those are compared and encoded (a written page whose
 *   bytes came back to the shadow's is still skipped). The comparison of every page remains the fallback
 *   whenever that map cannot be trusted: the first delta (data segments are written without the barrier),
 *   after a reset (a base), or when a map of the series was missed (its `seq` is not the next).
 *
 * Wire format (one delta): u8 version, varint memoryBytes, varint pageBytes, varint pages, then per
 * page: varint page-index gap from the previous page, varint encoded length, the encoding (pairs of
 * varint zero-run, varint literal length + literal bytes); then a CRC-32 of everything before it.
 * Decoding is strict: a malformed delta is an FtvmError with code
 * FTVM_ERR_SNAPSHOT, never a crash, and never a partly applied page.
 */
import { crc32 } from 'node:zlib';
import { ByteReader, ByteWriter } from '../log/codec.js';
import { DIRTY_PAGE_BYTES } from '../machine/dirty-pages.js';
import { FtvmError, assert } from '../util/errors.js';

export const DELTA_VERSION = 1;
export const DEFAULT_PAGE_BYTES = 4096;
const MAX_MEMORY_BYTES = 4 * 1024 * 1024 * 1024;

function bad(msg: string): never {
  throw new FtvmError('FTVM_ERR_SNAPSHOT', `bad memory delta: ${msg}`);
}

export interface DeltaStats {
  dirtyPages: number;
  pages: number;
  encodedBytes: number;
}

/** XOR of `page` against `base` (base may be shorter: zeros beyond it), run-length encoded into `w`. */
function encodePage(w: ByteWriter, page: Uint8Array, base: Uint8Array): void {
  const n = page.length;
  let i = 0;
  while (i < n) {
    const zeroStart = i;
    while (i < n && page[i] === (base[i] ?? 0)) i++;
    const zeros = i - zeroStart;
    if (i === n) {
      if (zeros > 0) {
        w.varint(zeros);
        w.varint(0);
      }
      return;
    }
    const litStart = i;
    // A literal run ends at the next run of at least 4 unchanged bytes (shorter runs cost more as runs).
    while (i < n) {
      if (page[i] === (base[i] ?? 0)) {
        let j = i;
        while (j < n && j - i < 4 && page[j] === (base[j] ?? 0)) j++;
        if (j - i >= 4 || j === n) break;
        i = j;
      } else {
        i++;
      }
    }
    w.varint(zeros);
    w.varint(i - litStart);
    for (let k = litStart; k < i; k++) w.u8(page[k]! ^ (base[k] ?? 0));
  }
}

/**
 * Tracks one memory between checkpoints. `delta(memory)` returns what changed since the previous call
 * (the first call: everything that is not zero) and moves the shadow to `memory`.
 */
export class DirtyTracker {
  private shadow: Uint8Array = new Uint8Array(0);
  private readonly w = new ByteWriter(64 * 1024, MAX_MEMORY_BYTES);
  lastStats: DeltaStats = { dirtyPages: 0, pages: 0, encodedBytes: 0 };

  constructor(readonly pageBytes = DEFAULT_PAGE_BYTES) {
    assert(Number.isInteger(pageBytes) && pageBytes >= 64 && pageBytes <= 65536 && (pageBytes & (pageBytes - 1)) === 0, 'page size is a power of two in [64, 65536]');
  }

  /** The `seq` of the last page map seen (undefined: none yet, or reset). */
  private lastSeq: number | undefined;

  /**
   * `written`: the pages written since the previous call, from the store barrier (Snapshot.dirty); used
   * when it continues the series this tracker saw, else every page is compared.
   */
  delta(memory: Uint8Array, written?: { map?: Uint8Array; seq: number }): Uint8Array {
    const trusted = written?.map !== undefined && this.lastSeq !== undefined && written.seq === this.lastSeq + 1 && this.shadow.length > 0 && this.pageBytes === DIRTY_PAGE_BYTES;
    this.lastSeq = written?.seq;
    if (trusted) return this.finish(memory, this.markedPages(memory, written.map!));
    return this.finish(memory, this.comparedPages(memory));
  }

  /** Pages marked in `map` whose bytes differ from the shadow's (or from zeros beyond it). */
  private markedPages(memory: Uint8Array, map: Uint8Array): number[] {
    const pb = this.pageBytes;
    const mem = Buffer.from(memory.buffer, memory.byteOffset, memory.byteLength);
    const shadow = Buffer.from(this.shadow.buffer, this.shadow.byteOffset, this.shadow.byteLength);
    const dirty: number[] = [];
    const pages = Math.min(map.length, Math.ceil(memory.length / pb));
    for (let p = 0; p < pages; p++) {
      if (map[p] === 0) continue;
      const a = p * pb;
      const b = Math.min(memory.length, a + pb);
      const page = mem.subarray(a, b);
      const base = a < shadow.length ? shadow.subarray(a, Math.min(shadow.length, b)) : undefined;
      if (base !== undefined && base.length === page.length ? page.equals(base) : isZero(page, base)) continue;
      dirty.push(p);
    }
    return dirty;
  }

  /** Every page whose bytes differ from the shadow's (or from zeros beyond it). */
  private comparedPages(memory: Uint8Array): number[] {
    if (memory.length < this.shadow.length) throw new FtvmError('FTVM_ERR_SNAPSHOT', `memory shrank from ${this.shadow.length} to ${memory.length} bytes`);
    const pb = this.pageBytes;
    const pages = Math.ceil(memory.length / pb);
    const mem = Buffer.from(memory.buffer, memory.byteOffset, memory.byteLength);
    const shadow = Buffer.from(this.shadow.buffer, this.shadow.byteOffset, this.shadow.byteLength);
    const dirty: number[] = [];
    // Two levels: one memcmp per 64 pages where nothing changed (most of memory, most of the time),
    // then page by page inside a block that differs.
    const block = pb * 64;
    for (let blockStart = 0; blockStart < memory.length; blockStart += block) {
      const blockEnd = Math.min(memory.length, blockStart + block);
      if (blockEnd <= shadow.length && mem.subarray(blockStart, blockEnd).equals(shadow.subarray(blockStart, blockEnd))) continue;
      for (let a = blockStart; a < blockEnd; a += pb) {
        const b = Math.min(memory.length, a + pb);
        const page = mem.subarray(a, b);
        const base = a < shadow.length ? shadow.subarray(a, Math.min(shadow.length, b)) : undefined;
        if (base !== undefined && base.length === page.length ? page.equals(base) : isZero(page, base)) continue;
        dirty.push(a / pb);
      }
    }
    return dirty;
  }

  /** Encodes `dirty` (ascending page numbers) against the shadow and moves the shadow to `memory`. */
  private finish(memory: Uint8Array, dirty: number[]): Uint8Array {
    if (memory.length < this.shadow.length) throw new FtvmError('FTVM_ERR_SNAPSHOT', `memory shrank from ${this.shadow.length} to ${memory.length} bytes`);
    const pb = this.pageBytes;
    const pages = Math.ceil(memory.length / pb);
    const mem = Buffer.from(memory.buffer, memory.byteOffset, memory.byteLength);
    const shadow = Buffer.from(this.shadow.buffer, this.shadow.byteOffset, this.shadow.byteLength);
    const w = this.w;
    w.reset();
    w.u8(DELTA_VERSION);
    w.varint(memory.length);
    w.varint(pb);
    w.varint(dirty.length);
    const body = new ByteWriter(Math.max(64, dirty.length * 64), MAX_MEMORY_BYTES);
    let prev = -1;
    for (const p of dirty) {
      const a = p * pb;
      const page = mem.subarray(a, Math.min(memory.length, a + pb));
      const base = a < shadow.length ? shadow.subarray(a, Math.min(shadow.length, a + pb)) : new Uint8Array(0);
      body.reset();
      encodePage(body, page, base);
      const enc = body.finish();
      w.varint(p - prev - 1);
      w.varint(enc.length);
      w.bytes(enc);
      prev = p;
    }
    // Move the shadow: grow it (reusing the buffer when it has room) and copy the dirty pages.
    if (this.shadow.length !== memory.length) {
      const grown = new Uint8Array(memory.length);
      grown.set(this.shadow);
      this.shadow = grown;
    }
    for (const p of dirty) {
      const a = p * pb;
      this.shadow.set(mem.subarray(a, Math.min(memory.length, a + pb)), a);
    }
    const payload = w.finish();
    const out = Buffer.allocUnsafe(payload.length + 4);
    out.set(payload, 0);
    out.writeUInt32LE(crc32(payload) >>> 0, payload.length);
    this.lastStats = { dirtyPages: dirty.length, pages, encodedBytes: out.length };
    return out;
  }

  /** The tracker's view of memory (what a backup that applied every delta holds). */
  get view(): Uint8Array {
    return this.shadow;
  }
}

function isZero(page: Uint8Array, base: Uint8Array | undefined): boolean {
  // A page partly beyond the shadow compares against the shadow's bytes, then zeros.
  const n = base?.length ?? 0;
  for (let i = 0; i < page.length; i++) if (page[i] !== (i < n ? base![i] : 0)) return false;
  return true;
}

/** The memory size a delta brings memory to (read from its header; the rest is checked by applyDelta). */
export function deltaMemoryBytes(delta: Uint8Array): number {
  if (delta.length < 5) bad('too short');
  const r = new ByteReader(delta.subarray(0, delta.length - 4));
  try {
    const version = r.u8();
    if (version !== DELTA_VERSION) bad(`version ${version}`);
    const memBytes = r.varint();
    if (memBytes > MAX_MEMORY_BYTES) bad(`memory of ${memBytes} bytes`);
    return memBytes;
  } catch (err) {
    if (err instanceof FtvmError && err.code === 'FTVM_ERR_SNAPSHOT') throw err;
    bad((err as Error).message);
  }
}

/**
 * Applies a delta to `memory` (the backup's copy, as it was at the previous checkpoint), returning the
 * memory after it (a new, larger buffer when the guest's memory grew). Checks everything before
 * writing: a bad delta changes nothing.
 */
export function applyDelta(memory: Uint8Array, delta: Uint8Array): Uint8Array {
  if (delta.length < 5) bad('too short');
  const payload = delta.subarray(0, delta.length - 4);
  const d = Buffer.from(delta.buffer, delta.byteOffset, delta.byteLength);
  if ((crc32(payload) >>> 0) !== d.readUInt32LE(delta.length - 4)) bad('checksum mismatch');
  const r = new ByteReader(payload);
  try {
    const version = r.u8();
    if (version !== DELTA_VERSION) bad(`version ${version}`);
    const memBytes = r.varint();
    const pb = r.varint();
    if (memBytes > MAX_MEMORY_BYTES) bad(`memory of ${memBytes} bytes`);
    if (memBytes < memory.length) bad(`memory shrinks from ${memory.length} to ${memBytes} bytes`);
    if (pb < 64 || pb > 65536 || (pb & (pb - 1)) !== 0) bad(`page size ${pb}`);
    const pages = Math.ceil(memBytes / pb);
    const count = r.varint();
    if (count > pages) bad(`${count} dirty pages of ${pages}`);
    // Decode every page first (into the XOR form), then apply: all or nothing.
    const decoded: Array<{ page: number; xor: Uint8Array }> = [];
    let prev = -1;
    for (let k = 0; k < count; k++) {
      const page = prev + 1 + r.varint();
      if (page >= pages) bad(`page ${page} of ${pages}`);
      const len = r.varint();
      const enc = r.bytes(len);
      const size = Math.min(pb, memBytes - page * pb);
      const xor = new Uint8Array(size);
      const er = new ByteReader(enc);
      let i = 0;
      while (er.pos < enc.length) {
        i += er.varint();
        const lit = er.varint();
        if (i + lit > size) bad(`page ${page} encodes past its end`);
        const bytes = er.bytes(lit);
        xor.set(bytes, i);
        i += lit;
      }
      if (i > size) bad(`page ${page} encodes past its end`);
      decoded.push({ page, xor });
      prev = page;
    }
    if (r.pos !== payload.length) bad(`${payload.length - r.pos} trailing bytes`);
    let out = memory;
    if (memBytes !== memory.length) {
      out = new Uint8Array(memBytes);
      out.set(memory);
    }
    for (const { page, xor } of decoded) {
      const a = page * pb;
      for (let i = 0; i < xor.length; i++) out[a + i]! ^= xor[i]!;
    }
    return out;
  } catch (err) {
    if (err instanceof FtvmError && err.code === 'FTVM_ERR_SNAPSHOT') throw err;
    bad((err as Error).message);
  }
}

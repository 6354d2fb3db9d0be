/**
 * Snapshots on the wire: the state-transfer format a live primary uses to clone itself to a new backup
 * (re-replication). A snapshot is cut into chunks so it can stream while the primary keeps running, and
 * every chunk is checksummed; the receiver reassembles into a buffer it reuses (a fresh 256 MiB buffer
 * costs ~1 s in page faults, a reused one ~20 ms: DESIGN.md §3).
 *
 *   header chunk:  "FTVMSNAP" | u16 version | u32 crc32(body) | body (varint count, varint seq, flags,
 *                  varint memoryBytes, varint chunkBytes, globals, device state as JSON, with flag 8
 *                  the unwound stack of a command blocked in a call: varint length, bytes; with flag 16
 *                  the size of the virtual disk's serialization: varint diskBytes)
 *   data chunks:   u32 index | u32 crc32(bytes) | bytes   (memoryBytes split into chunkBytes pieces,
 *                  indexes 0 .. memoryChunks-1, then the disk's bytes the same way, indexes
 *                  memoryChunks .. memoryChunks+diskChunks-1)
 *
 * The disk streams in chunks like memory (version 2; version 1 carried it inside the header, which
 * capped it at one frame), so a disk of any size the quota allows is shipped while the primary runs on.
 */
import { crc32 } from 'node:zlib';
import { ByteReader, ByteWriter } from '../log/codec.js';
import { FtvmError } from '../util/errors.js';
import type { DeviceState } from './devices.js';
import type { Snapshot } from './machine.js';

/** Globals as snapshots and checkpoints carry them: varint count, each u8 kind (0 f64, 1 i64) + 8 bytes. */
export function writeGlobals(w: ByteWriter, globals: ReadonlyArray<number | bigint>): void {
  w.varint(globals.length);
  const f64 = Buffer.alloc(8);
  for (const g of globals) {
    if (typeof g === 'bigint') {
      w.u8(1);
      w.u64(BigInt.asUintN(64, g));
    } else {
      w.u8(0);
      f64.writeDoubleLE(g, 0);
      w.bytes(f64);
    }
  }
}

/** Reads what `writeGlobals` wrote; `bad` refuses a malformed list (at most 100,000 globals). */
export function readGlobals(r: ByteReader, bad: (msg: string) => never): Array<number | bigint> {
  const n = r.varint();
  if (n > 100_000) bad(`${n} globals`);
  const globals: Array<number | bigint> = [];
  for (let i = 0; i < n; i++) {
    const kind = r.u8();
    if (kind === 1) globals.push(BigInt.asIntN(64, r.u64()));
    else if (kind === 0) globals.push(Buffer.from(r.bytes(8)).readDoubleLE(0));
    else bad(`global kind ${kind}`);
  }
  return globals;
}

const MAGIC = Buffer.from('FTVMSNAP', 'latin1');
export const SNAPSHOT_VERSION = 2;
export const DEFAULT_CHUNK_BYTES = 1024 * 1024;
const MAX_MEMORY_BYTES = 4 * 1024 * 1024 * 1024;
/** The largest disk serialization a snapshot may announce (the disk quota's ceiling plus metadata). */
const MAX_DISK_BYTES = 16 * 1024 * 1024 * 1024;

function bad(msg: string): never {
  throw new FtvmError('FTVM_ERR_SNAPSHOT', `bad snapshot stream: ${msg}`);
}

export interface SnapshotHeader {
  count: number;
  seq: number;
  stepAgain: boolean;
  deliveredInStep: boolean;
  booted: boolean;
  memoryBytes: number;
  chunkBytes: number;
  /** Memory chunks plus disk chunks. */
  chunks: number;
  /** Chunks of memory (indexes below this); the disk's follow. */
  memoryChunks: number;
  /** Bytes of the disk's serialization (0 without a disk). */
  diskBytes: number;
  globals: Array<number | bigint>;
  devices: DeviceState;
  /** A WASI command snapshotted while blocked in a call: its Asyncify stack image. */
  resume?: Uint8Array;
  /** Set when the VM has a virtual disk (its bytes arrive in chunks). */
  hasDisk: boolean;
}

/** Splits a snapshot into a header chunk and memory chunks (views into the snapshot's memory). */
export function encodeSnapshot(s: Snapshot, chunkBytes = DEFAULT_CHUNK_BYTES): { header: Uint8Array; chunks: Uint8Array[] } {
  const e = snapshotEncoder(s, chunkBytes);
  const chunks: Uint8Array[] = [];
  for (let i = 0; i < e.chunkCount; i++) chunks.push(e.chunk(i));
  return { header: e.header, chunks };
}

/** The header now and each memory chunk on demand (so a large snapshot streams without a second copy). */
export function snapshotEncoder(s: Snapshot, chunkBytes = DEFAULT_CHUNK_BYTES): { header: Uint8Array; chunkCount: number; chunk(i: number): Uint8Array } {
  if (chunkBytes < 4096 || chunkBytes > 64 * 1024 * 1024) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `chunk size ${chunkBytes} outside [4 KiB, 64 MiB]`);
  const w = new ByteWriter(1024);
  w.varint(s.count);
  w.varint(s.seq);
  w.u8((s.stepAgain ? 1 : 0) | (s.deliveredInStep ? 2 : 0) | (s.booted ? 4 : 0) | (s.resume !== undefined ? 8 : 0) | (s.disk !== undefined ? 16 : 0));
  w.varint(s.memory.length);
  w.varint(chunkBytes);
  writeGlobals(w, s.globals);
  const dev = Buffer.from(JSON.stringify(s.devices), 'utf8');
  w.varint(dev.length);
  w.bytes(dev);
  if (s.resume !== undefined) {
    w.varint(s.resume.length);
    w.bytes(s.resume);
  }
  if (s.disk !== undefined) w.varint(s.disk.length);
  const body = w.finish();
  const header = Buffer.alloc(8 + 2 + 4 + body.length);
  MAGIC.copy(header, 0);
  header.writeUInt16LE(SNAPSHOT_VERSION, 8);
  header.writeUInt32LE(crc32(body) >>> 0, 10);
  header.set(body, 14);
  const memoryChunks = Math.ceil(s.memory.length / chunkBytes);
  const disk = s.disk ?? new Uint8Array(0);
  const chunkCount = memoryChunks + Math.ceil(disk.length / chunkBytes);
  return {
    header,
    chunkCount,
    chunk(i: number): Uint8Array {
      if (!Number.isInteger(i) || i < 0 || i >= chunkCount) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `chunk ${i} of ${chunkCount}`);
      const [region, off] = i < memoryChunks ? [s.memory, i * chunkBytes] : [disk, (i - memoryChunks) * chunkBytes];
      const piece = region.subarray(off, Math.min(off + chunkBytes, region.length));
      const c = Buffer.alloc(8 + piece.length);
      c.writeUInt32LE(i, 0);
      c.writeUInt32LE(crc32(piece) >>> 0, 4);
      c.set(piece, 8);
      return c;
    },
  };
}

export function decodeSnapshotHeader(buf: Uint8Array): SnapshotHeader {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (b.length < 14 || !b.subarray(0, 8).equals(MAGIC)) bad('not a snapshot header');
  const version = b.readUInt16LE(8);
  if (version !== SNAPSHOT_VERSION) bad(`snapshot format version ${version} (this node reads ${SNAPSHOT_VERSION})`);
  const body = b.subarray(14);
  if ((crc32(body) >>> 0) !== b.readUInt32LE(10)) bad('header checksum mismatch');
  const r = new ByteReader(body);
  try {
    const count = r.varint();
    const seq = r.varint();
    const flags = r.u8();
    const memoryBytes = r.varint();
    const chunkBytes = r.varint();
    if (memoryBytes % 65536 !== 0 || memoryBytes > MAX_MEMORY_BYTES) bad(`memory size ${memoryBytes}`);
    if (chunkBytes < 4096 || chunkBytes > 64 * 1024 * 1024) bad(`chunk size ${chunkBytes}`);
    const globals = readGlobals(r, bad);
    const devices = JSON.parse(Buffer.from(r.bytes(r.varint())).toString('utf8')) as DeviceState;
    const resume = (flags & 8) !== 0 ? r.bytes(r.varint()) : undefined;
    const hasDisk = (flags & 16) !== 0;
    const diskBytes = hasDisk ? r.varint() : 0;
    if (diskBytes > MAX_DISK_BYTES) bad(`disk size ${diskBytes}`);
    if (r.remaining !== 0) bad('trailing bytes in the header');
    const memoryChunks = Math.ceil(memoryBytes / chunkBytes);
    return {
      count,
      seq,
      stepAgain: (flags & 1) !== 0,
      deliveredInStep: (flags & 2) !== 0,
      booted: (flags & 4) !== 0,
      memoryBytes,
      chunkBytes,
      chunks: memoryChunks + Math.ceil(diskBytes / chunkBytes),
      memoryChunks,
      diskBytes,
      globals,
      devices,
      ...(resume !== undefined ? { resume } : {}),
      hasDisk,
    };
  } catch (err) {
    if (err instanceof FtvmError) throw err;
    bad(`malformed header: ${(err as Error).message}`);
  }
}

/**
 * Reassembles a snapshot from its chunks into a buffer that is reused across transfers. Chunks may come
 * in any order; each is checked; the snapshot is complete when every chunk arrived once.
 */
export class SnapshotAssembler {
  private buffer: Uint8Array = new Uint8Array(0);
  private diskBuffer: Uint8Array = new Uint8Array(0);
  private header: SnapshotHeader | undefined;
  private received: Uint8Array = new Uint8Array(0);
  private missing = 0;

  begin(headerBytes: Uint8Array): SnapshotHeader {
    const h = decodeSnapshotHeader(headerBytes);
    if (this.buffer.length < h.memoryBytes) this.buffer = new Uint8Array(h.memoryBytes);
    if (this.diskBuffer.length < h.diskBytes) this.diskBuffer = new Uint8Array(h.diskBytes);
    this.header = h;
    this.received = new Uint8Array(h.chunks);
    this.missing = h.chunks;
    return h;
  }

  /** Adds one chunk; returns the fraction received so far (for progress). */
  add(chunk: Uint8Array): number {
    const h = this.header;
    if (!h) bad('a memory chunk before the header');
    const b = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    if (b.length < 8) bad('short chunk');
    const i = b.readUInt32LE(0);
    if (i >= h.chunks) bad(`chunk ${i} of ${h.chunks}`);
    const piece = b.subarray(8);
    const inMemory = i < h.memoryChunks;
    const off = (inMemory ? i : i - h.memoryChunks) * h.chunkBytes;
    const expected = Math.min(h.chunkBytes, (inMemory ? h.memoryBytes : h.diskBytes) - off);
    if (piece.length !== expected) bad(`chunk ${i} holds ${piece.length} bytes, expected ${expected}`);
    if ((crc32(piece) >>> 0) !== b.readUInt32LE(4)) bad(`chunk ${i} checksum mismatch`);
    if (this.received[i] === 1) bad(`chunk ${i} received twice`);
    (inMemory ? this.buffer : this.diskBuffer).set(piece, off);
    this.received[i] = 1;
    this.missing--;
    return (h.chunks - this.missing) / h.chunks;
  }

  get complete(): boolean {
    return this.header !== undefined && this.missing === 0;
  }

  /** The snapshot; its memory and disk are views into reused buffers, valid until the next `begin`. */
  finish(): Snapshot {
    const h = this.header;
    if (!h || this.missing !== 0) bad(`${this.missing} chunks missing`);
    return {
      count: h.count,
      seq: h.seq,
      stepAgain: h.stepAgain,
      deliveredInStep: h.deliveredInStep,
      booted: h.booted,
      memory: this.buffer.subarray(0, h.memoryBytes),
      globals: h.globals,
      devices: h.devices,
      ...(h.resume !== undefined ? { resume: h.resume } : {}),
      ...(h.hasDisk ? { disk: this.diskBuffer.subarray(0, h.diskBytes) } : {}),
    };
  }
}

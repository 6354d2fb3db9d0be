/**
 * Recording files: a header naming the format version and the guest module's hash, the VM's
 * configuration and the guest module itself, then checksummed blocks, each one encoded batch.
 *
 *   magic "FTVMLOG\0" | u16 formatVersion | u16 reserved | 32-byte sha256 of the guest module
 *   | u32 configLength | config (JSON, utf8) | u32 moduleLength | module bytes
 *   | blocks: u32 payloadLength | u32 crc32(payload) | payload (a batch, see codec.ts)
 *
 * Format versions: 1 (no snapshot) and 2 (the header may hold the snapshot the log starts from) carry
 * log format 1 (every output an entry); 3 (the header may hold a snapshot, flag bit 0) carries log
 * format 2 (output digests, compact headers: src/log/codec.ts). All three are read; 3 is written.
 *
 * A last block cut short (a recorder killed mid-write) is reported as truncation, not corruption: the
 * entries before it are good. A block whose checksum does not match is corruption.
 */
import { createHash } from 'node:crypto';
import { open, readFile, type FileHandle } from 'node:fs/promises';
import { crc32 } from 'node:zlib';
import { FtvmError } from '../util/errors.js';
import { ByteWriter, LOG_FORMAT_DIGEST, LOG_FORMAT_OUTPUTS, decodeBatch, encodeBatch, type BatchCodingState, type LogFormat } from './codec.js';
import type { LogEntry } from './entry.js';
import type { Snapshot } from '../machine/machine.js';
import { SnapshotAssembler, encodeSnapshot } from '../machine/snapshot-codec.js';

export const RECORDING_MAGIC = Buffer.from('FTVMLOG\0', 'latin1');
/** Version 1: header, then blocks. Version 2: the header also holds the snapshot the log starts from. */
export const FORMAT_VERSION = 1;
export const FORMAT_VERSION_SNAPSHOT = 2;
/** Version 3: as version 2 (snapshot optional), the blocks in log format 2 (output digests). Written. */
export const FORMAT_VERSION_DIGEST = 3;

/** The log format of a recording format version. */
export function logFormatOf(formatVersion: number): LogFormat {
  return formatVersion >= FORMAT_VERSION_DIGEST ? LOG_FORMAT_DIGEST : LOG_FORMAT_OUTPUTS;
}
const HEADER_FLAG_SNAPSHOT = 1;
const MAX_SNAPSHOT_CHUNKS = 1 << 16;
const MAX_BLOCK_BYTES = 64 * 1024 * 1024;

/** Everything that, with the module, determines a run. Part of the recording header. */
export interface VmConfig {
  name: string;
  args: string[];
  env: string[];
  /** The VMM refuses memory.grow past this many 64 KiB pages (the result is logged). */
  memoryMaxPages: number;
  maxCallDepth: number;
  /** Bytes of the VM's virtual disk (pre-opened as /data); absent or 0: no disk. */
  diskBytes?: number;
}

export const DEFAULT_VM_CONFIG: VmConfig = {
  name: 'vm',
  args: [],
  env: [],
  memoryMaxPages: 16384, // 1 GiB
  maxCallDepth: 10_000,
};

export function moduleHash(module: Uint8Array): Uint8Array {
  return createHash('sha256').update(module).digest();
}

export function validateConfig(raw: unknown): VmConfig {
  const bad = (m: string): never => {
    throw new FtvmError('FTVM_ERR_CORRUPT_RECORDING', `bad VM configuration in recording: ${m}`);
  };
  if (typeof raw !== 'object' || raw === null) bad('not an object');
  const c = raw as Record<string, unknown>;
  if (typeof c.name !== 'string') bad('name');
  if (!Array.isArray(c.args) || !c.args.every((a) => typeof a === 'string')) bad('args');
  if (!Array.isArray(c.env) || !c.env.every((a) => typeof a === 'string')) bad('env');
  if (!Number.isInteger(c.memoryMaxPages) || (c.memoryMaxPages as number) < 1 || (c.memoryMaxPages as number) > 65536) bad('memoryMaxPages');
  if (!Number.isInteger(c.maxCallDepth) || (c.maxCallDepth as number) < 1) bad('maxCallDepth');
  if (c.diskBytes !== undefined && (!Number.isSafeInteger(c.diskBytes) || (c.diskBytes as number) < 0 || (c.diskBytes as number) > 1024 * 1024 * 1024)) bad('diskBytes');
  return c as unknown as VmConfig;
}

/** `version`: what to write (tests write the older versions to show that they stay readable). */
export function encodeHeader(module: Uint8Array, config: VmConfig, snapshot?: Snapshot, version = FORMAT_VERSION_DIGEST): Uint8Array {
  if (version === FORMAT_VERSION && snapshot) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'recording format version 1 has no snapshot');
  const w = new ByteWriter(1024, 512 * 1024 * 1024);
  w.bytes(RECORDING_MAGIC);
  w.u8(version & 0xff);
  w.u8(version >> 8);
  w.u8(snapshot ? HEADER_FLAG_SNAPSHOT : 0);
  w.u8(0);
  w.bytes(moduleHash(module));
  const cfg = Buffer.from(JSON.stringify(config), 'utf8');
  w.u32(cfg.length);
  w.bytes(cfg);
  w.u32(module.length);
  w.bytes(module);
  if (!snapshot) return w.finish();
  const head = w.finish();
  // The snapshot the log starts from: its header, then its memory chunks, each length-prefixed (the
  // snapshot codec checksums every piece).
  const s = encodeSnapshot(snapshot);
  const parts: Uint8Array[] = [head];
  const u32 = (n: number): Uint8Array => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(n, 0);
    return b;
  };
  parts.push(u32(s.header.length), s.header, u32(s.chunks.length));
  for (const c of s.chunks) parts.push(u32(c.length), c);
  return Buffer.concat(parts);
}

/** The log's coding state where a log starts: at the snapshot it starts from, or at the beginning. */
export function codingAt(snapshot: Snapshot | undefined): BatchCodingState {
  return { n: snapshot?.devices.logCoding?.n ?? 0, conn: snapshot?.devices.logCoding?.conn ?? 0 };
}

/** `state`: format 2, the log's coding state before the block (updated). */
export function encodeBlock(entries: readonly LogEntry[], w?: ByteWriter, format: LogFormat = LOG_FORMAT_DIGEST, state?: BatchCodingState): Uint8Array {
  return blockOf(encodeBatch(entries, w, format, state));
}

/** Frames an already-encoded batch as a block. */
export function blockOf(payload: Uint8Array): Uint8Array {
  const out = Buffer.allocUnsafe(8 + payload.length);
  out.writeUInt32LE(payload.length, 0);
  out.writeUInt32LE(crc32(payload), 4);
  out.set(payload, 8);
  return out;
}

export interface Recording {
  formatVersion: number;
  /** The log format of its blocks (1: outputs as entries; 2: output digests). */
  logFormat: LogFormat;
  /** The state the log starts from (a backup's continuous recording); none: the guest's start. */
  snapshot?: Snapshot;
  moduleHash: Uint8Array;
  config: VmConfig;
  module: Uint8Array;
  entries: LogEntry[];
  /** True when the file ended in the middle of a block (the entries before it are intact). */
  truncated: boolean;
  blocks: number;
}

export function parseRecording(buf: Uint8Array): Recording {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (b.length < 8 || !b.subarray(0, 8).equals(RECORDING_MAGIC)) {
    throw new FtvmError('FTVM_ERR_CORRUPT_RECORDING', 'not an ftvm recording (bad magic number)');
  }
  if (b.length < 48) throw new FtvmError('FTVM_ERR_CORRUPT_RECORDING', 'recording header is truncated');
  const version = b.readUInt16LE(8);
  if (version !== FORMAT_VERSION && version !== FORMAT_VERSION_SNAPSHOT && version !== FORMAT_VERSION_DIGEST) {
    throw new FtvmError('FTVM_ERR_RECORDING_VERSION', `recording format version ${version} is not supported (this ftvm reads versions ${FORMAT_VERSION} to ${FORMAT_VERSION_DIGEST})`);
  }
  const logFormat = logFormatOf(version);
  const flags = b.readUInt8(10);
  const hash = b.subarray(12, 44);
  let pos = 44;
  const cfgLen = b.readUInt32LE(pos);
  pos += 4;
  if (pos + cfgLen + 4 > b.length) throw new FtvmError('FTVM_ERR_CORRUPT_RECORDING', 'recording header is truncated (config)');
  let config: VmConfig;
  try {
    config = validateConfig(JSON.parse(b.subarray(pos, pos + cfgLen).toString('utf8')));
  } catch (err) {
    if (err instanceof FtvmError) throw err;
    throw new FtvmError('FTVM_ERR_CORRUPT_RECORDING', 'recording header has an unreadable VM configuration', { cause: err });
  }
  pos += cfgLen;
  const modLen = b.readUInt32LE(pos);
  pos += 4;
  if (pos + modLen > b.length) throw new FtvmError('FTVM_ERR_CORRUPT_RECORDING', 'recording header is truncated (module)');
  const module = new Uint8Array(b.subarray(pos, pos + modLen));
  pos += modLen;
  if (!Buffer.from(moduleHash(module)).equals(hash)) {
    throw new FtvmError('FTVM_ERR_CORRUPT_RECORDING', 'the embedded guest module does not match the hash in the recording header');
  }
  let snapshot: Snapshot | undefined;
  if (version >= FORMAT_VERSION_SNAPSHOT && (flags & HEADER_FLAG_SNAPSHOT) !== 0) {
    const need = (n: number, what: string): void => {
      if (pos + n > b.length) throw new FtvmError('FTVM_ERR_CORRUPT_RECORDING', `recording header is truncated (${what})`);
    };
    need(4, 'snapshot');
    const hl = b.readUInt32LE(pos);
    pos += 4;
    need(hl + 4, 'snapshot header');
    const asm = new SnapshotAssembler();
    try {
      const h = asm.begin(b.subarray(pos, pos + hl));
      pos += hl;
      const chunks = b.readUInt32LE(pos);
      pos += 4;
      if (chunks !== h.chunks || chunks > MAX_SNAPSHOT_CHUNKS) throw new FtvmError('FTVM_ERR_CORRUPT_RECORDING', `snapshot claims ${chunks} chunks`);
      for (let i = 0; i < chunks; i++) {
        need(4, 'snapshot chunk');
        const cl = b.readUInt32LE(pos);
        pos += 4;
        need(cl, 'snapshot chunk');
        asm.add(b.subarray(pos, pos + cl));
        pos += cl;
      }
      const s = asm.finish();
      snapshot = { ...s, memory: new Uint8Array(s.memory) };
    } catch (err) {
      if (err instanceof FtvmError && err.code === 'FTVM_ERR_SNAPSHOT') throw new FtvmError('FTVM_ERR_CORRUPT_RECORDING', `the recording's snapshot is damaged: ${err.message}`, { cause: err });
      throw err;
    }
  }
  const entries: LogEntry[] = [];
  let truncated = false;
  let blocks = 0;
  const coding = codingAt(snapshot);
  while (pos < b.length) {
    if (pos + 8 > b.length) {
      truncated = true;
      break;
    }
    const len = b.readUInt32LE(pos);
    const crc = b.readUInt32LE(pos + 4);
    if (len > MAX_BLOCK_BYTES) throw new FtvmError('FTVM_ERR_CORRUPT_RECORDING', `block ${blocks} at offset ${pos} claims ${len} bytes`);
    if (pos + 8 + len > b.length) {
      truncated = true;
      break;
    }
    const payload = b.subarray(pos + 8, pos + 8 + len);
    if (crc32(payload) !== crc) {
      throw new FtvmError('FTVM_ERR_CORRUPT_RECORDING', `block ${blocks} at offset ${pos} fails its checksum`);
    }
    // Sliced, as before: the caller owns `b` (a Buffer's slice is a view, though, as it always was).
    const batch = decodeBatch(payload, undefined, logFormat, coding, true);
    const last = entries[entries.length - 1];
    const first = batch[0];
    if (last !== undefined && first !== undefined && first.n < last.n) {
      throw new FtvmError('FTVM_ERR_CORRUPT_RECORDING', `block ${blocks} goes back in time (${first.n} after ${last.n})`);
    }
    for (const e of batch) entries.push(e);
    pos += 8 + len;
    blocks++;
  }
  return { formatVersion: version, logFormat, moduleHash: new Uint8Array(hash), config, module, entries, truncated, blocks, ...(snapshot ? { snapshot } : {}) };
}

export async function readRecording(path: string): Promise<Recording> {
  let buf: Buffer;
  try {
    buf = await readFile(path);
  } catch (err) {
    throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `cannot read recording ${path}: ${(err as Error).message}`, { cause: err });
  }
  return parseRecording(buf);
}

/** Appends blocks to a recording file as entries are produced. */
export class RecordingWriter {
  private readonly writer = new ByteWriter(4096);
  private constructor(
    private readonly fh: FileHandle,
    /** Bytes of the header (with the snapshot, if any). */
    readonly headerBytes: number,
    /** The coding state after the last block `append` wrote. */
    private readonly coding: BatchCodingState,
  ) {}

  static async create(path: string, module: Uint8Array, config: VmConfig, snapshot?: Snapshot): Promise<RecordingWriter> {
    const fh = await open(path, 'w');
    const header = encodeHeader(module, config, snapshot); // format version 3: batches in log format 2
    await fh.write(header);
    return new RecordingWriter(fh, header.length, codingAt(snapshot));
  }

  /** Appends entries as a block (a writer uses either this or appendEncoded, not both). */
  async append(entries: readonly LogEntry[]): Promise<void> {
    if (entries.length === 0) return;
    await this.fh.write(encodeBlock(entries, this.writer, LOG_FORMAT_DIGEST, this.coding));
  }

  /** Appends a batch the vCPU worker already encoded (the log's next batch, coded in its sequence). */
  async appendEncoded(batch: Uint8Array): Promise<void> {
    await this.fh.write(blockOf(batch));
  }

  async close(): Promise<void> {
    await this.fh.sync();
    await this.fh.close();
  }
}

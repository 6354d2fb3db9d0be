/**
 * Recording files: a header naming the format version and the guest module's hash, the VM's
 * configuration and the guest module itself, then checksummed blocks, each one encoded batch.
 *
 *   magic "FTVMLOG\0" | u16 formatVersion | u16 reserved | 32-byte sha256 of the guest module
 *   | u32 configLength | config (JSON, utf8) | u32 moduleLength | module bytes
 *   | blocks: u32 payloadLength | u32 crc32(payload) | payload (a batch, see codec.ts)
 *
 * A last block cut short (a recorder killed mid-write) is reported as truncation, not corruption: the
 * entries before it are good. A block whose checksum does not match is corruption.
 */
import { createHash } from 'node:crypto';
import { open, readFile, type FileHandle } from 'node:fs/promises';
import { crc32 } from 'node:zlib';
import { FtvmError } from '../util/errors.js';
import { ByteWriter, decodeBatch, encodeBatch } from './codec.js';
import type { LogEntry } from './entry.js';

export const RECORDING_MAGIC = Buffer.from('FTVMLOG\0', 'latin1');
export const FORMAT_VERSION = 1;
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

export function encodeHeader(module: Uint8Array, config: VmConfig): Uint8Array {
  const w = new ByteWriter(1024, 512 * 1024 * 1024);
  w.bytes(RECORDING_MAGIC);
  w.u8(FORMAT_VERSION & 0xff);
  w.u8(FORMAT_VERSION >> 8);
  w.u8(0);
  w.u8(0);
  w.bytes(moduleHash(module));
  const cfg = Buffer.from(JSON.stringify(config), 'utf8');
  w.u32(cfg.length);
  w.bytes(cfg);
  w.u32(module.length);
  w.bytes(module);
  return w.finish();
}

export function encodeBlock(entries: readonly LogEntry[], w?: ByteWriter): Uint8Array {
  return blockOf(encodeBatch(entries, w));
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
  if (version !== FORMAT_VERSION) {
    throw new FtvmError('FTVM_ERR_RECORDING_VERSION', `recording format version ${version} is not supported (this ftvm reads version ${FORMAT_VERSION})`);
  }
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
  const entries: LogEntry[] = [];
  let truncated = false;
  let blocks = 0;
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
    const batch = decodeBatch(payload);
    const last = entries[entries.length - 1];
    const first = batch[0];
    if (last !== undefined && first !== undefined && first.n < last.n) {
      throw new FtvmError('FTVM_ERR_CORRUPT_RECORDING', `block ${blocks} goes back in time (${first.n} after ${last.n})`);
    }
    for (const e of batch) entries.push(e);
    pos += 8 + len;
    blocks++;
  }
  return { formatVersion: version, moduleHash: new Uint8Array(hash), config, module, entries, truncated, blocks };
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
  private constructor(private readonly fh: FileHandle) {}

  static async create(path: string, module: Uint8Array, config: VmConfig): Promise<RecordingWriter> {
    const fh = await open(path, 'w');
    await fh.write(encodeHeader(module, config));
    return new RecordingWriter(fh);
  }

  async append(entries: readonly LogEntry[]): Promise<void> {
    if (entries.length === 0) return;
    await this.fh.write(encodeBlock(entries, this.writer));
  }

  /** Appends a batch the vCPU worker already encoded. */
  async appendEncoded(batch: Uint8Array): Promise<void> {
    await this.fh.write(blockOf(batch));
  }

  async close(): Promise<void> {
    await this.fh.sync();
    await this.fh.close();
  }
}

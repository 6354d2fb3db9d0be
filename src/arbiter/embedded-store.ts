/**
 * The embedded arbiter's durable store: one checksummed JSON file per VM, replaced by temp-file + fsync
 * + rename + directory fsync; a corrupt file is reported and refused, never reset; a LOCK file keeps
 * two servers out of one data directory.
 */
import { createHash, randomBytes } from 'node:crypto';
import { open, readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FtvmError } from '../util/errors.js';
import type { ArbiterRecord } from './arbiter.js';
import { isValidEpoch, isValidOwner } from './record.js';

const FILE_FORMAT = 'ftvm-arbiter-record';
const FILE_VERSION = 1;
export const FILE_PREFIX = 'vm-';
export const FILE_SUFFIX = '.json';
export const TMP_SUFFIX = '.tmp';
export const LOCK_FILE = 'LOCK';

interface RecordFile {
  format: string;
  version: number;
  vm: string;
  epoch: number;
  owner: string;
  writtenAt: string;
  checksum: string;
}

function fileChecksum(f: Omit<RecordFile, 'checksum'>): string {
  const canonical = JSON.stringify([f.format, f.version, f.vm, f.epoch, f.owner, f.writtenAt]);
  return `sha256:${createHash('sha256').update(canonical).digest('hex')}`;
}

export function encodeRecordFile(vm: string, r: ArbiterRecord): string {
  const body = { format: FILE_FORMAT, version: FILE_VERSION, vm, epoch: r.epoch, owner: r.owner, writtenAt: new Date().toISOString() };
  return `${JSON.stringify({ ...body, checksum: fileChecksum(body) })}\n`;
}

/** Parses and checks one data file; throws an Error whose message says what is wrong. */
export function decodeRecordFile(vm: string, text: string): ArbiterRecord {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (err) {
    throw new Error(`not JSON (${(err as Error).message})`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not a JSON object');
  const o = v as Partial<Record<keyof RecordFile, unknown>>;
  if (o.format !== FILE_FORMAT) throw new Error(`format is ${JSON.stringify(o.format)}, not ${JSON.stringify(FILE_FORMAT)}`);
  if (o.version !== FILE_VERSION) throw new Error(`format version ${JSON.stringify(o.version)} is not supported (expected ${FILE_VERSION})`);
  if (o.vm !== vm) throw new Error(`holds the record of VM ${JSON.stringify(o.vm)}, not ${JSON.stringify(vm)}`);
  if (!isValidEpoch(o.epoch)) throw new Error(`epoch ${JSON.stringify(o.epoch)} is not a non-negative safe integer`);
  if (!isValidOwner(o.owner)) throw new Error(`owner ${JSON.stringify(o.owner)} is not valid`);
  if (typeof o.writtenAt !== 'string') throw new Error('writtenAt is missing');
  if (typeof o.checksum !== 'string') throw new Error('checksum is missing');
  const expected = fileChecksum({ format: o.format, version: o.version, vm: o.vm, epoch: o.epoch, owner: o.owner, writtenAt: o.writtenAt });
  if (o.checksum !== expected) throw new Error(`checksum mismatch (file says ${o.checksum}, contents give ${expected})`);
  return { epoch: o.epoch, owner: o.owner };
}

export function recordFileName(vm: string): string {
  return `${FILE_PREFIX}${vm}${FILE_SUFFIX}`;
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Replaces a file atomically and durably: temp file, fsync, rename, fsync of the directory. */
export async function writeDurably(dir: string, name: string, text: string): Promise<void> {
  const tmp = join(dir, `.${name}.${randomBytes(6).toString('hex')}${TMP_SUFFIX}`);
  const fh = await open(tmp, 'wx', 0o600);
  try {
    await fh.writeFile(text);
    await fh.sync();
  } catch (err) {
    await fh.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await fh.close();
  try {
    await rename(tmp, join(dir, name));
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await fsyncDir(dir);
}

export type Slot = { kind: 'ok'; record: ArbiterRecord } | { kind: 'corrupt'; reason: string };

/** Data directories held by servers of this process (the LOCK file's pid cannot tell them apart). */
const heldDirs = new Set<string>();

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export async function lockDataDir(dir: string): Promise<void> {
  const path = join(dir, LOCK_FILE);
  if (heldDirs.has(dir)) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `arbiter server: data directory ${dir} is already in use by a server in this process`);
  try {
    const text = await readFile(path, 'utf8');
    const pid = Number.parseInt(text, 10);
    if (Number.isInteger(pid) && pid !== process.pid && pidAlive(pid)) {
      throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `arbiter server: data directory ${dir} is locked by process ${pid} (${path}); two arbiters must never share one`);
    }
  } catch (err) {
    if (err instanceof FtvmError) throw err;
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  await writeFile(path, `${process.pid}\n`, { mode: 0o600 });
  heldDirs.add(dir);
}

export async function unlockDataDir(dir: string): Promise<void> {
  if (!heldDirs.delete(dir)) return;
  await unlink(join(dir, LOCK_FILE)).catch(() => undefined);
}

// ---------------------------------------------------------------------------------------------------

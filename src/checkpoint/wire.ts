/**
 * One checkpoint on the wire (the data of a CHECKPOINT frame, src/channel/frames.ts), and the two ends
 * that produce and consume it: `CheckpointEncoder` on the primary (a machine snapshot → the memory delta
 * since the previous checkpoint plus the small state) and `CheckpointReplica` on the backup (the VM state
 * as of the last complete checkpoint, which it restores into a fresh machine to go live).
 *
 *   "FTVMCKPT" | u8 version | varint epoch | varint checkpoint | varint count | varint seq | varint flags
 *   (1 stepAgain, 2 deliveredInStep, 4 booted, 8 resume, 16 disk, 32 disk unchanged since the previous
 *   checkpoint, 64 base, 128 hash: the backup hashes its state once applied, 256 threads; a varint) | varint globals, each u8 kind (0 f64, 1 i64) + 8 bytes | varint length + devices (JSON)
 *   | [flag 8: varint length + the unwound stack] | [flag 256: the other threads of a wasi-threads guest:
 *   varint next tid, varint count, each varint tid, varint start_arg, globals as above, varint length +
 *   its unwound stack] | [flag 16 without 32: varint length + the disk's
 *   serialization] | varint length + memory delta (src/checkpoint/delta.ts, with its own CRC-32)
 *   | u32 CRC-32 of everything before it
 *
 * Deltas chain: checkpoint k is the change since checkpoint k−1, so the primary keeps every checkpoint
 * until it is acknowledged and resends them in order. The backup applies strictly in order and all or
 * nothing: a checkpoint that is truncated, corrupt, of an older epoch or out of order is refused with
 * FTVM_ERR_CHECKPOINT and the replica keeps its last complete checkpoint, unchanged.
 *
 * A **base** checkpoint (flag 64) carries all of memory against zeros and its disk whole: it does not
 * depend on any earlier checkpoint, so a replica accepts it whenever its number is greater than the one it
 * applied, and it replaces the replica's state entirely (still all or nothing, CRC-checked). The primary
 * sends one to a backup that (re)connects without the primary's last acknowledged checkpoint.
 */
import { createHash } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { ByteReader, ByteWriter } from '../log/codec.js';
import type { DeviceState } from '../machine/devices.js';
import type { Snapshot } from '../machine/machine.js';
import type { GuestThreadImage, ThreadsState } from '../machine/thread-protocol.js';
import { FtvmError, assert } from '../util/errors.js';
import { readGlobals, writeGlobals } from '../machine/snapshot-codec.js';
import { DEFAULT_PAGE_BYTES, DirtyTracker, applyDelta, deltaMemoryBytes } from './delta.js';

const MAGIC = Buffer.from('FTVMCKPT', 'latin1');
export const CHECKPOINT_VERSION = 1;
/** The largest checkpoint accepted (a full first checkpoint of a 4 GiB memory does not fit a frame anyway). */
const MAX_CHECKPOINT_BYTES = 1024 * 1024 * 1024;
const WASM_PAGE_BYTES = 65536;

const F_STEP_AGAIN = 1;
const F_DELIVERED = 2;
const F_BOOTED = 4;
const F_RESUME = 8;
const F_DISK = 16;
const F_DISK_SAME = 32;
const F_BASE = 64;
const F_HASH = 128;
const F_THREADS = 256;
/** Flags this node knows (the byte became a varint when flag 256 came: flags below 128 encode as before). */
const F_KNOWN = 511;
/** Bounds of a decoded threads section (a thread's image is bounded by the worker's image buffer). */
const MAX_THREADS_DECODED = 4096;
const MAX_THREAD_STACK_BYTES = 1024 * 1024;

function refuse(msg: string, cause?: unknown): never {
  throw new FtvmError('FTVM_ERR_CHECKPOINT', `checkpoint refused: ${msg}`, cause !== undefined ? { cause } : undefined);
}

export interface DecodedCheckpoint {
  epoch: number;
  checkpoint: number;
  count: number;
  seq: number;
  stepAgain: boolean;
  deliveredInStep: boolean;
  booted: boolean;
  globals: Array<number | bigint>;
  devices: DeviceState;
  resume?: Uint8Array;
  threads?: ThreadsState;
  /** 'same': the VM has a disk, unchanged since the previous checkpoint; undefined: no disk. */
  disk?: Uint8Array | 'same';
  /** A base checkpoint: memory against zeros, independent of every earlier checkpoint. */
  base: boolean;
  /** The primary hashed this checkpoint's state: the backup hashes its own once applied (replicas agree?). */
  hash: boolean;
  delta: Uint8Array;
}

/** Strict decoding: checksum, shape, bounds. Says nothing yet about the order (the replica checks it). */
export function decodeCheckpoint(buf: Uint8Array): DecodedCheckpoint {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (b.length < MAGIC.length + 1 + 4) refuse(`truncated (${b.length} bytes)`);
  if (b.length > MAX_CHECKPOINT_BYTES) refuse(`${b.length} bytes`);
  if (!b.subarray(0, MAGIC.length).equals(MAGIC)) refuse('not a checkpoint');
  const body = b.subarray(0, b.length - 4);
  if ((crc32(body) >>> 0) !== b.readUInt32LE(b.length - 4)) refuse('checksum mismatch (truncated or corrupt)');
  const r = new ByteReader(body.subarray(MAGIC.length));
  try {
    const version = r.u8();
    if (version !== CHECKPOINT_VERSION) refuse(`format version ${version} (this node reads ${CHECKPOINT_VERSION})`);
    const epoch = r.varint();
    const checkpoint = r.varint();
    if (checkpoint < 1) refuse('checkpoint number 0');
    const count = r.varint();
    const seq = r.varint();
    const flags = r.varint();
    if ((flags & ~F_KNOWN) !== 0) refuse(`unknown flags ${flags}`);
    if ((flags & F_DISK_SAME) !== 0 && (flags & F_DISK) === 0) refuse('an unchanged disk without a disk');
    if ((flags & F_DISK_SAME) !== 0 && (flags & F_BASE) !== 0) refuse('a base checkpoint with an unchanged disk');
    const globals = readGlobals(r, refuse);
    const devices: unknown = JSON.parse(Buffer.from(r.bytes(r.varint())).toString('utf8'));
    if (typeof devices !== 'object' || devices === null || Array.isArray(devices)) refuse('device state is not an object');
    const resume = (flags & F_RESUME) !== 0 ? r.bytes(r.varint()) : undefined;
    let threads: ThreadsState | undefined;
    if ((flags & F_THREADS) !== 0) {
      const nextTid = r.varint();
      const count = r.varint();
      if (count > MAX_THREADS_DECODED) refuse(`${count} guest threads`);
      const list: GuestThreadImage[] = [];
      for (let i = 0; i < count; i++) {
        const tid = r.varint();
        const startArg = r.varint();
        if (tid < 1 || tid >= nextTid || startArg > 0xffffffff) refuse(`guest thread ${tid} (next ${nextTid}, start_arg ${startArg})`);
        if (list.some((t) => t.tid === tid)) refuse(`guest thread ${tid} twice`);
        const tg = readGlobals(r, refuse);
        if (tg.length !== globals.length) refuse(`guest thread ${tid} has ${tg.length} globals, the main thread ${globals.length}`);
        const len = r.varint();
        if (len > MAX_THREAD_STACK_BYTES) refuse(`guest thread ${tid}: an unwound stack of ${len} bytes`);
        list.push({ tid, startArg, globals: tg, stack: new Uint8Array(r.bytes(len)) });
      }
      threads = { nextTid, threads: list };
    }
    const disk = (flags & F_DISK) === 0 ? undefined : (flags & F_DISK_SAME) !== 0 ? ('same' as const) : r.bytes(r.varint());
    const delta = r.bytes(r.varint());
    if (r.remaining !== 0) refuse(`${r.remaining} trailing bytes`);
    return {
      epoch,
      checkpoint,
      count,
      seq,
      stepAgain: (flags & F_STEP_AGAIN) !== 0,
      deliveredInStep: (flags & F_DELIVERED) !== 0,
      booted: (flags & F_BOOTED) !== 0,
      globals,
      devices: devices as DeviceState,
      ...(resume !== undefined ? { resume } : {}),
      ...(threads !== undefined ? { threads } : {}),
      ...(disk !== undefined ? { disk } : {}),
      base: (flags & F_BASE) !== 0,
      hash: (flags & F_HASH) !== 0,
      delta,
    };
  } catch (err) {
    if (err instanceof FtvmError && err.code === 'FTVM_ERR_CHECKPOINT') throw err;
    refuse(`malformed: ${(err as Error).message}`, err);
  }
}

/**
 * Whether `buf` says it is a base checkpoint, read from its header only (nothing is checked: the replica
 * checks all of it when it applies it). False for anything that does not parse that far.
 */
export function isBaseCheckpoint(buf: Uint8Array): boolean {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (b.length < MAGIC.length + 1 + 4 || !b.subarray(0, MAGIC.length).equals(MAGIC)) return false;
  try {
    const r = new ByteReader(b.subarray(MAGIC.length, b.length - 4));
    if (r.u8() !== CHECKPOINT_VERSION) return false;
    r.varint(); // epoch
    r.varint(); // checkpoint
    r.varint(); // count
    r.varint(); // seq
    return (r.varint() & F_BASE) !== 0;
  } catch {
    return false;
  }
}

/**
 * The primary's side: turns machine snapshots, taken one per checkpoint at idle points, into encoded
 * checkpoints. Its memory shadow is the backup's view, so the first checkpoint carries all of memory
 * (every page that is not zero) and each later one only what changed.
 */
export class CheckpointEncoder {
  private tracker: DirtyTracker;
  private lastDisk: Uint8Array | undefined;
  private last = 0;
  /** The next checkpoint is a base (after `reset`). */
  private baseNext = false;
  lastStats = { deltaBytes: 0, dirtyPages: 0, bytes: 0, base: false };

  constructor(private readonly pageBytes = DEFAULT_PAGE_BYTES) {
    this.tracker = new DirtyTracker(pageBytes);
  }

  /**
   * Forgets the backup's view (the shadow becomes empty): the next checkpoint is a base — all of memory
   * against zeros, the disk whole — and may have any number greater than the last one encoded.
   */
  reset(): void {
    this.tracker = new DirtyTracker(this.pageBytes);
    this.lastDisk = undefined;
    this.baseNext = true;
  }

  /** The number of the last checkpoint encoded (0: none). */
  get lastCheckpoint(): number {
    return this.last;
  }

  /**
   * `hash`: flag the checkpoint so the backup hashes its state once it applied it (the caller hashes the
   * snapshot with {@link checkpointStateHash}: the two must agree).
   */
  encode(epoch: number, checkpoint: number, s: Snapshot, hash = false): Uint8Array {
    const base = this.baseNext;
    assert(base ? checkpoint > this.last : checkpoint === this.last + 1, `checkpoint ${checkpoint} encoded after ${this.last}${base ? ' (a base)' : ''}`);
    const delta = this.tracker.delta(s.memory, s.dirty);
    const diskSame = !base && s.disk !== undefined && this.lastDisk !== undefined && Buffer.from(s.disk).equals(this.lastDisk);
    const w = new ByteWriter(1024 + delta.length + (s.disk !== undefined && !diskSame ? s.disk.length : 0), MAX_CHECKPOINT_BYTES);
    w.bytes(MAGIC);
    w.u8(CHECKPOINT_VERSION);
    w.varint(epoch);
    w.varint(checkpoint);
    w.varint(s.count);
    w.varint(s.seq);
    w.varint(
      (s.stepAgain ? F_STEP_AGAIN : 0) |
        (s.deliveredInStep ? F_DELIVERED : 0) |
        (s.booted ? F_BOOTED : 0) |
        (s.resume !== undefined ? F_RESUME : 0) |
        (s.disk !== undefined ? F_DISK : 0) |
        (diskSame ? F_DISK_SAME : 0) |
        (base ? F_BASE : 0) |
        (hash ? F_HASH : 0) |
        (s.threads !== undefined ? F_THREADS : 0),
    );
    writeGlobals(w, s.globals);
    const dev = Buffer.from(JSON.stringify(s.devices), 'utf8');
    w.varint(dev.length);
    w.bytes(dev);
    if (s.resume !== undefined) {
      w.varint(s.resume.length);
      w.bytes(s.resume);
    }
    if (s.threads !== undefined) {
      w.varint(s.threads.nextTid);
      w.varint(s.threads.threads.length);
      for (const t of s.threads.threads) {
        w.varint(t.tid);
        w.varint(t.startArg);
        writeGlobals(w, t.globals);
        w.varint(t.stack.length);
        w.bytes(t.stack);
      }
    }
    if (s.disk !== undefined && !diskSame) {
      w.varint(s.disk.length);
      w.bytes(s.disk);
    }
    w.varint(delta.length);
    w.bytes(delta);
    const body = w.finish();
    const out = Buffer.allocUnsafe(body.length + 4);
    out.set(body, 0);
    out.writeUInt32LE(crc32(body) >>> 0, body.length);
    this.lastDisk = s.disk !== undefined ? new Uint8Array(s.disk) : undefined;
    this.last = checkpoint;
    this.baseNext = false;
    this.lastStats = { deltaBytes: delta.length, dirtyPages: this.tracker.lastStats.dirtyPages, bytes: out.length, base };
    return out;
  }
}

/** The state of the last complete checkpoint (everything of a Snapshot but memory, which is kept apart). */
interface Held extends Omit<DecodedCheckpoint, 'disk' | 'base' | 'hash' | 'delta'> {
  disk?: Uint8Array;
}

/**
 * The backup's copy of the VM: the last complete checkpoint. `apply` checks a checkpoint entirely before
 * changing anything (decoding, order, epoch, the delta's own checks), then applies it; a refused
 * checkpoint leaves the replica exactly as it was.
 */
export class CheckpointReplica {
  private memory: Uint8Array = new Uint8Array(0);
  private held: Held | undefined;
  private epochFloor: number;
  /** The state hash of the last checkpoint the primary flagged for hashing (null: none yet). */
  lastHash: { n: number; hash: string } | null = null;
  /**
   * TEST ONLY (the simulator shows its go-live check catches it): a torn apply — the last page a
   * checkpoint changes keeps its old bytes, yet the checkpoint counts as applied.
   */
  testOnlyTornApply = false;

  constructor(epoch: number) {
    this.epochFloor = epoch;
  }

  /** The number of the last complete checkpoint (0: none yet). */
  get checkpoint(): number {
    return this.held?.checkpoint ?? 0;
  }
  /** The epoch of the last complete checkpoint (the primary's when it captured it; 0: none yet). */
  get heldEpoch(): number {
    return this.held?.epoch ?? 0;
  }

  get memoryBytes(): number {
    return this.memory.length;
  }

  /**
   * Applies the encoded checkpoint `data`, which must be checkpoint `checkpoint` + 1 (a base: any number
   * greater than `checkpoint`) of an epoch not older than the replica's (and, given the frame's header, the
   * one it names). A base replaces the state entirely. Returns the number applied; throws
   * FTVM_ERR_CHECKPOINT (nothing changed) otherwise.
   */
  apply(data: Uint8Array, frame?: { epoch: number; checkpoint: number }): number {
    const c = decodeCheckpoint(data);
    if (frame !== undefined && (frame.epoch !== c.epoch || frame.checkpoint !== c.checkpoint)) {
      refuse(`the frame says checkpoint ${frame.checkpoint} of epoch ${frame.epoch}, its data ${c.checkpoint} of epoch ${c.epoch}`);
    }
    if (c.epoch < this.epochFloor) refuse(`checkpoint ${c.checkpoint} of epoch ${c.epoch}, older than ${this.epochFloor}`);
    if (c.base) {
      if (c.checkpoint <= this.checkpoint) refuse(`base checkpoint ${c.checkpoint}, not after the applied ${this.checkpoint}`);
    } else {
      const expected = this.checkpoint + 1;
      if (c.checkpoint !== expected) refuse(`checkpoint ${c.checkpoint} out of order (expected ${expected})`);
    }
    // A base depends on nothing before it: it is checked and applied against an empty replica.
    const prev = c.base ? undefined : this.held;
    if (prev !== undefined && c.globals.length !== prev.globals.length) refuse(`${c.globals.length} globals, the previous checkpoint had ${prev.globals.length}`);
    if (c.disk === 'same' && prev?.disk === undefined) refuse('an unchanged disk, but the previous checkpoint had none');
    let memBytes: number;
    try {
      memBytes = deltaMemoryBytes(c.delta);
    } catch (err) {
      refuse(`memory delta: ${(err as Error).message}`, err);
    }
    if (memBytes % WASM_PAGE_BYTES !== 0) refuse(`memory of ${memBytes} bytes is not a whole number of wasm pages`);
    let memory: Uint8Array;
    try {
      // Checks the whole delta before writing a byte (delta.ts), so a refusal here changes nothing.
      const before = this.testOnlyTornApply ? new Uint8Array(c.base ? 0 : this.memory.length) : undefined;
      if (before !== undefined && !c.base) before.set(this.memory);
      memory = applyDelta(c.base ? new Uint8Array(0) : this.memory, c.delta);
      if (before !== undefined) tear(memory, before); // TEST ONLY
    } catch (err) {
      refuse(`memory delta: ${(err as Error).message}`, err);
    }
    // Nothing below can fail: the checkpoint is complete from here on.
    this.memory = memory;
    const disk = c.disk === 'same' ? prev?.disk : c.disk !== undefined ? new Uint8Array(c.disk) : undefined;
    this.held = {
      epoch: c.epoch,
      checkpoint: c.checkpoint,
      count: c.count,
      seq: c.seq,
      stepAgain: c.stepAgain,
      deliveredInStep: c.deliveredInStep,
      booted: c.booted,
      globals: c.globals,
      devices: c.devices,
      ...(c.resume !== undefined ? { resume: new Uint8Array(c.resume) } : {}),
      ...(c.threads !== undefined ? { threads: c.threads } : {}),
      ...(disk !== undefined ? { disk } : {}),
    };
    this.epochFloor = c.epoch;
    if (c.hash) this.lastHash = { n: c.checkpoint, hash: checkpointStateHash({ ...this.held, memory: this.memory }) };
    return c.checkpoint;
  }

  /** Checkpoints of epochs older than `epoch` are refused from now on (a new pair after a failover). */
  fence(epoch: number): void {
    if (epoch > this.epochFloor) this.epochFloor = epoch;
  }

  /**
   * The last complete checkpoint as a machine snapshot (to restore into a fresh machine and go live), or
   * undefined before the first. Memory is a copy: the replica may go on applying.
   */
  snapshot(): Snapshot | undefined {
    const h = this.held;
    if (h === undefined) return undefined;
    return {
      count: h.count,
      seq: h.seq,
      stepAgain: h.stepAgain,
      deliveredInStep: h.deliveredInStep,
      booted: h.booted,
      memory: new Uint8Array(this.memory),
      globals: [...h.globals],
      devices: structuredClone(h.devices),
      ...(h.resume !== undefined ? { resume: new Uint8Array(h.resume) } : {}),
      ...(h.threads !== undefined ? { threads: structuredClone(h.threads) } : {}),
      ...(h.disk !== undefined ? { disk: new Uint8Array(h.disk) } : {}),
    };
  }
}

/** TEST ONLY: puts back the old bytes (zeros past its end) of the last 4 KiB page that `memory` changed from `before`. */
function tear(memory: Uint8Array, before: Uint8Array): void {
  let last = memory.length - 1;
  while (last >= 0 && memory[last] === (before[last] ?? 0)) last--;
  if (last < 0) return;
  const a = last - (last % 4096);
  for (let i = a; i < Math.min(memory.length, a + 4096); i++) memory[i] = before[i] ?? 0;
}

/**
 * SHA-256 (hex) of a checkpoint's state: instruction count, seq, flags, globals, device state, unwound
 * stack, disk and memory. The primary hashes the snapshot it encodes, the backup the state it holds after
 * applying that checkpoint: equal hashes mean the backup holds exactly what the primary captured.
 */
export function checkpointStateHash(s: Pick<Snapshot, 'count' | 'seq' | 'stepAgain' | 'deliveredInStep' | 'booted' | 'globals' | 'devices' | 'memory' | 'resume' | 'disk' | 'threads'>): string {
  const h = createHash('sha256');
  const head = Buffer.alloc(24);
  head.writeBigUInt64LE(BigInt(s.count), 0);
  head.writeBigUInt64LE(BigInt(s.seq), 8);
  head.writeUInt32LE((s.stepAgain ? 1 : 0) | (s.deliveredInStep ? 2 : 0) | (s.booted ? 4 : 0), 16);
  head.writeUInt32LE(s.globals.length, 20);
  h.update(head);
  const g = Buffer.alloc(9 * s.globals.length);
  s.globals.forEach((v, i) => {
    if (typeof v === 'bigint') {
      g.writeUInt8(1, i * 9);
      g.writeBigUInt64LE(BigInt.asUintN(64, v), i * 9 + 1);
    } else g.writeDoubleLE(v, i * 9 + 1);
  });
  h.update(g);
  const lengths = Buffer.alloc(12);
  const dev = Buffer.from(JSON.stringify(s.devices), 'utf8');
  lengths.writeUInt32LE(dev.length, 0);
  lengths.writeUInt32LE(s.resume?.length ?? 0xffffffff, 4);
  lengths.writeUInt32LE(s.disk?.length ?? 0xffffffff, 8);
  h.update(lengths);
  h.update(dev);
  if (s.resume !== undefined) h.update(s.resume);
  if (s.disk !== undefined) h.update(s.disk);
  if (s.threads !== undefined) {
    // The other threads of a wasi-threads guest: tid, start_arg, globals, unwound stack.
    const t = s.threads;
    const w = new ByteWriter(64 + t.threads.reduce((a, x) => a + 32 + 9 * x.globals.length + x.stack.length, 0), MAX_CHECKPOINT_BYTES);
    w.varint(t.nextTid);
    w.varint(t.threads.length);
    for (const x of t.threads) {
      w.varint(x.tid);
      w.varint(x.startArg);
      writeGlobals(w, x.globals);
      w.varint(x.stack.length);
      w.bytes(x.stack);
    }
    h.update(w.finish());
  }
  h.update(s.memory);
  return h.digest('hex');
}

/**
 * Messages between the I/O thread and the vCPU worker.
 *
 * I/O thread → worker: binary messages in a SharedQueue (the worker polls it at budget checkpoints, so
 * input reaches a computing guest; and blocks on it when idle). Tag byte first:
 *   1 OPEN u32 conn · 2 DATA u32 conn, bytes · 3 CLOSE u32 conn     (record: client input)
 *   10 LOG batch bytes · 11 GRANT f64 n · 12 END_OF_LOG              (replay: the log)
 *   20 STOP · 21 STATE_HASH (record: log a state hash at the next idle point)
 *
 * Worker → I/O thread: batches in a second SharedQueue (the outbound queue: encodeBatchHead, the encoded
 * entries, then encodeOutputs), drained on a 'kick' message; every other WorkerEvent by postMessage,
 * marked at its place among the batches (see WorkerEvent). The worker's instruction count and entry
 * count are also published in a shared Float64Array for cheap status reads.
 *
 * Wake-ups: the I/O thread queues the messages of an event-loop turn without waking the worker and
 * notifies once at the end of the turn (setImmediate), and only while the worker waits (SharedQueue); a
 * replica that keeps receiving log polls instead (SharedQueue.wait's `poll`), so it is not woken at all.
 */
import type { ScheduledInput } from './env.js';
import { ByteReader, type ByteWriter } from '../log/codec.js';
import { assert } from '../util/errors.js';
import type { VmConfig } from '../log/recording.js';
import type { InstrumentedModule } from './instrumented.js';
import type { MessagePort } from 'node:worker_threads';
import type { HaltInfo, Snapshot } from './machine.js';

export const Tag = {
  OPEN: 1,
  DATA: 2,
  CLOSE: 3,
  LOG: 10,
  GRANT: 11,
  END_OF_LOG: 12,
  STOP: 20,
  STATE_HASH: 21,
  /** Replay: once the held log is consumed, go live (become a recording primary). */
  GO_LIVE: 22,
  /**
   * Record: take a snapshot at the next idle point (between steps), into the buffer waiting on the
   * snapshot port (posted there first, so the pause is a memcpy into touched pages).
   */
  SNAPSHOT: 23,
} as const;

export const STATUS_COUNT = 0;
export const STATUS_SEQ = 1;
export const STATUS_IDLE = 2;
/** The guest's linear memory size in bytes. */
export const STATUS_MEMORY_BYTES = 3;
/** Bytes the guest's files take on its virtual disk (0 without a disk). */
export const STATUS_DISK_BYTES = 4;
export const STATUS_SLOTS = 5;
/** Int32 control flags the I/O thread sets and the worker reads at checkpoints. */
export const CTRL_THROTTLE = 0;
/** Set by the worker while a replica waits for log with everything it holds consumed. */
export const CTRL_DRAINED = 1;
/**
 * Set by the worker when it posted a 'kick' for batches in the outbound queue; cleared by the I/O thread
 * before it drains that queue. Batches pushed while it is set need no message of their own.
 */
export const CTRL_OUT_KICK = 2;
export const CTRL_SLOTS = 3;

export type EnvSpec =
  | { kind: 'live' }
  | { kind: 'scripted'; inputs: ScheduledInput[]; seed: number };

export interface WorkerInit {
  mode: 'record' | 'replay';
  instrumented: InstrumentedModule;
  config: VmConfig;
  queue: SharedArrayBuffer;
  /** Worker → I/O thread: batches (encodeBatchHead + entries + outputs), drained on a 'kick'. */
  outQueue: SharedArrayBuffer;
  status: SharedArrayBuffer;
  control: SharedArrayBuffer;
  /** Record: post a progress batch (no entries) at most this often while the guest computes. */
  progressIntervalMs: number;
  env: EnvSpec;
  sliceUnits: number;
  /** Record: log a state hash at an idle point at most this often (0 = only on request / at the end). */
  stateHashIntervalMs: number;
  /** Record: where snapshot buffers arrive (read synchronously with receiveMessageOnPort). */
  snapshotPort: MessagePort;
  /** Replay: start from this snapshot (a joining backup) instead of booting the guest. */
  snapshot?: Snapshot;
  /** Record from a snapshot taken on another host: pending timers re-armed on this host's clock. */
  rearmTimers?: boolean;
  /** This replica's disk image file. */
  diskImagePath?: string;
  /**
   * Replay: the format of the log it is fed (1: a recording of format version 1–2). The queue's LOG
   * messages are always batches of the current codec format; only what the machine expects differs.
   */
  logFormat?: LogFormat;
  /** A wasi-threads guest (checkpoint mode): at most this many threads besides its main one. */
  maxThreads?: number;
}

/** Outputs cross the thread boundary as they are (structured clone). */
export type { WireOutput } from '../replication/messages.js';
import type { WireOutput } from '../replication/messages.js';
import type { LogFormat } from '../log/codec.js';

/**
 * Worker → I/O thread. Batches wait in the outbound queue (a SharedQueue; a message per batch:
 * encodeBatchHead, then the encoded entries, then encodeOutputs): one copy in and one out, no
 * transferred buffer and no message per batch; a 'kick' message says there is something to drain (one
 * per drain, not per batch: CTRL_OUT_KICK). Every other event is posted as a message numbered `k` and
 * marked in the outbound queue at its place among the batches (encodeEventMarker): the I/O thread
 * handles it when its drain reaches the marker (waiting there for the message if need be), so batches
 * and events are seen in the order the worker made them.
 */
export type WorkerEvent = (
  | { t: 'ready' }
  | { t: 'kick' }
  /**
   * Entries [firstSeq, firstSeq + count) as one encoded batch (`bytes[0, entriesBytes)`), then the
   * outputs they carry (encodeOutputs), in one transferred buffer: one copy and no structured clone of
   * objects per batch. The I/O thread's Vcpu turns it into a BatchEvent. `consumed`: record side of
   * WASI sockets, (conn, bytes) pairs of client input the guest consumed since the last batch
   * (per-connection backpressure).
   */
  | { t: 'batch'; firstSeq: number; count: number; bytes: Uint8Array; entriesBytes: number; instructionNumber: number; consumed?: number[] }
  /** The replica went live at instruction `count` after consuming `seq` entries. */
  | { t: 'live'; count: number; seq: number; maxConn: number; proxied: ProxiedAtGoLive[] }
  /**
   * Record: a snapshot taken at an idle point (its memory is in `buffer`, the SharedArrayBuffer the I/O
   * thread posted, or a fresh ArrayBuffer if the memory outgrew it). `pauseMs`: time the guest stood still.
   */
  | { t: 'snapshot'; state: Omit<Snapshot, 'memory'>; memoryBytes: number; buffer: SharedArrayBuffer | ArrayBuffer; pauseMs: number }
  /** Record: the machine cannot be snapshotted now (a WASI command's live stack). */
  | { t: 'snapshot-refused'; code: string; message: string }
  /** A state hash logged (record) or verified (replay) at instruction n. */
  | { t: 'hash'; n: number; hash: Uint8Array }
  | { t: 'done'; state: 'halted' | 'stopped' | 'starved'; count: number; halt: HaltInfo | null; finalHash: Uint8Array | null; midStep: boolean }
  | { t: 'error'; code: string; name: string; message: string; expected?: number; actual?: number; entryIndex?: number }
) & { /** The event's number (all but 'kick'), marked in the outbound queue. */ k?: number };

/**
 * A proxied connection as a replica that goes live knows it (docs/PROXY.md): owner, logged input, output
 * sent, and the tail of that output (offsets [outBytes - tail.length, outBytes)). `closed`: the guest
 * closed it (its last output may still be owed to the proxy).
 */
export interface ProxiedAtGoLive {
  conn: number;
  tag: string;
  inBytes: number;
  inEof: boolean;
  outBytes: number;
  tail: Uint8Array;
  closed: boolean;
}

const OUTPUT_KINDS = ['net', 'close', 'console'] as const;

/** Appends outputs to `w`: varint count, then per output varint seq, n, u8 kind, varint conn, fd, length, bytes. */
export function encodeOutputs(outputs: readonly WireOutput[], w: ByteWriter): void {
  w.varint(outputs.length);
  for (const o of outputs) {
    w.varint(o.seq);
    w.varint(o.n);
    w.u8(o.kind === 'net' ? 0 : o.kind === 'close' ? 1 : 2);
    w.varint(o.conn);
    w.varint(o.fd);
    w.varint(o.data.length);
    w.bytes(o.data);
  }
}

/** Reads what encodeOutputs wrote, from `buf[at..]`; the outputs' data are views into `buf`. */
export function decodeOutputs(buf: Uint8Array, at: number): WireOutput[] {
  const r = new ByteReader(buf.subarray(at));
  const count = r.varint();
  const out: WireOutput[] = [];
  for (let i = 0; i < count; i++) {
    const seq = r.varint();
    const n = r.varint();
    const kind = OUTPUT_KINDS[r.u8()];
    assert(kind !== undefined, 'vCPU batch: a known output kind');
    const conn = r.varint();
    const fd = r.varint();
    const data = r.bytesView(r.varint());
    out.push({ seq, n, kind, conn, fd, data });
  }
  assert(r.remaining === 0, 'vCPU batch: nothing after the outputs');
  return out;
}

/** Outbound queue messages: the first byte. */
export const OutKind = { BATCH: 1, EVENT: 2 } as const;

/**
 * Head of a batch in the outbound queue: u8 kind (BATCH), 3 bytes zero, f64 firstSeq, f64
 * instructionNumber, u32 count, u32 entriesBytes, u32 consumed pairs (0xffffffff: none given), then u32 × 2 each.
 */
export function encodeBatchHead(firstSeq: number, count: number, instructionNumber: number, entriesBytes: number, consumed: readonly number[] | undefined): Uint8Array {
  const pairs = consumed === undefined ? 0 : consumed.length / 2;
  const out = new Uint8Array(BATCH_HEAD_BYTES + 8 * pairs);
  const dv = new DataView(out.buffer);
  out[0] = OutKind.BATCH;
  dv.setFloat64(4, firstSeq, true);
  dv.setFloat64(12, instructionNumber, true);
  dv.setUint32(20, count, true);
  dv.setUint32(24, entriesBytes, true);
  dv.setUint32(28, consumed === undefined ? 0xffffffff : pairs, true);
  if (consumed !== undefined) for (let i = 0; i < consumed.length; i++) dv.setUint32(BATCH_HEAD_BYTES + 4 * i, consumed[i]!, true);
  return out;
}

export const BATCH_HEAD_BYTES = 32;

/** The place of posted event number `k` among the batches: u8 kind (EVENT), 3 bytes zero, f64 k. */
export function encodeEventMarker(k: number): Uint8Array {
  const out = new Uint8Array(12);
  out[0] = OutKind.EVENT;
  new DataView(out.buffer).setFloat64(4, k, true);
  return out;
}

export function decodeEventMarker(msg: Uint8Array): number {
  assert(msg.length === 12 && msg[0] === OutKind.EVENT, 'vCPU outbound queue: an event marker');
  return new DataView(msg.buffer, msg.byteOffset, msg.byteLength).getFloat64(4, true);
}

export interface DecodedBatchHead {
  firstSeq: number;
  instructionNumber: number;
  count: number;
  entriesBytes: number;
  consumed: number[] | undefined;
  /** Where the entries start in the message. */
  bodyAt: number;
}

export function decodeBatchHead(msg: Uint8Array): DecodedBatchHead {
  assert(msg.length >= BATCH_HEAD_BYTES && msg[0] === OutKind.BATCH, 'vCPU batch: a whole head');
  const dv = new DataView(msg.buffer, msg.byteOffset, msg.byteLength);
  const pairs = dv.getUint32(28, true);
  let consumed: number[] | undefined;
  let at = BATCH_HEAD_BYTES;
  if (pairs !== 0xffffffff) {
    consumed = new Array<number>(pairs * 2);
    for (let i = 0; i < pairs * 2; i++, at += 4) consumed[i] = dv.getUint32(at, true);
  }
  const entriesBytes = dv.getUint32(24, true);
  assert(at + entriesBytes <= msg.length, 'vCPU batch: its entries inside the message');
  return { firstSeq: dv.getFloat64(4, true), instructionNumber: dv.getFloat64(12, true), count: dv.getUint32(20, true), entriesBytes, consumed, bodyAt: at };
}

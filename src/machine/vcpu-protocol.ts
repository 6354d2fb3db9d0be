/**
 * Messages between the I/O thread and the vCPU worker.
 *
 * I/O thread → worker: binary messages in a SharedQueue (the worker polls it at budget checkpoints, so
 * input reaches a computing guest; and blocks on it when idle). Tag byte first:
 *   1 OPEN u32 conn · 2 DATA u32 conn, bytes · 3 CLOSE u32 conn     (record: client input)
 *   10 LOG batch bytes · 11 GRANT f64 n · 12 END_OF_LOG              (replay: the log)
 *   20 STOP · 21 STATE_HASH (record: log a state hash at the next idle point)
 *
 * Worker → I/O thread: postMessage of WorkerEvent objects (a batch: one transferred buffer holding the
 * encoded entries and then its outputs); the worker's instruction count and entry count are also
 * published in a shared Float64Array for cheap status reads.
 *
 * Wake-ups: the I/O thread queues the messages of an event-loop turn without waking the worker and
 * notifies once at the end of the turn (setImmediate), and only while the worker waits (SharedQueue).
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
export const CTRL_SLOTS = 2;

export type EnvSpec =
  | { kind: 'live' }
  | { kind: 'scripted'; inputs: ScheduledInput[]; seed: number };

export interface WorkerInit {
  mode: 'record' | 'replay';
  instrumented: InstrumentedModule;
  config: VmConfig;
  queue: SharedArrayBuffer;
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

export type WorkerEvent =
  | { t: 'ready' }
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
  | { t: 'error'; code: string; name: string; message: string; expected?: number; actual?: number; entryIndex?: number };

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

export function encodeInput(kind: 'open' | 'data' | 'close', conn: number, data?: Uint8Array): Uint8Array {
  const tag = kind === 'open' ? Tag.OPEN : kind === 'data' ? Tag.DATA : Tag.CLOSE;
  const out = new Uint8Array(5 + (data?.length ?? 0));
  out[0] = tag;
  new DataView(out.buffer).setUint32(1, conn, true);
  if (data) out.set(data, 5);
  return out;
}

export function encodeGrant(n: number): Uint8Array {
  const out = new Uint8Array(9);
  out[0] = Tag.GRANT;
  new DataView(out.buffer).setFloat64(1, n, true);
  return out;
}

export function encodeLog(batch: Uint8Array): Uint8Array {
  const out = new Uint8Array(1 + batch.length);
  out[0] = Tag.LOG;
  out.set(batch, 1);
  return out;
}

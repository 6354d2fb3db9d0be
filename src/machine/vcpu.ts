/**
 * The I/O-thread side of a vCPU: starts the worker that runs the guest, feeds it input or log through
 * the shared queue, and surfaces its batches of entries and outputs as events.
 */
import { EventEmitter } from 'node:events';
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { DeterminismViolation, FtvmError, assert, type FtvmErrorCode } from '../util/errors.js';
import { SharedQueue } from '../util/shared-queue.js';
import type { VmConfig } from '../log/recording.js';
import type { LogFormat } from '../log/codec.js';
import type { LoadedGuest } from './guest.js';
import { DEFAULT_SLICE_UNITS, type Snapshot } from './machine.js';
import {
  CTRL_DRAINED,
  CTRL_OUT_KICK,
  CTRL_SLOTS,
  CTRL_THROTTLE,
  STATUS_COUNT,
  STATUS_IDLE,
  STATUS_DISK_BYTES,
  STATUS_MEMORY_BYTES,
  STATUS_SEQ,
  STATUS_SLOTS,
  Tag,
  OutKind,
  decodeBatchHead,
  decodeEventMarker,
  decodeOutputs,
  type WireOutput,
  type EnvSpec,
  type WorkerEvent,
  type WorkerInit,
} from './vcpu-protocol.js';

/**
 * The vCPU worker's young generation (MiB). V8's default lets it grow to 3 × 16 MiB under load, which
 * it reaches only after minutes at a few thousand requests/s: RSS then climbs for that long and a
 * killed process takes longer to tear down (its sockets close after its memory is unmapped). The
 * worker's garbage is short-lived entry and batch objects, so a small young generation costs nothing
 * measurable (docs/PERFORMANCE.md, "Memory").
 */
export const VCPU_YOUNG_GENERATION_MB = 6;

/** The worker's outbound batch queue; a batch over a quarter of it travels in a message of its own. */
const OUT_QUEUE_BYTES = 1024 * 1024;

function concatBytes(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/** Entries [firstSeq, firstSeq + count) as one encoded batch, and the outputs they carry. */
export interface BatchEvent {
  t: 'batch';
  firstSeq: number;
  count: number;
  entries: Uint8Array;
  outputs: WireOutput[];
  instructionNumber: number;
  /** Record side of WASI sockets: (conn, bytes) pairs of client input the guest consumed since the last batch. */
  consumed?: number[];
}
export type DoneEvent = Extract<WorkerEvent, { t: 'done' }>;

export interface VcpuOptions {
  mode: 'record' | 'replay';
  guest: LoadedGuest;
  config: VmConfig;
  env?: EnvSpec;
  sliceUnits?: number;
  stateHashIntervalMs?: number;
  /** Shared input queue size; what does not fit waits in a bounded backlog here. */
  queueBytes?: number;
  backlogMaxBytes?: number;
  /** Record: progress notes (instruction number, no entries) at most this often while computing. */
  progressIntervalMs?: number;
  /** Native stack for the worker; must exceed what maxCallDepth guest frames need. */
  stackSizeMb?: number;
  /** Replay: start from this snapshot (a backup joining a running primary) instead of booting. */
  snapshot?: Snapshot;
  /** Record from `snapshot` taken on another host (checkpoint mode going live): re-arm pending timers on this host's clock. */
  rearmTimers?: boolean;
  /** This replica's disk image file (VMs with a disk). */
  diskImagePath?: string;
  /** Replay of an old recording: its log format (default: the current one). */
  logFormat?: LogFormat;
  /** A wasi-threads guest (checkpoint mode): at most this many threads besides its main one. */
  maxThreads?: number;
}

export type SnapshotEvent = Extract<WorkerEvent, { t: 'snapshot' }>;

/** A snapshot of a running vCPU and how long the guest stood still for it. */
export interface TakenSnapshot {
  snapshot: Snapshot;
  pauseMs: number;
}

/**
 * Events: 'batch' (BatchEvent), 'done' (DoneEvent), 'error' (Error; a DeterminismViolation keeps its
 * instruction numbers). `done` resolves when the worker finishes; it rejects on error.
 */
export class Vcpu extends EventEmitter {
  private readonly worker: Worker;
  private readonly queue: SharedQueue;
  /** Batches from the worker (vcpu-protocol.ts, 'kick'). */
  private readonly outQueue: SharedQueue;
  private readonly status: Float64Array;
  private readonly control: Int32Array;
  private backlog: Uint8Array[] = [];
  private backlogBytes = 0;
  private readonly backlogMaxBytes: number;
  private drainTimer: NodeJS.Timeout | undefined;
  private exited = false;
  readonly done: Promise<DoneEvent>;
  private readonly snapshotPort: MessagePort;
  /** Reused between snapshots: touched once, so copying into it costs no page faults. */
  private snapshotBuffer: SharedArrayBuffer | undefined;
  /** Bumped with every new snapshot buffer (the worker copies only dirty pages into one it filled before). */
  private snapshotBufferGen = 0;
  /** The snapshot being taken: resolved by the worker's 'snapshot' event, rejected if the guest ends first. */
  private snapshotWaiter: { resolve: (ev: SnapshotEvent) => void; reject: (err: Error) => void } | undefined;
  private snapshotting = false;
  private static taken(ev: SnapshotEvent): TakenSnapshot {
    return { snapshot: { ...ev.state, memory: new Uint8Array(ev.buffer, 0, ev.memoryBytes) }, pauseMs: ev.pauseMs };
  }

  constructor(opts: VcpuOptions) {
    super();
    this.queue = new SharedQueue(opts.queueBytes ?? 4 * 1024 * 1024);
    this.outQueue = new SharedQueue(OUT_QUEUE_BYTES);
    const statusSab = new SharedArrayBuffer(8 * STATUS_SLOTS);
    this.status = new Float64Array(statusSab);
    const controlSab = new SharedArrayBuffer(4 * CTRL_SLOTS);
    this.control = new Int32Array(controlSab);
    this.backlogMaxBytes = opts.backlogMaxBytes ?? 64 * 1024 * 1024;
    const channel = new MessageChannel();
    this.snapshotPort = channel.port1;
    const init: WorkerInit = {
      snapshotPort: channel.port2,
      ...(opts.snapshot ? { snapshot: opts.snapshot } : {}),
      ...(opts.rearmTimers === true ? { rearmTimers: true } : {}),
      ...(opts.diskImagePath !== undefined ? { diskImagePath: opts.diskImagePath } : {}),
      ...(opts.logFormat !== undefined ? { logFormat: opts.logFormat } : {}),
      ...(opts.maxThreads !== undefined ? { maxThreads: opts.maxThreads } : {}),
      mode: opts.mode,
      instrumented: opts.guest.instrumented,
      config: opts.config,
      queue: this.queue.sab,
      outQueue: this.outQueue.sab,
      status: statusSab,
      control: controlSab,
      progressIntervalMs: opts.progressIntervalMs ?? 2,
      env: opts.env ?? { kind: 'live' },
      sliceUnits: opts.sliceUnits ?? DEFAULT_SLICE_UNITS,
      stateHashIntervalMs: opts.stateHashIntervalMs ?? 0,
    };
    this.worker = new Worker(new URL('./vcpu-worker.js', import.meta.url), {
      workerData: init,
      transferList: [channel.port2],
      resourceLimits: { stackSizeMb: opts.stackSizeMb ?? 64, maxYoungGenerationSizeMb: VCPU_YOUNG_GENERATION_MB },
    });
    this.done = new Promise<DoneEvent>((resolve, reject) => {
      this.resolveDone = resolve;
      this.rejectDone = reject;
      this.worker.on('message', (ev: WorkerEvent) => {
        if (ev.t === 'kick') {
          this.drainOut(false);
          return;
        }
        // Its place among the batches is the marker the worker queued for it (vcpu-protocol.ts).
        assert(ev.k !== undefined, `vCPU worker event '${ev.t}' carries its number`);
        this.arrived.set(ev.k, ev);
        this.drainOut(false);
      });
      this.worker.on('error', (err) => {
        this.drainOut(true);
        this.emit('vcpu-error', err);
        reject(err);
      });
      this.worker.on('exit', (code) => {
        this.drainOut(true); // what the worker queued before it ended
        this.exited = true;
        if (this.drainTimer) clearInterval(this.drainTimer);
        if (code !== 0) reject(new FtvmError('FTVM_ERR_RESOURCE_EXHAUSTED', `vCPU worker exited with code ${code}`));
      });
    });
    this.done.catch(() => undefined); // observed through events or by awaiting `done`
    // A snapshot still being taken when the guest ends never comes.
    const failSnapshot = (err: Error): void => {
      const w = this.snapshotWaiter;
      this.snapshotWaiter = undefined;
      w?.reject(err);
    };
    this.done.then(
      () => failSnapshot(new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'the guest stopped before the snapshot')),
      (err: unknown) => failSnapshot(err as Error),
    );
  }

  private resolveDone!: (ev: DoneEvent) => void;
  private rejectDone!: (err: Error) => void;
  /** Events posted by the worker, by number, until their marker in the outbound queue is reached. */
  private readonly arrived = new Map<number, WorkerEvent>();
  /** The marker reached whose event has not arrived yet: draining stops there until it does. */
  private waitingForEvent: number | undefined;

  /**
   * Handles what the worker queued, in its order: batches and the markers of posted events. `final`
   * (the worker died without posting what it marked): markers whose event never came are passed over.
   */
  private drainOut(final: boolean): void {
    Atomics.store(this.control, CTRL_OUT_KICK, 0); // before draining: a batch queued after this kicks again
    let drained = false;
    for (;;) {
      if (this.waitingForEvent !== undefined) {
        const ev = this.arrived.get(this.waitingForEvent);
        if (ev === undefined && !final) break;
        this.arrived.delete(this.waitingForEvent);
        this.waitingForEvent = undefined;
        if (ev !== undefined) this.onWorkerEvent(ev);
        continue;
      }
      const msg = this.outQueue.pop();
      if (msg === undefined) break;
      if (msg[0] === OutKind.EVENT) {
        this.waitingForEvent = decodeEventMarker(msg);
        continue;
      }
      drained = true;
      const h = decodeBatchHead(msg);
      const entriesEnd = h.bodyAt + h.entriesBytes;
      const b: BatchEvent = {
        t: 'batch',
        firstSeq: h.firstSeq,
        count: h.count,
        entries: msg.subarray(h.bodyAt, entriesEnd),
        outputs: decodeOutputs(msg, entriesEnd),
        instructionNumber: h.instructionNumber,
        ...(h.consumed !== undefined ? { consumed: h.consumed } : {}),
      };
      this.emit('batch', b);
    }
    if (drained) this.drainBacklog();
  }

  private onWorkerEvent(ev: WorkerEvent): void {
    if (ev.t === 'batch') {
      const b: BatchEvent = {
        t: 'batch',
        firstSeq: ev.firstSeq,
        count: ev.count,
        entries: ev.bytes.subarray(0, ev.entriesBytes),
        outputs: decodeOutputs(ev.bytes, ev.entriesBytes),
        instructionNumber: ev.instructionNumber,
        ...(ev.consumed !== undefined ? { consumed: ev.consumed } : {}),
      };
      this.emit('batch', b);
      this.drainBacklog();
    } else if (ev.t === 'hash') {
      this.emit('hash', ev);
    } else if (ev.t === 'snapshot') {
      const w = this.snapshotWaiter;
      this.snapshotWaiter = undefined;
      w?.resolve(ev);
    } else if (ev.t === 'snapshot-refused') {
      const w = this.snapshotWaiter;
      this.snapshotWaiter = undefined;
      w?.reject(new FtvmError((ev.code as FtvmErrorCode) ?? 'FTVM_ERR_SNAPSHOT', ev.message));
    } else if (ev.t === 'live') {
      this.emit('live', ev);
    } else if (ev.t === 'done') {
      this.emit('done', ev);
      this.resolveDone(ev);
    } else if (ev.t === 'error') {
      const err =
        ev.name === 'DeterminismViolation'
          ? Object.assign(new DeterminismViolation('', ev.expected ?? -1, ev.actual ?? -1, ev.entryIndex ?? -1), { message: ev.message })
          : new FtvmError((ev.code as FtvmErrorCode) ?? 'FTVM_ERR_BAD_ARGUMENT', ev.message);
      this.emit('vcpu-error', err);
      this.rejectDone(err);
    }
  }

  /** The guest's instruction number as the worker last published it. */
  get count(): number {
    return this.status[STATUS_COUNT]!;
  }

  get entries(): number {
    return this.status[STATUS_SEQ]!;
  }

  get idle(): boolean {
    return this.status[STATUS_IDLE] === 1;
  }

  /** Bytes waiting to enter the shared queue: drivers stop reading sockets while this is high. */
  get backlog_bytes(): number {
    return this.backlogBytes;
  }

  /**
   * Enqueues one message (`head`, then `body` if given) for the worker. The worker is woken once per
   * event-loop turn (setImmediate), not once per message: a burst of client input or log frames read in
   * one turn reaches the guest together, so it runs them in one step and logs one batch.
   */
  private send(head: Uint8Array, body?: Uint8Array): void {
    if (this.exited) return;
    if (this.backlog.length === 0 && this.queue.push(head, false, body)) {
      this.scheduleNotify();
      return;
    }
    const msg = body === undefined ? head.slice() : concatBytes(head, body);
    if (this.backlogBytes + msg.length > this.backlogMaxBytes) {
      throw new FtvmError('FTVM_ERR_RESOURCE_EXHAUSTED', `vCPU input backlog would exceed ${this.backlogMaxBytes} bytes; the driver must apply backpressure`);
    }
    this.backlog.push(msg);
    this.backlogBytes += msg.length;
    this.drainTimer ??= setInterval(() => this.drainBacklog(), 1);
  }

  private notifyScheduled = false;
  private readonly notifyNow = (): void => {
    this.notifyScheduled = false;
    this.queue.notify();
  };

  private scheduleNotify(): void {
    if (this.notifyScheduled) return;
    this.notifyScheduled = true;
    setImmediate(this.notifyNow);
  }

  private drainBacklog(): void {
    let pushed = false;
    while (this.backlog.length > 0) {
      const m = this.backlog[0]!;
      if (!this.queue.push(m, false)) break;
      pushed = true;
      this.backlog.shift();
      this.backlogBytes -= m.length;
    }
    if (pushed) this.queue.notify();
    if (this.backlog.length > 0) return;
    if (this.drainTimer) {
      clearInterval(this.drainTimer);
      this.drainTimer = undefined;
    }
  }

  /** Reused header of input messages (tag, u32 connection id): `send` copies it into the queue at once. */
  private readonly inputHead = new Uint8Array(5);

  input(kind: 'open' | 'data' | 'close', conn: number, data?: Uint8Array): void {
    const max = this.queue.capacity / 4;
    if (data && data.length > max) {
      for (let off = 0; off < data.length; off += max) this.input(kind, conn, data.subarray(off, off + max));
      return;
    }
    const h = this.inputHead;
    h[0] = kind === 'open' ? Tag.OPEN : kind === 'data' ? Tag.DATA : Tag.CLOSE;
    h[1] = conn & 0xff;
    h[2] = (conn >>> 8) & 0xff;
    h[3] = (conn >>> 16) & 0xff;
    h[4] = (conn >>> 24) & 0xff;
    this.send(h, data);
  }

  private static readonly LOG_HEAD = Uint8Array.of(Tag.LOG);

  /** Replay: an encoded batch of entries (codec.ts). */
  feedLog(batch: Uint8Array): void {
    this.send(Vcpu.LOG_HEAD, batch);
  }

  /** Replay: the primary has reached instruction `n`; the replica may run up to it. */
  grant(n: number): void {
    this.grantView.setFloat64(1, n, true); // GRANT, f64 n: a reused header (`send` copies it into the queue)
    this.send(this.grantHead);
  }

  private readonly grantHead = Uint8Array.of(Tag.GRANT, 0, 0, 0, 0, 0, 0, 0, 0);
  private readonly grantView = new DataView(this.grantHead.buffer);

  endOfLog(): void {
    this.send(Uint8Array.of(Tag.END_OF_LOG));
    this.queue.wake(); // a polling replica is not woken by pushes
  }

  /** Replay: true while the replica waits for log with every entry it was given consumed. */
  get drained(): boolean {
    return Atomics.load(this.control, CTRL_DRAINED) === 1;
  }

  /** Replay: once every held entry is consumed, become a recording primary ('live' event). */
  goLive(): void {
    this.send(Uint8Array.of(Tag.GO_LIVE));
    this.queue.wake(); // at once, even while the replica polls (a failover waits for it)
  }

  /** Execution-lag control: hold the guest at its next budget checkpoint until released. */
  setThrottle(on: boolean): void {
    Atomics.store(this.control, CTRL_THROTTLE, on ? 1 : 0);
    Atomics.notify(this.control, CTRL_THROTTLE);
  }

  /** The guest's linear memory size as the worker last published it. */
  get memoryBytes(): number {
    return this.status[STATUS_MEMORY_BYTES]!;
  }

  /** Bytes of the guest's files on its virtual disk (0 without one). */
  get diskBytes(): number {
    return this.status[STATUS_DISK_BYTES]!;
  }

  /**
   * Record: a snapshot at the guest's next idle point, while it keeps running afterwards. The buffer is
   * prepared first, page by page across event-loop turns (a fresh 64 MiB buffer costs ~250 ms of page
   * faults), so the guest stands still only for a memcpy. Entries logged before the snapshot arrive as
   * 'batch' events before it; `onTaken` runs synchronously where the snapshot arrives, before any batch
   * logged after it (a driver marks the snapshot's place in the log there).
   */
  async takeSnapshot(onTaken?: (t: TakenSnapshot) => void, headroomBytes = 16 * 1024 * 1024): Promise<TakenSnapshot> {
    if (this.snapshotting) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'a snapshot is already being taken');
    this.snapshotting = true;
    try {
      return await this.snapshotOnce(onTaken, headroomBytes);
    } finally {
      this.snapshotting = false;
    }
  }

  private async snapshotOnce(onTaken: ((t: TakenSnapshot) => void) | undefined, headroomBytes: number): Promise<TakenSnapshot> {
    if (this.exited) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'the guest stopped before the snapshot');
    const need = this.memoryBytes + headroomBytes;
    if (this.snapshotBuffer === undefined || this.snapshotBuffer.byteLength < this.memoryBytes) {
      const sab = new SharedArrayBuffer(need);
      const bytes = new Uint8Array(sab);
      const stepBytes = 1024 * 1024; // ~4 ms of page faults per event-loop turn
      for (let off = 0; off < bytes.length; off += stepBytes) {
        bytes.fill(1, off, Math.min(bytes.length, off + stepBytes)); // touch (non-zero, so it is written)
        await new Promise((r) => setImmediate(r));
      }
      this.snapshotBuffer = sab;
      this.snapshotBufferGen++;
    }
    return new Promise<TakenSnapshot>((resolve, reject) => {
      this.snapshotWaiter = {
        resolve: (ev) => {
          const t = Vcpu.taken(ev);
          onTaken?.(t);
          resolve(t);
        },
        reject,
      };
      this.snapshotPort.postMessage({ buffer: this.snapshotBuffer, gen: this.snapshotBufferGen });
      this.send(Uint8Array.of(Tag.SNAPSHOT));
      this.queue.wake();
    });
  }

  requestStateHash(): void {
    this.send(Uint8Array.of(Tag.STATE_HASH));
  }

  /** Asks the worker to stop at its next idle point (record) or when it next waits for log (replay). */
  stop(): void {
    this.send(Uint8Array.of(Tag.STOP));
    this.queue.wake();
  }

  async terminate(): Promise<void> {
    if (this.drainTimer) clearInterval(this.drainTimer);
    await this.worker.terminate();
  }
}

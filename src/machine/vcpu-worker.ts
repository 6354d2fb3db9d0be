/**
 * The vCPU worker: runs one Machine on its own thread, so a guest computing for seconds never delays
 * the I/O thread (heartbeats, sockets, the arbiter). See vcpu-protocol.ts for the messages.
 */
import { parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads';
import { ByteWriter, LOG_FORMAT, decodeBatch, encodeBatchInto, type BatchCodingState } from '../log/codec.js';
import type { LogEntry } from '../log/entry.js';
import { DeterminismViolation, FtvmError } from '../util/errors.js';
import { SharedQueue } from '../util/shared-queue.js';
import { ArraySource, RealClockRandom, ScriptedEnv } from './env.js';
import { ProxyTails } from './proxy-tails.js';
import { Machine, type GuestOutput, type NicInput, type RecordEnv, type ReplaySource } from './machine.js';
import { CTRL_DRAINED, CTRL_OUT_KICK, CTRL_SLOTS, CTRL_THROTTLE, STATUS_COUNT, STATUS_IDLE, STATUS_DISK_BYTES, STATUS_MEMORY_BYTES, STATUS_SEQ, STATUS_SLOTS, Tag, encodeBatchHead, encodeEventMarker, encodeOutputs, type WireOutput, type WorkerEvent, type WorkerInit, type ProxiedAtGoLive } from './vcpu-protocol.js';

const init = workerData as WorkerInit;
const port = parentPort!;
const outQueue = new SharedQueue(init.outQueue);
const queue = new SharedQueue(init.queue);
const status = new Float64Array(init.status, 0, STATUS_SLOTS);
const control = new Int32Array(init.control, 0, CTRL_SLOTS);
const sleeper = new Int32Array(new SharedArrayBuffer(4));
let eventSeq = 0;
/** Posts an event, marked at its place among the queued batches (vcpu-protocol.ts). */
const post = (e: WorkerEvent, transfer: ArrayBuffer[] = []): void => {
  e.k = ++eventSeq;
  pushOutRaw(encodeEventMarker(e.k));
  port.postMessage(e, transfer);
};

// ---------------------------------------------------------------- outbound batching
let pendingEntries: LogEntry[] = [];
let pendingOutputs: WireOutput[] = [];
let firstSeq = 0;
const writer = new ByteWriter(64 * 1024);
let machine: Machine | undefined;
/**
 * The log's coding state (format 2 codes each batch against the log before it): the encoder's while
 * recording, the decoder's while replaying; from the snapshot this vCPU starts from.
 */
const coding: BatchCodingState = { n: init.snapshot?.devices.logCoding?.n ?? 0, conn: init.snapshot?.devices.logCoding?.conn ?? 0 };

/** Batches up to this size go through the outbound queue; larger ones in a message of their own. */
const OUT_BATCH_MAX_BYTES = outQueue.capacity / 4;

/**
 * Queues a batch for the I/O thread and kicks it unless a kick is already pending. A full queue means
 * the I/O thread is far behind: the guest waits here (backpressure) until it has drained some.
 */
function pushOut(head: Uint8Array, body: Uint8Array): void {
  pushOutRaw(head, body);
  if (Atomics.exchange(control, CTRL_OUT_KICK, 1) === 0) port.postMessage({ t: 'kick' } satisfies WorkerEvent);
}

function pushOutRaw(head: Uint8Array, body?: Uint8Array): void {
  while (!outQueue.push(head, false, body)) {
    Atomics.store(control, CTRL_OUT_KICK, 1);
    port.postMessage({ t: 'kick' } satisfies WorkerEvent);
    Atomics.wait(sleeper, 0, 0, 1);
  }
}

let lastPostMs = 0;
let lastPostedCount = -1;

/** Posts pending entries and outputs; with `progress`, also a bare progress note when the count moved. */
function flush(progress = false): void {
  const now = performance.now();
  // Every output of the batch gets an entry after it (its OUT_DIGEST): the output rule releases it with
  // this batch's ACK. Batches are cut only at idle points and checkpoints, where a replica can check it.
  if (machine?.mode === 'record') machine.sealOutputs();
  const consumed = machine?.inbox.takeConsumed();
  if (pendingEntries.length === 0 && pendingOutputs.length === 0 && consumed === undefined) {
    if (!progress || !machine || machine.count === lastPostedCount || now - lastPostMs < init.progressIntervalMs) return;
  }
  lastPostMs = now;
  lastPostedCount = machine?.count ?? 0;
  writer.reset();
  encodeBatchInto(pendingEntries, writer, LOG_FORMAT, coding);
  const entriesBytes = writer.length;
  encodeOutputs(pendingOutputs, writer);
  const instructionNumber = machine?.count ?? 0;
  if (writer.length <= OUT_BATCH_MAX_BYTES) {
    pushOut(encodeBatchHead(firstSeq, pendingEntries.length, instructionNumber, entriesBytes, consumed), writer.bytesView());
  } else {
    // Too large for the outbound queue: moved in a message of its own (its marker keeps its place
    // among the queued batches).
    const bytes = writer.finish();
    post({ t: 'batch', firstSeq, count: pendingEntries.length, bytes, entriesBytes, instructionNumber, ...(consumed !== undefined ? { consumed } : {}) }, [bytes.buffer as ArrayBuffer]);
  }
  firstSeq += pendingEntries.length;
  pendingEntries = [];
  pendingOutputs = [];
}

function publish(idle: boolean): void {
  if (!machine) return;
  status[STATUS_COUNT] = machine.count;
  status[STATUS_SEQ] = machine.entriesSeen;
  status[STATUS_IDLE] = idle ? 1 : 0;
  status[STATUS_MEMORY_BYTES] = machine.memoryBytes;
  status[STATUS_DISK_BYTES] = machine.disk?.usedBytes ?? 0;
}

// ---------------------------------------------------------------- inbound
let stopRequested = false;
let hashRequested = false;
const inputs: NicInput[] = [];
const log: LogEntry[] = [];
let logHead = 0;
let grant = 0;
let endOfLog = false;
let goLiveRequested = false;
/**
 * Replay: a replica that received log or a grant within the last REPLAY_POLL_WINDOW_MS polls its queue
 * every REPLAY_POLL_MS instead of blocking until woken, so the I/O thread feeds it without a futex wake
 * per batch (SharedQueue's polling wait). The replica's lag behind the primary grows by at most
 * REPLAY_POLL_MS; clients never wait for it (the backup acknowledges log on receipt, not on replay).
 */
const REPLAY_POLL_MS = 2;
const REPLAY_POLL_WINDOW_MS = 50;
let lastLogMs = -Infinity;
let snapshotRequested = false;
/** The snapshot buffer (by generation) that holds memory as of the last snapshot, and how much of it. */
let intoSynced: { gen: number; bytes: number } | undefined;

/** At an idle point: copy the machine's state into the buffer the I/O thread posted, and post it. */
function takeSnapshot(): void {
  snapshotRequested = false;
  if (!machine || machine.halted) return;
  flush(); // every entry before the snapshot reaches the I/O thread first
  const msg = receiveMessageOnPort(init.snapshotPort)?.message as { buffer: SharedArrayBuffer; gen?: number } | undefined;
  const t0 = performance.now();
  const into = msg ? new Uint8Array(msg.buffer) : undefined;
  // The buffer of generation `gen` still holds memory as of this worker's last snapshot into it (only this
  // worker writes it): with the store barrier, only the pages written since are copied.
  const holds = msg !== undefined && msg.gen !== undefined && intoSynced !== undefined && intoSynced.gen === msg.gen ? intoSynced.bytes : 0;
  intoSynced = undefined;
  let snap: ReturnType<Machine['snapshot']>;
  try {
    snap = machine.snapshot(into, holds);
  } catch (err) {
    if (!(err instanceof FtvmError)) throw err;
    post({ t: 'snapshot-refused', code: err.code, message: err.message });
    return;
  }
  if (msg?.gen !== undefined && into !== undefined && snap.memory.buffer === into.buffer) intoSynced = { gen: msg.gen, bytes: snap.memory.length };
  const pauseMs = performance.now() - t0;
  const { memory, ...state } = snap;
  const shared = into !== undefined && memory.buffer === into.buffer;
  const buffer = shared ? msg!.buffer : (memory.buffer as ArrayBuffer);
  // The disk's serialization is a fresh buffer of its own: moved, not copied (the guest waits for this post).
  const transfer = shared ? [] : [buffer as ArrayBuffer];
  if (state.disk !== undefined && state.disk.byteOffset === 0 && state.disk.byteLength === state.disk.buffer.byteLength) transfer.push(state.disk.buffer as ArrayBuffer);
  post({ t: 'snapshot', state, memoryBytes: memory.length, buffer, pauseMs }, transfer);
}

/** Replay: the recent output of proxied connections, handed to the node at go-live (docs/PROXY.md). */
const replayTails = new ProxyTails();

function proxiedAtGoLive(): ProxiedAtGoLive[] {
  const out: ProxiedAtGoLive[] = [];
  for (const [conn, p] of machine!.devices.proxied) {
    const t = replayTails.get(conn);
    out.push({ conn, tag: p.tag, inBytes: p.inBytes, inEof: p.inEof, outBytes: p.outBytes, tail: t?.bytes() ?? new Uint8Array(0), closed: false });
  }
  for (const [conn, t] of replayTails.closedTails()) out.push({ conn, tag: t.tag, inBytes: t.inBytes, inEof: true, outBytes: t.outBytes, tail: t.bytes(), closed: true });
  return out;
}

/** An input message's u32 connection id (bytes 1–4, little-endian): read from the bytes, no DataView per message. */
const connOf = (msg: Uint8Array): number => (msg[1]! | (msg[2]! << 8) | (msg[3]! << 16) | (msg[4]! << 24)) >>> 0;

function drainQueue(): void {
  for (;;) {
    const msg = queue.pop();
    if (msg === undefined) return;
    const tag = msg[0];
    switch (tag) {
      case Tag.OPEN:
        inputs.push(msg.length > 5 ? { kind: 'open', conn: connOf(msg), data: msg.slice(5) } : { kind: 'open', conn: connOf(msg) });
        break;
      case Tag.DATA:
        inputs.push({ kind: 'data', conn: connOf(msg), data: msg.subarray(5) });
        break;
      case Tag.CLOSE:
        inputs.push({ kind: 'close', conn: connOf(msg) });
        break;
      case Tag.LOG:
        for (const e of decodeBatch(msg.subarray(1), undefined, LOG_FORMAT, coding)) log.push(e);
        lastLogMs = performance.now();
        break;
      case Tag.GRANT:
        grant = Math.max(grant, new DataView(msg.buffer, msg.byteOffset, msg.byteLength).getFloat64(1, true));
        lastLogMs = performance.now();
        break;
      case Tag.END_OF_LOG:
        endOfLog = true;
        break;
      case Tag.STOP:
        stopRequested = true;
        break;
      case Tag.STATE_HASH:
        hashRequested = true;
        break;
      case Tag.GO_LIVE:
        goLiveRequested = true;
        break;
      case Tag.SNAPSHOT:
        snapshotRequested = true;
        break;
      default:
        throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `vCPU queue: unknown tag ${tag}`);
    }
  }
}

const threadRequests = (): boolean => machine?.threads?.hasRequests() === true;

/** Live record environment: real clocks, OS randomness, input from the shared queue. */
class LiveEnv extends RealClockRandom implements RecordEnv {
  readonly sliceUnits = init.sliceUnits;
  private lastHashMs = performance.now();
  takeInputs(_count: number, max: number): NicInput[] {
    drainQueue();
    if (Atomics.load(control, CTRL_THROTTLE) === 1) return []; // lag control: no new work until released
    return inputs.splice(0, Math.min(max, inputs.length));
  }
  waitForWork(_count: number, deadlineMs: number | undefined): boolean {
    this.maybeHash();
    publish(true);
    flush();
    drainQueue();
    if (stopRequested) return false;
    if (Atomics.load(control, CTRL_THROTTLE) === 1) {
      Atomics.wait(control, CTRL_THROTTLE, 1, 5);
      return true;
    }
    if (inputs.length > 0 || hashRequested) return true;
    if (machine?.threads?.hasRequests() === true) return true; // a guest thread's call waits for this thread
    if (snapshotRequested) {
      // A WASI command blocked in a call unwinds out of it first (Asyncify); betweenSteps then takes
      // the snapshot and the guest rewinds into the call. One that cannot unwind refuses the snapshot.
      if (!machine?.requestUnwind()) takeSnapshot();
      return true;
    }
    const wait = deadlineMs === undefined ? 1000 : Math.max(0, deadlineMs - this.nowMs());
    queue.wait(wait, threadRequests);
    drainQueue();
    return !stopRequested;
  }
  betweenSteps(): void {
    if (snapshotRequested) takeSnapshot();
  }
  pause(ms: number): void {
    Atomics.wait(sleeper, 0, 0, ms); // nobody notifies it: a plain bounded sleep
    drainQueue();
  }
  atCheckpoint(): void {
    publish(false);
    flush(true);
    // Execution-lag control: the I/O thread asks the guest to wait here until the backup catches up.
    while (Atomics.load(control, CTRL_THROTTLE) === 1 && !stopRequested) {
      Atomics.wait(control, CTRL_THROTTLE, 1, 5);
      flush(true);
      drainQueue();
    }
  }
  private maybeHash(): void {
    const now = performance.now();
    const due = init.stateHashIntervalMs > 0 && now - this.lastHashMs >= init.stateHashIntervalMs;
    if ((hashRequested || due) && machine && !machine.halted) {
      machine.logStateHash();
      hashRequested = false;
      this.lastHashMs = now;
    }
  }
}

/** Live replay source: the log arrives through the shared queue. */
class LiveSource implements ReplaySource {
  atCheckpoint(): void {
    publish(false);
  }
  atIdle(): void {
    publish(true);
    if (snapshotRequested) takeSnapshot(); // a backup's continuous recording starts a segment here
  }
  peek(i: number): LogEntry | undefined {
    if (logHead + i >= log.length) drainQueue();
    return log[logHead + i];
  }
  shift(): LogEntry | undefined {
    const e = log[logHead++];
    if (logHead > 4096 && logHead * 2 > log.length) {
      log.splice(0, logHead);
      logHead = 0;
    }
    return e;
  }
  grantedUpTo(): number {
    return grant;
  }
  waitForMore(): boolean {
    publish(machine?.isIdle ?? false);
    flush();
    const have = log.length - logHead;
    const g = grant;
    Atomics.store(control, CTRL_DRAINED, have === 0 ? 1 : 0);
    try {
      for (;;) {
        drainQueue();
        if (snapshotRequested && machine?.isIdle === true) takeSnapshot();
        if (log.length - logHead > have || grant > g) return true;
        if (endOfLog || stopRequested || goLiveRequested) return false;
        // While log keeps coming, poll (the I/O thread then feeds without waking this thread: no futex
        // wake per batch); after REPLAY_POLL_WINDOW_MS without log, block until woken as before.
        const polling = performance.now() - lastLogMs < REPLAY_POLL_WINDOW_MS;
        queue.wait(polling ? REPLAY_POLL_MS : have === 0 ? 5 : 1000, undefined, polling);
      }
    } finally {
      Atomics.store(control, CTRL_DRAINED, 0);
    }
  }
  takeOver(): RecordEnv | undefined {
    if (!goLiveRequested || stopRequested || log.length - logHead > 0) return undefined;
    const env = new LiveEnv();
    post({ t: 'live', count: machine!.count, seq: machine!.entriesSeen, maxConn: machine!.devices.maxConn, proxied: proxiedAtGoLive() });
    firstSeq = machine!.entriesSeen;
    // Every held entry is consumed: the log this replica continues is coded on from its last one.
    coding.n = machine!.devices.logN;
    coding.conn = machine!.devices.logConn;
    return env;
  }
}

function main(): void {
  const sink = {
    entry(e: LogEntry, seq: number): void {
      if (machine?.mode === 'record') {
        if (pendingEntries.length === 0) firstSeq = seq;
        pendingEntries.push(e);
      }
    },
    output(o: GuestOutput): void {
      if (machine?.mode === 'record') pendingOutputs.push(o);
      else replayTails.output(o.kind, o.conn, o.data, machine?.devices.proxied.get(o.conn));
    },
    // Replay keeps only proxied connections' output (their tails): the others' bytes are only checked.
    replayBorrowsOutputs: true,
    stateHash(n: number, hash: Uint8Array): void {
      if (machine?.mode === 'record') flush();
      post({ t: 'hash', n, hash });
    },
  };
  let env: RecordEnv | undefined;
  let source: ReplaySource | undefined;
  let scripted: ScriptedEnv | undefined;
  if (init.mode === 'record') {
    if (init.env.kind === 'scripted') {
      scripted = new ScriptedEnv(init.env.inputs, { seed: init.env.seed, sliceUnits: init.sliceUnits });
      env = scripted;
    } else {
      env = new LiveEnv();
    }
  } else {
    source = init.env.kind === 'scripted' ? new ArraySource([]) : new LiveSource();
  }
  machine = new Machine({
    instrumented: init.instrumented,
    config: init.config,
    sink,
    mode: init.mode,
    replaySliceUnits: init.sliceUnits,
    ...(init.diskImagePath !== undefined ? { diskImagePath: init.diskImagePath } : {}),
    ...(init.logFormat !== undefined ? { logFormat: init.logFormat } : {}),
    ...(init.maxThreads !== undefined ? { maxThreads: init.maxThreads } : {}),
    queue: init.queue,
    ...(env ? { env } : {}),
    ...(source ? { source } : {}),
  });
  scripted?.bind(() => machine!.count);
  if (init.snapshot !== undefined) machine.restore(init.snapshot);
  if (init.rearmTimers === true) machine.rearmTimers();
  post({ t: 'ready' });
  let result: ReturnType<Machine['run']>;
  try {
    result = machine.run();
  } finally {
    // A wasi-threads guest: its threads end with its main thread (or the VM).
    void machine.threads?.terminate();
  }
  let finalHash: Uint8Array | null = null;
  if (result.state === 'stopped' && machine.mode === 'record') finalHash = machine.logStateHash();
  else if (!(result.state === 'starved' && result.midStep)) finalHash = machine.stateHash();
  publish(true);
  flush();
  post({
    t: 'done',
    state: result.state,
    count: result.count,
    halt: result.state === 'halted' ? result.halt : null,
    finalHash,
    midStep: result.state === 'starved' && result.midStep,
  });
}

try {
  main();
} catch (err) {
  try {
    flush();
  } catch {
    // the error below is what matters
  }
  const e = err as Error & { code?: string };
  const ev: WorkerEvent = { t: 'error', code: e.code ?? 'FTVM_ERR_INTERNAL', name: e.name, message: e.message };
  if (err instanceof DeterminismViolation) {
    ev.expected = err.expectedInstructionNumber;
    ev.actual = err.actualInstructionNumber;
    ev.entryIndex = err.entryIndex;
  }
  post(ev);
}

/**
 * The model vCPU around the model guest (guest.ts), in virtual time: the simulator's VcpuPort
 * (src/replication/env.ts), standing in for src/machine/vcpu.ts Vcpu and its worker. One object, as the
 * real one: a recording vCPU (the primary's), or a replaying one (a backup's) that turns into a
 * recording one at go-live. What the drivers rely on, and test/sim-vcpu-contract.test.ts checks against
 * the real Vcpu with the same scripted scenario:
 * - record: inputs are taken at checkpoints unless throttled; entries leave in 'batch' events with the
 *   instruction number reached (progress notes with no entries while computing); `takeSnapshot` takes
 *   the guest at its next idle point, and `onTaken` runs after every batch logged before it and before
 *   any batch logged after it;
 * - replay: batches (bytes, as LOG frames carry them) and grants are fed; every entry is checked;
 *   `drained` is true while the replica waits with everything it was given consumed, and it is STALE
 *   right after a feed (the worker has not seen the batch yet: the driver guards with `entries`);
 *   `goLive()` takes over only once every held entry is consumed ('live' after the held log).
 */
import { EventEmitter } from 'node:events';
import type { Snapshot } from '../machine/machine.js';
import type { WireOutput } from '../machine/vcpu-protocol.js';
import type { BatchEvent, DoneEvent, TakenSnapshot, VcpuPort } from '../replication/env.js';
import { DeterminismViolation, FtvmError } from '../util/errors.js';
import { decodeBatch, decodeJson, encodeBatch, encodeJson, GuestState, stateFromJson, stateToJson, type InEntry, type ModelEntry, type Op, type OutEntry } from './guest.js';

/** One simulated vCPU time slice. */
export const SLICE_MS = 1;
/** Progress notes (no entries) at most this often while computing (vcpu.ts progressIntervalMs). */
const PROGRESS_INTERVAL_MS = 2;

export interface VcpuHost {
  now(): number;
  /** Schedules fn after delayMs on this vCPU's process (deferred while the process is paused). */
  later(delayMs: number, fn: () => void): void;
  newEntryId(): number;
  /** The guest's memory size: what a snapshot carries. */
  memoryBytes: number;
  /** Instructions per virtual millisecond, recording or replaying. */
  speed(mode: 'record' | 'replay'): number;
  /** A snapshot attempt fails (the real worker refuses one, e.g. memory could not be copied). */
  snapshotFails(): boolean;
  /** A snapshot was taken, after the driver's `onTaken` ran (checkpoint mode records what was captured). */
  snapshotTaken?(vcpu: SimVcpu, t: TakenSnapshot): void;
  /** A replica found an entry that does not match: the simulation decides whether that is a failure. */
  violation(vcpu: SimVcpu, msg: string): void;
  /** The replica took over as a recorder (after its held log). */
  wentLive(vcpu: SimVcpu): void;
}

/** A wasm page: a memory is a whole number of them (a checkpoint replica refuses anything else). */
const WASM_PAGE_BYTES = 65536;

/**
 * A snapshot's memory: the guest state as JSON at the start, zeros to the guest's memory size (at least
 * `minBytes`: a memory never shrinks), in whole wasm pages.
 */
function snapshotOf(g: GuestState, memoryBytes: number, maxConn: number, minBytes: number): Snapshot {
  const json = encodeJson({ state: stateToJson(g), maxConn });
  const bytes = Math.max(memoryBytes, minBytes, json.length + 4);
  const memory = new Uint8Array(Math.ceil(bytes / WASM_PAGE_BYTES) * WASM_PAGE_BYTES);
  new DataView(memory.buffer).setUint32(0, json.length, true);
  memory.set(json, 4);
  return { count: g.n, memory, globals: [], devices: { ring: null, timers: [], conns: [], armSeq: 0, maxConn }, stepAgain: false, deliveredInStep: false, booted: true, seq: g.seq };
}

function restoreOf(s: Snapshot): { state: GuestState; maxConn: number } {
  const len = new DataView(s.memory.buffer, s.memory.byteOffset, s.memory.byteLength).getUint32(0, true);
  const v = decodeJson<{ state: unknown; maxConn: number }>(s.memory.subarray(4, 4 + len));
  return { state: stateFromJson(v.state), maxConn: v.maxConn };
}

export class SimVcpu extends EventEmitter implements VcpuPort {
  mode: 'record' | 'replay';
  readonly state: GuestState;
  readonly done: Promise<DoneEvent>;
  private resolveDone!: (d: DoneEvent) => void;
  private finished = false;
  private stopped = false;
  private scheduled = false;
  private throttled = false;
  // record
  private readonly inputs: Array<{ conn: number; req: number; op: Op }> = [];
  private snapshotWaiter: { onTaken: ((t: TakenSnapshot) => void) | undefined; resolve: (t: TakenSnapshot) => void; reject: (e: Error) => void } | undefined;
  private lastProgressMs = -Infinity;
  private lastPostedN: number;
  private maxConn = 0;
  /** The largest memory a snapshot had (the guest's memory grows, never shrinks). */
  private memoryHigh = 0;
  // replay
  /** Batches fed and not yet seen by the worker (the shared queue). */
  private inbox: Uint8Array[] = [];
  private held: ModelEntry[] = [];
  private hHead = 0;
  private grantN = 0;
  private goLiveWanted = false;
  /** The worker's CTRL_DRAINED flag: set when it waits with nothing held, cleared when it next runs. */
  private drainedFlag = false;
  /** Instructions per virtual millisecond (the nemesis slows replicas down). */
  speed: number;
  /** The nemesis corrupted this replica's state (its divergence is expected). */
  corrupted = false;

  /** The vCPU has ended (stopped, or failed on a divergence). */
  get ended(): boolean {
    return this.finished;
  }

  constructor(
    private readonly host: VcpuHost,
    mode: 'record' | 'replay',
    snapshot?: Snapshot,
  ) {
    super();
    this.mode = mode;
    this.speed = host.speed(mode);
    if (snapshot) {
      const r = restoreOf(snapshot);
      this.state = r.state;
      this.maxConn = r.maxConn;
      this.memoryHigh = snapshot.memory.length;
    } else {
      this.state = new GuestState();
    }
    this.lastPostedN = this.state.n;
    this.grantN = this.state.n;
    this.done = new Promise<DoneEvent>((r) => (this.resolveDone = r));
    this.wake(); // a replica starts by waiting for log (drained), a recorder by running
  }

  get count(): number {
    return this.state.n;
  }
  get entries(): number {
    return this.state.seq;
  }
  get idle(): boolean {
    return this.state.cur === null && this.inputs.length === 0;
  }
  get backlog_bytes(): number {
    return 0;
  }
  get memoryBytes(): number {
    return this.host.memoryBytes;
  }
  get diskBytes(): number {
    return 0;
  }
  get drained(): boolean {
    return this.mode === 'replay' && this.drainedFlag;
  }
  get heldCount(): number {
    return this.held.length - this.hHead;
  }

  // ------------------------------------------------------------------ the port

  input(kind: 'open' | 'data' | 'close', conn: number, data?: Uint8Array): void {
    if (this.mode !== 'record' || kind !== 'data' || data === undefined) return;
    const m = decodeJson<{ req: number; op: Op }>(data);
    this.inputs.push({ conn, req: m.req, op: m.op });
    this.wake();
  }

  feedLog(batch: Uint8Array): void {
    this.inbox.push(batch);
    this.wake();
  }

  grant(n: number): void {
    if (n > this.grantN) this.grantN = n;
    this.wake();
  }

  endOfLog(): void {}

  goLive(): void {
    this.goLiveWanted = true;
    this.wake();
  }

  setThrottle(on: boolean): void {
    this.throttled = on;
    if (!on) this.wake();
  }

  takeSnapshot(onTaken?: (t: TakenSnapshot) => void): Promise<TakenSnapshot> {
    if (this.snapshotWaiter) return Promise.reject(new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'a snapshot is already being taken'));
    if (this.finished) return Promise.reject(new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'the guest stopped before the snapshot'));
    return new Promise<TakenSnapshot>((resolve, reject) => {
      this.snapshotWaiter = { onTaken, resolve, reject };
      this.wake();
    });
  }

  requestStateHash(): void {}

  /** Record: stop at the next idle point; replay: when the replica next waits for log. */
  stop(): void {
    this.stopped = true;
    this.wake();
  }

  terminate(): Promise<void> {
    this.finish();
    return Promise.resolve();
  }

  /** Test-only break support (the core's skip-drain): forget every held entry the replica has not consumed. */
  testOnlyAbandonHeld(): void {
    this.inbox = [];
    this.held = [];
    this.hHead = 0;
  }

  // ------------------------------------------------------------------ the worker

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    const w = this.snapshotWaiter;
    this.snapshotWaiter = undefined;
    w?.reject(new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'the guest stopped before the snapshot'));
    this.resolveDone({ t: 'done', state: 'stopped', count: this.state.n, halt: null, finalHash: null, midStep: this.state.cur !== null });
  }

  private wake(): void {
    if (this.scheduled || this.finished) return;
    this.scheduled = true;
    this.host.later(0.01, () => this.slice());
  }

  private slice(): void {
    this.scheduled = false;
    if (this.finished) return;
    if (this.mode === 'record') this.recordSlice();
    else this.replaySlice();
  }

  private recordSlice(): void {
    const g = this.state;
    // Checkpoint at the slice start: everything logged so far has been posted.
    if (this.snapshotWaiter && g.cur === null) {
      const w = this.snapshotWaiter;
      this.snapshotWaiter = undefined;
      if (this.host.snapshotFails()) {
        w.reject(new FtvmError('FTVM_ERR_SNAPSHOT', 'the snapshot could not be taken'));
      } else {
        const t: TakenSnapshot = { snapshot: snapshotOf(g, this.host.memoryBytes, this.maxConn, this.memoryHigh), pauseMs: 0 };
        this.memoryHigh = t.snapshot.memory.length;
        w.onTaken?.(t);
        this.host.snapshotTaken?.(this, t);
        w.resolve(t);
      }
      if (this.finished) return;
    }
    const firstSeq = g.seq;
    const entries: ModelEntry[] = [];
    const outputs: WireOutput[] = [];
    if (!this.throttled) {
      for (const i of this.inputs.splice(0)) {
        const id = this.host.newEntryId();
        const seq = g.seq;
        if (i.conn > this.maxConn) this.maxConn = i.conn;
        g.deliver(i.conn, i.req, i.op, id);
        const e: InEntry = { kind: 'in', id, seq, n: g.n, conn: i.conn, req: i.req, op: i.op, hashAfter: g.stateHash() };
        entries.push(e);
      }
      let budget = Math.round(this.speed * SLICE_MS);
      while (budget > 0 && g.cur !== null) {
        const step = Math.min(budget, g.cur.endN - g.n);
        g.n += step;
        budget -= step;
        if (g.n === g.cur.endN) {
          const value = g.replyValue();
          const id = this.host.newEntryId();
          const seq = g.seq;
          const done = g.complete(value, id);
          const e: OutEntry = { kind: 'out', id, seq, n: g.n, conn: done.conn, req: done.req, value, hashAfter: g.stateHash() };
          entries.push(e);
          outputs.push({ seq, n: g.n, kind: 'net', conn: done.conn, fd: 0, data: encodeJson({ req: done.req, value, entryId: id }) });
        }
      }
    }
    const now = this.host.now();
    if (entries.length > 0) {
      this.lastPostedN = g.n;
      this.emitBatch({ t: 'batch', firstSeq, count: entries.length, entries: encodeBatch(entries), outputs, instructionNumber: g.n });
    } else if (g.n !== this.lastPostedN && now - this.lastProgressMs >= PROGRESS_INTERVAL_MS) {
      this.lastPostedN = g.n;
      this.lastProgressMs = now;
      this.emitBatch({ t: 'batch', firstSeq, count: 0, entries: encodeBatch([]), outputs, instructionNumber: g.n });
    }
    if (this.stopped && g.cur === null && (this.inputs.length === 0 || this.throttled)) {
      // vcpu-worker.ts: a recorder stops at its next idle point (a long computation delays the stop).
      this.finish();
      return;
    }
    if (!this.finished && (g.cur !== null || this.inputs.length > 0 || this.snapshotWaiter !== undefined || this.stopped)) {
      this.scheduled = true;
      this.host.later(SLICE_MS, () => this.slice());
    }
  }

  private emitBatch(b: BatchEvent): void {
    this.emit('batch', b);
  }

  private fail(msg: string, e: ModelEntry | undefined): void {
    this.finished = true;
    this.host.violation(this, msg);
    const err = new DeterminismViolation(msg, e?.n ?? -1, this.state.n, e?.seq ?? this.state.seq);
    this.emit('vcpu-error', err);
    this.resolveDone({ t: 'done', state: 'stopped', count: this.state.n, halt: null, finalHash: null, midStep: false });
  }

  private replaySlice(): void {
    const g = this.state;
    this.drainedFlag = false;
    for (const b of this.inbox.splice(0)) for (const e of decodeBatch(b)) this.held.push(e);
    let budget = Math.round(this.speed * SLICE_MS);
    let blocked = false;
    for (;;) {
      const e = this.held[this.hHead];
      const cur = g.cur;
      if (cur !== null && cur.endN === g.n) {
        // The current operation completes here: its reply is a sync entry the log must hold next.
        if (e === undefined) {
          blocked = true;
          break;
        }
        if (e.kind !== 'out' || e.n !== g.n) return this.fail(`replica diverged at instruction ${g.n}: its reply to request ${cur.req} is due, the log says ${describe(e)}`, e);
        const value = g.replyValue();
        if (value !== e.value || e.req !== cur.req) return this.fail(`replica diverged at instruction ${g.n}: reply ${value} to request ${cur.req}, the log says ${describe(e)}`, e);
        g.complete(value, e.id);
        this.hHead++;
        if (g.stateHash() !== e.hashAfter) return this.fail(`replica diverged: state hash after entry ${e.seq} (instruction ${e.n}) differs from the primary's`, e);
        continue;
      }
      let limit: number;
      if (e !== undefined && e.kind === 'in') {
        if (e.seq !== g.seq) return this.fail(`replica fed entry ${e.seq} where it expects entry ${g.seq}`, e);
        if (e.n < g.n) return this.fail(`replica ran past a delivery: it is at instruction ${g.n}, the log delivers request ${e.req} (entry ${e.seq}) at ${e.n}`, e);
        if (e.n === g.n) {
          if (e.conn > this.maxConn) this.maxConn = e.conn;
          g.deliver(e.conn, e.req, e.op, e.id);
          this.hHead++;
          if (g.stateHash() !== e.hashAfter) return this.fail(`replica diverged: state hash after entry ${e.seq} (instruction ${e.n}) differs from the primary's`, e);
          continue;
        }
        limit = e.n; // an async entry: stop exactly there
      } else if (e !== undefined) {
        if (e.seq !== g.seq) return this.fail(`replica fed entry ${e.seq} where it expects entry ${g.seq}`, e);
        if (cur === null) return this.fail(`replica diverged: idle at instruction ${g.n}, the log says ${describe(e)}`, e);
        limit = Math.max(this.grantN, e.n);
      } else {
        limit = this.grantN;
      }
      if (cur === null) {
        if (e !== undefined) return this.fail(`replica diverged: the guest is idle at instruction ${g.n}, the log says ${describe(e)}`, e);
        blocked = true;
        break;
      }
      const target = Math.min(cur.endN, limit);
      if (target <= g.n) {
        blocked = true;
        break;
      }
      if (budget <= 0) break;
      const step = Math.min(budget, target - g.n);
      g.n += step;
      budget -= step;
    }
    if (this.hHead > 1024 && this.hHead * 2 > this.held.length) {
      this.held = this.held.slice(this.hHead);
      this.hHead = 0;
    }
    if (blocked && this.heldCount === 0 && this.inbox.length === 0) {
      if (this.goLiveWanted) {
        // vcpu-worker.ts takeOver: nothing held, nothing more runnable: record from exactly here.
        this.mode = 'record';
        this.speed = this.host.speed('record');
        this.lastPostedN = g.n;
        this.host.wentLive(this);
        this.emit('live', { t: 'live', count: g.n, seq: g.seq, maxConn: this.maxConn });
        this.wake();
        return;
      }
      if (this.stopped) {
        this.finish();
        return;
      }
      this.drainedFlag = true;
      return;
    }
    if (!blocked || this.inbox.length > 0) {
      this.scheduled = true;
      this.host.later(SLICE_MS, () => this.slice());
    }
  }
}

function describe(e: ModelEntry): string {
  return e.kind === 'in' ? `entry ${e.seq}: request ${e.req} delivered at ${e.n}` : `entry ${e.seq}: reply ${e.value} to request ${e.req} at ${e.n}`;
}

/**
 * Model vCPUs around the model guest (guest.ts), in virtual time: a recording vCPU (the primary's, or a
 * replica's after go-live) and a replaying one (the backup's). They mirror src/machine/vcpu.ts and the
 * worker's record/replay environments: inputs are taken at checkpoints unless throttled, entries leave
 * in batches with the instruction number reached (progress notes with no entries while computing), the
 * replica is fed batches and grants and reports `drained` while it waits with nothing held, and
 * `goLive()` takes over exactly where the log ends.
 */
import type { WireOutput } from '../machine/vcpu-protocol.js';
import { encodeBatch, GuestState, type InEntry, type ModelEntry, type Op, type OutEntry, type Reply } from './guest.js';

/** One simulated vCPU time slice. */
export const SLICE_MS = 1;
/** Progress notes (no entries) at most this often while computing (vcpu.ts progressIntervalMs). */
const PROGRESS_INTERVAL_MS = 2;
const EMPTY = new Uint8Array(0);

/** Replies carried by outputs (the output object is the key). */
export const outputReplies = new WeakMap<WireOutput, Reply>();

export interface VcpuHost {
  now(): number;
  /** Schedules fn after delayMs on this vCPU's process (deferred while the process is paused). */
  later(delayMs: number, fn: () => void): void;
  newEntryId(): number;
}

export interface BatchEvent {
  firstSeq: number;
  count: number;
  entries: Uint8Array;
  outputs: WireOutput[];
  instructionNumber: number;
}

export class RecordVcpu {
  private readonly inputs: Array<{ conn: number; req: number; op: Op }> = [];
  private throttled = false;
  private scheduled = false;
  private stopped = false;
  private snapshotWaiter: ((s: GuestState) => void) | undefined;
  private lastProgressMs = -Infinity;
  private lastPostedN: number;
  /** Instructions executed per virtual millisecond. */
  speed: number;

  constructor(
    readonly state: GuestState,
    speed: number,
    private readonly host: VcpuHost,
    private readonly onBatch: (b: BatchEvent) => void,
  ) {
    this.speed = speed;
    this.lastPostedN = state.n;
    this.wake();
  }

  get count(): number {
    return this.state.n;
  }

  input(conn: number, req: number, op: Op): void {
    this.inputs.push({ conn, req, op });
    this.wake();
  }

  setThrottle(on: boolean): void {
    this.throttled = on;
    if (!on) this.wake();
  }

  /**
   * Vcpu.takeSnapshot: a copy of the guest at its next idle point; `onTaken` runs where the snapshot is
   * taken, after every batch logged before it and before any batch logged after it.
   */
  takeSnapshot(onTaken: (s: GuestState) => void): void {
    if (this.snapshotWaiter) throw new Error('a snapshot is already being taken');
    this.snapshotWaiter = onTaken;
    this.wake();
  }

  stop(): void {
    this.stopped = true;
  }

  private wake(): void {
    if (this.scheduled || this.stopped) return;
    this.scheduled = true;
    this.host.later(0.01, () => this.slice());
  }

  private busy(): boolean {
    return this.state.cur !== null || this.inputs.length > 0 || this.snapshotWaiter !== undefined;
  }

  private slice(): void {
    this.scheduled = false;
    if (this.stopped) return;
    const g = this.state;
    // Checkpoint at the slice start: everything logged so far has been posted.
    if (this.snapshotWaiter && g.cur === null) {
      const w = this.snapshotWaiter;
      this.snapshotWaiter = undefined;
      w(g.clone());
      if (this.stopped) return;
    }
    const firstSeq = g.seq;
    const entries: ModelEntry[] = [];
    const outputs: WireOutput[] = [];
    if (!this.throttled) {
      for (const i of this.inputs.splice(0)) {
        const id = this.host.newEntryId();
        const seq = g.seq;
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
          const o: WireOutput = { seq, n: g.n, kind: 'net', conn: done.conn, fd: 0, data: EMPTY };
          outputs.push(o);
          outputReplies.set(o, { req: done.req, value, entryId: id });
        }
      }
    }
    const now = this.host.now();
    if (entries.length > 0) {
      this.lastPostedN = g.n;
      this.onBatch({ firstSeq, count: entries.length, entries: encodeBatch(entries), outputs, instructionNumber: g.n });
    } else if (g.n !== this.lastPostedN && now - this.lastProgressMs >= PROGRESS_INTERVAL_MS) {
      this.lastPostedN = g.n;
      this.lastProgressMs = now;
      this.onBatch({ firstSeq, count: 0, entries: encodeBatch([]), outputs, instructionNumber: g.n });
    }
    if (!this.stopped && this.busy()) {
      this.scheduled = true;
      this.host.later(SLICE_MS, () => this.slice());
    }
  }
}

export class ReplayVcpu {
  private held: ModelEntry[] = [];
  private hHead = 0;
  private grant = 0;
  private scheduled = false;
  private stopped = false;
  private goLiveWanted = false;
  private blocked = true;
  speed: number;

  constructor(
    readonly state: GuestState,
    speed: number,
    private readonly host: VcpuHost,
    private readonly onLive: (ev: { count: number; seq: number }) => void,
    private readonly onViolation: (msg: string) => void,
  ) {
    this.speed = speed;
    this.grant = state.n;
  }

  get count(): number {
    return this.state.n;
  }

  /** Entries consumed (absolute seq of the next entry). */
  get entries(): number {
    return this.state.seq;
  }

  get heldCount(): number {
    return this.held.length - this.hHead;
  }

  /** True while the replica waits for log with every entry it was given consumed. */
  get drained(): boolean {
    return this.blocked && this.heldCount === 0;
  }

  feedLog(entries: ModelEntry[]): void {
    for (const e of entries) this.held.push(e);
    this.wake();
  }

  grantTo(n: number): void {
    if (n > this.grant) this.grant = n;
    this.wake();
  }

  goLive(): void {
    this.goLiveWanted = true;
    this.wake();
  }

  stop(): void {
    this.stopped = true;
  }

  /** Test-only break support: forget every held entry the replica has not consumed. */
  abandonHeld(): void {
    this.held = this.held.slice(this.hHead, this.hHead);
    this.hHead = 0;
  }

  private wake(): void {
    this.blocked = false;
    if (this.scheduled || this.stopped) return;
    this.scheduled = true;
    this.host.later(0.01, () => this.slice());
  }

  private fail(msg: string): void {
    this.stopped = true;
    this.onViolation(msg);
  }

  private slice(): void {
    this.scheduled = false;
    if (this.stopped) return;
    const g = this.state;
    let budget = Math.round(this.speed * SLICE_MS);
    this.blocked = false;
    for (;;) {
      const e = this.held[this.hHead];
      const cur = g.cur;
      if (cur !== null && cur.endN === g.n) {
        // The current operation completes here: its reply is a sync entry the log must hold next.
        if (e === undefined) {
          this.blocked = true;
          break;
        }
        if (e.kind !== 'out' || e.n !== g.n) {
          return this.fail(`replica diverged at instruction ${g.n}: its reply to request ${cur.req} is due, the log says ${describe(e)}`);
        }
        const value = g.replyValue();
        if (value !== e.value || e.req !== cur.req) return this.fail(`replica diverged at instruction ${g.n}: reply ${value} to request ${cur.req}, the log says ${describe(e)}`);
        g.complete(value, e.id);
        this.hHead++;
        if (g.stateHash() !== e.hashAfter) return this.fail(`replica diverged: state hash after entry ${e.seq} (instruction ${e.n}) differs from the primary's`);
        continue;
      }
      let limit: number;
      if (e !== undefined && e.kind === 'in') {
        if (e.seq !== g.seq) return this.fail(`replica fed entry ${e.seq} where it expects entry ${g.seq}`);
        if (e.n < g.n) return this.fail(`replica ran past a delivery: it is at instruction ${g.n}, the log delivers request ${e.req} (entry ${e.seq}) at ${e.n}`);
        if (e.n === g.n) {
          g.deliver(e.conn, e.req, e.op, e.id);
          this.hHead++;
          if (g.stateHash() !== e.hashAfter) return this.fail(`replica diverged: state hash after entry ${e.seq} (instruction ${e.n}) differs from the primary's`);
          continue;
        }
        limit = e.n; // an async entry: stop exactly there
      } else if (e !== undefined) {
        if (e.seq !== g.seq) return this.fail(`replica fed entry ${e.seq} where it expects entry ${g.seq}`);
        if (cur === null) return this.fail(`replica diverged: idle at instruction ${g.n}, the log says ${describe(e)}`);
        limit = Math.max(this.grant, e.n);
      } else {
        limit = this.grant;
      }
      if (cur === null) {
        if (e !== undefined) return this.fail(`replica diverged: the guest is idle at instruction ${g.n}, the log says ${describe(e)}`);
        this.blocked = true;
        break;
      }
      const target = Math.min(cur.endN, limit);
      if (target <= g.n) {
        this.blocked = true;
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
    if (this.blocked && this.heldCount === 0 && this.goLiveWanted) {
      // vcpu-worker.ts takeOver: nothing held, nothing more runnable: record from exactly here.
      this.stopped = true;
      this.onLive({ count: g.n, seq: g.seq });
      return;
    }
    if (!this.blocked) {
      this.scheduled = true;
      this.host.later(SLICE_MS, () => this.slice());
    }
  }
}

function describe(e: ModelEntry): string {
  return e.kind === 'in' ? `entry ${e.seq}: request ${e.req} delivered at ${e.n}` : `entry ${e.seq}: reply ${e.value} to request ${e.req} at ${e.n}`;
}

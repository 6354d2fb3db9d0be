/**
 * `CheckpointPrimary`: the primary's driver in checkpoint mode (`--mode checkpoint`, issue #17). The
 * guest runs freely on a record vCPU (its log is not shipped); the pure `CheckpointPrimaryCore` asks for
 * a checkpoint every `intervalMs` (or at once when outputs wait): the driver takes a snapshot at the
 * guest's next idle point through the vCPU (`takeSnapshot`: the guest stands still for a memcpy), encodes
 * the delta since the previous checkpoint synchronously where the snapshot arrives in the vCPU's event
 * order (so every output before it belongs to this checkpoint, every output after it to the next), and
 * sends it as a CHECKPOINT frame. Outputs are held until the backup acknowledges their checkpoint
 * (Remus's output commit), then delivered to the clients in order.
 *
 * Everything outside goes through injected interfaces (NodeClock, VcpuPort, ServicePort, Arbiter, the
 * channel connection), like the replay drivers. Bounded: unacknowledged checkpoints by the core's
 * `inFlightMax` (kept for resending after a reconnect), held outputs by `heldMaxOutputs` (both throttle
 * the guest past the bound).
 */
import type { Arbiter } from '../arbiter/arbiter.js';
import type { ChannelConnection } from '../channel/connection.js';
import { FrameType, ControlKind, type Frame, type WireOutput } from '../channel/frames.js';
import type { BatchEvent } from '../machine/vcpu.js';
import type { NodeClock, ServicePort, Timer, VcpuPort } from '../replication/env.js';
import { startServiceRetrying } from '../replication/node-common.js';
import { assert } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import type { NodeMetrics } from '../service/metrics.js';
import { CheckpointMetrics } from './metrics.js';
import { CheckpointPrimaryCore, type CheckpointPrimaryAction } from './core.js';
import { CheckpointEncoder, checkpointStateHash } from './wire.js';

export interface CheckpointPrimaryOptions {
  vmName: string;
  nodeId: string;
  epoch: number;
  intervalMs: number;
  failTimeoutMs: number;
  arbiterDeadlineMs: number;
  tickMs: number;
  /** Checkpoints sent but not acknowledged, at most (default 4). */
  inFlightMax?: number;
  /** Outputs held, at most, before the guest is throttled (default 100 000). */
  heldMaxOutputs?: number;
  clock: NodeClock;
  arbiter: Arbiter | undefined;
  /** Serving without a backup (a backup gone live): outputs go out at once, no checkpoints are taken. */
  alone?: boolean;
  /** A record vCPU, started by the caller. */
  vcpu: VcpuPort;
  service: ServicePort;
  /** `host:port` of the client service, for log lines. */
  serviceAddress?: string;
  log: Logger;
  metrics?: NodeMetrics;
  /** Checkpoint samples and totals (the node's, so they outlive a role change); absent: its own. */
  checkpointMetrics?: CheckpointMetrics;
  /** Checkpoints larger than this go in several frames (default CHECKPOINT_PIECE_BYTES; tests set it small). */
  pieceBytes?: number;
  /** Serving alone now (the backup's failure won at the arbiter): the node recruits a new one. */
  onAlone?: (epoch: number) => void;
  /** A recruited backup acknowledged its base checkpoint: protected again. */
  onJoined?: (epoch: number, checkpoint: number) => void;
  /** TEST ONLY: the core's test-only break (core.ts), for the simulator. */
  testOnlyBreak?: 'release-at-capture';
}

export interface CheckpointPrimaryStats {
  captured: number;
  bytesCaptured: number;
  lastPauseMs: number;
  released: number;
}

/** A checkpoint larger than this goes in several CHECKPOINT frames (the channel's frames are at most 16 MiB). */
export const CHECKPOINT_PIECE_BYTES = 4 * 1024 * 1024;

/** Captures remembered for `ftvm status` (epoch length, checkpoint bytes/s). */
const RECENT_CAPTURES = 128;

export class CheckpointPrimary {
  private readonly core: CheckpointPrimaryCore;
  private readonly encoder = new CheckpointEncoder();
  /** Encoded checkpoints not yet acknowledged, in order (at most inFlightMax). */
  private unacked: Array<{ checkpoint: number; epoch: number; data: Uint8Array }> = [];
  private readonly held = new Map<number, WireOutput>();
  private nextOutputId = 1;
  private conn: ChannelConnection | undefined;
  private timer: Timer | undefined;
  private claiming = false;
  private halted = false;
  private resolveDone!: (reason: string) => void;
  /** Resolves with the reason when the primary halts (it lost the claim). */
  readonly done: Promise<string>;
  readonly stats: CheckpointPrimaryStats = { captured: 0, bytesCaptured: 0, lastPauseMs: 0, released: 0 };
  readonly checkpointMetrics: CheckpointMetrics;
  /** [time ms, bytes, pause ms] of the last RECENT_CAPTURES captures, oldest first. */
  private recent: Array<[number, number, number]> = [];
  /** Client inputs handed to the vCPU since the last capture (with the count, what says the state may have changed). */
  private inputsSinceCapture = 1;
  private countAtCapture = -1;
  private skipped = 0;
  /** `POST /state-hash`: the next capture is hashed (and flagged so the backup hashes its copy). */
  private hashWanted = false;
  private hashed: { n: number; hash: string } | null = null;
  private hashWaiters: Array<(h: { n: number; hash: string }) => void> = [];
  /**
   * Checkpoints to send on the current connection, in order, and the next piece of the first: what the
   * socket's buffer did not take yet waits for its 'drain' (bounded: at most the unacknowledged ones).
   */
  private sendQueue: number[] = [];
  private nextPiece = 0;
  private waitingDrain = false;

  constructor(private readonly opts: CheckpointPrimaryOptions) {
    const inFlightMax = opts.inFlightMax ?? 4;
    this.core = new CheckpointPrimaryCore({
      epoch: opts.epoch,
      intervalMs: opts.intervalMs,
      failTimeoutMs: opts.failTimeoutMs,
      claimRetryMs: opts.arbiterDeadlineMs,
      inFlightMax,
      heldMaxOutputs: opts.heldMaxOutputs ?? 100_000,
      eagerWhenOutputsHeld: true,
      alone: opts.alone === true,
      ...(opts.testOnlyBreak !== undefined ? { testOnlyBreak: opts.testOnlyBreak } : {}),
    });
    this.checkpointMetrics = opts.checkpointMetrics ?? new CheckpointMetrics(opts.metrics);
    this.done = new Promise((r) => (this.resolveDone = r));
    opts.vcpu.on('batch', (b: BatchEvent) => this.onBatch(b));
  }

  async start(): Promise<void> {
    const vcpu = this.opts.vcpu;
    const sink = {
      input: (kind: 'open' | 'data' | 'close', conn: number, data?: Uint8Array) => {
        this.inputsSinceCapture++;
        vcpu.input(kind, conn, data);
      },
      get backlogBytes() {
        return vcpu.backlog_bytes;
      },
    };
    // A backup gone live may find its service address briefly held: retried, as in replay mode.
    await startServiceRetrying(this.opts.service, sink, { clock: this.opts.clock, log: this.opts.log, address: this.opts.serviceAddress ?? 'the service address', stopped: () => this.halted });
    this.timer = this.opts.clock.every(this.opts.tickMs, () => this.exec(this.core.step({ t: 'tick', nowMs: this.opts.clock.now() })));
  }

  status(): ReturnType<CheckpointPrimaryCore['status']> & { connected: boolean } {
    return { ...this.core.status(), connected: this.conn !== undefined };
  }

  /** What `ftvm status` shows of the checkpoints: interval, measured epoch length, bytes/s, pauses. */
  checkpointStatus(): Record<string, unknown> {
    const r = this.recent;
    const now = this.opts.clock.now();
    const window = r.filter(([t]) => now - t <= 5000);
    const spanMs = window.length > 0 ? Math.max(1000, now - window[0]![0]) : 5000;
    const pauses = r.map(([, , p]) => p).sort((a, b) => a - b);
    const q = (p: number): number | null => (pauses.length === 0 ? null : +pauses[Math.min(pauses.length - 1, Math.ceil(p * pauses.length) - 1)]!.toFixed(3));
    return {
      intervalMs: this.opts.intervalMs,
      epochLengthMs: r.length >= 2 ? +((r[r.length - 1]![0] - r[0]![0]) / (r.length - 1)).toFixed(2) : null,
      bytesPerSecond: Math.round((window.reduce((a, [, b]) => a + b, 0) * 1000) / spanMs),
      pauseP50Ms: q(0.5),
      pauseP99Ms: q(0.99),
      captured: this.stats.captured,
      skippedIdle: this.skipped,
      bytesCaptured: this.stats.bytesCaptured,
      released: this.stats.released,
    };
  }

  /**
   * The state hash of the next checkpoint, once the backup acknowledged it (its copy, hashed when it
   * applied the flagged checkpoint, must be the same: \`GET /state-hash\` there).
   */
  requestStateHash(): Promise<{ n: number; hash: string }> {
    this.hashWanted = true;
    return new Promise((resolve) => this.hashWaiters.push(resolve));
  }

  private answerHash(): void {
    const h = this.hashed;
    if (h === null || this.hashWaiters.length === 0) return;
    const s = this.core.status();
    if (!s.alone && s.ackedCheckpoint < h.n) return;
    for (const w of this.hashWaiters.splice(0)) w(h);
  }

  /**
   * The channel connection to the backup (the dialer's, after the handshake); the newest replaces the
   * previous. The backup's HELLO carries, in its nextSeq field, the checkpoint its replica applied.
   */
  attach(c: ChannelConnection): void {
    this.connect(c, false);
  }

  /**
   * Serving alone, a recruited standby answered on `c`: it becomes the backup, receiving a base
   * checkpoint first (re-replication). False, and `c` closed, when this primary is not alone.
   */
  join(c: ChannelConnection): boolean {
    if (this.halted || !this.core.status().alone || this.core.status().phase !== 'running') {
      c.close(this.halted ? 'halted' : 'this primary has a backup');
      return false;
    }
    this.connect(c, true);
    return true;
  }

  private connect(c: ChannelConnection, join: boolean): void {
    if (this.halted) {
      c.close('halted');
      return;
    }
    if (this.conn !== undefined && this.conn !== c) this.conn.close('replaced');
    this.conn = c;
    // A new connection: nothing of a checkpoint half sent on the old one counts (the core resends).
    this.sendQueue = [];
    this.nextPiece = 0;
    this.waitingDrain = false;
    c.on('frame', (f: Frame) => {
      if (this.conn !== c) return;
      const nowMs = this.opts.clock.now();
      if (f.type === FrameType.CHECKPOINT_ACK && f.epoch === this.core.status().epoch) {
        this.exec(this.core.step({ t: 'ack', checkpoint: f.checkpoint, nowMs }));
        this.unacked = this.unacked.filter((u) => u.checkpoint > f.checkpoint);
        this.answerHash();
      } else {
        this.exec(this.core.step({ t: 'heard', nowMs }));
      }
    });
    c.once('close', () => {
      if (this.conn !== c) return;
      this.conn = undefined;
      this.exec(this.core.step({ t: 'peer-closed' }));
    });
    if (join) {
      this.exec(this.core.step({ t: 'join', nowMs: this.opts.clock.now() }));
      return;
    }
    const applied = c.peerHello?.nextSeq;
    this.exec(this.core.step({ t: 'peer-open', nowMs: this.opts.clock.now(), ...(applied !== undefined ? { applied } : {}) }));
  }

  /**
   * Sends queued checkpoints, piece by piece, until the socket's buffer is full (then again at its
   * 'drain'). A checkpoint dropped meanwhile (acknowledged, or replaced by a base) is skipped.
   */
  private flush(): void {
    const c = this.conn;
    if (c === undefined || this.waitingDrain) return;
    while (this.sendQueue.length > 0) {
      const n = this.sendQueue[0]!;
      const u = this.unacked.find((x) => x.checkpoint === n);
      if (u === undefined) {
        this.sendQueue.shift();
        this.nextPiece = 0;
        continue;
      }
      if (!c.isOpen) return;
      const size = this.opts.pieceBytes ?? CHECKPOINT_PIECE_BYTES;
      const parts = Math.max(1, Math.ceil(u.data.length / size));
      const part = this.nextPiece;
      const data = u.data.subarray(part * size, Math.min(u.data.length, (part + 1) * size));
      if (!c.send({ type: FrameType.CHECKPOINT, epoch: u.epoch, checkpoint: u.checkpoint, part, parts, data })) {
        this.waitingDrain = true;
        c.once('drain', () => {
          if (this.conn !== c) return;
          this.waitingDrain = false;
          this.flush();
        });
        return;
      }
      this.checkpointMetrics.onSent(data.length);
      if (part + 1 < parts) this.nextPiece++;
      else {
        this.sendQueue.shift();
        this.nextPiece = 0;
      }
    }
  }

  /** A CONTROL frame to the backup, if connected (`ftvm stop`: the backup must not go live). */
  sendControl(kind: (typeof ControlKind)[keyof typeof ControlKind], reason: string): void {
    if (this.conn?.isOpen === true) this.conn.send({ type: FrameType.CONTROL, epoch: this.core.status().epoch, kind, reason });
  }

  /** Stops the timer, the connection and the client service; the vCPU is the caller's. */
  async close(): Promise<void> {
    this.timer?.cancel();
    this.timer = undefined;
    this.conn?.close('checkpoint primary closing');
    this.conn = undefined;
    await this.opts.service.close();
  }

  private onBatch(b: BatchEvent): void {
    if (b.consumed !== undefined) this.opts.service.consumed(b.consumed);
    for (const o of b.outputs) {
      const id = this.nextOutputId++;
      this.held.set(id, o);
      this.exec(this.core.step({ t: 'output', id }));
    }
  }

  private capture(checkpoint: number, base: boolean): void {
    const vcpu = this.opts.vcpu;
    if (!base && !this.hashWanted && this.held.size === 0 && this.inputsSinceCapture === 0 && vcpu.count === this.countAtCapture) {
      // No output waits, no input arrived and the guest did not run since the last checkpoint: nothing to
      // capture. (Safe even if the published count lagged: with no output held, no client saw a state the
      // backup lacks.)
      this.skipped++;
      this.exec(this.core.step({ t: 'unchanged', checkpoint }));
      return;
    }
    this.inputsSinceCapture = 0;
    const hash = this.hashWanted;
    this.hashWanted = false;
    vcpu
      .takeSnapshot((t) => {
        // Synchronously where the snapshot arrives: batches before it were handled (their outputs belong to
        // this checkpoint), none after it yet. The snapshot's memory is a reused buffer: encode now.
        const epoch = this.core.status().epoch;
        if (base) this.encoder.reset();
        const t0 = performance.now();
        const data = this.encoder.encode(epoch, checkpoint, t.snapshot, hash);
        const encodeMs = performance.now() - t0;
        if (hash) this.hashed = { n: checkpoint, hash: checkpointStateHash(t.snapshot) };
        this.countAtCapture = t.snapshot.count;
        this.unacked.push({ checkpoint, epoch, data });
        this.stats.captured++;
        this.stats.bytesCaptured += data.length;
        this.stats.lastPauseMs = t.pauseMs;
        if (this.recent.length >= RECENT_CAPTURES) this.recent.shift();
        this.recent.push([this.opts.clock.now(), data.length, t.pauseMs]);
        this.checkpointMetrics.onCaptured({ pauseMs: t.pauseMs, encodeMs, bytes: data.length, dirtyPages: this.encoder.lastStats.dirtyPages });
        this.exec(this.core.step({ t: 'captured', checkpoint, bytes: data.length }));
      })
      .catch((err: unknown) => {
        this.inputsSinceCapture++; // not captured: the next one must not be skipped
        if (hash) this.hashWanted = true;
        this.opts.log.warn({ checkpoint, err: (err as Error).message }, 'checkpoint capture failed; trying again');
        if (this.encoder.lastCheckpoint < checkpoint) this.exec(this.core.step({ t: 'capture-failed', checkpoint }));
      });
  }

  private exec(actions: CheckpointPrimaryAction[]): void {
    for (const a of actions) {
      if (this.halted) return;
      switch (a.t) {
        case 'capture':
          this.capture(a.checkpoint, a.base);
          break;
        case 'drop-unacked':
          this.sendQueue = [];
          this.nextPiece = 0;
          this.opts.log.warn({ dropped: this.unacked.map((u) => u.checkpoint), acked: this.core.status().ackedCheckpoint }, 'the backup lacks the last acknowledged checkpoint: sending it a base checkpoint');
          this.unacked = [];
          break;
        case 'send-checkpoint':
          assert(this.unacked.some((x) => x.checkpoint === a.checkpoint), `checkpoint ${a.checkpoint} to send is not kept`);
          if (!this.sendQueue.includes(a.checkpoint)) this.sendQueue.push(a.checkpoint);
          this.flush();
          break;
        case 'release': {
          const outs: WireOutput[] = [];
          for (const id of a.ids) {
            const o = this.held.get(id);
            assert(o !== undefined, `output ${id} released twice or never held`);
            this.held.delete(id);
            outs.push(o);
          }
          this.stats.released += outs.length;
          this.opts.service.deliver(outs);
          break;
        }
        case 'throttle':
          this.opts.vcpu.setThrottle(a.on);
          break;
        case 'heartbeat':
          if (this.conn?.isOpen === true) this.conn.send({ type: FrameType.HEARTBEAT, epoch: a.epoch, instructionNumber: this.opts.vcpu.count, nextSeq: 0 });
          break;
        case 'claim':
          void this.claim(a.epoch);
          break;
        case 'alone':
          this.opts.log.warn({ epoch: a.epoch }, 'won the claim: serving alone (no backup)');
          this.unacked = [];
          this.conn?.close('the backup failed: serving alone');
          this.conn = undefined;
          this.opts.onAlone?.(a.epoch);
          this.answerHash();
          break;
        case 'joined':
          this.opts.log.warn({ epoch: a.epoch, checkpoint: a.checkpoint }, 'redundancy restored: the new backup holds a base checkpoint');
          this.opts.onJoined?.(a.epoch, a.checkpoint);
          break;
        case 'halt':
          this.halted = true;
          this.opts.log.error({ reason: a.reason }, 'checkpoint primary halting');
          this.opts.vcpu.stop();
          void this.close().finally(() => this.resolveDone(a.reason));
          return;
      }
    }
  }

  private async claim(epoch: number): Promise<void> {
    if (this.claiming) return;
    const arbiter = this.opts.arbiter;
    if (arbiter === undefined) {
      this.opts.log.error('silence on the channel, but no arbiter is configured: waiting, releasing nothing');
      return;
    }
    this.opts.log.warn({ epoch, status: this.core.status() }, 'the backup fell silent: claiming the VM at the arbiter');
    this.claiming = true;
    let input: { t: 'claim-result'; won: boolean; epoch: number; unavailable?: boolean };
    try {
      const r = await arbiter.claim(this.opts.vmName, epoch, this.opts.nodeId, { deadlineMs: this.opts.arbiterDeadlineMs });
      input = { t: 'claim-result', won: r.won, epoch: r.record.epoch };
    } catch (err) {
      this.opts.log.error({ err: (err as Error).message }, 'the arbiter is unreachable: waiting, releasing nothing');
      input = { t: 'claim-result', won: false, epoch, unavailable: true };
    } finally {
      this.claiming = false;
    }
    this.exec(this.core.step(input));
  }
}

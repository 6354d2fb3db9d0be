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
import { FrameType, type Frame, type WireOutput } from '../channel/frames.js';
import type { BatchEvent } from '../machine/vcpu.js';
import type { NodeClock, ServicePort, Timer, VcpuPort } from '../replication/env.js';
import { assert } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { CheckpointPrimaryCore, type CheckpointPrimaryAction } from './core.js';
import { CheckpointMetrics } from './metrics.js';
import { CheckpointEncoder } from './wire.js';

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
  log: Logger;
  /** Checkpoint counts, bytes and pause times (served by the node's control endpoint); absent: its own. */
  metrics?: CheckpointMetrics;
}

export interface CheckpointPrimaryStats {
  captured: number;
  bytesCaptured: number;
  lastPauseMs: number;
  released: number;
}

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
  readonly metrics: CheckpointMetrics;

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
    });
    this.metrics = opts.metrics ?? new CheckpointMetrics(opts.vmName);
    this.done = new Promise((r) => (this.resolveDone = r));
    opts.vcpu.on('batch', (b: BatchEvent) => this.onBatch(b));
  }

  async start(): Promise<void> {
    const vcpu = this.opts.vcpu;
    await this.opts.service.start({
      input: (kind, conn, data) => vcpu.input(kind, conn, data),
      get backlogBytes() {
        return vcpu.backlog_bytes;
      },
    });
    this.timer = this.opts.clock.every(this.opts.tickMs, () => this.exec(this.core.step({ t: 'tick', nowMs: this.opts.clock.now() })));
  }

  status(): ReturnType<CheckpointPrimaryCore['status']> & { connected: boolean } {
    return { ...this.core.status(), connected: this.conn !== undefined };
  }

  /**
   * The channel connection to the backup (the dialer's, after the handshake); the newest replaces the
   * previous. The backup's HELLO carries, in its nextSeq field, the checkpoint its replica applied.
   */
  attach(c: ChannelConnection): void {
    if (this.halted) {
      c.close('halted');
      return;
    }
    if (this.conn !== undefined && this.conn !== c) this.conn.close('replaced');
    this.conn = c;
    c.on('frame', (f: Frame) => {
      if (this.conn !== c) return;
      const nowMs = this.opts.clock.now();
      if (f.type === FrameType.CHECKPOINT_ACK && f.epoch === this.core.status().epoch) {
        this.exec(this.core.step({ t: 'ack', checkpoint: f.checkpoint, nowMs }));
        this.unacked = this.unacked.filter((u) => u.checkpoint > f.checkpoint);
      } else {
        this.exec(this.core.step({ t: 'heard', nowMs }));
      }
    });
    c.once('close', () => {
      if (this.conn !== c) return;
      this.conn = undefined;
      this.exec(this.core.step({ t: 'peer-closed' }));
    });
    const applied = c.peerHello?.nextSeq;
    this.exec(this.core.step({ t: 'peer-open', nowMs: this.opts.clock.now(), ...(applied !== undefined ? { applied } : {}) }));
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
    this.opts.vcpu
      .takeSnapshot((t) => {
        // Synchronously where the snapshot arrives: batches before it were handled (their outputs belong to
        // this checkpoint), none after it yet. The snapshot's memory is a reused buffer: encode now.
        const epoch = this.core.status().epoch;
        if (base) this.encoder.reset();
        const t0 = performance.now();
        const data = this.encoder.encode(epoch, checkpoint, t.snapshot);
        const encodeMs = performance.now() - t0;
        this.unacked.push({ checkpoint, epoch, data });
        this.stats.captured++;
        this.stats.bytesCaptured += data.length;
        this.stats.lastPauseMs = t.pauseMs;
        this.metrics.onCaptured({ pauseMs: t.pauseMs, encodeMs, bytes: data.length, dirtyPages: this.encoder.lastStats.dirtyPages });
        this.exec(this.core.step({ t: 'captured', checkpoint, bytes: data.length }));
      })
      .catch((err: unknown) => {
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
          this.opts.log.warn({ dropped: this.unacked.map((u) => u.checkpoint), acked: this.core.status().ackedCheckpoint }, 'the backup lacks the last acknowledged checkpoint: sending it a base checkpoint');
          this.unacked = [];
          break;
        case 'send-checkpoint': {
          const u = this.unacked.find((x) => x.checkpoint === a.checkpoint);
          assert(u !== undefined, `checkpoint ${a.checkpoint} to send is not kept`);
          if (this.conn !== undefined) {
            this.conn.send({ type: FrameType.CHECKPOINT, epoch: u.epoch, checkpoint: u.checkpoint, data: u.data });
            this.metrics.onSent(u.data.length);
          }
          break;
        }
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
          this.conn?.send({ type: FrameType.HEARTBEAT, epoch: a.epoch, instructionNumber: this.opts.vcpu.count, nextSeq: 0 });
          break;
        case 'claim':
          void this.claim(a.epoch);
          break;
        case 'alone':
          this.opts.log.warn({ epoch: a.epoch }, 'won the claim: serving alone (no backup)');
          this.unacked = [];
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

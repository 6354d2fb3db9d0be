/**
 * `CheckpointBackup`: the backup's driver in checkpoint mode (`--mode checkpoint`, issue #17). It does
 * not run the guest: it applies each CHECKPOINT frame to its `CheckpointReplica` (all or nothing),
 * acknowledges it (CHECKPOINT_ACK, cumulative), and on a silent primary claims the VM at the arbiter and
 * goes live from the last complete checkpoint — `done` resolves with that checkpoint as a machine
 * snapshot, which the caller restores into a fresh machine (a record vCPU) to serve from.
 *
 * The protocol decisions are the pure `CheckpointBackupCore`'s; this driver only moves frames, time and
 * arbiter answers in and actions out, through injected interfaces (a NodeClock, an Arbiter, the channel
 * connection), like the replay drivers in src/replication/. A refused checkpoint (truncated, corrupt,
 * out of order: FTVM_ERR_CHECKPOINT) drops the connection; the primary resends every unacknowledged
 * checkpoint when it reconnects, and until then the replica keeps its last complete one. Its HELLO says
 * which checkpoint the replica applied (`helloApplied`, in the HELLO's nextSeq field): a primary whose
 * last acknowledged checkpoint differs sends a base checkpoint, which the replica applies whatever it held.
 */
import type { Arbiter } from '../arbiter/arbiter.js';
import type { ChannelConnection } from '../channel/connection.js';
import { ControlKind, FrameType, type CheckpointFrame, type Frame } from '../channel/frames.js';
import type { Snapshot } from '../machine/machine.js';
import type { NodeClock, Timer } from '../replication/env.js';
import { FtvmError, assert } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import type { NodeMetrics } from '../service/metrics.js';
import { CheckpointBackupCore, type CheckpointBackupAction } from './core.js';
import { CheckpointReplica, isBaseCheckpoint } from './wire.js';

export interface CheckpointBackupOptions {
  vmName: string;
  nodeId: string;
  /** The pair's epoch at the arbiter. */
  epoch: number;
  failTimeoutMs: number;
  /** Deadline of each arbiter call, and the retry interval after an unreachable arbiter. */
  arbiterDeadlineMs: number;
  tickMs: number;
  clock: NodeClock;
  /** Without one the backup never goes live (it cannot know it is alone): it waits and logs. */
  arbiter: Arbiter | undefined;
  log: Logger;
  metrics?: NodeMetrics;
  /** After each checkpoint applied (a standby leaves the pool after its first). */
  onApplied?: (checkpoint: number) => void;
}

export type CheckpointBackupOutcome =
  | { t: 'live'; epoch: number; checkpoint: number; snapshot: Snapshot }
  | { t: 'halted'; reason: string };

export interface CheckpointBackupStats {
  applied: number;
  refused: number;
  acksSent: number;
  bytesApplied: number;
}

/** The largest checkpoint reassembled from pieces (wire.ts refuses larger ones anyway). */
const MAX_ASSEMBLED_BYTES = 1024 * 1024 * 1024;

export class CheckpointBackup {
  readonly replica: CheckpointReplica;
  private readonly core: CheckpointBackupCore;
  private conn: ChannelConnection | undefined;
  private timer: Timer | undefined;
  private claiming = false;
  private finished = false;
  private resolveDone!: (o: CheckpointBackupOutcome) => void;
  /** Resolves once, when the backup went live (won the claim) or halted (lost it, or an intentional stop). */
  readonly done: Promise<CheckpointBackupOutcome>;
  readonly stats: CheckpointBackupStats = { applied: 0, refused: 0, acksSent: 0, bytesApplied: 0 };
  /** The pieces of a checkpoint sent in several frames, received so far (in order, on one connection). */
  private assembling: { epoch: number; checkpoint: number; parts: number; pieces: Uint8Array[]; bytes: number } | undefined;

  constructor(private readonly opts: CheckpointBackupOptions) {
    this.replica = new CheckpointReplica(opts.epoch);
    this.core = new CheckpointBackupCore({ epoch: opts.epoch, failTimeoutMs: opts.failTimeoutMs, claimRetryMs: opts.arbiterDeadlineMs });
    this.done = new Promise((r) => (this.resolveDone = r));
  }

  start(): void {
    assert(this.timer === undefined && !this.finished, 'start once');
    this.timer = this.opts.clock.every(this.opts.tickMs, () => this.exec(this.core.step({ t: 'tick', nowMs: this.opts.clock.now() })));
  }

  /** What this backup's HELLO says it applied (the HELLO's nextSeq in checkpoint mode): the replica's last complete checkpoint. */
  helloApplied(): number {
    return this.replica.checkpoint;
  }

  status(): { epoch: number; applied: number; phase: string; connected: boolean } {
    return { ...this.core.status(), connected: this.conn !== undefined };
  }

  /** A channel connection from the primary, after its handshake (the newest one replaces the previous). */
  attach(c: ChannelConnection): void {
    if (this.finished) {
      c.close('this backup is no longer following');
      return;
    }
    if (this.conn !== undefined && this.conn !== c) this.conn.close('replaced by a new connection from the primary');
    this.conn = c;
    this.assembling = undefined; // pieces never span connections: the primary resends whole checkpoints
    this.opts.log.info({ primary: c.remote }, 'checkpoint backup: primary connected');
    this.exec(this.core.step({ t: 'heard', nowMs: this.opts.clock.now() }));
    c.on('frame', (f: Frame) => {
      if (this.conn === c) this.onFrame(f);
    });
    c.once('close', (reason: string) => {
      if (this.conn !== c) return;
      this.conn = undefined;
      this.opts.log.warn({ reason }, 'checkpoint backup: primary disconnected');
      this.exec(this.core.step({ t: 'peer-closed' }));
    });
  }

  /** Stops the timer and the connection (tests, shutdown); `done` stays pending unless it resolved. */
  close(): void {
    this.timer?.cancel();
    this.timer = undefined;
    this.conn?.close('checkpoint backup closing');
    this.conn = undefined;
  }

  private onFrame(f: Frame): void {
    const nowMs = this.opts.clock.now();
    switch (f.type) {
      case FrameType.CHECKPOINT: {
        const whole = this.assemble(f);
        if (whole === undefined) {
          this.exec(this.core.step({ t: 'heard', nowMs }));
          return;
        }
        this.exec(this.core.step({ t: 'checkpoint', checkpoint: whole.checkpoint, epoch: whole.epoch, nowMs, base: isBaseCheckpoint(whole.data) }), whole);
        return;
      }
      case FrameType.CONTROL:
        if (f.kind === ControlKind.STOP && f.epoch >= this.core.status().epoch) {
          this.finish({ t: 'halted', reason: `the primary stopped intentionally: ${f.reason}` });
          return;
        }
        this.exec(this.core.step({ t: 'heard', nowMs }));
        return;
      default:
        // Heartbeats, and anything else from the primary: it is alive.
        this.exec(this.core.step({ t: 'heard', nowMs }));
    }
  }

  private exec(actions: CheckpointBackupAction[], frame?: CheckpointFrame): void {
    for (const a of actions) {
      if (this.finished) return;
      switch (a.t) {
        case 'apply': {
          assert(frame !== undefined && frame.checkpoint === a.checkpoint, `apply ${a.checkpoint} without its frame`);
          let ok = false;
          try {
            this.replica.apply(frame.data, { epoch: frame.epoch, checkpoint: frame.checkpoint });
            ok = true;
          } catch (err) {
            if (!(err instanceof FtvmError && err.code === 'FTVM_ERR_CHECKPOINT')) throw err;
            this.stats.refused++;
            this.opts.log.warn({ checkpoint: a.checkpoint, err: err.message, kept: this.replica.checkpoint }, 'checkpoint refused; keeping the last complete one');
            this.exec(this.core.step({ t: 'refused', checkpoint: a.checkpoint, reason: err.message }));
          }
          if (ok) {
            this.stats.applied++;
            this.stats.bytesApplied += frame.data.length;
            this.opts.metrics?.checkpoints.inc({ direction: 'in' });
            this.opts.metrics?.checkpointBytes.inc({ direction: 'in' }, frame.data.length);
            this.exec(this.core.step({ t: 'applied', checkpoint: a.checkpoint }));
            this.opts.onApplied?.(a.checkpoint);
          }
          break;
        }
        case 'ack':
          if (this.conn?.send({ type: FrameType.CHECKPOINT_ACK, epoch: a.epoch, checkpoint: a.checkpoint })) this.stats.acksSent++;
          break;
        case 'drop':
          // The primary resends every unacknowledged checkpoint in order on its next connection.
          this.opts.log.warn({ checkpoint: a.checkpoint, reason: a.reason }, 'checkpoint dropped: closing the connection so the primary resends');
          this.conn?.close(`checkpoint ${a.checkpoint} dropped: ${a.reason}`);
          break;
        case 'claim':
          void this.claim(a.epoch);
          break;
        case 'go-live': {
          const snapshot = this.replica.snapshot();
          assert(snapshot !== undefined && this.replica.checkpoint === a.checkpoint, `go live from checkpoint ${a.checkpoint}, the replica holds ${this.replica.checkpoint}`);
          this.opts.log.warn({ epoch: a.epoch, checkpoint: a.checkpoint }, 'going live from the last complete checkpoint');
          this.finish({ t: 'live', epoch: a.epoch, checkpoint: a.checkpoint, snapshot });
          break;
        }
        case 'halt':
          this.finish({ t: 'halted', reason: a.reason });
          break;
      }
    }
  }

  /**
   * A checkpoint's pieces, in order: the whole checkpoint once its last piece arrived, else undefined. A
   * piece out of order (or of another checkpoint) discards what was gathered: the checkpoint never reaches
   * the replica, the next one is then a gap, and the connection is dropped so the primary resends.
   */
  private assemble(f: CheckpointFrame): CheckpointFrame | undefined {
    if (f.parts === 1) {
      this.assembling = undefined;
      return f;
    }
    let a = this.assembling;
    if (f.part === 0) {
      a = { epoch: f.epoch, checkpoint: f.checkpoint, parts: f.parts, pieces: [], bytes: 0 };
      this.assembling = a;
    } else if (a === undefined || a.epoch !== f.epoch || a.checkpoint !== f.checkpoint || a.parts !== f.parts || a.pieces.length !== f.part) {
      this.opts.log.warn({ checkpoint: f.checkpoint, part: f.part, parts: f.parts }, 'checkpoint piece out of order: discarding the pieces gathered');
      this.assembling = undefined;
      return undefined;
    }
    a.bytes += f.data.length;
    if (a.bytes > MAX_ASSEMBLED_BYTES) {
      this.opts.log.warn({ checkpoint: f.checkpoint, bytes: a.bytes }, 'checkpoint larger than any this backup accepts: discarding it');
      this.assembling = undefined;
      return undefined;
    }
    a.pieces.push(f.data);
    if (a.pieces.length < a.parts) return undefined;
    this.assembling = undefined;
    return { type: FrameType.CHECKPOINT, epoch: a.epoch, checkpoint: a.checkpoint, part: 0, parts: 1, data: Buffer.concat(a.pieces, a.bytes) };
  }

  /** One arbiter call at a time; the core asks again after `arbiterDeadlineMs` if it is still claiming. */
  private async claim(epoch: number): Promise<void> {
    if (this.claiming) return;
    const arbiter = this.opts.arbiter;
    if (arbiter === undefined) {
      this.opts.log.error('silence on the channel, but no arbiter is configured: waiting');
      return;
    }
    this.claiming = true;
    let input: { t: 'claim-result'; won: boolean; epoch: number; unavailable?: boolean };
    try {
      const r = await arbiter.claim(this.opts.vmName, epoch, this.opts.nodeId, { deadlineMs: this.opts.arbiterDeadlineMs });
      this.opts.log.warn({ epoch, won: r.won, record: r.record }, r.won ? 'won the arbiter claim' : 'lost the arbiter claim');
      input = { t: 'claim-result', won: r.won, epoch: r.record.epoch };
    } catch (err) {
      this.opts.log.error({ err: (err as Error).message }, 'the arbiter is unreachable: waiting');
      input = { t: 'claim-result', won: false, epoch, unavailable: true };
    } finally {
      this.claiming = false;
    }
    this.exec(this.core.step(input));
  }

  private finish(o: CheckpointBackupOutcome): void {
    if (this.finished) return;
    this.finished = true;
    this.close();
    this.resolveDone(o);
  }
}

/**
 * The checkpoint-replication protocol (state transfer, Remus/COLO style), as two pure state machines
 * in the shape of the replay cores: `step(input) → actions`; no sockets, timers, clocks or randomness
 * (time enters as `tick` inputs), so the simulator and the drivers can run the same code.
 *
 * The primary runs its guest freely. Time is cut into epochs: every `intervalMs` (or at once when
 * outputs wait and `eagerWhenOutputsHeld`), the core asks the driver to **capture** a checkpoint — the
 * driver stops the guest at a safe point, computes the memory delta since the last checkpoint plus the
 * small state (globals, devices) and reports `captured`. The checkpoint goes to the backup, which applies
 * it and acknowledges. **Output rule:** an output produced in epoch k (after checkpoint k−1 was captured,
 * up to the capture of checkpoint k) is released only once the backup acknowledged checkpoint k: the
 * backup then holds a state from which that output was produced. Nothing the backup holds is ever
 * "ahead" of the primary, and a backup that goes live from its last applied checkpoint never contradicts
 * a released output (the primary released nothing produced after that checkpoint).
 *
 * Bounded: at most `inFlightMax` checkpoints unacknowledged — past it the core asks the driver to pause
 * the guest (`throttle`) until the backup catches up, so a guest that dirties memory faster than the
 * link carries is slowed instead of growing buffers (vSphere SMP-FT does the same). Held outputs are
 * bounded by `heldMaxOutputs` (past it, `throttle` as well).
 *
 * Catching up: the backup's HELLO says which checkpoint it applied (`peer-open` with `applied`). When
 * that is not the last acknowledged one (a backup restarted, or one that applied a checkpoint whose
 * acknowledgement was lost), the deltas kept for resending are of no use to it: the core asks the driver
 * to drop them (`drop-unacked`) and to capture a **base** checkpoint next (`capture` with `base`: all of
 * memory against zeros, numbered after whatever the backup applied), which the backup applies whatever
 * it held. Outputs held for the dropped checkpoints are released when the base is acknowledged (its
 * state includes them).
 *
 * Failure: silence for `failTimeoutMs` → the survivor asks the arbiter (`claim` at the current epoch of
 * the pair, as in replay mode). Primary wins: it continues alone, releasing what it holds (nobody else
 * can go live). Backup wins: it goes live from the last checkpoint it applied (`go-live`). Loser: halts.
 */
import { assert } from '../util/errors.js';

export interface CheckpointPrimaryConfig {
  epoch: number;
  intervalMs: number;
  failTimeoutMs: number;
  claimRetryMs: number;
  inFlightMax: number;
  heldMaxOutputs: number;
  /** Capture before the interval when outputs are waiting (latency over throughput). */
  eagerWhenOutputsHeld: boolean;
  /** No backup yet: outputs are released at once. */
  alone: boolean;
  /**
   * TEST ONLY (the simulator shows its output-rule checker catches it): 'release-at-capture' releases an
   * epoch's outputs as soon as its checkpoint is captured, before the backup acknowledged it.
   */
  testOnlyBreak?: 'release-at-capture';
}

export type CheckpointPrimaryInput =
  | { t: 'tick'; nowMs: number }
  /** The guest produced an output (held until its epoch's checkpoint is acknowledged). */
  | { t: 'output'; id: number }
  /** The driver captured the checkpoint it was asked for; `bytes` is the size it will send. */
  | { t: 'captured'; checkpoint: number; bytes: number }
  /** The capture it asked for failed (the guest stopped, or could not stand still): asked again when due. */
  | { t: 'capture-failed'; checkpoint: number }
  /** Nothing changed since the last checkpoint (the guest did not run, no input): not captured, asked again when due. */
  | { t: 'unchanged'; checkpoint: number }
  /** The backup applied and acknowledges every checkpoint up to `checkpoint`. */
  | { t: 'ack'; checkpoint: number; nowMs: number }
  | { t: 'heard'; nowMs: number }
  /**
   * A (new) connection to the backup. `applied`: the checkpoint its HELLO says it applied (0: none);
   * unknown, the backup is assumed to hold the last acknowledged one.
   */
  | { t: 'peer-open'; nowMs: number; applied?: number }
  | { t: 'peer-closed' }
  /**
   * Serving alone, a recruited standby connected (re-replication): it becomes the backup. Outputs from
   * here on are held; the first checkpoint is a base (all of memory), and `joined` follows its
   * acknowledgement. From this input on a silent backup is a failure like any other (claim at the
   * arbiter): once the base is sent, the standby may hold it and claim, so giving up without a claim
   * could leave two live primaries.
   */
  | { t: 'join'; nowMs: number }
  | { t: 'claim-result'; won: boolean; epoch: number; unavailable?: boolean };

export type CheckpointPrimaryAction =
  /** `base`: reset the encoder first (empty shadow), so this checkpoint is a base. */
  | { t: 'capture'; checkpoint: number; base: boolean }
  /** Forget every unacknowledged checkpoint kept for resending (a base replaces them). */
  | { t: 'drop-unacked' }
  | { t: 'send-checkpoint'; checkpoint: number; epoch: number }
  | { t: 'release'; ids: number[] }
  | { t: 'throttle'; on: boolean }
  | { t: 'heartbeat'; epoch: number }
  | { t: 'claim'; epoch: number }
  | { t: 'alone'; epoch: number }
  /** The recruited backup acknowledged its base checkpoint: the VM is protected again. */
  | { t: 'joined'; epoch: number; checkpoint: number }
  | { t: 'halt'; reason: string };

export interface CheckpointPrimaryStatus {
  epoch: number;
  /** The checkpoint being built (outputs produced now belong to it). */
  openCheckpoint: number;
  ackedCheckpoint: number;
  capturedCheckpoint: number;
  heldOutputs: number;
  inFlight: number;
  /** The next capture is a base checkpoint (the backup lacks the last acknowledged one). */
  baseDue: boolean;
  /** A recruited backup is receiving its base checkpoint. */
  joining: boolean;
  throttled: boolean;
  alone: boolean;
  phase: 'running' | 'claiming' | 'halted';
  bytesSent: number;
}

export class CheckpointPrimaryCore {
  private epoch: number;
  /** Outputs produced in the open epoch belong to checkpoint `open`. */
  private open = 1;
  private captured = 0;
  private acked = 0;
  private capturing = false;
  private lastCaptureMs = -Infinity;
  private lastHeardMs = 0;
  private lastSentMs = -Infinity;
  private peer = false;
  /** The backup connected at least once: silence before that is a backup still starting, not a failure. */
  private everConnected = false;
  private alone: boolean;
  private phase: 'running' | 'claiming' | 'halted' = 'running';
  private throttled = false;
  private nextClaimMs = 0;
  private bytesSent = 0;
  /** The next capture is a base: the backup connected without the last acknowledged checkpoint. */
  private baseDue = false;
  /** The capture in progress was asked for as a base. */
  private capturingBase = false;
  /** The checkpoint the backup said it applied, at the connection that made a base due. */
  private peerApplied = 0;
  /** Checkpoints up to this one were dropped unacknowledged (a base replaces them): not in flight. */
  private droppedThrough = 0;
  /** Acknowledgements below this are ignored (Infinity while a base is due: the backup's are of its old state). */
  private ackFloor = 0;
  /** Held outputs in production order: [checkpoint, id]. */
  private held: Array<[number, number]> = [];
  /** A recruited backup is joining: `joined` is due once it acknowledges a base. */
  private joining = false;
  /** The latest time an input carried (outputs carry none): when an eager capture starts. */
  private lastNowMs = 0;

  constructor(private readonly cfg: CheckpointPrimaryConfig) {
    assert(cfg.intervalMs > 0 && cfg.failTimeoutMs > 0 && cfg.inFlightMax >= 1 && cfg.heldMaxOutputs >= 1, 'checkpoint config');
    this.epoch = cfg.epoch;
    this.alone = cfg.alone;
  }

  status(): CheckpointPrimaryStatus {
    return {
      epoch: this.epoch,
      openCheckpoint: this.open,
      ackedCheckpoint: this.acked,
      capturedCheckpoint: this.captured,
      heldOutputs: this.held.length,
      inFlight: this.inFlight(),
      baseDue: this.baseDue,
      joining: this.joining,
      throttled: this.throttled,
      alone: this.alone,
      phase: this.phase,
      bytesSent: this.bytesSent,
    };
  }

  private inFlight(): number {
    return this.captured - Math.max(this.acked, this.droppedThrough);
  }

  step(i: CheckpointPrimaryInput): CheckpointPrimaryAction[] {
    const out: CheckpointPrimaryAction[] = [];
    if (this.phase === 'halted') return out;
    if ('nowMs' in i && i.nowMs > this.lastNowMs) this.lastNowMs = i.nowMs;
    switch (i.t) {
      case 'output':
        if (this.alone) out.push({ t: 'release', ids: [i.id] });
        else this.held.push([this.open, i.id]);
        break;
      case 'captured':
        assert(this.capturing && i.checkpoint === this.open, `captured checkpoint ${i.checkpoint}, asked for ${this.open}`);
        this.capturing = false;
        this.captured = i.checkpoint;
        this.open = i.checkpoint + 1;
        this.bytesSent += i.bytes;
        if (this.capturingBase) {
          this.capturingBase = false;
          this.baseDue = false;
          this.ackFloor = i.checkpoint;
        } else if (this.baseDue) {
          // A delta captured while the base became due: the backup cannot apply it. Not sent, not in flight.
          this.droppedThrough = this.captured;
          break;
        }
        if (this.alone) {
          // Nobody to send to; a capture while alone only happens when a backup is being joined.
          this.acked = this.captured;
        } else if (this.peer) {
          out.push({ t: 'send-checkpoint', checkpoint: i.checkpoint, epoch: this.epoch });
        }
        if (this.cfg.testOnlyBreak === 'release-at-capture') this.releaseThrough(this.captured, out); // TEST ONLY
        break;
      case 'capture-failed':
      case 'unchanged':
        assert(this.capturing && i.checkpoint === this.open, `capture of ${i.checkpoint} ${i.t}, asked for ${this.open}`);
        this.capturing = false;
        this.capturingBase = false;
        break;
      case 'ack': {
        this.lastHeardMs = i.nowMs;
        // Before the base is acknowledged, the backup's acknowledgements are of its old state: heard only.
        if (i.checkpoint < this.ackFloor) break;
        if (i.checkpoint > this.captured) {
          out.push({ t: 'halt', reason: `the backup acknowledged checkpoint ${i.checkpoint}, beyond the last captured (${this.captured})` });
          this.phase = 'halted';
          return out;
        }
        if (i.checkpoint > this.acked) {
          this.acked = i.checkpoint;
          this.releaseAcked(out);
          if (this.joining) {
            this.joining = false;
            out.push({ t: 'joined', epoch: this.epoch, checkpoint: i.checkpoint });
          }
        }
        break;
      }
      case 'heard':
        this.lastHeardMs = i.nowMs;
        break;
      case 'peer-open':
        this.peer = true;
        this.everConnected = true;
        this.lastHeardMs = i.nowMs;
        if (this.baseDue || (i.applied !== undefined && i.applied !== this.acked)) {
          // The backup lacks the last acknowledged checkpoint: the kept deltas are of no use to it.
          this.baseDue = true;
          this.ackFloor = Infinity;
          this.peerApplied = i.applied ?? this.peerApplied;
          // A base being captured but numbered no later than what this backup applied would be refused: ask again.
          if (this.capturingBase && this.open <= this.peerApplied) this.capturingBase = false;
          this.droppedThrough = this.captured;
          out.push({ t: 'drop-unacked' });
          if (!this.alone && !this.capturing && this.phase === 'running') this.startCapture(i.nowMs, out);
          break;
        }
        // Resend every checkpoint not acknowledged (the driver keeps them until acknowledged).
        for (let c = Math.max(this.acked, this.droppedThrough) + 1; c <= this.captured; c++) out.push({ t: 'send-checkpoint', checkpoint: c, epoch: this.epoch });
        break;
      case 'peer-closed':
        this.peer = false;
        break;
      case 'join':
        if (!this.alone || this.phase !== 'running') break; // a pair already (or deciding): the driver refuses the standby
        this.alone = false;
        this.joining = true;
        this.peer = true;
        this.everConnected = true;
        this.lastHeardMs = i.nowMs;
        this.lastSentMs = -Infinity;
        // Nothing it holds counts: a base, numbered after everything captured, with nothing in flight.
        this.baseDue = true;
        this.ackFloor = Infinity;
        this.peerApplied = this.captured;
        this.droppedThrough = this.captured;
        this.acked = this.captured;
        out.push({ t: 'drop-unacked' });
        if (!this.capturing) this.startCapture(i.nowMs, out);
        break;
      case 'claim-result':
        if (this.phase !== 'claiming') break;
        if (i.unavailable) break; // retried at the next tick after claimRetryMs
        if (i.won) {
          this.epoch = i.epoch;
          this.alone = true;
          this.joining = false;
          this.phase = 'running';
          this.acked = this.captured;
          out.push({ t: 'alone', epoch: this.epoch });
          this.releaseAll(out);
        } else {
          this.phase = 'halted';
          out.push({ t: 'halt', reason: `lost the arbiter claim at epoch ${this.epoch}: the backup is live` });
        }
        break;
      case 'tick':
        this.tick(i.nowMs, out);
        break;
    }
    // Latency: an output waiting in the open epoch starts its capture at once (not at the next tick),
    // pipelined up to inFlightMax checkpoints.
    if (this.cfg.eagerWhenOutputsHeld && this.peer && !this.alone && this.phase === 'running' && !this.capturing && this.openHasOutputs() && this.inFlight() < this.cfg.inFlightMax) {
      this.startCapture(this.lastNowMs, out);
    }
    this.updateThrottle(out);
    return out;
  }

  /** An output of the open epoch is held (held outputs are in production order: the last is the newest). */
  private openHasOutputs(): boolean {
    return this.held.length > 0 && this.held[this.held.length - 1]![0] === this.open;
  }

  private tick(now: number, out: CheckpointPrimaryAction[]): void {
    if (this.phase === 'claiming') {
      if (now >= this.nextClaimMs) {
        this.nextClaimMs = now + this.cfg.claimRetryMs;
        out.push({ t: 'claim', epoch: this.epoch });
      }
      return;
    }
    if (!this.alone) {
      if (this.everConnected && now - this.lastHeardMs > this.cfg.failTimeoutMs) {
        this.phase = 'claiming';
        this.nextClaimMs = now + this.cfg.claimRetryMs;
        out.push({ t: 'claim', epoch: this.epoch });
        return;
      }
      if (this.peer && now - this.lastSentMs >= this.cfg.failTimeoutMs / 4) {
        this.lastSentMs = now;
        out.push({ t: 'heartbeat', epoch: this.epoch });
      }
    }
    const due = this.baseDue || now - this.lastCaptureMs >= this.cfg.intervalMs || (this.cfg.eagerWhenOutputsHeld && this.openHasOutputs());
    if (!this.alone && !this.capturing && due && this.inFlight() < this.cfg.inFlightMax) this.startCapture(now, out);
  }

  private startCapture(now: number, out: CheckpointPrimaryAction[]): void {
    this.capturing = true;
    this.lastCaptureMs = now;
    this.capturingBase = this.baseDue;
    // A base is numbered after whatever the backup applied (it accepts a base only after its own).
    if (this.baseDue) this.open = Math.max(this.open, this.peerApplied + 1);
    out.push({ t: 'capture', checkpoint: this.open, base: this.baseDue });
  }

  private releaseAcked(out: CheckpointPrimaryAction[]): void {
    this.releaseThrough(this.acked, out);
  }

  private releaseThrough(checkpoint: number, out: CheckpointPrimaryAction[]): void {
    let n = 0;
    while (n < this.held.length && this.held[n]![0] <= checkpoint) n++;
    if (n === 0) return;
    const ids = this.held.slice(0, n).map(([, id]) => id);
    this.held = this.held.slice(n);
    out.push({ t: 'release', ids });
  }

  private releaseAll(out: CheckpointPrimaryAction[]): void {
    if (this.held.length === 0) return;
    out.push({ t: 'release', ids: this.held.map(([, id]) => id) });
    this.held = [];
  }

  private updateThrottle(out: CheckpointPrimaryAction[]): void {
    const want = !this.alone && (this.inFlight() >= this.cfg.inFlightMax || this.held.length >= this.cfg.heldMaxOutputs);
    if (want !== this.throttled) {
      this.throttled = want;
      out.push({ t: 'throttle', on: want });
    }
  }
}

export interface CheckpointBackupConfig {
  epoch: number;
  failTimeoutMs: number;
  claimRetryMs: number;
}

export type CheckpointBackupInput =
  | { t: 'tick'; nowMs: number }
  /** A checkpoint frame arrived (not yet applied); `base`: its header says it is a base checkpoint. */
  | { t: 'checkpoint'; checkpoint: number; epoch: number; nowMs: number; base?: boolean }
  /** The driver applied checkpoint n to its copy of the VM. */
  | { t: 'applied'; checkpoint: number }
  /**
   * The driver refused checkpoint n (truncated, corrupt, inconsistent: FTVM_ERR_CHECKPOINT) and kept the
   * last complete one; the primary resends it (the driver drops the connection, the primary resends every
   * unacknowledged checkpoint when it reconnects).
   */
  | { t: 'refused'; checkpoint: number; reason: string }
  | { t: 'heard'; nowMs: number }
  | { t: 'peer-closed' }
  | { t: 'claim-result'; won: boolean; epoch: number; unavailable?: boolean };

export type CheckpointBackupAction =
  | { t: 'apply'; checkpoint: number }
  | { t: 'ack'; checkpoint: number; epoch: number }
  | { t: 'drop'; checkpoint: number; reason: string }
  | { t: 'claim'; epoch: number }
  | { t: 'go-live'; epoch: number; checkpoint: number }
  | { t: 'halt'; reason: string };

export class CheckpointBackupCore {
  private epoch: number;
  private applied = 0;
  private applying = 0;
  private lastHeardMs = 0;
  private heard = false;
  private lastAckMs = -Infinity;
  private phase: 'following' | 'claiming' | 'live' | 'halted' = 'following';
  private nextClaimMs = 0;

  constructor(private readonly cfg: CheckpointBackupConfig) {
    this.epoch = cfg.epoch;
  }

  status(): { epoch: number; applied: number; phase: string } {
    return { epoch: this.epoch, applied: this.applied, phase: this.phase };
  }

  step(i: CheckpointBackupInput): CheckpointBackupAction[] {
    const out: CheckpointBackupAction[] = [];
    if (this.phase === 'halted' || this.phase === 'live') return out;
    switch (i.t) {
      case 'checkpoint':
        if (i.epoch < this.epoch) {
          out.push({ t: 'drop', checkpoint: i.checkpoint, reason: `epoch ${i.epoch} is older than ${this.epoch}` });
          break;
        }
        this.heard = true;
        this.lastHeardMs = i.nowMs;
        if (this.phase === 'claiming') break; // too late: the claim decides
        if (i.checkpoint <= this.applied || i.checkpoint <= this.applying) {
          out.push({ t: 'ack', checkpoint: this.applied, epoch: this.epoch }); // a resend: acknowledge again
          break;
        }
        if (i.base !== true && i.checkpoint !== Math.max(this.applied, this.applying) + 1) {
          out.push({ t: 'drop', checkpoint: i.checkpoint, reason: `checkpoint ${i.checkpoint} after ${Math.max(this.applied, this.applying)}: a gap` });
          break;
        }
        this.applying = i.checkpoint;
        out.push({ t: 'apply', checkpoint: i.checkpoint });
        break;
      case 'applied':
        assert(i.checkpoint === this.applying && i.checkpoint > this.applied, `applied ${i.checkpoint}, applying ${this.applying} after ${this.applied}`);
        this.applied = i.checkpoint;
        out.push({ t: 'ack', checkpoint: this.applied, epoch: this.epoch });
        break;
      case 'refused':
        assert(i.checkpoint === this.applying && i.checkpoint > this.applied, `refused ${i.checkpoint}, applying ${this.applying}`);
        this.applying = this.applied;
        out.push({ t: 'drop', checkpoint: i.checkpoint, reason: i.reason });
        break;
      case 'heard':
        this.heard = true;
        this.lastHeardMs = i.nowMs;
        break;
      case 'peer-closed':
        break;
      case 'tick':
        if (this.phase === 'claiming') {
          if (i.nowMs >= this.nextClaimMs) {
            this.nextClaimMs = i.nowMs + this.cfg.claimRetryMs;
            out.push({ t: 'claim', epoch: this.epoch });
          }
        } else if (this.heard && i.nowMs - this.lastHeardMs <= this.cfg.failTimeoutMs && i.nowMs - this.lastAckMs >= this.cfg.failTimeoutMs / 4) {
          // The backup's heartbeat: its last acknowledgement again, so a primary between checkpoints (or
          // waiting for a slow capture) keeps hearing it and does not claim.
          this.lastAckMs = i.nowMs;
          out.push({ t: 'ack', checkpoint: this.applied, epoch: this.epoch });
        }
        if (this.phase === 'following' && this.heard && this.applied > 0 && i.nowMs - this.lastHeardMs > this.cfg.failTimeoutMs && this.applying === this.applied) {
          // Silent primary, and the last checkpoint is fully applied: claim. (A backup that never held a
          // whole checkpoint has nothing to go live from and keeps waiting.)
          this.phase = 'claiming';
          this.nextClaimMs = i.nowMs + this.cfg.claimRetryMs;
          out.push({ t: 'claim', epoch: this.epoch });
        }
        break;
      case 'claim-result':
        if (this.phase !== 'claiming' || i.unavailable) break;
        if (i.won) {
          this.phase = 'live';
          this.epoch = i.epoch;
          out.push({ t: 'go-live', epoch: i.epoch, checkpoint: this.applied });
        } else {
          this.phase = 'halted';
          out.push({ t: 'halt', reason: `lost the arbiter claim at epoch ${this.epoch}: the primary is live` });
        }
        break;
    }
    return out;
  }
}

/**
 * The primary's replication core: a pure state machine (etcd-io/raft's shape). `step(input)` returns
 * the actions the driver must perform. No sockets, timers, clocks or randomness in here: time enters as
 * `tick` inputs carrying the driver's clock reading.
 *
 * Responsibilities:
 * - stream log batches to the backup (and resend from the backup's position after a reconnect);
 * - the output rule: hold each output until the backup's cumulative ACK covers its own entry;
 * - heartbeats that grant the backup progress while the guest computes without logging;
 * - execution-lag control: when the backup's replay is more than `lagMaxMs` behind, or the unacked log
 *   exceeds its bound, ask the driver to slow the primary at its budget checkpoints.
 */
import { ControlKind, FrameType, type Frame } from './messages.js';
import type { WireOutput } from './messages.js';
import { assert } from '../util/errors.js';

export interface PrimaryConfig {
  epoch: number;
  /** Send a heartbeat at least this often when nothing else was sent. */
  heartbeatIntervalMs: number;
  /** Send progress grants at most this often while the guest computes without logging. */
  grantIntervalMs: number;
  /** Slow the primary when the backup's replay lags by more than this. */
  lagMaxMs: number;
  /** Slow the primary when unacknowledged log exceeds this many bytes. */
  unackedMaxBytes: number;
  /** Slow the primary when this many outputs wait for an ACK. */
  heldMaxOutputs: number;
  /** FT off: no backup; outputs are released at once. */
  alone: boolean;
  /** Silence from the backup for this long → claim the VM at the arbiter. */
  failTimeoutMs: number;
  /** After an unreachable arbiter, ask again this often. */
  claimRetryMs: number;
  /** Sequence number of the first entry this primary will log (a backup gone live continues the log). */
  firstSeq?: number;
  /**
   * A joiner silent this long is abandoned. Longer than failTimeoutMs: a joiner protects nothing, and
   * it may be busy restoring a large snapshot. Default max(2000, 10 × failTimeoutMs).
   */
  joinTimeoutMs?: number;
  /** TEST ONLY (src/sim): a deliberately broken core, to show that the simulator catches it. Never set otherwise. */
  testOnlyBreak?: 'release-before-ack';
}

export const joinTimeoutOf = (c: { failTimeoutMs: number; joinTimeoutMs?: number }): number => c.joinTimeoutMs ?? Math.max(2000, 10 * c.failTimeoutMs);

/** Re-replication in progress: a new backup is being cloned from a snapshot taken at `snapshotSeq`. */
interface Join {
  snapshotSeq: number;
  /** The snapshot reached the joiner and the log streams from snapshotSeq (peer-open). */
  streaming: boolean;
  /** An 'arm' action is out (the driver is asking the arbiter). */
  arming: boolean;
  /** Do not ask to arm before this time (after an unreachable arbiter). */
  armRetryAtMs: number;
}

export type PrimaryInput =
  | { t: 'tick'; nowMs: number }
  /** From the vCPU: entries [firstSeq, firstSeq+count) (count may be 0: progress only) and their outputs. */
  | { t: 'log'; firstSeq: number; count: number; bytes: Uint8Array; instructionNumber: number; outputs: WireOutput[] }
  | { t: 'peer-open'; backupNextSeq: number }
  | { t: 'peer-closed' }
  /**
   * Evidence that the backup's process is gone (its channel address refused a connection after the
   * channel closed): claim now instead of waiting out the fail timeout. The arbiter still decides.
   */
  | { t: 'peer-gone'; evidence: string }
  | { t: 'frame'; frame: Frame }
  /** The arbiter answered our claim; `epoch` is the record's epoch afterwards. */
  | { t: 'claim-result'; won: boolean; epoch: number; owner: string }
  /** The arbiter could not be reached: keep holding outputs, ask again later. */
  | { t: 'claim-failed'; reason: string }
  /**
   * Re-replication: while running alone, the vCPU took a snapshot at an idle point after entry
   * `snapshotSeq - 1`; from here on the log is kept for the joiner (outputs still go out at once: the
   * joiner protects nothing until the pair is armed). The snapshot then streams to the joiner; once it
   * arrived the driver sends `peer-open` with backupNextSeq = snapshotSeq.
   */
  | { t: 'join-begin'; snapshotSeq: number }
  /** The driver gave up on the join (transfer cut or refused). */
  | { t: 'join-abort'; reason: string }
  /**
   * The arbiter's answer to 'arm': ok → the record moved to `epoch` (ours); fenced → the record belongs
   * to someone else now (halt); neither → unreachable, ask again later.
   */
  | { t: 'arm-result'; ok: boolean; epoch: number; fenced: boolean; reason: string };

export type PrimaryAction =
  | { t: 'send'; frame: Frame }
  | { t: 'release'; outputs: WireOutput[] }
  | { t: 'throttle'; on: boolean; reason: string }
  | { t: 'drop-peer'; reason: string }
  | { t: 'backup-diverged'; reason: string }
  | { t: 'hash-verified'; n: number; hash: Uint8Array; ok: boolean }
  /** Ask the arbiter for the VM at `epoch` (test-and-set). */
  | { t: 'claim'; epoch: number }
  /** Won the claim: the backup is gone, this primary continues alone at `epoch`. */
  | { t: 'went-alone'; epoch: number; reason: string }
  /** Lost the claim (the backup went live): stop at once, release nothing. */
  | { t: 'halt'; reason: string }
  /** The joining backup caught up: ask the arbiter to advance the VM's record from `epoch` (arbiter.advance). */
  | { t: 'arm'; epoch: number }
  /** The pair is protected again at `epoch`: the output rule applies from here on. */
  | { t: 'armed'; epoch: number }
  /** The join failed (transfer cut, joiner silent, too slow): drop the joiner; this primary serves alone. */
  | { t: 'join-abandoned'; reason: string };

interface Batch {
  firstSeq: number;
  count: number;
  bytes: Uint8Array;
  instructionNumber: number;
}

/** Bounded history of (instruction number, time) for the lag estimate. */
const LAG_SAMPLES_MAX = 4096;

export interface PrimaryStatus {
  epoch: number;
  alone: boolean;
  claiming: boolean;
  halted: string | null;
  peer: boolean;
  nextSeq: number;
  ackedSeq: number;
  instructionNumber: number;
  backupInstructionNumber: number;
  lagMs: number;
  outputsHeld: number;
  unackedBytes: number;
  logBytesSent: number;
  throttled: boolean;
  /** Re-replication in progress: 'transferring' (snapshot streaming), 'catching-up', 'arming'. */
  joining: 'transferring' | 'catching-up' | 'arming' | null;
  /** Why the claim in progress was made, when on evidence of the backup's death (else silence). */
  claimCause: string | null;
}

export class PrimaryCore {
  private nowMs = 0;
  private started = false;
  private peer = false;
  private nextSeq = 0;
  private ackedSeq = 0;
  private sentSeq = 0;
  private instructionNumber = 0;
  private backupN = 0;
  private readonly unacked: Batch[] = [];
  private unackedBytes = 0;
  private readonly held: WireOutput[] = [];
  private heldHead = 0;
  private readonly samples: Array<[number, number]> = [];
  private lastSendMs = -Infinity;
  private lastGrantN = -1;
  private throttled = false;
  private logBytesSent = 0;
  private epoch: number;
  private alone: boolean;
  private lastHeardMs = 0;
  private claiming = false;
  /** Why the pending claim was made, when not silence past the timeout (for the went-alone reason). */
  private claimCause: string | undefined;
  /** A backup was connected to this primary at some point (evidence of its death means something). */
  private sawBackup = false;
  private claimRetryAtMs = 0;
  private halted: string | null = null;
  private join: Join | null = null;

  constructor(readonly cfg: PrimaryConfig) {
    this.epoch = cfg.epoch;
    this.alone = cfg.alone;
    this.nextSeq = this.ackedSeq = this.sentSeq = cfg.firstSeq ?? 0;
  }

  /** Entries below this seq are covered by the output rule (the backup holds them, or this primary runs alone). */
  get coveredSeq(): number {
    return this.alone ? this.nextSeq : this.ackedSeq;
  }

  status(): PrimaryStatus {
    return {
      epoch: this.epoch,
      alone: this.alone,
      claiming: this.claiming,
      halted: this.halted,
      peer: this.peer,
      nextSeq: this.nextSeq,
      ackedSeq: this.ackedSeq,
      instructionNumber: this.instructionNumber,
      backupInstructionNumber: this.backupN,
      lagMs: this.lagMs(),
      outputsHeld: this.held.length - this.heldHead,
      unackedBytes: this.unackedBytes,
      logBytesSent: this.logBytesSent,
      throttled: this.throttled,
      joining: this.join === null ? null : !this.join.streaming ? 'transferring' : this.join.arming ? 'arming' : 'catching-up',
      claimCause: this.claimCause ?? null,
    };
  }

  /** How long ago the primary was at the first point the backup has not replayed (0 when caught up). */
  lagMs(): number {
    for (const [n, t] of this.samples) if (n > this.backupN) return Math.max(0, this.nowMs - t);
    return 0;
  }

  step(input: PrimaryInput): PrimaryAction[] {
    const out: PrimaryAction[] = [];
    if (this.halted !== null) return out; // a fenced primary does nothing, ever
    switch (input.t) {
      case 'tick':
        assert(input.nowMs >= this.nowMs, 'time never goes back');
        if (!this.started) {
          this.started = true;
          this.lastHeardMs = input.nowMs;
        }
        this.nowMs = input.nowMs;
        if (this.peer && this.nowMs - this.lastSendMs >= this.cfg.heartbeatIntervalMs) this.sendHeartbeat(out);
        this.detectFailure(out);
        this.tickJoin(out);
        break;
      case 'claim-result':
        this.claiming = false;
        if (input.won) {
          this.epoch = input.epoch;
          this.alone = true;
          this.peer = false;
          out.push({ t: 'went-alone', epoch: input.epoch, reason: `${this.claimCause ?? `the backup was silent for ${this.cfg.failTimeoutMs} ms`}; this primary won epoch ${input.epoch}` });
          this.claimCause = undefined;
          // Nothing waits for a backup any more: everything logged counts as acknowledged.
          this.ackedSeq = this.nextSeq;
          this.unacked.length = 0;
          this.unackedBytes = 0;
          this.releaseCovered(out);
        } else {
          this.halted = `lost the claim for epoch ${this.epoch}: ${input.owner} owns epoch ${input.epoch}`;
          out.push({ t: 'halt', reason: this.halted });
          return out;
        }
        break;
      case 'claim-failed':
        this.claiming = false;
        this.claimRetryAtMs = this.nowMs + this.cfg.claimRetryMs;
        break;
      case 'log':
        this.onLog(input, out);
        break;
      case 'join-begin':
        assert(this.alone && this.join === null, 'a join starts on a primary running alone, one at a time');
        assert(input.snapshotSeq === this.nextSeq, `the snapshot is taken after every logged batch (${input.snapshotSeq} vs ${this.nextSeq})`);
        this.join = { snapshotSeq: input.snapshotSeq, streaming: false, arming: false, armRetryAtMs: 0 };
        this.ackedSeq = this.sentSeq = this.nextSeq;
        this.backupN = 0;
        this.peer = false;
        break;
      case 'join-abort':
        if (this.join !== null) this.abandonJoin(input.reason, out);
        break;
      case 'arm-result':
        this.onArmResult(input, out);
        if (this.halted !== null) return out;
        break;
      case 'peer-open':
        if (this.join !== null) {
          if (input.backupNextSeq !== this.join.snapshotSeq || this.join.streaming) {
            this.abandonJoin(`the joiner expects entry ${input.backupNextSeq}, the snapshot was taken at ${this.join.snapshotSeq}`, out);
            break;
          }
          this.join.streaming = true;
          this.lastHeardMs = this.nowMs;
          this.onPeerOpen(input.backupNextSeq, out);
          break;
        }
        if (this.alone) {
          out.push({ t: 'drop-peer', reason: 'this primary runs alone (a new backup must be cloned from a snapshot)' });
          break;
        }
        this.lastHeardMs = this.nowMs;
        this.onPeerOpen(input.backupNextSeq, out);
        break;
      case 'peer-closed':
        this.peer = false;
        if (this.join !== null) this.abandonJoin('the joiner disconnected', out);
        break;
      case 'peer-gone':
        // Stale evidence (the backup is back, or there is no backup to lose: e.g. it is not up yet at
        // start) changes nothing.
        if (!this.sawBackup || this.peer || this.alone || this.join !== null || this.claiming || this.nowMs < this.claimRetryAtMs) break;
        this.claiming = true;
        this.claimCause = `the backup's process is gone (${input.evidence})`;
        out.push({ t: 'claim', epoch: this.epoch });
        break;
      case 'frame':
        this.onFrame(input.frame, out);
        break;
    }
    this.evaluateThrottle(out);
    return out;
  }

  private onLog(input: Extract<PrimaryInput, { t: 'log' }>, out: PrimaryAction[]): void {
    assert(input.firstSeq === this.nextSeq, `log batches arrive in order (${input.firstSeq} vs ${this.nextSeq})`);
    if (input.instructionNumber > this.instructionNumber) {
      this.instructionNumber = input.instructionNumber;
      this.samples.push([input.instructionNumber, this.nowMs]);
      if (this.samples.length > LAG_SAMPLES_MAX) this.samples.splice(0, this.samples.length - LAG_SAMPLES_MAX);
    }
    if (input.count > 0) {
      const b: Batch = { firstSeq: input.firstSeq, count: input.count, bytes: input.bytes, instructionNumber: input.instructionNumber };
      this.nextSeq += input.count;
      if (this.alone && this.join === null) {
        this.ackedSeq = this.nextSeq;
      } else {
        this.unacked.push(b);
        this.unackedBytes += b.bytes.length;
        if (this.peer) this.sendBatch(b, out);
      }
    } else if (this.peer && input.instructionNumber > this.lastGrantN && this.nowMs - this.lastSendMs >= this.cfg.grantIntervalMs) {
      this.sendHeartbeat(out);
    }
    for (const o of input.outputs) this.held.push(o);
    this.releaseCovered(out);
  }

  private sendBatch(b: Batch, out: PrimaryAction[]): void {
    out.push({ t: 'send', frame: { type: FrameType.LOG, epoch: this.epoch, firstSeq: b.firstSeq, count: b.count, instructionNumber: b.instructionNumber, batch: b.bytes } });
    this.sentSeq = b.firstSeq + b.count;
    this.lastSendMs = this.nowMs;
    this.lastGrantN = b.instructionNumber;
    this.logBytesSent += b.bytes.length;
  }

  private sendHeartbeat(out: PrimaryAction[]): void {
    out.push({ t: 'send', frame: { type: FrameType.HEARTBEAT, epoch: this.epoch, instructionNumber: this.instructionNumber, nextSeq: this.sentSeq } });
    this.lastSendMs = this.nowMs;
    this.lastGrantN = this.instructionNumber;
  }

  private onPeerOpen(backupNextSeq: number, out: PrimaryAction[]): void {
    const oldest = this.unacked[0]?.firstSeq ?? this.nextSeq;
    if (backupNextSeq < oldest || backupNextSeq > this.nextSeq) {
      out.push({ t: 'drop-peer', reason: `the backup expects entry ${backupNextSeq}, but this primary holds entries ${oldest}..${this.nextSeq}; it must be re-cloned from a snapshot` });
      return;
    }
    this.peer = true;
    this.sawBackup = true;
    // The backup holds everything before backupNextSeq: that is an acknowledgement.
    this.onAck(backupNextSeq, this.backupN, out);
    this.sentSeq = backupNextSeq;
    for (const b of this.unacked) {
      if (b.firstSeq >= backupNextSeq) this.sendBatch(b, out);
      else assert(b.firstSeq + b.count <= backupNextSeq, 'backups acknowledge whole batches');
    }
    this.sendHeartbeat(out);
  }

  /** Silence from the backup past the timeout: ask the arbiter (unless already asking, or alone). */
  private detectFailure(out: PrimaryAction[]): void {
    if (this.alone || this.claiming || this.nowMs < this.claimRetryAtMs) return;
    if (this.nowMs - this.lastHeardMs <= this.cfg.failTimeoutMs) return;
    this.claiming = true;
    out.push({ t: 'claim', epoch: this.epoch });
  }

  private onFrame(f: Frame, out: PrimaryAction[]): void {
    if ('epoch' in f && f.epoch !== this.epoch) return; // older (or foreign) epoch: ignored
    this.lastHeardMs = this.nowMs;
    switch (f.type) {
      case FrameType.ACK:
        this.onAck(f.ackSeq, f.replayedInstructionNumber, out);
        break;
      case FrameType.STATE_HASH:
        out.push({ t: 'hash-verified', n: f.n, hash: f.hash, ok: f.ok });
        if (!f.ok) out.push({ t: 'backup-diverged', reason: `the backup's state hash differs at instruction ${f.n}` });
        break;
      case FrameType.CONTROL:
        out.push({ t: 'backup-diverged', reason: f.reason });
        break;
      default:
        break; // frames a primary does not act on
    }
  }

  private onAck(ackSeq: number, replayedN: number, out: PrimaryAction[]): void {
    if (ackSeq > this.nextSeq) return; // acknowledges entries never sent: ignore (a confused or hostile peer)
    if (replayedN > this.backupN) {
      this.backupN = replayedN;
      let drop = 0;
      while (drop < this.samples.length - 1 && this.samples[drop + 1]![0] <= replayedN) drop++;
      if (drop > 0) this.samples.splice(0, drop);
    }
    if (ackSeq <= this.ackedSeq) return;
    this.ackedSeq = ackSeq;
    while (this.unacked.length > 0 && this.unacked[0]!.firstSeq + this.unacked[0]!.count <= ackSeq) {
      this.unackedBytes -= this.unacked.shift()!.bytes.length;
    }
    this.releaseCovered(out);
  }

  /** The output rule: an output goes out once every entry up to and including its own is acknowledged. */
  private releaseCovered(out: PrimaryAction[]): void {
    const ready: WireOutput[] = [];
    // Alone (also while a joiner catches up: it protects nothing before the pair is armed), every
    // logged entry counts as covered.
    const coveredSeq = this.alone || this.cfg.testOnlyBreak === 'release-before-ack' /* TEST ONLY */ ? this.nextSeq : this.ackedSeq;
    while (this.heldHead < this.held.length && this.held[this.heldHead]!.seq < coveredSeq) ready.push(this.held[this.heldHead++]!);
    if (this.heldHead > 1024 && this.heldHead * 2 > this.held.length) {
      this.held.splice(0, this.heldHead);
      this.heldHead = 0;
    }
    if (ready.length > 0) out.push({ t: 'release', outputs: ready });
  }

  /** While a joiner catches up: give up on silence or an overflowing log; ask to arm once it caught up. */
  private tickJoin(out: PrimaryAction[]): void {
    const j = this.join;
    if (j === null) return;
    if (this.unackedBytes > this.cfg.unackedMaxBytes) {
      this.abandonJoin(`the joiner fell ${this.unackedBytes} log bytes behind (max ${this.cfg.unackedMaxBytes})`, out);
      return;
    }
    if (!j.streaming || j.arming) return;
    if (this.nowMs - this.lastHeardMs > joinTimeoutOf(this.cfg)) {
      this.abandonJoin(`the joiner was silent for ${joinTimeoutOf(this.cfg)} ms`, out);
      return;
    }
    if (this.nowMs < j.armRetryAtMs) return;
    if (this.ackedSeq >= j.snapshotSeq && this.backupN > 0 && this.lagMs() <= this.cfg.lagMaxMs) {
      j.arming = true;
      out.push({ t: 'arm', epoch: this.epoch });
    }
  }

  private onArmResult(r: Extract<PrimaryInput, { t: 'arm-result' }>, out: PrimaryAction[]): void {
    const j = this.join;
    if (j === null || !j.arming) return; // the join was abandoned meanwhile; an advanced record is harmless
    j.arming = false;
    if (r.fenced) {
      this.halted = `the arbiter's record moved on while arming a new backup: ${r.reason}`;
      out.push({ t: 'halt', reason: this.halted });
      return;
    }
    if (!r.ok) {
      j.armRetryAtMs = this.nowMs + this.cfg.claimRetryMs;
      return;
    }
    assert(r.epoch === this.epoch + 1, 'arming advances the epoch by one');
    // Tell the backup first: every LOG frame it got before this one came from the unprotected stretch,
    // so it holds every entry whose output already went out.
    out.push({ t: 'send', frame: { type: FrameType.CONTROL, epoch: r.epoch, kind: ControlKind.ARMED, reason: `armed at epoch ${r.epoch}` } });
    this.epoch = r.epoch;
    this.alone = false;
    this.join = null;
    this.lastHeardMs = this.nowMs;
    this.lastSendMs = this.nowMs;
    out.push({ t: 'armed', epoch: r.epoch });
  }

  private abandonJoin(reason: string, out: PrimaryAction[]): void {
    this.join = null;
    this.peer = false;
    this.unacked.length = 0;
    this.unackedBytes = 0;
    this.ackedSeq = this.sentSeq = this.nextSeq;
    out.push({ t: 'join-abandoned', reason });
  }

  private evaluateThrottle(out: PrimaryAction[]): void {
    if (this.alone) {
      if (this.throttled) {
        this.throttled = false;
        out.push({ t: 'throttle', on: false, reason: 'running alone' });
      }
      return;
    }
    const lag = this.lagMs();
    let reason = '';
    if (this.peer && lag > this.cfg.lagMaxMs) reason = `backup lags ${lag.toFixed(0)} ms (max ${this.cfg.lagMaxMs})`;
    else if (this.unackedBytes > this.cfg.unackedMaxBytes) reason = `${this.unackedBytes} unacknowledged log bytes (max ${this.cfg.unackedMaxBytes})`;
    else if (this.held.length - this.heldHead > this.cfg.heldMaxOutputs) reason = `${this.held.length - this.heldHead} outputs held (max ${this.cfg.heldMaxOutputs})`;
    const on = reason !== '';
    if (on !== this.throttled) {
      this.throttled = on;
      out.push({ t: 'throttle', on, reason: on ? reason : 'caught up' });
    }
  }
}

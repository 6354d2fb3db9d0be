/**
 * The backup's replication core: a pure state machine. It accepts the primary's log in order, hands it
 * to the replaying vCPU, acknowledges on receipt (not on replay), grants the replica progress up to the
 * primary's reported instruction number, reports replay progress for the primary's lag control, and
 * halts on divergence.
 */
import { ControlKind, FrameType, type Frame } from '../channel/frames.js';

export interface BackupConfig {
  epoch: number;
  heartbeatIntervalMs: number;
}

export type BackupInput =
  | { t: 'tick'; nowMs: number }
  | { t: 'peer-open' }
  | { t: 'peer-closed' }
  | { t: 'frame'; frame: Frame }
  | { t: 'replica-progress'; instructionNumber: number }
  | { t: 'replica-verified'; n: number; hash: Uint8Array }
  | { t: 'replica-diverged'; reason: string };

export type BackupAction =
  | { t: 'send'; frame: Frame }
  /** Hand an encoded batch to the replica. */
  | { t: 'feed'; batch: Uint8Array; count: number }
  | { t: 'grant'; instructionNumber: number }
  | { t: 'drop-peer'; reason: string }
  | { t: 'halt'; reason: string };

export interface BackupStatus {
  epoch: number;
  peer: boolean;
  nextSeq: number;
  grantedInstructionNumber: number;
  replayedInstructionNumber: number;
  halted: string | null;
  lastVerified: { n: number; hash: string } | null;
}

export class BackupCore {
  private nowMs = 0;
  private peer = false;
  private nextSeq = 0;
  private granted = 0;
  private replayed = 0;
  private lastAckMs = -Infinity;
  private ackedReplayed = 0;
  private halted: string | null = null;
  private lastVerified: { n: number; hash: string } | null = null;

  constructor(readonly cfg: BackupConfig) {}

  /** The next entry this backup expects (sent in HELLO so the primary resumes from there). */
  get expectedSeq(): number {
    return this.nextSeq;
  }

  status(): BackupStatus {
    return {
      epoch: this.cfg.epoch,
      peer: this.peer,
      nextSeq: this.nextSeq,
      grantedInstructionNumber: this.granted,
      replayedInstructionNumber: this.replayed,
      halted: this.halted,
      lastVerified: this.lastVerified,
    };
  }

  step(input: BackupInput): BackupAction[] {
    const out: BackupAction[] = [];
    if (this.halted !== null) return out;
    switch (input.t) {
      case 'tick':
        this.nowMs = input.nowMs;
        // Report replay progress promptly (the primary's lag control depends on it), else heartbeat.
        if (this.peer && (this.nowMs - this.lastAckMs >= this.cfg.heartbeatIntervalMs || this.replayed > this.ackedReplayed)) this.ack(out);
        break;
      case 'peer-open':
        this.peer = true;
        this.ack(out);
        break;
      case 'peer-closed':
        this.peer = false;
        break;
      case 'frame':
        this.onFrame(input.frame, out);
        break;
      case 'replica-progress':
        this.replayed = Math.max(this.replayed, input.instructionNumber);
        break;
      case 'replica-verified':
        this.lastVerified = { n: input.n, hash: Buffer.from(input.hash).toString('hex') };
        if (this.peer) out.push({ t: 'send', frame: { type: FrameType.STATE_HASH, epoch: this.cfg.epoch, n: input.n, hash: input.hash, ok: true } });
        break;
      case 'replica-diverged':
        this.halted = input.reason;
        if (this.peer) out.push({ t: 'send', frame: { type: FrameType.CONTROL, epoch: this.cfg.epoch, kind: ControlKind.DIVERGED, reason: input.reason } });
        out.push({ t: 'halt', reason: input.reason });
        break;
    }
    return out;
  }

  private ack(out: BackupAction[]): void {
    this.ackedReplayed = this.replayed;
    out.push({ t: 'send', frame: { type: FrameType.ACK, epoch: this.cfg.epoch, ackSeq: this.nextSeq, replayedInstructionNumber: this.replayed } });
    this.lastAckMs = this.nowMs;
  }

  private grant(n: number, out: BackupAction[]): void {
    if (n > this.granted) {
      this.granted = n;
      out.push({ t: 'grant', instructionNumber: n });
    }
  }

  private onFrame(f: Frame, out: BackupAction[]): void {
    if ('epoch' in f && f.epoch < this.cfg.epoch) return; // fenced: an older epoch's frame
    switch (f.type) {
      case FrameType.LOG: {
        if (f.firstSeq + f.count <= this.nextSeq) {
          this.ack(out); // a duplicate (resent after a reconnect): already held
          return;
        }
        if (f.firstSeq !== this.nextSeq) {
          out.push({ t: 'drop-peer', reason: `log gap: expected entry ${this.nextSeq}, the primary sent ${f.firstSeq}` });
          return;
        }
        this.nextSeq += f.count;
        out.push({ t: 'feed', batch: f.batch, count: f.count });
        this.grant(f.instructionNumber, out);
        this.ack(out); // on receipt, not on replay
        return;
      }
      case FrameType.HEARTBEAT:
        // A grant is safe only once we hold every entry the primary logged before that point.
        if (f.nextSeq <= this.nextSeq) this.grant(f.instructionNumber, out);
        return;
      case FrameType.CONTROL:
        if (f.kind === ControlKind.STOP) {
          this.halted = `the primary stopped intentionally: ${f.reason}`;
          out.push({ t: 'halt', reason: this.halted });
        }
        return;
      default:
        return;
    }
  }
}

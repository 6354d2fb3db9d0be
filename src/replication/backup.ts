/**
 * The backup's replication core: a pure state machine. It accepts the primary's log in order, hands it
 * to the replaying vCPU, acknowledges on receipt (not on replay), grants the replica progress up to the
 * primary's reported instruction number, reports replay progress for the primary's lag control, and
 * halts on divergence.
 */
import { ControlKind, FrameType, type Frame } from './messages.js';
import { joinTimeoutOf } from './primary.js';

export interface BackupConfig {
  epoch: number;
  heartbeatIntervalMs: number;
  /** Silence from the primary for this long → claim the VM while the replica drains the held log. */
  failTimeoutMs: number;
  claimRetryMs: number;
  /** The first entry this backup will receive (a joiner cloned from a snapshot taken at this entry). */
  firstSeq?: number;
  /**
   * False for a joiner (re-replication) until the primary's ARMED frame: before it, this replica
   * protects nothing and must never go live; silence from the primary makes it give up ('abandon').
   * Default true (a pair started together is armed from the start).
   */
  armed?: boolean;
  /** An unarmed joiner gives up after this long without word. Default max(2000, 10 × failTimeoutMs). */
  joinTimeoutMs?: number;
  /** TEST ONLY (src/sim): a deliberately broken core, to show that the simulator catches it. Never set otherwise. */
  testOnlyBreak?: 'skip-drain';
}

export type BackupInput =
  | { t: 'tick'; nowMs: number }
  /**
   * A primary connected. `nowMs`: when (the silence clock restarts there, not at the last tick, which
   * may be a stall of the I/O thread ago).
   */
  | { t: 'peer-open'; nowMs?: number }
  | { t: 'peer-closed' }
  /**
   * Evidence that the primary's process is gone (the liveness address it advertised refused a
   * connection after the channel closed): drain and claim now instead of waiting out the fail timeout.
   * A wrong guess costs availability, never safety: the arbiter still decides.
   */
  | { t: 'peer-gone'; evidence: string }
  | { t: 'frame'; frame: Frame }
  | { t: 'replica-progress'; instructionNumber: number }
  | { t: 'replica-verified'; n: number; hash: Uint8Array }
  | { t: 'replica-diverged'; reason: string }
  /** The replica has consumed every entry it holds. */
  | { t: 'drained' }
  | { t: 'claim-result'; won: boolean; epoch: number; owner: string }
  | { t: 'claim-failed'; reason: string };

export type BackupAction =
  | { t: 'send'; frame: Frame }
  /** Hand an encoded batch to the replica. */
  | { t: 'feed'; batch: Uint8Array; count: number }
  | { t: 'grant'; instructionNumber: number }
  | { t: 'drop-peer'; reason: string }
  | { t: 'halt'; reason: string }
  /**
   * The primary is silent or gone: let the replica consume everything it holds and report 'drained'.
   * Always followed by a 'claim' in the same step: the claim need not wait for the drain (see enterDrain).
   */
  | { t: 'drain'; reason: string; /** Drained on evidence of the primary's death, not silence. */ evidence?: true }
  | { t: 'claim'; epoch: number }
  /** Won: the replica goes live (records from where its log ended) and starts serving at `epoch`. */
  | { t: 'go-live'; epoch: number; /** TEST ONLY (testOnlyBreak): go live without consuming the held log. */ testOnlyAbandonHeld?: true }
  /** The primary armed the pair at `epoch`: from now on this replica is its failover target. */
  | { t: 'armed'; epoch: number }
  /** A joiner lost its primary before being armed: discard the replica (a standby returns to its pool). */
  | { t: 'abandon'; reason: string };

export type BackupPhase = 'joining' | 'following' | 'draining' | 'claiming' | 'live' | 'halted' | 'abandoned';

export interface BackupStatus {
  epoch: number;
  phase: BackupPhase;
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
  private epoch: number;
  private phase: BackupPhase = 'following';
  private lastHeardMs = 0;
  private started = false;
  /** A backup that never had a primary has nothing to take over. */
  private sawPrimary = false;
  private claimRetryAtMs = 0;

  constructor(readonly cfg: BackupConfig) {
    this.epoch = cfg.epoch;
    this.nextSeq = cfg.firstSeq ?? 0;
    if (cfg.armed === false) this.phase = 'joining';
  }

  /** The next entry this backup expects (sent in HELLO so the primary resumes from there). */
  get expectedSeq(): number {
    return this.nextSeq;
  }

  status(): BackupStatus {
    return {
      epoch: this.epoch,
      phase: this.phase,
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
    if (this.halted !== null || this.phase === 'live' || this.phase === 'abandoned') return out;
    switch (input.t) {
      case 'drained':
        // The claim went out with the drain; only the phase's name changes.
        if (this.phase === 'draining') this.phase = 'claiming';
        return out;
      case 'claim-result':
        if (input.won) {
          this.phase = 'live';
          this.epoch = input.epoch;
          out.push({ t: 'go-live', epoch: input.epoch, ...(this.cfg.testOnlyBreak === 'skip-drain' ? { testOnlyAbandonHeld: true as const } : {}) });
        } else {
          this.halted = `lost the claim: ${input.owner} owns epoch ${input.epoch}`;
          this.phase = 'halted';
          out.push({ t: 'halt', reason: this.halted });
        }
        return out;
      case 'claim-failed':
        // The arbiter is unreachable: stay drained, release nothing, ask again later.
        this.claimRetryAtMs = this.nowMs + this.cfg.claimRetryMs;
        return out;
      case 'tick':
        if (!this.started) {
          this.started = true;
          this.lastHeardMs = input.nowMs;
        }
        this.nowMs = input.nowMs;
        if (this.phase === 'joining' && this.started && this.nowMs - this.lastHeardMs > joinTimeoutOf(this.cfg)) {
          this.phase = 'abandoned';
          out.push({ t: 'abandon', reason: `the primary went silent for ${(this.nowMs - this.lastHeardMs).toFixed(0)} ms before the pair was armed` });
          return out;
        }
        if (this.phase === 'following' && this.started && this.sawPrimary && this.nowMs - this.lastHeardMs > this.cfg.failTimeoutMs) {
          this.enterDrain(out, `no word from the primary for ${(this.nowMs - this.lastHeardMs).toFixed(0)} ms`);
        }
        if ((this.phase === 'draining' || this.phase === 'claiming') && this.claimRetryAtMs > 0 && this.nowMs >= this.claimRetryAtMs) {
          this.claimRetryAtMs = 0;
          out.push({ t: 'claim', epoch: this.epoch });
        }
        // Report replay progress promptly (the primary's lag control depends on it), else heartbeat.
        if (this.peer && (this.nowMs - this.lastAckMs >= this.cfg.heartbeatIntervalMs || this.replayed > this.ackedReplayed)) this.ack(out);
        break;
      case 'peer-open':
        if (input.nowMs !== undefined && input.nowMs > this.nowMs) this.nowMs = input.nowMs;
        this.peer = true;
        this.sawPrimary = true;
        this.lastHeardMs = this.nowMs;
        this.ack(out);
        break;
      case 'peer-gone':
        // Stale evidence (a primary connected again since) changes nothing; a joiner abandons on close.
        if (this.phase === 'following' && this.started && this.sawPrimary && !this.peer) {
          this.enterDrain(out, `the primary's process is gone (${input.evidence})`, true);
        }
        break;
      case 'peer-closed':
        this.peer = false;
        if (this.phase === 'joining') {
          // The primary abandons a join whose connection broke: there is nothing to resume.
          this.phase = 'abandoned';
          out.push({ t: 'abandon', reason: 'the primary disconnected before the pair was armed' });
        }
        break;
      case 'frame':
        this.onFrame(input.frame, out);
        break;
      case 'replica-progress':
        this.replayed = Math.max(this.replayed, input.instructionNumber);
        break;
      case 'replica-verified':
        this.lastVerified = { n: input.n, hash: Buffer.from(input.hash).toString('hex') };
        if (this.peer) out.push({ t: 'send', frame: { type: FrameType.STATE_HASH, epoch: this.epoch, n: input.n, hash: input.hash, ok: true } });
        break;
      case 'replica-diverged':
        this.halted = input.reason;
        this.phase = 'halted';
        if (this.peer) out.push({ t: 'send', frame: { type: FrameType.CONTROL, epoch: this.epoch, kind: ControlKind.DIVERGED, reason: input.reason } });
        out.push({ t: 'halt', reason: input.reason });
        break;
    }
    return out;
  }

  /**
   * The primary is taken for gone: the replica drains the held log and, in the same step, the VM is
   * claimed — the claim does not wait for the drain. Safe: every output the primary released was
   * acknowledged by this backup, so its entries are held here, and going live consumes every held entry
   * first (the vCPU's 'live' comes only after the held log); the claim only decides who goes live, and
   * overlapping it with the drain takes the arbiter's round trip off the failover time. Frames that still
   * arrive before the claim is won are fed and acknowledged as before; after it, none is.
   */
  private enterDrain(out: BackupAction[], reason: string, evidence?: true): void {
    this.phase = 'draining';
    out.push({ t: 'drain', reason, ...(evidence ? { evidence } : {}) });
    out.push({ t: 'claim', epoch: this.epoch });
  }

  private ack(out: BackupAction[]): void {
    this.ackedReplayed = this.replayed;
    out.push({ t: 'send', frame: { type: FrameType.ACK, epoch: this.epoch, ackSeq: this.nextSeq, replayedInstructionNumber: this.replayed } });
    this.lastAckMs = this.nowMs;
  }

  private grant(n: number, out: BackupAction[]): void {
    if (n > this.granted) {
      this.granted = n;
      out.push({ t: 'grant', instructionNumber: n });
    }
  }

  private onFrame(f: Frame, out: BackupAction[]): void {
    if ('epoch' in f && f.epoch < this.epoch) return; // fenced: an older epoch's frame
    this.lastHeardMs = this.nowMs;
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
        if (f.kind === ControlKind.ARMED && this.phase === 'joining' && f.epoch > this.epoch) {
          this.phase = 'following';
          this.epoch = f.epoch;
          this.sawPrimary = true;
          out.push({ t: 'armed', epoch: f.epoch });
          return;
        }
        if (f.kind === ControlKind.SWITCHOVER && this.phase === 'following') {
          // A planned handover: the primary stopped at an idle point with every entry acknowledged.
          this.enterDrain(out, `planned switchover: ${f.reason}`);
          return;
        }
        if (f.kind === ControlKind.STOP) {
          this.phase = 'halted';
          this.halted = `the primary stopped intentionally: ${f.reason}`;
          out.push({ t: 'halt', reason: this.halted });
        }
        return;
      default:
        return;
    }
  }
}

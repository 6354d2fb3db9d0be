/**
 * A standby's entry in its VM's pool at the arbiter (re-replication), shared by both modes' standbys
 * (`StandbyNode` in replay mode, `CheckpointNode` as a standby in checkpoint mode): register with a
 * lease and renew it every third of it; learn from the renewal that a primary recruited it; return to
 * the pool when the recruiting primary never came (or the join failed); leave the pool once it is the
 * VM's backup. Never throws from its timers: an unreachable arbiter is logged and retried.
 */
import type { Arbiter, StandbyRecord } from '../arbiter/arbiter.js';
import type { Logger } from '../util/log.js';
import type { NodeClock, Timer } from './env.js';

export interface PoolMembershipOptions {
  arbiter: Arbiter;
  vm: string;
  hostId: string;
  /** The channel address primaries dial (`host:port`), as registered. */
  channel: () => string;
  leaseTtlMs: number;
  arbiterDeadlineMs: number;
  clock: NodeClock;
  log: Logger;
  /** Recruited but no primary came within this long: return to the pool (default 5000). */
  recruitedWaitMs?: number;
  /** A primary is connected (a clone or a join under way): a recruited entry is then not stale. */
  busy: () => boolean;
}

export class PoolMembership {
  private pooled: StandbyRecord | null = null;
  private renewTimer: Timer | undefined;
  private renewing = false;
  private left = false;
  private stopped = false;
  private recruitedSinceMs = 0;
  /** What `ftvm status` says of the pool entry. */
  note = 'registering';

  constructor(private readonly o: PoolMembershipOptions) {}

  /** First registration (free); then renewed by itself. */
  start(): Promise<void> {
    return this.register(true);
  }

  /** Back in the pool, free (a join that failed, a clone discarded). */
  returnToPool(): void {
    this.left = false;
    this.renewing = false;
    void this.register(true);
  }

  /** This standby is the VM's backup now: out of the pool (its lease runs out if the arbiter is unreachable). */
  async leave(): Promise<void> {
    this.left = true;
    this.renewTimer?.cancel();
    this.pooled = null;
    try {
      await this.o.arbiter.removeStandby(this.o.vm, this.o.hostId, { deadlineMs: this.o.arbiterDeadlineMs });
    } catch (err) {
      // The lease runs out by itself; a primary that recruits it meanwhile is refused (we are busy).
      this.o.log.warn({ err: (err as Error).message }, 'standby: could not leave the pool; its lease will run out');
    }
  }

  /** Shutting down: stop renewing and remove the entry if it is still there. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.renewTimer?.cancel();
    if (this.pooled === null) return;
    try {
      await this.o.arbiter.removeStandby(this.o.vm, this.o.hostId, { deadlineMs: this.o.arbiterDeadlineMs });
    } catch {
      // the lease runs out by itself
    }
  }

  /** Registers (free) or renews; schedules the next renewal. */
  private async register(free: boolean): Promise<void> {
    const o = this.o;
    if (this.stopped || this.left || this.renewing) return;
    this.renewing = true;
    try {
      const rec = await o.arbiter.registerStandby(o.vm, { hostId: o.hostId, channel: o.channel(), free }, o.leaseTtlMs, { deadlineMs: o.arbiterDeadlineMs });
      if (rec.state === 'recruited' && this.pooled?.state !== 'recruited') {
        this.recruitedSinceMs = o.clock.now();
        o.log.info({ by: rec.owner, epoch: rec.epoch }, 'recruited by a primary; waiting for it to connect');
      }
      this.pooled = rec;
      this.note = rec.state === 'free' ? 'in the pool, free' : `recruited by ${rec.owner} at epoch ${rec.epoch}`;
      // Recruited, but the primary never came (it died, or gave up): back to the pool.
      if (rec.state === 'recruited' && !o.busy() && o.clock.now() - this.recruitedSinceMs > (o.recruitedWaitMs ?? 5000)) {
        o.log.warn({ by: rec.owner }, 'recruited, but no primary connected in time: returning to the pool');
        this.renewing = false;
        return this.register(true);
      }
    } catch (err) {
      this.note = `cannot reach the arbiter: ${(err as Error).message}`;
      o.log.warn({ err: (err as Error).message }, 'standby: cannot register at the arbiter; retrying');
    } finally {
      this.renewing = false;
    }
    this.scheduleRenew();
  }

  private scheduleRenew(): void {
    if (this.stopped || this.left) return;
    this.renewTimer?.cancel();
    this.renewTimer = this.o.clock.after(Math.max(100, Math.floor(this.o.leaseTtlMs / 3)), () => void this.register(false));
  }
}

/** What a primary running alone found in its VM's pool. */
export interface RecruitResult {
  pool: StandbyRecord[];
  /** The standby recruited (test-and-set at the arbiter won), or null. */
  recruited: StandbyRecord | null;
  /** Why none was recruited ('' when one was), for `ftvm status`. */
  note: string;
}

/**
 * The primary's side of the pool, shared by both modes' primaries: lists the VM's standbys and recruits
 * the first free one that is not on this host (`by.hostId`) and not refused until later. Arbiter errors
 * propagate (the caller says the pool is unreachable and tries again).
 */
export async function recruitFromPool(
  arbiter: Arbiter,
  vm: string,
  by: { hostId: string; owner: string; epoch: number },
  refusedUntil: ReadonlyMap<string, number>,
  nowMs: number,
  deadlineMs: number,
): Promise<RecruitResult> {
  const pool = await arbiter.listStandbys(vm, { deadlineMs });
  const free = pool.filter((p) => p.state === 'free');
  const sameHost = free.filter((p) => p.hostId === by.hostId).length;
  for (const c of free.filter((p) => p.hostId !== by.hostId && (refusedUntil.get(p.hostId) ?? 0) < nowMs)) {
    const got = await arbiter.recruitStandby(vm, c.hostId, { owner: by.owner, epoch: by.epoch }, { deadlineMs });
    if (got !== null) return { pool, recruited: got, note: '' };
  }
  const note =
    pool.length === 0
      ? 'no standby in the pool'
      : `no free standby in the pool (${pool.length} registered, ${free.length} free${sameHost > 0 ? `, ${sameHost} on this host (${by.hostId}) and never used` : ''})`;
  return { pool, recruited: null, note };
}

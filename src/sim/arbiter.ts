/**
 * The simulator's arbiter: the same state changes as the embedded arbiter (src/arbiter/state.ts, used
 * by both), one VM, with the history of committed changes for the checkers and failure reports.
 * Reachability, latency, lost replies and late commits are the world's (world.ts), which decides when
 * (and whether) an operation reaches this state.
 */
import type { ArbiterRecord, StandbyRecord } from '../arbiter/arbiter.js';
import { decideRecord, StandbyPools } from '../arbiter/state.js';

export type ArbiterOp =
  | { op: 'claim'; epoch: number; claimant: string }
  | { op: 'advance'; epoch: number; owner: string }
  | { op: 'read' }
  | { op: 'register'; hostId: string; channel: string; free: boolean; ttlMs: number }
  | { op: 'list' }
  | { op: 'recruit'; hostId: string; owner: string; epoch: number }
  | { op: 'remove'; hostId: string };

export type ArbiterReply =
  | { op: 'claim'; won: boolean; record: ArbiterRecord }
  | { op: 'advance'; ok: boolean; record: ArbiterRecord }
  | { op: 'read'; record: ArbiterRecord | null }
  | { op: 'register'; standby: StandbyRecord }
  | { op: 'list'; standbys: StandbyRecord[] }
  | { op: 'recruit'; standby: StandbyRecord | null }
  | { op: 'remove' };

const VM = 'sim';

export class ArbiterModel {
  record: ArbiterRecord | null = null;
  /** Every committed change, in order (for the checkers and failure reports). */
  readonly history: Array<{ atMs: number; record: ArbiterRecord; by: string }> = [];
  private readonly pools = new StandbyPools();

  private commit(write: ArbiterRecord | undefined, atMs: number, by: string): void {
    if (!write) return;
    this.record = { ...write };
    this.history.push({ atMs, record: { ...write }, by });
  }

  init(r: ArbiterRecord, atMs: number): ArbiterRecord {
    const d = decideRecord(this.record, { op: 'init', epoch: r.epoch, owner: r.owner });
    this.commit(d.write, atMs, `init ${r.owner}`);
    return { ...this.record! };
  }

  /**
   * Applies one operation atomically. `retried`: this attempt follows an earlier attempt of the same
   * call that may have committed: the client counts an advance that finds its own {epoch + 1} as done
   * (embedded.ts and etcd.ts clients do the same).
   */
  apply(o: ArbiterOp, atMs: number, retried = false): ArbiterReply {
    switch (o.op) {
      case 'read':
        return { op: 'read', record: this.record ? { ...this.record } : null };
      case 'claim': {
        const d = decideRecord(this.record, { op: 'claim', epoch: o.epoch, owner: o.claimant });
        if (d.op !== 'claim' || 'noRecord' in d) throw new Error('claim of a VM without a record (the simulation always inits)');
        this.commit(d.write, atMs, `claim ${o.claimant} @${o.epoch}`);
        return { op: 'claim', won: d.won, record: { ...d.record } };
      }
      case 'advance': {
        const d = decideRecord(this.record, { op: 'advance', epoch: o.epoch, owner: o.owner });
        if (d.op !== 'advance') throw new Error('unreachable');
        this.commit(d.write, atMs, `advance ${o.owner} @${o.epoch}`);
        const r = d.record;
        const ok = d.advanced || (retried && r !== null && r.epoch === o.epoch + 1 && r.owner === o.owner);
        return { op: 'advance', ok, record: r ? { ...r } : { epoch: -1, owner: '' } };
      }
      case 'register':
        return { op: 'register', standby: this.pools.register(VM, { hostId: o.hostId, channel: o.channel, free: o.free }, o.ttlMs, atMs) };
      case 'list':
        return { op: 'list', standbys: this.pools.list(VM, atMs) };
      case 'recruit':
        return { op: 'recruit', standby: this.pools.recruit(VM, o.hostId, { owner: o.owner, epoch: o.epoch }, atMs) };
      case 'remove':
        this.pools.remove(VM, o.hostId);
        return { op: 'remove' };
    }
  }
}

/**
 * A model of the arbiter's record semantics (src/arbiter/arbiter.ts): one record {epoch, owner} per VM,
 * an atomic test-and-set `claim` (idempotent for the winner), `advance` (arm a new pair), `init`,
 * `read`. Only the state transitions live here; reachability, latency, lost replies and late commits
 * are the world's (world.ts), which decides when (and whether) an operation reaches this record.
 */
import type { ArbiterRecord, StandbyRecord } from '../arbiter/arbiter.js';

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

export class ArbiterModel {
  record: ArbiterRecord | null = null;
  /** Every committed change, in order (for failure reports). */
  readonly history: Array<{ atMs: number; record: ArbiterRecord; by: string }> = [];
  /** The standby pool (embedded.ts executeStandby): leases on the arbiter's clock. */
  private readonly pool = new Map<string, { record: StandbyRecord; expiresAtMs: number }>();

  private livePool(atMs: number): Map<string, { record: StandbyRecord; expiresAtMs: number }> {
    for (const [id, e] of this.pool) if (e.expiresAtMs <= atMs) this.pool.delete(id);
    return this.pool;
  }

  init(r: ArbiterRecord, atMs: number): ArbiterRecord {
    if (this.record === null) {
      this.record = { ...r };
      this.history.push({ atMs, record: { ...r }, by: `init ${r.owner}` });
    }
    return { ...this.record };
  }

  /**
   * Applies one operation atomically. `retried`: this attempt follows an earlier attempt of the same
   * call that may have committed (the interface's "within one call … counts as true" for advance).
   */
  apply(o: ArbiterOp, atMs: number, retried = false): ArbiterReply {
    const r = this.record;
    switch (o.op) {
      case 'read':
        return { op: 'read', record: r ? { ...r } : null };
      case 'claim': {
        if (r === null) throw new Error('claim of a VM without a record (the simulation always inits)');
        if (r.epoch === o.epoch) {
          this.record = { epoch: o.epoch + 1, owner: o.claimant };
          this.history.push({ atMs, record: { ...this.record }, by: `claim ${o.claimant} @${o.epoch}` });
          return { op: 'claim', won: true, record: { ...this.record } };
        }
        // Idempotent: a claimant retrying after a timeout wins if it already owns epoch + 1.
        const won = r.epoch === o.epoch + 1 && r.owner === o.claimant;
        return { op: 'claim', won, record: { ...r } };
      }
      case 'advance': {
        if (r === null) return { op: 'advance', ok: false, record: { epoch: -1, owner: '' } };
        if (r.epoch === o.epoch && r.owner === o.owner) {
          this.record = { epoch: o.epoch + 1, owner: o.owner };
          this.history.push({ atMs, record: { ...this.record }, by: `advance ${o.owner} @${o.epoch}` });
          return { op: 'advance', ok: true, record: { ...this.record } };
        }
        const ok = retried && r.epoch === o.epoch + 1 && r.owner === o.owner;
        return { op: 'advance', ok, record: { ...r } };
      }
      case 'register': {
        const pool = this.livePool(atMs);
        const cur = pool.get(o.hostId);
        const record: StandbyRecord = !o.free && cur && cur.record.channel === o.channel ? cur.record : { hostId: o.hostId, channel: o.channel, state: 'free' };
        pool.set(o.hostId, { record, expiresAtMs: atMs + o.ttlMs });
        return { op: 'register', standby: { ...record } };
      }
      case 'list':
        return { op: 'list', standbys: [...this.livePool(atMs).values()].map((e) => ({ ...e.record })) };
      case 'recruit': {
        const cur = this.livePool(atMs).get(o.hostId);
        if (!cur) return { op: 'recruit', standby: null };
        const s = cur.record;
        if (s.state === 'recruited') return { op: 'recruit', standby: s.owner === o.owner && s.epoch === o.epoch ? { ...s } : null };
        cur.record = { hostId: s.hostId, channel: s.channel, state: 'recruited', owner: o.owner, epoch: o.epoch };
        return { op: 'recruit', standby: { ...cur.record } };
      }
      case 'remove':
        this.pool.delete(o.hostId);
        return { op: 'remove' };
    }
  }
}

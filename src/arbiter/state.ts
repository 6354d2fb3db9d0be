/**
 * The arbiter's state changes, once: the record test-and-set (init, claim, advance, read) and the
 * leased standby pool and member tables. Pure: no I/O, no clock (time is an argument), no randomness.
 * The embedded server (embedded-server.ts) applies them and makes record changes durable before it
 * replies; the simulator (src/sim/arbiter.ts) applies them to its model of the arbiter. The etcd
 * backend (etcd.ts) implements the same semantics with etcd transactions.
 */
import type { ArbiterRecord, MemberRecord, StandbyRecord } from './arbiter.js';

export type RecordRequest =
  | { op: 'read' }
  | { op: 'init'; epoch: number; owner: string }
  | { op: 'claim'; epoch: number; owner: string }
  | { op: 'advance'; epoch: number; owner: string };

/**
 * One record operation on the current record (null: none yet). `write`: the record to store (durably,
 * before replying) — absent when nothing changes. `noRecord`: a claim of a VM that was never initialised.
 */
export type RecordDecision =
  | { op: 'read'; record: ArbiterRecord | null; write?: undefined }
  | { op: 'init'; record: ArbiterRecord; write?: ArbiterRecord }
  | { op: 'claim'; won: boolean; record: ArbiterRecord; write?: ArbiterRecord }
  | { op: 'claim'; noRecord: true; write?: undefined }
  | { op: 'advance'; advanced: boolean; record: ArbiterRecord | null; write?: ArbiterRecord };

function same(a: ArbiterRecord, b: ArbiterRecord): boolean {
  return a.epoch === b.epoch && a.owner === b.owner;
}

export function decideRecord(cur: ArbiterRecord | null, r: RecordRequest): RecordDecision {
  switch (r.op) {
    case 'read':
      return { op: 'read', record: cur };
    case 'init': {
      if (cur) return { op: 'init', record: cur };
      const record = { epoch: r.epoch, owner: r.owner };
      return { op: 'init', record, write: record };
    }
    case 'claim': {
      if (!cur) return { op: 'claim', noRecord: true };
      const won = { epoch: r.epoch + 1, owner: r.owner };
      if (same(cur, won)) return { op: 'claim', won: true, record: cur }; // a retry of a claim that already won
      if (cur.epoch !== r.epoch) return { op: 'claim', won: false, record: cur };
      return { op: 'claim', won: true, record: won, write: won };
    }
    case 'advance': {
      if (!cur || !same(cur, { epoch: r.epoch, owner: r.owner })) return { op: 'advance', advanced: false, record: cur };
      const record = { epoch: r.epoch + 1, owner: r.owner };
      return { op: 'advance', advanced: true, record, write: record };
    }
  }
}

interface Leased<T> {
  record: T;
  expiresAtMs: number;
}

/** Standby pools per VM: leases on the caller's clock; not durable (standbys renew). */
export class StandbyPools {
  private readonly pools = new Map<string, Map<string, Leased<StandbyRecord>>>();

  /** The VM's pool with expired leases dropped. */
  private pool(vm: string, nowMs: number): Map<string, Leased<StandbyRecord>> {
    let pool = this.pools.get(vm);
    if (!pool) {
      pool = new Map();
      this.pools.set(vm, pool);
    }
    for (const [id, e] of pool) if (e.expiresAtMs <= nowMs) pool.delete(id);
    return pool;
  }

  /** Registers (free) or renews (keeping a recruitment, if on the same channel) for ttlMs. */
  register(vm: string, s: { hostId: string; channel: string; free: boolean }, ttlMs: number, nowMs: number): StandbyRecord {
    const pool = this.pool(vm, nowMs);
    const cur = pool.get(s.hostId);
    const record: StandbyRecord = !s.free && cur && cur.record.channel === s.channel ? cur.record : { hostId: s.hostId, channel: s.channel, state: 'free' };
    pool.set(s.hostId, { record, expiresAtMs: nowMs + ttlMs });
    return { ...record };
  }

  list(vm: string, nowMs: number): StandbyRecord[] {
    return [...this.pool(vm, nowMs).values()].map((e) => ({ ...e.record }));
  }

  /** Test-and-set: a free standby becomes recruited by `by`; idempotent for the same recruiter. */
  recruit(vm: string, hostId: string, by: { owner: string; epoch: number }, nowMs: number): StandbyRecord | null {
    const cur = this.pool(vm, nowMs).get(hostId);
    if (!cur) return null;
    const r = cur.record;
    if (r.state === 'recruited') return r.owner === by.owner && r.epoch === by.epoch ? { ...r } : null;
    cur.record = { hostId: r.hostId, channel: r.channel, state: 'recruited', owner: by.owner, epoch: by.epoch };
    return { ...cur.record };
  }

  /** Removes a standby; true if it was there. */
  remove(vm: string, hostId: string): boolean {
    return this.pools.get(vm)?.delete(hostId) ?? false;
  }
}

/** Nodes announcing their control endpoint per VM (for operators), leased like standbys; bounded. */
export class MemberTables {
  private readonly members = new Map<string, Map<string, Leased<MemberRecord>>>();
  constructor(private readonly maxPerVm: number) {}

  private table(vm: string, nowMs: number): Map<string, Leased<MemberRecord>> {
    let m = this.members.get(vm);
    if (!m) {
      m = new Map();
      this.members.set(vm, m);
    }
    for (const [id, e] of m) if (e.expiresAtMs <= nowMs) m.delete(id);
    return m;
  }

  publish(vm: string, member: MemberRecord, ttlMs: number, nowMs: number): void {
    const m = this.table(vm, nowMs);
    m.set(member.nodeId, { record: member, expiresAtMs: nowMs + ttlMs });
    while (m.size > this.maxPerVm) {
      const oldest = [...m].sort((a, b) => a[1].expiresAtMs - b[1].expiresAtMs)[0];
      if (!oldest) break;
      m.delete(oldest[0]);
    }
  }

  list(vm: string, nowMs: number): MemberRecord[] {
    return [...this.table(vm, nowMs).values()].map((e) => e.record);
  }
}

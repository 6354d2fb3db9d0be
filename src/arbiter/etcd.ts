/**
 * The production arbiter: etcd (Raft-replicated), through the `etcd3` client.
 *
 * Each VM has one key, `/ftvm/vms/<vm>`, holding the JSON {"epoch":E,"owner":O}. Every test-and-set is
 * a linearizable read followed by ONE transaction `if mod_revision(key) == seen then put(new)`, so of
 * any number of concurrent claimants of epoch E exactly one commits. No leases: etcd3 reports a lost
 * lease late, and nothing here depends on time for safety.
 *
 * Failures: every etcd call carries the caller's deadline (gRPC deadline, and a timer as a backstop). A
 * call that failed or timed out may still have committed (etcd can apply a proposal after the client
 * gave up on it), so after any error the operation starts again with a fresh linearizable read and
 * decides from the record it sees: a claimant that finds {E+1, itself} has won. Only when the deadline
 * passes without an answer does the call throw FTVM_ERR_ARBITER_UNAVAILABLE.
 *
 * etcd3's own fault handling is replaced: its default global policy retries a call on another member
 * (3 attempts) and its default per-member circuit breaker shuns a member for 5 s after 3 failures,
 * which after an etcd restart left a single-member cluster unreachable for seconds. Here each gRPC call
 * is made once; a member that just failed is skipped for {@link MEMBER_SKIP_MS} (another member is
 * tried), and this module's loop retries with a short backoff until the deadline.
 */
import { Etcd3, GRPCDeadlineExceededError, isRecoverableError, type IOptions } from 'etcd3';
import { FtvmError } from '../util/errors.js';
import { logger, type Logger } from '../util/log.js';
import type { Arbiter, ArbiterRecord, CallOptions, ClaimResult, MemberRecord, StandbyRecord } from './arbiter.js';
import { Deadline, backoffMs, checkArgs, checkMemberArgs, checkStandbyArgs, describeError, memberJson, parseMemberValue, parseRecordValue, parseStandbyValue, recordJson, sameRecord, sleep, standbyJson, unavailable } from './record.js';

export const DEFAULT_KEY_PREFIX = '/ftvm/vms/';
/** Standby pools: `/ftvm/standbys/<vm>/<hostId>`, each key attached to an etcd lease. */
export const DEFAULT_STANDBY_PREFIX = '/ftvm/standbys/';
/** Members (nodes announcing their control endpoint for operators): `/ftvm/members/<vm>/<nodeId>`, leased. */
export const DEFAULT_MEMBER_PREFIX = '/ftvm/members/';
/** After a failed call, a member is skipped (if another is available) for this long. */
export const MEMBER_SKIP_MS = 250;

export interface EtcdArbiterOptions {
  /** Client URLs of the members: `http://host:port` (or `host:port`). */
  endpoints: string[];
  /** Key prefix; the VM's key is prefix + name. Default `/ftvm/vms/`. */
  keyPrefix?: string;
  /** Standby pool prefix; a standby's key is prefix + vm + '/' + hostId. Default `/ftvm/standbys/`. */
  standbyPrefix?: string;
  log?: Logger;
}

type FaultHandling = NonNullable<IOptions['faultHandling']>;
type Policy = NonNullable<FaultHandling['global']>;
type PolicyContext = Parameters<Parameters<Policy['execute']>[0]>[0];

const neverAborted = new AbortController().signal;
const noDisposable = { dispose(): void {} };

/** A cockatiel-compatible policy that just runs the call once. */
class RunOnce implements Policy {
  declare readonly _altReturn: never;
  readonly onSuccess = (): typeof noDisposable => noDisposable;
  readonly onFailure = (): typeof noDisposable => noDisposable;
  async execute<T>(fn: (context: PolicyContext) => PromiseLike<T> | T): Promise<T> {
    return fn({ signal: neverAborted });
  }
}

class MemberSkipped extends Error {
  constructor(host: string) {
    super(`etcd member ${host} failed within the last ${MEMBER_SKIP_MS} ms; skipped`);
    this.name = 'MemberSkipped';
  }
}

/** Per-member policy: after a transport failure, skip the member for a moment (etcd3 tries the next). */
class SkipFailedMember extends RunOnce {
  private downUntil = 0;
  constructor(private readonly host: string) {
    super();
  }
  override async execute<T>(fn: (context: PolicyContext) => PromiseLike<T> | T): Promise<T> {
    if (performance.now() < this.downUntil) throw new MemberSkipped(this.host);
    try {
      return await fn({ signal: neverAborted });
    } catch (err) {
      if (typeof err === 'object' && err !== null && isRecoverableError(err as Error)) this.downUntil = performance.now() + MEMBER_SKIP_MS;
      throw err;
    }
  }
}

class LocalDeadline extends Error {
  constructor(ms: number) {
    super(`no answer from etcd within the ${ms} ms deadline`);
    this.name = 'LocalDeadline';
  }
}

/** Thrown inside an attempt to start over with a fresh read (not an error). */
const AGAIN = Symbol('again');

interface Seen {
  record: ArbiterRecord;
  modRevision: string;
}

export class EtcdArbiter implements Arbiter {
  private readonly client: Etcd3;
  private readonly prefix: string;
  private readonly standbyPrefix: string;
  private readonly log: Logger;
  private closed = false;

  constructor(opts: EtcdArbiterOptions) {
    if (!Array.isArray(opts.endpoints) || opts.endpoints.length === 0) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'etcd arbiter: no endpoints');
    const hosts = opts.endpoints.map((e) => (/^https?:\/\//.test(e) ? e : `http://${e}`));
    this.prefix = opts.keyPrefix ?? DEFAULT_KEY_PREFIX;
    this.standbyPrefix = opts.standbyPrefix ?? DEFAULT_STANDBY_PREFIX;
    this.log = opts.log ?? logger('arbiter-etcd', { endpoints: hosts.join(',') });
    // Note: etcd3 1.1.2 declares a `dialTimeout` option but never reads it; deadlines are per call.
    this.client = new Etcd3({
      hosts,
      faultHandling: { host: (h: string) => new SkipFailedMember(h), global: new RunOnce() },
    });
  }

  async init(vm: string, record: ArbiterRecord, opts: CallOptions): Promise<ArbiterRecord> {
    checkArgs({ vm, epoch: record.epoch, owner: record.owner, opts });
    const want = { epoch: record.epoch, owner: record.owner };
    const key = this.key(vm);
    return this.retrying(`init of VM ${vm}`, opts, async (deadline) => {
      // Create if absent, else read: one transaction, idempotent, so a retry after an error is safe.
      const txn = await this.bounded(
        deadline,
        this.client
          .if(key, 'Create', '==', 0)
          .then(this.client.put(key).value(recordJson(want)))
          .else(this.client.get(key))
          .options({ deadline: deadline.wallClock() })
          .commit(),
      );
      if (txn.succeeded) return want;
      const kv = txn.responses[0]?.response_range?.kvs[0];
      if (!kv) throw AGAIN; // deleted in between (by an operator): try again
      return this.decode(vm, kv.value);
    });
  }

  async claim(vm: string, epoch: number, claimant: string, opts: CallOptions): Promise<ClaimResult> {
    checkArgs({ vm, epoch, owner: claimant, opts }, 'claimant');
    const winning = { epoch: epoch + 1, owner: claimant };
    return this.retrying(`claim of VM ${vm} at epoch ${epoch}`, opts, async (deadline) => {
      const cur = await this.readKv(vm, deadline);
      if (!cur) throw new FtvmError('FTVM_ERR_ARBITER_BAD_REQUEST', `VM ${vm} has no record at the arbiter (init it first)`);
      // Idempotent: this claimant already won (an earlier attempt, maybe one that timed out, committed).
      if (sameRecord(cur.record, winning)) return { won: true, record: cur.record };
      if (cur.record.epoch !== epoch) return { won: false, record: cur.record };
      if (await this.putIfUnchanged(vm, cur, winning, deadline)) return { won: true, record: winning };
      throw AGAIN; // someone else changed the record since our read: read again and decide
    });
  }

  async advance(vm: string, epoch: number, owner: string, opts: CallOptions): Promise<boolean> {
    checkArgs({ vm, epoch, owner, opts });
    const from = { epoch, owner };
    const to = { epoch: epoch + 1, owner };
    let uncertain = false;
    return this.retrying(`advance of VM ${vm} from epoch ${epoch}`, opts, async (deadline) => {
      const cur = await this.readKv(vm, deadline);
      // Only after an attempt of ours that may have committed does {epoch + 1, owner} mean "done".
      if (uncertain && cur && sameRecord(cur.record, to)) return true;
      if (!cur || !sameRecord(cur.record, from)) return false;
      try {
        if (await this.putIfUnchanged(vm, cur, to, deadline)) return true;
      } catch (err) {
        uncertain = true;
        throw err;
      }
      throw AGAIN;
    });
  }

  async read(vm: string, opts: CallOptions): Promise<ArbiterRecord | null> {
    checkArgs({ vm, opts });
    return this.retrying(`read of VM ${vm}`, opts, async (deadline) => (await this.readKv(vm, deadline))?.record ?? null);
  }

  /**
   * Each registration or renewal grants a fresh lease and re-puts the entry under it in one transaction
   * guarded by the revision it read (so a recruitment in between is never overwritten by a renewal);
   * the previous lease, left without keys, runs out by itself. No keep-alive stream: etcd3 reports lost
   * leases late (DESIGN.md §5), and a plain grant + txn keeps every call under the caller's deadline.
   */
  async registerStandby(vm: string, standby: { hostId: string; channel: string; free: boolean }, ttlMs: number, opts: CallOptions): Promise<StandbyRecord> {
    checkStandbyArgs({ vm, hostId: standby.hostId, channel: standby.channel, ttlMs, opts });
    const key = this.standbyKey(vm, standby.hostId);
    return this.retrying(`registration of standby ${standby.hostId} of VM ${vm}`, opts, async (deadline) => {
      const grant = await this.bounded(deadline, this.client.leaseClient.leaseGrant({ TTL: Math.ceil(ttlMs / 1000), ID: 0 }, { deadline: deadline.wallClock() }));
      const cur = await this.readStandby(vm, standby.hostId, deadline);
      const keep = !standby.free && cur !== null && cur.record.channel === standby.channel;
      const next: StandbyRecord = keep ? cur.record : { hostId: standby.hostId, channel: standby.channel, state: 'free' };
      const put = this.client.put(key).value(standbyJson(next)).lease(grant.ID);
      const txn = await this.bounded(
        deadline,
        (cur ? this.client.if(key, 'Mod', '==', cur.modRevision) : this.client.if(key, 'Create', '==', 0)).then(put).options({ deadline: deadline.wallClock() }).commit(),
      );
      if (!txn.succeeded) throw AGAIN;
      return next;
    });
  }

  async listStandbys(vm: string, opts: CallOptions): Promise<StandbyRecord[]> {
    checkStandbyArgs({ vm, opts });
    return this.retrying(`listing of the standbys of VM ${vm}`, opts, async (deadline) => {
      const res = await this.bounded(deadline, this.client.getAll().prefix(`${this.standbyPrefix}${vm}/`).options({ deadline: deadline.wallClock() }).exec());
      return res.kvs.map((kv) => this.decodeStandby(kv.key.toString('utf8'), kv.value));
    });
  }

  async recruitStandby(vm: string, hostId: string, by: { owner: string; epoch: number }, opts: CallOptions): Promise<StandbyRecord | null> {
    checkStandbyArgs({ vm, hostId, opts });
    checkArgs({ vm, epoch: by.epoch, owner: by.owner, opts });
    const key = this.standbyKey(vm, hostId);
    return this.retrying(`recruitment of standby ${hostId} of VM ${vm}`, opts, async (deadline) => {
      const cur = await this.readStandby(vm, hostId, deadline);
      if (!cur) return null;
      const r = cur.record;
      // Idempotent: an earlier attempt of ours (maybe one that timed out) recruited it.
      if (r.state === 'recruited') return r.owner === by.owner && r.epoch === by.epoch ? r : null;
      const next: StandbyRecord = { hostId: r.hostId, channel: r.channel, state: 'recruited', owner: by.owner, epoch: by.epoch };
      const txn = await this.bounded(
        deadline,
        this.client.if(key, 'Mod', '==', cur.modRevision).then(this.client.put(key).value(standbyJson(next)).ignoreLease()).options({ deadline: deadline.wallClock() }).commit(),
      );
      if (txn.succeeded) return next;
      throw AGAIN;
    });
  }

  async removeStandby(vm: string, hostId: string, opts: CallOptions): Promise<void> {
    checkStandbyArgs({ vm, hostId, opts });
    const key = this.standbyKey(vm, hostId);
    await this.retrying(`removal of standby ${hostId} of VM ${vm}`, opts, async (deadline) => {
      await this.bounded(deadline, this.client.delete().key(key).options({ deadline: deadline.wallClock() }).exec());
    });
  }

  /**
   * A fresh lease and a plain put per announcement (last writer wins: each node writes only its own
   * key); the previous lease, left without keys, runs out by itself.
   */
  async publishMember(vm: string, member: MemberRecord, ttlMs: number, opts: CallOptions): Promise<void> {
    checkMemberArgs({ vm, member, ttlMs, opts });
    const key = `${DEFAULT_MEMBER_PREFIX}${vm}/${encodeURIComponent(member.nodeId)}`;
    await this.retrying(`announcement of node ${member.nodeId} of VM ${vm}`, opts, async (deadline) => {
      const grant = await this.bounded(deadline, this.client.leaseClient.leaseGrant({ TTL: Math.ceil(ttlMs / 1000), ID: 0 }, { deadline: deadline.wallClock() }));
      await this.bounded(deadline, this.client.put(key).value(memberJson(member)).lease(grant.ID).options({ deadline: deadline.wallClock() }).exec());
    });
  }

  async listMembers(vm: string, opts: CallOptions): Promise<MemberRecord[]> {
    checkMemberArgs({ vm, opts });
    return this.retrying(`listing of the nodes of VM ${vm}`, opts, async (deadline) => {
      const res = await this.bounded(deadline, this.client.getAll().prefix(`${DEFAULT_MEMBER_PREFIX}${vm}/`).options({ deadline: deadline.wallClock() }).exec());
      const out: MemberRecord[] = [];
      for (const kv of res.kvs) {
        let parsed: unknown;
        try {
          parsed = JSON.parse(kv.value.toString('utf8'));
        } catch {
          parsed = undefined;
        }
        const m = parseMemberValue(parsed);
        if (!m) throw new FtvmError('FTVM_ERR_ARBITER_CORRUPT', `etcd key ${kv.key.toString('utf8')} does not hold a member entry`);
        out.push(m);
      }
      return out;
    });
  }

  private standbyKey(vm: string, hostId: string): string {
    return `${this.standbyPrefix}${vm}/${hostId}`;
  }

  private async readStandby(vm: string, hostId: string, deadline: Deadline): Promise<{ record: StandbyRecord; modRevision: string } | null> {
    const key = this.standbyKey(vm, hostId);
    const res = await this.bounded(deadline, this.client.get(key).options({ deadline: deadline.wallClock() }).exec());
    const kv = res.kvs[0];
    if (!kv) return null;
    return { record: this.decodeStandby(key, kv.value), modRevision: kv.mod_revision };
  }

  private decodeStandby(key: string, value: Buffer): StandbyRecord {
    let parsed: unknown;
    try {
      parsed = JSON.parse(value.toString('utf8'));
    } catch {
      parsed = undefined;
    }
    const r = parseStandbyValue(parsed);
    if (!r) throw new FtvmError('FTVM_ERR_ARBITER_CORRUPT', `etcd key ${key} does not hold a standby entry: ${JSON.stringify(value.subarray(0, 200).toString('utf8'))}`);
    return r;
  }

  close(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      this.client.close();
    }
    return Promise.resolve();
  }

  private key(vm: string): string {
    return this.prefix + vm;
  }

  private decode(vm: string, value: Buffer): ArbiterRecord {
    let parsed: unknown;
    try {
      parsed = JSON.parse(value.toString('utf8'));
    } catch {
      parsed = undefined;
    }
    const r = parseRecordValue(parsed);
    if (!r) {
      const shown = value.length > 200 ? `${value.subarray(0, 200).toString('utf8')}…` : value.toString('utf8');
      this.log.error({ vm, key: this.key(vm), code: 'FTVM_ERR_ARBITER_CORRUPT' }, `arbiter: CORRUPT record for VM ${vm} in etcd`);
      throw new FtvmError('FTVM_ERR_ARBITER_CORRUPT', `etcd key ${this.key(vm)} does not hold a record {epoch, owner}: ${JSON.stringify(shown)}`);
    }
    return r;
  }

  /** A linearizable read of the VM's record and its mod revision. */
  private async readKv(vm: string, deadline: Deadline): Promise<Seen | null> {
    const res = await this.bounded(deadline, this.client.get(this.key(vm)).options({ deadline: deadline.wallClock() }).exec());
    const kv = res.kvs[0];
    if (!kv) return null;
    return { record: this.decode(vm, kv.value), modRevision: kv.mod_revision };
  }

  /** One transaction: if the key is still at the revision we read, put `next`. True if it committed. */
  private async putIfUnchanged(vm: string, seen: Seen, next: ArbiterRecord, deadline: Deadline): Promise<boolean> {
    const key = this.key(vm);
    const txn = await this.bounded(
      deadline,
      this.client.if(key, 'Mod', '==', seen.modRevision).then(this.client.put(key).value(recordJson(next))).options({ deadline: deadline.wallClock() }).commit(),
    );
    return txn.succeeded;
  }

  /** The promise, or LocalDeadline at the deadline (a backstop for the gRPC deadline). */
  private bounded<T>(deadline: Deadline, p: Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new LocalDeadline(deadline.ms)), Math.ceil(deadline.remaining()) + 5);
      p.then(
        (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        (err: unknown) => {
          clearTimeout(timer);
          reject(err);
        },
      );
    });
  }

  /**
   * Runs `attempt` until it returns, throws an FtvmError (a definite answer: corrupt record, no record),
   * or the deadline passes (FTVM_ERR_ARBITER_UNAVAILABLE). Every attempt starts from a fresh read, so
   * an earlier attempt that failed but committed is seen and decided on.
   */
  private async retrying<T>(what: string, opts: CallOptions, attempt: (deadline: Deadline) => Promise<T>): Promise<T> {
    if (this.closed) throw new FtvmError('FTVM_ERR_ARBITER_UNAVAILABLE', 'etcd arbiter client is closed');
    const deadline = new Deadline(opts.deadlineMs);
    let lastError: unknown;
    let failures = 0;
    for (;;) {
      try {
        return await attempt(deadline);
      } catch (err) {
        if (err instanceof FtvmError) throw err;
        // Bugs are not outages: do not dress them up as FTVM_ERR_ARBITER_UNAVAILABLE.
        if (err instanceof TypeError || err instanceof RangeError || err instanceof ReferenceError || err instanceof SyntaxError) throw err;
        if (err !== AGAIN) {
          lastError = err;
          failures++;
          this.log.debug({ what, failures, err: describeError(err) }, 'arbiter: etcd call failed; re-reading');
        }
      }
      if (deadline.expired()) break;
      if (lastError !== undefined) await sleep(backoffMs(failures - 1, deadline));
      if (deadline.expired()) break;
    }
    const timedOut = lastError instanceof LocalDeadline || lastError instanceof GRPCDeadlineExceededError;
    this.log.warn({ what, deadlineMs: opts.deadlineMs, failures, timedOut, err: describeError(lastError) }, 'arbiter: etcd unavailable');
    throw unavailable(what, deadline, lastError, failures > 0);
  }
}

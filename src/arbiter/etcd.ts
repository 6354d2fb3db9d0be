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
import type { Arbiter, ArbiterRecord, CallOptions, ClaimResult } from './arbiter.js';
import { Deadline, backoffMs, checkArgs, describeError, parseRecordValue, recordJson, sameRecord, sleep, unavailable } from './record.js';

export const DEFAULT_KEY_PREFIX = '/ftvm/vms/';
/** After a failed call, a member is skipped (if another is available) for this long. */
export const MEMBER_SKIP_MS = 250;

export interface EtcdArbiterOptions {
  /** Client URLs of the members: `http://host:port` (or `host:port`). */
  endpoints: string[];
  /** Key prefix; the VM's key is prefix + name. Default `/ftvm/vms/`. */
  keyPrefix?: string;
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
  private readonly log: Logger;
  private closed = false;

  constructor(opts: EtcdArbiterOptions) {
    if (!Array.isArray(opts.endpoints) || opts.endpoints.length === 0) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'etcd arbiter: no endpoints');
    const hosts = opts.endpoints.map((e) => (/^https?:\/\//.test(e) ? e : `http://${e}`));
    this.prefix = opts.keyPrefix ?? DEFAULT_KEY_PREFIX;
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

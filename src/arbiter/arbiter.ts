/**
 * The arbiter: the atomic test-and-set that decides which replica of a VM may be live, so that a
 * partitioned pair never has two live primaries (VMware FT's shared-disk flag). Two implementations:
 * the embedded arbiter server (one machine, `ftvm arbiter`) and etcd (production: Raft-replicated).
 *
 * Each VM has one record {epoch, owner}. A pair runs in epoch E. When a replica stops hearing its
 * peer, it calls claim(vm, E, me): exactly one claimant wins and the record becomes {E+1, me}; every
 * other claim for E loses and sees the winner. Epochs only grow (fencing tokens): everyone refuses
 * anything from an older epoch.
 *
 * Implementations: `EmbeddedArbiterClient` (embedded.ts) and `EtcdArbiter` (etcd.ts); `openArbiter(url)`
 * in index.ts picks one. Errors every method may throw (FtvmError codes):
 * - FTVM_ERR_ARBITER_UNAVAILABLE: no answer before the deadline. The call may still have taken effect
 *   (a timed-out claim can have committed): retry the same call to find out; never assume it failed.
 * - FTVM_ERR_ARBITER_CORRUPT: the VM's stored record is damaged; it is refused, never reset.
 * - FTVM_ERR_ARBITER_AUTH: the embedded arbiter refused our secret, or its reply was not authenticated.
 * - FTVM_ERR_ARBITER_BAD_REQUEST: refused as malformed, or a claim of a VM that has no record.
 * - FTVM_ERR_BAD_ARGUMENT: a bad VM name (1–128 of [A-Za-z0-9._-]), epoch (non-negative safe
 *   integer), owner (1–256 characters, no control characters) or deadline.
 */
export interface ArbiterRecord {
  epoch: number;
  owner: string;
}

export interface ClaimResult {
  won: boolean;
  /** The record after the claim (the winner's). */
  record: ArbiterRecord;
}

export interface CallOptions {
  /** Give up (with FTVM_ERR_ARBITER_UNAVAILABLE) after this long. */
  deadlineMs: number;
}

/**
 * A standby in a VM's pool (re-replication): a host ready to become the VM's backup. Registered with a
 * lease (`ttlMs`): a standby that stops renewing drops out of the pool.
 */
export interface StandbyRecord {
  /** The standby's host identity; a primary never recruits one with its own host id. */
  hostId: string;
  /** Where the standby's logging channel listens (`host:port`). */
  channel: string;
  state: 'free' | 'recruited';
  /** When recruited: the recruiting primary's owner id and its epoch at the time. */
  owner?: string;
  epoch?: number;
}

/**
 * A node of a VM as it announces itself for operators (`ftvm dashboard`): its id, its control endpoint
 * and its current role. Published with a lease like standbys; not used by the replication protocol.
 */
export interface MemberRecord {
  nodeId: string;
  /** The node's control endpoint (`host:port`). */
  control: string;
  /** primary | backup | standby | halted (free text of [a-z-], 1–32 characters). */
  role: string;
  /**
   * The node's `--proxy-listen` address (`host:port`), if it serves one: `ftvm proxy --arbiter` finds the
   * live primary's proxy port as the member whose `nodeId` is the record's owner. Absent in entries of
   * nodes that serve no proxy port (and in those of older nodes).
   */
  proxy?: string;
}

export interface Arbiter {
  /**
   * Creates the VM's record {epoch, owner} if there is none; returns the record as it now is (a
   * restarting primary learns the current epoch and owner this way).
   */
  init(vm: string, record: ArbiterRecord, opts: CallOptions): Promise<ArbiterRecord>;
  /**
   * Test-and-set: if the record's epoch is `epoch`, set it to {epoch + 1, claimant} and win.
   * Otherwise lose and return the current record. Idempotent: a claimant that retries after a timeout
   * wins if the record already shows it as the owner of epoch + 1. Throws FtvmError
   * FTVM_ERR_ARBITER_UNAVAILABLE when the arbiter cannot be reached before the deadline (the caller
   * then waits and releases nothing). A VM without a record (never init'ed) is
   * FTVM_ERR_ARBITER_BAD_REQUEST.
   */
  claim(vm: string, epoch: number, claimant: string, opts: CallOptions): Promise<ClaimResult>;
  /**
   * Arms a new pair (after re-replication): if the record is {epoch, owner}, set it to
   * {epoch + 1, owner} and return true; else false (also when there is no record). Within one call,
   * after an attempt that failed but may have committed, finding {epoch + 1, owner} counts as true.
   */
  advance(vm: string, epoch: number, owner: string, opts: CallOptions): Promise<boolean>;
  read(vm: string, opts: CallOptions): Promise<ArbiterRecord | null>;
  /**
   * Registers a standby of `vm` for `ttlMs` (its lease), or renews it. `free: true` (first registration,
   * or a standby returning to the pool after a failed join) sets it free; `free: false` renews it as it
   * is (a recruited standby stays recruited). An entry whose lease ran out is gone: renewing it registers
   * it afresh, free. Returns the entry as it now is (a standby learns this way that it was recruited).
   */
  registerStandby(vm: string, standby: { hostId: string; channel: string; free: boolean }, ttlMs: number, opts: CallOptions): Promise<StandbyRecord>;
  /** The VM's live standbys (leases not expired), free and recruited. */
  listStandbys(vm: string, opts: CallOptions): Promise<StandbyRecord[]>;
  /**
   * Test-and-set: if standby `hostId` is free, mark it recruited by {owner, epoch} and return the entry.
   * Returns null if it is gone or recruited by someone else. Idempotent: a retry by the same recruiter
   * (same owner and epoch) after a timeout returns the entry.
   */
  recruitStandby(vm: string, hostId: string, by: { owner: string; epoch: number }, opts: CallOptions): Promise<StandbyRecord | null>;
  /** Removes a standby from the pool (it joined a pair, or is shutting down). Absent is fine. */
  removeStandby(vm: string, hostId: string, opts: CallOptions): Promise<void>;
  /**
   * Announces (or renews) a node of `vm` for `ttlMs`: where its control endpoint is and its role now.
   * For operators only (the dashboard finds the VM's nodes this way); nothing in the protocol reads it.
   * An arbiter that predates members refuses with FTVM_ERR_ARBITER_BAD_REQUEST: callers treat that as
   * "not supported" and carry on.
   */
  publishMember(vm: string, member: MemberRecord, ttlMs: number, opts: CallOptions): Promise<void>;
  /** The VM's announced nodes whose lease has not run out. */
  listMembers(vm: string, opts: CallOptions): Promise<MemberRecord[]>;
  close(): Promise<void>;
}

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
  close(): Promise<void>;
}

/**
 * What both arbiter backends share: the validation of names, epochs and owners, record parsing and
 * comparison, and per-call deadlines.
 */
import { FtvmError, type FtvmErrorCode } from '../util/errors.js';
import type { ArbiterRecord, CallOptions, MemberRecord, StandbyRecord } from './arbiter.js';

/** VM names: 1–128 characters of [A-Za-z0-9._-] (they become etcd keys and file names). */
export const VM_NAME_PATTERN = /^[A-Za-z0-9._-]{1,128}$/;
/** Owner / claimant ids: 1–256 characters, no control characters. */
export const MAX_OWNER_LENGTH = 256;
// eslint-disable-next-line no-control-regex
const CONTROL_CHARS = /[\u0000-\u001f\u007f]/;

export function isValidVmName(vm: unknown): vm is string {
  return typeof vm === 'string' && VM_NAME_PATTERN.test(vm);
}

/** A non-negative safe integer whose successor is still safe (epochs only grow by one). */
export function isValidEpoch(epoch: unknown): epoch is number {
  return typeof epoch === 'number' && Number.isSafeInteger(epoch) && epoch >= 0 && epoch < Number.MAX_SAFE_INTEGER;
}

export function isValidOwner(owner: unknown): owner is string {
  return typeof owner === 'string' && owner.length >= 1 && owner.length <= MAX_OWNER_LENGTH && !CONTROL_CHARS.test(owner);
}

export function sameRecord(a: ArbiterRecord | null | undefined, b: ArbiterRecord | null | undefined): boolean {
  return !!a && !!b && a.epoch === b.epoch && a.owner === b.owner;
}

/** Checks a caller's arguments; a bad one is the caller's bug: FTVM_ERR_BAD_ARGUMENT. */
export function checkArgs(args: { vm: string; epoch?: number; owner?: string; opts: CallOptions }, ownerField = 'owner'): void {
  const code: FtvmErrorCode = 'FTVM_ERR_BAD_ARGUMENT';
  if (!isValidVmName(args.vm)) throw new FtvmError(code, `arbiter: VM name ${JSON.stringify(args.vm)} is not 1–128 characters of [A-Za-z0-9._-]`);
  if ('epoch' in args && !isValidEpoch(args.epoch)) throw new FtvmError(code, `arbiter: epoch ${String(args.epoch)} is not a non-negative safe integer`);
  if ('owner' in args && !isValidOwner(args.owner)) {
    throw new FtvmError(code, `arbiter: ${ownerField} ${JSON.stringify(args.owner)} is not 1–${MAX_OWNER_LENGTH} characters without control characters`);
  }
  const d = (args.opts as Partial<CallOptions> | undefined)?.deadlineMs;
  if (typeof d !== 'number' || !Number.isFinite(d) || d <= 0) throw new FtvmError(code, `arbiter: deadlineMs ${String(d)} is not a positive number of milliseconds`);
}

/**
 * Parses a record {epoch, owner} (exactly those two fields) from an untrusted value; undefined if it
 * is not one.
 */
export function parseRecordValue(v: unknown): ArbiterRecord | undefined {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return undefined;
  const o = v as Record<string, unknown>;
  const keys = Object.keys(o);
  if (keys.length !== 2 || !('epoch' in o) || !('owner' in o)) return undefined;
  if (!isValidEpoch(o.epoch) || !isValidOwner(o.owner)) return undefined;
  return { epoch: o.epoch, owner: o.owner };
}

/** The canonical JSON of a record (the etcd value; fixed key order). */
export function recordJson(r: ArbiterRecord): string {
  return JSON.stringify({ epoch: r.epoch, owner: r.owner });
}

/** An absolute deadline for one arbiter call, on the monotonic clock. */
export class Deadline {
  readonly at: number;
  constructor(readonly ms: number) {
    this.at = performance.now() + ms;
  }
  remaining(): number {
    return Math.max(0, this.at - performance.now());
  }
  expired(): boolean {
    return this.remaining() <= 0;
  }
  /** The deadline as a wall-clock Date (for gRPC). */
  wallClock(): Date {
    return new Date(Date.now() + this.remaining());
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Exponential backoff between retries: 20 ms doubling to 250 ms, never past the deadline. */
export function backoffMs(attempt: number, deadline: Deadline): number {
  const base = Math.min(250, 20 * 2 ** Math.min(attempt, 4));
  const jittered = base / 2 + Math.random() * (base / 2);
  return Math.min(jittered, deadline.remaining());
}

export function describeError(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    return `${err.name}${typeof code === 'string' || typeof code === 'number' ? ` ${code}` : ''}: ${err.message}`;
  }
  return String(err);
}

export function unavailable(what: string, deadline: Deadline, lastError: unknown, uncertain: boolean): FtvmError {
  const detail = lastError === undefined ? 'no reply' : describeError(lastError);
  const note = uncertain ? ' (an attempt may still commit: re-read or retry the same call before deciding)' : '';
  return new FtvmError('FTVM_ERR_ARBITER_UNAVAILABLE', `arbiter unavailable: ${what} did not complete within ${deadline.ms} ms: ${detail}${note}`, {
    cause: lastError,
  });
}

// ---------------------------------------------------------------------------------------------------
// Standby pools (re-replication)

/** Standby leases: at least this long (etcd leases have a floor of about a second). */
export const MIN_STANDBY_TTL_MS = 1000;
export const MAX_STANDBY_TTL_MS = 3_600_000;
/** `host:port` with a port number. */
const CHANNEL_PATTERN = /^[A-Za-z0-9.:[\]-]{1,250}:[0-9]{1,5}$/;

export function checkStandbyArgs(args: { vm: string; hostId?: string; channel?: string; ttlMs?: number; opts: CallOptions }): void {
  checkArgs({ vm: args.vm, opts: args.opts });
  if ('hostId' in args && !isValidVmName(args.hostId)) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `arbiter: host id ${JSON.stringify(args.hostId)} is not 1–128 characters of [A-Za-z0-9._-]`);
  if ('channel' in args && (typeof args.channel !== 'string' || !CHANNEL_PATTERN.test(args.channel))) {
    throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `arbiter: standby channel ${JSON.stringify(args.channel)} is not host:port`);
  }
  if ('ttlMs' in args && (typeof args.ttlMs !== 'number' || !Number.isInteger(args.ttlMs) || args.ttlMs < MIN_STANDBY_TTL_MS || args.ttlMs > MAX_STANDBY_TTL_MS)) {
    throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `arbiter: standby ttlMs ${String(args.ttlMs)} is not an integer in ${MIN_STANDBY_TTL_MS}..${MAX_STANDBY_TTL_MS}`);
  }
}

/** Parses a standby entry from an untrusted value; undefined if it is not one. */
export function parseStandbyValue(v: unknown): StandbyRecord | undefined {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return undefined;
  const o = v as Record<string, unknown>;
  if (!isValidVmName(o.hostId) || typeof o.channel !== 'string' || !CHANNEL_PATTERN.test(o.channel)) return undefined;
  if (o.state === 'free') {
    if (Object.keys(o).length !== 3) return undefined;
    return { hostId: o.hostId, channel: o.channel, state: 'free' };
  }
  if (o.state !== 'recruited' || !isValidOwner(o.owner) || !isValidEpoch(o.epoch) || Object.keys(o).length !== 5) return undefined;
  return { hostId: o.hostId, channel: o.channel, state: 'recruited', owner: o.owner, epoch: o.epoch };
}

/** The canonical JSON of a standby entry (fixed key order). */
export function standbyJson(s: StandbyRecord): string {
  return s.state === 'free'
    ? JSON.stringify({ hostId: s.hostId, channel: s.channel, state: 'free' })
    : JSON.stringify({ hostId: s.hostId, channel: s.channel, state: 'recruited', owner: s.owner, epoch: s.epoch });
}

// ---------------------------------------------------------------------------------------------------
// Members (nodes announcing their control endpoint for operators)

const ROLE_PATTERN = /^[a-z-]{1,32}$/;

export function checkMemberArgs(args: { vm: string; member?: MemberRecord; ttlMs?: number; opts: CallOptions }): void {
  checkArgs({ vm: args.vm, opts: args.opts });
  const m = args.member;
  if ('member' in args) {
    if (!m || !isValidOwner(m.nodeId)) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `arbiter: member node id ${JSON.stringify(m?.nodeId)} is not 1–${MAX_OWNER_LENGTH} characters without control characters`);
    if (typeof m.control !== 'string' || !CHANNEL_PATTERN.test(m.control)) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `arbiter: member control address ${JSON.stringify(m.control)} is not host:port`);
    if (typeof m.role !== 'string' || !ROLE_PATTERN.test(m.role)) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `arbiter: member role ${JSON.stringify(m.role)} is not 1–32 characters of [a-z-]`);
    if ('proxy' in m && (typeof m.proxy !== 'string' || !CHANNEL_PATTERN.test(m.proxy))) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `arbiter: member proxy address ${JSON.stringify(m.proxy)} is not host:port`);
  }
  if ('ttlMs' in args && (typeof args.ttlMs !== 'number' || !Number.isInteger(args.ttlMs) || args.ttlMs < MIN_STANDBY_TTL_MS || args.ttlMs > MAX_STANDBY_TTL_MS)) {
    throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `arbiter: member ttlMs ${String(args.ttlMs)} is not an integer in ${MIN_STANDBY_TTL_MS}..${MAX_STANDBY_TTL_MS}`);
  }
}

/** Parses a member entry from an untrusted value; undefined if it is not one. Entries without `proxy` (older nodes) read as before. */
export function parseMemberValue(v: unknown): MemberRecord | undefined {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return undefined;
  const o = v as Record<string, unknown>;
  const hasProxy = 'proxy' in o;
  if (Object.keys(o).length !== (hasProxy ? 4 : 3) || !isValidOwner(o.nodeId) || typeof o.control !== 'string' || !CHANNEL_PATTERN.test(o.control) || typeof o.role !== 'string' || !ROLE_PATTERN.test(o.role)) return undefined;
  if (hasProxy && (typeof o.proxy !== 'string' || !CHANNEL_PATTERN.test(o.proxy))) return undefined;
  return { nodeId: o.nodeId, control: o.control, role: o.role, ...(hasProxy ? { proxy: o.proxy as string } : {}) };
}

/** The canonical JSON of a member entry (fixed key order; `proxy` only when present). */
export function memberJson(m: MemberRecord): string {
  return JSON.stringify({ nodeId: m.nodeId, control: m.control, role: m.role, ...(m.proxy !== undefined ? { proxy: m.proxy } : {}) });
}

/**
 * The embedded arbiter's request parsing: operations, strict JSON bodies, bounded body reads, and the
 * refusal type the server maps to HTTP statuses.
 */
import http from 'node:http';
import type { FtvmErrorCode } from '../util/errors.js';
import type { MemberRecord } from './arbiter.js';
import { checkStandbyArgs, isValidEpoch, isValidOwner, isValidVmName, checkMemberArgs } from './record.js';

export const MAX_BODY_BYTES = 64 * 1024;

export type RecordOp = 'init' | 'claim' | 'advance' | 'read';
/** Standby pool operations: register/renew, list, recruit (test-and-set), remove. Kept in memory only. */
export type StandbyOp = 'standby' | 'standbys' | 'recruit' | 'unstandby';
/** Members (nodes announcing their control endpoint for operators): publish/renew, list. In memory only. */
export type MemberOp = 'member' | 'members';
export type Op = RecordOp | StandbyOp | MemberOp;
export const OPS: readonly Op[] = ['init', 'claim', 'advance', 'read', 'standby', 'standbys', 'recruit', 'unstandby', 'member', 'members'];
export const MEMBER_OPS: readonly Op[] = ['member', 'members'];
/** Members kept per VM at most (the oldest-expiring is dropped first). */
export const MEMBERS_MAX = 64;
export const STANDBY_OPS: readonly Op[] = ['standby', 'standbys', 'recruit', 'unstandby'];

export class HttpRefusal extends Error {
  constructor(
    readonly status: number,
    readonly code: FtvmErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export const bad = (message: string): HttpRefusal => new HttpRefusal(400, 'FTVM_ERR_ARBITER_BAD_REQUEST', message);

export interface ParsedRequest {
  op: RecordOp;
  vm: string;
  epoch: number;
  owner: string;
}

export interface ParsedStandbyRequest {
  op: StandbyOp;
  vm: string;
  hostId: string;
  channel: string;
  free: boolean;
  ttlMs: number;
  owner: string;
  epoch: number;
}

const STANDBY_FIELDS: Record<StandbyOp, string[]> = {
  standby: ['vm', 'hostId', 'channel', 'free', 'ttlMs'],
  standbys: ['vm'],
  recruit: ['vm', 'hostId', 'owner', 'epoch'],
  unstandby: ['vm', 'hostId'],
};

/** A request body: a JSON object with exactly `fields`, and any of `optional`. */
function jsonBody(op: Op, raw: Buffer, fields: readonly string[], optional: readonly string[] = []): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(raw.toString('utf8'));
  } catch {
    throw bad('body is not JSON');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad('body is not a JSON object');
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!fields.includes(k) && !optional.includes(k)) throw bad(`unexpected field ${JSON.stringify(k)} (${op} takes ${[...fields, ...optional].join(', ')})`);
  for (const k of fields) if (!(k in o)) throw bad(`missing field ${JSON.stringify(k)}`);
  return o;
}

/** Validates a standby-pool request body strictly. */
export function parseStandbyBody(op: StandbyOp, raw: Buffer): ParsedStandbyRequest {
  const o = jsonBody(op, raw, STANDBY_FIELDS[op]);
  try {
    checkStandbyArgs({
      vm: o.vm as string,
      opts: { deadlineMs: 1 },
      ...('hostId' in o ? { hostId: o.hostId as string } : {}),
      ...('channel' in o ? { channel: o.channel as string } : {}),
      ...('ttlMs' in o ? { ttlMs: o.ttlMs as number } : {}),
    });
  } catch (err) {
    throw bad((err as Error).message);
  }
  if ('free' in o && typeof o.free !== 'boolean') throw bad('free must be a boolean');
  if ('owner' in o && !isValidOwner(o.owner)) throw bad('owner must be a string of 1–256 characters without control characters');
  if ('epoch' in o && !isValidEpoch(o.epoch)) throw bad('epoch must be a non-negative safe integer');
  return {
    op,
    vm: o.vm as string,
    hostId: (o.hostId as string | undefined) ?? '',
    channel: (o.channel as string | undefined) ?? '',
    free: o.free === true,
    ttlMs: (o.ttlMs as number | undefined) ?? 0,
    owner: (o.owner as string | undefined) ?? '',
    epoch: (o.epoch as number | undefined) ?? 0,
  };
}

/** Validates a request body strictly: exactly the op's fields, of the right types. */
export function parseBody(op: RecordOp, raw: Buffer): ParsedRequest {
  const ownerField = op === 'claim' ? 'claimant' : 'owner';
  const o = jsonBody(op, raw, op === 'read' ? ['vm'] : ['vm', 'epoch', ownerField]);
  if (!isValidVmName(o.vm)) throw bad(`vm must be 1–128 characters of [A-Za-z0-9._-]`);
  if (op === 'read') return { op, vm: o.vm, epoch: 0, owner: '' };
  if (!isValidEpoch(o.epoch)) throw bad(`epoch must be a non-negative safe integer`);
  const owner = o[ownerField];
  if (!isValidOwner(owner)) throw bad(`${ownerField} must be a string of 1–256 characters without control characters`);
  return { op, vm: o.vm, epoch: o.epoch, owner };
}

/** Validates a members request body strictly. */
export function parseMemberBody(op: MemberOp, raw: Buffer): { op: MemberOp; vm: string; member: MemberRecord | null; ttlMs: number } {
  const o = op === 'member' ? jsonBody(op, raw, ['vm', 'nodeId', 'control', 'role', 'ttlMs'], ['proxy']) : jsonBody(op, raw, ['vm']);
  const member = op === 'member' ? { nodeId: o.nodeId as string, control: o.control as string, role: o.role as string, ...('proxy' in o ? { proxy: o.proxy as string } : {}) } : null;
  try {
    checkMemberArgs({ vm: o.vm as string, opts: { deadlineMs: 1 }, ...(member ? { member, ttlMs: o.ttlMs as number } : {}) });
  } catch (err) {
    throw bad((err as Error).message);
  }
  return { op, vm: o.vm as string, member, ttlMs: (o.ttlMs as number | undefined) ?? 0 };
}

/** The body, or undefined if it exceeds max bytes; rejects if the stream ends early. */
export function readBody(stream: http.IncomingMessage, max: number): Promise<Buffer | undefined> {
  return new Promise((resolveBody, rejectBody) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    stream.on('data', (c: Buffer) => {
      if (done) return;
      size += c.length;
      if (size > max) {
        done = true;
        resolveBody(undefined);
        return;
      }
      chunks.push(c);
    });
    stream.on('end', () => {
      if (done) return;
      done = true;
      resolveBody(Buffer.concat(chunks));
    });
    stream.on('error', (err) => {
      if (done) return;
      done = true;
      rejectBody(err);
    });
    stream.on('close', () => {
      if (done) return;
      done = true;
      rejectBody(new Error('connection closed before the body ended'));
    });
  });
}

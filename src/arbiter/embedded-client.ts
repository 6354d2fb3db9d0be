/**
 * The embedded arbiter's client (the Arbiter interface over its HTTP API): signed requests, verified
 * replies, retries within the call's deadline, and the uncertainty of a timed-out attempt.
 */
import http from 'node:http';
import https from 'node:https';
import { Keyring } from '../security/secrets.js';
import { FtvmError, type FtvmErrorCode } from '../util/errors.js';
import { logger, type Logger } from '../util/log.js';
import type { Arbiter, ArbiterRecord, CallOptions, ClaimResult, MemberRecord, StandbyRecord } from './arbiter.js';
import { Deadline, backoffMs, checkArgs, checkStandbyArgs, describeError, parseRecordValue, parseStandbyValue, sameRecord, sleep, unavailable, checkMemberArgs, parseMemberValue } from './record.js';
import { HEADER_NONCE, HEADER_MAC, MAC_PATTERN, responseMac, signRequest, macEqual, checkSecret, isTlsRefusal, arbiterClientTls } from './embedded-auth.js';
import { MAX_BODY_BYTES, type Op, bad, readBody } from './embedded-request.js';

export interface EmbeddedArbiterClientOptions {
  host: string;
  port: number;
  secret: Uint8Array | Keyring;
  /** Plain HTTP instead of TLS-PSK (must match the server's). */
  insecure?: boolean;
  log?: Logger;
  /**
   * After this long without a request, read the last VM's record to keep the connection (and its TLS
   * session) open: a claim at failover then costs one round trip, not a TCP and TLS handshake first
   * (the server closes idle connections after 5 s). 0 turns it off. Default 2000.
   */
  keepWarmMs?: number;
}

/** Below the embedded server's keepAliveTimeout (5 s). */
const DEFAULT_KEEP_WARM_MS = 2_000;

type Attempt = { kind: 'ok'; body: Record<string, unknown> } | { kind: 'retry'; error: unknown; uncertain: boolean };

export class EmbeddedArbiterClient implements Arbiter {
  private readonly agent: http.Agent;
  private readonly keyring: Keyring;
  private readonly log: Logger;
  private closed = false;
  private warmVm: string | undefined;
  private warmTimer: NodeJS.Timeout | undefined;

  constructor(private readonly opts: EmbeddedArbiterClientOptions) {
    this.keyring = checkSecret(opts.secret, 'arbiter client');
    const keyring = this.keyring;
    this.agent = opts.insecure ? new http.Agent({ keepAlive: true, maxSockets: 32 }) : new https.Agent({ keepAlive: true, maxSockets: 32, ...arbiterClientTls(() => keyring.current) });
    if (!Number.isInteger(opts.port) || opts.port < 1 || opts.port > 65535) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `arbiter client: bad port ${opts.port}`);
    this.log = opts.log ?? logger('arbiter-client', { arbiter: `${opts.host}:${opts.port}` });
  }

  async init(vm: string, record: ArbiterRecord, opts: CallOptions): Promise<ArbiterRecord> {
    checkArgs({ vm, epoch: record.epoch, owner: record.owner, opts });
    const { body } = await this.call('init', { vm, epoch: record.epoch, owner: record.owner }, opts);
    return this.recordOf(body, 'init', false);
  }

  async claim(vm: string, epoch: number, claimant: string, opts: CallOptions): Promise<ClaimResult> {
    checkArgs({ vm, epoch, owner: claimant, opts }, 'claimant');
    const { body } = await this.call('claim', { vm, epoch, claimant }, opts);
    const record = this.recordOf(body, 'claim', false);
    if (typeof body.won !== 'boolean') throw this.corruptReply('claim', 'no "won" field');
    // The server is idempotent; compare anyway (an earlier, timed-out attempt may have won).
    const won = body.won || sameRecord(record, { epoch: epoch + 1, owner: claimant });
    return { won, record };
  }

  async advance(vm: string, epoch: number, owner: string, opts: CallOptions): Promise<boolean> {
    checkArgs({ vm, epoch, owner, opts });
    const { body, uncertain } = await this.call('advance', { vm, epoch, owner }, opts);
    if (typeof body.advanced !== 'boolean') throw this.corruptReply('advance', 'no "advanced" field');
    if (body.advanced) return true;
    // An earlier attempt of this call timed out and may have advanced the record itself.
    return uncertain && sameRecord(this.recordOf(body, 'advance', true), { epoch: epoch + 1, owner });
  }

  async read(vm: string, opts: CallOptions): Promise<ArbiterRecord | null> {
    checkArgs({ vm, opts });
    const { body } = await this.call('read', { vm }, opts);
    return this.recordOf(body, 'read', true);
  }

  async registerStandby(vm: string, standby: { hostId: string; channel: string; free: boolean }, ttlMs: number, opts: CallOptions): Promise<StandbyRecord> {
    checkStandbyArgs({ vm, hostId: standby.hostId, channel: standby.channel, ttlMs, opts });
    const { body } = await this.call('standby', { vm, hostId: standby.hostId, channel: standby.channel, free: standby.free, ttlMs }, opts);
    return this.standbyOf(body.standby, 'standby');
  }

  async listStandbys(vm: string, opts: CallOptions): Promise<StandbyRecord[]> {
    checkStandbyArgs({ vm, opts });
    const { body } = await this.call('standbys', { vm }, opts);
    if (!Array.isArray(body.standbys)) throw this.corruptReply('standbys', 'no "standbys" array');
    return body.standbys.map((s: unknown) => this.standbyOf(s, 'standbys'));
  }

  async recruitStandby(vm: string, hostId: string, by: { owner: string; epoch: number }, opts: CallOptions): Promise<StandbyRecord | null> {
    checkStandbyArgs({ vm, hostId, opts });
    checkArgs({ vm, epoch: by.epoch, owner: by.owner, opts });
    const { body } = await this.call('recruit', { vm, hostId, owner: by.owner, epoch: by.epoch }, opts);
    return body.standby === null ? null : this.standbyOf(body.standby, 'recruit');
  }

  async removeStandby(vm: string, hostId: string, opts: CallOptions): Promise<void> {
    checkStandbyArgs({ vm, hostId, opts });
    await this.call('unstandby', { vm, hostId }, opts);
  }

  async publishMember(vm: string, member: MemberRecord, ttlMs: number, opts: CallOptions): Promise<void> {
    checkMemberArgs({ vm, member, ttlMs, opts });
    await this.call('member', { vm, nodeId: member.nodeId, control: member.control, role: member.role, ...(member.proxy !== undefined ? { proxy: member.proxy } : {}), ttlMs }, opts);
  }

  async listMembers(vm: string, opts: CallOptions): Promise<MemberRecord[]> {
    checkMemberArgs({ vm, opts });
    const { body } = await this.call('members', { vm }, opts);
    if (!Array.isArray(body.members)) throw this.corruptReply('members', 'no "members" array');
    return body.members.map((v: unknown) => {
      const m = parseMemberValue(v);
      if (!m) throw this.corruptReply('members', `bad member entry ${JSON.stringify(v)}`);
      return m;
    });
  }

  private standbyOf(v: unknown, op: Op): StandbyRecord {
    const s = parseStandbyValue(v);
    if (!s) throw this.corruptReply(op, `bad standby entry ${JSON.stringify(v)}`);
    return s;
  }

  close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.warmTimer);
    this.agent.destroy();
    return Promise.resolve();
  }

  private recordOf(body: Record<string, unknown>, op: Op, nullable: true): ArbiterRecord | null;
  private recordOf(body: Record<string, unknown>, op: Op, nullable: false): ArbiterRecord;
  private recordOf(body: Record<string, unknown>, op: Op, nullable: boolean): ArbiterRecord | null {
    if (nullable && body.record === null) return null;
    const r = parseRecordValue(body.record);
    if (!r) throw this.corruptReply(op, `bad record ${JSON.stringify(body.record)}`);
    return r;
  }

  private corruptReply(op: Op, why: string): FtvmError {
    return new FtvmError('FTVM_ERR_ARBITER_CORRUPT', `arbiter: malformed ${op} reply: ${why}`);
  }

  /**
   * Sends one operation, retrying transport failures and 503s until the deadline. Every operation is
   * idempotent on the server, so a retry after an attempt that may have committed is safe; `uncertain`
   * says whether such an attempt happened.
   */
  private async call(op: Op, payload: Record<string, unknown>, opts: CallOptions): Promise<{ body: Record<string, unknown>; uncertain: boolean }> {
    if (this.closed) throw new FtvmError('FTVM_ERR_ARBITER_UNAVAILABLE', 'arbiter client is closed');
    const deadline = new Deadline(opts.deadlineMs);
    const body = Buffer.from(JSON.stringify(payload));
    let uncertain = false;
    let lastError: unknown;
    for (let attempt = 0; !deadline.expired(); attempt++) {
      const r = await this.attempt(op, body, deadline);
      if (r.kind === 'ok') {
        if (typeof payload.vm === 'string') this.keepWarm(payload.vm);
        return { body: r.body, uncertain };
      }
      lastError = r.error;
      uncertain ||= r.uncertain;
      this.log.debug({ op, vm: payload.vm, attempt, err: describeError(r.error) }, 'arbiter: attempt failed; retrying');
      await sleep(backoffMs(attempt, deadline));
    }
    this.log.warn({ op, vm: payload.vm, deadlineMs: opts.deadlineMs, err: describeError(lastError) }, 'arbiter: unavailable');
    throw unavailable(`${op} of VM ${String(payload.vm)}`, deadline, lastError, uncertain);
  }

  /** (Re)arms the keep-warm read (see keepWarmMs); an unref'd timer never keeps a process alive. */
  private keepWarm(vm: string): void {
    const ms = this.opts.keepWarmMs ?? DEFAULT_KEEP_WARM_MS;
    if (ms <= 0 || this.closed) return;
    this.warmVm = vm;
    clearTimeout(this.warmTimer);
    this.warmTimer = setTimeout(() => {
      const v = this.warmVm;
      if (this.closed || v === undefined) return;
      // A failed read is harmless: the next real call dials again. Success re-arms the timer.
      this.call('read', { vm: v }, { deadlineMs: 1_000 }).catch(() => undefined);
    }, ms);
    this.warmTimer.unref();
  }

  private attempt(op: Op, body: Buffer, deadline: Deadline): Promise<Attempt> {
    const path = `/v1/${op}`;
    const secret = this.keyring.current;
    const headers = signRequest(secret, 'POST', path, body);
    const nonce = headers[HEADER_NONCE] ?? '';
    return new Promise<Attempt>((resolveAttempt, rejectAttempt) => {
      const req = (this.opts.insecure ? http : https).request(
        {
          host: this.opts.host,
          port: this.opts.port,
          method: 'POST',
          path,
          agent: this.agent,
          headers: { ...headers, 'content-type': 'application/json', 'content-length': body.length },
          signal: AbortSignal.timeout(Math.max(1, Math.ceil(deadline.remaining()))),
        },
        (res) => {
          readBody(res, MAX_BODY_BYTES).then(
            (raw) => {
              try {
                resolveAttempt(this.interpret(op, secret, nonce, res, raw));
              } catch (err) {
                rejectAttempt(err);
              }
            },
            (err: unknown) => resolveAttempt({ kind: 'retry', error: err, uncertain: true }),
          );
        },
      );
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (isTlsRefusal(err)) {
          // The TLS-PSK handshake failed: no request went out. Retrying would not change the secret.
          rejectAttempt(new FtvmError('FTVM_ERR_ARBITER_AUTH', `arbiter at ${this.opts.host}:${this.opts.port} refused our TLS handshake (${err.message.split('\n')[0]}): wrong secret, or --insecure-channel differs`));
          return;
        }
        // A refused connection never reached the server; any other failure may follow a commit.
        resolveAttempt({ kind: 'retry', error: err, uncertain: err.code !== 'ECONNREFUSED' });
      });
      req.end(body);
    });
  }

  private interpret(op: Op, secret: Uint8Array, nonce: string, res: http.IncomingMessage, raw: Buffer | undefined): Attempt {
    const status = res.statusCode ?? 0;
    if (raw === undefined) throw new FtvmError('FTVM_ERR_ARBITER_CORRUPT', `arbiter: ${op} reply exceeds ${MAX_BODY_BYTES} bytes`);
    const mac = res.headers[HEADER_MAC];
    const authentic = typeof mac === 'string' && MAC_PATTERN.test(mac) && macEqual(mac, responseMac(secret, nonce, status, raw));
    if (!authentic) {
      throw new FtvmError(
        'FTVM_ERR_ARBITER_AUTH',
        status === 401
          ? `arbiter refused the request as unauthenticated (HTTP 401): is the secret the arbiter's?`
          : `arbiter reply (HTTP ${status}) is not authenticated with our secret: wrong secret, or not an ftvm arbiter at ${this.opts.host}:${this.opts.port}`,
      );
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(raw.toString('utf8'));
    } catch {
      throw this.corruptReply(op, 'not JSON');
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw this.corruptReply(op, 'not a JSON object');
    const obj = parsed as Record<string, unknown>;
    if (status === 200) return { kind: 'ok', body: obj };
    const e = obj.error as { code?: unknown; message?: unknown } | undefined;
    const message = typeof e?.message === 'string' ? e.message : `HTTP ${status}`;
    if (status === 503) return { kind: 'retry', error: new Error(`arbiter: ${message}`), uncertain: true };
    const code: FtvmErrorCode =
      status === 401 ? 'FTVM_ERR_ARBITER_AUTH' : status === 500 && e?.code === 'FTVM_ERR_ARBITER_CORRUPT' ? 'FTVM_ERR_ARBITER_CORRUPT' : status >= 500 ? 'FTVM_ERR_ARBITER_UNAVAILABLE' : 'FTVM_ERR_ARBITER_BAD_REQUEST';
    throw new FtvmError(code, `arbiter refused ${op} (HTTP ${status}): ${message}`);
  }
}

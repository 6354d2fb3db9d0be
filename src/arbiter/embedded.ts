/**
 * The embedded arbiter: a small HTTP/1.1 + JSON server for one machine (`ftvm arbiter`) and its client.
 *
 * API (all POST, JSON bodies, every request and every reply authenticated):
 *
 *   /v1/init     {vm, epoch, owner}    → 200 {record}                    create if absent
 *   /v1/claim    {vm, epoch, claimant} → 200 {won, record}               test-and-set epoch → epoch+1
 *   /v1/advance  {vm, epoch, owner}    → 200 {advanced, record|null}     {epoch, owner} → {epoch+1, owner}
 *   /v1/read     {vm}                  → 200 {record|null}
 *   errors → {error: {code, message}}: 400 bad request, 401 authentication, 404 no record (claim),
 *   404/405 unknown path/method, 500 corrupt record, 503 storage failure (retry).
 *
 * Authentication: headers x-ftvm-ts (ms since the Unix epoch), x-ftvm-nonce (32 hex digits, random),
 * x-ftvm-mac = hex HMAC-SHA256(secret, "ftvm-arbiter-req-v1\n" method "\n" path "\n" ts "\n" nonce "\n"
 * body). The server refuses a missing or wrong MAC, a timestamp more than 30 s away from its clock and
 * a nonce it has seen (it keeps recent nonces, bounded: see NonceWindow). Each reply carries x-ftvm-mac
 * = HMAC(secret, "ftvm-arbiter-resp-v1\n" nonce "\n" status "\n" body), bound to the request's nonce,
 * so a process without the secret can neither claim nor tell a claimant it won.
 *
 * Durability: one file per VM, `vm-<name>.json`, holding the record, the VM name and a SHA-256
 * checksum. It is replaced by write-to-temp, fsync, rename, fsync of the directory, all before the
 * reply. Operations on one VM are serialized, so the test-and-set is atomic. At start every file is
 * read and checked; a corrupt one is reported (an error log line, and FTVM_ERR_ARBITER_CORRUPT for
 * every request on that VM) and left untouched: it is never reset. A `LOCK` file stops two servers from
 * sharing a data directory.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { mkdir, open, readFile, readdir, rename, unlink, writeFile } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import type tls from 'node:tls';
import { Keyring, pskIdentity, tlsPsk } from '../security/secrets.js';
import { join, resolve } from 'node:path';
import { MAX_CLOCK_SKEW_MS, NonceWindow } from '../security/nonces.js';
import { FtvmError, type FtvmErrorCode } from '../util/errors.js';
import { logger, type Logger } from '../util/log.js';
import type { Arbiter, ArbiterRecord, CallOptions, ClaimResult, MemberRecord, StandbyRecord } from './arbiter.js';
import { decideRecord, MemberTables, StandbyPools } from './state.js';
import {
  Deadline,
  backoffMs,
  checkArgs,
  checkStandbyArgs,
  describeError,
  isValidEpoch,
  isValidOwner,
  isValidVmName,
  parseRecordValue,
  parseStandbyValue,
  sameRecord,
  sleep,
  unavailable,
  checkMemberArgs,
  parseMemberValue,
} from './record.js';

export const MAX_BODY_BYTES = 64 * 1024;
export { MAX_CLOCK_SKEW_MS };
export const MIN_SECRET_BYTES = 16;
export const HEADER_TS = 'x-ftvm-ts';
export const HEADER_NONCE = 'x-ftvm-nonce';
export const HEADER_MAC = 'x-ftvm-mac';
const NONCE_PATTERN = /^[0-9a-f]{32}$/;
const TS_PATTERN = /^[0-9]{1,16}$/;
const MAC_PATTERN = /^[0-9a-f]{64}$/;
const FILE_FORMAT = 'ftvm-arbiter-record';
const FILE_VERSION = 1;
const FILE_PREFIX = 'vm-';
const FILE_SUFFIX = '.json';
const TMP_SUFFIX = '.tmp';
const LOCK_FILE = 'LOCK';

type RecordOp = 'init' | 'claim' | 'advance' | 'read';
/** Standby pool operations: register/renew, list, recruit (test-and-set), remove. Kept in memory only. */
type StandbyOp = 'standby' | 'standbys' | 'recruit' | 'unstandby';
/** Members (nodes announcing their control endpoint for operators): publish/renew, list. In memory only. */
type MemberOp = 'member' | 'members';
type Op = RecordOp | StandbyOp | MemberOp;
const OPS: readonly Op[] = ['init', 'claim', 'advance', 'read', 'standby', 'standbys', 'recruit', 'unstandby', 'member', 'members'];
const MEMBER_OPS: readonly Op[] = ['member', 'members'];
/** Members kept per VM at most (the oldest-expiring is dropped first). */
const MEMBERS_MAX = 64;
const STANDBY_OPS: readonly Op[] = ['standby', 'standbys', 'recruit', 'unstandby'];

// ---------------------------------------------------------------------------------------------------
// Authentication (exported for tests and for other clients of the wire format)

export function requestMac(secret: Uint8Array, method: string, path: string, ts: string, nonce: string, body: Uint8Array): string {
  return createHmac('sha256', secret).update(`ftvm-arbiter-req-v1\n${method}\n${path}\n${ts}\n${nonce}\n`).update(body).digest('hex');
}

export function responseMac(secret: Uint8Array, nonce: string, status: number, body: Uint8Array): string {
  return createHmac('sha256', secret).update(`ftvm-arbiter-resp-v1\n${nonce}\n${status}\n`).update(body).digest('hex');
}

/** Headers that authenticate one request (a fresh nonce, the current time unless given). */
export function signRequest(secret: Uint8Array, method: string, path: string, body: Uint8Array, now = Date.now()): Record<string, string> {
  const ts = String(now);
  const nonce = randomBytes(16).toString('hex');
  return { [HEADER_TS]: ts, [HEADER_NONCE]: nonce, [HEADER_MAC]: requestMac(secret, method, path, ts, nonce, body) };
}

function macEqual(hexA: string, hexB: string): boolean {
  const a = Buffer.from(hexA, 'hex');
  const b = Buffer.from(hexB, 'hex');
  return a.length === b.length && a.length === 32 && timingSafeEqual(a, b);
}

function checkSecret(secret: unknown, who: string): Keyring {
  if (secret instanceof Keyring) return secret;
  if (!(secret instanceof Uint8Array) || secret.length < MIN_SECRET_BYTES) {
    throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `${who}: the shared secret must be at least ${MIN_SECRET_BYTES} bytes`);
  }
  return new Keyring(secret);
}

/**
 * The arbiter's transport: TLS 1.3 keyed by the PSK derived from the secret (as the logging channel,
 * src/channel/transport.ts), unless `insecure` (plain HTTP, for benchmarks: `--insecure-channel`).
 * The request and reply MACs run inside either way.
 */
export function arbiterClientTls(secretOf: () => Uint8Array): tls.ConnectionOptions {
  return {
    minVersion: 'TLSv1.3',
    maxVersion: 'TLSv1.3',
    pskCallback: () => {
      const s = secretOf();
      return { psk: tlsPsk(s), identity: pskIdentity(s) };
    },
    checkServerIdentity: () => undefined,
  };
}

/** A TLS failure that means the peer does not hold our secret (or is no ftvm arbiter): not worth a retry. */
function isTlsRefusal(err: NodeJS.ErrnoException): boolean {
  return err.code === 'EPROTO' || (typeof err.code === 'string' && err.code.startsWith('ERR_SSL_'));
}

export { NonceWindow };

// ---------------------------------------------------------------------------------------------------
// Durable records

interface RecordFile {
  format: string;
  version: number;
  vm: string;
  epoch: number;
  owner: string;
  writtenAt: string;
  checksum: string;
}

function fileChecksum(f: Omit<RecordFile, 'checksum'>): string {
  const canonical = JSON.stringify([f.format, f.version, f.vm, f.epoch, f.owner, f.writtenAt]);
  return `sha256:${createHash('sha256').update(canonical).digest('hex')}`;
}

function encodeRecordFile(vm: string, r: ArbiterRecord): string {
  const body = { format: FILE_FORMAT, version: FILE_VERSION, vm, epoch: r.epoch, owner: r.owner, writtenAt: new Date().toISOString() };
  return `${JSON.stringify({ ...body, checksum: fileChecksum(body) })}\n`;
}

/** Parses and checks one data file; throws an Error whose message says what is wrong. */
export function decodeRecordFile(vm: string, text: string): ArbiterRecord {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (err) {
    throw new Error(`not JSON (${(err as Error).message})`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not a JSON object');
  const o = v as Partial<Record<keyof RecordFile, unknown>>;
  if (o.format !== FILE_FORMAT) throw new Error(`format is ${JSON.stringify(o.format)}, not ${JSON.stringify(FILE_FORMAT)}`);
  if (o.version !== FILE_VERSION) throw new Error(`format version ${JSON.stringify(o.version)} is not supported (expected ${FILE_VERSION})`);
  if (o.vm !== vm) throw new Error(`holds the record of VM ${JSON.stringify(o.vm)}, not ${JSON.stringify(vm)}`);
  if (!isValidEpoch(o.epoch)) throw new Error(`epoch ${JSON.stringify(o.epoch)} is not a non-negative safe integer`);
  if (!isValidOwner(o.owner)) throw new Error(`owner ${JSON.stringify(o.owner)} is not valid`);
  if (typeof o.writtenAt !== 'string') throw new Error('writtenAt is missing');
  if (typeof o.checksum !== 'string') throw new Error('checksum is missing');
  const expected = fileChecksum({ format: o.format, version: o.version, vm: o.vm, epoch: o.epoch, owner: o.owner, writtenAt: o.writtenAt });
  if (o.checksum !== expected) throw new Error(`checksum mismatch (file says ${o.checksum}, contents give ${expected})`);
  return { epoch: o.epoch, owner: o.owner };
}

export function recordFileName(vm: string): string {
  return `${FILE_PREFIX}${vm}${FILE_SUFFIX}`;
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Replaces a file atomically and durably: temp file, fsync, rename, fsync of the directory. */
async function writeDurably(dir: string, name: string, text: string): Promise<void> {
  const tmp = join(dir, `.${name}.${randomBytes(6).toString('hex')}${TMP_SUFFIX}`);
  const fh = await open(tmp, 'wx', 0o600);
  try {
    await fh.writeFile(text);
    await fh.sync();
  } catch (err) {
    await fh.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await fh.close();
  try {
    await rename(tmp, join(dir, name));
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await fsyncDir(dir);
}

type Slot = { kind: 'ok'; record: ArbiterRecord } | { kind: 'corrupt'; reason: string };

/** Data directories held by servers of this process (the LOCK file's pid cannot tell them apart). */
const heldDirs = new Set<string>();

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

// ---------------------------------------------------------------------------------------------------
// The server

export interface EmbeddedArbiterServerOptions {
  dataDir: string;
  /** Loopback address to listen on (the arbiter serves one machine). */
  host: string;
  /** 0 picks a free port. */
  port: number;
  secret: Uint8Array | Keyring;
  /** Plain HTTP instead of TLS-PSK (benchmarks only: `--insecure-channel`). */
  insecure?: boolean;
  log?: Logger;
}

class HttpRefusal extends Error {
  constructor(
    readonly status: number,
    readonly code: FtvmErrorCode,
    message: string,
  ) {
    super(message);
  }
}

const bad = (message: string): HttpRefusal => new HttpRefusal(400, 'FTVM_ERR_ARBITER_BAD_REQUEST', message);

interface ParsedRequest {
  op: RecordOp;
  vm: string;
  epoch: number;
  owner: string;
}

interface ParsedStandbyRequest {
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

/** A request body: a JSON object with exactly `fields`. */
function jsonBody(op: Op, raw: Buffer, fields: readonly string[]): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(raw.toString('utf8'));
  } catch {
    throw bad('body is not JSON');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad('body is not a JSON object');
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!fields.includes(k)) throw bad(`unexpected field ${JSON.stringify(k)} (${op} takes ${fields.join(', ')})`);
  for (const k of fields) if (!(k in o)) throw bad(`missing field ${JSON.stringify(k)}`);
  return o;
}

/** Validates a standby-pool request body strictly. */
function parseStandbyBody(op: StandbyOp, raw: Buffer): ParsedStandbyRequest {
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
function parseBody(op: RecordOp, raw: Buffer): ParsedRequest {
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
function parseMemberBody(op: MemberOp, raw: Buffer): { op: MemberOp; vm: string; member: MemberRecord | null; ttlMs: number } {
  const o = jsonBody(op, raw, op === 'member' ? ['vm', 'nodeId', 'control', 'role', 'ttlMs'] : ['vm']);
  const member = op === 'member' ? { nodeId: o.nodeId as string, control: o.control as string, role: o.role as string } : null;
  try {
    checkMemberArgs({ vm: o.vm as string, opts: { deadlineMs: 1 }, ...(member ? { member, ttlMs: o.ttlMs as number } : {}) });
  } catch (err) {
    throw bad((err as Error).message);
  }
  return { op, vm: o.vm as string, member, ttlMs: (o.ttlMs as number | undefined) ?? 0 };
}

export class EmbeddedArbiterServer {
  private readonly slots = new Map<string, Slot>();
  /** Standby pools per VM: leases on this process's monotonic clock, not durable (standbys renew). */
  private readonly pools = new StandbyPools();
  /** Announced nodes per VM (for operators), leased like standbys; not durable. */
  private readonly members = new MemberTables(MEMBERS_MAX);
  private readonly chains = new Map<string, Promise<unknown>>();
  private readonly nonces = new NonceWindow();
  private closed = false;
  private closing: Promise<void> | undefined;

  private constructor(
    private readonly server: http.Server,
    private readonly dataDir: string,
    private readonly keyring: Keyring,
    private readonly log: Logger,
  ) {}

  /**
   * Loads and checks every record in dataDir (creating it if needed), takes the directory's lock and
   * listens. Corrupt records are reported (log line, `corruptVms`) and refused, never reset.
   */
  static async start(opts: EmbeddedArbiterServerOptions): Promise<EmbeddedArbiterServer> {
    const secret = checkSecret(opts.secret, 'arbiter server');
    if (typeof opts.dataDir !== 'string' || opts.dataDir === '') throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'arbiter server: dataDir is required');
    if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `arbiter server: bad port ${opts.port}`);
    const log = opts.log ?? logger('arbiter-server');
    const dataDir = resolve(opts.dataDir);
    await mkdir(dataDir, { recursive: true, mode: 0o700 });
    await lockDataDir(dataDir);
    const httpOpts = { requestTimeout: 10_000, headersTimeout: 5_000, keepAliveTimeout: 5_000 };
    const server: http.Server = opts.insecure
      ? http.createServer(httpOpts)
      : https.createServer({
          ...httpOpts,
          minVersion: 'TLSv1.3',
          maxVersion: 'TLSv1.3',
          handshakeTimeout: 5_000,
          pskCallback: (_socket: tls.TLSSocket, identity: string) => {
            const s = secret.byPskIdentity(identity);
            return s ? tlsPsk(s) : null;
          },
        });
    if (!opts.insecure) {
      server.on('tlsClientError', (err: NodeJS.ErrnoException, socket: tls.TLSSocket) => {
        log.warn({ remote: `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`, code: err.code, err: err.message }, 'arbiter: refused a connection: TLS handshake failed (wrong secret, or a plain-HTTP client: --insecure-channel must match)');
      });
    }
    const self = new EmbeddedArbiterServer(server, dataDir, secret, log);
    try {
      await self.load();
      server.on('request', (req, res) => void self.handle(req, res));
      server.on('clientError', (err, socket) => {
        log.warn({ err: describeError(err) }, 'arbiter: refused a malformed HTTP request');
        if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
        else socket.destroy();
      });
      await new Promise<void>((resolveListen, rejectListen) => {
        server.once('error', rejectListen);
        server.listen(opts.port, opts.host, () => {
          server.off('error', rejectListen);
          resolveListen();
        });
      });
    } catch (err) {
      await unlockDataDir(dataDir);
      if (err instanceof FtvmError) throw err;
      throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `arbiter server: cannot listen on ${opts.host}:${opts.port}: ${describeError(err)}`, { cause: err });
    }
    if (!isLoopback(opts.host)) log.warn({ host: opts.host }, 'arbiter: listening on a non-loopback address (the embedded arbiter is meant for one machine)');
    log.info({ address: self.address, dataDir, vms: self.slots.size, corrupt: self.corruptVms.length }, 'arbiter: listening');
    return self;
  }

  get address(): { host: string; port: number } {
    const a = this.server.address() as AddressInfo | null;
    if (!a) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'arbiter server is closed');
    return { host: a.address, port: a.port };
  }

  /** VMs whose data file failed its checks at start (refused with FTVM_ERR_ARBITER_CORRUPT). */
  get corruptVms(): string[] {
    return [...this.slots].filter(([, s]) => s.kind === 'corrupt').map(([vm]) => vm);
  }

  /** Stops listening, lets operations in flight finish (and reach the disk), releases the lock. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.closed = true;
      const closed = new Promise<void>((r) => this.server.close(() => r()));
      this.server.closeIdleConnections();
      await Promise.allSettled([...this.chains.values()]);
      this.server.closeAllConnections();
      await closed;
      await unlockDataDir(this.dataDir);
      this.log.info({ dataDir: this.dataDir }, 'arbiter: closed');
    })();
    return this.closing;
  }

  private async load(): Promise<void> {
    const names = await readdir(this.dataDir);
    for (const name of names) {
      const path = join(this.dataDir, name);
      if (name === LOCK_FILE) continue;
      if (name.startsWith('.') && name.endsWith(TMP_SUFFIX)) {
        // A write that never reached its rename: it was never acknowledged.
        this.log.info({ file: path }, 'arbiter: removing an unfinished temporary file');
        await unlink(path);
        continue;
      }
      if (!name.startsWith(FILE_PREFIX) || !name.endsWith(FILE_SUFFIX)) {
        this.log.warn({ file: path }, 'arbiter: ignoring an unexpected file in the data directory');
        continue;
      }
      const vm = name.slice(FILE_PREFIX.length, -FILE_SUFFIX.length);
      if (!isValidVmName(vm)) {
        this.log.warn({ file: path }, 'arbiter: ignoring a data file whose name is not a valid VM name');
        continue;
      }
      try {
        const record = decodeRecordFile(vm, await readFile(path, 'utf8'));
        this.slots.set(vm, { kind: 'ok', record });
      } catch (err) {
        const reason = `data file ${path} is corrupt: ${(err as Error).message}`;
        this.slots.set(vm, { kind: 'corrupt', reason });
        this.log.error(
          { vm, file: path, code: 'FTVM_ERR_ARBITER_CORRUPT' },
          `arbiter: CORRUPT record for VM ${vm}: ${reason}. Refusing every request for this VM; the file is left as it is. Restore it from a backup, or (only if no replica of this VM can be live) delete it and re-init.`,
        );
      }
    }
  }

  /** Runs fn after every earlier operation on vm (a per-VM promise chain). */
  private serialize<T>(vm: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.chains.get(vm) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const tail = next.catch(() => undefined);
    this.chains.set(vm, tail);
    void tail.then(() => {
      if (this.chains.get(vm) === tail) this.chains.delete(vm);
    });
    return next;
  }

  private async store(vm: string, record: ArbiterRecord): Promise<void> {
    try {
      await writeDurably(this.dataDir, recordFileName(vm), encodeRecordFile(vm, record));
    } catch (err) {
      // The file holds either the old or the new record; find out which before serving this VM again.
      this.log.error({ vm, err: describeError(err) }, 'arbiter: failed to write a record durably');
      try {
        this.slots.set(vm, { kind: 'ok', record: decodeRecordFile(vm, await readFile(join(this.dataDir, recordFileName(vm)), 'utf8')) });
      } catch (readErr) {
        if ((readErr as NodeJS.ErrnoException).code === 'ENOENT') this.slots.delete(vm);
        else this.slots.set(vm, { kind: 'corrupt', reason: `after a failed write: ${describeError(readErr)}` });
      }
      throw new HttpRefusal(503, 'FTVM_ERR_ARBITER_UNAVAILABLE', `storage failure: ${describeError(err)}`);
    }
    this.slots.set(vm, { kind: 'ok', record });
  }

  private current(vm: string): ArbiterRecord | null {
    const s = this.slots.get(vm);
    if (!s) return null;
    if (s.kind === 'corrupt') throw new HttpRefusal(500, 'FTVM_ERR_ARBITER_CORRUPT', `the record of VM ${vm} is corrupt; refusing to serve it (${s.reason})`);
    return s.record;
  }

  private async execute(p: ParsedRequest): Promise<Record<string, unknown>> {
    const d = decideRecord(this.current(p.vm), p.op === 'read' ? { op: 'read' } : { op: p.op, epoch: p.epoch, owner: p.owner });
    if (d.write) await this.store(p.vm, d.write);
    switch (d.op) {
      case 'read':
      case 'init':
        return { record: d.record };
      case 'claim':
        if ('noRecord' in d) throw new HttpRefusal(404, 'FTVM_ERR_ARBITER_BAD_REQUEST', `VM ${p.vm} has no record (init it first)`);
        return { won: d.won, record: d.record };
      case 'advance':
        return { advanced: d.advanced, record: d.record };
    }
  }

  private executeMember(p: ReturnType<typeof parseMemberBody>): Record<string, unknown> {
    const now = performance.now();
    if (p.op === 'members') return { members: this.members.list(p.vm, now) };
    this.members.publish(p.vm, p.member!, p.ttlMs, now);
    return { member: p.member };
  }

  private executeStandby(p: ParsedStandbyRequest): Record<string, unknown> {
    const now = performance.now();
    switch (p.op) {
      case 'standby':
        return { standby: this.pools.register(p.vm, { hostId: p.hostId, channel: p.channel, free: p.free }, p.ttlMs, now) };
      case 'standbys':
        return { standbys: this.pools.list(p.vm, now) };
      case 'recruit':
        return { standby: this.pools.recruit(p.vm, p.hostId, { owner: p.owner, epoch: p.epoch }, now) };
      case 'unstandby':
        return { removed: this.pools.remove(p.vm, p.hostId) };
    }
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const method = req.method ?? '';
    const path = req.url ?? '';
    const nonceHeader = req.headers[HEADER_NONCE];
    const nonce = typeof nonceHeader === 'string' && NONCE_PATTERN.test(nonceHeader) ? nonceHeader : '';
    const remote = `${req.socket.remoteAddress ?? '?'}:${req.socket.remotePort ?? '?'}`;
    // Replies are MAC'd with the secret the request was signed with (during a rotation, either).
    let replySecret = this.keyring.current;
    const reply = (status: number, body: unknown, close = false): void => {
      const bytes = Buffer.from(JSON.stringify(body));
      const headers: http.OutgoingHttpHeaders = {
        'content-type': 'application/json',
        'content-length': bytes.length,
        [HEADER_MAC]: responseMac(replySecret, nonce, status, bytes),
      };
      if (close || this.closed) headers.connection = 'close';
      res.writeHead(status, headers).end(bytes);
    };
    const refuse = (r: HttpRefusal, close = false): void => {
      this.log.warn({ remote, method, path, status: r.status, code: r.code }, `arbiter: refused request: ${r.message}`);
      reply(r.status, { error: { code: r.code, message: r.message } }, close);
    };
    try {
      const declared = Number(req.headers['content-length'] ?? '0');
      if (declared > MAX_BODY_BYTES) {
        req.resume();
        refuse(bad(`body of ${declared} bytes exceeds ${MAX_BODY_BYTES}`), true);
        return;
      }
      let body: Buffer | undefined;
      try {
        body = await readBody(req, MAX_BODY_BYTES);
      } catch (err) {
        this.log.warn({ remote, method, path, err: describeError(err) }, 'arbiter: request abandoned by the client');
        return;
      }
      if (body === undefined) {
        refuse(bad(`body exceeds ${MAX_BODY_BYTES} bytes`), true);
        return;
      }
      // Authenticate before looking at anything else.
      const ts = req.headers[HEADER_TS];
      const mac = req.headers[HEADER_MAC];
      if (typeof ts !== 'string' || !TS_PATTERN.test(ts) || !nonce || typeof mac !== 'string' || !MAC_PATTERN.test(mac)) {
        throw new HttpRefusal(401, 'FTVM_ERR_ARBITER_AUTH', 'missing or malformed authentication headers');
      }
      const signer = this.keyring.accepted.find((s) => macEqual(mac, requestMac(s, method, path, ts, nonce, body)));
      if (!signer) throw new HttpRefusal(401, 'FTVM_ERR_ARBITER_AUTH', 'bad MAC (wrong secret?)');
      replySecret = signer;
      const freshness = this.nonces.check(nonce, Number(ts), Date.now());
      if (freshness) throw new HttpRefusal(401, 'FTVM_ERR_ARBITER_AUTH', freshness);
      const m = /^\/v1\/([a-z]+)$/.exec(path);
      const op = m?.[1] as Op | undefined;
      if (!op || !OPS.includes(op)) throw new HttpRefusal(404, 'FTVM_ERR_ARBITER_BAD_REQUEST', `no such endpoint ${path}`);
      if (method !== 'POST') throw new HttpRefusal(405, 'FTVM_ERR_ARBITER_BAD_REQUEST', `${path} takes POST, not ${method}`);
      if (this.closed) throw new HttpRefusal(503, 'FTVM_ERR_ARBITER_UNAVAILABLE', 'arbiter is shutting down');
      if (MEMBER_OPS.includes(op)) {
        const parsed = parseMemberBody(op as MemberOp, body);
        reply(200, this.executeMember(parsed));
        return;
      }
      if (STANDBY_OPS.includes(op)) {
        const parsed = parseStandbyBody(op as StandbyOp, body);
        const result = this.executeStandby(parsed);
        this.log.debug({ remote, op, vm: parsed.vm, result }, 'arbiter: request served');
        reply(200, result);
        return;
      }
      const parsed = parseBody(op as RecordOp, body);
      const result = await this.serialize(parsed.vm, () => this.execute(parsed));
      this.log.debug({ remote, op, vm: parsed.vm, result }, 'arbiter: request served');
      reply(200, result);
    } catch (err) {
      if (err instanceof HttpRefusal) refuse(err);
      else {
        this.log.error({ remote, method, path, err: describeError(err) }, 'arbiter: internal error');
        reply(500, { error: { code: 'FTVM_ERR_ARBITER_UNAVAILABLE', message: 'internal error' } }, true);
      }
    }
  }
}

/** The body, or undefined if it exceeds max bytes; rejects if the stream ends early. */
function readBody(stream: http.IncomingMessage, max: number): Promise<Buffer | undefined> {
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

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

async function lockDataDir(dir: string): Promise<void> {
  const path = join(dir, LOCK_FILE);
  if (heldDirs.has(dir)) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `arbiter server: data directory ${dir} is already in use by a server in this process`);
  try {
    const text = await readFile(path, 'utf8');
    const pid = Number.parseInt(text, 10);
    if (Number.isInteger(pid) && pid !== process.pid && pidAlive(pid)) {
      throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `arbiter server: data directory ${dir} is locked by process ${pid} (${path}); two arbiters must never share one`);
    }
  } catch (err) {
    if (err instanceof FtvmError) throw err;
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  await writeFile(path, `${process.pid}\n`, { mode: 0o600 });
  heldDirs.add(dir);
}

async function unlockDataDir(dir: string): Promise<void> {
  if (!heldDirs.delete(dir)) return;
  await unlink(join(dir, LOCK_FILE)).catch(() => undefined);
}

// ---------------------------------------------------------------------------------------------------
// The client

export interface EmbeddedArbiterClientOptions {
  host: string;
  port: number;
  secret: Uint8Array | Keyring;
  /** Plain HTTP instead of TLS-PSK (must match the server's). */
  insecure?: boolean;
  log?: Logger;
}

type Attempt = { kind: 'ok'; body: Record<string, unknown> } | { kind: 'retry'; error: unknown; uncertain: boolean };

export class EmbeddedArbiterClient implements Arbiter {
  private readonly agent: http.Agent;
  private readonly keyring: Keyring;
  private readonly log: Logger;
  private closed = false;

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
    await this.call('member', { vm, nodeId: member.nodeId, control: member.control, role: member.role, ttlMs }, opts);
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
      if (r.kind === 'ok') return { body: r.body, uncertain };
      lastError = r.error;
      uncertain ||= r.uncertain;
      this.log.debug({ op, vm: payload.vm, attempt, err: describeError(r.error) }, 'arbiter: attempt failed; retrying');
      await sleep(backoffMs(attempt, deadline));
    }
    this.log.warn({ op, vm: payload.vm, deadlineMs: opts.deadlineMs, err: describeError(lastError) }, 'arbiter: unavailable');
    throw unavailable(`${op} of VM ${String(payload.vm)}`, deadline, lastError, uncertain);
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

/**
 * The embedded arbiter's server (`ftvm arbiter`): HTTPS (TLS 1.3-PSK) or plain HTTP on loopback;
 * authenticates, parses, applies the pure state changes (state.ts) and makes record changes durable
 * (embedded-store.ts) before replying. Operations on one VM are serialized.
 */
import { mkdir, readFile, readdir, rename, unlink } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import type tls from 'node:tls';
import { Keyring, tlsPsk } from '../security/secrets.js';
import { join, resolve } from 'node:path';
import { NonceWindow } from '../security/nonces.js';
import { FtvmError } from '../util/errors.js';
import { logger, type Logger } from '../util/log.js';
import type { ArbiterRecord } from './arbiter.js';
import { decideRecord, MemberTables, StandbyPools } from './state.js';
import { describeError, isValidVmName } from './record.js';
import { HEADER_TS, HEADER_NONCE, HEADER_MAC, NONCE_PATTERN, TS_PATTERN, MAC_PATTERN, requestMac, responseMac, macEqual, checkSecret } from './embedded-auth.js';
import { FILE_PREFIX, FILE_SUFFIX, TMP_SUFFIX, LOCK_FILE, decodeRecordFile, encodeRecordFile, recordFileName, writeDurably, type Slot, lockDataDir, unlockDataDir } from './embedded-store.js';
import { MAX_BODY_BYTES, type RecordOp, type StandbyOp, type MemberOp, type Op, OPS, MEMBER_OPS, MEMBERS_MAX, STANDBY_OPS, HttpRefusal, bad, type ParsedRequest, type ParsedStandbyRequest, parseStandbyBody, parseBody, parseMemberBody, readBody } from './embedded-request.js';

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
  /** An idle client connection is closed after this long. Default 5000 (clients keep warm below it). */
  keepAliveTimeoutMs?: number;
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
  private accepted = 0;

  private constructor(
    private readonly server: http.Server,
    private readonly dataDir: string,
    private readonly keyring: Keyring,
    private readonly log: Logger,
  ) {}

  /** TCP connections accepted since start (a client that keeps warm reuses one). */
  get connectionsAccepted(): number {
    return this.accepted;
  }

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
    const httpOpts = { requestTimeout: 10_000, headersTimeout: 5_000, keepAliveTimeout: opts.keepAliveTimeoutMs ?? 5_000 };
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
      server.on('connection', () => self.accepted++);
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

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

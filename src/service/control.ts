/**
 * The control endpoint of a node: a tiny HTTP/JSON server for `ftvm status`, `stop`, `switchover`,
 * `ftvm dashboard` and tests.
 *   GET  /status       → the node's status object, with the process's `pid`, `startedAt` and the
 *                        node's identity (`hostId`, `nodeId`) after its `role`
 *   POST /state-hash   → primary: log a state hash at the next idle point and return {n, hash}
 *   GET  /state-hash   → backup: the last state hash it verified against the log
 *   GET  /metrics      → Prometheus text format (prom-client; see src/service/metrics.ts)
 *   GET  /timeline     → the node's failover and re-replication events, oldest first
 *   POST /stop, POST /switchover → primary: stop intentionally / hand over to the backup
 *
 * Nobody steers a VM who should not:
 * - **Authenticated.** Every request is signed with the VM's secret: headers x-ftvm-ts (ms since the Unix
 *   epoch), x-ftvm-nonce (32 hex digits) and x-ftvm-mac = hex HMAC-SHA256(secret, "ftvm-control-req-v1\n"
 *   method "\n" path "\n" host "\n" ts "\n" nonce "\n" body), where host is the request's Host header. A
 *   missing or wrong MAC, a timestamp more than 30 s off, or a nonce seen before → 401
 *   FTVM_ERR_CONTROL_AUTH, and nothing is done. Each reply carries x-ftvm-mac = HMAC(secret,
 *   "ftvm-control-resp-v1\n" nonce "\n" status "\n" body), which the client checks.
 * - **Read-only scrape token.** `GET /metrics` also takes `Authorization: Bearer <token>`, the token being
 *   hex HMAC-SHA256(secret, "ftvm-metrics-scrape-v1") (`ftvm metrics-token --secret-file f` prints it), so
 *   Prometheus or curl can scrape without signing; it opens nothing else.
 * - **Not from a browser.** A request with an `Origin` or `Sec-Fetch-*` header, or whose `Host` is not
 *   this endpoint's own address (DNS rebinding), is refused with 403 FTVM_ERR_CONTROL_FORBIDDEN, even
 *   with a valid signature.
 * - **Loopback unless TLS.** A non-loopback listen address is refused at start-up
 *   (FTVM_ERR_CONTROL_INSECURE) unless the endpoint serves HTTPS with the operator's certificate
 *   (`--tls-cert`, `--tls-key`); clients then verify it with `--tls-ca`.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import { isIP } from 'node:net';
import { Keyring } from '../security/secrets.js';
import { NonceWindow } from '../security/nonces.js';
import { FtvmError, type FtvmErrorCode } from '../util/errors.js';
import type { Logger } from '../util/log.js';

export type ControlHandler = (method: string, path: string) => Promise<unknown> | unknown;

/** A reply that is not JSON (e.g. /metrics): written as is with its content type. */
export class RawReply {
  constructor(
    readonly contentType: string,
    readonly body: string,
  ) {}
}

/** When this process started (ISO 8601), for status. */
export const PROCESS_STARTED_AT = new Date(Math.round(performance.timeOrigin)).toISOString();

/** Who answers at a control endpoint: shown in every status, so a user can find the process. */
export interface ControlIdentity {
  hostId?: string;
  nodeId?: string;
}

export const CONTROL_HEADER_TS = 'x-ftvm-ts';
export const CONTROL_HEADER_NONCE = 'x-ftvm-nonce';
export const CONTROL_HEADER_MAC = 'x-ftvm-mac';
const MAX_BODY_BYTES = 64 * 1024;
const NONCE_PATTERN = /^[0-9a-f]{32}$/;
const TS_PATTERN = /^[0-9]{1,16}$/;
const MAC_PATTERN = /^[0-9a-f]{64}$/;

export interface ControlTls {
  /** PEM certificate chain and private key the endpoint serves HTTPS with. */
  cert: Buffer;
  key: Buffer;
}

export interface ControlServerOptions {
  keyring: Keyring | Uint8Array;
  tls?: ControlTls;
  log?: Logger;
  /** Who answers here: shown in every status. */
  identity?: ControlIdentity;
}

/** The read-only bearer token that opens `GET /metrics` (and nothing else) for a scraper. */
export function metricsScrapeToken(secret: Uint8Array): string {
  return createHmac('sha256', secret).update('ftvm-metrics-scrape-v1').digest('hex');
}

export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h) || /^::ffff:127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/** host:port as it appears in a Host header (IPv6 in brackets). */
export function hostHeaderOf(host: string, port: number): string {
  const h = host.replace(/^\[|\]$/g, '');
  return `${isIP(h) === 6 ? `[${h}]` : h}:${port}`.toLowerCase();
}

export function controlRequestMac(secret: Uint8Array, method: string, path: string, host: string, ts: string, nonce: string, body: Uint8Array): string {
  return createHmac('sha256', secret).update(`ftvm-control-req-v1\n${method}\n${path}\n${host}\n${ts}\n${nonce}\n`).update(body).digest('hex');
}

export function controlResponseMac(secret: Uint8Array, nonce: string, status: number, body: Uint8Array): string {
  return createHmac('sha256', secret).update(`ftvm-control-resp-v1\n${nonce}\n${status}\n`).update(body).digest('hex');
}

/** Headers that authenticate one control request (a fresh nonce; the current time unless given). */
export function signControlRequest(secret: Uint8Array, method: string, path: string, host: string, body: Uint8Array = new Uint8Array(0), now = Date.now()): Record<string, string> {
  const ts = String(now);
  const nonce = randomBytes(16).toString('hex');
  return { [CONTROL_HEADER_TS]: ts, [CONTROL_HEADER_NONCE]: nonce, [CONTROL_HEADER_MAC]: controlRequestMac(secret, method, path, host, ts, nonce, body) };
}

function macEqual(hexA: string, hexB: string): boolean {
  const a = Buffer.from(hexA, 'hex');
  const b = Buffer.from(hexB, 'hex');
  return a.length === b.length && a.length === 32 && timingSafeEqual(a, b);
}

class Refusal extends Error {
  constructor(
    readonly status: number,
    readonly code: FtvmErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export class ControlServer {
  private server: http.Server | undefined;
  private readonly keyring: Keyring;
  private readonly nonces = new NonceWindow();

  constructor(
    private readonly host: string,
    private readonly port: number,
    private readonly handler: ControlHandler,
    private readonly opts: ControlServerOptions,
  ) {
    this.keyring = Keyring.of(opts.keyring);
  }

  /** A status object with the process's identity after its role (the first line a user reads). */
  private withIdentity(body: unknown): unknown {
    if (typeof body !== 'object' || body === null || Array.isArray(body)) return body;
    const { role, ...rest } = body as Record<string, unknown>;
    return { ...(role !== undefined ? { role } : {}), pid: process.pid, ...this.opts.identity, startedAt: PROCESS_STARTED_AT, ...rest };
  }

  get address(): { host: string; port: number } | undefined {
    const a = this.server?.address();
    return a && typeof a === 'object' ? { host: a.address, port: a.port } : undefined;
  }

  get secure(): boolean {
    return this.opts.tls !== undefined;
  }

  async start(): Promise<void> {
    if (!isLoopbackHost(this.host) && !this.opts.tls) {
      throw new FtvmError(
        'FTVM_ERR_CONTROL_INSECURE',
        `--control ${hostHeaderOf(this.host, this.port)} is not a loopback address: the control endpoint listens beyond this machine only over TLS (give --tls-cert and --tls-key), or use 127.0.0.1`,
      );
    }
    const onRequest = (req: http.IncomingMessage, res: http.ServerResponse): void => void this.handle(req, res);
    const server = this.opts.tls
      ? https.createServer({ cert: this.opts.tls.cert, key: this.opts.tls.key, minVersion: 'TLSv1.2', requestTimeout: 10_000, headersTimeout: 5_000 }, onRequest)
      : http.createServer({ requestTimeout: 10_000, headersTimeout: 5_000 }, onRequest);
    this.server = server;
    server.keepAliveTimeout = 1000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, this.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  }

  /** Host headers naming this endpoint: its configured address, the address the client reached, localhost. */
  private allowedHosts(req: http.IncomingMessage): Set<string> {
    const port = this.address?.port ?? this.port;
    const hosts = new Set([hostHeaderOf(this.host, port)]);
    const local = req.socket.localAddress;
    if (local) hosts.add(hostHeaderOf(local.replace(/^::ffff:/, ''), port)).add(hostHeaderOf(local, port));
    if (isLoopbackHost(this.host)) hosts.add(`localhost:${port}`);
    return hosts;
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const method = req.method ?? 'GET';
    const url = req.url ?? '/';
    const path = url.split('?')[0] ?? '/';
    const nonceHeader = req.headers[CONTROL_HEADER_NONCE];
    const nonce = typeof nonceHeader === 'string' && NONCE_PATTERN.test(nonceHeader) ? nonceHeader : '';
    let replySecret: Uint8Array | undefined;
    const reply = (status: number, body: unknown): void => {
      const raw = body instanceof RawReply;
      const bytes = Buffer.from(raw ? body.body : JSON.stringify(body));
      const headers: http.OutgoingHttpHeaders = { 'content-type': raw ? body.contentType : 'application/json', 'content-length': bytes.length, 'cache-control': 'no-store' };
      if (replySecret) headers[CONTROL_HEADER_MAC] = controlResponseMac(replySecret, nonce, status, bytes);
      res.writeHead(status, headers).end(bytes);
    };
    try {
      const body = await readBody(req, MAX_BODY_BYTES);
      if (body === undefined) throw new Refusal(413, 'FTVM_ERR_BAD_ARGUMENT', `body exceeds ${MAX_BODY_BYTES} bytes`);
      // A browser page (CSRF, DNS rebinding) never gets to the handler, whatever it carries.
      if (req.headers.origin !== undefined || req.headers['sec-fetch-site'] !== undefined || req.headers['sec-fetch-mode'] !== undefined) {
        throw new Refusal(403, 'FTVM_ERR_CONTROL_FORBIDDEN', 'requests from a web page (Origin / Sec-Fetch-* headers) are refused');
      }
      const host = (req.headers.host ?? '').toLowerCase();
      if (!this.allowedHosts(req).has(host)) throw new Refusal(403, 'FTVM_ERR_CONTROL_FORBIDDEN', `Host ${JSON.stringify(req.headers.host ?? '')} is not this endpoint's address`);
      const bearer = /^Bearer ([0-9a-f]{64})$/.exec(String(req.headers.authorization ?? ''));
      if (bearer !== null && method === 'GET' && path === '/metrics') {
        // The read-only scrape token opens /metrics alone (Prometheus, curl); the reply is not signed.
        if (!this.keyring.accepted.some((s) => macEqual(bearer[1]!, metricsScrapeToken(s)))) throw new Refusal(401, 'FTVM_ERR_CONTROL_AUTH', 'bad scrape token');
        const result = await this.handler(method, path);
        if (result === undefined) throw new Refusal(404, 'FTVM_ERR_BAD_ARGUMENT', `no such endpoint ${method} ${path}`);
        reply(200, result);
        return;
      }
      const ts = req.headers[CONTROL_HEADER_TS];
      const mac = req.headers[CONTROL_HEADER_MAC];
      if (typeof ts !== 'string' || !TS_PATTERN.test(ts) || !nonce || typeof mac !== 'string' || !MAC_PATTERN.test(mac)) {
        throw new Refusal(401, 'FTVM_ERR_CONTROL_AUTH', 'missing or malformed authentication headers (sign requests with the VM secret: `ftvm status|stop|switchover --secret-file`)');
      }
      const secret = this.keyring.accepted.find((s) => macEqual(mac, controlRequestMac(s, method, url, req.headers.host ?? '', ts, nonce, body)));
      if (!secret) throw new Refusal(401, 'FTVM_ERR_CONTROL_AUTH', 'bad MAC (wrong secret?)');
      const freshness = this.nonces.check(nonce, Number(ts), Date.now());
      if (freshness) throw new Refusal(401, 'FTVM_ERR_CONTROL_AUTH', freshness);
      replySecret = secret;
      let result = await this.handler(method, path);
      if (result === undefined) throw new Refusal(404, 'FTVM_ERR_BAD_ARGUMENT', `no such endpoint ${method} ${path}`);
      if (method === 'GET' && path === '/status') result = this.withIdentity(result);
      reply(200, result);
    } catch (err) {
      if (err instanceof Refusal) {
        this.opts.log?.warn({ remote: `${req.socket.remoteAddress ?? '?'}:${req.socket.remotePort ?? '?'}`, method, path, status: err.status, code: err.code }, `control: refused request: ${err.message}`);
        reply(err.status, { error: err.message, code: err.code });
        return;
      }
      const e = err as { code?: string; message?: string };
      reply(500, { error: e.message ?? String(err), code: e.code });
    }
  }

  async close(): Promise<void> {
    const server = this.server;
    if (!server) return;
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
  }
}

/** How a client authenticates to a control endpoint (and, for an HTTPS one, verifies it). */
export interface ControlAuth {
  secret: Uint8Array;
  /** PEM CA certificate(s): the endpoint serves HTTPS and must present a certificate they sign. */
  ca?: Buffer;
}

/**
 * Client side, for `ftvm status|stop|switchover`, `ftvm dashboard` and tests: a signed request, a
 * verified reply. `as: 'text'` resolves with the body as text (/metrics).
 */
export async function controlRequest(addr: string, auth: ControlAuth | Uint8Array, method: string, path: string, timeoutMs = 5000, as: 'json' | 'text' = 'json'): Promise<unknown> {
  const a: ControlAuth = auth instanceof Uint8Array ? { secret: auth } : auth;
  const [host, portStr] = splitHostPort(addr);
  const hostHeader = hostHeaderOf(host, Number(portStr));
  const headers = signControlRequest(a.secret, method, path, hostHeader);
  const nonce = headers[CONTROL_HEADER_NONCE] ?? '';
  return new Promise((resolve, reject) => {
    const options: https.RequestOptions = { host, port: Number(portStr), method, path, timeout: timeoutMs, headers: { ...headers, host: hostHeader }, agent: false };
    const onResponse = (res: http.IncomingMessage): void => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        try {
          const raw = Buffer.concat(chunks);
          const status = res.statusCode ?? 500;
          const isJson = String(res.headers['content-type'] ?? '').startsWith('application/json');
          const body = (isJson ? JSON.parse(raw.toString('utf8')) : {}) as { error?: string; code?: string };
          if (status >= 400) {
            reject(Object.assign(new Error(body.error ?? `HTTP ${status}`), { code: body.code, status }));
            return;
          }
          const mac = res.headers[CONTROL_HEADER_MAC];
          if (typeof mac !== 'string' || !MAC_PATTERN.test(mac) || !macEqual(mac, controlResponseMac(a.secret, nonce, status, raw))) {
            reject(new FtvmError('FTVM_ERR_CONTROL_AUTH', `the reply from ${addr} is not authenticated with our secret (not this VM's control endpoint?)`));
            return;
          }
          resolve(as === 'text' ? raw.toString('utf8') : isJson ? body : raw.toString('utf8'));
        } catch (err) {
          reject(err);
        }
      });
    };
    const req = a.ca ? https.request({ ...options, ca: a.ca, minVersion: 'TLSv1.2' }, onResponse) : http.request(options, onResponse);
    req.on('timeout', () => req.destroy(new Error(`no answer from ${addr} within ${timeoutMs} ms`)));
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ECONNREFUSED' || err.code === 'ECONNRESET' || err.code === 'EHOSTUNREACH') {
        reject(new FtvmError('FTVM_ERR_CONTROL_UNREACHABLE', `no node answers at ${addr} (${err.code}): is its --control address right, is it running?`, { cause: err }));
      } else reject(err);
    });
    req.end();
  });
}

/** The body, or undefined if it exceeds max bytes. */
function readBody(stream: http.IncomingMessage, max: number): Promise<Buffer | undefined> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    stream.on('data', (c: Buffer) => {
      if (done) return;
      size += c.length;
      if (size > max) {
        done = true;
        resolve(undefined);
        return;
      }
      chunks.push(c);
    });
    stream.on('end', () => {
      if (done) return;
      done = true;
      resolve(Buffer.concat(chunks));
    });
    stream.on('error', (err) => {
      if (done) return;
      done = true;
      reject(err);
    });
  });
}

export function splitHostPort(addr: string): [string, string] {
  const i = addr.lastIndexOf(':');
  if (i <= 0) throw new Error(`address "${addr}" must be host:port`);
  const host = addr.slice(0, i).replace(/^\[|\]$/g, '');
  const port = addr.slice(i + 1);
  if (!/^\d+$/.test(port) || Number(port) > 65535) throw new Error(`address "${addr}" has a bad port`);
  return [host, port];
}

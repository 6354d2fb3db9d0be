/**
 * The control endpoint of a node: a tiny HTTP/JSON server on loopback for `ftvm status` and tests.
 *   GET  /status       → the node's status object, with the process's `pid`, `startedAt` and the
 *                        node's identity (`hostId`, `nodeId`) after its `role`
 *   POST /state-hash   → primary: log a state hash at the next idle point and return {n, hash}
 *   GET  /state-hash   → backup: the last state hash it verified against the log
 *   GET  /metrics      → Prometheus text format (prom-client; see src/service/metrics.ts)
 *   GET  /timeline     → the node's failover and re-replication events, oldest first
 */
import http from 'node:http';
import { FtvmError } from '../util/errors.js';

/** A reply that is not JSON (e.g. /metrics): written as is with its content type. */
export class RawReply {
  constructor(
    readonly contentType: string,
    readonly body: string,
  ) {}
}

export type ControlHandler = (method: string, path: string) => Promise<unknown> | unknown;

/** When this process started (ISO 8601), for status. */
export const PROCESS_STARTED_AT = new Date(Math.round(performance.timeOrigin)).toISOString();

/** Who answers at a control endpoint: shown in every status, so a user can find the process. */
export interface ControlIdentity {
  hostId?: string;
  nodeId?: string;
}

export class ControlServer {
  private server: http.Server | undefined;

  constructor(
    private readonly host: string,
    private readonly port: number,
    private readonly handler: ControlHandler,
    private readonly identity: ControlIdentity = {},
  ) {}

  /** A status object with the process's identity after its role (the first line a user reads). */
  private withIdentity(body: unknown): unknown {
    if (typeof body !== 'object' || body === null || Array.isArray(body)) return body;
    const { role, ...rest } = body as Record<string, unknown>;
    return { ...(role !== undefined ? { role } : {}), pid: process.pid, ...this.identity, startedAt: PROCESS_STARTED_AT, ...rest };
  }

  get address(): { host: string; port: number } | undefined {
    const a = this.server?.address();
    return a && typeof a === 'object' ? { host: a.address, port: a.port } : undefined;
  }

  async start(): Promise<void> {
    const server = http.createServer((req, res) => {
      void (async () => {
        try {
          const method = req.method ?? 'GET';
          const path = (req.url ?? '/').split('?')[0] ?? '/';
          let body = await this.handler(method, path);
          if (method === 'GET' && path === '/status') body = this.withIdentity(body);
          if (body === undefined) {
            res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'not found' }));
            return;
          }
          if (body instanceof RawReply) res.writeHead(200, { 'content-type': body.contentType }).end(body.body);
          else res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
        } catch (err) {
          const e = err as { code?: string; message?: string };
          res.writeHead(500, { 'content-type': 'application/json' }).end(JSON.stringify({ error: e.message ?? String(err), code: e.code }));
        }
      })();
    });
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

  async close(): Promise<void> {
    const server = this.server;
    if (!server) return;
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
  }
}

/** Client side, for `ftvm status`, `ftvm dashboard` and tests. `as: 'text'` resolves with the body as text (/metrics). */
export async function controlRequest(addr: string, method: string, path: string, timeoutMs = 5000, as: 'json' | 'text' = 'json'): Promise<unknown> {
  const [host, portStr] = splitHostPort(addr);
  return new Promise((resolve, reject) => {
    const req = http.request({ host, port: Number(portStr), method, path, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        try {
          if (as === 'text' && (res.statusCode ?? 500) < 400) return resolve(Buffer.concat(chunks).toString('utf8'));
          const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
          if ((res.statusCode ?? 500) >= 400) reject(Object.assign(new Error((body as { error?: string }).error ?? `HTTP ${res.statusCode}`), { code: (body as { code?: string }).code }));
          else resolve(body);
        } catch (err) {
          reject(err);
        }
      });
    });
    req.on('timeout', () => req.destroy(new Error(`no answer from ${addr} within ${timeoutMs} ms`)));
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ECONNREFUSED' || err.code === 'ECONNRESET' || err.code === 'EHOSTUNREACH') {
        reject(new FtvmError('FTVM_ERR_CONTROL_UNREACHABLE', `no node answers at ${addr} (${err.code}): is its --control address right, is it running?`, { cause: err }));
      } else reject(err);
    });
    req.end();
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

/**
 * Fault proxies in a process of their own (src/testing/fault-proxy-process.ts), steered from here over
 * Node IPC: the same controls as {@link FaultProxy} (`cut`, `heal`, `blackhole`, `hold`, `release`,
 * `delay`, `close`), each returning a promise that settles once the child has applied it.
 *
 * The Jepsen harness uses it so that its own event loop (clients, history, checker, garbage collection)
 * can never stall the pair's logging channel: a stall there would be a false failover caused by the
 * harness. The host is registered like every test process (stopAll, SIGKILL at exit) and stopped by PID.
 */
import { fileURLToPath } from 'node:url';
import { spawnNode, type ProcessHandle } from './processes.js';
import { FaultProxyError, type DirectionArg, type FaultProxyErrorCode } from './fault-proxy.js';

const REQUEST_TIMEOUT_MS = 15_000;
const CODES: ReadonlySet<string> = new Set<FaultProxyErrorCode>(['FTVM_ERR_BAD_ARGUMENT', 'FTVM_ERR_PROXY_LISTEN', 'FTVM_ERR_PROXY_CLOSED']);
const MAX_PENDING = 1024;

interface Reply {
  id: number;
  ok: boolean;
  result?: unknown;
  code?: string;
  message?: string;
}

export interface LoopDelay {
  p99Ms: number;
  maxMs: number;
}

export class FaultProxyHost {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();

  private constructor(private readonly proc: ProcessHandle) {
    proc.onMessage((raw) => {
      const r = raw as Reply;
      const p = this.pending.get(r.id);
      if (!p) return;
      this.pending.delete(r.id);
      clearTimeout(p.timer);
      if (r.ok) p.resolve(r.result);
      else p.reject(new FaultProxyError(r.code !== undefined && CODES.has(r.code) ? (r.code as FaultProxyErrorCode) : 'FTVM_ERR_BAD_ARGUMENT', `fault-proxy host: ${r.message ?? 'failed'}`));
    });
    void proc.exited.then((status) => {
      for (const [id, p] of this.pending) {
        clearTimeout(p.timer);
        p.reject(new FaultProxyError('FTVM_ERR_PROXY_CLOSED', `fault-proxy host exited (${status.signal ?? `code ${status.code}`}) before answering request ${id}`));
      }
      this.pending.clear();
    });
  }

  static async start(): Promise<FaultProxyHost> {
    const script = fileURLToPath(new URL('./fault-proxy-process.js', import.meta.url));
    const proc = spawnNode([script], { ipc: true, name: 'fault-proxy-host' });
    await proc.waitForLine(/fault-proxy host ready/, 10_000);
    return new FaultProxyHost(proc);
  }

  get pid(): number {
    return this.proc.pid;
  }

  /** A new fault proxy in the host, listening on 127.0.0.1 (a free port unless `listenPort`). */
  async proxy(options: { targetPort: number; listenPort?: number }): Promise<RemoteFaultProxy> {
    const r = (await this.request({ op: 'start', ...options })) as { proxy: number; port: number };
    return new RemoteFaultProxy(this, r.proxy, r.port);
  }

  /** The host's own event-loop delay so far (its proxies forward late by at most about this much). */
  async loopDelay(): Promise<LoopDelay> {
    return (await this.request({ op: 'loop-delay' })) as LoopDelay;
  }

  /** @internal */
  request(body: Record<string, unknown>): Promise<unknown> {
    if (this.pending.size >= MAX_PENDING) return Promise.reject(new FaultProxyError('FTVM_ERR_BAD_ARGUMENT', `more than ${MAX_PENDING} fault-proxy requests in flight`));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new FaultProxyError('FTVM_ERR_PROXY_CLOSED', `fault-proxy host did not answer ${String(body['op'])} in ${REQUEST_TIMEOUT_MS} ms`));
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(id, { resolve, reject, timer });
      if (!this.proc.send({ id, ...body })) {
        this.pending.delete(id);
        clearTimeout(timer);
        reject(new FaultProxyError('FTVM_ERR_PROXY_CLOSED', 'the fault-proxy host is gone'));
      }
    });
  }

  /** Closes every proxy (the host exits when its channel closes); SIGKILL after 3 s. */
  async close(): Promise<void> {
    await this.proc.stop(3000);
  }
}

/** A {@link FaultProxy} living in a {@link FaultProxyHost}. */
export class RemoteFaultProxy {
  /** @internal use {@link FaultProxyHost.proxy} */
  constructor(
    private readonly host: FaultProxyHost,
    private readonly id: number,
    /** The port it listens on (127.0.0.1), kept across cut/heal. */
    readonly port: number,
  ) {}

  /** Resets every connection and refuses new ones until `heal()`. */
  async cut(): Promise<void> {
    await this.host.request({ op: 'cut', proxy: this.id });
  }
  async heal(): Promise<void> {
    await this.host.request({ op: 'heal', proxy: this.id });
  }
  async blackhole(dir: DirectionArg): Promise<void> {
    await this.host.request({ op: 'blackhole', proxy: this.id, dir });
  }
  async hold(dir: DirectionArg): Promise<void> {
    await this.host.request({ op: 'hold', proxy: this.id, dir });
  }
  async release(dir: DirectionArg): Promise<void> {
    await this.host.request({ op: 'release', proxy: this.id, dir });
  }
  async delay(dir: DirectionArg, ms: number): Promise<void> {
    await this.host.request({ op: 'delay', proxy: this.id, dir, ms });
  }
  async close(): Promise<void> {
    await this.host.request({ op: 'close', proxy: this.id });
  }
}

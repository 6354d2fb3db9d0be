/**
 * Test and benchmark harness for `ftvm proxy` (docs/PROXY.md): a slot pool (src/testing/pool.ts) whose
 * every slot also serves a proxy port, an `ftvm proxy` process in front of it, and a strict RESP
 * connection that counts any reset, error or unexpected close as a failure (a client behind the proxy
 * must never see one).
 */
import net from 'node:net';
import { CLI } from './pair.js';
import { Pool, type PoolOptions } from './pool.js';
import { freePort, spawnNode, waitForPort, type ProcessHandle } from './processes.js';

export interface ProxiedPool {
  pool: Pool;
  proxyPorts: number[];
  proxyPort: number;
  proxy: ProcessHandle;
  /** Restarts the proxy process (kill -9, then a new one on the same port: a new proxy id). */
  restartProxy(): Promise<void>;
  stop(): Promise<void>;
}

export async function startProxy(pool: Pool, proxyPort: number, proxyPorts: number[], extra: string[] = []): Promise<ProcessHandle> {
  const p = spawnNode(
    [CLI, 'proxy', '--listen', `127.0.0.1:${proxyPort}`, '--replicas', proxyPorts.map((q) => `127.0.0.1:${q}`).join(','), '--secret-file', pool.secretFile, '--vm-name', pool.opts.vm, ...extra],
    { name: 'proxy' },
  );
  await p.waitForLine(/proxy session open/, 20_000, { stream: 'stderr' });
  await waitForPort(proxyPort);
  return p;
}

export async function startProxiedPool(o: PoolOptions & { proxyArgs?: string[] } = {}): Promise<ProxiedPool> {
  const slots = o.slots ?? 3;
  const proxyPorts: number[] = [];
  for (let i = 0; i < slots; i++) proxyPorts.push(await freePort());
  const pool = await Pool.start({
    ...o,
    slotArgs: (s) => ['--proxy-listen', `127.0.0.1:${proxyPorts[s.index]!}`, ...(o.slotArgs?.(s) ?? [])],
  });
  const proxyPort = await freePort();
  const h: ProxiedPool = {
    pool,
    proxyPorts,
    proxyPort,
    proxy: await startProxy(pool, proxyPort, proxyPorts, o.proxyArgs),
    async restartProxy() {
      h.proxy.kill('SIGKILL');
      await h.proxy.exited;
      h.proxy = await startProxy(pool, proxyPort, proxyPorts, o.proxyArgs);
    },
    async stop() {
      await h.proxy.stop();
      await pool.stop();
    },
  };
  return h;
}

export type RespReply = string | number | null | RespError | RespReply[];
export class RespError {
  constructor(readonly message: string) {}
}

/**
 * A RESP connection that pipelines freely and hands replies out in order. `failure` is set by any
 * socket error, reset or close not asked for: behind the proxy there must be none.
 */
export class StrictResp {
  private buf: Buffer = Buffer.alloc(0);
  private readonly waiting: Array<(r: RespReply) => void> = [];
  failure: string | undefined;
  private closing = false;

  private constructor(readonly sock: net.Socket) {
    sock.setNoDelay(true);
    sock.on('data', (d: Buffer) => this.onData(d));
    sock.on('error', (e) => (this.failure ??= `socket error: ${e.message}`));
    sock.on('close', () => {
      if (!this.closing) this.failure ??= 'the connection closed';
    });
  }

  static connect(port: number, timeoutMs = 5000): Promise<StrictResp> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ host: '127.0.0.1', port });
      const t = setTimeout(() => {
        s.destroy();
        reject(new Error('connect timeout'));
      }, timeoutMs);
      s.once('connect', () => {
        clearTimeout(t);
        resolve(new StrictResp(s));
      });
      s.once('error', (e) => {
        clearTimeout(t);
        reject(e);
      });
    });
  }

  get pending(): number {
    return this.waiting.length;
  }

  static encode(args: readonly string[]): string {
    return `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`;
  }

  /** Sends commands (one write) and returns their replies' promises, in order. */
  send(cmds: readonly (readonly string[])[]): Array<Promise<RespReply>> {
    const ps = cmds.map(() => new Promise<RespReply>((r) => this.waiting.push(r)));
    this.sock.write(cmds.map((c) => StrictResp.encode(c)).join(''));
    return ps;
  }

  call(...args: string[]): Promise<RespReply> {
    return this.send([args])[0]!;
  }

  private onData(d: Buffer): void {
    this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
    for (;;) {
      const r = parse(this.buf, 0);
      if (r === undefined) return;
      this.buf = this.buf.subarray(r.end);
      const w = this.waiting.shift();
      if (w === undefined) {
        this.failure ??= 'a reply nobody asked for';
        return;
      }
      w(r.value);
    }
  }

  close(): void {
    this.closing = true;
    this.sock.destroy();
  }
}

function parse(b: Buffer, at: number): { value: RespReply; end: number } | undefined {
  if (at >= b.length) return undefined;
  const nl = b.indexOf('\r\n', at);
  if (nl < 0) return undefined;
  const line = b.toString('utf8', at + 1, nl);
  const t = b[at];
  if (t === 0x2b) return { value: line, end: nl + 2 }; // +
  if (t === 0x2d) return { value: new RespError(line), end: nl + 2 }; // -
  if (t === 0x3a) return { value: Number(line), end: nl + 2 }; // :
  if (t === 0x24) {
    const n = Number(line);
    if (n < 0) return { value: null, end: nl + 2 };
    if (b.length < nl + 2 + n + 2) return undefined;
    return { value: b.toString('utf8', nl + 2, nl + 2 + n), end: nl + 2 + n + 2 };
  }
  if (t === 0x2a) {
    const n = Number(line);
    if (n < 0) return { value: null, end: nl + 2 };
    const out: RespReply[] = [];
    let p = nl + 2;
    for (let i = 0; i < n; i++) {
      const r = parse(b, p);
      if (r === undefined) return undefined;
      out.push(r.value);
      p = r.end;
    }
    return { value: out, end: p };
  }
  throw new Error(`bad RESP type byte ${t}`);
}

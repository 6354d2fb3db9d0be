/**
 * Test and benchmark harness for `ftvm proxy` (docs/PROXY.md): a slot pool (src/testing/pool.ts) whose
 * every slot also serves a proxy port, an `ftvm proxy` process in front of it, and a strict RESP
 * connection that counts any reset, error or unexpected close as a failure (a client behind the proxy
 * must never see one).
 */
import net from 'node:net';
import { CLI } from './pair.js';
import { Pool, type PoolOptions, type Slot } from './pool.js';
import { freePort, spawnNode, spawnProcess, waitForPort, type ProcessHandle } from './processes.js';

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
  return startProxyProcess(pool.secretFile, pool.opts.vm, proxyPort, proxyPorts, extra);
}

/**
 * An `ftvm proxy` process on `listenPort` in front of the replicas' proxy ports (a list of ports:
 * `--replicas`; an arbiter URL: `--arbiter`, the nodes announce their proxy ports there); waits for its
 * first session.
 */
export async function startProxyProcess(secretFile: string, vm: string, listenPort: number, replicas: number[] | string, extra: string[] = []): Promise<ProcessHandle> {
  const find = typeof replicas === 'string' ? ['--arbiter', replicas] : ['--replicas', replicas.map((q) => `127.0.0.1:${q}`).join(',')];
  const p = spawnNode([CLI, 'proxy', '--listen', `127.0.0.1:${listenPort}`, ...find, '--secret-file', secretFile, '--vm-name', vm, ...extra], { name: 'proxy' });
  await p.waitForLine(/proxy session open/, 30_000, { stream: 'stderr' });
  await waitForPort(listenPort);
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
  /** Resolves when the socket has closed (for whatever reason). */
  readonly closed: Promise<void>;

  private constructor(readonly sock: net.Socket) {
    sock.setNoDelay(true);
    sock.on('data', (d: Buffer) => this.onData(d));
    sock.on('error', (e) => (this.failure ??= `socket error: ${e.message}`));
    this.closed = new Promise((resolve) =>
      sock.on('close', () => {
        if (!this.closing) this.failure ??= 'the connection closed';
        resolve();
      }),
    );
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

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<T>((_, rej) => (t = setTimeout(() => rej(new Error(`${what}: no answer within ${ms} ms`)), ms)))]).finally(() => clearTimeout(t));
}

/**
 * `count` kill -9 failovers of the serving primary, `gapMs` apart: each waits for a protected pair, kills
 * the primary, and waits for a protected pair again (the new primary recruits a waiting standby) while
 * the killed slot comes back as a fresh standby in the background. Returns each failover's time to a
 * protected pair.
 */
export async function failovers(h: ProxiedPool, count: number, gapMs: number, onEach?: (i: number, ms: number) => void): Promise<number[]> {
  const restarts: Array<Promise<void>> = [];
  const times: number[] = [];
  const restarting = new Set<Slot>();
  const restart = async (s: Slot, kill = false): Promise<void> => {
    restarting.add(s);
    try {
      if (kill) await h.pool.killAndReplace(s);
      else {
        s.gen++;
        await h.pool.startStandby(s);
      }
    } finally {
      restarting.delete(s);
    }
  };
  try {
    for (let i = 0; i < count; i++) {
      await sleep(gapMs);
      // A replica that halted (a backup that lost a claim after a false suspicion on a loaded machine)
      // comes back as a fresh standby, as a killed one does.
      for (const s of h.pool.slots) if (s.proc !== undefined && !s.proc.running && !restarting.has(s)) restarts.push(restart(s));
      const { primary } = await h.pool.waitProtected(60_000);
      const t = Date.now();
      restarts.push(restart(primary, true));
      await sleep(50);
      await h.pool.waitProtected(60_000);
      times.push(Date.now() - t);
      onEach?.(i, Date.now() - t);
    }
  } finally {
    await Promise.all(restarts);
  }
  return times;
}

export interface CountingResult {
  /** INCR replies received (acknowledged operations). */
  ops: number;
  /** INCRs sent whose reply never came (their connection died): each may or may not have run. */
  unacked: number;
  reconnects: number;
  counters: number;
  failures: string[];
  /**
   * Counters outside [acknowledged, acknowledged + unacknowledged] or with a reply value outside
   * 1..value or seen twice. With nothing unacknowledged: counters that differ from their replies, or
   * whose replies are not 1..n each once (a serial execution's values).
   */
  mismatches: string[];
}

/**
 * Counting clients: `conns` connections through the proxy doing INCR (4 pipelined at a time) on `keys`
 * counters until `stop()`; then each counter is read back. Several ports (several proxies fronting one
 * VM): the connections are spread over them, round robin, on the same counters.
 *
 * Strict (no `reconnectMs`): any reset, error or close of a connection is a failure (behind the proxy
 * there must be none), so every counter must equal the replies received, and those be 1..n each once.
 * With `reconnectMs` (a proxy restart closes connections): a connection that closes is opened again
 * within that long, and the INCRs it had in flight count as unacknowledged; each counter must count
 * every acknowledged INCR exactly once — at least the replies received, at most those plus the
 * unacknowledged ones (a request whose reply was lost may or may not have run; a second run of an
 * acknowledged one would push the counter past the bound) — and no reply value may come twice.
 */
export async function countingLoad(
  port: number | number[],
  conns: number,
  keys: number,
  prefix: string,
  maxOps: number,
  maxMs: number,
  o: { reconnectMs?: number } = {},
): Promise<{ stop: () => Promise<CountingResult>; readonly ops: number; readonly reconnects: number }> {
  const ports = Array.isArray(port) ? port : [port];
  const values = new Map<string, number[]>();
  const unackedBy = new Map<string, number>();
  const failures: string[] = [];
  let stopping = false;
  let ops = 0;
  let unacked = 0;
  let reconnects = 0;
  const deadline = Date.now() + maxMs;
  const connect = async (p: number): Promise<StrictResp> => {
    if (o.reconnectMs === undefined) return StrictResp.connect(p);
    const end = Date.now() + o.reconnectMs;
    for (;;) {
      try {
        return await StrictResp.connect(p, 2000);
      } catch (err) {
        if (Date.now() > end) throw new Error(`cannot reconnect within ${o.reconnectMs} ms: ${(err as Error).message}`);
        await sleep(50);
      }
    }
  };
  const first = await Promise.all(Array.from({ length: conns }, (_, i) => connect(ports[i % ports.length]!)));
  const live = new Set<StrictResp>(first);
  const loops = first.map(async (c0, i) => {
    let c = c0;
    let n = 0;
    try {
      while (!stopping && ops < maxOps && Date.now() < deadline) {
        const ks = [0, 1, 2, 3].map(() => `${prefix}:${(i * 7 + n++ * 5) % keys}`);
        const got: Array<RespReply | undefined> = [undefined, undefined, undefined, undefined];
        const ps = c.send(ks.map((k) => ['INCR', k])).map((p, j) => p.then((r) => (got[j] = r)));
        await within(Promise.race([Promise.all(ps), c.closed]), 20_000, `client ${i}`);
        ks.forEach((k, j) => {
          const r = got[j];
          if (r === undefined) {
            unacked++;
            unackedBy.set(k, (unackedBy.get(k) ?? 0) + 1);
          } else if (typeof r !== 'number') {
            failures.push(`client ${i}: INCR replied ${JSON.stringify(r)}`);
          } else {
            let a = values.get(k);
            if (a === undefined) values.set(k, (a = []));
            a.push(r);
            ops++;
          }
        });
        if (c.failure === undefined) continue;
        if (o.reconnectMs === undefined) break; // strict: reported at stop()
        live.delete(c);
        c.close();
        c = await connect(ports[i % ports.length]!);
        live.add(c);
        reconnects++;
      }
    } catch (err) {
      failures.push(`client ${i}: ${(err as Error).message}`);
    }
  });
  return {
    get ops() {
      return ops;
    },
    get reconnects() {
      return reconnects;
    },
    async stop() {
      stopping = true;
      await Promise.all(loops);
      for (const [i, c] of [...live].entries()) if (c.failure !== undefined) failures.push(`client ${i}: ${c.failure}`);
      const mismatches: string[] = [];
      const check = await connect(ports[0]!);
      for (const [k, a] of values) {
        const got = Number(await within(check.call('GET', k), 20_000, 'GET'));
        const maybe = unackedBy.get(k) ?? 0;
        if (got < a.length || got > a.length + maybe) mismatches.push(`${k}: value ${got}, ${a.length} INCR replies${maybe > 0 ? ` and ${maybe} without a reply` : ''}`);
        // Distinct values in 1..got: with nothing unacknowledged (got = n), exactly 1..n each once.
        if (new Set(a).size !== a.length || a.some((v) => v < 1 || v > got)) mismatches.push(`${k}: reply values are not distinct values in 1..${got}`);
      }
      if (check.failure !== undefined) failures.push(`checker: ${check.failure}`);
      for (const c of live) c.close();
      check.close();
      return { ops, unacked, reconnects, counters: values.size, failures, mismatches };
    },
  };
}

/**
 * A pipeline of `n` INCRs of one fresh key, written in 10 pieces, with `midway()` called after the
 * fifth (a kill -9). All `n` replies must arrive, in order: 1..n.
 */
export async function pipelineAcross(port: number, n: number, midway: () => void): Promise<{ ok: boolean; replies: number; detail: string }> {
  const c = await StrictResp.connect(port);
  const key = `pipe:${Date.now()}:${Math.random()}`;
  const replies: Array<Promise<RespReply>> = [];
  const piece = Math.ceil(n / 10);
  for (let k = 0; k < n; k += piece) {
    replies.push(...c.send(Array.from({ length: Math.min(piece, n - k) }, () => ['INCR', key])));
    if (k / piece === 4) midway();
  }
  const got = await within(Promise.all(replies), 60_000, 'the pipeline');
  const bad = got.findIndex((v, i) => v !== i + 1);
  const final = Number(await within(c.call('GET', key), 20_000, 'GET'));
  const failure = c.failure;
  c.close();
  const ok = bad < 0 && final === n && failure === undefined;
  return { ok, replies: got.length, detail: ok ? 'in order, exactly once' : `first bad reply at ${bad}: ${JSON.stringify(got[bad])}; final ${final}; failure ${failure ?? 'none'}` };
}

export interface BenchmarkRound {
  code: number | null;
  /** Lines other than results, progress and the warning below: errors (must be none). */
  errors: string[];
  /** "Could not fetch server CONFIG" (a guest without CONFIG GET). */
  warnings: string[];
  results: string[];
}

/**
 * One unmodified `redis-benchmark` run (`-c clients -n requests -t set,get,incr`) against `port`,
 * killed by PID after `timeoutMs`. Its output lines other than results and progress are errors.
 */
export async function redisBenchmark(port: number, clients: number, requests: number, timeoutMs: number): Promise<BenchmarkRound> {
  const p = spawnProcess('redis-benchmark', ['-h', '127.0.0.1', '-p', String(port), '-c', String(clients), '-n', String(requests), '-t', 'set,get,incr', '-r', '100000', '-q'], { name: 'redis-benchmark' });
  const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
  const st = await p.exited;
  clearTimeout(timer);
  const lines = `${p.stdout.text()}\n${p.stderr.text()}`.split(/[\r\n]+/).map((l) => l.trim()).filter((l) => l !== '' && !/rps=/.test(l));
  // A guest without CONFIG GET (the C and Rust servers) makes redis-benchmark warn that it could not read
  // the server's config: a warning about the guest, not an error of a request.
  const warning = (l: string): boolean => /^WARNING: Could not fetch server CONFIG$/.test(l);
  return { code: st.code, results: lines.filter((l) => /requests per second/.test(l)), errors: lines.filter((l) => !/requests per second/.test(l) && !warning(l)), warnings: lines.filter(warning) };
}

/**
 * `ftvm dashboard`: a live page of one VM, served on loopback.
 *
 * The server polls, every `pollMs`, the arbiter (the VM's record {epoch, owner} and its standby pool)
 * and each node's control endpoint (`/status`, `/timeline`, through `controlRequest`, the one client of
 * the control endpoint), folds the answers into one state object and pushes it to every open page as a
 * server-sent event. The page (page.ts) draws it with uPlot, served from this package's dependencies
 * (no CDN). The server keeps a bounded history of lag and log bandwidth, and every timeline event it
 * has seen (a node killed -9 takes its own events with it; the dashboard does not forget them).
 *
 * Which nodes: the control addresses given with `--nodes`, and those the nodes published at the
 * arbiter (see docs/ARCHITECTURE.md, "Finding a VM's nodes").
 */
import http from 'node:http';
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type { Arbiter, ArbiterRecord, MemberRecord, StandbyRecord } from '../arbiter/arbiter.js';
import { controlRequest, type ControlAuth } from '../service/control.js';
import type { TimelineEvent } from '../service/metrics.js';
import type { Logger } from '../util/log.js';
import { PAGE_HTML } from './page.js';

export interface DashboardOptions {
  arbiter: Arbiter;
  /** For display: the arbiter's URL. */
  arbiterUrl: string;
  vm: string;
  /** Control addresses (host:port) of nodes to watch besides those announced at the arbiter. */
  nodes: string[];
  host: string;
  port: number;
  /** Poll the arbiter and the nodes this often. */
  pollMs: number;
  log: Logger;
  /** The VM's secret: the nodes' control endpoints answer signed requests only. */
  controlAuth: ControlAuth;
}

/** One node as the dashboard last saw it. */
export interface NodeView {
  control: string;
  /** How the dashboard knows it: given with --nodes, or announced at the arbiter (with its node id). */
  source: 'flag' | 'arbiter';
  nodeId?: string;
  ok: boolean;
  error?: string;
  /** The node's /status, when reachable. */
  status?: Record<string, unknown>;
}

export interface DashboardState {
  atMs: number;
  vm: string;
  arbiter: { url: string; ok: boolean; error?: string; record: ArbiterRecord | null; standbys: StandbyRecord[]; members: MemberRecord[] | 'unsupported' };
  nodes: NodeView[];
  /** The control address of the live primary, if one is reachable. */
  primary: string | null;
  protected: boolean;
  lagMs: number | null;
  logBytesPerSec: number | null;
  outputsHeld: number | null;
  /** Time series for the charts: [seconds since the epoch, lag ms, log bytes/s], oldest first. */
  samples: Array<[number, number | null, number | null]>;
  /** Every failover and re-replication event seen on any node, oldest first. */
  timeline: Array<TimelineEvent & { node: string }>;
}

/** Chart history: points kept (at the default 500 ms poll, five minutes). */
export const SAMPLES_MAX = 600;
/** Timeline events kept across all nodes. */
export const EVENTS_MAX = 512;
/** A node announced at the arbiter stays on the page this long after its announcement ran out (a node killed -9 is shown unreachable). */
export const FORGET_MEMBER_MS = 120_000;
/** Nodes watched at most. */
export const NODES_MAX = 64;
/** Pages served at once; more are refused (bounded memory). */
export const SSE_CLIENTS_MAX = 32;

export function isProtectedStatus(s: Record<string, unknown> | undefined): boolean {
  return !!s && s.role === 'primary' && s.alone === false && s.backup === 'connected' && s.standby === null;
}

export class DashboardServer {
  private server: http.Server | undefined;
  private readonly clients = new Set<http.ServerResponse>();
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private readonly samples: DashboardState['samples'] = [];
  /** Events by node and id (a node's ids restart when it restarts: the key has its first-seen time). */
  private readonly events = new Map<string, TimelineEvent & { node: string }>();
  private state: DashboardState;
  private assets: Map<string, { type: string; body: Buffer }> | undefined;
  /** Nodes learnt from the arbiter: control address → node id and when it was last listed. */
  private readonly announced = new Map<string, { nodeId: string; lastListedMs: number }>();

  constructor(private readonly o: DashboardOptions) {
    this.state = {
      atMs: Date.now(),
      vm: o.vm,
      arbiter: { url: o.arbiterUrl, ok: false, error: 'not asked yet', record: null, standbys: [], members: [] },
      nodes: o.nodes.map((control) => ({ control, source: 'flag' as const, ok: false, error: 'not asked yet' })),
      primary: null,
      protected: false,
      lagMs: null,
      logBytesPerSec: null,
      outputsHeld: null,
      samples: this.samples,
      timeline: [],
    };
  }

  get address(): { host: string; port: number } | undefined {
    const a = this.server?.address();
    return a && typeof a === 'object' ? { host: a.address, port: a.port } : undefined;
  }

  get current(): DashboardState {
    return this.state;
  }

  async start(): Promise<void> {
    this.assets = await loadAssets();
    const server = http.createServer((req, res) => this.serve(req, res));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.o.port, this.o.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    void this.loop();
  }

  private serve(req: http.IncomingMessage, res: http.ServerResponse): void {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    if (req.method !== 'GET') {
      res.writeHead(405, { 'content-type': 'text/plain' }).end('GET only\n');
      return;
    }
    if (path === '/') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' }).end(PAGE_HTML);
      return;
    }
    if (path === '/state') {
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' }).end(JSON.stringify(this.state));
      return;
    }
    if (path === '/events') {
      if (this.clients.size >= SSE_CLIENTS_MAX) {
        res.writeHead(503, { 'content-type': 'text/plain' }).end(`at most ${SSE_CLIENTS_MAX} pages at once\n`);
        return;
      }
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive' });
      res.write(`retry: 1000\n\n`);
      res.write(`data: ${JSON.stringify(this.state)}\n\n`);
      this.clients.add(res);
      req.on('close', () => this.clients.delete(res));
      return;
    }
    const asset = this.assets?.get(path);
    if (asset) {
      res.writeHead(200, { 'content-type': asset.type, 'cache-control': 'max-age=3600' }).end(asset.body);
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
  }

  private async loop(): Promise<void> {
    while (!this.stopped) {
      const t0 = performance.now();
      try {
        await this.poll();
      } catch (err) {
        this.o.log.error({ err: (err as Error).message }, 'dashboard: poll failed');
      }
      if (this.stopped) return;
      await new Promise<void>((r) => {
        this.timer = setTimeout(r, Math.max(0, this.o.pollMs - (performance.now() - t0)));
      });
    }
  }

  /** One round: ask the arbiter and every node (each call bounded by the poll interval or 1 s). */
  async poll(): Promise<void> {
    const o = this.o;
    const deadlineMs = Math.max(250, Math.min(1000, o.pollMs * 2));
    const arbiterP = Promise.all([
      o.arbiter.read(o.vm, { deadlineMs }),
      o.arbiter.listStandbys(o.vm, { deadlineMs }),
      // An arbiter that predates members refuses the call as a bad request: it is not down.
      o.arbiter.listMembers(o.vm, { deadlineMs }).catch((err: { code?: string }) => {
        if (err.code === 'FTVM_ERR_ARBITER_BAD_REQUEST') return 'unsupported' as const;
        throw err;
      }),
    ]);
    const arb = await Promise.allSettled([arbiterP]).then((r) => r[0]!);
    const now0 = Date.now();
    if (arb.status === 'fulfilled' && arb.value[2] !== 'unsupported') {
      for (const m of arb.value[2]) this.announced.set(m.control, { nodeId: m.nodeId, lastListedMs: now0 });
    }
    for (const [control, a] of this.announced) if (now0 - a.lastListedMs > FORGET_MEMBER_MS) this.announced.delete(control);
    const targets: Array<{ control: string; source: 'flag' | 'arbiter'; nodeId?: string }> = o.nodes.map((control) => ({ control, source: 'flag' as const }));
    for (const [control, a] of this.announced) if (!o.nodes.includes(control) && targets.length < NODES_MAX) targets.push({ control, source: 'arbiter', nodeId: a.nodeId });
    const nodesP = targets.map(async ({ control, source, nodeId }): Promise<{ view: NodeView; events: TimelineEvent[] }> => {
      const id = { control, source, ...(nodeId !== undefined ? { nodeId } : {}) };
      try {
        const [status, timeline] = await Promise.all([
          controlRequest(control, o.controlAuth, 'GET', '/status', deadlineMs) as Promise<Record<string, unknown>>,
          controlRequest(control, o.controlAuth, 'GET', '/timeline', deadlineMs) as Promise<{ events?: TimelineEvent[] }>,
        ]);
        return { view: { ...id, ok: true, status }, events: Array.isArray(timeline.events) ? timeline.events : [] };
      } catch (err) {
        return { view: { ...id, ok: false, error: (err as Error).message }, events: [] };
      }
    });
    const nodes = await Promise.allSettled(nodesP);
    const prev = this.state.arbiter;
    const arbiter: DashboardState['arbiter'] =
      arb.status === 'fulfilled'
        ? { url: o.arbiterUrl, ok: true, record: arb.value[0], standbys: arb.value[1], members: arb.value[2] }
        : { url: o.arbiterUrl, ok: false, error: (arb.reason as Error | undefined)?.message ?? 'no answer', record: prev.record, standbys: prev.standbys, members: prev.members };
    if (arbiter.ok !== prev.ok) o.log.info({ ok: arbiter.ok, error: arbiter.error }, arbiter.ok ? 'dashboard: the arbiter answers' : 'dashboard: the arbiter is unreachable');
    const views: NodeView[] = [];
    for (const n of nodes) {
      if (n.status !== 'fulfilled') continue;
      const r = n.value as { view: NodeView; events: TimelineEvent[] };
      views.push(r.view);
      this.keepEvents(r.view, r.events);
    }
    // The live primary: the reachable primary with the highest epoch (a fenced one halts at once).
    const primaries = views.filter((v) => v.ok && v.status?.role === 'primary').sort((a, b) => Number(b.status?.epoch ?? 0) - Number(a.status?.epoch ?? 0));
    const p = primaries[0];
    const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);
    const lagMs = p ? num(p.status?.lagMs) : null;
    const bw = p ? num(p.status?.logBytesPerSec) : null;
    const now = Date.now();
    this.samples.push([now / 1000, lagMs, bw]);
    if (this.samples.length > SAMPLES_MAX) this.samples.splice(0, this.samples.length - SAMPLES_MAX);
    this.state = {
      atMs: now,
      vm: o.vm,
      arbiter,
      nodes: views,
      primary: p?.control ?? null,
      protected: isProtectedStatus(p?.status),
      lagMs,
      logBytesPerSec: bw,
      outputsHeld: p ? num(p.status?.outputsHeld) : null,
      samples: this.samples,
      timeline: [...this.events.values()].sort((a, b) => a.atMs - b.atMs || a.id - b.id),
    };
    const msg = `data: ${JSON.stringify(this.state)}\n\n`;
    for (const c of this.clients) c.write(msg);
  }

  private keepEvents(view: NodeView, events: TimelineEvent[]): void {
    const pid = typeof view.status?.pid === 'number' ? `/${view.status.pid}` : '';
    for (const e of events) {
      if (typeof e?.id !== 'number' || typeof e.atMs !== 'number' || typeof e.kind !== 'string') continue;
      // A node's ids restart with its process: the event's own time tells two lives apart.
      const key = `${view.control}${pid}#${e.id}@${e.atMs}`;
      if (!this.events.has(key)) this.events.set(key, { ...e, node: view.control });
    }
    while (this.events.size > EVENTS_MAX) {
      const first = this.events.keys().next();
      if (first.done) break;
      this.events.delete(first.value);
    }
  }

  async close(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    for (const c of this.clients) c.end();
    this.clients.clear();
    const server = this.server;
    if (server) {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
  }
}

/** uPlot's script and style, read once from the installed package (a dependency of ftvm; no CDN). */
async function loadAssets(): Promise<Map<string, { type: string; body: Buffer }>> {
  const require = createRequire(import.meta.url);
  const dir = join(dirname(require.resolve('uplot/package.json')), 'dist');
  return new Map([
    ['/assets/uPlot.iife.min.js', { type: 'text/javascript; charset=utf-8', body: await readFile(join(dir, 'uPlot.iife.min.js')) }],
    ['/assets/uPlot.min.css', { type: 'text/css; charset=utf-8', body: await readFile(join(dir, 'uPlot.min.css')) }],
  ]);
}

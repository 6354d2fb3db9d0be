/**
 * The child process behind {@link FaultProxyHost} (src/testing/fault-proxy-host.ts): runs
 * {@link FaultProxy} instances on its own event loop and takes commands over the Node IPC channel.
 *
 * Why a process of its own: a harness that runs its load clients, its checker and its fault proxies on
 * one event loop stalls the proxies whenever the clients or the garbage collector hold that loop (the
 * long Jepsen runs saw gaps of 120–900 ms), and a stalled proxy looks to the pair like a silent
 * channel: a false failover the harness caused, not the system under test.
 *
 * Requests: `{ id, op, ... }`; replies: `{ id, ok: true, result }` or `{ id, ok: false, code, message }`.
 * The process exits when its parent disconnects (the parent died or closed the host).
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { FaultProxy, FaultProxyError, type DirectionArg } from './fault-proxy.js';

type Request =
  | { id: number; op: 'start'; targetPort: number; listenPort?: number }
  | { id: number; op: 'cut' | 'heal' | 'close'; proxy: number }
  | { id: number; op: 'blackhole' | 'hold' | 'release'; proxy: number; dir: DirectionArg }
  | { id: number; op: 'delay'; proxy: number; dir: DirectionArg; ms: number }
  | { id: number; op: 'loop-delay' };

const MAX_PROXIES = 256;
const proxies = new Map<number, FaultProxy>();
let nextProxy = 1;
const loopDelay = monitorEventLoopDelay({ resolution: 10 });
loopDelay.enable();

function get(id: number): FaultProxy {
  const p = proxies.get(id);
  if (!p) throw new FaultProxyError('FTVM_ERR_BAD_ARGUMENT', `no fault proxy ${id}`);
  return p;
}

async function handle(m: Request): Promise<unknown> {
  switch (m.op) {
    case 'start': {
      if (proxies.size >= MAX_PROXIES) throw new FaultProxyError('FTVM_ERR_BAD_ARGUMENT', `at most ${MAX_PROXIES} fault proxies per host`);
      const p = await FaultProxy.start({ targetPort: m.targetPort, ...(m.listenPort !== undefined ? { listenPort: m.listenPort } : {}) });
      const id = nextProxy++;
      proxies.set(id, p);
      return { proxy: id, port: p.port };
    }
    case 'cut':
      get(m.proxy).cut();
      return null;
    case 'heal':
      await get(m.proxy).heal();
      return null;
    case 'close':
      await get(m.proxy).close();
      proxies.delete(m.proxy);
      return null;
    case 'blackhole':
      get(m.proxy).blackhole(m.dir);
      return null;
    case 'hold':
      get(m.proxy).hold(m.dir);
      return null;
    case 'release':
      get(m.proxy).release(m.dir);
      return null;
    case 'delay':
      get(m.proxy).delay(m.dir, m.ms);
      return null;
    case 'loop-delay':
      return { p99Ms: loopDelay.percentile(99) / 1e6, maxMs: loopDelay.max / 1e6 };
  }
}

process.on('message', (raw: unknown) => {
  const m = raw as Request;
  handle(m).then(
    (result) => process.send?.({ id: m.id, ok: true, result }),
    (err: unknown) => {
      const e = err as { code?: unknown; message?: unknown };
      process.send?.({ id: m.id, ok: false, code: typeof e.code === 'string' ? e.code : 'FTVM_ERR_INTERNAL', message: String(e.message ?? err) });
    },
  );
});
process.on('disconnect', () => process.exit(0));
process.stdout.write('fault-proxy host ready\n');

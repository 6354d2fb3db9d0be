/**
 * A bounded closed-loop RESP load for tests: `clients` connections SET unique keys on whichever port
 * answers, until `maxOps` operations in all, `maxMs` elapsed, or stop(). Errors reconnect (a failover
 * in the middle is expected); nothing is retried blindly.
 */
import { RespClient } from '../client/resp.js';

export interface Load {
  /** Acknowledged operations so far. */
  readonly ok: () => number;
  stop(): Promise<void>;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function startLoad(ports: () => number[], o: { clients: number; maxOps: number; maxMs: number; valueBytes?: number }): Load {
  let ok = 0;
  let issued = 0;
  let stopping = false;
  const until = Date.now() + o.maxMs;
  const value = 'v'.repeat(o.valueBytes ?? 64);
  const run = async (w: number): Promise<void> => {
    let client: RespClient | undefined;
    let next = w;
    while (!stopping && issued < o.maxOps && Date.now() < until) {
      try {
        if (!client) {
          const ps = ports();
          client = await RespClient.connect({ port: ps[next++ % ps.length]!, connectTimeoutMs: 300, callTimeoutMs: 3000 });
        }
        issued++;
        if ((await client.call('SET', `load:${w}:${issued}`, value)) === 'OK') ok++;
      } catch {
        client?.close();
        client = undefined;
        await sleep(20);
      }
    }
    client?.close();
  };
  const all = Array.from({ length: o.clients }, (_, w) => run(w));
  return {
    ok: () => ok,
    async stop() {
      stopping = true;
      await Promise.all(all);
    },
  };
}

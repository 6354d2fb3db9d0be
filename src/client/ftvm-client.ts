/**
 * The proxy protocol in the TypeScript client (docs/PROXY.md), with no proxy hop: an application opens
 * virtual connections of the VM directly to its replicas' `--proxy-listen` ports. Each connection
 * survives failover exactly as one through `ftvm proxy` does — the client re-attaches it to the new
 * primary with its offsets — so a call in flight at a kill -9 of the primary is answered once, after a
 * pause, instead of failing or being run twice. Calls wait out a failover: give them a call timeout
 * longer than a failover takes (default 30 s).
 *
 *   const vm = await FtvmClient.open({ replicas: ['127.0.0.1:7401', '127.0.0.1:7402'], secret, vmName: 'kv1' });
 *   const c = vm.resp();               // a RespClient over a virtual connection
 *   await c.call('INCR', 'hits');
 *   vm.close();
 */
import { FtvmProxy, type ProxyAddr } from '../proxy/proxy.js';
import { Keyring } from '../security/secrets.js';
import { silentLogger, type Logger } from '../util/log.js';
import { RespClient, type RespClientOptions } from './resp.js';

export interface FtvmClientOptions {
  /** Every replica's (and standby slot's) `--proxy-listen` address, `host:port` or {host, port}. */
  replicas: ReadonlyArray<string | ProxyAddr>;
  /** The VM's secret (or a keyring during a rotation). */
  secret: Uint8Array | Keyring;
  vmName?: string;
  log?: Logger;
  /** A replica silent this long is left for the others (default 1500 ms). */
  sessionTimeoutMs?: number;
  /** Per connection: unacknowledged input past which the connection stops reading (default 4 MiB). */
  inputMaxBytes?: number;
  /** How long `open` waits for a serving primary (default 30 s). */
  openTimeoutMs?: number;
}

function addr(a: string | ProxyAddr): ProxyAddr {
  if (typeof a !== 'string') return a;
  const i = a.lastIndexOf(':');
  const port = Number(a.slice(i + 1));
  if (i <= 0 || !Number.isInteger(port) || port <= 0 || port > 65535) throw new Error(`bad replica address ${a}`);
  return { host: a.slice(0, i), port };
}

export class FtvmClient {
  private constructor(private readonly proxy: FtvmProxy) {}

  static async open(o: FtvmClientOptions): Promise<FtvmClient> {
    const proxy = new FtvmProxy({
      vmName: o.vmName ?? 'vm',
      keys: Keyring.of(o.secret),
      replicas: o.replicas.map(addr),
      log: o.log ?? silentLogger,
      ...(o.sessionTimeoutMs !== undefined ? { sessionTimeoutMs: o.sessionTimeoutMs } : {}),
      ...(o.inputMaxBytes !== undefined ? { inputMaxBytes: o.inputMaxBytes } : {}),
    });
    await proxy.start();
    const timeoutMs = o.openTimeoutMs ?? 30_000;
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        proxy.whenSession(),
        new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`no serving primary among ${o.replicas.length} replicas within ${timeoutMs} ms`)), timeoutMs))),
      ]);
    } catch (err) {
      await proxy.close();
      throw err;
    } finally {
      clearTimeout(timer);
    }
    return new FtvmClient(proxy);
  }

  /** A new virtual connection of the VM, as a byte stream. */
  stream(): ReturnType<FtvmProxy['connectStream']> {
    return this.proxy.connectStream();
  }

  /** A RESP client over a new virtual connection (default call timeout 30 s: it waits out a failover). */
  resp(options: Omit<RespClientOptions, 'host' | 'port' | 'connectTimeoutMs'> = {}): RespClient {
    return RespClient.over(this.proxy.connectStream(), `ftvm:${this.proxy.id.slice(0, 8)}`, { callTimeoutMs: 30_000, ...options });
  }

  /** Sessions opened so far (1 + re-attachments after failovers or broken links). */
  get sessions(): number {
    return this.proxy.sessions;
  }

  async close(): Promise<void> {
    await this.proxy.close();
  }
}

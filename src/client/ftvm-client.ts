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
import { replicaSourceFrom } from '../proxy/discovery.js';
import { FtvmProxy, type ProxyAddr } from '../proxy/proxy.js';
import { FtvmError } from '../util/errors.js';
import { Keyring } from '../security/secrets.js';
import { silentLogger, type Logger } from '../util/log.js';
import { RespClient, type RespClientOptions } from './resp.js';

export interface FtvmClientOptions {
  /** Every replica's (and standby slot's) `--proxy-listen` address, `host:port` or {host, port}; or `arbiter`. */
  replicas?: ReadonlyArray<string | ProxyAddr>;
  /** The VM's arbiter URL (ftvm://host:port or etcd://…): the client finds the primary's proxy port there, as `ftvm proxy --arbiter` does. */
  arbiter?: string;
  /** The secret (or a keyring during a rotation). */
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

export class FtvmClient {
  private constructor(
    private readonly proxy: FtvmProxy,
    private readonly release: () => Promise<void>,
  ) {}

  static async open(o: FtvmClientOptions): Promise<FtvmClient> {
    const keys = Keyring.of(o.secret);
    const log = o.log ?? silentLogger;
    const found = replicaSourceFrom({ vmName: o.vmName ?? 'vm', replicas: o.replicas, arbiter: o.arbiter }, keys, log);
    const proxy = new FtvmProxy({
      vmName: o.vmName ?? 'vm',
      keys,
      replicas: found.source,
      log,
      ...(o.sessionTimeoutMs !== undefined ? { sessionTimeoutMs: o.sessionTimeoutMs } : {}),
      ...(o.inputMaxBytes !== undefined ? { inputMaxBytes: o.inputMaxBytes } : {}),
    });
    await proxy.start();
    const timeoutMs = o.openTimeoutMs ?? 30_000;
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        proxy.whenSession(),
        new Promise((_, reject) => (timer = setTimeout(() => reject(new FtvmError('FTVM_ERR_TIMEOUT', `no serving primary found through ${found.describe} within ${timeoutMs} ms`)), timeoutMs))),
      ]);
    } catch (err) {
      await proxy.close();
      await found.close();
      throw err;
    } finally {
      clearTimeout(timer);
    }
    return new FtvmClient(proxy, found.close);
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
    await this.release();
  }
}

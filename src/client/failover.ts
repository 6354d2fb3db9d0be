/**
 * A client-side helper for fault-tolerant VMs: try each replica's service address until one
 * acknowledges. After a failover the old primary is gone (or halted) and the former backup serves on
 * its own address; a call whose outcome is unknown is simply retried (SET is idempotent).
 */
import { RespClient, type RespValue } from './resp.js';

export class NoReplicaAnswered extends Error {
  readonly code = 'FTVM_ERR_CLIENT_NO_REPLICA';
}

/** Sends `args` to the first replica that answers `expect`; returns the port that did. */
export async function callOnAnyReplica(
  ports: readonly number[],
  args: string[],
  opts: { deadlineMs: number; expect?: (v: RespValue) => boolean; host?: string },
): Promise<number> {
  const ok = opts.expect ?? ((v: RespValue) => v === 'OK');
  const until = Date.now() + opts.deadlineMs;
  for (;;) {
    for (const port of ports) {
      let c: RespClient | undefined;
      try {
        c = await RespClient.connect({ host: opts.host ?? '127.0.0.1', port, connectTimeoutMs: 300, callTimeoutMs: 2000 });
        if (ok(await c.call(...args))) return port;
      } catch {
        // no answer, or an unknown outcome: try the next replica
      } finally {
        c?.close();
      }
    }
    if (Date.now() > until) throw new NoReplicaAnswered(`no replica acknowledged ${args[0]} within ${opts.deadlineMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Where `ftvm proxy` looks for the serving primary (docs/PROXY.md, "Finding the primary"): a fixed list
 * (`--replicas`) or the VM's arbiter (`--arbiter`). At the arbiter, the record's owner is the node that
 * is live; every node run with `--arbiter`, `--control` and `--proxy-listen` announces its proxy port in
 * its member entry. The candidates are the owner's proxy port first, then the other nodes' (a record
 * about to change at a failover still names the dead primary: its backup is next). The replicas' own
 * answers decide as before: only the serving primary completes the handshake.
 */
import type { Arbiter } from '../arbiter/arbiter.js';
import { openArbiter } from '../arbiter/index.js';
import type { Keyring } from '../security/secrets.js';
import type { Logger } from '../util/log.js';
import { splitHostPort } from '../service/control.js';
import { FtvmError } from '../util/errors.js';
import type { ProxyAddr } from './proxy.js';

/** Parses `host:port` (a name, IPv4, or a bracketed IPv6 address). */
export function parseProxyAddr(what: string, s: string): ProxyAddr {
  try {
    const [host, port] = splitHostPort(s.trim());
    return { host, port: Number(port) };
  } catch (err) {
    throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `${what}: ${(err as Error).message}`);
  }
}

/** The candidates to try, in order, for one round of looking for the serving primary. */
export type ReplicaSource = () => Promise<ProxyAddr[]>;

export function fixedReplicas(list: readonly ProxyAddr[]): ReplicaSource {
  if (list.length === 0) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'the proxy needs at least one replica address');
  const copy = [...list];
  return () => Promise.resolve(copy);
}

/**
 * The VM's announced proxy ports, the record owner's first. An arbiter that does not answer (or has
 * no such entries yet) yields the last list it gave, so a proxy keeps trying the replicas it knew.
 */
export function arbiterReplicas(arbiter: Arbiter, vm: string, deadlineMs: number, onError: (err: Error) => void): ReplicaSource {
  let last: ProxyAddr[] = [];
  return async () => {
    try {
      const [record, members] = await Promise.all([arbiter.read(vm, { deadlineMs }), arbiter.listMembers(vm, { deadlineMs })]);
      const withProxy = members.filter((m) => m.proxy !== undefined);
      withProxy.sort((a, b) => Number(b.nodeId === record?.owner) - Number(a.nodeId === record?.owner) || (a.nodeId < b.nodeId ? -1 : a.nodeId > b.nodeId ? 1 : 0));
      const seen = new Set<string>();
      const out: ProxyAddr[] = [];
      for (const m of withProxy) {
        if (seen.has(m.proxy!)) continue;
        seen.add(m.proxy!);
        out.push(parseProxyAddr(`the proxy address of node ${m.nodeId}`, m.proxy!));
      }
      if (out.length === 0) onError(new FtvmError('FTVM_ERR_PROXY_NO_REPLICA', `no node of VM ${vm} announces a proxy port at the arbiter (nodes announce one with --arbiter, --control and --proxy-listen)`));
      else last = out;
      return last;
    } catch (err) {
      onError(err as Error);
      return last;
    }
  };
}

/** Deadline of each arbiter read while looking for the primary. */
export const DISCOVERY_ARBITER_DEADLINE_MS = 2000;

/**
 * The replica source from a proxy's (or client's) options: exactly one of `replicas` (a list of
 * `host:port`) and `arbiter` (an arbiter URL, as `ftvm run --arbiter` takes it; its secret is the VM's).
 * `close` releases the arbiter client.
 */
export function replicaSourceFrom(
  o: { replicas?: ReadonlyArray<string | ProxyAddr> | undefined; arbiter?: string | undefined; insecureArbiter?: boolean | undefined; vmName: string },
  keys: Keyring,
  log: Logger,
): { source: ProxyAddr[] | ReplicaSource; describe: string; close: () => Promise<void> } {
  if ((o.replicas === undefined) === (o.arbiter === undefined)) {
    throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'give exactly one of --replicas <host:port,...> (the replicas\' --proxy-listen addresses) and --arbiter <url> (the VM\'s arbiter: ftvm://host:port or etcd://host:port,...)');
  }
  if (o.replicas !== undefined) {
    const list = o.replicas.map((r) => (typeof r === 'string' ? parseProxyAddr('--replicas', r) : r));
    if (list.length === 0) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', '--replicas needs at least one address');
    return { source: list, describe: `${list.length} replicas`, close: () => Promise.resolve() };
  }
  const url = o.arbiter!;
  const arbiter = openArbiter(url, keys, { log, ...(o.insecureArbiter === true ? { insecure: true } : {}) });
  let warnedMs = 0;
  const source = arbiterReplicas(arbiter, o.vmName, DISCOVERY_ARBITER_DEADLINE_MS, (err) => {
    if (Date.now() - warnedMs < 5000) return; // at most one line per 5 s while it lasts
    warnedMs = Date.now();
    log.warn({ code: (err as FtvmError).code, err: err.message }, 'cannot learn the replicas from the arbiter; trying those known');
  });
  return { source, describe: `the arbiter ${url}`, close: () => arbiter.close() };
}

/**
 * Arbiter URLs and the factory:
 *
 *   ftvm://host:port              the embedded arbiter server (`ftvm arbiter`), authenticated with the
 *                                 shared secret
 *   etcd://host:port[,host:port…] an etcd cluster (client URLs of its members, plain http)
 *
 * Hosts are names, IPv4 addresses or bracketed IPv6 addresses ([::1]:2379); the port is required.
 */
import type { Keyring } from '../security/secrets.js';
import { FtvmError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import type { Arbiter, ArbiterRecord, CallOptions, ClaimResult, MemberRecord, StandbyRecord } from './arbiter.js';
import { EmbeddedArbiterClient } from './embedded.js';
import type { EtcdArbiter, EtcdArbiterOptions } from './etcd.js';

export type { Arbiter, ArbiterRecord, CallOptions, ClaimResult } from './arbiter.js';
export { EmbeddedArbiterClient, EmbeddedArbiterServer, type EmbeddedArbiterServerOptions } from './embedded.js';
export type { EtcdArbiter, EtcdArbiterOptions } from './etcd.js';

export interface HostPort {
  host: string;
  port: number;
}

export type ArbiterSpec =
  | { kind: 'embedded'; host: string; port: number }
  | {
      kind: 'etcd';
      members: HostPort[];
      /** Client URLs as etcd3 takes them: `http://host:port`. */
      endpoints: string[];
    };

const HOSTNAME = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
const IPV6 = /^[0-9A-Fa-f:.]{2,45}$/;

function badUrl(url: string, why: string): FtvmError {
  return new FtvmError(
    'FTVM_ERR_BAD_ARGUMENT',
    `bad arbiter URL ${JSON.stringify(url)}: ${why} (expected ftvm://host:port for the embedded arbiter, or etcd://host:port[,host:port...] for etcd)`,
  );
}

function parseHostPort(url: string, s: string): HostPort {
  let host: string;
  let portText: string;
  const v6 = /^\[([^\]]*)\]:(.*)$/.exec(s);
  if (v6) {
    host = v6[1] ?? '';
    portText = v6[2] ?? '';
    if (!IPV6.test(host) || !host.includes(':')) throw badUrl(url, `${JSON.stringify(s)} is not a bracketed IPv6 address with a port`);
  } else {
    const i = s.lastIndexOf(':');
    if (i < 0) throw badUrl(url, `${JSON.stringify(s)} has no port`);
    host = s.slice(0, i);
    portText = s.slice(i + 1);
    if (host.includes(':')) throw badUrl(url, `${JSON.stringify(s)}: put an IPv6 address in brackets, e.g. [::1]:2379`);
    if (!HOSTNAME.test(host)) throw badUrl(url, `${JSON.stringify(host)} is not a host name or IPv4 address`);
  }
  if (!/^[0-9]{1,5}$/.test(portText)) throw badUrl(url, `port ${JSON.stringify(portText)} in ${JSON.stringify(s)} is not a number`);
  const port = Number(portText);
  if (port < 1 || port > 65535) throw badUrl(url, `port ${port} in ${JSON.stringify(s)} is out of range 1–65535`);
  return { host, port };
}

export function parseArbiterUrl(url: string): ArbiterSpec {
  if (typeof url !== 'string' || url.trim() === '') throw badUrl(String(url), 'empty');
  const m = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#]*)\/?$/.exec(url.trim());
  if (!m) {
    if (/^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/?#]*[/?#]./.test(url.trim())) throw badUrl(url, 'paths, queries and fragments are not supported');
    throw badUrl(url, 'not of the form scheme://host:port');
  }
  const scheme = (m[1] ?? '').toLowerCase();
  const authority = m[2] ?? '';
  if (authority === '') throw badUrl(url, 'no host:port');
  if (authority.includes('@')) throw badUrl(url, 'user names and passwords are not supported in the URL');
  if (scheme === 'ftvm') {
    if (authority.includes(',')) throw badUrl(url, 'the embedded arbiter is one server: give one host:port');
    const hp = parseHostPort(url, authority);
    return { kind: 'embedded', host: hp.host, port: hp.port };
  }
  if (scheme === 'etcd') {
    const parts = authority.split(',');
    if (parts.some((p) => p === '')) throw badUrl(url, 'empty member in the list');
    const members = parts.map((p) => parseHostPort(url, p));
    const seen = new Set<string>();
    for (const h of members) {
      const k = `${h.host.toLowerCase()}:${h.port}`;
      if (seen.has(k)) throw badUrl(url, `member ${k} is listed twice`);
      seen.add(k);
    }
    return { kind: 'etcd', members, endpoints: members.map((h) => `http://${h.host.includes(':') ? `[${h.host}]` : h.host}:${h.port}`) };
  }
  if (scheme === 'http' || scheme === 'https') throw badUrl(url, `scheme ${scheme}:// is ambiguous; for etcd write etcd://${authority}`);
  throw badUrl(url, `unknown scheme ${JSON.stringify(scheme)}`);
}

/**
 * Opens the arbiter a URL names. `secret` authenticates the embedded arbiter (≥ 16 bytes; the pair's
 * shared secret); etcd ignores it.
 */
export function openArbiter(url: string, secret: Uint8Array | Keyring, opts: { log?: Logger; insecure?: boolean } = {}): Arbiter {
  const spec = parseArbiterUrl(url);
  if (spec.kind === 'etcd') return new LazyEtcdArbiter({ endpoints: spec.endpoints, ...(opts.log ? { log: opts.log } : {}) });
  return new EmbeddedArbiterClient({ host: spec.host, port: spec.port, secret, ...(opts.insecure ? { insecure: true } : {}), ...(opts.log ? { log: opts.log } : {}) });
}

/**
 * The etcd arbiter, loaded on first use: `etcd3` (with gRPC and protobuf) is ~6 MB of heap and ~20 MB
 * of resident memory, which a replica that talks to the embedded arbiter never needs. Every byte a
 * replica's process holds is torn down by its kernel before a crashed primary's sockets close, so it
 * delays the backup's evidence of the crash (docs/PERFORMANCE.md, failover third pass).
 */
export class LazyEtcdArbiter implements Arbiter {
  private backend: Promise<EtcdArbiter> | undefined;
  private closed = false;
  constructor(private readonly opts: EtcdArbiterOptions) {}

  /** The loaded etcd client (loads it). */
  load(): Promise<EtcdArbiter> {
    if (this.closed) return Promise.reject(new FtvmError('FTVM_ERR_ARBITER_UNAVAILABLE', 'the etcd arbiter client was closed'));
    this.backend ??= import('./etcd.js').then((m) => new m.EtcdArbiter(this.opts));
    return this.backend;
  }
  async init(vm: string, record: ArbiterRecord, o: CallOptions): Promise<ArbiterRecord> {
    return (await this.load()).init(vm, record, o);
  }
  async claim(vm: string, epoch: number, claimant: string, o: CallOptions): Promise<ClaimResult> {
    return (await this.load()).claim(vm, epoch, claimant, o);
  }
  async advance(vm: string, epoch: number, owner: string, o: CallOptions): Promise<boolean> {
    return (await this.load()).advance(vm, epoch, owner, o);
  }
  async read(vm: string, o: CallOptions): Promise<ArbiterRecord | null> {
    return (await this.load()).read(vm, o);
  }
  async registerStandby(vm: string, s: { hostId: string; channel: string; free: boolean }, ttlMs: number, o: CallOptions): Promise<StandbyRecord> {
    return (await this.load()).registerStandby(vm, s, ttlMs, o);
  }
  async listStandbys(vm: string, o: CallOptions): Promise<StandbyRecord[]> {
    return (await this.load()).listStandbys(vm, o);
  }
  async recruitStandby(vm: string, hostId: string, by: { owner: string; epoch: number }, o: CallOptions): Promise<StandbyRecord | null> {
    return (await this.load()).recruitStandby(vm, hostId, by, o);
  }
  async removeStandby(vm: string, hostId: string, o: CallOptions): Promise<void> {
    return (await this.load()).removeStandby(vm, hostId, o);
  }
  async publishMember(vm: string, m: MemberRecord, ttlMs: number, o: CallOptions): Promise<void> {
    return (await this.load()).publishMember(vm, m, ttlMs, o);
  }
  async listMembers(vm: string, o: CallOptions): Promise<MemberRecord[]> {
    return (await this.load()).listMembers(vm, o);
  }
  async close(): Promise<void> {
    this.closed = true;
    const b = this.backend;
    if (b !== undefined) await (await b).close();
  }
}

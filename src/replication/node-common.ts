/**
 * What the process drivers (PrimaryNode, BackupNode, StandbyNode) share: timings, options, the
 * PrimaryCore settings, and one arbiter claim mapped to a core input.
 */
import type { Arbiter } from '../arbiter/arbiter.js';
import type { VmConfig } from '../log/recording.js';
import { DEFAULT_CHANNEL_SECURITY, describeSecurity, type ChannelSecurity } from '../channel/transport.js';
import type { LoadedGuest } from '../machine/guest.js';
import type { Keyring } from '../security/secrets.js';
import type { ControlTls } from '../service/control.js';
import type { Logger } from '../util/log.js';
import type { NodeMetrics } from '../service/metrics.js';
import type { PrimaryConfig } from './primary.js';
import type { NodeClock, NodeEnv, ServicePort } from './env.js';
import type { InputSink } from '../service/clients.js';

export interface Timings {
  /** Silence on the channel for this long → the replica asks the arbiter (failure detection). */
  failTimeoutMs: number;
  /** Deadline of each arbiter call; retry interval after an unreachable arbiter. */
  arbiterDeadlineMs: number;
  heartbeatIntervalMs: number;
  grantIntervalMs: number;
  lagMaxMs: number;
  tickMs: number;
  stateHashIntervalMs: number;
}

export const DEFAULT_TIMINGS: Timings = {
  failTimeoutMs: 150,
  arbiterDeadlineMs: 1000,
  heartbeatIntervalMs: 20,
  grantIntervalMs: 2,
  lagMaxMs: 20,
  tickMs: 5,
  stateHashIntervalMs: 0,
};

export interface Addr {
  host: string;
  port: number;
}

/** Re-replication: a primary running alone recruits standbys of its VM from the arbiter's pool. */
export interface RecruitOptions {
  /** This node's host; standbys registered with the same host id are never recruited. */
  hostId: string;
  /** Look at the pool this often while running alone. */
  intervalMs: number;
}

export interface NodeOptions {
  /** Timers, channel transport, vCPU and client service (src/env/real.ts; the simulator's src/sim/env.ts). */
  env: NodeEnv;
  guest: LoadedGuest;
  config: VmConfig;
  epoch: number;
  /** The VM's shared secret(s): channel frames and TLS-PSK, control requests. */
  secret: Keyring;
  /** Default: TLS-PSK. 'plain' only with `--insecure-channel`. */
  channelSecurity?: ChannelSecurity;
  /** HTTPS for the control endpoint (required for a non-loopback --control). */
  controlTls?: ControlTls;
  timings: Timings;
  log: Logger;
  control?: Addr;
  sliceUnits?: number;
  /** The arbiter deciding who is live after a failure; without one, a pair never fails over. */
  arbiter?: Arbiter;
  /** This node's identity at the arbiter. */
  nodeId: string;
  /** This machine (`--host-id`), shown in status. */
  hostId?: string;
  /** Recruit standbys when running alone (needs `arbiter`). */
  recruit?: RecruitOptions;
  /**
   * Fail over at once on evidence that the peer's process is gone (a refused connection to its
   * liveness port or channel address), without waiting out `failTimeoutMs` (default true;
   * `--no-fast-failover` turns it off). Silence still needs the full timeout.
   */
  fastFailover?: boolean;
  /**
   * `host:port` of this process's liveness port (opened once per process by the CLI, src/channel/
   * liveness.ts), advertised in HELLO so the peer can tell a dead process from a silent one.
   */
  liveness?: string;
  /** Called once when the node halts (lost a claim, fenced, diverged beyond repair). */
  onHalt?: (reason: string) => void;
  /** A backup (or a standby once cloned) keeps a continuous, rotated recording of the VM's log here. */
  record?: { dir: string; maxBytes: number };
  /**
   * Metrics and timeline (served at /metrics and /timeline). Absent: the node makes its own. A node
   * that changes role hands its own on, so counters survive the change.
   */
  metrics?: NodeMetrics;
  /** Serve proxies (`ftvm proxy`, docs/PROXY.md) here while this node is the serving primary. */
  proxyListen?: Addr;
  /** How long a proxied connection waits for its proxy to re-attach before it is closed. */
  proxyReattachTimeoutMs?: number;
  /** This replica's own copy of the VM's virtual disk (`--disk`). */
  diskImagePath?: string;
  /**
   * TEST ONLY: a deliberately broken driver, to show the simulator catches one. 'release-unheld': the
   * primary hands outputs to clients as they leave the vCPU, before the backup's ACK; 'stale-drained':
   * the backup reports 'drained' on the vCPU's flag alone, which can be stale.
   */
  testOnlyDriverBreak?: 'release-unheld' | 'stale-drained';
  /**
   * TEST ONLY: the cores' own test-only breaks (primary.ts, backup.ts `testOnlyBreak`; 'release-at-capture':
   * src/checkpoint/core.ts, checkpoint mode), for the simulator.
   */
  testOnlyCoreBreak?: 'release-before-ack' | 'skip-drain' | 'release-at-capture';
}

/** The PrimaryCore settings that follow from the node's timings (the simulator uses them too). */
export function primaryCoreConfig(t: Omit<Timings, 'stateHashIntervalMs' | 'tickMs'>, epoch: number, alone: boolean): PrimaryConfig {
  return {
    epoch,
    alone,
    heartbeatIntervalMs: t.heartbeatIntervalMs,
    grantIntervalMs: t.grantIntervalMs,
    lagMaxMs: t.lagMaxMs,
    failTimeoutMs: t.failTimeoutMs,
    claimRetryMs: t.arbiterDeadlineMs,
    unackedMaxBytes: 32 * 1024 * 1024,
    heldMaxOutputs: 100_000,
  };
}

/** One arbiter claim, mapped to a core input (an unreachable arbiter is an input too). */
export async function claimAt(
  o: NodeOptions,
  epoch: number,
  log: Logger,
): Promise<{ t: 'claim-result'; won: boolean; epoch: number; owner: string } | { t: 'claim-failed'; reason: string }> {
  if (!o.arbiter) {
    log.error('silence on the channel, but no arbiter is configured: waiting, releasing nothing');
    return { t: 'claim-failed', reason: 'no arbiter configured' };
  }
  try {
    const r = await o.arbiter.claim(o.config.name, epoch, o.nodeId, { deadlineMs: o.timings.arbiterDeadlineMs });
    log.warn({ epoch, won: r.won, record: r.record }, r.won ? 'won the arbiter claim' : 'lost the arbiter claim');
    return { t: 'claim-result', won: r.won, epoch: r.record.epoch, owner: r.record.owner };
  } catch (err) {
    log.error({ err: (err as Error).message }, 'the arbiter is unreachable: waiting, releasing nothing');
    return { t: 'claim-failed', reason: (err as Error).message };
  }
}

/** The control endpoint's options for a node. */
export function controlOptions(o: NodeOptions): { keyring: Keyring; log: Logger; tls?: ControlTls } {
  return { keyring: o.secret, log: o.log.child({ part: 'control' }), ...(o.controlTls ? { tls: o.controlTls } : {}) };
}

/** What `ftvm status` says about the node's security. */
export function securityStatus(o: NodeOptions): Record<string, unknown> {
  const k = o.secret.describe();
  return { channelSecurity: describeSecurity(o.channelSecurity ?? DEFAULT_CHANNEL_SECURITY), secretKeyId: k.current, acceptedKeyIds: k.accepted, controlTls: o.controlTls !== undefined };
}

/** Binding the client service: attempts this far apart while the address is in use (10 s in all). */
const SERVICE_BIND_ATTEMPTS = 40;
const SERVICE_BIND_RETRY_MS = 250;

/**
 * Starts the client service. A backup that just went live may find its service address briefly held
 * (a connection in TIME_WAIT, another process's outgoing port): EADDRINUSE is retried for a while rather
 * than giving up serving (and losing the VM); other errors, or `stopped()`, end it at once.
 */
export async function startServiceRetrying(service: ServicePort, sink: InputSink, o: { clock: NodeClock; log: Logger; address: string; stopped: () => boolean }): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await service.start(sink);
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || attempt >= SERVICE_BIND_ATTEMPTS || o.stopped()) throw err;
      if (attempt === 1) o.log.warn({ service: o.address }, 'the service address is in use; retrying');
      await o.clock.sleep(SERVICE_BIND_RETRY_MS);
    }
  }
}

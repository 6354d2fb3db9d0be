/**
 * What a process driver (PrimaryNode, BackupNode, StandbyNode, the channel endpoints) takes from its
 * environment. The drivers never touch timers, clocks, sockets or the vCPU worker directly: they go
 * through these small interfaces. The CLI wires the real ones (src/env/real.ts: node timers,
 * performance.now, TCP/TLS, the worker-thread Vcpu, the TCP client service); the simulator wires
 * virtual ones (src/sim/env.ts), so it runs the drivers that ship (TigerBeetle's VOPR, FoundationDB).
 * test/driver-env.test.ts holds the driver files to it.
 */
import type { EventEmitter } from 'node:events';
import type { ProbeResult } from '../channel/liveness.js';
import type { ChannelTransport } from '../channel/transport.js';
import type { VmConfig } from '../log/recording.js';
import type { LoadedGuest } from '../machine/guest.js';
import type { Snapshot } from '../machine/machine.js';
import type { BatchEvent, DoneEvent, TakenSnapshot } from '../machine/vcpu.js';
import type { EnvSpec, ProxiedAtGoLive, WireOutput } from '../machine/vcpu-protocol.js';
import type { InputSink, ProxyPortOptions } from '../service/clients.js';
import type { Logger } from '../util/log.js';

export type { BatchEvent, DoneEvent, TakenSnapshot };

/** A pending timer. */
export interface Timer {
  cancel(): void;
}

/** Time as a driver sees it. */
export interface NodeClock {
  /** Monotonic milliseconds (performance.now in a real process, virtual time in the simulator). */
  now(): number;
  /** Runs fn once after ms (setTimeout). `background`: it does not keep a real process alive (unref). */
  after(ms: number, fn: () => void, background?: boolean): Timer;
  /** Runs fn every ms (setInterval; a paused process gets one catch-up call, not one per period). */
  every(ms: number, fn: () => void, background?: boolean): Timer;
  /** Resolves after ms. */
  sleep(ms: number): Promise<void>;
  /** Resolves after pending I/O had its turn (setImmediate). */
  yieldIo(): Promise<void>;
  /** Random bytes (nonces). */
  randomBytes(n: number): Uint8Array;
}

/** The vCPU as a driver uses it (src/machine/vcpu.ts Vcpu; src/sim/vcpu.ts SimVcpu). */
export interface VcpuPort extends EventEmitter {
  readonly done: Promise<DoneEvent>;
  readonly count: number;
  readonly entries: number;
  readonly idle: boolean;
  readonly backlog_bytes: number;
  readonly memoryBytes: number;
  readonly diskBytes: number;
  /** Replay: the replica waits for log with everything it holds consumed. May be stale: a batch just fed is not yet seen. */
  readonly drained: boolean;
  input(kind: 'open' | 'data' | 'close', conn: number, data?: Uint8Array): void;
  feedLog(batch: Uint8Array): void;
  grant(n: number): void;
  endOfLog(): void;
  goLive(): void;
  setThrottle(on: boolean): void;
  takeSnapshot(onTaken?: (t: TakenSnapshot) => void): Promise<TakenSnapshot>;
  requestStateHash(): void;
  stop(): void;
  terminate(): Promise<void>;
  /** TEST ONLY (the simulator's model; the core's skip-drain break): forget the held log. */
  testOnlyAbandonHeld?(): void;
}

export interface VcpuSpec {
  mode: 'record' | 'replay';
  guest: LoadedGuest;
  config: VmConfig;
  env?: EnvSpec;
  sliceUnits?: number;
  stateHashIntervalMs?: number;
  snapshot?: Snapshot;
  /** Record from `snapshot` taken on another host (checkpoint mode going live): re-arm pending timers on this host's clock. */
  rearmTimers?: boolean;
  diskImagePath?: string;
}

/** The client service of a live primary (src/service/clients.ts ClientService). */
export interface ServicePort {
  set firstConnectionId(id: number);
  readonly address: { address: string; port: number } | undefined;
  readonly openConnections: number;
  /** Connections paused because too much of their input waits unconsumed (per-connection backpressure). */
  readonly pausedConnections: number;
  /** The guest consumed input: (conn, bytes) pairs, as the vCPU reports them with its batches. */
  consumed(pairs: readonly number[]): void;
  /**
   * Optional: bind the address now and hold the connections that arrive until `start` (a backup that
   * won the claim, while its vCPU finishes the takeover). A failure is left to `start`, which binds again.
   */
  listen?(): Promise<void>;
  /** Rejects with an error whose `code` is 'EADDRINUSE' while the address is held. */
  start(sink: InputSink): Promise<void>;
  deliver(outputs: readonly WireOutput[]): void;
  close(): Promise<void>;
  /** Proxied connections (docs/PROXY.md): a replica gone live adopts those its log knows. */
  adoptProxied?(list: readonly ProxiedAtGoLive[]): void;
  /** Client input logged and acknowledged by the backup: (conn, bytes) pairs. */
  inputLogged?(pairs: readonly number[]): void;
}

/** Everything a driver takes from outside. */
export interface NodeEnv {
  clock: NodeClock;
  transport: ChannelTransport;
  /**
   * One probe of a peer's liveness port (src/channel/liveness.ts): refused (the process is gone),
   * answered (it is alive), or no answer within the probe timeout (silent: stopped, host down, cut).
   */
  probeLiveness(addr: { host: string; port: number }): Promise<ProbeResult>;
  newVcpu(spec: VcpuSpec): VcpuPort;
  newService(opts: { host: string; port: number; log: Logger; proxy?: ProxyPortOptions }): ServicePort;
}

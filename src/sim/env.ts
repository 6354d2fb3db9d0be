/**
 * The simulated environment of one process (src/replication/env.ts NodeEnv): virtual time and timers
 * bound to the process (deferred while it is SIGSTOPped, dropped once it is dead), the simulated network
 * as its channel transport (net.ts), the model vCPU (vcpu.ts), a client service the world's clients
 * reach, and an arbiter client (src/arbiter/arbiter.ts Arbiter) whose calls go through the world's
 * model of latency, lost replies and late commits to the pure arbiter state (src/arbiter/state.ts).
 */
import type { Arbiter, ArbiterRecord, CallOptions, ClaimResult, MemberRecord, StandbyRecord } from '../arbiter/arbiter.js';
import type { ProbeResult } from '../channel/liveness.js';
import type { ChannelServer, ChannelSocket, ChannelTransport } from '../channel/transport.js';
import type { Snapshot } from '../machine/machine.js';
import type { WireOutput } from '../machine/vcpu-protocol.js';
import type { NodeClock, NodeEnv, ServicePort, Timer, VcpuSpec } from '../replication/env.js';
import { Keyring } from '../security/secrets.js';
import type { InputSink } from '../service/clients.js';
import { FtvmError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import type { ArbiterOp, ArbiterReply } from './arbiter.js';
import { encodeJson, type Op } from './guest.js';
import type { Prng } from './prng.js';
import { SimVcpu, type VcpuHost } from './vcpu.js';

/** What the environment needs from the world. */
export interface SimWorldApi {
  readonly rng: Prng;
  now(): number;
  /** Runs fn after delayMs on proc (deferred while it is paused, dropped once it is dead). */
  later(proc: SimProc, delayMs: number, fn: () => void, kind?: 'tick'): Timer;
  listen(proc: SimProc, port: number, onSocket: (s: ChannelSocket) => void): ChannelServer;
  connect(proc: SimProc, host: string, port: number): ChannelSocket;
  /** One arbiter call with its deadline; null: no answer within it. */
  arbiter(proc: SimProc, op: ArbiterOp, deadlineMs: number, cb: (r: ArbiterReply | null) => void): void;
  vcpuHost(proc: SimProc): VcpuHost;
  /**
   * A record vCPU is made from a snapshot (checkpoint mode: a backup going live from its last checkpoint):
   * `restoring` before the model restores it, `restored` after.
   */
  restoring?(proc: SimProc, from: Snapshot): void;
  restored?(proc: SimProc, vcpu: SimVcpu): void;
  released(proc: SimProc, outputs: readonly WireOutput[]): void;
  /** A service start attempt finds its address held (EADDRINUSE). */
  serviceAddressHeld(proc: SimProc): boolean;
  /** One liveness probe by proc (src/channel/liveness.ts): refused, answered or no answer, as a real host would. */
  probeLiveness(proc: SimProc, host: string, port: number, cb: (r: ProbeResult) => void): void;
}

/** What the environment records about its process. */
export interface SimProc {
  readonly id: string;
  readonly host: number;
  dead: boolean;
  vcpu: SimVcpu | undefined;
  service: SimService | undefined;
}

export class SimService implements ServicePort {
  open = false;
  private sink: InputSink | undefined;
  private closed = false;
  constructor(
    private readonly w: SimWorldApi,
    private readonly proc: SimProc,
    readonly host: string,
    readonly port: number,
  ) {}
  set firstConnectionId(_id: number) {
    // the world numbers client connections itself, never reusing one
  }
  get address(): { address: string; port: number } | undefined {
    return this.open ? { address: this.host, port: this.port } : undefined;
  }
  get openConnections(): number {
    return 0;
  }
  /** The model guest reads every request at once: no connection waits on unconsumed input. */
  get pausedConnections(): number {
    return 0;
  }
  consumed(_pairs: readonly number[]): void {
    // nothing is ever paused (see pausedConnections)
  }
  /** Bound by an early `listen` (a backup that won the claim): `start` then needs no bind of its own. */
  private bound = false;
  private listening: Promise<void> | undefined;
  /**
   * The early bind (ClientService.listen): it may find the address held, like `start`; the driver then
   * binds again at `start`. The world's clients reach only open services, so a connection held between
   * the two is not modelled: what runs here is the drivers' early path and its fallback.
   */
  listen(): Promise<void> {
    this.listening ??= this.bindAfter(() => undefined);
    return this.listening;
  }
  async start(sink: InputSink): Promise<void> {
    if (this.listening !== undefined) {
      const early = this.listening;
      this.listening = undefined;
      await early.catch(() => undefined);
    }
    return this.bindAfter(() => {
      this.sink = sink;
      this.open = true;
    });
  }
  /** A bind, 0.05 ms on: refused once closed, or while the address is held (unless already bound). */
  private bindAfter(then: () => void): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.w.later(this.proc, 0.05, () => {
        if (this.closed) return reject(new Error('the service was closed'));
        if (!this.bound && this.w.serviceAddressHeld(this.proc)) return reject(Object.assign(new Error(`listen EADDRINUSE: address already in use ${this.host}:${this.port}`), { code: 'EADDRINUSE' }));
        this.bound = true;
        then();
        resolve();
      });
    });
  }
  /** A client's request reaches the guest (a socket read on the service). */
  clientInput(conn: number, req: number, op: Op): void {
    if (!this.open) return;
    this.sink?.input('data', conn, encodeJson({ req, op }));
  }
  deliver(outputs: readonly WireOutput[]): void {
    if (!this.open) return;
    this.w.released(this.proc, outputs);
  }
  close(): Promise<void> {
    this.open = false;
    this.bound = false;
    this.closed = true;
    return Promise.resolve();
  }
}

class SimClock implements NodeClock {
  constructor(
    private readonly w: SimWorldApi,
    private readonly proc: SimProc,
  ) {}
  now(): number {
    return this.w.now();
  }
  after(ms: number, fn: () => void): Timer {
    return this.w.later(this.proc, ms, fn);
  }
  every(ms: number, fn: () => void): Timer {
    let cur: Timer | undefined;
    let cancelled = false;
    const arm = (): void => {
      cur = this.w.later(
        this.proc,
        ms,
        () => {
          if (cancelled) return;
          arm(); // setInterval: the next period is armed before the callback runs
          fn();
        },
        'tick',
      );
    };
    arm();
    return {
      cancel: () => {
        cancelled = true;
        cur?.cancel();
      },
    };
  }
  sleep(ms: number): Promise<void> {
    return new Promise<void>((r) => void this.w.later(this.proc, ms, r));
  }
  yieldIo(): Promise<void> {
    return new Promise<void>((r) => void this.w.later(this.proc, 0, r));
  }
  randomBytes(n: number): Uint8Array {
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i++) b[i] = this.w.rng.int(0, 255);
    return b;
  }
}

class SimTransport implements ChannelTransport {
  constructor(
    private readonly w: SimWorldApi,
    private readonly proc: SimProc,
  ) {}
  listen(_host: string, port: number, keyring: Keyring, _log: Logger, onSocket: (s: ChannelSocket, keys: Keyring) => void): Promise<ChannelServer> {
    return Promise.resolve(this.w.listen(this.proc, port, (s) => onSocket(s, new Keyring(keyring.current, [...keyring.accepted]))));
  }
  connect(keyring: Keyring, host: string, port: number): { socket: ChannelSocket; keys: Keyring } {
    return { socket: this.w.connect(this.proc, host, port), keys: new Keyring(keyring.current, [...keyring.accepted]) };
  }
}

function unavailable(): FtvmError {
  return new FtvmError('FTVM_ERR_ARBITER_UNAVAILABLE', 'the arbiter did not answer within the deadline');
}

/** The arbiter client a simulated process holds (the Arbiter interface, as etcd.ts and embedded.ts implement it). */
export class SimArbiter implements Arbiter {
  constructor(
    private readonly w: SimWorldApi,
    private readonly proc: SimProc,
  ) {}
  private call<T>(op: ArbiterOp, o: CallOptions, map: (r: ArbiterReply) => T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.w.arbiter(this.proc, op, o.deadlineMs, (r) => (r === null ? reject(unavailable()) : resolve(map(r))));
    });
  }
  init(_vm: string, _record: ArbiterRecord, _o: CallOptions): Promise<ArbiterRecord> {
    return Promise.reject(new Error('the simulated drivers never init (the world does)'));
  }
  claim(_vm: string, epoch: number, claimant: string, o: CallOptions): Promise<ClaimResult> {
    return this.call({ op: 'claim', epoch, claimant }, o, (r) => {
      if (r.op !== 'claim') throw new Error('bad reply');
      return { won: r.won, record: r.record };
    });
  }
  advance(_vm: string, epoch: number, owner: string, o: CallOptions): Promise<boolean> {
    return this.call({ op: 'advance', epoch, owner }, o, (r) => r.op === 'advance' && r.ok);
  }
  read(_vm: string, o: CallOptions): Promise<ArbiterRecord | null> {
    return this.call({ op: 'read' }, o, (r) => (r.op === 'read' ? r.record : null));
  }
  registerStandby(_vm: string, s: { hostId: string; channel: string; free: boolean }, ttlMs: number, o: CallOptions): Promise<StandbyRecord> {
    return this.call({ op: 'register', hostId: s.hostId, channel: s.channel, free: s.free, ttlMs }, o, (r) => {
      if (r.op !== 'register') throw new Error('bad reply');
      return r.standby;
    });
  }
  listStandbys(_vm: string, o: CallOptions): Promise<StandbyRecord[]> {
    return this.call({ op: 'list' }, o, (r) => (r.op === 'list' ? r.standbys : []));
  }
  recruitStandby(_vm: string, hostId: string, by: { owner: string; epoch: number }, o: CallOptions): Promise<StandbyRecord | null> {
    return this.call({ op: 'recruit', hostId, owner: by.owner, epoch: by.epoch }, o, (r) => (r.op === 'recruit' ? r.standby : null));
  }
  removeStandby(_vm: string, hostId: string, o: CallOptions): Promise<void> {
    return this.call({ op: 'remove', hostId }, o, () => undefined);
  }
  publishMember(_vm: string, _m: MemberRecord, _ttlMs: number, _o: CallOptions): Promise<void> {
    return Promise.resolve();
  }
  listMembers(_vm: string, _o: CallOptions): Promise<MemberRecord[]> {
    return Promise.resolve([]);
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

/** The environment of one simulated process. */
export function simNodeEnv(w: SimWorldApi, proc: SimProc): NodeEnv {
  return {
    clock: new SimClock(w, proc),
    transport: new SimTransport(w, proc),
    probeLiveness: (addr) => new Promise<ProbeResult>((resolve) => w.probeLiveness(proc, addr.host, addr.port, resolve)),
    newVcpu(spec: VcpuSpec) {
      const restore = spec.snapshot !== undefined && spec.mode === 'record';
      if (spec.snapshot !== undefined && restore) w.restoring?.(proc, spec.snapshot);
      const v = new SimVcpu(w.vcpuHost(proc), spec.mode, spec.snapshot);
      proc.vcpu = v;
      if (restore) w.restored?.(proc, v);
      return v;
    },
    newService(o) {
      const s = new SimService(w, proc, o.host, o.port);
      proc.service = s;
      return s;
    },
  };
}

/**
 * Process drivers: they own the I/O (sockets, the channel, timers, the vCPU worker) and feed the pure
 * replication cores, then carry out the actions the cores return.
 *
 * PrimaryNode: records the guest on a vCPU, serves clients, streams the log to the backup, releases
 * outputs under the output rule. BackupNode: replays the log on a vCPU, acknowledges, reports progress.
 */
import { ChannelDialer, ChannelListener } from '../channel/endpoints.js';
import type { ChannelConnection } from '../channel/connection.js';
import { ControlKind, FrameType, type Frame, type HelloFrame } from '../channel/frames.js';
import { moduleHash, type VmConfig } from '../log/recording.js';
import type { LoadedGuest } from '../machine/guest.js';
import { Vcpu, type BatchEvent } from '../machine/vcpu.js';
import { ClientService } from '../service/clients.js';
import { ControlServer } from '../service/control.js';
import { DeterminismViolation } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import type { Arbiter } from '../arbiter/arbiter.js';
import { FtvmError } from '../util/errors.js';
import { BackupCore, type BackupAction } from './backup.js';
import { PrimaryCore, type PrimaryAction, type PrimaryConfig } from './primary.js';

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

export interface NodeOptions {
  guest: LoadedGuest;
  config: VmConfig;
  epoch: number;
  secret: Uint8Array;
  timings: Timings;
  log: Logger;
  control?: Addr;
  sliceUnits?: number;
  /** The arbiter deciding who is live after a failure; without one, a pair never fails over. */
  arbiter?: Arbiter;
  /** This node's identity at the arbiter. */
  nodeId: string;
  /** Called once when the node halts (lost a claim, fenced, diverged beyond repair). */
  onHalt?: (reason: string) => void;
}

export interface PrimaryOptions extends NodeOptions {
  service: Addr;
  /** The backup's channel address; absent: FT off (no backup, outputs released at once). */
  peer?: Addr;
  unackedMaxBytes?: number;
  heldMaxOutputs?: number;
}

/** The PrimaryCore settings that follow from the node's timings. */
function primaryCoreConfig(t: Timings, epoch: number, alone: boolean): PrimaryConfig {
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

/** Bytes per second over a sliding second, for status. */
class Rate {
  private samples: Array<[number, number]> = [];
  add(nowMs: number, total: number): void {
    this.samples.push([nowMs, total]);
    while (this.samples.length > 2 && nowMs - this.samples[0]![0] > 1000) this.samples.shift();
  }
  perSecond(): number {
    const a = this.samples[0];
    const b = this.samples[this.samples.length - 1];
    if (!a || !b || b[0] === a[0]) return 0;
    return ((b[1] - a[1]) * 1000) / (b[0] - a[0]);
  }
}

export class PrimaryNode {
  readonly core: PrimaryCore;
  private vcpu: Vcpu | undefined;
  readonly service: ClientService;
  private dialer: ChannelDialer | undefined;
  private conn: ChannelConnection | undefined;
  private control: ControlServer | undefined;
  private ticker: NodeJS.Timeout | undefined;
  private readonly rate = new Rate();
  private lastVerified: { n: number; hash: string; ok: boolean } | null = null;
  private hashWaiters: Array<(h: { n: number; hash: string }) => void> = [];
  private readonly log: Logger;
  private diverged: string | null = null;

  constructor(private readonly opts: PrimaryOptions) {
    this.log = opts.log;
    this.core = new PrimaryCore({
      ...primaryCoreConfig(opts.timings, opts.epoch, opts.peer === undefined),
      unackedMaxBytes: opts.unackedMaxBytes ?? 32 * 1024 * 1024,
      heldMaxOutputs: opts.heldMaxOutputs ?? 100_000,
    });
    this.service = new ClientService({ host: opts.service.host, port: opts.service.port, log: opts.log.child({ part: 'service' }) });
  }

  async start(): Promise<void> {
    const o = this.opts;
    if (o.control) {
      this.control = new ControlServer(o.control.host, o.control.port, (m, p) => this.onControl(m, p));
      await this.control.start();
    }
    if (o.peer) {
      this.dialer = new ChannelDialer(o.peer.host, o.peer.port, {
        secret: o.secret,
        log: o.log.child({ part: 'channel' }),
        identity: { role: 'primary', vmName: o.config.name, moduleHash: moduleHash(o.guest.original), epoch: o.epoch, nextSeq: () => this.core.status().ackedSeq },
      });
      this.dialer.on('connection', (c: ChannelConnection, hello: HelloFrame) => this.onPeer(c, hello));
      const first = new Promise<void>((resolve) => this.dialer!.once('connection', () => resolve()));
      this.dialer.start();
      this.log.info({ peer: `${o.peer.host}:${o.peer.port}` }, 'waiting for the backup before starting the guest');
      await first;
    }
    // Heartbeats start now: the backup must not take the guest's start-up time for a failure.
    this.ticker = setInterval(() => this.tick(), o.timings.tickMs);
    this.startVcpu();
    const vcpu = this.vcpu!;
    await this.service.start({
      input: (k, c, d) => vcpu.input(k, c, d),
      get backlogBytes() {
        return vcpu.backlog_bytes;
      },
    });
    this.log.info({ service: this.service.address, alone: o.peer === undefined, epoch: o.epoch }, 'primary is serving');
  }

  private startVcpu(): void {
    const o = this.opts;
    const vcpu = new Vcpu({
      mode: 'record',
      guest: o.guest,
      config: o.config,
      env: { kind: 'live' },
      stateHashIntervalMs: o.timings.stateHashIntervalMs,
      ...(o.sliceUnits !== undefined ? { sliceUnits: o.sliceUnits } : {}),
    });
    this.vcpu = vcpu;
    vcpu.on('batch', (b: BatchEvent) => {
      this.exec(this.core.step({ t: 'tick', nowMs: performance.now() })); // lag samples carry the real time
      this.exec(this.core.step({ t: 'log', firstSeq: b.firstSeq, count: b.count, bytes: b.entries, instructionNumber: b.instructionNumber, outputs: b.outputs }));
    });
    vcpu.on('hash', (h: { n: number; hash: Uint8Array }) => {
      const hex = Buffer.from(h.hash).toString('hex');
      for (const w of this.hashWaiters.splice(0)) w({ n: h.n, hash: hex });
    });
    vcpu.on('vcpu-error', (err: Error) => this.log.error({ err: err.message }, 'the guest machine failed'));
    vcpu.done.then(
      (d) => this.log.info({ state: d.state, count: d.count, halt: d.halt }, 'the guest stopped'),
      () => undefined,
    );
  }

  private onPeer(c: ChannelConnection, hello: HelloFrame): void {
    this.conn?.close('replaced');
    this.conn = c;
    this.log.info({ backup: c.remote, nextSeq: hello.nextSeq }, 'backup connected');
    c.on('frame', (f: Frame) => this.exec(this.core.step({ t: 'frame', frame: f })));
    c.once('close', (reason: string) => {
      if (this.conn === c) {
        this.conn = undefined;
        this.log.warn({ reason }, 'backup disconnected');
        this.exec(this.core.step({ t: 'peer-closed' }));
      }
    });
    this.exec(this.core.step({ t: 'peer-open', backupNextSeq: hello.nextSeq }));
  }

  private tick(): void {
    if (this.switchingOver) return;
    const now = performance.now();
    this.rate.add(now, this.core.status().logBytesSent);
    this.exec(this.core.step({ t: 'tick', nowMs: now }));
  }

  private exec(actions: PrimaryAction[]): void {
    for (const a of actions) {
      switch (a.t) {
        case 'send':
          if (this.conn?.isOpen && !this.conn.send(a.frame)) this.conn.close('channel send buffer full');
          break;
        case 'release':
          this.service.deliver(a.outputs);
          break;
        case 'throttle':
          this.vcpu?.setThrottle(a.on);
          this.log.debug({ on: a.on, reason: a.reason }, 'execution-lag control');
          break;
        case 'drop-peer':
          this.log.warn({ reason: a.reason }, 'dropping the backup');
          this.conn?.close(a.reason);
          break;
        case 'backup-diverged':
          this.diverged = a.reason;
          this.log.error({ reason: a.reason }, 'the backup diverged; this primary goes on (redundancy is lost)');
          break;
        case 'hash-verified':
          this.lastVerified = { n: a.n, hash: Buffer.from(a.hash).toString('hex'), ok: a.ok };
          break;
        case 'claim':
          void claimAt(this.opts, a.epoch, this.log).then((r) => this.exec(this.core.step(r)));
          break;
        case 'went-alone':
          this.log.warn({ epoch: a.epoch, reason: a.reason }, 'the backup is gone: continuing alone');
          this.dialer?.close();
          this.conn?.close('running alone');
          break;
        case 'halt':
          this.haltNode(a.reason);
          break;
      }
    }
  }

  /**
   * Planned switchover: stop the guest at an idle point, wait until the backup acknowledged every entry
   * (so every held output has been released), then hand over: the backup consumes the log and goes
   * live at exactly this point. This primary never claims; it exits.
   */
  private async switchover(): Promise<unknown> {
    const conn = this.conn;
    if (!conn?.isOpen || !this.vcpu) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'no connected backup to switch over to');
    this.switchingOver = true;
    this.vcpu.stop();
    const done = await this.vcpu.done;
    const until = Date.now() + 10_000;
    while (this.core.status().ackedSeq < this.core.status().nextSeq) {
      if (Date.now() > until) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'the backup did not acknowledge the whole log within 10 s; switchover abandoned (this primary is stopped)');
      await new Promise((r) => setTimeout(r, 5));
    }
    conn.send({ type: FrameType.CONTROL, epoch: this.core.status().epoch, kind: ControlKind.SWITCHOVER, reason: 'ftvm switchover' });
    this.log.warn({ instructionNumber: done.count, entries: this.core.status().nextSeq }, 'switchover: the backup takes over from here');
    setTimeout(() => void this.stop().finally(() => this.opts.onHalt?.('stopped by ftvm switchover')), 100);
    return { switchedOver: true, instructionNumber: done.count, entries: this.core.status().nextSeq };
  }

  private switchingOver = false;
  private halting = false;
  private haltNode(reason: string): void {
    if (this.halting) return;
    this.halting = true;
    this.log.error({ reason }, 'primary halted: releasing nothing more');
    this.vcpu?.setThrottle(true);
    void this.stop().finally(() => this.opts.onHalt?.(reason));
  }

  status(): Record<string, unknown> {
    const s = this.core.status();
    return {
      role: s.halted ? 'halted' : 'primary',
      alone: s.alone,
      claiming: s.claiming,
      halted: s.halted,
      vm: this.opts.config.name,
      epoch: s.epoch,
      instructionNumber: Math.max(this.vcpu?.count ?? 0, s.instructionNumber),
      backup: s.peer ? 'connected' : this.opts.peer ? 'disconnected' : 'none (FT off)',
      backupInstructionNumber: s.backupInstructionNumber,
      lagMs: s.lagMs,
      logBytesPerSec: Math.round(this.rate.perSecond()),
      logBytesSent: s.logBytesSent,
      entries: s.nextSeq,
      ackedEntries: s.ackedSeq,
      outputsHeld: s.outputsHeld,
      throttled: s.throttled,
      clients: this.service.openConnections,
      lastVerifiedByBackup: this.lastVerified,
      backupDiverged: this.diverged,
    };
  }

  /** Logs a state hash at the guest's next idle point; resolves with it. */
  stateHash(timeoutMs = 10_000): Promise<{ n: number; hash: string }> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('no idle point within the timeout')), timeoutMs);
      this.hashWaiters.push((h) => {
        clearTimeout(t);
        resolve(h);
      });
      this.vcpu!.requestStateHash();
    });
  }

  private async onControl(method: string, path: string): Promise<unknown> {
    if (method === 'GET' && path === '/status') return this.status();
    if (method === 'POST' && path === '/state-hash') return this.stateHash();
    if (method === 'POST' && path === '/switchover') return this.switchover();
    if (method === 'POST' && path === '/stop') {
      // An intentional stop: tell the backup not to go live, then stop.
      if (this.conn?.isOpen) this.conn.send({ type: FrameType.CONTROL, epoch: this.core.status().epoch, kind: ControlKind.STOP, reason: 'ftvm stop' });
      setTimeout(() => void this.stop().finally(() => this.opts.onHalt?.('stopped by ftvm stop')), 50);
      return { stopping: true };
    }
    return undefined;
  }

  async stop(): Promise<void> {
    if (this.ticker) clearInterval(this.ticker);
    this.dialer?.close();
    await this.service.close();
    await this.control?.close();
    if (this.vcpu) {
      this.vcpu.stop();
      await Promise.race([this.vcpu.done.catch(() => undefined), new Promise((r) => setTimeout(r, 2000))]);
      await this.vcpu.terminate();
    }
  }
}

export interface BackupOptions extends NodeOptions {
  listen: Addr;
  /** Where to serve clients once this backup goes live. */
  service?: Addr;
}

/** One arbiter claim, mapped to a core input (an unreachable arbiter is an input too). */
async function claimAt(o: NodeOptions, epoch: number, log: Logger): Promise<
  { t: 'claim-result'; won: boolean; epoch: number; owner: string } | { t: 'claim-failed'; reason: string }
> {
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

export class BackupNode {
  readonly core: BackupCore;
  private readonly vcpu: Vcpu;
  private listener: ChannelListener | undefined;
  private conn: ChannelConnection | undefined;
  private control: ControlServer | undefined;
  private ticker: NodeJS.Timeout | undefined;
  private readonly log: Logger;

  constructor(private readonly opts: BackupOptions) {
    this.log = opts.log;
    this.core = new BackupCore({
      epoch: opts.epoch,
      heartbeatIntervalMs: opts.timings.heartbeatIntervalMs,
      failTimeoutMs: opts.timings.failTimeoutMs,
      claimRetryMs: opts.timings.arbiterDeadlineMs,
    });
    this.vcpu = new Vcpu({ mode: 'replay', guest: opts.guest, config: opts.config, ...(opts.sliceUnits !== undefined ? { sliceUnits: opts.sliceUnits } : {}) });
  }

  get address(): Addr | undefined {
    const a = this.listener?.address;
    return a ? { host: a.address, port: a.port } : undefined;
  }

  async start(): Promise<void> {
    const o = this.opts;
    this.vcpu.on('hash', (h: { n: number; hash: Uint8Array }) => this.exec(this.core.step({ t: 'replica-verified', n: h.n, hash: h.hash })));
    this.vcpu.on('vcpu-error', (err: Error) => {
      const reason = err instanceof DeterminismViolation ? err.message : `replica failed: ${err.message}`;
      this.exec(this.core.step({ t: 'replica-diverged', reason }));
    });
    this.listener = new ChannelListener(o.listen.host, o.listen.port, {
      secret: o.secret,
      log: o.log.child({ part: 'channel' }),
      identity: { role: 'backup', vmName: o.config.name, moduleHash: moduleHash(o.guest.original), epoch: o.epoch, nextSeq: () => this.core.expectedSeq },
    });
    this.listener.on('connection', (c: ChannelConnection) => this.onPeer(c));
    await this.listener.start();
    if (o.control) {
      this.control = new ControlServer(o.control.host, o.control.port, (m, p) => this.onControl(m, p));
      await this.control.start();
    }
    this.ticker = setInterval(() => this.tick(), o.timings.tickMs);
    this.log.info({ channel: this.address, epoch: o.epoch }, 'backup is waiting for the primary');
  }

  private onPeer(c: ChannelConnection): void {
    this.conn = c;
    this.log.info({ primary: c.remote }, 'primary connected');
    c.on('frame', (f: Frame) => {
      // Report the replica's freshest position with the ACK this frame triggers.
      this.exec(this.core.step({ t: 'replica-progress', instructionNumber: this.vcpu.count }));
      this.exec(this.core.step({ t: 'frame', frame: f }));
    });
    c.once('close', (reason: string) => {
      if (this.conn === c) {
        this.conn = undefined;
        this.log.warn({ reason }, 'primary disconnected');
        this.exec(this.core.step({ t: 'peer-closed' }));
      }
    });
    this.exec(this.core.step({ t: 'peer-open' }));
  }

  private tick(): void {
    if (this.live) {
      this.live.tick();
      return;
    }
    this.exec(this.core.step({ t: 'replica-progress', instructionNumber: this.vcpu.count }));
    this.exec(this.core.step({ t: 'tick', nowMs: performance.now() }));
    if (this.draining && this.vcpu.drained && this.vcpu.entries >= this.fedEntries) {
      this.draining = false;
      this.exec(this.core.step({ t: 'drained' }));
    }
  }

  private pendingAck: Frame | undefined;

  /** ACKs are cumulative: of several produced while handling one socket read, only the last is sent. */
  private sendAck(f: Frame): void {
    const first = this.pendingAck === undefined;
    this.pendingAck = f;
    if (!first) return;
    queueMicrotask(() => {
      const ack = this.pendingAck;
      this.pendingAck = undefined;
      if (ack && this.conn?.isOpen && !this.conn.send(ack)) this.conn.close('channel send buffer full');
    });
  }

  private exec(actions: BackupAction[]): void {
    for (const a of actions) {
      switch (a.t) {
        case 'send':
          if (a.frame.type === FrameType.ACK) this.sendAck(a.frame);
          else if (this.conn?.isOpen && !this.conn.send(a.frame)) this.conn.close('channel send buffer full');
          break;
        case 'feed':
          this.fedEntries += a.count;
          this.vcpu.feedLog(a.batch);
          break;
        case 'grant':
          this.vcpu.grant(a.instructionNumber);
          break;
        case 'drop-peer':
          this.log.warn({ reason: a.reason }, 'dropping the primary connection');
          this.conn?.close(a.reason);
          break;
        case 'halt':
          this.log.error({ reason: a.reason }, 'backup halted');
          this.vcpu.stop();
          void this.stop().finally(() => this.opts.onHalt?.(a.reason));
          break;
        case 'drain':
          this.log.warn({ reason: a.reason }, 'primary silent: consuming every held entry before claiming');
          this.draining = true;
          this.drainStartMs = performance.now();
          break;
        case 'claim':
          void claimAt(this.opts, a.epoch, this.log).then((r) => this.exec(this.core.step(r)));
          break;
        case 'go-live':
          this.goLive(a.epoch);
          break;
      }
    }
  }

  private fedEntries = 0;
  private draining = false;
  private drainStartMs = 0;
  private live: LiveServing | undefined;

  /** Won the claim: the replica becomes a recording primary (alone) and starts serving clients. */
  private goLive(epoch: number): void {
    const o = this.opts;
    if (!o.service) {
      this.log.error('won the claim but has no --service address to serve on: halting');
      this.vcpu.stop();
      return;
    }
    this.listener?.close().catch(() => undefined);
    this.conn?.close('this backup went live');
    const t0 = performance.now();
    const service = o.service;
    this.vcpu.once('live', (ev: { count: number; seq: number; maxConn: number }) => {
      const live = new LiveServing(this.vcpu, o, epoch, ev.seq, service, this.log);
      this.live = live;
      live.start(ev.maxConn + 1).then(
        () => this.log.warn({ epoch, instructionNumber: ev.count, entries: ev.seq, service: o.service, drainMs: Math.round(t0 - this.drainStartMs) }, 'went live: serving clients as the primary'),
        (err: Error) => this.log.error({ err: err.message }, 'went live but cannot serve'),
      );
    });
    this.vcpu.goLive();
  }

  status(): Record<string, unknown> {
    if (this.live) return { ...this.live.status(), formerly: 'backup' };
    const s = this.core.status();
    return {
      role: 'backup',
      phase: s.phase,
      vm: this.opts.config.name,
      epoch: s.epoch,
      instructionNumber: this.vcpu.count,
      grantedInstructionNumber: s.grantedInstructionNumber,
      primary: s.peer ? 'connected' : 'disconnected',
      entries: s.nextSeq,
      halted: s.halted,
      lastVerified: s.lastVerified,
    };
  }

  private async onControl(method: string, path: string): Promise<unknown> {
    if (method === 'GET' && path === '/status') return this.status();
    if (method === 'GET' && path === '/state-hash') return this.core.status().lastVerified;
    if (method === 'POST' && path === '/state-hash' && this.live) return this.live.stateHash();
    return undefined;
  }

  async stop(): Promise<void> {
    if (this.ticker) clearInterval(this.ticker);
    await this.live?.close();
    await this.listener?.close();
    await this.control?.close();
    this.vcpu.stop();
    this.vcpu.endOfLog();
    await Promise.race([this.vcpu.done.catch(() => undefined), new Promise((r) => setTimeout(r, 2000))]);
    await this.vcpu.terminate();
  }
}

/**
 * A replica that went live: its vCPU now records; with no backup yet, a PrimaryCore running alone
 * releases its outputs at once to the clients of a new ClientService.
 */
class LiveServing {
  private readonly core: PrimaryCore;
  private readonly service: ClientService;
  private hashWaiters: Array<(h: { n: number; hash: string }) => void> = [];

  constructor(
    private readonly vcpu: Vcpu,
    private readonly o: NodeOptions,
    private readonly epoch: number,
    firstSeq: number,
    service: Addr,
    log: Logger,
  ) {
    this.core = new PrimaryCore({ ...primaryCoreConfig(o.timings, epoch, true), firstSeq });
    this.service = new ClientService({ host: service.host, port: service.port, log: log.child({ part: 'service' }) });
    vcpu.on('batch', (b: BatchEvent) => {
      for (const a of this.core.step({ t: 'log', firstSeq: b.firstSeq, count: b.count, bytes: b.entries, instructionNumber: b.instructionNumber, outputs: b.outputs })) {
        if (a.t === 'release') this.service.deliver(a.outputs);
      }
    });
    vcpu.on('hash', (h: { n: number; hash: Uint8Array }) => {
      const hex = Buffer.from(h.hash).toString('hex');
      for (const w of this.hashWaiters.splice(0)) w({ n: h.n, hash: hex });
    });
  }

  async start(firstConn: number): Promise<void> {
    this.service.firstConnectionId = firstConn;
    const vcpu = this.vcpu;
    await this.service.start({
      input: (k, c, d) => vcpu.input(k, c, d),
      get backlogBytes() {
        return vcpu.backlog_bytes;
      },
    });
  }

  tick(): void {
    this.core.step({ t: 'tick', nowMs: performance.now() });
  }

  stateHash(timeoutMs = 10_000): Promise<{ n: number; hash: string }> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'no idle point within the timeout')), timeoutMs);
      this.hashWaiters.push((h) => {
        clearTimeout(t);
        resolve(h);
      });
      this.vcpu.requestStateHash();
    });
  }

  status(): Record<string, unknown> {
    const s = this.core.status();
    return {
      role: 'primary',
      vm: this.o.config.name,
      epoch: this.epoch,
      alone: true,
      instructionNumber: this.vcpu.count,
      backup: 'none (redundancy lost: this node went live)',
      entries: s.nextSeq,
      outputsHeld: s.outputsHeld,
      clients: this.service.openConnections,
    };
  }

  async close(): Promise<void> {
    await this.service.close();
  }
}

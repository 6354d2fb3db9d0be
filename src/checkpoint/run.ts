/**
 * `CheckpointNode`: one replica process in checkpoint mode (`ftvm run --mode checkpoint`, `ftvm standby
 * --mode checkpoint`), built from the same `NodeOptions` as the replay drivers (its environment — clock,
 * transport, vCPU, client service — and the arbiter are injected).
 *
 * - **primary**: runs the guest on a record vCPU behind the client service and checkpoints it to its
 *   backup (`CheckpointPrimary`). Alone (no `--peer`, or after its backup's failure won at the arbiter) it
 *   recruits a standby from the VM's pool at the arbiter, dials it, and the standby becomes its backup by
 *   receiving a base checkpoint (all of memory) and then deltas: re-replication is a checkpoint like any
 *   other, so there is no separate snapshot stream or arming step.
 * - **backup**: keeps the last complete checkpoint (`CheckpointBackup`); when it wins the arbiter's claim
 *   it restores it into a fresh record vCPU, closes for the guest the connections of the old primary's
 *   clients (they were on the dead host) and serves alone from there as a primary (which recruits).
 * - **standby**: waits in the pool (`PoolMembership`); the first primary to connect makes it its backup
 *   at the primary's epoch; it leaves the pool once it holds a complete checkpoint. A connection that
 *   closes before then returns it to the pool.
 *
 * The control endpoint (`--control`) serves /status (mode, epoch, checkpoint interval, measured epoch
 * length, checkpoint bytes/s), /metrics, /timeline, /state-hash and POST /stop.
 */
import { ChannelDialer, ChannelListener } from '../channel/endpoints.js';
import type { ChannelConnection, LocalIdentity } from '../channel/connection.js';
import { ControlKind, type HelloFrame } from '../channel/frames.js';
import type { StandbyRecord } from '../arbiter/arbiter.js';
import { moduleHash } from '../log/recording.js';
import { ConnState } from '../machine/devices.js';
import type { Snapshot } from '../machine/machine.js';
import type { ServicePort, Timer, VcpuPort } from '../replication/env.js';
import { controlOptions, securityStatus, type Addr, type NodeOptions } from '../replication/node-common.js';
import { PoolMembership, recruitFromPool } from '../replication/pool.js';
import { ControlServer, splitHostPort } from '../service/control.js';
import { CheckpointMetrics } from './metrics.js';
import { NodeMetrics, observabilityRoute } from '../service/metrics.js';
import { FtvmError } from '../util/errors.js';
import { bindLogContext } from '../util/log.js';
import { CheckpointBackup, type CheckpointBackupOutcome } from './backup-node.js';
import { CheckpointPrimary } from './primary-node.js';

export interface CheckpointNodeOptions extends NodeOptions {
  role: 'primary' | 'backup' | 'standby';
  /** `--checkpoint-interval-ms`: a checkpoint at least this often (and at once when outputs wait). */
  intervalMs: number;
  /** Primary: the backup's channel address (none: serve alone, and recruit if `recruit` is set). */
  peer?: Addr;
  /** Backup, standby: where to listen for the primary's channel. */
  listen?: Addr;
  /** Where clients connect (the primary's, and a backup's once live). */
  service: Addr;
  /** Standby: the channel address primaries dial, as registered in the pool (default: `listen`'s). */
  advertise?: Addr;
  /** Standby: lease of its pool entry (renewed every third of it). */
  leaseTtlMs?: number;
}

/** A recruited standby must answer the dial within this long, else the primary recruits another. */
const JOIN_CONNECT_MS = 3000;
/** After a failed join, or with no free standby, look at the pool again after this long. */
const RECRUIT_RETRY_MS = 500;
/** A standby that refused or did not answer is not recruited again for this long. */
const REFUSED_STANDBY_MS = 5000;

type Phase = 'primary' | 'backup' | 'standby' | 'halted';

interface Join {
  standby: string;
  channel: string;
  startedMs: number;
  connected: boolean;
}

export class CheckpointNode {
  private vcpu: VcpuPort | undefined;
  private service: ServicePort | undefined;
  private primary: CheckpointPrimary | undefined;
  private backup: CheckpointBackup | undefined;
  private dialer: ChannelDialer | undefined;
  private listener: ChannelListener | undefined;
  private control: ControlServer | undefined;
  private pool: PoolMembership | undefined;
  private stopped = false;
  private phase: Phase;
  private epoch: number;
  private haltReason: string | null = null;
  /** Primary: the standby being joined (recruited, dialed, not yet holding a base). */
  private join: Join | null = null;
  private joinTimer: Timer | undefined;
  private recruitTimer: Timer | undefined;
  private recruiting = false;
  private recruitNote = '';
  private readonly refusedUntil = new Map<string, number>();
  private rereplications = 0;
  readonly metrics: NodeMetrics;
  /** Checkpoint samples and totals, for the life of the process (a backup gone live counts on). */
  readonly checkpointMetrics: CheckpointMetrics;
  private readonly identity: LocalIdentity;

  constructor(private readonly opts: CheckpointNodeOptions) {
    if (opts.role !== 'primary' && opts.listen === undefined) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `a checkpoint ${opts.role} needs --channel <host:port>`);
    if (opts.role === 'standby' && (opts.arbiter === undefined || opts.hostId === undefined)) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'a standby needs --arbiter (its pool lives there) and a host id');
    this.phase = opts.role;
    this.epoch = opts.role === 'standby' ? 0 : opts.epoch;
    this.metrics = opts.metrics ?? new NodeMetrics(opts.config.name);
    this.checkpointMetrics = new CheckpointMetrics(this.metrics);
    // The HELLO's nextSeq carries, in checkpoint mode, the backup's last applied checkpoint (the primary's: 0).
    const self = this;
    this.identity = {
      role: opts.role,
      vmName: opts.config.name,
      moduleHash: moduleHash(opts.guest.original),
      get epoch() {
        return self.epoch;
      },
      mode: 'checkpoint',
      nextSeq: () => this.backup?.helloApplied() ?? 0,
    };
    this.metrics.setSource(() => this.gauges());
    bindLogContext(opts.log, () => ({ vm: opts.config.name, role: this.phase, epoch: this.epoch, mode: 'checkpoint' }));
  }

  async start(): Promise<void> {
    const o = this.opts;
    if (o.control) {
      this.control = new ControlServer(o.control.host, o.control.port, (m, p) => this.handleControl(m, p), { ...controlOptions(o), identity: { nodeId: o.nodeId, ...(o.hostId !== undefined ? { hostId: o.hostId } : {}) } });
      await this.control.start();
    }
    if (o.role === 'primary') await this.startPrimary(o.epoch, o.peer === undefined);
    else await this.startListening();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.recruitTimer?.cancel();
    this.joinTimer?.cancel();
    this.dialer?.close();
    this.backup?.close();
    await this.listener?.close();
    await this.primary?.close();
    await this.pool?.stop();
    if (this.vcpu !== undefined) {
      this.vcpu.stop();
      await this.vcpu.terminate();
    }
    await this.control?.close();
  }

  // ---------------------------------------------------------------- primary

  private async startPrimary(epoch: number, alone: boolean, from?: Snapshot): Promise<void> {
    const o = this.opts;
    const log = o.log;
    this.phase = 'primary';
    this.epoch = epoch;
    this.identity.role = 'primary';
    const vcpu = o.env.newVcpu({
      mode: 'record',
      guest: o.guest,
      config: o.config,
      env: { kind: 'live' },
      ...(o.sliceUnits !== undefined ? { sliceUnits: o.sliceUnits } : {}),
      ...(from !== undefined ? { snapshot: from, rearmTimers: true } : {}),
    });
    this.vcpu = vcpu;
    vcpu.on('vcpu-error', (err: Error) => log.error({ err: err.message }, 'the guest machine failed'));
    const service = o.env.newService({ host: o.service.host, port: o.service.port, log: log.child({ part: 'service' }) });
    this.service = service;
    if (from !== undefined) service.firstConnectionId = from.devices.maxConn + 1;
    const primary = new CheckpointPrimary({
      vmName: o.config.name,
      nodeId: o.nodeId,
      epoch,
      intervalMs: o.intervalMs,
      failTimeoutMs: o.timings.failTimeoutMs,
      arbiterDeadlineMs: o.timings.arbiterDeadlineMs,
      tickMs: o.timings.tickMs,
      clock: o.env.clock,
      arbiter: o.arbiter,
      vcpu,
      service,
      serviceAddress: `${o.service.host}:${o.service.port}`,
      log,
      alone,
      metrics: this.metrics,
      checkpointMetrics: this.checkpointMetrics,
      onAlone: (e) => this.onAlone(e),
      onJoined: (e) => this.onJoined(e),
      ...(o.testOnlyCoreBreak === 'release-at-capture' ? { testOnlyBreak: 'release-at-capture' as const } : {}),
    });
    this.primary = primary;
    void primary.done.then((reason) => this.halt(reason));
    if (!alone && o.peer !== undefined) {
      const d = this.newDialer(o.peer);
      d.on('connection', (c: ChannelConnection, hello: HelloFrame) => {
        // A standby at the backup's address (its host restarted) is not this primary's backup: a standby
        // becomes one only when recruited at the arbiter. Taken as the backup, it would acknowledge a
        // primary fenced meanwhile (a failover it slept through), which would release outputs the live
        // lineage never has (sim seed 501604 --mode checkpoint).
        if (hello.role === 'standby') {
          c.close('a standby becomes a backup only when recruited from the pool');
          return;
        }
        log.info({ backup: c.remote }, 'checkpoint primary: backup connected');
        primary.attach(c);
      });
      d.start();
    }
    await primary.start();
    if (from !== undefined) {
      // The old primary's clients were connected to the dead host: their connections end for the guest
      // (as a replay backup's go-live closes them), in order.
      for (const [conn, state] of [...from.devices.conns].sort((a, b) => a[0] - b[0])) if (state === ConnState.OPEN) vcpu.input('close', conn);
    }
    log.info({ service: service.address, alone, epoch, mode: 'checkpoint' }, 'primary is serving');
    if (alone) this.scheduleRecruit(0);
  }

  private newDialer(to: Addr): ChannelDialer {
    const o = this.opts;
    this.dialer?.close();
    this.dialer = new ChannelDialer(to.host, to.port, { secret: o.secret, identity: this.identity, log: o.log.child({ part: 'channel' }), transport: o.env.transport, clock: o.env.clock });
    return this.dialer;
  }

  /** The backup's failure won at the arbiter: serve alone and recruit a new backup. */
  private onAlone(epoch: number): void {
    this.epoch = epoch;
    this.dialer?.close();
    this.dialer = undefined;
    this.join = null;
    this.metrics.failovers.inc({ side: 'primary', outcome: 'went-alone' });
    this.metrics.event({ kind: 'claim-won', side: 'primary', epoch, detail: 'the backup failed: serving alone' });
    this.scheduleRecruit(0);
  }

  private onJoined(epoch: number): void {
    const j = this.join;
    this.join = null;
    this.joinTimer?.cancel();
    if (j === null) return;
    const ms = this.opts.env.clock.now() - j.startedMs;
    this.rereplications++;
    this.metrics.rereplications.inc({ outcome: 'armed' });
    this.metrics.rereplicationSeconds.observe(ms / 1000);
    this.metrics.event({ kind: 'armed', side: 'primary', epoch, phaseMs: ms, detail: `${j.standby} holds a base checkpoint (${Math.round(ms)} ms from recruiting)` });
    this.opts.log.warn({ standby: j.standby, ms: Math.round(ms) }, 'redundancy restored: the recruited standby is the backup');
  }

  private get recruits(): boolean {
    return this.opts.arbiter !== undefined && this.opts.recruit !== undefined;
  }

  private scheduleRecruit(delayMs: number): void {
    if (!this.recruits || this.stopped || this.recruitTimer !== undefined) return;
    this.recruitTimer = this.opts.env.clock.after(delayMs, () => {
      this.recruitTimer = undefined;
      void this.recruit();
    });
  }

  /** Serving alone: pick a free standby from the pool (never one on this host), recruit it, dial it. */
  private async recruit(): Promise<void> {
    const o = this.opts;
    const p = this.primary;
    if (this.recruiting || this.stopped || p === undefined || this.join !== null || !p.status().alone || p.status().phase !== 'running' || !o.arbiter || !o.recruit) return;
    this.recruiting = true;
    try {
      const r = await recruitFromPool(o.arbiter, o.config.name, { hostId: o.recruit.hostId, owner: o.nodeId, epoch: this.epoch }, this.refusedUntil, o.env.clock.now(), o.timings.arbiterDeadlineMs);
      this.metrics.notePool(r.pool);
      this.recruitNote = r.note;
      // Still this primary, alone: the recruited standby becomes its backup (else its entry returns to
      // the pool by itself when nobody connects).
      if (r.recruited !== null && this.primary === p && p.status().alone && !this.stopped) {
        this.connectStandby(r.recruited);
        return;
      }
    } catch (err) {
      this.recruitNote = `cannot reach the arbiter for standbys: ${(err as Error).message}`;
      o.log.warn({ err: (err as Error).message }, 'running alone: the standby pool is unreachable');
    } finally {
      this.recruiting = false;
      if (this.join === null && this.primary?.status().alone === true) this.scheduleRecruit(RECRUIT_RETRY_MS);
    }
  }

  private connectStandby(s: StandbyRecord): void {
    const [host, port] = splitHostPort(s.channel);
    const clock = this.opts.env.clock;
    const j: Join = { standby: s.hostId, channel: s.channel, startedMs: clock.now(), connected: false };
    this.join = j;
    this.opts.log.warn({ standby: s.hostId, channel: s.channel }, 'running alone: recruited a standby; it becomes the backup through a base checkpoint');
    this.metrics.event({ kind: 'standby-recruited', side: 'primary', epoch: this.epoch, detail: `${s.hostId} at ${s.channel}` });
    const d = this.newDialer({ host, port: Number(port) });
    d.on('connection', (c: ChannelConnection) => {
      const p = this.primary;
      if (p === undefined) return c.close('not a primary');
      if (this.join === j && !j.connected) {
        j.connected = true;
        this.joinTimer?.cancel();
        if (!p.join(c)) this.endJoin(j, 'this primary is not alone any more');
      } else {
        p.attach(c); // a reconnection of the backup: it says which checkpoint it holds
      }
    });
    d.start();
    this.joinTimer = clock.after(JOIN_CONNECT_MS, () => {
      if (this.join === j && !j.connected) this.endJoin(j, `the standby ${s.hostId} did not answer at ${s.channel}`);
    });
  }

  /** A join that never connected: forget the standby for a while and recruit again. */
  private endJoin(j: Join, reason: string): void {
    if (this.join !== j) return;
    this.join = null;
    this.refusedUntil.set(j.standby, this.opts.env.clock.now() + REFUSED_STANDBY_MS);
    this.opts.log.warn({ standby: j.standby, reason }, 'the join failed; serving alone, will recruit again');
    this.metrics.rereplications.inc({ outcome: 'failed' });
    this.metrics.event({ kind: 'join-failed', side: 'primary', epoch: this.epoch, detail: `${j.standby}: ${reason}` });
    this.dialer?.close();
    this.dialer = undefined;
    this.scheduleRecruit(RECRUIT_RETRY_MS);
  }

  // ---------------------------------------------------------------- backup and standby

  private async startListening(): Promise<void> {
    const o = this.opts;
    const listen = o.listen!;
    if (o.role === 'backup') this.newBackup(o.epoch);
    // A standby decides itself whether a newcomer replaces the connection it follows (see onConnection).
    const listener = new ChannelListener(listen.host, listen.port, { secret: o.secret, identity: this.identity, log: o.log.child({ part: 'channel' }), transport: o.env.transport, clock: o.env.clock }, o.role === 'backup');
    this.listener = listener;
    listener.on('connection', (c: ChannelConnection, hello: HelloFrame) => this.onConnection(c, hello));
    await listener.start();
    if (o.role === 'standby') {
      const a = listener.address!;
      const channel = o.advertise ?? { host: a.address, port: a.port };
      this.pool = new PoolMembership({
        arbiter: o.arbiter!,
        vm: o.config.name,
        hostId: o.hostId!,
        channel: () => `${channel.host}:${channel.port}`,
        leaseTtlMs: o.leaseTtlMs ?? 3000,
        arbiterDeadlineMs: o.timings.arbiterDeadlineMs,
        clock: o.env.clock,
        log: o.log,
        busy: () => this.backup !== undefined,
      });
      await this.pool.start();
      o.log.info({ channel: `${channel.host}:${channel.port}`, hostId: o.hostId, vm: o.config.name, mode: 'checkpoint' }, 'standby is in the pool');
    } else {
      o.log.info({ channel: listener.address, mode: 'checkpoint' }, 'checkpoint backup: listening');
    }
  }

  private newBackup(epoch: number): CheckpointBackup {
    const o = this.opts;
    this.epoch = epoch;
    const backup = new CheckpointBackup({
      vmName: o.config.name,
      nodeId: o.nodeId,
      epoch,
      failTimeoutMs: o.timings.failTimeoutMs,
      arbiterDeadlineMs: o.timings.arbiterDeadlineMs,
      tickMs: o.timings.tickMs,
      clock: o.env.clock,
      arbiter: o.arbiter,
      log: o.log,
      metrics: this.metrics,
      onApplied: () => {
        if (this.phase === 'standby') {
          // Holds a complete checkpoint: this node is the VM's backup now, out of the pool.
          this.phase = 'backup';
          this.identity.role = 'backup';
          void this.pool?.leave();
          o.log.warn({ epoch: this.epoch }, 'standby: holds a complete checkpoint; it is the backup now');
        }
      },
    });
    this.backup = backup;
    backup.start();
    void backup.done.then((outcome) => this.onBackupDone(backup, outcome));
    return backup;
  }

  private onConnection(c: ChannelConnection, hello: HelloFrame): void {
    if (this.phase === 'primary' || this.phase === 'halted') {
      c.close(`this node is ${this.phase === 'halted' ? 'halted' : 'a primary now'}`);
      return;
    }
    if (this.phase === 'standby' && this.backup === undefined) {
      // The first primary to connect makes this standby its backup, at its epoch.
      this.opts.log.info({ primary: c.remote, epoch: hello.epoch }, 'a primary connected: joining it as its backup');
      this.newBackup(hello.epoch);
      this.backup!.attach(c);
      c.once('close', () => this.joinClosed());
      return;
    }
    if (this.phase === 'standby' && hello.epoch !== this.epoch) {
      c.close(`this standby is joining the primary of epoch ${this.epoch}`);
      return;
    }
    if (this.phase === 'standby') c.once('close', () => this.joinClosed());
    this.backup?.attach(c);
  }

  /**
   * A joining connection closed. Decided once the close settled: a reconnection of the same primary
   * replaces the connection (closing the old one inside `attach`), and the backup follows the new one.
   */
  private joinClosed(): void {
    this.opts.env.clock.after(0, () => this.maybeReturnToPool());
  }

  /** The joining connection closed before a complete checkpoint arrived (and none replaced it): discard, back to the pool. */
  private maybeReturnToPool(): void {
    const b = this.backup;
    if (this.phase !== 'standby' || b === undefined || b.helloApplied() > 0 || b.status().connected || this.stopped) return;
    this.opts.log.warn('standby: the primary disconnected before a complete checkpoint; back in the pool');
    this.backup = undefined;
    b.close();
    this.epoch = 0;
    this.pool?.returnToPool();
  }

  private async onBackupDone(b: CheckpointBackup, outcome: CheckpointBackupOutcome): Promise<void> {
    if (this.stopped || this.backup !== b) return;
    if (outcome.t === 'halted') {
      this.halt(outcome.reason);
      return;
    }
    this.opts.log.warn({ epoch: outcome.epoch, checkpoint: outcome.checkpoint, count: outcome.snapshot.count }, 'checkpoint backup: going live from the last complete checkpoint');
    this.metrics.failovers.inc({ side: 'backup', outcome: 'went-live' });
    this.metrics.event({ kind: 'live', side: 'backup', epoch: outcome.epoch, detail: `from checkpoint ${outcome.checkpoint}` });
    await this.listener?.close();
    this.listener = undefined;
    this.backup = undefined;
    try {
      await this.startPrimary(outcome.epoch, true, outcome.snapshot);
    } catch (err) {
      this.halt(`going live failed: ${(err as Error).message}`);
    }
  }

  private halt(reason: string): void {
    if (this.phase === 'halted') return;
    this.phase = 'halted';
    this.haltReason = reason;
    this.opts.onHalt?.(reason);
  }

  /** What runs now, for the simulator's checkers (read only): the node's phase and its current drivers. */
  get drivers(): { phase: 'primary' | 'backup' | 'standby' | 'halted'; primary: CheckpointPrimary | undefined; backup: CheckpointBackup | undefined } {
    return { phase: this.phase, primary: this.primary, backup: this.backup };
  }

  // ---------------------------------------------------------------- observability and control

  private gauges(): ReturnType<Parameters<NodeMetrics['setSource']>[0]> {
    const p = this.primary?.status();
    const role = this.phase;
    return {
      role,
      epoch: this.epoch,
      protected: role === 'primary' ? p !== undefined && !p.alone && !p.joining && p.connected : role === 'backup' && (this.backup?.helloApplied() ?? 0) > 0,
      instructionNumber: role === 'primary' ? (this.vcpu?.count ?? 0) : 0,
      outputsHeld: p?.heldOutputs ?? 0,
      guestMemoryBytes: role === 'primary' ? (this.vcpu?.memoryBytes ?? 0) : (this.backup?.replica.memoryBytes ?? 0),
      rereplicationProgress: this.join !== null ? 0 : role === 'primary' && p !== undefined && !p.alone ? 1 : 0,
    };
  }

  status(): Record<string, unknown> {
    const o = this.opts;
    const common = { mode: 'checkpoint', vm: o.config.name, nodeId: o.nodeId, ...(o.hostId !== undefined ? { hostId: o.hostId } : {}), epoch: this.epoch, pid: process.pid, ...securityStatus(o) };
    if (this.phase === 'primary' && this.primary !== undefined) {
      const p = this.primary.status();
      return {
        role: 'primary',
        ...common,
        serving: true,
        service: this.service?.address ?? null,
        // A backup still receiving its base does not protect the VM yet.
        alone: p.alone || p.joining,
        backup: p.connected ? 'connected' : p.alone ? 'none' : 'disconnected',
        protected: !p.alone && !p.joining && p.connected,
        halted: null,
        phase: p.phase,
        joining: this.join !== null ? { standby: this.join.standby, channel: this.join.channel, connected: this.join.connected } : null,
        recruit: this.recruits ? this.recruitNote || (p.alone ? 'recruiting' : 'not needed') : 'off',
        rereplications: this.rereplications,
        instructionNumber: this.vcpu?.count ?? 0,
        guestMemoryBytes: this.vcpu?.memoryBytes ?? 0,
        checkpoints: this.checkpointMetrics.totals(),
        checkpoint: { ...this.primary.checkpointStatus(), openCheckpoint: p.openCheckpoint, ackedCheckpoint: p.ackedCheckpoint, heldOutputs: p.heldOutputs, inFlight: p.inFlight, throttled: p.throttled },
      };
    }
    if (this.phase === 'standby' && this.backup === undefined) {
      return { role: 'standby', ...common, serving: false, pool: this.pool?.note ?? 'registering' };
    }
    if (this.phase === 'halted') return { role: 'halted', ...common, serving: false, halted: this.haltReason };
    const b = this.backup;
    const s = b?.status();
    const applied = s?.applied ?? 0;
    return {
      role: 'backup',
      ...common,
      serving: false,
      // 'joining' until the first complete checkpoint (a recruited standby receiving its base).
      phase: applied === 0 ? 'joining' : (s?.phase ?? 'following'),
      primary: s?.connected === true ? 'connected' : 'disconnected',
      checkpoint: { applied, memoryBytes: b?.replica.memoryBytes ?? 0, ...(b !== undefined ? b.stats : {}) },
    };
  }

  async handleControl(method: string, path: string): Promise<unknown> {
    if (method === 'GET' && path === '/status') return this.status();
    if (path === '/metrics' || path === '/timeline') return observabilityRoute(this.metrics, method, path);
    // The pause and encode samples of the checkpoints after the n-th (at most the last 8192): exact
    // quantiles over a window (bench:pair --mode checkpoint).
    const m = method === 'GET' ? /^\/checkpoint\/pauses\/(\d{1,15})$/.exec(path) : null;
    if (m !== null) return this.checkpointMetrics.samplesAfter(Number(m[1]));
    if (method === 'POST' && path === '/state-hash') {
      if (this.primary === undefined || this.phase !== 'primary') throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'state hashes are taken on the primary');
      return this.primary.requestStateHash();
    }
    if (method === 'GET' && path === '/state-hash') return this.backup?.replica.lastHash ?? null;
    if (method === 'POST' && path === '/stop') {
      // An intentional stop: a primary tells its backup not to go live, then stops.
      this.primary?.sendControl(ControlKind.STOP, 'ftvm stop');
      this.opts.env.clock.after(50, () => void this.stop().finally(() => this.opts.onHalt?.('stopped by ftvm stop')));
      return { stopping: true };
    }
    return undefined;
  }
}


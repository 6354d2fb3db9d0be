/**
 * Process drivers: they own the I/O (sockets, the channel, timers, the vCPU worker) and feed the pure
 * replication cores, then carry out the actions the cores return.
 *
 * PrimaryNode (primary-node.ts): records the guest, serves clients, streams the log, releases outputs
 * under the output rule, recruits and clones new backups. BackupNode (here): replays the log on a vCPU,
 * acknowledges, reports progress, and on the primary's failure drains, claims and goes live — as a
 * PrimaryNode that adopts its vCPU. StandbyNode (standby.ts): waits in the VM's pool until a primary
 * clones itself to it, then runs a BackupNode.
 */
import type { ProxiedAtGoLive } from '../machine/vcpu-protocol.js';
import { ChannelListener } from '../channel/endpoints.js';
import { probePeer } from '../channel/liveness.js';
import type { ChannelConnection, LocalIdentity } from '../channel/connection.js';
import { FrameType, type Frame } from '../channel/frames.js';
import { moduleHash } from '../log/recording.js';
import type { Snapshot } from '../machine/machine.js';
import type { NodeClock, ServicePort, Timer, VcpuPort } from './env.js';
import { ControlServer } from '../service/control.js';
import { NodeMetrics, observabilityRoute } from '../service/metrics.js';
import { DeterminismViolation } from '../util/errors.js';
import { bindLogContext, type Logger } from '../util/log.js';
import { BackupCore, type BackupAction } from './backup.js';
import { claimAt, controlOptions, securityStatus, type Addr, type NodeOptions } from './node-common.js';
import { PrimaryNode, serviceFor } from './primary-node.js';
import { ContinuousRecorder } from './recorder.js';

export { DEFAULT_TIMINGS, claimAt, primaryCoreConfig, type Addr, type NodeOptions, type RecruitOptions, type Timings } from './node-common.js';
export { PrimaryNode, type PrimaryOptions } from './primary-node.js';

export interface BackupOptions extends NodeOptions {
  /** Where to listen for the primary (unless `joined`: then the standby's listener is used). */
  listen: Addr;
  /** Where to serve clients once this backup goes live. */
  service?: Addr;
  /**
   * A joiner cloned from a running primary (re-replication): it starts from `snapshot`, on the
   * connection that carried it, unarmed until the primary's ARMED frame. Its channel listener and
   * control endpoint belong to the StandbyNode, which routes new connections here (acceptPeer).
   */
  joined?: { snapshot: Snapshot; conn: ChannelConnection; identity: LocalIdentity };
  /** A joiner gave up before being armed (its primary vanished or dropped it). */
  onAbandon?: (reason: string) => void;
  /** A joiner was armed: it is now the VM's backup. */
  onArmed?: (epoch: number) => void;
}

export class BackupNode {
  readonly core: BackupCore;
  private readonly vcpu: VcpuPort;
  private readonly clock: NodeClock;
  private listener: ChannelListener | undefined;
  private conn: ChannelConnection | undefined;
  private control: ControlServer | undefined;
  private ticker: Timer | undefined;
  private readonly log: Logger;
  private readonly identity: LocalIdentity;
  private fedEntries = 0;
  private draining = false;
  private drainStartMs = 0;
  private live: PrimaryNode | undefined;
  /** The client service bound when the claim was won; the PrimaryNode takes it over at 'live'. */
  private earlyService: ServicePort | undefined;
  private finished = false;
  private readonly recorder: ContinuousRecorder | undefined;
  readonly metrics: NodeMetrics;
  /** When the primary was last heard (any frame), for the failure-detection time. */
  private lastHeardMs: number;
  private claimStartMs: number | null = null;
  private peerConnections = 0;

  constructor(private readonly opts: BackupOptions) {
    this.log = opts.log;
    this.clock = opts.env.clock;
    this.lastHeardMs = this.clock.now();
    const j = opts.joined;
    this.core = new BackupCore({
      epoch: opts.epoch,
      heartbeatIntervalMs: opts.timings.heartbeatIntervalMs,
      failTimeoutMs: opts.timings.failTimeoutMs,
      claimRetryMs: opts.timings.arbiterDeadlineMs,
      ...(j ? { firstSeq: j.snapshot.seq, armed: false } : {}),
      ...(opts.testOnlyCoreBreak === 'skip-drain' ? { testOnlyBreak: 'skip-drain' as const } : {}),
    });
    this.fedEntries = j?.snapshot.seq ?? 0;
    this.vcpu = opts.env.newVcpu({
      mode: 'replay',
      guest: opts.guest,
      config: opts.config,
      ...(opts.sliceUnits !== undefined ? { sliceUnits: opts.sliceUnits } : {}),
      ...(j ? { snapshot: j.snapshot } : {}),
      ...(opts.diskImagePath !== undefined ? { diskImagePath: opts.diskImagePath } : {}),
    });
    const core = this.core;
    this.metrics = opts.metrics ?? new NodeMetrics(opts.config.name);
    this.metrics.setSource(() => {
      const st = core.status();
      return {
        role: st.halted !== null ? 'halted' : 'backup',
        epoch: st.epoch,
        protected: st.phase === 'following' && st.peer,
        instructionNumber: this.vcpu.count,
        outputsHeld: 0,
        guestMemoryBytes: this.vcpu.memoryBytes,
        guestDiskBytes: this.vcpu.diskBytes,
        rereplicationProgress: 0,
      };
    });
    bindLogContext(this.log, () => ({ vm: opts.config.name, role: core.status().halted !== null ? 'halted' : 'backup', epoch: core.status().epoch }));
    this.identity = j?.identity ?? {
      role: 'backup',
      vmName: opts.config.name,
      moduleHash: moduleHash(opts.guest.original),
      epoch: 0,
      nextSeq: () => core.expectedSeq,
    };
    // The channel's HELLO carries this backup's current epoch (it grows when a joiner is armed).
    Object.defineProperty(this.identity, 'epoch', { get: () => core.status().epoch, configurable: true, enumerable: true });
    this.identity.nextSeq = () => core.expectedSeq;
    this.identity.role = 'backup';
    this.identity.liveness = () => opts.liveness ?? '';
    if (opts.record) {
      const vcpu = this.vcpu;
      this.recorder = new ContinuousRecorder({
        dir: opts.record.dir,
        maxBytes: opts.record.maxBytes,
        module: opts.guest.original,
        config: opts.config,
        log: this.log.child({ part: 'recorder' }),
        ...(j ? { start: { ...j.snapshot, memory: new Uint8Array(j.snapshot.memory) } } : {}),
        takeSnapshot: async () => (await vcpu.takeSnapshot()).snapshot,
        consumed: () => vcpu.entries,
      });
    }
    this.vcpu.on('hash', (h: { n: number; hash: Uint8Array }) => this.exec(this.core.step({ t: 'replica-verified', n: h.n, hash: h.hash })));
    this.vcpu.on('vcpu-error', (err: Error) => {
      const reason = err instanceof DeterminismViolation ? err.message : `replica failed: ${err.message}`;
      this.exec(this.core.step({ t: 'replica-diverged', reason }));
    });
    if (j) {
      // Frames that follow the snapshot on this connection must reach the core: adopt it now.
      this.ticker = this.clock.every(opts.timings.tickMs, () => this.tick());
      this.acceptPeer(j.conn);
    }
  }

  /** The PrimaryNode this backup became when it went live (for inspection: status, the simulator). */
  get livePrimary(): PrimaryNode | undefined {
    return this.live;
  }

  /** This backup stopped following (halted, abandoned, stopped) without going live. */
  get isFinished(): boolean {
    return this.finished;
  }

  get address(): Addr | undefined {
    const a = this.listener?.address;
    return a ? { host: a.address, port: a.port } : undefined;
  }

  async start(): Promise<void> {
    const o = this.opts;
    if (o.joined) return; // started in the constructor, on the standby's listener
    this.listener = new ChannelListener(o.listen.host, o.listen.port, { secret: o.secret, transport: o.env.transport, clock: this.clock, log: o.log.child({ part: 'channel' }), identity: this.identity });
    this.listener.on('connection', (c: ChannelConnection) => this.acceptPeer(c));
    await this.listener.start();
    if (o.control) {
      this.control = new ControlServer(o.control.host, o.control.port, (m, p) => this.handleControl(m, p), { ...controlOptions(o), identity: { nodeId: o.nodeId, ...(o.hostId !== undefined ? { hostId: o.hostId } : {}) } });
      await this.control.start();
    }
    this.ticker = this.clock.every(o.timings.tickMs, () => this.tick());
    this.log.info({ channel: this.address, epoch: o.epoch }, 'backup is waiting for the primary');
  }

  /** A primary connected (authenticated, HELLO checked). */
  acceptPeer(c: ChannelConnection): void {
    if (this.live || this.finished) {
      c.close('this node is no longer a backup');
      return;
    }
    if (this.conn && this.conn !== c) this.conn.close('replaced by a new connection from the primary');
    this.conn = c;
    this.log.info({ primary: c.remote }, 'primary connected');
    this.lastHeardMs = this.clock.now();
    if (this.peerConnections++ > 0) this.metrics.reconnects.inc();
    c.on('frame', (f: Frame) => {
      this.lastHeardMs = this.clock.now();
      if (f.type === FrameType.HEARTBEAT) this.metrics.heartbeats.inc({ direction: 'in' });
      // Report the replica's freshest position with the ACK this frame triggers.
      this.exec(this.core.step({ t: 'replica-progress', instructionNumber: this.vcpu.count }));
      this.exec(this.core.step({ t: 'frame', frame: f }));
    });
    c.once('close', (reason: string) => {
      if (this.conn === c) {
        this.conn = undefined;
        this.exec(this.core.step({ t: 'peer-closed' }));
        // The probe first: on a crash it is the failover's critical path; the log line can wait.
        this.probePrimary(c);
        this.log.warn({ reason }, 'primary disconnected');
      }
    });
    this.exec(this.core.step({ t: 'peer-open', nowMs: this.clock.now() }));
  }

  /**
   * The channel closed: is the primary's process gone? A refused probe of the liveness port it
   * advertised is evidence (src/channel/liveness.ts); anything else leaves the fail timeout to decide.
   */
  private probePrimary(c: ChannelConnection): void {
    if (this.opts.fastFailover === false) return;
    probePeer(
      c,
      'primary',
      this.opts.env,
      this.log,
      () => !this.live && !this.finished && this.conn === undefined, // not reconnected, not decided
      (evidence) => this.exec(this.core.step({ t: 'peer-gone', evidence })),
    );
  }

  private tick(): void {
    if (this.live || this.finished) return;
    this.exec(this.core.step({ t: 'replica-progress', instructionNumber: this.vcpu.count }));
    const now = this.clock.now();
    this.exec(this.core.step({ t: 'tick', nowMs: now }));
    this.metrics.sampleVcpu(now, !this.vcpu.idle);
    // `drained` can be stale (a batch just fed is not yet seen by the worker): the entry count guards it.
    if (this.draining && this.vcpu.drained && (this.vcpu.entries >= this.fedEntries || this.opts.testOnlyDriverBreak === 'stale-drained')) {
      this.draining = false;
      const drainMs = this.clock.now() - this.drainStartMs;
      this.metrics.phase('drain', drainMs);
      this.metrics.event({ kind: 'drained', side: 'backup', epoch: this.core.status().epoch, phaseMs: drainMs, detail: `replayed every held entry (${this.fedEntries})` });
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
          this.metrics.logged('in', a.batch.length, a.count);
          this.fedEntries += a.count;
          this.vcpu.feedLog(a.batch);
          this.recorder?.feed(a.batch, a.count);
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
          this.metrics.event({ kind: 'halted', side: 'backup', epoch: this.core.status().epoch, detail: a.reason });
          this.vcpu.stop();
          void this.stop().finally(() => this.opts.onHalt?.(a.reason));
          break;
        case 'drain': {
          // The claim (the next action of this step) goes out before the log line is written.
          const line = a.evidence ? 'primary gone: claiming the VM while the replica consumes every held entry' : 'primary silent: claiming the VM while the replica consumes every held entry';
          queueMicrotask(() => this.log.warn({ reason: a.reason }, line));
          this.draining = true;
          this.drainStartMs = this.clock.now();
          this.metrics.phase('detect', this.drainStartMs - this.lastHeardMs);
          this.metrics.event({ kind: 'silence-detected', side: 'backup', epoch: this.core.status().epoch, phaseMs: this.drainStartMs - this.lastHeardMs, detail: a.reason });
          break;
        }
        case 'claim':
          this.claimStartMs ??= this.clock.now();
          void claimAt(this.opts, a.epoch, this.log).then((r) => {
            if (r.t === 'claim-result' && this.claimStartMs !== null) {
              const ms = this.clock.now() - this.claimStartMs;
              if (r.won) {
                this.metrics.phase('claim', ms);
                this.metrics.event({ kind: 'claim-won', side: 'backup', epoch: r.epoch, phaseMs: ms });
              } else {
                this.metrics.failovers.inc({ side: 'backup', outcome: 'halted' });
                this.metrics.event({ kind: 'claim-lost', side: 'backup', epoch: r.epoch, phaseMs: ms, detail: `the VM belongs to ${r.owner}` });
              }
            }
            this.exec(this.core.step(r));
          });
          break;
        case 'go-live':
          if (a.testOnlyAbandonHeld) this.vcpu.testOnlyAbandonHeld?.(); // TEST ONLY (the core's skip-drain)
          this.goLive(a.epoch);
          break;
        case 'armed':
          this.log.warn({ epoch: a.epoch }, 'armed: this node is now the backup of the VM');
          this.opts.onArmed?.(a.epoch);
          break;
        case 'abandon':
          this.log.warn({ reason: a.reason }, 'the join was abandoned before the pair was armed');
          this.finished = true;
          this.conn?.close(a.reason);
          void this.stop().finally(() => this.opts.onAbandon?.(a.reason));
          break;
      }
    }
  }

  /** Won the claim: the replica becomes a recording primary and starts serving clients. */
  private goLive(epoch: number): void {
    const o = this.opts;
    if (!o.service) {
      this.log.error('won the claim but has no --service address to serve on: halting');
      this.vcpu.stop();
      return;
    }
    void this.listener?.close().catch(() => undefined);
    void this.recorder?.close(); // the recording ends where this replica stops following a primary
    this.conn?.close('this backup went live');
    const t0 = this.clock.now();
    const service = o.service;
    // The claim is won: bind the service address while the vCPU finishes the takeover (one round trip
    // to the worker), so a client that connects now is held and served at once rather than refused.
    const early = serviceFor({ ...o, service });
    this.earlyService = early;
    void early.listen?.().catch((err: Error) => this.log.warn({ err: err.message, service }, 'could not bind the service address early; binding at go-live'));
    this.vcpu.once('live', (ev: { count: number; seq: number; maxConn: number; proxied?: ProxiedAtGoLive[] }) => {
      // The PrimaryNode takes the vCPU over here, in the 'live' handler: no batch after it is missed.
      const { control: _control, ...rest } = o;
      const live = new PrimaryNode({ ...rest, metrics: this.metrics, epoch, service, adopt: { vcpu: this.vcpu, firstSeq: ev.seq, firstConn: ev.maxConn + 1, service: early, ...(ev.proxied !== undefined ? { proxied: ev.proxied } : {}) } });
      this.live = live;
      this.ticker?.cancel();
      live.start().then(
        () => {
          const goLiveMs = this.clock.now() - t0;
          this.metrics.phase('go_live', goLiveMs);
          this.metrics.failovers.inc({ side: 'backup', outcome: 'went-live' });
          this.metrics.event({ kind: 'live', side: 'backup', epoch, phaseMs: goLiveMs, detail: `serving clients at ${o.service?.host}:${o.service?.port}` });
          this.log.warn({ epoch, instructionNumber: ev.count, entries: ev.seq, service: o.service, drainMs: Math.round(t0 - this.drainStartMs) }, 'went live: serving clients as the primary');
        },
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
      serving: false,
      phase: s.phase,
      vm: this.opts.config.name,
      epoch: s.epoch,
      instructionNumber: this.vcpu.count,
      grantedInstructionNumber: s.grantedInstructionNumber,
      primary: s.peer ? 'connected' : 'disconnected',
      entries: s.nextSeq,
      halted: s.halted,
      lastVerified: s.lastVerified,
      recording: this.recorder?.path ?? null,
      ...securityStatus(this.opts),
    };
  }

  async handleControl(method: string, path: string): Promise<unknown> {
    if (method === 'GET' && path === '/status') return this.status();
    if (this.live) return this.live.handleControl(method, path);
    if (path === '/metrics' || path === '/timeline') return observabilityRoute(this.metrics, method, path);
    if (method === 'GET' && path === '/state-hash') return this.core.status().lastVerified;
    return undefined;
  }

  async stop(): Promise<void> {
    this.finished = true;
    this.ticker?.cancel();
    await this.recorder?.close();
    await this.live?.stop();
    await this.listener?.close();
    await this.control?.close();
    if (!this.live) {
      await this.earlyService?.close(); // bound at the claim, never taken over
      this.vcpu.stop();
      this.vcpu.endOfLog();
      await Promise.race([this.vcpu.done.catch(() => undefined), this.clock.sleep(2000)]);
      await this.vcpu.terminate();
    }
  }
}

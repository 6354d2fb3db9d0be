/**
 * PrimaryNode: the process driver of a primary. It records the guest on a vCPU, serves clients, streams
 * the log to the backup and releases outputs under the output rule (all decided by the pure
 * PrimaryCore; this class only does the I/O).
 *
 * Re-replication: a primary that runs alone (it won a failover, or started without a backup) and has an
 * arbiter recruits a standby from the VM's pool (never one on its own host), snapshots the running guest
 * at an idle point, streams the snapshot to it while the guest keeps running, then the log from the
 * snapshot's entry; once the new backup caught up the core asks to arm the pair (arbiter.advance to a
 * new epoch) and the output rule applies again. See docs/ARCHITECTURE.md, "Re-replication".
 */
import { once, type EventEmitter } from 'node:events';
import { ChannelDialer } from '../channel/endpoints.js';
import { probePeer } from '../channel/liveness.js';
import type { ChannelConnection, LocalIdentity } from '../channel/connection.js';
import { ControlKind, FrameType, SnapshotPart, type Frame, type HelloFrame, type RefuseFrame } from '../channel/frames.js';
import type { StandbyRecord } from '../arbiter/arbiter.js';
import { recruitFromPool } from './pool.js';
import { moduleHash } from '../log/recording.js';
import { snapshotEncoder } from '../machine/snapshot-codec.js';
import type { BatchEvent } from '../machine/vcpu.js';
import type { NodeClock, ServicePort, Timer, VcpuPort } from './env.js';
import type { ProxiedAtGoLive } from '../machine/vcpu-protocol.js';
import { ControlServer, splitHostPort } from '../service/control.js';
import { NodeMetrics, observabilityRoute } from '../service/metrics.js';
import { FtvmError } from '../util/errors.js';
import { bindLogContext, type Logger } from '../util/log.js';
import { PrimaryCore, type PrimaryAction } from './primary.js';
import { claimAt, controlOptions, primaryCoreConfig, securityStatus, startServiceRetrying, type Addr, type NodeOptions } from './node-common.js';


/** Waits for the first of `events` on `emitter` and removes every listener it added (no leak per wait). */
export async function firstOf(emitter: EventEmitter, events: readonly string[]): Promise<void> {
  const ac = new AbortController();
  const waits = events.map((e) => once(emitter, e, { signal: ac.signal }));
  try {
    await Promise.race(waits);
  } finally {
    ac.abort();
    for (const w of waits) w.catch(() => undefined); // the losers reject with AbortError
  }
}

export interface PrimaryOptions extends NodeOptions {
  service: Addr;
  /** The backup's channel address; absent: no backup at start (FT off, or recruit one from the pool). */
  peer?: Addr;
  unackedMaxBytes?: number;
  heldMaxOutputs?: number;
  /** A backup gone live hands over its vCPU (already recording) instead of starting a new guest. */
  adopt?: {
    vcpu: VcpuPort;
    firstSeq: number;
    firstConn: number;
    proxied?: readonly ProxiedAtGoLive[];
    /** The client service, made (and bound early) by the backup when it won the claim (serviceFor). */
    service?: ServicePort;
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

/** How often a primary with an arbiter reads the standby pool's size for /metrics. */
const POOL_REFRESH_MS = 2000;

/** A backup gone live starts recruiting its new backup this long after it serves (see start). */
const RECRUIT_AFTER_GO_LIVE_MS = 25;

/** The client service of a node serving at `opts.service` (and its proxy port, if any). */
export function serviceFor(opts: NodeOptions & { service: Addr }): ServicePort {
  return opts.env.newService({
    host: opts.service.host,
    port: opts.service.port,
    log: opts.log.child({ part: 'service' }),
    ...(opts.proxyListen !== undefined
      ? { proxy: { host: opts.proxyListen.host, port: opts.proxyListen.port, keys: opts.secret, vmName: opts.config.name, ...(opts.proxyReattachTimeoutMs !== undefined ? { reattachTimeoutMs: opts.proxyReattachTimeoutMs } : {}) } }
      : {}),
  });
}

/** Bytes the socket may hold unsent before the snapshot stream waits for 'drain'. */
const SNAPSHOT_SEND_WINDOW_BYTES = 4 * 1024 * 1024;
/**
 * Snapshot chunk size on the channel. Each chunk is checksummed, MAC'd and copied on the I/O thread,
 * which yields after every chunk: small chunks keep the client I/O of the running guest flowing.
 */
const SNAPSHOT_CHUNK_BYTES = 256 * 1024;

/** One re-replication in progress (status and measurements). */
interface JoinProgress {
  standby: string;
  channel: string;
  phase: 'connecting' | 'snapshot' | 'transferring' | 'catching-up' | 'arming';
  startedMs: number;
  pauseMs: number;
  sentBytes: number;
  totalBytes: number;
  snapshotSeq: number;
}

export class PrimaryNode {
  readonly core: PrimaryCore;
  private vcpu: VcpuPort | undefined;
  readonly service: ServicePort;
  private readonly clock: NodeClock;
  private dialer: ChannelDialer | undefined;
  private conn: ChannelConnection | undefined;
  private control: ControlServer | undefined;
  private ticker: Timer | undefined;
  private readonly rate = new Rate();
  private lastVerified: { n: number; hash: string; ok: boolean } | null = null;
  private hashWaiters: Array<(h: { n: number; hash: string }) => void> = [];
  private readonly log: Logger;
  private diverged: string | null = null;
  private readonly identity: LocalIdentity;
  private join: JoinProgress | null = null;
  /** The last finished re-replication, for status and the benchmark. */
  private lastJoin: (JoinProgress & { totalMs: number }) | null = null;
  private recruitTimer: Timer | undefined;
  private recruiting = false;
  private recruitNote = '';
  private joinConnectTimer: Timer | undefined;
  /** Standbys that refused us (other module, version…): not asked again for a while. */
  private readonly refusedUntil = new Map<string, number>();
  private stopped = false;
  /** The client service is listening (set once `start` bound it). */
  private serving = false;
  readonly metrics: NodeMetrics;
  /** When the backup was last heard (any frame), for the failure-detection time. */
  private lastHeardMs: number;
  /** The claim of a failover in progress: when it was first asked (retries keep the first). */
  private claimStartMs: number | null = null;
  private peerConnections = 0;
  private poolTimer: Timer | undefined;
  /** When the current join's snapshot finished streaming (the catch-up starts). */
  private streamedAtMs: number | undefined;

  constructor(private readonly opts: PrimaryOptions) {
    this.log = opts.log;
    this.clock = opts.env.clock;
    this.lastHeardMs = this.clock.now();
    const firstSeq = opts.adopt?.firstSeq;
    this.core = new PrimaryCore({
      ...primaryCoreConfig(opts.timings, opts.epoch, opts.peer === undefined),
      unackedMaxBytes: opts.unackedMaxBytes ?? 32 * 1024 * 1024,
      heldMaxOutputs: opts.heldMaxOutputs ?? 100_000,
      ...(firstSeq !== undefined ? { firstSeq } : {}),
      ...(opts.testOnlyCoreBreak === 'release-before-ack' ? { testOnlyBreak: 'release-before-ack' as const } : {}),
    });
    const core = this.core;
    this.identity = {
      role: 'primary',
      vmName: opts.config.name,
      moduleHash: moduleHash(opts.guest.original),
      get epoch() {
        return core.status().epoch;
      },
      nextSeq: () => core.status().ackedSeq,
      liveness: () => opts.liveness ?? '',
    };
    this.metrics = opts.metrics ?? new NodeMetrics(opts.config.name);
    this.metrics.resetHeld();
    this.metrics.setSource(() => {
      const st = core.status();
      const j = this.join;
      return {
        role: st.halted !== null ? 'halted' : 'primary',
        epoch: st.epoch,
        protected: this.isProtected(),
        instructionNumber: Math.max(this.vcpu?.count ?? 0, st.instructionNumber),
        outputsHeld: st.outputsHeld,
        guestMemoryBytes: this.vcpu?.memoryBytes ?? 0,
        guestDiskBytes: this.vcpu?.diskBytes ?? 0,
        rereplicationProgress: j === null ? 0 : j.phase === 'transferring' ? j.sentBytes / Math.max(1, j.totalBytes) : j.phase === 'catching-up' || j.phase === 'arming' ? 1 : 0,
      };
    });
    bindLogContext(this.log, () => ({ vm: opts.config.name, role: core.status().halted !== null ? 'halted' : 'primary', epoch: core.status().epoch }));
    this.service = opts.adopt?.service ?? serviceFor(opts);
    // A backup gone live: take over its vCPU now, so no batch after the go-live point is missed.
    if (opts.adopt) this.attachVcpu(opts.adopt.vcpu);
  }

  /** A connected, armed backup holds the log: the output rule protects every output. */
  isProtected(): boolean {
    const st = this.core.status();
    return !st.alone && st.peer && st.joining === null && st.halted === null;
  }

  private get recruits(): boolean {
    return this.opts.arbiter !== undefined && this.opts.recruit !== undefined;
  }

  async start(): Promise<void> {
    const o = this.opts;
    if (o.control) {
      this.control = new ControlServer(o.control.host, o.control.port, (m, p) => this.handleControl(m, p), { ...controlOptions(o), identity: { nodeId: o.nodeId, ...(o.hostId !== undefined ? { hostId: o.hostId } : {}) } });
      await this.control.start();
    }
    if (o.peer) {
      this.dialer = this.newDialer(o.peer);
      const first = new Promise<void>((resolve) => this.dialer!.once('connection', () => resolve()));
      this.dialer.start();
      this.log.info({ peer: `${o.peer.host}:${o.peer.port}` }, 'waiting for the backup before starting the guest');
      await first;
    }
    // Heartbeats start now: the backup must not take the guest's start-up time for a failure.
    this.ticker = this.clock.every(o.timings.tickMs, () => this.tick());
    if (o.arbiter) {
      // The standby pool's size, for /metrics (recruiting also refreshes it).
      this.poolTimer = this.clock.every(POOL_REFRESH_MS, () => void this.refreshPool(), true);
    }
    if (!o.adopt) this.startVcpu();
    else {
      this.service.firstConnectionId = o.adopt.firstConn;
      if (o.adopt.proxied !== undefined) this.service.adoptProxied?.(o.adopt.proxied);
    }
    const vcpu = this.vcpu!;
    // Redundancy does not wait for the client service (its bind may retry for seconds). A backup that
    // just went live lets the clients it held be served first: the recruit's arbiter call, snapshot and
    // TLS handshake would share this thread with their first replies (a few ms of a ~40 ms failover).
    if (this.core.status().alone) this.scheduleRecruit(o.adopt ? RECRUIT_AFTER_GO_LIVE_MS : 0);
    const sink = {
      input: (k: 'open' | 'data' | 'close', c: number, d?: Uint8Array) => vcpu.input(k, c, d),
      get backlogBytes() {
        return vcpu.backlog_bytes;
      },
    };
    await startServiceRetrying(this.service, sink, { clock: this.clock, log: this.log, address: `${o.service.host}:${o.service.port}`, stopped: () => this.stopped });
    this.serving = true;
    this.log.info({ service: this.service.address, alone: this.core.status().alone, epoch: this.core.status().epoch }, 'primary is serving');
  }

  private async refreshPool(): Promise<void> {
    const o = this.opts;
    if (!o.arbiter || this.stopped || this.recruiting) return;
    try {
      this.metrics.notePool(await o.arbiter.listStandbys(o.config.name, { deadlineMs: o.timings.arbiterDeadlineMs }));
    } catch {
      // an unreachable arbiter: the gauge keeps its last value
    }
  }

  private newDialer(peer: Addr): ChannelDialer {
    const d = new ChannelDialer(peer.host, peer.port, { secret: this.opts.secret, transport: this.opts.env.transport, clock: this.clock, log: this.opts.log.child({ part: 'channel' }), identity: this.identity });
    d.on('connection', (c: ChannelConnection, hello: HelloFrame) => this.onConnection(c, hello));
    return d;
  }

  private startVcpu(): void {
    const o = this.opts;
    this.attachVcpu(
      o.env.newVcpu({
        mode: 'record',
        guest: o.guest,
        config: o.config,
        env: { kind: 'live' },
        stateHashIntervalMs: o.timings.stateHashIntervalMs,
        ...(o.sliceUnits !== undefined ? { sliceUnits: o.sliceUnits } : {}),
        ...(o.diskImagePath !== undefined ? { diskImagePath: o.diskImagePath } : {}),
      }),
    );
  }

  private attachVcpu(vcpu: VcpuPort): void {
    this.vcpu = vcpu;
    vcpu.on('batch', (b: BatchEvent) => {
      if (b.consumed !== undefined) {
        this.service.consumed(b.consumed);
        // Proxied connections learn which input is safe (INACK) once the backup holds its entries.
        if (this.service.inputLogged !== undefined) this.inputPending.push({ endSeq: b.firstSeq + b.count, pairs: b.consumed });
      }
      this.exec(this.core.step({ t: 'tick', nowMs: this.clock.now() })); // lag samples carry the real time
      this.metrics.logged('out', b.entries.length, b.count);
      this.metrics.outputsEntered(b.outputs.length, this.clock.now());
      if (this.opts.testOnlyDriverBreak === 'release-unheld' && b.outputs.length > 0) this.service.deliver(b.outputs); // TEST ONLY
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

  private onConnection(c: ChannelConnection, hello: HelloFrame): void {
    if (hello.role === 'standby') {
      if (this.join === null || this.join.phase !== 'connecting' || !this.core.status().alone) {
        c.close('no join expected from this standby now');
        return;
      }
      void this.startJoin(c);
      return;
    }
    this.onPeer(c, hello);
  }

  private wire(c: ChannelConnection): void {
    this.conn?.close('replaced');
    this.conn = c;
    c.on('frame', (f: Frame) => {
      this.lastHeardMs = this.clock.now();
      if (f.type === FrameType.HEARTBEAT) this.metrics.heartbeats.inc({ direction: 'in' });
      this.exec(this.core.step({ t: 'frame', frame: f }));
    });
    c.once('refused', (f: RefuseFrame) => {
      if (this.join) this.refusedUntil.set(this.join.standby, this.clock.now() + 30_000);
      this.log.error({ code: f.code, reason: f.reason }, 'the backup refused this primary');
    });
    c.once('close', (reason: string) => {
      if (this.conn === c) {
        this.conn = undefined;
        this.exec(this.core.step({ t: 'peer-closed' }));
        // Is the backup's process gone? Then claim now rather than after the fail timeout (the probe
        // goes out before the log line is written).
        if (this.opts.fastFailover !== false) {
          probePeer(c, 'backup', this.opts.env, this.log, () => !this.stopped && this.conn === undefined, (evidence) => this.exec(this.core.step({ t: 'peer-gone', evidence })));
        }
        this.log.warn({ reason }, 'backup disconnected');
      }
    });
  }

  private onPeer(c: ChannelConnection, hello: HelloFrame): void {
    this.wire(c);
    this.lastHeardMs = this.clock.now();
    if (this.peerConnections++ > 0) this.metrics.reconnects.inc();
    this.log.info({ backup: c.remote, nextSeq: hello.nextSeq }, 'backup connected');
    this.exec(this.core.step({ t: 'peer-open', backupNextSeq: hello.nextSeq }));
  }

  // ---------------------------------------------------------------- re-replication

  private scheduleRecruit(delayMs: number): void {
    if (!this.recruits || this.stopped || this.recruitTimer) return;
    this.recruitTimer = this.clock.after(delayMs, () => {
      this.recruitTimer = undefined;
      void this.recruit();
    });
  }

  /** Picks a free standby from the pool (never one on this host) and dials it. */
  private async recruit(): Promise<void> {
    const o = this.opts;
    const s = this.core.status();
    if (this.recruiting || this.stopped || s.halted !== null || !s.alone || this.join !== null || !o.arbiter || !o.recruit) return;
    this.recruiting = true;
    try {
      const r = await recruitFromPool(o.arbiter, o.config.name, { hostId: o.recruit.hostId, owner: o.nodeId, epoch: s.epoch }, this.refusedUntil, this.clock.now(), o.timings.arbiterDeadlineMs);
      this.metrics.notePool(r.pool);
      this.recruitNote = r.note;
      if (r.recruited !== null) {
        this.connectStandby(r.recruited);
        return;
      }
      this.log.debug({ note: this.recruitNote }, 'running alone: no standby to recruit yet');
    } catch (err) {
      this.recruitNote = `cannot reach the arbiter for standbys: ${(err as Error).message}`;
      this.log.warn({ err: (err as Error).message }, 'running alone: the standby pool is unreachable');
    } finally {
      this.recruiting = false;
      if (this.join === null) this.scheduleRecruit(o.recruit!.intervalMs);
    }
  }

  private connectStandby(s: StandbyRecord): void {
    const [host, port] = splitHostPort(s.channel);
    this.join = { standby: s.hostId, channel: s.channel, phase: 'connecting', startedMs: this.clock.now(), pauseMs: 0, sentBytes: 0, totalBytes: 0, snapshotSeq: -1 };
    this.log.warn({ standby: s.hostId, channel: s.channel }, 'running alone: recruited a standby; cloning this VM to it');
    this.metrics.event({ kind: 'standby-recruited', side: 'primary', epoch: this.core.status().epoch, detail: `${s.hostId} at ${s.channel}` });
    this.dialer?.close();
    this.dialer = this.newDialer({ host, port: Number(port) });
    this.dialer.start();
    this.joinConnectTimer = this.clock.after(Math.max(3000, this.opts.timings.arbiterDeadlineMs), () => {
      if (this.join?.phase === 'connecting') this.endJoin(`the standby ${s.hostId} did not answer at ${s.channel}`);
    });
  }

  /** The standby answered: snapshot at the next idle point, stream it, then the log from there. */
  private async startJoin(c: ChannelConnection): Promise<void> {
    const j = this.join!;
    this.joinConnectTimer?.cancel();
    this.dialer?.detach(); // this connection carries the join
    this.dialer = undefined;
    this.wire(c);
    j.phase = 'snapshot';
    let taken;
    try {
      taken = await this.vcpu!.takeSnapshot((t) => this.exec(this.core.step({ t: 'join-begin', snapshotSeq: t.snapshot.seq })));
    } catch (err) {
      this.endJoin(`cannot snapshot the guest: ${(err as Error).message}`);
      return;
    }
    j.pauseMs = taken.pauseMs;
    j.snapshotSeq = taken.snapshot.seq;
    this.metrics.rereplicationPause.observe(taken.pauseMs / 1000);
    const transferStartMs = this.clock.now();
    if (!c.isOpen || this.join !== j) {
      this.exec(this.core.step({ t: 'join-abort', reason: 'the standby disconnected before the snapshot was sent' }));
      return;
    }
    const enc = snapshotEncoder(taken.snapshot, SNAPSHOT_CHUNK_BYTES);
    j.phase = 'transferring';
    j.totalBytes = taken.snapshot.memory.length + (taken.snapshot.disk?.length ?? 0); // the disk streams after memory
    this.log.info({ standby: j.standby, memoryBytes: taken.snapshot.memory.length, diskBytes: taken.snapshot.disk?.length ?? 0, chunks: enc.chunkCount, pauseMs: +taken.pauseMs.toFixed(2), seq: j.snapshotSeq }, 'snapshot taken; streaming it while the guest runs on');
    const epoch = this.core.status().epoch;
    c.send({ type: FrameType.SNAPSHOT, epoch, part: SnapshotPart.BEGIN, config: JSON.stringify(this.opts.config), data: enc.header });
    let nextReport = 0.25;
    for (let i = 0; i < enc.chunkCount; i++) {
      while (c.isOpen && c.bufferedBytes > SNAPSHOT_SEND_WINDOW_BYTES) {
        await firstOf(c, ['drain', 'close']);
      }
      if (!c.isOpen || this.join !== j) {
        if (this.join === j) this.exec(this.core.step({ t: 'join-abort', reason: `the transfer was cut at ${j.sentBytes} of ${j.totalBytes} bytes` }));
        return;
      }
      const chunk = enc.chunk(i);
      c.send({ type: FrameType.SNAPSHOT, epoch, part: SnapshotPart.CHUNK, config: '', data: chunk });
      j.sentBytes += chunk.length - 8;
      this.metrics.snapshotBytes.inc(chunk.length - 8);
      if (j.sentBytes / j.totalBytes >= nextReport) {
        this.log.info({ standby: j.standby, sentBytes: j.sentBytes, totalBytes: j.totalBytes, percent: Math.round((100 * j.sentBytes) / j.totalBytes) }, 'snapshot transfer');
        nextReport += 0.25;
      }
      await this.clock.yieldIo(); // let client I/O and heartbeats through
    }
    j.phase = 'catching-up';
    this.streamedAtMs = this.clock.now();
    this.metrics.event({ kind: 'snapshot-streamed', side: 'primary', epoch, phaseMs: this.streamedAtMs - transferStartMs, detail: `${Math.round(j.totalBytes / 1024)} KiB; guest paused ${j.pauseMs.toFixed(1)} ms` });
    this.exec(this.core.step({ t: 'peer-open', backupNextSeq: j.snapshotSeq }));
  }

  /** Ends a join attempt: close its connection and try again later (another standby, or the same). */
  private endJoin(reason: string): void {
    if (this.join === null) return;
    this.joinConnectTimer?.cancel();
    this.log.warn({ standby: this.join.standby, reason }, 'the join failed; serving alone, will recruit again');
    this.metrics.rereplications.inc({ outcome: 'failed' });
    this.metrics.event({ kind: 'join-failed', side: 'primary', epoch: this.core.status().epoch, detail: `${this.join.standby}: ${reason}` });
    this.join = null;
    this.dialer?.close();
    this.dialer = undefined;
    this.conn?.close(reason);
    this.scheduleRecruit(500);
  }

  // ---------------------------------------------------------------- actions

  private tick(): void {
    if (this.switchingOver) return;
    const now = this.clock.now();
    this.rate.add(now, this.core.status().logBytesSent);
    this.exec(this.core.step({ t: 'tick', nowMs: now }));
    if (this.isProtected()) this.metrics.lag.observe(this.core.status().lagMs / 1000);
    if (this.vcpu) this.metrics.sampleVcpu(now, !this.vcpu.idle);
  }

  /** Client input handed to the guest, per batch, until the backup's ACK covers the batch. */
  private readonly inputPending: Array<{ endSeq: number; pairs: readonly number[] }> = [];

  private ackInput(): void {
    if (this.inputPending.length === 0) return;
    const covered = this.core.coveredSeq;
    while (this.inputPending.length > 0 && this.inputPending[0]!.endSeq <= covered) this.service.inputLogged?.(this.inputPending.shift()!.pairs);
  }

  private exec(actions: PrimaryAction[]): void {
    this.ackInput();
    for (const a of actions) {
      switch (a.t) {
        case 'send':
          if (a.frame.type === FrameType.HEARTBEAT) this.metrics.heartbeats.inc({ direction: 'out' });
          if (this.conn?.isOpen && !this.conn.send(a.frame)) this.conn.close('channel send buffer full');
          break;
        case 'release':
          if (this.opts.testOnlyDriverBreak === 'release-unheld') break; // TEST ONLY: released already
          this.metrics.outputsReleased(a.outputs.length, this.clock.now());
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
        case 'claim': {
          if (this.claimStartMs === null) {
            // A failover starts: the backup has been silent since lastHeardMs.
            const now = this.clock.now();
            this.claimStartMs = now;
            this.metrics.phase('detect', now - this.lastHeardMs);
            const gone = this.core.status().claimCause;
            this.metrics.event({ kind: 'silence-detected', side: 'primary', epoch: a.epoch, phaseMs: now - this.lastHeardMs, detail: gone ?? 'the backup is silent' });
          }
          void claimAt(this.opts, a.epoch, this.log).then((r) => {
            if (r.t === 'claim-result' && this.claimStartMs !== null) {
              const ms = this.clock.now() - this.claimStartMs;
              if (r.won) {
                this.metrics.phase('claim', ms);
                this.metrics.event({ kind: 'claim-won', side: 'primary', epoch: r.epoch, phaseMs: ms });
              } else {
                this.metrics.failovers.inc({ side: 'primary', outcome: 'halted' });
                this.metrics.event({ kind: 'claim-lost', side: 'primary', epoch: r.epoch, phaseMs: ms, detail: `the VM belongs to ${r.owner}` });
              }
            }
            this.exec(this.core.step(r));
          });
          break;
        }
        case 'went-alone':
          if (this.claimStartMs !== null) {
            this.metrics.phase('go_live', 0);
            this.metrics.failovers.inc({ side: 'primary', outcome: 'went-alone' });
            this.metrics.event({ kind: 'live', side: 'primary', epoch: a.epoch, phaseMs: 0, detail: 'serving alone' });
            this.claimStartMs = null;
          }
          this.metrics.resetHeld();
          this.log.warn({ epoch: a.epoch, reason: a.reason }, 'the backup is gone: continuing alone');
          this.dialer?.close();
          this.dialer = undefined;
          this.conn?.close('running alone');
          this.scheduleRecruit(0);
          break;
        case 'halt':
          this.haltNode(a.reason);
          break;
        case 'arm':
          if (this.join) this.join.phase = 'arming';
          void this.arm(a.epoch);
          break;
        case 'armed': {
          const j = this.join;
          if (j) {
            const totalMs = this.clock.now() - j.startedMs;
            this.lastJoin = { ...j, totalMs };
            this.log.warn({ standby: j.standby, epoch: a.epoch, pauseMs: +j.pauseMs.toFixed(2), totalMs: Math.round(totalMs), memoryBytes: j.totalBytes }, 'redundancy restored: the new backup is armed');
            this.metrics.rereplications.inc({ outcome: 'armed' });
            this.metrics.rereplicationSeconds.observe(totalMs / 1000);
            // The phase this ends: the joiner catching up with the log, then the arbiter's advance.
            this.metrics.event({ kind: 'armed', side: 'primary', epoch: a.epoch, phaseMs: this.clock.now() - (this.streamedAtMs ?? j.startedMs), detail: `${j.standby} is the backup (${Math.round(totalMs)} ms from recruiting)` });
            // From here on the new backup is dialed like any backup: a cut connection is redialed and
            // resumes from the backup's position (instead of ending in a failover).
            if (this.conn) {
              const [host, port] = splitHostPort(j.channel);
              this.dialer = this.newDialer({ host, port: Number(port) });
              this.dialer.adopt(this.conn);
            }
          }
          this.join = null;
          break;
        }
        case 'join-abandoned':
          this.endJoin(a.reason);
          break;
      }
    }
  }

  /** Arms the pair: the VM's record moves to the next epoch, still ours (arbiter.advance). */
  private async arm(epoch: number): Promise<void> {
    const o = this.opts;
    const deadline = { deadlineMs: o.timings.arbiterDeadlineMs };
    if (!o.arbiter) {
      this.exec(this.core.step({ t: 'arm-result', ok: false, epoch, fenced: false, reason: 'no arbiter' }));
      return;
    }
    try {
      if (await o.arbiter.advance(o.config.name, epoch, o.nodeId, deadline)) {
        this.exec(this.core.step({ t: 'arm-result', ok: true, epoch: epoch + 1, fenced: false, reason: '' }));
        return;
      }
      const rec = await o.arbiter.read(o.config.name, deadline);
      // An earlier advance of ours (one that timed out, then committed) already moved the record on.
      if (rec !== null && rec.epoch === epoch + 1 && rec.owner === o.nodeId) {
        this.exec(this.core.step({ t: 'arm-result', ok: true, epoch: epoch + 1, fenced: false, reason: '' }));
        return;
      }
      this.exec(this.core.step({ t: 'arm-result', ok: false, epoch, fenced: true, reason: `the arbiter's record is ${JSON.stringify(rec)}, not {epoch ${epoch}, owner ${o.nodeId}}` }));
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'arming the new backup: the arbiter is unreachable; retrying');
      this.exec(this.core.step({ t: 'arm-result', ok: false, epoch, fenced: false, reason: (err as Error).message }));
    }
  }

  /**
   * Planned switchover: stop the guest at an idle point, wait until the backup acknowledged every entry
   * (so every held output has been released), then hand over: the backup consumes the log and goes
   * live without waiting for a failure timeout.
   */
  async switchover(): Promise<Record<string, unknown>> {
    const conn = this.conn;
    if (!conn?.isOpen || !this.vcpu || this.core.status().alone) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'no armed backup to switch over to');
    this.switchingOver = true;
    this.vcpu.stop();
    const done = await this.vcpu.done;
    const until = this.clock.now() + 10_000;
    while (this.core.status().ackedSeq < this.core.status().nextSeq) {
      if (this.clock.now() > until) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'the backup did not acknowledge the whole log within 10 s; switchover abandoned (this primary is stopped)');
      await this.clock.sleep(5);
    }
    conn.send({ type: FrameType.CONTROL, epoch: this.core.status().epoch, kind: ControlKind.SWITCHOVER, reason: 'ftvm switchover' });
    this.log.warn({ instructionNumber: done.count, entries: this.core.status().nextSeq }, 'switchover: the backup takes over from here');
    this.clock.after(100, () => void this.stop().finally(() => this.opts.onHalt?.('stopped by ftvm switchover')));
    return { switchedOver: true, instructionNumber: done.count, entries: this.core.status().nextSeq };
  }

  private switchingOver = false;
  private halting = false;
  private haltNode(reason: string): void {
    if (this.halting) return;
    this.halting = true;
    this.log.error({ reason }, 'primary halted: releasing nothing more');
    this.metrics.event({ kind: 'halted', side: 'primary', epoch: this.core.status().epoch, detail: reason });
    this.vcpu?.setThrottle(true);
    void this.stop().finally(() => this.opts.onHalt?.(reason));
  }

  status(): Record<string, unknown> {
    const s = this.core.status();
    const j = this.join;
    let backup: string;
    if (s.peer && !s.alone) backup = 'connected';
    else if (j) backup = `joining: ${j.standby} (${j.phase}${j.phase === 'transferring' ? ` ${Math.round((100 * j.sentBytes) / Math.max(1, j.totalBytes))}%` : ''})`;
    else if (!s.alone) backup = 'disconnected';
    else if (this.recruits) backup = `none: serving alone (${this.recruitNote || 'looking for a standby'})`;
    else backup = this.opts.adopt ? 'none (redundancy lost: this node went live; no standby pool configured)' : this.opts.peer ? 'none (the backup is gone: serving alone)' : 'none (FT off)';
    return {
      role: s.halted ? 'halted' : 'primary',
      serving: this.serving && !this.stopped && !s.halted,
      service: `${this.opts.service.host}:${this.opts.service.port}`,
      alone: s.alone,
      claiming: s.claiming,
      halted: s.halted,
      vm: this.opts.config.name,
      epoch: s.epoch,
      instructionNumber: Math.max(this.vcpu?.count ?? 0, s.instructionNumber),
      backup,
      standby: this.join ? { host: this.join.standby, channel: this.join.channel, phase: this.join.phase, sentBytes: this.join.sentBytes, totalBytes: this.join.totalBytes } : null,
      lastRereplication: this.lastJoin ? { standby: this.lastJoin.standby, pauseMs: this.lastJoin.pauseMs, totalMs: this.lastJoin.totalMs, memoryBytes: this.lastJoin.totalBytes } : null,
      backupInstructionNumber: s.backupInstructionNumber,
      lagMs: s.lagMs,
      logBytesPerSec: Math.round(this.rate.perSecond()),
      logBytesSent: s.logBytesSent,
      entries: s.nextSeq,
      ackedEntries: s.ackedSeq,
      outputsHeld: s.outputsHeld,
      throttled: s.throttled,
      clients: this.service.openConnections,
      clientsPausedForInput: this.service.pausedConnections,
      lastVerifiedByBackup: this.lastVerified,
      backupDiverged: this.diverged,
      ...securityStatus(this.opts),
    };
  }

  /** Logs a state hash at the guest's next idle point; resolves with it. */
  stateHash(timeoutMs = 10_000): Promise<{ n: number; hash: string }> {
    return new Promise((resolve, reject) => {
      const t = this.clock.after(timeoutMs, () => reject(new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'no idle point within the timeout')));
      this.hashWaiters.push((h) => {
        t.cancel();
        resolve(h);
      });
      this.vcpu!.requestStateHash();
    });
  }

  /** The control endpoint's requests (also reached through a backup or standby that went live). */
  async handleControl(method: string, path: string): Promise<unknown> {
    if (method === 'GET' && path === '/status') return this.status();
    if (path === '/metrics' || path === '/timeline') return observabilityRoute(this.metrics, method, path);
    if (method === 'POST' && path === '/state-hash') return this.stateHash();
    if (method === 'GET' && path === '/state-hash') return this.lastVerified;
    if (method === 'POST' && path === '/switchover') return this.switchover();
    if (method === 'POST' && path === '/stop') {
      // An intentional stop: tell the backup not to go live, then stop.
      if (this.conn?.isOpen) this.conn.send({ type: FrameType.CONTROL, epoch: this.core.status().epoch, kind: ControlKind.STOP, reason: 'ftvm stop' });
      this.clock.after(50, () => void this.stop().finally(() => this.opts.onHalt?.('stopped by ftvm stop')));
      return { stopping: true };
    }
    return undefined;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.ticker?.cancel();
    this.recruitTimer?.cancel();
    this.poolTimer?.cancel();
    this.joinConnectTimer?.cancel();
    this.dialer?.close();
    this.conn?.close('shutting down');
    await this.service.close();
    await this.control?.close();
    if (this.vcpu) {
      this.vcpu.stop();
      await Promise.race([this.vcpu.done.catch(() => undefined), this.clock.sleep(2000)]);
      await this.vcpu.terminate();
    }
  }
}

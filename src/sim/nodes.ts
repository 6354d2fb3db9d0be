/**
 * The simulated processes and their drivers. Each driver mirrors the real one step for step, so that a
 * failure the simulator finds is a failure of the cores or of the logic the real nodes have, not of a
 * different driver:
 *
 * - PrimaryDriver   = src/replication/primary-node.ts PrimaryNode (dial the backup; start ticker, guest
 *   and service after the first connection; tick → step; vCPU batch → step(tick) + step(log); every
 *   PrimaryAction; recruit a standby from the arbiter's pool while alone, snapshot at an idle point with
 *   join-begin where the snapshot is taken, stream it, peer-open at the snapshot's seq, arm with
 *   advance (+ read on false), ARMED, join-abandoned → endJoin). A backup gone live runs one too, on
 *   the replica's vCPU (adopt).
 * - BackupDriver    = src/replication/node.ts BackupNode (one primary at a time; frame →
 *   step(replica-progress) + step(frame); ACKs coalesced per read; tick → replica-progress, tick,
 *   drained check; every BackupAction; go-live when the replica takes over; a joiner's abandon/armed).
 * - StandbyDriver   = src/replication/standby.ts StandbyNode (pool registration with a lease, renewals,
 *   receiving a clone, restoring it into a joined BackupDriver, returning to the pool).
 * - Listener/Dialer = src/channel/endpoints.ts ChannelListener/ChannelDialer.
 *
 * Left out on purpose: logging, status and control endpoints, switchover and stop (not driven), the
 * send-buffer bound (never reached), the snapshot codec (the snapshot is one message of the guest's
 * memory size).
 */
import { FrameType, type Frame } from '../channel/frames.js';
import type { StandbyRecord } from '../arbiter/arbiter.js';
import type { WireOutput } from '../machine/vcpu-protocol.js';
import { BackupCore, type BackupAction } from '../replication/backup.js';
import { PrimaryCore, type PrimaryAction, type PrimaryConfig } from '../replication/primary.js';
import type { ArbiterOp, ArbiterReply } from './arbiter.js';
import { batchEntries, GuestState, type Op } from './guest.js';
import type { End, Hello, Identity, Network } from './net.js';
import type { Prng } from './prng.js';
import { primaryCoreConfig as nodePrimaryCoreConfig, type Timings } from '../replication/node-common.js';
import { RecordVcpu, ReplayVcpu, type BatchEvent, type VcpuHost } from './vcpu.js';

/** The nodes' timings (node-common.ts Timings; no state hashes here) and what else the drivers take. */
export interface SimTimings extends Omit<Timings, 'stateHashIntervalMs'> {
  /** PrimaryOptions.unackedMaxBytes / heldMaxOutputs. */
  unackedMaxBytes: number;
  heldMaxOutputs: number;
  /** StandbyOptions.leaseTtlMs. */
  leaseTtlMs: number;
  /** The guest's memory: the size of a snapshot. */
  memoryBytes: number;
}

/** run-cmds.ts RECRUIT_INTERVAL_MS. */
const RECRUIT_INTERVAL_MS = 250;
/** primary-node.ts SNAPSHOT_SEND_WINDOW_BYTES: the stream loop ends this far ahead of the wire. */
const SNAPSHOT_SEND_WINDOW_BYTES = 4 * 1024 * 1024;
/** standby.ts recruitedWaitMs default. */
const RECRUITED_WAIT_MS = 5000;

export type BreakMode = 'release-before-ack' | 'skip-drain';

export interface Timer {
  cancel(): void;
}

/** What the drivers need from the world. */
export interface WorldApi {
  readonly rng: Prng;
  readonly t: SimTimings;
  readonly net: Network;
  readonly breakMode: BreakMode | undefined;
  now(): number;
  /** Runs fn after delayMs on proc (deferred while it is paused, dropped once it is dead). */
  later(proc: Proc, delayMs: number, fn: () => void, kind?: 'tick'): Timer;
  /** At the end of the current event (queueMicrotask). */
  microtask(fn: () => void): void;
  newEntryId(): number;
  /** net.connect to `host`'s channel listener; the dialer's HELLO goes out now. */
  dial(proc: Proc, host: number, identity: () => Identity): End;
  /** One arbiter call with its deadline; null: FTVM_ERR_ARBITER_UNAVAILABLE. */
  arbiter(proc: Proc, op: ArbiterOp, cb: (r: ArbiterReply | null) => void): void;
  released(proc: Proc, outputs: WireOutput[]): void;
  /** A node became the VM's recording primary alone at `epoch` (went alone, or went live). */
  wentLive(proc: Proc, epoch: number): void;
  /** The process exits (onHalt → process.exit). */
  exit(proc: Proc, reason: string): void;
  replicaSpeed(): number;
  trace(proc: Proc | null, msg: () => string): void;
  /** Counts an event for the run's statistics. */
  count(what: 'armed'): void;
  fail(msg: string): never;
}

/** One process incarnation on a host (`ftvm run --role primary|backup` or `ftvm standby`). */
export class Proc {
  dead = false;
  paused = false;
  deferred: Array<{ fn: () => void; kind: 'tick' | 'other' }> = [];
  root: PrimaryDriver | BackupDriver | StandbyDriver | null = null;
  listener: Listener | undefined;
  /** Arbiter calls whose outcome this process has not learnt yet. */
  arbiterInFlight = 0;
  /** Arbiter requests on their way (they may still commit, even after the call gave up). */
  arbiterRequests = 0;
  /** Client connections served here: conn id → client index. */
  readonly clientConns = new Map<number, number>();

  constructor(
    readonly id: string,
    readonly host: number,
    readonly hostId: string,
  ) {}

  /** The recording driver of this process, if it records (primary, or a replica gone live). */
  recorder(): PrimaryDriver | undefined {
    const r = this.root;
    if (r instanceof PrimaryDriver) return r;
    if (r instanceof BackupDriver) return r.live;
    return r?.backup?.live;
  }

  /** The replaying driver, if this process is a backup (or a joiner) that has not gone live. */
  replica(): BackupDriver | undefined {
    const r = this.root;
    const b = r instanceof BackupDriver ? r : r instanceof StandbyDriver ? r.backup ?? undefined : undefined;
    return b && !b.live && !b.finished ? b : undefined;
  }
}

function vcpuHost(w: WorldApi, proc: Proc): VcpuHost {
  return { now: () => w.now(), later: (d, fn) => void w.later(proc, d, fn), newEntryId: () => w.newEntryId() };
}

/** node-common.ts primaryCoreConfig (with PrimaryOptions' unackedMaxBytes and heldMaxOutputs). */
function primaryCoreConfig(w: WorldApi, epoch: number, alone: boolean): PrimaryConfig {
  return {
    ...nodePrimaryCoreConfig(w.t, epoch, alone),
    unackedMaxBytes: w.t.unackedMaxBytes,
    heldMaxOutputs: w.t.heldMaxOutputs,
    ...(w.breakMode === 'release-before-ack' ? { testOnlyBreak: 'release-before-ack' as const } : {}),
  };
}

type ClaimInput = { t: 'claim-result'; won: boolean; epoch: number; owner: string } | { t: 'claim-failed'; reason: string };

/** node-common.ts claimAt: one arbiter claim mapped to a core input. */
function claimAt(w: WorldApi, proc: Proc, epoch: number, cb: (r: ClaimInput) => void): void {
  w.arbiter(proc, { op: 'claim', epoch, claimant: proc.id }, (r) => {
    if (r === null || r.op !== 'claim') cb({ t: 'claim-failed', reason: 'FTVM_ERR_ARBITER_UNAVAILABLE' });
    else cb({ t: 'claim-result', won: r.won, epoch: r.record.epoch, owner: r.record.owner });
  });
}

// ------------------------------------------------------------------------------------ endpoints

/**
 * endpoints.ts ChannelListener: one connection at a time; an authenticated newcomer replaces the old
 * (unless `replaceCurrent` is false: a standby decides itself, so a clone in transfer is not cut).
 */
export class Listener {
  open = true;
  private current: End | undefined;

  constructor(
    private readonly net: Network,
    readonly identity: () => Identity,
    private readonly onConnection: (c: End, hello: Hello) => void,
    private readonly replaceCurrent = true,
  ) {}

  accept(c: End): void {
    c.identity = this.identity;
    c.onOpen = (hello) => {
      if (this.replaceCurrent && this.current && this.current !== c) this.net.closeLocal(this.current, 'replaced by a new connection from the primary');
      this.current = c;
      this.onConnection(c, hello);
    };
    c.onceClose(() => {
      if (this.current === c) this.current = undefined;
    });
  }

  close(): void {
    this.open = false;
    if (this.current) this.net.closeLocal(this.current, 'shutting down');
  }
}

/** endpoints.ts ChannelDialer: redials with backoff (20 ms doubling to 1 s) whenever not connected. */
class Dialer {
  current: End | undefined;
  private stopped = false;
  private timer: Timer | undefined;
  private backoffMs = 20;

  constructor(
    private readonly w: WorldApi,
    private readonly proc: Proc,
    readonly target: number,
    private readonly identity: () => Identity,
    private readonly onConnection: (c: End, hello: Hello) => void,
  ) {}

  start(): void {
    this.dial();
  }

  private dial(): void {
    if (this.stopped) return;
    const c = this.w.dial(this.proc, this.target, this.identity);
    c.onOpen = (hello) => {
      this.backoffMs = 20;
      this.current = c;
      this.onConnection(c, hello);
    };
    c.onceClose(() => {
      if (this.current === c) this.current = undefined;
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.stopped || this.timer) return;
    this.timer = this.w.later(this.proc, this.backoffMs, () => {
      this.timer = undefined;
      this.dial();
    });
    this.backoffMs = Math.min(this.backoffMs * 2, 1000);
  }

  /** Takes an open connection as the current one: when it closes, the dialer redials. */
  adopt(c: End): void {
    this.stopped = false;
    this.current = c;
    c.onceClose(() => {
      if (this.current === c) this.current = undefined;
      this.schedule();
    });
  }

  /** Stops redialing; the current connection (if any) stays open and is the caller's now. */
  detach(): void {
    this.stopped = true;
    this.timer?.cancel();
    this.current = undefined;
  }

  close(): void {
    this.stopped = true;
    this.timer?.cancel();
    if (this.current) this.w.net.closeLocal(this.current, 'shutting down');
  }
}

// ------------------------------------------------------------------------------------ primary

interface JoinProgress {
  standby: string;
  host: number;
  phase: 'connecting' | 'snapshot' | 'transferring' | 'catching-up' | 'arming';
  snapshotSeq: number;
}

export interface PrimaryOpts {
  epoch: number;
  /** The backup's host; absent: alone from the start (recruits from the pool). */
  peerHost?: number;
  /** A backup gone live hands over its guest (the vCPU, already recording) from entry `firstSeq`. */
  adopt?: { state: GuestState; firstSeq: number };
}

export class PrimaryDriver {
  readonly core: PrimaryCore;
  vcpu: RecordVcpu | undefined;
  private dialer: Dialer | undefined;
  conn: End | undefined;
  private ticker: Timer | undefined;
  join: JoinProgress | null = null;
  private recruitTimer: Timer | undefined;
  private recruiting = false;
  private joinConnectTimer: Timer | undefined;
  private readonly refusedUntil = new Map<string, number>();
  private stopped = false;
  private halting = false;
  serviceOpen = false;
  /** Simulation metadata: the epoch this node won alone (a claim, or go-live), for the output-rule checker. */
  soleEpoch = -1;
  private readonly identity: () => Identity;

  constructor(
    private readonly w: WorldApi,
    readonly proc: Proc,
    private readonly opts: PrimaryOpts,
  ) {
    const firstSeq = opts.adopt?.firstSeq;
    this.core = new PrimaryCore({ ...primaryCoreConfig(w, opts.epoch, opts.peerHost === undefined), ...(firstSeq !== undefined ? { firstSeq } : {}) });
    const core = this.core;
    this.identity = () => ({ role: 'primary', epoch: core.status().epoch, nextSeq: core.status().ackedSeq });
    if (opts.adopt) {
      this.soleEpoch = opts.epoch;
      this.attachVcpu(opts.adopt.state);
    }
  }

  start(): void {
    const o = this.opts;
    if (o.peerHost !== undefined) {
      // PrimaryNode.start: the guest starts after the first connection (a microtask after it).
      let first = true;
      this.dialer = new Dialer(this.w, this.proc, o.peerHost, this.identity, (c, h) => {
        this.onConnection(c, h);
        if (first) {
          first = false;
          this.w.microtask(() => this.afterFirstConnection());
        }
      });
      this.dialer.start();
      return;
    }
    this.afterFirstConnection();
  }

  /** PrimaryNode.start after `await first`: heartbeats, then the guest, then the service. */
  private afterFirstConnection(): void {
    if (this.stopped) return;
    this.ticker = this.w.later(this.proc, this.w.t.tickMs, () => this.tick(), 'tick');
    if (!this.opts.adopt) this.attachVcpu(new GuestState());
    this.serviceOpen = true;
    if (this.core.status().alone) this.scheduleRecruit(0);
  }

  private newDialer(host: number): Dialer {
    return new Dialer(this.w, this.proc, host, this.identity, (c, h) => this.onConnection(c, h));
  }

  private attachVcpu(state: GuestState): void {
    this.vcpu = new RecordVcpu(state, 1000, vcpuHost(this.w, this.proc), (b) => this.onBatch(b));
  }

  private onBatch(b: BatchEvent): void {
    this.exec(this.core.step({ t: 'tick', nowMs: this.w.now() })); // lag samples carry the real time
    this.exec(this.core.step({ t: 'log', firstSeq: b.firstSeq, count: b.count, bytes: b.entries, instructionNumber: b.instructionNumber, outputs: b.outputs }));
  }

  clientInput(conn: number, req: number, op: Op): void {
    if (!this.serviceOpen) return;
    this.vcpu?.input(conn, req, op);
  }

  private onConnection(c: End, hello: Hello): void {
    if (hello.role === 'standby') {
      if (this.join === null || this.join.phase !== 'connecting' || !this.core.status().alone) {
        this.w.net.closeLocal(c, 'no join expected from this standby now');
        return;
      }
      this.startJoin(c);
      return;
    }
    this.onPeer(c, hello);
  }

  private wire(c: End): void {
    if (this.conn) this.w.net.closeLocal(this.conn, 'replaced');
    this.conn = c;
    c.on((m) => {
      if (m.k === 'frame') this.exec(this.core.step({ t: 'frame', frame: m.frame }));
    });
    c.onceRefused(() => {
      if (this.join) this.refusedUntil.set(this.join.standby, this.w.now() + 30_000);
    });
    c.onceClose((reason) => {
      if (this.conn === c) {
        this.conn = undefined;
        this.w.trace(this.proc, () => `backup disconnected: ${reason}`);
        this.exec(this.core.step({ t: 'peer-closed' }));
      }
    });
  }

  private onPeer(c: End, hello: Hello): void {
    this.wire(c);
    this.w.trace(this.proc, () => `backup connected (it expects entry ${hello.nextSeq})`);
    this.exec(this.core.step({ t: 'peer-open', backupNextSeq: hello.nextSeq }));
  }

  // ---------------------------------------------------------------- re-replication

  private scheduleRecruit(delayMs: number): void {
    if (this.stopped || this.recruitTimer) return;
    this.recruitTimer = this.w.later(this.proc, delayMs, () => {
      this.recruitTimer = undefined;
      this.recruit();
    });
  }

  /** Picks a free standby from the pool (never one on this host) and dials it. */
  private recruit(): void {
    const s = this.core.status();
    if (this.recruiting || this.stopped || s.halted !== null || !s.alone || this.join !== null) return;
    this.recruiting = true;
    const done = (): void => {
      this.recruiting = false;
      if (this.join === null) this.scheduleRecruit(RECRUIT_INTERVAL_MS);
    };
    this.w.arbiter(this.proc, { op: 'list' }, (r) => {
      if (r === null || r.op !== 'list') return done();
      const now = this.w.now();
      const candidates = r.standbys.filter((p) => p.state === 'free' && p.hostId !== this.proc.hostId && (this.refusedUntil.get(p.hostId) ?? 0) < now);
      const tryNext = (i: number): void => {
        const c = candidates[i];
        if (c === undefined) return done();
        this.w.arbiter(this.proc, { op: 'recruit', hostId: c.hostId, owner: this.proc.id, epoch: this.core.status().epoch }, (rr) => {
          if (rr === null || rr.op !== 'recruit') return done(); // the catch: an unreachable arbiter ends this round
          if (rr.standby) {
            this.connectStandby(rr.standby);
            return done();
          }
          tryNext(i + 1);
        });
      };
      tryNext(0);
    });
  }

  private connectStandby(s: StandbyRecord): void {
    const host = Number(s.channel);
    this.join = { standby: s.hostId, host, phase: 'connecting', snapshotSeq: -1 };
    this.w.trace(this.proc, () => `recruited the standby ${s.hostId}: cloning this VM to it`);
    this.dialer?.close();
    this.dialer = this.newDialer(host);
    this.dialer.start();
    this.joinConnectTimer = this.w.later(this.proc, Math.max(3000, this.w.t.arbiterDeadlineMs), () => {
      if (this.join?.phase === 'connecting') this.endJoin(`the standby ${s.hostId} did not answer`);
    });
  }

  /** The standby answered: snapshot at the next idle point, stream it, then the log from there. */
  private startJoin(c: End): void {
    const j = this.join!;
    this.joinConnectTimer?.cancel();
    this.dialer?.detach(); // this connection carries the join
    this.dialer = undefined;
    this.wire(c);
    j.phase = 'snapshot';
    this.vcpu!.takeSnapshot((snap) => {
      this.exec(this.core.step({ t: 'join-begin', snapshotSeq: snap.seq }));
      // The rest of startJoin runs after the await (a microtask later).
      this.w.microtask(() => this.streamSnapshot(c, j, snap));
    });
  }

  private streamSnapshot(c: End, j: JoinProgress, snap: GuestState): void {
    j.snapshotSeq = snap.seq;
    if (!c.isOpen || this.join !== j) {
      this.exec(this.core.step({ t: 'join-abort', reason: 'the standby disconnected before the snapshot was sent' }));
      return;
    }
    j.phase = 'transferring';
    const epoch = this.core.status().epoch;
    const bytes = this.w.t.memoryBytes;
    this.w.net.send(c, { k: 'snapshot', state: snap, epoch, bytes }, bytes);
    // The stream loop returns once all but the last send window is on the wire.
    const loopMs = Math.max(0, bytes - SNAPSHOT_SEND_WINDOW_BYTES) / 1e6 + 0.05;
    this.w.later(this.proc, loopMs, () => {
      if (!c.isOpen || this.join !== j) {
        if (this.join === j) this.exec(this.core.step({ t: 'join-abort', reason: 'the transfer was cut' }));
        return;
      }
      j.phase = 'catching-up';
      this.exec(this.core.step({ t: 'peer-open', backupNextSeq: j.snapshotSeq }));
    });
  }

  /** Ends a join attempt: close its connection and try again later (another standby, or the same). */
  private endJoin(reason: string): void {
    if (this.join === null) return;
    this.joinConnectTimer?.cancel();
    this.w.trace(this.proc, () => `the join failed (${reason}); serving alone, will recruit again`);
    this.join = null;
    this.dialer?.close();
    this.dialer = undefined;
    if (this.conn) this.w.net.closeLocal(this.conn, reason);
    this.scheduleRecruit(500);
  }

  // ---------------------------------------------------------------- actions

  private tick(): void {
    if (this.stopped) return;
    this.exec(this.core.step({ t: 'tick', nowMs: this.w.now() }));
    if (!this.stopped) this.ticker = this.w.later(this.proc, this.w.t.tickMs + this.w.rng.range(0, this.w.t.tickMs * 0.3), () => this.tick(), 'tick');
  }

  exec(actions: PrimaryAction[]): void {
    for (const a of actions) {
      switch (a.t) {
        case 'send':
          if (this.conn?.isOpen) this.w.net.send(this.conn, { k: 'frame', frame: a.frame }, frameBytes(a.frame));
          break;
        case 'release':
          this.w.released(this.proc, a.outputs);
          break;
        case 'throttle':
          this.vcpu?.setThrottle(a.on);
          break;
        case 'drop-peer':
          this.w.trace(this.proc, () => `dropping the backup: ${a.reason}`);
          if (this.conn) this.w.net.closeLocal(this.conn, a.reason);
          break;
        case 'backup-diverged':
          this.w.fail(`the backup reported a divergence: ${a.reason}`);
          break;
        case 'hash-verified':
          break;
        case 'claim':
          this.w.trace(this.proc, () => `claims epoch ${a.epoch}`);
          claimAt(this.w, this.proc, a.epoch, (r) => this.exec(this.core.step(r)));
          break;
        case 'went-alone':
          this.w.trace(this.proc, () => `the backup is gone: continuing alone at epoch ${a.epoch}`);
          this.dialer?.close();
          this.dialer = undefined;
          if (this.conn) this.w.net.closeLocal(this.conn, 'running alone');
          this.soleEpoch = a.epoch;
          this.w.wentLive(this.proc, a.epoch);
          this.scheduleRecruit(0);
          break;
        case 'halt':
          this.haltNode(a.reason);
          break;
        case 'arm':
          if (this.join) this.join.phase = 'arming';
          this.arm(a.epoch);
          break;
        case 'armed':
          this.w.trace(this.proc, () => `redundancy restored: the new backup is armed at epoch ${a.epoch}`);
          this.w.count('armed');
          // PrimaryNode: the new backup is dialed like any backup from here on (a cut is redialed).
          if (this.join && this.conn) {
            this.dialer = this.newDialer(this.join.host);
            this.dialer.adopt(this.conn);
          }
          this.join = null;
          break;
        case 'join-abandoned':
          this.endJoin(a.reason);
          break;
      }
    }
  }

  /** PrimaryNode.arm: arbiter.advance; on false, read the record: ours at epoch + 1 → armed, else fenced. */
  private arm(epoch: number): void {
    this.w.arbiter(this.proc, { op: 'advance', epoch, owner: this.proc.id }, (r) => {
      if (r === null || r.op !== 'advance') {
        this.exec(this.core.step({ t: 'arm-result', ok: false, epoch, fenced: false, reason: 'FTVM_ERR_ARBITER_UNAVAILABLE' }));
        return;
      }
      if (r.ok) {
        this.exec(this.core.step({ t: 'arm-result', ok: true, epoch: epoch + 1, fenced: false, reason: '' }));
        return;
      }
      this.w.arbiter(this.proc, { op: 'read' }, (rr) => {
        if (rr === null || rr.op !== 'read') {
          this.exec(this.core.step({ t: 'arm-result', ok: false, epoch, fenced: false, reason: 'FTVM_ERR_ARBITER_UNAVAILABLE' }));
          return;
        }
        const rec = rr.record;
        if (rec !== null && rec.epoch === epoch + 1 && rec.owner === this.proc.id) {
          // An earlier advance of ours (timed out, then committed) already moved the record on.
          this.exec(this.core.step({ t: 'arm-result', ok: true, epoch: epoch + 1, fenced: false, reason: 'an earlier advance committed' }));
          return;
        }
        this.exec(this.core.step({ t: 'arm-result', ok: false, epoch, fenced: true, reason: `the arbiter's record is ${JSON.stringify(rec)}, not {epoch ${epoch}, owner ${this.proc.id}}` }));
      });
    });
  }

  private haltNode(reason: string): void {
    if (this.halting) return;
    this.halting = true;
    this.w.trace(this.proc, () => `primary halted: ${reason}`);
    this.vcpu?.setThrottle(true);
    this.stop();
    this.w.exit(this.proc, reason);
  }

  stop(): void {
    this.stopped = true;
    this.ticker?.cancel();
    this.recruitTimer?.cancel();
    this.joinConnectTimer?.cancel();
    this.dialer?.close();
    if (this.conn) this.w.net.closeLocal(this.conn, 'shutting down');
    this.serviceOpen = false;
    this.vcpu?.stop();
  }
}

function frameBytes(f: Frame): number {
  return f.type === FrameType.LOG ? 24 + f.batch.length : 24;
}

// ------------------------------------------------------------------------------------ backup

export interface BackupOpts {
  epoch: number;
  /** A joiner cloned from a running primary: its snapshot and the connection that carried it. */
  joined?: { state: GuestState; conn: End; identity: MutableIdentity };
  onAbandon?: (reason: string) => void;
  onArmed?: (epoch: number) => void;
}

/** connection.ts LocalIdentity as the nodes mutate it (a joiner's listener identity becomes a backup's). */
export interface MutableIdentity {
  get: () => Identity;
}

export class BackupDriver {
  readonly core: BackupCore;
  readonly vcpu: ReplayVcpu;
  private listener: Listener | undefined;
  conn: End | undefined;
  private ticker: Timer | undefined;
  private fedEntries: number;
  private draining = false;
  private pendingAck: Frame | undefined;
  live: PrimaryDriver | undefined;
  finished = false;
  readonly identity: MutableIdentity;

  constructor(
    private readonly w: WorldApi,
    readonly proc: Proc,
    private readonly opts: BackupOpts,
  ) {
    const j = opts.joined;
    this.core = new BackupCore({
      epoch: opts.epoch,
      heartbeatIntervalMs: w.t.heartbeatIntervalMs,
      failTimeoutMs: w.t.failTimeoutMs,
      claimRetryMs: w.t.arbiterDeadlineMs,
      ...(j ? { firstSeq: j.state.seq, armed: false } : {}),
      ...(w.breakMode === 'skip-drain' ? { testOnlyBreak: 'skip-drain' as const } : {}),
    });
    const state = j ? j.state : new GuestState();
    this.fedEntries = j?.state.seq ?? 0;
    this.vcpu = new ReplayVcpu(
      state,
      1000 * w.replicaSpeed(),
      vcpuHost(w, proc),
      (ev) => this.onLive(ev),
      (msg) => w.fail(`(c) ${msg}`),
    );
    const core = this.core;
    this.identity = j?.identity ?? { get: () => ({ role: 'backup', epoch: 0, nextSeq: 0 }) };
    // The channel's HELLO carries this backup's current epoch (it grows when a joiner is armed).
    this.identity.get = () => ({ role: 'backup', epoch: core.status().epoch, nextSeq: core.expectedSeq });
    if (j) {
      this.ticker = w.later(proc, w.t.tickMs, () => this.tick(), 'tick');
      this.acceptPeer(j.conn);
    }
  }

  start(): void {
    if (this.opts.joined) return;
    this.listener = new Listener(
      this.w.net,
      () => this.identity.get(),
      (c) => this.acceptPeer(c),
    );
    this.proc.listener = this.listener;
    this.ticker = this.w.later(this.proc, this.w.t.tickMs * this.w.rng.float(), () => this.tick(), 'tick');
  }

  /** A primary connected (authenticated, HELLO checked). */
  acceptPeer(c: End): void {
    if (this.live || this.finished) {
      this.w.net.closeLocal(c, 'this node is no longer a backup');
      return;
    }
    if (this.conn && this.conn !== c) this.w.net.closeLocal(this.conn, 'replaced by a new connection from the primary');
    this.conn = c;
    this.w.trace(this.proc, () => 'primary connected');
    c.on((m) => {
      if (m.k !== 'frame') return;
      // Report the replica's freshest position with the ACK this frame triggers.
      this.exec(this.core.step({ t: 'replica-progress', instructionNumber: this.vcpu.count }));
      this.exec(this.core.step({ t: 'frame', frame: m.frame }));
    });
    c.onceClose((reason) => {
      if (this.conn === c) {
        this.conn = undefined;
        this.w.trace(this.proc, () => `primary disconnected: ${reason}`);
        this.exec(this.core.step({ t: 'peer-closed' }));
      }
    });
    this.exec(this.core.step({ t: 'peer-open', nowMs: this.w.now() }));
  }

  private tick(): void {
    if (this.live || this.finished) return;
    this.exec(this.core.step({ t: 'replica-progress', instructionNumber: this.vcpu.count }));
    this.exec(this.core.step({ t: 'tick', nowMs: this.w.now() }));
    if (this.draining && this.vcpu.drained && this.vcpu.entries >= this.fedEntries) {
      this.draining = false;
      this.exec(this.core.step({ t: 'drained' }));
    }
    if (!this.live && !this.finished) this.ticker = this.w.later(this.proc, this.w.t.tickMs + this.w.rng.range(0, this.w.t.tickMs * 0.3), () => this.tick(), 'tick');
  }

  /** ACKs are cumulative: of several produced while handling one socket read, only the last is sent. */
  private sendAck(f: Frame): void {
    const first = this.pendingAck === undefined;
    this.pendingAck = f;
    if (!first) return;
    this.w.microtask(() => {
      const ack = this.pendingAck;
      this.pendingAck = undefined;
      if (ack && this.conn?.isOpen) this.w.net.send(this.conn, { k: 'frame', frame: ack }, 24);
    });
  }

  private exec(actions: BackupAction[]): void {
    for (const a of actions) {
      switch (a.t) {
        case 'send':
          if (a.frame.type === FrameType.ACK) this.sendAck(a.frame);
          else if (this.conn?.isOpen) this.w.net.send(this.conn, { k: 'frame', frame: a.frame }, 24);
          break;
        case 'feed': {
          this.fedEntries += a.count;
          const entries = batchEntries.get(a.batch);
          if (entries === undefined) this.w.fail('a LOG frame carried an unknown batch');
          this.vcpu.feedLog(entries);
          break;
        }
        case 'grant':
          this.vcpu.grantTo(a.instructionNumber);
          break;
        case 'drop-peer':
          this.w.trace(this.proc, () => `dropping the primary connection: ${a.reason}`);
          if (this.conn) this.w.net.closeLocal(this.conn, a.reason);
          break;
        case 'halt':
          this.w.trace(this.proc, () => `backup halted: ${a.reason}`);
          this.vcpu.stop();
          this.stop();
          this.w.exit(this.proc, a.reason);
          break;
        case 'drain':
          this.w.trace(this.proc, () => `primary silent: drains (${a.reason})`);
          this.draining = true;
          break;
        case 'claim':
          this.w.trace(this.proc, () => `claims epoch ${a.epoch}`);
          claimAt(this.w, this.proc, a.epoch, (r) => this.exec(this.core.step(r)));
          break;
        case 'go-live':
          this.goLive(a.epoch, a.testOnlyAbandonHeld === true);
          break;
        case 'armed':
          this.w.trace(this.proc, () => `armed: now the VM's backup at epoch ${a.epoch}`);
          this.opts.onArmed?.(a.epoch);
          break;
        case 'abandon':
          this.w.trace(this.proc, () => `the join was abandoned before the pair was armed: ${a.reason}`);
          this.finished = true;
          if (this.conn) this.w.net.closeLocal(this.conn, a.reason);
          this.stop();
          this.opts.onAbandon?.(a.reason);
          break;
      }
    }
  }

  /** Won the claim: the replica becomes a recording primary and starts serving clients. */
  private goLive(epoch: number, abandonHeld: boolean): void {
    this.w.trace(this.proc, () => `won epoch ${epoch}: going live`);
    this.listener?.close();
    if (this.conn) this.w.net.closeLocal(this.conn, 'this backup went live');
    this.liveEpoch = epoch;
    if (abandonHeld) this.vcpu.abandonHeld(); // TEST ONLY (testOnlyBreak 'skip-drain')
    this.vcpu.goLive();
  }

  private liveEpoch = -1;

  /** vcpu 'live': the PrimaryNode takes the vCPU over here (no batch after the go-live point is missed). */
  private onLive(ev: { count: number; seq: number }): void {
    this.w.trace(this.proc, () => `went live at instruction ${ev.count} after ${ev.seq} entries (epoch ${this.liveEpoch})`);
    const live = new PrimaryDriver(this.w, this.proc, { epoch: this.liveEpoch, adopt: { state: this.vcpu.state, firstSeq: ev.seq } });
    this.live = live;
    this.ticker?.cancel();
    this.w.wentLive(this.proc, this.liveEpoch);
    live.start();
  }

  stop(): void {
    this.finished = true;
    this.ticker?.cancel();
    this.live?.stop();
    this.listener?.close();
    if (!this.live) this.vcpu.stop();
  }
}

// ------------------------------------------------------------------------------------ standby

/** StandbyNode: in the VM's pool at the arbiter until a primary clones itself to it. */
export class StandbyDriver {
  readonly listener: Listener;
  private readonly identity: MutableIdentity = { get: () => ({ role: 'standby', epoch: 0, nextSeq: 0 }) };
  private receiving: { conn: End; hello: Hello } | null = null;
  backup: BackupDriver | null = null;
  private pooled: StandbyRecord | null = null;
  private renewTimer: Timer | undefined;
  private renewing = false;
  private leavePool = false;
  private recruitedSinceMs = 0;
  private stopped = false;

  constructor(
    private readonly w: WorldApi,
    readonly proc: Proc,
  ) {
    this.listener = new Listener(
      w.net,
      () => this.identity.get(),
      (c, h) => this.onConnection(c, h),
      false,
    );
  }

  start(): void {
    this.proc.listener = this.listener;
    this.register(true);
  }

  /** Registers (free) or renews; schedules the next renewal. An unreachable arbiter is retried. */
  private register(free: boolean): void {
    if (this.stopped || this.leavePool || this.renewing) return;
    this.renewing = true;
    const p = this.proc;
    this.w.arbiter(p, { op: 'register', hostId: p.hostId, channel: String(p.host), free, ttlMs: this.w.t.leaseTtlMs }, (r) => {
      this.renewing = false;
      if (r !== null && r.op === 'register') {
        const rec = r.standby;
        if (rec.state === 'recruited' && this.pooled?.state !== 'recruited') this.recruitedSinceMs = this.w.now();
        this.pooled = rec;
        // Recruited, but the primary never came (it died, or gave up): back to the pool.
        if (rec.state === 'recruited' && this.receiving === null && this.backup === null && this.w.now() - this.recruitedSinceMs > RECRUITED_WAIT_MS) {
          this.register(true);
          return;
        }
      }
      this.scheduleRenew();
    });
  }

  private scheduleRenew(): void {
    if (this.stopped || this.leavePool) return;
    this.renewTimer?.cancel();
    this.renewTimer = this.w.later(this.proc, Math.max(100, Math.floor(this.w.t.leaseTtlMs / 3)), () => this.register(false));
  }

  private returnToPool(reason: string): void {
    this.w.trace(this.proc, () => `standby: discarding the partial clone (${reason}); back in the pool`);
    this.receiving = null;
    this.backup = null;
    this.identity.get = () => ({ role: 'standby', epoch: 0, nextSeq: 0 });
    this.leavePool = false;
    this.renewing = false;
    this.register(true);
  }

  private onConnection(c: End, hello: Hello): void {
    if (this.backup) {
      this.backup.acceptPeer(c); // a reconnection of our primary (or a refusal there)
      return;
    }
    if (this.receiving) {
      this.w.net.closeLocal(c, 'this standby is already receiving a clone');
      return;
    }
    const r = { conn: c, hello };
    this.receiving = r;
    const onMsg = (m: Parameters<Parameters<End['on']>[0]>[0]): void => {
      if (this.receiving !== r) return;
      if (m.k === 'frame') {
        const f = m.frame;
        if (f.type === FrameType.HEARTBEAT || f.type === FrameType.CONTROL) return;
        this.w.net.refuse(c, `expected the snapshot, got frame type ${f.type}`);
        return;
      }
      if (m.k !== 'snapshot') return;
      if (m.epoch !== hello.epoch) {
        this.w.net.refuse(c, `FTVM_ERR_STALE_EPOCH: snapshot of epoch ${m.epoch} on a connection of epoch ${hello.epoch}`);
        return;
      }
      c.off(onMsg);
      this.restore(r, m.state);
    };
    c.on(onMsg);
    c.onceClose((reason) => {
      if (this.receiving === r) this.returnToPool(`the transfer was cut (${reason})`);
    });
  }

  /** The snapshot is complete: restore it into a replaying vCPU and follow the log as a joining backup. */
  private restore(r: { conn: End; hello: Hello }, snap: GuestState): void {
    this.w.trace(this.proc, () => `snapshot received (entry ${snap.seq}, epoch ${r.hello.epoch}): following the log as a joiner`);
    this.receiving = null;
    this.backup = new BackupDriver(this.w, this.proc, {
      epoch: r.hello.epoch,
      joined: { state: snap.clone(), conn: r.conn, identity: this.identity },
      onArmed: () => this.leave(),
      onAbandon: (reason) => this.returnToPool(reason),
    });
  }

  /** Armed: this node is the VM's backup now, no longer in the pool. */
  private leave(): void {
    this.leavePool = true;
    this.renewTimer?.cancel();
    this.pooled = null;
    this.w.arbiter(this.proc, { op: 'remove', hostId: this.proc.hostId }, () => undefined);
  }

  stop(): void {
    this.stopped = true;
    this.renewTimer?.cancel();
    if (this.receiving) this.w.net.closeLocal(this.receiving.conn, 'shutting down');
    this.backup?.stop();
    this.listener.close();
  }
}

/**
 * One simulated world per seed: hosts running ftvm processes (primary, backup, standbys), the logging
 * channel between them, the arbiter, clients, and a nemesis — all in virtual time, single threaded,
 * every choice drawn from one PRNG. After every event the invariants are checked; see index.ts.
 */
import { createHash } from 'node:crypto';
import { pino } from 'pino';
import type { ChannelServer, ChannelSocket } from '../channel/transport.js';
import { PROBE_TIMEOUT_MS, type ProbeResult } from '../channel/liveness.js';
import type { LoadedGuest } from '../machine/guest.js';
import type { WireOutput } from '../machine/vcpu-protocol.js';
import { DEFAULT_VM_CONFIG, type VmConfig } from '../log/recording.js';
import type { Snapshot } from '../machine/machine.js';
import type { TakenSnapshot, Timer } from '../replication/env.js';
import type { CheckpointBackup } from '../checkpoint/backup-node.js';
import { CheckpointNode } from '../checkpoint/run.js';
import { checkpointStateHash } from '../checkpoint/wire.js';
import { BackupNode, PrimaryNode, type NodeOptions, type Timings } from '../replication/node.js';
import { StandbyNode } from '../replication/standby.js';
import { Keyring } from '../security/secrets.js';
import { FtvmError } from '../util/errors.js';
import { silentLogger, type Logger } from '../util/log.js';
import { ArbiterModel, type ArbiterOp, type ArbiterReply } from './arbiter.js';
import { SimArbiter, simNodeEnv, type SimProc, type SimService, type SimWorldApi } from './env.js';
import { decodeJson, KEYS, type GuestState, type Op, type Reply } from './guest.js';
import { Network, type Conn, type SimSocket } from './net.js';
import { Prng } from './prng.js';
import { EventQueue } from './queue.js';
import type { SimVcpu, VcpuHost } from './vcpu.js';

/**
 * Test-only breaks, to show the checkers catch a broken core or driver. Replay mode: the cores'
 * ('release-before-ack', 'skip-drain') and the drivers' ('release-unheld', 'stale-drained'). Checkpoint
 * mode: the primary core's 'release-at-capture' (outputs released when their checkpoint is captured, not
 * acknowledged) and the replica's 'torn-apply' (the last page a checkpoint changes is not written).
 */
export type BreakMode = 'release-before-ack' | 'skip-drain' | 'release-unheld' | 'stale-drained' | 'release-at-capture' | 'torn-apply';

/** Which drivers the processes run: replay (PrimaryNode, BackupNode, StandbyNode) or checkpoint (CheckpointNode). */
export type SimMode = 'replay' | 'checkpoint';

/** The breaks of each mode. */
export const BREAKS_OF: Record<SimMode, readonly BreakMode[]> = {
  replay: ['release-before-ack', 'skip-drain', 'release-unheld', 'stale-drained'],
  checkpoint: ['release-at-capture', 'torn-apply'],
};

/** The nodes' timings and what else the drivers take. */
export interface SimTimings extends Omit<Timings, 'stateHashIntervalMs'> {
  unackedMaxBytes: number;
  heldMaxOutputs: number;
  leaseTtlMs: number;
  /** The guest's memory: the size of a snapshot. */
  memoryBytes: number;
}

/** run-cmds.ts RECRUIT_INTERVAL_MS. */
const RECRUIT_INTERVAL_MS = 250;
const CHANNEL_PORT = 7000;
const SERVICE_PORT = 8000;
/** A process's liveness port: an ephemeral port, a new one for each incarnation on a host. */
const LIVENESS_PORT_BASE = 9000;
const SECRET = new Uint8Array(32).fill(7);
const GUEST = { original: new TextEncoder().encode('ftvm simulated kv guest') } as unknown as LoadedGuest;
const CONFIG: VmConfig = { ...DEFAULT_VM_CONFIG, name: 'sim' };

type Driver = PrimaryNode | BackupNode | StandbyNode | CheckpointNode;

/** One process incarnation on a host (`ftvm run --role primary|backup` or `ftvm standby`). */
export class Proc implements SimProc {
  dead = false;
  paused = false;
  deferred: Array<{ fn: () => void; kind: 'tick' | 'other' }> = [];
  root: Driver | null = null;
  vcpu: SimVcpu | undefined;
  service: SimService | undefined;
  /** Listening channel ports: port → accept. */
  readonly listeners = new Map<number, (s: ChannelSocket) => void>();
  /** Arbiter calls whose outcome this process has not learnt yet. */
  arbiterInFlight = 0;
  /** Arbiter requests on their way (they may still commit, even after the call gave up). */
  arbiterRequests = 0;
  /** Client connections served here: conn id → client index. */
  readonly clientConns = new Map<number, number>();
  /** Service start attempts that will still find the address held. */
  serviceHeldAttempts = 0;
  /** Checkpoint mode: the checkpoint its replica holds (its epoch and number), as last seen. */
  ckptHeld: { epoch: number; checkpoint: number } | undefined;
  /** Checkpoint mode: the node's phase as last seen (a standby becoming a backup is a re-replication). */
  ckptPhase = '';
  /** Checkpoint mode: the backup whose replica the torn-apply break was set on. */
  ckptTorn: CheckpointBackup | undefined;

  constructor(
    readonly id: string,
    readonly host: number,
    readonly hostId: string,
  ) {}

  /** The recording driver of this process, if it records (primary, or a replica gone live). */
  recorder(): PrimaryNode | undefined {
    const r = this.root;
    if (r instanceof PrimaryNode) return r;
    if (r instanceof BackupNode) return r.livePrimary;
    return r instanceof StandbyNode ? r.joinedBackup?.livePrimary : undefined;
  }

  /** Checkpoint mode: the node's phase and its current drivers. */
  ckpt(): CheckpointNode['drivers'] | undefined {
    return this.root instanceof CheckpointNode ? this.root.drivers : undefined;
  }

  /** The replaying driver, if this process is a backup (or a joiner) that has not gone live. */
  replica(): BackupNode | undefined {
    const r = this.root;
    const b = r instanceof BackupNode ? r : r instanceof StandbyNode ? (r.joinedBackup ?? undefined) : undefined;
    return b && !b.livePrimary && !b.isFinished ? b : undefined;
  }
}

export class SimFailure extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SimFailure';
  }
}

export interface WorldOptions {
  seed: number;
  /** Which drivers the processes run (default replay). */
  mode?: SimMode;
  breakMode?: BreakMode;
  /** Keep every trace line (else only the failure is reported). */
  trace?: boolean;
}

export interface WorldStats {
  steps: number;
  virtualMs: number;
  faults: Record<string, number>;
  failovers: number;
  joinsArmed: number;
  maxEpoch: number;
  requests: number;
  completed: number;
  released: number;
  healAtMs: number;
  progressAfterHealMs: number;
  /** Real-driver paths exercised: a snapshot stream waited for 'drain'; a snapshot failed; a go-live found its service address held; a replica diverged and halted. */
  drainWaits: number;
  snapshotsFailed: number;
  serviceBindRetries: number;
  divergedHalts: number;
  /** Liveness probes (src/channel/liveness.ts) by their result: evidence of death vs none. */
  probesRefused: number;
  probesAnswered: number;
  probesUnanswered: number;
  /** Checkpoint mode: checkpoints captured by primaries, and go-lives from a checkpoint checked against the capture. */
  checkpointsCaptured: number;
  checkpointGoLivesChecked: number;
}

interface Host {
  index: number;
  hostId: string;
  proc: Proc | null;
  incarnation: number;
  /** Power is off (a silent crash): connects hang, nothing answers. */
  down: boolean;
  restartPending: boolean;
}

interface Client {
  idx: number;
  proc: Proc | undefined;
  conn: number;
  preferred: number;
  pending: { req: number; op: Op; sentAtMs: number; timer: Timer | undefined } | undefined;
  connecting: boolean;
}

const PROGRESS_NEEDED = 5;

export class World implements SimWorldApi {
  readonly rng: Prng;
  readonly t: SimTimings;
  readonly net: Network;
  readonly breakMode: BreakMode | undefined;
  readonly mode: SimMode;
  /** Inject held service addresses at go-live (always in replay mode; checkpoint mode: only if asked). */
  /** Checkpoint mode: `--checkpoint-interval-ms`. */
  private readonly intervalMs: number = 0;
  /** Checkpoint mode: every checkpoint a primary captured, by "epoch:number": its state hash and entry count. */
  private readonly captures = new Map<string, { hash: string; seq: number; by: string }>();
  /** Checkpoint mode: the highest entry count of a checkpoint a backup of each epoch applied (the output rule's coverage). */
  private readonly ckptCovered = new Map<number, number>();
  /** Checkpoint mode: standbys that became backups (applied a base checkpoint). */
  private ckptJoins = 0;
  private readonly q = new EventQueue();
  private nowMs = 0;
  private steps = 0;
  /** A rejection or exception inside a driver (it fails the seed). */
  private driverError: Error | undefined;
  private readonly digest = createHash('sha256');
  private readonly bandwidthBytesPerMs: number;
  private readonly hosts: Host[] = [];
  readonly arb = new ArbiterModel();
  private arbDown = false;
  private readonly arbBlocked: boolean[] = [];
  /** blocked[a][b]: the link a → b is held by a partition. */
  private readonly blockedLinks: boolean[][] = [];
  private readonly slowLinks: number[][] = [];
  /** vCPUs slowed by the nemesis: the speed before the first of overlapping slowdowns, and the latest one. */
  private readonly slowed = new Map<SimVcpu, { base: number; token: number }>();
  private slowTokens = 0;
  private readonly baseDelayMs: number;
  private readonly arbLatencyMs: number;
  private readonly replicaSpeedMean: number;
  private readonly clients: Client[] = [];
  private nextConn = 1;
  private nextReq = 1;
  private nextEntry = 1;
  /** Every output released to a client: its entry (seq, id). */
  private readonly releasedLog: Array<{ seq: number; id: number; by: string; atMs: number }> = [];
  /** Highest entry count a backup has held at each epoch (the output rule's coverage). */
  private readonly received = new Map<number, number>();
  private readonly traceOn: boolean;
  readonly traceLines: string[] = [];
  private readonly faultEndMs: number;
  private readonly meanFaultGapMs: number;
  private healed = false;
  private healAtMs = Infinity;
  private progressAfterHeal = 0;
  private progressAtMs = -1;
  private readonly boundMs: number;
  private readonly clientTimeoutMs: number;
  readonly stats: WorldStats;

  constructor(opts: WorldOptions) {
    this.rng = new Prng(opts.seed);
    this.breakMode = opts.breakMode;
    this.mode = opts.mode ?? 'replay';
    if (this.breakMode !== undefined && !BREAKS_OF[this.mode].includes(this.breakMode)) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `--break ${this.breakMode} is not a ${this.mode}-mode break`);
    this.traceOn = opts.trace ?? false;
    const r = this.rng;
    // Timeouts randomized within their allowed ranges (the CLI's), biased to the interesting region.
    const heartbeatIntervalMs = r.int(5, 40);
    const tickMs = r.int(1, Math.min(10, heartbeatIntervalMs));
    const failTimeoutMs = r.int(Math.max(20, 2 * heartbeatIntervalMs + 2 * tickMs), 400);
    this.t = {
      heartbeatIntervalMs,
      tickMs,
      failTimeoutMs,
      arbiterDeadlineMs: r.pick([r.int(20, 200), r.int(200, 1000)]),
      grantIntervalMs: r.int(1, 5),
      lagMaxMs: r.int(5, 60),
      unackedMaxBytes: r.chance(0.2) ? r.int(200, 20_000) : 32 * 1024 * 1024,
      heldMaxOutputs: r.chance(0.2) ? r.int(1, 20) : 100_000,
      leaseTtlMs: r.int(1000, 4000),
      memoryBytes: r.pick([64 * 1024, 1 << 20, 6 << 20]),
    };
    this.baseDelayMs = r.range(0.02, 1.5);
    this.bandwidthBytesPerMs = r.pick([2_000, 20_000, 120_000]);
    this.arbLatencyMs = r.range(0.3, 15);
    this.replicaSpeedMean = r.range(0.7, 1.6);
    this.clientTimeoutMs = r.int(100, 1000);
    this.faultEndMs = r.int(600, 3000);
    this.meanFaultGapMs = r.range(40, 400);
    if (this.mode === 'checkpoint') {
      // Drawn after everything else, so replay-mode seeds are unchanged. A checkpoint encodes the delta of
      // the guest's memory: small memories keep thousands of seeds fast (the model guest's state is JSON).
      this.intervalMs = r.pick([r.int(1, 10), r.int(10, 60)]);
      this.t.memoryBytes = r.pick([64 * 1024, 256 * 1024]);
    }
    this.boundMs = 4 * failTimeoutMs + 6 * this.t.arbiterDeadlineMs + 3 * this.clientTimeoutMs + 4000;
    this.stats = {
      steps: 0,
      virtualMs: 0,
      faults: {},
      failovers: 0,
      joinsArmed: 0,
      maxEpoch: 1,
      requests: 0,
      completed: 0,
      released: 0,
      healAtMs: 0,
      progressAfterHealMs: -1,
      drainWaits: 0,
      snapshotsFailed: 0,
      serviceBindRetries: 0,
      divergedHalts: 0,
      probesRefused: 0,
      probesAnswered: 0,
      probesUnanswered: 0,
      checkpointsCaptured: 0,
      checkpointGoLivesChecked: 0,
    };
    this.net = new Network({
      now: () => this.nowMs,
      delay: (a, b, bytes) => this.delay(a, b, bytes),
      blocked: (a, b) => this.blockedLinks[a]![b]!,
      schedule: (owner, at, fn) => this.q.push(at, () => this.dispatch(owner as Proc | null, fn, 'other')),
      random: () => this.rng.float(),
      onDrain: (bufferedMaxBytes) => {
        if (bufferedMaxBytes > 4 * 1024 * 1024) this.stats.drainWaits++;
      },
    });
  }

  // ------------------------------------------------------------------------------ SimWorldApi

  now(): number {
    return this.nowMs;
  }

  later(proc: Proc | SimProc, delayMs: number, fn: () => void, kind: 'tick' | 'other' = 'other'): Timer {
    const token = { cancelled: false };
    this.q.push(this.nowMs + Math.max(0, delayMs), () => {
      if (!token.cancelled) this.dispatch(proc as Proc, fn, kind);
    });
    return { cancel: () => (token.cancelled = true) };
  }

  newEntryId(): number {
    return this.nextEntry++;
  }

  replicaSpeed(): number {
    return this.replicaSpeedMean * this.rng.range(0.8, 1.2);
  }

  trace(proc: Proc | null, msg: () => string): void {
    if (!this.traceOn) return;
    this.traceLines.push(`${this.nowMs.toFixed(3).padStart(10)} #${this.steps} ${proc ? proc.id : '-'}: ${msg()}`);
  }

  private failure: SimFailure | undefined;

  fail(msg: string): never {
    // Thrown inside a driver's promise chain it could be swallowed: the run loop rethrows it.
    this.failure ??= new SimFailure(msg);
    throw this.failure;
  }

  vcpuHost(sp: SimProc): VcpuHost {
    const proc = sp as Proc;
    return {
      now: () => this.nowMs,
      later: (d, fn) => void this.later(proc, d, fn),
      newEntryId: () => this.newEntryId(),
      memoryBytes: this.t.memoryBytes,
      speed: (mode) => (mode === 'replay' ? 1000 * this.replicaSpeed() : 1000),
      snapshotFails: () => {
        const f = this.rng.chance(0.03);
        if (f) this.stats.snapshotsFailed++;
        return f;
      },
      violation: (v, msg) => {
        if (v.corrupted) {
          this.stats.divergedHalts++;
          this.trace(proc, () => `replica divergence (injected corruption): ${msg}`);
          return;
        }
        this.fail(`(c) ${msg}`);
      },
      wentLive: (v) => this.wentLive(proc, v),
      snapshotTaken: (_v, t) => this.captured(proc, t),
    };
  }

  // ------------------------------------------------------------------------------ checkpoint mode

  private static key(epoch: number, checkpoint: number): string {
    return `${epoch}:${checkpoint}`;
  }

  /** A checkpoint primary captured a checkpoint (its driver encoded the snapshot): record its state. */
  private captured(proc: Proc, t: TakenSnapshot): void {
    if (this.mode !== 'checkpoint') return;
    const c = proc.ckpt();
    const p = c?.primary;
    if (p === undefined) this.fail(`${proc.id} took a snapshot without a checkpoint primary`);
    const s = p.status();
    const key = World.key(s.epoch, s.capturedCheckpoint);
    const hash = checkpointStateHash(t.snapshot);
    const prev = this.captures.get(key);
    if (prev !== undefined && prev.hash !== hash) {
      this.fail(`(k) checkpoint ${s.capturedCheckpoint} of epoch ${s.epoch} captured twice with different states (by ${prev.by}, then ${proc.id})`);
    }
    this.captures.set(key, { hash, seq: t.snapshot.seq, by: proc.id });
    this.stats.checkpointsCaptured++;
    this.note(`capture ${proc.id} ${key} ${hash.slice(0, 16)}`);
  }

  /** A checkpoint backup that won the claim restores its last complete checkpoint: exactly what was captured? */
  restoring(sp: SimProc, from: Snapshot): void {
    if (this.mode !== 'checkpoint') return;
    const proc = sp as Proc;
    const held = proc.ckptHeld;
    if (held === undefined || held.checkpoint === 0) this.fail(`(k) ${proc.id} goes live from a snapshot, but its replica held no complete checkpoint`);
    const cap = this.captures.get(World.key(held.epoch, held.checkpoint));
    if (cap === undefined) this.fail(`(k) ${proc.id} goes live from checkpoint ${held.checkpoint} of epoch ${held.epoch}, which no primary captured`);
    const hash = checkpointStateHash(from);
    if (hash !== cap.hash) {
      this.fail(
        `(k) partial checkpoint: ${proc.id} goes live from checkpoint ${held.checkpoint} of epoch ${held.epoch} with state ${hash.slice(0, 16)}, ` +
          `but ${cap.by} captured that checkpoint as ${cap.hash.slice(0, 16)}: a backup went live from a state the primary never captured`,
      );
    }
    this.stats.checkpointGoLivesChecked++;
  }

  /** The restored vCPU: the lost-output check, as at a replay go-live. */
  restored(sp: SimProc, v: SimVcpu): void {
    if (this.mode !== 'checkpoint') return;
    const proc = sp as Proc;
    this.stats.failovers++;
    const held = proc.ckptHeld!;
    this.trace(proc, () => `LIVE: from checkpoint ${held.checkpoint} of epoch ${held.epoch}, at instruction ${v.state.n} after ${v.state.seq} entries`);
    this.note(`live ${proc.id} ${v.state.seq}`);
    this.checkHasReleased(proc, v.state, `went live from checkpoint ${held.checkpoint} of epoch ${held.epoch}`);
  }

  /** After every event: what each checkpoint replica holds (coverage for the output rule), re-replications. */
  private observeCheckpoints(p: Proc): void {
    const c = p.ckpt();
    if (c === undefined) return;
    if (p.ckptPhase === 'standby' && c.phase === 'backup') {
      this.ckptJoins++;
      this.trace(p, () => 'the standby holds a complete checkpoint: it is the backup');
    }
    p.ckptPhase = c.phase;
    const b = c.backup;
    if (b === undefined) return;
    if (this.breakMode === 'torn-apply' && p.ckptTorn !== b) {
      b.replica.testOnlyTornApply = true;
      p.ckptTorn = b;
    }
    const st = b.status();
    if (st.phase === 'live') return; // its epoch is the new one; what it holds was seen before the claim
    const n = b.replica.checkpoint;
    const e = b.replica.heldEpoch;
    p.ckptHeld = { epoch: e, checkpoint: n };
    if (n === 0) return;
    const cap = this.captures.get(World.key(e, n));
    if (cap === undefined) this.fail(`(k) ${p.id}'s replica holds checkpoint ${n} of epoch ${e}, which no primary captured`);
    if (e !== st.epoch) {
      // Its acknowledgements (of its own epoch) never count for that primary, which hears them and never
      // claims: a pair that releases nothing and never fails over.
      this.fail(`(k) ${p.id}, a backup of epoch ${st.epoch}, applied checkpoint ${n} of epoch ${e} (captured by ${cap.by}): it follows a primary of another epoch`);
    }
    // Coverage for the primary whose acknowledgements count: those of the backup's own epoch.
    if (cap.seq > (this.ckptCovered.get(st.epoch) ?? 0)) this.ckptCovered.set(st.epoch, cap.seq);
  }

  /** The process's serving primary (replay recorder or checkpoint primary), if any. */
  private primaryOf(p: Proc): { epoch: number; halted: boolean; alone: boolean } | undefined {
    const pr = p.recorder();
    if (pr) {
      const s = pr.core.status();
      return { epoch: s.epoch, halted: s.halted !== null, alone: s.alone };
    }
    const c = p.ckpt();
    if (c?.primary !== undefined && (c.phase === 'primary' || c.phase === 'halted')) {
      const s = c.primary.status();
      return { epoch: s.epoch, halted: c.phase === 'halted' || s.phase === 'halted', alone: s.alone };
    }
    return undefined;
  }

  serviceAddressHeld(sp: SimProc): boolean {
    const proc = sp as Proc;
    if (proc.serviceHeldAttempts > 0) {
      proc.serviceHeldAttempts--;
      this.stats.serviceBindRetries++;
      this.trace(proc, () => 'the service address is in use (EADDRINUSE)');
      return true;
    }
    return false;
  }

  /**
   * A liveness probe, modelled on TCP: the process that owns the port answers (it accepts and closes)
   * after a round trip; a stopped one lets the kernel complete the handshake but never closes (no
   * answer); a dead process's host refuses (RST) after a round trip, unless the host is down (power
   * loss: no answer); a partitioned link never answers. "No answer" comes at the probe's timeout.
   */
  probeLiveness(sp: SimProc, hostName: string, port: number, cb: (r: ProbeResult) => void): void {
    const proc = sp as Proc;
    const hostIndex = this.hosts.findIndex((h) => h.hostId === hostName);
    const target = this.hosts[hostIndex];
    let result: ProbeResult = 'no-answer';
    let atMs = PROBE_TIMEOUT_MS;
    if (target !== undefined && !this.blockedLinks[proc.host]![hostIndex]! && !this.blockedLinks[hostIndex]![proc.host]!) {
      const rtt = this.delay(proc.host, hostIndex, 0) + this.delay(hostIndex, proc.host, 0);
      const tp = target.proc;
      const owner = tp !== null && port === LIVENESS_PORT_BASE + target.incarnation ? tp : null;
      if (owner !== null && !owner.dead) {
        if (!owner.paused && rtt < PROBE_TIMEOUT_MS) [result, atMs] = ['answered', rtt];
      } else if (!target.down && rtt < PROBE_TIMEOUT_MS) {
        [result, atMs] = ['refused', rtt];
      }
    }
    this.later(proc, atMs, () => {
      if (result === 'refused') this.stats.probesRefused++;
      else if (result === 'answered') this.stats.probesAnswered++;
      else this.stats.probesUnanswered++;
      this.trace(proc, () => `liveness probe of ${hostName}:${port}: ${result}`);
      cb(result);
    });
  }

  listen(sp: SimProc, port: number, onSocket: (s: ChannelSocket) => void): ChannelServer {
    const proc = sp as Proc;
    proc.listeners.set(port, onSocket);
    return {
      address: { address: proc.hostId, port },
      close: () => {
        if (proc.listeners.get(port) === onSocket) proc.listeners.delete(port);
        return Promise.resolve();
      },
    };
  }

  connect(sp: SimProc, hostName: string, port: number): ChannelSocket {
    const proc = sp as Proc;
    const hostIndex = this.hosts.findIndex((h) => h.hostId === hostName);
    if (hostIndex < 0) throw new Error(`no simulated host ${hostName}`);
    const target = this.hosts[hostIndex]!;
    const tp = target.proc;
    const c = this.net.connect({ owner: proc, host: proc.host, name: proc.hostId, port: 40000 + this.nextConn }, { owner: tp, host: hostIndex, name: hostName, port });
    const [mine, theirs] = c.ends;
    if (tp === null || tp.dead) {
      // Nobody there: RST from a live host, or a connect that hangs until it times out (power off).
      const wait = target.down ? this.rng.range(500, 2000) : this.delay(hostIndex, proc.host, 0) * 2;
      this.q.push(this.nowMs + wait, () => this.net.closeLocal(theirs, 'connection refused'));
      return mine;
    }
    // The target accepts when it runs (a paused process accepts after it resumes).
    this.q.push(this.nowMs + this.delay(proc.host, hostIndex, 0), () =>
      this.dispatch(tp, () => {
        const accept = tp.listeners.get(port);
        if (accept === undefined) {
          this.net.closeLocal(theirs, 'connection refused');
          return;
        }
        accept(theirs);
        this.net.accepted(theirs);
      }, 'other'),
    );
    return mine;
  }

  arbiter(sp: SimProc, op: ArbiterOp, deadlineMs: number, cb: (r: ArbiterReply | null) => void): void {
    const proc = sp as Proc;
    proc.arbiterInFlight++;
    const deadlineAt = this.nowMs + deadlineMs;
    let settled = false;
    let uncertain = false;
    const settle = (r: ArbiterReply | null): void => {
      if (settled) return;
      settled = true;
      proc.arbiterInFlight--;
      cb(r);
    };
    this.later(proc, deadlineMs, () => settle(null));
    const attempt = (): void => {
      if (settled || this.nowMs >= deadlineAt || proc.dead) return;
      const h = proc.host;
      if (!this.arbReachable(h)) {
        this.later(proc, this.rng.range(10, 60), attempt); // connection refused/reset: try again
        return;
      }
      let lat = this.arbLatencyMs * this.rng.range(0.5, 2);
      // A request held in the network can commit after the caller gave up (etcd3 retries, TCP).
      if (this.rng.chance(0.03)) lat += this.rng.range(0.5, 1.5) * deadlineMs;
      proc.arbiterRequests++;
      this.q.push(this.nowMs + lat / 2, () => {
        proc.arbiterRequests--;
        if (!this.arbReachable(h)) {
          if (!proc.dead) this.later(proc, this.rng.range(10, 60), attempt);
          return;
        }
        const reply = this.arb.apply(op, this.nowMs, uncertain);
        this.noteArbiter();
        if (this.rng.chance(0.05) || !this.arbReachable(h)) {
          // Committed, but the answer is lost: the client retries the same call (it may have committed).
          uncertain = true;
          if (!proc.dead) this.later(proc, this.rng.range(lat / 2, lat / 2 + 30), attempt);
          return;
        }
        this.later(proc, lat / 2, () => settle(reply));
      });
    };
    attempt();
  }

  /** Whether `owner` won `epoch` alone (a claim): then it may release without a backup's coverage. */
  private wonAlone(epoch: number, owner: string): boolean {
    return this.arb.history.some((h) => h.record.epoch === epoch && h.record.owner === owner && h.by.startsWith('claim'));
  }

  released(sp: SimProc, outputs: readonly WireOutput[]): void {
    const proc = sp as Proc;
    let epoch: number;
    let alone: boolean;
    let covered: number;
    if (this.mode === 'checkpoint') {
      // The output rule of checkpoint mode: a backup of this epoch applied (and so acknowledged, or will
      // at once) a checkpoint whose state holds the entry of every released output, unless this primary
      // runs alone and won its epoch at the arbiter.
      const c = proc.ckpt();
      const p = c?.phase === 'primary' ? c.primary : undefined;
      if (p === undefined) this.fail(`${proc.id} released outputs without a checkpoint primary`);
      const st = p.status();
      epoch = st.epoch;
      alone = st.alone && this.wonAlone(st.epoch, proc.id);
      covered = this.ckptCovered.get(st.epoch) ?? 0;
    } else {
      const rec = proc.recorder();
      if (rec === undefined) this.fail(`${proc.id} released outputs without a recording driver`);
      epoch = rec.core.status().epoch;
      alone = this.wonAlone(epoch, proc.id);
      covered = this.received.get(epoch) ?? 0;
    }
    for (const o of outputs) {
      const reply = decodeJson<Reply>(o.data);
      if (!alone && o.seq >= covered) {
        this.fail(
          this.mode === 'checkpoint'
            ? `(b) output rule: ${proc.id} released the reply to request ${reply.req} (entry ${o.seq}) at epoch ${epoch}, ` +
                `but no backup of epoch ${epoch} applied a checkpoint holding it (the latest holds entries < ${covered}) and this primary does not run alone after winning epoch ${epoch}`
            : `(b) output rule: ${proc.id} released the reply to request ${reply.req} (entry ${o.seq}) at epoch ${epoch}, ` +
                `but the backup of epoch ${epoch} holds only entries < ${covered} and this primary did not win epoch ${epoch} alone`,
        );
      }
      this.releasedLog.push({ seq: o.seq, id: reply.entryId, by: proc.id, atMs: this.nowMs });
      this.stats.released++;
      this.note(`release ${proc.id} ${o.seq} ${reply.entryId}`);
      const ci = proc.clientConns.get(o.conn);
      if (ci !== undefined) {
        const client = this.clients[ci]!;
        const conn = o.conn;
        this.q.push(this.nowMs + this.clientDelay(), () => this.clientReply(client, conn, reply.req));
      }
    }
  }

  private wentLive(proc: Proc, v: SimVcpu): void {
    this.stats.failovers++;
    this.trace(proc, () => `LIVE: the replica takes over at instruction ${v.state.n} after ${v.state.seq} entries`);
    this.note(`live ${proc.id} ${v.state.seq}`);
    if (!v.corrupted) this.checkHasReleased(proc, v.state, 'went live');
  }

  private exit(proc: Proc, reason: string): void {
    if (proc.dead) return;
    this.trace(proc, () => `process exits: ${reason}`);
    this.kill(proc, true);
  }

  /** Where the run is (for a failure report). */
  position(): { step: number; timeMs: number } {
    return { step: this.steps, timeMs: this.nowMs };
  }

  /** The run's fingerprint: every event's time and what the checkers saw (same seed, same hash). */
  traceHash(): string {
    return this.digest.copy().digest('hex').slice(0, 16);
  }

  private note(s: string): void {
    this.digest.update(`${this.nowMs} ${this.steps} ${s}\n`);
  }

  /** A driver's promise rejected, or its event handler threw: the seed fails. */
  driverFailed(err: unknown): void {
    this.driverError ??= err instanceof Error ? err : new Error(String(err));
  }

  // ------------------------------------------------------------------------------ the run

  async run(): Promise<void> {
    const r = this.rng;
    for (let i = 0; i < 3; i++) {
      this.hosts.push({ index: i, hostId: `h${i}`, proc: null, incarnation: 0, down: false, restartPending: false });
      this.arbBlocked.push(false);
    }
    for (let a = 0; a < 3; a++) {
      this.blockedLinks.push([false, false, false]);
      this.slowLinks.push([1, 1, 1]);
    }
    // ftvm run --role backup, then --role primary (which inits the arbiter's record and dials).
    this.spawn(1, 'backup');
    this.arb.init({ epoch: 1, owner: 'h0.1' }, 0);
    this.spawn(0, 'primary');
    // A standby in the pool from the start, later, or never.
    const standbyAt = r.pick([0, 0, r.range(0, this.faultEndMs), Infinity]);
    if (standbyAt !== Infinity) this.q.push(standbyAt, () => this.hosts[2]!.proc === null && this.spawn(2, 'standby'));
    const nClients = r.int(1, 4);
    for (let i = 0; i < nClients; i++) {
      const c: Client = { idx: i, proc: undefined, conn: -1, preferred: 0, pending: undefined, connecting: false };
      this.clients.push(c);
      this.q.push(r.range(0, 20), () => this.clientConnect(c));
    }
    this.q.push(r.range(30, 150), () => this.nemesis());
    this.q.push(this.faultEndMs, () => this.heal());
    const hardEnd = this.faultEndMs + this.boundMs;
    for (;;) {
      const ev = this.q.pop();
      if (ev === undefined) break;
      if (ev.at > hardEnd) {
        this.nowMs = hardEnd;
        break;
      }
      this.nowMs = ev.at;
      this.steps++;
      ev.fn();
      // Every promise continuation the event set off runs now, before the next event (a macrotask
      // boundary: the microtask queue drains completely; nothing else is scheduled in real time).
      await new Promise<void>((res) => setImmediate(res));
      if (this.failure) throw this.failure;
      if (this.driverError) this.fail(`a driver failed: ${this.driverError.name}: ${this.driverError.message}`);
      this.checkInvariants();
      if (this.healed && this.progressAfterHeal >= PROGRESS_NEEDED && this.nowMs >= this.healAtMs + 300) break;
    }
    this.stats.steps = this.steps;
    this.stats.virtualMs = this.nowMs;
    // Re-replications: replay mode arms each new pair at the arbiter (advance); checkpoint mode does not.
    this.stats.joinsArmed = this.mode === 'checkpoint' ? this.ckptJoins : this.arb.history.filter((h) => h.by.startsWith('advance')).length;
    if (this.progressAfterHeal < PROGRESS_NEEDED) {
      this.fail(`(d) no progress: ${this.progressAfterHeal} of ${PROGRESS_NEEDED} client requests sent after the heal at ${this.healAtMs.toFixed(1)} ms completed within ${this.boundMs} ms; ${this.describeNodes()}`);
    }
    this.stats.progressAfterHealMs = this.progressAtMs - this.healAtMs;
    // The end: every output ever released is in the state of the VM's current primary (a fenced old
    // primary that has not asked the arbiter yet is not it).
    for (const h of this.hosts) {
      const s = h.proc ? this.primaryOf(h.proc) : undefined;
      const v = h.proc?.vcpu;
      if (h.proc && !h.proc.dead && v && !v.corrupted && s && !s.halted && s.epoch === this.arb.record?.epoch) this.checkHasReleased(h.proc, v.state, 'is live at the end');
    }
  }

  describeNodes(): string {
    return this.hosts
      .map((h) => {
        const p = h.proc;
        if (!p || p.dead) return `${h.hostId}: down`;
        const rec = p.recorder();
        if (rec) {
          const s = rec.core.status();
          return `${p.id}: primary epoch ${s.epoch}${s.alone ? ' alone' : ''}${s.claiming ? ' claiming' : ''}${s.joining ? ` joining(${s.joining})` : ''} peer=${s.peer} entries=${s.nextSeq} acked=${s.ackedSeq} held=${s.outputsHeld}${p.paused ? ' PAUSED' : ''}`;
        }
        const b = p.replica();
        if (b) {
          const s = b.core.status();
          return `${p.id}: backup ${s.phase} epoch ${s.epoch} peer=${s.peer} entries=${s.nextSeq}${p.paused ? ' PAUSED' : ''}`;
        }
        const c = p.ckpt();
        if (c?.primary !== undefined && c.phase === 'primary') {
          const s = c.primary.status();
          return `${p.id}: checkpoint primary ${s.phase} epoch ${s.epoch}${s.alone ? ' alone' : ''}${s.joining ? ' joining' : ''} connected=${s.connected} open=${s.openCheckpoint} acked=${s.ackedCheckpoint} held=${s.heldOutputs}${p.paused ? ' PAUSED' : ''}`;
        }
        if (c?.backup !== undefined) {
          const s = c.backup.status();
          return `${p.id}: checkpoint ${c.phase} ${s.phase} epoch ${s.epoch} connected=${s.connected} applied=${s.applied}${p.paused ? ' PAUSED' : ''}`;
        }
        if (c !== undefined) return `${p.id}: checkpoint ${c.phase}${p.paused ? ' PAUSED' : ''}`;
        return `${p.id}: standby${p.paused ? ' PAUSED' : ''}`;
      })
      .join('; ') + `; arbiter ${JSON.stringify(this.arb.record)}`;
  }

  // ------------------------------------------------------------------------------ processes

  private logFor(proc: Proc): Logger {
    if (!this.traceOn) return silentLogger;
    return pino({ level: 'debug', base: null, timestamp: false }, { write: (line: string) => this.trace(proc, () => line.trimEnd()) });
  }

  /** Starts an ftvm process on a host: the real driver, in this process's simulated environment. */
  private spawn(hostIndex: number, role: 'primary' | 'backup' | 'standby'): Proc {
    const h = this.hosts[hostIndex]!;
    h.incarnation++;
    h.down = false;
    h.restartPending = false;
    const proc = new Proc(`${h.hostId}.${h.incarnation}`, hostIndex, h.hostId);
    h.proc = proc;
    // A live primary's service address may be held for a while (TIME_WAIT, another process's port).
    if (this.rng.chance(0.15)) proc.serviceHeldAttempts = this.rng.int(1, 6);
    this.trace(proc, () => `process starts as ${role}`);
    this.note(`spawn ${proc.id} ${role}`);
    const t = this.t;
    const timings: Timings = { ...t, stateHashIntervalMs: 0 };
    const common: NodeOptions = {
      env: simNodeEnv(this, proc),
      guest: GUEST,
      config: CONFIG,
      epoch: 1,
      secret: new Keyring(SECRET),
      channelSecurity: 'plain',
      timings,
      log: this.logFor(proc),
      nodeId: proc.id,
      hostId: h.hostId,
      liveness: `${h.hostId}:${LIVENESS_PORT_BASE + h.incarnation}`,
      arbiter: new SimArbiter(this, proc),
      recruit: { hostId: h.hostId, intervalMs: RECRUIT_INTERVAL_MS },
      onHalt: (reason) => this.exit(proc, reason),
      ...(this.breakMode === 'release-before-ack' || this.breakMode === 'skip-drain' || this.breakMode === 'release-at-capture' ? { testOnlyCoreBreak: this.breakMode } : {}),
      ...(this.breakMode === 'release-unheld' || this.breakMode === 'stale-drained' ? { testOnlyDriverBreak: this.breakMode } : {}),
    };
    const service = { host: h.hostId, port: SERVICE_PORT };
    const listen = { host: h.hostId, port: CHANNEL_PORT };
    let d: Driver;
    if (this.mode === 'checkpoint') {
      // As `ftvm run --mode checkpoint --role primary|backup` and `ftvm standby --mode checkpoint` build it.
      const intervalMs = this.intervalMs;
      if (role === 'primary') d = new CheckpointNode({ ...common, role, intervalMs, service, peer: { host: 'h1', port: CHANNEL_PORT } });
      else if (role === 'backup') d = new CheckpointNode({ ...common, role, intervalMs, service, listen });
      else d = new CheckpointNode({ ...common, role, intervalMs, service, listen, leaseTtlMs: t.leaseTtlMs });
    } else if (role === 'primary') d = new PrimaryNode({ ...common, service, peer: { host: 'h1', port: CHANNEL_PORT }, unackedMaxBytes: t.unackedMaxBytes, heldMaxOutputs: t.heldMaxOutputs });
    else if (role === 'backup') d = new BackupNode({ ...common, listen, service });
    else d = new StandbyNode({ ...common, listen, service, hostId: h.hostId, leaseTtlMs: t.leaseTtlMs });
    proc.root = d;
    d.start().catch((err: unknown) => this.driverFailed(err));
    return proc;
  }

  private dispatch(proc: Proc | null, fn: () => void, kind: 'tick' | 'other'): void {
    if (proc === null) return;
    if (proc.dead) return;
    if (proc.paused) {
      proc.deferred.push({ fn, kind });
      return;
    }
    fn();
  }

  /** kill -9 (the kernel closes its sockets) or power loss (nothing is closed; connects hang). */
  private kill(proc: Proc, kernelCloses: boolean): void {
    if (proc.dead) return;
    proc.dead = true;
    proc.deferred = [];
    const h = this.hosts[proc.host]!;
    if (!kernelCloses) h.down = true;
    for (const c of [...this.net.conns]) for (const e of c.ends) if (e.owner === proc) this.net.vanish(e, kernelCloses);
    for (const [conn, ci] of proc.clientConns) {
      const client = this.clients[ci]!;
      if (kernelCloses) this.q.push(this.nowMs + this.clientDelay(), () => this.clientDisconnected(client, conn));
    }
    proc.clientConns.clear();
  }

  private restart(hostIndex: number): void {
    const h = this.hosts[hostIndex]!;
    const old = h.proc;
    if (old && !old.dead) return;
    if (old) {
      // The survivors of a power loss learn of it at their next segment (RST from the rebooted host).
      for (const c of [...this.net.conns]) for (const e of c.ends) if (e.owner === old) this.net.resetHalfOpen(e);
      for (const [conn, ci] of old.clientConns) this.clientDisconnected(this.clients[ci]!, conn);
    }
    this.spawn(hostIndex, 'standby');
  }

  // ------------------------------------------------------------------------------ network

  private delay(a: number, b: number, bytes: number): number {
    const slow = this.slowLinks[a]![b]!;
    return (this.baseDelayMs * (0.5 + this.rng.exp(0.5)) + bytes / 1e6) * slow;
  }

  private arbReachable(host: number): boolean {
    return !this.arbDown && !this.arbBlocked[host]!;
  }

  private channelConns(a?: number, b?: number): Conn[] {
    const out: Conn[] = [];
    for (const c of this.net.conns) {
      const x = c.ends[0].hostIndex;
      const y = c.ends[1].hostIndex;
      if (a === undefined || (x === a && y === b) || (x === b && y === a)) out.push(c);
    }
    return out;
  }

  private setLink(a: number, b: number, blocked: boolean): void {
    this.blockedLinks[a]![b] = blocked;
    for (const c of this.channelConns(a, b)) {
      for (const side of [0, 1] as const) {
        if (c.ends[side].hostIndex === a && c.ends[1 - side]!.hostIndex === b) this.net.setBlocked(c, side, blocked);
      }
    }
  }

  // ------------------------------------------------------------------------------ clients

  private clientDelay(): number {
    return this.rng.range(0.02, 0.3);
  }

  private clientConnect(c: Client): void {
    if (c.connecting) return;
    c.connecting = true;
    const host = this.rng.chance(0.6) ? c.preferred : this.rng.int(0, 2);
    this.q.push(this.nowMs + this.clientDelay(), () => {
      c.connecting = false;
      const p = this.hosts[host]!.proc;
      if (!p || p.dead || this.primaryOf(p) === undefined || p.service?.open !== true) {
        c.preferred = this.rng.int(0, 2);
        this.q.push(this.nowMs + this.rng.range(2, 20), () => this.clientConnect(c));
        return;
      }
      c.proc = p;
      c.conn = this.nextConn++;
      c.preferred = host;
      p.clientConns.set(c.conn, c.idx);
      this.clientSend(c);
    });
  }

  private clientSend(c: Client): void {
    const p = c.proc;
    if (!p) return;
    const r = this.rng;
    const roll = r.float();
    const op: Op =
      roll < 0.55
        ? { kind: 'incr', key: r.int(0, KEYS - 1), val: 0, work: r.int(50, 2000) }
        : roll < 0.75
          ? { kind: 'get', key: r.int(0, KEYS - 1), val: 0, work: r.int(20, 500) }
          : roll < 0.9
            ? { kind: 'set', key: r.int(0, KEYS - 1), val: r.int(0, 1_000_000), work: r.int(50, 2000) }
            : { kind: 'compute', key: 0, val: r.int(0, 1000), work: r.int(5_000, 80_000) };
    const req = this.nextReq++;
    this.stats.requests++;
    const conn = c.conn;
    const pending: NonNullable<Client['pending']> = { req, op, sentAtMs: this.nowMs, timer: undefined };
    c.pending = pending;
    this.q.push(this.nowMs + this.clientDelay(), () =>
      this.dispatch(p, () => {
        if (p.clientConns.get(conn) !== c.idx) return;
        p.service?.clientInput(conn, req, op);
      }, 'other'),
    );
    const token = { cancelled: false };
    pending.timer = { cancel: () => (token.cancelled = true) };
    this.q.push(this.nowMs + this.clientTimeoutMs, () => {
      if (token.cancelled || c.pending !== pending) return;
      // Indeterminate: give up on this connection and try a node again.
      c.pending = undefined;
      p.clientConns.delete(conn);
      c.proc = undefined;
      c.preferred = this.rng.int(0, 2);
      this.clientConnect(c);
    });
  }

  private clientReply(c: Client, conn: number, req: number): void {
    const p = c.pending;
    if (p === undefined || p.req !== req || c.conn !== conn) return;
    p.timer?.cancel();
    c.pending = undefined;
    this.stats.completed++;
    if (this.healed && p.sentAtMs >= this.healAtMs) {
      this.progressAfterHeal++;
      if (this.progressAfterHeal === PROGRESS_NEEDED) this.progressAtMs = this.nowMs;
    }
    this.q.push(this.nowMs + this.rng.exp(3), () => (c.proc && c.conn === conn ? this.clientSend(c) : this.clientConnect(c)));
  }

  private clientDisconnected(c: Client, conn: number): void {
    if (c.conn !== conn) return;
    c.pending?.timer?.cancel();
    c.pending = undefined;
    c.proc = undefined;
    c.conn = -1;
    c.preferred = this.rng.int(0, 2);
    this.clientConnect(c);
  }

  // ------------------------------------------------------------------------------ the nemesis

  private fault(kind: string): void {
    this.stats.faults[kind] = (this.stats.faults[kind] ?? 0) + 1;
  }

  private nemesis(): void {
    if (this.healed) return;
    const r = this.rng;
    if (this.corruptionUndetected()) {
      // A corrupted replica is found at its next entry; until then nothing else happens, or a partition
      // or pause could let it claim the VM first (corruption + a failover is a double failure).
      this.q.push(this.nowMs + r.exp(this.meanFaultGapMs), () => this.nemesis());
      return;
    }
    const roll = r.float();
    const alive = this.hosts.filter((h) => h.proc !== null && !h.proc.dead).map((h) => h.proc!);
    if (roll < 0.16) {
      const victim = alive.length > 0 ? r.pick(alive) : undefined;
      if (victim && this.crashAllowed(victim)) {
        const k9 = r.chance(0.75);
        this.fault(k9 ? 'kill-9' : 'power-loss');
        this.trace(victim, () => (k9 ? 'NEMESIS kill -9' : 'NEMESIS power loss'));
        this.kill(victim, k9);
        const h = this.hosts[victim.host]!;
        h.restartPending = true;
        this.q.push(this.nowMs + r.range(50, 1500), () => {
          if (!this.healed && h.restartPending) this.restart(h.index);
        });
      }
    } else if (roll < 0.34) {
      const victim = alive.filter((p) => !p.paused);
      if (victim.length > 0) {
        const p = r.pick(victim);
        const ms = r.chance(0.5) ? r.range(1, this.t.failTimeoutMs) : r.range(this.t.failTimeoutMs, 3 * this.t.failTimeoutMs + 300);
        this.fault('pause');
        this.trace(p, () => `NEMESIS SIGSTOP for ${ms.toFixed(1)} ms`);
        p.paused = true;
        this.q.push(this.nowMs + ms, () => this.resume(p));
      }
    } else if (roll < 0.5) {
      const cs = this.channelConns();
      if (cs.length > 0) {
        const c = r.pick(cs);
        this.fault('channel-cut');
        this.trace(null, () => `NEMESIS cuts connection ${c.id}`);
        this.net.cut(c, 'connection reset by the network', r.chance(0.3));
      }
    } else if (roll < 0.64) {
      const a = r.int(0, 2);
      const b = (a + r.int(1, 2)) % 3;
      const both = r.chance(0.6);
      const ms = r.range(5, 3 * this.t.failTimeoutMs + 200);
      const endCut = r.chance(0.3);
      this.fault(both ? 'partition' : 'partition-one-way');
      this.trace(null, () => `NEMESIS partitions h${a}${both ? '<->' : '->'}h${b} for ${ms.toFixed(1)} ms`);
      this.setLink(a, b, true);
      if (both) this.setLink(b, a, true);
      this.q.push(this.nowMs + ms, () => {
        if (endCut) for (const c of this.channelConns(a, b)) this.net.cut(c, 'connection timed out', false);
        this.setLink(a, b, false);
        if (both) this.setLink(b, a, false);
      });
    } else if (roll < 0.76) {
      const h = r.int(0, 2);
      const ms = r.range(20, 4 * this.t.arbiterDeadlineMs + 200);
      this.fault('arbiter-partition');
      this.trace(null, () => `NEMESIS cuts h${h} from the arbiter for ${ms.toFixed(1)} ms`);
      this.arbBlocked[h] = true;
      this.q.push(this.nowMs + ms, () => (this.arbBlocked[h] = false));
    } else if (roll < 0.82) {
      const ms = r.range(20, 3 * this.t.arbiterDeadlineMs + 100);
      this.fault('arbiter-down');
      this.trace(null, () => `NEMESIS arbiter unreachable for ${ms.toFixed(1)} ms`);
      this.arbDown = true;
      this.q.push(this.nowMs + ms, () => (this.arbDown = false));
    } else if (roll < 0.9) {
      const a = r.int(0, 2);
      const b = (a + r.int(1, 2)) % 3;
      const f = r.range(5, 100);
      const ms = r.range(5, 300);
      this.fault('delay-spike');
      this.slowLinks[a]![b] = f;
      this.slowLinks[b]![a] = f;
      this.q.push(this.nowMs + ms, () => {
        this.slowLinks[a]![b] = 1;
        this.slowLinks[b]![a] = 1;
      });
    } else if (roll < 0.95) {
      const reps = alive.filter((p) => p.replica() !== undefined && p.vcpu !== undefined).map((p) => p.vcpu!);
      if (reps.length > 0) {
        const v = r.pick(reps);
        // Slowdowns may overlap: each restores the speed from before the first, and only if it is the
        // latest; a replica that went live meanwhile keeps the recorder's speed goLive() gave it.
        const base = this.slowed.get(v)?.base ?? v.speed;
        const token = ++this.slowTokens;
        v.speed = base * r.range(0.05, 0.5);
        this.slowed.set(v, { base, token });
        this.fault('replica-slow');
        this.q.push(this.nowMs + r.range(5, 400), () => {
          const s = this.slowed.get(v);
          if (s?.token !== token) return;
          this.slowed.delete(v);
          if (v.mode === 'replay') v.speed = s.base;
        });
      }
    } else if (roll < 0.965) {
      // Silent corruption of a replica's state: it diverges at its next entry, halts, and the primary
      // carries on alone (replica-diverged → halt). Only with entries ahead, so it is found at once.
      // It ends that replica like a crash does: only where a crash is allowed (another can carry the VM
      // on; no arbiter call of the victim's in flight), and only while it follows (not claiming).
      // And only while no other fault is in effect: a partition, pause or slow link could make the
      // corrupted replica take the primary for gone and win the claim before its divergence shows (seed
      // 700074: a partition already in effect; the corrupted backup won, then halted: the VM was lost).
      const reps = this.faultsQuiet()
        ? alive.filter((p) => p.replica()?.core.status().phase === 'following' && p.vcpu !== undefined && p.vcpu.heldCount > 0 && !p.vcpu.corrupted && this.crashAllowed(p))
        : [];
      if (reps.length > 0) {
        const p = r.pick(reps);
        this.fault('replica-corrupt');
        this.trace(p, () => 'NEMESIS corrupts the replica');
        p.vcpu!.corrupted = true;
        p.vcpu!.state.kv[0] = p.vcpu!.state.kv[0]! + 1;
        p.vcpu!.state.hash ^= 0x5bd1e995;
      }
    } else {
      // A host comes back (or a fresh standby appears) early.
      const down = this.hosts.filter((h) => h.proc === null || h.proc.dead);
      if (down.length > 0) {
        const h = r.pick(down);
        this.fault('standby-start');
        this.restart(h.index);
      }
    }
    this.q.push(this.nowMs + r.exp(this.meanFaultGapMs), () => this.nemesis());
  }

  private resume(p: Proc): void {
    if (!p.paused) return;
    p.paused = false;
    if (p.dead) return;
    this.trace(p, () => 'SIGCONT');
    const d = p.deferred;
    p.deferred = [];
    // One pending tick fires (setInterval does not catch up); whether timers or I/O go first is a race.
    const ticksFirst = this.rng.chance(0.5);
    const ticks = d.filter((x) => x.kind === 'tick');
    const rest = d.filter((x) => x.kind !== 'tick');
    for (const x of ticksFirst ? [...ticks, ...rest] : [...rest, ...ticks]) this.q.push(this.nowMs, () => this.dispatch(p, x.fn, x.kind));
  }

  /** No partition, slow link, pause, slowed replica or arbiter fault is in effect. */
  private faultsQuiet(): boolean {
    if (this.arbDown || this.arbBlocked.some((b) => b) || this.slowed.size > 0) return false;
    if (this.blockedLinks.some((row) => row.some((b) => b)) || this.slowLinks.some((row) => row.some((f) => f !== 1))) return false;
    return this.hosts.every((h) => h.proc === null || h.proc.dead || !h.proc.paused);
  }

  /** A replica the nemesis corrupted is still running and has not found its divergence yet. */
  private corruptionUndetected(): boolean {
    return this.hosts.some((h) => h.proc !== null && !h.proc.dead && h.proc.vcpu !== undefined && h.proc.vcpu.corrupted && !h.proc.vcpu.ended);
  }

  /** A crash must leave a replica that can carry the VM on (a double failure loses the VM by design). */
  private crashAllowed(victim: Proc): boolean {
    if (victim.arbiterInFlight > 0 || victim.arbiterRequests > 0) return false;
    for (const h of this.hosts) {
      const p = h.proc;
      if (!p || p.dead || p === victim) continue;
      if (this.viable(p)) return true;
    }
    return false;
  }

  /** Can this process carry the VM on by itself (it is, or can become, the live primary)? */
  private viable(p: Proc): boolean {
    const rec = this.arb.record;
    if (rec === null) return false;
    const ownsNext = (epoch: number): boolean => rec.epoch === epoch || (rec.epoch === epoch + 1 && rec.owner === p.id);
    const pr = p.recorder();
    if (pr) {
      const s = pr.core.status();
      return s.halted === null && ownsNext(s.epoch);
    }
    const b = p.replica();
    if (b) {
      if (p.vcpu?.corrupted) return false;
      const s = b.core.status();
      return (s.phase === 'following' || s.phase === 'draining' || s.phase === 'claiming') && ownsNext(s.epoch);
    }
    const c = p.ckpt();
    if (c?.primary !== undefined && c.phase === 'primary') {
      const s = c.primary.status();
      return s.phase !== 'halted' && ownsNext(s.epoch);
    }
    if (c?.backup !== undefined && c.phase === 'backup') {
      // Only a backup holding a complete checkpoint can go live.
      const s = c.backup.status();
      return (s.phase === 'following' || s.phase === 'claiming') && s.applied > 0 && ownsNext(s.epoch);
    }
    return false;
  }

  private heal(): void {
    this.healed = true;
    this.healAtMs = this.nowMs;
    this.stats.healAtMs = this.nowMs;
    this.trace(null, () => 'HEAL: faults end; every node resumes, links and the arbiter come back, crashed hosts restart as standbys');
    this.arbDown = false;
    for (let a = 0; a < 3; a++) {
      this.arbBlocked[a] = false;
      for (let b = 0; b < 3; b++) {
        if (a !== b) this.setLink(a, b, false);
        this.slowLinks[a]![b] = 1;
      }
    }
    for (const h of this.hosts) {
      const p = h.proc;
      if (p && !p.dead) this.resume(p);
      if (p?.replica() && p.vcpu) p.vcpu.speed = 1000 * this.replicaSpeedMean;
    }
    this.slowed.clear();
    for (const h of this.hosts) {
      if (h.proc === null || h.proc.dead) {
        const i = h.index;
        this.q.push(this.nowMs + this.rng.range(1, 100), () => this.restart(i));
      }
    }
  }

  // ------------------------------------------------------------------------------ checkers

  private noteArbiter(): void {
    const r = this.arb.record;
    if (r && r.epoch > this.stats.maxEpoch) this.stats.maxEpoch = r.epoch;
  }

  /** (lost) Every output ever released is in this state: its entry, at its seq. */
  private checkHasReleased(proc: Proc, state: GuestState, what: string): void {
    for (const r of this.releasedLog) {
      if (r.seq >= state.seq || state.ids[r.seq] !== r.id) {
        this.fail(
          `(lost) ${proc.id} ${what} with ${state.seq} entries, but the output of entry ${r.seq} ` +
            `(released by ${r.by} at ${r.atMs.toFixed(3)} ms) is ${r.seq >= state.seq ? 'beyond its log' : 'not the entry it has there'}: an acknowledged output was lost`,
        );
      }
    }
  }

  private checkInvariants(): void {
    const live = new Map<number, string>();
    const states: Array<{ id: string; s: GuestState }> = [];
    const rec = this.arb.record;
    for (const h of this.hosts) {
      const p = h.proc;
      if (!p || p.dead) continue;
      const pr = p.recorder();
      const c = p.ckpt();
      let liveEpoch = -1;
      if (c !== undefined) {
        this.observeCheckpoints(p);
        const ps = this.primaryOf(p);
        if (ps !== undefined && !ps.halted) liveEpoch = ps.epoch;
        else if (c.backup?.status().phase === 'live') liveEpoch = c.backup.status().epoch;
        if (ps !== undefined && p.vcpu && !p.vcpu.corrupted) states.push({ id: p.id, s: p.vcpu.state });
      } else if (pr) {
        const s = pr.core.status();
        if (s.halted === null) liveEpoch = s.epoch;
        if (p.vcpu && !p.vcpu.corrupted) states.push({ id: p.id, s: p.vcpu.state });
      } else {
        const b = p.replica();
        if (b) {
          const s = b.core.status();
          if (s.phase === 'live') liveEpoch = s.epoch;
          if (s.nextSeq > (this.received.get(s.epoch) ?? 0)) this.received.set(s.epoch, s.nextSeq);
          if (p.vcpu && !p.vcpu.corrupted) states.push({ id: p.id, s: p.vcpu.state });
        }
      }
      if (liveEpoch >= 0) {
        const other = live.get(liveEpoch);
        if (other !== undefined) this.fail(`(a) two live replicas in epoch ${liveEpoch}: ${other} and ${p.id}`);
        live.set(liveEpoch, p.id);
        if (rec && liveEpoch > rec.epoch) this.fail(`(a) ${p.id} is live at epoch ${liveEpoch}, beyond the arbiter's ${rec.epoch}`);
      }
    }
    for (let i = 0; i < states.length; i++) {
      for (let j = i + 1; j < states.length; j++) {
        const a = states[i]!;
        const b = states[j]!;
        if (a.s.seq === b.s.seq && a.s.n === b.s.n && a.s.seq > 0 && a.s.lastId() === b.s.lastId() && a.s.stateHash() !== b.s.stateHash()) {
          this.fail(`(c) ${a.id} and ${b.id} are both after entry ${a.s.seq - 1} at instruction ${a.s.n}, with different state hashes`);
        }
      }
    }
  }
}

/**
 * What a node tells operators about itself: Prometheus metrics (prom-client, one registry per node) and
 * a bounded timeline of its failovers and re-replications, both served by the control endpoint
 * (`GET /metrics`, `GET /timeline`).
 *
 * The replication cores stay pure: the drivers (PrimaryNode, BackupNode, StandbyNode) observe their own
 * actions and call the methods here. One NodeMetrics lives as long as the process's node does and is
 * handed on when the node changes role (a standby becomes a backup, a backup goes live as a primary),
 * so counters keep counting across the change. Gauges of the current state are read at scrape time
 * from the driver that is active now (`setSource`).
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { RawReply } from './control.js';

/** The state a driver reports at scrape time. */
export interface NodeGaugeSource {
  role: 'primary' | 'backup' | 'standby' | 'halted';
  epoch: number;
  /** Primary: a connected, armed backup holds the log (the output rule applies). Backup: armed and hearing its primary. */
  protected: boolean;
  instructionNumber: number;
  /** Primary: outputs waiting for the backup's ACK. */
  outputsHeld: number;
  guestMemoryBytes: number;
  /** Bytes of the guest's files on its virtual disk (0 without one). */
  guestDiskBytes?: number;
  /** Primary: 0..1 of the current re-replication (1 once armed; 0 when none). */
  rereplicationProgress: number;
}

/** The phases of a failover and of the re-replication that follows, in the order they happen. */
export const TIMELINE_PHASES = [
  'silence-detected',
  'drained',
  'claim-won',
  'live',
  'standby-recruited',
  'snapshot-streamed',
  'armed',
] as const;
export type TimelinePhase = (typeof TIMELINE_PHASES)[number];

export interface TimelineEvent {
  /** Increases by one per event of this node (clients ask for events after the last they saw). */
  id: number;
  /** Wall-clock time, ms since the epoch. */
  atMs: number;
  kind: TimelinePhase | 'claim-lost' | 'join-failed' | 'halted';
  /** Which replica saw it: 'backup' (the primary failed) or 'primary' (the backup failed, or a re-replication). */
  side: 'backup' | 'primary';
  epoch: number;
  /** Duration of the phase this event ends, where it has one (detect, drain, claim, go-live, transfer). */
  phaseMs?: number;
  detail?: string;
}

/** Events kept per node (oldest dropped first). */
export const TIMELINE_MAX_EVENTS = 256;

/** Checkpoint pauses and encodes: tenths of a millisecond to a second. */
const CHECKPOINT_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];
const SECONDS_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export type FailoverPhase = 'detect' | 'drain' | 'claim' | 'go_live';

/**
 * Process metrics (CPU, memory, heap, event-loop lag, GC) exist once per process, whatever the number of
 * nodes in it: one registry, made on first use. collectDefaultMetrics installs a process-wide GC
 * observer that holds its registry for the life of the process, so a registry per node would keep
 * every node ever made alive (the simulator makes thousands in one process).
 */
let processRegistry: Registry | undefined;
function processMetrics(): Registry {
  if (processRegistry === undefined) {
    processRegistry = new Registry();
    collectDefaultMetrics({ register: processRegistry, prefix: 'ftvm_' }); // ftvm_process_cpu_seconds_total, ftvm_nodejs_heap_size_used_bytes, …
  }
  return processRegistry;
}

export class NodeMetrics {
  readonly registry = new Registry();
  private source: (() => NodeGaugeSource) | undefined;
  private readonly events: TimelineEvent[] = [];
  private nextEventId = 1;

  readonly logBytes: Counter<'direction'>;
  readonly logEntries: Counter<'direction'>;
  readonly heartbeats: Counter<'direction'>;
  readonly reconnects: Counter;
  readonly failovers: Counter<'side' | 'outcome'>;
  readonly failoverPhase: Histogram<'phase'>;
  readonly lastFailoverPhase: Gauge<'phase'>;
  readonly lag: Histogram;
  readonly holdTime: Histogram;
  readonly rereplications: Counter<'outcome'>;
  readonly rereplicationPause: Histogram;
  readonly rereplicationSeconds: Histogram;
  readonly snapshotBytes: Counter;
  readonly poolSize: Gauge;
  /** Checkpoint mode: checkpoints captured and sent ('out', primary) or applied ('in', backup). */
  readonly checkpoints: Counter<'direction'>;
  readonly checkpointBytes: Counter<'direction'>;
  /** Checkpoint mode: how long the guest stood still for each capture (primary). */
  readonly checkpointPause: Histogram;
  /** Checkpoint mode: the I/O thread's time to encode each checkpoint (primary; the guest runs meanwhile). */
  readonly checkpointEncode: Histogram;
  /** Checkpoint mode: CHECKPOINT data sent, resends included (primary). */
  readonly checkpointSentBytes: Counter;
  readonly vcpuUtilization: Gauge;

  /** Hold-start times of the outputs the core holds, oldest first (the core releases them in order). */
  private heldSinceMs: number[] = [];
  private heldHead = 0;
  /** vCPU busy/idle samples over the last second (utilisation). */
  private busySamples: Array<[number, boolean]> = [];

  constructor(readonly vm: string) {
    const registers = [this.registry];
    const r = { registers };
    const src = (): NodeGaugeSource | undefined => {
      try {
        return this.source?.();
      } catch {
        return undefined;
      }
    };
    const roles = ['primary', 'backup', 'standby', 'halted'] as const;
    new Gauge({
      name: 'ftvm_role',
      help: 'The node\'s current role: 1 for the role it has, 0 for the others',
      labelNames: ['role'],
      ...r,
      collect() {
        const s = src();
        for (const role of roles) this.set({ role }, s?.role === role ? 1 : 0);
      },
    });
    const gauge = (name: string, help: string, read: (s: NodeGaugeSource) => number): void => {
      new Gauge({
        name,
        help,
        ...r,
        collect() {
          const s = src();
          if (s) this.set(read(s));
        },
      });
    };
    gauge('ftvm_epoch', 'The epoch this node is in (fencing token; grows at every failover and re-arming)', (s) => s.epoch);
    gauge('ftvm_protected', '1 while the VM is protected by an armed backup that holds the log, else 0', (s) => (s.protected ? 1 : 0));
    gauge('ftvm_instruction_number', 'The guest\'s instruction number on this replica', (s) => s.instructionNumber);
    gauge('ftvm_outputs_held', 'Outputs the primary holds until the backup acknowledges their log entry', (s) => s.outputsHeld);
    gauge('ftvm_guest_memory_bytes', 'Size of the guest\'s linear memory', (s) => s.guestMemoryBytes);
    gauge('ftvm_guest_disk_bytes', 'Bytes of the guest\'s files on its virtual disk (0 without a disk)', (s) => s.guestDiskBytes ?? 0);
    gauge('ftvm_rereplication_progress_ratio', 'Progress of the current re-replication (0..1; 1 once armed, 0 when none runs)', (s) => s.rereplicationProgress);
    const busy = this.busySamples;
    this.vcpuUtilization = new Gauge({
      name: 'ftvm_vcpu_utilization_ratio',
      help: 'Share of the last second the vCPU worker was running the guest rather than idle (sampled every driver tick)',
      ...r,
      collect() {
        if (busy.length > 0) this.set(busy.filter(([, b]) => b).length / busy.length);
      },
    });
    // The hot path adds to plain numbers (logged); the counters take them in when scraped.
    const flush = (): void => this.flushLogCounts();
    this.logBytes = new Counter({ name: 'ftvm_log_bytes_total', help: 'Encoded log bytes produced (primary: sent) or received (backup)', labelNames: ['direction'], ...r, collect: flush });
    this.logEntries = new Counter({ name: 'ftvm_log_entries_total', help: 'Log entries produced (primary) or received (backup)', labelNames: ['direction'], ...r, collect: flush });
    this.heartbeats = new Counter({ name: 'ftvm_heartbeats_total', help: 'Heartbeat frames sent or received on the logging channel', labelNames: ['direction'], ...r });
    this.reconnects = new Counter({ name: 'ftvm_channel_reconnects_total', help: 'Logging channel connections after the first one of this node', ...r });
    this.failovers = new Counter({ name: 'ftvm_failovers_total', help: 'Failovers this node took part in, by its side and outcome', labelNames: ['side', 'outcome'], ...r });
    this.failoverPhase = new Histogram({ name: 'ftvm_failover_phase_seconds', help: 'Duration of each failover phase: detect (silence → timeout), drain, claim, go_live', labelNames: ['phase'], buckets: SECONDS_BUCKETS, ...r });
    this.lastFailoverPhase = new Gauge({ name: 'ftvm_last_failover_phase_seconds', help: 'Duration of each phase of the last failover of this node', labelNames: ['phase'], ...r });
    this.lag = new Histogram({ name: 'ftvm_execution_lag_seconds', help: 'How far the backup\'s replay is behind the primary (sampled every driver tick while protected)', buckets: SECONDS_BUCKETS, ...r });
    this.holdTime = new Histogram({ name: 'ftvm_output_hold_seconds', help: 'How long the primary held each output until the backup acknowledged its entry', buckets: SECONDS_BUCKETS, ...r });
    this.rereplications = new Counter({ name: 'ftvm_rereplications_total', help: 'Re-replications (a standby cloned into a new backup) by outcome', labelNames: ['outcome'], ...r });
    this.rereplicationPause = new Histogram({ name: 'ftvm_rereplication_pause_seconds', help: 'How long the guest stood still for the snapshot of a re-replication', buckets: SECONDS_BUCKETS, ...r });
    this.rereplicationSeconds = new Histogram({ name: 'ftvm_rereplication_seconds', help: 'From recruiting a standby to the armed pair', buckets: SECONDS_BUCKETS, ...r });
    this.snapshotBytes = new Counter({ name: 'ftvm_snapshot_sent_bytes_total', help: 'Snapshot memory bytes streamed to joining standbys', ...r });
    this.checkpoints = new Counter({ name: 'ftvm_checkpoints_total', help: 'Checkpoint mode: checkpoints captured and sent (out, primary) or applied (in, backup)', labelNames: ['direction'], ...r });
    this.checkpointBytes = new Counter({ name: 'ftvm_checkpoint_bytes_total', help: 'Checkpoint mode: encoded checkpoint bytes sent (out) or applied (in)', labelNames: ['direction'], ...r });
    this.checkpointPause = new Histogram({ name: 'ftvm_checkpoint_pause_seconds', help: 'Checkpoint mode: how long the guest stood still for each checkpoint capture', buckets: CHECKPOINT_BUCKETS, ...r });
    this.checkpointEncode = new Histogram({ name: 'ftvm_checkpoint_encode_seconds', help: 'Checkpoint mode: time to encode a checkpoint (memory delta) on the I/O thread', buckets: CHECKPOINT_BUCKETS, ...r });
    this.checkpointSentBytes = new Counter({ name: 'ftvm_checkpoint_sent_bytes_total', help: 'Checkpoint mode: CHECKPOINT data sent to the backup, resends included', ...r });
    this.poolSize = new Gauge({ name: 'ftvm_standby_pool_size', help: 'Standbys registered in the VM\'s pool as last seen by this node', labelNames: ['state'], ...r });
    // Known label values start at 0, so a rate() sees the first increment and a scrape shows every series.
    for (const direction of ['in', 'out']) {
      this.logBytes.inc({ direction }, 0);
      this.logEntries.inc({ direction }, 0);
      this.heartbeats.inc({ direction }, 0);
    }
    for (const [side, outcome] of [['backup', 'went-live'], ['primary', 'went-alone'], ['backup', 'halted'], ['primary', 'halted']] as const) this.failovers.inc({ side, outcome }, 0);
    for (const outcome of ['armed', 'failed']) this.rereplications.inc({ outcome }, 0);
    for (const phase of ['detect', 'drain', 'claim', 'go_live']) this.failoverPhase.zero({ phase });
  }

  /** The standby pool as a primary last saw it (ftvm_standby_pool_size by state). */
  notePool(pool: ReadonlyArray<{ state: string }>): void {
    this.poolSize.set({ state: 'free' }, pool.filter((p) => p.state === 'free').length);
    this.poolSize.set({ state: 'recruited' }, pool.filter((p) => p.state === 'recruited').length);
  }

  /** The active driver reports its current state from here on. */
  setSource(source: () => NodeGaugeSource): void {
    this.source = source;
  }

  async text(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: `${await processMetrics().metrics()}\n${await this.registry.metrics()}` };
  }

  // ---------------------------------------------------------------- observations from the drivers

  /** Log bytes and entries not yet added to the counters: [out bytes, out entries, in bytes, in entries]. */
  private readonly pendingLog = [0, 0, 0, 0];

  /**
   * A batch of log entries produced (primary, 'out') or received (backup, 'in'). Called once per batch on
   * the hot path: it adds to plain numbers, and the counters take them in at the next scrape (a labelled
   * prom-client increment hashes its labels every time).
   */
  logged(direction: 'in' | 'out', bytes: number, entries: number): void {
    const i = direction === 'out' ? 0 : 2;
    this.pendingLog[i]! += bytes;
    this.pendingLog[i + 1]! += entries;
  }

  private flushLogCounts(): void {
    const p = this.pendingLog;
    if (p[0]! > 0 || p[1]! > 0) {
      this.logBytes.inc({ direction: 'out' }, p[0]!);
      this.logEntries.inc({ direction: 'out' }, p[1]!);
    }
    if (p[2]! > 0 || p[3]! > 0) {
      this.logBytes.inc({ direction: 'in' }, p[2]!);
      this.logEntries.inc({ direction: 'in' }, p[3]!);
    }
    p.fill(0);
  }

  /** Primary: outputs entered the core (each is held until released; alone, released at once). */
  outputsEntered(count: number, nowMs: number): void {
    for (let i = 0; i < count; i++) this.heldSinceMs.push(nowMs);
    // Bounded: the core holds at most heldMaxOutputs; never let a mismatch grow this without limit.
    if (this.heldSinceMs.length - this.heldHead > 200_000) this.resetHeld();
  }

  /** Primary: the core released outputs (in the order they entered). */
  outputsReleased(count: number, nowMs: number): void {
    for (let i = 0; i < count && this.heldHead < this.heldSinceMs.length; i++) {
      this.holdTime.observe(Math.max(0, nowMs - this.heldSinceMs[this.heldHead++]!) / 1000);
    }
    if (this.heldHead > 4096 && this.heldHead * 2 > this.heldSinceMs.length) {
      this.heldSinceMs = this.heldSinceMs.slice(this.heldHead);
      this.heldHead = 0;
    }
  }

  /** The node stopped holding (a new role, a halt): forget pending hold starts. */
  resetHeld(): void {
    this.heldSinceMs = [];
    this.heldHead = 0;
  }

  /** One driver tick: is the guest running now? */
  sampleVcpu(nowMs: number, busy: boolean): void {
    this.busySamples.push([nowMs, busy]);
    while (this.busySamples.length > 0 && nowMs - this.busySamples[0]![0] > 1000) this.busySamples.shift();
    if (this.busySamples.length > 2000) this.busySamples.splice(0, this.busySamples.length - 2000);
  }

  phase(phase: FailoverPhase, ms: number): void {
    this.failoverPhase.observe({ phase }, ms / 1000);
    this.lastFailoverPhase.set({ phase }, ms / 1000);
  }

  event(e: Omit<TimelineEvent, 'id' | 'atMs'>): TimelineEvent {
    const ev: TimelineEvent = { id: this.nextEventId++, atMs: Date.now(), ...e };
    if (ev.phaseMs !== undefined) ev.phaseMs = Math.round(ev.phaseMs * 10) / 10;
    this.events.push(ev);
    if (this.events.length > TIMELINE_MAX_EVENTS) this.events.splice(0, this.events.length - TIMELINE_MAX_EVENTS);
    return ev;
  }

  /** The timeline, oldest first; `afterId` limits it to newer events. */
  timeline(afterId = 0): TimelineEvent[] {
    return this.events.filter((e) => e.id > afterId);
  }
}


/**
 * The control endpoint's observability routes, shared by every driver: `GET /metrics` (Prometheus text
 * format) and `GET /timeline` ({vm, events}). Undefined for any other request.
 */
export async function observabilityRoute(m: NodeMetrics, method: string, path: string): Promise<unknown> {
  if (method !== 'GET') return undefined;
  if (path === '/metrics') {
    const t = await m.text();
    return new RawReply(t.contentType, t.body);
  }
  if (path === '/timeline') return { vm: m.vm, events: m.timeline() };
  return undefined;
}

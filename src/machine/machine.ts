/**
 * The deterministic machine: one instrumented guest instance, its devices, and the two modes of the
 * VMM that drives it.
 *
 * - record: the guest runs freely; every nondeterministic event becomes a log entry (sink.entry) and
 *   every output is reported with the sequence number the output rule waits for (sink.output): in log
 *   format 2 the number of entries logged before it (the backup must hold the next entry, which the
 *   batch's OUT_DIGEST at the latest is: sealOutputs), in format 1 its own OUT_* entry's.
 * - replay: the guest consumes a log; it stops at exactly each delivery's instruction number, gets every
 *   host-call result from the log, never runs past what the log grants, and checks each host call
 *   against the entry it meets and its outputs against the log (format 2: each OUT_DIGEST, at its idle
 *   point or checkpoint, against the outputs the replica produced since the previous one; format 1:
 *   each output against its own entry), else DeterminismViolation.
 *
 * The machine is synchronous and single-threaded; the vCPU worker (vcpu-worker.ts) runs it off the I/O
 * thread. Blocking (waiting for input or for more log) is delegated to the RecordEnv / ReplaySource.
 */
import { createHash } from 'node:crypto';
import { setFlagsFromString } from 'node:v8';
import { crc32 } from 'node:zlib';
import { LOG_FORMAT, LOG_FORMAT_DIGEST, type LogFormat } from '../log/codec.js';
import { DeterminismViolation, FtvmError, GuestTrap, assert } from '../util/errors.js';
import {
  EntryType,
  describeEntry,
  isAsync,
  type AsyncEntry,
  type HaltKind,
  type LogEntry,
  type OutDigestEntry,
  type OutputEntry,
} from '../log/entry.js';
import type { VmConfig } from '../log/recording.js';
import { ConnState, Devices, FdKind, MAX_TIMERS, RecordType, RxRing, badGuestPointer, type DeviceState } from './devices.js';
import { DIRTY_CACHE_GLOBAL, DIRTY_CACHE_RESET, DIRTY_MODULE, DIRTY_PAGE_BYTES, DirtyPages } from './dirty-pages.js';
import { ATOMIC_WAIT32, ATOMIC_WAIT64, DEPTH_GLOBAL, FUEL_GLOBAL, INDIRECT_GLOBAL, INTERNAL_MODULE, MEMORY_EXPORT, START_EXPORT, THREAD_SPAWN_MODULE, THREAD_SPAWN_NAME, type InstrumentedModule } from './instrumented.js';
import { DEFAULT_MAX_GUEST_THREADS, ThreadHub, WouldBlock } from './threads.js';
import type { ThreadsState } from './thread-protocol.js';
import { VirtualDisk } from './disk.js';
import { makeWasiImports } from './wasi.js';

export const PAGE_BYTES = 65536;
export const DEFAULT_SLICE_UNITS = 2_000_000;
export const MAX_RANDOM_BYTES = 65536;
export const MAX_OUTPUT_BYTES = 1024 * 1024;
const MAX_PENDING_INPUTS = 1024;

export interface NicInput {
  kind: 'open' | 'data' | 'close';
  conn: number;
  data?: Uint8Array;
}

/** Sources of nondeterminism and of input for record mode. */
export interface RecordEnv {
  nowNs(clock: number): bigint;
  /** Monotonic milliseconds, for timer deadlines. */
  nowMs(): number;
  randomFill(buf: Uint8Array): void;
  /**
   * Up to `max` inputs ready now. `count` is the guest's instruction number. The inputs' data is handed
   * over: the machine logs views of it (NIC_DATA entries), so the env must not write it afterwards.
   */
  takeInputs(count: number, max: number): NicInput[];
  /** Guest idle with nothing to deliver: block until input may be ready or `deadlineMs`. False = stop the run. */
  waitForWork(count: number, deadlineMs: number | undefined): boolean;
  /** Instructions between polls for input while the guest computes. */
  readonly sliceUnits: number;
  /** Optional hook at each checkpoint (after deliveries): lag control may block here. */
  atCheckpoint?(count: number): void;
  /** Optional hook between steps (the machine is at an idle point): snapshots are taken here. */
  betweenSteps?(count: number): void;
  /** Optional: sleep up to `ms` (the WASI inbox is full and input must wait). */
  pause?(ms: number): void;
}

/** The log a replaying machine consumes. */
export interface ReplaySource {
  /** The entry `i` places after the head, if held. */
  peek(i: number): LogEntry | undefined;
  shift(): LogEntry | undefined;
  /** Highest instruction number the primary is known to have reached (its entries and heartbeats). */
  grantedUpTo(): number;
  /** Block until more entries or a higher grant are held. False: nothing more will come. */
  waitForMore(): boolean;
  /** Optional hook at each replay checkpoint (progress reporting). */
  atCheckpoint?(count: number): void;
  /** Optional hook at each idle point the replica reaches (progress reporting). */
  atIdle?(count: number): void;
  /**
   * Go-live: asked when the log is exhausted (waitForMore returned false). Returning a RecordEnv turns
   * the replica into a recording primary at exactly this point, mid-step or idle.
   */
  takeOver?(): RecordEnv | undefined;
}

export interface GuestOutput {
  /** Sequence number of the output's own log entry (the output rule waits for its ACK). */
  seq: number;
  n: number;
  kind: 'net' | 'close' | 'console';
  conn: number;
  fd: number;
  data: Uint8Array;
}

export interface MachineSink {
  entry(e: LogEntry, seq: number): void;
  output(o: GuestOutput): void;
  /**
   * Replay: the sink keeps no output's bytes past the `output` call unless the output's connection is
   * proxied (the vCPU worker's: it keeps only proxied connections' tails). Its outputs on other
   * connections are then views of guest memory, not copies. Default false (every output a copy).
   */
  replayBorrowsOutputs?: boolean;
  /** A state hash was logged (record) or verified against the log (replay) at instruction `n`. */
  stateHash?(n: number, hash: Uint8Array): void;
}

export interface HaltInfo {
  kind: HaltKind;
  code: number;
  message: string;
  n: number;
}

export type RunResult =
  | { state: 'halted'; count: number; halt: HaltInfo }
  | { state: 'stopped'; count: number }
  | { state: 'starved'; count: number; midStep: boolean };

export interface Snapshot {
  count: number;
  memory: Uint8Array;
  globals: Array<number | bigint>;
  devices: DeviceState;
  stepAgain: boolean;
  deliveredInStep: boolean;
  booted: boolean;
  /** Entries logged (record) or consumed (replay) before this point. */
  seq: number;
  /** The virtual disk (disk.ts serialization), when the VM has one. */
  disk?: Uint8Array;
  /**
   * A WASI command blocked in a call: its wasm stack, unwound by Asyncify (the bytes the guest's
   * asyncify data buffer held). The machine restored from it rewinds into the same call.
   */
  resume?: Uint8Array;
  /**
   * A guest instrumented with the store barrier (dirty-pages.ts): the pages written since the previous
   * snapshot (`map`, a byte per 4 KiB page; absent when not known: every page may have changed) and the
   * snapshot's number in that series (`seq`: a reader that missed one must compare every page).
   */
  dirty?: { map?: Uint8Array; seq: number };
  /** A wasi-threads guest: its other threads, each parked (unwound) in a blocking point. */
  threads?: ThreadsState;
}

/**
 * How long a snapshot waits for every guest thread to park before it is refused (and tried again later):
 * doubled after each refusal up to the maximum (threads still starting, or a machine short of CPU, must
 * not starve every snapshot), back to the minimum after a success.
 */
const THREAD_STOP_TIMEOUT_MS = 200;
const THREAD_STOP_TIMEOUT_MAX_MS = 3200;

class GuestExit extends Error {
  constructor(readonly code: number) {
    super(`guest exited with code ${code}`);
  }
}

/** Internal: unwinds the guest when a replay log ends mid-step (or while it is blocked in a call). */
class ReplayStarved extends Error {
  constructor(
    readonly count: number,
    readonly atBlock = false,
  ) {
    super('replay log ended');
  }
}

/** Internal: unwinds a guest blocked in a WASI call when the record environment asks to stop. */
class BlockedStop extends Error {
  constructor(readonly count: number) {
    super('stopped while the guest was blocked in a call');
  }
}

/** Internal: a blocking call gives way so the command can unwind its stack (Asyncify) for a snapshot. */
class UnwindRequest extends Error {
  constructor() {
    super('unwinding for a snapshot');
  }
}

interface AsyncifyExports {
  start_unwind(ptr: number): void;
  stop_unwind(): void;
  start_rewind(ptr: number): void;
  stop_rewind(): void;
  get_state(): number;
}
const ASYNCIFY_NORMAL = 0;
const ASYNCIFY_UNWINDING = 1;
const ASYNCIFY_REWINDING = 2;
/** Where the unwound stack is written, transiently (the guest's bytes there are put back before it runs). */
const ASYNCIFY_DATA_PTR = 16;
const ASYNCIFY_DATA_MAX_BYTES = 1024 * 1024;

/** Bytes of client input the record side holds for a WASI guest that has not read it yet. */
export const SOCKET_INBOX_MAX_BYTES = 64 * 1024 * 1024;

/**
 * Record side of the WASI sockets: connections opened but not yet accepted and bytes received but not
 * yet read. Not deterministic state (never hashed or snapshotted): the guest only learns of it through
 * calls whose results are logged (sock_accept, sock_recv, poll_oneoff). It also keeps the consumption
 * report of every guest's input (WASI reads, or deliveries into a reactor's ring) for the client
 * service's per-connection backpressure.
 */
export class SocketInbox {
  readonly acceptQueue: number[] = [];
  /** Proxied connections' tags (docs/PROXY.md), from their open until the guest accepts them. */
  readonly tags = new Map<number, Uint8Array>();
  readonly rx = new Map<number, { chunks: Uint8Array[]; bytes: number; eof: boolean }>();
  totalBytes = 0;
  /** Per connection, bytes of input the guest consumed (or that were discarded) since `takeConsumed`. */
  private consumed = new Map<number, number>();

  private release(conn: number, bytes: number): void {
    if (bytes > 0) this.consumed.set(conn, (this.consumed.get(conn) ?? 0) + bytes);
  }

  /**
   * The consumption report for the client service's per-connection backpressure, as pairs
   * (conn, bytes), and resets it; undefined when nothing was consumed.
   */
  takeConsumed(): number[] | undefined {
    if (this.consumed.size === 0) return undefined;
    const out: number[] = [];
    for (const [conn, bytes] of this.consumed) out.push(conn, bytes);
    this.consumed = new Map();
    return out;
  }

  available(conn: number): { bytes: number; eof: boolean } {
    const r = this.rx.get(conn);
    // A connection the record side does not know (a replica that went live) has no more input.
    return r === undefined ? { bytes: 0, eof: true } : { bytes: r.bytes, eof: r.eof };
  }

  /** Up to `max` bytes of `conn`'s input; consumed unless `peek`. */
  take(conn: number, max: number, peek: boolean): Uint8Array {
    const r = this.rx.get(conn);
    if (r === undefined || r.bytes === 0 || max === 0) return new Uint8Array(0);
    const n = Math.min(max, r.bytes);
    const out = new Uint8Array(n);
    let off = 0;
    let i = 0;
    while (off < n) {
      const c = r.chunks[i]!;
      const k = Math.min(c.length, n - off);
      out.set(c.subarray(0, k), off);
      off += k;
      if (!peek) {
        if (k === c.length) r.chunks.shift();
        else r.chunks[0] = c.subarray(k);
      } else {
        i++;
      }
    }
    if (!peek) {
      r.bytes -= n;
      this.totalBytes -= n;
      this.release(conn, n);
    }
    return out;
  }

  /**
   * Input that left the VMM's hands another way: delivered into a reactor's receive ring, or dropped
   * because the guest already closed the connection. Reported like consumed input.
   */
  handedOff(conn: number, bytes: number): void {
    this.release(conn, bytes);
  }

  drop(conn: number): void {
    this.tags.delete(conn);
    const r = this.rx.get(conn);
    if (r !== undefined) {
      this.totalBytes -= r.bytes;
      this.release(conn, r.bytes);
    }
    this.rx.delete(conn);
    const i = this.acceptQueue.indexOf(conn);
    if (i >= 0) this.acceptQueue.splice(i, 1);
  }
}

let tierFlagsSet = false;
/** Compile guests with the optimizing tier only: Node 20 has no OSR for wasm (DESIGN.md §3). */
export function compileGuest(binary: Uint8Array): WebAssembly.Module {
  if (!tierFlagsSet) {
    setFlagsFromString('--no-liftoff');
    tierFlagsSet = true;
  }
  return new WebAssembly.Module(binary);
}

export interface MachineOptions {
  instrumented: InstrumentedModule;
  /** Compiled instrumented module; compiled from `instrumented.binary` when absent. */
  compiled?: WebAssembly.Module;
  config: VmConfig;
  sink: MachineSink;
  mode: 'record' | 'replay';
  env?: RecordEnv;
  source?: ReplaySource;
  /** Replay: stop at least this often (instructions) to report progress, even when the log grants more. */
  replaySliceUnits?: number;
  /** This replica's disk image file: the virtual disk is written there when the guest syncs. */
  diskImagePath?: string;
  /** The log's format (default: LOG_FORMAT, output digests); replay of an old recording passes 1. */
  logFormat?: LogFormat;
  /** A wasi-threads guest (checkpoint mode): at most this many threads besides the main one. */
  maxThreads?: number;
  /** The vCPU's input queue buffer: guest threads wake the vCPU thread on its wake word. */
  queue?: SharedArrayBuffer;
}

export class Machine {
  readonly config: VmConfig;
  readonly instrumented: InstrumentedModule;
  mode: 'record' | 'replay';
  private env: RecordEnv | undefined;
  private source: ReplaySource | undefined;
  private readonly sink: MachineSink;
  readonly instance: WebAssembly.Instance;
  private readonly memory: WebAssembly.Memory;
  private readonly fuel: WebAssembly.Global;
  private readonly depth: WebAssembly.Global;
  private readonly globals: WebAssembly.Global[];
  readonly devices = new Devices();

  private budgetEnd = 0;
  private readonly replaySliceUnits: number;
  private seq = 0;
  private booted = false;
  private stepAgain = false;
  private inStep = false;
  /** A checkpoint delivery happened during the current/last step: the guest gets another step. */
  private deliveredInStep = false;
  /** Set when a replay log ended mid-step: the instance's stack was unwound and it cannot continue. */
  private broken = false;
  halted: HaltInfo | null = null;
  private pending: NicInput[] = [];
  /** Set while a WASI command is blocked in a call (an idle point of a command: hashes are logged there). */
  private blocked = false;
  /** Asyncify's exports when the guest was rewritten at its blocking calls. */
  private readonly asy: AsyncifyExports | undefined;
  /** The current wait for guest threads to park (THREAD_STOP_TIMEOUT_MS, doubled per refusal). */
  private threadStopTimeoutMs = THREAD_STOP_TIMEOUT_MS;
  private unwindRequested = false;
  /** The unwound stack of a command stopped in a blocking call: rewound into it when the machine runs. */
  private resumeImage: Uint8Array | undefined;
  /** The guest's own bytes under the asyncify data buffer while it is in use. */
  private asyncifySaved: Uint8Array | undefined;
  /** Record side of the WASI sockets (see SocketInbox). */
  readonly inbox = new SocketInbox();
  /** The pre-opened listening socket's descriptor, when the guest imports sock_accept. */
  readonly listenerFd: number | undefined;
  /** The virtual disk, pre-opened as /data at fd 3 (VmConfig.diskBytes > 0). */
  disk: VirtualDisk | undefined;
  readonly diskImagePath: string | undefined;
  private memBytes!: Uint8Array;
  private memView!: DataView;
  /** The guest's memory is shared (its buffer is a SharedArrayBuffer, which growing does not detach). */
  private readonly memShared: boolean;
  /** The store barrier's page map (a guest instrumented with InstrumentOptions.dirtyPages). */
  private readonly dirty: DirtyPages | undefined;
  private readonly dirtyCache: WebAssembly.Global | undefined;
  /** Log format 2: outputs are covered by OUT_DIGEST entries rather than logged one by one. */
  readonly digests: boolean;
  private readonly outRecord = Buffer.alloc(18);
  /** A wasi-threads guest (checkpoint mode): its threads beside the main one, which runs here. */
  readonly threads: ThreadHub | undefined;
  /** The shared memory every thread's instance imports (a threaded guest). */
  private readonly sharedMemory: WebAssembly.Memory | undefined;
  /** Restored from a snapshot with threads: they start (rewinding) when the machine runs. */
  private pendingThreads: ThreadsState | undefined;
  /** The other threads are parked until the main thread's rewind ends (or, restored, start then). */
  private resumeThreadsAfterRewind = false;

  constructor(opts: MachineOptions) {
    this.digests = (opts.logFormat ?? LOG_FORMAT) === LOG_FORMAT_DIGEST;
    this.config = opts.config;
    this.instrumented = opts.instrumented;
    this.mode = opts.mode;
    this.env = opts.env;
    this.source = opts.source;
    this.sink = opts.sink;
    this.replaySliceUnits = opts.replaySliceUnits ?? DEFAULT_SLICE_UNITS;
    this.diskImagePath = opts.diskImagePath;
    this.disk = (opts.config.diskBytes ?? 0) > 0 ? new VirtualDisk(opts.config.diskBytes!) : undefined;
    if (this.mode === 'record') assert(this.env !== undefined, 'record mode needs a RecordEnv');
    if (this.mode === 'replay') assert(this.source !== undefined, 'replay mode needs a ReplaySource');
    const compiled = opts.compiled ?? compileGuest(opts.instrumented.binary);
    this.dirty = opts.instrumented.dirtyPages === true ? new DirtyPages() : undefined;
    const spec = opts.instrumented.sharedMemory;
    if (spec !== undefined) {
      // Threads run freely: only checkpoint mode (state transfer, a record vCPU whose log is not shipped) runs them.
      if (this.mode !== 'record') throw new FtvmError('FTVM_ERR_UNSUPPORTED_FEATURE', 'a threaded guest cannot be replayed: run it with --mode checkpoint');
      this.sharedMemory = new WebAssembly.Memory({ initial: spec.initialPages, maximum: spec.maximumPages, shared: true });
    }
    const importObject = this.imports();
    this.instance = new WebAssembly.Instance(compiled, importObject);
    const ex = this.instance.exports;
    this.dirtyCache = this.dirty !== undefined ? (ex[DIRTY_CACHE_GLOBAL] as WebAssembly.Global) : undefined;
    this.memory = this.sharedMemory ?? (ex[MEMORY_EXPORT] as WebAssembly.Memory);
    this.memShared = this.memory.buffer instanceof SharedArrayBuffer;
    if (spec !== undefined) {
      this.threads = new ThreadHub({
        instrumented: opts.instrumented,
        compiled,
        memory: this.memory,
        spec,
        imports: importObject,
        queue: opts.queue,
        maxThreads: opts.maxThreads ?? DEFAULT_MAX_GUEST_THREADS,
        notice: (text) => this.output('console', 0, 2, Buffer.from(text, 'utf8')),
        trap: (message) => {
          throw new GuestTrap(message, this.count);
        },
      });
    }
    this.fuel = ex[FUEL_GLOBAL] as WebAssembly.Global;
    this.depth = ex[DEPTH_GLOBAL] as WebAssembly.Global;
    this.globals = opts.instrumented.globalExports.map((n) => ex[n] as WebAssembly.Global);
    if (opts.instrumented.asyncified) {
      const f = (n: string): ((...a: number[]) => number) => ex[`asyncify_${n}`] as (...a: number[]) => number;
      this.asy = { start_unwind: f('start_unwind'), stop_unwind: f('stop_unwind'), start_rewind: f('start_rewind'), stop_rewind: f('stop_rewind'), get_state: f('get_state') };
    }
    if (typeof ex.ftvm_step !== 'function' && typeof ex._start !== 'function') {
      throw new FtvmError('FTVM_ERR_ABI_EXPORT', 'the guest exports neither ftvm_step (reactor) nor _start (WASI command)');
    }
    this.refreshMemory();
    this.setBudgetEnd(0);
    let nextFd = 3;
    if (this.disk !== undefined) {
      this.devices.fds.set(nextFd, { kind: FdKind.DIR, conn: 0, nonblock: false, shut: 0, ino: 1, rights: 3, preopen: '/data' });
      nextFd++;
    }
    if (opts.instrumented.imports.some((i) => i.module === 'wasi_snapshot_preview1' && i.name === 'sock_accept')) {
      // After the pre-opened directory: wasi-libc scans fd 3, 4, … for directories and stops at the
      // first EBADF, which a socket answers (wasmtime's issue #3936; wazero does the same).
      this.listenerFd = nextFd;
      this.devices.fds.set(this.listenerFd, { kind: FdKind.LISTENER, conn: 0, nonblock: false, shut: 0 });
    }
  }

  /** The guest's WASI environment: the VM's, plus FTVM_LISTEN_FD when it has a listening socket. */
  get environ(): string[] {
    return this.listenerFd === undefined ? this.config.env : [...this.config.env, `FTVM_LISTEN_FD=${this.listenerFd}`];
  }

  // ------------------------------------------------------------------ counting

  /** The guest's instruction number. Exact whenever the guest is stopped in a host call or idle. */
  get count(): number {
    return this.budgetEnd - Number(this.fuel.value as bigint);
  }

  /** `n`: the count, when the caller just read it (reading it makes a BigInt). */
  private setBudgetEnd(end: number, n = this.count): void {
    assert(end >= n, `budget end ${end} behind count ${n}`);
    this.budgetEnd = end;
    this.fuel.value = BigInt(end - n);
  }

  get entriesSeen(): number {
    return this.seq;
  }

  get isIdle(): boolean {
    return !this.inStep;
  }

  private refreshMemory(): void {
    this.memBytes = new Uint8Array(this.memory.buffer);
    this.memView = new DataView(this.memory.buffer);
  }

  private mem(): Uint8Array {
    // A growing non-shared memory detaches its old buffer (length 0 then); a shared one keeps the old
    // buffer at its old length and hands out a new one.
    const m = this.memBytes;
    if (m.byteLength === 0 || (this.memShared && m.buffer !== this.memory.buffer)) this.refreshMemory();
    return this.memBytes;
  }

  private view(): DataView {
    this.mem();
    return this.memView;
  }

  /** Guest memory [ptr, ptr+len), checked: an out-of-bounds pair traps the guest deterministically. */
  guestBytes(ptr: number, len: number, what: string): Uint8Array {
    const m = this.mem();
    ptr >>>= 0;
    len >>>= 0;
    if (ptr + len > m.length) throw new GuestTrap(badGuestPointer(what, ptr, len, m.length).message, this.count);
    // Host calls write guest memory through these views (or through guestView() at pointers checked here
    // first): with the store barrier, they count as written (read-only uses too: an over-approximation).
    this.dirty?.markHost(ptr, len);
    return m.subarray(ptr, ptr + len);
  }

  /** guestBytes(ptr, len, what), copied out (one allocation, no view). */
  private guestCopy(ptr: number, len: number, what: string): Uint8Array {
    const m = this.mem();
    ptr >>>= 0;
    len >>>= 0;
    if (ptr + len > m.length) throw new GuestTrap(badGuestPointer(what, ptr, len, m.length).message, this.count);
    this.dirty?.markHost(ptr, len); // as guestBytes: a read counts as written (an over-approximation)
    return m.slice(ptr, ptr + len);
  }

  guestView(): DataView {
    return this.view();
  }

  // ------------------------------------------------------------------ log plumbing

  private emit(e: LogEntry): number {
    const seq = this.seq++;
    this.track(e);
    this.sink.entry(e, seq);
    return seq;
  }

  /** Replay: the head entry is done with. */
  private consume(): void {
    const e = this.source!.shift();
    this.seq++;
    if (e !== undefined) this.track(e);
  }

  /**
   * The log's coding state after the last entry logged or consumed (log format 2 codes a batch's first
   * entry against it; a snapshot carries it, so that the log after the snapshot decodes).
   */
  private track(e: LogEntry): void {
    const d = this.devices;
    d.logN = e.n;
    if (e.type === EntryType.NIC_DATA || e.type === EntryType.NIC_OPEN || e.type === EntryType.NIC_CLOSE) d.logConn = e.conn;
  }

  private violation(detail: string, e: LogEntry | undefined): never {
    const idx = this.seq;
    throw new DeterminismViolation(
      e ? `${detail}; the log has ${describeEntry(e)}` : detail,
      e?.n ?? -1,
      this.count,
      idx,
    );
  }

  /**
   * Whether this host call is served from the log. In replay, blocks until an entry is held; when the
   * log has ended and the source takes over (go-live), switches to recording and returns false.
   */
  private replaying(): boolean {
    if (this.mode !== 'replay') return false;
    const src = this.source!;
    while (src.peek(0) === undefined) {
      if (src.waitForMore()) continue;
      if (this.tryGoLive()) return false;
      throw new ReplayStarved(this.count);
    }
    return true;
  }

  /** Go-live at this exact point if the replay source hands over a record environment. */
  private tryGoLive(): boolean {
    const env = this.source?.takeOver?.();
    if (env === undefined) return false;
    this.goLive(env);
    return true;
  }

  /** Replay: the next entry, which must be a sync entry of `type` at the current count. Blocks for it. */
  /** `what` describes the call for a divergence report (a function: built only when there is one). */
  private expectSync<T extends LogEntry['type']>(type: T, what: string | (() => string)): Extract<LogEntry, { type: T }> {
    const src = this.source!;
    let e = src.peek(0);
    while (e === undefined) {
      if (!src.waitForMore()) throw new ReplayStarved(this.count);
      e = src.peek(0);
    }
    const n = this.count;
    if (e.type !== type || e.n !== n) this.violation(`the guest made ${typeof what === 'function' ? what() : what} at instruction ${n}`, e);
    this.consume();
    return e as Extract<LogEntry, { type: T }>;
  }

  // ------------------------------------------------------------------ WASI calls with logged results

  /** Throws a DeterminismViolation (for host-call code outside this class). */
  divergence(detail: string, e: LogEntry | undefined): never {
    this.violation(detail, e);
  }

  /**
   * A WASI call whose result is nondeterministic: `record` computes it (it may block with blockFor) and
   * the entry is logged at the call's count; replay returns the logged entry. A blocking call is an idle
   * point of a WASI command: state hashes logged while it waited are checked here first.
   */
  syscall<T extends typeof EntryType.SOCK_ACCEPT | typeof EntryType.SOCK_RECV | typeof EntryType.POLL>(
    type: T,
    what: string,
    blocking: boolean,
    record: () => Omit<Extract<LogEntry, { type: T }>, 'type' | 'n'>,
  ): Extract<LogEntry, { type: T }> {
    if (this.mode === 'replay' && blocking) this.replayBlockingPoint();
    if (!this.replaying()) {
      const body = record();
      const e = { ...body, type, n: this.count } as unknown as Extract<LogEntry, { type: T }>;
      this.emit(e);
      return e;
    }
    return this.expectSync(type, what);
  }

  /** Replay, at a blocking call: wait for log, verify state hashes logged here; go live if it ends. */
  private replayBlockingPoint(): void {
    const src = this.source!;
    this.blocked = true;
    try {
      for (;;) {
        src.atIdle?.(this.count);
        const head = src.peek(0);
        if (head === undefined) {
          if (src.waitForMore()) continue;
          if (this.tryGoLive()) return;
          throw new ReplayStarved(this.count, true);
        }
        if (head.type === EntryType.STATE_HASH && head.n === this.count) {
          const mine = this.stateHash();
          if (!Buffer.from(mine).equals(Buffer.from(head.hash))) this.violation(`state hash ${Buffer.from(mine).toString('hex')} differs`, head);
          this.consume();
          this.sink.stateHash?.(head.n, mine);
          continue;
        }
        if (head.type === EntryType.OUT_DIGEST && head.n === this.count && head.idle) {
          this.checkDigest(head);
          continue;
        }
        return;
      }
    } finally {
      this.blocked = false;
    }
  }

  /** Record: the environment's monotonic milliseconds (only for results that are logged). */
  recordNowMs(): number {
    return this.env!.nowMs();
  }

  /** Record: the environment's clock in ns (only for results that are logged). */
  recordNowNs(clock: number): bigint {
    return this.env!.nowNs(clock);
  }

  /** Record: moves client input into the WASI inbox (bounded: input waits in the env when it is full). */
  pumpSocketInputs(): void {
    const env = this.env!;
    const take = (i: NicInput): void => {
      let r = this.inbox.rx.get(i.conn);
      if (r === undefined && i.kind === 'data' && this.devices.proxied.has(i.conn) && this.devices.conns.has(i.conn)) {
        // A proxied connection this replica replayed and now serves (go-live): its input resumes here.
        r = { chunks: [], bytes: 0, eof: false };
        this.inbox.rx.set(i.conn, r);
      }
      if (i.kind === 'open') {
        if (r !== undefined || this.devices.conns.has(i.conn)) return; // a duplicate open: the driver's bug
        this.inbox.rx.set(i.conn, { chunks: [], bytes: 0, eof: false });
        this.inbox.acceptQueue.push(i.conn);
        if (i.data !== undefined && i.data.length > 0) this.inbox.tags.set(i.conn, new Uint8Array(i.data));
      } else if (i.kind === 'data') {
        if (r === undefined || r.eof || i.data === undefined || i.data.length === 0) {
          this.inbox.handedOff(i.conn, i.data?.length ?? 0); // closed by the guest
          return;
        }
        r.chunks.push(i.data);
        r.bytes += i.data.length;
        this.inbox.totalBytes += i.data.length;
      } else if (r !== undefined) {
        r.eof = true;
      } else if (this.devices.conns.get(i.conn) === ConnState.OPEN) {
        this.inbox.rx.set(i.conn, { chunks: [], bytes: 0, eof: true }); // a go-live close
      }
    };
    while (this.pending.length > 0) take(this.pending.shift()!);
    if (this.inbox.totalBytes >= SOCKET_INBOX_MAX_BYTES) return;
    for (const i of env.takeInputs(this.count, MAX_PENDING_INPUTS)) take(i);
  }

  /**
   * Record: blocks the guest inside a WASI call until `ready()` or the deadline (env monotonic ms).
   * Returns whether it became ready. Stops the run (unwinding the guest) if the environment says stop.
   */
  blockFor(ready: () => boolean, deadlineMs: number | undefined): boolean {
    const env = this.env!;
    if (this.threads?.servicing === true) {
      // A guest thread's call, run by the vCPU thread: it must not wait here (the other threads' calls
      // and the main thread would stand still); it gives way and is tried again at the next round.
      this.pumpSocketInputs();
      if (ready()) return true;
      if (deadlineMs !== undefined && env.nowMs() >= deadlineMs) return false;
      throw new WouldBlock();
    }
    this.blocked = true;
    try {
      for (;;) {
        if (this.unwindRequested) throw new UnwindRequest();
        this.threads?.service();
        this.pumpSocketInputs();
        if (ready()) return true;
        if (deadlineMs !== undefined && env.nowMs() >= deadlineMs) return false;
        if (this.inbox.totalBytes >= SOCKET_INBOX_MAX_BYTES) {
          env.pause?.(5);
          continue;
        }
        this.sealOutputs();
        if (!env.waitForWork(this.count, deadlineMs)) throw new BlockedStop(this.count);
      }
    } finally {
      this.blocked = false;
    }
  }

  /** True while a WASI command waits inside a blocking call. */
  get isBlocked(): boolean {
    return this.blocked;
  }

  /**
   * Record, while blocked in a call: asks the guest to unwind its stack (Asyncify), so that at
   * `env.betweenSteps` the machine can be snapshotted; it then rewinds into the same call and the call
   * starts over (it had produced nothing yet). False when this guest cannot unwind.
   */
  requestUnwind(): boolean {
    if (this.asy === undefined || !this.blocked || this.mode !== 'record') return false;
    // Asyncify rewrote only the functions that reach a blocking call directly: a call reached through a
    // function pointer cannot unwind (the snapshot is refused; the primary tries again later).
    if ((this.instance.exports[INDIRECT_GLOBAL] as WebAssembly.Global).value !== 0) return false;
    // A threaded guest: every other thread parks first (each unwound at a blocking point), so that memory,
    // their stacks and the main thread's are captured at one moment. runCommand resumes them afterwards.
    if (this.threads !== undefined) {
      if (!this.threads.stopAll(this.threadStopTimeoutMs)) {
        this.threadStopTimeoutMs = Math.min(THREAD_STOP_TIMEOUT_MAX_MS, this.threadStopTimeoutMs * 2);
        return false;
      }
      this.threadStopTimeoutMs = THREAD_STOP_TIMEOUT_MS;
    }
    this.unwindRequested = true;
    return true;
  }

  /** Asyncify data buffer: [ptr, ptr + size) of guest memory, used only while no guest code runs. */
  private asyncifyRegion(): { ptr: number; size: number } {
    const size = Math.min(ASYNCIFY_DATA_MAX_BYTES, this.mem().length - ASYNCIFY_DATA_PTR);
    return { ptr: ASYNCIFY_DATA_PTR, size };
  }

  /** An asyncified import gives way: save the guest's bytes under the buffer and start unwinding. */
  private beginUnwind(): void {
    const { ptr, size } = this.asyncifyRegion();
    this.asyncifySaved = new Uint8Array(this.mem().subarray(ptr, ptr + size));
    const v = this.view();
    v.setUint32(ptr, ptr + 8, true);
    v.setUint32(ptr + 4, ptr + size, true);
    this.unwindRequested = false;
    this.asy!.start_unwind(ptr);
  }

  /** The stack is unwound: keep its image, put the guest's bytes back. Memory is the guest's again. */
  private endUnwind(): void {
    const asy = this.asy!;
    asy.stop_unwind();
    const { ptr } = this.asyncifyRegion();
    const end = this.view().getUint32(ptr, true);
    this.resumeImage = new Uint8Array(this.mem().subarray(ptr, end));
    this.mem().set(this.asyncifySaved!, ptr);
    this.asyncifySaved = undefined;
    this.dirty?.markHost(ptr, this.asyncifyRegion().size);
  }

  /** Before re-entering _start: put the stack image in place and start rewinding. */
  private beginRewind(): void {
    const image = this.resumeImage!;
    const { ptr, size } = this.asyncifyRegion();
    if (image.length > size || image.length < 8) throw new FtvmError('FTVM_ERR_SNAPSHOT', `the unwound stack (${image.length} bytes) does not fit the asyncify buffer (${size} bytes)`);
    this.asyncifySaved = new Uint8Array(this.mem().subarray(ptr, ptr + size));
    this.mem().set(image, ptr);
    this.view().setUint32(ptr + 4, ptr + size, true);
    this.asy!.start_rewind(ptr);
  }

  /** The guest is back in the blocking call: stop rewinding and put the guest's bytes back. */
  private endRewind(): void {
    this.asy!.stop_rewind();
    this.mem().set(this.asyncifySaved!, ASYNCIFY_DATA_PTR);
    this.dirty?.markHost(ASYNCIFY_DATA_PTR, this.asyncifySaved!.length);
    this.asyncifySaved = undefined;
    this.resumeImage = undefined;
    if (this.resumeThreadsAfterRewind) {
      this.resumeThreadsAfterRewind = false;
      this.threads!.resumeAll();
    }
    if (this.pendingThreads !== undefined) {
      this.threads!.respawn(this.pendingThreads);
      this.pendingThreads = undefined;
    }
  }

  /** Wraps a blocking WASI import of an asyncified command (rewind arrives here; unwinds leave here). */
  private asyncifyImport<F extends (...args: never[]) => unknown>(fn: F): F {
    return ((...args: never[]) => {
      if (this.asy !== undefined && this.asy.get_state() === ASYNCIFY_REWINDING) this.endRewind();
      try {
        return fn(...args);
      } catch (err) {
        if (err instanceof UnwindRequest) {
          this.beginUnwind();
          return 0;
        }
        throw err;
      }
    }) as F;
  }

  // ------------------------------------------------------------------ imports (the guest ABI)

  private imports(): WebAssembly.Imports {
    const self = this;
    const ftvm = {
      rx_ring(ptr: number, capacity: number): void {
        const err = RxRing.validate(ptr >>> 0, capacity >>> 0, self.mem().length);
        if (err !== undefined) throw new GuestTrap(`rx_ring: ${err}`, self.count);
        self.devices.ring = new RxRing(ptr >>> 0, capacity >>> 0);
      },
      clock_now(clock: number): bigint {
        if (clock !== 0 && clock !== 1) throw new GuestTrap(`clock_now: unknown clock ${clock}`, self.count);
        return self.clockNow(clock);
      },
      random_fill(ptr: number, len: number): void {
        if (len >>> 0 > MAX_RANDOM_BYTES) throw new GuestTrap(`random_fill: ${len >>> 0} bytes exceeds ${MAX_RANDOM_BYTES}`, self.count);
        self.randomInto(self.guestBytes(ptr, len, 'random_fill'));
      },
      timer_set(id: number, delayMs: number): void {
        if (id < 0 || id >= MAX_TIMERS) throw new GuestTrap(`timer_set: timer id ${id} outside [0, ${MAX_TIMERS})`, self.count);
        if (delayMs < 0) throw new GuestTrap(`timer_set: negative delay ${delayMs}`, self.count);
        const deadline = self.mode === 'record' ? self.env!.nowMs() + delayMs : Number.NaN;
        self.devices.armTimer(id, delayMs, deadline);
      },
      timer_cancel(id: number): void {
        if (id < 0 || id >= MAX_TIMERS) throw new GuestTrap(`timer_cancel: timer id ${id} outside [0, ${MAX_TIMERS})`, self.count);
        self.devices.timers.delete(id);
      },
      console_write(ptr: number, len: number): void {
        if (len >>> 0 > MAX_OUTPUT_BYTES) throw new GuestTrap(`console_write: ${len >>> 0} bytes exceeds ${MAX_OUTPUT_BYTES}`, self.count);
        self.output('console', 0, 1, self.guestBytes(ptr, len, 'console_write'));
      },
      net_send(conn: number, ptr: number, len: number): number {
        if (len >>> 0 > MAX_OUTPUT_BYTES) throw new GuestTrap(`net_send: ${len >>> 0} bytes exceeds ${MAX_OUTPUT_BYTES}`, self.count);
        // Replay into a sink that only looks at the bytes (their CRC goes into the digest): no copy.
        const borrow = self.mode === 'replay' && self.sink.replayBorrowsOutputs === true && !self.devices.proxied.has(conn);
        const data = borrow ? self.guestBytes(ptr, len, 'net_send') : self.guestCopy(ptr, len, 'net_send');
        if (!self.devices.conns.has(conn)) return -1; // the peer's CLOSE is a half-close: replies still go out
        self.outputOwned('net', conn, 0, data, borrow);
        return len;
      },
      net_close(conn: number): number {
        if (!self.devices.conns.has(conn)) return -1;
        self.devices.conns.delete(conn);
        self.devices.proxied.delete(conn);
        self.output('close', conn, 0, new Uint8Array(0));
        return 0;
      },
    };
    const env = {
      abort(msg: number, file: number, line: number, col: number): void {
        const text = self.readAsString(msg);
        const where = self.readAsString(file);
        throw new GuestTrap(`abort: ${text} at ${where}:${line}:${col}`, self.count);
      },
    };
    const internal = {
      budget(k: number, fuel: bigint): bigint {
        // Make the global exact while the VMM works. Then, if this stop delivered nothing, put back the
        // count the global held (that of the last host call or export entry): where budget stops fall
        // differs between replicas. A stop that delivered (logged or consumed entries) is at the same
        // count on every replica, so the global keeps it: a later HALT is then never numbered before
        // an entry of its step.
        self.threads?.service(); // the guest threads' host calls wait for the vCPU thread
        const stale = self.fuel.value as bigint;
        const endBefore = self.budgetEnd;
        const seqBefore = self.seq;
        self.fuel.value = fuel;
        self.onBudget(k);
        const fresh = self.fuel.value as bigint;
        if (self.seq === seqBefore) self.fuel.value = stale + BigInt(self.budgetEnd - endBefore);
        return fresh;
      },
      depth_exceeded(): void {
        throw new GuestTrap(`call depth exceeded (limit ${self.instrumented.maxCallDepth})`, self.count);
      },
      memory_grow(delta: number): number {
        return self.memoryGrow(delta >>> 0);
      },
    };
    const wasi = makeWasiImports(this);
    for (const name of ['poll_oneoff', 'sock_accept', 'sock_recv', 'fd_read']) {
      const fn = wasi[name];
      if (fn !== undefined) wasi[name] = this.asyncifyImport(fn);
    }
    const imports: WebAssembly.Imports = { ftvm, env, wasi_snapshot_preview1: wasi, [INTERNAL_MODULE]: internal, ...(this.dirty !== undefined ? { [DIRTY_MODULE]: this.dirty.imports } : {}) };
    const spec = this.instrumented.sharedMemory;
    if (spec !== undefined) {
      (imports[spec.module] ??= {})[spec.base] = this.sharedMemory!;
      imports[THREAD_SPAWN_MODULE] = { [THREAD_SPAWN_NAME]: (startArg: number): number => self.threads!.spawn(startArg) };
      const wait = (bytes: 4 | 8) => (addr: bigint, expected: number | bigint, timeoutNs: bigint): number => {
        const len = self.memory.buffer.byteLength;
        if (addr < 0n || addr + BigInt(bytes) > BigInt(len)) throw new GuestTrap(`atomic wait out of bounds at ${addr}`, self.count);
        if (addr % BigInt(bytes) !== 0n) throw new GuestTrap(`unaligned atomic wait at ${addr}`, self.count);
        const view = bytes === 4 ? new Int32Array(self.memory.buffer) : new BigInt64Array(self.memory.buffer);
        const index = Number(addr) / bytes;
        const until = timeoutNs < 0n ? Infinity : performance.now() + Number(timeoutNs) / 1e6;
        for (;;) {
          // In slices, so that a VM with no other activity still notices its threads' ends.
          const r = self.threads!.mainWait(view, index, expected, Math.min(1000, Math.max(0, until - performance.now())));
          if (r !== 2 || performance.now() >= until) return r;
        }
      };
      (internal as Record<string, unknown>)[ATOMIC_WAIT32] = wait(4);
      (internal as Record<string, unknown>)[ATOMIC_WAIT64] = wait(8);
    }
    return imports;
  }

  /** Reads an AssemblyScript string (UTF-16, byte length at ptr-4) for abort messages; never throws. */
  private readAsString(ptr: number): string {
    try {
      if (ptr === 0) return '';
      const m = this.mem();
      const len = new DataView(m.buffer).getUint32(ptr - 4, true);
      if (len > 4096 || ptr + len > m.length) return '?';
      return Buffer.from(m.subarray(ptr, ptr + len)).toString('utf16le');
    } catch {
      return '?';
    }
  }

  clockNow(clock: number): bigint {
    if (!this.replaying()) {
      const v = this.env!.nowNs(clock);
      this.emit({ type: EntryType.CLOCK, n: this.count, clock, valueNs: v });
      if (clock === 0) this.devices.clockNs = v;
      return v;
    }
    const e = this.expectSync(EntryType.CLOCK, `a clock read (clock ${clock})`);
    if (e.clock !== clock) this.violation(`clock ${clock} read where the log has clock ${e.clock}`, e);
    if (clock === 0) this.devices.clockNs = e.valueNs;
    return e.valueNs;
  }

  randomInto(dst: Uint8Array): void {
    if (!this.replaying()) {
      const bytes = new Uint8Array(dst.length);
      this.env!.randomFill(bytes);
      dst.set(bytes);
      this.emit({ type: EntryType.RANDOM, n: this.count, bytes });
      return;
    }
    const e = this.expectSync(EntryType.RANDOM, `a request for ${dst.length} random bytes`);
    if (e.bytes.length !== dst.length) this.violation(`${dst.length} random bytes requested`, e);
    dst.set(e.bytes);
  }

  private memoryGrow(delta: number): number {
    const pages = this.memory.buffer.byteLength / PAGE_BYTES;
    if (!this.replaying()) {
      let result = -1;
      if (pages + delta <= this.config.memoryMaxPages) {
        try {
          result = this.memory.grow(delta);
        } catch {
          result = -1;
        }
      }
      this.refreshMemory();
      this.emit({ type: EntryType.MEMGROW, n: this.count, deltaPages: delta, result });
      return result;
    }
    const e = this.expectSync(EntryType.MEMGROW, `memory.grow(${delta})`);
    if (e.deltaPages !== delta) this.violation(`memory.grow(${delta})`, e);
    if (e.result >= 0) {
      let r: number;
      try {
        r = this.memory.grow(delta);
      } catch (err) {
        throw new FtvmError('FTVM_ERR_RESOURCE_EXHAUSTED', `replay cannot grow guest memory by ${delta} pages (the primary could): ${(err as Error).message}`);
      }
      this.refreshMemory();
      if (r !== e.result) this.violation(`memory.grow(${delta}) returned ${r}`, e);
    }
    return e.result;
  }

  /**
   * An output of the guest: logged (record) or checked and suppressed (replay). Format 2: folded into the
   * running digest that the next OUT_DIGEST carries (record) or is checked against (replay); an output
   * made while the replica still holds log after it is one the primary may have released: suppressed.
   */
  output(kind: GuestOutput['kind'], conn: number, fd: number, bytes: Uint8Array): void {
    this.outputOwned(kind, conn, fd, new Uint8Array(bytes)); // copy: guest memory changes
  }

  /**
   * output() of a plain Uint8Array of the caller's that nothing writes afterwards (no copy). `borrowed`:
   * `data` is a view of guest memory (replay into a sink that keeps no bytes): copied if the replica goes
   * live at this output, since it is then a recorded output that waits for its batch.
   */
  private outputOwned(kind: GuestOutput['kind'], conn: number, fd: number, data: Uint8Array, borrowed = false): void {
    const n = this.count;
    const hash = kind === 'close' ? 0 : crc32(data) >>> 0;
    if (kind === 'net') {
      const px = this.devices.proxied.get(conn);
      if (px !== undefined) px.outBytes += data.length;
    }
    if (this.digests) {
      const seq = this.seq;
      this.replaying(); // replay: waits until the log goes on past this output, or goes live here
      if (borrowed && this.mode !== 'replay') data = data.slice(); // went live here: a recorded output now
      this.foldOutput(kind, conn, fd, data.length, hash);
      this.sink.output({ seq, n, kind, conn, fd, data });
      return;
    }
    let entry: OutputEntry;
    if (kind === 'net') entry = { type: EntryType.OUT_NET, n, conn, len: data.length, hash };
    else if (kind === 'close') entry = { type: EntryType.OUT_CLOSE, n, conn };
    else entry = { type: EntryType.OUT_CONSOLE, n, fd, len: data.length, hash };
    let seq: number;
    if (!this.replaying()) {
      if (borrowed) data = data.slice(); // went live here: a recorded output now
      seq = this.emit(entry);
    } else {
      seq = this.seq;
      const e = this.expectSync(entry.type, () => `an output (${describeEntry(entry)})`);
      const same =
        (e.type === EntryType.OUT_NET && entry.type === EntryType.OUT_NET && e.conn === entry.conn && e.len === entry.len && e.hash === entry.hash) ||
        (e.type === EntryType.OUT_CLOSE && entry.type === EntryType.OUT_CLOSE && e.conn === entry.conn) ||
        (e.type === EntryType.OUT_CONSOLE && entry.type === EntryType.OUT_CONSOLE && e.fd === entry.fd && e.len === entry.len && e.hash === entry.hash);
      if (!same) this.violation(`the guest produced ${describeEntry(entry)}`, e);
    }
    this.sink.output({ seq, n, kind, conn, fd, data });
  }

  /** Format 2: one output into the running digest (kind, connection, fd, length, CRC-32 of the bytes). */
  private foldOutput(kind: GuestOutput['kind'], conn: number, fd: number, len: number, hash: number): void {
    const d = this.devices;
    const r = this.outRecord;
    r[0] = kind === 'net' ? 1 : kind === 'close' ? 2 : 3;
    r.writeDoubleLE(conn, 1);
    r[9] = fd & 0xff;
    r.writeUInt32LE(len >>> 0, 10);
    r.writeUInt32LE(hash >>> 0, 14);
    d.outCrc = crc32(r, d.outCrc) >>> 0;
    d.outCount++;
  }

  /**
   * Record, format 2: logs an OUT_DIGEST for the outputs made since the last one, if any. The vCPU
   * worker calls it whenever it cuts a batch, which it does only at idle points and checkpoints (where a
   * replica can stop to check it), so that every output of a batch has an entry after it in the same
   * batch: the output rule releases it with that batch's ACK.
   */
  sealOutputs(): void {
    const d = this.devices;
    if (!this.digests || this.mode !== 'record' || d.outCount === 0) return;
    const n = this.count;
    this.emit({ type: EntryType.OUT_DIGEST, n, idle: !this.inStep || this.blocked, count: d.outCount, crc: d.outCrc });
    d.outCount = 0;
    d.outCrc = 0;
    d.outSinceN = n;
  }

  /** Replay, format 2: the log's OUT_DIGEST at the head against the outputs this replica made. */
  private checkDigest(e: OutDigestEntry): void {
    const d = this.devices;
    if (!this.digests) this.violation('an output digest in a log of format 1', e);
    if (e.count !== d.outCount || e.crc !== d.outCrc) {
      this.violation(
        `the replica's outputs between instruction ${d.outSinceN} and ${this.count} differ from the primary's (${d.outCount} output(s), digest ${d.outCrc.toString(16).padStart(8, '0')}; the primary's: ${e.count}, ${e.crc.toString(16).padStart(8, '0')})`,
        e,
      );
    }
    d.outCount = 0;
    d.outCrc = 0;
    d.outSinceN = this.count;
    this.consume();
  }

  // ------------------------------------------------------------------ budget checkpoints

  private onBudget(k: number): void {
    if (this.mode === 'record') {
      const env = this.env!;
      if (this.deliverRecorded(false) > 0) this.deliveredInStep = true;
      this.sealOutputs();
      env.atCheckpoint?.(this.count);
      const n = this.count;
      this.setBudgetEnd(n + Math.max(env.sliceUnits, k), n);
      return;
    }
    this.replayCheckpoint(k);
  }

  /** Replay at a checkpoint: deliver what the log delivered here, then grant as far as the log allows. */
  private replayCheckpoint(k: number): void {
    const src = this.source!;
    const n = this.count; // fixed in this loop, as in idleReplay (go-live returns from it)
    src.atCheckpoint?.(n);
    for (;;) {
      const head = src.peek(0);
      if (head !== undefined && isAsync(head) && !head.idle && head.n === n) {
        this.applyDelivery(head);
        this.deliveredInStep = true;
        continue;
      }
      if (head !== undefined && head.type === EntryType.OUT_DIGEST && !head.idle && head.n === n) {
        this.checkDigest(head);
        continue;
      }
      if (head !== undefined && head.n <= n && head.type !== EntryType.HALT) {
        // Anything else still at or before this point means divergence: the primary was idle here, or
        // made a host call the replica skipped. (A HALT's number is the count of the trap's last host
        // call, export entry or checkpoint delivery, which the replica may not have passed yet.)
        this.violation(`the guest is computing at instruction ${n}`, head);
      }
      const { limit, boundary } = this.replayLimit();
      if (limit >= n + k) {
        // Stop again within a slice even when the log grants more, so progress is reported.
        this.setBudgetEnd(Math.min(limit, n + Math.max(this.replaySliceUnits, k)), n);
        return;
      }
      if (boundary !== undefined) {
        // The next stop the log asks for lies strictly inside the region this checkpoint is about to
        // run: the replica cannot stop there. More log cannot fix that.
        this.violation(`the replica's next stop after instruction ${n} is at ${n + k}`, boundary);
      }
      if (!src.waitForMore()) {
        if (this.tryGoLive()) {
          this.onBudget(k); // now a recording checkpoint
          return;
        }
        throw new ReplayStarved(n);
      }
    }
  }

  /** How far the replica may run: to the next checkpoint delivery, and never past what the log grants. */
  private replayLimit(): { limit: number; boundary?: LogEntry } {
    const src = this.source!;
    let limit = src.grantedUpTo();
    for (let i = 0; ; i++) {
      const e = src.peek(i);
      if (e === undefined) return { limit };
      if (e.type === EntryType.HALT) return { limit: Number.MAX_SAFE_INTEGER }; // run to the trap, wherever it is
      if (isAsync(e) || e.type === EntryType.STATE_HASH || e.type === EntryType.OUT_DIGEST) return { limit: e.n, boundary: e };
      if (e.n > limit) limit = e.n;
    }
  }

  // ------------------------------------------------------------------ deliveries

  /** Record mode: moves due timers and pending input into the ring, logging each delivery. */
  private deliverRecorded(idle: boolean): number {
    const env = this.env!;
    const ring = this.devices.ring;
    let delivered = 0;
    if (ring === null) return 0;
    if (this.dirty !== undefined) ring.marker = this.dirty.markRange;
    const mem = this.view();
    const bytes = this.mem();
    const n = this.count; // the guest is stopped here: every delivery of this call is numbered n
    if (this.devices.timers.size > 0) {
      for (const id of this.devices.dueTimers(env.nowMs())) {
        if (!ring.write(mem, bytes, RecordType.TIMER, id)) return delivered;
        this.devices.timers.delete(id);
        this.emit({ type: EntryType.TIMER, n, idle, timer: id });
        delivered++;
      }
    }
    if (this.pending.length < MAX_PENDING_INPUTS) {
      const more = env.takeInputs(n, MAX_PENDING_INPUTS - this.pending.length);
      for (const i of more) this.pending.push(i);
    }
    while (this.pending.length > 0) {
      const input = this.pending[0]!;
      const state = this.devices.conns.get(input.conn);
      if (input.kind === 'open') {
        if (state !== undefined) {
          this.pending.shift(); // a duplicate open of a live id: the driver's bug; never reaches the guest
          continue;
        }
        if (!ring.write(mem, bytes, RecordType.OPEN, input.conn)) break;
        this.devices.openConn(input.conn);
        const tag = input.data !== undefined && input.data.length > 0 ? new Uint8Array(input.data) : undefined;
        if (tag !== undefined) this.devices.proxied.set(input.conn, { tag: Buffer.from(tag).toString('hex'), inBytes: 0, inEof: false, outBytes: 0 });
        this.emit({ type: EntryType.NIC_OPEN, n, idle, conn: input.conn, ...(tag !== undefined ? { tag } : {}) });
      } else if (input.kind === 'data') {
        const data = input.data ?? new Uint8Array(0);
        if (state !== ConnState.OPEN || data.length === 0) {
          this.pending.shift(); // the guest closed it (or the peer did): input for it is dropped
          this.inbox.handedOff(input.conn, data.length);
          continue;
        }
        const free = ring.free(mem);
        const room = free - 12;
        if (room < Math.min(data.length, 64)) break; // wait for the guest to make room
        const take = Math.min(data.length, room & ~3);
        const chunk = take === data.length ? data : data.subarray(0, take);
        const ok = ring.write(mem, bytes, RecordType.DATA, input.conn, chunk);
        assert(ok, 'ring had room for the chunk');
        // No copy: an env hands its input over (RecordEnv.takeInputs) and nothing writes it afterwards.
        // (A Buffer, which a scripted env may hold, is copied: an entry's data is a plain Uint8Array.)
        const logged = chunk.constructor === Uint8Array ? chunk : new Uint8Array(chunk);
        this.emit({ type: EntryType.NIC_DATA, n, idle, conn: input.conn, data: logged });
        const px = this.devices.proxied.get(input.conn);
        if (px !== undefined) px.inBytes += take;
        this.inbox.handedOff(input.conn, take); // in guest memory now: the client service's per-connection bound counts it consumed
        if (take < data.length) {
          input.data = data.subarray(take);
          delivered++;
          break;
        }
      } else {
        if (state !== ConnState.OPEN) {
          this.pending.shift();
          continue;
        }
        if (!ring.write(mem, bytes, RecordType.CLOSE, input.conn)) break;
        this.devices.conns.set(input.conn, ConnState.PEER_CLOSED);
        const pxc = this.devices.proxied.get(input.conn);
        if (pxc !== undefined) pxc.inEof = true;
        this.emit({ type: EntryType.NIC_CLOSE, n, idle, conn: input.conn });
      }
      this.pending.shift();
      delivered++;
    }
    return delivered;
  }

  /** Replay: performs a logged delivery; it must be possible exactly as it was on the primary. */
  private applyDelivery(e: AsyncEntry): void {
    const ring = this.devices.ring;
    if (ring === null) this.violation('a delivery, but the guest has no receive ring', e);
    if (this.dirty !== undefined) ring.marker = this.dirty.markRange;
    const mem = this.view();
    const bytes = this.mem();
    let ok: boolean;
    switch (e.type) {
      case EntryType.TIMER:
        if (!this.devices.timers.has(e.timer)) this.violation(`timer ${e.timer} fired but is not armed`, e);
        ok = ring.write(mem, bytes, RecordType.TIMER, e.timer);
        if (ok) this.devices.timers.delete(e.timer);
        break;
      case EntryType.NIC_OPEN:
        if (this.devices.conns.has(e.conn)) this.violation(`connection ${e.conn} opened twice`, e);
        ok = ring.write(mem, bytes, RecordType.OPEN, e.conn);
        if (ok) this.devices.openConn(e.conn);
        if (ok && e.tag !== undefined) this.devices.proxied.set(e.conn, { tag: Buffer.from(e.tag).toString('hex'), inBytes: 0, inEof: false, outBytes: 0 });
        break;
      case EntryType.NIC_DATA: {
        if (this.devices.conns.get(e.conn) !== ConnState.OPEN) this.violation(`data for connection ${e.conn}, which is not open`, e);
        ok = ring.write(mem, bytes, RecordType.DATA, e.conn, e.data);
        const px = this.devices.proxied.get(e.conn);
        if (ok && px !== undefined) px.inBytes += e.data.length;
        break;
      }
      case EntryType.NIC_CLOSE: {
        if (this.devices.conns.get(e.conn) !== ConnState.OPEN) this.violation(`close of connection ${e.conn}, which is not open`, e);
        ok = ring.write(mem, bytes, RecordType.CLOSE, e.conn);
        if (ok) this.devices.conns.set(e.conn, ConnState.PEER_CLOSED);
        const pxc = this.devices.proxied.get(e.conn);
        if (ok && pxc !== undefined) pxc.inEof = true;
        break;
      }
    }
    if (!ok) this.violation('the receive ring has no room for a delivery', e);
    this.consume();
  }

  // ------------------------------------------------------------------ running

  /**
   * Runs until the guest halts, the record env asks to stop, or (replay) the log is exhausted.
   * Throws DeterminismViolation on divergence, FtvmError for VMM-level failures.
   */
  run(): RunResult {
    if (this.broken) throw new FtvmError('FTVM_ERR_REPLAY_STARVED', 'this machine was unwound when its log ended mid-step; restore a snapshot to continue');
    try {
      if (!this.booted) {
        this.booted = true;
        this.boot();
      } else if (this.resumeImage !== undefined && !this.halted) {
        this.runCommand();
      }
      for (;;) {
        if (this.halted) {
          this.sealOutputs(); // after the HALT entry: the replica checks it there
          return { state: 'halted', count: this.count, halt: this.halted };
        }
        const r = this.mode === 'record' ? this.idleRecord() : this.idleReplay();
        if (r !== undefined) {
          this.sealOutputs();
          return r;
        }
      }
    } catch (err) {
      if (err instanceof ReplayStarved) {
        this.broken = this.inStep || err.atBlock;
        // Starved while blocked in a call: the state (memory, globals, count) is that of the blocking
        // point, a command's idle point, so its hash is meaningful; the stack is gone, though.
        const midStep = this.inStep && !err.atBlock;
        this.inStep = false;
        return { state: 'starved', count: err.count, midStep };
      }
      if (err instanceof BlockedStop) {
        this.broken = true;
        this.inStep = false;
        return { state: 'stopped', count: err.count }; // sealed before the wait it stopped in
      }
      throw err;
    }
  }

  private boot(): void {
    const ex = this.instance.exports;
    if (this.instrumented.hasStart) this.callGuest(ex[START_EXPORT] as () => void);
    if (!this.halted && typeof ex._initialize === 'function') this.callGuest(ex._initialize as () => void);
    if (!this.halted && typeof ex.ftvm_init === 'function') this.callGuest(ex.ftvm_init as () => void);
    if (!this.halted && typeof ex._start === 'function' && typeof ex.ftvm_step !== 'function') this.runCommand();
  }

  /**
   * Runs a WASI command's _start until it returns, exits or traps. An asyncified command may unwind
   * out of a blocking call (requestUnwind): the machine is then at an idle point (empty wasm stack,
   * `env.betweenSteps` may snapshot it) and rewinds into the same call.
   */
  private runCommand(): void {
    const start = this.instance.exports._start as () => void;
    for (;;) {
      if (this.resumeImage !== undefined) this.beginRewind();
      this.callGuest(start);
      if (this.halted) return;
      if (this.asy !== undefined && this.asy.get_state() === ASYNCIFY_UNWINDING) {
        this.endUnwind();
        try {
          if (this.mode === 'record') this.env!.betweenSteps?.(this.count);
        } catch (err) {
          this.threads?.resumeAll();
          throw err;
        }
        // The other threads resume once the main thread is back in its call (endRewind): its rewind
        // borrows guest memory (the asyncify buffer), which no running thread may see.
        this.resumeThreadsAfterRewind = this.threads !== undefined;
        continue;
      }
      assert(this.resumeImage === undefined && this.asy?.get_state() !== ASYNCIFY_REWINDING, 'the command returned while rewinding');
      this.halt('exit', 0, '');
      return;
    }
  }

  /** One idle round in record mode; returns a result when the run should end. */
  private idleRecord(): RunResult | undefined {
    this.env!.betweenSteps?.(this.count);
    const delivered = this.deliverRecorded(true);
    if (delivered > 0 || this.stepAgain || this.deliveredInStep) {
      this.step();
      return undefined;
    }
    this.sealOutputs();
    if (!this.env!.waitForWork(this.count, this.devices.nextDeadlineMs())) return { state: 'stopped', count: this.count };
    return undefined;
  }

  /** One idle round in replay: deliver this idle point's entries, then step if the primary did. */
  private idleReplay(): RunResult | undefined {
    const src = this.source!;
    // The count cannot move in this loop (the guest does not run; only a step, a budget stop, go-live or a
    // restore sets the fuel): read once (each read makes a BigInt).
    const n = this.count;
    src.atIdle?.(n);
    let delivered = 0;
    for (;;) {
      const head = src.peek(0);
      if (head !== undefined && head.n === n && isAsync(head) && head.idle) {
        this.applyDelivery(head);
        delivered++;
        continue;
      }
      if (head !== undefined && head.n === n && head.type === EntryType.STATE_HASH) {
        const mine = this.stateHash();
        if (!Buffer.from(mine).equals(Buffer.from(head.hash))) this.violation(`state hash ${Buffer.from(mine).toString('hex')} differs`, head);
        this.consume();
        this.sink.stateHash?.(n, mine);
        continue;
      }
      if (head !== undefined && head.n === n && head.type === EntryType.OUT_DIGEST && head.idle) {
        this.checkDigest(head);
        continue;
      }
      const primaryMovedOn = head !== undefined || src.grantedUpTo() > n;
      if (primaryMovedOn) {
        if (delivered > 0 || this.stepAgain || this.deliveredInStep) {
          this.step();
          return undefined;
        }
        if (head !== undefined) this.violation(`the guest is idle at instruction ${n}`, head);
        // Only a grant beyond n, with no entry: the primary stepped without a delivery we hold. Wait.
      }
      if (!src.waitForMore()) {
        if (this.tryGoLive()) return undefined; // the next idle round records
        return { state: 'starved', count: n, midStep: false };
      }
    }
  }

  private step(): void {
    const ex = this.instance.exports;
    const fn = ex.ftvm_step as () => number;
    const n = this.count;
    if (this.mode === 'record') this.setBudgetEnd(n + this.env!.sliceUnits, n);
    else this.setBudgetEnd(Math.max(n, Math.min(this.replayLimit().limit, n + this.replaySliceUnits)), n);
    this.deliveredInStep = false;
    const r = this.callGuest(fn);
    this.stepAgain = !this.halted && r !== 0;
  }

  private callGuest(fn: () => number | void): number {
    this.inStep = true;
    try {
      const r = fn();
      return typeof r === 'number' ? r : 0;
    } catch (err) {
      if (err instanceof GuestExit) {
        this.halt('exit', err.code, '');
      } else if (err instanceof GuestTrap) {
        this.halt('trap', 0, err.message.replace(/^guest trapped at instruction \d+: /, ''));
      } else if (err instanceof WebAssembly.RuntimeError) {
        this.halt('trap', 0, err.message);
      } else if (err instanceof RangeError && /call stack/i.test(err.message)) {
        throw new FtvmError('FTVM_ERR_RESOURCE_EXHAUSTED', 'the host stack overflowed before the guest call-depth limit; raise the worker stack size or lower maxCallDepth', { cause: err });
      } else {
        throw err;
      }
      return 0;
    } finally {
      this.inStep = false;
      this.depth.value = 0;
    }
  }

  private halt(kind: HaltKind, code: number, message: string): void {
    const n = this.count;
    if (!this.replaying()) {
      this.emit({ type: EntryType.HALT, n, kind, code, message });
    } else {
      const e = this.expectSync(EntryType.HALT, `a halt (${kind} ${code}: ${message})`);
      if (e.kind !== kind || e.code !== code || e.message !== message) this.violation(`the guest halted (${kind} ${code}: ${message})`, e);
      // The primary seals the outputs before the halt after the HALT entry (its last batch): check them
      // when that batch is held (a replica that halts has nothing more to wait for).
      const d = this.source!.peek(0);
      if (d !== undefined && d.type === EntryType.OUT_DIGEST && d.n === n) this.checkDigest(d);
    }
    this.halted = { kind, code, message, n };
  }

  /** Throws from a host call to end the guest (WASI proc_exit). */
  exit(code: number): never {
    throw new GuestExit(code);
  }

  /** Record mode: logs the state hash at this idle point (the replica checks it when it gets here). */
  logStateHash(): Uint8Array {
    assert(this.mode === 'record' && (!this.inStep || this.blocked), 'state hashes are logged by the recorder at idle points');
    const hash = this.stateHash();
    this.emit({ type: EntryType.STATE_HASH, n: this.count, hash });
    this.sink.stateHash?.(this.count, hash);
    return hash;
  }

  // ------------------------------------------------------------------ state

  /** SHA-256 over the instruction count, memory, mutable globals and deterministic device state. */
  stateHash(): Uint8Array {
    const h = createHash('sha256');
    const head = Buffer.alloc(16);
    head.writeBigUInt64LE(BigInt(this.count), 0);
    head.writeUInt32LE(this.halted ? 1 : 0, 8);
    head.writeUInt32LE((this.stepAgain ? 1 : 0) | (this.deliveredInStep ? 2 : 0), 12);
    h.update(head);
    h.update(this.mem());
    const g = Buffer.alloc(8 * this.globals.length);
    this.globals.forEach((gl, i) => {
      const v = gl.value as number | bigint;
      if (typeof v === 'bigint') g.writeBigUInt64LE(BigInt.asUintN(64, v), i * 8);
      else g.writeDoubleLE(v, i * 8);
    });
    h.update(g);
    h.update(this.devices.hashBytes());
    if (this.disk !== undefined) h.update(this.disk.serialize());
    return h.digest();
  }

  /**
   * A snapshot at an idle point. With `into` (large enough), memory is copied into it and the snapshot's
   * memory is a view of it: a reused, already touched buffer makes the copy a plain memcpy (DESIGN.md §3).
   */
  snapshot(into?: Uint8Array, intoHolds = 0): Snapshot {
    if (this.blocked || (this.inStep && this.instrumented.exports.includes('_start') && !this.instrumented.exports.includes('ftvm_step'))) {
      throw new FtvmError(
        'FTVM_ERR_SNAPSHOT',
        this.asy !== undefined
          ? 'the guest is a WASI command inside _start: it is snapshotted only after unwinding out of a blocking call (requestUnwind)'
          : 'the guest is a WASI command inside _start that cannot unwind (it imports no blocking call): its wasm stack is live and cannot be snapshotted',
      );
    }
    assert(!this.inStep, 'snapshots are taken at idle points');
    assert(!this.broken, 'cannot snapshot an unwound machine');
    const mem = this.mem();
    let memory: Uint8Array;
    // With the store barrier: the pages written since the previous snapshot (the map is cleared here).
    const dirty = this.dirty?.take(mem.length);
    if (this.dirtyCache !== undefined) this.dirtyCache.value = DIRTY_CACHE_RESET;
    if (into !== undefined && into.length >= mem.length) {
      memory = into.subarray(0, mem.length);
      if (dirty?.map !== undefined && intoHolds > 0 && intoHolds <= mem.length) {
        // `into` holds memory as of the previous snapshot up to intoHolds: copy what changed since, and
        // what grew. Runs of marked pages are copied at once.
        const map = dirty.map;
        const held = Math.ceil(intoHolds / DIRTY_PAGE_BYTES);
        for (let p = 0; p < held; p++) {
          if (map[p] === 0) continue;
          let q = p + 1;
          while (q < held && map[q] !== 0) q++;
          const a = p * DIRTY_PAGE_BYTES;
          const b = Math.min(intoHolds, q * DIRTY_PAGE_BYTES);
          memory.set(mem.subarray(a, b), a);
          p = q;
        }
        if (intoHolds < mem.length) memory.set(mem.subarray(intoHolds), intoHolds);
      } else {
        memory.set(mem);
      }
    } else {
      memory = new Uint8Array(mem);
    }
    return {
      ...(dirty !== undefined ? { dirty: { ...(dirty.map !== undefined ? { map: dirty.map } : {}), seq: dirty.seq } } : {}),
      count: this.count,
      memory,
      globals: this.globals.map((g) => g.value as number | bigint),
      devices: this.devices.save(),
      stepAgain: this.stepAgain,
      deliveredInStep: this.deliveredInStep,
      booted: this.booted,
      seq: this.seq,
      ...(this.resumeImage !== undefined ? { resume: new Uint8Array(this.resumeImage) } : {}),
      ...(this.disk !== undefined ? { disk: this.disk.serialize() } : {}),
      ...(this.threads !== undefined ? { threads: this.threads.parkedState() } : {}),
    };
  }

  /** Loads a snapshot into this (fresh, not yet run) machine. */
  restore(s: Snapshot): void {
    assert(!this.booted && this.count === 0, 'restore into a fresh machine');
    const have = this.memory.buffer.byteLength;
    if (s.memory.length % PAGE_BYTES !== 0 || s.memory.length < have) {
      throw new FtvmError('FTVM_ERR_SNAPSHOT', `snapshot memory of ${s.memory.length} bytes does not fit this module (initial ${have})`);
    }
    if (s.memory.length > have) this.memory.grow((s.memory.length - have) / PAGE_BYTES);
    this.refreshMemory();
    this.memBytes.set(s.memory);
    if (s.globals.length !== this.globals.length) throw new FtvmError('FTVM_ERR_SNAPSHOT', 'snapshot global count does not match the module');
    s.globals.forEach((v, i) => {
      this.globals[i]!.value = v;
    });
    this.devices.load(s.devices);
    this.stepAgain = s.stepAgain;
    this.deliveredInStep = s.deliveredInStep;
    this.booted = s.booted;
    this.seq = s.seq;
    if ((s.disk !== undefined) !== (this.disk !== undefined)) throw new FtvmError('FTVM_ERR_SNAPSHOT', 'the snapshot and this VM disagree on having a disk');
    if (s.disk !== undefined) {
      this.disk = VirtualDisk.deserialize(s.disk);
      if (this.disk.quotaBytes !== this.config.diskBytes) throw new FtvmError('FTVM_ERR_SNAPSHOT', `the snapshot's disk has ${this.disk.quotaBytes} bytes; this VM ${this.config.diskBytes}`);
      if (this.diskImagePath !== undefined) this.disk.persist(this.diskImagePath);
    }
    if (s.resume !== undefined) {
      if (this.asy === undefined) throw new FtvmError('FTVM_ERR_SNAPSHOT', 'the snapshot resumes a blocked call but this module is not asyncified');
      this.resumeImage = new Uint8Array(s.resume);
    }
    if ((s.threads !== undefined) !== (this.threads !== undefined)) throw new FtvmError('FTVM_ERR_SNAPSHOT', 'the snapshot and this guest disagree on having threads');
    if (s.threads !== undefined) {
      if (s.resume === undefined && s.threads.threads.length > 0) throw new FtvmError('FTVM_ERR_SNAPSHOT', 'a snapshot with guest threads must resume its main thread in a blocking call');
      this.pendingThreads = s.threads;
    }
    this.budgetEnd = s.count;
    this.fuel.value = 0n;
  }

  /**
   * Switches a replaying machine to recording (go-live), at an idle point or mid-step once the log is
   * exhausted. The old primary's client connections are gone: each open one is closed for the guest
   * (delivered and logged like any CLOSE) except proxied ones; pending timers are re-armed on this host's clock.
   */
  goLive(env: RecordEnv): void {
    assert(this.mode === 'replay', 'only a replica goes live');
    this.mode = 'record';
    this.env = env;
    this.source = undefined;
    this.rearmTimers();
    for (const [conn, state] of [...this.devices.conns].sort((a, b) => a[0] - b[0])) {
      // A proxied connection outlives its primary: its proxy re-attaches it (docs/PROXY.md), or the
      // new primary's proxy service closes it when nobody does.
      if (state === ConnState.OPEN && !this.devices.proxied.has(conn)) this.pending.push({ kind: 'close', conn });
    }
    // WASI: a proxied connection keeps an (empty) inbox here, so that a guest waiting on it waits on
    // rather than reading an end of input; the proxy's re-sent input fills it.
    if (this.devices.fds.size > 0) {
      for (const [conn, px] of this.devices.proxied) {
        if (this.devices.conns.has(conn) && !this.inbox.rx.has(conn)) this.inbox.rx.set(conn, { chunks: [], bytes: 0, eof: px.inEof });
      }
    }
    if (this.inStep) this.setBudgetEnd(this.count); // the caller re-enters the record checkpoint path
  }

  /**
   * Record: pending timers' deadlines were on another host's clock (a replica going live, a recorder
   * restored from a checkpoint taken elsewhere): each is re-armed with its full delay on this one's.
   */
  rearmTimers(): void {
    assert(this.mode === 'record' && this.env !== undefined, 'timers are re-armed by a recorder');
    const now = this.env.nowMs();
    for (const t of this.devices.timers.values()) t.deadlineMs = now + t.delayMs;
  }

  get memoryBytes(): number {
    return this.memory.buffer.byteLength;
  }

  /** A copy of `len` bytes of guest memory at `addr` (inspection: time travel, debugging). */
  readMemory(addr: number, len: number): Uint8Array {
    const m = this.mem();
    if (!Number.isSafeInteger(addr) || !Number.isSafeInteger(len) || addr < 0 || len < 0 || addr + len > m.length) {
      throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `memory range ${addr}+${len} is outside the guest's ${m.length} bytes`);
    }
    return m.slice(addr, addr + len);
  }
}

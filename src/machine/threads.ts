/**
 * `ThreadHub`: the guest threads of a wasi-threads guest (checkpoint mode), seen from the machine's vCPU
 * thread. The guest's main thread runs in the `Machine` as any WASI command does; every thread it spawns
 * (`wasi.thread-spawn`) is a new instance of the same module on the same shared memory, on a worker of
 * its own (thread-worker.ts). A thread's host calls come back here (thread-protocol.ts) and run on the
 * vCPU thread with the machine's own import functions, so all threads share its fd table, the socket
 * inbox fed by the I/O thread and the outputs (nothing of the single-threaded path is copied).
 *
 * The vCPU thread runs them whenever the main thread is in the VMM: while it waits in a blocking call
 * (`Machine.blockFor`), at its budget checkpoints, and while it waits on a futex. A forwarded call that
 * would block does not block the vCPU thread: it gives way (`WouldBlock`) and stays pending, to be
 * tried again at the next service round (new input, another request, or at the latest after the vCPU's
 * wait times out).
 *
 * A consistent snapshot of every thread (`stopAll` … `parkedState` … `resumeAll`): the machine asks every
 * thread to park at its next blocking point (thread-worker.ts: unwound by Asyncify, image and globals in
 * its slot), keeps running their non-blocking calls meanwhile and answers their blocking ones UNWIND;
 * once all are parked the main thread unwinds as a single-threaded command does, and memory, every
 * thread's globals and stack image, and the devices are captured together. A thread that cannot park in
 * time (computing, or blocked under an indirect call) abandons the stop: every thread is resumed and the
 * snapshot refused (the checkpoint primary tries again). `respawn` starts the threads of a restored
 * snapshot, each rewinding into its blocking call.
 */
import { Worker } from 'node:worker_threads';
import { FtvmError } from '../util/errors.js';
import { ASYNC_WASI_CALL_NAMES, type InstrumentedModule, type SharedMemorySpec } from './instrumented.js';
import {
  HUB_EVENTS,
  HUB_MAIN_WAIT_ADDR,
  IMAGE_BYTES,
  PARK_PARKED,
  PARK_REFUSED,
  PARK_RESUME,
  PARK_RUNNING,
  SLOT_IMAGE_LEN,
  SLOT_PARK,
  SLOT_SEQ,
  SLOT_STOP,
  SLOT_WAIT_ADDR,
  STATE_UNWIND,
  readImage,
  type GuestThreadImage,
  type ThreadsState,
  SLOT_ARGS,
  SLOT_BYTES,
  SLOT_CALL,
  SLOT_INTS,
  SLOT_MSG_BYTES,
  SLOT_MSG_LEN,
  SLOT_RESULT,
  SLOT_STATE,
  STATE_DONE,
  STATE_FAILED,
  STATE_FINISHED,
  STATE_IDLE,
  STATE_REQUEST,
  STATE_TRAP,
  parseSignature,
  type ForwardedCall,
  type ThreadWorkerInit,
} from './thread-protocol.js';

/** Threads a guest may have running at once (besides its main thread), unless the VM says otherwise. */
export const DEFAULT_MAX_GUEST_THREADS = 32;
/** wasi-threads: thread-spawn's error result when no thread can be started (EAGAIN, negated). */
export const THREAD_SPAWN_EAGAIN = -6;

/** A forwarded blocking call that cannot complete yet: it is retried at the next service round. */
export class WouldBlock extends Error {
  constructor() {
    super('the forwarded call would block');
  }
}

interface Slot {
  tid: number;
  startArg: number;
  sab: SharedArrayBuffer;
  image: SharedArrayBuffer;
  ints: Int32Array;
  args: BigInt64Array;
  msg: Uint8Array;
  worker: Worker;
  /** The request that gave way (WouldBlock): pending, but not new work until input arrives. */
  deferredSeq: number;
}

export interface ThreadHubOptions {
  instrumented: InstrumentedModule;
  compiled: WebAssembly.Module;
  memory: WebAssembly.Memory;
  spec: SharedMemorySpec;
  /** The machine's import object: forwarded calls run these very functions. */
  imports: WebAssembly.Imports;
  /** The vCPU's input queue buffer (its wake word is shared with the threads). */
  queue: SharedArrayBuffer | undefined;
  maxThreads: number;
  /** A note for the VM's console (the thread limit was reached). */
  notice: (text: string) => void;
  /** Ends the VM with a trap (a thread's guest code trapped). */
  trap: (message: string) => never;
}

export class ThreadHub {
  private readonly slots = new Map<number, Slot>();
  private readonly calls: ForwardedCall[] = [];
  private readonly fns: Array<(...a: Array<number | bigint>) => unknown> = [];
  /** Indices (in `calls`) of the blocking calls a thread can unwind out of (Asyncify's imports). */
  private readonly unwindable: number[] = [];
  /** A stop is in progress: blocking calls are answered UNWIND. */
  private stopping = false;
  private nextTid = 1;
  /** True while a forwarded call runs (Machine.blockFor then gives way instead of waiting). */
  servicing = false;
  private readonly hubSab = new SharedArrayBuffer(16);
  private readonly hub = new Int32Array(this.hubSab);
  private readonly queue: SharedArrayBuffer;
  private limitNoticed = false;

  constructor(private readonly opts: ThreadHubOptions) {
    this.hub[HUB_MAIN_WAIT_ADDR] = -1;
    // Without a vCPU queue (a machine run on one thread, e.g. in tests), threads wake a private word.
    this.queue = opts.queue ?? new SharedArrayBuffer(64);
    for (const imp of opts.instrumented.imports) {
      const sig = parseSignature(imp.signature);
      if (sig === undefined) throw new FtvmError('FTVM_ERR_ABI_IMPORT', `a threaded guest's import ${imp.module}.${imp.name} ${imp.signature} cannot be forwarded from its threads`);
      const fn = (opts.imports[imp.module] as Record<string, unknown> | undefined)?.[imp.name];
      if (typeof fn !== 'function') continue; // the ABI check refuses it before a thread could call it
      if (opts.instrumented.asyncified === true && imp.module === 'wasi_snapshot_preview1' && ASYNC_WASI_CALL_NAMES.includes(imp.name)) this.unwindable.push(this.calls.length);
      this.calls.push({ module: imp.module, name: imp.name, params: sig.params, result: sig.result });
      this.fns.push(fn as (...a: Array<number | bigint>) => unknown);
    }
  }

  /** Guest threads running. */
  get running(): number {
    return this.slots.size;
  }

  /** `wasi.thread-spawn(start_arg)`: a new thread on a worker of its own; its tid, or -EAGAIN past the limit. */
  spawn(startArg: number): number {
    if (this.slots.size >= this.opts.maxThreads) {
      if (!this.limitNoticed) {
        this.limitNoticed = true;
        this.opts.notice(`ftvm: thread-spawn refused (EAGAIN): the VM's limit of ${this.opts.maxThreads} guest threads is reached\n`);
      }
      return THREAD_SPAWN_EAGAIN;
    }
    const tid = this.nextTid++;
    if (tid > 0x1fffffff) return THREAD_SPAWN_EAGAIN; // wasi-threads: tids are positive i32 below 2^29
    this.start(tid, startArg >>> 0, undefined);
    return tid;
  }

  /** Starts thread `tid` on its worker (`resume`: restored from a snapshot, rewound into its blocking call). */
  private start(tid: number, startArg: number, resume: { globals: Array<number | bigint>; stack: Uint8Array } | undefined): void {
    const sab = new SharedArrayBuffer(SLOT_BYTES);
    const image = new SharedArrayBuffer(IMAGE_BYTES);
    const ints = new Int32Array(sab, 0, SLOT_INTS);
    ints[SLOT_WAIT_ADDR] = -1;
    const init: ThreadWorkerInit = {
      module: this.opts.compiled,
      memory: this.opts.memory,
      memoryImport: { module: this.opts.spec.module, base: this.opts.spec.base },
      calls: this.calls,
      tid,
      startArg,
      slot: sab,
      hub: this.hubSab,
      queue: this.queue,
      maximumPages: this.opts.spec.maximumPages,
      maxCallDepth: this.opts.instrumented.maxCallDepth,
      image,
      globalExports: this.opts.instrumented.globalExports,
      stackPointerExport: this.opts.instrumented.stackPointerExport,
      unwindable: this.unwindable,
      ...(resume !== undefined ? { resume } : {}),
    };
    const worker = new Worker(new URL('./thread-worker.js', import.meta.url), {
      workerData: init,
      resourceLimits: { stackSizeMb: 64, maxYoungGenerationSizeMb: 6 },
    });
    worker.on('error', () => {
      // A worker that dies without writing its slot (out of memory): seen as FAILED at the next round.
      Atomics.compareExchange(new Int32Array(sab, 0, SLOT_INTS), SLOT_STATE, STATE_IDLE, STATE_FAILED);
    });
    this.slots.set(tid, {
      tid,
      startArg,
      sab,
      image,
      worker,
      deferredSeq: -1,
      ints,
      args: new BigInt64Array(sab, SLOT_INTS * 4, SLOT_ARGS + 1),
      msg: new Uint8Array(sab, SLOT_INTS * 4 + (SLOT_ARGS + 1) * 8, SLOT_MSG_BYTES),
    });
  }

  /**
   * True when a thread waits for the vCPU thread with new work: a request (not one that already gave way
   * and waits for input, which wakes the vCPU thread anyway), a park during a stop, or a finished or
   * failed thread to collect.
   */
  hasRequests(): boolean {
    for (const s of this.slots.values()) {
      const st = Atomics.load(s.ints, SLOT_STATE);
      if (st === STATE_FINISHED || st === STATE_FAILED) return true;
      if (st === STATE_REQUEST && Atomics.load(s.ints, SLOT_SEQ) !== s.deferredSeq) return true;
      if (this.stopping && st === STATE_REQUEST) return true;
    }
    return false;
  }

  /**
   * Runs every pending forwarded call that can complete. A call that would block stays pending; a
   * thread whose guest code trapped ends the VM (`opts.trap`: a trap in any thread ends a wasi-threads
   * process); a trap or exit inside a forwarded call
   * (a bad pointer, proc_exit) propagates to the caller, ending the VM the same way.
   */
  service(): void {
    if (this.servicing || this.slots.size === 0) return;
    for (const s of [...this.slots.values()]) {
      const st = Atomics.load(s.ints, SLOT_STATE);
      if (st === STATE_FINISHED) {
        this.slots.delete(s.tid);
        void s.worker.terminate();
        continue;
      }
      if (st === STATE_FAILED) {
        const text = Buffer.from(s.msg.subarray(0, Atomics.load(s.ints, SLOT_MSG_LEN))).toString('utf8');
        this.opts.trap(text || `guest thread ${s.tid} failed`);
      }
      if (st !== STATE_REQUEST) continue;
      const index = Atomics.load(s.ints, SLOT_CALL);
      const call = this.calls[index];
      const fn = this.fns[index];
      if (call === undefined || fn === undefined) this.opts.trap(`guest thread ${s.tid}: unknown host call ${index}`);
      if (this.stopping && Atomics.load(s.ints, SLOT_PARK) === PARK_RUNNING && this.unwindable.includes(index)) {
        // Stopping: a blocking call parks the thread instead (it has not run; it is made again after the rewind).
        Atomics.store(s.ints, SLOT_STATE, STATE_UNWIND);
        Atomics.notify(s.ints, SLOT_STATE);
        continue;
      }
      const values = call.params.map((t, i) => (t === 'i64' ? BigInt.asIntN(64, s.args[i]!) : Number(BigInt.asIntN(32, s.args[i]!))));
      let result: unknown;
      const seq = Atomics.load(s.ints, SLOT_SEQ);
      this.servicing = true;
      try {
        result = fn(...values);
      } catch (err) {
        if (err instanceof WouldBlock) {
          s.deferredSeq = seq;
          continue;
        }
        // The thread stays waiting; the VM ends with this error (the machine terminates every thread).
        throw err;
      } finally {
        this.servicing = false;
      }
      s.args[SLOT_RESULT] = typeof result === 'bigint' ? result : BigInt(typeof result === 'number' ? result : 0);
      Atomics.store(s.ints, SLOT_STATE, STATE_DONE);
      Atomics.notify(s.ints, SLOT_STATE);
    }
  }

  /**
   * The vCPU thread's own futex wait (the guest's main thread in `memory.atomic.wait`): it keeps running
   * the threads' calls meanwhile (a thread may need one to release what the main thread waits for). A
   * thread's request wakes it; it then returns 0 ("woken") to the guest, which re-checks its condition
   * as futex users must. Returns 0, 1 (not equal) or 2 (timed out).
   */
  mainWait(view: Int32Array | BigInt64Array, index: number, expected: number | bigint, timeoutMs: number): number {
    this.service();
    Atomics.store(this.hub, HUB_MAIN_WAIT_ADDR, index * view.BYTES_PER_ELEMENT);
    try {
      if (this.hasRequests()) return 0;
      const r = view instanceof Int32Array ? Atomics.wait(view, index, expected as number, timeoutMs) : Atomics.wait(view, index, expected as bigint, timeoutMs);
      return r === 'ok' ? 0 : r === 'not-equal' ? 1 : 2;
    } finally {
      Atomics.store(this.hub, HUB_MAIN_WAIT_ADDR, -1);
      this.service();
    }
  }

  /**
   * Parks every thread at its next blocking point, running their other calls meanwhile; true once all are
   * parked (or finished). False — every thread resumed — when one cannot park within `timeoutMs`.
   */
  stopAll(timeoutMs: number): boolean {
    if (this.slots.size === 0) return true;
    this.stopping = true;
    for (const s of this.slots.values()) {
      Atomics.store(s.ints, SLOT_STOP, 1);
      const addr = Atomics.load(s.ints, SLOT_WAIT_ADDR);
      if (addr >= 0) Atomics.notify(new Int32Array(this.opts.memory.buffer), addr >>> 2);
    }
    const until = performance.now() + timeoutMs;
    for (;;) {
      const seen = Atomics.load(this.hub, HUB_EVENTS);
      this.service();
      let parked = 0;
      let refused = false;
      for (const s of this.slots.values()) {
        const p = Atomics.load(s.ints, SLOT_PARK);
        if (p === PARK_PARKED) parked++;
        if (p === PARK_REFUSED) refused = true;
      }
      if (parked === this.slots.size) return true;
      if (refused || performance.now() >= until) {
        this.resumeAll();
        return false;
      }
      // A wait that began just before the stop request missed its notification: notify again.
      for (const s of this.slots.values()) {
        const addr = Atomics.load(s.ints, SLOT_WAIT_ADDR);
        if (addr >= 0 && Atomics.load(s.ints, SLOT_PARK) === PARK_RUNNING) Atomics.notify(new Int32Array(this.opts.memory.buffer), addr >>> 2);
      }
      Atomics.wait(this.hub, HUB_EVENTS, seen, Math.max(0, Math.min(5, until - performance.now())));
    }
  }

  /** Every thread's image, while all are parked (stopAll returned true). */
  parkedState(): ThreadsState {
    const threads: GuestThreadImage[] = [];
    for (const s of [...this.slots.values()].sort((a, b) => a.tid - b.tid)) {
      if (Atomics.load(s.ints, SLOT_PARK) !== PARK_PARKED) throw new FtvmError('FTVM_ERR_SNAPSHOT', `guest thread ${s.tid} is not parked`);
      const img = readImage(new Uint8Array(s.image, 0, Atomics.load(s.ints, SLOT_IMAGE_LEN)));
      threads.push({ tid: s.tid, startArg: s.startArg, globals: img.globals, stack: img.stack });
    }
    return { nextTid: this.nextTid, threads };
  }

  /** Ends a stop: every parked thread rewinds into its call and goes on. */
  resumeAll(): void {
    this.stopping = false;
    for (const s of this.slots.values()) {
      Atomics.store(s.ints, SLOT_STOP, 0);
      const p = Atomics.load(s.ints, SLOT_PARK);
      if (p === PARK_PARKED) {
        Atomics.store(s.ints, SLOT_PARK, PARK_RESUME);
        Atomics.notify(s.ints, SLOT_PARK);
      } else if (p === PARK_REFUSED) {
        Atomics.store(s.ints, SLOT_PARK, PARK_RUNNING);
      }
    }
  }

  /** A restored machine: starts the snapshot's threads, each rewinding into the call it was parked in. */
  respawn(state: ThreadsState): void {
    if (this.slots.size !== 0) throw new FtvmError('FTVM_ERR_SNAPSHOT', 'threads are restored only into a fresh machine');
    if (state.threads.length > this.opts.maxThreads) throw new FtvmError('FTVM_ERR_SNAPSHOT', `the snapshot has ${state.threads.length} guest threads; this VM allows ${this.opts.maxThreads}`);
    for (const t of state.threads) {
      if (t.globals.length !== this.opts.instrumented.globalExports.length) throw new FtvmError('FTVM_ERR_SNAPSHOT', `guest thread ${t.tid}: ${t.globals.length} globals, the module has ${this.opts.instrumented.globalExports.length}`);
      this.start(t.tid, t.startArg, { globals: t.globals, stack: t.stack });
    }
    this.nextTid = Math.max(state.nextTid, ...state.threads.map((t) => t.tid + 1));
  }

  /** Ends every thread (the guest's main thread ended, or the VM stops). */
  async terminate(): Promise<void> {
    const workers = [...this.slots.values()].map((s) => s.worker);
    this.slots.clear();
    await Promise.all(workers.map((w) => w.terminate()));
  }
}

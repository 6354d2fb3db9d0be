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
 */
import { Worker } from 'node:worker_threads';
import { FtvmError } from '../util/errors.js';
import { THREAD_SPAWN_MODULE, THREAD_SPAWN_NAME, type InstrumentedModule, type SharedMemorySpec } from './instrumented.js';
import {
  HUB_MAIN_WAIT_ADDR,
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
  sab: SharedArrayBuffer;
  ints: Int32Array;
  args: BigInt64Array;
  msg: Uint8Array;
  worker: Worker;
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
    const sab = new SharedArrayBuffer(SLOT_BYTES);
    const init: ThreadWorkerInit = {
      module: this.opts.compiled,
      memory: this.opts.memory,
      memoryImport: { module: this.opts.spec.module, base: this.opts.spec.base },
      calls: this.calls,
      tid,
      startArg: startArg >>> 0,
      slot: sab,
      hub: this.hubSab,
      queue: this.queue,
      maximumPages: this.opts.spec.maximumPages,
      maxCallDepth: this.opts.instrumented.maxCallDepth,
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
      sab,
      worker,
      ints: new Int32Array(sab, 0, SLOT_INTS),
      args: new BigInt64Array(sab, SLOT_INTS * 4, SLOT_ARGS + 1),
      msg: new Uint8Array(sab, SLOT_INTS * 4 + (SLOT_ARGS + 1) * 8, SLOT_MSG_BYTES),
    });
    return tid;
  }

  /** True when a thread waits for the vCPU thread (a request, or a finished/failed thread to collect). */
  hasRequests(): boolean {
    for (const s of this.slots.values()) {
      const st = Atomics.load(s.ints, SLOT_STATE);
      if (st === STATE_REQUEST || st === STATE_FINISHED || st === STATE_FAILED) return true;
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
      const values = call.params.map((t, i) => (t === 'i64' ? BigInt.asIntN(64, s.args[i]!) : Number(BigInt.asIntN(32, s.args[i]!))));
      let result: unknown;
      this.servicing = true;
      try {
        result = fn(...values);
      } catch (err) {
        if (err instanceof WouldBlock) continue;
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

  /** Ends every thread (the guest's main thread ended, or the VM stops). */
  async terminate(): Promise<void> {
    const workers = [...this.slots.values()].map((s) => s.worker);
    this.slots.clear();
    await Promise.all(workers.map((w) => w.terminate()));
  }
}

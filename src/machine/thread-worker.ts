/**
 * One guest thread (checkpoint mode, wasi-threads): a new instance of the guest's instrumented module on
 * the VM's shared memory, running `wasi_thread_start(tid, start_arg)` on its own worker. Its host calls
 * (WASI, thread-spawn) run on the machine's vCPU thread through its slot (thread-protocol.ts), so every
 * thread shares the one fd table, socket inbox and outputs of the machine; only what is private to the
 * thread runs here: the fuel budget (metered, refilled), the call-depth trap, memory.grow on the shared
 * memory and atomic waits (`ftvm_internal.atomic_wait32/64`, on the shared memory itself).
 *
 * Stops (a consistent checkpoint of every thread): when the vCPU thread sets the slot's STOP word, the
 * thread parks at its next blocking point — a blocking WASI call (the vCPU thread answers it UNWIND
 * instead of running it) or an atomic wait (woken through its published address). It unwinds its wasm
 * stack with Asyncify into the bytes just below its own stack pointer (the free part of its stack; the
 * guest's bytes there are saved and put back), copies the image and its globals into the slot's image
 * buffer, and waits. Resumed, it rewinds into the same call, which starts over. A thread restored from a
 * snapshot starts by rewinding the same way.
 */
import { workerData } from 'node:worker_threads';
import { ATOMIC_WAIT32, ATOMIC_WAIT64, FUEL_GLOBAL, INDIRECT_GLOBAL, INTERNAL_MODULE, THREAD_START_EXPORT } from './instrumented.js';
import {
  HUB_EVENTS,
  HUB_MAIN_WAIT_ADDR,
  PARK_BUFFER_BYTES,
  PARK_PARKED,
  PARK_REFUSED,
  PARK_RUNNING,
  SLOT_ARGS,
  SLOT_CALL,
  SLOT_IMAGE_LEN,
  SLOT_INTS,
  SLOT_MSG_BYTES,
  SLOT_MSG_LEN,
  SLOT_PARK,
  SLOT_RESULT,
  SLOT_SEQ,
  SLOT_STATE,
  SLOT_STOP,
  SLOT_WAIT_ADDR,
  STATE_DONE,
  STATE_FAILED,
  STATE_FINISHED,
  STATE_REQUEST,
  STATE_TRAP,
  STATE_UNWIND,
  writeImage,
  type ThreadWorkerInit,
} from './thread-protocol.js';

const init = workerData as ThreadWorkerInit;

const ints = new Int32Array(init.slot, 0, SLOT_INTS);
const args = new BigInt64Array(init.slot, SLOT_INTS * 4, SLOT_ARGS + 1);
const msg = new Uint8Array(init.slot, SLOT_INTS * 4 + (SLOT_ARGS + 1) * 8, SLOT_MSG_BYTES);
const hub = new Int32Array(init.hub);
/** The vCPU queue's header: word 2 is its wake counter (shared-queue.ts). */
const queueWake = new Int32Array(init.queue, 0, 5);
const QUEUE_WAKE = 2;
/** Fuel per refill: the thread is metered (every loop and call charges), not stopped, in this stage. */
const FUEL = 1n << 40n;

function writeMessage(state: number, text: string): void {
  const bytes = Buffer.from(text, 'utf8').subarray(0, SLOT_MSG_BYTES);
  msg.set(bytes);
  Atomics.store(ints, SLOT_MSG_LEN, bytes.length);
  Atomics.store(ints, SLOT_STATE, state);
  wakeHub();
}

function wakeHub(): void {
  Atomics.add(hub, HUB_EVENTS, 1);
  Atomics.notify(hub, HUB_EVENTS);
  Atomics.add(queueWake, QUEUE_WAKE, 1);
  Atomics.notify(queueWake, QUEUE_WAKE);
  // The vCPU thread may be in the guest's own futex wait (its main thread waiting for a lock).
  const addr = Atomics.load(hub, HUB_MAIN_WAIT_ADDR);
  if (addr >= 0) Atomics.notify(new Int32Array(init.memory.buffer), addr >>> 2);
}

class HostTrap extends Error {}

// ---------------------------------------------------------------- Asyncify: parking and rewinding

const ASYNCIFY_UNWINDING = 1;
const ASYNCIFY_REWINDING = 2;
interface Asyncify {
  start_unwind(ptr: number): void;
  stop_unwind(): void;
  start_rewind(ptr: number): void;
  stop_rewind(): void;
  get_state(): number;
}
let asy: Asyncify | undefined;
let instance: WebAssembly.Instance | undefined;
/** [ptr, end) of the Asyncify buffer below the stack pointer while unwound, and the guest's bytes there. */
let park: { ptr: number; end: number; saved: Uint8Array } | undefined;
const imageBytes = new Uint8Array(init.image);

function bytes(): Uint8Array {
  return new Uint8Array(init.memory.buffer);
}

function globalValues(): Array<number | bigint> {
  return init.globalExports.map((n) => (instance!.exports[n] as WebAssembly.Global).value as number | bigint);
}

/** Whether this thread can unwind where it is (Asyncify rewrote every frame: no indirect call in progress). */
function canUnwind(): boolean {
  if (asy === undefined || init.stackPointerExport === undefined) return false;
  const indirect = instance!.exports[INDIRECT_GLOBAL] as WebAssembly.Global | undefined;
  return indirect === undefined || indirect.value === 0;
}

/** The buffer just below the stack pointer: the free part of this thread's own stack. */
function parkRegion(): { ptr: number; end: number } {
  const sp = ((instance!.exports[init.stackPointerExport!] as WebAssembly.Global).value as number) >>> 0;
  const end = sp & ~15;
  const ptr = Math.max(0, end - PARK_BUFFER_BYTES);
  return { ptr, end };
}

/** An asyncified import gives way: start unwinding into the park region. */
function beginUnwind(): void {
  const { ptr, end } = parkRegion();
  const mem = bytes();
  park = { ptr, end, saved: new Uint8Array(mem.subarray(ptr, end)) };
  const dv = new DataView(init.memory.buffer);
  dv.setUint32(ptr, ptr + 8, true);
  dv.setUint32(ptr + 4, end, true);
  asy!.start_unwind(ptr);
}

/** Unwound: the image goes to the slot, the guest's bytes back; then wait to be resumed. */
function parkAndWait(): void {
  asy!.stop_unwind();
  const p = park!;
  const mem = bytes();
  const cur = new DataView(init.memory.buffer).getUint32(p.ptr, true);
  const stack = new Uint8Array(mem.subarray(p.ptr + 8, cur));
  mem.set(p.saved, p.ptr);
  const len = writeImage(imageBytes, globalValues(), stack);
  Atomics.store(ints, SLOT_IMAGE_LEN, len);
  Atomics.store(ints, SLOT_PARK, PARK_PARKED);
  wakeHub();
  while (Atomics.load(ints, SLOT_PARK) === PARK_PARKED) Atomics.wait(ints, SLOT_PARK, PARK_PARKED);
  Atomics.store(ints, SLOT_PARK, PARK_RUNNING);
  beginRewind(stack);
}

/** Before re-entering wasi_thread_start: the image goes below the stack pointer, and the rewind starts. */
function beginRewind(stack: Uint8Array): void {
  const { ptr, end } = parkRegion();
  if (stack.length + 8 > end - ptr) throw new HostTrap(`thread ${init.tid}: an unwound stack of ${stack.length} bytes does not fit below its stack pointer`);
  const mem = bytes();
  park = { ptr, end, saved: new Uint8Array(mem.subarray(ptr, end)) };
  mem.set(stack, ptr + 8);
  const dv = new DataView(init.memory.buffer);
  dv.setUint32(ptr, ptr + 8 + stack.length, true);
  dv.setUint32(ptr + 4, end, true);
  asy!.start_rewind(ptr);
}

/** The rewind reached the blocking call: stop it, put the guest's bytes back; the call starts over. */
function endRewindIfRewinding(): void {
  if (asy === undefined || asy.get_state() !== ASYNCIFY_REWINDING) return;
  asy.stop_rewind();
  const p = park!;
  bytes().set(p.saved, p.ptr);
  park = undefined;
}

/** Asked to stop: unwind if this thread can (true); else say so (the stop is abandoned) and go on. */
function parkHere(): boolean {
  if (!canUnwind()) {
    Atomics.store(ints, SLOT_PARK, PARK_REFUSED);
    wakeHub();
    return false;
  }
  beginUnwind();
  return true;
}

const UNWIND = Symbol('unwind');

/** Runs import `index` on the vCPU thread and waits for its result. */
function forward(index: number, values: Array<number | bigint>, unwindable: boolean): bigint | typeof UNWIND {
  for (;;) {
    const r = forwardOnce(index, values);
    if (r !== UNWIND) return r;
    // The vCPU thread stops every thread: park here (the call has not run; it is made again after the rewind).
    if (unwindable && parkHere()) return UNWIND;
    // Cannot unwind: make the call again (the vCPU thread runs it once the stop is abandoned).
  }
}

function forwardOnce(index: number, values: Array<number | bigint>): bigint | typeof UNWIND {
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    args[i] = typeof v === 'bigint' ? v : BigInt(v);
  }
  Atomics.store(ints, SLOT_CALL, index);
  Atomics.add(ints, SLOT_SEQ, 1);
  Atomics.store(ints, SLOT_STATE, STATE_REQUEST);
  wakeHub();
  while (Atomics.load(ints, SLOT_STATE) === STATE_REQUEST) Atomics.wait(ints, SLOT_STATE, STATE_REQUEST);
  const state = Atomics.load(ints, SLOT_STATE);
  if (state === STATE_TRAP) {
    const text = Buffer.from(msg.subarray(0, Atomics.load(ints, SLOT_MSG_LEN))).toString('utf8');
    throw new HostTrap(text);
  }
  if (state === STATE_UNWIND) return UNWIND;
  if (state !== STATE_DONE) throw new HostTrap(`thread ${init.tid}: unexpected slot state ${state}`);
  return args[SLOT_RESULT]!;
}

/** A stop request may miss a wait that is just starting (it notifies before the wait begins): waits are sliced. */
const WAIT_SLICE_MS = 100;

/**
 * Wasm's wait semantics on the shared memory: 0 woken, 1 not-equal, 2 timed out. A stop request parks the
 * thread here (its address is published, so the request wakes it); rewound, the wait starts over, which
 * its caller cannot tell from a spurious wake-up.
 */
function atomicWait(addr: bigint, expected: number | bigint, timeoutNs: bigint, size: 4 | 8): number {
  endRewindIfRewinding();
  const len = init.memory.buffer.byteLength;
  if (addr < 0n || addr + BigInt(size) > BigInt(len)) throw new HostTrap(`out of bounds atomic wait at ${addr}`);
  if (addr % BigInt(size) !== 0n) throw new HostTrap(`unaligned atomic wait at ${addr}`);
  const until = timeoutNs < 0n ? Infinity : performance.now() + Number(timeoutNs) / 1e6;
  Atomics.store(ints, SLOT_WAIT_ADDR, Number(addr));
  try {
    for (;;) {
      if (Atomics.load(ints, SLOT_STOP) === 1 && Atomics.load(ints, SLOT_PARK) === PARK_RUNNING && parkHere()) return 0;
      const slice = Math.min(WAIT_SLICE_MS, Math.max(0, until - performance.now()));
      const r =
        size === 4
          ? Atomics.wait(new Int32Array(init.memory.buffer), Number(addr) >>> 2, expected as number, slice)
          : Atomics.wait(new BigInt64Array(init.memory.buffer), Number(addr) >>> 3, expected as bigint, slice);
      if (r === 'not-equal') return 1;
      if (r === 'ok') {
        // Woken by the guest, or by a stop request: then park here (unwinding; the value is not used).
        // A thread that cannot park returns "woken" anyway: a spurious wake-up, which futex users re-check.
        if (Atomics.load(ints, SLOT_STOP) === 1 && Atomics.load(ints, SLOT_PARK) === PARK_RUNNING) parkHere();
        return 0;
      }
      if (performance.now() >= until) return 2;
    }
  } finally {
    Atomics.store(ints, SLOT_WAIT_ADDR, -1);
  }
}

function main(): void {
  const imports: Record<string, Record<string, unknown>> = {};
  const put = (module: string, name: string, value: unknown): void => {
    (imports[module] ??= {})[name] = value;
  };
  put(init.memoryImport.module, init.memoryImport.base, init.memory);
  init.calls.forEach((c, index) => {
    const unwindable = init.unwindable.includes(index);
    put(c.module, c.name, (...values: Array<number | bigint>) => {
      if (unwindable) endRewindIfRewinding();
      const r = forward(index, values, unwindable);
      if (r === UNWIND) return c.result === null ? undefined : c.result === 'i64' ? 0n : 0;
      if (c.result === null) return undefined;
      return c.result === 'i64' ? BigInt.asIntN(64, r) : Number(BigInt.asIntN(32, r));
    });
  });
  put(INTERNAL_MODULE, 'budget', (_k: number, _fuel: bigint): bigint => FUEL);
  put(INTERNAL_MODULE, 'depth_exceeded', (): never => {
    throw new HostTrap(`call depth exceeded (limit ${init.maxCallDepth}) on thread ${init.tid}`);
  });
  put(INTERNAL_MODULE, 'memory_grow', (delta: number): number => {
    const pages = init.memory.buffer.byteLength / 65536;
    if (pages + (delta >>> 0) > init.maximumPages) return -1;
    try {
      return init.memory.grow(delta >>> 0);
    } catch {
      return -1;
    }
  });
  put(INTERNAL_MODULE, ATOMIC_WAIT32, (addr: bigint, expected: number, timeout: bigint) => atomicWait(addr, expected, timeout, 4));
  put(INTERNAL_MODULE, ATOMIC_WAIT64, (addr: bigint, expected: bigint, timeout: bigint) => atomicWait(addr, expected, timeout, 8));
  instance = new WebAssembly.Instance(init.module, imports as WebAssembly.Imports);
  const ex = instance.exports;
  if (typeof ex.asyncify_start_unwind === 'function') {
    const f = (n: string): ((...a: number[]) => number) => ex[`asyncify_${n}`] as (...a: number[]) => number;
    asy = { start_unwind: f('start_unwind'), stop_unwind: f('stop_unwind'), start_rewind: f('start_rewind'), stop_rewind: f('stop_rewind'), get_state: f('get_state') };
  }
  const start = ex[THREAD_START_EXPORT] as (tid: number, arg: number) => void;
  if (init.resume !== undefined) {
    // A thread restored from a snapshot: its globals, then a rewind into the call it was parked in.
    if (asy === undefined || init.stackPointerExport === undefined) throw new HostTrap(`thread ${init.tid}: a restored thread needs an asyncified module with a stack pointer`);
    init.globalExports.forEach((n, i) => {
      (ex[n] as WebAssembly.Global).value = init.resume!.globals[i]!;
    });
    beginRewind(init.resume.stack);
  }
  for (;;) {
    (ex[FUEL_GLOBAL] as WebAssembly.Global).value = FUEL;
    start(init.tid, init.startArg);
    if (asy !== undefined && asy.get_state() === ASYNCIFY_UNWINDING) {
      parkAndWait();
      continue;
    }
    return;
  }
}

try {
  main();
  Atomics.store(ints, SLOT_STATE, STATE_FINISHED);
  wakeHub();
} catch (err) {
  const e = err as Error;
  writeMessage(STATE_FAILED, `guest thread ${init.tid}: ${e instanceof WebAssembly.RuntimeError || e instanceof HostTrap ? '' : `${e.name}: `}${e.message}`);
}

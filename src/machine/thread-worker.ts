/**
 * One guest thread (checkpoint mode, wasi-threads): a new instance of the guest's instrumented module on
 * the VM's shared memory, running `wasi_thread_start(tid, start_arg)` on its own worker. Its host calls
 * (WASI, thread-spawn) run on the machine's vCPU thread through its slot (thread-protocol.ts), so every
 * thread shares the one fd table, socket inbox and outputs of the machine; only what is private to the
 * thread runs here: the fuel budget (metered, refilled), the call-depth trap, memory.grow on the shared
 * memory and atomic waits (`ftvm_internal.atomic_wait32/64`, on the shared memory itself).
 */
import { workerData } from 'node:worker_threads';
import { ATOMIC_WAIT32, ATOMIC_WAIT64, FUEL_GLOBAL, INTERNAL_MODULE, THREAD_START_EXPORT } from './instrumented.js';
import { HUB_MAIN_WAIT_ADDR, SLOT_ARGS, SLOT_CALL, SLOT_INTS, SLOT_MSG_BYTES, SLOT_MSG_LEN, SLOT_RESULT, SLOT_STATE, STATE_DONE, STATE_FAILED, STATE_FINISHED, STATE_REQUEST, STATE_TRAP, type ThreadWorkerInit } from './thread-protocol.js';

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
  Atomics.add(queueWake, QUEUE_WAKE, 1);
  Atomics.notify(queueWake, QUEUE_WAKE);
  // The vCPU thread may be in the guest's own futex wait (its main thread waiting for a lock).
  const addr = Atomics.load(hub, HUB_MAIN_WAIT_ADDR);
  if (addr >= 0) Atomics.notify(new Int32Array(init.memory.buffer), addr >>> 2);
}

class HostTrap extends Error {}

/** Runs import `index` on the vCPU thread and waits for its result. */
function forward(index: number, values: Array<number | bigint>): bigint {
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    args[i] = typeof v === 'bigint' ? v : BigInt(v);
  }
  Atomics.store(ints, SLOT_CALL, index);
  Atomics.store(ints, SLOT_STATE, STATE_REQUEST);
  wakeHub();
  while (Atomics.load(ints, SLOT_STATE) === STATE_REQUEST) Atomics.wait(ints, SLOT_STATE, STATE_REQUEST);
  const state = Atomics.load(ints, SLOT_STATE);
  if (state === STATE_TRAP) {
    const text = Buffer.from(msg.subarray(0, Atomics.load(ints, SLOT_MSG_LEN))).toString('utf8');
    throw new HostTrap(text);
  }
  if (state !== STATE_DONE) throw new HostTrap(`thread ${init.tid}: unexpected slot state ${state}`);
  return args[SLOT_RESULT]!;
}

/** Wasm's wait semantics on the shared memory: 0 woken, 1 not-equal, 2 timed out. */
function atomicWait(addr: bigint, expected: number | bigint, timeoutNs: bigint, bytes: 4 | 8): number {
  const len = init.memory.buffer.byteLength;
  if (addr < 0n || addr + BigInt(bytes) > BigInt(len)) throw new HostTrap(`out of bounds atomic wait at ${addr}`);
  if (addr % BigInt(bytes) !== 0n) throw new HostTrap(`unaligned atomic wait at ${addr}`);
  const timeout = timeoutNs < 0n ? Infinity : Number(timeoutNs) / 1e6;
  const r =
    bytes === 4
      ? Atomics.wait(new Int32Array(init.memory.buffer), Number(addr) >>> 2, expected as number, timeout)
      : Atomics.wait(new BigInt64Array(init.memory.buffer), Number(addr) >>> 3, expected as bigint, timeout);
  return r === 'ok' ? 0 : r === 'not-equal' ? 1 : 2;
}

function main(): void {
  const imports: Record<string, Record<string, unknown>> = {};
  const put = (module: string, name: string, value: unknown): void => {
    (imports[module] ??= {})[name] = value;
  };
  put(init.memoryImport.module, init.memoryImport.base, init.memory);
  init.calls.forEach((c, index) => {
    put(c.module, c.name, (...values: Array<number | bigint>) => {
      const r = forward(index, values);
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
  const instance = new WebAssembly.Instance(init.module, imports as WebAssembly.Imports);
  (instance.exports[FUEL_GLOBAL] as WebAssembly.Global).value = FUEL;
  const start = instance.exports[THREAD_START_EXPORT] as (tid: number, arg: number) => void;
  start(init.tid, init.startArg);
}

try {
  main();
  Atomics.store(ints, SLOT_STATE, STATE_FINISHED);
  wakeHub();
} catch (err) {
  const e = err as Error;
  writeMessage(STATE_FAILED, `guest thread ${init.tid}: ${e instanceof WebAssembly.RuntimeError || e instanceof HostTrap ? '' : `${e.name}: `}${e.message}`);
}

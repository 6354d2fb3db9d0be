/**
 * The guest-thread protocol (checkpoint mode, wasi-threads): how a thread's worker (thread-worker.ts)
 * asks the machine's vCPU thread (threads.ts, `ThreadHub`) to run one of its host calls. Each thread has
 * a slot of shared words; a call is: the thread writes the import's index and its arguments, stores
 * REQUEST, wakes the vCPU thread and waits on its state word; the vCPU thread runs the call (against the
 * same shared memory), writes the result and stores DONE (or TRAP with a message), and notifies it.
 */

/** Slot words (Int32Array). */
export const SLOT_STATE = 0;
export const SLOT_CALL = 1;
export const SLOT_MSG_LEN = 2;
/** Where the vCPU thread's own futex wait is (a byte address), or -1: a request also wakes it there. */
export const HUB_MAIN_WAIT_ADDR = 0;
export const SLOT_INTS = 4;
/** Arguments and result (BigInt64Array after the ints): up to 15 arguments, then the result. */
export const SLOT_ARGS = 15;
export const SLOT_RESULT = SLOT_ARGS;
export const SLOT_MSG_BYTES = 1024;
export const SLOT_BYTES = SLOT_INTS * 4 + (SLOT_ARGS + 1) * 8 + SLOT_MSG_BYTES;

/** Slot states. */
export const STATE_IDLE = 0;
export const STATE_REQUEST = 1;
export const STATE_DONE = 2;
/** The host call trapped (message in the slot): the thread throws it, which ends the VM. */
export const STATE_TRAP = 3;
/** Set by the thread's worker when wasi_thread_start returned (the slot can be reused). */
export const STATE_FINISHED = 4;
/** Set by the thread's worker when its guest code trapped (message in the slot): the VM halts. */
export const STATE_FAILED = 5;

export interface ThreadWorkerInit {
  module: WebAssembly.Module;
  memory: WebAssembly.Memory;
  /** The module's import of the shared memory. */
  memoryImport: { module: string; base: string };
  /** Imports forwarded to the vCPU thread, by index: module, name, parameter types, result type. */
  calls: ForwardedCall[];
  tid: number;
  startArg: number;
  /** This thread's slot. */
  slot: SharedArrayBuffer;
  /** The hub's words (HUB_MAIN_WAIT_ADDR). */
  hub: SharedArrayBuffer;
  /** The vCPU's input queue (its wake word): a request wakes the vCPU thread's waits. */
  queue: SharedArrayBuffer;
  /** Thread-spawn's maximum memory (pages), for memory.grow on this thread. */
  maximumPages: number;
  maxCallDepth: number;
}

export type ValType = 'i32' | 'i64';
export interface ForwardedCall {
  module: string;
  name: string;
  params: ValType[];
  result: ValType | null;
}

/** `(i32,i64)->(i32)` (InstrumentedModule's signatures) → parameter and result types; undefined for others. */
export function parseSignature(sig: string): { params: ValType[]; result: ValType | null } | undefined {
  const m = /^\(([^)]*)\)->\(([^)]*)\)$/.exec(sig);
  if (m === null) return undefined;
  const list = (s: string): string[] => (s === '' ? [] : s.split(','));
  const params = list(m[1]!);
  const results = list(m[2]!);
  if (params.some((p) => p !== 'i32' && p !== 'i64') || results.length > 1 || results.some((r) => r !== 'i32' && r !== 'i64')) return undefined;
  return { params: params as ValType[], result: (results[0] as ValType | undefined) ?? null };
}

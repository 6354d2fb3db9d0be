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
/** Set to 1 by the vCPU thread: park at the next blocking point (a stop for a snapshot). */
export const SLOT_STOP = 3;
/** The byte address the thread waits on in an atomic wait, or -1 (a stop request notifies it there). */
export const SLOT_WAIT_ADDR = 4;
/** PARK_*: where the thread is in a stop. */
export const SLOT_PARK = 5;
/** Bytes of the parked thread's image in its image buffer. */
export const SLOT_IMAGE_LEN = 6;
/** The number of the thread's current request (bumped at each): a call that gave way is not new work. */
export const SLOT_SEQ = 7;
export const SLOT_INTS = 8;
/** Where the vCPU thread's own futex wait is (a byte address), or -1: a request also wakes it there. */
export const HUB_MAIN_WAIT_ADDR = 0;
/** Bumped (and notified) by a thread at every event the vCPU thread may wait for (a request, a park). */
export const HUB_EVENTS = 1;
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
/** The vCPU thread's answer to a blocking call during a stop: unwind (the call has not run; it is made again after the rewind). */
export const STATE_UNWIND = 6;

/** Park states. */
export const PARK_RUNNING = 0;
/** Unwound: the image (globals, then the stack) is in the image buffer; waits for PARK_RESUME. */
export const PARK_PARKED = 1;
export const PARK_RESUME = 2;
/** It cannot unwind where it blocks (an indirect call is in progress): the stop is abandoned. */
export const PARK_REFUSED = 3;

/** A parked thread's image buffer: u32 global count, per global (u8 kind: 0 number, 1 i64) + 8 bytes, then the unwound stack. */
export const IMAGE_BYTES = 128 * 1024;
/** Bytes below a parked thread's stack pointer that its unwound stack may take (Asyncify's data buffer). */
export const PARK_BUFFER_BYTES = 8 * 1024;

/** One guest thread of a snapshot: enough to start it again and rewind it into its blocking call. */
export interface GuestThreadImage {
  tid: number;
  startArg: number;
  globals: Array<number | bigint>;
  /** Its unwound wasm stack (Asyncify's data, without the 8-byte header). */
  stack: Uint8Array;
}

/** The threads of a wasi-threads guest in a snapshot (its main thread is the machine's own state). */
export interface ThreadsState {
  nextTid: number;
  threads: GuestThreadImage[];
}

/** Writes globals then stack into an image buffer; returns its length. */
export function writeImage(buf: Uint8Array, globals: Array<number | bigint>, stack: Uint8Array): number {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const need = 4 + globals.length * 9 + stack.length;
  if (need > buf.length) throw new RangeError(`a thread image of ${need} bytes exceeds ${buf.length}`);
  dv.setUint32(0, globals.length, true);
  let at = 4;
  globals.forEach((g) => {
    if (typeof g === 'bigint') {
      dv.setUint8(at, 1);
      dv.setBigInt64(at + 1, g, true);
    } else {
      dv.setUint8(at, 0);
      dv.setFloat64(at + 1, g, true);
    }
    at += 9;
  });
  buf.set(stack, at);
  return at + stack.length;
}

export function readImage(buf: Uint8Array): { globals: Array<number | bigint>; stack: Uint8Array } {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const n = dv.getUint32(0, true);
  const globals: Array<number | bigint> = [];
  let at = 4;
  for (let i = 0; i < n; i++) {
    globals.push(dv.getUint8(at) === 1 ? dv.getBigInt64(at + 1, true) : dv.getFloat64(at + 1, true));
    at += 9;
  }
  return { globals, stack: new Uint8Array(buf.subarray(at)) };
}

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
  /** Where the parked thread leaves its image (IMAGE_BYTES). */
  image: SharedArrayBuffer;
  /** Export names of the module's mutable globals (in order) and of its stack pointer, if it has one. */
  globalExports: string[];
  stackPointerExport: string | undefined;
  /** The imports (by index in `calls`) a thread may unwind out of (Asyncify's blocking calls). */
  unwindable: number[];
  /** A restored thread: its globals and unwound stack; it is rewound into its blocking call at start. */
  resume?: { globals: Array<number | bigint>; stack: Uint8Array };
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

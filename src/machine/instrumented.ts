/**
 * What the instrumenter produces, without binaryen: the vCPU worker imports this (and so never loads
 * binaryen's 14 MB module).
 */
export const DEFAULT_MAX_CALL_DEPTH = 10_000;
export const FUEL_GLOBAL = '__ftvm_fuel';
export const DEPTH_GLOBAL = '__ftvm_depth';
export const MEMORY_EXPORT = '__ftvm_memory';
export const START_EXPORT = '__ftvm_start';
export const GLOBAL_EXPORT_PREFIX = '__ftvm_g';
export const INTERNAL_MODULE = 'ftvm_internal';
/** Asyncified commands: the number of indirect calls in progress (the VMM unwinds only at 0). */
export const INDIRECT_GLOBAL = '__ftvm_indirect';

export interface InstrumentOptions {
  maxCallDepth?: number;
  /** Asyncify a WASI command at its blocking calls (default true; off only to measure its cost). */
  asyncify?: boolean;
  /**
   * Checkpoint mode's store barrier (src/machine/dirty-pages.ts): every store, memory.fill, memory.copy
   * and memory.init marks the pages it writes through the import `ftvm_dirty.mark`, skipping the call
   * while it stays in the page cached in the global `__ftvm_dirty_page`. Instruction counts are unchanged.
   */
  dirtyPages?: boolean;
  /**
   * Checkpoint mode (`ftvm run --mode checkpoint`): accept a wasi-threads guest — an imported shared
   * memory, atomics, passive data segments, `wasi.thread-spawn` — still metered. `memory.atomic.wait32/64`
   * become calls to the host imports `ftvm_internal.atomic_wait32/64` (a waiting thread is in a host call,
   * where the VMM can stop it). Replay mode refuses all of it (FTVM_ERR_UNSUPPORTED_FEATURE, naming
   * --mode checkpoint).
   */
  threads?: boolean;
}

/** The shared memory a threaded guest imports (one per VM; every thread's instance gets the same). */
export interface SharedMemorySpec {
  module: string;
  base: string;
  initialPages: number;
  maximumPages: number;
}

export interface InstrumentedModule {
  /** The rewritten module's bytes. */
  binary: Uint8Array;
  /** True when the original module had a start function (now exported as `__ftvm_start`). */
  hasStart: boolean;
  /** Export names of the guest's mutable globals, in index order (for snapshots). */
  globalExports: string[];
  /** Function imports of the original module with their signatures, e.g. `(i32,i32)->i64`. */
  imports: Array<{ module: string; name: string; signature: string }>;
  /** Exported function names of the original module. */
  exports: string[];
  maxCallDepth: number;
  /**
   * A WASI command rewritten by Asyncify at its blocking calls: it exports asyncify_start_unwind,
   * asyncify_stop_unwind, asyncify_start_rewind, asyncify_stop_rewind and asyncify_get_state.
   */
  asyncified?: boolean;
  /** Instrumented with the store barrier (InstrumentOptions.dirtyPages). */
  dirtyPages?: boolean;
  /** Instrumented with `threads` and the guest imports a shared memory: a wasi-threads guest. */
  sharedMemory?: SharedMemorySpec;
  /**
   * The export (one of `globalExports`) of the guest's stack pointer (`__stack_pointer`), when the module
   * names it: a parked guest thread unwinds into the bytes just below it (its own stack's free part).
   */
  stackPointerExport?: string;
}

/** The host imports that replace `memory.atomic.wait32/64` in a threaded guest: (addr, expected, timeout ns) -> 0 ok, 1 not-equal, 2 timed out. */
export const ATOMIC_WAIT32 = 'atomic_wait32';
export const ATOMIC_WAIT64 = 'atomic_wait64';
/** Threads: the import that starts a thread, and the export each thread's instance runs. */
export const THREAD_SPAWN_MODULE = 'wasi';
export const THREAD_SPAWN_NAME = 'thread-spawn';
export const THREAD_START_EXPORT = 'wasi_thread_start';
/** The WASI calls in which a command may block (Asyncify's imports in a command; see instrument.ts). */
export const ASYNC_WASI_CALL_NAMES: readonly string[] = ['poll_oneoff', 'sock_accept', 'sock_recv', 'fd_read'];


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
}


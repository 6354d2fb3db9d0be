/**
 * The guest ABI (docs/GUEST_ABI.md) and the last steps of loading a guest: check an instrumented
 * module's imports and exports, compile it. The instrumenter (binaryen) is not imported here: it is
 * loaded only where a guest is instrumented (guest.ts, instrument-worker.ts).
 */
import { FtvmError } from '../util/errors.js';
import { THREAD_SPAWN_MODULE, THREAD_SPAWN_NAME, type InstrumentedModule } from './instrumented.js';
import { compileGuest } from './machine.js';

const I = 'i32';
const sig = (params: string[], results: string[] = []): string => `(${params.join(',')})->(${results.join(',')})`;

/** Every import a guest may use, with its signature. */
export const ABI_IMPORTS: Record<string, Record<string, string>> = {
  ftvm: {
    rx_ring: sig([I, I]),
    clock_now: sig([I], ['i64']),
    random_fill: sig([I, I]),
    timer_set: sig([I, I]),
    timer_cancel: sig([I]),
    console_write: sig([I, I]),
    net_send: sig([I, I, I], [I]),
    net_close: sig([I], [I]),
  },
  env: {
    abort: sig([I, I, I, I]),
  },
  wasi_snapshot_preview1: {
    args_sizes_get: sig([I, I], [I]),
    args_get: sig([I, I], [I]),
    environ_sizes_get: sig([I, I], [I]),
    environ_get: sig([I, I], [I]),
    clock_time_get: sig([I, 'i64', I], [I]),
    clock_res_get: sig([I, I], [I]),
    random_get: sig([I, I], [I]),
    fd_write: sig([I, I, I, I], [I]),
    fd_read: sig([I, I, I, I], [I]),
    fd_close: sig([I], [I]),
    fd_seek: sig([I, 'i64', I, I], [I]),
    fd_prestat_get: sig([I, I], [I]),
    fd_prestat_dir_name: sig([I, I, I], [I]),
    fd_fdstat_get: sig([I, I], [I]),
    proc_exit: sig([I]),
    sched_yield: sig([], [I]),
    fd_fdstat_set_flags: sig([I, I], [I]),
    sock_accept: sig([I, I, I], [I]),
    sock_recv: sig([I, I, I, I, I, I], [I]),
    sock_send: sig([I, I, I, I, I], [I]),
    sock_shutdown: sig([I, I], [I]),
    poll_oneoff: sig([I, I, I, I], [I]),
    path_open: sig([I, I, I, I, I, 'i64', 'i64', I, I], [I]),
    fd_pread: sig([I, I, I, 'i64', I], [I]),
    fd_pwrite: sig([I, I, I, 'i64', I], [I]),
    fd_tell: sig([I, I], [I]),
    fd_sync: sig([I], [I]),
    fd_datasync: sig([I], [I]),
    fd_filestat_get: sig([I, I], [I]),
    fd_filestat_set_size: sig([I, 'i64'], [I]),
    fd_filestat_set_times: sig([I, 'i64', 'i64', I], [I]),
    fd_advise: sig([I, 'i64', 'i64', I], [I]),
    fd_allocate: sig([I, 'i64', 'i64'], [I]),
    fd_readdir: sig([I, I, I, 'i64', I], [I]),
    path_filestat_get: sig([I, I, I, I, I], [I]),
    path_filestat_set_times: sig([I, I, I, I, 'i64', 'i64', I], [I]),
    path_unlink_file: sig([I, I, I], [I]),
    path_rename: sig([I, I, I, I, I, I], [I]),
    path_create_directory: sig([I, I, I], [I]),
    path_remove_directory: sig([I, I, I], [I]),
    path_readlink: sig([I, I, I, I, I, I], [I]),
  },
};

export interface LoadedGuest {
  original: Uint8Array;
  instrumented: InstrumentedModule;
  compiled: WebAssembly.Module;
}

export function checkAbi(mod: InstrumentedModule): void {
  for (const imp of mod.imports) {
    // wasi-threads (checkpoint mode only: the instrumenter accepts it only for a guest with a shared memory).
    const spawn = mod.sharedMemory !== undefined && imp.module === THREAD_SPAWN_MODULE && imp.name === THREAD_SPAWN_NAME;
    const expected = spawn ? '(i32)->(i32)' : ABI_IMPORTS[imp.module]?.[imp.name];
    if (expected === undefined) {
      throw new FtvmError('FTVM_ERR_ABI_IMPORT', `the guest imports ${imp.module}.${imp.name}, which is not in the ftvm guest ABI v2 (see docs/GUEST_ABI.md; "ftvm check" lists what is supported)`);
    }
    if (expected !== imp.signature) {
      throw new FtvmError('FTVM_ERR_ABI_IMPORT', `the guest imports ${imp.module}.${imp.name} as ${imp.signature}; the ABI defines it as ${expected}`);
    }
  }
  if (!mod.exports.includes('ftvm_step') && !mod.exports.includes('_start')) {
    throw new FtvmError('FTVM_ERR_ABI_EXPORT', 'the guest exports neither ftvm_step (reactor) nor _start (WASI command)');
  }
}

/** Checks the ABI and compiles: everything after instrumentation, with stable error codes. */
export function finishLoad(original: Uint8Array, instrumented: InstrumentedModule): LoadedGuest {
  checkAbi(instrumented);
  let compiled: WebAssembly.Module;
  try {
    compiled = compileGuest(instrumented.binary);
  } catch (err) {
    throw new FtvmError('FTVM_ERR_INVALID_MODULE', `the guest does not compile: ${(err as Error).message}`, { cause: err });
  }
  return { original, instrumented, compiled };
}

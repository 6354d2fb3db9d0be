/**
 * Loading a guest: instrument it, check its imports against the ABI (docs/GUEST_ABI.md), compile it.
 * Everything that can be wrong with a guest file is reported here with a stable error code.
 * This loads binaryen into the calling thread; a long-lived process (`ftvm run`) uses
 * loadGuestIsolated (guest-isolated.ts) instead, which instruments on a short-lived worker.
 */
import { instrument } from './instrument.js';
import { finishLoad, type LoadedGuest } from './guest-abi.js';

export { ABI_IMPORTS, checkAbi, finishLoad, type LoadedGuest } from './guest-abi.js';

/** `threads`: checkpoint mode, which accepts wasi-threads guests (InstrumentOptions.threads). */
export function loadGuest(original: Uint8Array, maxCallDepth?: number, threads = false): LoadedGuest {
  return finishLoad(original, instrument(original, { ...(maxCallDepth === undefined ? {} : { maxCallDepth }), ...(threads ? { threads } : {}) }));
}

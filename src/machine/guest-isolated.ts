/**
 * Loading a guest without loading binaryen into the calling process: the instrumenter runs in a
 * short-lived child process (instrument-worker.ts), and only the ABI check and the compile run here.
 * Same results and error codes as loadGuest (guest.ts).
 */
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { FtvmError, type FtvmErrorCode } from '../util/errors.js';
import { finishLoad, type LoadedGuest } from './guest-abi.js';
import type { InstrumentOptions, InstrumentedModule } from './instrumented.js';
import type { InstrumentRequest } from './instrument-worker.js';

type Reply = { ok: true; instrumented: InstrumentedModule } | { ok: false; code?: string; message: string; name: string };

/** Instrumenting the largest guest we ship (SQLite) takes seconds; a child that hangs is not waited for. */
const INSTRUMENT_TIMEOUT_MS = 120_000;

export async function loadGuestIsolated(original: Uint8Array, maxCallDepth?: number, more: Omit<InstrumentOptions, 'maxCallDepth'> = {}): Promise<LoadedGuest> {
  const req: InstrumentRequest = { original, options: { ...more, ...(maxCallDepth === undefined ? {} : { maxCallDepth }) } };
  const child = fork(fileURLToPath(new URL('./instrument-worker.js', import.meta.url)), [], {
    serialization: 'advanced',
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    execArgv: [],
  });
  try {
    const reply = await new Promise<Reply>((resolve, reject) => {
      const timer = setTimeout(() => reject(new FtvmError('FTVM_ERR_INVALID_MODULE', `the instrumenter did not answer within ${INSTRUMENT_TIMEOUT_MS} ms`)), INSTRUMENT_TIMEOUT_MS);
      child.once('message', (m) => {
        clearTimeout(timer);
        resolve(m as Reply);
      });
      child.once('error', (err) => {
        clearTimeout(timer);
        reject(new FtvmError('FTVM_ERR_INVALID_MODULE', `the instrumenter could not start: ${err.message}`));
      });
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new FtvmError('FTVM_ERR_INVALID_MODULE', `the instrumenter exited (${signal ?? `code ${code}`}) before it answered`));
      });
      child.send(req);
    });
    if (!reply.ok) {
      if (reply.code !== undefined) throw new FtvmError(reply.code as FtvmErrorCode, reply.message);
      throw new FtvmError('FTVM_ERR_INVALID_MODULE', `the guest cannot be instrumented: ${reply.message}`);
    }
    return finishLoad(original, reply.instrumented);
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
}

/**
 * A short-lived child process that instruments one guest (binaryen) and exits. `ftvm run` instruments
 * here so that binaryen's heap (about 100 MB resident once used; a worker thread would not do: glibc
 * keeps a finished thread's malloc arena) is never part of the long-lived process: a smaller process
 * is torn down faster by the kernel after kill -9, and its sockets close sooner, which is when the peer
 * learns of the crash (failover on evidence). Spoken to over the fork IPC channel (advanced
 * serialization: the module's bytes travel as a Uint8Array).
 */
import { FtvmError } from '../util/errors.js';
import { instrument } from './instrument.js';
import type { InstrumentOptions } from './instrumented.js';

export interface InstrumentRequest {
  original: Uint8Array;
  options: InstrumentOptions;
}

const send = process.send?.bind(process);
if (send === undefined) throw new Error('instrument-worker.js runs only as a forked child (an IPC channel)');
process.once('message', (req: InstrumentRequest) => {
  let reply: unknown;
  try {
    reply = { ok: true, instrumented: instrument(req.original, req.options) };
  } catch (err) {
    const e = err as Error;
    reply = { ok: false, code: err instanceof FtvmError ? err.code : undefined, message: e.message, name: e.name };
  }
  send(reply, undefined, {}, () => process.disconnect());
});

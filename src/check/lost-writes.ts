/**
 * Lost acknowledged writes: a write the service acknowledged whose effect is not visible in the final
 * read of its key, although nothing could have overwritten it.
 *
 * For an acknowledged write W on key k (SET, DEL or INCR with status ok) and the value F that a final
 * read of k returned after the run (once every call had finished or been abandoned), W is **lost** when no
 * write W' on k (W itself included; ok or indeterminate) that may be ordered at or after W produced F.
 * W' may be ordered at or after W unless it completed before W was invoked (an indeterminate write never
 * completed). A SET produces its value, a DEL nil, an ok INCR its result, an indeterminate INCR any
 * integer. Reads that happened during the run are the linearizability checker's business.
 *
 * Writes on keys without a final read are not judged (counted in `unjudged`).
 */
import { strictInt, type KvOperation } from './kv-model.js';

export interface FinalRead {
  key: string;
  value: string | null;
  /** When the final read was invoked; writes invoked after it are ignored. Default +infinity. */
  call?: number;
}

export interface LostWrite {
  /** Index of the write in the history. */
  index: number;
  key: string;
  text: string;
  client: number | undefined;
  call: number;
  return: number;
  /** What the final read returned instead. */
  finalValue: string | null;
}

export interface LostWritesResult {
  /** Acknowledged writes lost. */
  lost: number;
  writes: LostWrite[];
  /** Acknowledged writes judged (on keys with a final read). */
  acknowledged: number;
  /** Acknowledged writes on keys without a final read. */
  unjudged: number;
  keysChecked: number;
}

function produces(op: KvOperation, value: string | null): boolean {
  const { input } = op;
  if (input.f === 'set') return value === input.value;
  if (input.f === 'del') return value === null;
  if (input.f === 'incr') {
    if (value === null) return false;
    if (op.status === 'indeterminate') return strictInt(value) !== undefined;
    const out = op.output;
    return (typeof out === 'number' || typeof out === 'bigint') && String(out) === value;
  }
  return false;
}

function describeWrite(op: KvOperation): string {
  const i = op.input;
  return i.f === 'set' ? `SET ${i.key} ${JSON.stringify(i.value)}` : `${i.f.toUpperCase()} ${i.key}`;
}

/** Counts lost acknowledged writes given the final value of each key. */
export function countLostWrites(history: readonly KvOperation[], finalReads: Iterable<FinalRead>): LostWritesResult {
  const finals = new Map<string, FinalRead>();
  for (const f of finalReads) finals.set(f.key, f);
  // Writes per key that may matter (ok or indeterminate).
  const writes = new Map<string, { index: number; op: KvOperation }[]>();
  history.forEach((op, index) => {
    if (op.input.f === 'get' || op.status === 'failed') return;
    // An ok INCR that returned an error changed nothing.
    if (op.status === 'ok' && op.input.f === 'incr' && typeof op.output === 'object' && op.output !== null) return;
    let l = writes.get(op.input.key);
    if (!l) writes.set(op.input.key, (l = []));
    l.push({ index, op });
  });
  const result: LostWritesResult = { lost: 0, writes: [], acknowledged: 0, unjudged: 0, keysChecked: 0 };
  for (const [key, list] of writes) {
    const final = finals.get(key);
    const acked = list.filter((w) => w.op.status === 'ok');
    if (!final) {
      result.unjudged += acked.length;
      continue;
    }
    result.keysChecked++;
    const finalCall = final.call ?? Infinity;
    const relevant = list.filter((w) => w.op.call < finalCall);
    // Producers of the final value, by completion time: W is explained when one of them did not complete before W was invoked.
    let latestProducerEnd = -Infinity;
    for (const w of relevant) {
      if (!produces(w.op, final.value)) continue;
      const end = w.op.status === 'ok' ? w.op.return! : Infinity;
      if (end > latestProducerEnd) latestProducerEnd = end;
    }
    for (const w of acked) {
      if (w.op.call >= finalCall) continue;
      result.acknowledged++;
      if (latestProducerEnd >= w.op.call) continue;
      result.lost++;
      result.writes.push({ index: w.index, key, text: describeWrite(w.op), client: w.op.client, call: w.op.call, return: w.op.return!, finalValue: final.value });
    }
  }
  result.writes.sort((a, b) => a.call - b.call);
  return result;
}

/**
 * Generated kv histories that are linearizable by construction, for testing the checker: clients each
 * issue one operation at a time with random durations and gaps; every operation that takes effect gets a
 * linearization point inside its interval (an indeterminate one: anywhere after its invocation, or
 * never), and the outputs are computed by applying the operations to per-key registers in the order of
 * those points.
 */
import { Prng } from '../testing/prng.js';
import type { KvInput, KvOperation } from './kv-model.js';

export interface GenerateOptions {
  seed: number;
  operations: number;
  clients: number;
  keys: number;
  /** Fraction of GETs (default 0.5). */
  reads?: number;
  /** Fraction of DELs (default 0.05); the rest are SETs. */
  deletes?: number;
  /** Fraction of indeterminate operations (default 0.02); half of them take effect. */
  indeterminate?: number;
  /** Fraction of failed operations (never took effect; default 0.01). */
  failed?: number;
  /** Longest operation (time units, default 10). */
  maxDuration?: number;
  /** Longest pause between a client's operations (default 5). */
  maxGap?: number;
}

export interface GeneratedHistory {
  history: KvOperation[];
  /** Each key's value after every operation that took effect. */
  final: Map<string, string | null>;
}

export function generateKvHistory(o: GenerateOptions): GeneratedHistory {
  const rng = new Prng(o.seed);
  const reads = o.reads ?? 0.5;
  const deletes = o.deletes ?? 0.05;
  const indeterminate = o.indeterminate ?? 0.02;
  const failed = o.failed ?? 0.01;
  const maxDuration = o.maxDuration ?? 10;
  const maxGap = o.maxGap ?? 5;
  const clock = Array.from({ length: o.clients }, () => rng.float() * maxGap);
  const history: KvOperation[] = [];
  const points: { at: number; index: number }[] = [];
  let unique = 0;
  for (let i = 0; i < o.operations; i++) {
    let c = 0;
    for (let j = 1; j < o.clients; j++) if (clock[j]! < clock[c]!) c = j;
    const call = clock[c]!;
    const duration = rng.float() * maxDuration;
    const ret = call + duration;
    clock[c] = ret + rng.float() * maxGap;
    const key = `k${rng.int(o.keys)}`;
    const r = rng.float();
    const input: KvInput = r < reads ? { f: 'get', key } : r < reads + deletes ? { f: 'del', key } : { f: 'set', key, value: `v${unique++}` };
    const s = rng.float();
    const index = history.length;
    if (s < failed) {
      history.push({ client: c, input, call, status: 'failed' });
    } else if (s < failed + indeterminate) {
      history.push({ client: c, input, call, status: 'indeterminate' });
      if (rng.chance(0.5)) points.push({ at: call + rng.float() * 3 * maxDuration, index });
    } else {
      history.push({ client: c, input, call, status: 'ok', return: ret });
      points.push({ at: call + rng.float() * duration, index });
    }
  }
  points.sort((a, b) => a.at - b.at || a.index - b.index);
  const state = new Map<string, string | null>();
  for (const { index } of points) {
    const op = history[index]!;
    const cur = state.get(op.input.key) ?? null;
    let output: string | number | null;
    switch (op.input.f) {
      case 'get':
        output = cur;
        break;
      case 'set':
        state.set(op.input.key, op.input.value);
        output = 'OK';
        break;
      case 'del':
        state.set(op.input.key, null);
        output = cur === null ? 0 : 1;
        break;
      case 'incr': {
        const v = String((cur === null ? 0 : Number(cur)) + 1);
        state.set(op.input.key, v);
        output = Number(v);
        break;
      }
    }
    if (op.status === 'ok') op.output = output;
  }
  const final = new Map<string, string | null>();
  for (let k = 0; k < o.keys; k++) final.set(`k${k}`, state.get(`k${k}`) ?? null);
  return { history, final };
}

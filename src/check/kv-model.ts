/**
 * The kv guest's semantics as a sequential specification for the linearizability checker: each key is
 * an independent register (so the history is partitioned per key).
 *
 * | input | ok output | effect |
 * |---|---|---|
 * | `SET k v` | `'OK'` | k := v |
 * | `GET k` | the value, or `null` (nil) | none |
 * | `DEL k` | 1 if k existed, else 0 | k := nil |
 * | `INCR k` | the new integer; `{ error }` when the value is not an integer (nothing changes) | k := k + 1 (nil counts as 0) |
 */
import { checkLinearizability, ILLEGAL, type CheckOptions, type CheckResult, type IndexedOperation, type Illegal, type Model, type Operation } from './linearizability.js';

export type KvInput =
  | { f: 'get'; key: string }
  | { f: 'set'; key: string; value: string }
  | { f: 'del'; key: string }
  | { f: 'incr'; key: string };

/** GET: string | null; SET: 'OK'; DEL: count; INCR: the new value (number or bigint) or an error reply. */
export type KvOutput = string | number | bigint | null | { error: string };

export type KvOperation = Operation<KvInput, KvOutput>;

/** A register's value: null is nil. */
export type KvState = string | null;

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

/** The integer a value holds as Redis would parse it (strict decimal, 64-bit), else undefined. */
export function strictInt(v: string): bigint | undefined {
  if (!/^-?(0|[1-9][0-9]{0,19})$/.test(v) || v === '-0') return undefined;
  const b = BigInt(v);
  return b < INT64_MIN || b > INT64_MAX ? undefined : b;
}

function isErrorOutput(o: KvOutput | undefined): o is { error: string } {
  return typeof o === 'object' && o !== null && 'error' in o;
}

function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

function sameInteger(o: KvOutput | undefined, v: bigint): boolean {
  if (typeof o === 'bigint') return o === v;
  if (typeof o === 'number') return Number.isInteger(o) && BigInt(o) === v;
  return false;
}

function fmtValue(v: KvOutput | undefined): string {
  if (v === null) return 'nil';
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'number' || typeof v === 'bigint') return String(v);
  if (v === undefined) return '?';
  return `(error) ${v.error}`;
}

export const kvModel: Model<KvState, KvInput, KvOutput> = {
  init: () => null,
  step(state: KvState, input: KvInput, output: KvOutput | undefined, known: boolean): KvState | Illegal {
    switch (input.f) {
      case 'get':
        if (!known) return state;
        return output === state ? state : ILLEGAL;
      case 'set':
        if (known && output !== 'OK') return ILLEGAL;
        return input.value;
      case 'del': {
        if (known && !sameInteger(output, state === null ? 0n : 1n)) return ILLEGAL;
        return null;
      }
      case 'incr': {
        const cur = state === null ? 0n : strictInt(state);
        if (cur === undefined || cur === INT64_MAX) {
          if (known && !isErrorOutput(output)) return ILLEGAL;
          return state;
        }
        const v = cur + 1n;
        if (known && !sameInteger(output, v)) return ILLEGAL;
        return String(v);
      }
    }
  },
  hash: (s) => (s === null ? 0x2545f491 : hashString(s)),
  partition: (input) => input.key,
  readOnly: (input) => input.f === 'get',
  pure: (input, output, known) =>
    known && (input.f === 'get' || (input.f === 'del' && sameInteger(output, 0n)) || (input.f === 'incr' && isErrorOutput(output))),
  reduce: reduceUnobservedWrites,
  describeOperation(input, output, known) {
    const cmd = input.f === 'set' ? `SET ${input.key} ${JSON.stringify(input.value)}` : `${input.f.toUpperCase()} ${input.key}`;
    return `${cmd} → ${known ? fmtValue(output) : '? (indeterminate)'}`;
  },
  describeState: (s) => (s === null ? 'nil' : JSON.stringify(s)),
};

/**
 * Drops indeterminate SETs whose value no successful GET ever returned, when nothing else in the
 * partition can observe a write (no successful DEL or INCR). Exact: such a SET can always be moved to
 * the end of a linearization (its completion is +infinity), where it is unobservable, and a
 * linearization of the rest plus the SET at the end is one of the whole. It shrinks the search a lot:
 * the checker no longer tries each of them at every point.
 */
export function reduceUnobservedWrites(ops: readonly IndexedOperation<KvInput, KvOutput>[]): IndexedOperation<KvInput, KvOutput>[] {
  const seen = new Set<string>();
  for (const { op } of ops) {
    if (op.status !== 'ok') continue;
    if (op.input.f === 'del' || op.input.f === 'incr') return [...ops];
    if (op.input.f === 'get' && typeof op.output === 'string') seen.add(op.output);
  }
  return ops.filter(({ op }) => !(op.status === 'indeterminate' && op.input.f === 'set' && !seen.has(op.input.value)));
}

/** Checks a kv history (per-key registers). */
export function checkKv(history: readonly KvOperation[], options: CheckOptions = {}): CheckResult {
  return checkLinearizability(kvModel, history, options);
}

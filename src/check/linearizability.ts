/**
 * A linearizability checker: the algorithm of Wing & Gong, with Lowe's linearization cache, applied
 * P-compositionally (one search per partition, e.g. per key), as Porcupine does. Written for ftvm; the
 * kv guest's model is in `kv-model.ts`.
 *
 * A history is a list of operations, each with an invocation time, and an outcome:
 *
 * - `ok`: it completed at `return` with `output`;
 * - `failed`: it certainly did not take effect (e.g. never sent): dropped from the history;
 * - `indeterminate`: it may or may not have taken effect (the connection failed after it was written).
 *   As Jepsen and Porcupine do, its completion time is +infinity and its output unconstrained: the search
 *   may place it anywhere after its invocation, including after every other operation (= it never
 *   happened). An indeterminate operation the model calls read-only is dropped: it constrains nothing.
 *
 * The search (per partition): the call and return events sorted by time (a call before a return at the
 * same instant, so touching operations count as concurrent) form a doubly linked list. Walking it, a
 * call event is tried as the next linearization point if the model accepts it from the current state
 * and the pair (set of linearized operations, new state) was not seen before (the cache); it is then
 * lifted out of the list together with its return event, and the walk restarts at the head. Meeting a
 * return event means its operation must already have been linearized: a dead end, so the last choice is
 * undone (the walk goes on after it). An empty list is a linearization; backtracking past the first
 * choice proves there is none.
 *
 * Budgets: a time budget over the whole check and a step budget per partition; a partition that
 * exceeds one is reported `unknown`, never silently passed.
 */
import { performance } from 'node:perf_hooks';

export const ILLEGAL: unique symbol = Symbol('illegal');
export type Illegal = typeof ILLEGAL;

export type OpStatus = 'ok' | 'failed' | 'indeterminate';

export interface Operation<I, O> {
  /** Who issued it (for messages only). */
  client?: number;
  input: I;
  /** Invocation time (any unit, e.g. ms). */
  call: number;
  status: OpStatus;
  /** The output, for `ok` operations. Ignored otherwise. */
  output?: O;
  /** Completion time, for `ok` operations (>= call). Ignored otherwise (+infinity when indeterminate). */
  return?: number;
}

/** A sequential specification. States must never be the {@link ILLEGAL} symbol. */
export interface Model<S, I, O> {
  init(): S;
  /**
   * The state after `input` produced `output` in `state`, or {@link ILLEGAL} if that cannot happen.
   * `known` is false for indeterminate operations: any output is allowed (`output` is undefined).
   */
  step(state: S, input: I, output: O | undefined, known: boolean): S | Illegal;
  /** A 32-bit hash of a state, consistent with `equal`. */
  hash(state: S): number;
  /** Default `Object.is`. */
  equal?(a: S, b: S): boolean;
  /** The partition an operation belongs to (P-compositionality, e.g. its key). Default: one partition. */
  partition?(input: I): string;
  /** True when the operation never changes the state (an indeterminate one is then dropped). */
  readOnly?(input: I): boolean;
  /**
   * True when the operation, with this outcome, leaves the state unchanged in every state where it is
   * legal (a read; a delete that reported it deleted nothing). Such an operation, once it may come next
   * and is legal, is linearized at once without being a choice point. Default: known and `readOnly`.
   */
  pure?(input: I, output: O | undefined, known: boolean): boolean;
  /**
   * An optional reduction of one partition's operations (already without failed and read-only
   * indeterminate operations) that must preserve linearizability exactly in both directions.
   */
  reduce?(ops: readonly IndexedOperation<I, O>[]): IndexedOperation<I, O>[];
  describeOperation(input: I, output: O | undefined, known: boolean): string;
  describeState(state: S): string;
}

/** An operation together with its index in the history given to {@link checkLinearizability}. */
export interface IndexedOperation<I, O> {
  readonly index: number;
  readonly op: Operation<I, O>;
}

export type Verdict = 'ok' | 'illegal' | 'unknown';

export interface CheckOptions {
  /** Time budget of the whole check, in ms (default 60,000). Partitions not finished in time are `unknown`. */
  timeoutMs?: number;
  /** Search steps allowed per partition (default 50,000,000). */
  maxStepsPerPartition?: number;
  /** Cache entries allowed per partition (default: no limit but the memory bound). */
  maxCachePerPartition?: number;
  /** Approximate memory the cache of one partition may use (default 512 MiB). */
  maxCacheBytesPerPartition?: number;
  /**
   * Take state-preserving operations (reads that match) as forced steps rather than choice points
   * (default true; false gives the plain Wing & Gong / Lowe search, for comparison).
   */
  forcedSteps?: boolean;
  /**
   * How the cache identifies a set of linearized operations: `exact` (a bit set per entry), or
   * `fingerprint` (two 32-bit hashes and the size: constant memory; a violation found this way is
   * confirmed with an exact search). Default `auto`: exact up to 1,024 operations in a partition.
   */
  cache?: 'exact' | 'fingerprint' | 'auto';
  /** For `ok` partitions, return the linearization found (operation indices in order). Default false. */
  linearizations?: boolean;
}

/** An operation as it appears in messages. */
export interface DescribedOperation {
  /** Index in the history given to the checker. */
  index: number;
  client: number | undefined;
  call: number;
  /** null when indeterminate (+infinity). */
  return: number | null;
  status: 'ok' | 'indeterminate';
  text: string;
}

export interface Violation {
  partition: string;
  /** Operations of the partition that were searched. */
  operations: number;
  /** The longest partial linearization the search found (operations in linearization order). */
  longestPrefix: DescribedOperation[];
  /** The model's state after that prefix. */
  stateAfterPrefix: string;
  /** The operation that had to be linearized next at the latest (its return came first among the rest). */
  deadline: DescribedOperation;
  /** Every operation that could have come next, and whether the model allows it from that state. */
  candidates: { op: DescribedOperation; legal: boolean }[];
  /** A human-readable explanation (several lines). */
  message: string;
}

export interface PartitionResult {
  partition: string;
  verdict: Verdict;
  /** Operations searched (after dropping and reduction). */
  operations: number;
  steps: number;
  cacheEntries: number;
  /** How the cache identified linearized sets (see {@link CheckOptions.cache}). */
  cache?: 'exact' | 'fingerprint';
  ms: number;
  /** Why the verdict is `unknown`. */
  reason?: string;
  violation?: Violation;
  /** Indices of the operations in a linearization (when asked for and `ok`). */
  linearization?: number[];
}

export interface CheckResult {
  verdict: Verdict;
  /** verdict === 'ok' */
  ok: boolean;
  /** Operations in the history given. */
  operations: number;
  dropped: { failed: number; indeterminateReadOnly: number; reduced: number };
  partitions: PartitionResult[];
  violations: Violation[];
  /** Partitions whose check ran out of budget. */
  unknown: { partition: string; reason: string }[];
  steps: number;
  ms: number;
}

export class HistoryError extends Error {
  readonly code = 'FTVM_ERR_BAD_ARGUMENT';
  constructor(message: string) {
    super(message);
    this.name = 'HistoryError';
  }
}

// ---------------------------------------------------------------------------------------------------

interface Budget {
  deadline: number;
  maxSteps: number;
  maxCache: number;
  maxCacheBytes: number;
  forcedSteps: boolean;
}

/** splitmix32: deterministic pseudo-random 32-bit values for the cache's Zobrist hashing. */
function zobristTable(n: number, seed: number): Uint32Array {
  const t = new Uint32Array(n);
  let s = seed;
  for (let i = 0; i < n; i++) {
    s = (s + 0x9e3779b9) | 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    t[i] = (z ^ (z >>> 16)) >>> 0;
  }
  return t;
}

function validate<I, O>(op: Operation<I, O>, index: number): void {
  if (!Number.isFinite(op.call)) throw new HistoryError(`operation ${index}: invocation time ${String(op.call)} is not a finite number`);
  if (op.status === 'ok') {
    if (op.return === undefined || !Number.isFinite(op.return)) {
      throw new HistoryError(`operation ${index}: an ok operation needs a finite completion time (got ${String(op.return)})`);
    }
    if (op.return < op.call) throw new HistoryError(`operation ${index}: completes (${op.return}) before it is invoked (${op.call})`);
  } else if (op.status !== 'failed' && op.status !== 'indeterminate') {
    throw new HistoryError(`operation ${index}: unknown status ${JSON.stringify(op.status)}`);
  }
}

function describe<S, I, O>(model: Model<S, I, O>, x: IndexedOperation<I, O>): DescribedOperation {
  const known = x.op.status === 'ok';
  return {
    index: x.index,
    client: x.op.client,
    call: x.op.call,
    return: known ? (x.op.return ?? null) : null,
    status: known ? 'ok' : 'indeterminate',
    text: model.describeOperation(x.op.input, known ? x.op.output : undefined, known),
  };
}

function fmtTime(t: number): string {
  return Number.isInteger(t) ? String(t) : t.toFixed(3);
}

function fmtOp(d: DescribedOperation): string {
  const who = d.client === undefined ? '' : `client ${d.client}, `;
  return `#${d.index} ${d.text}  (${who}${fmtTime(d.call)} .. ${d.return === null ? '∞ (indeterminate)' : fmtTime(d.return)})`;
}

/** Checks one partition. `ops` are the partition's operations (without failed ones). */
function checkPartition<S, I, O>(
  model: Model<S, I, O>,
  partition: string,
  ops: readonly IndexedOperation<I, O>[],
  budget: Budget,
  wantLinearization: boolean,
  exact: boolean,
): PartitionResult {
  const t0 = performance.now();
  const n = ops.length;
  const equal = model.equal ?? Object.is;
  const inputs: I[] = new Array<I>(n);
  const outputs: (O | undefined)[] = new Array<O | undefined>(n);
  const known = new Uint8Array(n);
  const pure = new Uint8Array(n);
  const callT = new Float64Array(n);
  const retT = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const { op } = ops[i]!;
    inputs[i] = op.input;
    const ok = op.status === 'ok';
    known[i] = ok ? 1 : 0;
    outputs[i] = ok ? op.output : undefined;
    callT[i] = op.call;
    retT[i] = ok ? op.return! : Infinity;
    const p = model.pure ? model.pure(op.input, outputs[i], ok) : ok && model.readOnly?.(op.input) === true;
    pure[i] = p ? 1 : 0;
  }

  // Events sorted by time; a call before a return at the same time; ties broken by operation order.
  // Event e < n is the call of operation e; e >= n the return of operation e - n.
  const events = new Int32Array(2 * n);
  for (let e = 0; e < 2 * n; e++) events[e] = e;
  const timeOf = (e: number): number => (e < n ? callT[e]! : retT[e - n]!);
  events.sort((a, b) => {
    const ta = timeOf(a);
    const tb = timeOf(b);
    if (ta !== tb) return ta < tb ? -1 : 1;
    const ka = a < n ? 0 : 1;
    const kb = b < n ? 0 : 1;
    if (ka !== kb) return ka - kb;
    return a - b;
  });

  // Doubly linked list of nodes 1..2n in event order; node 0 is the head; -1 is the end.
  const size = 2 * n + 1;
  const next = new Int32Array(size);
  const prev = new Int32Array(size);
  const nodeOp = new Int32Array(size);
  const isCall = new Uint8Array(size);
  const match = new Int32Array(size); // call node → its return node
  const callNode = new Int32Array(n);
  const returnNode = new Int32Array(n);
  for (let k = 0; k < 2 * n; k++) {
    const node = k + 1;
    const e = events[k]!;
    if (e < n) {
      nodeOp[node] = e;
      isCall[node] = 1;
      callNode[e] = node;
    } else {
      nodeOp[node] = e - n;
      returnNode[e - n] = node;
    }
    prev[node] = node - 1;
    next[node] = node + 1 < size ? node + 1 : -1;
  }
  next[0] = n > 0 ? 1 : -1;
  prev[0] = -1;
  for (let i = 0; i < n; i++) match[callNode[i]!] = returnNode[i]!;

  const lift = (c: number): void => {
    next[prev[c]!] = next[c]!;
    prev[next[c]!] = prev[c]!; // a call is always followed by (at least) its return
    const r = match[c]!;
    next[prev[r]!] = next[r]!;
    if (next[r] !== -1) prev[next[r]!] = prev[r]!;
  };
  const unlift = (c: number): void => {
    const r = match[c]!;
    next[prev[r]!] = r;
    if (next[r] !== -1) prev[next[r]!] = r;
    next[prev[c]!] = c;
    prev[next[c]!] = c;
  };

  const words = (n + 31) >>> 5;
  const bits = new Uint32Array(words);
  const zob = zobristTable(n, 0x9e3779b9);
  const zob2 = zobristTable(n, 0x7f4a7c15);
  let zobHash = 0;
  let zobHash2 = 0;
  // The cache: (linearized set, state) pairs already reached. Entries live in chunked arenas
  // (signatures in Uint32Arrays, states in arrays), chained per bucket of a combined hash. The
  // signature of a linearized set is the set itself (exact), or two independent 32-bit Zobrist hashes
  // and its size (fingerprint: constant memory per entry; a collision could only prune a path, so
  // fingerprint mode may wrongly report `illegal`, never wrongly `ok` — the caller confirms).
  const sigWords = exact ? words : 3;
  const sig = exact ? bits : new Uint32Array(3);
  const setSig = (zh: number, zh2: number, count: number): void => {
    if (exact) return;
    sig[0] = zh;
    sig[1] = zh2;
    sig[2] = count;
  };
  const perChunk = Math.max(64, Math.floor(65536 / Math.max(1, sigWords)));
  const bitChunks: Uint32Array[] = [];
  const stateChunks: S[][] = [];
  const chainChunks: Int32Array[] = [];
  const heads = new Map<number, number>();
  let cacheEntries = 0;
  const maxCache = Math.min(budget.maxCache, Math.floor(budget.maxCacheBytes / (sigWords * 4 + 48)));
  const cacheHas = (key: number, st: S): boolean => {
    let e = heads.get(key) ?? -1;
    while (e !== -1) {
      const c = (e / perChunk) | 0;
      const j = e - c * perChunk;
      if (equal(stateChunks[c]![j]!, st)) {
        const b = bitChunks[c]!;
        const base = j * sigWords;
        let same = true;
        for (let w = 0; w < sigWords; w++) {
          if (b[base + w] !== sig[w]) {
            same = false;
            break;
          }
        }
        if (same) return true;
      }
      e = chainChunks[c]![j]!;
    }
    return false;
  };
  const cacheAdd = (key: number, st: S): void => {
    const e = cacheEntries++;
    const c = (e / perChunk) | 0;
    const j = e - c * perChunk;
    if (c === bitChunks.length) {
      bitChunks.push(new Uint32Array(perChunk * sigWords));
      stateChunks.push(new Array<S>(perChunk));
      chainChunks.push(new Int32Array(perChunk));
    }
    bitChunks[c]!.set(sig, j * sigWords);
    stateChunks[c]![j] = st;
    chainChunks[c]![j] = heads.get(key) ?? -1;
    heads.set(key, e);
  };

  const stackNode = new Int32Array(n);
  const stackState: S[] = new Array<S>(n);
  const stackForced = new Uint8Array(n);
  let depth = 0;

  let bestLen = -1;
  let bestOps = new Int32Array(0);
  let bestState: S = model.init();
  const recordBest = (stateNow: S): void => {
    if (depth <= bestLen) return;
    bestLen = depth;
    bestOps = new Int32Array(depth);
    for (let d = 0; d < depth; d++) bestOps[d] = nodeOp[stackNode[d]!]!;
    bestState = stateNow;
  };

  let state: S = model.init();
  let node = next[0]!;
  let steps = 0;
  let verdict: Verdict = 'ok';
  let reason: string | undefined;
  /** True right after a linearization step (or at the start): look for a forced step first. */
  let fresh = true;

  const keyFor = (zh: number, st: S): number => (zh ^ Math.imul(model.hash(st) ^ 0x5bd1e995, 0x9e3779b1)) & 0x3fffffff;
  const push = (c: number, zh: number, zh2: number, ns: S, isForced: boolean): void => {
    stackNode[depth] = c;
    stackState[depth] = state;
    stackForced[depth] = isForced ? 1 : 0;
    depth++;
    zobHash = zh;
    zobHash2 = zh2;
    state = ns;
    lift(c);
  };
  /**
   * A dead end: undo the last choice, and keep undoing while the undone step was forced (a forced step
   * is never a choice, so its failure is its parent's). False when there is nothing left to undo.
   */
  const backtrack = (): boolean => {
    recordBest(state);
    for (;;) {
      if (depth === 0) return false;
      depth--;
      const c = stackNode[depth]!;
      state = stackState[depth]!;
      const op = nodeOp[c]!;
      bits[op >>> 5]! &= ~(1 << (op & 31));
      zobHash = (zobHash ^ zob[op]!) >>> 0;
      zobHash2 = (zobHash2 ^ zob2[op]!) >>> 0;
      unlift(c);
      if (stackForced[depth] === 0) {
        node = next[c]!;
        return true;
      }
    }
  };

  while (next[0] !== -1) {
    steps++;
    if ((steps & 0xfff) === 0) {
      if (steps > budget.maxSteps) {
        verdict = 'unknown';
        reason = `step budget exhausted (${budget.maxSteps} steps)`;
        break;
      }
      if (performance.now() > budget.deadline) {
        verdict = 'unknown';
        reason = 'time budget exhausted';
        break;
      }
      if (cacheEntries > maxCache) {
        verdict = 'unknown';
        reason = `cache budget exhausted (${maxCache} entries)`;
        break;
      }
    }
    if (fresh && budget.forcedSteps) {
      // Forced steps: a pure operation (one that never changes the state where it is legal, e.g. a
      // read) that may come next and is legal now can be linearized now without loss of generality: in
      // any linearization from here it can be moved to the front (nothing remaining must precede it,
      // and it changed no state where it was). So it is taken without being a choice point; and if that
      // configuration is already known to fail, so is this one.
      fresh = false;
      let dead = false;
      let forced = false;
      for (let x: number = next[0]!; x !== -1 && isCall[x] === 1; x = next[x]!) {
        const op: number = nodeOp[x]!;
        if (pure[op] === 0) continue;
        const ns = model.step(state, inputs[op]!, outputs[op], known[op] === 1);
        if (ns === ILLEGAL || !equal(ns as S, state)) continue;
        const w = op >>> 5;
        const bit = 1 << (op & 31);
        bits[w]! |= bit;
        const zh = (zobHash ^ zob[op]!) >>> 0;
        const zh2 = (zobHash2 ^ zob2[op]!) >>> 0;
        setSig(zh, zh2, depth + 1);
        const key = keyFor(zh, state);
        if (cacheHas(key, state)) {
          bits[w]! &= ~bit;
          dead = true;
        } else {
          cacheAdd(key, state);
          push(x, zh, zh2, state, true);
          forced = true;
        }
        break;
      }
      if (forced) {
        fresh = true;
        continue;
      }
      if (dead) {
        if (!backtrack()) {
          verdict = 'illegal';
          break;
        }
        continue;
      }
      node = next[0]!;
    }
    if (isCall[node] === 1) {
      const op = nodeOp[node]!;
      const ns = model.step(state, inputs[op]!, outputs[op], known[op] === 1);
      if (ns === ILLEGAL) {
        node = next[node]!;
        continue;
      }
      const nsv = ns as S;
      const w = op >>> 5;
      const bit = 1 << (op & 31);
      bits[w]! |= bit;
      const zh = (zobHash ^ zob[op]!) >>> 0;
      const zh2 = (zobHash2 ^ zob2[op]!) >>> 0;
      setSig(zh, zh2, depth + 1);
      const key = keyFor(zh, nsv);
      if (cacheHas(key, nsv)) {
        bits[w]! &= ~bit;
        node = next[node]!;
        continue;
      }
      cacheAdd(key, nsv);
      push(node, zh, zh2, nsv, false);
      fresh = true;
      node = next[0]!;
    } else {
      // A return event: its operation should have been linearized by now. Undo the last choice.
      if (!backtrack()) {
        verdict = 'illegal';
        break;
      }
    }
  }

  const result: PartitionResult = { partition, verdict, operations: n, steps, cacheEntries, ms: 0 };
  if (reason !== undefined) result.reason = reason;
  if (verdict === 'ok' && wantLinearization) {
    const lin: number[] = [];
    for (let d = 0; d < depth; d++) lin.push(ops[nodeOp[stackNode[d]!]!]!.index);
    result.linearization = lin;
  }
  if (verdict === 'illegal') {
    result.violation = explain(model, partition, ops, events, bestOps, bestState);
  }
  result.ms = performance.now() - t0;
  return result;
}

/** Describes why the history of a partition is not linearizable, from the longest prefix found. */
function explain<S, I, O>(
  model: Model<S, I, O>,
  partition: string,
  ops: readonly IndexedOperation<I, O>[],
  events: Int32Array,
  bestOps: Int32Array,
  bestState: S,
): Violation {
  const n = ops.length;
  const linearized = new Uint8Array(n);
  for (const o of bestOps) linearized[o] = 1;
  const frontier: number[] = [];
  let deadlineOp = -1;
  for (const e of events) {
    const isCallEvent = e < n;
    const op = isCallEvent ? e : e - n;
    if (linearized[op] === 1) continue;
    if (isCallEvent) frontier.push(op);
    else {
      deadlineOp = op;
      break;
    }
  }
  if (deadlineOp === -1) deadlineOp = frontier[0] ?? 0; // cannot happen for an illegal partition
  const candidates = frontier.map((op) => {
    const x = ops[op]!;
    const k = x.op.status === 'ok';
    const legal = model.step(bestState, x.op.input, k ? x.op.output : undefined, k) !== ILLEGAL;
    return { op: describe(model, x), legal };
  });
  const prefix = Array.from(bestOps, (o) => describe(model, ops[o]!));
  const deadline = describe(model, ops[deadlineOp]!);
  const state = model.describeState(bestState);
  const shown = 8;
  const lines: string[] = [];
  lines.push(`partition ${JSON.stringify(partition)} is not linearizable (${n} operations searched).`);
  if (prefix.length === 0) lines.push(`No operation can be linearized first; the initial state is ${state}.`);
  else {
    lines.push(`Longest linearizable prefix: ${prefix.length} operations${prefix.length > shown ? `, the last ${shown}` : ''}:`);
    for (const d of prefix.slice(-shown)) lines.push(`  ${fmtOp(d)}`);
    lines.push(`state after it: ${state}`);
  }
  lines.push(`Next had to come, before ${fmtOp(deadline)} returned, one of:`);
  for (const c of candidates.slice(0, 16)) {
    lines.push(`  ${fmtOp(c.op)}: ${c.legal ? 'allowed here, but no linearization continues from it' : `impossible in state ${state}`}`);
  }
  if (candidates.length > 16) lines.push(`  ... and ${candidates.length - 16} more`);
  return { partition, operations: n, longestPrefix: prefix, stateAfterPrefix: state, deadline, candidates, message: lines.join('\n') };
}

/** Checks a history against a model, partition by partition. */
export function checkLinearizability<S, I, O>(model: Model<S, I, O>, history: readonly Operation<I, O>[], options: CheckOptions = {}): CheckResult {
  const t0 = performance.now();
  const budget: Budget = {
    deadline: t0 + (options.timeoutMs ?? 60_000),
    maxSteps: options.maxStepsPerPartition ?? 50_000_000,
    maxCache: options.maxCachePerPartition ?? Number.MAX_SAFE_INTEGER,
    maxCacheBytes: options.maxCacheBytesPerPartition ?? 512 * 1024 * 1024,
    forcedSteps: options.forcedSteps ?? true,
  };
  const dropped = { failed: 0, indeterminateReadOnly: 0, reduced: 0 };
  const parts = new Map<string, IndexedOperation<I, O>[]>();
  history.forEach((op, index) => {
    validate(op, index);
    if (op.status === 'failed') {
      dropped.failed++;
      return;
    }
    if (op.status === 'indeterminate' && model.readOnly?.(op.input) === true) {
      dropped.indeterminateReadOnly++;
      return;
    }
    const key = model.partition ? model.partition(op.input) : '';
    let list = parts.get(key);
    if (!list) {
      list = [];
      parts.set(key, list);
    }
    list.push({ index, op });
  });

  const partitions: PartitionResult[] = [];
  const keys = [...parts.keys()].sort();
  for (const key of keys) {
    let ops = parts.get(key)!;
    if (model.reduce) {
      const before = ops.length;
      ops = model.reduce(ops);
      dropped.reduced += before - ops.length;
    }
    if (performance.now() > budget.deadline) {
      partitions.push({ partition: key, verdict: 'unknown', operations: ops.length, steps: 0, cacheEntries: 0, ms: 0, reason: 'time budget exhausted before this partition' });
      continue;
    }
    const mode = options.cache ?? 'auto';
    const exact = mode === 'exact' || (mode === 'auto' && ops.length <= 1024);
    let r = checkPartition(model, key, ops, budget, options.linearizations === true, exact);
    if (!exact && r.verdict === 'illegal') {
      // Fingerprints may collide (a pruned path): confirm with the exact cache.
      const confirm = checkPartition(model, key, ops, budget, options.linearizations === true, true);
      confirm.steps += r.steps;
      if (confirm.verdict === 'unknown') confirm.reason = `the fingerprint search found a violation; confirming it exactly: ${confirm.reason ?? 'unknown'}`;
      r = confirm;
    }
    r.cache = exact ? 'exact' : 'fingerprint';
    partitions.push(r);
  }
  const violations = partitions.flatMap((p) => (p.violation ? [p.violation] : []));
  const unknown = partitions.filter((p) => p.verdict === 'unknown').map((p) => ({ partition: p.partition, reason: p.reason ?? 'unknown' }));
  const verdict: Verdict = violations.length > 0 ? 'illegal' : unknown.length > 0 ? 'unknown' : 'ok';
  return {
    verdict,
    ok: verdict === 'ok',
    operations: history.length,
    dropped,
    partitions,
    violations,
    unknown,
    steps: partitions.reduce((s, p) => s + p.steps, 0),
    ms: performance.now() - t0,
  };
}

/** One paragraph per violation and unknown partition: for error messages. */
export function formatCheckResult(r: CheckResult, maxViolations = 3): string {
  const lines = [
    `linearizability: ${r.verdict} (${r.operations} operations, ${r.partitions.length} partitions, ${r.steps} steps, ${r.ms.toFixed(0)} ms; dropped ${r.dropped.failed} failed, ${r.dropped.indeterminateReadOnly} indeterminate reads, ${r.dropped.reduced} unobserved indeterminate writes)`,
  ];
  for (const v of r.violations.slice(0, maxViolations)) lines.push(v.message);
  if (r.violations.length > maxViolations) lines.push(`... and ${r.violations.length - maxViolations} more violating partitions`);
  for (const u of r.unknown) lines.push(`partition ${JSON.stringify(u.partition)}: unknown (${u.reason})`);
  return lines.join('\n');
}

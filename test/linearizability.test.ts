/**
 * The linearizability checker (Wing & Gong + Lowe's cache, per-key partitions) on hand-built kv
 * histories, generated ones (10,000 operations), and a fast-check property.
 */
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { generateKvHistory } from '../src/check/generate.js';
import { checkKv, kvModel, type KvInput, type KvOperation, type KvOutput } from '../src/check/kv-model.js';
import { checkLinearizability, formatCheckResult, HistoryError, ILLEGAL, type Model } from '../src/check/linearizability.js';

// Builders: ok(client, input, output, call, return), indet(client, input, call), failed(...)
const SET = (key: string, value: string): KvInput => ({ f: 'set', key, value });
const GET = (key: string): KvInput => ({ f: 'get', key });
const DEL = (key: string): KvInput => ({ f: 'del', key });
const INCR = (key: string): KvInput => ({ f: 'incr', key });
const ok = (client: number, input: KvInput, output: KvOutput, call: number, ret: number): KvOperation => ({ client, input, output, call, return: ret, status: 'ok' });
const indet = (client: number, input: KvInput, call: number): KvOperation => ({ client, input, call, status: 'indeterminate' });
const failed = (client: number, input: KvInput, call: number): KvOperation => ({ client, input, call, status: 'failed' });

function assertLinearizable(h: KvOperation[]): void {
  const r = checkKv(h);
  assert.equal(r.verdict, 'ok', formatCheckResult(r));
}

function assertNotLinearizable(h: KvOperation[], key = 'x'): void {
  const r = checkKv(h);
  assert.equal(r.verdict, 'illegal', `expected a violation\n${formatCheckResult(r)}`);
  assert.ok(r.violations.some((v) => v.partition === key), `violation on ${key}`);
  for (const v of r.violations) {
    assert.ok(v.message.includes('not linearizable'));
    assert.ok(v.candidates.length >= 1);
  }
}

describe('hand-built histories that are not linearizable', () => {
  test('stale read after a completed write', () => {
    assertNotLinearizable([ok(0, SET('x', 'a'), 'OK', 0, 1), ok(0, SET('x', 'b'), 'OK', 2, 3), ok(1, GET('x'), 'a', 4, 5)]);
  });

  test('read of a value never written', () => {
    assertNotLinearizable([ok(0, SET('x', 'a'), 'OK', 0, 1), ok(1, GET('x'), 'zz', 2, 3)]);
    assertNotLinearizable([ok(1, GET('x'), 'zz', 0, 1)]);
  });

  test('two reads seeing two concurrent writes in opposite orders', () => {
    assertNotLinearizable([
      ok(0, SET('x', 'a'), 'OK', 0, 100),
      ok(1, SET('x', 'b'), 'OK', 0, 100),
      ok(2, GET('x'), 'a', 1, 2),
      ok(2, GET('x'), 'b', 3, 4),
      ok(3, GET('x'), 'b', 1, 2),
      ok(3, GET('x'), 'a', 3, 4),
    ]);
  });

  test('lost write: an acknowledged SET not visible to a later read', () => {
    assertNotLinearizable([ok(0, SET('x', 'a'), 'OK', 0, 1), ok(1, GET('x'), null, 2, 3)]);
    assertNotLinearizable([ok(0, SET('x', 'a'), 'OK', 0, 1), ok(0, SET('x', 'b'), 'OK', 2, 3), ok(1, GET('x'), 'b', 4, 5), ok(1, GET('x'), 'a', 6, 7)]);
  });

  test('an indeterminate write cannot take effect before it was invoked', () => {
    assertNotLinearizable([ok(1, GET('x'), 'b', 0, 1), indet(0, SET('x', 'b'), 2)]);
  });

  test('a failed write never took effect', () => {
    assertNotLinearizable([failed(0, SET('x', 'b'), 0), ok(1, GET('x'), 'b', 1, 2)]);
  });

  test('DEL counts and INCR results are checked', () => {
    assertNotLinearizable([ok(0, SET('x', 'a'), 'OK', 0, 1), ok(0, DEL('x'), 0, 2, 3)]);
    assertNotLinearizable([ok(0, DEL('x'), 1, 0, 1)]);
    assertNotLinearizable([ok(0, INCR('x'), 1, 0, 1), ok(0, INCR('x'), 1, 2, 3)]);
    assertNotLinearizable([ok(0, SET('x', 'a'), 'OK', 0, 1), ok(0, INCR('x'), 1, 2, 3)]);
  });

  test('only the violating key is reported; the message names the operations involved', () => {
    const r = checkKv([
      ok(0, SET('y', '1'), 'OK', 0, 1),
      ok(0, GET('y'), '1', 2, 3),
      ok(0, SET('x', 'a'), 'OK', 0, 1),
      ok(0, SET('x', 'b'), 'OK', 2, 3),
      ok(1, GET('x'), 'a', 4, 5),
    ]);
    assert.equal(r.verdict, 'illegal');
    assert.deepEqual(r.violations.map((v) => v.partition), ['x']);
    assert.deepEqual(r.partitions.map((p) => [p.partition, p.verdict]), [['x', 'illegal'], ['y', 'ok']]);
    const v = r.violations[0]!;
    assert.deepEqual(v.longestPrefix.map((d) => d.index), [2, 3]);
    assert.equal(v.stateAfterPrefix, '"b"');
    assert.equal(v.deadline.index, 4);
    assert.deepEqual(v.candidates.map((c) => [c.op.index, c.legal]), [[4, false]]);
    assert.match(v.message, /GET x → "a"/);
  });
});

describe('hand-built histories that are linearizable', () => {
  test('empty history; reads of nil', () => {
    assertLinearizable([]);
    assertLinearizable([ok(0, GET('x'), null, 0, 1)]);
  });

  test('concurrent overlapping operations', () => {
    assertLinearizable([ok(0, SET('x', 'a'), 'OK', 0, 10), ok(1, GET('x'), 'a', 1, 2), ok(2, GET('x'), null, 1, 3)]);
    // Two concurrent writes, reads agreeing on one order.
    assertLinearizable([
      ok(0, SET('x', 'a'), 'OK', 0, 100),
      ok(1, SET('x', 'b'), 'OK', 0, 100),
      ok(2, GET('x'), 'a', 1, 2),
      ok(2, GET('x'), 'b', 3, 4),
      ok(3, GET('x'), 'a', 1, 2),
      ok(3, GET('x'), 'b', 5, 6),
    ]);
    // Operations touching at one instant count as concurrent.
    assertLinearizable([ok(0, GET('x'), 'a', 0, 1), ok(1, SET('x', 'a'), 'OK', 1, 2)]);
  });

  test('an indeterminate write that took effect', () => {
    assertLinearizable([ok(0, SET('x', 'a'), 'OK', 0, 1), indet(0, SET('x', 'b'), 2), ok(1, GET('x'), 'b', 5, 6)]);
  });

  test('an indeterminate write that did not take effect', () => {
    assertLinearizable([ok(0, SET('x', 'a'), 'OK', 0, 1), indet(0, SET('x', 'b'), 2), ok(1, GET('x'), 'a', 5, 6), ok(1, GET('x'), 'a', 7, 8)]);
  });

  test('an indeterminate write that took effect late (completion is +infinity)', () => {
    assertLinearizable([indet(0, SET('x', 'b'), 2), ok(1, SET('x', 'c'), 'OK', 3, 4), ok(1, GET('x'), 'c', 5, 6), ok(1, GET('x'), 'b', 7, 8)]);
  });

  test('indeterminate DEL and INCR; failed and indeterminate reads are ignored', () => {
    assertLinearizable([ok(0, SET('x', 'a'), 'OK', 0, 1), indet(0, DEL('x'), 2), ok(1, DEL('x'), 0, 5, 6), indet(1, GET('x'), 7), failed(1, GET('x'), 8)]);
    assertLinearizable([indet(0, INCR('x'), 0), ok(1, INCR('x'), 2, 5, 6), ok(1, INCR('x'), 3, 7, 8)]);
    assertLinearizable([ok(0, SET('x', 'a'), 'OK', 0, 1), ok(0, INCR('x'), { error: 'ERR value is not an integer or out of range' }, 2, 3), ok(0, GET('x'), 'a', 4, 5)]);
  });
});

describe('checker mechanics', () => {
  test('malformed histories are refused', () => {
    assert.throws(() => checkKv([{ client: 0, input: GET('x'), call: 0, status: 'ok', output: null }]), HistoryError);
    assert.throws(() => checkKv([ok(0, GET('x'), null, 5, 4)]), HistoryError);
    assert.throws(() => checkKv([ok(0, GET('x'), null, NaN, 4)]), HistoryError);
  });

  test('a pathological history reports unknown within its time budget instead of hanging', () => {
    // 20 concurrent writes, 20 concurrent DELs that each deleted something, and one impossible read:
    // proving the violation needs the search to visit every subset of the writes and deletes.
    const h: KvOperation[] = [];
    for (let i = 0; i < 20; i++) h.push(ok(i, SET('x', `v${i}`), 'OK', 0, 100));
    for (let i = 0; i < 20; i++) h.push(ok(100 + i, DEL('x'), 1, 0, 100));
    h.push(ok(200, GET('x'), 'never', 0, 100));
    const t0 = performance.now();
    const r = checkKv(h, { timeoutMs: 300 });
    const ms = performance.now() - t0;
    assert.equal(r.verdict, 'unknown', formatCheckResult(r));
    assert.equal(r.ok, false);
    assert.deepEqual(r.unknown, [{ partition: 'x', reason: 'time budget exhausted' }]);
    assert.ok(ms < 2000, `took ${ms} ms`);
    const s = checkKv(h, { maxStepsPerPartition: 10_000 });
    assert.equal(s.verdict, 'unknown');
    assert.match(s.unknown[0]!.reason, /step budget/);
  });

  test('property: on small random histories the checker agrees with a brute-force search over all orders', () => {
    const value = fc.constantFrom('a', 'b', 'c');
    const input: fc.Arbitrary<KvInput> = fc.oneof(
      fc.record({ f: fc.constant('get' as const), key: fc.constantFrom('x', 'y') }),
      fc.record({ f: fc.constant('set' as const), key: fc.constantFrom('x', 'y'), value }),
      fc.record({ f: fc.constant('del' as const), key: fc.constantFrom('x', 'y') }),
      fc.record({ f: fc.constant('incr' as const), key: fc.constantFrom('x', 'y') }),
    );
    const output: fc.Arbitrary<KvOutput> = fc.oneof(fc.constantFrom<KvOutput>(null, 'a', 'b', 'c', 'OK', 0, 1, 2, 3, { error: 'ERR' }));
    const operation: fc.Arbitrary<KvOperation> = fc
      .record({
        client: fc.nat(5),
        input,
        output,
        call: fc.integer({ min: 0, max: 12 }),
        duration: fc.integer({ min: 0, max: 6 }),
        status: fc.constantFrom<KvOperation['status']>('ok', 'ok', 'ok', 'ok', 'ok', 'indeterminate', 'failed'),
      })
      .map(({ duration, ...o }) => (o.status === 'ok' ? { ...o, return: o.call + duration } : { client: o.client, input: o.input, call: o.call, status: o.status }));
    let legal = 0;
    fc.assert(
      fc.property(fc.array(operation, { minLength: 0, maxLength: 8 }), (h) => {
        const expected = bruteForceLinearizable(h);
        const r = checkKv(h);
        if (expected) legal++;
        assert.equal(r.verdict, expected ? 'ok' : 'illegal', `${JSON.stringify(h)}\n${formatCheckResult(r)}`);
        assert.equal(checkKv(h, { forcedSteps: false }).verdict, r.verdict);
        assert.equal(checkKv(h, { cache: 'fingerprint' }).verdict, r.verdict);
      }),
      { numRuns: 3000 },
    );
    assert.ok(legal > 300, `only ${legal} of the random histories were linearizable: the property tests too little`);
  });

  test('a generic model: a queue (not partitioned)', () => {
    type QIn = { f: 'enq'; v: number } | { f: 'deq' };
    const queue: Model<readonly number[], QIn, number | null> = {
      init: () => [],
      step(s, i, o, known) {
        if (i.f === 'enq') return [...s, i.v];
        const head = s[0] ?? null;
        if (known && o !== head) return ILLEGAL;
        return s.slice(1);
      },
      hash: (s) => s.reduce((h, v) => Math.imul(h ^ v, 0x01000193), 0x811c9dc5) >>> 0,
      equal: (a, b) => a.length === b.length && a.every((v, k) => v === b[k]),
      describeOperation: (i, o) => (i.f === 'enq' ? `enq ${i.v}` : `deq → ${String(o)}`),
      describeState: (s) => `[${s.join(', ')}]`,
    };
    const good = checkLinearizability(queue, [
      { input: { f: 'enq', v: 1 }, call: 0, return: 10, status: 'ok', output: null },
      { input: { f: 'enq', v: 2 }, call: 0, return: 10, status: 'ok', output: null },
      { input: { f: 'deq' }, call: 11, return: 12, status: 'ok', output: 2 },
      { input: { f: 'deq' }, call: 13, return: 14, status: 'ok', output: 1 },
    ]);
    assert.equal(good.verdict, 'ok');
    const bad = checkLinearizability(queue, [
      { input: { f: 'enq', v: 1 }, call: 0, return: 1, status: 'ok', output: null },
      { input: { f: 'enq', v: 2 }, call: 2, return: 3, status: 'ok', output: null },
      { input: { f: 'deq' }, call: 4, return: 5, status: 'ok', output: 2 },
    ]);
    assert.equal(bad.verdict, 'illegal');
  });
});

/**
 * Linearizable iff some order of the operations (failed ones dropped; each indeterminate one either
 * dropped or placed anywhere after its invocation) respects real time and the register semantics of each key.
 */
function bruteForceLinearizable(history: KvOperation[]): boolean {
  const ops = history.filter((o) => o.status !== 'failed');
  const end = (o: KvOperation): number => (o.status === 'ok' ? o.return! : Infinity);
  const used = new Array<boolean>(ops.length).fill(false);
  const search = (state: Map<string, string | null>, placed: number): boolean => {
    // Done when every ok operation is placed (the indeterminate ones left out never happened).
    if (ops.every((o, i) => used[i] || o.status !== 'ok')) return true;
    for (let i = 0; i < ops.length; i++) {
      if (used[i]) continue;
      const o = ops[i]!;
      // Every unplaced ok operation that completed before o was invoked must come first.
      if (ops.some((p, j) => !used[j] && j !== i && end(p) < o.call)) continue;
      const known = o.status === 'ok';
      const next = kvModel.step(state.get(o.input.key) ?? null, o.input, known ? o.output : undefined, known);
      if (next === ILLEGAL) continue;
      const s2 = new Map(state);
      s2.set(o.input.key, next);
      used[i] = true;
      const found = search(s2, placed + 1);
      used[i] = false;
      if (found) return true;
    }
    return false;
  };
  return search(new Map(), 0);
}

/** Makes one GET return a value that was overwritten (by a write that completed) before the GET began. */
function staleReadMutation(h: KvOperation[]): { history: KvOperation[]; index: number } {
  const copy = h.map((op) => ({ ...op }));
  for (let g = Math.floor(copy.length / 2); g < copy.length; g++) {
    const read = copy[g]!;
    if (read.status !== 'ok' || read.input.f !== 'get') continue;
    const key = read.input.key;
    // s2: an ok write on the key completed before the read; s1: an ok SET completed before s2 began.
    const writes = copy.filter((o) => o.status === 'ok' && o.input.key === key && o.input.f !== 'get');
    for (const s2 of writes) {
      if (s2.return! >= read.call) continue;
      const s1 = writes.find((o) => o.input.f === 'set' && o.return! < s2.call);
      if (!s1 || s1.input.f !== 'set' || read.output === s1.input.value) continue;
      copy[g] = { ...read, output: s1.input.value };
      return { history: copy, index: g };
    }
  }
  throw new Error('no read to mutate');
}

describe('generated histories', () => {
  test('10,000 operations over 8 keys and 12 clients: accepted; a stale-read mutation rejected; in seconds', () => {
    const { history } = generateKvHistory({ seed: 6, operations: 10_000, clients: 12, keys: 8 });
    assert.equal(history.length, 10_000);
    const t0 = performance.now();
    const r = checkKv(history);
    const ms = performance.now() - t0;
    console.log(`# checker: 10,000 operations (${r.partitions.length} keys, ${history.filter((o) => o.status === 'indeterminate').length} indeterminate) → ${r.verdict} in ${ms.toFixed(0)} ms, ${r.steps} steps`);
    assert.equal(r.verdict, 'ok', formatCheckResult(r));
    assert.ok(ms < 10_000, `checking took ${ms} ms`);

    const mutated = staleReadMutation(history);
    const t1 = performance.now();
    const m = checkKv(mutated.history);
    const ms2 = performance.now() - t1;
    console.log(`# checker: the mutated copy (stale read at #${mutated.index}) → ${m.verdict} in ${ms2.toFixed(0)} ms, ${m.steps} steps`);
    assert.equal(m.verdict, 'illegal', formatCheckResult(m));
    const key = (mutated.history[mutated.index]!.input as { key: string }).key;
    assert.deepEqual(m.violations.map((v) => v.partition), [key]);
    assert.ok(ms2 < 10_000, `checking took ${ms2} ms`);
  });

  test('a read of a value never written, in a generated history, is rejected', () => {
    const { history } = generateKvHistory({ seed: 7, operations: 2000, clients: 6, keys: 4 });
    const copy = history.map((op) => ({ ...op }));
    const g = copy.findIndex((o, i) => i > 1000 && o.status === 'ok' && o.input.f === 'get');
    copy[g] = { ...copy[g]!, output: 'never-written' };
    const r = checkKv(copy);
    assert.equal(r.verdict, 'illegal');
    assert.ok(r.violations[0]!.candidates.some((c) => c.op.index === g && !c.legal));
  });

  test('property: histories of a linearizable register with random overlaps are always accepted', () => {
    fc.assert(
      fc.property(
        fc.record({
          seed: fc.integer({ min: 0, max: 2 ** 31 }),
          operations: fc.integer({ min: 0, max: 300 }),
          clients: fc.integer({ min: 1, max: 8 }),
          keys: fc.integer({ min: 1, max: 4 }),
          reads: fc.double({ min: 0, max: 0.8, noNaN: true }),
          deletes: fc.double({ min: 0, max: 0.2, noNaN: true }),
          indeterminate: fc.double({ min: 0, max: 0.2, noNaN: true }),
          failed: fc.double({ min: 0, max: 0.1, noNaN: true }),
          maxDuration: fc.integer({ min: 0, max: 20 }),
          maxGap: fc.integer({ min: 0, max: 10 }),
        }),
        (o) => {
          const { history } = generateKvHistory(o);
          const r = checkKv(history, { timeoutMs: 20_000 });
          assert.equal(r.verdict, 'ok', formatCheckResult(r));
        },
      ),
      { numRuns: 150 },
    );
  });

  test('property: a read of a never-written value anywhere makes a generated history illegal', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 31 }), fc.integer({ min: 10, max: 200 }), fc.nat(), (seed, operations, pick) => {
        const { history } = generateKvHistory({ seed, operations, clients: 4, keys: 2 });
        const reads = history.map((o, i) => [o, i] as const).filter(([o]) => o.status === 'ok' && o.input.f === 'get');
        fc.pre(reads.length > 0);
        const [, g] = reads[pick % reads.length]!;
        const copy = history.map((op) => ({ ...op }));
        copy[g] = { ...copy[g]!, output: 'never-written' };
        assert.equal(checkKv(copy).verdict, 'illegal');
      }),
      { numRuns: 100 },
    );
  });
});

test('the kv model follows the guest: SET/GET/DEL/INCR', () => {
  const m = kvModel;
  assert.equal(m.step(null, GET('x'), null, true), null);
  assert.equal(m.step('a', GET('x'), null, true), ILLEGAL);
  assert.equal(m.step('a', SET('x', 'b'), 'OK', true), 'b');
  assert.equal(m.step('a', DEL('x'), 1, true), null);
  assert.equal(m.step(null, DEL('x'), 0, true), null);
  assert.equal(m.step('41', INCR('x'), 42, true), '42');
  assert.equal(m.step('41', INCR('x'), 42n, true), '42');
  assert.equal(m.step('4a', INCR('x'), { error: 'ERR' }, true), '4a');
  assert.equal(m.step('4a', INCR('x'), undefined, false), '4a');
  assert.equal(m.step('9223372036854775807', INCR('x'), { error: 'ERR overflow' }, true), '9223372036854775807');
});

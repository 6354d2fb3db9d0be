/** Lost acknowledged writes: final reads against the acknowledged writes of each key. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { generateKvHistory } from '../src/check/generate.js';
import type { KvInput, KvOperation, KvOutput } from '../src/check/kv-model.js';
import { countLostWrites } from '../src/check/lost-writes.js';

const SET = (key: string, value: string): KvInput => ({ f: 'set', key, value });
const DEL = (key: string): KvInput => ({ f: 'del', key });
const INCR = (key: string): KvInput => ({ f: 'incr', key });
const ok = (input: KvInput, output: KvOutput, call: number, ret: number): KvOperation => ({ client: 0, input, output, call, return: ret, status: 'ok' });
const indet = (input: KvInput, call: number): KvOperation => ({ client: 0, input, call, status: 'indeterminate' });
const failed = (input: KvInput, call: number): KvOperation => ({ client: 0, input, call, status: 'failed' });
const lost = (h: KvOperation[], finals: Record<string, string | null>): number =>
  countLostWrites(h, Object.entries(finals).map(([key, value]) => ({ key, value }))).lost;

test('an acknowledged write visible at the end is not lost; one that is not visible is', () => {
  assert.equal(lost([ok(SET('x', 'a'), 'OK', 0, 1)], { x: 'a' }), 0);
  assert.equal(lost([ok(SET('x', 'a'), 'OK', 0, 1)], { x: null }), 1);
  const r = countLostWrites([ok(SET('x', 'a'), 'OK', 0, 1)], [{ key: 'x', value: 'old' }]);
  assert.deepEqual(r.writes.map((w) => [w.key, w.text, w.finalValue]), [['x', 'SET x "a"', 'old']]);
  assert.equal(r.acknowledged, 1);
});

test('a write overwritten by a later one is not lost; the later one is when the final value is older', () => {
  const h = [ok(SET('x', 'a'), 'OK', 0, 1), ok(SET('x', 'b'), 'OK', 2, 3)];
  assert.equal(lost(h, { x: 'b' }), 0);
  const r = countLostWrites(h, [{ key: 'x', value: 'a' }]);
  assert.equal(r.lost, 1);
  assert.equal(r.writes[0]!.text, 'SET x "b"');
  assert.equal(lost(h, { x: null }), 2);
});

test('concurrent acknowledged writes: either may be last', () => {
  const h = [ok(SET('x', 'a'), 'OK', 0, 10), ok(SET('x', 'b'), 'OK', 5, 15)];
  assert.equal(lost(h, { x: 'a' }), 0);
  assert.equal(lost(h, { x: 'b' }), 0);
});

test('an indeterminate later write may explain the final value; a failed one may not', () => {
  assert.equal(lost([ok(SET('x', 'a'), 'OK', 0, 1), indet(SET('x', 'b'), 2)], { x: 'b' }), 0);
  assert.equal(lost([ok(SET('x', 'a'), 'OK', 0, 1), indet(SET('x', 'b'), 2)], { x: 'a' }), 0);
  assert.equal(lost([ok(SET('x', 'a'), 'OK', 0, 1), indet(SET('x', 'b'), 2)], { x: null }), 1);
  assert.equal(lost([ok(SET('x', 'a'), 'OK', 0, 1), failed(SET('x', 'b'), 2)], { x: 'b' }), 1);
  // An indeterminate write invoked before the acknowledged one may still have landed after it.
  assert.equal(lost([indet(SET('x', 'b'), 0), ok(SET('x', 'a'), 'OK', 5, 6)], { x: 'b' }), 0);
});

test('DEL and INCR are writes too', () => {
  assert.equal(lost([ok(SET('x', 'a'), 'OK', 0, 1), ok(DEL('x'), 1, 2, 3)], { x: 'a' }), 1);
  assert.equal(lost([ok(SET('x', 'a'), 'OK', 0, 1), indet(DEL('x'), 2)], { x: null }), 0);
  assert.equal(lost([ok(INCR('x'), 1, 0, 1), ok(INCR('x'), 2, 2, 3)], { x: '2' }), 0);
  assert.equal(lost([ok(INCR('x'), 1, 0, 1), ok(INCR('x'), 2, 2, 3)], { x: '1' }), 1);
  assert.equal(lost([ok(INCR('x'), 1, 0, 1), indet(INCR('x'), 2)], { x: '7' }), 0);
});

test('keys without a final read are not judged; writes invoked after the final read are ignored', () => {
  const r = countLostWrites([ok(SET('x', 'a'), 'OK', 0, 1), ok(SET('y', 'a'), 'OK', 0, 1), ok(SET('x', 'late'), 'OK', 20, 21)], [{ key: 'x', value: 'a', call: 10 }]);
  assert.equal(r.lost, 0);
  assert.equal(r.unjudged, 1);
  assert.equal(r.acknowledged, 1);
  assert.equal(r.keysChecked, 1);
});

test('generated histories: nothing lost against the true final values; a key rolled back is caught', () => {
  const { history, final } = generateKvHistory({ seed: 11, operations: 5000, clients: 8, keys: 8, indeterminate: 0.05 });
  const finals = [...final].map(([key, value]) => ({ key, value }));
  const r = countLostWrites(history, finals);
  assert.equal(r.lost, 0, JSON.stringify(r.writes.slice(0, 5)));
  assert.ok(r.acknowledged > 1000);
  // Roll one key back to the value of an early acknowledged SET.
  const early = history.find((o) => o.status === 'ok' && o.input.f === 'set' && o.call > 100 && o.input.key === 'k3')!;
  const rolled = finals.map((f) => (f.key === 'k3' && early.input.f === 'set' ? { key: 'k3', value: early.input.value } : f));
  const bad = countLostWrites(history, rolled);
  assert.ok(bad.lost > 10, `lost ${bad.lost}`);
  assert.ok(bad.writes.every((w) => w.key === 'k3'));
});

/**
 * Property: for every example guest, random inputs injected at random instruction numbers (mid-
 * computation for spin) and a random checkpoint spacing on the recorder → replay reaches the identical
 * state hash, instruction number and outputs.
 */
import fc from 'fast-check';
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DEFAULT_VM_CONFIG } from '../src/log/recording.js';
import { ScriptedEnv, type ScheduledInput } from '../src/machine/env.js';
import type { GuestOutput } from '../src/machine/machine.js';
import { recordRun, replayRun } from '../src/machine/runner.js';
import { resp } from '../src/machine/workloads.js';
import { guest, hex } from './helpers.js';

const outputsKey = (os: GuestOutput[]): string[] => os.map((o) => `${o.seq}@${o.n}:${o.kind}:${o.conn}:${o.fd}:${hex(o.data)}`);

function checkRoundTrip(name: string, inputs: ScheduledInput[], seed: number, sliceUnits: number): void {
  const g = guest(name);
  const rec = recordRun(g, DEFAULT_VM_CONFIG, new ScriptedEnv(inputs, { seed, sliceUnits }));
  const rep = replayRun(g, DEFAULT_VM_CONFIG, rec.entries);
  assert.equal(rep.consumed, rec.entries.length, 'replay consumed the whole log');
  assert.equal(rep.finalCount, rec.finalCount, 'same final instruction number');
  assert.equal(hex(rep.finalHash), hex(rec.finalHash), 'same final state hash');
  assert.deepEqual(outputsKey(rep.outputs), outputsKey(rec.outputs), 'same outputs at the same instruction numbers');
}

/** Turns (gap, payload) pairs into a schedule on one or more connections. */
function schedule(items: Array<{ gap: number; conn: number; data: Uint8Array }>, conns: number): ScheduledInput[] {
  const out: ScheduledInput[] = [];
  for (let c = 1; c <= conns; c++) out.push({ atCount: 0, kind: 'open', conn: c });
  let at = 0;
  for (const it of items) {
    at += it.gap;
    out.push({ atCount: at, kind: 'data', conn: 1 + (it.conn % conns), data: it.data });
  }
  out.push({ atCount: at + 1, kind: 'close', conn: 1 });
  return out;
}

const key = fc.constantFrom('a', 'b', 'c', 'key:1', 'key:2', 'ctr');
const kvCommand = fc.oneof(
  fc.tuple(key, fc.string({ maxLength: 40 })).map(([k, v]) => resp('SET', k, v)),
  key.map((k) => resp('GET', k)),
  key.map((k) => resp('INCR', k)),
  fc.array(key, { minLength: 1, maxLength: 3 }).map((ks) => resp('DEL', ...ks)),
  fc.array(key, { minLength: 1, maxLength: 3 }).map((ks) => resp('EXISTS', ...ks)),
  fc.constant(resp('DBSIZE')),
  fc.constant(Buffer.from('PING\r\n')),
  fc.uint8Array({ maxLength: 30 }), // garbage / partial frames
);

test('kv: replay of random RESP traffic is identical', () => {
  fc.assert(
    fc.property(
      fc.array(fc.record({ gap: fc.nat(60_000), conn: fc.nat(3), data: fc.array(kvCommand, { minLength: 1, maxLength: 4 }).map((cs) => Buffer.concat(cs)) }), { maxLength: 40 }),
      fc.integer({ min: 1, max: 4 }),
      fc.nat(1000),
      fc.integer({ min: 500, max: 300_000 }),
      (items, conns, seed, slice) => checkRoundTrip('kv', schedule(items, conns), seed, slice),
    ),
    { numRuns: 30 },
  );
});

test('spin: inputs delivered mid-computation replay identically', () => {
  const msg = fc.oneof(
    fc.integer({ min: 1, max: 400_000 }).map((n) => Buffer.from(`spin ${n}`)),
    fc.uint8Array({ minLength: 1, maxLength: 24 }),
  );
  fc.assert(
    fc.property(
      fc.array(fc.record({ gap: fc.nat(4_000_000), conn: fc.constant(0), data: msg }), { minLength: 1, maxLength: 12 }),
      fc.nat(1000),
      fc.integer({ min: 1000, max: 2_000_000 }),
      (items, seed, slice) => checkRoundTrip('spin', schedule([{ gap: 0, conn: 0, data: Buffer.from('spin 300000') }, ...items], 1), seed, slice),
    ),
    { numRuns: 15 },
  );
});

test('spin: a delivery really lands mid-computation', () => {
  const g = guest('spin');
  const inputs = schedule([{ gap: 0, conn: 0, data: Buffer.from('spin 2000000') }, { gap: 3_000_000, conn: 0, data: Buffer.from('x') }], 1);
  const rec = recordRun(g, DEFAULT_VM_CONFIG, new ScriptedEnv(inputs, { seed: 1, sliceUnits: 10_000 }));
  const reply = rec.outputs.map((o) => Buffer.from(o.data).toString()).find((t) => t.startsWith('acc'));
  assert.ok(reply, 'spin answered the poke');
  const iter = Number(/iter (\d+)/.exec(reply)![1]);
  assert.ok(iter > 0 && iter < 2_000_000, `the poke was seen mid-computation (iter ${iter})`);
});

test('chaos: clock, random, timers and memory.grow replay identically', () => {
  fc.assert(
    fc.property(
      fc.array(fc.record({ gap: fc.nat(3_000_000), conn: fc.constant(0), data: fc.uint8Array({ minLength: 1, maxLength: 8 }) }), { maxLength: 6 }),
      fc.nat(1000),
      fc.integer({ min: 2000, max: 1_000_000 }),
      (items, seed, slice) => checkRoundTrip('chaos', schedule(items, 1), seed, slice),
    ),
    { numRuns: 4 },
  );
});

test('C guest (wasi-libc): clock, random and console replay identically', () => {
  fc.assert(
    fc.property(fc.nat(1000), fc.integer({ min: 50_000, max: 50_000_000 }), (seed, slice) => checkRoundTrip('compute_c', [], seed, slice)),
    { numRuns: 3 },
  );
});

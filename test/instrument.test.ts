/**
 * The instrumenter threads fuel and call depth through the guest's functions. Its counts are part of
 * the log format (a recording made before must replay after), so they are pinned here: the numbers
 * below are those of the earlier call/return-flush instrumenter for the same module. Covered: direct
 * and call_indirect recursion, a table holding both a defined function and an imported host function,
 * multi-value results (also returned from inside a loop), exports with and without params, the depth
 * limit, budget stops everywhere, and the count the VMM reads after a trap.
 */
import { crc32 } from 'node:zlib';
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { encodeBatch } from '../src/log/codec.js';
import { describeEntry, EntryType, type LogEntry } from '../src/log/entry.js';
import { DEFAULT_VM_CONFIG } from '../src/log/recording.js';
import { ScriptedEnv, type ScheduledInput } from '../src/machine/env.js';
import { loadGuest } from '../src/machine/guest.js';
import { DEPTH_GLOBAL, FUEL_GLOBAL, instrument, MEMORY_EXPORT } from '../src/machine/instrument.js';
import { compileGuest } from '../src/machine/machine.js';
import { recordRun, replayRun } from '../src/machine/runner.js';
import { binaryen, hex, wat } from './helpers.js';

const MODULE = `(module
  (type $unop (func (param i32) (result i64)))
  (import "ftvm" "rx_ring" (func $rx (param i32 i32)))
  (import "ftvm" "clock_now" (func $clock (param i32) (result i64)))
  (import "ftvm" "console_write" (func $write (param i32 i32)))
  (memory (export "memory") 1)
  (table 4 funcref)
  ;; an imported host function and defined functions of the same type in one table
  (elem (i32.const 0) $clock $twice $fact $clock)
  (global $digest (mut i64) (i64.const 1469598103934665603))
  (global $steps (mut i32) (i32.const 0))

  (func $mix (param $v i64)
    (global.set $digest (i64.mul (i64.xor (global.get $digest) (local.get $v)) (i64.const 1099511628211))))

  (func $twice (type $unop) (param $x i32) (result i64)
    (i64.extend_i32_u (i32.shl (local.get $x) (i32.const 1))))

  ;; recursion through the table
  (func $fact (type $unop) (param $n i32) (result i64)
    (if (result i64) (i32.le_u (local.get $n) (i32.const 1))
      (then (i64.const 1))
      (else (i64.mul (i64.extend_i32_u (local.get $n))
                     (call_indirect (type $unop) (i32.sub (local.get $n) (i32.const 1)) (i32.const 2))))))

  ;; direct recursion
  (func $fib (export "fib") (param $n i32) (result i32)
    (if (result i32) (i32.lt_u (local.get $n) (i32.const 2))
      (then (local.get $n))
      (else (i32.add (call $fib (i32.sub (local.get $n) (i32.const 1)))
                     (call $fib (i32.sub (local.get $n) (i32.const 2)))))))

  ;; recursion n levels deep (for the depth limit)
  (func $down (export "down") (param $n i32)
    (if (local.get $n) (then (call $down (i32.sub (local.get $n) (i32.const 1))))))

  ;; multi-value results, one of them returned from inside a loop
  (func $divmod (param $a i32) (param $b i32) (result i32 i32)
    (i32.div_u (local.get $a) (local.get $b))
    (i32.rem_u (local.get $a) (local.get $b)))
  (func $sumsq (param $n i32) (result i64 i32) (local $i i32) (local $s i64)
    (loop $l
      (local.set $s (i64.add (local.get $s) (i64.extend_i32_u (i32.mul (local.get $i) (local.get $i)))))
      (if (i32.eq (local.get $i) (i32.const 77)) (then (return (local.get $s) (local.get $i))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (local.get $n))))
    (local.get $s) (local.get $i))

  ;; an export without params and with multi-value results
  (func $pair (export "pair") (result i32 i64) (local $q i32) (local $r i32) (local $s i64) (local $k i32)
    (call $divmod (i32.const 1000) (i32.const 7))
    (local.set $r) (local.set $q)
    (call $sumsq (i32.const 50))
    (local.set $k) (local.set $s)
    (i32.add (local.get $q) (i32.add (local.get $r) (local.get $k)))
    (i64.add (local.get $s) (call_indirect (type $unop) (i32.const 21) (i32.const 1))))

  ;; call_indirect through a slot holding the import or a defined function
  (func $via (export "via") (param $slot i32) (param $x i32) (result i64)
    (call_indirect (type $unop) (local.get $x) (local.get $slot)))

  (func $report
    (i64.store (i32.const 0) (global.get $digest))
    (call $write (i32.const 0) (i32.const 8)))

  (func (export "ftvm_init") (call $rx (i32.const 1024) (i32.const 4096)))

  (func (export "ftvm_step") (result i32) (local $p i32) (local $t i64)
    (i32.store (i32.const 1028) (i32.load (i32.const 1024)))
    (global.set $steps (i32.add (global.get $steps) (i32.const 1)))
    (call $mix (i64.extend_i32_u (call $fib (i32.add (i32.const 10) (global.get $steps)))))
    (call $mix (call $via (i32.const 0) (i32.const 1)))
    (call $mix (call $via (i32.const 1) (global.get $steps)))
    (call $mix (call $via (i32.const 2) (i32.const 12)))
    (call $pair)
    (local.set $t) (local.set $p)
    (call $mix (i64.add (local.get $t) (i64.extend_i32_u (local.get $p))))
    ;; the import through the table, its operand computed by a call
    (call $mix (call_indirect (type $unop) (call $fib (i32.const 2)) (i32.const 3)))
    (call $report)
    (i32.const 0))
)`;

const bytes = wat(MODULE, binaryen.Features.MutableGlobals | binaryen.Features.Multivalue);

/** Inputs only released when the guest idles: the log is then the same for every slice. */
const IDLE_INPUTS: ScheduledInput[] = [1, 2, 3].map((conn) => ({ atCount: 1e15, kind: 'open' as const, conn }));

const entryKey = (e: LogEntry): string => `${e.n} ${describeEntry(e)}`;

/**
 * Entries of the earlier instrumenter for IDLE_INPUTS (the clock values follow the count). Log format 2:
 * the outputs are covered by a digest at the idle point that follows each (they are pinned below).
 */
const GOLDEN_ENTRIES = [
  '3 NIC_OPEN conn=1 @idle',
  '4084 CLOCK clock=1 value=1000000000004081ns',
  '5627 CLOCK clock=1 value=1000000000005624ns',
  '5640 OUT_DIGEST 1 output(s) crc=1d24d6af @idle',
  '5640 NIC_OPEN conn=2 @idle',
  '12213 CLOCK clock=1 value=2000000000006570ns',
  '13756 CLOCK clock=1 value=2000000000008113ns',
  '13769 OUT_DIGEST 1 output(s) crc=36d3f6b3 @idle',
  '13769 NIC_OPEN conn=3 @idle',
  '24374 CLOCK clock=1 value=3000000000004962ns',
  '25917 CLOCK clock=1 value=3000000000006505ns',
  '25930 OUT_DIGEST 1 output(s) crc=aa161d86 @idle',
];
/** The outputs (what format 1 logged as OUT_CONSOLE entries): instruction number, fd, length, CRC-32. */
const GOLDEN_OUTPUTS = ['5640 fd=1 8 bytes crc=9e2c9843', '13769 fd=1 8 bytes crc=0dcda18c', '25930 fd=1 8 bytes crc=11dfe741'];
const GOLDEN_FINAL_COUNT = 25930;

test('instrumented counts are pinned: a record/replay round trip logs the same entries at the same counts for every slice', () => {
  const g = loadGuest(bytes);
  let first: string | undefined;
  for (const slice of [1, 5, 1000, 2_000_000]) {
    const rec = recordRun(g, DEFAULT_VM_CONFIG, new ScriptedEnv(IDLE_INPUTS, { sliceUnits: slice }));
    assert.equal(rec.result.state, 'stopped');
    const keys = rec.entries.filter((e) => e.type !== EntryType.STATE_HASH).map(entryKey);
    assert.deepEqual(keys, GOLDEN_ENTRIES, `entries with slice ${slice}`);
    const outs = rec.outputs.map((o) => `${o.n} fd=${o.fd} ${o.data.length} bytes crc=${(crc32(o.data) >>> 0).toString(16).padStart(8, '0')}`);
    assert.deepEqual(outs, GOLDEN_OUTPUTS, `outputs with slice ${slice}`);
    assert.equal(rec.finalCount, GOLDEN_FINAL_COUNT);
    const rep = replayRun(g, DEFAULT_VM_CONFIG, rec.entries);
    assert.equal(rep.consumed, rec.entries.length);
    assert.equal(rep.finalCount, rec.finalCount);
    assert.equal(hex(rep.finalHash), hex(rec.finalHash));
    first ??= hex(rec.finalHash);
    assert.equal(hex(rec.finalHash), first, 'the state hash does not depend on the slice');
  }
});

/**
 * Runs exports of the instrumented module directly, as the VMM would: the count is
 * `budgetEnd - __ftvm_fuel`; budget grants `slice` units. The budget path must find the global
 * unchanged since the last host call or export entry (it passes the fuel as an argument instead).
 */
function directInstance(slice: number, maxCallDepth: number) {
  const inst = instrument(bytes, { maxCallDepth });
  let budgetEnd = 0;
  let boundary = 0;
  const seen: string[] = [];
  let fuel!: WebAssembly.Global;
  const count = (): number => budgetEnd - Number(fuel.value as bigint);
  const instance = new WebAssembly.Instance(compileGuest(inst.binary), {
    ftvm: {
      rx_ring() {},
      clock_now(clock: number): bigint {
        boundary = count();
        seen.push(`clock ${clock} at ${boundary}`);
        return BigInt(boundary);
      },
      console_write() {
        boundary = count();
      },
    },
    ftvm_internal: {
      budget(k: number, f: bigint): bigint {
        assert.equal(count(), boundary, 'the global holds the count of the last host call or export entry');
        const c = budgetEnd - Number(f);
        const grant = Math.max(slice, k);
        budgetEnd = c + grant;
        fuel.value = BigInt(budgetEnd - boundary);
        return BigInt(grant);
      },
      depth_exceeded(): never {
        boundary = count();
        throw new Error(`depth exceeded at ${boundary}`);
      },
      memory_grow: (): number => -1,
    },
  });
  const ex = instance.exports;
  fuel = ex[FUEL_GLOBAL] as WebAssembly.Global;
  assert.ok(ex[MEMORY_EXPORT] instanceof WebAssembly.Memory);
  /** Calls fn from count 0; returns its value (or error message), the count after, and what the host saw. */
  const metered = (fn: () => unknown): { value: string; count: number; seen: string[] } => {
    budgetEnd = slice;
    fuel.value = BigInt(slice);
    boundary = 0;
    seen.length = 0;
    let value: string;
    try {
      value = String(JSON.stringify(fn(), (_k, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v)));
    } catch (err) {
      value = `threw: ${(err as Error).message}`;
    }
    assert.equal((ex[DEPTH_GLOBAL] as WebAssembly.Global).value, 0);
    return { value, count: count(), seen: [...seen] };
  };
  const fn = (name: string) => ex[name] as (...args: number[]) => unknown;
  return { metered, fn };
}

/** [call, value, count, host observations] of the earlier instrumenter. */
const GOLDEN_DIRECT: Array<[string, string, number, string[]]> = [
  ['fib(8)', '21', 938, []],
  ['pair()', '[198,"40467n"]', 1311, []],
  ['via(0,1)', '"3n"', 3, ['clock 1 at 3']],
  ['via(1,5)', '"10n"', 7, []],
  ['via(2,8)', '"40320n"', 107, []],
  ['via(2,10)', 'threw: depth exceeded at 120', 120, []],
  ['via(3,0)', '"3n"', 3, ['clock 0 at 3']],
  ['down(9)', 'undefined', 60, []],
  ['down(10)', 'threw: depth exceeded at 60', 60, []],
];

test('exports keep their signatures; counts, host-call counts and the depth limit are pinned, for every slice', () => {
  for (const slice of [1, 3, 1000, 2_000_000]) {
    const { metered, fn } = directInstance(slice, 10);
    assert.equal(fn('fib').length, 1);
    assert.equal(fn('pair').length, 0);
    assert.equal(fn('via').length, 2);
    assert.equal(fn('ftvm_step').length, 0);
    const calls: Array<[string, () => unknown]> = [
      ['fib(8)', () => fn('fib')(8)],
      ['pair()', () => fn('pair')()],
      ['via(0,1)', () => fn('via')(0, 1)],
      ['via(1,5)', () => fn('via')(1, 5)],
      ['via(2,8)', () => fn('via')(2, 8)],
      ['via(2,10)', () => fn('via')(2, 10)],
      ['via(3,0)', () => fn('via')(3, 0)],
      ['down(9)', () => fn('down')(9)],
      ['down(10)', () => fn('down')(10)],
    ];
    const got = calls.map(([name, f]) => {
      const r = metered(f);
      return [name, r.value, r.count, r.seen] as [string, string, number, string[]];
    });
    assert.deepEqual(got, GOLDEN_DIRECT, `slice ${slice}`);
  }
});

test('after a trap the VMM reads the count of the last host call or export entry, whatever the slice', () => {
  for (const slice of [1, 3, 1000]) {
    const { metered, fn } = directInstance(slice, 10);
    // Table index out of bounds: no host call in this export call, so the count is that of its entry.
    // (The call/return-flush instrumenter read 3 here, the count at the call_indirect; either is the
    // same on every replica.)
    assert.deepEqual(metered(() => fn('via')(9, 1)), { value: 'threw: table index is out of bounds', count: 0, seen: [] });
    // A signature mismatch is still one; the HALT carries the count of the host call before it.
    const bad = wat(`(module (import "ftvm" "clock_now" (func $clock (param i32) (result i64))) (memory (export "memory") 1)
      (type $a (func (result i32))) (type $b (func (result i64))) (table 1 funcref) (elem (i32.const 0) $f) (func $f (type $a) (i32.const 1))
      (func (export "ftvm_init") (drop (call $clock (i32.const 1))) (drop (call_indirect (type $b) (i32.const 0))))
      (func (export "ftvm_step") (result i32) (i32.const 0)))`);
    const rec = recordRun(loadGuest(bad), DEFAULT_VM_CONFIG, new ScriptedEnv([], { sliceUnits: slice }));
    assert.equal(rec.result.state, 'halted');
    if (rec.result.state === 'halted') assert.match(rec.result.halt.message, /signature mismatch/);
    assert.deepEqual(
      rec.entries.map((e) => [e.type, e.n]),
      [
        [EntryType.CLOCK, 7],
        [EntryType.HALT, 7],
      ],
    );
  }
});

test('a trap after a checkpoint delivery is numbered no earlier than that delivery; the log encodes and replays', () => {
  const g = loadGuest(
    wat(`(module
      (import "ftvm" "rx_ring" (func $rx (param i32 i32)))
      (memory (export "memory") 1)
      (global $steps (mut i32) (i32.const 0))
      (func (export "ftvm_init") (call $rx (i32.const 1024) (i32.const 4096)))
      (func $spin (param $n i32) (local $i i32)
        (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1))) (br_if $l (i32.lt_u (local.get $i) (local.get $n)))))
      (func (export "ftvm_step") (result i32)
        (i32.store (i32.const 1028) (i32.load (i32.const 1024)))
        (global.set $steps (i32.add (global.get $steps) (i32.const 1)))
        (if (i32.eq (global.get $steps) (i32.const 2)) (then (call $spin (i32.const 1000000)) (unreachable)))
        (i32.const 0)))`),
  );
  const inputs: ScheduledInput[] = [
    { atCount: 0, kind: 'open', conn: 1 },
    { atCount: 100, kind: 'open', conn: 2 },
    { atCount: 2_000_000, kind: 'open', conn: 3 },
  ];
  for (const slice of [1000, 7777, 100_000]) {
    const rec = recordRun(g, DEFAULT_VM_CONFIG, new ScriptedEnv(inputs, { sliceUnits: slice }));
    assert.equal(rec.result.state, 'halted');
    const halt = rec.entries[rec.entries.length - 1]!;
    assert.equal(halt.type, EntryType.HALT);
    const delivery = rec.entries.find((e) => e.type === EntryType.NIC_OPEN && !e.idle);
    assert.ok(delivery !== undefined, 'the third open was delivered at a checkpoint');
    assert.equal(halt.n, delivery.n, 'the HALT carries the count of the last checkpoint delivery');
    assert.doesNotThrow(() => encodeBatch(rec.entries));
    const rep = replayRun(g, DEFAULT_VM_CONFIG, rec.entries);
    assert.equal(rep.result.state, 'halted');
    assert.equal(rep.finalCount, rec.finalCount);
    assert.equal(hex(rep.finalHash), hex(rec.finalHash));
  }
});

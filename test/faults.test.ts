/**
 * Tampered and truncated recordings, deterministic traps, exact stops, and bad guests: each gets a clear,
 * coded error and the VMM keeps going.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { EntryType, isAsync, type LogEntry } from '../src/log/entry.js';
import { DEFAULT_VM_CONFIG, FORMAT_VERSION, RecordingWriter, blockOf, encodeHeader, parseRecording } from '../src/log/recording.js';
import { LOG_FORMAT_OUTPUTS, encodeBatch } from '../src/log/codec.js';
import { ArraySource, ScriptedEnv } from '../src/machine/env.js';
import { loadGuest } from '../src/machine/guest.js';
import { loadGuestIsolated } from '../src/machine/guest-isolated.js';
import { Machine } from '../src/machine/machine.js';
import { recordRun, replayRun } from '../src/machine/runner.js';
import { kvWorkload, resp, spinWorkload } from '../src/machine/workloads.js';
import { DeterminismViolation, FtvmError } from '../src/util/errors.js';
import { binaryen, guest, guestPath, hex, wat } from './helpers.js';

const cfg = DEFAULT_VM_CONFIG;

function kvRecording() {
  return recordRun(guest('kv'), cfg, new ScriptedEnv(kvWorkload({ ops: 300, conns: 3, seed: 5 }), { seed: 5, sliceUnits: 50_000 }));
}

test('a tampered instruction number fails replay with a DeterminismViolation at that entry', () => {
  const rec = kvRecording();
  const candidates = rec.entries.map((e, i) => [e, i] as const).filter(([e]) => e.type === EntryType.NIC_DATA);
  for (const [e, idx] of [candidates[3]!, candidates[50]!, candidates[candidates.length - 2]!]) {
    for (const delta of [-1, 1, 1000]) {
      const entries = rec.entries.map((x) => ({ ...x })) as LogEntry[];
      const t = entries[idx]!;
      t.n = e.n + delta;
      // keep the log monotonic so the codec would accept it
      if (delta < 0 && idx > 0 && entries[idx - 1]!.n > t.n) continue;
      if (delta > 0 && idx + 1 < entries.length && entries[idx + 1]!.n < t.n) entries.slice(idx + 1).forEach((x) => x.n < t.n && (x.n = t.n));
      assert.throws(
        () => replayRun(guest('kv'), cfg, entries),
        (err: unknown) => {
          assert.ok(err instanceof DeterminismViolation, String(err));
          assert.equal(err.code, 'FTVM_ERR_DETERMINISM_VIOLATION');
          assert.equal(err.entryIndex, idx, `violation reported at the tampered entry (${err.message})`);
          assert.equal(err.expectedInstructionNumber, t.n);
          return true;
        },
      );
    }
  }
});

test('old recordings stay readable: a format-version-1 file (log format 1, outputs as entries) parses and replays to the same state', async () => {
  const rec = recordRun(guest('kv'), cfg, new ScriptedEnv(kvWorkload({ ops: 300, conns: 3, seed: 5 }), { seed: 5, sliceUnits: 50_000 }), { logFormat: LOG_FORMAT_OUTPUTS });
  assert.ok(rec.entries.some((e) => e.type === EntryType.OUT_NET) && !rec.entries.some((e) => e.type === EntryType.OUT_DIGEST));
  const file = Buffer.concat([encodeHeader(guest('kv').original, cfg, undefined, FORMAT_VERSION), blockOf(encodeBatch(rec.entries.slice(0, 100), undefined, LOG_FORMAT_OUTPUTS)), blockOf(encodeBatch(rec.entries.slice(100), undefined, LOG_FORMAT_OUTPUTS))]);
  const parsed = parseRecording(file);
  assert.equal(parsed.formatVersion, FORMAT_VERSION);
  assert.equal(parsed.logFormat, LOG_FORMAT_OUTPUTS);
  assert.equal(hex(encodeBatch(parsed.entries, undefined, LOG_FORMAT_OUTPUTS)), hex(encodeBatch(rec.entries, undefined, LOG_FORMAT_OUTPUTS)));
  const rep = replayRun(guest('kv'), cfg, parsed.entries, undefined, LOG_FORMAT_OUTPUTS);
  assert.equal(hex(rep.finalHash), hex(rec.finalHash));
  assert.equal(rep.outputs.length, rec.outputs.length);
  // The same run in the current format: fewer bytes, the same outputs and final state.
  const now = kvRecording();
  assert.equal(hex(now.finalHash), hex(rec.finalHash));
  assert.deepEqual(now.outputs.map((o) => [o.n, o.conn, hex(o.data)]), rec.outputs.map((o) => [o.n, o.conn, hex(o.data)]));
  assert.ok(encodeBatch(now.entries).length < encodeBatch(rec.entries, undefined, LOG_FORMAT_OUTPUTS).length);
  // Replayed as format 2, a format-1 log is refused at its first output entry (and the reverse at a digest).
  assert.throws(() => replayRun(guest('kv'), cfg, parsed.entries), DeterminismViolation);
  assert.throws(() => replayRun(guest('kv'), cfg, now.entries, undefined, LOG_FORMAT_OUTPUTS), DeterminismViolation);
});

test('format 2: a replica whose outputs differ is stopped at the digest that covers them, with both counts', () => {
  const rec = kvRecording();
  const digests = rec.entries.map((e, i) => [e, i] as const).filter(([e]) => e.type === EntryType.OUT_DIGEST);
  assert.ok(digests.length > 10);
  for (const [d, idx] of [digests[2]!, digests[digests.length - 2]!]) {
    for (const tamper of ['crc', 'count'] as const) {
      const entries = rec.entries.map((x) => ({ ...x })) as LogEntry[];
      const t = entries[idx] as Extract<LogEntry, { type: typeof EntryType.OUT_DIGEST }>;
      if (tamper === 'crc') t.crc = (t.crc ^ 1) >>> 0;
      else t.count += 1;
      assert.throws(
        () => replayRun(guest('kv'), cfg, entries),
        (err: unknown) => {
          assert.ok(err instanceof DeterminismViolation, String(err));
          assert.equal(err.entryIndex, idx, err.message);
          assert.equal(err.actualInstructionNumber, d.n);
          assert.match(err.message, /outputs between instruction \d+ and \d+ differ from the primary's/);
          return true;
        },
      );
    }
  }
});

test('tampered data fails replay at the first output it changes, naming both instruction numbers', () => {
  const rec = kvRecording();
  const idx = rec.entries.findIndex((e) => e.type === EntryType.NIC_DATA && Buffer.from(e.data).toString().includes('GET'));
  const entries = rec.entries.map((x) => ({ ...x })) as LogEntry[];
  const e = entries[idx] as Extract<LogEntry, { type: 11 }>;
  e.data = Buffer.from(resp('GET', 'no-such-key-xx'));
  assert.throws(
    () => replayRun(guest('kv'), cfg, entries),
    (err: unknown) => err instanceof DeterminismViolation && err.entryIndex > idx && /recorded at instruction \d+, replica at \d+/.test(err.message),
  );
});

test('a file tampered without fixing its checksum is reported as corrupt; other corruption too', async () => {
  const rec = kvRecording();
  const dir = mkdtempSync(join(tmpdir(), 'ftvm-test-'));
  const path = join(dir, 'r.ftlog');
  const w = await RecordingWriter.create(path, guest('kv').original, cfg);
  await w.append(rec.entries.slice(0, 100));
  await w.append(rec.entries.slice(100));
  await w.close();
  const good = readFileSync(path);
  assert.equal(parseRecording(good).entries.length, rec.entries.length);
  const flipped = Buffer.from(good);
  flipped[flipped.length - 5]! ^= 0x40;
  assert.throws(() => parseRecording(flipped), { code: 'FTVM_ERR_CORRUPT_RECORDING', message: /checksum/ });
  assert.throws(() => parseRecording(Buffer.from('not a recording at all, no')), { code: 'FTVM_ERR_CORRUPT_RECORDING', message: /magic/ });
  const v2 = Buffer.from(good);
  v2.writeUInt16LE(99, 8);
  assert.throws(() => parseRecording(v2), { code: 'FTVM_ERR_RECORDING_VERSION' });
  const badModule = Buffer.from(good);
  badModule[12]! ^= 1; // the module hash
  assert.throws(() => parseRecording(badModule), { code: 'FTVM_ERR_CORRUPT_RECORDING', message: /hash/ });
  // Truncated mid-block: the entries before it are intact, and replay stops at their end.
  const cut = good.subarray(0, good.length - 7);
  const parsed = parseRecording(cut);
  assert.equal(parsed.truncated, true);
  assert.equal(parsed.entries.length, 100);
  writeFileSync(join(dir, 'cut.ftlog'), cut);
});

test('a truncated log stops replay at its end without running ahead', () => {
  const rec = recordRun(guest('spin'), cfg, new ScriptedEnv(spinWorkload({ ops: 20, seed: 3, work: 3_000_000 }), { seed: 3, sliceUnits: 100_000 }));
  for (const cutAt of [5, Math.floor(rec.entries.length / 2), rec.entries.length - 3]) {
    const held = rec.entries.slice(0, cutAt);
    const lastN = held[held.length - 1]!.n;
    const r = replayRun(guest('spin'), cfg, held);
    assert.equal(r.result.state, 'starved');
    assert.ok(r.finalCount <= lastN, `replica at ${r.finalCount} must not pass the last held entry ${lastN}`);
    assert.equal(r.consumed, held.length);
  }
});

test('stop-at-count is exact: a replica granted up to a checkpoint stops exactly there', () => {
  const rec = recordRun(guest('spin'), cfg, new ScriptedEnv(spinWorkload({ ops: 30, seed: 9, work: 3_000_000 }), { seed: 9, sliceUnits: 30_000 }));
  const checkpoints = rec.entries.map((e, i) => [e, i] as const).filter(([e]) => isAsync(e) && !e.idle);
  assert.ok(checkpoints.length >= 3, 'the workload delivered mid-computation');
  for (const [e, i] of checkpoints.slice(0, 5)) {
    // Hold everything before the delivery, and a grant up to its instruction number.
    const m = new Machine({ instrumented: guest('spin').instrumented, compiled: guest('spin').compiled, config: cfg, mode: 'replay', source: new ArraySource(rec.entries.slice(0, i), e.n), sink: { entry() {}, output() {} } });
    const r = m.run();
    assert.equal(r.state, 'starved');
    assert.equal(r.count, e.n, 'stopped at exactly the granted instruction number');
  }
});

const trapGuestWat = (divStep: number, recurseStep: number): Uint8Array => wat(`(module
  (import "ftvm" "rx_ring" (func $rx (param i32 i32)))
  (memory (export "memory") 1)
  (global $steps (mut i32) (i32.const 0))
  (func (export "ftvm_init") (call $rx (i32.const 1024) (i32.const 4096)))
  (func $work (param $n i32) (result i32) (local $i i32) (local $a i32)
    (loop $l (local.set $a (i32.add (local.get $a) (i32.mul (local.get $i) (local.get $i))))
      (local.set $i (i32.add (local.get $i) (i32.const 1))) (br_if $l (i32.lt_u (local.get $i) (local.get $n))))
    (local.get $a))
  (func $recurse (param $n i32) (result i32) (i32.add (call $recurse (i32.add (local.get $n) (i32.const 1))) (i32.const 1)))
  (func (export "ftvm_step") (result i32)
    ;; consume everything in the ring
    (i32.store (i32.const 1028) (i32.load (i32.const 1024)))
    (global.set $steps (i32.add (global.get $steps) (i32.const 1)))
    (drop (call $work (i32.const 100000)))
    (if (i32.eq (global.get $steps) (i32.const ${divStep})) (then (drop (i32.div_u (i32.const 1) (i32.sub (global.get $steps) (i32.const ${divStep}))))))
    (if (i32.eq (global.get $steps) (i32.const ${recurseStep})) (then (drop (call $recurse (i32.const 0)))))
    (i32.const 0))
)`);

test('a guest trap is deterministic: replay traps at the same instruction number', () => {
  const g = loadGuest(trapGuestWat(3, 4));
  const inputs = [0, 1, 2, 3, 4].map((i) => ({ atCount: i * 10_000_000, kind: 'open' as const, conn: i + 1 }));
  for (const slice of [1000, 7777, 2_000_000]) {
    const rec = recordRun(g, cfg, new ScriptedEnv(inputs, { sliceUnits: slice }));
    assert.equal(rec.result.state, 'halted');
    if (rec.result.state !== 'halted') return;
    assert.equal(rec.result.halt.kind, 'trap');
    assert.match(rec.result.halt.message, /divide by zero/);
    const rep = replayRun(g, cfg, rec.entries);
    assert.equal(rep.result.state, 'halted');
    assert.equal(rep.finalCount, rec.finalCount);
    assert.equal(hex(rep.finalHash), hex(rec.finalHash));
  }
});

test('the call-depth limit traps deterministically, below any native stack limit', () => {
  const inputs = [0, 1, 2, 3, 4].map((i) => ({ atCount: i * 10_000_000, kind: 'open' as const, conn: i + 1 }));
  const noDiv = loadGuest(trapGuestWat(99, 4), 500);
  const rec = recordRun(noDiv, cfg, new ScriptedEnv(inputs, { sliceUnits: 5000 }));
  assert.equal(rec.result.state, 'halted');
  if (rec.result.state !== 'halted') return;
  assert.match(rec.result.halt.message, /call depth exceeded \(limit 500\)/);
  const rep = replayRun(noDiv, cfg, rec.entries);
  assert.equal(rep.finalCount, rec.finalCount);
  assert.equal(hex(rep.finalHash), hex(rec.finalHash));
});

test('a guest instrumented in a child process (ftvm run: binaryen never in the long-lived process) loads the same and is refused the same', async () => {
  const kv = new Uint8Array(readFileSync(guestPath('kv')));
  const here = loadGuest(kv);
  const there = await loadGuestIsolated(kv);
  assert.equal(hex(there.instrumented.binary), hex(here.instrumented.binary));
  assert.deepEqual({ ...there.instrumented, binary: null }, { ...here.instrumented, binary: null });
  // A refusal by the instrumenter: its code crosses the process boundary (the ABI check runs here).
  const cases: Array<[Uint8Array, string, RegExp]> = [
    [wat(`(module (memory (export "memory") 1 1 shared) (func (export "ftvm_step") (result i32) (i32.const 0)))`, binaryen.Features.Atomics | binaryen.Features.MutableGlobals), 'FTVM_ERR_UNSUPPORTED_FEATURE', /shared memory/],
  ];
  for (const [bytes, code, msg] of cases) {
    await assert.rejects(loadGuestIsolated(bytes), (err: unknown) => err instanceof FtvmError && err.code === code && msg.test(err.message));
  }
});

test('bad guests are refused with a clear, coded error', () => {
  const refuse = (bytes: Uint8Array, code: string, msg: RegExp): void => {
    assert.throws(() => loadGuest(bytes), (err: unknown) => err instanceof FtvmError && err.code === code && msg.test(err.message));
  };
  refuse(Buffer.from('#!/bin/sh\necho not wasm\n'), 'FTVM_ERR_NOT_WASM', /not a WebAssembly module/);
  refuse(Buffer.from([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0, 0xff, 0xff]), 'FTVM_ERR_INVALID_MODULE', /invalid WebAssembly module/);
  refuse(
    wat(`(module (import "env" "launch_missiles" (func (param i32))) (memory (export "memory") 1) (func (export "ftvm_step") (result i32) (i32.const 0)))`),
    'FTVM_ERR_ABI_IMPORT',
    /env\.launch_missiles.*not in the ftvm guest ABI/,
  );
  refuse(
    wat(`(module (import "ftvm" "clock_now" (func (param i32) (result i32))) (memory (export "memory") 1) (func (export "ftvm_step") (result i32) (i32.const 0)))`),
    'FTVM_ERR_ABI_IMPORT',
    /ftvm\.clock_now as \(i32\)->\(i32\); the ABI defines it as \(i32\)->\(i64\)/,
  );
  refuse(
    wat(`(module (memory (export "memory") 1 1 shared) (func (export "ftvm_step") (result i32) (i32.const 0)))`, binaryen.Features.Atomics | binaryen.Features.MutableGlobals),
    'FTVM_ERR_UNSUPPORTED_FEATURE',
    /shared memory/,
  );
  refuse(
    wat(`(module (memory (export "memory") 1) (func (export "ftvm_step") (result i32) (drop (i32.atomic.rmw.add (i32.const 0) (i32.const 1))) (i32.const 0)))`, binaryen.Features.Atomics | binaryen.Features.MutableGlobals),
    'FTVM_ERR_UNSUPPORTED_FEATURE',
    /threads/,
  );
  refuse(
    wat(`(module (memory (export "memory") 1) (func (export "ftvm_step") (result i32) (drop (f32x4.relaxed_madd (v128.const i32x4 0 0 0 0) (v128.const i32x4 0 0 0 0) (v128.const i32x4 0 0 0 0))) (i32.const 0)))`, binaryen.Features.SIMD128 | binaryen.Features.RelaxedSIMD),
    'FTVM_ERR_UNSUPPORTED_FEATURE',
    /relaxed SIMD/,
  );
  refuse(
    wat(`(module (import "env" "mem" (memory 1)) (func (export "ftvm_step") (result i32) (i32.const 0)))`),
    'FTVM_ERR_UNSUPPORTED_FEATURE',
    /imported memory/,
  );
  refuse(wat(`(module (memory (export "memory") 1) (func (export "other")))`), 'FTVM_ERR_ABI_EXPORT', /neither ftvm_step/);
  refuse(
    wat(`(module (import "ftvm_internal" "budget" (func (param i32 i64) (result i64))) (memory (export "memory") 1) (func (export "ftvm_step") (result i32) (i32.const 0)))`),
    'FTVM_ERR_ABI_IMPORT',
    /reserved/,
  );
});

test('a start function runs metered, as the first thing the VMM does', () => {
  const g = loadGuest(
    wat(`(module (import "ftvm" "console_write" (func $w (param i32 i32))) (memory (export "memory") 1) (data (i32.const 0) "started")
      (func $s (call $w (i32.const 0) (i32.const 7))) (start $s) (func (export "ftvm_step") (result i32) (i32.const 0)))`),
  );
  assert.equal(g.instrumented.hasStart, true);
  const rec = recordRun(g, cfg, new ScriptedEnv([]));
  assert.equal(Buffer.from(rec.outputs[0]!.data).toString(), 'started');
  assert.ok(rec.outputs[0]!.n > 0, 'the start function was charged');
});

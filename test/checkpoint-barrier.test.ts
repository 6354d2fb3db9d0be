/**
 * Dirty-page tracking by the store barrier (checkpoint mode, src/machine/dirty-pages.ts): the instrumenter
 * marks exactly the pages every kind of write touches (a store at an offset, one across a page boundary,
 * memory.fill, memory.copy, memory.init, v128.store; a zero-length fill marks nothing), marks again after
 * the VMM clears the map and resets the cache, and leaves the instruction count unchanged; on the kv guest
 * driven by a scripted workload, a delta that visits only the marked pages keeps the tracker's shadow equal
 * to memory at every checkpoint (and dropping the marks would not), while the guest computes exactly what
 * the guest without the barrier computes.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import binaryen from 'binaryen';
import { DirtyTracker } from '../src/checkpoint/delta.js';
import { DEFAULT_VM_CONFIG } from '../src/log/recording.js';
import { DIRTY_CACHE_GLOBAL, DIRTY_CACHE_RESET, DirtyPages } from '../src/machine/dirty-pages.js';
import { ScriptedEnv } from '../src/machine/env.js';
import { finishLoad } from '../src/machine/guest-abi.js';
import { instrument, FUEL_GLOBAL, INTERNAL_MODULE, MEMORY_EXPORT } from '../src/machine/instrument.js';
import type { Machine, Snapshot } from '../src/machine/machine.js';
import { recordRun } from '../src/machine/runner.js';
import { kvWorkload } from '../src/machine/workloads.js';
import { guestPath, hex } from './helpers.js';

const P = 4096;

/** A module whose exports each perform one kind of memory write. */
function writerModule(): Uint8Array {
  const m = new binaryen.Module();
  m.setFeatures(binaryen.Features.BulkMemory | binaryen.Features.BulkMemoryOpt | binaryen.Features.SIMD128 | binaryen.Features.MutableGlobals);
  m.setMemory(4, 64, 'memory', [{ passive: true, data: new Uint8Array(10).fill(7), offset: 0 }]);
  const i32 = binaryen.i32;
  const a = (i: number): number => m.local.get(i, i32);
  const fn = (name: string, params: number[], body: number): void => {
    m.addFunction(name, binaryen.createType(params), binaryen.none, [], body);
    m.addFunctionExport(name, name);
  };
  fn('st32', [i32], m.i32.store(8, 4, a(0), m.i32.const(1)));
  fn('st64', [i32], m.i64.store(0, 8, a(0), m.i64.const(-1n as never)));
  fn('st8', [i32], m.i32.store8(0, 1, a(0), m.i32.const(9)));
  fn('fill', [i32, i32], m.memory.fill(a(0), m.i32.const(3), a(1)));
  fn('copy', [i32, i32, i32], m.memory.copy(a(0), a(1), a(2)));
  fn('init', [i32], m.memory.init('0', a(0), m.i32.const(0), m.i32.const(10)));
  fn('v128', [i32], m.v128.store(0, 16, a(0), m.v128.const(new Array(16).fill(5) as never)));
  fn('grow', [i32], m.drop(m.memory.grow(a(0))));
  assert.ok(m.validate(), 'the test module validates');
  const bin = m.emitBinary();
  m.dispose();
  return bin;
}

function instantiate(bin: Uint8Array, dirty: DirtyPages | undefined): { ex: WebAssembly.Exports; mem: WebAssembly.Memory } {
  let mem!: WebAssembly.Memory;
  const imports: WebAssembly.Imports = {
    [INTERNAL_MODULE]: {
      budget: (_k: number, fuel: bigint) => fuel + 1_000_000_000n,
      depth_exceeded: () => {
        throw new Error('depth');
      },
      memory_grow: (d: number) => mem.grow(d),
    },
    ...(dirty !== undefined ? { ftvm_dirty: dirty.imports } : {}),
  };
  const inst = new WebAssembly.Instance(new WebAssembly.Module(bin), imports);
  mem = inst.exports[MEMORY_EXPORT] as WebAssembly.Memory;
  (inst.exports[FUEL_GLOBAL] as WebAssembly.Global).value = 1_000_000_000n;
  return { ex: inst.exports, mem };
}

test('the store barrier marks exactly the pages each kind of write touches, and marks again after a clear', () => {
  const orig = writerModule();
  const ins = instrument(orig, { dirtyPages: true });
  assert.equal(ins.dirtyPages, true);
  const dirty = new DirtyPages();
  const { ex, mem } = instantiate(ins.binary, dirty);
  const cache = ex[DIRTY_CACHE_GLOBAL] as WebAssembly.Global;
  const call = (name: string, ...args: number[]): void => void (ex[name] as (...a: number[]) => void)(...args);
  /** The pages marked by `run` alone (the map cleared and the cache reset first, as at a checkpoint). */
  const marked = (run: () => void): number[] => {
    dirty.take(mem.buffer.byteLength);
    cache.value = DIRTY_CACHE_RESET;
    run();
    const map = dirty.take(mem.buffer.byteLength).map;
    assert.ok(map !== undefined, 'the map is complete after the first clear');
    return [...map.keys()].filter((p) => map[p] !== 0);
  };
  assert.deepEqual(marked(() => call('st32', 3 * P - 4)), [3], 'i32.store at offset 8: the page of ptr + offset, not of ptr');
  assert.deepEqual(marked(() => call('st64', 5 * P - 4)), [4, 5], 'an i64.store across a page boundary marks both pages');
  assert.deepEqual(marked(() => call('st8', 6 * P + 4095)), [6]);
  assert.deepEqual(marked(() => call('fill', 7 * P + 100, 9000)), [7, 8, 9], 'memory.fill: every page of the range');
  assert.deepEqual(marked(() => call('fill', 7 * P, 0)), [], 'an empty fill writes nothing');
  assert.deepEqual(marked(() => call('copy', 10 * P, 0, 1)), [10], 'memory.copy: the destination');
  assert.deepEqual(marked(() => call('init', 11 * P + 4090)), [11, 12], 'memory.init: the destination range');
  assert.deepEqual(marked(() => call('v128', 13 * P + 8)), [13], 'v128.store');
  // The cache: a second store into the same page calls nothing (and loses nothing), but after a clear the
  // same page is marked again.
  assert.deepEqual(marked(() => (call('st8', 14 * P), call('st8', 14 * P + 1), call('st32', 15 * P))), [14, 15]);
  assert.deepEqual(marked(() => call('st8', 15 * P + 12)), [15], 'the cached page of before the clear is marked again');
  // Growth: a store into a grown page is marked.
  assert.deepEqual(marked(() => (call('grow', 1), call('st8', 4 * 16 * P + 5))), [64]);
  // The bytes written are the same as without the barrier, and so is the instruction count.
  const plain = instantiate(instrument(orig).binary, undefined);
  const runAll = (e: WebAssembly.Exports): bigint => {
    (e[FUEL_GLOBAL] as WebAssembly.Global).value = 1_000_000_000n;
    for (const [name, args] of [['st32', [100]], ['st64', [P - 4]], ['fill', [2 * P, 5000]], ['copy', [3 * P, 0, 300]], ['init', [P - 3]], ['v128', [40]]] as const) (e[name] as (...a: number[]) => void)(...args);
    return (e[FUEL_GLOBAL] as WebAssembly.Global).value as bigint;
  };
  const fresh = instantiate(ins.binary, new DirtyPages());
  const f1 = runAll(fresh.ex);
  const f2 = runAll(plain.ex);
  assert.ok(1_000_000_000n - f1 > 0n, 'the calls were metered');
  assert.equal(f1, f2, 'instruction counts are unchanged by the barrier');
  assert.ok(Buffer.from(fresh.mem.buffer).equals(Buffer.from(plain.mem.buffer)), 'the same bytes written');
});

/** Checkpoints the machine at every `every`-th idle wait, handing each snapshot to `onSnapshot`. */
class SnapshottingEnv extends ScriptedEnv {
  waits = 0;
  machine: Machine | undefined;
  constructor(
    inputs: ConstructorParameters<typeof ScriptedEnv>[0],
    opts: ConstructorParameters<typeof ScriptedEnv>[1],
    private readonly every: number,
    private readonly onSnapshot: (s: Snapshot) => void,
  ) {
    super(inputs, opts);
  }
  override waitForWork(count: number, deadline: number | undefined): boolean {
    this.waits++;
    if (this.machine !== undefined && this.waits % this.every === 0) this.onSnapshot(this.machine.snapshot());
    return super.waitForWork(count, deadline);
  }
}

test('kv guest with the barrier: deltas of the marked pages keep the shadow equal to memory at every checkpoint; the guest computes the same', () => {
  const original = new Uint8Array(readFileSync(guestPath('kv')));
  const barrier = finishLoad(original, instrument(original, { dirtyPages: true }));
  const plain = finishLoad(original, instrument(original));
  const seed = 11;
  const make = (): ReturnType<typeof kvWorkload> => kvWorkload({ ops: 400, conns: 3, seed });

  const tracker = new DirtyTracker();
  const blind = new DirtyTracker(); // fed the same snapshots with every mark dropped
  let checkpoints = 0;
  let usedMap = 0;
  let markedPages = 0;
  let totalPages = 0;
  let blindDiverged = false;
  const env = new SnapshottingEnv(make(), { seed, sliceUnits: 40_000 }, 2, (s) => {
    checkpoints++;
    assert.ok(s.dirty !== undefined, 'a barrier guest reports its written pages');
    if (s.dirty.map !== undefined) {
      usedMap++;
      markedPages += s.dirty.map.reduce((a, b) => a + (b !== 0 ? 1 : 0), 0);
      totalPages += s.dirty.map.length;
    }
    tracker.delta(s.memory, s.dirty);
    assert.ok(Buffer.from(tracker.view).equals(Buffer.from(s.memory)), `checkpoint ${checkpoints}: the shadow equals memory`);
    blind.delta(s.memory, s.dirty.map !== undefined ? { map: new Uint8Array(s.dirty.map.length), seq: s.dirty.seq } : s.dirty);
    if (!Buffer.from(blind.view).equals(Buffer.from(s.memory))) blindDiverged = true;
  });
  const a = recordRun(barrier, DEFAULT_VM_CONFIG, env, { onMachine: (m) => (env.machine = m) });
  assert.ok(checkpoints >= 20, `checkpoints (${checkpoints})`);
  assert.equal(usedMap, checkpoints - 1, 'every checkpoint after the first used the map');
  assert.ok(markedPages < totalPages / 4, `few pages marked (${markedPages} of ${totalPages})`);
  assert.ok(blindDiverged, 'without the marks the shadow would miss writes (the test can fail)');

  const b = recordRun(plain, DEFAULT_VM_CONFIG, new ScriptedEnv(make(), { seed, sliceUnits: 40_000 }));
  assert.equal(a.finalCount, b.finalCount, 'the same instruction count');
  assert.equal(hex(a.finalHash), hex(b.finalHash), 'the same state');
  assert.deepEqual(a.outputs, b.outputs, 'the same outputs');
});

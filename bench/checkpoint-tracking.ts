/**
 * Dirty-page tracking for checkpoint mode, measured both ways (a script, not a test):
 * `node dist/bench/checkpoint-tracking.js` (docs/PERFORMANCE.md, "Checkpoint mode").
 *
 * 1. The store barrier's cost to the guest alone: the kernels of guests/bench/kernels.json (arguments
 *    scaled by BENCH_CT_SCALE, default 0.25) and the kv guest on a scripted workload (recordRun, the VMM's
 *    record path, BENCH_CT_KV_OPS commands), instrumented without and with the barrier, interleaved,
 *    median of BENCH_CT_RUNS (default 3) runs each.
 * 2. Capture time per checkpoint against memory size (4, 16, 64, 256 MiB) with a few or many pages written
 *    per checkpoint: the guest's pause (the copy into the snapshot buffer the VMM reuses: all of memory,
 *    or only the marked pages) and the encode (DirtyTracker.delta: every page compared with the shadow, or
 *    only the marked pages), over BENCH_CT_CHECKPOINTS checkpoints of random page writes (the same
 *    writes for both; memory filled with non-zero data). JavaScript only: the copy and encode code the
 *    VMM runs, outside a guest.
 *
 * The last line of stdout is one JSON object.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { DirtyTracker } from '../src/checkpoint/delta.js';
import { DEFAULT_VM_CONFIG } from '../src/log/recording.js';
import { DirtyPages } from '../src/machine/dirty-pages.js';
import { ScriptedEnv } from '../src/machine/env.js';
import { finishLoad } from '../src/machine/guest-abi.js';
import { FUEL_GLOBAL, MEMORY_EXPORT, START_EXPORT, instrument } from '../src/machine/instrument.js';
import { compileGuest } from '../src/machine/machine.js';
import { recordRun } from '../src/machine/runner.js';
import { kvWorkload } from '../src/machine/workloads.js';
import { median, rng, round } from './stats.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = HERE.endsWith(join('dist', 'bench')) ? join(HERE, '..', '..') : join(HERE, '..');
const num = (name: string, d: number, min: number, max: number): number => Math.min(max, Math.max(min, Number(process.env[name] ?? d) || d));
const RUNS = num('BENCH_CT_RUNS', 3, 1, 15);
const SCALE = num('BENCH_CT_SCALE', 0.25, 0.01, 1);
const KV_OPS = num('BENCH_CT_KV_OPS', 20_000, 100, 1_000_000);
const CHECKPOINTS = num('BENCH_CT_CHECKPOINTS', 30, 3, 1000);
const log = (m: string): void => void process.stderr.write(`[checkpoint-tracking] ${m}\n`);

type Fn = (...a: number[]) => unknown;
function kernelInstance(bytes: Uint8Array, barrier: boolean): { call: (name: string, args: number[]) => number } {
  const inst = instrument(bytes, barrier ? { dirtyPages: true } : {});
  let memory: WebAssembly.Memory | undefined;
  const dirty = barrier ? new DirtyPages() : undefined;
  const instance = new WebAssembly.Instance(compileGuest(inst.binary), {
    env: { abort: () => { throw new Error('abort'); } },
    ftvm_internal: {
      budget: (k: number) => BigInt(Math.max(k, 10_000_000)), // the VMM's default slice order of magnitude
      depth_exceeded: () => { throw new Error('depth'); },
      memory_grow: (d: number) => { try { return memory!.grow(d >>> 0); } catch { return -1; } },
    },
    ...(dirty !== undefined ? { ftvm_dirty: dirty.imports } : {}),
  });
  const ex = instance.exports;
  memory = ex[MEMORY_EXPORT] as WebAssembly.Memory;
  const fuel = ex[FUEL_GLOBAL] as WebAssembly.Global;
  const metered = (f: () => unknown): unknown => { fuel.value = 10_000_000n; return f(); };
  if (inst.hasStart) metered(() => (ex[START_EXPORT] as Fn)());
  if (typeof ex._initialize === 'function') metered(() => (ex._initialize as Fn)());
  return {
    call: (name, args) => {
      const t0 = performance.now();
      metered(() => (ex[name] as Fn)(...args));
      return performance.now() - t0;
    },
  };
}

function guestAlone(): Record<string, unknown> {
  const specs = JSON.parse(readFileSync(join(ROOT, 'guests', 'bench', 'kernels.json'), 'utf8')) as Array<{ module: string; export: string; args: number[] }>;
  const out: Record<string, unknown> = {};
  const ratios: number[] = [];
  for (const s of specs) {
    const bytes = new Uint8Array(readFileSync(join(ROOT, 'build', 'guests', `${s.module}.wasm`)));
    const args = s.args.map((a) => (s.export === 'fib' ? Math.max(20, Math.round(a - 2)) : Math.max(1, Math.round(a * SCALE))));
    const plain = kernelInstance(bytes, false);
    const barrier = kernelInstance(bytes, true);
    plain.call(s.export, args);
    barrier.call(s.export, args); // warm-up
    const p: number[] = [];
    const b: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      p.push(plain.call(s.export, args));
      b.push(barrier.call(s.export, args));
    }
    const ratio = median(b) / median(p);
    ratios.push(ratio);
    out[`${s.module}.${s.export}`] = { plain_ms: round(median(p), 1), barrier_ms: round(median(b), 1), ratio: round(ratio, 3) };
    log(`${s.module}.${s.export}(${args.join(',')}): plain ${median(p).toFixed(1)} ms, barrier ${median(b).toFixed(1)} ms → ×${ratio.toFixed(3)}`);
  }
  out.kernels_geomean_ratio = round(Math.exp(ratios.reduce((a, r) => a + Math.log(r), 0) / ratios.length), 3);
  // The kv guest through the VMM's record path.
  const original = new Uint8Array(readFileSync(join(ROOT, 'build', 'guests', 'kv.wasm')));
  const gp = finishLoad(original, instrument(original));
  const gb = finishLoad(original, instrument(original, { dirtyPages: true }));
  const run = (g: typeof gp): number => {
    const env = new ScriptedEnv(kvWorkload({ ops: KV_OPS, conns: 4, seed: 7 }), { seed: 7 });
    const t0 = performance.now();
    recordRun(g, DEFAULT_VM_CONFIG, env);
    return performance.now() - t0;
  };
  run(gp);
  run(gb);
  const p: number[] = [];
  const b: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    p.push(run(gp));
    b.push(run(gb));
  }
  out.kv_record = { ops: KV_OPS, plain_ms: round(median(p), 1), barrier_ms: round(median(b), 1), ratio: round(median(b) / median(p), 3) };
  log(`kv guest, ${KV_OPS} commands through recordRun: plain ${median(p).toFixed(1)} ms, barrier ${median(b).toFixed(1)} ms → ×${(median(b) / median(p)).toFixed(3)}`);
  return out;
}

function capture(): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const mib of [4, 16, 64, 256]) {
    for (const writes of [8, 256]) {
      const bytes = mib << 20;
      const pages = bytes >> 12;
      const mem = new Uint8Array(bytes);
      const r = rng(mib * 1000 + writes);
      for (let i = 0; i < bytes; i += 1024) mem[i] = 1 + Math.floor(r() * 255);
      const intoA = new Uint8Array(bytes).fill(1);
      const intoB = new Uint8Array(bytes).fill(1);
      const cmp = new DirtyTracker();
      const bar = new DirtyTracker();
      const map = new Uint8Array(pages);
      // The first checkpoint is a full copy and a full comparison for both (not measured).
      intoA.set(mem);
      intoB.set(mem);
      cmp.delta(intoA);
      bar.delta(intoB, { seq: 1 });
      const pa: number[] = [], ea: number[] = [], pb: number[] = [], eb: number[] = [];
      for (let c = 0; c < CHECKPOINTS; c++) {
        map.fill(0);
        for (let w = 0; w < writes; w++) {
          const p = Math.floor(r() * pages);
          { const at = p * 4096 + Math.floor(r() * 4096); mem[at] = mem[at]! ^ 0x5a; }
          map[p] = 1;
        }
        // compare: copy all of memory, compare every page.
        let t0 = performance.now();
        intoA.set(mem);
        let t1 = performance.now();
        cmp.delta(intoA);
        let t2 = performance.now();
        pa.push(t1 - t0);
        ea.push(t2 - t1);
        // barrier: copy the marked pages (runs at once, as Machine.snapshot does), encode the marked pages.
        t0 = performance.now();
        const taken = map.slice();
        for (let p = 0; p < pages; p++) {
          if (taken[p] === 0) continue;
          let q = p + 1;
          while (q < pages && taken[q] !== 0) q++;
          intoB.set(mem.subarray(p * 4096, q * 4096), p * 4096);
          p = q;
        }
        t1 = performance.now();
        bar.delta(intoB, { map: taken, seq: c + 2 });
        t2 = performance.now();
        pb.push(t1 - t0);
        eb.push(t2 - t1);
      }
      if (!Buffer.from(cmp.view).equals(Buffer.from(bar.view)) || !Buffer.from(bar.view).equals(Buffer.from(mem))) throw new Error('the two trackers disagree');
      const key = `mem_${mib}mib_writes_${writes}`;
      out[key] = {
        compare_pause_ms: round(median(pa), 3),
        compare_encode_ms: round(median(ea), 3),
        barrier_pause_ms: round(median(pb), 3),
        barrier_encode_ms: round(median(eb), 3),
      };
      log(`${mib} MiB, ${writes} pages written per checkpoint: compare pause ${median(pa).toFixed(3)} + encode ${median(ea).toFixed(3)} ms; barrier pause ${median(pb).toFixed(3)} + encode ${median(eb).toFixed(3)} ms`);
    }
  }
  return out;
}

const result = { guest_alone: guestAlone(), capture_per_checkpoint: capture(), config: { runs: RUNS, scale: SCALE, kv_ops: KV_OPS, checkpoints: CHECKPOINTS } };
console.log(JSON.stringify(result));

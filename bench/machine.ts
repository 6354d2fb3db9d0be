/**
 * Machine benchmark (a script, not a test): `npm run bench:machine`.
 *
 * 1. Instrumentation overhead: every kernel of guests/bench/kernels.json runs plain and instrumented
 *    (both compiled by compileGuest, i.e. V8's optimizing tier only), interleaved, median of N runs.
 *    The instrumented instance gets a budget callback that grants `slice` units per call, as the VMM's
 *    record mode does; it is measured with the VMM default slice (DEFAULT_SLICE_UNITS, the headline,
 *    realistic figure) and with a big slice (budget calls become negligible).
 * 2. Record and replay throughput (log entries per wall second) on a kv workload (RESP SET/GET/INCR
 *    over a few connections) and on the chaos guest; the replay's final state hash must equal the record's.
 *
 * Progress goes to stderr; the last line of stdout is one JSON object.
 * Environment: BENCH_RUNS (measured runs per variant, default 7, min 5), BENCH_KV_COMMANDS (default 20000).
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { DEFAULT_VM_CONFIG } from '../src/log/recording.js';
import { ScriptedEnv, type ScheduledInput } from '../src/machine/env.js';
import { loadGuest, type LoadedGuest } from '../src/machine/guest.js';
import { FUEL_GLOBAL, DEPTH_GLOBAL, MEMORY_EXPORT, START_EXPORT, instrument } from '../src/machine/instrument.js';
import { DEFAULT_SLICE_UNITS, compileGuest } from '../src/machine/machine.js';
import { recordRun, replayRun } from '../src/machine/runner.js';

// ------------------------------------------------------------------ setup

const HERE = dirname(fileURLToPath(import.meta.url));
/** dist/bench/machine.js → repository root (also works from bench/ with a TS loader). */
const ROOT = HERE.endsWith(join('dist', 'bench')) ? join(HERE, '..', '..') : join(HERE, '..');
const GUEST_DIR = join(ROOT, 'build', 'guests');

const RUNS = Math.max(5, Number(process.env.BENCH_RUNS ?? 7) | 0);
const KV_COMMANDS = Math.max(100, Number(process.env.BENCH_KV_COMMANDS ?? 20_000) | 0);
const BIG_SLICE_UNITS = 2_000_000_000;
const RECORD_REPLAY_REPEATS = 5;
const GOAL_GEOMEAN = 1.15;
const GOAL_WORST = 1.5;

function log(msg: string): void {
  process.stderr.write(`${msg}\n`);
}

function fail(msg: string): never {
  process.stderr.write(`bench:machine FAILED: ${msg}\n`);
  process.exit(1);
}

function readGuest(name: string): Uint8Array {
  const path = join(GUEST_DIR, `${name}.wasm`);
  try {
    return new Uint8Array(readFileSync(path));
  } catch (err) {
    return fail(`cannot read ${path} (${(err as Error).message}); run \`node dist/scripts/build-guests.js\``);
  }
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function geomean(xs: readonly number[]): number {
  return Math.exp(xs.reduce((acc, x) => acc + Math.log(x), 0) / xs.length);
}

const round = (x: number, digits: number): number => Number(x.toFixed(digits));

// ------------------------------------------------------------------ kernels

interface KernelSpec {
  module: string;
  export: string;
  args: number[];
  expect: string;
}

type KernelFn = (...args: number[]) => unknown;

interface PlainModule {
  call(name: string): KernelFn;
}

interface InstrumentedInstance {
  call(name: string): KernelFn;
  /** Units granted per budget call (and initially, before each kernel call). */
  slice: number;
  /** Budget calls and instructions counted since the last reset. */
  budgetCalls: number;
  instructions: number;
  /** Runs fn metered: sets the fuel to `slice`, counts instructions. */
  metered<T>(fn: () => T): T;
}

function abortImport(what: string): (msg: number, file: number, line: number, col: number) => never {
  return (_msg, _file, line, col) => fail(`${what}: guest called abort at ${line}:${col}`);
}

function exportedFunction(exports: WebAssembly.Exports, name: string, what: string): KernelFn {
  const f = exports[name];
  if (typeof f !== 'function') return fail(`${what} does not export function ${name}`);
  return f as unknown as KernelFn;
}

function instantiatePlain(name: string, bytes: Uint8Array): PlainModule {
  const compiled = compileGuest(bytes);
  const instance = new WebAssembly.Instance(compiled, { env: { abort: abortImport(`${name} (plain)`) } });
  const ex = instance.exports;
  // The plain module ran its start function at instantiation; a reactor's _initialize runs here.
  if (typeof ex._initialize === 'function') (ex._initialize as () => void)();
  return { call: (fn) => exportedFunction(ex, fn, `${name} (plain)`) };
}

function instantiateInstrumented(name: string, bytes: Uint8Array): InstrumentedInstance {
  const inst = instrument(bytes);
  const compiled = compileGuest(inst.binary);
  let memory: WebAssembly.Memory | undefined;
  const state: InstrumentedInstance = {
    slice: DEFAULT_SLICE_UNITS,
    budgetCalls: 0,
    instructions: 0,
    call: () => fail('not yet instantiated'),
    metered: () => fail('not yet instantiated'),
  };
  // Like Machine.budget in record mode: count = budgetEnd - fuel; grant max(slice, k) more units.
  let budgetEnd = 0;
  const internal = {
    budget(k: number, fuel: bigint): bigint {
      state.budgetCalls++;
      const count = budgetEnd - Number(fuel);
      const grant = Math.max(state.slice, k);
      budgetEnd = count + grant;
      return BigInt(grant);
    },
    depth_exceeded(): never {
      return fail(`${name} (instrumented): call depth exceeded`);
    },
    memory_grow(delta: number): number {
      try {
        return memory!.grow(delta >>> 0);
      } catch {
        return -1;
      }
    },
  };
  const instance = new WebAssembly.Instance(compiled, {
    env: { abort: abortImport(`${name} (instrumented)`) },
    ftvm_internal: internal,
  });
  const ex = instance.exports;
  memory = ex[MEMORY_EXPORT] as WebAssembly.Memory;
  const fuel = ex[FUEL_GLOBAL] as WebAssembly.Global;
  const depth = ex[DEPTH_GLOBAL] as WebAssembly.Global;
  state.call = (fn) => exportedFunction(ex, fn, `${name} (instrumented)`);
  state.metered = <T>(fn: () => T): T => {
    budgetEnd = state.slice;
    fuel.value = BigInt(state.slice);
    depth.value = 0;
    const r = fn();
    state.instructions += budgetEnd - Number(fuel.value as bigint);
    if ((depth.value as number) !== 0) fail(`${name} (instrumented): call depth ${String(depth.value)} after a call`);
    return r;
  };
  if (inst.hasStart) state.metered(() => exportedFunction(ex, START_EXPORT, `${name} (instrumented)`)());
  if (typeof ex._initialize === 'function') state.metered(() => (ex._initialize as () => void)());
  return state;
}

interface KernelResult {
  name: string;
  plainMs: number;
  instrumentedMs: number;
  instrumentedBigSliceMs: number;
  ratio: number;
  ratioBigSlice: number;
  instructions: number;
  budgetCallsPerRun: number;
  plainRunsMs: number[];
  instrumentedRunsMs: number[];
}

function timeCall(fn: () => unknown): { ms: number; value: unknown } {
  const t0 = performance.now();
  const value = fn();
  return { ms: performance.now() - t0, value };
}

function benchKernels(): KernelResult[] {
  const specs = JSON.parse(readFileSync(join(ROOT, 'guests', 'bench', 'kernels.json'), 'utf8')) as KernelSpec[];
  const modules = new Map<string, { plain: PlainModule; inst: InstrumentedInstance }>();
  for (const s of specs) {
    if (modules.has(s.module)) continue;
    const bytes = readGuest(s.module);
    modules.set(s.module, { plain: instantiatePlain(s.module, bytes), inst: instantiateInstrumented(s.module, bytes) });
  }
  const results: KernelResult[] = [];
  log(`kernels: ${specs.length}, ${RUNS} interleaved runs per variant (plain, instrumented slice ${DEFAULT_SLICE_UNITS}, instrumented slice ${BIG_SLICE_UNITS})`);
  for (const s of specs) {
    const name = `${s.module}.${s.export}(${s.args.join(',')})`;
    const m = modules.get(s.module)!;
    const plainFn = m.plain.call(s.export);
    const instFn = m.inst.call(s.export);
    const runPlain = (): { ms: number; value: unknown } => timeCall(() => plainFn(...s.args));
    const runInst = (slice: number): { ms: number; value: unknown; instructions: number; budgetCalls: number } => {
      m.inst.slice = slice;
      m.inst.instructions = 0;
      m.inst.budgetCalls = 0;
      const r = timeCall(() => m.inst.metered(() => instFn(...s.args)));
      return { ...r, instructions: m.inst.instructions, budgetCalls: m.inst.budgetCalls };
    };
    const check = (value: unknown, variant: string): void => {
      if (String(value) !== s.expect) fail(`${name} ${variant} returned ${String(value)}, expected ${s.expect}`);
    };

    // warm-up (one call each), checking results
    check(runPlain().value, 'plain');
    const warm = runInst(DEFAULT_SLICE_UNITS);
    check(warm.value, 'instrumented');
    check(runInst(BIG_SLICE_UNITS).value, 'instrumented (big slice)');

    const plain: number[] = [];
    const inst: number[] = [];
    const instBig: number[] = [];
    // The first call of a kernel may allocate its scratch buffer: counts are compared from the
    // first measured run on (each kernel re-initialises its input, so later calls repeat exactly).
    let instructions = -1;
    let budgetCalls = warm.budgetCalls;
    for (let i = 0; i < RUNS; i++) {
      const p = runPlain();
      check(p.value, 'plain');
      plain.push(p.ms);
      const d = runInst(DEFAULT_SLICE_UNITS);
      check(d.value, 'instrumented');
      if (instructions >= 0 && d.instructions !== instructions) fail(`${name}: instruction count ${d.instructions} differs from ${instructions} (nondeterministic count)`);
      budgetCalls = d.budgetCalls;
      instructions = d.instructions;
      inst.push(d.ms);
      const b = runInst(BIG_SLICE_UNITS);
      check(b.value, 'instrumented (big slice)');
      if (b.instructions !== instructions) fail(`${name}: instruction count with the big slice ${b.instructions} differs from ${instructions}`);
      instBig.push(b.ms);
    }
    const r: KernelResult = {
      name: `${s.module}.${s.export}`,
      plainMs: median(plain),
      instrumentedMs: median(inst),
      instrumentedBigSliceMs: median(instBig),
      ratio: median(inst) / median(plain),
      ratioBigSlice: median(instBig) / median(plain),
      instructions,
      budgetCallsPerRun: budgetCalls,
      plainRunsMs: plain,
      instrumentedRunsMs: inst,
    };
    results.push(r);
    log(
      `  ${name}: plain ${r.plainMs.toFixed(1)} ms, instrumented ${r.instrumentedMs.toFixed(1)} ms (x${r.ratio.toFixed(3)}), ` +
        `big slice ${r.instrumentedBigSliceMs.toFixed(1)} ms (x${r.ratioBigSlice.toFixed(3)}), ${(instructions / 1e6).toFixed(1)} M units, ${budgetCalls} budget calls`,
    );
  }
  return results;
}

function printKernelTable(results: readonly KernelResult[]): void {
  const header = ['kernel', 'plain ms', 'instr ms', 'ratio', `instr ms (slice ${BIG_SLICE_UNITS.toExponential(0)})`, 'ratio', 'M units', 'budget calls'];
  const rows = results.map((r) => [
    r.name,
    r.plainMs.toFixed(1),
    r.instrumentedMs.toFixed(1),
    r.ratio.toFixed(3),
    r.instrumentedBigSliceMs.toFixed(1),
    r.ratioBigSlice.toFixed(3),
    (r.instructions / 1e6).toFixed(1),
    String(r.budgetCallsPerRun),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const fmt = (row: string[]): string => row.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  console.log(`instrumented / plain (median of ${RUNS} interleaved runs; "instr" uses the VMM default slice of ${DEFAULT_SLICE_UNITS} units)`);
  console.log(fmt(header));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const row of rows) console.log(fmt(row));
}

// ------------------------------------------------------------------ record / replay

interface RecordReplayResult {
  guest: string;
  entries: number;
  recordMs: number;
  replayMs: number;
  recordEventsPerS: number;
  replayEventsPerS: number;
  finalCount: number;
  outputs: number;
}

/** A deterministic RESP workload: `commands` SET/GET/INCR commands over `conns` connections. */
function kvWorkload(commands: number, conns: number, spacing: number): ScheduledInput[] {
  const enc = new TextEncoder();
  const resp = (...args: string[]): Uint8Array =>
    enc.encode(`*${args.length}\r\n${args.map((a) => `$${enc.encode(a).length}\r\n${a}\r\n`).join('')}`);
  const inputs: ScheduledInput[] = [];
  let at = 1000;
  for (let c = 1; c <= conns; c++) inputs.push({ atCount: at, kind: 'open', conn: c });
  let x = 0x2545f491;
  for (let i = 0; i < commands; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    const conn = 1 + (i % conns);
    const key = `key:${x % 1000}`;
    const op = x % 3;
    const data = op === 0 ? resp('SET', key, `value-${i}-${x.toString(16)}`) : op === 1 ? resp('GET', key) : resp('INCR', `counter:${x % 64}`);
    at += spacing;
    inputs.push({ atCount: at, kind: 'data', conn, data });
  }
  at += spacing;
  for (let c = 1; c <= conns; c++) inputs.push({ atCount: at, kind: 'close', conn: c });
  return inputs;
}

function recordReplay(label: string, guest: LoadedGuest, inputs: readonly ScheduledInput[], repeats: number): RecordReplayResult {
  const recMs: number[] = [];
  const repMs: number[] = [];
  let entries = 0;
  let finalCount = 0;
  let outputs = 0;
  let firstHash: string | undefined;
  for (let i = 0; i < repeats; i++) {
    const env = new ScriptedEnv(inputs, { seed: 42, sliceUnits: DEFAULT_SLICE_UNITS });
    const t0 = performance.now();
    const rec = recordRun(guest, DEFAULT_VM_CONFIG, env);
    const t1 = performance.now();
    const rep = replayRun(guest, DEFAULT_VM_CONFIG, rec.entries);
    const t2 = performance.now();
    const recHash = Buffer.from(rec.finalHash).toString('hex');
    const repHash = Buffer.from(rep.finalHash).toString('hex');
    if (rec.result.state === 'halted' && rec.result.halt.kind === 'trap') fail(`${label}: the guest trapped while recording: ${rec.result.halt.message}`);
    if (recHash !== repHash) fail(`${label}: replay final hash ${repHash} differs from the record's ${recHash}`);
    if (rep.finalCount !== rec.finalCount) fail(`${label}: replay ended at instruction ${rep.finalCount}, the record at ${rec.finalCount}`);
    if (rep.consumed !== rec.entries.length) fail(`${label}: replay consumed ${rep.consumed} of ${rec.entries.length} entries`);
    if (rep.outputs.length !== rec.outputs.length) fail(`${label}: replay produced ${rep.outputs.length} outputs, the record ${rec.outputs.length}`);
    if (firstHash === undefined) firstHash = recHash;
    else if (firstHash !== recHash) fail(`${label}: two recordings of the same workload ended with different hashes`);
    entries = rec.entries.length;
    finalCount = rec.finalCount;
    outputs = rec.outputs.length;
    recMs.push(t1 - t0);
    repMs.push(t2 - t1);
    log(`  ${label} #${i + 1}: ${entries} entries, record ${(t1 - t0).toFixed(0)} ms, replay ${(t2 - t1).toFixed(0)} ms, hash ${recHash.slice(0, 16)}… matches`);
  }
  const recordMs = median(recMs);
  const replayMs = median(repMs);
  return {
    guest: label,
    entries,
    recordMs,
    replayMs,
    recordEventsPerS: entries / (recordMs / 1000),
    replayEventsPerS: entries / (replayMs / 1000),
    finalCount,
    outputs,
  };
}

function benchRecordReplay(): { kv: RecordReplayResult; chaos: RecordReplayResult } {
  const kvGuest = loadGuest(readGuest('kv'));
  const chaosGuest = loadGuest(readGuest('chaos'));
  // Warm the JS side of the VMM (codec, machine, env) so the measured runs are not JIT warm-up.
  recordReplay('kv warm-up', kvGuest, kvWorkload(500, 4, 20_000), 1);
  log(`record/replay: kv, ${KV_COMMANDS} RESP commands over 4 connections`);
  const kv = recordReplay('kv', kvGuest, kvWorkload(KV_COMMANDS, 4, 20_000), RECORD_REPLAY_REPEATS);
  log('record/replay: chaos (ends after 2000 timer records)');
  recordReplay('chaos warm-up', chaosGuest, [], 1);
  const chaos = recordReplay('chaos', chaosGuest, [], RECORD_REPLAY_REPEATS);
  for (const r of [kv, chaos]) {
    log(
      `  ${r.guest}: ${r.entries} entries, ${r.outputs} outputs, ${(r.finalCount / 1e6).toFixed(1)} M units; ` +
        `record ${r.recordMs.toFixed(0)} ms = ${Math.round(r.recordEventsPerS)} events/s, replay ${r.replayMs.toFixed(0)} ms = ${Math.round(r.replayEventsPerS)} events/s`,
    );
  }
  return { kv, chaos };
}

// ------------------------------------------------------------------ main

function main(): void {
  const t0 = performance.now();
  const kernels = benchKernels();
  const rr = benchRecordReplay();

  const ratios = kernels.map((k) => k.ratio);
  const bigRatios = kernels.map((k) => k.ratioBigSlice);
  const geo = geomean(ratios);
  const worst = Math.max(...ratios);
  const worstKernel = kernels.find((k) => k.ratio === worst)!.name;
  const geoBig = geomean(bigRatios);
  const worstBig = Math.max(...bigRatios);

  console.log('');
  printKernelTable(kernels);
  console.log('');
  console.log(`geo-mean ${geo.toFixed(3)} (goal <= ${GOAL_GEOMEAN}), worst ${worst.toFixed(3)} ${worstKernel} (goal <= ${GOAL_WORST})`);
  console.log(`with slice ${BIG_SLICE_UNITS}: geo-mean ${geoBig.toFixed(3)}, worst ${worstBig.toFixed(3)}`);
  console.log('');
  console.log(`record / replay (median of ${RECORD_REPLAY_REPEATS}; events = log entries per wall second)`);
  for (const r of [rr.kv, rr.chaos]) {
    console.log(
      `  ${r.guest.padEnd(5)}  ${String(r.entries).padStart(7)} entries  record ${r.recordMs.toFixed(0).padStart(6)} ms ${Math.round(r.recordEventsPerS).toString().padStart(8)} ev/s` +
        `  replay ${r.replayMs.toFixed(0).padStart(6)} ms ${Math.round(r.replayEventsPerS).toString().padStart(8)} ev/s`,
    );
  }
  const goalMet = geo <= GOAL_GEOMEAN && worst <= GOAL_WORST;
  console.log(`goal ${goalMet ? 'met' : 'NOT met'}; total ${((performance.now() - t0) / 1000).toFixed(1)} s`);

  const summary = {
    machine_overhead_geomean: round(geo, 4),
    machine_overhead_worst: round(worst, 4),
    machine_overhead_worst_kernel: worstKernel,
    record_events_per_s: Math.round(rr.kv.recordEventsPerS),
    replay_events_per_s: Math.round(rr.kv.replayEventsPerS),
    kernels: Object.fromEntries(kernels.map((k) => [k.name, round(k.ratio, 4)])),
    kernels_plain_ms: Object.fromEntries(kernels.map((k) => [k.name, round(k.plainMs, 1)])),
    kernels_instrumented_ms: Object.fromEntries(kernels.map((k) => [k.name, round(k.instrumentedMs, 1)])),
    slice_units: DEFAULT_SLICE_UNITS,
    big_slice_units: BIG_SLICE_UNITS,
    machine_overhead_geomean_big_slice: round(geoBig, 4),
    machine_overhead_worst_big_slice: round(worstBig, 4),
    kernels_big_slice: Object.fromEntries(kernels.map((k) => [k.name, round(k.ratioBigSlice, 4)])),
    runs_per_variant: RUNS,
    goal: { geomean: GOAL_GEOMEAN, worst: GOAL_WORST, met: goalMet },
    kv: { commands: KV_COMMANDS, entries: rr.kv.entries, record_ms: round(rr.kv.recordMs, 1), replay_ms: round(rr.kv.replayMs, 1) },
    chaos_record_events_per_s: Math.round(rr.chaos.recordEventsPerS),
    chaos_replay_events_per_s: Math.round(rr.chaos.replayEventsPerS),
    chaos: { entries: rr.chaos.entries, record_ms: round(rr.chaos.recordMs, 1), replay_ms: round(rr.chaos.replayMs, 1) },
    node: process.version,
  };
  console.log(JSON.stringify(summary));
}

main();

/**
 * The simulator's command line (src/sim/index.ts):
 *
 *   npm run sim -- [--mode replay|checkpoint] --seeds N [--seed S] [--break B] [--trace] [--keep-going] [--json]
 *
 * --mode checkpoint: the processes are CheckpointNodes (`ftvm run --mode checkpoint`, `ftvm standby
 * --mode checkpoint`). Breaks (test only): replay release-before-ack|skip-drain|release-unheld|stale-drained,
 * checkpoint release-at-capture|torn-apply.
 *
 * Runs seeds S, S+1, … S+N-1 (S random unless given; one seed with --seed alone). Prints the seed first;
 * a failing seed prints its step, virtual time, message, the tail of its trace and the command that
 * reproduces it. Exit code 1 if any seed failed.
 */
import { randomInt } from 'node:crypto';
import { BREAKS_OF, reproduceCommand, runSeed, type BreakMode, type SimMode, type SimOptions, type SimResult } from '../src/sim/index.js';

interface Args {
  mode: SimMode;
  seeds: number | undefined;
  seed: number | undefined;
  breakMode: BreakMode | undefined;
  trace: boolean;
  keepGoing: boolean;
  json: boolean;
}

function usage(msg: string): never {
  process.stderr.write(`${msg}\nusage: npm run sim -- [--mode replay|checkpoint] --seeds N [--seed S] [--break B] [--trace] [--keep-going] [--json]\n  breaks: replay ${BREAKS_OF.replay.join('|')}; checkpoint ${BREAKS_OF.checkpoint.join('|')}\n`);
  process.exit(2);
}

function parse(argv: string[]): Args {
  const a: Args = { mode: 'replay', seeds: undefined, seed: undefined, breakMode: undefined, trace: false, keepGoing: false, json: false };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!;
    const v = (): string => argv[++i] ?? usage(`${k} needs a value`);
    const int = (s: string): number => {
      if (!/^\d+$/.test(s)) usage(`${k}: not a non-negative integer: ${s}`);
      const n = Number(s);
      if (n > 0xffffffff) usage(`${k}: at most ${0xffffffff}`);
      return n;
    };
    if (k === '--seeds') a.seeds = int(v());
    else if (k === '--seed') a.seed = int(v());
    else if (k === '--mode') {
      const m = v();
      if (m !== 'replay' && m !== 'checkpoint') usage(`--mode: replay or checkpoint, not ${m}`);
      a.mode = m;
    } else if (k === '--break') {
      a.breakMode = v() as BreakMode;
    } else if (k === '--trace') a.trace = true;
    else if (k === '--keep-going') a.keepGoing = true;
    else if (k === '--json') a.json = true;
    else usage(`unknown argument ${k}`);
  }
  if (a.breakMode !== undefined && !BREAKS_OF[a.mode].includes(a.breakMode)) usage(`--break in ${a.mode} mode: ${BREAKS_OF[a.mode].join(', ')}, not ${a.breakMode}`);
  return a;
}

async function report(r: SimResult, opts: SimOptions, traceAll: boolean): Promise<void> {
  const out = process.stdout;
  out.write(`\nFAIL seed ${r.seed} at step ${r.step} (virtual time ${r.timeMs.toFixed(3)} ms):\n  ${r.message}\n`);
  // Re-run the seed with tracing on: it replays exactly, so the trace is this failure's.
  const traced = await runSeed(r.seed, { ...opts, trace: true });
  if (traced.step !== r.step || traced.message !== r.message) out.write('  (!) the traced re-run did not reproduce the same failure\n');
  const lines = traceAll ? traced.trace : traced.trace.slice(-40);
  out.write(`  trace${traceAll ? '' : ` (last ${lines.length} lines; --trace for all)`}:\n`);
  for (const l of lines) out.write(`    ${l}\n`);
  out.write(`  reproduce: ${reproduceCommand(r.seed, opts)}\n`);
}

async function main(): Promise<void> {
  const a = parse(process.argv.slice(2));
  const opts: SimOptions = { ...(a.mode !== 'replay' ? { mode: a.mode } : {}), ...(a.breakMode ? { breakMode: a.breakMode } : {}) };
  const count = a.seeds ?? (a.seed !== undefined ? 1 : 1);
  const base = a.seed ?? randomInt(0, 0xffffffff);
  process.stdout.write(`seed ${base}${count > 1 ? ` (seeds ${base}..${base + count - 1})` : ''}${a.mode !== 'replay' ? ` mode=${a.mode}` : ''}${a.breakMode ? ` break=${a.breakMode}` : ''}\n`);
  const t0 = performance.now();
  let failed = 0;
  let steps = 0;
  let virtualMs = 0;
  let failovers = 0;
  let joins = 0;
  const paths = { drainWaits: 0, snapshotsFailed: 0, serviceBindRetries: 0, divergedHalts: 0, probesRefused: 0, probesAnswered: 0, probesUnanswered: 0, checkpointsCaptured: 0, checkpointGoLivesChecked: 0 };
  let completed = 0;
  let maxEpoch = 0;
  const faults: Record<string, number> = {};
  let firstFailure: SimResult | undefined;
  for (let i = 0; i < count; i++) {
    const seed = (base + i) >>> 0;
    const r = await runSeed(seed, { ...opts, trace: a.trace && count === 1 });
    steps += r.stats.steps;
    virtualMs += r.stats.virtualMs;
    failovers += r.stats.failovers;
    completed += r.stats.completed;
    maxEpoch = Math.max(maxEpoch, r.stats.maxEpoch);
    for (const [k, n] of Object.entries(r.stats.faults)) faults[k] = (faults[k] ?? 0) + n;
    joins += r.stats.joinsArmed;
    for (const k of Object.keys(paths) as Array<keyof typeof paths>) paths[k] += r.stats[k];
    if (count === 1 && a.trace && r.ok) for (const l of r.trace) process.stdout.write(`  ${l}\n`);
    if (count === 1) process.stdout.write(`trace hash ${r.traceHash}\n`);
    if (!r.ok) {
      failed++;
      firstFailure ??= r;
      await report(r, opts, a.trace);
      if (!a.keepGoing) break;
    }
    if (count >= 100 && (i + 1) % Math.max(100, Math.floor(count / 20)) === 0 && process.stdout.isTTY) {
      process.stdout.write(`  ${i + 1}/${count} seeds, ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
    }
  }
  const secs = (performance.now() - t0) / 1000;
  const ran = failed > 0 && !a.keepGoing ? (firstFailure!.seed - base + 1) >>> 0 : count;
  const summary = {
    seeds: ran,
    failed,
    seconds: +secs.toFixed(2),
    seedsPerSecond: +(ran / secs).toFixed(1),
    steps,
    virtualSeconds: +(virtualMs / 1000).toFixed(1),
    failovers,
    joinsArmed: joins,
    paths,
    maxEpoch,
    completedRequests: completed,
    faults,
    ...(firstFailure ? { firstFailure: { seed: firstFailure.seed, step: firstFailure.step, message: firstFailure.message, reproduce: reproduceCommand(firstFailure.seed, opts) } } : {}),
  };
  if (a.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
  else {
    process.stdout.write(
      `${failed === 0 ? 'PASS' : 'FAIL'}: ${ran} seed(s), ${failed} failed, ${secs.toFixed(1)} s (${summary.seedsPerSecond} seeds/s), ${steps} steps, ${summary.virtualSeconds} s of virtual time; ` +
        `${failovers} go-lives, ${joins} ${a.mode === 'checkpoint' ? 're-replications (standbys made backups by a base checkpoint)' : 'pairs re-armed'}, max epoch ${maxEpoch}, ${completed} client requests completed\n  faults: ${Object.entries(faults)
          .sort()
          .map(([k, n]) => `${k} ${n}`)
          .join(', ')}\n  driver paths: ${Object.entries(paths)
          .map(([k, n]) => `${k} ${n}`)
          .join(', ')}\n`,
    );
  }
  process.exitCode = failed === 0 ? 0 : 1;
}

await main();

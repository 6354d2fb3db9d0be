/**
 * The simulator's checkpoint variant (`npm run sim -- --mode checkpoint`, issue #17): worlds whose
 * processes are CheckpointNodes (primary, backup, standbys), the real checkpoint drivers, cores and wire
 * encoding over the same simulated environment, nemesis and clients as replay mode. Seeds pass every
 * checker (the output rule against applied checkpoints, nothing released lost at a go-live, one live
 * primary per epoch, and: a backup goes live only from exactly a state the primary captured for that
 * checkpoint); a seed replays bit for bit; each test-only break is caught and its seed reproduces it.
 * (The large run is `npm run sim -- --mode checkpoint --seeds 2000`; this file keeps to ~25 s of CPU.)
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { reproduceCommand, runSeed, type BreakMode, type SimOptions, type SimResult } from '../src/sim/index.js';
import { FtvmError } from '../src/util/errors.js';

const CKPT: SimOptions = { mode: 'checkpoint' };
const FIRST = 1;
const SEEDS = 120;

test(`simulation, checkpoint mode: ${SEEDS} seeds pass every checker, running CheckpointNodes`, async (t) => {
  const t0 = performance.now();
  let steps = 0;
  let goLives = 0;
  let checked = 0;
  let joins = 0;
  let captured = 0;
  let completed = 0;
  const faults: Record<string, number> = {};
  for (let seed = FIRST; seed < FIRST + SEEDS; seed++) {
    const r = await runSeed(seed, CKPT);
    assert.ok(r.ok, `seed ${seed} failed at step ${r.step} (${r.timeMs.toFixed(3)} ms): ${r.message}\n  reproduce: ${reproduceCommand(seed, CKPT)}`);
    steps += r.stats.steps;
    goLives += r.stats.failovers;
    checked += r.stats.checkpointGoLivesChecked;
    joins += r.stats.joinsArmed;
    captured += r.stats.checkpointsCaptured;
    completed += r.stats.completed;
    for (const [k, n] of Object.entries(r.stats.faults)) faults[k] = (faults[k] ?? 0) + n;
  }
  // Failover and re-replication happen, not just a quiet pair; every go-live was compared with its capture.
  assert.ok(goLives > SEEDS / 3, `only ${goLives} go-lives in ${SEEDS} seeds`);
  assert.equal(checked, goLives, 'every go-live from a checkpoint was checked against the state its primary captured');
  assert.ok(joins > SEEDS / 2, `only ${joins} standbys made backups in ${SEEDS} seeds`);
  assert.ok(captured > 50 * SEEDS, `only ${captured} checkpoints captured in ${SEEDS} seeds`);
  for (const k of ['kill-9', 'power-loss', 'pause', 'channel-cut', 'partition', 'partition-one-way', 'arbiter-partition', 'arbiter-down']) assert.ok((faults[k] ?? 0) > 0, `no ${k} injected`);
  t.diagnostic(`${SEEDS} seeds, ${steps} steps, ${goLives} go-lives, ${joins} re-replications, ${captured} checkpoints, ${completed} requests, ${((performance.now() - t0) / 1000).toFixed(1)} s`);
});

test('simulation, checkpoint mode: a seed replays bit for bit (same trace, same trace hash)', async () => {
  const a = await runSeed(4242, { ...CKPT, trace: true });
  const b = await runSeed(4242, { ...CKPT, trace: true });
  assert.ok(a.ok, a.message);
  assert.ok(a.stats.checkpointsCaptured > 0);
  assert.deepEqual(b.stats, a.stats);
  assert.deepEqual(b.trace, a.trace);
  assert.equal(b.traceHash, a.traceHash);
  const c = await runSeed(4242, CKPT); // tracing changes nothing the run does
  assert.equal(c.traceHash, a.traceHash);
  const replay = await runSeed(4242); // the same seed in replay mode is another world
  assert.notEqual(replay.traceHash, a.traceHash);
});

/** Each break, the checker that must catch it, and the seeds searched (the first failing seed is low). */
const BREAKS: Array<{ breakMode: BreakMode; what: string; expected: RegExp; seeds: number }> = [
  // The primary core releases an epoch's outputs when its checkpoint is captured, not acknowledged.
  { breakMode: 'release-at-capture', what: 'core', expected: /^\(b\) output rule: /, seeds: 20 },
  // The replica applies a checkpoint torn (its last changed page keeps the old bytes) and counts it applied.
  { breakMode: 'torn-apply', what: 'replica', expected: /^\(k\) partial checkpoint: /, seeds: 40 },
];

for (const { breakMode, what, expected, seeds } of BREAKS) {
  test(`simulation, checkpoint mode: a broken ${what} (${breakMode}) is caught, and its seed reproduces the failure exactly`, async (t) => {
    const opts: SimOptions = { ...CKPT, breakMode };
    let found: SimResult | undefined;
    for (let seed = 1; seed <= seeds && found === undefined; seed++) {
      const r = await runSeed(seed, opts);
      if (!r.ok) found = r;
    }
    assert.ok(found, `${breakMode}: no seed in 1..${seeds} failed`);
    assert.match(found.message, expected);
    const again = await runSeed(found.seed, opts);
    assert.equal(again.ok, false);
    assert.equal(again.step, found.step);
    assert.equal(again.message, found.message);
    assert.equal(again.traceHash, found.traceHash);
    // The same seed without the break passes: the checker caught the break, nothing else.
    const clean = await runSeed(found.seed, CKPT);
    assert.ok(clean.ok, clean.message);
    t.diagnostic(`${breakMode}: caught by seed ${found.seed} at step ${found.step}: ${found.message}`);
  });
}

test('simulation, checkpoint mode: a break of the other mode is refused (FTVM_ERR_BAD_ARGUMENT)', async () => {
  await assert.rejects(runSeed(1, { ...CKPT, breakMode: 'release-before-ack' }), (e: unknown) => e instanceof FtvmError && e.code === 'FTVM_ERR_BAD_ARGUMENT');
  await assert.rejects(runSeed(1, { breakMode: 'torn-apply' }), (e: unknown) => e instanceof FtvmError && e.code === 'FTVM_ERR_BAD_ARGUMENT');
});

test('simulation, checkpoint mode: the command line prints the seed and mode first and, on failure, the command that reproduces it', () => {
  const script = fileURLToPath(new URL('../scripts/sim.js', import.meta.url));
  let out = '';
  let code = 0;
  try {
    out = execFileSync(process.execPath, [script, '--mode', 'checkpoint', '--seed', '1', '--break', 'release-at-capture'], { encoding: 'utf8' });
  } catch (err) {
    const e = err as { status: number; stdout: string };
    code = e.status;
    out = e.stdout;
  }
  assert.equal(code, 1);
  assert.match(out.split('\n')[0]!, /^seed 1 mode=checkpoint break=release-at-capture$/);
  assert.match(out, /FAIL seed 1 at step \d+/);
  assert.ok(out.includes('reproduce: npm run sim -- --seed 1 --mode checkpoint --break release-at-capture'), out);
});

/** Driver bugs the checkpoint variant found (fixed on this branch): each seed failed before its fix. */
const FOUND: Array<{ seed: number; what: string }> = [
  // A standby's joining connection replaced by the same primary's reconnection returned the standby to the
  // pool while its backup driver (orphaned, its timer stopped) kept acknowledging: "(b) output rule".
  { seed: 65, what: 'a replaced joining connection orphaned the standby\'s backup driver' },
  { seed: 1293, what: 'a replaced joining connection orphaned the standby\'s backup driver' },
  // A dial in flight when the primary won its claim opened later and was taken for its backup's
  // reconnection, replacing the recruited backup with a standby of the old epoch: "(k) ... another epoch".
  { seed: 1198, what: 'a closed dialer emitted the connection it was still dialing' },
  // A primary paused through a failover (fenced, not knowing it) redialed its --peer, where the old
  // backup's host now ran a fresh standby, which made itself that primary's backup and acknowledged: the
  // fenced primary released outputs the live lineage never had: "(lost)".
  { seed: 501604, what: 'a fenced primary took an unrecruited standby at its old backup\'s address for its backup' },
];

for (const { seed, what } of FOUND) {
  test(`simulation, checkpoint mode: seed ${seed} passes (${what})`, async () => {
    const r = await runSeed(seed, CKPT);
    assert.ok(r.ok, `seed ${seed} failed at step ${r.step}: ${r.message}\n  reproduce: ${reproduceCommand(seed, CKPT)}`);
  });
}

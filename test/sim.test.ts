/**
 * The deterministic simulator (src/sim): a few hundred seeds through every checker; each deliberately
 * broken core (the cores' test-only flags) caught within 1,000 seeds, its seed reproducing the same
 * failure exactly; the command line prints the seed first and the reproducing command on failure.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { reproduceCommand, runSeed, type BreakMode, type SimOptions, type SimResult } from '../src/sim/index.js';

const BASE: SimOptions = {};
const SEEDS = 300;

test(`simulation: ${SEEDS} seeds pass every checker`, (t) => {
  const t0 = performance.now();
  let steps = 0;
  let goLives = 0;
  let armed = 0;
  for (let seed = 1; seed <= SEEDS; seed++) {
    const r = runSeed(seed, BASE);
    assert.ok(r.ok, `seed ${seed} failed at step ${r.step} (${r.timeMs.toFixed(3)} ms): ${r.message}\n  reproduce: ${reproduceCommand(seed, BASE)}`);
    steps += r.stats.steps;
    goLives += r.stats.failovers;
    armed += r.stats.joinsArmed;
  }
  // The runs must exercise failover and re-replication, not just a quiet pair.
  assert.ok(goLives > SEEDS / 2, `only ${goLives} go-lives in ${SEEDS} seeds`);
  assert.ok(armed > SEEDS / 2, `only ${armed} re-armed pairs in ${SEEDS} seeds`);
  t.diagnostic(`${SEEDS} seeds, ${steps} steps, ${goLives} go-lives, ${armed} re-armed pairs, ${((performance.now() - t0) / 1000).toFixed(1)} s`);
});

test('simulation: a seed replays exactly', () => {
  const a = runSeed(4242, { ...BASE, trace: true });
  const b = runSeed(4242, { ...BASE, trace: true });
  assert.deepEqual(b.stats, a.stats);
  assert.deepEqual(b.trace, a.trace);
});

const EXPECTED: Record<BreakMode, RegExp> = {
  // The output rule's checker, at the release itself.
  'release-before-ack': /^\(b\) output rule: /,
  // A replica that goes live without its held log loses outputs the primary released.
  'skip-drain': /^\(lost\) /,
};

for (const breakMode of ['release-before-ack', 'skip-drain'] as const) {
  test(`simulation: a broken core (${breakMode}) is caught within 1,000 seeds, and its seed reproduces the failure exactly`, (t) => {
    const opts: SimOptions = { ...BASE, breakMode };
    let found: SimResult | undefined;
    for (let seed = 1; seed <= 1000 && found === undefined; seed++) {
      const r = runSeed(seed, opts);
      if (!r.ok) found = r;
    }
    assert.ok(found, `${breakMode}: no seed in 1..1000 failed`);
    assert.match(found.message, EXPECTED[breakMode]);
    const again = runSeed(found.seed, opts);
    assert.equal(again.ok, false);
    assert.equal(again.step, found.step);
    assert.equal(again.timeMs, found.timeMs);
    assert.equal(again.message, found.message);
    t.diagnostic(`${breakMode}: caught by seed ${found.seed} at step ${found.step}: ${found.message}`);
  });
}

test('simulation: the command line prints the seed first and, on failure, the command that reproduces it', () => {
  const script = fileURLToPath(new URL('../scripts/sim.js', import.meta.url));
  let out = '';
  let code = 0;
  try {
    out = execFileSync(process.execPath, [script, '--seed', '1', '--break', 'release-before-ack'], { encoding: 'utf8' });
  } catch (err) {
    const e = err as { status: number; stdout: string };
    code = e.status;
    out = e.stdout;
  }
  assert.equal(code, 1);
  assert.match(out.split('\n')[0]!, /^seed 1\b/);
  assert.match(out, /FAIL seed 1 at step \d+/);
  assert.ok(out.includes('reproduce: npm run sim -- --seed 1 --break release-before-ack'), out);
});

test('simulation: a primary whose timed-out advance() had committed is armed, not fenced (seed 154 found it)', () => {
  // Before the fix, PrimaryNode.arm() took the record {epoch + 1, this node} for a fence and halted.
  const r = runSeed(154);
  assert.ok(r.ok, `${r.message}\n  reproduce: ${reproduceCommand(154)}`);
});

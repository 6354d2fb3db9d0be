/** Snapshot at an idle point, restore into a fresh machine, continue: equal to never having stopped. */
import fc from 'fast-check';
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DEFAULT_VM_CONFIG } from '../src/log/recording.js';
import { ScriptedEnv } from '../src/machine/env.js';
import type { Snapshot } from '../src/machine/machine.js';
import { recordRun, replayRun } from '../src/machine/runner.js';
import { chaosWorkload, kvWorkload, spinWorkload } from '../src/machine/workloads.js';
import { guest, hex } from './helpers.js';

const cfg = DEFAULT_VM_CONFIG;

/** A ScriptedEnv that, at its k-th idle wait, snapshots the machine and ends the run. */
class StopAtIdle extends ScriptedEnv {
  snap: Snapshot | undefined;
  waits = 0;
  take: (() => Snapshot) | undefined;
  constructor(inputs: ConstructorParameters<typeof ScriptedEnv>[0], opts: ConstructorParameters<typeof ScriptedEnv>[1], private readonly stopAt: number) {
    super(inputs, opts);
  }
  override waitForWork(count: number, deadline: number | undefined): boolean {
    this.waits++;
    if (this.snap === undefined && this.waits === this.stopAt && this.take) {
      this.snap = this.take();
      return false;
    }
    return super.waitForWork(count, deadline);
  }
}

for (const [name, make, maxStop] of [
  ['kv', (seed: number) => kvWorkload({ ops: 200, conns: 3, seed }), 30],
  ['spin', (seed: number) => spinWorkload({ ops: 24, seed, work: 500_000 }), 10],
  ['chaos', (seed: number) => chaosWorkload({ ops: 5, seed }), 30],
] as const) {
  test(`${name}: snapshot, restore, continue equals an uninterrupted run (and replay from the snapshot agrees)`, () => {
    let restored = 0;
    fc.assert(
      fc.property(fc.nat(1000), fc.nat(1_000_000), (seed, pick) => {
        const g = guest(name);
        // The uninterrupted run, counting its idle waits so the stop lands on one of them.
        const counter = new StopAtIdle(make(seed), { seed, sliceUnits: 40_000 }, Number.POSITIVE_INFINITY);
        const straight = recordRun(g, cfg, counter);
        const stopAt = 1 + (pick % Math.max(1, Math.min(maxStop, counter.waits - 1)));

        const env = new StopAtIdle(make(seed), { seed, sliceUnits: 40_000 }, stopAt);
        const first = recordRun(g, cfg, env, { onMachine: (m) => (env.take = () => m.snapshot()) });
        if (env.snap === undefined) return; // the run ended before that many idle waits
        const snap = env.snap;
        // Continue the same workload on a fresh machine restored from the snapshot.
        const second = recordRun(g, cfg, env, { from: snap });
        assert.equal(second.finalCount, straight.finalCount);
        assert.equal(hex(second.finalHash), hex(straight.finalHash));
        // The log before the snapshot plus the log after it is the uninterrupted log.
        const joined = [...first.entries.slice(0, snap.seq), ...second.entries];
        assert.equal(joined.length, straight.entries.length);
        // A backup cloned from the snapshot replays the rest of the log to the same state.
        const rep = replayRun(g, cfg, second.entries, snap);
        assert.equal(hex(rep.finalHash), hex(straight.finalHash));
        restored++;
      }),
      { numRuns: 6 },
    );
    assert.ok(restored >= 3, `at least half the runs stopped and restored (${restored})`);
  });
}

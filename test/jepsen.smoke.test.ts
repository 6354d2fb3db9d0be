/**
 * Smoke run of the Jepsen-style test: real processes (embedded arbiter, primary, backup, spare
 * standby), 3 faults, clients recording every call; the history must be linearizable with nothing
 * lost — and a stale read planted in the same history must be caught.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { checkKv, type KvOperation } from '../src/check/kv-model.js';
import { formatCheckResult } from '../src/check/linearizability.js';
import { runJepsen } from '../src/jepsen/run.js';
import { randomSeed } from '../src/testing/prng.js';
import { stopAll } from '../src/testing/processes.js';

after(() => stopAll());

/** A copy where one read returns a value overwritten by a completed write before the read began. */
function plantStaleRead(h: readonly KvOperation[]): KvOperation[] | undefined {
  const ok = h.filter((o) => o.status === 'ok');
  for (let g = Math.floor(h.length / 2); g < h.length; g++) {
    const read = h[g]!;
    if (read.status !== 'ok' || read.input.f !== 'get') continue;
    const key = read.input.key;
    const sets = ok.filter((o) => o.input.f === 'set' && o.input.key === key);
    const s2 = sets.filter((o) => o.return! < read.call).at(-1);
    const s1 = s2 && sets.find((o) => o.return! < s2.call);
    if (!s1 || s1.input.f !== 'set') continue;
    const copy = [...h];
    copy[g] = { ...read, output: s1.input.value };
    return copy;
  }
  return undefined;
}

test('jepsen smoke: 3 faults, 0 violations, 0 lost acknowledged writes', { timeout: 180_000 }, async () => {
  const seed = Number(process.env['FTVM_JEPSEN_SEED'] ?? randomSeed());
  console.log(`# jepsen smoke seed ${seed}`);
  const t0 = Date.now();
  const report = await runJepsen({ faults: 3, seed, arbiter: 'embedded', clients: 4, log: (l) => console.log(`# ${l}`) });
  const r = report.result;
  console.log(`# ${JSON.stringify(r)}`);
  assert.equal(r.error, undefined, r.error);
  assert.equal(r.faults, 3);
  assert.equal(Object.values(r.fault_mix).reduce((a, b) => a + b, 0), 3);
  assert.ok(r.operations > 100, `only ${r.operations} operations`);
  assert.ok(r.ok_operations > 100);
  assert.equal(r.violations, 0, formatCheckResult(report.check));
  assert.equal(r.linearizability, 'ok', formatCheckResult(report.check));
  assert.equal(r.lost_acked_writes, 0, JSON.stringify(report.lost.writes.slice(0, 5)));
  assert.equal(r.final_reads, 8);
  assert.notEqual(r.replicas_agree, false);
  assert.equal(r.passed, true);
  console.log(`# run time ${((Date.now() - t0) / 1000).toFixed(1)} s`);

  // The recorded history is precise enough for the checker to see a planted anomaly.
  const planted = plantStaleRead(report.history);
  assert.ok(planted, 'no read to plant a stale value in');
  assert.equal(checkKv(planted).verdict, 'illegal');
});

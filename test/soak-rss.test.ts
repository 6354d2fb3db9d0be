/**
 * The soak's RSS verdict (analyseRss, src/jepsen/soak.ts) on made-up series: a step at the backup →
 * primary change is not growth; growth within a role is; growth carried from one generation of
 * processes to the next is.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { analyseRss } from '../src/jepsen/soak.js';

const MiB = 2 ** 20;

/** A process sampled every 2 s: `backupS` seconds as a backup, then `primaryS` as the primary; rss(t, role) in MiB. */
function proc(pid: number, backupS: number, primaryS: number, rss: (tS: number, role: 'primary' | 'backup', roleS: number) => number) {
  const samples = [];
  for (let t = 0; t <= backupS + primaryS; t += 2) {
    const role = t < backupS ? ('backup' as const) : ('primary' as const);
    const roleS = role === 'backup' ? t : t - backupS;
    samples.push({ t: t * 1000, rss: rss(t, role, roleS) * MiB, role });
  }
  return { slot: pid % 3, pid, samples };
}

/** Warms up over 8 s in each role, then flat; the primary settles 20 MiB above the backup. */
const healthy = (base: number) => (_t: number, role: 'primary' | 'backup', roleS: number) => (role === 'backup' ? base : base + 20) + 15 * Math.min(1, roleS / 8);

test('soak RSS: a step at the role change passes; the whole-life ratio is reported for reference', () => {
  const r = analyseRss([1, 2, 3, 4, 5].map((pid) => proc(pid, 30, 30, healthy(80))), 10_000);
  assert.equal(r.rss_growth_ratio, 1);
  assert.equal(r.rss_generation_ratio, 1);
  assert.ok(r.rss_life_growth_ratio > 1.2, `life ratio ${r.rss_life_growth_ratio}`);
  assert.equal(r.rss_processes_measured, 10);
  assert.deepEqual(r.rss_peaks_mib.backup, [95, 95, 95, 95, 95]);
  assert.deepEqual(r.rss_peaks_mib.primary, [115, 115, 115, 115, 115]);
});

test('soak RSS: growth within a role after warm-up fails (a leak of 2 MiB/s as the primary)', () => {
  const leaky = (t: number, role: 'primary' | 'backup', roleS: number) => healthy(80)(t, role, roleS) + (role === 'primary' ? 2 * roleS : 0);
  const r = analyseRss([proc(1, 30, 30, healthy(80)), proc(2, 30, 30, leaky)], 10_000);
  assert.ok(r.rss_growth_ratio > 1.2, `growth ratio ${r.rss_growth_ratio}`);
  assert.equal(r.rss_worst?.pid, 2);
  assert.equal(r.rss_worst?.role, 'primary');
  assert.equal(r.rss_worst?.warmup_rss_mib, 135);
  assert.equal(r.rss_worst?.max_rss_mib, 175);
});

test('soak RSS: growth carried across generations fails (each clone 8 MiB larger), though each process is flat', () => {
  const r = analyseRss([0, 1, 2, 3, 4, 5].map((g) => proc(g + 1, 30, 30, healthy(80 + 8 * g))), 10_000);
  assert.equal(r.rss_growth_ratio, 1);
  assert.ok(r.rss_generation_ratio > 1.2, `generation ratio ${r.rss_generation_ratio}`);
});

test('soak RSS: a process measured too briefly after warm-up is not judged', () => {
  const r = analyseRss([proc(1, 12, 0, healthy(80))], 10_000);
  assert.equal(r.rss_processes_measured, 0);
  assert.equal(r.rss_worst, null);
  assert.equal(r.rss_growth_ratio, 1);
});

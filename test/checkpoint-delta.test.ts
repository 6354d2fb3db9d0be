/**
 * Memory deltas for checkpoint replication: applying every delta in turn to the backup's copy gives the
 * primary's memory exactly (random memories, random writes, growth); sparse changes cost little; a
 * damaged delta is refused and changes nothing.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { DirtyTracker, applyDelta } from '../src/checkpoint/delta.js';

test('delta property: the backup that applies every delta holds the primary\'s memory, through writes and growth', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 6 }),
      fc.array(
        fc.record({
          grow: fc.integer({ min: 0, max: 2 }),
          writes: fc.array(fc.record({ at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 300 }) }), { maxLength: 20 }),
        }),
        { minLength: 1, maxLength: 8 },
      ),
      fc.constantFrom(64, 256, 4096),
      (initialKiB, checkpoints, pageBytes) => {
        let primary: Uint8Array = new Uint8Array(initialKiB * 1024);
        let backup: Uint8Array = new Uint8Array(primary.length);
        const t = new DirtyTracker(pageBytes);
        for (const cp of checkpoints) {
          if (cp.grow > 0) {
            const g = new Uint8Array(primary.length + cp.grow * 1024 + 7); // not a page multiple
            g.set(primary);
            primary = g;
          }
          for (const w of cp.writes) {
            const at = w.at % primary.length;
            primary.set(w.bytes.subarray(0, primary.length - at), at);
          }
          backup = applyDelta(backup, t.delta(primary));
          assert.deepEqual(Buffer.from(backup), Buffer.from(primary));
          assert.deepEqual(Buffer.from(t.view), Buffer.from(primary));
        }
      },
    ),
    { numRuns: 150 },
  );
});

test('a one-word change in a 64 MiB memory is a delta of a few dozen bytes', () => {
  const mem = new Uint8Array(64 * 1024 * 1024);
  for (let i = 0; i < mem.length; i += 4093) mem[i] = i & 0xff;
  const t = new DirtyTracker();
  const first = t.delta(mem);
  assert.ok(first.length < mem.length / 10, `the first delta of a sparse memory is small (${first.length} bytes)`);
  mem.set([1, 2, 3, 4], 40_000_000);
  const d = t.delta(mem);
  assert.equal(t.lastStats.dirtyPages, 1);
  assert.ok(d.length < 40, `${d.length} bytes`);
  const backup = applyDelta(new Uint8Array(0), first);
  assert.deepEqual(Buffer.from(applyDelta(backup, d)).subarray(39_999_990, 40_000_010), Buffer.from(mem).subarray(39_999_990, 40_000_010));
});

test('a damaged or hostile delta is refused with FTVM_ERR_SNAPSHOT and changes nothing', () => {
  const mem = new Uint8Array(8192);
  mem.fill(7, 100, 200);
  const t = new DirtyTracker(4096);
  const d = t.delta(mem);
  const backup = new Uint8Array(8192);
  const flipped = Buffer.from(d);
  flipped[3]! ^= 1;
  assert.throws(() => applyDelta(backup, flipped), { code: 'FTVM_ERR_SNAPSHOT', message: /checksum/ });
  assert.ok(backup.every((b) => b === 0), 'nothing applied');
  assert.throws(() => applyDelta(backup, new Uint8Array(3)), { code: 'FTVM_ERR_SNAPSHOT' });
  assert.throws(() => applyDelta(new Uint8Array(16384), d), { code: 'FTVM_ERR_SNAPSHOT', message: /shrinks/ });
  const t2 = new DirtyTracker(4096);
  t2.delta(mem);
  assert.throws(() => t2.delta(new Uint8Array(4096)), { code: 'FTVM_ERR_SNAPSHOT', message: /shrank/ });
});

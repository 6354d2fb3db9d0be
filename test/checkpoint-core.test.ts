/**
 * The checkpoint-replication cores (src/checkpoint/core.ts): the output rule per epoch, bounded
 * in-flight checkpoints (throttle), failure handling at the arbiter, and a randomized run of both cores
 * over a lossy, reordering channel checking that no output is released before the backup holds the
 * checkpoint it came from.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  CheckpointBackupCore,
  CheckpointPrimaryCore,
  type CheckpointBackupAction,
  type CheckpointPrimaryAction,
  type CheckpointPrimaryConfig,
} from '../src/checkpoint/core.js';

const cfg = (o: Partial<CheckpointPrimaryConfig> = {}): CheckpointPrimaryConfig => ({
  epoch: 1,
  intervalMs: 10,
  failTimeoutMs: 100,
  claimRetryMs: 50,
  inFlightMax: 2,
  heldMaxOutputs: 1000,
  eagerWhenOutputsHeld: false,
  alone: false,
  ...o,
});
const of = <T extends { t: string }>(as: T[], t: T['t']): T[] => as.filter((a) => a.t === t);

test('an output waits for the acknowledgement of its own epoch\'s checkpoint, then goes out in order', () => {
  const p = new CheckpointPrimaryCore(cfg());
  p.step({ t: 'peer-open', nowMs: 0 });
  p.step({ t: 'output', id: 1 });
  p.step({ t: 'output', id: 2 });
  const cap = p.step({ t: 'tick', nowMs: 10 });
  assert.deepEqual(of(cap, 'capture'), [{ t: 'capture', checkpoint: 1, base: false }]);
  p.step({ t: 'output', id: 3 }); // produced while checkpoint 1 is being captured: still epoch 1
  assert.deepEqual(of(p.step({ t: 'captured', checkpoint: 1, bytes: 100 }), 'send-checkpoint'), [{ t: 'send-checkpoint', checkpoint: 1, epoch: 1 }]);
  p.step({ t: 'output', id: 4 }); // epoch 2
  assert.deepEqual(of(p.step({ t: 'ack', checkpoint: 1, nowMs: 12 }), 'release'), [{ t: 'release', ids: [1, 2, 3] }]);
  assert.equal(p.status().heldOutputs, 1);
  p.step({ t: 'tick', nowMs: 25 });
  p.step({ t: 'captured', checkpoint: 2, bytes: 10 });
  assert.deepEqual(of(p.step({ t: 'ack', checkpoint: 2, nowMs: 26 }), 'release'), [{ t: 'release', ids: [4] }]);
  assert.throws(() => p.step({ t: 'captured', checkpoint: 9, bytes: 1 }), /captured checkpoint 9/);
});

test('in-flight checkpoints are bounded: the guest is throttled until the backup catches up; a reconnect resends the unacknowledged ones', () => {
  const p = new CheckpointPrimaryCore(cfg({ inFlightMax: 2 }));
  p.step({ t: 'peer-open', nowMs: 0 });
  p.step({ t: 'tick', nowMs: 10 });
  p.step({ t: 'captured', checkpoint: 1, bytes: 1 });
  p.step({ t: 'tick', nowMs: 20 });
  const a = p.step({ t: 'captured', checkpoint: 2, bytes: 1 });
  assert.deepEqual(of(a, 'throttle'), [{ t: 'throttle', on: true }]);
  assert.deepEqual(of(p.step({ t: 'tick', nowMs: 30 }), 'capture'), [], 'no third capture in flight');
  p.step({ t: 'peer-closed' });
  assert.deepEqual(of(p.step({ t: 'peer-open', nowMs: 31 }), 'send-checkpoint').map((x) => (x as { checkpoint: number }).checkpoint), [1, 2]);
  assert.deepEqual(of(p.step({ t: 'ack', checkpoint: 1, nowMs: 32 }), 'throttle'), [{ t: 'throttle', on: false }]);
  assert.equal(p.step({ t: 'ack', checkpoint: 7, nowMs: 33 })[0]?.t, 'halt', 'an ack beyond what was captured is a broken peer');
});

test('silence: the primary claims; winning it continues alone and releases what it held; losing it halts', () => {
  for (const won of [true, false]) {
    const p = new CheckpointPrimaryCore(cfg());
    p.step({ t: 'peer-open', nowMs: 0 });
    p.step({ t: 'output', id: 1 });
    assert.deepEqual(of(p.step({ t: 'tick', nowMs: 101 }), 'claim'), [{ t: 'claim', epoch: 1 }]);
    assert.deepEqual(p.step({ t: 'claim-result', won: false, epoch: 1, unavailable: true }), []);
    assert.deepEqual(of(p.step({ t: 'tick', nowMs: 160 }), 'claim'), [{ t: 'claim', epoch: 1 }], 'retried');
    const r = p.step({ t: 'claim-result', won, epoch: 2 });
    if (won) {
      assert.deepEqual(r.map((x) => x.t), ['alone', 'release']);
      assert.deepEqual(of(p.step({ t: 'output', id: 2 }), 'release'), [{ t: 'release', ids: [2] }]);
    } else {
      assert.equal(r[0]?.t, 'halt');
      assert.deepEqual(p.step({ t: 'output', id: 2 }), []);
    }
  }
});

test('the backup applies checkpoints in order, re-acknowledges resends, drops gaps and old epochs, and goes live from the last one it applied', () => {
  const b = new CheckpointBackupCore({ epoch: 1, failTimeoutMs: 100, claimRetryMs: 50 });
  assert.deepEqual(b.step({ t: 'tick', nowMs: 500 }), [], 'never claims before holding a whole checkpoint');
  assert.deepEqual(b.step({ t: 'checkpoint', checkpoint: 1, epoch: 1, nowMs: 501 }), [{ t: 'apply', checkpoint: 1 }]);
  assert.deepEqual(b.step({ t: 'applied', checkpoint: 1 }), [{ t: 'ack', checkpoint: 1, epoch: 1 }]);
  assert.deepEqual(b.step({ t: 'checkpoint', checkpoint: 1, epoch: 1, nowMs: 502 }), [{ t: 'ack', checkpoint: 1, epoch: 1 }]);
  assert.equal(b.step({ t: 'checkpoint', checkpoint: 3, epoch: 1, nowMs: 503 })[0]?.t, 'drop');
  assert.equal(b.step({ t: 'checkpoint', checkpoint: 2, epoch: 0, nowMs: 503 })[0]?.t, 'drop');
  assert.deepEqual(b.step({ t: 'checkpoint', checkpoint: 2, epoch: 1, nowMs: 504 }), [{ t: 'apply', checkpoint: 2 }]);
  assert.deepEqual(b.step({ t: 'tick', nowMs: 700 }), [], 'no claim while a checkpoint is half applied');
  b.step({ t: 'applied', checkpoint: 2 });
  assert.deepEqual(b.step({ t: 'tick', nowMs: 701 }), [{ t: 'claim', epoch: 1 }]);
  assert.deepEqual(b.step({ t: 'claim-result', won: true, epoch: 2 }), [{ t: 'go-live', epoch: 2, checkpoint: 2 }]);
});

test('the backup heartbeats its last acknowledgement while it hears the primary, so a primary between checkpoints does not claim', () => {
  const b = new CheckpointBackupCore({ epoch: 1, failTimeoutMs: 100, claimRetryMs: 50 });
  assert.deepEqual(b.step({ t: 'tick', nowMs: 0 }), [], 'silent before it ever heard the primary');
  b.step({ t: 'heard', nowMs: 1 });
  assert.deepEqual(b.step({ t: 'tick', nowMs: 2 }), [{ t: 'ack', checkpoint: 0, epoch: 1 }]);
  assert.deepEqual(b.step({ t: 'tick', nowMs: 10 }), [], 'at most every failTimeoutMs / 4');
  b.step({ t: 'checkpoint', checkpoint: 1, epoch: 1, nowMs: 20 });
  b.step({ t: 'applied', checkpoint: 1 });
  assert.deepEqual(b.step({ t: 'tick', nowMs: 27 }), [{ t: 'ack', checkpoint: 1, epoch: 1 }]);
  // The primary a heartbeat keeps alive: it hears the backup with no checkpoint in flight.
  const p = new CheckpointPrimaryCore(cfg({ intervalMs: 1000 }));
  p.step({ t: 'peer-open', nowMs: 0 });
  for (let now = 5; now <= 500; now += 5) {
    if (now % 25 === 0) p.step({ t: 'ack', checkpoint: 0, nowMs: now });
    assert.deepEqual(of(p.step({ t: 'tick', nowMs: now }), 'claim'), [], `no claim at ${now}`);
  }
  assert.deepEqual(b.step({ t: 'tick', nowMs: 200 }), [{ t: 'claim', epoch: 1 }], 'silence past the timeout: no heartbeat, a claim');
});

test('a primary whose backup never connected yet holds its outputs and does not claim', () => {
  const p = new CheckpointPrimaryCore(cfg());
  p.step({ t: 'output', id: 1 });
  for (let now = 0; now <= 1000; now += 10) assert.deepEqual(of(p.step({ t: 'tick', nowMs: now }), 'claim'), [], `no claim at ${now}`);
  assert.equal(p.status().heldOutputs, 1);
  p.step({ t: 'peer-open', nowMs: 1000 });
  assert.deepEqual(of(p.step({ t: 'tick', nowMs: 1101 }), 'claim'), [{ t: 'claim', epoch: 1 }], 'silence after it connected is a failure');
});

test('a failed capture is asked for again when due, with the same checkpoint number', () => {
  const p = new CheckpointPrimaryCore(cfg());
  p.step({ t: 'peer-open', nowMs: 0 });
  assert.deepEqual(of(p.step({ t: 'tick', nowMs: 10 }), 'capture'), [{ t: 'capture', checkpoint: 1, base: false }]);
  assert.deepEqual(of(p.step({ t: 'tick', nowMs: 25 }), 'capture'), [], 'one capture at a time');
  p.step({ t: 'capture-failed', checkpoint: 1 });
  assert.deepEqual(of(p.step({ t: 'tick', nowMs: 30 }), 'capture'), [{ t: 'capture', checkpoint: 1, base: false }]);
  assert.deepEqual(of(p.step({ t: 'captured', checkpoint: 1, bytes: 10 }), 'send-checkpoint'), [{ t: 'send-checkpoint', checkpoint: 1, epoch: 1 }]);
});

test('a refused checkpoint is dropped, the last complete one stays, its resend is applied; a refusal mid-claim-window never lets the backup claim from a half-applied checkpoint', () => {
  const b = new CheckpointBackupCore({ epoch: 1, failTimeoutMs: 100, claimRetryMs: 50 });
  b.step({ t: 'checkpoint', checkpoint: 1, epoch: 1, nowMs: 0 });
  b.step({ t: 'applied', checkpoint: 1 });
  assert.deepEqual(b.step({ t: 'checkpoint', checkpoint: 2, epoch: 1, nowMs: 10 }), [{ t: 'apply', checkpoint: 2 }]);
  assert.deepEqual(b.step({ t: 'refused', checkpoint: 2, reason: 'checksum mismatch' }), [{ t: 'drop', checkpoint: 2, reason: 'checksum mismatch' }]);
  assert.equal(b.status().applied, 1, 'the last complete checkpoint stays');
  // The resend is applied (not mistaken for a duplicate of something applied).
  assert.deepEqual(b.step({ t: 'checkpoint', checkpoint: 2, epoch: 1, nowMs: 20 }), [{ t: 'apply', checkpoint: 2 }]);
  assert.deepEqual(b.step({ t: 'applied', checkpoint: 2 }), [{ t: 'ack', checkpoint: 2, epoch: 1 }]);
  // A refusal followed by silence: the backup claims from its last complete checkpoint (2).
  b.step({ t: 'checkpoint', checkpoint: 3, epoch: 1, nowMs: 30 });
  b.step({ t: 'refused', checkpoint: 3, reason: 'truncated' });
  assert.deepEqual(b.step({ t: 'tick', nowMs: 200 }), [{ t: 'claim', epoch: 1 }]);
  assert.deepEqual(b.step({ t: 'claim-result', won: true, epoch: 2 }), [{ t: 'go-live', epoch: 2, checkpoint: 2 }]);
});

test('randomized: over a lossy, reordering channel with a crash of either side, no output is released before the backup applied its checkpoint', () => {
  fc.assert(
    fc.property(fc.array(fc.nat(1000), { minLength: 50, maxLength: 400 }), fc.integer({ min: 0, max: 2 }), (rolls, crash) => {
      const p = new CheckpointPrimaryCore(cfg({ eagerWhenOutputsHeld: true, inFlightMax: 3 }));
      const b = new CheckpointBackupCore({ epoch: 1, failTimeoutMs: 100, claimRetryMs: 50 });
      const toB: Array<{ checkpoint: number; epoch: number }> = [];
      const toP: number[] = [];
      const producedIn = new Map<number, number>(); // output id → checkpoint it belongs to
      let nextId = 1;
      let now = 0;
      let arbiterEpoch = 1;
      let pAlive = true;
      let bAlive = true;
      let live: 'p' | 'b' | null = 'p';
      const claim = (): { won: boolean; epoch: number } => {
        if (live !== null && arbiterEpoch > 1) return { won: false, epoch: arbiterEpoch };
        arbiterEpoch++;
        return { won: true, epoch: arbiterEpoch };
      };
      const runP = (as: CheckpointPrimaryAction[]): void => {
        for (const a of as) {
          if (a.t === 'send-checkpoint') toB.push({ checkpoint: a.checkpoint, epoch: a.epoch });
          if (a.t === 'capture') runP(p.step({ t: 'captured', checkpoint: a.checkpoint, bytes: 1 }));
          if (a.t === 'release') {
            for (const id of a.ids) {
              const c = producedIn.get(id)!;
              if (!p.status().alone) assert.ok(b.status().applied >= c, `output ${id} of checkpoint ${c} released; backup applied ${b.status().applied}`);
            }
          }
          if (a.t === 'claim') {
            const r = claim();
            if (r.won) live = 'p';
            runP(p.step({ t: 'claim-result', ...r }));
          }
          if (a.t === 'halt' && live === 'p') live = null;
        }
      };
      const runB = (as: CheckpointBackupAction[]): void => {
        for (const a of as) {
          if (a.t === 'apply') runB(b.step({ t: 'applied', checkpoint: a.checkpoint }));
          if (a.t === 'ack') toP.push(a.checkpoint);
          if (a.t === 'claim') {
            const r = claim();
            if (r.won) live = 'b';
            runB(b.step({ t: 'claim-result', ...r }));
          }
          if (a.t === 'go-live') assert.ok(!pAlive || p.status().phase !== 'running' || p.status().alone === false, 'one live replica');
        }
      };
      runP(p.step({ t: 'peer-open', nowMs: 0 }));
      for (let i = 0; i < rolls.length; i++) {
        const r = rolls[i]!;
        now += 1 + (r % 7);
        if (crash === 1 && i === rolls.length >> 1) pAlive = false;
        if (crash === 2 && i === rolls.length >> 1) bAlive = false;
        if (pAlive && r % 3 === 0) {
          const id = nextId++;
          producedIn.set(id, p.status().openCheckpoint);
          runP(p.step({ t: 'output', id }));
        }
        if (r % 5 === 0 && toB.length > 0) toB.splice(r % toB.length, 1); // loss
        if (bAlive && toB.length > 0 && r % 2 === 0) {
          const f = toB.splice(r % 4 === 0 ? toB.length - 1 : 0, 1)[0]!; // reorder sometimes
          runB(b.step({ t: 'checkpoint', ...f, nowMs: now }));
        }
        if (pAlive && toP.length > 0 && r % 2 === 1) runP(p.step({ t: 'ack', checkpoint: toP.shift()!, nowMs: now }));
        if (pAlive && r % 11 === 0) {
          runP(p.step({ t: 'peer-closed' }));
          runP(p.step({ t: 'peer-open', nowMs: now }));
        }
        if (pAlive) {
          if (bAlive) b.step({ t: 'heard', nowMs: now });
          runP(p.step({ t: 'tick', nowMs: now }));
        }
        if (bAlive) {
          if (pAlive) p.step({ t: 'heard', nowMs: now });
          runB(b.step({ t: 'tick', nowMs: now }));
        }
      }
    }),
    { numRuns: 300 },
  );
});

test('a backup that reconnects without the last acknowledged checkpoint gets a base: unacknowledged deltas dropped, its old acknowledgements ignored, held outputs released by the base\'s', () => {
  const p = new CheckpointPrimaryCore(cfg({ inFlightMax: 2 }));
  p.step({ t: 'peer-open', nowMs: 0, applied: 0 });
  p.step({ t: 'tick', nowMs: 10 });
  p.step({ t: 'captured', checkpoint: 1, bytes: 1 });
  p.step({ t: 'ack', checkpoint: 1, nowMs: 11 });
  p.step({ t: 'output', id: 1 });
  p.step({ t: 'tick', nowMs: 20 });
  p.step({ t: 'captured', checkpoint: 2, bytes: 1 });
  p.step({ t: 'output', id: 2 });
  p.step({ t: 'tick', nowMs: 30 });
  const thr = p.step({ t: 'captured', checkpoint: 3, bytes: 1 });
  assert.deepEqual(of(thr, 'throttle'), [{ t: 'throttle', on: true }]);
  p.step({ t: 'peer-closed' });
  // Same backup, as it was: resend 2 and 3 (no base).
  const same = p.step({ t: 'peer-open', nowMs: 31, applied: 1 });
  assert.deepEqual(of(same, 'send-checkpoint').map((x) => (x as { checkpoint: number }).checkpoint), [2, 3]);
  assert.deepEqual(of(same, 'drop-unacked'), []);
  p.step({ t: 'peer-closed' });
  // A restarted backup (it applied nothing): drop 2 and 3, capture a base (numbered 4) at once, unthrottled.
  const r = p.step({ t: 'peer-open', nowMs: 32, applied: 0 });
  assert.deepEqual(of(r, 'send-checkpoint'), []);
  assert.deepEqual(of(r, 'drop-unacked'), [{ t: 'drop-unacked' }]);
  assert.deepEqual(of(r, 'capture'), [{ t: 'capture', checkpoint: 4, base: true }]);
  assert.deepEqual(of(r, 'throttle'), [{ t: 'throttle', on: false }]);
  assert.equal(p.status().baseDue, true);
  // The backup's heartbeat acknowledgement of its old state counts as heard only.
  assert.deepEqual(p.step({ t: 'ack', checkpoint: 0, nowMs: 33 }), []);
  p.step({ t: 'output', id: 3 }); // epoch 4: in the base
  assert.deepEqual(of(p.step({ t: 'captured', checkpoint: 4, bytes: 9 }), 'send-checkpoint'), [{ t: 'send-checkpoint', checkpoint: 4, epoch: 1 }]);
  assert.equal(p.status().baseDue, false);
  assert.equal(p.status().inFlight, 1);
  assert.deepEqual(of(p.step({ t: 'ack', checkpoint: 4, nowMs: 34 }), 'release'), [{ t: 'release', ids: [1, 2, 3] }]);
  // From the base on, deltas again.
  assert.deepEqual(of(p.step({ t: 'tick', nowMs: 50 }), 'capture'), [{ t: 'capture', checkpoint: 5, base: false }]);
});

test('a base is numbered after what the backup applied; a delta captured while the base became due is not sent', () => {
  const p = new CheckpointPrimaryCore(cfg());
  p.step({ t: 'peer-open', nowMs: 0 });
  assert.deepEqual(of(p.step({ t: 'tick', nowMs: 10 }), 'capture'), [{ t: 'capture', checkpoint: 1, base: false }]);
  // A backup of another history (it applied 7) connects while checkpoint 1 is being captured.
  p.step({ t: 'peer-closed' });
  const r = p.step({ t: 'peer-open', nowMs: 11, applied: 7 });
  assert.deepEqual(of(r, 'capture'), [], 'one capture at a time');
  assert.deepEqual(p.step({ t: 'ack', checkpoint: 7, nowMs: 12 }), [], 'no halt: an acknowledgement of its old state');
  assert.deepEqual(of(p.step({ t: 'captured', checkpoint: 1, bytes: 1 }), 'send-checkpoint'), []);
  assert.deepEqual(of(p.step({ t: 'tick', nowMs: 13 }), 'capture'), [{ t: 'capture', checkpoint: 8, base: true }]);
  assert.deepEqual(of(p.step({ t: 'captured', checkpoint: 8, bytes: 1 }), 'send-checkpoint'), [{ t: 'send-checkpoint', checkpoint: 8, epoch: 1 }]);
  p.step({ t: 'ack', checkpoint: 8, nowMs: 14 });
  assert.equal(p.status().ackedCheckpoint, 8);
});

test('the backup core applies a base past a gap (a delta there is dropped), and acknowledges it', () => {
  const b = new CheckpointBackupCore({ epoch: 1, failTimeoutMs: 100, claimRetryMs: 50 });
  assert.deepEqual(b.step({ t: 'checkpoint', checkpoint: 1, epoch: 1, nowMs: 0 }), [{ t: 'apply', checkpoint: 1 }]);
  b.step({ t: 'applied', checkpoint: 1 });
  assert.deepEqual(of(b.step({ t: 'checkpoint', checkpoint: 5, epoch: 1, nowMs: 1 }), 'drop').length, 1);
  assert.deepEqual(b.step({ t: 'checkpoint', checkpoint: 5, epoch: 1, nowMs: 2, base: true }), [{ t: 'apply', checkpoint: 5 }]);
  assert.deepEqual(b.step({ t: 'applied', checkpoint: 5 }), [{ t: 'ack', checkpoint: 5, epoch: 1 }]);
  assert.deepEqual(b.step({ t: 'checkpoint', checkpoint: 3, epoch: 1, nowMs: 3, base: true }), [{ t: 'ack', checkpoint: 5, epoch: 1 }], 'a base not after the applied one: acknowledged again, not applied');
  // A refused base keeps the state; the next one is applied.
  assert.deepEqual(b.step({ t: 'checkpoint', checkpoint: 9, epoch: 1, nowMs: 4, base: true }), [{ t: 'apply', checkpoint: 9 }]);
  assert.equal(of(b.step({ t: 'refused', checkpoint: 9, reason: 'crc' }), 'drop').length, 1);
  assert.equal(b.status().applied, 5);
  assert.deepEqual(b.step({ t: 'checkpoint', checkpoint: 9, epoch: 1, nowMs: 5, base: true }), [{ t: 'apply', checkpoint: 9 }]);
});

test('randomized: a backup that restarts empty (or reconnects after lost acknowledgements) catches up through a base; no output is released before the backup holds its state, and all go out once the channel is quiet', () => {
  fc.assert(
    fc.property(fc.array(fc.nat(1000), { minLength: 50, maxLength: 400 }), (rolls) => {
      const p = new CheckpointPrimaryCore(cfg({ eagerWhenOutputsHeld: true, inFlightMax: 3 }));
      let b = new CheckpointBackupCore({ epoch: 1, failTimeoutMs: 100, claimRetryMs: 50 });
      let toB: Array<{ checkpoint: number; epoch: number; base: boolean }> = [];
      let toP: number[] = [];
      const isBase = new Map<number, boolean>();
      const producedIn = new Map<number, number>();
      let released = 0;
      let nextId = 1;
      let now = 0;
      const runP = (as: CheckpointPrimaryAction[]): void => {
        for (const a of as) {
          if (a.t === 'send-checkpoint') toB.push({ checkpoint: a.checkpoint, epoch: a.epoch, base: isBase.get(a.checkpoint)! });
          if (a.t === 'capture') {
            isBase.set(a.checkpoint, a.base);
            runP(p.step({ t: 'captured', checkpoint: a.checkpoint, bytes: 1 }));
          }
          if (a.t === 'release') {
            for (const id of a.ids) {
              const c = producedIn.get(id)!;
              assert.ok(b.status().applied >= c, `output ${id} of checkpoint ${c} released; backup applied ${b.status().applied}`);
            }
            released += a.ids.length;
          }
          assert.notEqual(a.t, 'halt');
        }
      };
      const runB = (as: CheckpointBackupAction[]): void => {
        for (const a of as) {
          if (a.t === 'apply') runB(b.step({ t: 'applied', checkpoint: a.checkpoint }));
          if (a.t === 'ack') toP.push(a.checkpoint);
        }
      };
      const reconnect = (): void => {
        runP(p.step({ t: 'peer-closed' }));
        toB = [];
        toP = [];
        runP(p.step({ t: 'peer-open', nowMs: now, applied: b.status().applied }));
      };
      runP(p.step({ t: 'peer-open', nowMs: 0, applied: 0 }));
      const step = (r: number, lossy: boolean): void => {
        now += 1 + (r % 7);
        if (lossy && r % 3 === 0) {
          const id = nextId++;
          producedIn.set(id, p.status().openCheckpoint);
          runP(p.step({ t: 'output', id }));
        }
        if (lossy && r % 5 === 0 && toP.length > 0) toP.splice(r % toP.length, 1); // a lost acknowledgement
        if (toB.length > 0 && (!lossy || r % 2 === 0)) runB(b.step({ t: 'checkpoint', ...toB.shift()!, nowMs: now }));
        if (toP.length > 0 && (!lossy || r % 2 === 1)) runP(p.step({ t: 'ack', checkpoint: toP.shift()!, nowMs: now }));
        if (lossy && r % 13 === 0) {
          b = new CheckpointBackupCore({ epoch: 1, failTimeoutMs: 100, claimRetryMs: 50 }); // restarted empty
          reconnect();
        } else if (lossy && r % 11 === 0) {
          reconnect();
        }
        b.step({ t: 'heard', nowMs: now });
        runP(p.step({ t: 'tick', nowMs: now }));
        p.step({ t: 'heard', nowMs: now });
        runB(b.step({ t: 'tick', nowMs: now }));
      };
      for (const r of rolls) step(r, true);
      // A quiet, lossless channel: everything held goes out.
      for (let k = 0; k < 200 && p.status().heldOutputs > 0; k++) step(k, false);
      assert.equal(p.status().heldOutputs, 0, `held ${p.status().heldOutputs} (${JSON.stringify(p.status())}, backup ${JSON.stringify(b.status())})`);
      assert.equal(released, nextId - 1);
    }),
    { numRuns: 300 },
  );
});

test('re-replication: a primary alone releases at once; a recruited standby joins through a base checkpoint, outputs wait for it, `joined` follows its acknowledgement', () => {
  const p = new CheckpointPrimaryCore(cfg({ alone: true }));
  assert.deepEqual(of(p.step({ t: 'output', id: 1 }), 'release'), [{ t: 'release', ids: [1] }], 'alone: no backup to wait for');
  assert.deepEqual(of(p.step({ t: 'tick', nowMs: 50 }), 'capture'), [], 'alone: no checkpoints');
  const j = p.step({ t: 'join', nowMs: 60 });
  assert.deepEqual(of(j, 'capture'), [{ t: 'capture', checkpoint: 1, base: true }], 'the first checkpoint of a joining backup is a base');
  assert.equal(p.status().alone, false);
  assert.equal(p.status().joining, true);
  p.step({ t: 'output', id: 2 }); // produced during the base capture: held until the base is acknowledged
  assert.deepEqual(of(p.step({ t: 'captured', checkpoint: 1, bytes: 4096 }), 'send-checkpoint'), [{ t: 'send-checkpoint', checkpoint: 1, epoch: 1 }]);
  assert.deepEqual(of(p.step({ t: 'output', id: 3 }), 'release'), [], 'held: the pair is protected from the join on');
  const acked = p.step({ t: 'ack', checkpoint: 1, nowMs: 65 });
  assert.deepEqual(of(acked, 'release'), [{ t: 'release', ids: [2] }]);
  assert.deepEqual(of(acked, 'joined'), [{ t: 'joined', epoch: 1, checkpoint: 1 }]);
  assert.equal(p.status().joining, false);
  assert.deepEqual(p.step({ t: 'join', nowMs: 66 }), [], 'a second join while paired does nothing (the driver refuses the standby)');
});

test('a join that goes silent is a failure like any other: the primary claims before releasing what it holds (the standby may hold the base and claim too)', () => {
  const p = new CheckpointPrimaryCore(cfg({ alone: true }));
  p.step({ t: 'join', nowMs: 0 });
  p.step({ t: 'output', id: 1 });
  p.step({ t: 'captured', checkpoint: 1, bytes: 4096 });
  p.step({ t: 'peer-closed' });
  assert.deepEqual(of(p.step({ t: 'tick', nowMs: 50 }), 'release'), [], 'nothing released on a closed connection');
  assert.deepEqual(of(p.step({ t: 'tick', nowMs: 101 }), 'claim'), [{ t: 'claim', epoch: 1 }]);
  const r = p.step({ t: 'claim-result', won: true, epoch: 2 });
  assert.deepEqual(r.map((x) => x.t), ['alone', 'release']);
  // A capture asked for before the silence (checkpoint 2) may still be under way: it is not sent to the
  // newcomer (a delta against a state it never had); the base follows it.
  let caps = of(p.step({ t: 'join', nowMs: 200 }), 'capture');
  if (caps.length === 0) {
    assert.deepEqual(of(p.step({ t: 'captured', checkpoint: 2, bytes: 1 }), 'send-checkpoint'), [], 'the pending delta is not sent');
    caps = of(p.step({ t: 'tick', nowMs: 210 }), 'capture');
  }
  assert.deepEqual(caps, [{ t: 'capture', checkpoint: 3, base: true }], 'alone again: the next standby joins through a base numbered after everything captured');
});

test('an idle guest: a capture found unchanged is not a checkpoint; the next one is asked for when due', () => {
  const p = new CheckpointPrimaryCore(cfg());
  p.step({ t: 'peer-open', nowMs: 0 });
  assert.deepEqual(of(p.step({ t: 'tick', nowMs: 10 }), 'capture'), [{ t: 'capture', checkpoint: 1, base: false }]);
  p.step({ t: 'unchanged', checkpoint: 1 });
  assert.equal(p.status().capturedCheckpoint, 0);
  assert.deepEqual(of(p.step({ t: 'tick', nowMs: 15 }), 'capture'), [], 'not before the interval');
  assert.deepEqual(of(p.step({ t: 'tick', nowMs: 20 }), 'capture'), [{ t: 'capture', checkpoint: 1, base: false }], 'the same number, asked again');
});

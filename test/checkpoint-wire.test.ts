/**
 * Checkpoints on the wire, with a real guest: a primary running the kv guest is checkpointed at idle
 * points (memory delta + globals + devices), each checkpoint crosses the channel's frame codec, the
 * backup's replica applies it; a machine restored from the replica has the primary's state hash at that
 * checkpoint, and going live from it with the rest of the workload ends where the uninterrupted run
 * ends. A checkpoint that is truncated, corrupt, of an older epoch or out of order is refused with
 * FTVM_ERR_CHECKPOINT and the replica keeps its last complete checkpoint.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeFrameBody, encodeFrameBody, FrameType, type Frame } from '../src/channel/frames.js';
import { CheckpointEncoder, CheckpointReplica, decodeCheckpoint, isBaseCheckpoint } from '../src/checkpoint/wire.js';
import { ScriptedEnv } from '../src/machine/env.js';
import { recordRun } from '../src/machine/runner.js';
import { kvWorkload } from '../src/machine/workloads.js';
import { FtvmError } from '../src/util/errors.js';
import { CheckpointingEnv, cfg, restoredHash } from './checkpoint-helpers.js';
import { guest, hex } from './helpers.js';

const EPOCH = 3;

/** Through the channel's codec, as the backup receives it. */
function overTheWire(epoch: number, checkpoint: number, data: Uint8Array): Uint8Array {
  const f = decodeFrameBody(encodeFrameBody({ type: FrameType.CHECKPOINT, epoch, checkpoint, part: 0, parts: 1, data }));
  assert.equal(f.type, FrameType.CHECKPOINT);
  if (f.type !== FrameType.CHECKPOINT) throw new Error('unreachable');
  assert.equal(f.epoch, epoch);
  assert.equal(f.checkpoint, checkpoint);
  return f.data;
}

test('checkpoints of a running kv guest: the replica restored at each checkpoint has the primary\'s state hash; going live from the last one ends like the uninterrupted run', () => {
  const g = guest('kv');
  for (const seed of [1, 7, 42]) {
    const make = (): ReturnType<typeof kvWorkload> => kvWorkload({ ops: 200, conns: 3, seed });
    const straight = recordRun(g, cfg, new ScriptedEnv(make(), { seed, sliceUnits: 40_000 }));
    // Count the idle waits of the uninterrupted run so the stop lands inside it.
    const counter = new CheckpointingEnv(make(), { seed, sliceUnits: 40_000 }, EPOCH, Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER);
    recordRun(g, cfg, counter);
    assert.ok(counter.waits >= 10, `the run has idle waits (${counter.waits})`);
    const stopAt = Math.floor(counter.waits * 0.6);

    const env = new CheckpointingEnv(make(), { seed, sliceUnits: 40_000 }, EPOCH, 3, stopAt);
    recordRun(g, cfg, env, { onMachine: (m) => (env.machine = m) });
    assert.ok(env.stopped, 'the primary stopped at its last checkpoint');
    assert.ok(env.checkpoints.length >= 3, `several checkpoints (${env.checkpoints.length})`);

    const replica = new CheckpointReplica(EPOCH);
    let deltaBytes = 0;
    env.checkpoints.forEach((c, i) => {
      assert.equal(replica.apply(overTheWire(EPOCH, i + 1, c.data)), i + 1);
      assert.equal(replica.checkpoint, i + 1);
      const s = replica.snapshot();
      assert.ok(s !== undefined);
      assert.equal(s.count, c.snap.count);
      assert.equal(s.seq, c.snap.seq);
      assert.equal(restoredHash(s), c.hash, `checkpoint ${i + 1}: the replica's state is the primary's`);
      if (i > 0) deltaBytes += c.data.length;
    });
    // Later checkpoints are deltas: far smaller than memory each time.
    const memBytes = replica.memoryBytes;
    assert.ok(deltaBytes / (env.checkpoints.length - 1) < memBytes / 4, `deltas (${deltaBytes} B over ${env.checkpoints.length - 1}) are small next to memory (${memBytes} B)`);

    // The backup goes live from its last complete checkpoint and serves the rest of the workload.
    const live = recordRun(g, cfg, env, { from: replica.snapshot()! });
    assert.equal(live.finalCount, straight.finalCount);
    assert.equal(hex(live.finalHash), hex(straight.finalHash));
  }
});

function refused(fn: () => unknown, what: string): void {
  assert.throws(fn, (err: unknown) => err instanceof FtvmError && err.code === 'FTVM_ERR_CHECKPOINT', what);
}

test('a truncated, corrupt, stale or out-of-order checkpoint is refused with FTVM_ERR_CHECKPOINT and the replica keeps its last complete checkpoint', () => {
  const g = guest('kv');
  const env = new CheckpointingEnv(kvWorkload({ ops: 120, conns: 2, seed: 5 }), { seed: 5, sliceUnits: 40_000 }, EPOCH, 2, Number.MAX_SAFE_INTEGER);
  recordRun(g, cfg, env, { onMachine: (m) => (env.machine = m) });
  const cps = env.checkpoints;
  assert.ok(cps.length >= 4, `checkpoints (${cps.length})`);
  const c1 = cps[0]!;
  const c2 = cps[1]!;
  const c3 = cps[2]!;

  const replica = new CheckpointReplica(EPOCH);
  // Before any checkpoint: nothing to go live from.
  assert.equal(replica.snapshot(), undefined);
  refused(() => replica.apply(c2.data), 'a gap before the first');
  assert.equal(replica.checkpoint, 0);
  replica.apply(c1.data);
  const kept = restoredHash(replica.snapshot()!);
  assert.equal(kept, c1.hash);
  const unchanged = (what: string): void => {
    assert.equal(replica.checkpoint, 1, what);
    assert.equal(restoredHash(replica.snapshot()!), kept, `${what}: the replica still holds checkpoint 1 exactly`);
  };

  // Truncated at many lengths (every prefix is refused, none partly applied).
  const d = c2.data;
  const cuts = new Set<number>([0, 1, 8, 9, 12, d.length - 5, d.length - 4, d.length - 1]);
  for (let k = 0; k < 40; k++) cuts.add(Math.floor((d.length * k) / 40));
  for (const cut of cuts) if (cut < d.length) refused(() => replica.apply(d.subarray(0, cut)), `truncated to ${cut} of ${d.length}`);
  unchanged('after truncated checkpoints');

  // Corrupt: one bit flipped anywhere (header, small state, delta, checksum).
  for (let k = 0; k < 64; k++) {
    const at = Math.floor(((d.length - 1) * k) / 63);
    const bad = new Uint8Array(d);
    bad[at]! ^= 1 << (k % 8);
    refused(() => replica.apply(bad), `bit flipped at ${at}`);
  }
  // Bytes appended.
  refused(() => replica.apply(Buffer.concat([d, Buffer.from([0])])), 'a trailing byte');
  unchanged('after corrupt checkpoints');

  // Out of order: a gap, a duplicate.
  refused(() => replica.apply(c3.data), 'checkpoint 3 before 2');
  refused(() => replica.apply(c1.data), 'checkpoint 1 again');
  unchanged('after out-of-order checkpoints');

  // An older epoch: the same checkpoint 2, as a fenced primary of epoch 2 would send it.
  const stale = new CheckpointEncoder();
  stale.encode(EPOCH - 1, 1, c1.snap);
  refused(() => replica.apply(stale.encode(EPOCH - 1, 2, c2.snap)), 'an older epoch');
  unchanged('after a stale checkpoint');

  // A frame whose header names another checkpoint or epoch than its data.
  refused(() => replica.apply(c2.data, { epoch: EPOCH, checkpoint: 3 }), 'the frame names checkpoint 3');
  refused(() => replica.apply(c2.data, { epoch: EPOCH + 1, checkpoint: 2 }), 'the frame names another epoch');
  unchanged('after mislabelled frames');

  // The right next checkpoints still apply, and the state is the primary's.
  replica.apply(c2.data, { epoch: EPOCH, checkpoint: 2 });
  replica.apply(c3.data);
  assert.equal(replica.checkpoint, 3);
  assert.equal(restoredHash(replica.snapshot()!), c3.hash);
});

test('a base checkpoint replaces the replica\'s state whatever it held (any number after its own); a truncated or corrupt base is refused with the replica unchanged', () => {
  const g = guest('kv');
  const env = new CheckpointingEnv(kvWorkload({ ops: 120, conns: 2, seed: 9 }), { seed: 9, sliceUnits: 40_000 }, EPOCH, 2, Number.MAX_SAFE_INTEGER);
  recordRun(g, cfg, env, { onMachine: (m) => (env.machine = m) });
  const cps = env.checkpoints;
  assert.ok(cps.length >= 4, `checkpoints (${cps.length})`);
  const c1 = cps[0]!;
  const last = cps[cps.length - 1]!;
  assert.notEqual(c1.hash, last.hash);

  // The primary's encoder went on past checkpoint 1 (its shadow is the last state); after a reset the
  // next checkpoint is a base, numbered freely after the last encoded.
  const enc = new CheckpointEncoder();
  enc.encode(EPOCH, 1, c1.snap);
  enc.encode(EPOCH, 2, cps[1]!.snap);
  assert.throws(() => enc.encode(EPOCH, 7, last.snap), /encoded after 2/);
  enc.reset();
  assert.throws(() => enc.encode(EPOCH, 2, last.snap), /encoded after 2/);
  const base = overTheWire(EPOCH, 7, enc.encode(EPOCH, 7, last.snap));
  assert.equal(enc.lastStats.base, true);
  assert.equal(decodeCheckpoint(base).base, true);
  assert.equal(isBaseCheckpoint(base), true);
  assert.equal(isBaseCheckpoint(c1.data), false);
  assert.equal(isBaseCheckpoint(base.subarray(0, 10)), false);
  // A delta after the base chains on it.
  const after = enc.encode(EPOCH, 8, cps[1]!.snap);
  assert.equal(decodeCheckpoint(after).base, false);

  const replica = new CheckpointReplica(EPOCH);
  replica.apply(c1.data);
  const kept = restoredHash(replica.snapshot()!);
  const unchanged = (what: string): void => {
    assert.equal(replica.checkpoint, 1, what);
    assert.equal(restoredHash(replica.snapshot()!), kept, `${what}: the replica still holds checkpoint 1 exactly`);
  };
  const cuts = new Set<number>([0, 1, 8, 9, 12, base.length - 5, base.length - 4, base.length - 1]);
  for (let k = 0; k < 40; k++) cuts.add(Math.floor((base.length * k) / 40));
  for (const cut of cuts) if (cut < base.length) refused(() => replica.apply(base.subarray(0, cut)), `base truncated to ${cut} of ${base.length}`);
  for (let k = 0; k < 64; k++) {
    const at = Math.floor(((base.length - 1) * k) / 63);
    const bad = new Uint8Array(base);
    bad[at]! ^= 1 << (k % 8);
    refused(() => replica.apply(bad), `base: bit flipped at ${at}`);
  }
  refused(() => replica.apply(after), 'a delta after a base the replica does not hold');
  unchanged('after truncated and corrupt bases');

  // The whole base applies over checkpoint 1 and replaces the state: the primary's at that snapshot.
  assert.equal(replica.apply(base, { epoch: EPOCH, checkpoint: 7 }), 7);
  assert.equal(replica.checkpoint, 7);
  assert.equal(restoredHash(replica.snapshot()!), last.hash);
  refused(() => replica.apply(base), 'the same base again (not after 7)');
  replica.apply(after);
  assert.equal(restoredHash(replica.snapshot()!), cps[1]!.hash, 'a delta chains on the base');

  // A fresh replica (a restarted backup) takes a base too.
  const fresh = new CheckpointReplica(EPOCH);
  fresh.apply(base);
  assert.equal(restoredHash(fresh.snapshot()!), last.hash);
});

test('CHECKPOINT and CHECKPOINT_ACK frames: round trip, strict decoding', () => {
  const data = new Uint8Array([1, 2, 3, 4, 5]);
  const frames: Frame[] = [
    { type: FrameType.CHECKPOINT, epoch: 7, checkpoint: 300, part: 0, parts: 1, data },
    { type: FrameType.CHECKPOINT, epoch: 7, checkpoint: 300, part: 2, parts: 3, data },
    { type: FrameType.CHECKPOINT_ACK, epoch: 7, checkpoint: 299 },
  ];
  for (const f of frames) assert.deepEqual(decodeFrameBody(encodeFrameBody(f)), f);
  const badFrame = (b: Uint8Array, what: string): void =>
    assert.throws(() => decodeFrameBody(b), (err: unknown) => err instanceof FtvmError && err.code === 'FTVM_ERR_BAD_FRAME', what);
  badFrame(Uint8Array.from([FrameType.CHECKPOINT]), 'CHECKPOINT without its header');
  badFrame(Uint8Array.from([FrameType.CHECKPOINT, 7, 0, 0, 1]), 'CHECKPOINT number 0');
  badFrame(Uint8Array.from([FrameType.CHECKPOINT, 7, 1, 3, 3]), 'CHECKPOINT piece 3 of 3');
  badFrame(Uint8Array.from([FrameType.CHECKPOINT, 7, 1, 0, 0]), 'CHECKPOINT of 0 pieces');
  badFrame(Uint8Array.from([FrameType.CHECKPOINT_ACK, 7]), 'CHECKPOINT_ACK truncated');
  badFrame(Uint8Array.from([FrameType.CHECKPOINT_ACK, 7, 3, 0]), 'CHECKPOINT_ACK with a trailing byte');
  // The payload itself: garbage is refused by decodeCheckpoint.
  assert.throws(() => decodeCheckpoint(data), (err: unknown) => err instanceof FtvmError && err.code === 'FTVM_ERR_CHECKPOINT');
});

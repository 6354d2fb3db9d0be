/** Snapshot state transfer format: chunked, checksummed, reassembled in a reused buffer; a restored
 *  machine continues exactly as the original. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DEFAULT_VM_CONFIG } from '../src/log/recording.js';
import { ScriptedEnv } from '../src/machine/env.js';
import type { Snapshot } from '../src/machine/machine.js';
import { recordRun, replayRun } from '../src/machine/runner.js';
import { SnapshotAssembler, encodeSnapshot } from '../src/machine/snapshot-codec.js';
import { kvWorkload } from '../src/machine/workloads.js';
import { guest, hex } from './helpers.js';

class SnapAt extends ScriptedEnv {
  snap: Snapshot | undefined;
  take: (() => Snapshot) | undefined;
  private waits = 0;
  override waitForWork(count: number, deadline: number | undefined): boolean {
    if (++this.waits === 20 && this.take) {
      this.snap = this.take();
      return false;
    }
    return super.waitForWork(count, deadline);
  }
}

test('a snapshot streamed in shuffled, checksummed chunks restores a machine that continues identically', () => {
  const g = guest('kv');
  const straight = recordRun(g, DEFAULT_VM_CONFIG, new ScriptedEnv(kvWorkload({ ops: 300, conns: 3, seed: 4 }), { seed: 4 }));
  const env = new SnapAt(kvWorkload({ ops: 300, conns: 3, seed: 4 }), { seed: 4 });
  recordRun(g, DEFAULT_VM_CONFIG, env, { onMachine: (m) => (env.take = () => m.snapshot()) });
  const snap = env.snap!;
  const { header, chunks } = encodeSnapshot(snap, 4096);
  assert.ok(chunks.length > 1);
  const asm = new SnapshotAssembler();
  for (let round = 0; round < 2; round++) {
    // twice through the same assembler: the buffer is reused
    asm.begin(header);
    const order = chunks.map((_, i) => i).sort((a, b) => ((a * 7919 + round) % chunks.length) - ((b * 7919 + round) % chunks.length));
    let progress = 0;
    for (const i of order) progress = asm.add(chunks[i]!);
    assert.equal(progress, 1);
    assert.ok(asm.complete);
  }
  const copy = asm.finish();
  assert.equal(hex(copy.memory), hex(snap.memory));
  const second = recordRun(g, DEFAULT_VM_CONFIG, env, { from: copy });
  assert.equal(hex(second.finalHash), hex(straight.finalHash));
  const rep = replayRun(g, DEFAULT_VM_CONFIG, second.entries, asm.finish());
  assert.equal(hex(rep.finalHash), hex(straight.finalHash));
});

test('corrupt, foreign, short or duplicated chunks are refused with FTVM_ERR_SNAPSHOT', () => {
  const g = guest('kv');
  const env = new SnapAt(kvWorkload({ ops: 100, conns: 2, seed: 2 }), { seed: 2 });
  recordRun(g, DEFAULT_VM_CONFIG, env, { onMachine: (m) => (env.take = () => m.snapshot()) });
  const { header, chunks } = encodeSnapshot(env.snap!, 4096);
  const asm = new SnapshotAssembler();
  assert.throws(() => asm.add(chunks[0]!), { code: 'FTVM_ERR_SNAPSHOT', message: /before the header/ });
  const badHeader = Buffer.from(header);
  badHeader[20]! ^= 1;
  assert.throws(() => asm.begin(badHeader), { code: 'FTVM_ERR_SNAPSHOT', message: /checksum/ });
  assert.throws(() => asm.begin(Buffer.from('not a snapshot header')), { code: 'FTVM_ERR_SNAPSHOT' });
  asm.begin(header);
  const flipped = Buffer.from(chunks[1]!);
  flipped[100]! ^= 1;
  assert.throws(() => asm.add(flipped), { code: 'FTVM_ERR_SNAPSHOT', message: /chunk 1 checksum/ });
  asm.add(chunks[0]!);
  assert.throws(() => asm.add(chunks[0]!), { code: 'FTVM_ERR_SNAPSHOT', message: /twice/ });
  assert.throws(() => asm.add(chunks[2]!.subarray(0, 50)), { code: 'FTVM_ERR_SNAPSHOT' });
  assert.equal(asm.complete, false);
  assert.throws(() => asm.finish(), { code: 'FTVM_ERR_SNAPSHOT', message: /missing/ });
});

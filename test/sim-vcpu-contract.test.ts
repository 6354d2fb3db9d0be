/**
 * The simulator's vCPU model (src/sim/vcpu.ts SimVcpu) keeps the contract the drivers rely on from the
 * real Vcpu (src/machine/vcpu.ts, worker thread, kv guest): the same scripted scenario runs against both
 * through the VcpuPort interface only, and the same properties must hold on each, so the model cannot
 * drift from what ships:
 * - batches are contiguous (each starts where the last ended), outputs lie within their batch,
 *   instruction numbers never go back;
 * - a snapshot's `onTaken` runs after every batch logged before it and before any logged after it
 *   (the first batch after it starts at the snapshot's entry);
 * - a replica restored from it, fed the log from there: `drained && entries >= fed` means every entry
 *   fed was consumed (`drained` alone may be stale: it is true before the worker saw a new batch);
 * - `goLive()` with log still held: 'live' comes only after the held log (at exactly the entries fed),
 *   and the replica then records from there (its first batch starts at that entry).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DEFAULT_VM_CONFIG } from '../src/log/recording.js';
import type { Snapshot } from '../src/machine/machine.js';
import { Vcpu } from '../src/machine/vcpu.js';
import type { BatchEvent, VcpuPort } from '../src/replication/env.js';
import { encodeJson, type Op } from '../src/sim/guest.js';
import { SimVcpu, type VcpuHost } from '../src/sim/vcpu.js';
import { guest } from './helpers.js';

interface Impl {
  name: string;
  record(): VcpuPort;
  replay(s: Snapshot): VcpuPort;
  /** Client request i on connection 1 (as the service would hand it to the vCPU). */
  request(v: VcpuPort, i: number): void;
  open(v: VcpuPort): void;
}

const real: Impl = {
  name: 'real Vcpu (worker thread, kv guest)',
  record: () => new Vcpu({ mode: 'record', guest: guest('kv'), config: DEFAULT_VM_CONFIG, env: { kind: 'live' } }),
  replay: (snapshot) => new Vcpu({ mode: 'replay', guest: guest('kv'), config: DEFAULT_VM_CONFIG, snapshot }),
  open: (v) => v.input('open', 1),
  request: (v, i) => v.input('data', 1, Buffer.from(`SET k${i % 7} v${i}\r\n`)),
};

function simHost(): VcpuHost {
  let id = 1;
  return {
    now: () => performance.now(),
    later: (ms, fn) => void setTimeout(fn, ms),
    newEntryId: () => id++,
    memoryBytes: 64 * 1024,
    speed: () => 1000,
    snapshotFails: () => false,
    violation: (_v, msg) => assert.fail(`the model replica diverged: ${msg}`),
    wentLive: () => undefined,
  };
}

const sim: Impl = {
  name: 'SimVcpu (the simulator model)',
  record: () => new SimVcpu(simHost(), 'record'),
  replay: (snapshot) => new SimVcpu(simHost(), 'replay', snapshot),
  open: () => undefined,
  request: (v, i) => {
    const op: Op = { kind: 'set', key: i % 7, val: i, work: 300 };
    v.input('data', 1, encodeJson({ req: i, op }));
  },
};

async function until(what: string, cond: () => boolean, timeoutMs = 15_000): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!cond()) {
    if (performance.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** The scripted scenario; returns what it saw, for the report. */
async function scenario(impl: Impl): Promise<{ batches: number; snapshotSeq: number; liveSeq: number; staleDrainedSeen: boolean }> {
  const rec = impl.record();
  const batches: BatchEvent[] = [];
  let nextSeq = 0;
  let lastN = 0;
  let outputs = 0;
  let snapshotAt: number | undefined; // batches seen when onTaken ran
  rec.on('batch', (b: BatchEvent) => {
    assert.equal(b.firstSeq, nextSeq, `${impl.name}: batches are contiguous`);
    nextSeq = b.firstSeq + b.count;
    assert.ok(b.instructionNumber >= lastN, `${impl.name}: instruction numbers never go back`);
    lastN = b.instructionNumber;
    for (const o of b.outputs) assert.ok(o.seq >= b.firstSeq && o.seq < b.firstSeq + b.count, `${impl.name}: an output lies within its batch`);
    outputs += b.outputs.length;
    batches.push(b);
  });
  let replica: VcpuPort | undefined;
  try {
    impl.open(rec);
    for (let i = 0; i < 20; i++) impl.request(rec, i);
    await until('the first replies', () => outputs >= 20);
    // A snapshot while requests keep coming.
    for (let i = 20; i < 40; i++) impl.request(rec, i);
    const taken = await rec.takeSnapshot((t) => {
      snapshotAt = batches.length;
      assert.equal(t.snapshot.seq, nextSeq, `${impl.name}: every batch logged before the snapshot arrived before onTaken`);
    });
    assert.ok(snapshotAt !== undefined, `${impl.name}: onTaken ran`);
    for (let i = 40; i < 60; i++) impl.request(rec, i);
    await until('the last replies', () => outputs >= 60);
    const after = batches.slice(snapshotAt).filter((b) => b.count > 0);
    assert.ok(after.length > 0, `${impl.name}: entries were logged after the snapshot`);
    assert.equal(after[0]!.firstSeq, taken.snapshot.seq, `${impl.name}: the first batch after the snapshot starts at its entry`);
    rec.stop();
    await rec.done;

    // The replica: restored, fed the log from the snapshot's entry, with grants.
    const r = impl.replay(taken.snapshot);
    replica = r;
    let fed = taken.snapshot.seq;
    let staleDrainedSeen = false;
    const logAfter = batches.slice(snapshotAt);
    const half = Math.floor(logAfter.length / 2);
    for (const b of logAfter.slice(0, half)) {
      r.feedLog(b.entries);
      r.grant(b.instructionNumber);
      fed += b.count;
      if (b.count > 0 && r.drained && r.entries < fed) staleDrainedSeen = true;
    }
    await until(`${impl.name}: the replica consumes the first half`, () => r.drained && r.entries >= fed);
    assert.equal(r.entries, fed, `${impl.name}: drained and entries >= fed: every entry fed was consumed`);
    // The rest of the log, and go-live while it is still held: 'live' only after the held log.
    let live: { seq: number; count: number } | undefined;
    // The new recorder's batches: listened for from the 'live' event on (a batch can follow it at once).
    let first: BatchEvent | undefined;
    r.once('live', (ev: { seq: number; count: number }) => {
      live = ev;
      r.on('batch', (b: BatchEvent) => {
        if (b.count > 0) first ??= b;
      });
      // The event carries the entry count at the moment the replica went live; the shared counter
      // (r.entries) may already be ahead by the time the event is read, since the new recorder runs on.
      assert.equal(ev.seq, fed, `${impl.name}: at 'live' every held entry is consumed`);
      assert.ok(r.entries >= fed, `${impl.name}: the entry counter never goes back`);
    });
    for (const b of logAfter.slice(half)) {
      r.feedLog(b.entries);
      r.grant(b.instructionNumber);
      fed += b.count;
      if (b.count > 0 && r.drained && r.entries < fed) staleDrainedSeen = true;
    }
    r.goLive();
    await until(`${impl.name}: 'live'`, () => live !== undefined);
    assert.equal(live!.seq, fed, `${impl.name}: the replica goes live exactly where the held log ends`);
    assert.equal(live!.seq, nextSeq, `${impl.name}: … which is where the recorder stopped`);
    // It records from there.
    impl.open(r);
    impl.request(r, 1000);
    await until(`${impl.name}: a batch from the new recorder`, () => first !== undefined);
    assert.equal(first!.firstSeq, live!.seq, `${impl.name}: the new recorder continues the log`);
    r.stop();
    await r.done;
    return { batches: batches.length, snapshotSeq: taken.snapshot.seq, liveSeq: live!.seq, staleDrainedSeen };
  } finally {
    if (rec instanceof Vcpu) await rec.terminate();
    if (replica instanceof Vcpu) await replica.terminate();
  }
}

for (const impl of [sim, real]) {
  test(`vCPU contract (${impl.name}): batch and snapshot order, drained guarded by entries, live only after the held log`, async (t) => {
    const seen = await scenario(impl);
    t.diagnostic(`${seen.batches} batches, snapshot at entry ${seen.snapshotSeq}, live at entry ${seen.liveSeq}, stale drained seen: ${seen.staleDrainedSeen}`);
  });
}

test('vCPU contract: the model shows a stale drained (the real flag can be; the guard entries >= fed exists for it)', async () => {
  const r = new SimVcpu(simHost(), 'replay');
  await until('the fresh replica waits for log', () => r.drained);
  const g = new SimVcpu(simHost(), 'record');
  let batch: BatchEvent | undefined;
  g.on('batch', (b: BatchEvent) => {
    if (b.count > 0) batch ??= b;
  });
  sim.request(g, 1);
  await until('a batch', () => batch !== undefined);
  g.stop();
  r.feedLog(batch!.entries);
  assert.equal(r.drained, true, 'right after a feed the flag is stale');
  assert.ok(r.entries < batch!.count, '… and the entry count says so');
  r.grant(batch!.instructionNumber);
  await until('consumed', () => r.drained && r.entries >= batch!.count);
  r.stop();
});

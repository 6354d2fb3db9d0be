/**
 * The pure replication cores, driven step by step (no sockets, no clocks): the output rule, resend
 * after a reconnect, gaps and duplicates, grants, lag control, epoch fencing.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ControlKind, FrameType, type Frame } from '../src/channel/frames.js';
import type { WireOutput } from '../src/machine/vcpu-protocol.js';
import { BackupCore, type BackupAction } from '../src/replication/backup.js';
import { PrimaryCore, type PrimaryAction, type PrimaryConfig } from '../src/replication/primary.js';

const cfg = (o: Partial<PrimaryConfig> = {}): PrimaryConfig => ({
  epoch: 3,
  heartbeatIntervalMs: 20,
  grantIntervalMs: 2,
  lagMaxMs: 20,
  unackedMaxBytes: 1 << 20,
  heldMaxOutputs: 1000,
  alone: false,
  failTimeoutMs: 100,
  claimRetryMs: 50,
  ...o,
});
const out = (seq: number, text = `reply${seq}`): WireOutput => ({ seq, n: seq * 10, kind: 'net', conn: 1, fd: 0, data: Buffer.from(text) });
const log = (firstSeq: number, count: number, n: number, outputs: WireOutput[] = []) =>
  ({ t: 'log', firstSeq, count, bytes: new Uint8Array(count * 10).fill(firstSeq), instructionNumber: n, outputs }) as const;
const sends = (as: PrimaryAction[] | BackupAction[]): Frame[] => (as as Array<PrimaryAction | BackupAction>).flatMap((a) => (a.t === 'send' ? [a.frame] : []));
const released = (as: PrimaryAction[]): number[] => as.flatMap((a) => (a.t === 'release' ? a.outputs.map((o) => o.seq) : []));
const ack = (ackSeq: number, replayed = 0, epoch = 3): Frame => ({ type: FrameType.ACK, epoch, ackSeq, replayedInstructionNumber: replayed });

test('output rule: an output is released only once the ACK covers its own entry', () => {
  const p = new PrimaryCore(cfg());
  p.step({ t: 'tick', nowMs: 0 });
  p.step({ t: 'peer-open', backupNextSeq: 0 });
  // entries 0..4; outputs at entries 1 and 4
  let a = p.step(log(0, 5, 100, [out(1), out(4)]));
  assert.equal(sends(a)[0]!.type, FrameType.LOG);
  assert.deepEqual(released(a), []);
  a = p.step({ t: 'frame', frame: ack(1) }); // holds entry 0 only
  assert.deepEqual(released(a), []);
  a = p.step({ t: 'frame', frame: ack(2) }); // entries 0,1: output 1 goes
  assert.deepEqual(released(a), [1]);
  a = p.step({ t: 'frame', frame: ack(4) });
  assert.deepEqual(released(a), []);
  a = p.step({ t: 'frame', frame: ack(5) });
  assert.deepEqual(released(a), [4]);
  assert.equal(p.status().outputsHeld, 0);
});

test('ACKs from another epoch, or for entries never sent, release nothing', () => {
  const p = new PrimaryCore(cfg());
  p.step({ t: 'peer-open', backupNextSeq: 0 });
  p.step(log(0, 2, 50, [out(0)]));
  assert.deepEqual(released(p.step({ t: 'frame', frame: ack(2, 0, 2) })), []);
  assert.deepEqual(released(p.step({ t: 'frame', frame: ack(99) })), []);
  assert.deepEqual(released(p.step({ t: 'frame', frame: ack(1) })), [0]);
});

test('FT off: outputs are released at once', () => {
  const p = new PrimaryCore(cfg({ alone: true }));
  assert.deepEqual(released(p.step(log(0, 3, 10, [out(0), out(2)]))), [0, 2]);
});

test('after a reconnect the primary resends from the backup position; a position it no longer holds drops the peer', () => {
  const p = new PrimaryCore(cfg());
  p.step({ t: 'peer-open', backupNextSeq: 0 });
  p.step(log(0, 3, 10));
  p.step(log(3, 2, 20));
  p.step({ t: 'frame', frame: ack(3) });
  p.step({ t: 'peer-closed' });
  p.step(log(5, 1, 30)); // produced while disconnected: not sent
  const a = p.step({ t: 'peer-open', backupNextSeq: 3 });
  const logs = sends(a).filter((f) => f.type === FrameType.LOG).map((f) => (f.type === FrameType.LOG ? f.firstSeq : -1));
  assert.deepEqual(logs, [3, 5]);
  const d = p.step({ t: 'peer-open', backupNextSeq: 1 }); // already dropped from memory
  assert.ok(d.some((x) => x.t === 'drop-peer'));
});

test('heartbeats grant progress while the guest computes without logging', () => {
  const p = new PrimaryCore(cfg());
  p.step({ t: 'tick', nowMs: 0 });
  p.step({ t: 'peer-open', backupNextSeq: 0 });
  p.step({ t: 'tick', nowMs: 5 });
  const a = p.step(log(0, 0, 5_000_000));
  const hb = sends(a).find((f) => f.type === FrameType.HEARTBEAT);
  assert.ok(hb && hb.type === FrameType.HEARTBEAT && hb.instructionNumber === 5_000_000 && hb.nextSeq === 0);
});

test('lag control: the primary is throttled when the backup replays more than lagMaxMs behind, released when it catches up', () => {
  const p = new PrimaryCore(cfg({ lagMaxMs: 20 }));
  p.step({ t: 'tick', nowMs: 0 });
  p.step({ t: 'peer-open', backupNextSeq: 0 });
  p.step(log(0, 1, 1000));
  p.step({ t: 'tick', nowMs: 10 });
  p.step(log(1, 1, 2000));
  let a = p.step({ t: 'tick', nowMs: 40 }); // the backup has replayed nothing: 40 ms behind entry at 1000
  assert.ok(a.some((x) => x.t === 'throttle' && x.on));
  a = p.step({ t: 'frame', frame: ack(2, 2000) });
  assert.ok(a.some((x) => x.t === 'throttle' && !x.on));
  assert.equal(p.lagMs(), 0);
});

test('backup: acks on receipt, feeds in order, ignores duplicates, drops on a gap, grants only what it holds, fences old epochs', () => {
  const b = new BackupCore({ epoch: 3, heartbeatIntervalMs: 20, failTimeoutMs: 100, claimRetryMs: 50 });
  b.step({ t: 'peer-open' });
  const lf = (firstSeq: number, count: number, n: number, epoch = 3): Frame => ({ type: FrameType.LOG, epoch, firstSeq, count, instructionNumber: n, batch: new Uint8Array(count) });
  let a = b.step({ t: 'frame', frame: lf(0, 3, 100) });
  assert.deepEqual(a.map((x) => x.t), ['feed', 'grant', 'send']);
  const ackF = sends(a)[0]!;
  assert.ok(ackF.type === FrameType.ACK && ackF.ackSeq === 3);
  a = b.step({ t: 'frame', frame: lf(0, 3, 100) }); // duplicate
  assert.ok(!a.some((x) => x.t === 'feed'));
  a = b.step({ t: 'frame', frame: { type: FrameType.HEARTBEAT, epoch: 3, instructionNumber: 500, nextSeq: 5 } }); // entries 3,4 not held yet
  assert.ok(!a.some((x) => x.t === 'grant'));
  a = b.step({ t: 'frame', frame: lf(5, 1, 600) }); // gap
  assert.ok(a.some((x) => x.t === 'drop-peer'));
  a = b.step({ t: 'frame', frame: lf(3, 2, 400, 2) }); // older epoch
  assert.deepEqual(a, []);
  a = b.step({ t: 'frame', frame: lf(3, 2, 400) });
  assert.ok(a.some((x) => x.t === 'feed'));
  a = b.step({ t: 'frame', frame: { type: FrameType.HEARTBEAT, epoch: 3, instructionNumber: 500, nextSeq: 5 } });
  assert.ok(a.some((x) => x.t === 'grant' && x.instructionNumber === 500));
  a = b.step({ t: 'replica-diverged', reason: 'boom' });
  assert.ok(a.some((x) => x.t === 'halt'));
  assert.ok(sends(a).some((f) => f.type === FrameType.CONTROL && f.kind === ControlKind.DIVERGED));
  assert.deepEqual(b.step({ t: 'frame', frame: lf(5, 1, 600) }), [], 'a halted backup does nothing');
});

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

// ------------------------------------------------------------------ re-replication (join, arm)

test('join: the log is kept from the snapshot point, outputs still go out at once, arm once caught up', () => {
  const p = new PrimaryCore(cfg({ alone: true, epoch: 5 }));
  p.step({ t: 'tick', nowMs: 0 });
  assert.deepEqual(released(p.step(log(0, 3, 30, [out(1)]))), [1]);
  p.step({ t: 'join-begin', snapshotSeq: 3 });
  assert.equal(p.status().joining, 'transferring');
  // While the snapshot streams, the guest goes on: entries are kept, outputs released (alone).
  let a = p.step(log(3, 2, 50, [out(4)]));
  assert.deepEqual(released(a), [4]);
  assert.equal(sends(a).length, 0, 'nothing is sent before the snapshot arrived');
  assert.ok(p.status().unackedBytes > 0);
  // Snapshot delivered: the log streams from the snapshot point.
  a = p.step({ t: 'peer-open', backupNextSeq: 3 });
  const logFrames = sends(a).filter((f) => f.type === FrameType.LOG);
  assert.equal(logFrames.length, 1);
  assert.equal((logFrames[0] as { firstSeq: number }).firstSeq, 3);
  assert.equal(p.status().joining, 'catching-up');
  // Not caught up yet: no arm.
  a = p.step({ t: 'tick', nowMs: 10 });
  assert.ok(!a.some((x) => x.t === 'arm'));
  p.step({ t: 'frame', frame: ack(5, 50, 5) });
  a = p.step({ t: 'tick', nowMs: 12 });
  const arm = a.find((x) => x.t === 'arm');
  assert.deepEqual(arm, { t: 'arm', epoch: 5 });
  assert.equal(p.status().joining, 'arming');
  // Outputs logged while arming are still released at once (the pair is not protected yet).
  assert.deepEqual(released(p.step(log(5, 1, 60, [out(5)]))), [5]);
  a = p.step({ t: 'arm-result', ok: true, epoch: 6, fenced: false, reason: '' });
  const armed = sends(a).find((f) => f.type === FrameType.CONTROL) as { kind: number; epoch: number };
  assert.equal(armed.kind, ControlKind.ARMED);
  assert.equal(armed.epoch, 6);
  assert.ok(a.some((x) => x.t === 'armed'));
  assert.equal(p.status().alone, false);
  assert.equal(p.status().epoch, 6);
  // From here the output rule holds.
  a = p.step(log(6, 1, 70, [out(6)]));
  assert.deepEqual(released(a), []);
  assert.equal((sends(a)[0] as { epoch: number }).epoch, 6);
  assert.deepEqual(released(p.step({ t: 'frame', frame: ack(7, 70, 6) })), [6]);
});

test('join: a joiner that disconnects, goes silent, or falls too far behind is abandoned; the primary stays alone', () => {
  for (const how of ['closed', 'silent', 'overflow', 'aborted'] as const) {
    const p = new PrimaryCore(cfg({ alone: true, unackedMaxBytes: 100 }));
    p.step({ t: 'tick', nowMs: 0 });
    p.step({ t: 'join-begin', snapshotSeq: 0 });
    p.step({ t: 'peer-open', backupNextSeq: 0 });
    let a: PrimaryAction[] = [];
    if (how === 'closed') a = p.step({ t: 'peer-closed' });
    if (how === 'silent') a = p.step({ t: 'tick', nowMs: 5000 });
    if (how === 'overflow') {
      p.step(log(0, 20, 10));
      a = p.step({ t: 'tick', nowMs: 1 });
    }
    if (how === 'aborted') a = p.step({ t: 'join-abort', reason: 'transfer cut' });
    assert.ok(a.some((x) => x.t === 'join-abandoned'), how);
    assert.equal(p.status().joining, null);
    assert.equal(p.status().alone, true);
    assert.equal(p.status().unackedBytes, 0);
    // It can serve on and try again.
    assert.deepEqual(released(p.step(log(p.status().nextSeq, 1, 20, [out(p.status().nextSeq)]))).length, 1);
    p.step({ t: 'join-begin', snapshotSeq: p.status().nextSeq });
    assert.equal(p.status().joining, 'transferring');
  }
});

test('join: arming against an unreachable arbiter retries; a record that moved on halts the primary', () => {
  const p = new PrimaryCore(cfg({ alone: true, epoch: 2, claimRetryMs: 50 }));
  p.step({ t: 'tick', nowMs: 0 });
  p.step({ t: 'join-begin', snapshotSeq: 0 });
  p.step({ t: 'peer-open', backupNextSeq: 0 });
  p.step(log(0, 1, 10));
  p.step({ t: 'frame', frame: ack(1, 10, 2) });
  assert.ok(p.step({ t: 'tick', nowMs: 5 }).some((x) => x.t === 'arm'));
  p.step({ t: 'arm-result', ok: false, epoch: 2, fenced: false, reason: 'unreachable' });
  p.step({ t: 'frame', frame: ack(1, 10, 2) });
  assert.ok(!p.step({ t: 'tick', nowMs: 20 }).some((x) => x.t === 'arm'), 'waits claimRetryMs');
  p.step({ t: 'frame', frame: ack(1, 10, 2) });
  assert.ok(p.step({ t: 'tick', nowMs: 60 }).some((x) => x.t === 'arm'));
  const a = p.step({ t: 'arm-result', ok: false, epoch: 9, fenced: true, reason: 'owned by other at 9' });
  assert.ok(a.some((x) => x.t === 'halt'));
  assert.ok(p.status().halted);
});

test('joiner backup: starts at the snapshot entry, never goes live before ARMED, adopts the new epoch', () => {
  const mk = () => new BackupCore({ epoch: 4, heartbeatIntervalMs: 20, failTimeoutMs: 100, claimRetryMs: 50, firstSeq: 10, armed: false });
  let b = mk();
  b.step({ t: 'tick', nowMs: 0 });
  let a = b.step({ t: 'peer-open' });
  assert.equal((sends(a)[0] as { ackSeq: number }).ackSeq, 10);
  a = b.step({ t: 'frame', frame: { type: FrameType.LOG, epoch: 4, firstSeq: 10, count: 2, instructionNumber: 99, batch: new Uint8Array(4) } });
  assert.ok(a.some((x) => x.t === 'feed'));
  // Silence before ARMED: give up, never drain/claim.
  a = b.step({ t: 'tick', nowMs: 2500 });
  assert.deepEqual(a.map((x) => x.t), ['abandon']);
  assert.equal(b.status().phase, 'abandoned');
  assert.deepEqual(b.step({ t: 'tick', nowMs: 9000 }), []);
  // Disconnect before ARMED: give up at once.
  b = mk();
  b.step({ t: 'peer-open' });
  assert.ok(b.step({ t: 'peer-closed' }).some((x) => x.t === 'abandon'));
  // ARMED: now a failover target at the new epoch.
  b = mk();
  b.step({ t: 'tick', nowMs: 0 });
  b.step({ t: 'peer-open' });
  a = b.step({ t: 'frame', frame: { type: FrameType.CONTROL, epoch: 5, kind: ControlKind.ARMED, reason: 'armed' } });
  assert.deepEqual(a.map((x) => x.t), ['armed']);
  assert.equal(b.status().epoch, 5);
  assert.equal(b.status().phase, 'following');
  a = b.step({ t: 'tick', nowMs: 500 });
  assert.ok(a.some((x) => x.t === 'drain'));
  // A stale ARMED (older epoch) does nothing.
  const c = mk();
  assert.deepEqual(c.step({ t: 'frame', frame: { type: FrameType.CONTROL, epoch: 3, kind: ControlKind.ARMED, reason: 'old' } }), []);
});

test('evidence of death (peer-gone): acts at once when the peer is disconnected; stale or early evidence changes nothing', () => {
  // Backup: evidence while the primary is still connected (a new connection since) is ignored.
  const b = new BackupCore({ epoch: 3, heartbeatIntervalMs: 20, failTimeoutMs: 10_000, claimRetryMs: 50 });
  b.step({ t: 'tick', nowMs: 0 });
  assert.deepEqual(b.step({ t: 'peer-gone', evidence: 'refused' }), [], 'no primary ever connected: nothing to take over');
  b.step({ t: 'peer-open', nowMs: 1 });
  assert.deepEqual(b.step({ t: 'peer-gone', evidence: 'refused' }).filter((a) => a.t === 'drain'), [], 'the primary is connected');
  b.step({ t: 'peer-closed' });
  const drain = b.step({ t: 'peer-gone', evidence: 'its liveness port refused a connection' });
  assert.deepEqual(drain, [
    { t: 'drain', reason: "the primary's process is gone (its liveness port refused a connection)", evidence: true },
    { t: 'claim', epoch: 3 },
  ], 'the claim goes out with the drain, not after it');
  assert.equal(b.status().phase, 'draining', 'long before the 10 s fail timeout');
  assert.deepEqual(b.step({ t: 'drained' }), [], 'the claim is already out');
  assert.equal(b.status().phase, 'claiming');
  assert.deepEqual(b.step({ t: 'peer-gone', evidence: 'again' }), [], 'already claiming');

  // Primary: evidence before any backup connected (it is starting up) is ignored; after, it claims.
  const p = new PrimaryCore(cfg({ failTimeoutMs: 10_000 }));
  p.step({ t: 'tick', nowMs: 0 });
  assert.deepEqual(p.step({ t: 'peer-gone', evidence: 'refused' }).filter((a) => a.t === 'claim'), []);
  p.step({ t: 'peer-open', backupNextSeq: 0 });
  assert.deepEqual(p.step({ t: 'peer-gone', evidence: 'refused' }).filter((a) => a.t === 'claim'), [], 'the backup is connected');
  p.step({ t: 'peer-closed' });
  assert.deepEqual(p.step({ t: 'peer-gone', evidence: 'refused' }).filter((a) => a.t === 'claim'), [{ t: 'claim', epoch: 3 }]);
  assert.equal(p.status().claimCause, "the backup's process is gone (refused)");
  const won = p.step({ t: 'claim-result', won: true, epoch: 4, owner: 'p' });
  const alone = won.find((a) => a.t === 'went-alone');
  assert.ok(alone && alone.t === 'went-alone' && alone.reason.startsWith("the backup's process is gone"), JSON.stringify(won));
});

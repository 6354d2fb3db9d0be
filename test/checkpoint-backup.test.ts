/**
 * The checkpoint-mode backup driver over the real channel (TLS-PSK on loopback) with the real embedded
 * arbiter: it applies and acknowledges the checkpoints of a running kv guest, refuses a corrupt and a
 * truncated one (dropping the connection, keeping its last complete checkpoint), applies the resend,
 * and when the primary falls silent it claims the VM and goes live from the last complete checkpoint —
 * whose state is exactly the primary's at that checkpoint, never the partial one after it.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { pino } from 'pino';
import { EmbeddedArbiterClient, EmbeddedArbiterServer } from '../src/arbiter/embedded.js';
import type { ChannelConnection } from '../src/channel/connection.js';
import { ChannelDialer, ChannelListener } from '../src/channel/endpoints.js';
import { FrameType, type Frame } from '../src/channel/frames.js';
import { tcpChannelTransport } from '../src/channel/transport.js';
import { CheckpointBackup } from '../src/checkpoint/backup-node.js';
import { realClock } from '../src/env/real.js';
import { recordRun } from '../src/machine/runner.js';
import { kvWorkload } from '../src/machine/workloads.js';
import type { Logger } from '../src/util/log.js';
import { CheckpointingEnv, cfg, restoredHash } from './checkpoint-helpers.js';
import { guest } from './helpers.js';

const log = pino({ level: 'silent' }) as unknown as Logger;

async function until(what: string, pred: () => boolean, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

test('checkpoint backup: applies and acknowledges over the channel (whole, and in pieces), ignores a checkpoint missing a piece, refuses corrupt and truncated checkpoints, goes live from the last complete one after the primary falls silent', async () => {
  // The primary's checkpoints of a running kv guest (epoch 1).
  const env = new CheckpointingEnv(kvWorkload({ ops: 150, conns: 3, seed: 11 }), { seed: 11, sliceUnits: 40_000 }, 1, 2, Number.MAX_SAFE_INTEGER);
  recordRun(guest('kv'), cfg, env, { onMachine: (m) => (env.machine = m) });
  const cps = env.checkpoints;
  assert.ok(cps.length >= 5, `checkpoints (${cps.length})`);
  const N = cps.length;

  const secret = randomBytes(32);
  const dataDir = mkdtempSync(join(tmpdir(), 'ftvm-ckpt-arbiter-'));
  const server = await EmbeddedArbiterServer.start({ dataDir, host: '127.0.0.1', port: 0, secret, log });
  const arbiter = new EmbeddedArbiterClient({ host: '127.0.0.1', port: server.address.port, secret, log });
  await arbiter.init('vm', { epoch: 1, owner: 'primary-node' }, { deadlineMs: 2000 });

  const identity = (role: 'primary' | 'backup') => ({ role, vmName: 'vm', moduleHash: new Uint8Array(32), epoch: 1, mode: 'checkpoint' as const, nextSeq: () => 0 });
  const listener = new ChannelListener('127.0.0.1', 0, { secret, identity: identity('backup'), log, transport: tcpChannelTransport('tls-psk') });
  await listener.start();
  const backup = new CheckpointBackup({ vmName: 'vm', nodeId: 'backup-node', epoch: 1, failTimeoutMs: 2000, arbiterDeadlineMs: 3000, tickMs: 5, clock: realClock, arbiter, log });
  listener.on('connection', (c: ChannelConnection) => backup.attach(c));
  backup.start();

  // The primary's side: a redialing dialer; every connection and every acknowledgement is recorded.
  const dialer = new ChannelDialer('127.0.0.1', listener.address!.port, { secret, identity: identity('primary'), log, transport: tcpChannelTransport('tls-psk'), retryMinMs: 20 });
  const conns: ChannelConnection[] = [];
  const closed = new Set<ChannelConnection>();
  let acked = 0;
  dialer.on('connection', (c: ChannelConnection) => {
    conns.push(c);
    c.on('frame', (f: Frame) => {
      if (f.type === FrameType.CHECKPOINT_ACK) {
        assert.equal(f.epoch, 1);
        assert.ok(f.checkpoint >= acked, 'acknowledgements are cumulative');
        acked = f.checkpoint;
      }
    });
    c.once('close', () => closed.add(c));
  });
  dialer.start();
  const current = (): ChannelConnection => conns[conns.length - 1]!;
  // Heartbeats while the primary is alive (bounded: stopped below, and by the test's end).
  const beat = setInterval(() => {
    if (conns.length > 0 && !closed.has(current())) current().send({ type: FrameType.HEARTBEAT, epoch: 1, instructionNumber: 0, nextSeq: 0 });
  }, 20);
  const send = (k: number, data = cps[k - 1]!.data): void => void current().send({ type: FrameType.CHECKPOINT, epoch: 1, checkpoint: k, part: 0, parts: 1, data });
  /** Checkpoint k in `parts` pieces (a large checkpoint, as the primary cuts it), leaving out piece `skip`. */
  const sendPieces = (k: number, parts: number, skip = -1): void => {
    const data = cps[k - 1]!.data;
    const size = Math.ceil(data.length / parts);
    for (let part = 0; part < parts; part++) {
      if (part !== skip) current().send({ type: FrameType.CHECKPOINT, epoch: 1, checkpoint: k, part, parts, data: data.subarray(part * size, Math.min(data.length, (part + 1) * size)) });
    }
  };

  try {
    await until('the first connection', () => conns.length === 1);
    // Every third checkpoint in pieces: reassembled before it is applied.
    for (let k = 1; k <= N - 2; k++) {
      if (k % 3 === 0) sendPieces(k, 3);
      else send(k);
    }
    await until(`the ack of checkpoint ${N - 2}`, () => acked === N - 2);
    // A piece missing: the checkpoint never reaches the replica (nothing acknowledged, nothing applied).
    sendPieces(N - 1, 3, 1);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(backup.replica.checkpoint, N - 2, 'a checkpoint with a piece missing is not applied');
    assert.equal(acked, N - 2);
    assert.equal(backup.replica.checkpoint, N - 2);
    assert.equal(restoredHash(backup.replica.snapshot()!), cps[N - 3]!.hash);

    // A corrupt checkpoint: refused, the connection dropped, the last complete checkpoint kept.
    const corrupt = new Uint8Array(cps[N - 2]!.data);
    corrupt[Math.floor(corrupt.length / 2)]! ^= 0x40;
    const first = current();
    send(N - 1, corrupt);
    await until('the backup to drop the connection', () => closed.has(first));
    assert.equal(backup.stats.refused, 1);
    assert.equal(backup.replica.checkpoint, N - 2);
    assert.equal(acked, N - 2, 'the corrupt checkpoint was never acknowledged');

    // The primary reconnects and resends it: applied and acknowledged.
    await until('the second connection', () => conns.length === 2);
    send(N - 1);
    await until(`the ack of checkpoint ${N - 1}`, () => acked === N - 1);
    assert.equal(backup.status().phase, 'following', 'no claim while the primary is heard');

    // A truncated checkpoint, then the primary dies: nothing more arrives.
    const second = current();
    send(N, cps[N - 1]!.data.subarray(0, cps[N - 1]!.data.length - 100));
    await until('the backup to drop the connection again', () => closed.has(second));
    clearInterval(beat);
    dialer.close();
    assert.equal(backup.stats.refused, 2);

    const outcome = await Promise.race([backup.done, new Promise<never>((_, rej) => setTimeout(() => rej(new Error('the backup did not go live in 15 s')), 15_000))]);
    assert.equal(outcome.t, 'live');
    if (outcome.t !== 'live') return;
    assert.equal(outcome.epoch, 2);
    assert.equal(outcome.checkpoint, N - 1, 'from the last complete checkpoint, not the truncated one');
    assert.equal(restoredHash(outcome.snapshot), cps[N - 2]!.hash, 'the state the backup goes live with is the primary\'s at that checkpoint');
    assert.notEqual(restoredHash(outcome.snapshot), cps[N - 1]!.hash);
    assert.deepEqual(await arbiter.read('vm', { deadlineMs: 2000 }), { epoch: 2, owner: 'backup-node' });
  } finally {
    clearInterval(beat);
    dialer.close();
    backup.close();
    await listener.close();
    await arbiter.close();
    await server.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
});

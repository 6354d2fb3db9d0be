/**
 * Catching up a backup that (re)connects to a primary with acknowledged checkpoints, with every real
 * component (the kv guest on a record vCPU, the client service, the TLS channel through a fault proxy,
 * the embedded arbiter): the backup's HELLO says which checkpoint it applied; a primary whose last
 * acknowledged checkpoint differs sends a base checkpoint (all of memory against zeros), which the backup
 * applies whatever it held. Shown for a backup restarted empty (it could never catch up on deltas) and
 * for one that applied checkpoints whose acknowledgements were lost: outputs are released again, and
 * the backup's restored state hash is the primary's at the checkpoint it holds.
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
import { tcpChannelTransport } from '../src/channel/transport.js';
import { CheckpointBackup } from '../src/checkpoint/backup-node.js';
import { CheckpointPrimary } from '../src/checkpoint/primary-node.js';
import { RespClient } from '../src/client/resp.js';
import { realClock } from '../src/env/real.js';
import type { Snapshot } from '../src/machine/machine.js';
import { Vcpu } from '../src/machine/vcpu.js';
import { ClientService } from '../src/service/clients.js';
import { FaultProxy } from '../src/testing/fault-proxy.js';
import type { Logger } from '../src/util/log.js';
import { freePort } from '../src/util/ports.js';
import { cfg, restoredHash } from './checkpoint-helpers.js';
import { guest } from './helpers.js';

const log = pino({ level: process.env['CKPT_DEBUG'] !== undefined ? 'info' : 'silent' }) as unknown as Logger;

async function until(what: string, pred: () => boolean, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

test('checkpoint catch-up: a restarted backup, and one whose acknowledgements were lost, get a base checkpoint; held outputs go out again and the backup holds the primary\'s state', async () => {
  const secret = randomBytes(32);
  const dataDir = mkdtempSync(join(tmpdir(), 'ftvm-ckpt-catchup-'));
  const server = await EmbeddedArbiterServer.start({ dataDir, host: '127.0.0.1', port: 0, secret, log });
  const arbiter = new EmbeddedArbiterClient({ host: '127.0.0.1', port: server.address.port, secret, log });
  await arbiter.init('vm', { epoch: 1, owner: 'primary-node' }, { deadlineMs: 2000 });
  const newBackup = (): CheckpointBackup =>
    new CheckpointBackup({ vmName: 'vm', nodeId: 'backup-node', epoch: 1, failTimeoutMs: 4000, arbiterDeadlineMs: 4000, tickMs: 5, clock: realClock, arbiter, log });
  let backup = newBackup();
  // The backup's HELLO carries the checkpoint its replica applied (as CheckpointNode's identity does).
  const listener = new ChannelListener('127.0.0.1', 0, {
    secret,
    identity: { role: 'backup', vmName: 'vm', moduleHash: new Uint8Array(32), epoch: 1, mode: 'checkpoint', nextSeq: () => backup.helloApplied() },
    log,
    transport: tcpChannelTransport('tls-psk'),
  });
  await listener.start();
  listener.on('connection', (c: ChannelConnection) => backup.attach(c));
  backup.start();

  const vcpu = new Vcpu({ mode: 'record', guest: guest('kv'), config: cfg, env: { kind: 'live' } });
  // The primary's state at each checkpoint it captures (the snapshot its encoder gets), by number.
  const atCheckpoint = new Map<number, Snapshot>();
  let primaryRef: CheckpointPrimary | undefined;
  const take = vcpu.takeSnapshot.bind(vcpu);
  vcpu.takeSnapshot = (onTaken, headroomBytes) =>
    take((t) => {
      const n = primaryRef!.status().openCheckpoint;
      atCheckpoint.set(n, structuredClone(t.snapshot));
      for (const k of atCheckpoint.keys()) if (k < n - 50) atCheckpoint.delete(k);
      onTaken?.(t);
    }, headroomBytes);
  const servicePort = await freePort();
  const service = new ClientService({ host: '127.0.0.1', port: servicePort, log });
  const primary = new CheckpointPrimary({ vmName: 'vm', nodeId: 'primary-node', epoch: 1, intervalMs: 20, failTimeoutMs: 4000, arbiterDeadlineMs: 4000, tickMs: 5, clock: realClock, arbiter, vcpu, service, log, pieceBytes: 2048 });
  primaryRef = primary;
  const link = await FaultProxy.start({ targetPort: listener.address!.port });
  const dialer = new ChannelDialer('127.0.0.1', link.port, {
    secret,
    identity: { role: 'primary', vmName: 'vm', moduleHash: new Uint8Array(32), epoch: 1, mode: 'checkpoint', nextSeq: () => 0 },
    log,
    transport: tcpChannelTransport('tls-psk'),
    retryMinMs: 20,
  });
  const connected = new Promise<void>((r) => dialer.once('connection', () => r()));
  dialer.on('connection', (c: ChannelConnection) => primary.attach(c));
  dialer.start();
  await connected;
  await primary.start();

  let client: RespClient | undefined;
  /** The backup holds the primary's state at the checkpoint it applied. */
  const holdsPrimaryState = (b: CheckpointBackup, what: string): void => {
    const n = b.replica.checkpoint;
    const s = atCheckpoint.get(n);
    assert.ok(s !== undefined, `${what}: the primary's state at checkpoint ${n} was kept`);
    assert.equal(restoredHash(b.replica.snapshot()!), restoredHash(s), `${what}: the backup's state at checkpoint ${n} is the primary's`);
  };
  const heldWrite = async (key: string, value: string): Promise<{ replied: () => boolean; reply: Promise<unknown> }> => {
    let replied = false;
    const reply = client!.call('SET', key, value).then((r: unknown) => {
      replied = true;
      return r;
    });
    await until('the write executed and its reply held', () => primary.status().heldOutputs >= 1);
    return { replied: () => replied, reply };
  };
  try {
    client = await RespClient.connect({ port: servicePort, callTimeoutMs: 30_000 });
    for (let i = 0; i < 20; i++) assert.equal(await client.call('SET', `k${i}`, `v${i}`), 'OK');
    await until('checkpoints acknowledged', () => primary.status().ackedCheckpoint >= 3);
    const ackedBefore = primary.status().ackedCheckpoint;

    // 1. The backup restarts empty: its HELLO says 0; deltas against the primary's shadow would be refused.
    link.cut();
    backup.close();
    backup = newBackup();
    backup.start();
    const w1 = await heldWrite('during-restart', 'x');
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(w1.replied(), false, 'no reply without a backup');
    await link.heal();
    assert.equal(await w1.reply, 'OK', 'the reply goes out once the new backup holds a base checkpoint');
    assert.equal(backup.stats.refused, 0, 'nothing refused: the first checkpoint the new backup got is a base');
    assert.ok(backup.replica.checkpoint > ackedBefore, `the new backup holds checkpoint ${backup.replica.checkpoint} > ${ackedBefore}`);
    assert.equal(primary.status().heldOutputs, 0);
    assert.equal(primary.status().baseDue, false);
    holdsPrimaryState(backup, 'after a restart');
    for (let i = 20; i < 30; i++) assert.equal(await client.call('SET', `k${i}`, `v${i}`), 'OK'); // deltas again, on the base
    holdsPrimaryState(backup, 'deltas after the base');

    // 2. The same backup applies checkpoints whose acknowledgements are lost, then the channel is cut:
    // its HELLO says a checkpoint after the primary's last acknowledged one.
    link.blackhole('down');
    const w2 = await heldWrite('acks-lost', 'y');
    const ackedAtLoss = primary.status().ackedCheckpoint;
    await until('the backup applied past the last acknowledged checkpoint', () => backup.replica.checkpoint > ackedAtLoss);
    assert.equal(w2.replied(), false, 'no reply while the acknowledgements are lost');
    link.cut();
    await link.heal();
    assert.equal(await w2.reply, 'OK', 'the reply goes out after the base is acknowledged');
    assert.equal(backup.stats.refused, 0);
    assert.equal(primary.status().heldOutputs, 0);
    holdsPrimaryState(backup, 'after lost acknowledgements');
    assert.equal(primary.stats.released, 32, 'every reply went out through the output commit');
  } finally {
    await client?.close();
    dialer.close();
    await primary.close();
    await vcpu.terminate();
    backup.close();
    await link.close();
    await listener.close();
    await arbiter.close();
    await server.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
});

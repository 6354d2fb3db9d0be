/**
 * A checkpoint-mode pair in one process, with every real component: the kv guest on a record vCPU
 * (worker thread) behind the TCP client service, `CheckpointPrimary` checkpointing it through the vCPU's
 * snapshot path, the TLS channel on loopback, `CheckpointBackup` applying the checkpoints, the embedded
 * arbiter. A RESP client writes; every acknowledged write (its reply left the primary only after the
 * backup acknowledged its checkpoint) is in the state the backup goes live with after the primary dies.
 *
 * Timeouts are generous (4 s of silence): a niced test process on a loaded machine was seen starved for 3.5 s.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { EmbeddedArbiterClient, EmbeddedArbiterServer } from '../src/arbiter/embedded.js';
import type { ChannelConnection } from '../src/channel/connection.js';
import { ChannelDialer, ChannelListener } from '../src/channel/endpoints.js';
import { tcpChannelTransport } from '../src/channel/transport.js';
import { CheckpointBackup } from '../src/checkpoint/backup-node.js';
import { CheckpointPrimary } from '../src/checkpoint/primary-node.js';
import { RespClient } from '../src/client/resp.js';
import { realClock } from '../src/env/real.js';
import { ScriptedEnv } from '../src/machine/env.js';
import { recordRun } from '../src/machine/runner.js';
import { Vcpu } from '../src/machine/vcpu.js';
import { resp } from '../src/machine/workloads.js';
import { ClientService } from '../src/service/clients.js';
import { pino } from 'pino';
import type { Logger } from '../src/util/log.js';
const log = pino({ level: process.env['CKPT_DEBUG'] !== undefined ? 'info' : 'silent' }) as unknown as Logger;
import { FaultProxy } from '../src/testing/fault-proxy.js';
import { freePort } from '../src/util/ports.js';
import { cfg } from './checkpoint-helpers.js';
import { guest } from './helpers.js';

test('checkpoint pair: writes answered only under a checkpoint the backup holds survive the primary\'s death; the backup goes live with all of them', async () => {
  const secret = randomBytes(32);
  const dataDir = mkdtempSync(join(tmpdir(), 'ftvm-ckpt-pair-'));
  const server = await EmbeddedArbiterServer.start({ dataDir, host: '127.0.0.1', port: 0, secret, log });
  const arbiter = new EmbeddedArbiterClient({ host: '127.0.0.1', port: server.address.port, secret, log });
  await arbiter.init('vm', { epoch: 1, owner: 'primary-node' }, { deadlineMs: 2000 });
  const identity = (role: 'primary' | 'backup') => ({ role, vmName: 'vm', moduleHash: new Uint8Array(32), epoch: 1, mode: 'checkpoint' as const, nextSeq: () => 0 });

  const listener = new ChannelListener('127.0.0.1', 0, { secret, identity: identity('backup'), log, transport: tcpChannelTransport('tls-psk') });
  await listener.start();
  const backup = new CheckpointBackup({ vmName: 'vm', nodeId: 'backup-node', epoch: 1, failTimeoutMs: 4000, arbiterDeadlineMs: 4000, tickMs: 5, clock: realClock, arbiter, log });
  listener.on('connection', (c: ChannelConnection) => backup.attach(c));
  backup.start();

  const vcpu = new Vcpu({ mode: 'record', guest: guest('kv'), config: cfg, env: { kind: 'live' } });
  const servicePort = await freePort();
  const service = new ClientService({ host: '127.0.0.1', port: servicePort, log });
  const primary = new CheckpointPrimary({ vmName: 'vm', nodeId: 'primary-node', epoch: 1, intervalMs: 20, failTimeoutMs: 4000, arbiterDeadlineMs: 4000, tickMs: 5, clock: realClock, arbiter, vcpu, service, log });
  // The channel runs through a fault proxy, so the test can hold the backup's acknowledgements.
  const link = await FaultProxy.start({ targetPort: listener.address!.port });
  const dialer = new ChannelDialer('127.0.0.1', link.port, { secret, identity: identity('primary'), log, transport: tcpChannelTransport('tls-psk'), retryMinMs: 20 });
  const connected = new Promise<void>((r) => dialer.once('connection', () => r()));
  dialer.on('connection', (c: ChannelConnection) => primary.attach(c));
  dialer.start();
  await connected;
  await primary.start();

  let client: RespClient | undefined;
  let primaryDown = false;
  try {
    client = await RespClient.connect({ port: servicePort, callTimeoutMs: 30_000 });
    const answered: Array<[string, string]> = [];
    const t0 = Date.now();
    for (let i = 0; i < 40 && Date.now() - t0 < 20_000; i++) {
      const key = `k${i}`;
      const value = `v${i}-${randomBytes(4).toString('hex')}`;
      const r: unknown = await client.call('SET', key, value);
      assert.equal(r, 'OK');
      answered.push([key, value]);
      if (i % 10 === 0) await new Promise((res) => setTimeout(res, 30)); // let interval checkpoints pass too
    }
    assert.equal(answered.length, 40);

    // Output commit: with the backup's acknowledgements held on the wire, a write is executed but its
    // reply is held; released when the acknowledgement of its checkpoint arrives.
    link.hold('down');
    let replied = false;
    const pending = client.call('SET', 'held', 'until-acked').then((r: unknown) => {
      replied = true;
      return r;
    });
    await new Promise((res) => setTimeout(res, 600));
    assert.equal(replied, false, 'no reply while the backup\'s acknowledgement is held');
    assert.ok(primary.status().heldOutputs >= 1, `the reply is held (${primary.status().heldOutputs})`);
    link.release('down');
    assert.equal(await pending, 'OK');
    answered.push(['held', 'until-acked']);
    const ps = primary.status();
    assert.ok(primary.stats.captured >= 2, `checkpoints captured: ${JSON.stringify({ stats: primary.stats, status: primary.status(), backup: backup.status() })}`);
    assert.ok(ps.ackedCheckpoint >= 1 && backup.replica.checkpoint >= ps.ackedCheckpoint, `the backup holds what it acknowledged (${backup.replica.checkpoint} ≥ ${ps.ackedCheckpoint})`);
    assert.equal(primary.stats.released, 41, 'every reply went out through the output commit');

    // The primary dies: its vCPU, channel and service vanish at once (it never claims).
    primaryDown = true;
    dialer.close();
    await primary.close();
    await vcpu.terminate();

    const outcome = await Promise.race([backup.done, new Promise<never>((_, rej) => setTimeout(() => rej(new Error('the backup did not go live in 40 s')), 40_000))]);
    assert.equal(outcome.t, 'live');
    if (outcome.t !== 'live') return;
    assert.equal(outcome.epoch, 2);
    assert.deepEqual(await arbiter.read('vm', { deadlineMs: 2000 }), { epoch: 2, owner: 'backup-node' });

    // Go live from the checkpoint on a fresh machine and read every acknowledged key back.
    const s = outcome.snapshot;
    const conn = 1000;
    const inputs = [{ atCount: s.count, kind: 'open' as const, conn }, ...answered.map(([k]) => ({ atCount: s.count, kind: 'data' as const, conn, data: resp('GET', k) }))];
    const live = recordRun(guest('kv'), cfg, new ScriptedEnv(inputs, { seed: 3 }), { from: s });
    const got = Buffer.concat(live.outputs.filter((o) => o.conn === conn && o.kind === 'net').map((o) => Buffer.from(o.data))).toString('latin1');
    const expected = answered.map(([, v]) => `$${v.length}\r\n${v}\r\n`).join('');
    assert.equal(got, expected, 'every acknowledged write is in the state the backup went live with');
  } finally {
    await client?.close();
    dialer.close();
    if (!primaryDown) {
      await primary.close();
      await vcpu.terminate();
    }
    backup.close();
    await link.close();
    await listener.close();
    await arbiter.close();
    await server.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
});

/**
 * `ftvm run --mode checkpoint` with real processes on loopback: an embedded arbiter, a checkpointing
 * primary and its backup. A RESP client writes through the primary; the primary is killed with SIGKILL;
 * the backup claims the VM, goes live from its last complete checkpoint and serves — every write the
 * primary acknowledged is there. Timeouts are generous: the machine running this may be loaded.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { RespClient } from '../src/client/resp.js';
import { CLI, guestFile, makeSecretFile, startArbiter } from '../src/testing/pair.js';
import { spawnNode, type ProcessHandle } from '../src/testing/processes.js';
import { freePorts } from '../src/util/ports.js';

/** A reply as text (bulk strings may come as Buffers). */
const text = (v: unknown): unknown => (Buffer.isBuffer(v) ? v.toString('utf8') : v);

test('checkpoint mode, two processes: kill -9 of the primary; the backup goes live from its last checkpoint with every acknowledged write', async () => {
  const secretFile = makeSecretFile();
  const arbiter = await startArbiter(secretFile);
  const [channel, primaryService, backupService] = await freePorts(3);
  const common = ['--mode', 'checkpoint', '--secret-file', secretFile, '--arbiter', arbiter.url, '--fail-timeout-ms', '1500', '--arbiter-deadline-ms', '3000', '--checkpoint-interval-ms', '20', '--no-fast-failover'];
  const procs: ProcessHandle[] = [arbiter.proc];
  let client: RespClient | undefined;
  try {
    const backup = spawnNode([CLI, 'run', guestFile('kv'), '--role', 'backup', '--channel', `127.0.0.1:${channel}`, '--service', `127.0.0.1:${backupService}`, '--node-id', 'ckpt-backup', ...common], { name: 'backup' });
    procs.push(backup);
    await backup.waitForLine(/checkpoint backup: listening/, 30_000, { stream: 'stderr' });
    const primary = spawnNode([CLI, 'run', guestFile('kv'), '--role', 'primary', '--peer', `127.0.0.1:${channel}`, '--service', `127.0.0.1:${primaryService}`, '--node-id', 'ckpt-primary', ...common], { name: 'primary' });
    procs.push(primary);
    await primary.waitForLine(/primary is serving/, 30_000, { stream: 'stderr' });

    client = await RespClient.connect({ port: primaryService!, callTimeoutMs: 30_000 });
    const answered: Array<[string, string]> = [];
    const t0 = Date.now();
    for (let i = 0; i < 50 && Date.now() - t0 < 30_000; i++) {
      const value = `v${i}-${randomBytes(4).toString('hex')}`;
      const r: unknown = await client.call('SET', `k${i}`, value);
      assert.equal(text(r), 'OK');
      answered.push([`k${i}`, value]);
    }
    assert.ok(answered.length >= 20, `writes acknowledged before the kill (${answered.length})`);
    await client.close();
    client = undefined;

    const mark = backup.mark();
    primary.kill('SIGKILL');
    await primary.exited;
    const wentLive = await backup.waitForLine(/"checkpoint":(\d+).*going live from the last complete checkpoint/, 30_000, { stream: 'stderr', since: mark });
    assert.ok(Number(wentLive[1]) >= 1, `the backup went live from a complete checkpoint (${wentLive[1]})`);
    await backup.waitForLine(/primary is serving/, 30_000, { stream: 'stderr', since: mark });

    client = await RespClient.connect({ port: backupService!, callTimeoutMs: 30_000 });
    for (const [k, v] of answered) assert.equal(text(await client.call('GET', k)), v, `${k} survived the failover`);
    // The backup serves on: a new write, read back.
    assert.equal(text(await client.call('SET', 'after', 'failover')), 'OK');
    assert.equal(text(await client.call('GET', 'after')), 'failover');
  } finally {
    await client?.close();
    for (const p of procs.reverse()) await p.stop(3000);
  }
});

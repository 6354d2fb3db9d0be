/**
 * The live pair: two real `ftvm run` processes on loopback, real RESP clients (ours and redis-cli),
 * a fault-injecting proxy on the logging channel.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import net from 'node:net';
import { after, test } from 'node:test';
import { promisify } from 'node:util';
import { RespClient } from '../src/client/resp.js';
import { controlRequest } from '../src/service/control.js';
import { readSecretFileSync } from '../src/security/secrets.js';
import { CLI, guestFile, makeSecretFile, startBackup, startPair } from '../src/testing/pair.js';
import { freePort, spawnNode, stopAll } from '../src/testing/processes.js';
import { needs, requireComponents } from '../src/testing/system-deps.js';

const run = promisify(execFile);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
after(() => stopAll());

test('N concurrent RESP clients and redis-cli through the primary; the backup ends in the same state', needs('redis-tools'), async () => {
  requireComponents('redis-tools');
  const pair = await startPair({ guest: 'kv' });
  try {
    const N = 8;
    const M = 250;
    const clients = await Promise.all(Array.from({ length: N }, () => RespClient.connect({ port: pair.servicePort })));
    await Promise.all(
      clients.map(async (c, i) => {
        for (let j = 0; j < M; j++) {
          assert.equal(await c.call('SET', `k:${i}:${j}`, `v${i}-${j}`), 'OK');
          if (j % 5 === 0) await c.call('INCR', 'shared');
          if (j % 7 === 0) assert.equal(String(await c.call('GET', `k:${i}:${j}`)), `v${i}-${j}`);
        }
      }),
    );
    const { stdout: set } = await run('redis-cli', ['-p', String(pair.servicePort), 'SET', 'from-redis-cli', 'hello']);
    assert.equal(set.trim(), 'OK');
    const { stdout: get } = await run('redis-cli', ['-p', String(pair.servicePort), 'GET', 'from-redis-cli']);
    assert.equal(get.trim(), 'hello');
    assert.equal(Number(String(await clients[0]!.call('GET', 'shared'))), N * Math.ceil(M / 5));
    assert.equal(await clients[1]!.call('DBSIZE'), N * M + 2);
    // One connection carries far more than the per-connection input bound (4 MiB) over its life: the
    // guest takes every byte off the ring, so the connection is never held back.
    const big = 'x'.repeat(32 * 1024);
    for (let j = 0; j < 200; j++) assert.equal(await clients[2]!.call('SET', `big:${j % 4}`, big), 'OK');
    assert.equal(String(await clients[2]!.call('GET', 'big:3')).length, big.length);
    assert.equal((await pair.status('primary')).clientsPausedForInput, 0);
    for (const c of clients) c.close();
    const agreed = await pair.hashesAgree();
    assert.ok(agreed.n > 0);
    const ps = await pair.status('primary');
    assert.equal(ps.backup, 'connected');
    assert.equal(ps.outputsHeld, 0);
  } finally {
    await pair.stop();
  }
});

test('output rule: no reply leaves the primary while the backup has not acknowledged its entry', async () => {
  const pair = await startPair({ guest: 'kv', viaProxy: true });
  try {
    const c = await RespClient.connect({ port: pair.servicePort, callTimeoutMs: 20_000 });
    assert.equal(await c.call('SET', 'warm', '1'), 'OK');
    pair.proxy!.hold('down'); // backup → primary: the ACKs
    let replied = false;
    const reply = c.call('SET', 'held', 'yes').then((v) => {
      replied = true;
      return v;
    });
    await sleep(800);
    assert.equal(replied, false, 'the reply must wait for the ACK of its output entry');
    const s = await pair.status('primary');
    assert.ok((s.outputsHeld as number) >= 1, `outputs are held (${JSON.stringify(s)})`);
    assert.ok((s.ackedEntries as number) < (s.entries as number), 'the primary has unacknowledged entries');
    pair.proxy!.release('down');
    assert.equal(await reply, 'OK');
    assert.equal(String(await c.call('GET', 'held')), 'yes');
    c.close();
    await pair.hashesAgree();
  } finally {
    await pair.stop();
  }
});

test('the backup never runs ahead: with the channel paused it stops at the last entry or heartbeat it holds', async () => {
  const pair = await startPair({ guest: 'spin', viaProxy: true, primaryArgs: ['--lag-max-ms', '100000'] });
  try {
    const c = await RespClient.connect({ port: pair.servicePort });
    const sock = net.connect(pair.servicePort, '127.0.0.1');
    await new Promise((r) => sock.once('connect', r));
    sock.write('spin 4000000000');
    // Let the replica follow for a moment, then pause the primary → backup direction.
    const t0 = Date.now();
    while (((await pair.status('backup')).instructionNumber as number) < 50_000_000 && Date.now() - t0 < 10_000) await sleep(20);
    pair.proxy!.hold('up');
    // The replica may still be catching up to the grant it holds (it can lag the primary by more than
    // a moment on a loaded machine): wait until it stands at that grant, then watch it stay there.
    let b1 = await pair.status('backup');
    const t2 = Date.now();
    for (;;) {
      await sleep(200);
      const b = await pair.status('backup');
      const still = b.instructionNumber === b1.instructionNumber && b.grantedInstructionNumber === b1.grantedInstructionNumber;
      b1 = b;
      if (still || Date.now() - t2 > 15_000) break;
    }
    assert.ok((b1.instructionNumber as number) <= (b1.grantedInstructionNumber as number), 'the replica stops at (or before) the grant it holds');
    await sleep(700);
    const b2 = await pair.status('backup');
    const p2 = await pair.status('primary');
    assert.equal(b2.instructionNumber, b1.instructionNumber, 'the backup made no progress without log or heartbeats');
    assert.equal(b2.grantedInstructionNumber, b1.grantedInstructionNumber);
    assert.ok((b2.instructionNumber as number) <= (b2.grantedInstructionNumber as number), 'never past the grant');
    assert.ok((p2.instructionNumber as number) > (b2.instructionNumber as number), 'the primary went on');
    pair.proxy!.release('up');
    const t1 = Date.now();
    while (((await pair.status('backup')).instructionNumber as number) <= (b2.instructionNumber as number) && Date.now() - t1 < 10_000) await sleep(20);
    assert.ok(((await pair.status('backup')).instructionNumber as number) > (b2.instructionNumber as number), 'the backup resumed');
    sock.destroy();
    c.close();
  } finally {
    await pair.stop();
  }
});

async function backupAlive(secretFile: string, control: string): Promise<void> {
  const s = (await controlRequest(control, readSecretFileSync(secretFile), 'GET', '/status')) as { role: string };
  assert.equal(s.role, 'backup');
}

test('bad peers are refused with a clear log line, and the backup keeps running', async () => {
  const secret = makeSecretFile();
  const [channel, control] = [await freePort(), await freePort()];
  const backup = await startBackup('kv', channel, control, secret);
  const bc = `127.0.0.1:${control}`;
  try {
    const primaryWith = async (args: string[], guest = 'kv') => {
      const svc = await freePort();
      return spawnNode([CLI, 'run', guestFile(guest), '--role', 'primary', '--service', `127.0.0.1:${svc}`, '--peer', `127.0.0.1:${channel}`, ...args], { name: 'bad-primary' });
    };
    // Each bad primary is a new process: on a loaded machine its start-up alone can take 10 s.
    const START_MS = 30_000;
    // 1. A primary with the wrong secret: refused at the TLS-PSK handshake (its PSK identity is unknown).
    const wrong = await primaryWith(['--secret-file', makeSecretFile()]);
    await backup.waitForLine(/refused peer: TLS handshake failed \(wrong secret/, START_MS, { stream: 'stderr' });
    await wrong.stop();
    await backupAlive(secret, bc);
    // 2. A primary of an older epoch.
    const old = await primaryWith(['--secret-file', secret, '--epoch', '0']);
    await backup.waitForLine(/refused peer: the peer is at epoch 0, older than ours \(1\)/, START_MS, { stream: 'stderr' });
    await old.waitForLine(/newer than ours \(0\): this node is fenced|the peer refused us/, START_MS, { stream: 'stderr' });
    await old.stop();
    await backupAlive(secret, bc);
    // 3. A primary with a different guest module.
    const other = await primaryWith(['--secret-file', secret], 'spin');
    await backup.waitForLine(/refused peer: the peer's guest module differs/, START_MS, { stream: 'stderr' });
    await other.stop();
    await backupAlive(secret, bc);
    // 4. Forged bytes (no secret) and 5. an oversized frame, from raw sockets: not even a TLS handshake.
    const raw = async (bytes: Buffer): Promise<void> => {
      const s = net.connect(channel, '127.0.0.1');
      await new Promise((r) => s.once('connect', r));
      s.on('error', () => undefined);
      s.write(bytes);
      await new Promise<void>((r) => {
        const done = (): void => r();
        s.once('close', done);
        s.once('end', done);
        setTimeout(done, 5000).unref();
      });
      s.destroy();
    };
    const forged = Buffer.alloc(4 + 80, 7);
    forged.writeUInt32LE(80, 0);
    const mark = backup.mark();
    await raw(forged);
    await backup.waitForLine(/refused peer: TLS handshake failed/, 10_000, { stream: 'stderr', since: mark });
    const huge = Buffer.alloc(8);
    huge.writeUInt32LE(0xfffffff0, 0);
    const mark2 = backup.mark();
    await raw(huge);
    await backup.waitForLine(/refused peer: TLS handshake failed/, 10_000, { stream: 'stderr', since: mark2 });
    await backupAlive(secret, bc);
    // Finally a good primary still pairs with this backup and serves.
    const svc = await freePort();
    const good = spawnNode([CLI, 'run', guestFile('kv'), '--role', 'primary', '--service', `127.0.0.1:${svc}`, '--peer', `127.0.0.1:${channel}`, '--secret-file', secret], { name: 'good-primary' });
    await good.waitForLine(/primary is serving/, 20_000, { stream: 'stderr' });
    const c = await RespClient.connect({ port: svc });
    assert.equal(await c.call('PING'), 'PONG');
    c.close();
    await good.stop();
  } finally {
    await backup.stop();
  }
});

/**
 * An unmodified WASI program (the C server, guests/c-server) as a live fault-tolerant pair: real
 * `ftvm run` processes, real RESP clients and redis-cli, kill -9 of the primary under load.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { after, test } from 'node:test';
import { promisify } from 'node:util';
import { callOnAnyReplica } from '../src/client/failover.js';
import { RespClient, isIndeterminate } from '../src/client/resp.js';
import { controlRequest } from '../src/service/control.js';
import { startFtPair, startPair } from '../src/testing/pair.js';
import { Pool } from '../src/testing/pool.js';
import { stopAll } from '../src/testing/processes.js';

const run = promisify(execFile);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
after(() => stopAll());

async function statusOr(addr: string): Promise<Record<string, unknown> | null> {
  try {
    return (await controlRequest(addr, 'GET', '/status', 1000)) as Record<string, unknown>;
  } catch {
    return null;
  }
}

async function waitFor(what: string, cond: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

test('c_server pair: 8 concurrent RESP clients and redis-cli; the backup verifies the same state hash while the guest is blocked in poll', async () => {
  const pair = await startPair({ guest: 'c_server' });
  try {
    const N = 8;
    const M = 60;
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

test('c_server pair: kill -9 of the primary under load; the backup goes live inside the blocked call and nothing acknowledged is lost', async () => {
  const pair = await startFtPair({ guest: 'c_server' });
  try {
    const acked = new Map<string, string>();
    let stop = false;
    const writers = Array.from({ length: 4 }, async (_, w) => {
      for (let i = 0; !stop && i < 3000; i++) {
        const key = `w${w}:${i}`;
        const value = `v${i}`;
        await callOnAnyReplica([pair.servicePort, pair.backupServicePort], ['SET', key, value], { deadlineMs: 20_000 });
        acked.set(key, value);
      }
    });
    await waitFor('some acknowledged writes', async () => acked.size >= 150);
    pair.primary.kill('SIGKILL');
    const killedAt = acked.size;
    await waitFor('the backup to go live', async () => (await statusOr(pair.backupControl))?.role === 'primary');
    await waitFor('writes after the failover', async () => acked.size >= killedAt + 150);
    stop = true;
    await Promise.all(writers);
    const c = await RespClient.connect({ port: pair.backupServicePort });
    let missing = 0;
    for (const [k, v] of acked) if (String(await c.call('GET', k)) !== v) missing++;
    c.close();
    assert.equal(missing, 0, `${missing} of ${acked.size} acknowledged writes were lost`);
    assert.equal((await statusOr(pair.backupControl))?.epoch, 2);
  } finally {
    await pair.stop();
  }
});

test('c_server re-replication: a primary whose guest is blocked in poll clones itself to a standby (Asyncify unwind → snapshot → rewind); kill -9 cycles lose nothing acknowledged', async () => {
  const pool = await Pool.start({ slots: 3, guest: 'c_server' });
  const acked = new Map<string, string>();
  let stopping = false;
  const writer = async (w: number): Promise<void> => {
    let client: RespClient | undefined;
    for (let i = 0; !stopping && i < 100_000; i++) {
      const key = `w${w}:${i}`;
      const value = `v${i}`;
      for (let attempt = 0; attempt < 2000 && !stopping; attempt++) {
        try {
          if (!client) {
            const ps = pool.servicePorts;
            client = await RespClient.connect({ port: ps[(w + attempt) % ps.length]!, connectTimeoutMs: 300, callTimeoutMs: 3000 });
          }
          if ((await client.call('SET', key, value)) === 'OK') acked.set(key, value);
          break;
        } catch (err) {
          client?.close();
          client = undefined;
          if (isIndeterminate(err)) break; // unknown outcome: a new key
          await sleep(10);
        }
      }
    }
    client?.close();
  };
  const writers = [0, 1, 2].map((w) => writer(w));
  try {
    let epoch = 0;
    for (let cycle = 0; cycle < 2; cycle++) {
      const t0 = Date.now();
      const { primary, backup, epoch: e } = await pool.waitProtected();
      if (process.env.FTVM_TEST_TRACE) console.error(`cycle ${cycle}: protected after ${Date.now() - t0} ms`);
      assert.ok(e > epoch);
      epoch = e;
      await pool.hashesAgree(primary, backup);
      const before = acked.size;
      const t1 = Date.now();
      await pool.killAndReplace(primary);
      await pool.waitLive(backup);
      const t2 = Date.now();
      await waitFor('writes after the failover', async () => acked.size >= before + 20);
      if (process.env.FTVM_TEST_TRACE) console.error(`cycle ${cycle}: hashes ${t1 - t0} ms, live ${t2 - t1} ms, writes ${Date.now() - t2} ms`);
    }
    const t3 = Date.now();
    const { primary, backup } = await pool.waitProtected();
    await pool.hashesAgree(primary, backup);
    if (process.env.FTVM_TEST_TRACE) console.error(`final protected pair after ${Date.now() - t3} ms`);
    stopping = true;
    await Promise.all(writers);
    const c = await RespClient.connect({ port: primary.servicePort, callTimeoutMs: 10_000 });
    let missing = 0;
    const keys = [...acked.keys()];
    for (let i = 0; i < keys.length; i += 200) {
      const batch = keys.slice(i, i + 200);
      const got = (await c.call('MGET', ...batch)) as Array<Buffer | null>;
      batch.forEach((k, j) => {
        if (String(got[j]) !== acked.get(k)) missing++;
      });
    }
    c.close();
    assert.equal(missing, 0, `${missing} of ${acked.size} acknowledged writes were lost`);
    assert.ok(acked.size > 40);
  } finally {
    stopping = true;
    await Promise.all(writers);
    await pool.stop();
  }
});

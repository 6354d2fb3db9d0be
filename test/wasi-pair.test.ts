/**
 * An unmodified WASI program (the C server, guests/c-server) as a live fault-tolerant pair: real
 * `ftvm run` processes, real RESP clients and redis-cli, kill -9 of the primary under load.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { after, test } from 'node:test';
import { promisify } from 'node:util';
import { callOnAnyReplica } from '../src/client/failover.js';
import { RespClient } from '../src/client/resp.js';
import { controlRequest } from '../src/service/control.js';
import { startFtPair, startPair } from '../src/testing/pair.js';
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

/**
 * `ftvm proxy` with real processes on loopback (docs/PROXY.md): client connections that survive kill -9
 * failovers of the primary, with standbys re-recruited. Clients are strict: any reset, error or close
 * of their connection fails the test. Counting clients (INCR): every counter equals the replies its
 * clients received and the reply values are those of a serial execution; a failover in the middle of a
 * 1,000-command pipeline: all 1,000 replies, in order, exactly once.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { StrictResp, startProxiedPool, type ProxiedPool, type RespReply } from '../src/testing/proxy-harness.js';
import { stopAll } from '../src/testing/processes.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<T>((_, rej) => (t = setTimeout(() => rej(new Error(`${what}: no answer within ${ms} ms`)), ms)))]).finally(() => clearTimeout(t));
}

let h: ProxiedPool;
before(async () => {
  h = await startProxiedPool({ slots: 4, parallelStart: true, startTimeoutMs: 60_000, nodeArgs: ['--proxy-reattach-timeout-ms', '20000'] });
  await h.pool.waitProtected();
});
after(async () => {
  await h?.stop();
  await stopAll();
});

const restarts: Array<Promise<void>> = [];

/**
 * kill -9 of the serving primary; waits for a protected pair again (the new primary recruits a waiting
 * standby) while the killed slot comes back as a fresh standby in the background.
 */
async function failover(): Promise<void> {
  const { primary } = await h.pool.waitProtected(30_000);
  restarts.push(h.pool.killAndReplace(primary));
  await sleep(50);
  await h.pool.waitProtected(30_000);
}

test('counting clients (INCR) through the proxy across 2 kill -9 failovers: no error, none lost or duplicated, serial values', async (t) => {
  const t0 = Date.now();
  const CONNS = 8;
  const KEYS = 16;
  const clients = await Promise.all(Array.from({ length: CONNS }, () => StrictResp.connect(h.proxyPort)));
  const values = new Map<string, number[]>();
  let stopping = false;
  const deadline = Date.now() + 40_000;
  let ops = 0;
  const loops = clients.map(async (c, i) => {
    let n = 0;
    while (!stopping && n < 20_000 && Date.now() < deadline) {
      const keys = [0, 1, 2, 3].map(() => `ctr:${(i * 7 + n++ * 5) % KEYS}`);
      const rs = await within(Promise.all(c.send(keys.map((k) => ['INCR', k]))), 15_000, `client ${i}`);
      rs.forEach((r, j) => {
        assert.equal(typeof r, 'number', `INCR reply ${JSON.stringify(r)}`);
        const k = keys[j]!;
        let a = values.get(k);
        if (a === undefined) values.set(k, (a = []));
        a.push(r as number);
        ops++;
      });
    }
  });
  for (let f = 0; f < 2; f++) {
    await sleep(800);
    const before = ops;
    const tf = Date.now();
    await failover();
    t.diagnostic(`failover ${f + 1}: protected again after ${Date.now() - tf} ms; ${ops - before} replies meanwhile`);
  }
  await sleep(500);
  stopping = true;
  await Promise.all(loops);
  await Promise.all(restarts.splice(0));
  for (const [i, c] of clients.entries()) assert.equal(c.failure, undefined, `client ${i} saw a failure`);
  const check = await StrictResp.connect(h.proxyPort);
  for (const [k, a] of values) {
    const got = await within(check.call('GET', k), 10_000, 'GET');
    assert.equal(Number(got), a.length, `${k}: the counter equals the INCR replies received`);
    const sorted = [...a].sort((x, y) => x - y);
    sorted.forEach((v, idx) => assert.equal(v, idx + 1, `${k}: reply values are 1..${a.length}, each once`));
  }
  assert.ok(ops > 1000, `enough operations ran (${ops})`);
  t.diagnostic(`${ops} INCR replies on ${values.size} counters, ${CONNS} connections, ${Date.now() - t0} ms`);
  assert.equal(check.failure, undefined);
  for (const c of clients) c.close();
  check.close();
});

test('a kill -9 failover in the middle of a pipeline of 1,000 commands: all replies, in order, exactly once', async () => {
  const c = await StrictResp.connect(h.proxyPort);
  const key = `pipe:${Date.now()}`;
  const replies: Array<Promise<RespReply>> = [];
  const { primary } = await h.pool.waitProtected(30_000);
  for (let chunk = 0; chunk < 10; chunk++) {
    replies.push(...c.send(Array.from({ length: 100 }, () => ['INCR', key])));
    if (chunk === 4) primary.proc!.kill('SIGKILL');
  }
  const got = await within(Promise.all(replies), 30_000, 'the pipeline');
  assert.deepEqual(got, Array.from({ length: 1000 }, (_, i) => i + 1));
  assert.equal(Number(await within(c.call('GET', key), 10_000, 'GET')), 1000);
  assert.equal(c.failure, undefined);
  c.close();
  await primary.proc!.exited;
  primary.gen++;
  await h.pool.startStandby(primary);
  await h.pool.waitProtected(30_000);
});

/**
 * An unmodified WASI program (the C server, guests/c-server) as a live fault-tolerant pair: real
 * `ftvm run` processes, real RESP clients and redis-cli, kill -9 of the primary under load.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import net from 'node:net';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { promisify } from 'node:util';
import { callOnAnyReplica } from '../src/client/failover.js';
import { RespClient, isIndeterminate } from '../src/client/resp.js';
import { startFtPair, startPair, statusOr, waitFor } from '../src/testing/pair.js';
import { Pool } from '../src/testing/pool.js';
import { stopAll } from '../src/testing/processes.js';
import { needs, requireComponents } from '../src/testing/system-deps.js';

const run = promisify(execFile);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
after(() => stopAll());


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
    await waitFor('the backup to go live', async () => (await statusOr(pair.auth, pair.backupControl))?.role === 'primary');
    await waitFor('writes after the failover', async () => acked.size >= killedAt + 150);
    stop = true;
    await Promise.all(writers);
    const c = await RespClient.connect({ port: pair.backupServicePort });
    let missing = 0;
    for (const [k, v] of acked) if (String(await c.call('GET', k)) !== v) missing++;
    c.close();
    assert.equal(missing, 0, `${missing} of ${acked.size} acknowledged writes were lost`);
    assert.equal((await statusOr(pair.auth, pair.backupControl))?.epoch, 2);
  } finally {
    await pair.stop();
  }
});

test('rust_server pair (Rust std, built with Debian rustc): redis-cli works; kill -9 of the primary under load; nothing acknowledged lost', needs('rust-wasi', 'redis-tools'), async () => {
  requireComponents('rust-wasi', 'redis-tools');
  const pair = await startFtPair({ guest: 'rust_server' });
  try {
    const { stdout: set } = await run('redis-cli', ['-p', String(pair.servicePort), 'SET', 'from-redis-cli', 'hello']);
    assert.equal(set.trim(), 'OK');
    const { stdout: get } = await run('redis-cli', ['-p', String(pair.servicePort), 'GET', 'from-redis-cli']);
    assert.equal(get.trim(), 'hello');
    const acked = new Map<string, string>();
    let stop = false;
    let incrs = 0;
    const writers = Array.from({ length: 4 }, async (_, w) => {
      for (let i = 0; !stop && i < 3000; i++) {
        const key = `w${w}:${i}`;
        const value = `v${i}`;
        await callOnAnyReplica([pair.servicePort, pair.backupServicePort], ['SET', key, value], { deadlineMs: 20_000 });
        acked.set(key, value);
        if (i % 10 === 0) {
          // INCR is not idempotent: count only acknowledged ones, as a lower bound.
          await callOnAnyReplica([pair.servicePort, pair.backupServicePort], ['INCR', 'n'], { deadlineMs: 20_000, expect: (v) => typeof v === 'number' });
          incrs++;
        }
      }
    });
    await waitFor('some acknowledged writes', async () => acked.size >= 150);
    await pair.hashesAgree();
    pair.primary.kill('SIGKILL');
    const killedAt = acked.size;
    await waitFor('the backup to go live', async () => (await statusOr(pair.auth, pair.backupControl))?.role === 'primary');
    await waitFor('writes after the failover', async () => acked.size >= killedAt + 150);
    stop = true;
    await Promise.all(writers);
    const c = await RespClient.connect({ port: pair.backupServicePort });
    let missing = 0;
    for (const [k, v] of acked) if (String(await c.call('GET', k)) !== v) missing++;
    assert.equal(missing, 0, `${missing} of ${acked.size} acknowledged writes were lost`);
    assert.ok(Number(await c.call('INCR', 'n')) > incrs, 'every acknowledged INCR is counted');
    assert.equal(String(await c.call('GET', 'from-redis-cli')), 'hello');
    c.close();
    assert.equal((await statusOr(pair.auth, pair.backupControl))?.epoch, 2);
  } finally {
    await pair.stop();
  }
});

test('per-connection backpressure: a client sending 100 MiB to a connection the guest does not read pauses only itself; another client is served meanwhile; it resumes once the guest reads', async () => {
  // The C server in its blocking mode serves one client at a time: while A is served, B is never
  // accepted, so B's input is never read.
  const pair = await startPair({ guest: 'c_server', primaryArgs: ['--arg', 'blocking'], backupArgs: ['--arg', 'blocking'] });
  const floodBytes = 100 * 1024 * 1024;
  const chunk = Buffer.alloc(1024 * 1024, 0x0a); // empty inline commands: consumed without a reply
  let accepted = 0; // bytes the flood client's kernel took (the write callback ran)
  let stopFlood = false;
  let b: net.Socket | undefined;
  try {
    const a = await RespClient.connect({ port: pair.servicePort });
    assert.equal(await a.call('PING'), 'PONG'); // A is the client being served
    b = net.connect({ port: pair.servicePort, host: '127.0.0.1' });
    b.on('error', () => undefined);
    b.setMaxListeners(0);
    await new Promise<void>((r) => b!.once('connect', () => r()));
    const flood = (async () => {
      const until = Date.now() + 60_000;
      for (let sent = 0; sent < floodBytes && !stopFlood && Date.now() < until; sent += chunk.length) {
        const flushed = b!.write(chunk, () => void (accepted += chunk.length));
        if (!flushed) await new Promise<void>((r) => { const t = setTimeout(r, 200); b!.once('drain', () => { clearTimeout(t); r(); }); });
      }
    })();
    await waitFor('the flood to stall', async () => (await pair.status('primary')).clientsPausedForInput === 1);
    if (process.env.FTVM_TEST_TRACE) console.error(`stalled at ${accepted}`);
    // A keeps being served while B is held back; every reply comes promptly.
    const t0 = Date.now();
    let slowestMs = 0;
    for (let i = 0; i < 200; i++) {
      const t = Date.now();
      assert.equal(await a.call('SET', `k${i}`, `v${i}`), 'OK');
      assert.equal(String(await a.call('GET', `k${i}`)), `v${i}`);
      slowestMs = Math.max(slowestMs, Date.now() - t);
      if (process.env.FTVM_TEST_TRACE && i % 50 === 0) console.error(`call ${i}: ${Date.now() - t} ms, accepted ${accepted}`);
    }
    const servedMs = Date.now() - t0;
    const stalledAt = accepted;
    await sleep(300);
    assert.ok(accepted - stalledAt <= 2 * chunk.length, `the flood is held back (${stalledAt} then ${accepted} bytes)`);
    assert.ok(accepted < 48 * 1024 * 1024, `bounded: ${accepted} of ${floodBytes} bytes taken in (per-connection bound + socket buffers)`);
    assert.ok(slowestMs < 2000, `A served promptly (slowest ${slowestMs} ms, 400 calls in ${servedMs} ms)`);
    const ps = await pair.status('primary');
    assert.equal(ps.clientsPausedForInput, 1);
    // A leaves: the guest accepts B and reads its input; B's socket resumes.
    a.close();
    const t1 = Date.now();
    await waitFor('the flood to resume', async () => accepted >= stalledAt + 3 * chunk.length, 20_000);
    stopFlood = true;
    await flood;
    if (process.env.FTVM_TEST_TRACE) console.error(`resumed after ${Date.now() - t1} ms`);
  } finally {
    stopFlood = true;
    b?.destroy();
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

test('sqlite_server pair: 8 clients run transactions; disk images equal; kill -9 of the primary mid-load; every acknowledged transaction is in the database and integrity_check is ok; a standby recruited afterwards receives memory + disk and hashes agree', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ftvm-sqlite-pair-'));
  const image = (s: { index: number; gen: number }): string => join(dir, `slot${s.index}-g${s.gen}.img`);
  const timing = ['--arbiter-deadline-ms', '5000', '--fail-timeout-ms', '1000'];
  // Two slots: the primary recruits the other; after the kill, the killed slot restarts as a fresh
  // standby (loading the guest while the backup goes live) and is recruited by the survivor.
  const t0 = Date.now();
  const pool = await Pool.start({ slots: 2, guest: 'sqlite_server', nodeArgs: ['--disk-size', String(32 << 20), ...timing], slotArgs: (s) => ['--disk', image(s)], startTimeoutMs: 120_000, parallelStart: true });
  let stop = false;
  let load: Array<Promise<void>> = [];
  const trace = (what: string): void => void (process.env.FTVM_TEST_TRACE && console.error(`${Date.now() - t0} ms: ${what}`));
  try {
    const first = await pool.waitProtected(60_000);
    trace('protected');
    /** One SQL call on whichever replica serves; undefined if none answered in time (outcome unknown). */
    const sqlOnAny = async (text: string, deadlineMs = 20_000): Promise<unknown> => {
      const until = Date.now() + deadlineMs;
      for (let k = 0; Date.now() < until; k++) {
        const ports = pool.servicePorts;
        const c = await RespClient.connect({ port: ports[k % ports.length]!, connectTimeoutMs: 300, callTimeoutMs: 15_000 }).catch(() => undefined);
        if (c === undefined) {
          await sleep(20);
          continue;
        }
        try {
          return await c.call('SQL', text);
        } catch {
          return undefined; // sent: the outcome is unknown, never retried blindly
        } finally {
          c.close();
        }
      }
      return undefined;
    };
    const setup = await sqlOnAny('CREATE TABLE IF NOT EXISTS tx(id TEXT PRIMARY KEY, client INTEGER, n INTEGER); CREATE TABLE IF NOT EXISTS total(client INTEGER PRIMARY KEY, n INTEGER)');
    assert.deepEqual(setup, []);
    const acked = new Set<string>();
    const client = async (c: number, max: number): Promise<void> => {
      for (let i = 0; !stop && i < max; i++) {
        const id = `c${c}-${i}-${Math.random().toString(36).slice(2, 8)}`;
        const r = await sqlOnAny(`BEGIN; INSERT INTO tx VALUES('${id}', ${c}, ${i}); INSERT INTO total VALUES(${c}, 1) ON CONFLICT(client) DO UPDATE SET n = n + 1; SELECT n FROM total WHERE client = ${c}; COMMIT`);
        if (Array.isArray(r) && r.length === 1) acked.add(id);
      }
    };
    const imagesEqual = (a: string, b: string): boolean => existsSync(a) && existsSync(b) && readFileSync(a).equals(readFileSync(b));
    // Phase 1: load, then quiet: both replicas synced the same database to their own image files.
    await Promise.all(Array.from({ length: 8 }, (_, c) => client(c, 15)));
    assert.ok(acked.size >= 100, `transactions acknowledged (${acked.size})`);
    trace('phase 1 load done');
    await pool.hashesAgree(first.primary, first.backup);
    await waitFor('equal disk images', async () => imagesEqual(image(first.primary), image(first.backup)));
    trace('images equal');
    // Phase 2: kill -9 of the primary mid-load; the killed slot comes back as a fresh standby.
    const before = acked.size;
    load = Array.from({ length: 8 }, (_, c) => client(c, 10_000));
    await waitFor('more transactions', async () => acked.size >= before + 40);
    const replaced = pool.killAndReplace(first.primary);
    await pool.waitLive(first.backup, 20_000);
    trace('backup live');
    const killedAt = acked.size;
    await waitFor('transactions after the failover', async () => acked.size >= killedAt + 40, 30_000);
    trace('writes after failover');
    stop = true;
    await Promise.all(load);
    // Afterwards the survivor recruits the restarted slot as a standby, which receives memory + disk.
    await replaced;
    trace('standby restarted');
    const second = await pool.waitProtected(60_000);
    assert.equal(second.primary, first.backup);
    trace('protected again');
    await pool.hashesAgree(second.primary, second.backup); // the state hash covers memory and disk
    trace('hashes agree');
    const c = await RespClient.connect({ port: second.primary.servicePort, callTimeoutMs: 20_000 });
    assert.ok(Array.isArray(await c.call('SQL', "BEGIN; INSERT INTO tx VALUES('last', -1, 0); COMMIT")));
    await waitFor('equal disk images on the new pair', async () => imagesEqual(image(second.primary), image(second.backup)));
    const rows = (await c.call('SQL', 'SELECT id FROM tx')) as Buffer[][];
    const present = new Set(rows.map((r) => String(r[0])));
    const missing = [...acked].filter((id) => !present.has(id));
    assert.equal(missing.length, 0, `${missing.length} of ${acked.size} acknowledged transactions are missing`);
    const check = (await c.call('SQL', 'PRAGMA integrity_check')) as Buffer[][];
    assert.equal(String(check[0]![0]), 'ok');
    const totals = (await c.call('SQL', 'SELECT sum(n) FROM total')) as Buffer[][];
    assert.equal(Number(String(totals[0]![0])), present.size - 1, 'every transaction is whole: the counters agree with the rows');
    c.close();
  } finally {
    stop = true;
    await Promise.all(load);
    await pool.stop();
  }
});

/**
 * Re-replication with real processes on loopback: a primary running alone recruits a standby from the
 * pool and clones its running VM to it; after each kill -9 of the primary the backup goes live and
 * recruits the next standby. Refusals (other module, wrong secret), a transfer cut half-way, a large
 * (64 MiB) guest joined mid-load, and the same with etcd as the arbiter.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { EtcdTestCluster } from '../src/arbiter/etcd-test-cluster.js';
import { needs } from '../src/testing/system-deps.js';
import { RespClient, isIndeterminate } from '../src/client/resp.js';
import { FaultProxy } from '../src/testing/fault-proxy.js';
import { CLI, guestFile, makeSecretFile } from '../src/testing/pair.js';
import { Pool, type Slot } from '../src/testing/pool.js';
import { freePort, spawnNode, stopAll } from '../src/testing/processes.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
after(() => stopAll());

/**
 * Writers that SET unique keys on whichever replica serves, recording what was acknowledged. A call
 * whose outcome is unknown is not counted as acknowledged (and its key is never reused).
 */
function startWriters(ports: () => number[], n: number, maxOps: number): { acked: Map<string, string>; stop: () => Promise<void> } {
  const acked = new Map<string, string>();
  let stopping = false;
  const run = async (w: number): Promise<void> => {
    let client: RespClient | undefined;
    let portIdx = w;
    for (let i = 0; !stopping && i < maxOps; i++) {
      const key = `w${w}:${i}`;
      const value = `v${i}-${'x'.repeat(i % 40)}`;
      for (let attempt = 0; attempt < 2000 && !stopping; attempt++) {
        try {
          if (!client) {
            const ps = ports();
            client = await RespClient.connect({ port: ps[portIdx++ % ps.length]!, connectTimeoutMs: 300, callTimeoutMs: 3000 });
          }
          if ((await client.call('SET', key, value)) === 'OK') acked.set(key, value);
          break;
        } catch (err) {
          client?.close();
          client = undefined;
          if (isIndeterminate(err)) break; // unknown outcome: move on to a new key
          await sleep(10);
        }
      }
    }
    client?.close();
  };
  const all = Array.from({ length: n }, (_, w) => run(w));
  return {
    acked,
    async stop() {
      stopping = true;
      await Promise.all(all);
    },
  };
}

async function checkAcked(port: number, acked: Map<string, string>): Promise<number> {
  const c = await RespClient.connect({ port, callTimeoutMs: 10_000 });
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
  return missing;
}

async function killCycles(pool: Pool, cycles: number): Promise<void> {
  const writers = startWriters(() => pool.servicePorts, 3, 100_000);
  try {
    let epoch = 0;
    for (let cycle = 0; cycle < cycles; cycle++) {
      const { primary, backup, epoch: e } = await pool.waitProtected();
      assert.ok(e > epoch, `each armed pair has a new epoch (${e} after ${epoch})`);
      epoch = e;
      await pool.hashesAgree(primary, backup);
      const before = writers.acked.size;
      await pool.killAndReplace(primary); // kill -9 under load; the machine comes back as a standby
      await pool.waitLive(backup);
      const until = Date.now() + 15_000;
      while (writers.acked.size < before + 20) {
        assert.ok(Date.now() < until, `cycle ${cycle}: writes continue after the failover`);
        await sleep(20);
      }
    }
    const { primary, backup } = await pool.waitProtected();
    await pool.hashesAgree(primary, backup);
    await writers.stop();
    const missing = await checkAcked(primary.servicePort, writers.acked);
    assert.equal(missing, 0, `${missing} of ${writers.acked.size} acknowledged writes were lost`);
    assert.ok(writers.acked.size > cycles * 20);
  } finally {
    await writers.stop();
  }
}

// Three cycles in `npm test`; FTVM_KILL_CYCLES=10 (or more) for a longer run. `npm run soak` kills the
// live primary every 30 s for ten minutes.
const KILL_CYCLES = Number(process.env.FTVM_KILL_CYCLES ?? 3);

test(`${KILL_CYCLES} cycles of kill -9 of the primary under load → the backup goes live → a standby is recruited and synchronised → hashes equal; nothing acknowledged is lost`, async () => {
  assert.ok(Number.isInteger(KILL_CYCLES) && KILL_CYCLES > 0, `FTVM_KILL_CYCLES must be a positive integer, not ${process.env.FTVM_KILL_CYCLES}`);
  const pool = await Pool.start({ slots: 3 });
  try {
    await killCycles(pool, KILL_CYCLES);
  } finally {
    await pool.stop();
  }
});

test('a primary without a free standby serves alone and says so; a standby that appears later is recruited', async () => {
  const pool = await Pool.start({ slots: 1 });
  try {
    const p = pool.slots[0]!;
    const c = await RespClient.connect({ port: p.servicePort });
    assert.equal(await c.call('SET', 'a', '1'), 'OK');
    const s = await pool.status(p);
    assert.equal(s?.alone, true);
    assert.match(String(s?.backup), /none: serving alone \((no standby in the pool|looking for a standby)\)/);
    // A standby on the primary's own host is never recruited.
    const same: Slot = { index: 9, servicePort: await freePort(), channelPort: await freePort(), controlPort: await freePort(), gen: p.gen, proc: undefined };
    pool.slots.push(same);
    Object.assign(same, { index: 0 }); // same host id as the primary: slot0-g0
    await pool.startStandby(same);
    await sleep(800);
    assert.match(String((await pool.status(p))?.backup), /1 on this host \(slot0-g0\) and never used/);
    same.proc?.kill('SIGKILL');
    await same.proc?.exited;
    pool.slots.pop();
    const other: Slot = { index: 1, servicePort: await freePort(), channelPort: await freePort(), controlPort: await freePort(), gen: 0, proc: undefined };
    pool.slots.push(other);
    await pool.startStandby(other);
    const { primary, backup } = await pool.waitProtected();
    assert.equal(primary, p);
    assert.equal(backup, other);
    assert.equal(String(await c.call('GET', 'a')), '1');
    await pool.hashesAgree(primary, backup);
    c.close();
  } finally {
    await pool.stop();
  }
});

test('standbys with another guest module or the wrong secret are refused with a clear error; the primary keeps serving alone', async () => {
  const pool = await Pool.start({ slots: 1 });
  try {
    const p = pool.slots[0]!;
    const wrong = async (guest: string, secretFile: string, host: string) => {
      const [ch, ctl] = [await freePort(), await freePort()];
      const proc = spawnNode(
        [CLI, 'standby', guestFile(guest), '--channel', `127.0.0.1:${ch}`, '--control', `127.0.0.1:${ctl}`, '--secret-file', secretFile, '--arbiter', pool.arbiterUrl, '--vm-name', pool.opts.vm, '--host-id', host],
        { name: `standby-${host}` },
      );
      return proc;
    };
    // Another module: refused at the handshake (both ends check the module hash).
    const other = await wrong('spin', pool.secretFile, 'other-module');
    await other.waitForLine(/standby is in the pool/, 20_000, { stream: 'stderr' });
    await other.waitForLine(/guest module differs/, 20_000, { stream: 'stderr' });
    // The wrong secret: the arbiter itself refuses it (its pool is authenticated too).
    const badSecret = await wrong('kv', makeSecretFile(), 'bad-secret');
    await badSecret.waitForLine(/cannot register at the arbiter/, 20_000, { stream: 'stderr' });
    const c = await RespClient.connect({ port: p.servicePort });
    assert.equal(await c.call('SET', 'still', 'serving'), 'OK');
    const s = await pool.status(p);
    assert.equal(s?.alone, true);
    c.close();
    await other.stop();
    await badSecret.stop();
  } finally {
    await pool.stop();
  }
});

test('a 64 MiB guest joined mid-load: the transfer cut half-way leaves the primary serving and the standby back in the pool; the retry succeeds and the pair survives a kill of the primary', async () => {
  const proxies = new Map<number, FaultProxy>();
  // A cut healed at once is what is tested, not the fail timeout: a longer one keeps a loaded machine's
  // stalls from passing for a failure (the liveness probe is answered, so the cut itself never fails over).
  const pool = await Pool.start({ slots: 1, nodeArgs: ['--fail-timeout-ms', '1500'], advertise: (s) => (proxies.has(s.index) ? `127.0.0.1:${proxies.get(s.index)!.port}` : undefined) });
  try {
    const p = pool.slots[0]!;
    // Touch 64 MiB: 128 values of 512 KiB (the kv guest buffers at most 1 MiB of one command).
    const c = await RespClient.connect({ port: p.servicePort, callTimeoutMs: 20_000 });
    const big = 'z'.repeat(512 * 1024);
    for (let i = 0; i < 128; i++) assert.equal(await c.call('SET', `big${i}`, `${i}:${big}`), 'OK');
    c.close();
    // A standby behind a fault proxy (it registers the proxy's address).
    const slot: Slot = { index: 1, servicePort: await freePort(), channelPort: await freePort(), controlPort: await freePort(), gen: 0, proc: undefined };
    const proxy = await FaultProxy.start({ targetPort: slot.channelPort });
    proxies.set(1, proxy);
    pool.slots.push(slot);
    const writers = startWriters(() => pool.servicePorts, 2, 100_000);
    try {
      const starting = pool.startStandby(slot);
      // Cut the channel once 16 of the 64 MiB went through.
      const until = Date.now() + 30_000;
      while (proxy.bytes('up') < 16 * 1024 * 1024) {
        assert.ok(Date.now() < until, 'the transfer started');
        await new Promise((r) => setImmediate(r));
      }
      proxy.cut();
      await starting;
      await slot.proc!.waitForLine(/back in the pool/, 10_000, { stream: 'stderr' });
      const mid = writers.acked.size;
      await sleep(300);
      assert.ok(writers.acked.size > mid, 'the primary kept serving through the cut');
      assert.equal((await pool.status(p))?.alone, true);
      await proxy.heal();
      const { primary, backup } = await pool.waitProtected(60_000);
      assert.equal(backup, slot);
      await pool.hashesAgree(primary, backup);
      const last = (await pool.status(primary))?.lastRereplication as { pauseMs: number; memoryBytes: number };
      assert.ok(last.memoryBytes >= 64 * 1024 * 1024, `memory ${last.memoryBytes}`);
      // The pair survives a kill of the primary.
      p.proc!.kill('SIGKILL');
      await pool.waitLive(slot);
      await sleep(200);
      await writers.stop();
      assert.equal(await checkAcked(slot.servicePort, writers.acked), 0);
      const c2 = await RespClient.connect({ port: slot.servicePort, callTimeoutMs: 20_000 });
      const v = (await c2.call('GET', 'big127')) as Buffer;
      assert.equal(v.length, 4 + 512 * 1024);
      c2.close();
    } finally {
      await writers.stop();
    }
  } finally {
    await pool.stop();
    for (const x of proxies.values()) await x.close();
  }
});

test('a re-replicated pair whose channel is cut and healed at once reconnects and resumes (no failover)', async () => {
  const proxies = new Map<number, FaultProxy>();
  // A cut healed at once is what is tested, not the fail timeout: a longer one keeps a loaded machine's
  // stalls from passing for a failure (the liveness probe is answered, so the cut itself never fails over).
  const pool = await Pool.start({ slots: 1, nodeArgs: ['--fail-timeout-ms', '1500'], advertise: (s) => (proxies.has(s.index) ? `127.0.0.1:${proxies.get(s.index)!.port}` : undefined) });
  try {
    const slot: Slot = { index: 1, servicePort: await freePort(), channelPort: await freePort(), controlPort: await freePort(), gen: 0, proc: undefined };
    const proxy = await FaultProxy.start({ targetPort: slot.channelPort });
    proxies.set(1, proxy);
    pool.slots.push(slot);
    await pool.startStandby(slot);
    const before = await pool.waitProtected();
    const c = await RespClient.connect({ port: before.primary.servicePort, callTimeoutMs: 10_000 });
    for (let round = 0; round < 3; round++) {
      proxy.cut();
      await proxy.heal();
      assert.equal(await c.call('SET', `after-cut-${round}`, 'x'), 'OK'); // released once the redialed backup ACKs
      const after = await pool.waitProtected();
      assert.equal(after.primary, before.primary);
      assert.equal(after.epoch, before.epoch, 'no failover: the same epoch');
    }
    await pool.hashesAgree(before.primary, before.backup);
    c.close();
  } finally {
    await pool.stop();
    for (const x of proxies.values()) await x.close();
  }
});

test('with etcd as the arbiter: two kill/recruit cycles, nothing acknowledged lost', needs('etcd'), async () => {
  const cluster = await EtcdTestCluster.start({ size: 1 });
  const pool = await Pool.start({ slots: 3, arbiterUrl: cluster.url, nodeArgs: ['--arbiter-deadline-ms', '3000'] });
  try {
    await killCycles(pool, 2);
    await pool.stop();
    // A standby with the wrong channel secret (etcd needs none, so it does join the pool): the primary
    // recruits it, the channel's TLS-PSK handshake fails — the standby says why — and the primary serves
    // alone.
    const alone = await Pool.start({ slots: 1, arbiterUrl: cluster.url, nodeArgs: ['--arbiter-deadline-ms', '3000'] });
    try {
      const [ch, ctl] = [await freePort(), await freePort()];
      const wrong = spawnNode(
        [CLI, 'standby', guestFile('kv'), '--channel', `127.0.0.1:${ch}`, '--control', `127.0.0.1:${ctl}`, '--secret-file', makeSecretFile(), '--arbiter', cluster.url, '--vm-name', alone.opts.vm, '--host-id', 'wrong-secret'],
        { name: 'standby-wrong-secret' },
      );
      await wrong.waitForLine(/standby is in the pool/, 20_000, { stream: 'stderr' });
      await wrong.waitForLine(/refused peer: TLS handshake failed \(wrong secret/, 20_000, { stream: 'stderr' });
      await alone.slots[0]!.proc!.waitForLine(/the standby wrong-secret did not answer/, 20_000, { stream: 'stderr' });
      const c = await RespClient.connect({ port: alone.slots[0]!.servicePort });
      assert.equal(await c.call('SET', 'k', 'v'), 'OK');
      c.close();
      assert.equal((await alone.status(alone.slots[0]!))?.alone, true);
      await wrong.stop();
    } finally {
      await alone.stop();
    }
  } finally {
    await pool.stop();
    await cluster.stop();
  }
});

/**
 * The same failover, with etcd as the arbiter: a single member, and a 3-member cluster that loses a
 * member during the failover. Real etcd (Debian's etcd-server), real processes, kill -9.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { EtcdTestCluster } from '../src/arbiter/etcd-test-cluster.js';
import { callOnAnyReplica } from '../src/client/failover.js';
import { RespClient } from '../src/client/resp.js';
import { controlRequest } from '../src/service/control.js';
import { startFtPair } from '../src/testing/pair.js';
import { stopAll } from '../src/testing/processes.js';
import { needs } from '../src/testing/system-deps.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const clusters: EtcdTestCluster[] = [];
after(async () => {
  await Promise.all(clusters.map((c) => c.stop()));
  await stopAll();
});

async function statusOr(auth: Uint8Array, addr: string): Promise<Record<string, unknown> | null> {
  try {
    return (await controlRequest(addr, auth, 'GET', '/status', 1000)) as Record<string, unknown>;
  } catch {
    return null;
  }
}

async function killPrimaryUnderLoad(members: number, killEtcdMember: boolean): Promise<void> {
  const etcd = await EtcdTestCluster.start({ size: members });
  clusters.push(etcd);
  // etcd may need a leader election after a member dies: give arbiter calls room.
  const pair = await startFtPair({ guest: 'kv', arbiterUrl: etcd.url, primaryArgs: ['--arbiter-deadline-ms', '3000'], backupArgs: ['--arbiter-deadline-ms', '3000'] });
  try {
    const acked = new Map<string, string>();
    for (let i = 0; i < 150; i++) {
      await callOnAnyReplica([pair.servicePort], ['SET', `k${i}`, `v${i}`], { deadlineMs: 10_000 });
      acked.set(`k${i}`, `v${i}`);
    }
    if (killEtcdMember) {
      const leader = (await etcd.leaderIndex()) ?? 0;
      await etcd.kill(leader); // the cluster loses its leader as the failover starts
    }
    pair.primary.kill('SIGKILL');
    for (let i = 150; i < 300; i++) {
      await callOnAnyReplica([pair.servicePort, pair.backupServicePort], ['SET', `k${i}`, `v${i}`], { deadlineMs: 30_000 });
      acked.set(`k${i}`, `v${i}`);
    }
    const s = await statusOr(pair.auth, pair.backupControl);
    assert.equal(s?.role, 'primary', 'the backup went live');
    assert.equal(s?.epoch, 2);
    const c = await RespClient.connect({ port: pair.backupServicePort });
    for (const [k, v] of acked) assert.equal(String(await c.call('GET', k)), v, `acknowledged write ${k}`);
    c.close();
  } finally {
    await pair.stop();
    await etcd.stop();
  }
}

test('etcd (single member): kill -9 of the primary under load; the backup goes live; nothing acknowledged is lost', needs('etcd'), async () => {
  await killPrimaryUnderLoad(1, false);
});

test('etcd (3 members, the leader killed during the failover): the backup still goes live; nothing acknowledged is lost', needs('etcd'), async () => {
  await killPrimaryUnderLoad(3, true);
});

test('etcd: channel cut while both reach the arbiter: exactly one replica stays live (2 runs)', needs('etcd'), async () => {
  const etcd = await EtcdTestCluster.start({ size: 1 });
  clusters.push(etcd);
  for (let run = 0; run < 2; run++) {
    const pair = await startFtPair({ guest: 'kv', viaProxy: true, arbiterUrl: etcd.url });
    try {
      const c = await RespClient.connect({ port: pair.servicePort, callTimeoutMs: 10_000 });
      assert.equal(await c.call('SET', 'x', String(run)), 'OK');
      c.close();
      await sleep(Math.floor(Math.random() * 100));
      pair.proxy!.cut();
      const until = Date.now() + 20_000;
      let live: string[] = [];
      for (;;) {
        const p = pair.primary.exitStatus === null ? await statusOr(pair.auth, pair.primaryControl) : null;
        const b = pair.backup.exitStatus === null ? await statusOr(pair.auth, pair.backupControl) : null;
        live = [];
        if (p?.role === 'primary' && p.alone === true) live.push('primary');
        if (b?.role === 'primary') live.push('backup');
        const halted = (pair.primary.exitStatus !== null ? 1 : 0) + (pair.backup.exitStatus !== null ? 1 : 0);
        if (live.length === 1 && halted === 1) break;
        if (Date.now() > until) assert.fail(`run ${run}: live ${JSON.stringify(live)}, halted ${halted}`);
        await sleep(50);
      }
      await sleep(300);
      assert.equal(live.length, 1);
    } finally {
      await pair.stop();
    }
  }
  await etcd.stop();
});

test('etcd: kill -9 of the backup: the primary wins and continues alone', needs('etcd'), async () => {
  const etcd = await EtcdTestCluster.start({ size: 1 });
  clusters.push(etcd);
  const pair = await startFtPair({ guest: 'kv', arbiterUrl: etcd.url });
  try {
    const c = await RespClient.connect({ port: pair.servicePort, callTimeoutMs: 10_000 });
    assert.equal(await c.call('SET', 'before', '1'), 'OK');
    pair.backup.kill('SIGKILL');
    assert.equal(await c.call('SET', 'after', '2'), 'OK');
    const s = await statusOr(pair.auth, pair.primaryControl);
    assert.equal(s?.alone, true);
    assert.equal(s?.epoch, 2);
    c.close();
  } finally {
    await pair.stop();
    await etcd.stop();
  }
});

test('etcd: SIGSTOP the primary past the timeout, the backup goes live, SIGCONT: the old primary releases nothing and halts', needs('etcd'), async () => {
  const etcd = await EtcdTestCluster.start({ size: 1 });
  clusters.push(etcd);
  const pair = await startFtPair({ guest: 'kv', arbiterUrl: etcd.url });
  try {
    const c = await RespClient.connect({ port: pair.servicePort, callTimeoutMs: 20_000 });
    assert.equal(await c.call('SET', 'a', '1'), 'OK');
    pair.primary.kill('SIGSTOP');
    const late = c.call('SET', 'late', 'x').then(
      () => true,
      () => false,
    );
    const until = Date.now() + 20_000;
    while ((await statusOr(pair.auth, pair.backupControl))?.role !== 'primary') {
      if (Date.now() > until) assert.fail('the backup did not go live');
      await sleep(25);
    }
    pair.primary.kill('SIGCONT');
    assert.equal((await pair.primary.exited).code, 4);
    assert.equal(await late, false, 'the old primary released nothing');
  } finally {
    await pair.stop();
    await etcd.stop();
  }
});

test('etcd: channel cut and etcd unreachable: neither goes live, nothing released; service resumes when etcd returns', needs('etcd'), async () => {
  const etcd = await EtcdTestCluster.start({ size: 1 });
  clusters.push(etcd);
  const pair = await startFtPair({ guest: 'kv', viaProxy: true, arbiterUrl: etcd.url });
  try {
    const c = await RespClient.connect({ port: pair.servicePort, callTimeoutMs: 30_000 });
    assert.equal(await c.call('SET', 'a', '1'), 'OK');
    const pid = etcd.pid(0)!;
    process.kill(pid, 'SIGSTOP');
    pair.proxy!.cut();
    let replied = false;
    const pending = c.call('SET', 'b', '2').then(
      (v) => {
        replied = true;
        return String(v);
      },
      () => 'failed',
    );
    await sleep(1500);
    assert.equal(replied, false, 'no output without the arbiter');
    assert.notEqual((await statusOr(pair.auth, pair.backupControl))?.role, 'primary');
    process.kill(pid, 'SIGCONT');
    const until = Date.now() + 20_000;
    for (;;) {
      const p = pair.primary.exitStatus === null ? await statusOr(pair.auth, pair.primaryControl) : null;
      const b = pair.backup.exitStatus === null ? await statusOr(pair.auth, pair.backupControl) : null;
      const live = (p?.role === 'primary' && p.alone === true ? 1 : 0) + (b?.role === 'primary' ? 1 : 0);
      if (live === 1 && (pair.primary.exitStatus !== null || pair.backup.exitStatus !== null)) {
        const r = await pending;
        if (p?.alone === true) assert.equal(r, 'OK');
        else assert.equal(r, 'failed');
        break;
      }
      if (Date.now() > until) assert.fail('no replica went live after etcd returned');
      await sleep(50);
    }
  } finally {
    try {
      process.kill(etcd.pid(0)!, 'SIGCONT');
    } catch {
      // already gone
    }
    await pair.stop();
    await etcd.stop();
  }
});

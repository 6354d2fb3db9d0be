/**
 * Failure detection, go-live and arbitration with real processes: kill -9, SIGSTOP/SIGCONT, channel
 * cuts through the fault proxy, an unreachable arbiter. The embedded arbiter (`ftvm arbiter`).
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { callOnAnyReplica } from '../src/client/failover.js';
import { RespClient } from '../src/client/resp.js';
import { controlRequest } from '../src/service/control.js';
import { startFtPair, type FtPair, statusOr, waitFor } from '../src/testing/pair.js';
import { stopAll } from '../src/testing/processes.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
after(() => stopAll());


test('kill -9 of the primary under load: the backup goes live; every acknowledged write is there; clients continue', async () => {
  const pair = await startFtPair({ guest: 'kv' });
  try {
    const acked = new Map<string, string>();
    let stop = false;
    let killedAt = 0;
    const writers = Array.from({ length: 4 }, async (_, w) => {
      for (let i = 0; !stop && i < 5000; i++) {
        const key = `w${w}:${i}`;
        const value = `v${i}`;
        await callOnAnyReplica([pair.servicePort, pair.backupServicePort], ['SET', key, value], { deadlineMs: 20_000 });
        acked.set(key, value);
      }
    });
    await waitFor('some acknowledged writes', async () => acked.size >= 200);
    pair.primary.kill('SIGKILL');
    killedAt = acked.size;
    await waitFor('the backup to go live', async () => (await statusOr(pair.auth, pair.backupControl))?.role === 'primary');
    await waitFor('writes after the failover', async () => acked.size >= killedAt + 200);
    stop = true;
    await Promise.all(writers);
    const c = await RespClient.connect({ port: pair.backupServicePort });
    let missing = 0;
    for (const [k, v] of acked) if (String(await c.call('GET', k)) !== v) missing++;
    c.close();
    assert.equal(missing, 0, `${missing} of ${acked.size} acknowledged writes were lost`);
    const s = await statusOr(pair.auth, pair.backupControl);
    assert.equal(s?.epoch, 2);
  } finally {
    await pair.stop();
  }
});

test('kill -9 of the backup: the primary wins the claim and continues alone', async () => {
  const pair = await startFtPair({ guest: 'kv' });
  try {
    const c = await RespClient.connect({ port: pair.servicePort, callTimeoutMs: 10_000 });
    assert.equal(await c.call('SET', 'before', '1'), 'OK');
    pair.backup.kill('SIGKILL');
    assert.equal(await c.call('SET', 'after', '2'), 'OK'); // held until the claim is won, then released
    const s = (await pair.status('primary')) as { alone: boolean; epoch: number };
    assert.equal(s.alone, true);
    assert.equal(s.epoch, 2);
    assert.equal(String(await c.call('GET', 'before')), '1');
    c.close();
  } finally {
    await pair.stop();
  }
});

async function oneLive(pair: FtPair): Promise<{ live: string[]; halted: string[] }> {
  const p = await statusOr(pair.auth, pair.primaryControl);
  const b = await statusOr(pair.auth, pair.backupControl);
  const pExited = pair.primary.exitStatus !== null;
  const bExited = pair.backup.exitStatus !== null;
  const live: string[] = [];
  const halted: string[] = [];
  // The original primary is live only once it won its claim and runs alone (its peer is cut off).
  if (!pExited && p?.role === 'primary' && p.alone === true) live.push('primary');
  else halted.push('primary');
  if (!bExited && b?.role === 'primary') live.push('backup');
  else if (bExited || b?.role === 'halted' || b?.halted) halted.push('backup');
  return { live, halted };
}

// Two runs in `npm test` (cut and blackhole alternate); FTVM_CUT_RUNS=50 for a longer run. The simulator's
// seeds and the Jepsen test's partitions cover cuts at scale.
const CUT_RUNS = Number(process.env.FTVM_CUT_RUNS ?? 2);

test(`channel cut while both reach the arbiter: exactly one replica is live and the other halted, every time (${CUT_RUNS} runs)`, async () => {
  assert.ok(Number.isInteger(CUT_RUNS) && CUT_RUNS > 0, `FTVM_CUT_RUNS must be a positive integer, not ${process.env.FTVM_CUT_RUNS}`);
  for (let run = 0; run < CUT_RUNS; run++) {
    const pair = await startFtPair({ guest: 'kv', viaProxy: true });
    try {
      const c = await RespClient.connect({ port: pair.servicePort, callTimeoutMs: 10_000 });
      assert.equal(await c.call('SET', 'x', String(run)), 'OK');
      c.close();
      await sleep(Math.floor(Math.random() * 200));
      if (run % 2 === 0) pair.proxy!.cut();
      else pair.proxy!.blackhole('both');
      // Until both decided (the primary counts as halted while it has not won yet): one live, one halted,
      // or two live (a failure, caught below).
      await waitFor('one replica live and the other halted', async () => {
        const r = await oneLive(pair);
        return r.live.length > 1 || (r.live.length === 1 && r.halted.length === 1);
      }, 20_000);
      await sleep(300);
      const r = await oneLive(pair);
      assert.equal(r.live.length, 1, `run ${run}: live ${JSON.stringify(r)}`);
      assert.equal(r.halted.length, 1, `run ${run}: halted ${JSON.stringify(r)}`);
    } finally {
      await pair.stop();
    }
  }
});

test('SIGSTOP the primary past the timeout, the backup goes live, SIGCONT: the old primary releases nothing and halts', async () => {
  const pair = await startFtPair({ guest: 'kv' });
  try {
    const c = await RespClient.connect({ port: pair.servicePort, callTimeoutMs: 20_000 });
    assert.equal(await c.call('SET', 'a', '1'), 'OK');
    pair.primary.kill('SIGSTOP');
    // The client's request sits in the stopped primary's socket buffer.
    const late = c.call('SET', 'late', 'from-old-primary').then(
      (v) => ({ ok: true, v }),
      (e: Error) => ({ ok: false, v: e.message }),
    );
    await waitFor('the backup to go live', async () => (await statusOr(pair.auth, pair.backupControl))?.role === 'primary');
    pair.primary.kill('SIGCONT');
    const exit = await pair.primary.exited;
    assert.equal(exit.code, 4, 'the old primary halted');
    const r = await late;
    assert.equal(r.ok, false, `the old primary released a reply: ${JSON.stringify(r)}`);
    const n = await RespClient.connect({ port: pair.backupServicePort });
    assert.equal(String(await n.call('GET', 'a')), '1');
    assert.equal(await n.call('GET', 'late'), null, 'the write the old primary never acknowledged is not there');
    n.close();
  } finally {
    await pair.stop();
  }
});

test('channel cut and arbiter unreachable: neither goes live, nothing is released; service resumes once the arbiter returns', async () => {
  const pair = await startFtPair({ guest: 'kv', viaProxy: true });
  try {
    const c = await RespClient.connect({ port: pair.servicePort, callTimeoutMs: 30_000 });
    assert.equal(await c.call('SET', 'a', '1'), 'OK');
    pair.arbiter.proc.kill('SIGSTOP');
    pair.proxy!.cut();
    let replied = false;
    const pending = c.call('SET', 'b', '2').then(
      (v) => {
        replied = true;
        return { ok: true, v: String(v) };
      },
      (e: Error) => ({ ok: false, v: e.message }),
    );
    await sleep(1500);
    assert.equal(replied, false, 'no output may be released without the arbiter');
    const ps = await statusOr(pair.auth, pair.primaryControl);
    const bs = await statusOr(pair.auth, pair.backupControl);
    assert.notEqual(bs?.role, 'primary', 'the backup did not go live');
    assert.equal(ps?.alone, false, 'the primary did not continue alone');
    pair.arbiter.proc.kill('SIGCONT');
    await waitFor('one replica live', async () => (await oneLive(pair)).live.length === 1, 20_000);
    const r = await oneLive(pair);
    const p = await pending;
    if (r.live[0] === 'primary') assert.deepEqual(p, { ok: true, v: 'OK' }, 'the primary won and released the held reply');
    else assert.equal(p.ok, false, 'the backup won: the old primary released nothing');
  } finally {
    pair.arbiter.proc.kill('SIGCONT');
    await pair.stop();
  }
});

test('planned switchover: the backup takes over at the primary\'s last idle point, nothing lost; ftvm stop: the backup does not go live', async () => {
  const pair = await startFtPair({ guest: 'kv' });
  try {
    const c = await RespClient.connect({ port: pair.servicePort });
    for (let i = 0; i < 200; i++) assert.equal(await c.call('SET', `s${i}`, `v${i}`), 'OK');
    c.close();
    const r = (await controlRequest(pair.primaryControl, pair.auth, 'POST', '/switchover', 30_000)) as { switchedOver: boolean };
    assert.equal(r.switchedOver, true);
    assert.equal((await pair.primary.exited).code, 0, 'the old primary stepped down cleanly');
    await waitFor('the backup to go live', async () => (await statusOr(pair.auth, pair.backupControl))?.role === 'primary');
    const n = await RespClient.connect({ port: pair.backupServicePort });
    for (let i = 0; i < 200; i++) assert.equal(String(await n.call('GET', `s${i}`)), `v${i}`);
    assert.equal(await n.call('DBSIZE'), 200);
    n.close();
  } finally {
    await pair.stop();
  }
  const pair2 = await startFtPair({ guest: 'kv' });
  try {
    await controlRequest(pair2.primaryControl, pair2.auth, 'POST', '/stop');
    assert.equal((await pair2.primary.exited).code, 0);
    const b = await pair2.backup.exited;
    // An intentional stop is not a failure: the backup stops too, exit 0, and never goes live.
    assert.equal(b.code, 0, 'the backup stopped (exit 0) instead of going live');
    assert.ok(pair2.backup.stderr.text().includes('the primary stopped intentionally'));
    assert.ok(!pair2.backup.stderr.text().includes('went live'), 'the backup did not go live');
  } finally {
    await pair2.stop();
  }
});

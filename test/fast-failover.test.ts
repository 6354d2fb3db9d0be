/**
 * Failover on evidence of death (src/channel/liveness.ts), with real processes: a process killed with
 * kill -9 is detected at once through its liveness port, far inside a long fail timeout; a stopped
 * (SIGSTOP, silent) process still needs the whole timeout; a channel cut with both processes alive and
 * reachable causes no failover when it heals within the timeout.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { RespClient } from '../src/client/resp.js';
import { startFtPair, statusOr, waitFor } from '../src/testing/pair.js';
import { stopAll } from '../src/testing/processes.js';

after(() => stopAll());

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** Far longer than the failovers below may take: only evidence can make them this fast. */
const LONG_TIMEOUT = ['--fail-timeout-ms', '20000'];

async function setMany(port: number, prefix: string, n: number): Promise<Map<string, string>> {
  const c = await RespClient.connect({ port, callTimeoutMs: 10_000 });
  const acked = new Map<string, string>();
  try {
    for (let i = 0; i < n; i++) {
      assert.equal(await c.call('SET', `${prefix}${i}`, `v${i}`), 'OK');
      acked.set(`${prefix}${i}`, `v${i}`);
    }
  } finally {
    c.close();
  }
  return acked;
}

test('kill -9 of the primary: the backup probes its liveness port, is refused, and goes live long before the fail timeout; nothing lost', async () => {
  const pair = await startFtPair({ guest: 'kv', primaryArgs: LONG_TIMEOUT, backupArgs: LONG_TIMEOUT });
  try {
    const acked = await setMany(pair.servicePort, 'k', 200);
    const t0 = performance.now();
    pair.primary.kill('SIGKILL');
    await waitFor('the backup to go live', async () => (await statusOr(pair.auth, pair.backupControl))?.role === 'primary', 15_000);
    const ms = performance.now() - t0;
    assert.ok(ms < 10_000, `the backup went live ${ms.toFixed(0)} ms after the kill, with a 20 s fail timeout`);
    const lines = pair.backup.stderr.lines.join('\n');
    assert.match(lines, /liveness probe of the primary: refused/);
    assert.match(lines, /primary gone: claiming the VM while the replica consumes every held entry/);
    assert.doesNotMatch(lines, /primary silent/);
    const c = await RespClient.connect({ port: pair.backupServicePort });
    try {
      for (const [k, v] of acked) assert.equal(String(await c.call('GET', k)), v, `${k} acknowledged before the kill`);
    } finally {
      c.close();
    }
  } finally {
    await pair.stop();
  }
});

test('kill -9 of the backup: the primary probes the backup, is refused, and continues alone long before the fail timeout', async () => {
  const pair = await startFtPair({ guest: 'kv', primaryArgs: LONG_TIMEOUT, backupArgs: LONG_TIMEOUT });
  try {
    await setMany(pair.servicePort, 'a', 50);
    const t0 = performance.now();
    pair.backup.kill('SIGKILL');
    // A write after the kill waits for the claim only (the output rule), not for the timeout.
    const c = await RespClient.connect({ port: pair.servicePort, callTimeoutMs: 15_000 });
    try {
      assert.equal(await c.call('SET', 'after', 'kill'), 'OK');
    } finally {
      c.close();
    }
    const ms = performance.now() - t0;
    assert.ok(ms < 10_000, `a write was acknowledged ${ms.toFixed(0)} ms after the backup's kill, with a 20 s fail timeout`);
    const lines = pair.primary.stderr.lines.join('\n');
    assert.match(lines, /liveness probe of the backup: refused/);
    assert.match(lines, /the backup's process is gone/);
    const s = await statusOr(pair.auth, pair.primaryControl);
    assert.equal(s?.epoch, 2);
  } finally {
    await pair.stop();
  }
});

test('SIGSTOP of the primary is silence, not evidence: the backup waits out the whole fail timeout', async () => {
  const timeout = ['--fail-timeout-ms', '1500'];
  const pair = await startFtPair({ guest: 'kv', primaryArgs: timeout, backupArgs: timeout });
  try {
    await setMany(pair.servicePort, 's', 20);
    const t0 = performance.now();
    pair.primary.kill('SIGSTOP');
    await waitFor('the backup to go live', async () => (await statusOr(pair.auth, pair.backupControl))?.role === 'primary', 15_000);
    const ms = performance.now() - t0;
    assert.ok(ms >= 1400, `the backup went live after ${ms.toFixed(0)} ms: before the 1500 ms timeout, on no evidence`);
    assert.match(pair.backup.stderr.lines.join('\n'), /primary silent: claiming the VM while the replica consumes every held entry/);
    pair.primary.kill('SIGCONT');
  } finally {
    await pair.stop();
  }
});

test('a channel cut with both processes alive: the probes are answered, and a cut healed within the timeout causes no failover', async () => {
  const timeout = ['--fail-timeout-ms', '4000'];
  const pair = await startFtPair({ guest: 'kv', viaProxy: true, primaryArgs: timeout, backupArgs: timeout });
  try {
    await setMany(pair.servicePort, 'c', 20);
    pair.proxy!.cut();
    await waitFor('both sides to probe their peer', async () =>
      pair.backup.stderr.lines.some((l) => /liveness probe of the primary: answered/.test(l)) &&
      pair.primary.stderr.lines.some((l) => /liveness probe of the backup: answered/.test(l)), 3000);
    await sleep(500);
    await pair.proxy!.heal();
    // The primary redials; the pair is protected again at the same epoch, nobody claimed.
    await waitFor('the pair to be protected again', async () => (await statusOr(pair.auth, pair.primaryControl))?.backup === 'connected', 10_000);
    const [p, b] = [await statusOr(pair.auth, pair.primaryControl), await statusOr(pair.auth, pair.backupControl)];
    assert.equal(p?.role, 'primary');
    assert.equal(b?.role, 'backup');
    assert.equal(p?.epoch, 1);
    assert.equal(b?.epoch, 1);
    const all = [...pair.primary.stderr.lines, ...pair.backup.stderr.lines].join('\n');
    assert.doesNotMatch(all, /primary gone|primary silent|the backup is gone|won the arbiter claim/);
    await setMany(pair.servicePort, 'd', 20);
  } finally {
    await pair.stop();
  }
});

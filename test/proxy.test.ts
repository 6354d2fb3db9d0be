/**
 * `ftvm proxy` with real processes on loopback (docs/PROXY.md): client connections that survive kill -9
 * failovers of the primary, with standbys re-recruited. Clients are strict: any reset, error or close
 * of their connection fails the test. Counting clients (INCR): every counter equals the replies its
 * clients received and the reply values are those of a serial execution; a failover in the middle of a
 * 1,000-command pipeline: all 1,000 replies, in order, exactly once; redis-benchmark across a failover
 * (short; `npm run proxy-check` runs the long versions); bad input on the proxy port refused with coded
 * errors while the VM serves on; a proxy restart.
 * One pool of four slots serves every test (starting real processes is the slow part).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { after, before, test } from 'node:test';
import { FtvmClient } from '../src/client/ftvm-client.js';
import { Keyring } from '../src/security/secrets.js';
import { PFrame, ProxyWire, type ProxyFrame } from '../src/proxy/wire.js';
import { readSecretFileSync } from '../src/security/secrets.js';
import { needs } from '../src/testing/system-deps.js';
import { StrictResp, countingLoad, failovers, pipelineAcross, redisBenchmark, startProxiedPool, startProxyProcess, within, type ProxiedPool } from '../src/testing/proxy-harness.js';
import { freePort, stopAll } from '../src/testing/processes.js';

/** How long a replica keeps a proxied connection nobody re-attaches (the proxy restart test waits it out). */
const REATTACH_TIMEOUT_MS = 5000;

let h: ProxiedPool;
before(async () => {
  h = await startProxiedPool({ slots: 4, parallelStart: true, startTimeoutMs: 90_000, nodeArgs: ['--proxy-reattach-timeout-ms', String(REATTACH_TIMEOUT_MS), '--fail-timeout-ms', '600'] });
  await h.pool.waitProtected(60_000);
});
after(async () => {
  await h?.stop();
  await stopAll();
});

test('counting clients (INCR) through the proxy across a kill -9 failover (the tests after it fail over the same pool again): no error, none lost or duplicated, serial values', async (t) => {
  const load = await countingLoad(h.proxyPort, 8, 16, 'ctr', 1_000_000, 120_000);
  const times = await failovers(h, 1, 700, (i, ms) => t.diagnostic(`failover ${i + 1}: protected again after ${ms} ms`));
  const r = await load.stop();
  t.diagnostic(`${r.ops} INCR replies on ${r.counters} counters, 8 connections, failovers ${times.join(', ')} ms`);
  assert.deepEqual(r.failures, []);
  assert.deepEqual(r.mismatches, []);
  assert.ok(r.ops > 500, `enough operations ran (${r.ops})`);
});

test('a kill -9 failover in the middle of a pipeline of 1,000 commands: all replies, in order, exactly once', async () => {
  const { primary } = await h.pool.waitProtected(60_000);
  const r = await pipelineAcross(h.proxyPort, 1000, () => primary.proc!.kill('SIGKILL'));
  assert.ok(r.ok, r.detail);
  await primary.proc!.exited;
  primary.gen++;
  await h.pool.startStandby(primary);
});

test('a SIGSTOP of the primary past the fail timeout: the proxy leaves the silent replica for the new primary; clients see a pause, no error', async (t) => {
  const { primary, backup } = await h.pool.waitProtected(60_000);
  const load = await countingLoad(h.proxyPort, 4, 8, 'stop', 1_000_000, 60_000);
  await new Promise((r) => setTimeout(r, 300));
  const t0 = Date.now();
  primary.proc!.kill('SIGSTOP');
  try {
    await h.pool.waitLive(backup, 30_000);
    t.diagnostic(`the backup went live ${Date.now() - t0} ms after the SIGSTOP`);
    const atLive = load.ops;
    const end = Date.now() + 15_000;
    while (load.ops < atLive + 200 && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
    assert.ok(load.ops >= atLive + 200, `clients progress while the old primary is still stopped (${load.ops - atLive} replies)`);
    t.diagnostic(`clients served again ${Date.now() - t0} ms after the SIGSTOP, the old primary still stopped`);
  } finally {
    primary.proc!.kill('SIGCONT');
  }
  const r = await load.stop();
  t.diagnostic(`${r.ops} INCR replies`);
  assert.deepEqual(r.failures, []);
  assert.deepEqual(r.mismatches, []);
  // The old primary finds itself fenced and halts; its slot comes back as a standby.
  await primary.proc!.exited;
  primary.gen++;
  await h.pool.startStandby(primary);
  await h.pool.waitProtected(60_000);
});

test('the TypeScript client speaks the proxy protocol itself (no proxy hop), finding the primary at the arbiter: its calls survive a kill -9 failover, none lost or run twice', async (t) => {
  const vm = await FtvmClient.open({ arbiter: h.pool.arbiterUrl, secret: readSecretFileSync(h.pool.secretFile), vmName: h.pool.opts.vm });
  try {
    const clients = Array.from({ length: 4 }, () => vm.resp());
    const replies = new Map<string, number[]>();
    let stopping = false;
    const errors: string[] = [];
    const loops = clients.map(async (c, i) => {
      for (let n = 0; !stopping && n < 100_000; n++) {
        const key = `tsc:${(i + n) % 6}`;
        try {
          const v = await c.call('INCR', key);
          const a = replies.get(key) ?? [];
          a.push(Number(v));
          replies.set(key, a);
        } catch (err) {
          errors.push(`client ${i}: ${(err as Error).message}`);
          return;
        }
      }
    });
    await failovers(h, 1, 500, (_, ms) => t.diagnostic(`protected again after ${ms} ms`));
    await new Promise((r) => setTimeout(r, 300));
    stopping = true;
    await Promise.all(loops);
    assert.deepEqual(errors, []);
    assert.ok(vm.sessions >= 2, `the client re-attached (${vm.sessions} sessions)`);
    const check = vm.resp();
    let total = 0;
    for (const [k, a] of replies) {
      total += a.length;
      assert.equal(Number(await check.call('GET', k)), a.length, `${k}: the counter equals the replies`);
      assert.deepEqual([...a].sort((x, y) => x - y), a.map((_, i) => i + 1), `${k}: values 1..n, each once`);
    }
    t.diagnostic(`${total} INCR replies over ${vm.sessions} sessions`);
    for (const c of [...clients, check]) c.close();
  } finally {
    await vm.close();
  }
});

test('redis-benchmark (-c 50, SET/GET/INCR) through the proxy across a kill -9 failover: no error', needs('redis-tools'), async (t) => {
  const rounds = redisBenchmark(h.proxyPort, 50, 6000, 120_000);
  await failovers(h, 1, 300);
  const r = await rounds;
  t.diagnostic(r.results.join('; '));
  assert.deepEqual(r.errors, []);
  assert.equal(r.code, 0);
  assert.equal(r.results.length, 3);
});

/** A proxy session opened by hand on the primary's proxy port. */
async function session(keys: Keyring, port: number): Promise<{ wire: ProxyWire; frames: ProxyFrame[]; closed: Promise<{ code: string; reason: string }>; opened: Promise<boolean> }> {
  const sock = net.connect({ host: '127.0.0.1', port });
  await new Promise((r) => sock.once('connect', r));
  const wire = new ProxyWire(sock, { keys, side: 'proxy', vmName: h.pool.opts.vm, proxyId: Buffer.from(Array.from({ length: 16 }, () => Math.floor(Math.random() * 256))) });
  const frames: ProxyFrame[] = [];
  wire.on('frame', (f: ProxyFrame) => frames.push(f));
  const closed = new Promise<{ code: string; reason: string }>((r) => wire.once('close', r));
  const opened = Promise.race([new Promise<boolean>((r) => wire.once('open', () => r(true))), closed.then(() => false)]);
  return { wire, frames, closed, opened };
}

async function until(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

test('bad input on the proxy port: a wrong secret, forged and replayed frames, offsets that do not match the VM — refused with codes, the VM serves on', async () => {
  const { primary } = await h.pool.waitProtected(60_000);
  const port = h.proxyPorts[primary.index]!;
  const good = new Keyring(readSecretFileSync(h.pool.secretFile));
  const bystander = await StrictResp.connect(h.proxyPort);
  assert.equal(await within(bystander.call('SET', 'bystander', 'x'), 10_000, 'SET'), 'OK');

  // A proxy without the secret: its HELLO does not verify; no WELCOME, the connection is closed.
  const bad = await session(new Keyring(Buffer.alloc(32, 7)), port);
  assert.equal(await bad.opened, false);
  await primary.proc!.waitForLine(/FTVM_ERR_AUTH/, 10_000, { stream: 'stderr' });

  // A forged frame (right length, wrong MAC) in an open session: the session is dropped.
  const forged = await session(good, port);
  assert.equal(await forged.opened, true);
  const body = Buffer.from([PFrame.OPEN, 1]);
  const frame = Buffer.alloc(4 + body.length + 16);
  frame.writeUInt32LE(body.length + 16, 0);
  body.copy(frame, 4);
  forged.wire.socket.write(frame);
  assert.equal((await forged.closed).code, 'FTVM_ERR_CHANNEL_CLOSED');
  await primary.proc!.waitForLine(/does not verify \(forged, altered, replayed or reordered\)/, 10_000, { stream: 'stderr' });

  // A replayed frame: the same bytes sent twice fail the second time (the per-direction counter).
  const replay = await session(good, port);
  assert.equal(await replay.opened, true);
  const written: Buffer[] = [];
  const orig = replay.wire.socket.write.bind(replay.wire.socket);
  replay.wire.socket.write = ((b: Buffer) => {
    written.push(Buffer.from(b));
    return orig(b);
  }) as typeof replay.wire.socket.write;
  replay.wire.send({ t: PFrame.OPEN, pconn: 1 });
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
  orig(written.at(-1)!);
  assert.equal((await replay.closed).code, 'FTVM_ERR_CHANNEL_CLOSED');

  // Offsets that do not match the VM: input at the wrong offset, a re-attach claiming output the VM never sent.
  const s = await session(good, port);
  assert.equal(await s.opened, true);
  s.wire.send({ t: PFrame.OPEN, pconn: 1 });
  s.wire.send({ t: PFrame.DATA, pconn: 1, offset: 0, data: Buffer.from(StrictResp.encode(['PING'])) });
  await until('PONG', () => s.frames.some((f) => f.t === PFrame.OUT && f.pconn === 1));
  s.wire.send({ t: PFrame.DATA, pconn: 1, offset: 5, data: Buffer.from(StrictResp.encode(['PING'])) });
  await until('REFUSED', () => s.frames.some((f) => f.t === PFrame.REFUSED && f.pconn === 1));
  assert.equal((s.frames.find((f) => f.t === PFrame.REFUSED && f.pconn === 1) as { code: string }).code, 'FTVM_ERR_PROXY_OFFSET');
  s.wire.send({ t: PFrame.OPEN, pconn: 2 });
  s.wire.send({ t: PFrame.ATTACH, pconn: 2, inSent: 0, inAcked: 0, outDelivered: 1_000_000, eofSent: false });
  await until('REFUSED 2', () => s.frames.some((f) => f.t === PFrame.REFUSED && f.pconn === 2));
  assert.equal((s.frames.find((f) => f.t === PFrame.REFUSED && f.pconn === 2) as { code: string }).code, 'FTVM_ERR_PROXY_OFFSET');
  s.wire.send({ t: PFrame.ATTACH, pconn: 3, inSent: 10, inAcked: 10, outDelivered: 0, eofSent: false });
  await until('REFUSED 3', () => s.frames.some((f) => f.t === PFrame.REFUSED && f.pconn === 3));
  assert.equal((s.frames.find((f) => f.t === PFrame.REFUSED && f.pconn === 3) as { code: string }).code, 'FTVM_ERR_PROXY_OFFSET');
  s.wire.close('FTVM_ERR_CHANNEL_CLOSED', 'done');

  // Everyone else was served throughout, and still is.
  assert.equal(await within(bystander.call('GET', 'bystander'), 10_000, 'GET'), 'x');
  assert.equal(bystander.failure, undefined);
  assert.equal((await h.pool.status(primary))?.role, 'primary');
  bystander.close();
});

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? NaN);
}

test('a client that never reads its replies: bounded in the proxy, dropped by the VM past its bound, everyone else served', async () => {
  const { primary } = await h.pool.waitProtected(60_000);
  const setup = await StrictResp.connect(h.proxyPort);
  const value = 'v'.repeat(16 * 1024);
  assert.equal(await within(setup.call('SET', 'big', value), 10_000, 'SET'), 'OK');
  const rss0 = rssKiB(h.proxy.pid);
  // 6,000 GETs of 16 KiB: 96 MiB of replies the client never reads (the replica's bound is 64 MiB).
  const hog = net.connect({ host: '127.0.0.1', port: h.proxyPort });
  await new Promise((r) => hog.once('connect', r));
  hog.pause();
  hog.on('error', () => undefined);
  const get = StrictResp.encode(['GET', 'big']);
  for (let i = 0; i < 60; i++) hog.write(get.repeat(100));
  const bystander = await StrictResp.connect(h.proxyPort);
  let maxRss = rss0;
  let dropped = false;
  const overflow = primary.proc!.waitForLine(/FTVM_ERR_PROXY_OVERFLOW/, 60_000, { stream: 'stderr' }).then(() => (dropped = true));
  overflow.catch(() => undefined);
  const until = Date.now() + 60_000;
  while (Date.now() < until && !dropped) {
    assert.equal(typeof (await within(bystander.call('INCR', 'bystander-ctr'), 10_000, 'INCR while the hog waits')), 'number');
    maxRss = Math.max(maxRss, rssKiB(h.proxy.pid));
    await new Promise((r) => setTimeout(r, 100));
  }
  await overflow; // the VM dropped the client that does not read (its reads are paused: it cannot tell yet)
  await h.proxy.waitForLine(/dropping a client connection/, 10_000, { stream: 'stderr' });
  maxRss = Math.max(maxRss, rssKiB(h.proxy.pid));
  hog.destroy();
  assert.ok(maxRss - rss0 < 48 * 1024, `the proxy's memory stayed bounded: RSS grew ${(maxRss - rss0) / 1024} MiB`);
  assert.equal(bystander.failure, undefined);
  bystander.close();
  setup.close();
});

test('two proxies front one VM, the second finding the primary at the arbiter (--arbiter): clients on both doing INCR across a kill -9 failover, none lost or duplicated', async (t) => {
  const port2 = await freePort();
  const second = await startProxyProcess(h.pool.secretFile, h.pool.opts.vm, port2, h.pool.arbiterUrl);
  try {
    const load = await countingLoad([h.proxyPort, port2], 8, 16, 'two', 1_000_000, 60_000);
    const times = await failovers(h, 1, 700, (i, ms) => t.diagnostic(`failover ${i + 1}: protected again after ${ms} ms`));
    await new Promise((r) => setTimeout(r, 300));
    const r = await load.stop();
    t.diagnostic(`${r.ops} INCR replies on ${r.counters} shared counters, 4 connections on each proxy, failover ${times.join(', ')} ms`);
    assert.deepEqual(r.failures, []);
    assert.deepEqual(r.mismatches, []);
    assert.ok(r.ops > 200, `enough operations ran (${r.ops})`);
    await second.waitForLine(/"session":2,"msg":"proxy session open/, 10_000, { stream: 'stderr' });
  } finally {
    await second.stop();
  }
});

test('a proxy kill -9 mid-load: its clients reconnect to the restarted proxy, every acknowledged INCR counted exactly once; the VM closes the dead proxy\'s connections after the re-attach timeout and serves on', async (t) => {
  const { primary } = await h.pool.waitProtected(60_000);
  const old = await StrictResp.connect(h.proxyPort);
  assert.equal(await within(old.call('INCR', 'restart'), 10_000, 'INCR'), 1);
  const load = await countingLoad(h.proxyPort, 6, 12, 'rst', 1_000_000, 60_000, { reconnectMs: 15_000 });
  await until('load runs', () => load.ops > 200, 10_000);
  const deadId = (await h.proxy.waitForLine(/"proxyId":"([0-9a-f]{32})"/, 1000, { stream: 'stderr' }))[1]!;
  const mark = primary.proc!.mark();
  const killedAt = Date.now();
  await h.restartProxy();
  await until('the old client sees its connection closed', () => old.failure !== undefined);
  await until('the clients reconnected and go on', () => load.reconnects >= 6 && load.ops > 400, 10_000);
  const r = await load.stop();
  t.diagnostic(`${r.ops} INCR replies, ${r.unacked} without a reply (cut by the kill), ${r.reconnects} reconnections, ${r.counters} counters`);
  assert.deepEqual(r.failures, []);
  assert.deepEqual(r.mismatches, []);
  // The dead proxy's 7 virtual connections (their tags start with its id): closed by the VM once nobody re-attached them.
  const closed = (): number => {
    const b = primary.proc!.stderr;
    let n = 0;
    for (let i = Math.max(mark.stderr, b.total - b.lines.length); i < b.total; i++) {
      const l = b.line(i) ?? '';
      if (l.includes('no proxy re-attached the connection') && l.includes(`"tag":"${deadId}`)) n++;
    }
    return n;
  };
  await until('the VM closed the dead proxy\'s 7 connections', () => closed() >= 7, REATTACH_TIMEOUT_MS + 8000);
  t.diagnostic(`the VM closed the dead proxy's connections ${Date.now() - killedAt} ms after the kill (re-attach timeout ${REATTACH_TIMEOUT_MS} ms)`);
  const fresh = await StrictResp.connect(h.proxyPort);
  assert.equal(await within(fresh.call('INCR', 'restart'), 10_000, 'INCR'), 2);
  assert.equal(fresh.failure, undefined);
  assert.equal((await h.pool.status(primary))?.role, 'primary');
  fresh.close();
});

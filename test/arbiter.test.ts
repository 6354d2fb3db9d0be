/**
 * The arbiter's test-and-set, against the embedded server and against real etcd (one member, and a
 * three-member cluster that loses members): exactly one winner per race, idempotent retries, deadlines,
 * durable state across restarts, and refusal of bad or unauthenticated input.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Etcd3 } from 'etcd3';
import { pino, type Logger } from 'pino';
import type { Arbiter, ArbiterRecord } from '../src/arbiter/arbiter.js';
import { EmbeddedArbiterClient, EmbeddedArbiterServer, HEADER_MAC, MAX_BODY_BYTES, arbiterClientTls, recordFileName, signRequest } from '../src/arbiter/embedded.js';
import { EtcdArbiter } from '../src/arbiter/etcd.js';
import { EtcdTestCluster } from '../src/arbiter/etcd-test-cluster.js';
import { needs } from '../src/testing/system-deps.js';
import { LazyEtcdArbiter, openArbiter, parseArbiterUrl } from '../src/arbiter/index.js';
import { FaultProxy } from '../src/testing/fault-proxy.js';
import { FtvmError } from '../src/util/errors.js';
import { setTimeout as sleep } from 'node:timers/promises';

// ---------------------------------------------------------------------------------------------------
// helpers

interface LogLine {
  level: number;
  msg: string;
  [k: string]: unknown;
}
function capture(): { log: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s) as LogLine) }) as unknown as Logger;
  return { log, lines };
}
const quiet = (): Logger => capture().log;

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * (sorted.length - 1)))] ?? NaN;
}
function summary(samples: number[]): string {
  const s = [...samples].sort((a, b) => a - b);
  return `n=${s.length} p50=${percentile(s, 0.5).toFixed(2)} ms p99=${percentile(s, 0.99).toFixed(2)} ms max=${(s[s.length - 1] ?? NaN).toFixed(2)} ms`;
}

async function rejectsWithCode(p: Promise<unknown>, code: string): Promise<FtvmError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof FtvmError, `expected an FtvmError ${code}, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    return err;
  }
  assert.fail(`expected a rejection with ${code}`);
}

let vmCounter = 0;
const freshVm = (tag: string): string => `${tag}-${process.pid}-${++vmCounter}`;

type Outcome = { kind: 'won' | 'lost'; record: ArbiterRecord; ms: number } | { kind: 'unavailable'; ms: number };
async function timedClaim(a: Arbiter, vm: string, epoch: number, who: string, deadlineMs: number): Promise<Outcome> {
  const t0 = performance.now();
  try {
    const r = await a.claim(vm, epoch, who, { deadlineMs });
    return { kind: r.won ? 'won' : 'lost', record: r.record, ms: performance.now() - t0 };
  } catch (err) {
    if (err instanceof FtvmError && err.code === 'FTVM_ERR_ARBITER_UNAVAILABLE') return { kind: 'unavailable', ms: performance.now() - t0 };
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------------
// the behaviour every backend shares

interface Backend {
  /** Clients, each its own connection (claimants in a race use different ones). */
  clients: Arbiter[];
  deadlineMs: number;
}

function sharedBehaviour(label: string, get: () => Backend): void {
  const O = (): { deadlineMs: number } => ({ deadlineMs: get().deadlineMs });
  const c = (i: number): Arbiter => {
    const a = get().clients[i % get().clients.length];
    assert.ok(a);
    return a;
  };

  it('init creates the record once; read returns it (null before)', async () => {
    const vm = freshVm('init');
    assert.equal(await c(0).read(vm, O()), null);
    assert.deepEqual(await c(0).init(vm, { epoch: 7, owner: 'p' }, O()), { epoch: 7, owner: 'p' });
    // A second init (another node, another epoch) learns the existing record instead.
    assert.deepEqual(await c(1).init(vm, { epoch: 1, owner: 'q' }, O()), { epoch: 7, owner: 'p' });
    assert.deepEqual(await c(1).read(vm, O()), { epoch: 7, owner: 'p' });
  });

  it('exactly one winner in each of 50 races of 2–4 concurrent claimants; losers see the winner', async (t) => {
    const latencies: number[] = [];
    for (let race = 0; race < 50; race++) {
      const vm = freshVm('race');
      const n = 2 + (race % 3);
      await c(0).init(vm, { epoch: 1, owner: 'p' }, O());
      const results = await Promise.all(Array.from({ length: n }, (_, j) => timedClaim(c(j), vm, 1, `c${j}`, get().deadlineMs)));
      const winners = results.flatMap((r, j) => (r.kind === 'won' ? [j] : []));
      assert.equal(winners.length, 1, `race ${race} (${n} claimants): ${JSON.stringify(results)}`);
      const winner = { epoch: 2, owner: `c${winners[0]}` };
      for (const r of results) {
        assert.notEqual(r.kind, 'unavailable');
        if (r.kind !== 'unavailable') {
          assert.deepEqual(r.record, winner);
          latencies.push(r.ms);
        }
      }
      assert.deepEqual(await c(3).read(vm, O()), winner);
    }
    t.diagnostic(`${label}: racing claim latency ${summary(latencies)}`);
  });

  it('a claim is idempotent for its winner, and stays lost for the loser', async () => {
    const vm = freshVm('idem');
    await c(0).init(vm, { epoch: 4, owner: 'p' }, O());
    assert.deepEqual(await c(0).claim(vm, 4, 'b', O()), { won: true, record: { epoch: 5, owner: 'b' } });
    assert.deepEqual(await c(1).claim(vm, 4, 'b', O()), { won: true, record: { epoch: 5, owner: 'b' } });
    assert.deepEqual(await c(2).claim(vm, 4, 'p', O()), { won: false, record: { epoch: 5, owner: 'b' } });
    // A claim of an older or a future epoch loses and shows the record.
    assert.deepEqual(await c(2).claim(vm, 3, 'p', O()), { won: false, record: { epoch: 5, owner: 'b' } });
    assert.deepEqual(await c(2).claim(vm, 9, 'p', O()), { won: false, record: { epoch: 5, owner: 'b' } });
    // The next epoch can be claimed (by anyone: the loser of the last one, here).
    assert.deepEqual(await c(2).claim(vm, 5, 'p', O()), { won: true, record: { epoch: 6, owner: 'p' } });
  });

  it('advance arms the next epoch only from {epoch, owner}', async () => {
    const vm = freshVm('adv');
    await c(0).init(vm, { epoch: 1, owner: 'p' }, O());
    assert.equal(await c(0).advance(vm, 1, 'q', O()), false, 'not the owner');
    assert.equal(await c(0).advance(vm, 2, 'p', O()), false, 'not the epoch');
    assert.equal(await c(0).advance(vm, 1, 'p', O()), true);
    assert.deepEqual(await c(1).read(vm, O()), { epoch: 2, owner: 'p' });
    assert.equal(await c(1).advance(vm, 1, 'p', O()), false, 'already advanced: no longer {1, p}');
    assert.equal(await c(1).advance(freshVm('none'), 1, 'p', O()), false, 'no record');
    // A claim of the advanced epoch by the backup works as usual.
    assert.deepEqual(await c(2).claim(vm, 2, 'b', O()), { won: true, record: { epoch: 3, owner: 'b' } });
  });

  it('claim without a record is refused; bad arguments are FTVM_ERR_BAD_ARGUMENT', async () => {
    await rejectsWithCode(c(0).claim(freshVm('norec'), 1, 'b', O()), 'FTVM_ERR_ARBITER_BAD_REQUEST');
    await rejectsWithCode(c(0).read('bad/name', O()), 'FTVM_ERR_BAD_ARGUMENT');
    await rejectsWithCode(c(0).read('x'.repeat(129), O()), 'FTVM_ERR_BAD_ARGUMENT');
    await rejectsWithCode(c(0).claim('ok', -1, 'b', O()), 'FTVM_ERR_BAD_ARGUMENT');
    await rejectsWithCode(c(0).claim('ok', 1.5, 'b', O()), 'FTVM_ERR_BAD_ARGUMENT');
    await rejectsWithCode(c(0).claim('ok', 1, '', O()), 'FTVM_ERR_BAD_ARGUMENT');
    await rejectsWithCode(c(0).init('ok', { epoch: 1, owner: 'a\nb' }, O()), 'FTVM_ERR_BAD_ARGUMENT');
    await rejectsWithCode(c(0).read('ok', { deadlineMs: 0 }), 'FTVM_ERR_BAD_ARGUMENT');
  });

  it('sequential CAS latency (one claimant, 150 claims)', async (t) => {
    const vm = freshVm('seq');
    await c(0).init(vm, { epoch: 0, owner: 'p' }, O());
    const ms: number[] = [];
    for (let e = 0; e < 150; e++) {
      const t0 = performance.now();
      const r = await c(0).claim(vm, e, `n${e % 2}`, O());
      ms.push(performance.now() - t0);
      assert.equal(r.won, true);
    }
    t.diagnostic(`${label}: sequential CAS latency ${summary(ms)}`);
  });

  it('standby pool: register, renew, recruit exactly once among racing primaries, leases run out, remove', async () => {
    const vm = freshVm('pool');
    const ttl = 1000;
    assert.deepEqual(await c(0).listStandbys(vm, O()), []);
    const a = await c(0).registerStandby(vm, { hostId: 'host-a', channel: '127.0.0.1:7001', free: true }, ttl, O());
    assert.deepEqual(a, { hostId: 'host-a', channel: '127.0.0.1:7001', state: 'free' });
    await c(1).registerStandby(vm, { hostId: 'host-b', channel: '127.0.0.1:7002', free: true }, 30_000, O());
    assert.deepEqual((await c(2).listStandbys(vm, O())).map((s) => s.hostId).sort(), ['host-a', 'host-b']);
    // Three primaries race for host-b: exactly one gets it; a retry by the winner is idempotent.
    const results = await Promise.all([0, 1, 2].map((i) => c(i).recruitStandby(vm, 'host-b', { owner: `p${i}`, epoch: 4 }, O())));
    const winners = results.filter((r) => r !== null);
    assert.equal(winners.length, 1);
    const w = winners[0]!;
    assert.equal(w.state, 'recruited');
    assert.equal(w.epoch, 4);
    assert.deepEqual(await c(3).recruitStandby(vm, 'host-b', { owner: w.owner!, epoch: 4 }, O()), w);
    // Renewing keeps it recruited (the standby learns it was recruited this way)...
    assert.deepEqual(await c(0).registerStandby(vm, { hostId: 'host-b', channel: '127.0.0.1:7002', free: false }, 30_000, O()), w);
    // ...returning to the pool frees it.
    assert.equal((await c(0).registerStandby(vm, { hostId: 'host-b', channel: '127.0.0.1:7002', free: true }, 30_000, O())).state, 'free');
    // host-a stops renewing: its lease runs out and it leaves the pool (etcd: TTL in whole seconds, expiry checked ~every 0.5 s).
    const until = Date.now() + 8000;
    while ((await c(0).listStandbys(vm, O())).some((s) => s.hostId === 'host-a')) {
      assert.ok(Date.now() < until, 'an expired standby left the pool');
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.equal(await c(1).recruitStandby(vm, 'host-a', { owner: 'p0', epoch: 4 }, O()), null, 'a gone standby cannot be recruited');
    await c(0).removeStandby(vm, 'host-b', O());
    await c(0).removeStandby(vm, 'host-b', O()); // absent is fine
    assert.deepEqual(await c(0).listStandbys(vm, O()), []);
    await assert.rejects(c(0).registerStandby(vm, { hostId: 'bad id', channel: '127.0.0.1:1', free: true }, ttl, O()), (e: FtvmError) => e.code === 'FTVM_ERR_BAD_ARGUMENT');
    await assert.rejects(c(0).registerStandby(vm, { hostId: 'h', channel: 'nope', free: true }, ttl, O()), (e: FtvmError) => e.code === 'FTVM_ERR_BAD_ARGUMENT');
    await assert.rejects(c(0).registerStandby(vm, { hostId: 'h', channel: '127.0.0.1:1', free: true }, 5, O()), (e: FtvmError) => e.code === 'FTVM_ERR_BAD_ARGUMENT');
  });

  it('members (for the dashboard): announce, renew with a new role, list, leases run out', async () => {
    const vm = freshVm('members');
    assert.deepEqual(await c(0).listMembers(vm, O()), []);
    await c(0).publishMember(vm, { nodeId: 'host-1-primary-1', control: '127.0.0.1:7100', role: 'primary' }, 1000, O());
    await c(1).publishMember(vm, { nodeId: 'host-2-backup-2', control: '127.0.0.1:7101', role: 'backup' }, 30_000, O());
    const byId = async (): Promise<Record<string, string>> => Object.fromEntries((await c(2).listMembers(vm, O())).map((m) => [m.nodeId, `${m.control} ${m.role}`]));
    assert.deepEqual(await byId(), { 'host-1-primary-1': '127.0.0.1:7100 primary', 'host-2-backup-2': '127.0.0.1:7101 backup' });
    // The backup goes live: its next announcement carries its new role.
    await c(1).publishMember(vm, { nodeId: 'host-2-backup-2', control: '127.0.0.1:7101', role: 'primary' }, 30_000, O());
    // The old primary stops announcing (killed): it drops out when its lease runs out.
    const until = Date.now() + 8000;
    while (Object.keys(await byId()).length !== 1) {
      assert.ok(Date.now() < until, 'an expired member left the list');
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.deepEqual(await byId(), { 'host-2-backup-2': '127.0.0.1:7101 primary' });
    // A node with --proxy-listen announces it too (`ftvm proxy --arbiter` reads it); entries without it read as before.
    await c(1).publishMember(vm, { nodeId: 'host-2-backup-2', control: '127.0.0.1:7101', role: 'primary', proxy: '127.0.0.1:7401' }, 30_000, O());
    assert.deepEqual(await c(2).listMembers(vm, O()), [{ nodeId: 'host-2-backup-2', control: '127.0.0.1:7101', role: 'primary', proxy: '127.0.0.1:7401' }]);
    await assert.rejects(c(0).publishMember(vm, { nodeId: 'n', control: '127.0.0.1:1', role: 'primary', proxy: 'nope' }, 3000, O()), (e: FtvmError) => e.code === 'FTVM_ERR_BAD_ARGUMENT');
    // Other VMs are not listed; bad input is the caller's bug.
    assert.deepEqual(await c(0).listMembers(freshVm('members-other'), O()), []);
    await assert.rejects(c(0).publishMember(vm, { nodeId: 'n', control: 'nope', role: 'primary' }, 3000, O()), (e: FtvmError) => e.code === 'FTVM_ERR_BAD_ARGUMENT');
    await assert.rejects(c(0).publishMember(vm, { nodeId: 'n', control: '127.0.0.1:1', role: 'Primary!' }, 3000, O()), (e: FtvmError) => e.code === 'FTVM_ERR_BAD_ARGUMENT');
    await assert.rejects(c(0).publishMember(vm, { nodeId: '', control: '127.0.0.1:1', role: 'primary' }, 3000, O()), (e: FtvmError) => e.code === 'FTVM_ERR_BAD_ARGUMENT');
  });
}

// ---------------------------------------------------------------------------------------------------
// URLs

describe('arbiter URLs', () => {
  it('parses ftvm:// and etcd:// URLs', () => {
    assert.deepEqual(parseArbiterUrl('ftvm://127.0.0.1:7300'), { kind: 'embedded', host: '127.0.0.1', port: 7300 });
    assert.deepEqual(parseArbiterUrl('etcd://127.0.0.1:2379,localhost:22379,[::1]:32379/'), {
      kind: 'etcd',
      members: [
        { host: '127.0.0.1', port: 2379 },
        { host: 'localhost', port: 22379 },
        { host: '::1', port: 32379 },
      ],
      endpoints: ['http://127.0.0.1:2379', 'http://localhost:22379', 'http://[::1]:32379'],
    });
  });

  it('refuses bad URLs with FTVM_ERR_BAD_ARGUMENT and a clear message', () => {
    const bad: [string, RegExp][] = [
      ['', /empty/],
      ['127.0.0.1:2379', /scheme:\/\/host:port/],
      ['etcd://', /no host:port/],
      ['etcd://127.0.0.1', /no port/],
      ['etcd://127.0.0.1:0', /out of range/],
      ['etcd://127.0.0.1:99999', /out of range/],
      ['etcd://127.0.0.1:x', /not a number/],
      ['etcd://a:1,,b:2', /empty member/],
      ['etcd://a:1,a:1', /listed twice/],
      ['etcd://::1:2379', /brackets/],
      ['etcd://u:p@a:1', /passwords/],
      ['etcd://a:1/prefix', /paths/],
      ['ftvm://a:1,b:2', /one server/],
      ['http://a:1', /ambiguous/],
      ['zk://a:1', /unknown scheme/],
      ['ftvm://bad_host!:1', /not a host name/],
    ];
    for (const [url, why] of bad) {
      assert.throws(
        () => parseArbiterUrl(url),
        (err: unknown) => err instanceof FtvmError && err.code === 'FTVM_ERR_BAD_ARGUMENT' && why.test(err.message) && err.message.includes('ftvm://host:port'),
        url,
      );
    }
  });

  it('openArbiter picks the backend; the embedded one needs a secret of >= 16 bytes', async () => {
    const e = openArbiter('etcd://127.0.0.1:1', new Uint8Array(0), { log: quiet() });
    assert.ok(e instanceof LazyEtcdArbiter); // etcd3 is loaded on first use, not by every replica
    assert.ok((await e.load()) instanceof EtcdArbiter);
    await e.close();
    const f = openArbiter('ftvm://127.0.0.1:1', randomBytes(32), { log: quiet() });
    assert.ok(f instanceof EmbeddedArbiterClient);
    await f.close();
    assert.throws(() => openArbiter('ftvm://127.0.0.1:1', new Uint8Array(8)), (err: unknown) => err instanceof FtvmError && err.code === 'FTVM_ERR_BAD_ARGUMENT');
  });
});

// ---------------------------------------------------------------------------------------------------
// the embedded arbiter

describe('embedded arbiter', () => {
  const secret = randomBytes(32);
  const dataDir = mkdtempSync(join(tmpdir(), 'ftvm-arbiter-'));
  const serverLog = capture();
  let server: EmbeddedArbiterServer | undefined;
  let port = 0;
  const backend: Backend = { clients: [], deadlineMs: 2000 };
  const extra: { close(): Promise<void> | void }[] = [];

  const startServer = async (log: Logger = serverLog.log): Promise<EmbeddedArbiterServer> => {
    server = await EmbeddedArbiterServer.start({ dataDir, host: '127.0.0.1', port, secret, log });
    port = server.address.port;
    return server;
  };

  before(async () => {
    await startServer();
    for (let i = 0; i < 4; i++) backend.clients.push(new EmbeddedArbiterClient({ host: '127.0.0.1', port, secret, log: quiet() }));
  });
  after(async () => {
    for (const a of backend.clients) await a.close();
    for (const x of extra) await x.close();
    await server?.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  sharedBehaviour('embedded', () => backend);

  it('an idle client keeps its connection warm (a failover claim needs no TCP/TLS handshake); without it the server closes the idle connection', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ftvm-arbiter-warm-'));
    const short = await EmbeddedArbiterServer.start({ dataDir: dir, host: '127.0.0.1', port: 0, secret, log: quiet(), keepAliveTimeoutMs: 2000 });
    // Keep-warm reads at ~1, 2, 3 s of idleness: the claim at 3.5 s falls between two of them (a claim
    // that meets a keep-warm read in flight takes a second connection, which this test would count).
    const warm = new EmbeddedArbiterClient({ host: '127.0.0.1', port: short.address.port, secret, log: quiet(), keepWarmMs: 1000 });
    const cold = new EmbeddedArbiterClient({ host: '127.0.0.1', port: short.address.port, secret, log: quiet(), keepWarmMs: 0 });
    try {
      const vm = freshVm('warm');
      await warm.init(vm, { epoch: 1, owner: 'p' }, { deadlineMs: 2000 });
      await cold.read(vm, { deadlineMs: 2000 });
      assert.equal(short.connectionsAccepted, 2);
      // Past the server's idle timeout (2 s, which Node's server enforces about 1 s late).
      await sleep(3500);
      assert.deepEqual(await warm.claim(vm, 1, 'b', { deadlineMs: 2000 }), { won: true, record: { epoch: 2, owner: 'b' } });
      assert.equal(short.connectionsAccepted, 2, 'the warm client claimed on the connection it kept');
      await cold.read(vm, { deadlineMs: 2000 });
      assert.equal(short.connectionsAccepted, 3, 'the other client had to dial again');
    } finally {
      await warm.close();
      await cold.close();
      await short.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a claim is on disk (fsynced, renamed) before its reply', async () => {
    const vm = freshVm('disk');
    await backend.clients[0]!.init(vm, { epoch: 1, owner: 'p' }, { deadlineMs: 2000 });
    await backend.clients[0]!.claim(vm, 1, 'b', { deadlineMs: 2000 });
    const file = JSON.parse(readFileSync(join(dataDir, recordFileName(vm)), 'utf8')) as Record<string, unknown>;
    assert.equal(file.epoch, 2);
    assert.equal(file.owner, 'b');
    assert.equal(file.vm, vm);
    assert.match(String(file.checksum), /^sha256:[0-9a-f]{64}$/);
  });

  /** A raw HTTP request to the server (over TLS-PSK with the right secret), signed unless told otherwise. */
  function raw(o: { path?: string; method?: string; body?: string | Buffer; sign?: 'ok' | 'none' | 'wrong'; now?: number; headers?: Record<string, string> }) {
    const path = o.path ?? '/v1/read';
    const method = o.method ?? 'POST';
    const body = Buffer.isBuffer(o.body) ? o.body : Buffer.from(o.body ?? '{}');
    const sig = o.sign === 'none' ? {} : signRequest(o.sign === 'wrong' ? randomBytes(32) : secret, method, path, body, o.now);
    const headers = o.headers ?? sig;
    return {
      headers,
      send: (): Promise<{ status: number; json: { error?: { code: string; message: string } } & Record<string, unknown>; mac: string | undefined }> =>
        new Promise((resolve, reject) => {
          const req = https.request({ host: '127.0.0.1', port, path, method, agent: false, ...arbiterClientTls(() => secret), headers: { ...headers, 'content-length': body.length } }, (res) => {
            const chunks: Buffer[] = [];
            res.on('data', (ch: Buffer) => chunks.push(ch));
            res.on('end', () => {
              const text = Buffer.concat(chunks).toString('utf8');
              resolve({ status: res.statusCode ?? 0, json: text ? (JSON.parse(text) as never) : ({} as never), mac: res.headers[HEADER_MAC] as string | undefined });
            });
          });
          req.on('error', reject);
          req.end(body);
        }),
    };
  }

  it('refuses unauthenticated, stale and replayed requests with 401 FTVM_ERR_ARBITER_AUTH, one log line each', async () => {
    const before = serverLog.lines.length;
    const body = JSON.stringify({ vm: 'some-vm' });
    for (const [what, req] of [
      ['no MAC', raw({ body, sign: 'none' })],
      ['wrong secret', raw({ body, sign: 'wrong' })],
      ['stale timestamp', raw({ body, now: Date.now() - 31_000 })],
      ['future timestamp', raw({ body, now: Date.now() + 31_000 })],
    ] as const) {
      const r = await req.send();
      assert.equal(r.status, 401, what);
      assert.equal(r.json.error?.code, 'FTVM_ERR_ARBITER_AUTH', what);
    }
    // The same signed request twice: the second is a replay.
    const once = raw({ body });
    assert.equal((await once.send()).status, 200);
    const again = await once.send();
    assert.equal(again.status, 401);
    assert.match(again.json.error?.message ?? '', /replayed nonce/);
    // A body changed after signing fails the MAC.
    const signed = raw({ body });
    const tampered = raw({ body: JSON.stringify({ vm: 'other-vm' }), headers: signed.headers });
    assert.equal((await tampered.send()).status, 401);
    const refusals = serverLog.lines.slice(before).filter((l) => l.msg.startsWith('arbiter: refused request'));
    assert.equal(refusals.length, 6, JSON.stringify(serverLog.lines.slice(before)));
    // And through the client: a wrong secret is FTVM_ERR_ARBITER_AUTH, not a retry until the deadline.
    const wrong = new EmbeddedArbiterClient({ host: '127.0.0.1', port, secret: randomBytes(32), log: quiet() });
    extra.push(wrong);
    const t0 = performance.now();
    await rejectsWithCode(wrong.claim('some-vm', 1, 'x', { deadlineMs: 5000 }), 'FTVM_ERR_ARBITER_AUTH');
    assert.ok(performance.now() - t0 < 1000);
  });

  it('refuses malformed bodies with 400 FTVM_ERR_ARBITER_BAD_REQUEST', async () => {
    const cases: [string, string | Buffer][] = [
      ['/v1/read', 'not json'],
      ['/v1/read', '[1,2]'],
      ['/v1/read', '{}'],
      ['/v1/read', '{"vm":"a/b"}'],
      ['/v1/read', '{"vm":""}'],
      ['/v1/read', JSON.stringify({ vm: 'x'.repeat(129) })],
      ['/v1/read', '{"vm":"ok","extra":1}'],
      ['/v1/claim', '{"vm":"ok","epoch":1}'],
      ['/v1/claim', '{"vm":"ok","epoch":1.5,"claimant":"b"}'],
      ['/v1/claim', '{"vm":"ok","epoch":"1","claimant":"b"}'],
      ['/v1/claim', '{"vm":"ok","epoch":-1,"claimant":"b"}'],
      ['/v1/claim', '{"vm":"ok","epoch":9007199254740992,"claimant":"b"}'],
      ['/v1/claim', '{"vm":"ok","epoch":1,"claimant":""}'],
      ['/v1/init', '{"vm":"ok","epoch":1,"claimant":"b"}'],
      ['/v1/advance', '{"vm":"ok","epoch":null,"owner":"b"}'],
      ['/v1/read', Buffer.alloc(MAX_BODY_BYTES + 1, 0x20)],
    ];
    for (const [path, body] of cases) {
      const r = await raw({ path, body }).send();
      assert.equal(r.status, 400, `${path} ${String(body).slice(0, 60)}: ${JSON.stringify(r.json)}`);
      assert.equal(r.json.error?.code, 'FTVM_ERR_ARBITER_BAD_REQUEST');
    }
    assert.equal((await raw({ path: '/v1/nope' }).send()).status, 404);
    assert.equal((await raw({ path: '/v1/read', method: 'PUT' }).send()).status, 405);
    // The refused requests changed nothing.
    assert.equal(await backend.clients[0]!.read('ok', { deadlineMs: 2000 }), null);
  });

  it('the client refuses a reply not authenticated with the secret (an impostor cannot say "you won")', async () => {
    const impostor = http.createServer((_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ won: true, record: { epoch: 2, owner: 'b' } })));
    await new Promise<void>((r) => impostor.listen(0, '127.0.0.1', () => r()));
    extra.push({ close: () => new Promise<void>((r) => impostor.close(() => r())) });
    const a = new EmbeddedArbiterClient({ host: '127.0.0.1', port: (impostor.address() as net.AddressInfo).port, secret, log: quiet() });
    extra.push(a);
    await rejectsWithCode(a.claim('vm', 1, 'b', { deadlineMs: 1000 }), 'FTVM_ERR_ARBITER_AUTH');
  });

  it('an unresponsive arbiter: FTVM_ERR_ARBITER_UNAVAILABLE at the deadline', async () => {
    const sockets = new Set<net.Socket>();
    const blackHole = net.createServer((s) => void sockets.add(s)); // accepts, never answers
    await new Promise<void>((r) => blackHole.listen(0, '127.0.0.1', () => r()));
    extra.push({
      close: () => {
        for (const s of sockets) s.destroy();
        return new Promise<void>((r) => blackHole.close(() => r()));
      },
    });
    const a = new EmbeddedArbiterClient({ host: '127.0.0.1', port: (blackHole.address() as net.AddressInfo).port, secret, log: quiet() });
    extra.push(a);
    const t0 = performance.now();
    const err = await rejectsWithCode(a.claim('vm', 1, 'b', { deadlineMs: 400 }), 'FTVM_ERR_ARBITER_UNAVAILABLE');
    const ms = performance.now() - t0;
    assert.ok(ms >= 380 && ms < 1400, `${ms} ms`);
    assert.match(err.message, /may still commit/);
  });

  it('a claim whose replies are lost times out, yet committed: the same claim then wins, others lose', async () => {
    const proxy = await FaultProxy.start({ targetPort: port });
    extra.push(proxy);
    const viaProxy = new EmbeddedArbiterClient({ host: '127.0.0.1', port: proxy.port, secret, log: quiet() });
    extra.push(viaProxy);
    const direct = backend.clients[1]!;
    const vm = freshVm('lostreply');
    await direct.init(vm, { epoch: 5, owner: 'p' }, { deadlineMs: 2000 });
    // A kept-alive TLS connection through the proxy first: a request is sent only after a handshake,
    // which a blackhole would stop.
    await viaProxy.read(vm, { deadlineMs: 2000 });
    proxy.blackhole('down'); // requests reach the arbiter; its replies never come back
    const t0 = performance.now();
    await rejectsWithCode(viaProxy.claim(vm, 5, 'b', { deadlineMs: 500 }), 'FTVM_ERR_ARBITER_UNAVAILABLE');
    assert.ok(performance.now() - t0 < 1300);
    assert.deepEqual(await direct.read(vm, { deadlineMs: 2000 }), { epoch: 6, owner: 'b' }, 'the timed-out claim committed');
    assert.deepEqual(await direct.claim(vm, 5, 'p', { deadlineMs: 2000 }), { won: false, record: { epoch: 6, owner: 'b' } });
    await proxy.heal();
    assert.deepEqual(await viaProxy.claim(vm, 5, 'b', { deadlineMs: 2000 }), { won: true, record: { epoch: 6, owner: 'b' } });
  });

  it('a closed server: claims fail with FTVM_ERR_ARBITER_UNAVAILABLE within the deadline; after a restart on the same dataDir the state is intact', async () => {
    const vm = freshVm('restart');
    const a = backend.clients[0]!;
    await a.init(vm, { epoch: 10, owner: 'p' }, { deadlineMs: 2000 });
    assert.equal((await a.claim(vm, 10, 'b', { deadlineMs: 2000 })).won, true);
    await server!.close();
    for (const deadlineMs of [200, 600]) {
      const t0 = performance.now();
      await rejectsWithCode(a.claim(vm, 11, 'p', { deadlineMs }), 'FTVM_ERR_ARBITER_UNAVAILABLE');
      const ms = performance.now() - t0;
      assert.ok(ms >= deadlineMs * 0.9 && ms < deadlineMs + 1000, `deadline ${deadlineMs}: ${ms} ms`);
    }
    // The server comes back while a claim is retrying: the claim succeeds within its deadline.
    const pending = a.claim(vm, 11, 'p', { deadlineMs: 3000 });
    await new Promise((r) => setTimeout(r, 150));
    await startServer();
    assert.deepEqual(await pending, { won: true, record: { epoch: 12, owner: 'p' } });
    assert.deepEqual(await backend.clients[1]!.read(vm, { deadlineMs: 2000 }), { epoch: 12, owner: 'p' });
    // And every record from before the restart is still there.
    await server!.close();
    await startServer();
    assert.deepEqual(await a.read(vm, { deadlineMs: 2000 }), { epoch: 12, owner: 'p' });
  });

  it('refuses a second server on the same data directory', async () => {
    await assert.rejects(EmbeddedArbiterServer.start({ dataDir, host: '127.0.0.1', port: 0, secret, log: quiet() }), (err: unknown) => err instanceof FtvmError && err.code === 'FTVM_ERR_BAD_ARGUMENT' && /already in use/.test(err.message));
  });

  it('a corrupt data file is reported on restart and refused, never reset', async () => {
    const a = backend.clients[0]!;
    const o = { deadlineMs: 2000 };
    const garbage = freshVm('garbage');
    const tampered = freshVm('tampered');
    const healthy = freshVm('healthy');
    for (const vm of [garbage, tampered, healthy]) {
      await a.init(vm, { epoch: 3, owner: 'p' }, o);
      await a.claim(vm, 3, 'b', o);
    }
    await server!.close();
    const gPath = join(dataDir, recordFileName(garbage));
    const tPath = join(dataDir, recordFileName(tampered));
    writeFileSync(gPath, '\x00\x13garbage{{{');
    // Valid JSON, but someone edited the epoch by hand: the checksum no longer matches.
    const t = JSON.parse(readFileSync(tPath, 'utf8')) as Record<string, unknown>;
    writeFileSync(tPath, JSON.stringify({ ...t, epoch: 99 }));
    const tText = readFileSync(tPath, 'utf8');
    const log = capture();
    const s = await startServer(log.log);
    assert.deepEqual(s.corruptVms.sort(), [garbage, tampered].sort());
    const reports = log.lines.filter((l) => l.level >= 50 && /CORRUPT record/.test(l.msg));
    assert.equal(reports.length, 2, JSON.stringify(log.lines));
    assert.ok(reports.some((l) => l.vm === garbage && /not JSON/.test(l.msg)));
    assert.ok(reports.some((l) => l.vm === tampered && /checksum mismatch/.test(l.msg)));
    for (const vm of [garbage, tampered]) {
      await rejectsWithCode(a.read(vm, o), 'FTVM_ERR_ARBITER_CORRUPT');
      await rejectsWithCode(a.claim(vm, 4, 'p', o), 'FTVM_ERR_ARBITER_CORRUPT');
      // init would create a fresh record if the corrupt one had been dropped: it must not.
      await rejectsWithCode(a.init(vm, { epoch: 1, owner: 'x' }, o), 'FTVM_ERR_ARBITER_CORRUPT');
      await rejectsWithCode(a.advance(vm, 4, 'b', o), 'FTVM_ERR_ARBITER_CORRUPT');
    }
    assert.equal(readFileSync(gPath, 'latin1'), '\x00\x13garbage{{{');
    assert.equal(readFileSync(tPath, 'utf8'), tText);
    assert.deepEqual(await a.read(healthy, o), { epoch: 4, owner: 'b' });
  });
});

// ---------------------------------------------------------------------------------------------------
// etcd

describe('etcd arbiter, one member', needs('etcd'), () => {
  let cluster: EtcdTestCluster | undefined;
  const backend: Backend = { clients: [], deadlineMs: 3000 };
  before(async () => {
    cluster = await EtcdTestCluster.start({ size: 1 });
    for (let i = 0; i < 4; i++) backend.clients.push(new EtcdArbiter({ endpoints: cluster.endpoints, log: quiet() }));
  });
  after(async () => {
    for (const a of backend.clients) await a.close();
    await cluster?.stop();
  });

  sharedBehaviour('etcd 1 member', () => backend);

  it('a value that is not a record is FTVM_ERR_ARBITER_CORRUPT (never overwritten)', async () => {
    const vm = freshVm('corrupt');
    const raw = new Etcd3({ hosts: cluster!.endpoints });
    try {
      await raw.put(`/ftvm/vms/${vm}`).value('{"epoch":"three"}');
      const a = backend.clients[0]!;
      await rejectsWithCode(a.read(vm, { deadlineMs: 2000 }), 'FTVM_ERR_ARBITER_CORRUPT');
      await rejectsWithCode(a.claim(vm, 3, 'b', { deadlineMs: 2000 }), 'FTVM_ERR_ARBITER_CORRUPT');
      await rejectsWithCode(a.init(vm, { epoch: 1, owner: 'p' }, { deadlineMs: 2000 }), 'FTVM_ERR_ARBITER_CORRUPT');
      assert.equal(await raw.get(`/ftvm/vms/${vm}`).string(), '{"epoch":"three"}');
    } finally {
      raw.close();
    }
  });

  it('a claim whose reply comes after the deadline: UNAVAILABLE, yet committed; the same claim then wins, others lose', async () => {
    const proxy = await FaultProxy.start({ targetPort: Number(new URL(cluster!.endpoint(0)).port) });
    const viaProxy = new EtcdArbiter({ endpoints: [`http://127.0.0.1:${proxy.port}`], log: quiet() });
    try {
      const direct = backend.clients[1]!;
      const vm = freshVm('latereply');
      await direct.init(vm, { epoch: 5, owner: 'p' }, { deadlineMs: 2000 });
      assert.deepEqual(await viaProxy.read(vm, { deadlineMs: 2000 }), { epoch: 5, owner: 'p' }); // connection up
      // Every reply arrives 1 s late: the read answers at ~1 s, the transaction commits at once but its
      // reply would come at ~2 s, after the 1.6 s deadline (0.6 s of slack each way for a busy machine).
      proxy.delay('down', 1000);
      await rejectsWithCode(viaProxy.claim(vm, 5, 'b', { deadlineMs: 1600 }), 'FTVM_ERR_ARBITER_UNAVAILABLE');
      assert.deepEqual(await direct.read(vm, { deadlineMs: 2000 }), { epoch: 6, owner: 'b' }, 'the timed-out claim committed');
      assert.deepEqual(await direct.claim(vm, 5, 'p', { deadlineMs: 2000 }), { won: false, record: { epoch: 6, owner: 'b' } });
      await proxy.heal();
      assert.deepEqual(await viaProxy.claim(vm, 5, 'b', { deadlineMs: 3000 }), { won: true, record: { epoch: 6, owner: 'b' } });
    } finally {
      await viaProxy.close();
      await proxy.close();
    }
  });

  it('etcd killed: claims fail with FTVM_ERR_ARBITER_UNAVAILABLE within the deadline; after a restart the state is intact', async () => {
    const vm = freshVm('kill1');
    const a = backend.clients[0]!;
    await a.init(vm, { epoch: 1, owner: 'p' }, { deadlineMs: 2000 });
    assert.equal((await a.claim(vm, 1, 'b', { deadlineMs: 2000 })).won, true);
    await cluster!.kill(0);
    for (const deadlineMs of [300, 800]) {
      const t0 = performance.now();
      await rejectsWithCode(a.claim(vm, 2, 'p', { deadlineMs }), 'FTVM_ERR_ARBITER_UNAVAILABLE');
      const ms = performance.now() - t0;
      assert.ok(ms >= deadlineMs * 0.9 && ms < deadlineMs + 1000, `deadline ${deadlineMs}: ${ms} ms`);
    }
    await cluster!.restart(0);
    assert.deepEqual(await a.read(vm, { deadlineMs: 3000 }), { epoch: 2, owner: 'b' });
    assert.deepEqual(await a.claim(vm, 2, 'p', { deadlineMs: 3000 }), { won: true, record: { epoch: 3, owner: 'p' } });
  });
});

describe('etcd arbiter, three members', needs('etcd'), () => {
  let cluster: EtcdTestCluster | undefined;
  // Deadlines cover a leader election (~1–2 s here with etcd's default 1 s election timeout).
  const backend: Backend = { clients: [], deadlineMs: 5000 };
  before(async () => {
    cluster = await EtcdTestCluster.start({ size: 3 });
    for (let i = 0; i < 4; i++) backend.clients.push(new EtcdArbiter({ endpoints: cluster.endpoints, log: quiet() }));
  });
  after(async () => {
    for (const a of backend.clients) await a.close();
    await cluster?.stop();
  });

  sharedBehaviour('etcd 3 members', () => backend);

  it('claims in flight while the leader is killed: exactly one winner per VM', async (t) => {
    const c = cluster!;
    const races = 30;
    const vms = Array.from({ length: races }, () => freshVm('inflight'));
    for (const vm of vms) await backend.clients[0]!.init(vm, { epoch: 1, owner: 'p' }, { deadlineMs: 5000 });
    const leader = await c.leaderIndex();
    assert.ok(leader !== undefined);
    // A race starts every 8 ms; the leader dies during the stream of races.
    const started: Promise<Outcome[]>[] = [];
    for (let i = 0; i < races; i++) {
      const vm = vms[i]!;
      started.push(Promise.all([0, 1, 2].map((j) => timedClaim(backend.clients[j]!, vm, 1, `c${j}`, 4000))));
      if (i === 6) process.kill(c.pid(leader)!, 'SIGKILL');
      await new Promise((r) => setTimeout(r, 8));
    }
    const outcomes = await Promise.all(started);
    let unavailable = 0;
    for (let i = 0; i < races; i++) {
      const vm = vms[i]!;
      const rs = outcomes[i]!;
      // Claimants that could not get an answer ask again (the same claim: idempotent) once etcd is back.
      for (let j = 0; j < rs.length; j++) {
        if (rs[j]!.kind === 'unavailable') {
          unavailable++;
          rs[j] = await timedClaim(backend.clients[3]!, vm, 1, `c${j}`, 8000);
        }
      }
      const winners = rs.flatMap((r, j) => (r.kind === 'won' ? [`c${j}`] : []));
      assert.equal(winners.length, 1, `${vm}: ${JSON.stringify(rs)}`);
      assert.deepEqual(await backend.clients[3]!.read(vm, { deadlineMs: 5000 }), { epoch: 2, owner: winners[0] });
    }
    const slow = outcomes.flat().filter((o) => o.ms > 300).length;
    t.diagnostic(
      `etcd 3 members: killed leader m${leader} during ${races} races: ${slow} of ${races * 3} claims spanned the election (> 300 ms), ${unavailable} were unavailable at first and decided on retry`,
    );
    await c.restart(leader);
  });

  it('with one member down claims succeed; the data survives the kill, and the restarted member has it', async () => {
    const c = cluster!;
    const vm = freshVm('down1');
    const a = backend.clients[0]!;
    await a.init(vm, { epoch: 1, owner: 'p' }, { deadlineMs: 5000 });
    const victim = ((await c.leaderIndex()) ?? 0) as number;
    await c.kill(victim);
    assert.deepEqual(await a.claim(vm, 1, 'b', { deadlineMs: 5000 }), { won: true, record: { epoch: 2, owner: 'b' } });
    assert.deepEqual(await backend.clients[1]!.claim(vm, 1, 'p', { deadlineMs: 5000 }), { won: false, record: { epoch: 2, owner: 'b' } });
    assert.equal(await backend.clients[2]!.advance(vm, 2, 'b', { deadlineMs: 5000 }), true);
    await c.restart(victim);
    // Ask through the restarted member only.
    const only = new EtcdArbiter({ endpoints: [c.endpoint(victim)], log: quiet() });
    try {
      assert.deepEqual(await only.read(vm, { deadlineMs: 5000 }), { epoch: 3, owner: 'b' });
    } finally {
      await only.close();
    }
  });

  it('without a quorum (two members down) claims fail with FTVM_ERR_ARBITER_UNAVAILABLE within the deadline', async () => {
    const c = cluster!;
    const vm = freshVm('noquorum');
    const a = backend.clients[0]!;
    await a.init(vm, { epoch: 1, owner: 'p' }, { deadlineMs: 5000 });
    await c.kill(1);
    await c.kill(2);
    const t0 = performance.now();
    await rejectsWithCode(a.claim(vm, 1, 'b', { deadlineMs: 1000 }), 'FTVM_ERR_ARBITER_UNAVAILABLE');
    const ms = performance.now() - t0;
    assert.ok(ms >= 900 && ms < 2000, `${ms} ms`);
    await Promise.all([c.restart(1), c.restart(2)]);
    await c.waitHealthy();
    // The claim may or may not have been committed while it was in doubt; a retry decides, once.
    assert.deepEqual(await a.claim(vm, 1, 'b', { deadlineMs: 5000 }), { won: true, record: { epoch: 2, owner: 'b' } });
  });
});

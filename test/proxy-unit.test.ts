/**
 * The proxy protocol's parts without processes (docs/PROXY.md): frames round-trip and bad ones are
 * refused with codes; a tagged NIC_OPEN is refused on other entry types; the replay's output tails are
 * bounded; a recorded run with a proxied connection replays to the same proxied state, and go-live leaves
 * proxied connections open while it closes direct ones.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { EmbeddedArbiterClient, EmbeddedArbiterServer } from '../src/arbiter/embedded.js';
import { arbiterReplicas, replicaSourceFrom } from '../src/proxy/discovery.js';
import { Keyring } from '../src/security/secrets.js';
import { CLI, makeSecretFile } from '../src/testing/pair.js';
import { silentLogger } from '../src/util/log.js';
import { decodeBatch, encodeBatch } from '../src/log/codec.js';
import { EntryType } from '../src/log/entry.js';
import { ProxyTails } from '../src/machine/proxy-tails.js';
import { ByteWriter } from '../src/log/codec.js';
import { PFrame, decodeProxyFrame, encodeProxyFrame, type ProxyFrame } from '../src/proxy/wire.js';
import { FtvmError } from '../src/util/errors.js';

test('every proxy frame round-trips; unknown types and trailing bytes are FTVM_ERR_BAD_FRAME', () => {
  const frames: ProxyFrame[] = [
    { t: PFrame.OPEN, pconn: 7 },
    { t: PFrame.ATTACH, pconn: 1, inSent: 100, inAcked: 40, outDelivered: 2 ** 40, eofSent: true },
    { t: PFrame.DATA, pconn: 3, offset: 12, data: new Uint8Array([1, 2, 3]) },
    { t: PFrame.EOF, pconn: 3, offset: 15, gone: true },
    { t: PFrame.OUTACK, pconn: 3, offset: 9 },
    { t: PFrame.ATTACHED, pconn: 3, inLogged: 15, eofLogged: false },
    { t: PFrame.REFUSED, pconn: 3, code: 'FTVM_ERR_PROXY_OFFSET', message: 'nope' },
    { t: PFrame.OUT, pconn: 3, offset: 0, data: new Uint8Array(1000).fill(9) },
    { t: PFrame.CLOSE, pconn: 3, offset: 1000 },
    { t: PFrame.INACK, pconn: 3, offset: 15 },
    { t: PFrame.ERROR, code: 'FTVM_ERR_AUTH', message: 'x' },
    { t: PFrame.HEARTBEAT },
  ];
  for (const f of frames) {
    const w = new ByteWriter();
    encodeProxyFrame(f, w);
    const back = decodeProxyFrame(w.finish());
    assert.deepEqual({ ...back, ...('data' in back ? { data: [...back.data] } : {}) }, { ...f, ...('data' in f ? { data: [...f.data] } : {}) });
  }
  assert.throws(() => decodeProxyFrame(Uint8Array.of(99)), (e: unknown) => e instanceof FtvmError && e.code === 'FTVM_ERR_BAD_FRAME');
  assert.throws(() => decodeProxyFrame(Uint8Array.of(PFrame.OPEN, 1, 0)), (e: unknown) => e instanceof FtvmError && e.code === 'FTVM_ERR_BAD_FRAME');
});

test('a NIC_OPEN carries its tag through the codec; the tag flag on another entry type is corrupt', () => {
  const tag = new Uint8Array(20).fill(5);
  const batch = encodeBatch([
    { type: EntryType.NIC_OPEN, n: 10, idle: true, conn: 3, tag },
    { type: EntryType.NIC_OPEN, n: 11, idle: false, conn: 4 },
  ]);
  const back = decodeBatch(batch);
  assert.deepEqual(back[0], { type: EntryType.NIC_OPEN, n: 10, idle: true, conn: 3, tag });
  assert.deepEqual(back[1], { type: EntryType.NIC_OPEN, n: 11, idle: false, conn: 4 });
  const close = encodeBatch([{ type: EntryType.NIC_CLOSE, n: 1, idle: true, conn: 3 }]);
  const i = close.findIndex((b) => (b & 0x3f) === EntryType.NIC_CLOSE);
  const bad = Uint8Array.from(close);
  bad[i] = bad[i]! | 0x40;
  assert.throws(() => decodeBatch(bad), (e: unknown) => e instanceof FtvmError && e.code === 'FTVM_ERR_CORRUPT_RECORDING');
});

test('replay output tails are bounded per connection and in closed connections', () => {
  const t = new ProxyTails(100, 2);
  const px = { tag: 'ab', inBytes: 5, inEof: false, outBytes: 0 };
  for (let i = 0; i < 30; i++) {
    px.outBytes += 10;
    t.output('net', 1, new Uint8Array(10).fill(i), px);
  }
  const tail = t.get(1)!;
  assert.equal(tail.outBytes, 300);
  const b = tail.bytes();
  assert.equal(b.length, 100);
  assert.equal(b[0], 20);
  assert.equal(b[99], 29);
  t.output('net', 2, new Uint8Array(1), px);
  t.output('net', 3, new Uint8Array(1), px);
  t.output('net', 4, new Uint8Array(1), px);
  t.output('net', 5, new Uint8Array(1), undefined); // not proxied: not kept
  assert.equal(t.get(5), undefined);
  for (const c of [1, 2, 3, 4]) t.output('close', c, new Uint8Array(0), undefined);
  assert.deepEqual([...t.closedTails()].map(([c]) => c), [3, 4]);
});

// ------------------------------------------------------------ the machine: proxied state from the log

import { DEFAULT_VM_CONFIG, type VmConfig } from '../src/log/recording.js';
import { ScriptedEnv, type ScheduledInput } from '../src/machine/env.js';
import { recordRun, replayRun } from '../src/machine/runner.js';
import { resp } from '../src/machine/workloads.js';
import { guest, hex } from './helpers.js';

const TAG = Uint8Array.from({ length: 20 }, (_, i) => i + 1);

/** Two connections, one proxied (tagged open), each sending INCRs; the untagged one closes its input. */
function inputs(): ScheduledInput[] {
  const out: ScheduledInput[] = [
    { atCount: 0, kind: 'open', conn: 1, data: TAG },
    { atCount: 0, kind: 'open', conn: 2 },
  ];
  for (let i = 0; i < 5; i++) {
    out.push({ atCount: 1000 * (i + 1), kind: 'data', conn: 1, data: resp('INCR', 'a') });
    out.push({ atCount: 1000 * (i + 1) + 500, kind: 'data', conn: 2, data: resp('INCR', 'b') });
  }
  out.push({ atCount: 9000, kind: 'close', conn: 2 });
  return out;
}

const machines: Array<[string, VmConfig]> = [
  ['kv', DEFAULT_VM_CONFIG],
  ['c_server', { ...DEFAULT_VM_CONFIG, args: ['poll'] }],
];
for (const [name, config] of machines) {
  test(`${name}: a proxied connection's owner and offsets are a function of the log (record = replay), and go in the state hash`, () => {
    const g = guest(name);
    const rec = recordRun(g, config, new ScriptedEnv(inputs(), { seed: 1 }));
    const px = rec.machine.devices.proxied.get(1);
    assert.ok(px !== undefined, 'the tagged connection is proxied');
    assert.equal(px.tag, Buffer.from(TAG).toString('hex'));
    const sent = rec.outputs.filter((o) => o.kind === 'net' && o.conn === 1).reduce((a, o) => a + o.data.length, 0);
    assert.equal(px.outBytes, sent, 'output bytes counted');
    assert.equal(px.inBytes, resp('INCR', 'a').length * 5, 'input bytes the guest took');
    assert.equal(rec.machine.devices.proxied.has(2), false, 'an untagged connection is not proxied');
    const tagged = rec.entries.find((e) => (e.type === EntryType.NIC_OPEN || e.type === EntryType.SOCK_ACCEPT) && 'tag' in e && e.tag !== undefined);
    assert.ok(tagged, 'the log holds the tag');
    const rep = replayRun(g, config, rec.entries);
    assert.deepEqual([...rep.machine.devices.proxied], [...rec.machine.devices.proxied], 'the replica knows the same proxied state');
    assert.equal(hex(rep.finalHash), hex(rec.finalHash));
  });
}

test('--arbiter discovery: a real embedded arbiter lists the record owner\'s proxy port first, skips nodes without one (older entries read as before)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ftvm-proxy-discovery-'));
  const secret = randomBytes(32);
  const server = await EmbeddedArbiterServer.start({ dataDir: dir, host: '127.0.0.1', port: 0, secret, log: silentLogger });
  const arbiter = new EmbeddedArbiterClient({ host: '127.0.0.1', port: server.address.port, secret, log: silentLogger });
  try {
    const O = { deadlineMs: 5000 };
    const errors: string[] = [];
    const source = arbiterReplicas(arbiter, 'vmx', 2000, (e) => errors.push((e as FtvmError).code));
    assert.deepEqual(await source(), []);
    assert.deepEqual(errors, ['FTVM_ERR_PROXY_NO_REPLICA']);
    await arbiter.init('vmx', { epoch: 1, owner: 'node-b' }, O);
    await arbiter.publishMember('vmx', { nodeId: 'node-a', control: '127.0.0.1:7100', role: 'backup', proxy: '127.0.0.1:7401' }, 30_000, O);
    await arbiter.publishMember('vmx', { nodeId: 'node-b', control: '127.0.0.1:7101', role: 'primary', proxy: '127.0.0.1:7402' }, 30_000, O);
    await arbiter.publishMember('vmx', { nodeId: 'node-old', control: '127.0.0.1:7102', role: 'standby' }, 30_000, O);
    assert.deepEqual(await source(), [{ host: '127.0.0.1', port: 7402 }, { host: '127.0.0.1', port: 7401 }]);
    assert.deepEqual((await arbiter.listMembers('vmx', O)).find((m) => m.nodeId === 'node-old'), { nodeId: 'node-old', control: '127.0.0.1:7102', role: 'standby' });
    // A failover: the record names the other node; it comes first.
    await arbiter.claim('vmx', 1, 'node-a', O);
    assert.deepEqual(await source(), [{ host: '127.0.0.1', port: 7401 }, { host: '127.0.0.1', port: 7402 }]);
    await assert.rejects(arbiter.publishMember('vmx', { nodeId: 'n', control: '127.0.0.1:1', role: 'primary', proxy: 'nope' }, 3000, O), (e: FtvmError) => e.code === 'FTVM_ERR_BAD_ARGUMENT');
    // The arbiter down: the last list is kept (the proxy goes on trying the replicas it knew).
    await server.close();
    assert.deepEqual(await source(), [{ host: '127.0.0.1', port: 7401 }, { host: '127.0.0.1', port: 7402 }]);
    assert.equal(errors.at(-1), 'FTVM_ERR_ARBITER_UNAVAILABLE');
  } finally {
    await arbiter.close();
    await server.close().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
});

test('ftvm proxy refuses bad options with coded errors: neither or both of --replicas and --arbiter, a bad arbiter URL, an empty --replicas', () => {
  const keys = new Keyring(randomBytes(32));
  const vmName = 'vm';
  for (const [o, want] of [
    [{}, /exactly one of --replicas/],
    [{ replicas: ['127.0.0.1:7401'], arbiter: 'ftvm://127.0.0.1:7300' }, /exactly one of --replicas/],
    [{ arbiter: 'http://127.0.0.1:2379' }, /bad arbiter URL/],
    [{ replicas: [] }, /--replicas needs at least one address/],
    [{ replicas: ['127.0.0.1:x'] }, /--replicas: address "127.0.0.1:x" has a bad port/],
  ] as const) {
    assert.throws(() => replicaSourceFrom({ vmName, ...o }, keys, silentLogger), (e: FtvmError) => e.code === 'FTVM_ERR_BAD_ARGUMENT' && want.test(e.message), JSON.stringify(o));
  }
  // The command reports it with the code and a non-zero exit status.
  const r = spawnSync(process.execPath, [CLI, 'proxy', '--listen', '127.0.0.1:1', '--secret-file', makeSecretFile(), '--replicas', '127.0.0.1:7401', '--arbiter', 'ftvm://127.0.0.1:7300'], { encoding: 'utf8', timeout: 20_000 });
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /ftvm: error \[FTVM_ERR_BAD_ARGUMENT\]: give exactly one of --replicas/);
});

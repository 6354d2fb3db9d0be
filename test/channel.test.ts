/** The logging channel's framing and authentication over real loopback sockets. */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { test } from 'node:test';
import { ChannelConnection } from '../src/channel/connection.js';
import { ChannelDialer, ChannelListener } from '../src/channel/endpoints.js';
import { Keyring } from '../src/security/secrets.js';
import { tcpChannelTransport } from '../src/channel/transport.js';
import { FrameType, PROTOCOL_VERSION, decodeFrameBody, encodeFrameBody, type Frame } from '../src/channel/frames.js';
import { pino, type Logger } from 'pino';

interface Captured {
  msg: string;
}
function capture(): { log: Logger; lines: Captured[] } {
  const lines: Captured[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s) as Captured) }) as unknown as Logger;
  return { log, lines };
}

async function pairOfSockets(): Promise<[net.Socket, net.Socket, net.Server]> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as net.AddressInfo).port;
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
  const client = net.connect(port, '127.0.0.1');
  await new Promise((r) => client.once('connect', r));
  return [client, await accepted, server];
}

const id = (role: 'primary' | 'backup', hash = new Uint8Array(32)) => ({ role, vmName: 'vm', moduleHash: hash, epoch: 1, nextSeq: () => 0 });

test('frames round-trip; malformed bodies are FTVM_ERR_BAD_FRAME', () => {
  const frames: Frame[] = [
    { type: FrameType.LOG, epoch: 2, firstSeq: 10, count: 3, instructionNumber: 123456789, batch: new Uint8Array([1, 2, 3]) },
    { type: FrameType.ACK, epoch: 2, ackSeq: 13, replayedInstructionNumber: 99 },
    { type: FrameType.HEARTBEAT, epoch: 2, instructionNumber: 5, nextSeq: 13 },
    { type: FrameType.STATE_HASH, epoch: 2, n: 7, hash: new Uint8Array(32).fill(9), ok: true },
    { type: FrameType.CONTROL, epoch: 2, kind: 1, reason: 'stop' },
    { type: FrameType.REFUSE, code: 'X', reason: 'no' },
  ];
  for (const f of frames) assert.deepEqual(decodeFrameBody(encodeFrameBody(f)), f);
  assert.throws(() => decodeFrameBody(new Uint8Array([99])), { code: 'FTVM_ERR_BAD_FRAME' });
  assert.throws(() => decodeFrameBody(new Uint8Array([FrameType.ACK, 1])), { code: 'FTVM_ERR_BAD_FRAME' });
});

test('an authenticated session carries frames; a corrupted frame drops the connection with a log line', async () => {
  const secret = randomBytes(32);
  const [a, b, server] = await pairOfSockets();
  const pl = capture();
  const bl = capture();
  const p = new ChannelConnection(a, { secret, identity: id('primary'), log: pl.log });
  const bk = new ChannelConnection(b, { secret, identity: id('backup'), log: bl.log });
  await Promise.all([new Promise((r) => p.once('open', r)), new Promise((r) => bk.once('open', r))]);
  const got = new Promise<Frame>((r) => bk.once('frame', r));
  p.send({ type: FrameType.HEARTBEAT, epoch: 1, instructionNumber: 42, nextSeq: 0 });
  assert.deepEqual(await got, { type: FrameType.HEARTBEAT, epoch: 1, instructionNumber: 42, nextSeq: 0 });
  // A frame with a valid length and a wrong MAC, written straight onto the socket.
  const closed = new Promise<string>((r) => bk.once('close', r));
  const body = encodeFrameBody({ type: FrameType.ACK, epoch: 1, ackSeq: 5, replayedInstructionNumber: 0 });
  const frame = Buffer.alloc(4 + body.length + 16);
  frame.writeUInt32LE(body.length + 16, 0);
  Buffer.from(body).copy(frame, 4);
  a.write(frame);
  assert.equal(await closed, 'frame authentication failed');
  assert.ok(bl.lines.some((l) => /failed authentication \(forged, corrupted or replayed\)/.test(l.msg)));
  p.close('done');
  server.close();
});

test('a peer with the wrong secret never gets a frame through', async () => {
  const [a, b, server] = await pairOfSockets();
  const bl = capture();
  const p = new ChannelConnection(a, { secret: randomBytes(32), identity: id('primary'), log: capture().log });
  const bk = new ChannelConnection(b, { secret: randomBytes(32), identity: id('backup'), log: bl.log });
  let opened = false;
  bk.on('open', () => (opened = true));
  bk.on('frame', () => assert.fail('no frame may arrive'));
  const reason = await new Promise<string>((r) => bk.once('close', r));
  assert.equal(reason, 'authentication failed');
  assert.equal(opened, false);
  assert.ok(bl.lines.some((l) => /wrong secret/.test(l.msg)));
  p.close('done');
  server.close();
});

test('a standby speaking an older protocol version (before re-replication) is refused with a clear error; standby HELLOs skip the epoch check', async () => {
  const secret = randomBytes(32);
  {
    const [a, b, server] = await pairOfSockets();
    const pl = capture();
    const p = new ChannelConnection(a, { secret, identity: { ...id('primary'), epoch: 7 }, log: pl.log });
    const s = new ChannelConnection(b, { secret, identity: { role: 'standby', vmName: 'vm', moduleHash: new Uint8Array(32), epoch: 0, nextSeq: () => 0, protocolVersion: 1 }, log: capture().log });
    const [reason] = await Promise.all([new Promise<string>((r) => p.once('close', r)), new Promise((r) => s.once('close', r))]);
    assert.match(reason, new RegExp(`refused: protocol version 1 \\(this node speaks ${PROTOCOL_VERSION}\\)`));
    assert.ok(pl.lines.some((l) => /refused peer: protocol version 1/.test(l.msg)));
    server.close();
  }
  {
    // The current version: a standby (epoch 0) pairs with a primary at epoch 7; SNAPSHOT frames round-trip.
    const [a, b, server] = await pairOfSockets();
    const p = new ChannelConnection(a, { secret, identity: { ...id('primary'), epoch: 7 }, log: capture().log });
    const s = new ChannelConnection(b, { secret, identity: { role: 'standby', vmName: 'vm', moduleHash: new Uint8Array(32), epoch: 0, nextSeq: () => 0 }, log: capture().log });
    const [hello] = await Promise.all([new Promise<{ role: string }>((r) => p.once('open', r)), new Promise((r) => s.once('open', r))]);
    assert.equal(hello.role, 'standby');
    const got = new Promise<Frame>((r) => s.once('frame', r));
    const snap: Frame = { type: FrameType.SNAPSHOT, epoch: 7, part: 0, config: '{"name":"vm"}', data: new Uint8Array([1, 2, 3]) };
    p.send(snap);
    const g = (await got) as typeof snap & { data: Uint8Array };
    assert.deepEqual({ ...g, data: new Uint8Array(g.data) }, snap);
    p.close('done');
    server.close();
  }
});

test('rotation: each side sends HELLO under its current secret and accepts the other\'s; both orders, and a dropped secret is refused', async () => {
  const [oldS, newS] = [randomBytes(32), randomBytes(32)];
  for (const [pk, bk] of [
    [new Keyring(newS, [oldS]), new Keyring(oldS, [newS])],
    [new Keyring(oldS, [newS]), new Keyring(newS, [oldS])],
  ] as const) {
    const [a, b, server] = await pairOfSockets();
    const p = new ChannelConnection(a, { secret: pk, identity: id('primary'), log: capture().log });
    const k = new ChannelConnection(b, { secret: bk, identity: id('backup'), log: capture().log });
    await Promise.all([new Promise((r) => p.once('open', r)), new Promise((r) => k.once('open', r))]);
    const got = new Promise<Frame>((r) => k.once('frame', r));
    p.send({ type: FrameType.HEARTBEAT, epoch: 1, instructionNumber: 7, nextSeq: 0 });
    assert.deepEqual(await got, { type: FrameType.HEARTBEAT, epoch: 1, instructionNumber: 7, nextSeq: 0 }, 'the session keys agree');
    const ack = new Promise<Frame>((r) => p.once('frame', r));
    k.send({ type: FrameType.ACK, epoch: 1, ackSeq: 0, replayedInstructionNumber: 0 });
    assert.equal((await ack).type, FrameType.ACK);
    p.close('done');
    server.close();
  }
  // The old secret dropped on the backup: a primary still on it is refused.
  const [a, b, server] = await pairOfSockets();
  const bl = capture();
  new ChannelConnection(a, { secret: new Keyring(oldS), identity: id('primary'), log: capture().log });
  const k = new ChannelConnection(b, { secret: new Keyring(newS), identity: id('backup'), log: bl.log });
  assert.equal(await new Promise<string>((r) => k.once('close', r)), 'authentication failed');
  server.close();
});

test('TLS-PSK endpoints: a dialer with an accepted secret connects; one with an unknown secret fails the handshake and the listener logs it', async () => {
  const [s1, s2, wrongS] = [randomBytes(32), randomBytes(32), randomBytes(32)];
  const ll = capture();
  const listener = new ChannelListener('127.0.0.1', 0, { secret: new Keyring(s1, [s2]), identity: id('backup'), log: ll.log, transport: tcpChannelTransport('tls-psk') });
  await listener.start();
  const port = listener.address!.port;
  for (const s of [s1, s2]) {
    const dialer = new ChannelDialer('127.0.0.1', port, { secret: s, identity: id('primary'), log: capture().log, transport: tcpChannelTransport('tls-psk') });
    const opened = new Promise<ChannelConnection>((r) => dialer.once('connection', r));
    const accepted = new Promise<ChannelConnection>((r) => listener.once('connection', r));
    dialer.start();
    const [c, srv] = await Promise.all([opened, accepted]);
    const got = new Promise<Frame>((r) => srv.once('frame', r));
    c.send({ type: FrameType.HEARTBEAT, epoch: 1, instructionNumber: 1, nextSeq: 0 });
    assert.equal((await got).type, FrameType.HEARTBEAT);
    // Protocol 4 over TLS: TLS authenticates the frames; they carry no MAC of their own.
    assert.equal(c.framesMacd, false);
    assert.equal(srv.framesMacd, false);
    dialer.close();
  }
  {
    // A peer of the previous version over TLS is refused with a REFUSE it can verify (MAC'd, as it
    // expects), so both ends name the version.
    const pl = capture();
    const old = new ChannelDialer('127.0.0.1', port, { secret: s1, identity: { ...id('primary'), protocolVersion: 3 }, log: pl.log, transport: tcpChannelTransport('tls-psk'), retryMinMs: 5000 });
    const before = ll.lines.length;
    old.start();
    const until = Date.now() + 5000;
    while (!pl.lines.some((l) => /the peer refused us: protocol version 3/.test(l.msg)) && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
    assert.ok(pl.lines.some((l) => /the peer refused us: protocol version 3 \(this node speaks 4\)/.test(l.msg)), JSON.stringify(pl.lines.map((l) => l.msg)));
    assert.ok(ll.lines.slice(before).some((l) => /refused peer: protocol version 3/.test(l.msg)));
    old.close();
  }
  const before = ll.lines.length;
  const bad = new ChannelDialer('127.0.0.1', port, { secret: wrongS, identity: id('primary'), log: capture().log, transport: tcpChannelTransport('tls-psk'), retryMinMs: 5000 });
  bad.start();
  const until = Date.now() + 5000;
  while (!ll.lines.slice(before).some((l) => /TLS handshake failed/.test(l.msg)) && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
  assert.ok(ll.lines.slice(before).some((l) => /refused peer: TLS handshake failed/.test(l.msg)));
  bad.close();
  await listener.close();
});

test('an out-of-bounds frame length drops the connection before anything is buffered (plain transport; over TLS only a key holder gets this far)', async () => {
  const [a, b, server] = await pairOfSockets();
  const bl = capture();
  const k = new ChannelConnection(b, { secret: randomBytes(32), identity: id('backup'), log: bl.log });
  const closed = new Promise<string>((r) => k.once('close', r));
  const huge = Buffer.alloc(8);
  huge.writeUInt32LE(0xfffffff0, 0);
  a.on('error', () => undefined);
  a.write(huge);
  assert.match(await closed, /out of bounds/);
  assert.ok(bl.lines.some((l) => /frame size out of bounds/.test(l.msg)));
  a.destroy();
  server.close();
});

test('a HELLO liveness address that is malformed is never probed; an over-long one is a bad frame', async () => {
  const { parseLivenessAddress } = await import('../src/channel/liveness.js');
  assert.deepEqual(parseLivenessAddress('127.0.0.1:9000'), { host: '127.0.0.1', port: 9000 });
  assert.deepEqual(parseLivenessAddress('[::1]:9000'), { host: '::1', port: 9000 });
  for (const bad of ['', '127.0.0.1', '127.0.0.1:0', '127.0.0.1:70000', 'a:b', ':9000', '127.0.0.1:9000:1']) {
    assert.equal(parseLivenessAddress(bad), undefined, JSON.stringify(bad));
  }
  const hello: Frame = { type: FrameType.HELLO, version: PROTOCOL_VERSION, role: 'primary', vmName: 'vm', moduleHash: new Uint8Array(32), epoch: 1, arch: 'x64', nonce: new Uint8Array(16), nextSeq: 0, liveness: `h:${'9'.repeat(200)}` };
  assert.throws(() => decodeFrameBody(encodeFrameBody(hello)), /FTVM_ERR_BAD_FRAME|exceeds/);
});

test('a listener whose address is still held (a restarted node, its predecessor tearing down) retries and listens once it is free', async () => {
  const holder = net.createServer();
  await new Promise<void>((r) => holder.listen(0, '127.0.0.1', () => r()));
  const port = (holder.address() as net.AddressInfo).port;
  const ll = capture();
  const listener = new ChannelListener('127.0.0.1', port, { secret: randomBytes(32), identity: id('backup'), log: ll.log, transport: tcpChannelTransport('tls-psk') });
  const started = listener.start();
  await new Promise((r) => setTimeout(r, 300));
  assert.ok(ll.lines.some((l) => l.msg === 'the channel address is in use; retrying'), 'it says why it waits');
  await new Promise<void>((r) => holder.close(() => r()));
  await started;
  assert.equal(listener.address?.port, port);
  await listener.close();
});

test('the replication mode is part of the handshake: a replay node and a checkpoint node are refused on both sides with FTVM_ERR_MODE_MISMATCH; two checkpoint nodes connect', async () => {
  // HELLO codec: a replay HELLO carries no mode (its bytes are those of a HELLO before modes existed);
  // a checkpoint HELLO ends with the mode, and round-trips.
  const base = { type: FrameType.HELLO, version: PROTOCOL_VERSION, role: 'primary', vmName: 'vm', moduleHash: new Uint8Array(32), epoch: 1, arch: 'x64', nonce: new Uint8Array(16), nextSeq: 0, liveness: '127.0.0.1:9' } as const;
  const replayBytes = encodeFrameBody(base);
  assert.deepEqual(encodeFrameBody({ ...base, mode: 'replay' }), replayBytes);
  assert.equal('mode' in decodeFrameBody(replayBytes), false);
  const ckpt: Frame = { ...base, mode: 'checkpoint' };
  const ckptBytes = encodeFrameBody(ckpt);
  assert.deepEqual(Buffer.from(ckptBytes.subarray(0, replayBytes.length)), Buffer.from(replayBytes));
  assert.equal(ckptBytes.length, replayBytes.length + 1 + 'checkpoint'.length);
  assert.deepEqual(decodeFrameBody(ckptBytes), ckpt);
  assert.throws(() => decodeFrameBody(new Uint8Array([...replayBytes, 0])), { code: 'FTVM_ERR_BAD_FRAME' });

  const secret = randomBytes(32);
  for (const [pm, bm] of [['replay', 'checkpoint'], ['checkpoint', 'replay']] as const) {
    const [a, b, server] = await pairOfSockets();
    const pl = capture();
    const bl = capture();
    const p = new ChannelConnection(a, { secret, identity: { ...id('primary'), ...(pm === 'checkpoint' ? { mode: pm } : {}) }, log: pl.log });
    const bk = new ChannelConnection(b, { secret, identity: { ...id('backup'), ...(bm === 'checkpoint' ? { mode: bm } : {}) }, log: bl.log });
    p.on('open', () => assert.fail('a mixed pair must not open'));
    bk.on('open', () => assert.fail('a mixed pair must not open'));
    const [pr, br] = await Promise.all([new Promise<string>((r) => p.once('close', r)), new Promise<string>((r) => bk.once('close', r))]);
    assert.equal(pr, `refused: the peer runs --mode ${bm}, this node --mode ${pm}`);
    assert.equal(br, `refused: the peer runs --mode ${pm}, this node --mode ${bm}`);
    for (const lines of [pl.lines, bl.lines]) {
      assert.ok(lines.some((l) => (l as Captured & { code?: string }).code === 'FTVM_ERR_MODE_MISMATCH' && /refused peer: the peer runs --mode/.test(l.msg)), JSON.stringify(lines));
    }
    server.close();
  }
  {
    // Over TLS with the real dialer and listener: each side refuses the other's HELLO by its own check
    // (neither waits for the peer's REFUSE), and each names both modes with the code.
    const ll = capture();
    const listener = new ChannelListener('127.0.0.1', 0, { secret, identity: { ...id('backup'), mode: 'checkpoint' }, log: ll.log, transport: tcpChannelTransport('tls-psk') });
    await listener.start();
    const port = listener.address!.port;
    const pl = capture();
    const replay = new ChannelDialer('127.0.0.1', port, { secret, identity: id('primary'), log: pl.log, transport: tcpChannelTransport('tls-psk'), retryMinMs: 5000 });
    replay.on('connection', () => assert.fail('a mixed pair must not open'));
    try {
      replay.start();
      const until = Date.now() + 5000;
      const said = (lines: Captured[], re: RegExp): boolean => lines.some((l) => (l as Captured & { code?: string }).code === 'FTVM_ERR_MODE_MISMATCH' && re.test(l.msg));
      const done = (): boolean => said(pl.lines, /refused peer: the peer runs --mode checkpoint, this node --mode replay/) && said(ll.lines, /refused peer: the peer runs --mode replay, this node --mode checkpoint/);
      while (!done() && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
      assert.ok(done(), JSON.stringify([pl.lines.map((l) => l.msg), ll.lines.map((l) => l.msg)]));
    } finally {
      replay.close();
    }
    // Two checkpoint endpoints connect, and each sees the other's mode.
    const accepted = new Promise<ChannelConnection>((r) => listener.once('connection', r));
    const ck = new ChannelDialer('127.0.0.1', port, { secret, identity: { ...id('primary'), mode: 'checkpoint' }, log: capture().log, transport: tcpChannelTransport('tls-psk') });
    const opened = new Promise<ChannelConnection>((r) => ck.once('connection', r));
    ck.start();
    try {
      const [c, srv] = await Promise.all([opened, accepted]);
      assert.equal(c.peerHello?.mode, 'checkpoint');
      assert.equal(srv.peerHello?.mode, 'checkpoint');
    } finally {
      ck.close();
      await listener.close();
    }
  }
});

test('a dialer closed while its connection is still in the handshake never emits it (the owner moved on: found by the checkpoint simulator, seed 1198)', async () => {
  const s = randomBytes(32);
  const listener = new ChannelListener('127.0.0.1', 0, { secret: new Keyring(s), identity: id('backup'), log: capture().log, transport: tcpChannelTransport('tls-psk') });
  await listener.start();
  const dialer = new ChannelDialer('127.0.0.1', listener.address!.port, { secret: s, identity: id('primary'), log: capture().log, transport: tcpChannelTransport('tls-psk'), retryMinMs: 10 });
  let emitted = 0;
  dialer.on('connection', (c: ChannelConnection) => {
    emitted++;
    c.close('test: not wanted');
  });
  dialer.start(); // the TCP connect and the handshake are under way
  dialer.close();
  await new Promise((r) => setTimeout(r, 400));
  assert.equal(emitted, 0, 'a closed dialer emitted a connection');
  // The same listener still takes a dialer that stays open.
  const live = new ChannelDialer('127.0.0.1', listener.address!.port, { secret: s, identity: id('primary'), log: capture().log, transport: tcpChannelTransport('tls-psk') });
  const opened = new Promise<ChannelConnection>((r) => live.once('connection', r));
  live.start();
  await opened;
  live.close();
  await listener.close();
});

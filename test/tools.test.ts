/**
 * The test tools themselves, against real servers: the RESP client and parser (src/client/resp.ts)
 * against a real redis-server, the fault proxy (src/testing/fault-proxy.ts) between that client and
 * redis-server (and a local echo server), and the process helpers (src/testing/processes.ts).
 *
 * Needs `redis-server` on PATH (Debian package redis-server).
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import {
  RespClient,
  RespClientError,
  RespError,
  RespParser,
  encodeCommand,
  isIndeterminate,
  type RespValue,
} from '../src/client/resp.js';
import { NODE_FLAGS } from '../src/cli/node-flags.js';
import { VCPU_YOUNG_GENERATION_MB } from '../src/machine/vcpu.js';
import { FaultProxy, FaultProxyError } from '../src/testing/fault-proxy.js';
import { FaultProxyHost } from '../src/testing/fault-proxy-host.js';
import { needs, requireComponents } from '../src/testing/system-deps.js';
import {
  ProcessError,
  freePort,
  liveProcesses,
  spawnNode,
  spawnProcess,
  stopAll,
  waitForPort,
  type ProcessHandle,
} from '../src/testing/processes.js';

// ---------------------------------------------------------------------------------------------------
// helpers

type Settled<T> = { ok: true; value: T } | { ok: false; error: unknown };

/** Observes a promise at once (no unhandled rejection), to be inspected later. */
function settle<T>(p: Promise<T>): Promise<Settled<T>> {
  return p.then(
    (value) => ({ ok: true as const, value }),
    (error: unknown) => ({ ok: false as const, error }),
  );
}

/** True if `p` has not settled `ms` milliseconds from now. */
async function stillPending(p: Promise<unknown>, ms: number): Promise<boolean> {
  const timeout = Symbol('timeout');
  const r = await Promise.race([p.then(() => 'settled', () => 'settled'), new Promise((res) => setTimeout(() => res(timeout), ms))]);
  return r === timeout;
}

function errorCode(s: Settled<unknown>): string {
  assert.equal(s.ok, false, 'expected a rejection');
  const e = (s as { error: unknown }).error;
  assert.ok(e instanceof RespClientError, `expected a RespClientError, got ${String(e)}`);
  return e.code;
}

function value<T>(s: Settled<T>): T {
  if (!s.ok) throw s.error;
  return s.value;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until(cond: () => boolean, what: string, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** Encodes a reply the way a server would (for parser tests). */
function encodeReply(v: RespValue): Buffer {
  if (v === null) return Buffer.from('$-1\r\n');
  if (typeof v === 'string') return Buffer.from(`+${v}\r\n`);
  if (typeof v === 'number' || typeof v === 'bigint') return Buffer.from(`:${v}\r\n`);
  if (v instanceof RespError) return Buffer.from(`-${v.message}\r\n`);
  if (Buffer.isBuffer(v)) return Buffer.concat([Buffer.from(`$${v.length}\r\n`), v, Buffer.from('\r\n')]);
  return Buffer.concat([Buffer.from(`*${v.length}\r\n`), ...v.map(encodeReply)]);
}

function parseChunks(chunks: Uint8Array[]): RespValue[] {
  const p = new RespParser();
  const out: RespValue[] = [];
  for (const c of chunks) {
    p.push(c);
    out.push(...p.pullAll());
  }
  assert.ok(p.idle, 'parser holds no partial value at the end');
  return out;
}

// ---------------------------------------------------------------------------------------------------
// parser

test('RespParser: every reply type, fed whole, split at every byte, and byte by byte', () => {
  const allBytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  const values: RespValue[] = [
    'OK',
    '',
    new RespError('ERR unknown command'),
    0,
    -42,
    Number.MAX_SAFE_INTEGER,
    9223372036854775807n,
    -9223372036854775808n,
    Buffer.alloc(0),
    Buffer.from('a\r\nb\r\n'),
    allBytes,
    null,
    [],
    [Buffer.from('x'), null, [1, [2, [new RespError('WRONGTYPE nope'), 'deep']]], []],
  ];
  // A null array decodes to null as well; put one in by hand.
  const stream = Buffer.concat([...values.map(encodeReply), Buffer.from('*-1\r\n*2\r\n*-1\r\n$-1\r\n')]);
  const expected = [...values, null, [null, null]];

  assert.deepEqual(parseChunks([stream]), expected);
  for (let i = 1; i < stream.length; i++) {
    assert.deepEqual(parseChunks([stream.subarray(0, i), stream.subarray(i)]), expected, `split at byte ${i}`);
  }
  const bytes = Array.from(stream, (b) => Uint8Array.of(b));
  assert.deepEqual(parseChunks(bytes), expected);

  // Bulk strings share no memory with the input.
  const input = Buffer.from('$3\r\nabc\r\n');
  const p = new RespParser();
  p.push(input);
  const v = p.pull() as Buffer;
  input.fill(0x7a);
  assert.equal(v.toString(), 'abc');
  assert.equal(p.pull(), undefined);
});

test('RespParser: random values survive random chunking (property)', () => {
  const line = fc.string({ maxLength: 20 }).filter((s) => !/[\r\n]/.test(s));
  const { value: arb } = fc.letrec<{ value: RespValue }>((tie) => ({
    value: fc.oneof(
      { depthSize: 'small', withCrossShrink: true },
      line,
      line.map((m) => new RespError(m)),
      fc.integer(),
      fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }).map((b) => (b >= -(2n ** 53n) + 1n && b <= 2n ** 53n - 1n ? Number(b) : b)),
      fc.uint8Array({ maxLength: 40 }).map((u) => Buffer.from(u)),
      fc.constant(null),
      fc.array(tie('value'), { maxLength: 5 }),
    ),
  }));
  fc.assert(
    fc.property(fc.array(arb, { minLength: 1, maxLength: 8 }), fc.array(fc.integer({ min: 1, max: 7 }), { minLength: 1 }), (vals, cuts) => {
      const stream = Buffer.concat(vals.map(encodeReply));
      const chunks: Buffer[] = [];
      for (let o = 0, k = 0; o < stream.length; k++) {
        const n = cuts[k % cuts.length]!;
        chunks.push(stream.subarray(o, o + n));
        o += n;
      }
      assert.deepEqual(parseChunks(chunks), vals);
    }),
    { numRuns: 300 },
  );
});

test('RespParser: bounded, and malformed input fails with a coded error for good', () => {
  const failsWith = (input: string | Buffer, code: string, options = {}): void => {
    const p = new RespParser(options);
    p.push(typeof input === 'string' ? Buffer.from(input, 'latin1') : input);
    const check = (e: unknown): boolean => e instanceof RespClientError && e.code === code;
    assert.throws(() => p.pullAll(), check, JSON.stringify(input.toString()));
    // Failed for good: the stream cannot be resynchronized.
    assert.throws(() => p.pull(), check);
    assert.throws(() => p.push(Buffer.from('+OK\r\n')), check);
  };
  // Bulk strings: 512 MiB is accepted (waits for the body), one byte more is refused from the header alone.
  const big = new RespParser();
  big.push(Buffer.from(`$${512 * 1024 * 1024}\r\n`));
  assert.equal(big.pull(), undefined);
  failsWith(`$${512 * 1024 * 1024 + 1}\r\n`, 'FTVM_ERR_RESP_LIMIT');
  // Nesting: 32 levels are fine, 33 are refused.
  const nested = (depth: number): string => '*1\r\n'.repeat(depth) + ':7\r\n';
  let expected: RespValue = 7;
  for (let i = 0; i < 32; i++) expected = [expected];
  assert.deepEqual(parseChunks([Buffer.from(nested(32))]), [expected]);
  failsWith(nested(33), 'FTVM_ERR_RESP_LIMIT');
  failsWith('+' + 'x'.repeat(100), 'FTVM_ERR_RESP_LIMIT', { maxLineBytes: 64 }); // no CRLF yet, already too long
  failsWith('+' + 'x'.repeat(100) + '\r\n', 'FTVM_ERR_RESP_LIMIT', { maxLineBytes: 64 });
  for (const bad of ['?x\r\n', '\r\n', '%1\r\n', '$abc\r\n', '$-2\r\n', '*-5\r\n', '$\r\n', '$3\r\nabcXY', ':12a\r\n', ':\r\n', ':+1\r\n', '+OK\n', ':99999999999999999999\r\n']) {
    failsWith(bad, 'FTVM_ERR_RESP_PROTOCOL');
  }
});

test('encodeCommand writes RESP arrays of bulk strings (UTF-8 and bytes)', () => {
  assert.equal(encodeCommand(['SET', 'k', 'é']).toString('latin1'), '*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\xc3\xa9\r\n');
  assert.deepEqual(encodeCommand([Uint8Array.of(0, 13, 10)]), Buffer.from('*1\r\n$3\r\n\x00\r\n\r\n', 'latin1'));
  assert.equal(encodeCommand(['x'.repeat(1234)]).length, 4 + 7 + 1234 + 2);
});

// ---------------------------------------------------------------------------------------------------
// a real redis-server

let redis: ProcessHandle | undefined;
let redisPort = 0;
let redisDir = '';

// A safety net: whatever a failing test left running is stopped by PID (SIGTERM, then SIGKILL).
after(() => stopAll(3000));

describe('against a real redis-server', needs('redis-server'), () => {
  before(async () => {
    requireComponents('redis-server');
    redisPort = await freePort();
    redisDir = mkdtempSync(join(tmpdir(), 'ftvm-redis-'));
    try {
      redis = spawnProcess(
        'redis-server',
        ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', redisDir],
        { name: 'redis-server' },
      );
    } catch (err) {
      throw new Error('redis-server failed to start', { cause: err });
    }
    await Promise.race([
      waitForPort(redisPort, 10_000),
      redis.exited.then((s) => {
        throw new Error(`redis-server exited early (${JSON.stringify(s)})${redis?.outputTail() ?? ''}`);
      }),
    ]);
  });

  after(async () => {
    // By PID: SIGTERM, then SIGKILL after the grace period.
    await redis?.stop(3000);
    if (redisDir) rmSync(redisDir, { recursive: true, force: true });
  });

  const direct = (options: { callTimeoutMs?: number; maxInFlight?: number } = {}): Promise<RespClient> =>
    RespClient.connect({ host: '127.0.0.1', port: redisPort, connectTimeoutMs: 2000, ...options });

  // ---------------------------------------------------------------------------------------------------
  // client against redis-server

  test('client: pipelined SET/GET/INCR/DEL/MGET round trips against redis-server', async () => {
    const c = await direct();
    try {
      const calls = [
        c.call('DEL', 'rt:a', 'rt:ctr'),
        c.call('SET', 'rt:a', 'hello'),
        c.call('GET', 'rt:a'),
        ...Array.from({ length: 1000 }, () => c.call('INCR', 'rt:ctr')),
        c.call('MGET', 'rt:a', 'rt:missing', 'rt:ctr'),
        c.call('DEL', 'rt:a'),
        c.call('GET', 'rt:a'),
        c.call('PING'),
        c.call('LRANGE', 'rt:missing', '0', '-1'),
      ];
      assert.ok(c.inFlight > 1000, 'the calls are in flight together');
      const r = await Promise.all(calls);
      assert.equal(typeof r[0], 'number');
      assert.equal(r[1], 'OK');
      assert.deepEqual(r[2], Buffer.from('hello'));
      for (let i = 0; i < 1000; i++) assert.equal(r[3 + i], i + 1);
      assert.deepEqual(r[1003], [Buffer.from('hello'), null, Buffer.from('1000')]);
      assert.equal(r[1004], 1);
      assert.equal(r[1005], null);
      assert.equal(r[1006], 'PONG');
      assert.deepEqual(r[1007], []);
      assert.equal(c.inFlight, 0);
    } finally {
      await c.close();
    }
  });

  test('client: binary keys and values, including replies split across many chunks', async () => {
    const c = await direct();
    try {
      const allBytes = Buffer.from(Array.from({ length: 1024 }, (_, i) => i & 0xff));
      const crlf = Buffer.from('\r\n$5\r\n*1\r\n\r\n');
      const large = randomBytes(4 * 1024 * 1024); // arrives in many socket chunks
      const key = Buffer.from([0, 0xff, 0x0d, 0x0a, 0x20]);
      const r = await Promise.all([
        c.call('SET', key, allBytes),
        c.call('GET', key),
        c.call('SET', 'bin:crlf', crlf),
        c.call('GET', 'bin:crlf'),
        c.call('SET', 'bin:empty', ''),
        c.call('GET', 'bin:empty'),
        c.call('SET', 'bin:utf8', 'żółw 🐢'),
        c.call('GET', 'bin:utf8'),
        c.call('SET', 'bin:large', large),
        c.call('GET', 'bin:large'),
        c.call('STRLEN', 'bin:large'),
        c.call('DEL', key, 'bin:crlf', 'bin:empty', 'bin:utf8', 'bin:large'),
      ]);
      assert.deepEqual(r[1], allBytes);
      assert.deepEqual(r[3], crlf);
      assert.deepEqual(r[5], Buffer.alloc(0));
      assert.equal((r[7] as Buffer).toString('utf8'), 'żółw 🐢');
      assert.ok(Buffer.isBuffer(r[9]) && r[9].equals(large));
      assert.equal(r[10], large.length);
      assert.equal(r[11], 5);
    } finally {
      await c.close();
    }
  });

  test('client: error replies are values; the connection goes on; bad arguments are refused unsent', async () => {
    const c = await direct();
    try {
      const r = await Promise.all([
        c.call('RPUSH', 'err:list', 'x'),
        c.call('GET', 'err:list'),
        c.call('NOSUCHCOMMAND', 'a'),
        c.call('EXEC'),
        c.call('PING', 'still here'),
        c.call('DEL', 'err:list'),
      ]);
      assert.equal(r[0], 1);
      assert.ok(r[1] instanceof RespError);
      assert.equal(r[1].prefix, 'WRONGTYPE');
      assert.ok(r[2] instanceof RespError && /^ERR unknown command/.test(r[2].message), String(r[2]));
      assert.ok(r[3] instanceof RespError && r[3].prefix === 'ERR');
      assert.deepEqual(r[4], Buffer.from('still here'));
      assert.equal(errorCode(await settle(c.call())), 'FTVM_ERR_BAD_ARGUMENT');
      assert.equal(errorCode(await settle(c.call('GET', 5 as unknown as string))), 'FTVM_ERR_BAD_ARGUMENT');
      assert.equal(await c.call('PING'), 'PONG');
    } finally {
      await c.close();
    }
  });

  test('client: at most maxInFlight calls in flight; the rest wait unwritten, in order', async () => {
    const c = await direct({ maxInFlight: 8 });
    try {
      await c.call('DEL', 'bp:ctr');
      const calls: Promise<RespValue>[] = [];
      let maxInFlight = 0;
      let maxQueued = 0;
      for (let i = 0; i < 500; i++) {
        calls.push(c.call('INCR', 'bp:ctr'));
        maxInFlight = Math.max(maxInFlight, c.inFlight);
        maxQueued = Math.max(maxQueued, c.queued);
      }
      const watcher = setInterval(() => (maxInFlight = Math.max(maxInFlight, c.inFlight)), 1);
      const r = await Promise.all(calls);
      clearInterval(watcher);
      assert.equal(maxInFlight, 8);
      assert.equal(maxQueued, 492);
      assert.deepEqual(r, Array.from({ length: 500 }, (_, i) => i + 1));
      assert.equal(c.queued, 0);
    } finally {
      await c.close();
    }
  });

  test('client: connect refused, close with calls outstanding, a call after close', async () => {
    const nobody = await freePort();
    const refused = await settle(RespClient.connect({ port: nobody, connectTimeoutMs: 1000 }));
    assert.equal(errorCode(refused), 'FTVM_ERR_CLIENT_CONNECT');

    const c = await direct({ maxInFlight: 1 });
    const blocked = settle(c.call('BLPOP', 'close:nothing', '5')); // written; redis holds it
    const unsent = settle(c.call('PING')); // waits for in-flight capacity
    assert.equal(c.inFlight, 1);
    assert.equal(c.queued, 1);
    await c.close();
    assert.equal(errorCode(await blocked), 'FTVM_ERR_CLIENT_INDETERMINATE');
    assert.equal(errorCode(await unsent), 'FTVM_ERR_CLIENT_NOT_SENT');
    assert.equal(errorCode(await settle(c.call('PING'))), 'FTVM_ERR_CLIENT_NOT_SENT');
    assert.equal(c.connected, false);
    assert.equal((await c.closed).code, 'FTVM_ERR_CLIENT_CONNECTION_LOST');
  });

  test('client: a call with no reply in callTimeoutMs times out; the others written become indeterminate', async () => {
    const c = await direct({ callTimeoutMs: 250 });
    const t0 = Date.now();
    const blpop = settle(c.call('BLPOP', 'timeout:nothing', '3'));
    const ping = settle(c.call('PING')); // written behind the BLPOP, answered only after it
    const first = await blpop;
    const elapsed = Date.now() - t0;
    assert.equal(errorCode(first), 'FTVM_ERR_CLIENT_TIMEOUT');
    assert.ok(isIndeterminate((first as { error: unknown }).error));
    assert.ok(elapsed >= 240 && elapsed < 1500, `timed out after ${elapsed} ms`);
    assert.equal(errorCode(await ping), 'FTVM_ERR_CLIENT_INDETERMINATE');
    const later = await settle(c.call('PING'));
    assert.equal(errorCode(later), 'FTVM_ERR_CLIENT_NOT_SENT');
    assert.equal(isIndeterminate((later as { error: unknown }).error), false);
    assert.equal((await c.closed).code, 'FTVM_ERR_CLIENT_TIMEOUT');
  });

  // ---------------------------------------------------------------------------------------------------
  // fault proxy between the client and redis-server

  async function proxied(t: { after(fn: () => Promise<void>): void }, clientOptions: { callTimeoutMs?: number } = {}) {
    const proxy = await FaultProxy.start({ listenPort: 0, targetHost: '127.0.0.1', targetPort: redisPort });
    const client = await RespClient.connect({ port: proxy.port, connectTimeoutMs: 2000, ...clientOptions });
    const check = await direct();
    t.after(async () => {
      await client.close();
      await check.close();
      await proxy.close();
    });
    return { proxy, client, check };
  }

  test('proxy: forwards both ways and counts the bytes', async (t) => {
    const { proxy, client } = await proxied(t);
    assert.equal(await client.call('PING'), 'PONG');
    assert.equal(proxy.bytes('up'), encodeCommand(['PING']).length);
    assert.equal(proxy.bytes('down'), '+PONG\r\n'.length);
    const s = proxy.stats();
    assert.equal(s.connections, 1);
    assert.equal(s.accepted, 1);
    assert.equal(s.up.received, s.up.forwarded);
  });

  test('proxy: hold(down) keeps the reply back though the server executed the call; release delivers it', async (t) => {
    const { proxy, client, check } = await proxied(t);
    await check.call('DEL', 'hold:k');
    proxy.hold('down');
    const set = settle(client.call('SET', 'hold:k', 'v1'));
    assert.ok(await stillPending(set, 300), 'no reply while held');
    assert.deepEqual(await check.call('GET', 'hold:k'), Buffer.from('v1'), 'yet the server executed it');
    assert.equal(proxy.bytes('down'), 0);
    assert.equal(proxy.stats().down.buffered, '+OK\r\n'.length);
    proxy.release('down');
    assert.equal(value(await set), 'OK');
    assert.equal(await client.call('GET', 'hold:k').then(String), 'v1');
  });

  test('proxy: hold(up) keeps the call from the server until release', async (t) => {
    const { proxy, client, check } = await proxied(t);
    await check.call('DEL', 'holdup:k');
    proxy.hold('up');
    const set = settle(client.call('SET', 'holdup:k', 'v2'));
    assert.ok(await stillPending(set, 300));
    assert.equal(await check.call('GET', 'holdup:k'), null, 'not delivered');
    proxy.release('up');
    assert.equal(value(await set), 'OK');
    assert.deepEqual(await check.call('GET', 'holdup:k'), Buffer.from('v2'));
  });

  test('proxy: delay(down) delays every reply by a fixed time, in order', async (t) => {
    const { proxy, client, check } = await proxied(t);
    await check.call('DEL', 'delay:ctr');
    proxy.delay('down', 400);
    const t0 = Date.now();
    const r = await Promise.all(Array.from({ length: 5 }, () => client.call('INCR', 'delay:ctr')));
    const slow = Date.now() - t0;
    assert.deepEqual(r, [1, 2, 3, 4, 5]);
    assert.ok(slow >= 390, `delayed replies took ${slow} ms`);
    proxy.delay('down', 0);
    const t1 = Date.now();
    assert.equal(await client.call('PING'), 'PONG');
    const fast = Date.now() - t1;
    assert.ok(fast < 300, `no delay after delay(down, 0): ${fast} ms`);
  });

  test('proxy: hold(down) then cut: calls in flight are indeterminate, reconnects refused until heal', async (t) => {
    const { proxy, client, check } = await proxied(t);
    await check.call('DEL', 'cut:ctr');
    proxy.hold('down');
    const a = settle(client.call('INCR', 'cut:ctr'));
    const b = settle(client.call('INCR', 'cut:ctr'));
    assert.ok(await stillPending(a, 200));
    proxy.cut();
    assert.equal(errorCode(await a), 'FTVM_ERR_CLIENT_INDETERMINATE');
    assert.equal(errorCode(await b), 'FTVM_ERR_CLIENT_INDETERMINATE');
    assert.equal((await client.closed).code, 'FTVM_ERR_CLIENT_CONNECTION_LOST');
    // Indeterminate indeed: both took effect.
    assert.deepEqual(await check.call('GET', 'cut:ctr'), Buffer.from('2'));
    assert.equal(errorCode(await settle(client.call('PING'))), 'FTVM_ERR_CLIENT_NOT_SENT');
    const refused = await settle(RespClient.connect({ port: proxy.port, connectTimeoutMs: 1000 }));
    assert.equal(errorCode(refused), 'FTVM_ERR_CLIENT_CONNECT');
    assert.equal(proxy.stats().connections, 0);

    await proxy.heal();
    const again = await RespClient.connect({ port: proxy.port, connectTimeoutMs: 1000 });
    try {
      assert.equal(await again.call('PING'), 'PONG', 'healed: forwards again, nothing held');
    } finally {
      await again.close();
    }
  });

  test('proxy: hold(down) makes a call time out; the pipelined one behind it is indeterminate', async (t) => {
    const { proxy, client } = await proxied(t, { callTimeoutMs: 300 });
    proxy.hold('down');
    const a = settle(client.call('SET', 'to:k', '1'));
    const b = settle(client.call('GET', 'to:k'));
    assert.equal(errorCode(await a), 'FTVM_ERR_CLIENT_TIMEOUT');
    assert.equal(errorCode(await b), 'FTVM_ERR_CLIENT_INDETERMINATE');
    assert.equal(errorCode(await settle(client.call('PING'))), 'FTVM_ERR_CLIENT_NOT_SENT');
    // The client's close resets nothing in the proxy while down is held; heal lets it all drain and close.
    await proxy.heal();
    await until(() => proxy.stats().connections === 0, 'the proxied connection to close');
  });

  test('proxy: blackhole drops bytes while TCP stays up; release ends it', async (t) => {
    const { proxy, client, check } = await proxied(t, { callTimeoutMs: 400 });
    await check.call('DEL', 'bh:up', 'bh:down');

    proxy.blackhole('up');
    const lost = settle(client.call('SET', 'bh:up', 'x'));
    assert.equal(errorCode(await lost), 'FTVM_ERR_CLIENT_TIMEOUT');
    assert.equal(await check.call('GET', 'bh:up'), null, 'the request never reached the server');
    const s = proxy.stats();
    assert.equal(s.up.forwarded, 0);
    assert.equal(s.up.dropped, s.up.received);
    assert.ok(s.up.received > 0);
    // The client gave up and closed; the proxy defers that FIN while blackholed, so the server side stays up.
    assert.equal(s.connections, 1);
    proxy.release('up');
    await until(() => proxy.stats().connections === 0, 'the deferred FIN to close the connection');

    proxy.blackhole('down');
    const c2 = await RespClient.connect({ port: proxy.port, callTimeoutMs: 400 });
    t.after(() => c2.close());
    const noReply = settle(c2.call('SET', 'bh:down', 'y'));
    assert.equal(errorCode(await noReply), 'FTVM_ERR_CLIENT_TIMEOUT');
    assert.deepEqual(await check.call('GET', 'bh:down'), Buffer.from('y'), 'executed, reply dropped');
    assert.equal(proxy.bytes('down'), 0, 'nothing forwarded downstream');
  });
}); // against a real redis-server

// ---------------------------------------------------------------------------------------------------
// fault proxy with raw sockets and an echo server

async function echoServer(t: { after(fn: () => Promise<void>): void }): Promise<number> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => s.destroy());
    s.pipe(s); // echoes, and ends its side when the peer ends
  });
  await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port: 0 }, () => resolve()));
  t.after(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return (server.address() as net.AddressInfo).port;
}

function rawConnect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true }, () => resolve(s));
    s.once('error', reject);
  });
}

function collect(s: net.Socket): Promise<Buffer> {
  const parts: Buffer[] = [];
  s.on('data', (d: Buffer) => parts.push(d));
  return new Promise((resolve, reject) => {
    s.on('end', () => resolve(Buffer.concat(parts)));
    s.on('error', reject);
  });
}

test('proxy: delay keeps order, and a FIN follows the delayed bytes', async (t) => {
  const port = await echoServer(t);
  const proxy = await FaultProxy.start({ targetPort: port });
  t.after(() => proxy.close());
  proxy.delay('up', 60);
  proxy.delay('down', 30);
  const s = await rawConnect(proxy.port);
  const echoed = collect(s);
  for (const part of ['one ', 'two ', 'three ']) {
    s.write(part);
    await sleep(5);
  }
  s.end('four');
  assert.equal((await echoed).toString(), 'one two three four');
  s.destroy();
});

test('proxy: hold is bounded (the sender is paused), and release forwards every byte in order', async (t) => {
  const port = await echoServer(t);
  const proxy = await FaultProxy.start({ targetPort: port, maxHeldBytes: 1024 * 1024 });
  t.after(() => proxy.close());
  proxy.hold('up');
  const s = await rawConnect(proxy.port);
  t.after(async () => void s.destroy());
  const payload = randomBytes(32 * 1024 * 1024);
  const echoed = collect(s);
  s.end(payload);
  // The proxy stops reading at the bound; the rest waits in kernel buffers and in the sender.
  await until(() => proxy.stats().up.buffered > 1024 * 1024, 'the hold to fill');
  await sleep(200);
  const held = proxy.stats().up.buffered;
  assert.ok(held <= 1024 * 1024 + 256 * 1024, `held ${held} bytes`);
  assert.ok(s.writableLength > 0, 'backpressure reached the sender');
  assert.equal(proxy.bytes('up'), 0);
  proxy.release('up');
  const back = await echoed;
  assert.equal(back.length, payload.length);
  assert.equal(createHash('sha256').update(back).digest('hex'), createHash('sha256').update(payload).digest('hex'));
});

test('proxy: close() resets its connections and stops listening; targets must be loopback', async (t) => {
  const port = await echoServer(t);
  const proxy = await FaultProxy.start({ targetPort: port });
  const s = await rawConnect(proxy.port);
  const closed = new Promise<void>((resolve) => s.on('close', () => resolve()));
  s.on('error', () => {});
  s.write('x');
  await until(() => proxy.bytes('down') === 1, 'the echo');
  await proxy.close();
  await closed;
  assert.equal(proxy.stats().connections, 0);
  assert.equal(errorCode(await settle(RespClient.connect({ port: proxy.port, connectTimeoutMs: 1000 }))), 'FTVM_ERR_CLIENT_CONNECT');
  for (const targetHost of ['10.0.0.1', '192.168.1.1', 'example.com', '::1', '0.0.0.0']) {
    await assert.rejects(FaultProxy.start({ targetHost, targetPort: port }), (e: unknown) => e instanceof FaultProxyError && e.code === 'FTVM_ERR_BAD_ARGUMENT');
  }
});

// ---------------------------------------------------------------------------------------------------
// processes

test('processes: spawnNode, waitForLine, stop escalates to SIGKILL, stopAll, freePort', async () => {
  const script = `
    process.on('SIGTERM', () => console.log('ignoring SIGTERM'));
    console.log('hello ' + process.env.GREETING);
    console.error('to stderr');
    setTimeout(() => console.log('later 42'), 100);
    setInterval(() => {}, 1000);
  `;
  const p = spawnNode(['-e', script], { env: { GREETING: 'world' }, name: 'stubborn' });
  assert.ok(p.pid > 0);
  assert.ok(liveProcesses().includes(p));
  assert.equal((await p.waitForLine(/^hello (\w+)$/, 5000))[1], 'world');
  assert.equal((await p.waitForLine(/later (\d+)/g, 5000))[1], '42');
  await p.waitForLine(/to stderr/, 1000, { stream: 'stderr' });
  const mark = p.mark();
  await assert.rejects(p.waitForLine(/hello/, 200, { since: mark }), (e: unknown) => e instanceof ProcessError && e.code === 'FTVM_ERR_PROCESS_TIMEOUT');
  const t0 = Date.now();
  const status = await p.stop(300);
  assert.deepEqual(status, { code: null, signal: 'SIGKILL' });
  assert.ok(Date.now() - t0 >= 290);
  assert.ok(p.stdout.lines.includes('ignoring SIGTERM'));
  assert.equal(p.kill('SIGTERM'), false, 'already gone');

  const quick = spawnNode(['-e', 'console.log("bye"); process.exit(3)']);
  await assert.rejects(quick.waitForLine(/never/, 5000), (e: unknown) => e instanceof ProcessError && e.code === 'FTVM_ERR_PROCESS_EXITED');
  assert.deepEqual(await quick.exited, { code: 3, signal: null });
  assert.deepEqual([...quick.stdout.lines], ['bye']);

  const sleeper = spawnNode(['-e', 'setInterval(() => {}, 1000)']);
  await stopAll(2000);
  assert.equal(sleeper.running, false);
  assert.deepEqual(liveProcesses(), [], 'redis-server was stopped by its own after hook; stopAll stopped the rest');

  assert.throws(() => spawnProcess('/nonexistent/ftvm-no-such-binary', []), (e: unknown) => e instanceof ProcessError && e.code === 'FTVM_ERR_PROCESS_SPAWN');

  const port = await freePort();
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port }, () => resolve()));
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

test('node flags: spawned nodes and the ftvm bin run with NODE_FLAGS (a small young generation: flat RSS)', async () => {
  const p = spawnNode(['-e', 'console.log(JSON.stringify(process.execArgv))']);
  const [line] = await p.waitForLine(/^\[.*\]$/, 5000);
  assert.deepEqual((JSON.parse(line) as string[]).slice(0, NODE_FLAGS.length), [...NODE_FLAGS]);
  await p.exited;
  // The bin's shebang passes the same flags when `ftvm` is run directly (npx ftvm, a global install).
  const shebang = readFileSync(new URL('../src/cli/main.js', import.meta.url), 'utf8').split('\n')[0];
  assert.equal(shebang, `#!/usr/bin/env -S node ${NODE_FLAGS.join(' ')}`);
  // And the vCPU worker's isolate is bounded the same way.
  assert.ok(VCPU_YOUNG_GENERATION_MB > 0 && VCPU_YOUNG_GENERATION_MB <= 8);
});

test('freePort: concurrent processes each hold a slice of their own (no port handed to two of them)', async () => {
  const portsModule = new URL('../src/util/ports.js', import.meta.url).href;
  const script = `import(${JSON.stringify(portsModule)}).then(async (m) => { const ps = []; for (let i = 0; i < 20; i++) ps.push(await m.freePort()); console.log(JSON.stringify(ps)); setTimeout(() => {}, 300); })`;
  const procs = [0, 1, 2, 3].map(() => spawnNode(['-e', script]));
  const lists = await Promise.all(procs.map(async (p) => JSON.parse((await p.waitForLine(/^\[.*\]$/, 20_000, { stream: 'stdout' }))[0]) as number[]));
  await Promise.all(procs.map((p) => p.exited));
  const all = lists.flat();
  assert.equal(new Set(all).size, all.length, `a port was handed to two processes: ${JSON.stringify(lists)}`);
  for (const p of all) assert.ok(p >= 20_000 && p < 32_768, `port ${p} is not below the ephemeral range`);
});

test('fault proxies in a process of their own: cut refuses, heal accepts again, bytes flow through', async () => {
  const echo = net.createServer((s) => s.pipe(s));
  await new Promise<void>((resolve) => echo.listen({ host: '127.0.0.1', port: 0 }, () => resolve()));
  const host = await FaultProxyHost.start();
  try {
    const p = await host.proxy({ targetPort: (echo.address() as net.AddressInfo).port });
    const roundTrip = async (): Promise<string> => {
      const c = net.connect({ host: '127.0.0.1', port: p.port });
      c.setEncoding('utf8');
      c.write('ping');
      const [reply] = (await once(c, 'data')) as [string];
      c.destroy();
      return reply;
    };
    assert.equal(await roundTrip(), 'ping');
    await p.cut();
    const refused = net.connect({ host: '127.0.0.1', port: p.port });
    const [err] = (await once(refused, 'error')) as [NodeJS.ErrnoException];
    assert.equal(err.code, 'ECONNREFUSED');
    await p.heal();
    assert.equal(await roundTrip(), 'ping');
    const delay = await host.loopDelay();
    assert.ok(Number.isFinite(delay.maxMs) && delay.maxMs >= 0);
    await assert.rejects(host.request({ op: 'cut', proxy: 999 }), (e: unknown) => e instanceof FaultProxyError && /no fault proxy 999/.test(e.message));
  } finally {
    await host.close();
    echo.close();
  }
});

/**
 * The example kv guest as Redis clients see it, on a fault-tolerant pair (primary + backup + embedded
 * arbiter, real processes on loopback): redis-cli shows the replies as it shows Redis's (types, nil,
 * errors), and redis-benchmark's default test list runs to completion, after which the backup's
 * replica is in exactly the primary's state (the state hash covers the guest's memory).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { after, test } from 'node:test';
import { promisify } from 'node:util';
import { startFtPair, type FtPair } from '../src/testing/pair.js';
import { stopAll } from '../src/testing/processes.js';
import { needs, requireComponents } from '../src/testing/system-deps.js';

const run = promisify(execFile);
after(() => stopAll());

/** What redis-cli prints (formatted as on a terminal) for one command. */
async function cli(port: number, ...args: string[]): Promise<string> {
  const { stdout } = await run('redis-cli', ['--no-raw', '-p', String(port), ...args], { timeout: 20_000 });
  return stdout.trimEnd();
}

// A slow shared machine must not be taken for a failed primary while the benchmark loads it.
const timings = ['--fail-timeout-ms', '3000'];
let pair: FtPair | undefined;
async function thePair(): Promise<FtPair> {
  pair ??= await startFtPair({ guest: 'kv', primaryArgs: timings, backupArgs: timings });
  return pair;
}
after(() => pair?.stop());

test('redis-cli sees Redis replies: lists, sets, hashes, sorted sets, streams, nil, WRONGTYPE, arity, unknown commands', needs('redis-tools'), async () => {
  requireComponents('redis-tools');
  const p = (await thePair()).servicePort;
  const cases: [string[], string][] = [
    [['LPUSH', 'l', 'a', 'b', 'c'], '(integer) 3'],
    [['RPUSH', 'l', 'd'], '(integer) 4'],
    [['LRANGE', 'l', '0', '-1'], '1) "c"\n2) "b"\n3) "a"\n4) "d"'],
    [['LRANGE', 'l', '1', '2'], '1) "b"\n2) "a"'],
    [['LRANGE', 'l', '5', '9'], '(empty array)'],
    [['LPOP', 'l'], '"c"'],
    [['RPOP', 'l', '2'], '1) "d"\n2) "a"'],
    [['LLEN', 'l'], '(integer) 1'],
    [['LPOP', 'l'], '"b"'],
    [['EXISTS', 'l'], '(integer) 0'], // an emptied list is gone, as in Redis
    [['LPOP', 'l'], '(nil)'],
    [['SADD', 's', 'x', 'y', 'x'], '(integer) 2'],
    [['SCARD', 's'], '(integer) 2'],
    [['SISMEMBER', 's', 'y'], '(integer) 1'],
    [['SPOP', 's', '5'], ''], // checked below: both members, in some order
    [['SPOP', 's'], '(nil)'],
    [['HSET', 'h', 'f1', 'v1', 'f2', 'v2'], '(integer) 2'],
    [['HSET', 'h', 'f1', 'w1'], '(integer) 0'],
    [['HGET', 'h', 'f1'], '"w1"'],
    [['HGETALL', 'h'], '1) "f1"\n2) "w1"\n3) "f2"\n4) "v2"'],
    [['HGET', 'h', 'nope'], '(nil)'],
    [['ZADD', 'z', '2', 'b', '1.5', 'a', '-inf', 'm'], '(integer) 3'],
    [['ZRANGE', 'z', '0', '-1', 'WITHSCORES'], '1) "m"\n2) "-inf"\n3) "a"\n4) "1.5"\n5) "b"\n6) "2"'],
    [['ZSCORE', 'z', 'a'], '"1.5"'],
    [['ZPOPMIN', 'z'], '1) "m"\n2) "-inf"'],
    [['ZPOPMIN', 'z', '5'], '1) "a"\n2) "1.5"\n3) "b"\n4) "2"'],
    [['ZPOPMIN', 'z'], '(empty array)'],
    [['ZADD', 'z', 'abc', 'm'], '(error) ERR value is not a valid float'],
    [['XADD', 'st', '5-1', 'f', 'v'], '"5-1"'],
    [['XADD', 'st', '5-*', 'g', 'w'], '"5-2"'],
    [['XADD', 'st', '5-1', 'f', 'v'], '(error) ERR The ID specified in XADD is equal or smaller than the target stream top item'],
    [['XLEN', 'st'], '(integer) 2'],
    [['XRANGE', 'st', '-', '+', 'COUNT', '1'], '1) 1) "5-1"\n   2) 1) "f"\n      2) "v"'],
    [['MSET', 'k1', 'v1', 'k2', 'v2'], 'OK'],
    [['MGET', 'k1', 'k2', 'k3'], '1) "v1"\n2) "v2"\n3) (nil)'],
    [['TYPE', 'st'], 'stream'],
    [['TYPE', 'h'], 'hash'],
    [['TYPE', 'k1'], 'string'],
    [['TYPE', 'nope'], 'none'],
    [['GET', 'h'], '(error) WRONGTYPE Operation against a key holding the wrong kind of value'],
    [['LPUSH', 'k1', 'x'], '(error) WRONGTYPE Operation against a key holding the wrong kind of value'],
    [['INCR', 'h'], '(error) WRONGTYPE Operation against a key holding the wrong kind of value'],
    [['SET', 'h', 'now-a-string'], 'OK'], // SET replaces a value of any type, as in Redis
    [['GET', 'h'], '"now-a-string"'],
    [['LPUSH', 'l'], "(error) ERR wrong number of arguments for 'lpush' command"],
    [['HSET', 'h2', 'f'], "(error) ERR wrong number of arguments for 'hset' command"],
    [['LRANGE', 'l', 'x', '1'], '(error) ERR value is not an integer or out of range'],
    [['BLPOP', 'l', '0'], "(error) ERR unknown command 'BLPOP'"],
    [['CONFIG', 'GET', 'save'], '1) "save"\n2) ""'],
    [['CONFIG', 'GET', 'appendonly'], '1) "appendonly"\n2) "no"'],
    [['DEL', 'h', 'st', 'k1', 'nope'], '(integer) 3'],
  ];
  for (const [args, expected] of cases) {
    const got = await cli(p, ...args);
    if (args[0] === 'SPOP' && args[2] === '5') {
      assert.deepEqual(got.split('\n').map((l) => l.replace(/^\d\) /, '')).sort(), ['"x"', '"y"'], `SPOP s 5 → ${got}`);
      continue;
    }
    assert.equal(got, expected, `${args.join(' ')}`);
  }
  // XADD * takes its ID from the guest's clock (logged, so the backup computes the same one).
  const id1 = await cli(p, 'XADD', 'st3', 'MAXLEN', '1', '*', 'f', 'v');
  const id2 = await cli(p, 'XADD', 'st3', 'MAXLEN', '1', '*', 'f', 'w');
  assert.match(id1, /^"\d{13}-\d+"$/);
  assert.match(id2, /^"\d{13}-\d+"$/);
  assert.notEqual(id1, id2);
  assert.equal(await cli(p, 'XLEN', 'st3'), '(integer) 1');
  await (await thePair()).hashesAgree();
});

test('redis-benchmark with its default test list runs to completion against the pair; the replicas end equal', needs('redis-tools'), async () => {
  requireComponents('redis-tools');
  const pr = await thePair();
  const { stdout, stderr } = await run('redis-benchmark', ['-p', String(pr.servicePort), '-n', '2000', '-q'], { timeout: 240_000, maxBuffer: 16 * 1024 * 1024 });
  const lines = `${stdout}\n${stderr}`.split(/[\r\n]+/).map((l) => l.trim()).filter((l) => l !== '' && !/rps=/.test(l));
  const results = lines.filter((l) => /requests per second/.test(l));
  const others = lines.filter((l) => !/requests per second/.test(l));
  assert.deepEqual(others, [], `redis-benchmark printed lines other than results (errors, warnings):\n${others.join('\n')}`);
  for (const t of ['PING_INLINE', 'PING_MBULK', 'SET', 'GET', 'INCR', 'LPUSH', 'RPUSH', 'LPOP', 'RPOP', 'SADD', 'HSET', 'SPOP', 'ZADD', 'ZPOPMIN', 'LRANGE_100', 'LRANGE_300', 'LRANGE_500', 'LRANGE_600', 'MSET']) {
    assert.ok(results.some((l) => l.startsWith(`${t}:`) || l.startsWith(`${t} `)), `redis-benchmark ran ${t}:\n${results.join('\n')}`);
  }
  for (const l of results) assert.ok(Number(/: ([\d.]+) requests per second/.exec(l)?.[1]) > 0, l);
  // The lists the benchmark filled are there, and the backup holds exactly the primary's state.
  assert.match(await cli(pr.servicePort, 'LLEN', 'mylist'), /^\(integer\) [1-9]\d*$/);
  const h = await pr.hashesAgree(30_000);
  assert.ok(h.n > 0);
  const s = await pr.status('primary');
  assert.equal(s.backup, 'connected');
  assert.equal(s.backupDiverged, null);
});

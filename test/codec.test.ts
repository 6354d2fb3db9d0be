/** The one binary codec: every entry round-trips; corrupt batches are refused with a coded error. */
import fc from 'fast-check';
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LOG_FORMAT_DIGEST, LOG_FORMAT_OUTPUTS, decodeBatch, encodeBatch } from '../src/log/codec.js';
import { EntryType, type LogEntry } from '../src/log/entry.js';
import { FtvmError } from '../src/util/errors.js';

const bytes = fc.uint8Array({ maxLength: 64 }).map((b) => new Uint8Array(b));
const u32 = fc.nat({ max: 0xffffffff });
const entryBody = fc.oneof(
  fc.record({ type: fc.constant(EntryType.CLOCK), clock: fc.constantFrom(0, 1), valueNs: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }) }),
  fc.record({ type: fc.constant(EntryType.RANDOM), bytes }),
  fc.record({ type: fc.constant(EntryType.MEMGROW), deltaPages: fc.nat(65536), result: fc.integer({ min: -1, max: 65536 }) }),
  fc.record({ type: fc.constant(EntryType.NIC_OPEN), idle: fc.boolean(), conn: u32 }),
  fc.record({ type: fc.constant(EntryType.NIC_OPEN), idle: fc.boolean(), conn: u32, tag: fc.uint8Array({ minLength: 1, maxLength: 64 }).map((b) => new Uint8Array(b)) }),
  fc.record({ type: fc.constant(EntryType.NIC_DATA), idle: fc.boolean(), conn: u32, data: bytes }),
  fc.record({ type: fc.constant(EntryType.NIC_CLOSE), idle: fc.boolean(), conn: u32 }),
  fc.record({ type: fc.constant(EntryType.TIMER), idle: fc.boolean(), timer: fc.nat(1023) }),
  fc.record({ type: fc.constant(EntryType.OUT_NET), conn: u32, len: fc.nat(1 << 20), hash: u32 }),
  fc.record({ type: fc.constant(EntryType.OUT_CLOSE), conn: u32 }),
  fc.record({ type: fc.constant(EntryType.OUT_CONSOLE), fd: fc.constantFrom(1, 2), len: fc.nat(1 << 20), hash: u32 }),
  fc.record({ type: fc.constant(EntryType.OUT_DIGEST), idle: fc.boolean(), count: fc.nat(1 << 20), crc: u32 }),
  fc.record({ type: fc.constant(EntryType.STATE_HASH), hash: fc.uint8Array({ minLength: 32, maxLength: 32 }).map((b) => new Uint8Array(b)) }),
  fc.record({ type: fc.constant(EntryType.HALT), kind: fc.constantFrom('exit' as const, 'trap' as const), code: fc.integer({ min: -1000, max: 1000 }), message: fc.string({ maxLength: 40 }) }),
);
// Gaps of 0 often: format 2 leaves the delta out when an entry's number is the previous one's.
const log = fc.array(fc.tuple(fc.oneof(fc.constant(0), fc.nat(1 << 30)), entryBody), { maxLength: 60 }).map((items) => {
  let n = 0;
  return items.map(([gap, body]) => {
    n += gap;
    return { ...body, n } as LogEntry;
  });
});
const log1 = log.map((es) => es.filter((e) => e.type !== EntryType.OUT_DIGEST));
// Runs of deliveries at one instruction number (format 2 writes them as one run).
const runs = fc.array(fc.tuple(fc.oneof(fc.constant(0), fc.nat(1000)), fc.boolean(), fc.array(fc.tuple(u32, bytes), { minLength: 1, maxLength: 6 })), { maxLength: 12 }).map((groups) => {
  let n = 0;
  return groups.flatMap(([gap, idle, items]) => {
    n += gap;
    return items.map(([conn, data]) => ({ type: EntryType.NIC_DATA, n, idle, conn, data }) as LogEntry);
  });
});

test('every entry type round-trips through a batch, in both log formats', () => {
  fc.assert(
    fc.property(log, (entries) => {
      assert.deepEqual(decodeBatch(encodeBatch(entries)), entries);
      assert.deepEqual(decodeBatch(encodeBatch(entries, undefined, LOG_FORMAT_DIGEST), undefined, LOG_FORMAT_DIGEST), entries);
    }),
    { numRuns: 300 },
  );
  fc.assert(
    fc.property(log1, (entries) => {
      assert.deepEqual(decodeBatch(encodeBatch(entries, undefined, LOG_FORMAT_OUTPUTS), undefined, LOG_FORMAT_OUTPUTS), entries);
    }),
    { numRuns: 300 },
  );
  fc.assert(
    fc.property(runs, fc.nat(1 << 20), fc.nat(1 << 20), (entries, n, conn) => {
      const st = { n: 0, conn };
      const enc = { n: Math.min(n, entries[0]?.n ?? n), conn };
      st.n = enc.n;
      const b = encodeBatch(entries, undefined, LOG_FORMAT_DIGEST, enc);
      assert.deepEqual(decodeBatch(b, undefined, LOG_FORMAT_DIGEST, st), entries);
      assert.deepEqual(st, enc, 'the decoder ends in the state the encoder ended in');
    }),
    { numRuns: 300 },
  );
  // A digest cannot be written (or read) in format 1.
  assert.throws(() => encodeBatch([{ type: EntryType.OUT_DIGEST, n: 0, idle: true, count: 1, crc: 0 }], undefined, LOG_FORMAT_OUTPUTS));
});

test('format 2 is compact: deliveries at one instruction cost a connection delta and a length each', () => {
  const data = new Uint8Array(45);
  const at = (conns: number[], n = 1_000_000_000): LogEntry[] => conns.map((conn) => ({ type: EntryType.NIC_DATA, n, idle: true, conn, data }));
  // Two: type, delta (5 bytes), connection (2), length; then type, connection delta, length.
  assert.equal(encodeBatch(at([200, 201]), undefined, LOG_FORMAT_DIGEST).length, 2 * 45 + (1 + 5 + 2 + 1) + 3);
  // Three or more: one run (type, delta, count), then connection delta and length per entry.
  const run = at([200, 201, 199, 250]);
  const b2 = encodeBatch(run, undefined, LOG_FORMAT_DIGEST);
  assert.equal(b2.length, 4 * 45 + (1 + 5 + 1) + (2 + 1) + 3 * 2);
  assert.deepEqual(decodeBatch(b2, undefined, LOG_FORMAT_DIGEST), run);
  const b1 = encodeBatch(run, undefined, LOG_FORMAT_OUTPUTS);
  assert.equal(b1.length, 1 + 4 * 45 + (1 + 5 + 2 + 1) + 3 * (1 + 1 + 2 + 1));
  // A batch coded against the log before it: the same instruction number and connection cost nothing.
  const st = { n: 1_000_000_000, conn: 200 };
  assert.equal(encodeBatch(at([200]), undefined, LOG_FORMAT_DIGEST, st).length, 1 + 1 + 1 + 45);
});

test('format 1: truncated, extended or garbled batches are refused with FTVM_ERR_CORRUPT_RECORDING, never a crash', () => {
  fc.assert(
    fc.property(log1, fc.nat(), fc.uint8Array({ minLength: 1, maxLength: 8 }), (entries, cut, junk) => {
      const buf = encodeBatch(entries, undefined, LOG_FORMAT_OUTPUTS);
      const decodeBatch1 = (b: Uint8Array): unknown => decodeBatch(b, undefined, LOG_FORMAT_OUTPUTS);
      const check = (b: Uint8Array): void => {
        try {
          decodeBatch1(b);
        } catch (err) {
          assert.ok(err instanceof FtvmError && err.code === 'FTVM_ERR_CORRUPT_RECORDING', String(err));
        }
      };
      if (buf.length > 1) {
        assert.throws(() => decodeBatch1(buf.subarray(0, cut % (buf.length - 1) + 1 === buf.length ? buf.length - 1 : (cut % (buf.length - 1)) + 1)));
      }
      assert.throws(() => decodeBatch1(new Uint8Array([...buf, ...junk])), { code: 'FTVM_ERR_CORRUPT_RECORDING' });
      const garbled = new Uint8Array(buf);
      if (garbled.length > 0) garbled[cut % garbled.length]! ^= junk[0]!;
      check(garbled);
    }),
    { numRuns: 300 },
  );
});

test('format 2: a batch is delimited by its container (a checksummed block, an authenticated frame); a cut or garbled batch never crashes the decoder', () => {
  fc.assert(
    fc.property(log, fc.nat(), fc.uint8Array({ minLength: 1, maxLength: 8 }), (entries, cut, junk) => {
      const buf = encodeBatch(entries, undefined, LOG_FORMAT_DIGEST);
      const check = (b: Uint8Array): void => {
        try {
          decodeBatch(b, undefined, LOG_FORMAT_DIGEST);
        } catch (err) {
          assert.ok(err instanceof FtvmError && err.code === 'FTVM_ERR_CORRUPT_RECORDING', String(err));
        }
      };
      if (buf.length > 1) check(buf.subarray(0, cut % buf.length));
      check(new Uint8Array([...buf, ...junk]));
      const garbled = new Uint8Array(buf);
      if (garbled.length > 0) garbled[cut % garbled.length]! ^= junk[0]!;
      check(garbled);
    }),
    { numRuns: 300 },
  );
});

test('decoded payload data are views into the batch, or copies when the caller asks (copyData)', () => {
  const data = (k: number): Uint8Array => new Uint8Array([k, k + 1, k + 2, k + 3, k + 4]);
  const entries: LogEntry[] = [
    { type: EntryType.NIC_DATA, n: 5, idle: true, conn: 1, data: data(1) },
    { type: EntryType.SOCK_RECV, n: 6, errno: 0, data: data(2) },
    // A run (three NIC_DATA at one number) and an OUT_DIGEST (a u32) with every byte of its CRC set.
    ...[3, 4, 5].map((k) => ({ type: EntryType.NIC_DATA, n: 9, idle: false, conn: k, data: data(k) }) as LogEntry),
    { type: EntryType.OUT_DIGEST, n: 9, idle: true, count: 3, crc: 0xfedcba98 },
  ];
  for (const format of [LOG_FORMAT_OUTPUTS, LOG_FORMAT_DIGEST] as const) {
    const list = format === LOG_FORMAT_OUTPUTS ? entries.filter((e) => e.type !== EntryType.OUT_DIGEST) : entries;
    const buf = encodeBatch(list, undefined, format);
    const views = decodeBatch(buf, undefined, format);
    const copies = decodeBatch(buf, undefined, format, undefined, true);
    assert.deepEqual(views, list);
    assert.deepEqual(copies, list);
    for (const e of views) if ('data' in e) assert.equal(e.data.buffer, buf.buffer);
    for (const e of copies) if ('data' in e) assert.notEqual(e.data.buffer, buf.buffer);
  }
});

/** The one binary codec: every entry round-trips; corrupt batches are refused with a coded error. */
import fc from 'fast-check';
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeBatch, encodeBatch } from '../src/log/codec.js';
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
  fc.record({ type: fc.constant(EntryType.STATE_HASH), hash: fc.uint8Array({ minLength: 32, maxLength: 32 }).map((b) => new Uint8Array(b)) }),
  fc.record({ type: fc.constant(EntryType.HALT), kind: fc.constantFrom('exit' as const, 'trap' as const), code: fc.integer({ min: -1000, max: 1000 }), message: fc.string({ maxLength: 40 }) }),
);
const log = fc.array(fc.tuple(fc.nat(1 << 30), entryBody), { maxLength: 60 }).map((items) => {
  let n = 0;
  return items.map(([gap, body]) => {
    n += gap;
    return { ...body, n } as LogEntry;
  });
});

test('every entry type round-trips through a batch', () => {
  fc.assert(
    fc.property(log, (entries) => {
      assert.deepEqual(decodeBatch(encodeBatch(entries)), entries);
    }),
    { numRuns: 300 },
  );
});

test('truncated, extended or garbled batches are refused with FTVM_ERR_CORRUPT_RECORDING, never a crash', () => {
  fc.assert(
    fc.property(log, fc.nat(), fc.uint8Array({ minLength: 1, maxLength: 8 }), (entries, cut, junk) => {
      const buf = encodeBatch(entries);
      const check = (b: Uint8Array): void => {
        try {
          decodeBatch(b);
        } catch (err) {
          assert.ok(err instanceof FtvmError && err.code === 'FTVM_ERR_CORRUPT_RECORDING', String(err));
        }
      };
      if (buf.length > 1) {
        assert.throws(() => decodeBatch(buf.subarray(0, cut % (buf.length - 1) + 1 === buf.length ? buf.length - 1 : (cut % (buf.length - 1)) + 1)));
      }
      assert.throws(() => decodeBatch(new Uint8Array([...buf, ...junk])), { code: 'FTVM_ERR_CORRUPT_RECORDING' });
      const garbled = new Uint8Array(buf);
      if (garbled.length > 0) garbled[cut % garbled.length]! ^= junk[0]!;
      check(garbled);
    }),
    { numRuns: 300 },
  );
});

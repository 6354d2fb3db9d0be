/**
 * The receive ring's record writer (RxRing.write) against a plain reference: the same bytes in guest
 * memory for any head (wrapping, unaligned heads a guest may leave), and every changed byte reported to
 * the marker.
 */
import fc from 'fast-check';
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RECORD_HEADER_BYTES, RING_HEADER_BYTES, RxRing, align4 } from '../src/machine/devices.js';

/** The writer as it was first written: a header array, a copying put with wrap, a padding array. */
function referenceWrite(ring: RxRing, mem: DataView, bytes: Uint8Array, type: number, id: number, payload?: Uint8Array): boolean {
  const len = payload?.length ?? 0;
  const size = RECORD_HEADER_BYTES + align4(len);
  const free = ring.free(mem);
  if (free < size) return false;
  const head = mem.getUint32(ring.ptr, true);
  const hdr = new Uint8Array(RECORD_HEADER_BYTES);
  const hv = new DataView(hdr.buffer);
  hv.setUint16(0, type, true);
  hv.setUint16(2, 0, true);
  hv.setUint32(4, id >>> 0, true);
  hv.setUint32(8, len, true);
  const base = ring.ptr + RING_HEADER_BYTES;
  let at = head % ring.capacity;
  const put = (chunk: Uint8Array): void => {
    let off = 0;
    while (off < chunk.length) {
      const n = Math.min(chunk.length - off, ring.capacity - at);
      bytes.set(chunk.subarray(off, off + n), base + at);
      off += n;
      at = (at + n) % ring.capacity;
    }
  };
  put(hdr);
  if (payload !== undefined && len > 0) put(payload);
  const pad = align4(len) - len;
  if (pad > 0) put(new Uint8Array(pad));
  mem.setUint32(ring.ptr, (head + size) >>> 0, true);
  return true;
}

test('RxRing.write writes what the reference writes, and marks every byte it changes', () => {
  const write = fc.record({
    type: fc.constantFrom(1, 2, 3, 4),
    id: fc.nat({ max: 0xffffffff }),
    payload: fc.option(fc.uint8Array({ maxLength: 300 }).map((b) => new Uint8Array(b)), { nil: undefined }),
    consume: fc.nat(400),
  });
  fc.assert(
    fc.property(fc.constantFrom(256, 512), fc.nat({ max: 0xffffffff }), fc.nat(0xff), fc.array(write, { minLength: 1, maxLength: 40 }), (capacity, head0, fillByte, writes) => {
      const ptr = 64;
      const memBytes = ptr + RING_HEADER_BYTES + capacity + 64;
      const a = new Uint8Array(memBytes).fill(fillByte);
      const b = new Uint8Array(memBytes).fill(fillByte);
      const av = new DataView(a.buffer);
      const bv = new DataView(b.buffer);
      for (const v of [av, bv]) {
        v.setUint32(ptr, head0, true); // head
        v.setUint32(ptr + 4, head0, true); // tail: empty
      }
      const ra = new RxRing(ptr, capacity);
      const rb = new RxRing(ptr, capacity);
      const marked = new Uint8Array(memBytes);
      ra.marker = (addr, len) => {
        assert.ok(len > 0 && addr >= 0 && addr + len <= memBytes, `marker range ${addr}+${len}`);
        marked.fill(1, addr, addr + len);
      };
      for (const w of writes) {
        const before = a.slice();
        marked.fill(0);
        const okA = ra.write(av, a, w.type, w.id, w.payload);
        const okB = referenceWrite(rb, bv, b, w.type, w.id, w.payload);
        assert.equal(okA, okB);
        assert.deepEqual(a, b);
        for (let i = 0; i < memBytes; i++) if (a[i] !== before[i]) assert.equal(marked[i], 1, `byte ${i} changed but was not marked`);
        // The guest consumes some of the ring (advances the tail, never past the head).
        for (const v of [av, bv]) {
          const head = v.getUint32(ptr, true);
          const tail = v.getUint32(ptr + 4, true);
          const used = (head - tail) >>> 0;
          v.setUint32(ptr + 4, (tail + Math.min(used, w.consume)) >>> 0, true);
        }
      }
    }),
    { numRuns: 400 },
  );
});

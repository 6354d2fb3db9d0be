/**
 * The proxy protocol's re-attach offset logic (docs/PROXY.md, "Offsets" and "Re-attach"), as a seeded
 * fast-check property over the real code both ends run — `OffsetQueue` (the proxy's unacknowledged
 * input, the replica's unconfirmed output) and `attachVerdict` (the replica's ATTACH check) — against a
 * model of the VM's log: client input sent in random pieces, backup acknowledgements (INACK) and
 * output confirmations (OUTACK) at random points, and failovers at random points, after which the new
 * primary holds any prefix of the logged input the backup may hold (at least what it acknowledged) and
 * the replay's output tail. The VM must end with exactly the client's bytes, the client with exactly the
 * guest's output: nothing lost, nothing twice. Not the simulator: src/sim does not run the proxy yet.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { OffsetQueue, attachVerdict } from '../src/proxy/offsets.js';

type Step =
  | { k: 'client'; data: Uint8Array }
  | { k: 'send'; max: number }
  | { k: 'inack'; frac: number }
  | { k: 'guest'; n: number }
  | { k: 'pump'; max: number }
  | { k: 'outack' }
  | { k: 'failover'; inFrac: number; outExtra: number; tailBytes: number };

const step: fc.Arbitrary<Step> = fc.oneof(
  fc.record({ k: fc.constant('client' as const), data: fc.uint8Array({ minLength: 1, maxLength: 40 }) }),
  fc.record({ k: fc.constant('send' as const), max: fc.integer({ min: 1, max: 64 }) }),
  fc.record({ k: fc.constant('inack' as const), frac: fc.double({ min: 0, max: 1, noNaN: true }) }),
  fc.record({ k: fc.constant('guest' as const), n: fc.integer({ min: 1, max: 40 }) }),
  fc.record({ k: fc.constant('pump' as const), max: fc.integer({ min: 1, max: 64 }) }),
  fc.record({ k: fc.constant('outack' as const) }),
  fc.record({ k: fc.constant('failover' as const), inFrac: fc.double({ min: 0, max: 1, noNaN: true }), outExtra: fc.nat(30), tailBytes: fc.integer({ min: 1, max: 400 }) }),
);

const concat = (parts: Uint8Array[]): Buffer => Buffer.concat(parts);

test('re-attach offsets: across failovers at random points the VM gets the client\'s input exactly once and the client the guest\'s output exactly once', () => {
  fc.assert(
    fc.property(fc.array(step, { minLength: 1, maxLength: 120 }), fc.uint8Array({ minLength: 2000, maxLength: 2000 }), (steps, guestStream) => {
      // The client's side, as the proxy holds it.
      const clientBytes: Uint8Array[] = [];
      const input = new OffsetQueue();
      let inRepl = 0; // input sent on the current session
      const received: Uint8Array[] = []; // output handed to the client
      let outDelivered = 0;
      // The VM: the input its log delivered (the current primary's), what the backup acknowledged.
      let vmInput = Buffer.alloc(0);
      let vmAcked = 0;
      // The guest's output is a function of its input: model it as a fixed stream; released = the
      // primary's output so far (the backup holds all of it: the output rule).
      let out = new OffsetQueue();
      let outSent = 0;
      let outAcked = 0;
      let refusedBehindTail = false;

      for (const s of steps) {
        switch (s.k) {
          case 'client':
            clientBytes.push(s.data);
            input.push(s.data);
            break;
          case 'send': {
            const data = input.read(inRepl, s.max);
            if (data.length === 0) break;
            assert.equal(inRepl, vmInput.length, 'DATA at exactly the next input offset');
            vmInput = Buffer.concat([vmInput, data]);
            inRepl += data.length;
            break;
          }
          case 'inack': {
            vmAcked = Math.max(vmAcked, vmAcked + Math.floor((vmInput.length - vmAcked) * s.frac));
            input.trimTo(vmAcked);
            assert.equal(input.base, vmAcked, 'the proxy holds input from the last INACK on, no more');
            break;
          }
          case 'guest': {
            const end = Math.min(guestStream.length, out.end + s.n);
            out.push(guestStream.subarray(out.end, end));
            break;
          }
          case 'pump': {
            if (outSent >= out.end) break;
            const data = out.read(outSent, s.max);
            assert.equal(outSent, outDelivered, 'OUT at exactly the next output offset');
            received.push(data);
            outDelivered += data.length;
            outSent += data.length;
            break;
          }
          case 'outack':
            outAcked = Math.max(outAcked, outDelivered);
            out.trimTo(outAcked);
            assert.equal(out.base, outAcked, 'the replica holds output from the last OUTACK on, no more');
            break;
          case 'failover': {
            if (refusedBehindTail) break;
            // The new primary's log holds what the backup acknowledged, and maybe more of what it received.
            const inLogged = vmAcked + Math.floor((vmInput.length - vmAcked) * s.inFrac);
            vmInput = vmInput.subarray(0, inLogged);
            vmAcked = inLogged; // the new primary runs alone until it has a backup: logged is acknowledged
            // Its replay produced at least the released output (perhaps more, held by the output rule),
            // and keeps a bounded tail of it.
            const outEnd = Math.min(guestStream.length, out.end + s.outExtra);
            const start = Math.max(0, outEnd - s.tailBytes);
            const held = { inLogged, outAcked: start, outEnd };
            const attach = { inSent: input.end, inAcked: input.base, outDelivered };
            // Offsets outside what the VM holds are refused.
            assert.equal(attachVerdict(held, { ...attach, inAcked: inLogged + 1 }).verdict, 'refuse');
            assert.equal(attachVerdict(held, { ...attach, outDelivered: outEnd + 1 }).verdict, 'refuse');
            assert.equal(attachVerdict(undefined, attach).verdict, attach.inAcked === 0 && attach.outDelivered === 0 ? 'open' : 'refuse');
            const v = attachVerdict(held, attach);
            if (outDelivered < start) {
              // The documented limit: a proxy further behind than the replay's tail is refused.
              assert.equal(v.verdict, 'refuse');
              refusedBehindTail = true;
              break;
            }
            assert.equal(v.verdict, 'attach', v.verdict === 'refuse' ? v.message : '');
            // ATTACHED: the proxy re-sends input from inLogged; the replica sends output from outDelivered.
            assert.ok(inLogged >= input.base && inLogged <= input.end);
            inRepl = inLogged;
            out = new OffsetQueue(start, guestStream.subarray(start, outEnd));
            outAcked = Math.max(start, outDelivered);
            out.trimTo(outAcked);
            outSent = outDelivered;
            break;
          }
        }
        assert.ok(input.base <= vmAcked && vmAcked <= vmInput.length && vmInput.length <= input.end, 'acked ≤ logged ≤ sent');
      }
      if (refusedBehindTail) return;
      // Drain: everything the client sent reaches the VM, everything released reaches the client.
      for (let data = input.read(inRepl, 64); data.length > 0; data = input.read(inRepl, 64)) {
        vmInput = Buffer.concat([vmInput, data]);
        inRepl += data.length;
      }
      for (let data = out.read(outSent, 64); data.length > 0; data = out.read(outSent, 64)) {
        received.push(data);
        outSent += data.length;
      }
      assert.deepEqual(vmInput, concat(clientBytes), 'the VM logged the client\'s input exactly once, in order');
      assert.deepEqual(concat(received), Buffer.from(guestStream.subarray(0, out.end)), 'the client got the guest\'s output exactly once, in order');
    }),
    { numRuns: 400, seed: 14 },
  );
});

test('OffsetQueue: reads across chunk boundaries, trims inside a chunk, refuses reads outside what it holds', () => {
  const q = new OffsetQueue(10, Buffer.from('abc'));
  q.push(Buffer.from('defg'));
  q.push(Buffer.alloc(0));
  assert.equal(q.end, 17);
  assert.equal(Buffer.from(q.read(11, 4)).toString(), 'bcde');
  q.trimTo(14);
  assert.equal(q.base, 14);
  assert.equal(Buffer.from(q.read(14, 100)).toString(), 'efg');
  assert.equal(q.read(17, 5).length, 0);
  q.trimTo(5); // below base: nothing
  assert.equal(q.heldBytes, 3);
  assert.throws(() => q.read(13, 1), /outside \[14, 17\]/);
  q.clear();
  assert.equal(q.base, 17);
  assert.equal(q.heldBytes, 0);
});

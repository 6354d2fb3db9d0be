/**
 * The vCPU's queues (src/util/shared-queue.ts) and the slabs their messages are carved from
 * (src/util/slab.ts): order, bounds, independence of popped messages, and who wakes whom — a blocked
 * consumer is woken by notify(), a polling one is not (it comes back by itself).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Worker } from 'node:worker_threads';
import { SharedQueue } from '../src/util/shared-queue.js';
import { Slab } from '../src/util/slab.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

test('messages come out in order across the wrap, a full queue refuses a push whole, and popped messages stay as they were', () => {
  const q = new SharedQueue(1024);
  const popped: Uint8Array[] = [];
  let next = 0;
  let expect = 0;
  for (let round = 0; round < 200; round++) {
    // Push until full: sizes 1..97 bytes, each filled with its number.
    for (;;) {
      const len = 1 + ((next * 37) % 97);
      const msg = new Uint8Array(len).fill(next & 0xff);
      const free = q.freeBytes;
      if (!q.push(msg.subarray(0, 1), false, msg.subarray(1))) {
        assert.ok(free < len + 4, 'a push is refused only when it does not fit');
        assert.equal(q.freeBytes, free, 'a refused push writes nothing');
        break;
      }
      next++;
    }
    // Pop about half, checking order and contents.
    for (let i = 0; i < 5; i++) {
      const m = q.pop();
      if (m === undefined) break;
      assert.equal(m.length, 1 + ((expect * 37) % 97), `message ${expect} has its length`);
      assert.ok(m.every((b) => b === (expect & 0xff)), `message ${expect} has its bytes`);
      popped.push(m);
      expect++;
    }
  }
  // Messages popped long ago were not overwritten by later pops (slabs are never reused).
  for (let i = 0; i < popped.length; i++) assert.ok(popped[i]!.every((b) => b === (i & 0xff)), `popped message ${i} intact`);
  assert.throws(() => q.push(new Uint8Array(2000)), RangeError, 'a message larger than the queue is refused loudly');
});

test('slab arrays never overlap, large ones get a buffer of their own', () => {
  const slab = new Slab(4096, 512);
  const arrays: Uint8Array[] = [];
  for (let i = 0; i < 500; i++) {
    const a = slab.alloc(1 + (i % 300));
    a.fill(i & 0xff);
    arrays.push(a);
  }
  arrays.forEach((a, i) => assert.ok(a.every((b) => b === (i & 0xff)), `array ${i} kept its bytes`));
  const big = slab.alloc(1000);
  assert.equal(big.byteOffset, 0);
  assert.equal(big.buffer.byteLength, 1000, 'above maxCarveBytes: its own buffer');
  assert.deepEqual([...slab.copy(Uint8Array.of(1, 2, 3))], [1, 2, 3]);
});

/** A consumer on another thread: waits once (`poll` or blocked, with `timeoutMs`) and reports how long it took and what it found. */
function consumer(sab: SharedArrayBuffer, timeoutMs: number, poll: boolean): Worker {
  const url = new URL('../src/util/shared-queue.js', import.meta.url).href;
  return new Worker(
    `const { parentPort, workerData } = require('node:worker_threads');
     import(${JSON.stringify(url)}).then(({ SharedQueue }) => {
       const q = new SharedQueue(workerData.sab);
       const t0 = performance.now();
       q.wait(workerData.timeoutMs, undefined, workerData.poll);
       parentPort.postMessage({ ms: performance.now() - t0, got: q.pop()?.length ?? -1 });
     });`,
    { eval: true, workerData: { sab, timeoutMs, poll } },
  );
}

async function until(what: string, cond: () => boolean): Promise<void> {
  const by = Date.now() + 10_000;
  while (!cond()) {
    if (Date.now() > by) throw new Error(`timed out waiting for ${what}`);
    await sleep(1);
  }
}

test('a blocked consumer is woken by notify(); a polling one is not woken (notify() says so) and comes back by itself', async () => {
  const q = new SharedQueue(1024);
  const blocked = consumer(q.sab, 10_000, false);
  const r1 = new Promise<{ ms: number; got: number }>((resolve) => blocked.once('message', resolve));
  await until('the consumer to block', () => q.consumerState === 'blocked');
  assert.equal(q.push(new Uint8Array(7), false), true);
  assert.equal(q.notify(), true, 'notify() wakes a blocked consumer');
  const a = await r1;
  assert.equal(a.got, 7, 'it found the message');
  assert.ok(a.ms < 5_000, `woken, not timed out (${a.ms.toFixed(0)} ms of 10,000)`);
  await blocked.terminate();

  const polling = consumer(q.sab, 300, true);
  const r2 = new Promise<{ ms: number; got: number }>((resolve) => polling.once('message', resolve));
  await until('the consumer to poll', () => q.consumerState === 'polling');
  await sleep(20); // past its last look at the queue before it sleeps (the flag is set just before that look)
  assert.equal(q.push(new Uint8Array(9), true), true); // push's own notify does nothing either
  assert.equal(q.notify(), false, 'notify() leaves a polling consumer alone');
  const b = await r2;
  assert.equal(b.got, 9, 'it found the message when it came back');
  assert.ok(b.ms >= 250, `it came back by itself after its poll interval (${b.ms.toFixed(0)} ms of 300)`);
  await polling.terminate();

  // wake() reaches a polling consumer at once (a go-live or a stop does not wait for the poll).
  const woken = consumer(q.sab, 10_000, true);
  const r3 = new Promise<{ ms: number; got: number }>((resolve) => woken.once('message', resolve));
  await until('the consumer to poll', () => q.consumerState === 'polling');
  q.wake();
  const c = await r3;
  assert.ok(c.ms < 5_000, `wake() ends a poll early (${c.ms.toFixed(0)} ms of 10,000)`);
  await woken.terminate();
});

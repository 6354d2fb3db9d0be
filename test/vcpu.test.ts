/**
 * The vCPU worker: the guest computes on its own thread while the I/O thread stays responsive; input
 * reaches a computing guest through the shared queue; a replica fed the stream live ends identical.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DEFAULT_VM_CONFIG } from '../src/log/recording.js';
import { Vcpu, type BatchEvent } from '../src/machine/vcpu.js';
import { guest, hex } from './helpers.js';

test('a guest computing for a long time does not block the I/O thread; input lands mid-computation; a live replica matches', async () => {
  const g = guest('spin');
  const primary = new Vcpu({ mode: 'record', guest: g, config: DEFAULT_VM_CONFIG, env: { kind: 'live' } });
  const backup = new Vcpu({ mode: 'replay', guest: g, config: DEFAULT_VM_CONFIG });
  const replies: string[] = [];
  primary.on('batch', (b: BatchEvent) => {
    backup.feedLog(b.entries);
    backup.grant(b.instructionNumber);
    for (const o of b.outputs) replies.push(Buffer.from(o.data).toString());
  });
  try {
    primary.input('open', 1);
    primary.input('data', 1, Buffer.from('spin 600000000'));
    const okBy = Date.now() + 20_000;
    while (!replies.includes('ok\n') && Date.now() < okBy) await new Promise((r) => setTimeout(r, 5));
    assert.ok(replies.includes('ok\n'), 'spin accepted the work');
    // Measure the I/O thread's responsiveness while the guest computes.
    const gaps: number[] = [];
    let last = performance.now();
    const startCount = primary.count;
    await new Promise<void>((resolve) => {
      let ticks = 0;
      const t = setInterval(() => {
        const now = performance.now();
        gaps.push(now - last);
        last = now;
        if (++ticks === 20) primary.input('data', 1, Buffer.from('poke'));
        if (ticks >= 60) {
          clearInterval(t);
          resolve();
        }
      }, 10);
    });
    assert.ok(Math.max(...gaps) < 200, `I/O thread stalled for ${Math.max(...gaps).toFixed(0)} ms`);
    assert.ok(primary.count > startCount, 'the guest made progress meanwhile');
    // The poke was answered mid-computation, not after the 600M iterations.
    const deadline = Date.now() + 20_000;
    while (!replies.some((r) => r.startsWith('acc')) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const acc = replies.find((r) => r.startsWith('acc'));
    assert.ok(acc, `spin answered the poke (replies: ${JSON.stringify(replies)})`);
    const iter = Number(/iter (\d+)/.exec(acc)![1]);
    assert.ok(iter > 0 && iter < 600_000_000, `poke seen mid-computation at iteration ${iter}`);
    primary.stop();
    const pd = await primary.done;
    assert.equal(pd.state, 'stopped');
    backup.endOfLog();
    const bd = await backup.done;
    assert.equal(bd.count, pd.count);
    assert.equal(hex(bd.finalHash!), hex(pd.finalHash!));
  } finally {
    await primary.terminate();
    await backup.terminate();
  }
});

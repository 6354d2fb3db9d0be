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

test('a running vCPU is snapshotted at an idle point under load; a replica restored from it and fed the log from there matches', async () => {
  const g = guest('kv');
  const primary = new Vcpu({ mode: 'record', guest: g, config: DEFAULT_VM_CONFIG, env: { kind: 'live' } });
  const batches: BatchEvent[] = [];
  let replies = 0;
  primary.on('batch', (b: BatchEvent) => {
    batches.push(b);
    replies += b.outputs.length;
  });
  let backup: Vcpu | undefined;
  try {
    primary.input('open', 1);
    let sent = 0;
    const send = (): void => {
      for (let i = 0; i < 20; i++) primary.input('data', 1, Buffer.from(`SET k${sent % 50} ${'v'.repeat(sent % 300)}${sent++}\r\n`));
    };
    send();
    while (replies < 10) await new Promise((r) => setTimeout(r, 2));
    // Keep the guest busy while the snapshot is taken.
    const load = setInterval(send, 1);
    const taken = await primary.takeSnapshot();
    const again = await primary.takeSnapshot(); // the buffer is reused the second time
    clearInterval(load);
    assert.ok(taken.pauseMs >= 0 && again.pauseMs >= 0);
    assert.ok(again.snapshot.seq >= taken.snapshot.seq);
    const snap = { ...again.snapshot, memory: new Uint8Array(again.snapshot.memory) };
    send();
    primary.input('close', 1);
    await new Promise((r) => setTimeout(r, 50));
    primary.stop();
    const pd = await primary.done;
    backup = new Vcpu({ mode: 'replay', guest: g, config: DEFAULT_VM_CONFIG, snapshot: snap });
    // Batches from the snapshot's entry on: the snapshot lies on a batch boundary.
    const from = batches.findIndex((b) => b.firstSeq === snap.seq && b.count > 0);
    assert.ok(from >= 0 || batches.every((b) => b.firstSeq + b.count <= snap.seq || b.count === 0), 'snapshot lies on a batch boundary');
    for (const b of batches) {
      if (b.count > 0 && b.firstSeq >= snap.seq) backup.feedLog(b.entries);
      backup.grant(b.instructionNumber);
    }
    backup.grant(pd.count);
    backup.endOfLog();
    const bd = await backup.done;
    assert.equal(bd.count, pd.count);
    assert.equal(hex(bd.finalHash!), hex(pd.finalHash!));
  } finally {
    await primary.terminate();
    await backup?.terminate();
  }
});

test('batches and events leave the worker in its order: a batch too large for the outbound queue comes as a message of its own, state hashes fall between the batches around them, a replica fed them matches', async () => {
  const g = guest('kv');
  const primary = new Vcpu({ mode: 'record', guest: g, config: DEFAULT_VM_CONFIG, env: { kind: 'live' } });
  const seen: Array<{ t: 'batch'; firstSeq: number; count: number; n: number } | { t: 'hash'; n: number }> = [];
  const batches: BatchEvent[] = [];
  let reply = Buffer.alloc(0);
  primary.on('batch', (b: BatchEvent) => {
    seen.push({ t: 'batch', firstSeq: b.firstSeq, count: b.count, n: b.instructionNumber });
    batches.push({ ...b, entries: new Uint8Array(b.entries) });
    for (const o of b.outputs) if (o.kind === 'net') reply = Buffer.concat([reply, o.data]);
  });
  primary.on('hash', (h: { n: number }) => seen.push({ t: 'hash', n: h.n }));
  const big = 'x'.repeat(400 * 1024); // a GET of it replies with more than a quarter of the 1 MiB outbound queue
  const backup = new Vcpu({ mode: 'replay', guest: g, config: DEFAULT_VM_CONFIG });
  try {
    primary.input('open', 1);
    primary.input('data', 1, Buffer.from(`*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$${big.length}\r\n${big}\r\n`));
    const by = Date.now() + 20_000;
    const replied = async (bytes: number): Promise<void> => {
      while (reply.length < bytes && Date.now() < by) await new Promise((r) => setTimeout(r, 1));
    };
    await replied('+OK\r\n'.length);
    let want = reply.length;
    for (let i = 0; i < 30; i++) {
      // One command at a time, each answered before the next: a batch each.
      const get = i % 3 === 0;
      primary.input('data', 1, Buffer.from(get ? 'GET big\r\n' : `SET k${i} v${i}\r\n`));
      want += get ? big.length + `$${big.length}\r\n\r\n`.length : '+OK\r\n'.length;
      await replied(want);
      if (i % 5 === 0) primary.requestStateHash();
    }
    primary.stop();
    const pd = await primary.done;
    assert.ok(reply.length >= want, `every reply came (${reply.length} of at least ${want} bytes)`);
    assert.ok(batches.some((b) => b.entries.length + b.outputs.reduce((a, o) => a + o.data.length, 0) > 256 * 1024), 'a batch larger than the queue allows went as a message');
    assert.ok(seen.filter((e) => e.t === 'hash').length >= 3, `state hashes were logged (${JSON.stringify(seen.slice(0, 40))})`);
    let next = 0;
    let n = 0;
    for (const e of seen) {
      assert.ok(e.n >= n, `instruction numbers never go back (${e.t} at ${e.n} after ${n})`);
      n = e.n;
      if (e.t === 'batch') {
        assert.equal(e.firstSeq, next, 'batches arrive in order, none missing');
        next += e.count;
      }
    }
    for (const b of batches) {
      if (b.count > 0) backup.feedLog(b.entries);
      backup.grant(b.instructionNumber);
    }
    backup.grant(pd.count);
    backup.endOfLog();
    const bd = await backup.done;
    assert.equal(hex(bd.finalHash!), hex(pd.finalHash!));
  } finally {
    await primary.terminate();
    await backup.terminate();
  }
});

/**
 * The primary waits for its snapshot stream's `drain` (or `close`) many times during a large transfer:
 * each wait must remove the listeners it added, or Node warns (MaxListenersExceededWarning after ten)
 * and memory grows with the guest's size.
 */
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { test } from 'node:test';
import { firstOf } from '../src/replication/primary-node.js';

test('firstOf: a thousand waits on drain/close leave no listener behind and raise no warning', async () => {
  const e = new EventEmitter();
  const warnings: string[] = [];
  const onWarning = (w: Error): void => void warnings.push(w.name);
  process.on('warning', onWarning);
  try {
    for (let i = 0; i < 1000; i++) {
      const p = firstOf(e, ['drain', 'close']);
      assert.equal(e.listenerCount('drain'), 1);
      e.emit(i % 2 === 0 ? 'drain' : 'close');
      await p;
    }
    await new Promise((r) => setImmediate(r));
    assert.equal(e.listenerCount('drain'), 0);
    assert.equal(e.listenerCount('close'), 0);
    assert.deepEqual(warnings, []);
  } finally {
    process.off('warning', onWarning);
  }
});

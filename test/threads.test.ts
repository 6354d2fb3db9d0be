/**
 * Threaded guests (issue #17): wasi-threads guests are refused in replay mode with a message that names
 * `--mode checkpoint`, and accepted by the instrumenter in checkpoint mode (shared imported memory,
 * atomics, atomic waits rewritten into host calls).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { loadGuest } from '../src/machine/guest.js';
import { ATOMIC_WAIT32, INTERNAL_MODULE } from '../src/machine/instrumented.js';
import { FtvmError } from '../src/util/errors.js';
import { CLI, guestFile } from '../src/testing/pair.js';
import { spawnNode } from '../src/testing/processes.js';
import { freePorts } from '../src/util/ports.js';
import { binaryen, guestPath, wat } from './helpers.js';

const threadedKv = (): Uint8Array => new Uint8Array(readFileSync(guestPath('threaded_kv')));

const refusedForReplay = (err: unknown): boolean => {
  assert.ok(err instanceof FtvmError, `an FtvmError, not ${String(err)}`);
  assert.equal(err.code, 'FTVM_ERR_UNSUPPORTED_FEATURE');
  assert.match(err.message, /--mode checkpoint/);
  return true;
};

test('replay mode refuses the threaded kv guest, naming --mode checkpoint', () => {
  assert.throws(() => loadGuest(threadedKv()), (e) => refusedForReplay(e) && /shared memory/.test((e as Error).message));
});

test('replay mode refuses atomics and wasi.thread-spawn without a shared memory, naming --mode checkpoint', () => {
  const features = binaryen.Features.Atomics | binaryen.Features.MutableGlobals;
  const atomics = wat(`(module (memory (export "memory") 1 1)
    (func (export "ftvm_step") (result i32) (i32.atomic.rmw.add (i32.const 0) (i32.const 1))))`, features);
  assert.throws(() => loadGuest(atomics), refusedForReplay);
  const spawn = wat(`(module (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32))) (memory (export "memory") 1 1)
    (func (export "_start") (drop (call $spawn (i32.const 0)))))`, features);
  assert.throws(() => loadGuest(spawn), refusedForReplay);
  // Checkpoint mode does not take thread-spawn without the shared memory threads need either.
  assert.throws(() => loadGuest(spawn, undefined, true), refusedForReplay);
});

test('checkpoint mode instruments the threaded kv guest: shared memory imported, atomic waits become host calls', () => {
  const g = loadGuest(threadedKv(), undefined, true);
  assert.deepEqual(g.instrumented.sharedMemory, { module: 'env', base: 'memory', initialPages: 18, maximumPages: 1024 });
  assert.ok(g.instrumented.exports.includes('wasi_thread_start'));
  const imports = WebAssembly.Module.imports(g.compiled).map((i) => `${i.module}.${i.name}`);
  assert.ok(imports.includes(`${INTERNAL_MODULE}.${ATOMIC_WAIT32}`), 'the wait host call is imported');
  assert.ok(imports.includes('wasi.thread-spawn'));
  const mod = binaryen.readBinary(g.instrumented.binary);
  try {
    mod.setFeatures(binaryen.Features.All);
    assert.doesNotMatch(mod.emitText(), /memory\.atomic\.wait/, 'no atomic wait instruction is left');
  } finally {
    mod.dispose();
  }
});

test('ftvm run (replay mode) refuses the threaded guest at start with FTVM_ERR_UNSUPPORTED_FEATURE naming --mode checkpoint', async () => {
  const [service, channel] = await freePorts(2);
  const p = spawnNode([CLI, 'run', guestFile('threaded_kv'), '--role', 'backup', '--channel', `127.0.0.1:${channel}`, '--service', `127.0.0.1:${service}`, '--insecure-channel', '--node-id', 'threads-replay'], { name: 'replay-threaded' });
  try {
    const status = await p.exited;
    assert.notEqual(status.code, 0);
    const err = p.stderr.text() + p.stdout.text();
    assert.match(err, /FTVM_ERR_UNSUPPORTED_FEATURE/);
    assert.match(err, /--mode checkpoint/);
  } finally {
    await p.stop(3000);
  }
});

/**
 * Threaded guests (issue #17): wasi-threads guests are refused in replay mode with a message that names
 * `--mode checkpoint`, and accepted by the instrumenter in checkpoint mode (shared imported memory,
 * atomics, atomic waits rewritten into host calls).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { CheckpointEncoder, CheckpointReplica, decodeCheckpoint } from '../src/checkpoint/wire.js';
import { loadGuest } from '../src/machine/guest.js';
import { ATOMIC_WAIT32, INTERNAL_MODULE } from '../src/machine/instrumented.js';
import { FtvmError } from '../src/util/errors.js';
import { RespClient, RespError } from '../src/client/resp.js';
import { DEFAULT_VM_CONFIG } from '../src/log/recording.js';
import { Vcpu, type BatchEvent } from '../src/machine/vcpu.js';
import { CLI, guestFile, makeSecretFile, startArbiter } from '../src/testing/pair.js';
import { spawnNode, type ProcessHandle } from '../src/testing/processes.js';
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

/** A reply as text (bulk strings may come as Buffers). */
const text = (v: unknown): unknown => (Buffer.isBuffer(v) ? v.toString('utf8') : v);

test('checkpoint mode, serving alone: the threaded kv guest answers concurrent RESP clients; concurrent INCRs are exact (the lock works)', async () => {
  const secretFile = makeSecretFile();
  const [service] = await freePorts(1);
  const p = spawnNode([CLI, 'run', guestFile('threaded_kv'), '--mode', 'checkpoint', '--role', 'primary', '--service', `127.0.0.1:${service}`, '--secret-file', secretFile, '--node-id', 'threads-alone'], { name: 'threaded-primary' });
  const clients: RespClient[] = [];
  try {
    await p.waitForLine(/primary is serving/, 30_000, { stream: 'stderr' });
    await p.waitForLine(/worker threads/, 30_000, { stream: 'stderr' });
    const N = 4;
    const PER = 150;
    for (let i = 0; i < N; i++) clients.push(await RespClient.connect({ port: service!, callTimeoutMs: 30_000 }));
    const c0 = clients[0]!;
    assert.equal(text(await c0.call('PING')), 'PONG');
    assert.equal(text(await c0.call('SET', 'greeting', 'hello')), 'OK');
    assert.equal(text(await clients[1]!.call('GET', 'greeting')), 'hello', 'another connection (another thread) reads the write');
    assert.equal(await clients[2]!.call('DEL', 'greeting', 'missing'), 1);
    assert.equal(await clients[3]!.call('GET', 'greeting'), null);
    assert.equal(text(await c0.call('SET', 'word', 'abc')), 'OK');
    const notInt = await c0.call('INCR', 'word');
    assert.ok(notInt instanceof RespError && /not an integer/.test(notInt.message), `INCR of a word: ${String(notInt)}`);

    // Every connection is served by its own worker thread: INCRs race on one key under the table lock.
    const replies = await Promise.all(
      clients.map(async (c) => {
        const got: number[] = [];
        for (let i = 0; i < PER; i++) got.push(Number(await c.call('INCR', 'counter')));
        return got;
      }),
    );
    const all = replies.flat().sort((a, b) => a - b);
    assert.deepEqual(all, Array.from({ length: N * PER }, (_, i) => i + 1), 'every INCR saw a distinct value: none lost, none duplicated');
    for (const r of replies) for (let i = 1; i < r.length; i++) assert.ok(r[i]! > r[i - 1]!, 'each connection sees its own INCRs increase');
    assert.equal(text(await c0.call('GET', 'counter')), String(N * PER));
    assert.equal(await c0.call('DBSIZE'), 2);
  } finally {
    for (const c of clients) await c.close();
    await p.stop(5000);
  }
});

test('the VM bounds its guest threads: past the limit thread-spawn fails (EAGAIN) with a console note, and the guest exits', async () => {
  const g = loadGuest(threadedKv(), undefined, true);
  const vcpu = new Vcpu({ mode: 'record', guest: g, config: { ...DEFAULT_VM_CONFIG, args: ['4'] }, maxThreads: 2 });
  const consoleText: string[] = [];
  vcpu.on('batch', (b: BatchEvent) => {
    for (const o of b.outputs) if (o.kind === 'console') consoleText.push(Buffer.from(o.data).toString('utf8'));
  });
  try {
    const done = await vcpu.done;
    assert.equal(done.state, 'halted');
    assert.equal(done.halt?.kind, 'exit');
    assert.equal(done.halt?.code, 1);
    const out = consoleText.join('');
    assert.match(out, /limit of 2 guest threads/);
    assert.match(out, /thread-spawn failed for worker thread with result -6/);
  } finally {
    await vcpu.terminate();
  }
});

test('checkpoint mode, two processes, the threaded kv guest: kill -9 of the primary under concurrent writes; the backup goes live from its last checkpoint (every thread restored) with every acknowledged write', async () => {
  const secretFile = makeSecretFile();
  const arbiter = await startArbiter(secretFile);
  const [channel, primaryService, backupService] = await freePorts(3);
  const common = ['--mode', 'checkpoint', '--secret-file', secretFile, '--arbiter', arbiter.url, '--fail-timeout-ms', '1500', '--arbiter-deadline-ms', '3000', '--checkpoint-interval-ms', '20', '--no-fast-failover'];
  const procs: ProcessHandle[] = [arbiter.proc];
  const clients: RespClient[] = [];
  try {
    const backup = spawnNode([CLI, 'run', guestFile('threaded_kv'), '--role', 'backup', '--channel', `127.0.0.1:${channel}`, '--service', `127.0.0.1:${backupService}`, '--node-id', 'threads-backup', ...common], { name: 'backup' });
    procs.push(backup);
    await backup.waitForLine(/checkpoint backup: listening/, 30_000, { stream: 'stderr' });
    const primary = spawnNode([CLI, 'run', guestFile('threaded_kv'), '--role', 'primary', '--peer', `127.0.0.1:${channel}`, '--service', `127.0.0.1:${primaryService}`, '--node-id', 'threads-primary', ...common], { name: 'primary' });
    procs.push(primary);
    await primary.waitForLine(/primary is serving/, 30_000, { stream: 'stderr' });

    // Four connections at once: four worker threads write concurrently (SETs and INCRs on a shared key).
    for (let i = 0; i < 4; i++) clients.push(await RespClient.connect({ port: primaryService!, callTimeoutMs: 30_000 }));
    const acknowledged: Array<[string, string]> = [];
    let incrs = 0;
    const t0 = Date.now();
    await Promise.all(
      clients.map(async (c, ci) => {
        for (let i = 0; i < 25 && Date.now() - t0 < 60_000; i++) {
          const key = `c${ci}-k${i}`;
          const value = `v${i}-${randomBytes(4).toString('hex')}`;
          assert.equal(text(await c.call('SET', key, value)), 'OK');
          acknowledged.push([key, value]);
          assert.equal(typeof (await c.call('INCR', 'shared')), 'number');
          incrs++;
        }
      }),
    );
    assert.ok(acknowledged.length >= 40, `writes acknowledged before the kill (${acknowledged.length})`);
    for (const c of clients.splice(0)) await c.close();

    const mark = backup.mark();
    primary.kill('SIGKILL');
    await primary.exited;
    const wentLive = await backup.waitForLine(/"checkpoint":(\d+).*going live from the last complete checkpoint/, 30_000, { stream: 'stderr', since: mark });
    assert.ok(Number(wentLive[1]) >= 1, `the backup went live from a complete checkpoint (${wentLive[1]})`);
    await backup.waitForLine(/primary is serving/, 30_000, { stream: 'stderr', since: mark });

    // Served by the restored threads: four connections at once again (each needs a worker thread).
    for (let i = 0; i < 4; i++) clients.push(await RespClient.connect({ port: backupService!, callTimeoutMs: 30_000 }));
    for (const [k, v] of acknowledged) assert.equal(text(await clients[0]!.call('GET', k)), v, `${k} survived the failover`);
    assert.equal(text(await clients[1]!.call('GET', 'shared')), String(incrs), 'every acknowledged INCR survived');
    const after = await Promise.all(clients.map((c) => c.call('INCR', 'shared')));
    assert.deepEqual(after.map(Number).sort((a, b) => a - b), [incrs + 1, incrs + 2, incrs + 3, incrs + 4], 'the restored threads serve concurrently under the lock');
  } finally {
    for (const c of clients) await c.close();
    for (const p of procs.reverse()) await p.stop(3000);
  }
});

test('a snapshot of the threaded guest holds every thread parked (globals + unwound stack); the checkpoint wire carries them and refuses a malformed threads section', async () => {
  const g = loadGuest(threadedKv(), undefined, true);
  const vcpu = new Vcpu({ mode: 'record', guest: g, config: { ...DEFAULT_VM_CONFIG, args: ['3'] } });
  try {
    // The threads start on workers of their own: the first snapshots may be refused until all can park.
    let taken: Awaited<ReturnType<Vcpu['takeSnapshot']>> | undefined;
    for (let i = 0; i < 100 && taken === undefined; i++) {
      try {
        taken = await vcpu.takeSnapshot();
      } catch (err) {
        assert.ok(err instanceof FtvmError && err.code === 'FTVM_ERR_SNAPSHOT', String(err));
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    assert.ok(taken !== undefined, 'a snapshot of all threads within 10 s');
    const s = taken.snapshot;
    assert.ok(s.resume !== undefined && s.resume.length > 0, 'the main thread is unwound in its blocking accept');
    assert.equal(s.threads?.threads.length, 3);
    assert.deepEqual(s.threads?.threads.map((t) => t.tid), [1, 2, 3]);
    for (const t of s.threads!.threads) {
      assert.equal(t.globals.length, g.instrumented.globalExports.length);
      assert.ok(t.stack.length > 0, `thread ${t.tid} has an unwound stack`);
    }
    const stackPointers = new Set(s.threads!.threads.map((t) => t.globals[0]));
    assert.equal(stackPointers.size, 3, 'each thread runs on its own stack');

    const enc = new CheckpointEncoder();
    const data = enc.encode(1, 1, s);
    const replica = new CheckpointReplica(1);
    assert.equal(replica.apply(data), 1);
    const back = replica.snapshot()!;
    assert.deepEqual(back.threads, s.threads, 'the threads cross the wire intact');
    const decoded = decodeCheckpoint(data);
    assert.equal(decoded.threads?.nextTid, 4);

    // A thread numbered at or past nextTid is refused (with a valid CRC), and the replica is unchanged.
    const fresh = new CheckpointReplica(1);
    assert.throws(() => fresh.apply(new CheckpointEncoder().encode(1, 1, { ...s, threads: { nextTid: 2, threads: s.threads!.threads } })), (e) => e instanceof FtvmError && e.code === 'FTVM_ERR_CHECKPOINT' && /guest thread/.test(e.message));
    assert.equal(fresh.checkpoint, 0);
  } finally {
    await vcpu.terminate();
  }
});

/** The module without its custom sections (what clang leaves when it runs wasm-opt from PATH: no names). */
function withoutCustomSections(bytes: Uint8Array): Uint8Array {
  const out: number[] = [...bytes.subarray(0, 8)];
  let i = 8;
  while (i < bytes.length) {
    const id = bytes[i]!;
    let size = 0;
    let shift = 0;
    let j = i + 1;
    for (;;) {
      const b = bytes[j++]!;
      size |= (b & 0x7f) << shift;
      shift += 7;
      if ((b & 0x80) === 0) break;
    }
    if (id !== 0) out.push(...bytes.subarray(i, j + size));
    i = j + size;
  }
  return Uint8Array.from(out);
}

test('a threaded guest without a name section still has its stack pointer found (wasm-ld defines __stack_pointer first): its threads can park', () => {
  const stripped = withoutCustomSections(readFileSync(guestFile('threaded_kv')));
  const sections = (WebAssembly.Module as unknown as { customSections(m: WebAssembly.Module, name: string): ArrayBuffer[] }).customSections;
  assert.equal(sections(new WebAssembly.Module(stripped), 'name').length, 0, 'no name section');
  const g = loadGuest(stripped, undefined, true);
  assert.ok(g.instrumented.sharedMemory !== undefined, 'a threaded guest');
  assert.equal(g.instrumented.stackPointerExport, g.instrumented.globalExports[0], 'the first global is the stack pointer');
});

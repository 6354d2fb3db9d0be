/**
 * Unmodified WASI programs as guests: the C server (guests/c-server, clang + wasi-libc, only POSIX
 * calls) gets a pre-opened listening socket and serves virtual connections with accept/poll/recv/send.
 * Blocking and non-blocking calls are logged at their instruction numbers and replay identically.
 */
import fc from 'fast-check';
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EntryType, type LogEntry } from '../src/log/entry.js';
import { DEFAULT_VM_CONFIG, type VmConfig } from '../src/log/recording.js';
import { ArraySource, ScriptedEnv, type ScheduledInput } from '../src/machine/env.js';
import { Machine, type GuestOutput, type RecordEnv, type Snapshot } from '../src/machine/machine.js';
import { collectingSink, recordRun, replayRun } from '../src/machine/runner.js';
import { resp } from '../src/machine/workloads.js';
import { DeterminismViolation, FtvmError } from '../src/util/errors.js';
import { guest, hex } from './helpers.js';

const cfg = (mode: 'poll' | 'blocking'): VmConfig => ({ ...DEFAULT_VM_CONFIG, args: [mode] });
const outputsKey = (os: GuestOutput[]): string[] => os.map((o) => `${o.seq}@${o.n}:${o.kind}:${o.conn}:${o.fd}:${hex(o.data)}`);
/** What each connection received, in order. */
const replies = (os: GuestOutput[]): Map<number, string> => {
  const m = new Map<number, string>();
  for (const o of os) if (o.kind === 'net') m.set(o.conn, (m.get(o.conn) ?? '') + Buffer.from(o.data).toString('latin1'));
  return m;
};

function roundTrip(mode: 'poll' | 'blocking', inputs: ScheduledInput[], seed: number, slice: number): { entries: LogEntry[]; outputs: GuestOutput[] } {
  const g = guest('c_server');
  const rec = recordRun(g, cfg(mode), new ScriptedEnv(inputs, { seed, sliceUnits: slice }));
  assert.equal(rec.result.state, 'stopped', 'the server runs until the workload ends (blocked in a call)');
  const rep = replayRun(g, cfg(mode), rec.entries);
  assert.equal(rep.consumed, rec.entries.length, 'replay consumed the whole log');
  assert.equal(rep.result.state, 'starved');
  assert.equal(rep.result.state === 'starved' && rep.result.midStep, false, 'the replica ends blocked in the same call: an idle point of a command');
  assert.equal(rep.finalCount, rec.finalCount, 'same final instruction number');
  assert.equal(hex(rep.finalHash), hex(rec.finalHash), 'same final state hash');
  assert.deepEqual(outputsKey(rep.outputs), outputsKey(rec.outputs), 'same outputs at the same instruction numbers');
  return { entries: rec.entries, outputs: rec.outputs };
}

for (const mode of ['poll', 'blocking'] as const) {
  test(`c_server (${mode}): serves RESP clients on the pre-opened socket; replay is identical`, () => {
    const inputs: ScheduledInput[] = [
      { atCount: 0, kind: 'open', conn: 1 },
      { atCount: 100_000, kind: 'data', conn: 1, data: Buffer.concat([resp('SET', 'a', '1'), resp('INCR', 'a')]) },
      { atCount: 200_000, kind: 'data', conn: 1, data: Buffer.from('GET a\r\nEXIS') }, // split command
      { atCount: 300_000, kind: 'data', conn: 1, data: Buffer.from('TS a b\r\n') },
      { atCount: 400_000, kind: 'close', conn: 1 },
      { atCount: 500_000, kind: 'open', conn: 2 },
      { atCount: 600_000, kind: 'data', conn: 2, data: Buffer.concat([resp('GET', 'a'), resp('DEL', 'a', 'x'), Buffer.from('DBSIZE\r\nPING\r\n')]) },
      { atCount: 700_000, kind: 'close', conn: 2 },
    ];
    const { entries, outputs } = roundTrip(mode, inputs, 1, 20_000);
    const r = replies(outputs);
    assert.equal(r.get(1), '+OK\r\n:2\r\n$1\r\n2\r\n:1\r\n');
    assert.equal(r.get(2), '$1\r\n2\r\n:1\r\n:0\r\n+PONG\r\n');
    assert.ok(outputs.some((o) => o.kind === 'close' && o.conn === 1), 'the server closed connection 1 after its EOF');
    const types = new Set(entries.map((e) => e.type));
    assert.ok(types.has(EntryType.SOCK_ACCEPT) && types.has(EntryType.SOCK_RECV), 'accepts and receives are logged');
    if (mode === 'poll') {
      assert.ok(types.has(EntryType.POLL), 'polls are logged');
      assert.ok(entries.some((e) => e.type === EntryType.SOCK_RECV && e.errno === 6), 'a non-blocking recv got EAGAIN (logged)');
      assert.ok(entries.some((e) => e.type === EntryType.SOCK_ACCEPT && e.errno === 6), 'a non-blocking accept got EAGAIN (logged)');
    } else {
      assert.ok(!types.has(EntryType.POLL), 'the blocking server never polls');
    }
  });
}

const key = fc.constantFrom('a', 'b', 'ctr', 'key:1');
const command = fc.oneof(
  fc.tuple(key, fc.string({ maxLength: 30 })).map(([k, v]) => resp('SET', k, v)),
  key.map((k) => resp('GET', k)),
  key.map((k) => resp('INCR', k)),
  fc.array(key, { minLength: 1, maxLength: 3 }).map((ks) => resp('DEL', ...ks)),
  fc.constant(Buffer.from('PING\r\n')),
  fc.constant(Buffer.from('DBSIZE\r\n')),
  fc.uint8Array({ maxLength: 20 }), // garbage and partial frames
);

test('c_server: random client traffic at random instruction numbers replays identically (poll and blocking)', () => {
  fc.assert(
    fc.property(
      fc.constantFrom<'poll' | 'blocking'>('poll', 'blocking'),
      fc.array(
        fc.record({
          gap: fc.nat(150_000),
          conn: fc.nat(3),
          split: fc.nat(40),
          data: fc.array(command, { minLength: 1, maxLength: 3 }).map((cs) => Buffer.concat(cs)),
        }),
        { minLength: 1, maxLength: 25 },
      ),
      fc.integer({ min: 1, max: 4 }),
      fc.nat(1000),
      fc.integer({ min: 1000, max: 300_000 }),
      (mode, items, conns, seed, slice) => {
        const inputs: ScheduledInput[] = [];
        const opened = new Set<number>();
        let at = 0;
        for (const it of items) {
          at += it.gap;
          const conn = 1 + (it.conn % conns);
          if (!opened.has(conn)) {
            opened.add(conn);
            inputs.push({ atCount: at, kind: 'open', conn });
          }
          // one write split in two at a random byte: commands straddle receives
          const cut = Math.min(it.split, it.data.length);
          if (cut > 0) inputs.push({ atCount: at, kind: 'data', conn, data: it.data.subarray(0, cut) });
          if (cut < it.data.length) inputs.push({ atCount: at + 1 + it.gap / 2, kind: 'data', conn, data: it.data.subarray(cut) });
          at += 1 + it.gap / 2;
        }
        for (const c of [...opened].sort()) inputs.push({ atCount: at + c, kind: 'close', conn: c });
        inputs.sort((a, b) => a.atCount - b.atCount);
        for (const i of inputs) i.atCount = Math.floor(i.atCount);
        roundTrip(mode, inputs, seed, slice);
      },
    ),
    { numRuns: 25 },
  );
});

test('c_server: a tampered receive in the log is a determinism violation', () => {
  const g = guest('c_server');
  const inputs: ScheduledInput[] = [
    { atCount: 0, kind: 'open', conn: 1 },
    { atCount: 10_000, kind: 'data', conn: 1, data: resp('SET', 'k', 'v') },
    { atCount: 20_000, kind: 'data', conn: 1, data: resp('GET', 'k') },
  ];
  const rec = recordRun(g, cfg('blocking'), new ScriptedEnv(inputs, { seed: 3 }));
  const tampered = rec.entries.map((e) => (e.type === EntryType.SOCK_RECV && e.data.length > 0 ? { ...e, data: Buffer.from(resp('SET', 'k', 'w')) } : e));
  assert.throws(() => replayRun(g, cfg('blocking'), tampered), DeterminismViolation);
});

test('c_server: a command blocked in a call refuses a snapshot with FTVM_ERR_SNAPSHOT', () => {
  const g = guest('c_server');
  let tried = false;
  let machine: Machine | undefined;
  class Probe extends ScriptedEnv {
    override waitForWork(count: number, deadline: number | undefined): boolean {
      if (!tried && machine) {
        tried = true;
        assert.ok(machine.isBlocked);
        assert.throws(() => machine!.snapshot(), (err: unknown) => err instanceof FtvmError && err.code === 'FTVM_ERR_SNAPSHOT');
      }
      return super.waitForWork(count, deadline);
    }
  }
  const env = new Probe([{ atCount: 0, kind: 'open', conn: 1 }], { seed: 1 });
  const entries: LogEntry[] = [];
  machine = new Machine({ instrumented: g.instrumented, compiled: g.compiled, config: cfg('poll'), sink: collectingSink(entries, []), mode: 'record', env });
  env.bind(() => machine!.count);
  const r = machine.run();
  assert.equal(r.state, 'stopped');
  assert.ok(tried, 'the snapshot was attempted while the guest was blocked');
});

test('c_server: a replica that goes live while its guest is blocked continues the call as a primary', () => {
  const g = guest('c_server');
  // The primary's run: client 1 sets a key and stays connected; the recording ends with the guest
  // blocked in poll (the primary "died" there).
  const first: ScheduledInput[] = [
    { atCount: 0, kind: 'open', conn: 1 },
    { atCount: 50_000, kind: 'data', conn: 1, data: resp('SET', 'x', '42') },
  ];
  const rec = recordRun(g, cfg('poll'), new ScriptedEnv(first, { seed: 5 }));
  // The backup replays it and, at the end of the log, goes live with new clients (ids above the old).
  const after: ScheduledInput[] = [
    { atCount: 0, kind: 'open', conn: 7 },
    { atCount: 10, kind: 'data', conn: 7, data: resp('GET', 'x') },
    { atCount: 20, kind: 'close', conn: 7 },
  ];
  const live = new ScriptedEnv(after, { seed: 6 });
  const outputs: GuestOutput[] = [];
  const entriesAfter: LogEntry[] = [];
  let wentLive = false;
  class Handover extends ArraySource {
    takeOver(): RecordEnv | undefined {
      wentLive = true;
      return live;
    }
  }
  const m = new Machine({
    instrumented: g.instrumented,
    compiled: g.compiled,
    config: cfg('poll'),
    sink: collectingSink(entriesAfter, outputs),
    mode: 'replay',
    source: new Handover(rec.entries),
  });
  live.bind(() => m.count);
  const r = m.run();
  assert.ok(wentLive, 'the replica went live inside the blocked call');
  assert.equal(r.state, 'stopped');
  const byConn = replies(outputs);
  assert.equal(byConn.get(1), '+OK\r\n', 'the replayed reply to the old client (suppressed in replay, same bytes)');
  assert.equal(byConn.get(7), '$2\r\n42\r\n', 'the new primary serves the state the old one built');
  assert.ok(outputs.some((o) => o.kind === 'close' && o.conn === 1), "the old primary's client connection is closed for the guest at go-live");
});

test('a module importing an unsupported WASI call is refused at load, naming it', async () => {
  const { wat } = await import('./helpers.js');
  const { loadGuest } = await import('../src/machine/guest.js');
  const bytes = wat(`(module
    (import "wasi_snapshot_preview1" "sock_open" (func (param i32 i32 i32) (result i32)))
    (memory (export "memory") 1)
    (func (export "_start")))`);
  assert.throws(() => loadGuest(bytes), (err: unknown) => err instanceof FtvmError && err.code === 'FTVM_ERR_ABI_IMPORT' && /sock_open/.test(err.message));
});

/** Records `inputs`, unwinding the guest out of its blocking call at the given idle waits and snapshotting it there. */
function recordWithUnwinds(mode: 'poll' | 'blocking', inputs: ScheduledInput[], seed: number, slice: number, unwindAt: Set<number>) {
  const g = guest('c_server');
  let machine: Machine | undefined;
  let waits = 0;
  const snaps: Snapshot[] = [];
  class Unwinder extends ScriptedEnv {
    override waitForWork(count: number, deadline: number | undefined): boolean {
      if (unwindAt.has(waits++) && machine!.requestUnwind()) return true;
      return super.waitForWork(count, deadline);
    }
    betweenSteps(): void {
      const s = machine!.snapshot();
      assert.ok(s.resume !== undefined && s.resume.length > 8, 'the snapshot carries the unwound stack');
      assert.equal(hex(machine!.stateHash()), hex(machine!.stateHash()));
      snaps.push(s);
    }
  }
  const env = new Unwinder(inputs, { seed, sliceUnits: slice });
  const entries: LogEntry[] = [];
  const outputs: GuestOutput[] = [];
  machine = new Machine({ instrumented: g.instrumented, compiled: g.compiled, config: cfg(mode), sink: collectingSink(entries, outputs), mode: 'record', env });
  env.bind(() => machine!.count);
  const r = machine.run();
  assert.equal(r.state, 'stopped');
  return { entries, outputs, snaps, finalHash: machine.logStateHash(), finalCount: machine.count };
}

test('c_server: a guest blocked in a call unwinds (Asyncify), is snapshotted and rewinds; invisible to the log; a replica restored from the snapshot continues identically', () => {
  const g = guest('c_server');
  assert.equal(g.instrumented.asyncified, true);
  let restored = 0;
  fc.assert(
    fc.property(
      fc.constantFrom<'poll' | 'blocking'>('poll', 'blocking'),
      fc.array(fc.record({ gap: fc.nat(100_000), conn: fc.nat(2), data: fc.array(command, { minLength: 1, maxLength: 3 }).map((cs) => Buffer.concat(cs)) }), { minLength: 1, maxLength: 12 }),
      fc.uniqueArray(fc.nat(12), { maxLength: 4 }).map((a) => [0, ...a.filter((i) => i !== 0)]), // the first wait always unwinds
      fc.nat(1000),
      (mode, items, unwinds, seed) => {
        const inputs: ScheduledInput[] = [];
        const opened = new Set<number>();
        let at = 0;
        for (const it of items) {
          at += it.gap;
          const conn = 1 + it.conn;
          if (!opened.has(conn)) {
            opened.add(conn);
            inputs.push({ atCount: at, kind: 'open', conn });
          }
          inputs.push({ atCount: at, kind: 'data', conn, data: it.data });
        }
        for (const c of [...opened].sort()) inputs.push({ atCount: at + c, kind: 'close', conn: c });
        const plain = recordRun(g, cfg(mode), new ScriptedEnv(inputs, { seed, sliceUnits: 50_000 }));
        const un = recordWithUnwinds(mode, inputs, seed, 50_000, new Set(unwinds));
        // Unwinding and rewinding changes nothing the log or the state can see.
        assert.deepEqual(outputsKey(un.outputs), outputsKey(plain.outputs));
        assert.equal(un.entries.length, plain.entries.length);
        assert.equal(hex(un.finalHash), hex(plain.finalHash));
        assert.equal(un.finalCount, plain.finalCount);
        for (const s of un.snaps) {
          // A backup cloned from the snapshot rewinds into the blocked call and replays the rest.
          const rep = replayRun(g, cfg(mode), un.entries.slice(s.seq), s);
          assert.equal(rep.finalCount, un.finalCount);
          assert.equal(hex(rep.finalHash), hex(un.finalHash), 'the replica restored from the snapshot reaches the same state');
          assert.deepEqual(outputsKey(rep.outputs), outputsKey(un.outputs.filter((o) => o.seq >= s.seq)));
          restored++;
        }
      },
    ),
    { numRuns: 12 },
  );
  assert.ok(restored >= 12, `snapshots of a blocked guest were taken and restored (${restored})`);
});

test('ftvm check lists the WASI calls a module imports and says which are unsupported', async () => {
  const { spawnSync } = await import('node:child_process');
  const { writeFileSync, mkdtempSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { ROOT, guestPath, wat } = await import('./helpers.js');
  const cli = join(ROOT, 'dist/src/cli/main.js');
  const ok = spawnSync(process.execPath, [cli, 'check', guestPath('c_server')], { encoding: 'utf8', timeout: 120_000 });
  assert.equal(ok.status, 0, ok.stderr);
  assert.match(ok.stdout, /sock_accept\s+logged \(SOCK_ACCEPT; may block\)/);
  assert.match(ok.stdout, /poll_oneoff\s+logged \(POLL; may block\)/);
  const file = join(mkdtempSync(join(tmpdir(), 'ftvm-check-')), 'bad.wasm');
  writeFileSync(file, wat(`(module
    (import "wasi_snapshot_preview1" "sock_open" (func (param i32 i32 i32) (result i32)))
    (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
    (memory (export "memory") 1)
    (func (export "_start")))`));
  const bad = spawnSync(process.execPath, [cli, 'check', file], { encoding: 'utf8', timeout: 120_000 });
  assert.notEqual(bad.status, 0);
  assert.match(bad.stdout, /sock_open\s+UNSUPPORTED/);
  assert.match(bad.stdout, /fd_write\s+output/);
  assert.match(bad.stderr, /FTVM_ERR_ABI_IMPORT.*sock_open/);
});

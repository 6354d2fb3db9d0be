/**
 * The replicated virtual disk with SQLite (the official amalgamation, unmodified) as the guest: file
 * operations are deterministic, the disk is in the state hash and in snapshots, paths cannot leave
 * /data, a full disk is ENOSPC at the same instruction on every replica.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import type { LogEntry } from '../src/log/entry.js';
import { DEFAULT_VM_CONFIG, type VmConfig } from '../src/log/recording.js';
import { E, KIND_DIR, VirtualDisk } from '../src/machine/disk.js';
import { ScriptedEnv, type ScheduledInput } from '../src/machine/env.js';
import { Machine, type GuestOutput, type Snapshot } from '../src/machine/machine.js';
import { collectingSink, recordRun, replayRun } from '../src/machine/runner.js';
import { DEFAULT_CHUNK_BYTES, SnapshotAssembler, encodeSnapshot } from '../src/machine/snapshot-codec.js';
import { resp } from '../src/machine/workloads.js';
import { guest, hex } from './helpers.js';

const cfg = (diskBytes: number): VmConfig => ({ ...DEFAULT_VM_CONFIG, args: ['poll'], diskBytes });
const sql = (text: string): Uint8Array => resp('SQL', text);
const replies = (os: GuestOutput[], conn: number): string =>
  os
    .filter((o) => o.kind === 'net' && o.conn === conn)
    .map((o) => Buffer.from(o.data).toString('latin1'))
    .join('');

function workload(conns: number, txPerConn: number): ScheduledInput[] {
  const out: ScheduledInput[] = [];
  let at = 0;
  for (let c = 1; c <= conns; c++) out.push({ atCount: at, kind: 'open', conn: c });
  out.push({ atCount: (at += 1000), kind: 'data', conn: 1, data: sql('CREATE TABLE acct(id INTEGER PRIMARY KEY, owner TEXT, balance INTEGER NOT NULL)') });
  for (let i = 0; i < txPerConn; i++) {
    for (let c = 1; c <= conns; c++) {
      const id = c * 1000 + i;
      out.push({
        atCount: (at += 200_000),
        kind: 'data',
        conn: c,
        data: sql(`BEGIN; INSERT INTO acct(id, owner, balance) VALUES(${id}, 'c${c}', 100); UPDATE acct SET balance = balance + ${i} WHERE owner = 'c${c}'; COMMIT; SELECT count(*), sum(balance) FROM acct WHERE owner = 'c${c}'`),
      });
    }
  }
  out.push({ atCount: (at += 200_000), kind: 'data', conn: 1, data: Buffer.concat([sql('PRAGMA integrity_check'), resp('SET', 'k', 'v'), resp('GET', 'k')]) });
  return out;
}

test('sqlite_server: transactions from several clients on /data; record and replay reach the same state hash (memory and disk)', () => {
  const g = guest('sqlite_server');
  const rec = recordRun(g, cfg(8 << 20), new ScriptedEnv(workload(3, 5), { seed: 7 }));
  assert.equal(rec.result.state, 'stopped');
  const rep = replayRun(g, cfg(8 << 20), rec.entries);
  assert.equal(rep.consumed, rec.entries.length);
  assert.equal(rep.finalCount, rec.finalCount);
  assert.equal(hex(rep.finalHash), hex(rec.finalHash), 'same state hash (it covers the disk)');
  assert.equal(hex(rep.machine.disk!.hash()), hex(rec.machine.disk!.hash()), 'the same disk');
  const c1 = replies(rec.outputs, 1);
  if (process.env.FTVM_TEST_TRACE) console.error(JSON.stringify(c1));
  // After transaction i, client 1 owns i + 1 rows; each row j got +k in every transaction k ≥ j.
  assert.match(c1, /\*1\r\n\*2\r\n\$1\r\n5\r\n\$3\r\n540\r\n/, 'the last transaction of client 1 sees its 5 rows: 500 + Σk(k+1) = 540');
  assert.match(c1, /\$2\r\nok\r\n/, 'PRAGMA integrity_check is ok');
  assert.match(c1, /\+OK\r\n\$1\r\nv\r\n$/);
  const root = rec.machine.disk!.get(1)!;
  assert.ok(root.entries.has('db.sqlite'), 'the database file is on the virtual disk');
  assert.ok(!root.entries.has('db.sqlite-journal'), 'no hot journal is left behind');
});

test('paths cannot leave /data: ".." above the root and absolute paths are ENOTCAPABLE', () => {
  const d = new VirtualDisk(1 << 20);
  assert.equal(d.resolve(1, '../x').errno, E.NOTCAPABLE);
  assert.equal(typeof d.create(1, 'a', KIND_DIR, 0n), 'number');
  assert.equal(d.resolve(1, 'a/../../x').errno, E.NOTCAPABLE);
  assert.equal(d.resolve(1, 'a/../x').errno, 0, '`..` inside /data is fine');
  assert.equal(d.resolve(1, '/etc/passwd').errno, E.NOTCAPABLE);
  const g = guest('sqlite_server');
  const inputs: ScheduledInput[] = [
    { atCount: 0, kind: 'open', conn: 1 },
    { atCount: 1000, kind: 'data', conn: 1, data: Buffer.concat([sql("ATTACH '/data/../escape.db' AS e"), sql("ATTACH '/data/sub/../../escape.db' AS e"), sql("ATTACH '/data/inside.db' AS i")]) },
  ];
  const rec = recordRun(g, cfg(1 << 20), new ScriptedEnv(inputs, { seed: 1 }));
  const r = replies(rec.outputs, 1);
  assert.match(r, /^-ERR unable to open database[^\r]*\r\n-ERR unable to open database[^\r]*\r\n\*0\r\n$/, r);
  const names = [...rec.machine.disk!.get(1)!.entries.keys()];
  assert.ok(names.includes('inside.db') && !names.some((n) => n.includes('escape')), `only inside.db was created (${names.join(', ')})`);
});

test('a full disk is ENOSPC at the same instruction on the backup: SQLite reports it and replay agrees', () => {
  const g = guest('sqlite_server');
  const blob = 'x'.repeat(20_000);
  const inputs: ScheduledInput[] = [{ atCount: 0, kind: 'open', conn: 1 }, { atCount: 1000, kind: 'data', conn: 1, data: sql('CREATE TABLE b(v TEXT)') }];
  for (let i = 0; i < 12; i++) inputs.push({ atCount: 100_000 * (i + 2), kind: 'data', conn: 1, data: sql(`INSERT INTO b VALUES('${blob}')`) });
  inputs.push({ atCount: 100_000 * 20, kind: 'data', conn: 1, data: Buffer.concat([sql('SELECT count(*) FROM b'), sql('PRAGMA integrity_check')]) });
  const rec = recordRun(g, cfg(160 * 1024), new ScriptedEnv(inputs, { seed: 2 }));
  const r = replies(rec.outputs, 1);
  assert.match(r, /-ERR database or disk is full/, r.slice(0, 300));
  assert.match(r, /\$2\r\nok\r\n$/, 'the database is intact after ENOSPC');
  assert.ok(rec.machine.disk!.usedBytes <= 160 * 1024);
  const rep = replayRun(g, cfg(160 * 1024), rec.entries);
  assert.equal(hex(rep.finalHash), hex(rec.finalHash));
  assert.equal(rep.finalCount, rec.finalCount);
});

test('sqlite_server blocked in poll: a snapshot carries memory, the unwound stack and the disk; a replica restored from it continues identically; each replica writes its own disk image', () => {
  const g = guest('sqlite_server');
  const dir = mkdtempSync(join(tmpdir(), 'ftvm-disk-'));
  let machine: Machine | undefined;
  let waits = 0;
  const snaps: Snapshot[] = [];
  class Unwinder extends ScriptedEnv {
    override waitForWork(count: number, deadline: number | undefined): boolean {
      if (waits++ % 2 === 0 && machine!.requestUnwind()) return true;
      return super.waitForWork(count, deadline);
    }
    betweenSteps(): void {
      snaps.push(machine!.snapshot());
    }
  }
  const env = new Unwinder(workload(2, 4), { seed: 3 });
  const entries: LogEntry[] = [];
  const outputs: GuestOutput[] = [];
  machine = new Machine({ instrumented: g.instrumented, compiled: g.compiled, config: cfg(8 << 20), sink: collectingSink(entries, outputs), mode: 'record', env, diskImagePath: join(dir, 'primary.img') });
  env.bind(() => machine!.count);
  assert.equal(machine.run().state, 'stopped');
  const finalHash = machine.logStateHash();
  assert.ok(snaps.length >= 1, `snapshots taken (${snaps.length})`);
  assert.ok(snaps.every((s) => s.disk !== undefined && s.resume !== undefined));
  const last = snaps[snaps.length - 1]!;
  const rep = replayRun(g, cfg(8 << 20), entries.slice(last.seq), last);
  assert.equal(hex(rep.finalHash), hex(finalHash), 'the clone reaches the same memory and disk');
  // The image the primary wrote at its last sync is a whole tree: it loads, and holds the database.
  const img = VirtualDisk.deserialize(readFileSync(join(dir, 'primary.img')));
  assert.ok(img.get(1)!.entries.has('db.sqlite'));
});

test('a disk larger than one channel frame (> 16 MiB) streams in snapshot chunks after memory; the reassembled snapshot restores a replica that continues identically', () => {
  const g = guest('sqlite_server');
  const config = cfg(40 << 20);
  let machine: Machine | undefined;
  let snap: Snapshot | undefined;
  const bigAt = 2_000_000;
  class SnapOnce extends ScriptedEnv {
    override waitForWork(count: number, deadline: number | undefined): boolean {
      // Once the big row is in: unwind out of the blocked call and snapshot between steps.
      if (snap === undefined && (machine!.disk?.usedBytes ?? 0) > 16 * 1024 * 1024 && machine!.requestUnwind()) return true;
      return super.waitForWork(count, deadline);
    }
    betweenSteps(): void {
      if (snap === undefined) snap = machine!.snapshot();
    }
  }
  const inputs: ScheduledInput[] = [
    { atCount: 0, kind: 'open', conn: 1 },
    { atCount: 1000, kind: 'data', conn: 1, data: sql('CREATE TABLE big(id INTEGER PRIMARY KEY, b BLOB); CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)') },
    { atCount: bigAt, kind: 'data', conn: 1, data: sql('INSERT INTO big(b) VALUES(zeroblob(17000000))') },
  ];
  for (let i = 0; i < 6; i++) inputs.push({ atCount: 40_000_000 + i * 2_000_000, kind: 'data', conn: 1, data: sql(`BEGIN; INSERT INTO t(v) VALUES('row ${i}'); COMMIT`) });
  inputs.push({ atCount: 60_000_000, kind: 'data', conn: 1, data: sql('SELECT count(*), sum(length(b)) FROM big; PRAGMA integrity_check') });
  const env = new SnapOnce(inputs, { seed: 5 });
  const entries: LogEntry[] = [];
  const outputs: GuestOutput[] = [];
  machine = new Machine({ instrumented: g.instrumented, compiled: g.compiled, config, sink: collectingSink(entries, outputs), mode: 'record', env });
  env.bind(() => machine!.count);
  assert.equal(machine.run().state, 'stopped');
  const finalHash = machine.logStateHash();
  const r1 = replies(outputs, 1);
  if (process.env.FTVM_TEST_TRACE) console.error(JSON.stringify(r1), snap?.disk?.length, snap?.count);
  assert.match(r1, /\$8\r\n17000000\r\n.*\$2\r\nok\r\n/s, 'the big row is there and the database is sound');
  assert.ok(snap !== undefined, 'a snapshot was taken after the big row');
  assert.ok(snap.disk !== undefined && snap.disk.length > 16 * 1024 * 1024, `the disk is larger than a frame (${snap.disk?.length} bytes)`);
  const { header, chunks } = encodeSnapshot(snap);
  assert.ok(header.length < 64 * 1024, `the header stays small (${header.length} bytes): the disk is not in it`);
  assert.ok(chunks.every((c) => c.length <= DEFAULT_CHUNK_BYTES + 8));
  const memoryChunks = Math.ceil(snap.memory.length / DEFAULT_CHUNK_BYTES);
  assert.ok(chunks.length - memoryChunks >= 16, `the disk went as ${chunks.length - memoryChunks} chunks`);
  const asm = new SnapshotAssembler();
  const h = asm.begin(header);
  assert.equal(h.diskBytes, snap.disk.length);
  for (const i of chunks.map((_, k) => k).reverse()) asm.add(chunks[i]!); // any order
  const copy = asm.finish();
  assert.ok(Buffer.from(copy.disk!).equals(Buffer.from(snap.disk)));
  const rep = replayRun(g, config, entries.slice(copy.seq), copy);
  assert.equal(hex(rep.finalHash), hex(finalHash), 'the clone reaches the same memory and disk');
});

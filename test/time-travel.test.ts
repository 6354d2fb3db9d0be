/**
 * Time travel: `ftvm replay <recording> --to N` stops the replayed machine at instruction N and shows
 * it (state hash, devices, entries around the point, memory); `--step` walks on entry by entry. A
 * backup's continuous recording (`--record <dir>`, rotated segments that start from snapshots) lets a
 * live VM be replayed offline to an instruction where the primary logged its state hash — and the
 * hashes are equal.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { promisify } from 'node:util';
import { RespClient } from '../src/client/resp.js';
import { EntryType } from '../src/log/entry.js';
import { readRecording } from '../src/log/recording.js';
import { listSegments } from '../src/replication/recorder.js';
import { CLI, guestFile, startPair } from '../src/testing/pair.js';
import { stopAll } from '../src/testing/processes.js';

const run = promisify(execFile);
after(() => stopAll());

async function ftvm(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, [CLI, ...args], { maxBuffer: 16 << 20 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

const dir = mkdtempSync(join(tmpdir(), 'ftvm-travel-'));

test('replay --to N: the state at the end equals the recorded final hash; mid-run stops are exact, steppable and dumpable; bad input is refused', async () => {
  const rec = join(dir, 'kv.ftlog');
  const r = await ftvm(['record', guestFile('kv'), '--out', rec, '--ops', '400', '--conns', '4']);
  assert.equal(r.code, 0, r.stderr);
  const parsed = await readRecording(rec);
  const last = parsed.entries[parsed.entries.length - 1]!;
  assert.equal(last.type, EntryType.STATE_HASH);
  const finalHash = Buffer.from((last as { hash: Uint8Array }).hash).toString('hex');

  const end = await ftvm(['replay', rec, '--to', String(last.n)]);
  assert.equal(end.code, 0, end.stderr);
  assert.match(end.stdout, new RegExp(`stopped at instruction ${last.n} \\(idle between steps\\)`));
  assert.match(end.stdout, new RegExp(`state hash\\s+${finalHash}`));
  assert.match(end.stdout, /equal to the state hash the primary logged/);

  // A point in the middle: an output digest's instruction number (an idle point or a checkpoint: the
  // count is exact there).
  const out = parsed.entries.find((e, i) => i > 40 && e.type === EntryType.OUT_DIGEST)!;
  const mid = await ftvm(['replay', rec, '--to', String(out.n), '--step', '--steps', '3', '--dump', '1024:32', '--around', '2']);
  assert.equal(mid.code, 0, mid.stderr);
  assert.match(mid.stdout, new RegExp(`stopped at instruction ${out.n}`));
  assert.match(mid.stdout, /connections\s+\d+:open/);
  assert.match(mid.stdout, /▶ ── the machine stands here/);
  assert.match(mid.stdout, /memory 1024\.\.1055 \(0x400, 32 bytes\):\n {2}00000400 {2}/);
  assert.equal((mid.stdout.match(/^step {2}applied #/gm) ?? []).length, 3, mid.stdout);
  // The same point twice gives the same hash (the stop is deterministic).
  const again = await ftvm(['replay', rec, '--to', String(out.n)]);
  const h = (s: string): string | undefined => /state hash\s+([0-9a-f]{64})/.exec(s)?.[1];
  assert.equal(h(again.stdout), h(mid.stdout));
  assert.notEqual(h(mid.stdout), finalHash);

  const beyond = await ftvm(['replay', rec, '--to', String(last.n + 1)]);
  assert.equal(beyond.code, 2);
  assert.match(beyond.stderr, /FTVM_ERR_BAD_ARGUMENT.*beyond the recording's end/);
  const badDump = await ftvm(['replay', rec, '--to', String(last.n), '--dump', '99999999:16']);
  assert.equal(badDump.code, 2);
  assert.match(badDump.stderr, /outside the guest's/);
  const stepAlone = await ftvm(['replay', rec, '--step']);
  assert.equal(stepAlone.code, 2);
  assert.match(stepAlone.stderr, /go with --to/);
  const corrupt = join(dir, 'corrupt.ftlog');
  const bytes = readFileSync(rec);
  bytes[bytes.length - 3]! ^= 0x55;
  writeFileSync(corrupt, bytes);
  const c = await ftvm(['replay', corrupt, '--to', '0']);
  assert.equal(c.code, 2);
  assert.match(c.stderr, /FTVM_ERR_CORRUPT_RECORDING/);
});

test("a backup's continuous recording rotates into segments that start from snapshots, stays within --record-max-bytes, and replays to the primary's logged hash", async () => {
  const recDir = join(dir, 'backup-rec');
  const maxBytes = 8 * 1024 * 1024;
  const pair = await startPair({ guest: 'kv', backupArgs: ['--record', recDir, '--record-max-bytes', String(maxBytes)] });
  try {
    const c = await RespClient.connect({ port: pair.servicePort, maxInFlight: 32 });
    const value = 'v'.repeat(1024);
    const early = await pair.hashesAgree();
    // 11,000 SETs of 1 KiB overwriting 100 keys: over 11 MiB of log while the guest's memory stays
    // small, so segments rotate and the oldest is pruned.
    const deadline = Date.now() + 90_000;
    for (let round = 0; round < 110 && Date.now() < deadline; round++) {
      const replies = await Promise.all(Array.from({ length: 100 }, (_, i) => c.call('SET', `k${i}`, `${value}${round}`)));
      assert.ok(replies.every((x) => x === 'OK'));
    }
    const late = await pair.hashesAgree();
    await c.close();
    // The backup's status names the segment being written (between two segments, for a moment, none).
    let recording: unknown = null;
    for (let i = 0; i < 100 && typeof recording !== 'string'; i++) {
      recording = (await pair.status('backup')).recording;
      if (typeof recording !== 'string') await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(typeof recording, 'string');
    await pair.stop();

    const segs = listSegments(recDir, 'vm');
    assert.ok(segs.length >= 2, `rotated into segments: ${JSON.stringify(segs)}`);
    assert.ok(!segs.some((s) => s.path.endsWith('vm-00000000000000.ftlog')), `the oldest segment was pruned: ${JSON.stringify(segs)}`);
    const total = segs.reduce((a, s) => a + s.bytes, 0);
    // Old segments are pruned after each rotation; the newest may grow past the half mark until the next.
    assert.ok(total <= maxBytes * 1.5, `segments total ${total} bytes for --record-max-bytes ${maxBytes}`);
    const newest = segs[segs.length - 1]!.path;
    const parsed = await readRecording(newest);
    assert.ok(parsed.snapshot !== undefined, 'a rotated segment starts from a snapshot');
    assert.ok(parsed.snapshot.count <= late.n && parsed.entries[0]!.n >= parsed.snapshot.count);

    const t = await ftvm(['replay', newest, '--to', String(late.n)]);
    assert.equal(t.code, 0, t.stderr);
    assert.match(t.stdout, /the recording starts from a snapshot at instruction \d+/);
    assert.match(t.stdout, new RegExp(`stopped at instruction ${late.n} `));
    assert.match(t.stdout, new RegExp(`state hash\\s+${late.hash}`));
    assert.match(t.stdout, /equal to the state hash the primary logged/);

    // The earliest hash is no longer in the newest segment: asking for it there says so.
    if (parsed.snapshot.count > early.n) {
      const old = await ftvm(['replay', newest, '--to', String(early.n)]);
      assert.equal(old.code, 2);
      assert.match(old.stderr, /before the recording's start/);
    }
    // The whole newest segment replays clean to its end.
    const v = await ftvm(['replay', newest]);
    assert.ok(v.code === 0 || v.code === 3, v.stderr); // 3: it ends without a final hash (the pair was stopped)
    assert.doesNotMatch(v.stderr, /diverge/i);
  } finally {
    await pair.stop().catch(() => undefined);
  }
});

test('replay --to N --disk lists the virtual disk there and --disk-file dumps a file of it (SQLite guest)', async () => {
  const rec = join(dir, 'sqlite.ftlog');
  const r = await ftvm(['record', guestFile('sqlite_server'), '--out', rec, '-w', 'kv', '--ops', '200', '--disk-size', String(8 << 20)]);
  assert.equal(r.code, 0, r.stderr);
  const parsed = await readRecording(rec);
  const last = parsed.entries[parsed.entries.length - 1]!;
  const t = await ftvm(['replay', rec, '--to', String(last.n), '--disk', '--disk-file', '/data/db.sqlite', '--around', '0']);
  assert.equal(t.code, 0, t.stderr);
  assert.match(t.stdout, /^disk\s+\d+ of 8388608 bytes used/m);
  assert.match(t.stdout, /^ {2}file\s+\d+\s+[0-9a-f]{16}\s+\/data\/db\.sqlite$/m);
  assert.match(t.stdout, /\/data\/db\.sqlite \(\d+ bytes[^)]*\):\n {2}00000000 {2}53 51 4c 69 74 65 20 66 {2}6f 72 6d 61 74 20 33 00 {2}\|SQLite format 3\.\|/);
  const missing = await ftvm(['replay', rec, '--to', String(last.n), '--disk-file', '/data/nope']);
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /no file \/data\/nope on the disk/);
  const small = join(dir, 'small-kv.ftlog');
  assert.equal((await ftvm(['record', guestFile('kv'), '--out', small, '--ops', '20', '--conns', '1'])).code, 0);
  const smallLast = (await readRecording(small)).entries.at(-1)!;
  const noDisk = await ftvm(['replay', small, '--to', String(smallLast.n), '--disk']);
  assert.equal(noDisk.code, 2);
  assert.match(noDisk.stderr, /FTVM_ERR_BAD_ARGUMENT.*has no disk/);
});

/** The `ftvm` command as a user runs it: real processes, real files, exit codes and messages. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { ROOT, guestPath } from './helpers.js';

const CLI = join(ROOT, 'dist/src/cli/main.js');
const run = (...args: string[]) => {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
};
const dir = mkdtempSync(join(tmpdir(), 'ftvm-cli-'));

test('record, replay --verify and inspect a kv session', () => {
  const rec = join(dir, 'kv.ftlog');
  const r = run('record', guestPath('kv'), '--out', rec, '--ops', '500', '--conns', '4', '--seed', '3');
  assert.equal(r.code, 0, r.err);
  const hash = /final state hash ([0-9a-f]{64})/.exec(r.out)![1];
  const count = /final instruction number (\d+)/.exec(r.out)![1];
  const v = run('replay', rec, '--verify');
  assert.equal(v.code, 0, v.err);
  assert.match(v.out, new RegExp(`final state hash ${hash}`));
  assert.match(v.out, new RegExp(`final instruction number ${count}`));
  assert.match(v.out, /verify OK/);
  const i = run('inspect', rec, '-n', '3');
  assert.equal(i.code, 0, i.err);
  assert.match(i.out, /format\s+version 3/);
  assert.match(i.out, /guest module\s+sha256 [0-9a-f]{64}/);
  assert.match(i.out, /NIC_OPEN conn=/);
});

test('a recording tampered consistently (checksums fixed) fails replay --verify with the first divergence', async () => {
  const { parseRecording, RecordingWriter } = await import('../src/log/recording.js');
  const { EntryType } = await import('../src/log/entry.js');
  const rec = join(dir, 'kv2.ftlog');
  assert.equal(run('record', guestPath('kv'), '--out', rec, '--ops', '200').code, 0);
  const parsed = parseRecording(readFileSync(rec));
  const idx = parsed.entries.findIndex((e) => e.type === EntryType.NIC_DATA && e.idle);
  parsed.entries[idx]!.n += 1;
  const bad = join(dir, 'kv2-tampered.ftlog');
  const w = await RecordingWriter.create(bad, parsed.module, parsed.config);
  await w.append(parsed.entries);
  await w.close();
  const v = run('replay', bad, '--verify');
  assert.equal(v.code, 1);
  assert.match(v.err, new RegExp(`determinism violation at log entry #${idx}: .*recorded at instruction \\d+, replica at \\d+`));
});

test('a truncated recording stops at its end and says so (exit 3)', () => {
  const rec = join(dir, 'spin.ftlog');
  assert.equal(run('record', guestPath('spin'), '--out', rec, '--workload', 'spin', '--ops', '30').code, 0);
  const buf = readFileSync(rec);
  const cut = join(dir, 'spin-cut.ftlog');
  writeFileSync(cut, buf.subarray(0, buf.length - 20));
  const v = run('replay', cut, '--verify');
  assert.equal(v.code, 3, v.out + v.err);
  assert.match(v.err, /truncated: replay stopped at instruction \d+, at the end of the log, without running ahead/);
});

test('bad input: clear errors with codes, usage for bad flags', () => {
  const notWasm = join(dir, 'x.wasm');
  writeFileSync(notWasm, 'hello');
  let r = run('record', notWasm, '--out', join(dir, 'x.ftlog'));
  assert.equal(r.code, 2);
  assert.match(r.err, /\[FTVM_ERR_NOT_WASM\]/);
  r = run('replay', notWasm);
  assert.equal(r.code, 2);
  assert.match(r.err, /\[FTVM_ERR_CORRUPT_RECORDING\].*bad magic/);
  r = run('replay', join(dir, 'missing.ftlog'));
  assert.equal(r.code, 2);
  assert.match(r.err, /cannot read recording/);
  r = run('record', guestPath('kv'));
  assert.notEqual(r.code, 0);
  assert.match(r.err, /required option '-o, --out <recording>'/);
  r = run('record', guestPath('kv'), '--out', join(dir, 'y.ftlog'), '--ops', 'lots');
  assert.notEqual(r.code, 0);
  assert.match(r.err, /--ops must be an integer/);
  r = run('check', guestPath('kv'));
  assert.equal(r.code, 0);
  assert.match(r.out, /valid ftvm guest/);
  r = run('--help');
  assert.equal(r.code, 0);
  for (const c of ['record', 'replay', 'inspect', 'check', 'demo']) assert.match(r.out, new RegExp(`\\b${c}\\b`));
});

test('the demo runs arbiter + pair + standby, kills the primary mid-load, loses nothing, re-replicates; --offline records and replays', () => {
  const r = spawnSync(process.execPath, [CLI, 'demo', '--ops', '100', '--clients', '4', '--guest', guestPath('kv')], { encoding: 'utf8', timeout: 120_000, cwd: ROOT });
  assert.equal(r.status, 0, r.stdout + r.stderr);
  const hashes = [...r.stdout.matchAll(/state hash at instruction (\d+): ([0-9a-f]{64})/g)].map((m) => `${m[1]}:${m[2]}`);
  assert.equal(hashes.length, 4);
  assert.equal(hashes[0], hashes[1]);
  assert.equal(hashes[2], hashes[3], 'the recruited standby matches the new primary');
  assert.doesNotMatch(r.stdout, /DIFFERENT/);
  assert.match(r.stdout, /redundancy restored/);
  assert.match(r.stdout, /kill -9 the primary/);
  assert.match(r.stdout, /went live/);
  assert.match(r.stdout, /(\d+) of \1 present/);
  assert.match(r.stdout, /NOTHING LOST/);
  assert.match(r.stdout, /through the proxy: 0 client errors, 0 reconnects/);
  const off = spawnSync(process.execPath, [CLI, 'demo', '--offline', '--ops', '50', '--guest', guestPath('kv')], { encoding: 'utf8', timeout: 120_000, cwd: ROOT });
  assert.equal(off.status, 0, off.stderr);
  const oh = [...off.stdout.matchAll(/state hash\s+([0-9a-f]{64})/g)].map((m) => m[1]);
  assert.equal(oh.length, 2);
  assert.equal(oh[0], oh[1]);
});

test('ftvm dashboard: --help, and bad input refused with a code before anything is served', () => {
  const h = run('dashboard', '--help');
  assert.equal(h.code, 0, h.err);
  assert.match(h.out, /--arbiter <url>/);
  assert.match(h.out, /--listen <host:port>.*loopback only/s);
  assert.match(h.out, /announce their --control address at the arbiter/);
  const secret = join(dir, 'dash.secret');
  writeFileSync(secret, 'x'.repeat(32), { mode: 0o600 });
  const cases: Array<[string[], RegExp]> = [
    [['--arbiter', 'http://127.0.0.1:1', '--secret-file', secret], /FTVM_ERR_BAD_ARGUMENT.*scheme http:\/\/ is ambiguous/],
    [['--arbiter', 'ftvm://127.0.0.1:1', '--secret-file', secret, '--listen', '0.0.0.0:7400'], /FTVM_ERR_BAD_ARGUMENT.*loopback only/],
    [['--arbiter', 'ftvm://127.0.0.1:1', '--secret-file', secret, '--listen', '127.0.0.1:99999'], /FTVM_ERR_BAD_ARGUMENT.*--listen/],
    [['--arbiter', 'ftvm://127.0.0.1:1', '--secret-file', secret, '--vm-name', 'no/slashes'], /FTVM_ERR_BAD_ARGUMENT.*--vm-name/],
    [['--arbiter', 'ftvm://127.0.0.1:1', '--secret-file', secret, '--nodes', '127.0.0.1:1,,127.0.0.1:2'], /FTVM_ERR_BAD_ARGUMENT.*--nodes.*empty entry/],
    [['--arbiter', 'ftvm://127.0.0.1:1', '--secret-file', secret, '--nodes', '127.0.0.1:1,127.0.0.1:1'], /FTVM_ERR_BAD_ARGUMENT.*listed twice/],
    [['--arbiter', 'ftvm://127.0.0.1:1', '--secret-file', secret, '--nodes', 'nohost'], /FTVM_ERR_BAD_ARGUMENT.*--nodes/],
    [['--arbiter', 'ftvm://127.0.0.1:1'], /FTVM_ERR_BAD_ARGUMENT.*--secret-file/],
    [['--arbiter', 'ftvm://127.0.0.1:1', '--secret-file', join(dir, 'missing.secret')], /FTVM_ERR_SECRET_UNREADABLE.*cannot read secret file/],
  ];
  for (const [args, re] of cases) {
    const r = run('dashboard', ...args);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.err}`);
    assert.match(r.err, re, args.join(' '));
  }
});

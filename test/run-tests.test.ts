/**
 * The README's test command (`npm test` → dist/scripts/run-tests.js) on a machine that lacks the
 * system components: a user who cannot install them is stopped at once with the exact apt-get line;
 * a partial run (FTVM_TEST_PARTIAL=1) skips the tests that need them and its closing line says how
 * many and why; a full run never lets a missing component pass as a skip.
 *
 * "Missing" is made real by running the runner with a PATH that holds only node (and apt-get), so
 * redis-cli, etcd, clang … are not found; "cannot install" by running it as the unprivileged user
 * `nobody` when the tests run as root (as in CI), where sudo is not reachable either.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { COMPONENTS, allPackages } from '../src/testing/system-deps.js';

const DIST = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const NOBODY = 65534;

const tmp = mkdtempSync(path.join(tmpdir(), 'ftvm-run-tests-'));
chmodSync(tmp, 0o755);
after(() => rmSync(tmp, { recursive: true, force: true }));

// The runner and the list, copied where the unprivileged user can read them (the checkout may sit
// under a directory only root can enter); the copy's root is `tmp`.
const ROOT = tmp;
const RUNNER = path.join(tmp, 'dist', 'scripts', 'run-tests.js');
const SYSTEM_DEPS = path.join(tmp, 'dist', 'src', 'testing', 'system-deps.js');
for (const rel of [['scripts', 'run-tests.js'], ['src', 'testing', 'system-deps.js']]) {
  const to = path.join(tmp, 'dist', ...rel);
  mkdirSync(path.dirname(to), { recursive: true, mode: 0o755 });
  copyFileSync(path.join(DIST, ...rel), to);
  chmodSync(to, 0o644);
}
writeFileSync(path.join(tmp, 'package.json'), '{"type":"module"}\n');

/** A bin directory with node and apt-get only: every component probed by a command is missing on this PATH. */
const bin = path.join(tmp, 'bin');
mkdirSync(bin, { mode: 0o755 });
symlinkSync(process.execPath, path.join(bin, 'node'));
if (existsSync('/usr/bin/apt-get')) symlinkSync('/usr/bin/apt-get', path.join(bin, 'apt-get'));

/** A test file that needs redis-tools (absent on the PATH above), and one that needs nothing. */
const fixture = path.join(tmp, 'fixture.test.mjs');
writeFileSync(
  fixture,
  `import { test } from 'node:test';
import { needs, requireComponents } from ${JSON.stringify(SYSTEM_DEPS)};
test('needs redis-tools', needs('redis-tools'), () => { requireComponents('redis-tools'); });
test('needs nothing', () => {});
`,
);
chmodSync(fixture, 0o644);

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
  elapsedMs: number;
}

function runRunner(args: string[], env: Record<string, string>): Promise<Result> {
  const started = performance.now();
  const asRoot = process.getuid?.() === 0;
  const child = spawn(process.execPath, [RUNNER, ...args], {
    cwd: ROOT,
    env: { PATH: bin, HOME: tmp, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(asRoot ? { uid: NOBODY, gid: NOBODY } : {}),
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  return new Promise((resolve) => {
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, elapsedMs: performance.now() - started });
    });
  });
}

test('a user who cannot install the missing packages is stopped within seconds with the exact apt-get line', async () => {
  const r = await runRunner(['--no-guest-build', fixture], {});
  assert.equal(r.code, 2, `exit code 2 expected\n${r.stdout}\n${r.stderr}`);
  assert.ok(r.elapsedMs < 10_000, `stopped after ${r.elapsedMs.toFixed(0)} ms`);
  // Missing on that PATH: every component probed by a command, and those probed by absolute paths
  // (Debian's rustc is called as /usr/bin/rustc) whose files are absent.
  const missingHere = COMPONENTS.filter((c) => c.probes.some((p) => !p.startsWith('/') || !existsSync(p)));
  const expected = `apt-get install -y --no-install-recommends ${allPackages(missingHere).join(' ')}`;
  if (existsSync('/usr/bin/apt-get')) assert.ok(r.stderr.includes(expected), `the message names "${expected}":\n${r.stderr}`);
  assert.match(r.stderr, /cannot install them \(not root, no passwordless sudo\)/);
  assert.match(r.stderr, /FTVM_TEST_PARTIAL=1 npm test/);
  assert.doesNotMatch(r.stdout, /^tests: /m, 'no test ran');
});

test('a partial run skips the test whose component is missing and its closing line says how many and why', async () => {
  const r = await runRunner(['--no-guest-build', fixture], { FTVM_TEST_PARTIAL: '1' });
  assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
  assert.match(r.stdout, /^tests: 1 passed, 0 failed, 1 skipped$/m);
  assert.match(r.stdout, /skipped \(partial run, FTVM_TEST_PARTIAL\): 1 × missing redis-tools \(apt-get install redis-tools\)/);
});

test('outside the runner, a test whose component is missing fails with the install hint (never a silent skip)', async () => {
  const started = performance.now();
  const child = spawn(process.execPath, ['--test', '--test-reporter=tap', fixture], {
    env: { PATH: bin, HOME: tmp },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const code: number | null = await new Promise((resolve) => child.on('close', resolve));
  assert.notEqual(code, 0);
  assert.match(out, /# fail 1/);
  assert.match(out, /# skip(ped)? 0/);
  assert.match(out, /this test needs redis-tools \(redis-cli, redis-benchmark not found; Debian package redis-tools\)/);
  assert.match(out, /apt-get install -y --no-install-recommends redis-tools/);
  assert.ok(performance.now() - started < 30_000);
});

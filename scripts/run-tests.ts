// The README's test command (`npm test`, after the TypeScript build): make sure the system components
// the suite needs are installed, build the example guests, run every test, print one closing line.
//
//   node dist/scripts/run-tests.js [test files or directories ...]
//
// Components (src/testing/system-deps.ts, the one list) that are missing are installed from Debian's
// archive with apt-get when this runs as root or with passwordless sudo; otherwise it stops at once
// with the exact command to run (exit 2). Nothing is downloaded from anywhere but Debian's archive
// (and the npm registry, by `npm install`, before this runs).
//
// FTVM_TEST_PARTIAL=1: install nothing; tests whose components are missing are skipped, and the
// closing line says how many and why. Without it a missing component fails its tests with the hint.
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  allPackages,
  installCommand,
  isPresent,
  missingComponents,
  partialRun,
  probeOk,
  type Component,
} from '../src/testing/system-deps.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
// The test files run two at a time; the slowest start first, so that the two lanes end together (the
// suite keeps to its ten minutes). Measured on two cores: failover ~4 min, the rest ≤ 80 s each.
const SLOW_FIRST = ['failover', 'failover.etcd', 'jepsen.smoke', 'pair', 'cli', 'readme-walkthrough', 'wasi-pair', 'rereplication', 'security', 'kv-redis', 'linearizability', 'dashboard', 'arbiter'];

/** Every compiled test file, the slowest first (see SLOW_FIRST), then by name. */
function defaultTests(): string[] {
  const dir = path.join('dist', 'test');
  const rank = (f: string): number => {
    const i = SLOW_FIRST.indexOf(f.replace(/\.test\.js$/, ''));
    return i < 0 ? SLOW_FIRST.length : i;
  };
  return readdirSync(path.join(ROOT, dir))
    .filter((f) => f.endsWith('.test.js'))
    .sort((a, b) => rank(a) - rank(b) || a.localeCompare(b))
    .map((f) => path.join(dir, f));
}

/** The whole suite takes about ten minutes; past this it is stopped as hung. */
const RUN_MAX_MS = 40 * 60_000;

function say(line: string): void {
  process.stdout.write(`run-tests: ${line}\n`);
}

function fail(message: string, code = 2): never {
  process.stderr.write(`run-tests: ${message}\n`);
  process.exit(code);
}

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): SpawnSyncReturns<Buffer> {
  return spawnSync(cmd, args, { cwd: ROOT, stdio: 'inherit', env });
}

/** How this process may install Debian packages: as root, through passwordless sudo, or not at all. */
function installer(): { prefix: string[]; asRoot: boolean } | null {
  if (!probeOk('apt-get')) return null;
  if (process.getuid?.() === 0) return { prefix: [], asRoot: true };
  if (probeOk('sudo')) {
    const r = spawnSync('sudo', ['-n', 'true'], { stdio: 'ignore', timeout: 5000 });
    if (r.status === 0) return { prefix: ['sudo', '-n'], asRoot: false };
  }
  return null;
}

function ensureComponents(): void {
  const missing = missingComponents();
  if (missing.length === 0) return;
  const names = missing.map((c) => `${c.id} (${c.purpose})`).join('; ');
  const how = installer();
  if (how === null) {
    const asRoot = process.getuid?.() === 0;
    const hint = probeOk('apt-get')
      ? `Run this once (it needs root), then npm test again:\n\n    ${installCommand(missing, asRoot)}\n`
      : `This is not a Debian-like system (no apt-get): install the equivalents of the Debian packages ${allPackages(missing).join(' ')}, then npm test again.\n`;
    fail(
      `the test suite needs system packages that are not installed, and this user cannot install them (not root, no passwordless sudo): ${names}.\n${hint}` +
        `(Or run a partial suite that skips the tests needing them: FTVM_TEST_PARTIAL=1 npm test)`,
    );
  }
  const pkgs = allPackages(missing);
  say(`installing Debian packages the tests need: ${pkgs.join(' ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const [sudo, ...sudoArgs] = how.prefix;
  const apt = (args: string[]): SpawnSyncReturns<Buffer> =>
    sudo === undefined ? run('apt-get', args, env) : run(sudo, [...sudoArgs, 'apt-get', ...args], env);
  if (apt(['update', '-qq']).status !== 0) fail(`apt-get update failed; run it by hand: ${installCommand(missing, how.asRoot)}`);
  if (apt(['install', '-y', '-qq', '--no-install-recommends', ...pkgs]).status !== 0) {
    fail(`apt-get install failed; run it by hand: ${installCommand(missing, how.asRoot)}`);
  }
  const still = missing.filter((c: Component) => !isPresent(c));
  if (still.length > 0) fail(`installed ${pkgs.join(' ')} but still missing: ${still.map((c) => `${c.id} (${c.probes.join(', ')})`).join('; ')}`);
}

interface TapCounts {
  pass: number;
  fail: number;
  cancelled: number;
  skip: number;
  todo: number;
  skipReasons: Map<string, number>;
}

/** Reads the counts and the skip reasons from the runner's TAP report. */
function readTap(file: string): TapCounts {
  const counts: TapCounts = { pass: 0, fail: 0, cancelled: 0, skip: 0, todo: 0, skipReasons: new Map() };
  let text = '';
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return counts;
  }
  for (const line of text.split('\n')) {
    const total = /^# (pass|fail|cancelled|skipped|skip|todo) (\d+)$/.exec(line);
    if (total !== null) {
      const key = total[1] === 'skipped' ? 'skip' : (total[1] as 'pass' | 'fail' | 'cancelled' | 'skip' | 'todo');
      counts[key] = Number(total[2]);
      continue;
    }
    const skip = /^\s*ok \d+ - .* # SKIP ?(.*)$/.exec(line);
    if (skip !== null) {
      const reason = (skip[1] ?? '').trim() || 'no reason given';
      counts.skipReasons.set(reason, (counts.skipReasons.get(reason) ?? 0) + 1);
    }
  }
  return counts;
}

function main(): void {
  const argv = process.argv.slice(2);
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(
      'usage: npm test [-- [--no-guest-build] test files or directories under dist/]\n' +
        'Installs the Debian packages the tests need when missing (root or passwordless sudo), builds the\n' +
        'example guests, runs the tests. FTVM_TEST_PARTIAL=1 installs nothing and skips tests whose\n' +
        'components are missing, saying so in the closing line.\n',
    );
    return;
  }
  const partial = partialRun();
  if (argv.includes('--preflight')) {
    // Before the TypeScript build (tsconfig.preflight.json compiles only this file and the list): a
    // user who cannot install what is missing is told within seconds, not after the build.
    if (!partial) ensureComponents();
    return;
  }
  if (partial) {
    const missing = missingComponents();
    say(
      missing.length === 0
        ? 'partial run requested (FTVM_TEST_PARTIAL), but every component is installed'
        : `partial run (FTVM_TEST_PARTIAL): not installing ${missing.map((c) => c.id).join(', ')}; the tests that need them are skipped`,
    );
  } else {
    ensureComponents();
  }

  if (!argv.includes('--no-guest-build')) {
    const build = run(process.execPath, [path.join('dist', 'scripts', 'build-guests.js')]);
    if (build.status !== 0) fail(`building the example guests failed (exit ${build.status ?? build.signal})`, 1);
  }

  const tmp = mkdtempSync(path.join(tmpdir(), 'ftvm-tests-'));
  const tapFile = path.join(tmp, 'report.tap');
  const files = argv.filter((a) => a !== '--no-guest-build' && a !== '--preflight');
  const unknown = files.filter((a) => a.startsWith('-'));
  if (unknown.length > 0) fail(`unknown option ${unknown.join(' ')} (see --help)`);
  const tests = files.length > 0 ? files : defaultTests();
  const stdoutReporter = process.stdout.isTTY ? 'spec' : 'tap';
  // No --test-force-exit: on Node 20 it ends the run before the file reporter has written the TAP
  // file this summary is read from. A run that hangs (a leftover handle in a test file) is ended by the
  // watchdog below instead.
  const started = Date.now();
  const r = spawnSync(process.execPath, [
    '--test',
    '--test-concurrency=2',
    '--test-timeout=300000',
    `--test-reporter=${stdoutReporter}`,
    '--test-reporter-destination=stdout',
    '--test-reporter=tap',
    `--test-reporter-destination=${tapFile}`,
    ...tests,
  ], { cwd: ROOT, stdio: 'inherit', env: process.env, timeout: RUN_MAX_MS, killSignal: 'SIGKILL' });
  if (r.error !== undefined && Date.now() - started >= RUN_MAX_MS) {
    fail(`the tests ran for more than ${RUN_MAX_MS / 60_000} minutes and were stopped (a hung test file?); see the output above`, 1);
  }
  const c = readTap(tapFile);
  if (c.pass + c.fail + c.cancelled + c.skip + c.todo === 0 && tests.length > 0) {
    fail(`no test result was read from the TAP report (${tapFile}); the runner exited with ${r.status ?? r.signal}`, 1);
  }
  rmSync(tmp, { recursive: true, force: true });
  const failed = c.fail + c.cancelled;
  const reasons = [...c.skipReasons].map(([why, n]) => `${n} × ${why}`).join('; ');
  process.stdout.write(`\ntests: ${c.pass} passed, ${failed} failed, ${c.skip} skipped\n`);
  if (c.skip > 0) say(`skipped${partial ? ' (partial run, FTVM_TEST_PARTIAL)' : ''}: ${reasons}`);
  if (c.todo > 0) say(`${c.todo} todo`);
  let code = r.status ?? 1;
  if (!partial && c.skip + c.todo > 0) {
    say('a full run skips nothing: a skipped or todo test is work not done (FTVM_TEST_PARTIAL=1 asks for a partial run)');
    code = code === 0 ? 1 : code;
  }
  if (code !== 0 && failed === 0) say(`the test runner exited with ${code ?? r.signal}`);
  process.exit(code);
}

main();

/**
 * The README's "fault-tolerant pair by hand" walkthrough, run as written. The lines between the
 * `# readme-walkthrough:begin` and `# readme-walkthrough:end` markers of README.md are read at test
 * time and pasted, in order and unchanged, into one bash shell with job control on (as in a
 * terminal, so `kill %1` stops a whole job). The shell runs in a scratch directory that looks like
 * the clone after the Quick start (package.json, dist, build and node_modules linked from the
 * repository), so the walkthrough's files (ftvm.secret, arbiter-data) stay out of the clone.
 *
 * Each line is preceded by a marker echo and followed by its exit status, so every line's output can
 * be checked against what the README says it does. Every process the shell started is in its session;
 * they must all have exited when the walkthrough ends (it stops what it starts), and any left are
 * killed by PID.
 */
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { ROOT } from './helpers.js';
import { needs, requireComponents } from '../src/testing/system-deps.js';

const BEGIN = '# readme-walkthrough:begin';
const END = '# readme-walkthrough:end';
/**
 * Each `npx` call costs npm's start-up (seconds on a busy machine): the walkthrough makes about ten
 * (100–200 s in all on a loaded 2-core machine). `npm test` gives a test file 300 s: stop before that,
 * so the processes are cleaned up here.
 */
const RUN_TIMEOUT_MS = 240_000;

/** The walkthrough's lines, from README.md as it is now. */
function walkthroughLines(): string[] {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8').split('\n');
  const b = readme.findIndex((l) => l.trim() === BEGIN);
  const e = readme.findIndex((l) => l.trim() === END);
  assert.ok(b >= 0 && e > b, `README.md must hold the walkthrough between "${BEGIN}" and "${END}"`);
  return readme.slice(b + 1, e).filter((l) => l.trim() !== '' && !l.trim().startsWith('#'));
}

function canBind(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen({ host: '127.0.0.1', port, exclusive: true }, () => s.close(() => resolve(true)));
  });
}

/** PIDs of the live processes in session `sid` (the shell and everything it started). */
function sessionPids(sid: number): number[] {
  const out = execFileSync('ps', ['-e', '-o', 'pid=,sid='], { encoding: 'utf8' });
  return out
    .split('\n')
    .map((l) => l.trim().split(/\s+/).map(Number))
    .filter((f) => f.length === 2 && f[1] === sid && f[0] !== sid)
    .map((f) => f[0]!);
}

function describePids(pids: number[]): string {
  if (pids.length === 0) return '';
  try {
    return execFileSync('ps', ['-o', 'pid=,args=', '-p', pids.join(',')], { encoding: 'utf8' });
  } catch {
    return pids.join(' ');
  }
}

let sessionId = 0;
/** Kills, by PID, the shell and every process still in its session. */
function killSession(): void {
  if (sessionId === 0) return;
  for (const pid of [sessionId, ...sessionPids(sessionId)]) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
}
after(killSession);
// Should the test runner end this file (its timeout), leave nothing behind on the fixed ports.
process.once('SIGTERM', () => {
  killSession();
  process.exit(1);
});

test('the README walkthrough, pasted into one shell, works as the README says', { timeout: RUN_TIMEOUT_MS + 40_000, ...needs('redis-tools') }, async () => {
  requireComponents('redis-tools');
  const lines = walkthroughLines();
  assert.ok(lines.length >= 10, 'the walkthrough has its lines');
  const script = lines.join('\n');
  // Every fixed port the walkthrough uses must be free, or the run would test someone else's server.
  const ports = [...new Set([...script.matchAll(/127\.0\.0\.1:(\d+)/g), ...script.matchAll(/-p (\d+)/g)].map((m) => Number(m[1])))];
  assert.ok(ports.length >= 8, `ports found: ${ports.join(' ')}`);
  for (const port of ports) {
    assert.ok(await canBind(port), `port 127.0.0.1:${port}, which the README walkthrough uses, is taken: stop what listens there and run again`);
  }

  // A scratch directory like the clone after the Quick start.
  const dir = join(ROOT, '.scratch', 'readme-walkthrough');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  for (const f of ['package.json', 'dist', 'build', 'node_modules']) {
    assert.ok(existsSync(join(ROOT, f)), `${f} exists (build first)`);
    symlinkSync(join(ROOT, f), join(dir, f));
  }
  let shell = 'set -m\n';
  lines.forEach((line, i) => {
    shell += `echo "### line ${i}"\n${line}\nrc=$?; echo "### rc ${i} $rc"; [ $rc -eq 0 ] || exit 100\n`;
  });
  shell += 'echo "### done"\n';
  writeFileSync(join(dir, 'walkthrough.sh'), shell);

  const sh = spawn('bash', ['walkthrough.sh'], { cwd: dir, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  assert.ok(sh.pid !== undefined);
  sessionId = sh.pid;
  let stdout = '';
  let stderr = '';
  sh.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  sh.stderr.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-20_000)));
  // The background processes hold the shell's output open: wait for the shell itself to exit.
  const timer = setTimeout(() => {
    try {
      process.kill(sh.pid!, 'SIGKILL');
    } catch {
      /* exited meanwhile */
    }
  }, RUN_TIMEOUT_MS);
  const code = await new Promise<number | null>((resolve) => sh.once('exit', (c) => resolve(c)));
  clearTimeout(timer);
  // The walkthrough stops everything it started: give the last processes a moment to exit.
  const deadline = Date.now() + 15_000;
  let left = sessionPids(sessionId);
  while (left.length > 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 200));
    left = sessionPids(sessionId);
  }
  const leftText = describePids(left);
  await new Promise((r) => setTimeout(r, 200));
  const context = `\n--- stdout ---\n${stdout}\n--- stderr (tail) ---\n${stderr.slice(-6000)}`;

  // The output of each line.
  const outputOf = new Map<number, string>();
  for (const m of stdout.matchAll(/### line (\d+)\n([\s\S]*?)### rc \1 (\d+)\n/g)) {
    assert.equal(m[3], '0', `line ${m[1]} (${lines[Number(m[1])]}) failed with exit status ${m[3]}${context}`);
    outputOf.set(Number(m[1]), m[2]!);
  }
  assert.equal(code, 0, `the walkthrough did not run to its end${context}`);
  assert.match(stdout, /### done/);
  assert.equal(outputOf.size, lines.length, context);
  const out = (pattern: RegExp, nth = 0): string => {
    const idx = lines.map((l, i) => (pattern.test(l) ? i : -1)).filter((i) => i >= 0);
    assert.ok(idx.length > nth, `the walkthrough has a line matching ${pattern}`);
    return outputOf.get(idx[nth]!) ?? '';
  };

  // The primary served with its backup; status names its process.
  const first = out(/status 127\.0\.0\.1:7100 --wait protected/);
  assert.match(first, /^role\s+primary$/m, first);
  assert.match(first, /^pid\s+\d+$/m, first);
  assert.match(first, /^hostId\s+\S+$/m, first);
  assert.match(first, /^startedAt\s+\d{4}-\d\d-\d\dT/m, first);
  assert.match(first, /^backup\s+connected$/m, first);
  assert.equal(out(/SET greeting hello/).trim(), 'OK');
  // After kill -9 of the primary, the backup went live and answers from its own address.
  const live = out(/status 127\.0\.0\.1:7101 --wait serving/);
  assert.match(live, /^role\s+primary$/m, live);
  assert.match(live, /^formerly\s+backup$/m, live);
  assert.equal(out(/-p 6381 GET greeting/, 0).trim(), 'hello');
  // The standby was recruited and cloned: the VM is protected again, nothing lost.
  const again = out(/status 127\.0\.0\.1:7101 --wait protected/);
  assert.match(again, /^backup\s+connected$/m, again);
  assert.match(again, /^lastRereplication\s+.*"standby":"spare1"/m, again);
  assert.equal(out(/-p 6381 GET greeting/, 1).trim(), 'hello');
  assert.match(out(/ftvm stop 127\.0\.0\.1:7101/), /stop requested/);

  assert.deepEqual(left, [], `processes the walkthrough left running:\n${leftText}${context}`);
});

/**
 * Failover benchmark (a script, not a test): `npm run bench:failover`.
 *
 * 1. Failover time. For each of N runs (default 20) a fresh FT pair (kv guest, embedded arbiter, all
 *    defaults: fail timeout 150 ms, heartbeats 20 ms) as real processes on 127.0.0.1. One client does
 *    SET in a closed loop against the primary (light load); after a short while the primary gets
 *    SIGKILL (hrtime taken just before the signal), and one client hammers the backup's service port
 *    (connect + SET, retrying every ~2 ms) until the first OK. Failover time = kill → that OK. Then
 *    every write acknowledged before the kill is read back from the new primary (lost writes must be
 *    0). The backup's JSON log lines ('primary disconnected', 'primary silent…', 'won the arbiter
 *    claim', 'went live…') split the time into: detection (kill → silence declared), drain + claim
 *    (→ claim won), go-live (→ serving), client (→ first OK). The arbiter's claim latency is probed
 *    separately after each run (a few claims on a scratch VM of the same arbiter) to split drain from
 *    claim. Everything is stopped by PID after each run.
 * 2. False failovers. One FT pair running the compute-bound `spin` guest (work sent as `spin N` over a
 *    raw TCP connection and topped up so it never runs dry) with a CPU hog process beside it (a busy
 *    loop, bounded by the soak duration, killed by PID) for BENCH_FAILOVER_SOAK_S seconds (default 60).
 *    Both nodes' /status is polled every 50 ms; a false failover is an incident in which, with nothing
 *    killed, the backup left 'following' (silence declared → drain → claim), went live or halted, or
 *    the primary started claiming, went alone or halted, or either process exited. The log lines of
 *    both nodes are checked too, so an incident between two polls is not missed. After an incident the
 *    broken pair is replaced by a fresh one (bounded) so that the rest of the soak still counts.
 *
 * Progress goes to stderr; a readable summary goes to stdout, and its last line is one JSON object:
 * failover_crash_p50_ms / _p99_ms (kill -9: the backup's liveness probe is refused, evidence),
 * failover_silent_p50_ms / _p99_ms (SIGSTOP: no evidence, the fail timeout), false_failovers,
 * lost_acked_writes, runs,
 * soak_s (and more). p99 of 20 samples is, by nearest rank, their maximum.
 * Environment: BENCH_FAILOVER_RUNS (default 20), BENCH_FAILOVER_SILENT_RUNS (default: as many), BENCH_FAILOVER_SOAK_S (default 60; 0 skips the soak).
 * Exit code 1 when a run fails or an acknowledged write is lost; the goals (crash p99 ≤ 50 ms, silent p99 ≤ 200 ms, 0 false
 * failovers) are reported, not enforced.
 */
import { readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { dirname } from 'node:path';
import { performance } from 'node:perf_hooks';
import { openArbiter } from '../src/arbiter/index.js';
import { readSecret } from '../src/cli/run-cmds.js';
import { RespClient } from '../src/client/resp.js';
import { controlRequest } from '../src/service/control.js';
import { startFtPair, type FtPair } from '../src/testing/pair.js';
import { liveProcesses, spawnNode, stopAll, type OutputMark, type ProcessHandle } from '../src/testing/processes.js';

// ------------------------------------------------------------------ configuration

function envInt(name: string, dflt: number, min: number, max: number): number {
  const raw = process.env[name];
  const v = raw === undefined || raw === '' ? dflt : Number(raw);
  if (!Number.isFinite(v)) return dflt;
  return Math.min(max, Math.max(min, Math.floor(v)));
}

const RUNS = envInt('BENCH_FAILOVER_RUNS', 20, 1, 100);
/** Silent failures (SIGSTOP of the primary): no evidence, the fail timeout decides. */
const SILENT_RUNS = envInt('BENCH_FAILOVER_SILENT_RUNS', RUNS, 0, 100);
const SOAK_S = envInt('BENCH_FAILOVER_SOAK_S', 60, 0, 600);

const HOST = '127.0.0.1';
/** Goals (issue "Failover in tens of milliseconds"): a crashed process, a silent one. */
const GOAL_CRASH_P99_MS = 50;
const GOAL_SILENT_P99_MS = 200;
/** Closed-loop load before the kill: at least this long and this many acknowledged writes. */
const LOAD_MIN_MS = 300;
const LOAD_MIN_ACKS = 30;
const LOAD_MAX_MS = 5000;
const LOAD_MAX_OPS = 100_000;
/** The hammering client: retry interval, and bounds. */
const HAMMER_RETRY_MS = 2;
const HAMMER_DEADLINE_MS = 15_000;
const HAMMER_MAX_ATTEMPTS = 50_000;
/** How long a pair may take to start (each process). */
const PAIR_START_TIMEOUT_MS = 60_000;
/** Arbiter claim probes after each run. */
const CLAIM_PROBES = 3;
/** Soak. */
const POLL_MS = 50;
const SPIN_WORK = 4_000_000_000;
const SPIN_TOPUP_BELOW = 2_000_000_000;
const SPIN_CHECK_MS = 1000;
const INCIDENT_SETTLE_MS = 2000;
const MAX_SOAK_PAIRS = 8;

function log(msg: string): void {
  process.stderr.write(`[bench:failover] ${msg}\n`);
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

class BenchFailure extends Error {}

// ------------------------------------------------------------------ statistics

function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i]!;
}

function sorted(xs: readonly number[]): number[] {
  return xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
}

function median(xs: readonly number[]): number {
  const s = sorted(xs);
  if (s.length === 0) return NaN;
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

const round = (x: number, digits = 1): number | null => (Number.isFinite(x) ? Number(x.toFixed(digits)) : null);
const fmt = (x: number, digits = 1): string => (Number.isFinite(x) ? x.toFixed(digits) : '-');

// ------------------------------------------------------------------ process bookkeeping

/** Every pair this script started and has not stopped yet. */
const pairs = new Set<FtPair>();
const extraProcs = new Set<ProcessHandle>();

async function stopPair(pair: FtPair): Promise<void> {
  try {
    await pair.stop();
  } finally {
    pairs.delete(pair);
    for (const d of [dirname(pair.secretFile), pair.arbiter.dataDir]) rmSync(d, { recursive: true, force: true });
  }
}

async function stopEverything(): Promise<void> {
  for (const p of extraProcs) p.kill('SIGKILL');
  await Promise.allSettled([...pairs].map(stopPair));
  await stopAll(3000);
}

interface LogLine {
  /** Wall clock, ms since the epoch (pino's ISO time: 1 ms resolution). */
  ms: number;
  msg: string;
  fields: Record<string, unknown>;
}

/** The JSON log lines of `proc`'s stderr since `since`. */
function logLines(proc: ProcessHandle, since?: OutputMark): LogLine[] {
  const out: LogLine[] = [];
  const buf = proc.stderr;
  const from = Math.max(since?.stderr ?? 0, buf.total - buf.lines.length);
  for (let i = from; i < buf.total; i++) {
    const raw = buf.line(i);
    if (raw === undefined || !raw.startsWith('{')) continue;
    try {
      const j = JSON.parse(raw) as Record<string, unknown>;
      const ms = typeof j.time === 'string' ? Date.parse(j.time) : typeof j.time === 'number' ? j.time : NaN;
      out.push({ ms, msg: typeof j.msg === 'string' ? j.msg : '', fields: j });
    } catch {
      // not a log line
    }
  }
  return out;
}

const firstLine = (lines: readonly LogLine[], re: RegExp): LogLine | undefined => lines.find((l) => re.test(l.msg));

async function statusOr(auth: Uint8Array, addr: string, timeoutMs = 1000): Promise<Record<string, unknown> | null> {
  try {
    return (await controlRequest(addr, auth, 'GET', '/status', timeoutMs)) as Record<string, unknown>;
  } catch {
    return null;
  }
}

// ------------------------------------------------------------------ 1. failover time

/** crash: kill -9 (its kernel closes its ports: evidence); silent: SIGSTOP (nothing closes: the timeout). */
type FailureKind = 'crash' | 'silent';

interface RunResult {
  run: number;
  kind: FailureKind;
  ok: boolean;
  error?: string;
  failoverMs: number;
  ackedBeforeKill: number;
  indeterminate: number;
  lost: number;
  hammerAttempts: number;
  /** Segments (ms, wall clock from the backup's log lines; ±1 ms). */
  disconnectMs: number;
  detectMs: number;
  drainClaimMs: number;
  goLiveMs: number;
  clientMs: number;
  /** Of clientMs: connected → the first OK (the new primary's first request; the rest is reconnecting). */
  replyMs: number;
  /** The backup's own figure: goLive() − drain start (drain + claim). */
  backupDrainMs: number;
  /** The arbiter's claim latency, probed after the run (median of CLAIM_PROBES). */
  claimProbeMs: number;
  newEpoch: unknown;
  newRole: unknown;
}

/** One client, one connection, SET in a closed loop; `acked` gets every write answered OK. */
function startLoad(port: number, run: number): { acked: Map<string, string>; stop(): void; done: Promise<{ indeterminate: number }> } {
  const acked = new Map<string, string>();
  let stopped = false;
  const done = (async () => {
    let indeterminate = 0;
    const c = await RespClient.connect({ host: HOST, port, connectTimeoutMs: 2000, callTimeoutMs: 5000 });
    try {
      const until = performance.now() + LOAD_MAX_MS + HAMMER_DEADLINE_MS;
      for (let i = 0; !stopped && i < LOAD_MAX_OPS && performance.now() < until; i++) {
        const key = `r${run}:k${i}`;
        const value = `v${i}-${run}`;
        try {
          const r = await c.call('SET', key, value);
          if (r === 'OK') acked.set(key, value);
        } catch {
          indeterminate++; // written, then the connection died (the kill): its outcome is unknown
          break;
        }
      }
    } finally {
      c.close();
    }
    return { indeterminate };
  })();
  return {
    acked,
    stop: () => {
      stopped = true;
    },
    done,
  };
}

/** Connect + SET against `port` until the first OK; resolves with the hrtime of that reply. */
async function hammer(port: number, run: number): Promise<{ at: bigint; wallMs: number; attempts: number; replyMs: number }> {
  const until = performance.now() + HAMMER_DEADLINE_MS;
  for (let attempt = 1; attempt <= HAMMER_MAX_ATTEMPTS && performance.now() < until; attempt++) {
    let c: RespClient | undefined;
    try {
      c = await RespClient.connect({ host: HOST, port, connectTimeoutMs: 200, callTimeoutMs: 5000 });
      const connected = performance.now();
      const r = await c.call('SET', `r${run}:after-failover`, 'yes');
      if (r === 'OK') return { at: process.hrtime.bigint(), wallMs: Date.now(), attempts: attempt, replyMs: performance.now() - connected };
    } catch {
      // refused (not serving yet) or no answer: retry
    } finally {
      c?.close();
    }
    await sleep(HAMMER_RETRY_MS);
  }
  throw new BenchFailure(`no OK from the backup's service port ${port} within ${HAMMER_DEADLINE_MS} ms`);
}

async function probeClaims(pair: FtPair, run: number): Promise<number> {
  const secret = await readSecret(pair.secretFile, true);
  const arb = openArbiter(pair.arbiter.url, secret);
  const times: number[] = [];
  try {
    const vm = `bench-probe-${run}`;
    await arb.init(vm, { epoch: 1, owner: 'bench-probe' }, { deadlineMs: 2000 });
    for (let e = 1; e <= CLAIM_PROBES; e++) {
      const t0 = performance.now();
      const r = await arb.claim(vm, e, `bench-claimant-${e}`, { deadlineMs: 2000 });
      times.push(performance.now() - t0);
      if (!r.won) throw new BenchFailure(`probe claim of epoch ${e} lost (${JSON.stringify(r.record)})`);
    }
  } finally {
    await arb.close();
  }
  return median(times);
}

async function failoverRun(run: number, kind: FailureKind): Promise<RunResult> {
  const res: RunResult = {
    run,
    kind,
    ok: false,
    failoverMs: NaN,
    ackedBeforeKill: 0,
    indeterminate: 0,
    lost: 0,
    hammerAttempts: 0,
    disconnectMs: NaN,
    detectMs: NaN,
    drainClaimMs: NaN,
    goLiveMs: NaN,
    clientMs: NaN,
    replyMs: NaN,
    backupDrainMs: NaN,
    claimProbeMs: NaN,
    newEpoch: undefined,
    newRole: undefined,
  };
  let pair: FtPair;
  try {
    // A loaded machine can take a while to start a pair (the guest is instrumented in a child process).
    pair = await startFtPair({ guest: 'kv', startTimeoutMs: PAIR_START_TIMEOUT_MS });
  } catch (err) {
    res.error = `the pair did not start: ${err instanceof Error ? err.message : String(err)}`;
    log(`run ${run} (${kind}) FAILED: ${res.error}`);
    await stopAll(3000);
    return res;
  }
  pairs.add(pair);
  try {
    const load = startLoad(pair.servicePort, run);
    const loadStart = performance.now();
    while ((performance.now() - loadStart < LOAD_MIN_MS || load.acked.size < LOAD_MIN_ACKS) && performance.now() - loadStart < LOAD_MAX_MS) await sleep(10);
    if (load.acked.size === 0) throw new BenchFailure('the primary acknowledged no write before the kill');

    // The kill.
    const mark = pair.backup.mark();
    load.stop();
    const ackedSnapshot = new Map(load.acked);
    const killWall = Date.now();
    const killAt = process.hrtime.bigint();
    process.kill(pair.primary.pid, kind === 'crash' ? 'SIGKILL' : 'SIGSTOP');
    const ok = await hammer(pair.backupServicePort, run);
    res.failoverMs = Number(ok.at - killAt) / 1e6;
    res.hammerAttempts = ok.attempts;
    res.replyMs = ok.replyMs;

    // Writes answered after the snapshot but before the connection died were acknowledged too.
    const { indeterminate } = await load.done;
    res.indeterminate = indeterminate;
    for (const [k, v] of load.acked) ackedSnapshot.set(k, v);
    res.ackedBeforeKill = ackedSnapshot.size;

    // Every acknowledged write must be readable from the new primary.
    const c = await RespClient.connect({ host: HOST, port: pair.backupServicePort, callTimeoutMs: 10_000 });
    try {
      const entries = [...ackedSnapshot];
      const got = await Promise.all(entries.map(([k]) => c.call('GET', k)));
      entries.forEach(([, v], i) => {
        const g = got[i];
        if (!(Buffer.isBuffer(g) && g.toString('utf8') === v)) res.lost++;
      });
    } finally {
      c.close();
    }
    const st = await statusOr(pair.auth, pair.backupControl);
    res.newRole = st?.role;
    res.newEpoch = st?.epoch;

    // Where the time went, from the backup's log lines.
    await pair.backup.waitForLine(/went live: serving clients/, 2000, { stream: 'stderr', since: mark }).catch(() => undefined);
    const lines = logLines(pair.backup, mark);
    const disc = firstLine(lines, /^primary disconnected/);
    const silent = firstLine(lines, /^primary (silent|gone)/);
    const won = firstLine(lines, /^won the arbiter claim/);
    const live = firstLine(lines, /^went live/);
    res.disconnectMs = disc ? disc.ms - killWall : NaN;
    res.detectMs = silent ? silent.ms - killWall : NaN;
    res.drainClaimMs = silent && won ? won.ms - silent.ms : NaN;
    res.goLiveMs = won && live ? live.ms - won.ms : NaN;
    res.clientMs = live ? ok.wallMs - live.ms : NaN;
    res.backupDrainMs = typeof live?.fields.drainMs === 'number' ? live.fields.drainMs : NaN;
    res.claimProbeMs = await probeClaims(pair, run).catch((err: unknown) => {
      log(`run ${run}: claim probe failed: ${err instanceof Error ? err.message : String(err)}`);
      return NaN;
    });
    res.ok = true;
  } catch (err) {
    res.error = err instanceof Error ? err.message : String(err);
    log(`run ${run} (${kind}) FAILED: ${res.error}${pair.backup.outputTail(8)}`);
  } finally {
    // A stopped primary is let go on, to find itself fenced (and to be stopped by PID).
    if (kind === 'silent') pair.primary.kill('SIGCONT');
    await stopPair(pair);
  }
  return res;
}

// ------------------------------------------------------------------ 2. false failovers (soak)

/** A line-oriented raw TCP client of the spin guest. */
class SpinClient {
  private buf = '';
  private readonly waiters: Array<(line: string | null) => void> = [];
  private closed = false;

  private constructor(private readonly sock: net.Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      this.buf += d;
      for (let nl = this.buf.indexOf('\n'); nl !== -1; nl = this.buf.indexOf('\n')) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        this.waiters.shift()?.(line);
      }
      if (this.buf.length > 65_536) this.buf = '';
    });
    const end = (): void => {
      this.closed = true;
      for (const w of this.waiters.splice(0)) w(null);
    };
    sock.on('close', end);
    sock.on('error', end);
  }

  static connect(port: number): Promise<SpinClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ host: HOST, port });
      const t = setTimeout(() => {
        s.destroy();
        reject(new BenchFailure(`cannot connect to the spin guest on ${port}`));
      }, 5000);
      s.once('connect', () => {
        clearTimeout(t);
        s.removeAllListeners('error');
        resolve(new SpinClient(s));
      });
      s.once('error', (err) => {
        clearTimeout(t);
        reject(err);
      });
    });
  }

  /** Sends one record and waits for its reply line (null: closed or timed out). */
  request(text: string, timeoutMs: number): Promise<string | null> {
    if (this.closed) return Promise.resolve(null);
    return new Promise((resolve) => {
      let settled = false;
      const waiter = (line: string | null): void => {
        if (settled) return;
        settled = true;
        clearTimeout(t);
        resolve(line);
      };
      const t = setTimeout(() => {
        settled = true;
        // The late reply must not be taken for the next request's: give up on this connection.
        this.close();
        resolve(null);
      }, timeoutMs);
      this.waiters.push(waiter);
      this.sock.write(text);
    });
  }

  close(): void {
    this.closed = true;
    this.sock.destroy();
  }
}

interface Incident {
  atS: number;
  events: string[];
  logEvents: string[];
}

interface SoakPairResult {
  observedS: number;
  incident: Incident | null;
  polls: number;
  pollFailures: number;
  pollMaxMs: number;
  lagSamples: number[];
  throttledSamples: number;
  instructionsPerS: number;
  spinDone: number;
  spinRequests: number;
  spinReplyMaxMs: number;
  nearMisses: string[];
}

const INCIDENT_LOG = /^(primary silent|won the arbiter claim|lost the arbiter claim|the backup is gone|primary halted|backup halted|halted|went live)/;
const NEAR_MISS_LOG = /^(primary disconnected|backup disconnected|dropping the|the arbiter is unreachable)/;

/** The soak's clock: it starts once the first pair is up and computing (pair start-up is not soak time). */
interface SoakClock {
  start: number;
  endAt: number;
  begun: boolean;
  onBegin(): void;
}

async function soakPair(index: number, clock: SoakClock): Promise<SoakPairResult> {
  const pair = await startFtPair({ guest: 'spin', startTimeoutMs: PAIR_START_TIMEOUT_MS });
  pairs.add(pair);
  const r: SoakPairResult = {
    observedS: 0,
    incident: null,
    polls: 0,
    pollFailures: 0,
    pollMaxMs: 0,
    lagSamples: [],
    throttledSamples: 0,
    instructionsPerS: NaN,
    spinDone: 0,
    spinRequests: 0,
    spinReplyMaxMs: 0,
    nearMisses: [],
  };
  const markP = pair.primary.mark();
  const markB = pair.backup.mark();
  let stop = false;
  let soakStart = clock.start;
  let t0 = Date.now();
  try {
    const spin = await SpinClient.connect(pair.servicePort);
    if (!clock.begun) {
      // Until the soak begins, endAt holds its duration.
      const durationMs = clock.endAt;
      clock.begun = true;
      clock.start = Date.now();
      clock.endAt = clock.start + durationMs;
      clock.onBegin();
    }
    soakStart = clock.start;
    const endAt = clock.endAt;
    t0 = Date.now();
    log(`soak pair ${index}: spin guest up (primary pid ${pair.primary.pid}, backup pid ${pair.backup.pid}); observing until +${((endAt - soakStart) / 1000).toFixed(0)} s`);

    // The work: keep at least SPIN_TOPUP_BELOW iterations outstanding.
    const driver = (async () => {
      let requested = 0;
      let done = 0;
      for (let i = 0; !stop && i < 100_000 && Date.now() < endAt; i++) {
        if (requested - done < SPIN_TOPUP_BELOW) {
          const t = performance.now();
          const reply = await spin.request(`spin ${SPIN_WORK}\n`, 10_000);
          r.spinReplyMaxMs = Math.max(r.spinReplyMaxMs, performance.now() - t);
          if (reply === null) break;
          if (reply.startsWith('ok')) {
            requested += SPIN_WORK;
            r.spinRequests++;
          }
        }
        await sleep(SPIN_CHECK_MS);
        if (stop) break;
        const t = performance.now();
        const reply = await spin.request('?\n', 10_000);
        r.spinReplyMaxMs = Math.max(r.spinReplyMaxMs, performance.now() - t);
        if (reply === null) break;
        const m = /iter (\d+)/.exec(reply);
        if (m) done = Number(m[1]);
        r.spinDone = done;
      }
    })();

    // The monitor.
    const seen = new Set<string>();
    let firstB: { t: number; n: number } | undefined;
    let lastB: { t: number; n: number } | undefined;
    const monitor = (async () => {
      for (let i = 0; !stop && i < 1_000_000; i++) {
        const now = Date.now();
        if (now >= endAt && r.incident === null) break;
        if (r.incident !== null && now >= soakStart + r.incident.atS * 1000 + INCIDENT_SETTLE_MS) break;
        const tp = performance.now();
        const [p, b] = await Promise.all([statusOr(pair.auth, pair.primaryControl), statusOr(pair.auth, pair.backupControl)]);
        const pollMs = performance.now() - tp;
        r.polls++;
        r.pollMaxMs = Math.max(r.pollMaxMs, pollMs);
        if (!p || !b) r.pollFailures++;
        const events: string[] = [];
        if (p) {
          if (typeof p.lagMs === 'number') r.lagSamples.push(p.lagMs);
          if (p.throttled === true) r.throttledSamples++;
          if (p.claiming === true) events.push('primary claiming');
          if (p.alone === true) events.push('primary went alone');
          if (p.role === 'halted' || (p.halted !== null && p.halted !== undefined)) events.push('primary halted');
        }
        if (b) {
          if (b.role === 'primary') events.push('backup went live');
          else if (b.phase !== 'following') events.push(`backup ${String(b.phase)}`);
          if (b.halted !== null && b.halted !== undefined) events.push('backup halted');
          if (typeof b.instructionNumber === 'number') {
            const s = { t: performance.now(), n: b.instructionNumber };
            firstB ??= s;
            lastB = s;
          }
        }
        if (!pair.primary.running) events.push('primary exited');
        if (!pair.backup.running) events.push('backup exited');
        const fresh = events.filter((e) => !seen.has(e));
        for (const e of fresh) seen.add(e);
        if (fresh.length > 0) {
          const atS = (Date.now() - soakStart) / 1000;
          log(`soak pair ${index}: FALSE FAILOVER transition at +${atS.toFixed(1)} s: ${fresh.join(', ')}`);
          if (r.incident === null) r.incident = { atS, events: [], logEvents: [] };
          r.incident.events.push(...fresh.map((e) => `+${atS.toFixed(2)}s ${e}`));
        }
        await sleep(Math.max(0, POLL_MS - (performance.now() - tp)));
      }
    })();
    await monitor;
    stop = true;
    spin.close();
    await driver;
    r.observedS = Math.max(0, (Math.min(Date.now(), endAt) - t0) / 1000);
    if (firstB && lastB && lastB.t > firstB.t) r.instructionsPerS = ((lastB.n - firstB.n) * 1000) / (lastB.t - firstB.t);
  } finally {
    stop = true;
    // The log lines, read before the pair is stopped (stopping logs lines of its own).
    const timed: Array<{ ms: number; text: string }> = [];
    const near: Array<{ ms: number; text: string }> = [];
    for (const [who, proc, mark] of [
      ['primary', pair.primary, markP],
      ['backup', pair.backup, markB],
    ] as const) {
      for (const l of logLines(proc, mark)) {
        const at = `+${((l.ms - soakStart) / 1000).toFixed(2)}s`;
        const text = `${at} ${who}: ${l.msg}${l.fields.reason !== undefined ? ` (${String(l.fields.reason)})` : ''}`;
        if (INCIDENT_LOG.test(l.msg)) timed.push({ ms: l.ms, text });
        else if (NEAR_MISS_LOG.test(l.msg)) near.push({ ms: l.ms, text });
      }
    }
    const byTime = (a: { ms: number }, b: { ms: number }): number => a.ms - b.ms;
    const logEvents = timed.sort(byTime).map((e) => e.text);
    r.nearMisses = near.sort(byTime).map((e) => e.text);
    if (logEvents.length > 0) {
      const first = /^\+(-?[\d.]+)s/.exec(logEvents[0]!);
      const firstS = first ? Number(first[1]) : NaN;
      if (r.incident === null) {
        r.incident = { atS: firstS, events: ['(seen only in the log lines, between two polls)'], logEvents };
        log(`soak pair ${index}: FALSE FAILOVER in the log lines: ${logEvents.join('; ')}`);
      } else {
        r.incident.logEvents = logEvents;
        if (firstS < r.incident.atS) r.incident.atS = firstS; // the log saw it before the poll did
      }
    }
    // Observed = healthy: up to the incident, if any.
    if (r.incident && Number.isFinite(r.incident.atS)) r.observedS = Math.max(0, Math.min(r.observedS, (soakStart + r.incident.atS * 1000 - t0) / 1000));
    await stopPair(pair);
  }
  return r;
}

interface SoakResult {
  durationS: number;
  observedS: number;
  pairs: SoakPairResult[];
  falseFailovers: number;
  transitions: number;
  hogExit: string;
}

async function soak(durationS: number): Promise<SoakResult> {
  let hog: ProcessHandle | undefined;
  const clock: SoakClock = {
    start: 0,
    endAt: durationS * 1000,
    begun: false,
    onBegin() {
      // The CPU hog: a busy loop on one core, bounded by the soak itself (and killed by PID at the end).
      hog = spawnNode(['-e', `const end = Date.now() + ${durationS * 1000 + 30_000}; let x = 0; while (Date.now() < end) { x = (x * 1103515245 + 12345) | 0; }`], { name: 'cpu-hog' });
      extraProcs.add(hog);
      log(`soak: ${durationS} s from now, spin guest + CPU hog (pid ${hog.pid})`);
    },
  };
  const results: SoakPairResult[] = [];
  let hogExit = 'not started';
  try {
    for (let i = 1; i <= MAX_SOAK_PAIRS && (!clock.begun || Date.now() < clock.endAt - 1000); i++) {
      const r = await soakPair(i, clock);
      results.push(r);
      if (r.incident === null) break; // observed to the end
      if (Date.now() > clock.endAt - 10_000) break; // too little time left for a fresh pair to matter
      log(`soak: replacing the broken pair (${i}) with a fresh one`);
    }
  } finally {
    if (hog) {
      hog.kill('SIGKILL');
      const st = await hog.exited;
      extraProcs.delete(hog);
      hogExit = st.signal ?? `code ${String(st.code)}`;
    }
  }
  if (results.length === 0) log('soak: no pair was observed');
  return {
    durationS,
    observedS: results.reduce((a, r) => a + r.observedS, 0),
    pairs: results,
    falseFailovers: results.filter((r) => r.incident !== null).length,
    transitions: results.reduce((a, r) => a + (r.incident?.events.length ?? 0), 0),
    hogExit,
  };
}

// ------------------------------------------------------------------ main

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]): string => r.map((c, i) => c.padStart(widths[i]!)).join('  ');
  return [line(header), ...rows.map(line)].join('\n');
}

async function main(): Promise<number> {
  const t0 = performance.now();
  log(`${RUNS} kill -9 and ${SILENT_RUNS} SIGSTOP failovers, interleaved (kv guest, defaults), then a ${SOAK_S} s soak (spin guest + CPU hog)`);
  const runs: RunResult[] = [];
  const plan: FailureKind[] = [];
  for (let i = 0; i < Math.max(RUNS, SILENT_RUNS); i++) {
    if (i < RUNS) plan.push('crash');
    if (i < SILENT_RUNS) plan.push('silent');
  }
  for (const [i, kind] of plan.entries()) {
    const r = await failoverRun(i + 1, kind);
    runs.push(r);
    if (r.ok) log(`run ${i + 1}/${plan.length} (${kind}): failover ${r.failoverMs.toFixed(1)} ms (detect ${fmt(r.detectMs, 0)}, drain+claim ${fmt(r.drainClaimMs, 0)}, go-live ${fmt(r.goLiveMs, 0)}, client ${fmt(r.clientMs, 0)}); ${r.ackedBeforeKill} acked writes, ${r.lost} lost`);
  }
  const good = runs.filter((r) => r.ok);
  const goodCrash = good.filter((r) => r.kind === 'crash');
  const ft = sorted(goodCrash.map((r) => r.failoverMs));
  const fs = sorted(good.filter((r) => r.kind === 'silent').map((r) => r.failoverMs));
  const lost = runs.reduce((a, r) => a + r.lost, 0);
  const failoverWall = (performance.now() - t0) / 1000;

  let soakError: string | undefined;
  const soakResult =
    SOAK_S > 0
      ? await soak(SOAK_S).catch((err: unknown) => {
          soakError = err instanceof Error ? err.message : String(err);
          log(`soak FAILED: ${soakError}`);
          return null;
        })
      : null;

  // ---- the readable summary
  console.log(`failover: ${RUNS} × kill -9 (crash: the backup's liveness probe is refused) and ${SILENT_RUNS} × SIGSTOP (silent: the fail timeout) of the primary (kv guest, defaults: fail timeout 150 ms, heartbeat 20 ms); times in ms`);
  console.log('segments from the backup\'s log lines (wall clock, 1 ms resolution): detect = kill → "primary gone" / "primary silent";');
  console.log('drain+claim = → "won the arbiter claim"; go-live = → "went live" (serving); client = → first OK ((reply): connected → that OK); claim = arbiter claim RPC, probed after the run');
  console.log(
    table(
      ['run', 'kind', 'failover', 'tcp close', 'detect', 'drain+claim', '(claim)', 'go-live', 'client', '(reply)', 'attempts', 'acked', 'lost', 'epoch'],
      runs.map((r) =>
        r.ok
          ? [String(r.run), r.kind, fmt(r.failoverMs), fmt(r.disconnectMs, 0), fmt(r.detectMs, 0), fmt(r.drainClaimMs, 0), fmt(r.claimProbeMs), fmt(r.goLiveMs, 0), fmt(r.clientMs, 0), fmt(r.replyMs), String(r.hammerAttempts), String(r.ackedBeforeKill), String(r.lost), String(r.newEpoch)]
          : [String(r.run), r.kind, 'FAILED', '', '', '', '', '', '', '', '', '', '', ''],
      ),
    ),
  );
  for (const kind of ['crash', 'silent'] as const) {
    const rs = good.filter((r) => r.kind === kind);
    if (rs.length === 0) continue;
    const seg = (f: (r: RunResult) => number): string => `${fmt(median(rs.map(f)))} / ${fmt(quantile(sorted(rs.map(f)), 0.99))}`;
    console.log(`${kind}: median / max of segments: detect ${seg((r) => r.detectMs)}, drain+claim ${seg((r) => r.drainClaimMs)} (arbiter claim ${seg((r) => r.claimProbeMs)}), go-live ${seg((r) => r.goLiveMs)}, client ${seg((r) => r.clientMs)} (of it the first reply ${seg((r) => r.replyMs)}), tcp close ${seg((r) => r.disconnectMs)}`);
  }
  const line = (what: string, xs: number[], goal: number): string =>
    `${what}: p50 ${fmt(quantile(xs, 0.5))} ms, p99 ${fmt(quantile(xs, 0.99))} ms, max ${fmt(xs[xs.length - 1] ?? NaN)} ms, min ${fmt(xs[0] ?? NaN)} ms over ${xs.length} run(s) (goal p99 ≤ ${goal} ms: ${quantile(xs, 0.99) <= goal ? 'met' : 'NOT met'})`;
  console.log(line('failover time, process crash (kill -9)', ft, GOAL_CRASH_P99_MS));
  if (SILENT_RUNS > 0) console.log(line('failover time, silent failure (SIGSTOP)', fs, GOAL_SILENT_P99_MS));
  console.log(`lost acknowledged writes: ${lost}; failed runs: ${runs.length - good.length}`);
  if (soakResult) {
    const s = soakResult;
    console.log('');
    console.log(`false failovers: ${s.durationS} s soak, spin guest under continuous work + a CPU hog process, /status of both polled every ${POLL_MS} ms`);
    for (const [i, p] of s.pairs.entries()) {
      const lag = sorted(p.lagSamples);
      console.log(
        `  pair ${i + 1}: observed ${p.observedS.toFixed(1)} s, ${p.polls} polls (${p.pollFailures} failed, slowest ${p.pollMaxMs.toFixed(0)} ms), ` +
          `lag p50/p99/max ${fmt(quantile(lag, 0.5))}/${fmt(quantile(lag, 0.99))}/${fmt(lag[lag.length - 1] ?? NaN)} ms, throttled in ${p.throttledSamples} polls, ` +
          `backup replays ${fmt(p.instructionsPerS / 1e6, 0)} M instruction-count units/s, spin iterations done ${(p.spinDone / 1e9).toFixed(2)} G, slowest spin reply ${p.spinReplyMaxMs.toFixed(0)} ms`,
      );
      if (p.incident) {
        console.log(`    FALSE FAILOVER: ${p.incident.events.join('; ')}`);
        for (const l of p.incident.logEvents) console.log(`      ${l}`);
      }
      if (p.nearMisses.length > 0) console.log(`    near misses (channel/arbiter log lines): ${p.nearMisses.slice(0, 10).join('; ')}${p.nearMisses.length > 10 ? ` … (${p.nearMisses.length})` : ''}`);
    }
    console.log(`  false failovers: ${s.falseFailovers} (transitions ${s.transitions}) in ${s.observedS.toFixed(1)} s observed (goal 0: ${s.falseFailovers === 0 ? 'met' : 'NOT met'}); CPU hog ended by ${s.hogExit}`);
  }
  if (soakError !== undefined) console.log(`false failovers: the soak FAILED: ${soakError}`);
  const summary: Record<string, unknown> = {
    bench: 'failover',
    failover_crash_p50_ms: round(quantile(ft, 0.5)),
    failover_crash_p99_ms: round(quantile(ft, 0.99)),
    failover_crash_max_ms: round(ft[ft.length - 1] ?? NaN),
    failover_silent_p50_ms: round(quantile(fs, 0.5)),
    failover_silent_p99_ms: round(quantile(fs, 0.99)),
    failover_silent_max_ms: round(fs[fs.length - 1] ?? NaN),
    false_failovers: soakResult ? soakResult.falseFailovers : null,
    false_failover_transitions: soakResult ? soakResult.transitions : null,
    lost_acked_writes: lost,
    runs: good.length,
    runs_crash: goodCrash.length,
    runs_failed: runs.length - good.length,
    soak_s: SOAK_S,
    soak_observed_s: soakResult ? round(soakResult.observedS) : 0,
    ...(soakError !== undefined ? { soak_error: soakError } : {}),
    crash_detect_ms_p50: round(median(goodCrash.map((r) => r.detectMs))),
    crash_drain_claim_ms_p50: round(median(goodCrash.map((r) => r.drainClaimMs))),
    arbiter_claim_ms_p50: round(median(good.map((r) => r.claimProbeMs))),
    crash_go_live_ms_p50: round(median(goodCrash.map((r) => r.goLiveMs))),
    crash_client_ms_p50: round(median(goodCrash.map((r) => r.clientMs))),
    crash_first_reply_ms_p50: round(median(goodCrash.map((r) => r.replyMs))),
    crash_tcp_close_ms_p50: round(median(goodCrash.map((r) => r.disconnectMs))),
    acked_writes_checked: good.reduce((a, r) => a + r.ackedBeforeKill, 0),
    goals: {
      failover_crash_p99_ms_max: GOAL_CRASH_P99_MS,
      failover_silent_p99_ms_max: GOAL_SILENT_P99_MS,
      false_failovers_max: 0,
      crash_p99_met: quantile(ft, 0.99) <= GOAL_CRASH_P99_MS,
      silent_p99_met: SILENT_RUNS > 0 ? quantile(fs, 0.99) <= GOAL_SILENT_P99_MS : null,
      false_failovers_met: soakResult ? soakResult.falseFailovers === 0 : null,
    },
    failover_wall_s: round(failoverWall),
    wall_s: round((performance.now() - t0) / 1000),
  };
  console.log(JSON.stringify(summary));
  return lost > 0 || good.length < runs.length || soakError !== undefined ? 1 : 0;
}

let interrupted = false;
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    if (interrupted) return;
    interrupted = true;
    log(`${sig}: stopping every process this script started`);
    void stopEverything().finally(() => process.exit(130));
  });
}

main().then(
  async (code) => {
    await stopEverything();
    if (liveProcesses().length > 0) log(`warning: ${liveProcesses().length} process(es) still running`);
    process.exit(code);
  },
  async (err: unknown) => {
    process.stderr.write(`bench:failover FAILED: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    await stopEverything();
    process.exit(1);
  },
);

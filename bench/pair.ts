/**
 * Pair benchmark (a script, not a test): `npm run bench:pair`.
 *
 * The kv guest under the same closed-loop client load with FT off (one VMM, no backup, outputs released
 * at once) and FT on (a primary and a backup, outputs held until the backup's ACK), as real `ftvm run`
 * processes on loopback, measured in one run:
 *
 * - Both setups run side by side for the whole run; only the one being measured gets load. Phases are
 *   interleaved (off c1, on c1, off c8, on c8, off c50, on c50, then again in the order on/off), so that
 *   both see the same conditions on a shared, noisy machine.
 * - A phase: N connections (N = 1, 8, 50), each closed-loop (one command, wait for the reply, the next;
 *   no pipelining), 50/50 SET/GET of ~16-char keys from a keyspace of 10,000 with 16-byte values; a
 *   warm-up, then a measured window; bounded by a time limit and an operation count.
 * - Throughput ratio FT on ÷ FT off per concurrency: the median over the repetitions of the ratio of
 *   each repetition's adjacent FT-off and FT-on phases (robust to a noisy neighbour that comes and goes;
 *   the pooled ratio, all operations over all measured time, is reported too); p50/p99 latency of both
 *   (all measured samples of the repetitions pooled, and per repetition).
 * - Execution lag: the FT-on primary's /status `lagMs` sampled every ~20 ms during the FT-on phases:
 *   p99 and max; `throttled` samples counted. The FT-off and plain phases sample their primary's
 *   /status the same way (values discarded), so that every setup carries the observer's cost.
 * - Logging bytes per request byte: the FT-on primary's `logBytesSent` delta over each FT-on phase ÷ the
 *   RESP request bytes the bench clients sent in that phase (the whole phase, warm-up included, and the
 *   connection opens/closes it causes).
 * - After the FT-on phases the primary logs a state hash and the backup must verify the same one;
 *   otherwise the script exits 1.
 *
 * - Encryption's cost: a second FT-on pair runs with `--insecure-channel` (plain TCP instead of TLS-PSK)
 *   beside the others and is measured in the same interleaved phases ("plain"); FT on (TLS) ÷ FT on
 *   (plain) per concurrency is reported as `tls_ratio_c<N>` (median of per-repetition ratios).
 *
 * - `--guest c-server|rust-server|sqlite`: the same measurement for that guest too (the unmodified WASI
 *   programs of guests/, SET/GET over RESP; SQLite's SET is an upsert transaction on its database file on
 *   each replica's own disk image), after the kv guest's, and a table of the FT on ÷ off ratios of both
 *   side by side (the TLS ÷ plain comparison, which measures the channel, runs for the kv guest only).
 *   The JSON line is then `{ guests: { kv: {...}, <guest>: {...} }, ratios: {...} }`.
 *
 * - `--mode checkpoint` (issue #17): a third setup beside FT off and replay FT on, a checkpoint-mode pair
 *   (`ftvm run --mode checkpoint`, primary and backup, outputs held until the backup acknowledges their
 *   checkpoint), measured in the same interleaved phases (off, on, ckpt, then ckpt, on, off). For it: the
 *   throughput ratio to FT off (median of per-repetition ratios), p50/p99 latency, channel bytes per request
 *   byte (CHECKPOINT data sent ÷ RESP request bytes), the guest's pause per checkpoint (p50/p99 over every
 *   checkpoint of its phases, from the primary's `GET /checkpoint/pauses/<n>`), the I/O thread's encode
 *   time per checkpoint, checkpoints per second and checkpoint bytes per second (over its phases). The
 *   plain and proxy setups are off by default in this mode (BENCH_PAIR_SETUPS still chooses).
 *   BENCH_PAIR_CKPT_INTERVAL_MS (default 20) is the pair's --checkpoint-interval-ms;
 *   BENCH_PAIR_DIRTY_TRACKING=<a,b> runs one checkpoint pair per dirty-page tracker (`--dirty-tracking`,
 *   setups `ckpt-<a>`, `ckpt-<b>`), all interleaved in the same phases. A quick run:
 *   `BENCH_PAIR_QUICK=1` (1 repetition, conns 1 and 8, 500 ms warm-up + 2 s measured: about a minute).
 *
 * Progress goes to stderr; a table, then the last line of stdout is one JSON object.
 * Environment: BENCH_PAIR_WARMUP_MS (default 750), BENCH_PAIR_MEASURE_MS (default 3000),
 * BENCH_PAIR_REPS (default 3), BENCH_PAIR_MAX_OPS (per phase, default 1,000,000),
 * BENCH_PAIR_CONNS (default "1,8,50"), BENCH_PAIR_RATE (offered ops/s instead of a closed loop), BENCH_PAIR_REDIS=1 (also run redis-benchmark against both
 * setups, when installed; informational only), BENCH_PAIR_CPU_PROF=<dir> (run every server with
 * `node --cpu-prof` writing its profiles, vCPU workers included, into <dir>; summarise them with
 * `node dist/scripts/cpuprofile-summary.js <dir>`), BENCH_PAIR_SETUPS (default "off,on,plain,proxy": which
 * setups get load; "proxy" is the FT-on pair reached through `ftvm proxy`, docs/PROXY.md, reported as
 * proxy ÷ direct beside the FT-on rows).
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { median, processCpuMs, quantile, rng, round, sortedCopy } from './stats.js';
import { RespClient, RespError, encodeCommand } from '../src/client/resp.js';
import { controlRequest } from '../src/service/control.js';
import { freePort, spawnNode, waitForPort, type ProcessHandle } from '../src/testing/processes.js';

// ------------------------------------------------------------------ setup

const HERE = dirname(fileURLToPath(import.meta.url));
/** dist/bench/pair.js → repository root (also works from bench/ with a TS loader). */
const ROOT = HERE.endsWith(join('dist', 'bench')) ? join(HERE, '..', '..') : join(HERE, '..');
const CLI = join(ROOT, 'dist', 'src', 'cli', 'main.js');
/** The guests the bench can drive: the module, and whether each replica needs a disk image. */
const BENCH_GUESTS = {
  kv: { module: 'kv', disk: false },
  'c-server': { module: 'c_server', disk: false },
  'rust-server': { module: 'rust_server', disk: false },
  sqlite: { module: 'sqlite_server', disk: true },
} as const;
type BenchGuest = keyof typeof BENCH_GUESTS;

function guestArg(argv: string[]): BenchGuest {
  const i = argv.indexOf('--guest');
  if (i < 0) return 'kv';
  const v = argv[i + 1];
  if (v === undefined || !Object.hasOwn(BENCH_GUESTS, v)) {
    process.stderr.write(`bench:pair: --guest is one of ${Object.keys(BENCH_GUESTS).join(', ')}, not ${String(v)}\n`);
    process.exit(2);
  }
  return v as BenchGuest;
}
const EXTRA_GUEST = guestArg(process.argv.slice(2));

function modeArg(argv: string[]): 'replay' | 'checkpoint' {
  const i = argv.indexOf('--mode');
  if (i < 0) return 'replay';
  const v = argv[i + 1];
  if (v !== 'replay' && v !== 'checkpoint') {
    process.stderr.write(`bench:pair: --mode is replay or checkpoint, not ${String(v)}\n`);
    process.exit(2);
  }
  return v;
}
/** `--mode checkpoint`: a checkpoint-mode pair is measured beside FT off and replay FT on. */
const MODE = modeArg(process.argv.slice(2));
const QUICK = process.env.BENCH_PAIR_QUICK === '1';
/** Module file of the guest being measured (set per guest by main). */
let GUEST = join(ROOT, 'build', 'guests', 'kv.wasm');
/** Per-process extra flags (a disk image each) for the guest being measured. */
let guestArgs: (name: string) => string[] = () => [];
let startTimeoutMs = 30_000;
/** Whether the TLS ÷ plain comparison runs (the kv guest only: it measures the channel, not the guest). */
let withPlain = true;
const HOST = '127.0.0.1';

function envInt(name: string, dflt: number, min: number, max: number): number {
  const raw = process.env[name];
  const v = raw === undefined || raw === '' ? dflt : Number(raw);
  if (!Number.isFinite(v)) return dflt;
  return Math.min(max, Math.max(min, Math.floor(v)));
}

const WARMUP_MS = envInt('BENCH_PAIR_WARMUP_MS', QUICK ? 500 : 750, 0, 10_000);
const MEASURE_MS = envInt('BENCH_PAIR_MEASURE_MS', QUICK ? 2000 : 3000, 200, 30_000);
const REPS = envInt('BENCH_PAIR_REPS', QUICK ? 1 : 3, 1, 5);
const MAX_OPS = envInt('BENCH_PAIR_MAX_OPS', 1_000_000, 100, 100_000_000);
const CONNS = (process.env.BENCH_PAIR_CONNS ?? (QUICK ? '1,8' : '1,8,50'))
  .split(',')
  .map((s) => Number(s.trim()))
  .filter((n) => Number.isInteger(n) && n >= 1 && n <= 500);
const REDIS = process.env.BENCH_PAIR_REDIS === '1';
const CPU_PROF_DIR = process.env.BENCH_PAIR_CPU_PROF ?? '';
/** Node flags for the servers: CPU profiles on request. */
const NODE_FLAGS = CPU_PROF_DIR === '' ? [] : ['--cpu-prof', `--cpu-prof-dir=${CPU_PROF_DIR}`];
/**
 * A/B: BENCH_PAIR_BASELINE=<root of another build> runs the third pair ("plain") from that build's
 * dist/ with TLS, instead of this build with --insecure-channel: the "tls÷plain" table then compares
 * this build's FT-on pair with the baseline's, measured in the same interleaved phases.
 */
const BASELINE_ROOT = process.env.BENCH_PAIR_BASELINE ?? '';
const PLAIN_CLI = BASELINE_ROOT === '' ? CLI : join(BASELINE_ROOT, 'dist', 'src', 'cli', 'main.js');
const PLAIN_FLAGS = BASELINE_ROOT === '' ? ['--insecure-channel'] : [];
/**
 * BENCH_PAIR_RATE=<ops/s>: an offered load instead of a closed loop (each connection paced to its share
 * of the rate; it never sends a second command before the reply). At a rate every setup sustains, CPU
 * per operation compares builds without the noise of a shared machine's throughput.
 */
const RATE = envInt('BENCH_PAIR_RATE', 0, 0, 1_000_000);
/** Checkpoint mode: the dirty-page trackers to run a checkpoint pair with ('' = the node's default). */
const CKPT_TRACKERS = MODE !== 'checkpoint' ? [] : (process.env.BENCH_PAIR_DIRTY_TRACKING ?? '').split(',').map((s) => s.trim()).filter((s, i, a) => a.indexOf(s) === i && (s !== '' || a.length === 1));
const ckptSetup = (tracker: string): CkptSetup => (tracker === '' ? 'ckpt' : `ckpt-${tracker}`);
const CKPT_SETUPS = CKPT_TRACKERS.map(ckptSetup);
const CKPT_INTERVAL_MS = envInt('BENCH_PAIR_CKPT_INTERVAL_MS', 20, 1, 60_000);
const SETUPS = (process.env.BENCH_PAIR_SETUPS ?? (MODE === 'checkpoint' ? ['off', 'on', ...CKPT_SETUPS].join(',') : 'off,on,plain,proxy')).split(',').map((s) => s.trim());
/** 'proxy': the FT-on pair's clients go through `ftvm proxy` (docs/PROXY.md) in front of its --proxy-listen. */
const withProxy = SETUPS.includes('proxy');

const KEYSPACE = 10_000;
const VALUE_BYTES = 16;
const SET_FRACTION = 0.5;
const LAG_SAMPLE_MS = 20;
const CALL_TIMEOUT_MS = 10_000;

const GOAL_RATIO = 0.95;
const GOAL_LAG_P99_MS = 20;
const GOAL_LOG_PER_REQUEST_BYTE = 1.3;

function log(msg: string): void {
  process.stderr.write(`[bench:pair] ${msg}\n`);
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

class BenchFailure extends Error {}

// ------------------------------------------------------------------ statistics



/** A growable buffer of latency samples (ms). */
class Samples {
  private buf = new Float64Array(1 << 14);
  length = 0;
  push(x: number): void {
    if (this.length === this.buf.length) {
      const b = new Float64Array(this.buf.length * 2);
      b.set(this.buf);
      this.buf = b;
    }
    this.buf[this.length++] = x;
  }
  append(o: Samples): void {
    for (let i = 0; i < o.length; i++) this.push(o.buf[i]!);
  }
  sorted(): Float64Array {
    const a = this.buf.slice(0, this.length);
    a.sort();
    return a;
  }
}

// ------------------------------------------------------------------ workload

const KEYS: string[] = Array.from({ length: KEYSPACE }, (_, i) => `key:${String(i).padStart(12, '0')}`); // 16 chars
const VALUES: Buffer[] = Array.from({ length: 256 }, () => Buffer.from(randomBytes(VALUE_BYTES).toString('base64').slice(0, VALUE_BYTES), 'latin1'));
const SET_BYTES = encodeCommand(['SET', KEYS[0]!, VALUES[0]!]).length;
const GET_BYTES = encodeCommand(['GET', KEYS[0]!]).length;

interface PhaseResult {
  setup: Setup;
  conns: number;
  rep: number;
  /** Operations completed in the measured window. */
  ops: number;
  measuredMs: number;
  opsPerSec: number;
  latency: Samples;
  /** RESP request bytes sent in the whole phase (warm-up included). */
  requestBytes: number;
  /** Every operation of the phase (warm-up included). */
  totalOps: number;
  errors: string[];
  /** CPU time (ms) over the whole phase: the measured setup's processes, and this bench process (the clients). */
  cpuMs: { primary: number; backup: number; bench: number; proxy?: number };
}

/**
 * One phase against `port`: `conns` closed-loop connections; a warm-up of WARMUP_MS, then a measured
 * window of MEASURE_MS, bounded by MAX_OPS operations in all.
 */
type CkptSetup = 'ckpt' | `ckpt-${string}`;
type Setup = 'off' | 'on' | 'plain' | 'proxy' | CkptSetup;
const isCkpt = (s: Setup): s is CkptSetup => s === 'ckpt' || s.startsWith('ckpt-');

async function runPhase(setup: Setup, port: number, conns: number, rep: number): Promise<PhaseResult> {
  const clients = await Promise.all(
    Array.from({ length: conns }, () => RespClient.connect({ host: HOST, port, callTimeoutMs: CALL_TIMEOUT_MS, maxInFlight: 1 })),
  );
  const latency = new Samples();
  const errors: string[] = [];
  let requestBytes = 0;
  let totalOps = 0;
  let measuredOps = 0;
  const start = performance.now();
  const measureFrom = start + WARMUP_MS;
  const end = measureFrom + MEASURE_MS;
  let stop = false;
  const loop = async (c: RespClient, idx: number): Promise<void> => {
    // The same command sequence for FT off and FT on.
    const rand = rng(0x5eed + idx * 7919 + rep * 104729);
    const intervalMs = RATE > 0 ? (conns * 1000) / RATE : 0;
    let due = start + (intervalMs * idx) / conns;
    while (!stop && totalOps < MAX_OPS) {
      const key = KEYS[Math.floor(rand() * KEYSPACE)]!;
      const isSet = rand() < SET_FRACTION;
      if (intervalMs > 0) {
        due += intervalMs;
        const wait = due - performance.now();
        if (wait > 0) await sleep(wait);
      }
      const t0 = performance.now();
      if (t0 >= end) break;
      let reply;
      try {
        if (isSet) {
          requestBytes += SET_BYTES;
          reply = await c.call('SET', key, VALUES[Math.floor(rand() * VALUES.length)]!);
        } else {
          requestBytes += GET_BYTES;
          reply = await c.call('GET', key);
        }
      } catch (err) {
        errors.push(`${setup} c${conns}: ${(err as Error).message}`);
        stop = true;
        return;
      }
      const t1 = performance.now();
      totalOps++;
      if (reply instanceof RespError || (isSet && reply !== 'OK')) {
        errors.push(`${setup} c${conns}: unexpected reply ${reply instanceof RespError ? reply.message : String(reply)}`);
        stop = true;
        return;
      }
      if (t0 >= measureFrom && t1 <= end) {
        measuredOps++;
        latency.push(t1 - t0);
      }
    }
  };
  await Promise.all(clients.map((c, i) => loop(c, i)));
  const finished = performance.now();
  await Promise.all(clients.map((c) => c.close()));
  // The window ends at `end` unless the op bound or an error ended it earlier.
  const measuredMs = Math.max(1, Math.min(end, finished) - measureFrom);
  return {
    setup,
    conns,
    rep,
    ops: measuredOps,
    measuredMs,
    opsPerSec: (measuredOps * 1000) / measuredMs,
    latency,
    requestBytes,
    totalOps,
    errors,
    cpuMs: { primary: NaN, backup: NaN, bench: NaN },
  };
}

// ------------------------------------------------------------------ CPU accounting


function selfCpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

// ------------------------------------------------------------------ the servers

interface Status {
  lagMs: number;
  logBytesSent: number;
  entries: number;
  ackedEntries: number;
  throttled: boolean;
  outputsHeld: number;
  backupDiverged?: string | null;
}

let authSecret: Uint8Array = new Uint8Array(0);
const AUTH = (): Uint8Array => authSecret;

async function status(ctl: string): Promise<Status> {
  return (await controlRequest(ctl, AUTH(), 'GET', '/status', 3000)) as Status;
}

interface Servers {
  offPrimary: ProcessHandle;
  onPrimary: ProcessHandle;
  backup: ProcessHandle;
  plainPrimary: ProcessHandle | undefined;
  plainBackup: ProcessHandle | undefined;
  proxy: ProcessHandle | undefined;
  proxyPort: number;
  offPort: number;
  onPort: number;
  plainPort: number;
  offCtl: string;
  onCtl: string;
  plainCtl: string;
  backupCtl: string;
  /** Checkpoint mode: one checkpoint pair per tracker, by setup name. */
  ckpt: Map<CkptSetup, CkptPair>;
}

interface CkptPair {
  primary: ProcessHandle;
  backup: ProcessHandle;
  port: number;
  ctl: string;
}

const started: ProcessHandle[] = [];

async function startServers(secretFile: string): Promise<Servers> {
  const ports: number[] = [];
  // One at a time, and distinct: a port freed a moment ago may be handed out again.
  for (let i = 0; ports.length < 11 && i < 100; i++) {
    const p = await freePort();
    if (!ports.includes(p)) ports.push(p);
  }
  if (ports.length < 11) throw new BenchFailure('could not find 11 free ports on 127.0.0.1');
  const [offPort, offCtlPort, onPort, onCtlPort, chanPort, backupCtlPort, plainPort, plainCtlPort, plainChanPort, proxyPort, proxyListenPort] = ports as [number, number, number, number, number, number, number, number, number, number, number];
  const plainCtl = `${HOST}:${plainCtlPort}`;
  const offCtl = `${HOST}:${offCtlPort}`;
  const onCtl = `${HOST}:${onCtlPort}`;
  const backupCtl = `${HOST}:${backupCtlPort}`;
  const env = { FTVM_LOG_LEVEL: process.env.FTVM_LOG_LEVEL ?? 'info' };

  const backup = spawnNode([...NODE_FLAGS, CLI, 'run', GUEST, '--role', 'backup', '--channel', `${HOST}:${chanPort}`, '--control', backupCtl, '--secret-file', secretFile, ...guestArgs('backup')], { name: 'backup', env });
  started.push(backup);
  const plainBackup = !withPlain ? undefined : spawnNode([...NODE_FLAGS, PLAIN_CLI, 'run', GUEST, '--role', 'backup', '--channel', `${HOST}:${plainChanPort}`, '--secret-file', secretFile, ...PLAIN_FLAGS, ...guestArgs('backup-plain')], { name: 'backup-plain', env });
  if (plainBackup) started.push(plainBackup);
  await backup.waitForLine(/backup is waiting for the primary/, startTimeoutMs, { stream: 'stderr' });
  await plainBackup?.waitForLine(/backup is waiting for the primary/, startTimeoutMs, { stream: 'stderr' });

  const onPrimary = spawnNode(
    [...NODE_FLAGS, CLI, 'run', GUEST, '--role', 'primary', '--service', `${HOST}:${onPort}`, '--peer', `${HOST}:${chanPort}`, '--control', onCtl, '--secret-file', secretFile, ...(withProxy ? ['--proxy-listen', `${HOST}:${proxyListenPort}`] : []), ...guestArgs('primary')],
    { name: 'primary-ft-on', env },
  );
  started.push(onPrimary);
  const plainPrimary = !withPlain ? undefined : spawnNode(
    [...NODE_FLAGS, PLAIN_CLI, 'run', GUEST, '--role', 'primary', '--service', `${HOST}:${plainPort}`, '--peer', `${HOST}:${plainChanPort}`, '--control', plainCtl, '--secret-file', secretFile, ...PLAIN_FLAGS, ...guestArgs('primary-plain')],
    { name: 'primary-ft-on-plain', env },
  );
  if (plainPrimary) started.push(plainPrimary);
  const offPrimary = spawnNode([...NODE_FLAGS, CLI, 'run', GUEST, '--role', 'primary', '--service', `${HOST}:${offPort}`, '--control', offCtl, '--secret-file', secretFile, ...guestArgs('primary-off')], { name: 'primary-ft-off', env });
  started.push(offPrimary);

  await Promise.all([
    onPrimary.waitForLine(/primary is serving/, startTimeoutMs, { stream: 'stderr' }),
    plainPrimary?.waitForLine(/primary is serving/, startTimeoutMs, { stream: 'stderr' }),
    offPrimary.waitForLine(/primary is serving/, startTimeoutMs, { stream: 'stderr' }),
  ]);
  await Promise.all([waitForPort(onPort, 10_000), withPlain ? waitForPort(plainPort, 10_000) : undefined, waitForPort(offPort, 10_000)]);
  let proxy: ProcessHandle | undefined;
  if (withProxy) {
    proxy = spawnNode([...NODE_FLAGS, CLI, 'proxy', '--listen', `${HOST}:${proxyPort}`, '--replicas', `${HOST}:${proxyListenPort}`, '--secret-file', secretFile], { name: 'proxy', env });
    started.push(proxy);
    await proxy.waitForLine(/proxy session open/, startTimeoutMs, { stream: 'stderr' });
    await waitForPort(proxyPort, 10_000);
  }
  const ckpt = new Map<CkptSetup, CkptPair>();
  for (const tracker of CKPT_TRACKERS) ckpt.set(ckptSetup(tracker), await startCkptPair(secretFile, tracker, env));
  return { offPrimary, onPrimary, backup, plainPrimary, plainBackup, proxy, proxyPort, offPort, onPort, plainPort, offCtl, onCtl, plainCtl, backupCtl, ckpt };
}

/** A checkpoint-mode pair (`ftvm run --mode checkpoint`): backup first, then the primary with --control. */
async function startCkptPair(secretFile: string, tracker: string, env: Record<string, string>): Promise<CkptPair> {
  const ports: number[] = [];
  for (let i = 0; ports.length < 4 && i < 100; i++) {
    const p = await freePort();
    if (!ports.includes(p)) ports.push(p);
  }
  if (ports.length < 4) throw new BenchFailure('could not find 4 free ports on 127.0.0.1');
  const [port, ctlPort, chanPort, backupSvcPort] = ports as [number, number, number, number];
  const name = ckptSetup(tracker);
  const common = ['--mode', 'checkpoint', '--checkpoint-interval-ms', String(CKPT_INTERVAL_MS), '--secret-file', secretFile, ...(tracker !== '' ? ['--dirty-tracking', tracker] : [])];
  const backup = spawnNode([...NODE_FLAGS, CLI, 'run', GUEST, '--role', 'backup', '--channel', `${HOST}:${chanPort}`, '--service', `${HOST}:${backupSvcPort}`, ...common, ...guestArgs(`${name}-backup`)], { name: `${name}-backup`, env });
  started.push(backup);
  await backup.waitForLine(/checkpoint backup: listening/, startTimeoutMs, { stream: 'stderr' });
  const ctl = `${HOST}:${ctlPort}`;
  const primary = spawnNode([...NODE_FLAGS, CLI, 'run', GUEST, '--role', 'primary', '--service', `${HOST}:${port}`, '--peer', `${HOST}:${chanPort}`, '--control', ctl, ...common, ...guestArgs(`${name}-primary`)], { name: `${name}-primary`, env });
  started.push(primary);
  await primary.waitForLine(/primary is serving/, startTimeoutMs, { stream: 'stderr' });
  await waitForPort(port, 10_000);
  return { primary, backup, port, ctl };
}

interface CkptStatus {
  role: string;
  /** The primary's checkpoint state (src/checkpoint/run.ts status()). */
  checkpoint?: { heldOutputs: number; inFlight: number; ackedCheckpoint: number };
  checkpoints: { captured: number; bytesCaptured: number; bytesSent: number; dirtyPages: number };
}

async function ckptStatus(ctl: string): Promise<CkptStatus> {
  return (await controlRequest(ctl, AUTH(), 'GET', '/status', 3000)) as CkptStatus;
}

/** Waits (bounded) until the checkpoint primary holds no output and every checkpoint it took is acknowledged. */
async function quiesceCkpt(ctl: string, timeoutMs = 5000): Promise<CkptStatus> {
  const deadline = performance.now() + timeoutMs;
  let s = await ckptStatus(ctl);
  while (performance.now() < deadline) {
    if (s.role === 'primary' && s.checkpoint !== undefined && s.checkpoint.heldOutputs === 0 && s.checkpoint.inFlight === 0) return s;
    await sleep(20);
    s = await ckptStatus(ctl);
  }
  return s;
}

async function stopStarted(): Promise<void> {
  await Promise.all(started.splice(0).map((p) => p.stop(3000).catch(() => undefined)));
}

/** Waits (bounded) until the FT-on primary holds no unacknowledged entries or outputs. */
async function quiesce(ctl: string, timeoutMs = 5000): Promise<Status> {
  const deadline = performance.now() + timeoutMs;
  let s = await status(ctl);
  while (performance.now() < deadline) {
    if (s.entries === s.ackedEntries && s.outputsHeld === 0) {
      // Once more after a beat: connection closes may still be on their way into the guest.
      await sleep(50);
      const t = await status(ctl);
      if (t.entries === s.entries && t.entries === t.ackedEntries && t.outputsHeld === 0) return t;
      s = t;
      continue;
    }
    await sleep(20);
    s = await status(ctl);
  }
  return s;
}

// ------------------------------------------------------------------ lag sampler

interface LagSamples {
  lag: number[];
  throttledSamples: number;
  samples: number;
  failures: number;
}

/** Samples /status every LAG_SAMPLE_MS until `stop()`; sequential requests, so never more than one in flight. */
function startLagSampler(ctl: string): { stop: () => Promise<LagSamples> } {
  const out: LagSamples = { lag: [], throttledSamples: 0, samples: 0, failures: 0 };
  let running = true;
  const done = (async () => {
    // Bounded: a phase is at most WARMUP_MS + MEASURE_MS + connection time.
    const deadline = performance.now() + WARMUP_MS + MEASURE_MS + 60_000;
    while (running && performance.now() < deadline) {
      const t0 = performance.now();
      try {
        const s = await status(ctl);
        out.samples++;
        out.lag.push(s.lagMs);
        if (s.throttled) out.throttledSamples++;
      } catch {
        out.failures++;
      }
      const wait = LAG_SAMPLE_MS - (performance.now() - t0);
      if (wait > 0) await sleep(wait);
    }
  })();
  return {
    stop: async () => {
      running = false;
      await done;
      return out;
    },
  };
}

// ------------------------------------------------------------------ state hashes

async function checkStateHashes(s: Servers): Promise<{ n: number; hash: string }> {
  const p = (await controlRequest(s.onCtl, AUTH(), 'POST', '/state-hash', 15_000)) as { n: number; hash: string };
  const deadline = performance.now() + 15_000;
  let last: unknown = null;
  while (performance.now() < deadline) {
    last = await controlRequest(s.backupCtl, AUTH(), 'GET', '/state-hash', 3000).catch(() => null);
    const b = last as { n?: number; hash?: string } | null;
    if (b && b.n === p.n) {
      if (b.hash === p.hash) return p;
      throw new BenchFailure(`state hashes differ at instruction ${p.n}: primary ${p.hash}, backup ${String(b.hash)}`);
    }
    await sleep(50);
  }
  throw new BenchFailure(`the backup did not verify the primary's state hash at instruction ${p.n} within 15 s (last: ${JSON.stringify(last)})`);
}

// ------------------------------------------------------------------ redis-benchmark (optional)

function redisBenchmark(port: number, conns: number): { set: number; get: number } | null {
  const r = spawnSync('redis-benchmark', ['-h', HOST, '-p', String(port), '-c', String(conns), '-n', String(Math.max(2000, conns * 400)), '-t', 'set,get', '-r', String(KEYSPACE), '-d', String(VALUE_BYTES), '--csv', '-q'], {
    encoding: 'utf8',
    timeout: 30_000,
  });
  if (r.error || r.status !== 0) return null;
  const out = { set: NaN, get: NaN };
  for (const line of r.stdout.split('\n')) {
    const m = /^"(SET|GET)","([\d.]+)"/.exec(line);
    if (m) out[m[1] === 'SET' ? 'set' : 'get'] = Number(m[2]);
  }
  return out;
}

// ------------------------------------------------------------------ main

async function main(): Promise<void> {
  if (CONNS.length === 0) throw new BenchFailure('BENCH_PAIR_CONNS lists no valid connection count');
  const dir = mkdtempSync(join(tmpdir(), 'ftvm-bench-pair-'));
  const secretFile = join(dir, 'secret');
  authSecret = randomBytes(32);
  writeFileSync(secretFile, authSecret, { mode: 0o600 });
  try {
    const guests: BenchGuest[] = EXTRA_GUEST === 'kv' ? ['kv'] : ['kv', EXTRA_GUEST];
    const summaries: Partial<Record<BenchGuest, Record<string, unknown>>> = {};
    for (const g of guests) {
      const spec = BENCH_GUESTS[g];
      GUEST = join(ROOT, 'build', 'guests', `${spec.module}.wasm`);
      guestArgs = spec.disk ? (name) => ['--disk', join(dir, `${g}-${name}.img`), '--disk-size', String(64 << 20)] : () => [];
      startTimeoutMs = spec.disk ? 180_000 : 90_000;
      withPlain = g === 'kv' && SETUPS.includes('plain');
      summaries[g] = await measure(g, secretFile);
      await stopStarted();
    }
    if (guests.length === 1) {
      console.log(JSON.stringify(summaries.kv));
      return;
    }
    const ratios: Record<string, Record<string, unknown>> = {};
    console.log('');
    console.log('FT on ÷ FT off throughput (median of per-repetition ratios), by guest');
    const header = ['guest', ...CONNS.map((c) => `c${c}`)];
    console.log(header.map((h) => h.padStart(12)).join(''));
    for (const g of guests) {
      const sm = summaries[g]!;
      ratios[g] = Object.fromEntries(CONNS.map((c) => [`ft_ratio_c${c}`, sm[`ft_ratio_c${c}`]]));
      console.log([g, ...CONNS.map((c) => String(sm[`ft_ratio_c${c}`]))].map((x) => x.padStart(12)).join(''));
    }
    console.log(JSON.stringify({ guests: summaries, ratios }));
  } finally {
    await stopStarted();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The whole measurement of one guest: prints its tables, returns its summary. */
async function measure(guest: BenchGuest, secretFile: string): Promise<Record<string, unknown>> {
  const t0 = performance.now();
  {
    log(`starting an FT-off primary and an FT-on pair (${guest} guest); phases: warm-up ${WARMUP_MS} ms + ${MEASURE_MS} ms measured, ${REPS} rep(s), conns ${CONNS.join('/')}`);
    const servers = await startServers(secretFile);
    log(`up in ${((performance.now() - t0) / 1000).toFixed(1)} s: FT off on :${servers.offPort}, FT on on :${servers.onPort}`);
    // One call on each before any phase: a WASI guest may still be starting its service (SQLite opens
    // its database and creates its table on the first commands), which is not what the phases measure.
    for (const port of [servers.offPort, servers.onPort, ...(withPlain ? [servers.plainPort] : []), ...(withProxy ? [servers.proxyPort] : []), ...[...servers.ckpt.values()].map((c) => c.port)]) {
      const c = await RespClient.connect({ host: HOST, port, callTimeoutMs: 120_000 });
      try {
        await c.call('SET', KEYS[0]!, VALUES[0]!);
      } finally {
        c.close();
      }
    }

    const results: PhaseResult[] = [];
    const lagAll: number[] = [];
    const lagByConns = new Map<number, number[]>();
    let throttledSamples = 0;
    let lagSamples = 0;
    let lagFailures = 0;
    const logBytesByConns = new Map<number, { logBytes: number; requestBytes: number; ops: number; entries: number }>();
    /** Checkpoint setups: every checkpoint of their phases (warm-up and quiescing included). */
    const ckptAcc = new Map<CkptSetup, { pauseMs: number[]; encodeMs: number[]; lost: number; checkpoints: number; bytesCaptured: number; bytesSent: number; dirtyPages: number; requestBytes: number; wallMs: number }>();

    for (let rep = 0; rep < REPS; rep++) {
      for (const conns of CONNS) {
        const forward: Setup[] = ['off', 'on', ...CKPT_SETUPS, 'proxy', 'plain'];
        const order: Setup[] = (rep % 2 === 0 ? forward : forward.reverse()).filter((x) => (withPlain || x !== 'plain') && (withProxy || x !== 'proxy'));
        for (const setup of order) {
          if (!SETUPS.includes(setup)) continue;
          let r: PhaseResult;
          const ck = isCkpt(setup) ? servers.ckpt.get(setup) : undefined;
          const pids = ck !== undefined ? [ck.primary.pid, ck.backup.pid] : setup === 'off' ? [servers.offPrimary.pid] : setup === 'plain' ? [servers.plainPrimary!.pid, servers.plainBackup!.pid] : setup === 'proxy' ? [servers.onPrimary.pid, servers.backup.pid, servers.proxy!.pid] : [servers.onPrimary.pid, servers.backup.pid];
          const cpu0 = pids.map(processCpuMs);
          const self0 = selfCpuMs();
          if (setup === 'off') {
            // Sampled like FT on (and discarded), so that the observer's cost is the same on both sides.
            const sampler = startLagSampler(servers.offCtl);
            try {
              r = await runPhase('off', servers.offPort, conns, rep);
            } finally {
              await sampler.stop();
            }
          } else if (ck !== undefined) {
            const before = await quiesceCkpt(ck.ctl);
            const tBefore = performance.now();
            // Sampled like the others (values discarded): the observer's cost is the same for every setup.
            const sampler = startLagSampler(ck.ctl);
            try {
              r = await runPhase(setup, ck.port, conns, rep);
            } finally {
              await sampler.stop();
            }
            const after = await quiesceCkpt(ck.ctl);
            const wallMs = performance.now() - tBefore;
            const samples = (await controlRequest(ck.ctl, AUTH(), 'GET', `/checkpoint/pauses/${before.checkpoints.captured}`, 5000)) as { captured: number; lost: number; pauseMs: number[]; encodeMs: number[] };
            const acc = ckptAcc.get(setup as CkptSetup) ?? { pauseMs: [], encodeMs: [], lost: 0, checkpoints: 0, bytesCaptured: 0, bytesSent: 0, dirtyPages: 0, requestBytes: 0, wallMs: 0 };
            acc.pauseMs.push(...samples.pauseMs);
            acc.encodeMs.push(...samples.encodeMs);
            acc.lost += samples.lost;
            acc.checkpoints += after.checkpoints.captured - before.checkpoints.captured;
            acc.bytesCaptured += after.checkpoints.bytesCaptured - before.checkpoints.bytesCaptured;
            acc.bytesSent += after.checkpoints.bytesSent - before.checkpoints.bytesSent;
            acc.dirtyPages += after.checkpoints.dirtyPages - before.checkpoints.dirtyPages;
            acc.requestBytes += r.requestBytes;
            acc.wallMs += wallMs;
            ckptAcc.set(setup as CkptSetup, acc);
          } else if (setup === 'proxy') {
            await quiesce(servers.onCtl);
            const sampler = startLagSampler(servers.onCtl);
            try {
              r = await runPhase('proxy', servers.proxyPort, conns, rep);
            } finally {
              await sampler.stop();
            }
          } else if (setup === 'plain') {
            await quiesce(servers.plainCtl);
            const sampler = startLagSampler(servers.plainCtl);
            try {
              r = await runPhase('plain', servers.plainPort, conns, rep);
            } finally {
              await sampler.stop();
            }
          } else {
            const before = await quiesce(servers.onCtl);
            const sampler = startLagSampler(servers.onCtl);
            try {
              r = await runPhase('on', servers.onPort, conns, rep);
            } finally {
              const ls = await sampler.stop();
              lagAll.push(...ls.lag);
              const arr = lagByConns.get(conns) ?? [];
              arr.push(...ls.lag);
              lagByConns.set(conns, arr);
              throttledSamples += ls.throttledSamples;
              lagSamples += ls.samples;
              lagFailures += ls.failures;
            }
            const after = await quiesce(servers.onCtl);
            const acc = logBytesByConns.get(conns) ?? { logBytes: 0, requestBytes: 0, ops: 0, entries: 0 };
            acc.logBytes += after.logBytesSent - before.logBytesSent;
            acc.entries += after.entries - before.entries;
            acc.requestBytes += r.requestBytes;
            acc.ops += r.totalOps;
            logBytesByConns.set(conns, acc);
            if (after.backupDiverged) throw new BenchFailure(`the backup diverged: ${after.backupDiverged}`);
          }
          const cpu1 = pids.map(processCpuMs);
          r.cpuMs = { primary: cpu1[0]! - cpu0[0]!, backup: pids.length > 1 ? cpu1[1]! - cpu0[1]! : 0, bench: selfCpuMs() - self0, ...(pids.length > 2 ? { proxy: cpu1[2]! - cpu0[2]! } : {}) };
          results.push(r);
          const s = r.latency.sorted();
          log(
            `rep ${rep + 1} FT ${setup.padEnd(5)} c${String(conns).padEnd(3)} ${r.opsPerSec.toFixed(0).padStart(7)} ops/s  p50 ${quantile(s, 0.5).toFixed(3)} ms  p99 ${quantile(s, 0.99).toFixed(3)} ms  (${r.ops} ops measured)`,
          );
          if (r.errors.length > 0) throw new BenchFailure(`client errors in FT ${setup} c${conns}: ${r.errors.slice(0, 3).join('; ')}`);
          if (r.ops === 0) throw new BenchFailure(`no operation completed in the measured window of FT ${setup} c${conns}`);
        }
      }
    }

    log('checking that the primary and the backup reach the same state hash');
    const hash = await checkStateHashes(servers);
    log(`state hashes agree at instruction ${hash.n}: ${hash.hash.slice(0, 16)}…`);

    let redis: Record<string, unknown> | undefined;
    if (REDIS) {
      redis = {};
      for (const conns of CONNS) {
        const off = redisBenchmark(servers.offPort, conns);
        const on = redisBenchmark(servers.onPort, conns);
        redis[`c${conns}`] = { off, on };
        log(`redis-benchmark c${conns}: off ${JSON.stringify(off)} on ${JSON.stringify(on)}`);
      }
    }

    // ---------------------------------------------------------------- summary
    const summary: Record<string, unknown> = {};
    const rows: string[][] = [];
    const perConns: Record<string, unknown> = {};
    const tlsRows: string[][] = [];
    const ckptRows: string[][] = [];
    const proxyRows: string[][] = [];
    for (const conns of CONNS) {
      const agg = (setup: Setup) => {
        const rs = results.filter((r) => r.setup === setup && r.conns === conns);
        const lat = new Samples();
        for (const r of rs) lat.append(r.latency);
        const s = lat.sorted();
        const ops = rs.reduce((a, r) => a + r.ops, 0);
        const ms = rs.reduce((a, r) => a + r.measuredMs, 0);
        const allOps = rs.reduce((a, r) => a + r.totalOps, 0);
        const cpu = (k: 'primary' | 'backup' | 'bench'): number => round((rs.reduce((a, r) => a + r.cpuMs[k], 0) * 1000) / allOps, 1);
        return {
          opsPerSec: (ops * 1000) / ms,
          p50: quantile(s, 0.5),
          p99: quantile(s, 0.99),
          perRep: rs.map((r) => round(r.opsPerSec, 0)),
          perRepP50: rs.map((r) => round(quantile(r.latency.sorted(), 0.5))),
          perRepP99: rs.map((r) => round(quantile(r.latency.sorted(), 0.99))),
          cpuUsPerOp: { primary: cpu('primary'), backup: cpu('backup'), bench: cpu('bench') },
        };
      };
      const off = agg('off');
      const on = agg('on');
      const pooledRatio = on.opsPerSec / off.opsPerSec;
      const perRepRatios = off.perRep.map((o, i) => round((on.perRep[i] ?? NaN) / o, 3));
      const ratio = median(perRepRatios);
      const plain = agg('plain');
      if (withPlain) {
      const tlsPerRep = plain.perRep.map((p, i) => round((on.perRep[i] ?? NaN) / p, 3));
      summary[`tls_ratio_c${conns}`] = round(median(tlsPerRep), 3);
      summary[`tls_ratio_pooled_c${conns}`] = round(on.opsPerSec / plain.opsPerSec, 3);
      summary[`plain_ops_per_sec_c${conns}`] = round(plain.opsPerSec, 0);
      summary[`plain_latency_p50_ms_c${conns}`] = round(plain.p50);
      summary[`plain_latency_p99_ms_c${conns}`] = round(plain.p99);
      tlsRows.push([`c${conns}`, plain.opsPerSec.toFixed(0), on.opsPerSec.toFixed(0), median(tlsPerRep).toFixed(3), (on.opsPerSec / plain.opsPerSec).toFixed(3), plain.p50.toFixed(3), on.p50.toFixed(3), plain.p99.toFixed(3), on.p99.toFixed(3)]);
      }
      if (withProxy) {
        const px = agg('proxy');
        const pxPerRep = on.perRep.map((d, i) => round((px.perRep[i] ?? NaN) / d, 3));
        const pxRs = results.filter((r) => r.setup === 'proxy' && r.conns === conns);
        const proxyCpu = round((pxRs.reduce((a, r) => a + (r.cpuMs.proxy ?? 0), 0) * 1000) / pxRs.reduce((a, r) => a + r.totalOps, 0), 1);
        summary[`proxy_ratio_c${conns}`] = round(median(pxPerRep), 3);
        summary[`proxy_ops_per_sec_c${conns}`] = round(px.opsPerSec, 0);
        summary[`proxy_latency_p50_ms_c${conns}`] = round(px.p50);
        summary[`proxy_latency_p99_ms_c${conns}`] = round(px.p99);
        summary[`proxy_cpu_us_per_op_c${conns}`] = proxyCpu;
        proxyRows.push([`c${conns}`, on.opsPerSec.toFixed(0), px.opsPerSec.toFixed(0), median(pxPerRep).toFixed(3), on.p50.toFixed(3), px.p50.toFixed(3), on.p99.toFixed(3), px.p99.toFixed(3), proxyCpu.toFixed(1)]);
      }
      for (const cs of CKPT_SETUPS) {
        const ckA = agg(cs);
        const key = cs.replace(/-/g, '_');
        const perRep = off.perRep.map((o, i) => round((ckA.perRep[i] ?? NaN) / o, 3));
        summary[`${key}_ratio_c${conns}`] = round(median(perRep), 3);
        summary[`${key}_ratio_pooled_c${conns}`] = round(ckA.opsPerSec / off.opsPerSec, 3);
        summary[`${key}_ratio_to_replay_c${conns}`] = round(ckA.opsPerSec / on.opsPerSec, 3);
        summary[`${key}_ops_per_sec_c${conns}`] = round(ckA.opsPerSec, 0);
        summary[`${key}_latency_p50_ms_c${conns}`] = round(ckA.p50);
        summary[`${key}_latency_p99_ms_c${conns}`] = round(ckA.p99);
        ckptRows.push([cs, `c${conns}`, off.opsPerSec.toFixed(0), on.opsPerSec.toFixed(0), ckA.opsPerSec.toFixed(0), median(perRep).toFixed(3), (ckA.opsPerSec / on.opsPerSec).toFixed(3), off.p50.toFixed(3), on.p50.toFixed(3), ckA.p50.toFixed(3), off.p99.toFixed(3), on.p99.toFixed(3), ckA.p99.toFixed(3)]);
      }
      const lagS = sortedCopy(lagByConns.get(conns) ?? []);
      const lb = logBytesByConns.get(conns);
      summary[`ft_ratio_c${conns}`] = round(ratio, 3);
      summary[`ft_ratio_pooled_c${conns}`] = round(pooledRatio, 3);
      summary[`latency_p50_ms_c${conns}`] = round(on.p50);
      summary[`latency_p99_ms_c${conns}`] = round(on.p99);
      summary[`off_latency_p50_ms_c${conns}`] = round(off.p50);
      summary[`off_latency_p99_ms_c${conns}`] = round(off.p99);
      summary[`off_ops_per_sec_c${conns}`] = round(off.opsPerSec, 0);
      summary[`on_ops_per_sec_c${conns}`] = round(on.opsPerSec, 0);
      perConns[`c${conns}`] = {
        off_ops_per_sec_per_rep: off.perRep,
        on_ops_per_sec_per_rep: on.perRep,
        ratio_per_rep: perRepRatios,
        off_p50_ms_per_rep: off.perRepP50,
        on_p50_ms_per_rep: on.perRepP50,
        off_p99_ms_per_rep: off.perRepP99,
        on_p99_ms_per_rep: on.perRepP99,
        cpu_us_per_op_off: { primary: off.cpuUsPerOp.primary, bench_clients: off.cpuUsPerOp.bench },
        cpu_us_per_op_on: { primary: on.cpuUsPerOp.primary, backup: on.cpuUsPerOp.backup, bench_clients: on.cpuUsPerOp.bench },
        cpu_us_per_op_plain: { primary: plain.cpuUsPerOp.primary, backup: plain.cpuUsPerOp.backup, bench_clients: plain.cpuUsPerOp.bench },
        lag_p99_ms: round(quantile(lagS, 0.99)),
        lag_max_ms: round(lagS.length ? lagS[lagS.length - 1]! : NaN),
        log_bytes_per_request_byte: lb ? round(lb.logBytes / lb.requestBytes) : null,
        log_bytes_per_op: lb ? round(lb.logBytes / lb.ops, 1) : null,
        log_entries_per_op: lb ? round(lb.entries / lb.ops, 2) : null,
      };
      rows.push([
        `c${conns}`,
        off.opsPerSec.toFixed(0),
        on.opsPerSec.toFixed(0),
        ratio.toFixed(3),
        pooledRatio.toFixed(3),
        off.p50.toFixed(3),
        on.p50.toFixed(3),
        off.p99.toFixed(3),
        on.p99.toFixed(3),
        quantile(lagS, 0.99).toFixed(1),
        lb ? (lb.logBytes / lb.requestBytes).toFixed(3) : '-',
      ]);
    }
    const lagSorted = sortedCopy(lagAll);
    let logBytes = 0;
    let requestBytes = 0;
    let ftOnOps = 0;
    let entries = 0;
    for (const v of logBytesByConns.values()) {
      logBytes += v.logBytes;
      requestBytes += v.requestBytes;
      ftOnOps += v.ops;
      entries += v.entries;
    }
    summary.lag_p99_ms = round(quantile(lagSorted, 0.99));
    summary.lag_p50_ms = round(quantile(lagSorted, 0.5));
    summary.lag_max_ms = round(lagSorted.length ? lagSorted[lagSorted.length - 1]! : NaN);
    summary.lag_samples = lagSamples;
    summary.lag_sample_failures = lagFailures;
    summary.throttled_samples = throttledSamples;
    summary.log_bytes_per_request_byte = round(logBytes / requestBytes);
    summary.log_bytes_per_op = round(logBytes / ftOnOps, 1);
    summary.log_entries_per_op = round(entries / ftOnOps, 2);
    summary.request_bytes_per_op = round(requestBytes / ftOnOps, 1);
    summary.ft_on_log_bytes = logBytes;
    summary.ft_on_request_bytes = requestBytes;
    const ckptLines: string[] = [];
    for (const cs of CKPT_SETUPS) {
      const a = ckptAcc.get(cs);
      if (a === undefined) continue;
      const key = cs.replace(/-/g, '_');
      const ps = sortedCopy(a.pauseMs);
      const es = sortedCopy(a.encodeMs);
      summary[`${key}_channel_bytes_per_request_byte`] = round(a.bytesSent / a.requestBytes);
      summary[`${key}_pause_p50_ms`] = round(quantile(ps, 0.5));
      summary[`${key}_pause_p99_ms`] = round(quantile(ps, 0.99));
      summary[`${key}_pause_max_ms`] = round(ps.length ? ps[ps.length - 1]! : NaN);
      summary[`${key}_encode_p50_ms`] = round(quantile(es, 0.5));
      summary[`${key}_encode_p99_ms`] = round(quantile(es, 0.99));
      summary[`${key}_checkpoints_per_sec`] = round((a.checkpoints * 1000) / a.wallMs, 1);
      summary[`${key}_bytes_per_sec`] = round((a.bytesCaptured * 1000) / a.wallMs, 0);
      summary[`${key}_sent_bytes_per_sec`] = round((a.bytesSent * 1000) / a.wallMs, 0);
      summary[`${key}_dirty_pages_per_checkpoint`] = round(a.dirtyPages / Math.max(1, a.checkpoints), 1);
      summary[`${key}_pause_samples`] = ps.length;
      summary[`${key}_pause_samples_lost`] = a.lost;
      ckptLines.push(
        `${cs}: pause per checkpoint p50 ${summary[`${key}_pause_p50_ms`]} ms, p99 ${summary[`${key}_pause_p99_ms`]} ms (max ${summary[`${key}_pause_max_ms`]}; ${ps.length} checkpoints${a.lost > 0 ? `, ${a.lost} samples lost` : ''}); encode p50 ${summary[`${key}_encode_p50_ms`]} ms, p99 ${summary[`${key}_encode_p99_ms`]} ms; ${summary[`${key}_checkpoints_per_sec`]} checkpoints/s, ${summary[`${key}_bytes_per_sec`]} B/s, ${summary[`${key}_dirty_pages_per_checkpoint`]} dirty pages/checkpoint; channel ${summary[`${key}_channel_bytes_per_request_byte`]} B per request B`,
      );
    }
    summary.state_hash_ok = true;
    summary.state_hash_n = hash.n;
    summary.per_concurrency = perConns;
    summary.goals = {
      ft_ratio_min: GOAL_RATIO,
      lag_p99_ms_max: GOAL_LAG_P99_MS,
      log_bytes_per_request_byte_max: GOAL_LOG_PER_REQUEST_BYTE,
      ratio_met: CONNS.every((c) => (summary[`ft_ratio_c${c}`] as number) >= GOAL_RATIO),
      lag_met: (summary.lag_p99_ms as number) <= GOAL_LAG_P99_MS,
      log_met: (summary.log_bytes_per_request_byte as number) <= GOAL_LOG_PER_REQUEST_BYTE,
    };
    summary.config = { warmup_ms: WARMUP_MS, measure_ms: MEASURE_MS, reps: REPS, conns: CONNS, keyspace: KEYSPACE, value_bytes: VALUE_BYTES, set_fraction: SET_FRACTION, set_request_bytes: SET_BYTES, get_request_bytes: GET_BYTES };
    if (redis) summary.redis_benchmark = redis;
    summary.wall_s = round((performance.now() - t0) / 1000, 1);

    const header = ['conns', 'off ops/s', 'on ops/s', 'on÷off (median)', 'pooled', 'off p50', 'on p50', 'off p99', 'on p99', 'lag p99', 'log÷req B'];
    const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
    const fmt = (r: string[]): string => r.map((c, i) => c.padStart(widths[i]!)).join('  ');
    console.log('phases in the order run (latencies in ms; CPU in µs per operation over the whole phase)');
    const phaseHeader = ['rep', 'FT', 'conns', 'ops/s', 'p50', 'p99', 'cpu primary', 'cpu backup', 'cpu clients'];
    const phaseRows = results.map((r) => {
      const s = r.latency.sorted();
      const per = (ms: number): string => ((ms * 1000) / r.totalOps).toFixed(1);
      return [String(r.rep + 1), r.setup, `c${r.conns}`, r.opsPerSec.toFixed(0), quantile(s, 0.5).toFixed(3), quantile(s, 0.99).toFixed(3), per(r.cpuMs.primary), r.setup !== 'off' ? per(r.cpuMs.backup) : '-', per(r.cpuMs.bench)];
    });
    const pw = phaseHeader.map((h, i) => Math.max(h.length, ...phaseRows.map((r) => r[i]!.length)));
    console.log(phaseHeader.map((c, i) => c.padStart(pw[i]!)).join('  '));
    for (const r of phaseRows) console.log(r.map((c, i) => c.padStart(pw[i]!)).join('  '));
    console.log('');
    console.log(`summary: ${guest} guest, closed loop, ${REPS} × (${WARMUP_MS} ms warm-up + ${MEASURE_MS} ms) per setup and concurrency; latencies in ms`);
    console.log(fmt(header));
    for (const r of rows) console.log(fmt(r));
    console.log(
      `execution lag (FT on): p50 ${summary.lag_p50_ms} ms, p99 ${summary.lag_p99_ms} ms, max ${summary.lag_max_ms} ms over ${lagSamples} samples; throttled in ${throttledSamples}`,
    );
    console.log(
      `logging: ${summary.log_bytes_per_op} B/op, ${summary.log_entries_per_op} entries/op, ${summary.request_bytes_per_op} request B/op → ${summary.log_bytes_per_request_byte} log B per request B`,
    );
    console.log(`state hashes of primary and backup agree at instruction ${hash.n}`);
    console.log('');
    if (withPlain) {
      console.log(
        BASELINE_ROOT === ''
          ? "encryption's cost: FT on with TLS-PSK ÷ FT on plain (--insecure-channel), same run, interleaved phases"
          : `A/B: "tls" = this build's FT-on pair, "plain" = the baseline build's FT-on pair (${BASELINE_ROOT}), both TLS, same run, interleaved phases`,
      );
    }
    const th = ['conns', 'plain ops/s', 'tls ops/s', 'tls÷plain (median)', 'pooled', 'plain p50', 'tls p50', 'plain p99', 'tls p99'];
    const tw = th.map((h, i) => Math.max(h.length, ...tlsRows.map((r) => r[i]!.length)));
    if (withPlain) console.log(th.map((c, i) => c.padStart(tw[i]!)).join('  '));
    for (const r of tlsRows) console.log(r.map((c, i) => c.padStart(tw[i]!)).join('  '));
    if (withProxy) {
      console.log('');
      console.log("the proxy's cost: FT on through `ftvm proxy` ÷ FT on direct (same pair, interleaved phases; proxy CPU in µs per operation)");
      const ph = ['conns', 'direct ops/s', 'proxy ops/s', 'proxy÷direct (median)', 'direct p50', 'proxy p50', 'direct p99', 'proxy p99', 'proxy cpu'];
      const pw2 = ph.map((h, i) => Math.max(h.length, ...proxyRows.map((r) => r[i]!.length)));
      console.log(ph.map((c, i) => c.padStart(pw2[i]!)).join('  '));
      for (const r of proxyRows) console.log(r.map((c, i) => c.padStart(pw2[i]!)).join('  '));
    }
    if (CKPT_SETUPS.length > 0) {
      console.log('');
      console.log(`checkpoint mode (--checkpoint-interval-ms ${CKPT_INTERVAL_MS}) beside FT off and replay FT on, same run, interleaved phases; latencies in ms`);
      const ch = ['setup', 'conns', 'off ops/s', 'replay ops/s', 'ckpt ops/s', 'ckpt÷off (median)', 'ckpt÷replay', 'off p50', 'replay p50', 'ckpt p50', 'off p99', 'replay p99', 'ckpt p99'];
      const cw = ch.map((h, i) => Math.max(h.length, ...ckptRows.map((r) => r[i]!.length)));
      console.log(ch.map((c, i) => c.padStart(cw[i]!)).join('  '));
      for (const r of ckptRows) console.log(r.map((c, i) => c.padStart(cw[i]!)).join('  '));
      for (const l of ckptLines) console.log(l);
      summary.mode = 'checkpoint';
      summary.checkpoint_interval_ms = CKPT_INTERVAL_MS;
    }
    summary.guest = guest;
    return summary;
  }
}

let interrupted = false;
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    if (interrupted) return;
    interrupted = true;
    log(`${sig}: stopping the servers`);
    void stopStarted().finally(() => process.exit(130));
  });
}

main().then(
  () => process.exit(0),
  async (err: unknown) => {
    process.stderr.write(`bench:pair FAILED: ${err instanceof Error ? err.message : String(err)}\n`);
    for (const p of started) if (p.stderr.total > 0) process.stderr.write(p.outputTail(10) + '\n');
    await stopStarted();
    process.exit(1);
  },
);

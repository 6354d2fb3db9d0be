/**
 * The benchmark suite (a script, not a test): `npm run bench [-- --quick]`.
 *
 * What a user would run instead of ftvm, measured side by side in one run on this machine, with the
 * same closed-loop RESP client (one command, wait for the reply, the next; no pipelining) and the same
 * workload (SET of 16-byte keys from a keyspace of 10,000 with 3-byte values):
 *
 *   redis         Debian's redis-server alone, no persistence
 *   redis-wait    a redis-server primary + a replica; every SET is followed by `WAIT 1 0` on the same
 *                 connection (the pair is sent together; the reply counts once the replica has it — the
 *                 output rule, done by the application)
 *   ftvm-off      the kv guest on one `ftvm run` (FT off: outputs released at once)
 *   ftvm-on       the kv guest on a primary + backup pair (FT on: outputs wait for the backup's ACK)
 *   etcd-cas      a 3-member etcd cluster; each connection does compare-and-swap writes on its own key
 *                 (a txn `if mod_revision == last then put`), each connection its own etcd3 client
 *
 * Everything runs for the whole run; only the system being measured gets load. Phases are interleaved
 * in rounds (for each round, for each connection count, every system once, the order rotated per round),
 * so that all see the same conditions on a shared, noisy machine: only ratios from one run mean anything.
 * FT-on phases also sample the primary's execution lag (FT-off phases sample the FT-off primary's status
 * the same way, so that the observer costs both sides alike), count logging-channel bytes per request byte and
 * measure the CPU time of both replicas per operation. After the FT-on phases the backup must verify the
 * primary's state hash.
 *
 * The floor (`bench/floor.ts`), in the same run: the round trip between two Node processes over TCP and
 * over TLS, and between the I/O thread and a worker; from it, the best `ft_ratio_c1` and
 * `redis_wait_p50_ratio_c1` any work in the replicas could leave (`ft_ratio_c1_bound`,
 * `redis_wait_p50_ratio_c1_floor`, `_design_floor` with the vCPU worker's hop).
 *
 * Then the existing benchmarks run as child processes and their JSON lines are folded in: machine
 * overhead (`bench/machine.ts`), failover (`bench/failover.ts`) and re-replication
 * (`bench/rereplicate.ts`). `--quick` (about a minute) measures the peers with short phases and one
 * round, and runs three failovers without the soak; it skips the machine and re-replication benchmarks.
 *
 * Prints progress to stderr, a table to stdout, and last one JSON line; writes `latest.json` and SVG
 * charts (`throughput.svg`, `latency.svg`, `failover.svg`) to `bench/results/` (or `--out DIR`).
 * Exit code 1 if a system fails to run or the replicas disagree; targets are reported, not enforced.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { Command, InvalidArgumentError } from 'commander';
import { Etcd3 } from 'etcd3';
import { EtcdTestCluster } from '../src/arbiter/etcd-test-cluster.js';
import { RespClient, RespError } from '../src/client/resp.js';
import { controlRequest } from '../src/service/control.js';
import { CLI, guestFile, makeSecretFile, startPair, type Pair } from '../src/testing/pair.js';
import { freePort, spawnNode, spawnProcess, stopAll, waitForPort, type ProcessHandle } from '../src/testing/processes.js';
import { requireComponents } from '../src/testing/system-deps.js';
import { readSecretFileSync } from '../src/security/secrets.js';
import { progress, type Progress } from '../src/util/progress.js';
import { median, processCpuMs, quantile, rng, round } from './stats.js';
import { failoverChart, latencyChart, throughputChart, type LatencyPoint, type ThroughputPoint } from './charts.js';
import { measureFloor } from './floor.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, '..', '..');
const HOST = '127.0.0.1';
const KEYSPACE = 10_000;
const VALUE_BYTES = 3;
const CALL_TIMEOUT_MS = 10_000;
const LAG_SAMPLE_MS = 20;

const TARGETS = {
  ft_ratio_c50: { min: 0.9 },
  ft_ratio_c8: { min: 0.85 },
  ft_ratio_c1: { min: 0.8 },
  redis_wait_ratio_c50: { min: 1.0 },
  redis_wait_p50_ratio_c1: { max: 1.5 },
  backup_cpu_per_op_ratio_c50: { max: 0.35 },
  log_bytes_per_request_byte: { max: 1.1 },
  lag_p99_ms: { max: 20 },
} as const;

type SystemName = 'redis' | 'redis-wait' | 'ftvm-off' | 'ftvm-on' | 'etcd-cas';
const SYSTEMS: readonly SystemName[] = ['redis', 'redis-wait', 'ftvm-off', 'ftvm-on', 'etcd-cas'];

// ------------------------------------------------------------------ options

interface Options {
  quick: boolean;
  conns: number[];
  rounds: number;
  warmupMs: number;
  measureMs: number;
  maxOpsPerPhase: number;
  extras: boolean;
  etcdFsync: boolean;
  out: string;
}

function parseConns(v: string): number[] {
  const xs = v.split(',').map((s) => Number(s.trim()));
  if (xs.length === 0 || xs.some((n) => !Number.isInteger(n) || n < 1 || n > 200)) {
    throw new InvalidArgumentError('a comma-separated list of connection counts from 1 to 200');
  }
  return xs;
}

function intIn(min: number, max: number): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`a whole number from ${min} to ${max}`);
    return n;
  };
}

function parseOptions(argv: string[]): Options {
  const cmd = new Command('bench')
    .description('ftvm FT on / FT off against Redis, Redis + WAIT and etcd, side by side in one run; plus the machine, failover and re-replication benchmarks')
    .option('--quick', 'about a minute: short phases, one round, three failovers, no machine/re-replication benchmarks')
    .option('--conns <list>', 'connection counts', parseConns, [1, 8, 50])
    .option('--rounds <n>', 'rounds of interleaved phases (default 3; 1 with --quick)', intIn(1, 10))
    .option('--warmup-ms <ms>', 'warm-up of each phase (default 500; 200 with --quick)', intIn(0, 10_000))
    .option('--measure-ms <ms>', 'measured window of each phase (default 3000; 800 with --quick)', intIn(100, 60_000))
    .option('--max-ops <n>', 'operations per phase at most', intIn(100, 100_000_000), 2_000_000)
    .option('--no-extras', 'skip the machine, failover and re-replication benchmarks')
    .option('--etcd-no-fsync', 'run etcd with --unsafe-no-fsync (default: etcd as deployed, fsync on)')
    .option('--out <dir>', 'where latest.json and the SVG charts go', join(ROOT, 'bench', 'results'))
    .exitOverride()
    .parse(argv, { from: 'user' });
  const o = cmd.opts<{
    quick?: boolean;
    conns: number[];
    rounds?: number;
    warmupMs?: number;
    measureMs?: number;
    maxOps: number;
    extras: boolean;
    etcdNoFsync?: boolean;
    out: string;
  }>();
  const quick = o.quick === true;
  return {
    quick,
    conns: o.conns,
    rounds: o.rounds ?? (quick ? 1 : 3),
    warmupMs: o.warmupMs ?? (quick ? 200 : 500),
    measureMs: o.measureMs ?? (quick ? 800 : 3000),
    maxOpsPerPhase: o.maxOps,
    extras: o.extras,
    etcdFsync: o.etcdNoFsync !== true,
    out: resolve(o.out),
  };
}

// ------------------------------------------------------------------ small statistics



/** Latency samples (ms), bounded: past `cap` samples it keeps a uniform reservoir. */
class Samples {
  private readonly buf: Float64Array;
  private seen = 0;
  private seed = 0x2545f491;
  constructor(private readonly cap = 1 << 20) {
    this.buf = new Float64Array(cap);
  }
  push(x: number): void {
    if (this.seen < this.cap) {
      this.buf[this.seen++] = x;
      return;
    }
    this.seen++;
    this.seed = (Math.imul(this.seed, 1103515245) + 12345) >>> 0;
    const j = this.seed % this.seen;
    if (j < this.cap) this.buf[j] = x;
  }
  sorted(): Float64Array {
    const a = this.buf.slice(0, Math.min(this.seen, this.cap));
    a.sort();
    return a;
  }
}

const KEYS = Array.from({ length: KEYSPACE }, (_, i) => `key:${String(i).padStart(12, '0')}`);
const VALUES = Array.from({ length: 64 }, (_, i) => Buffer.from(String(100 + i).slice(0, VALUE_BYTES), 'latin1'));
/** RESP bytes of one SET as the client sends it. */
const SET_REQUEST_BYTES = `*3\r\n$3\r\nSET\r\n$16\r\n${KEYS[0]!}\r\n$${VALUE_BYTES}\r\n${VALUES[0]!.toString('latin1')}\r\n`.length;


let bar: Progress | undefined;
function log(msg: string): void {
  if (bar) bar.log(`[bench] ${msg}`);
  else process.stderr.write(`[bench] ${msg}\n`);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

class BenchFailure extends Error {}

// ------------------------------------------------------------------ systems

interface Conn {
  /** One closed-loop operation; rejects on a wrong reply. */
  op(key: string, value: Buffer): Promise<void>;
  close(): Promise<void>;
}

interface System {
  readonly name: SystemName;
  readonly describe: string;
  connect(): Promise<Conn>;
  /** Processes whose CPU time is charged to this system, named. */
  cpuPids(): Record<string, number>;
  stop(): Promise<void>;
}

async function respConn(port: number, maxInFlight: number): Promise<RespClient> {
  return RespClient.connect({ host: HOST, port, callTimeoutMs: CALL_TIMEOUT_MS, maxInFlight });
}

function setConn(c: RespClient): Conn {
  return {
    async op(key, value) {
      const r = await c.call('SET', key, value);
      if (r !== 'OK') throw new BenchFailure(`SET answered ${r instanceof RespError ? r.message : String(r)}`);
    },
    close: () => c.close(),
  };
}

async function startRedis(name: string, dir: string, extra: string[] = []): Promise<{ proc: ProcessHandle; port: number }> {
  const port = await freePort();
  const proc = spawnProcess(
    'redis-server',
    ['--port', String(port), '--bind', HOST, '--save', '', '--appendonly', 'no', '--dir', dir, '--protected-mode', 'no', ...extra],
    { name },
  );
  await Promise.race([
    waitForPort(port, 10_000),
    proc.exited.then((s) => {
      throw new BenchFailure(`${name} exited early (${JSON.stringify(s)})${proc.outputTail()}`);
    }),
  ]);
  return { proc, port };
}

async function redisSystem(dir: string): Promise<System> {
  const r = await startRedis('redis', dir);
  return {
    name: 'redis',
    describe: `redis-server alone on :${r.port} (no persistence)`,
    connect: async () => setConn(await respConn(r.port, 1)),
    cpuPids: () => ({ server: r.proc.pid }),
    stop: () => r.proc.stop(3000).then(() => undefined),
  };
}

async function redisWaitSystem(dir: string): Promise<System> {
  const p = await startRedis('redis-primary', join(dir, 'p'));
  const rep = await startRedis('redis-replica', join(dir, 'r'), ['--replicaof', HOST, '0']);
  const c = await respConn(rep.port, 1);
  try {
    await c.call('REPLICAOF', HOST, String(p.port));
  } finally {
    await c.close();
  }
  // Wait (bounded) until the primary sees its replica online.
  const probe = await respConn(p.port, 1);
  try {
    const deadline = performance.now() + 15_000;
    for (;;) {
      const info = String(await probe.call('INFO', 'replication'));
      if (/connected_slaves:1/.test(info) && /state=online/.test(info)) break;
      if (performance.now() > deadline) throw new BenchFailure(`the Redis replica did not come online within 15 s: ${info}`);
      await sleep(50);
    }
  } finally {
    await probe.close();
  }
  return {
    name: 'redis-wait',
    describe: `redis-server primary :${p.port} + replica :${rep.port}, SET then WAIT 1 0 on each write`,
    async connect() {
      const cl = await respConn(p.port, 2);
      return {
        async op(key, value) {
          const [set, wait] = await Promise.all([cl.call('SET', key, value), cl.call('WAIT', '1', '0')]);
          if (set !== 'OK') throw new BenchFailure(`SET answered ${String(set)}`);
          if (typeof wait !== 'number' || wait < 1) throw new BenchFailure(`WAIT 1 0 answered ${String(wait)}`);
        },
        close: () => cl.close(),
      };
    },
    cpuPids: () => ({ primary: p.proc.pid, replica: rep.proc.pid }),
    stop: () => Promise.all([p.proc.stop(3000), rep.proc.stop(3000)]).then(() => undefined),
  };
}

async function ftvmOffSystem(secretFile: string): Promise<System & { control: string }> {
  const [port, ctl] = [await freePort(), await freePort()];
  const control = `${HOST}:${ctl}`;
  const proc = spawnNode([CLI, 'run', guestFile('kv'), '--role', 'primary', '--service', `${HOST}:${port}`, '--control', control, '--secret-file', secretFile], { name: 'ftvm-off' });
  await proc.waitForLine(/primary is serving/, 30_000, { stream: 'stderr' });
  await waitForPort(port, 10_000);
  return {
    name: 'ftvm-off',
    describe: `one ftvm run (kv guest) on :${port}, no backup`,
    control,
    connect: async () => setConn(await respConn(port, 1)),
    cpuPids: () => ({ primary: proc.pid }),
    stop: () => proc.stop(3000).then(() => undefined),
  };
}

async function ftvmOnSystem(secretFile: string): Promise<System & { pair: Pair }> {
  const pair = await startPair({ guest: 'kv', secretFile });
  return {
    name: 'ftvm-on',
    describe: `ftvm primary :${pair.servicePort} + backup (kv guest), output rule on`,
    pair,
    connect: async () => setConn(await respConn(pair.servicePort, 1)),
    cpuPids: () => ({ primary: pair.primary.pid, backup: pair.backup.pid }),
    stop: () => pair.stop(),
  };
}

async function etcdSystem(fsync: boolean): Promise<System> {
  const cluster = await EtcdTestCluster.start({ size: 3, unsafeNoFsync: !fsync });
  let nextKey = 0;
  return {
    name: 'etcd-cas',
    describe: `etcd 3 members (${fsync ? 'fsync on' : '--unsafe-no-fsync'}), CAS txn per write`,
    async connect() {
      const client = new Etcd3({ hosts: cluster.endpoints, dialTimeout: 5000 });
      const key = `/bench/cas/${nextKey++}`;
      let rev = '0';
      return {
        async op(_key, value) {
          const r = await client.if(key, 'Mod', '==', rev).then(client.put(key).value(value)).commit();
          if (!r.succeeded) throw new BenchFailure(`etcd CAS on ${key} at revision ${rev} did not succeed`);
          rev = r.header.revision;
        },
        close: async () => client.close(),
      };
    },
    cpuPids: () => Object.fromEntries(cluster.endpoints.map((_, i) => [`member${i}`, cluster.pid(i) ?? -1])),
    stop: () => cluster.stop(),
  };
}

// ------------------------------------------------------------------ phases

interface Phase {
  system: SystemName;
  conns: number;
  round: number;
  ops: number;
  measuredMs: number;
  opsPerSec: number;
  latency: Samples;
  totalOps: number;
  cpuMs: Record<string, number>;
}

async function runPhase(sys: System, conns: number, roundNo: number, o: Options): Promise<Phase> {
  const clients = await Promise.all(Array.from({ length: conns }, () => sys.connect()));
  const pids = sys.cpuPids();
  const cpu0 = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, processCpuMs(pid)]));
  const latency = new Samples();
  let totalOps = 0;
  let measured = 0;
  const start = performance.now();
  const from = start + o.warmupMs;
  const end = from + o.measureMs;
  let failure: unknown;
  const loop = async (c: Conn, idx: number): Promise<void> => {
    const rand = rng(0x5eed + idx * 7919 + roundNo * 104729);
    while (failure === undefined && totalOps < o.maxOpsPerPhase) {
      const t0 = performance.now();
      if (t0 >= end) return;
      try {
        await c.op(KEYS[Math.floor(rand() * KEYSPACE)]!, VALUES[Math.floor(rand() * VALUES.length)]!);
      } catch (err) {
        failure ??= err;
        return;
      }
      const t1 = performance.now();
      totalOps++;
      if (t0 >= from && t1 <= end) {
        measured++;
        latency.push(t1 - t0);
      }
    }
  };
  await Promise.all(clients.map((c, i) => loop(c, i)));
  const finished = performance.now();
  await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
  if (failure !== undefined) throw new BenchFailure(`${sys.name} c${conns}: ${(failure as Error).message ?? String(failure)}`);
  const cpuMs = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, processCpuMs(pid) - (cpu0[k] ?? NaN)]));
  const measuredMs = Math.max(1, Math.min(end, finished) - from);
  if (measured === 0) throw new BenchFailure(`${sys.name} c${conns}: no operation completed in the measured window`);
  return { system: sys.name, conns, round: roundNo, ops: measured, measuredMs, opsPerSec: (measured * 1000) / measuredMs, latency, totalOps, cpuMs };
}

interface FtStatus {
  lagMs: number;
  logBytesSent: number;
  entries: number;
  ackedEntries: number;
  outputsHeld: number;
  backupDiverged?: string | null;
}

let controlSecret: Uint8Array = new Uint8Array(0);
async function ftStatus(ctl: string): Promise<FtStatus> {
  return (await controlRequest(ctl, controlSecret, 'GET', '/status', 3000)) as FtStatus;
}

/** Waits (bounded) until the FT-on primary holds no unacknowledged entries or outputs. */
async function quiesce(ctl: string): Promise<FtStatus> {
  const deadline = performance.now() + 5000;
  let s = await ftStatus(ctl);
  while (performance.now() < deadline && (s.entries !== s.ackedEntries || s.outputsHeld !== 0)) {
    await sleep(20);
    s = await ftStatus(ctl);
  }
  return s;
}

function startLagSampler(ctl: string, boundMs: number): { stop(): Promise<number[]> } {
  const lag: number[] = [];
  let running = true;
  const done = (async () => {
    const deadline = performance.now() + boundMs;
    while (running && performance.now() < deadline) {
      const t0 = performance.now();
      try {
        lag.push((await ftStatus(ctl)).lagMs);
      } catch {
        // a missed sample; the phase's client errors say whether something is wrong
      }
      const wait = LAG_SAMPLE_MS - (performance.now() - t0);
      if (wait > 0) await sleep(wait);
    }
  })();
  return {
    async stop() {
      running = false;
      await done;
      return lag;
    },
  };
}

// ------------------------------------------------------------------ the other benchmarks

function runChildBench(script: string, env: Record<string, string>, timeoutMs: number): Promise<Record<string, unknown> | { error: string }> {
  return new Promise((resolvePromise) => {
    log(`running ${script} ${Object.entries(env).map(([k, v]) => `${k}=${v}`).join(' ')}`);
    const child = spawn(process.execPath, [join(ROOT, 'dist', 'bench', script)], {
      cwd: ROOT,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.length > 4 << 20) out = out.slice(-(1 << 20));
    });
    child.stderr.on('data', (d: Buffer) => {
      for (const line of d.toString().split('\n')) if (line.trim() !== '') process.stderr.write(`  ${line}\n`);
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const last = out.trim().split('\n').pop() ?? '';
      try {
        const json = JSON.parse(last) as Record<string, unknown>;
        resolvePromise(code === 0 ? json : { ...json, error: `exit ${code ?? signal}` });
      } catch {
        resolvePromise({ error: `${script} ended with ${code ?? signal} and no JSON line` });
      }
    });
  });
}

// ------------------------------------------------------------------ table

function table(head: string[], rows: string[][]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ');
  return [line(head), w.map((n) => '-'.repeat(n)).join('  '), ...rows.map(line)].join('\n');
}

const fmtK = (x: number): string => (Number.isFinite(x) ? (x >= 1000 ? `${(x / 1000).toFixed(1)}k` : x.toFixed(0)) : '–');
const fmtMs = (x: number): string => (Number.isFinite(x) ? x.toFixed(3) : '–');

// ------------------------------------------------------------------ main

async function main(): Promise<number> {
  let o: Options;
  try {
    o = parseOptions(process.argv.slice(2));
  } catch (err) {
    const code = (err as { exitCode?: number }).exitCode;
    return code === 0 ? 0 : 2;
  }
  requireComponents('redis-server', 'etcd');
  const t0 = performance.now();
  const dir = mkdtempSync(join(tmpdir(), 'ftvm-bench-'));
  mkdirSync(join(dir, 'p'));
  mkdirSync(join(dir, 'r'));
  const secretFile = makeSecretFile();
  controlSecret = readSecretFileSync(secretFile);
  const systems: System[] = [];
  try {
    log(`starting ${SYSTEMS.join(', ')} (${o.quick ? 'quick: ' : ''}${o.rounds} round(s), conns ${o.conns.join('/')}, warm-up ${o.warmupMs} ms + ${o.measureMs} ms measured per phase)`);
    const redis = await redisSystem(join(dir));
    systems.push(redis);
    const redisWait = await redisWaitSystem(dir);
    systems.push(redisWait);
    const off = await ftvmOffSystem(secretFile);
    systems.push(off);
    const on = await ftvmOnSystem(secretFile);
    systems.push(on);
    const etcd = await etcdSystem(o.etcdFsync);
    systems.push(etcd);
    for (const s of systems) log(`  ${s.name.padEnd(10)} ${s.describe}`);
    log(`all up in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

    const phases: Phase[] = [];
    const lag: number[] = [];
    const logBytes = { log: 0, request: 0 };
    const totalPhases = o.rounds * o.conns.length * systems.length;
    bar = progress('phases', totalPhases);
    for (let r = 0; r < o.rounds; r++) {
      for (const conns of o.conns) {
        const order = systems.map((_, i) => systems[(i + r) % systems.length]!);
        for (const sys of order) {
          let p: Phase;
          if (sys.name === 'ftvm-on') {
            const before = await quiesce(on.pair.primaryControl);
            const sampler = startLagSampler(on.pair.primaryControl, o.warmupMs + o.measureMs + 60_000);
            try {
              p = await runPhase(sys, conns, r, o);
            } finally {
              lag.push(...(await sampler.stop()));
            }
            const after = await quiesce(on.pair.primaryControl);
            if (after.backupDiverged) throw new BenchFailure(`the backup diverged: ${after.backupDiverged}`);
            logBytes.log += after.logBytesSent - before.logBytesSent;
            logBytes.request += p.totalOps * SET_REQUEST_BYTES;
          } else if (sys.name === 'ftvm-off') {
            // The same /status sampling as FT on, so that both sides of ft_ratio carry the observer's
            // cost (an authenticated HTTP request every 20 ms); FT off has no lag to report.
            const sampler = startLagSampler(off.control, o.warmupMs + o.measureMs + 60_000);
            try {
              p = await runPhase(sys, conns, r, o);
            } finally {
              await sampler.stop();
            }
          } else {
            p = await runPhase(sys, conns, r, o);
          }
          phases.push(p);
          bar.update(phases.length, `${sys.name} c${conns}`);
          const s = p.latency.sorted();
          log(
            `[${phases.length}/${totalPhases}] round ${r + 1} c${String(conns).padEnd(3)} ${sys.name.padEnd(10)} ${p.opsPerSec.toFixed(0).padStart(7)} ops/s  p50 ${fmtMs(quantile(s, 0.5))} ms  p99 ${fmtMs(quantile(s, 0.99))} ms`,
          );
        }
      }
    }
    bar.stop();
    bar = undefined;
    log('checking that the FT-on primary and backup reach the same state hash');
    const hash = await on.pair.hashesAgree(20_000);
    log(`state hashes agree at instruction ${hash.n}`);

    // ------------------------------------------------------------ summary
    const agg = (sys: SystemName, conns: number): { opsPerSec: number; p50: number; p99: number; p999: number; cpuPerOpUs: Record<string, number> } => {
      const ps = phases.filter((p) => p.system === sys && p.conns === conns);
      const lat = new Samples();
      for (const p of ps) {
        const s = p.latency.sorted();
        for (let i = 0; i < s.length; i++) lat.push(s[i]!);
      }
      const s = lat.sorted();
      const ops = ps.reduce((a, p) => a + p.totalOps, 0);
      const cpuPerOpUs: Record<string, number> = {};
      for (const k of Object.keys(ps[0]?.cpuMs ?? {})) cpuPerOpUs[k] = round((ps.reduce((a, p) => a + (p.cpuMs[k] ?? NaN), 0) * 1000) / ops, 1);
      return { opsPerSec: median(ps.map((p) => p.opsPerSec)), p50: quantile(s, 0.5), p99: quantile(s, 0.99), p999: quantile(s, 0.999), cpuPerOpUs };
    };
    /** Median over rounds of the per-round ratio a ÷ b (adjacent phases of one round). */
    const ratio = (a: SystemName, b: SystemName, conns: number): number =>
      median(
        Array.from({ length: o.rounds }, (_, r) => {
          const pa = phases.find((p) => p.system === a && p.conns === conns && p.round === r);
          const pb = phases.find((p) => p.system === b && p.conns === conns && p.round === r);
          return pa && pb ? pa.opsPerSec / pb.opsPerSec : NaN;
        }).filter(Number.isFinite),
      );

    const summary: Record<string, unknown> = { bench: 'suite', quick: o.quick, rounds: o.rounds, conns: o.conns, value_bytes: VALUE_BYTES, etcd_fsync: o.etcdFsync };
    const rows: string[][] = [];
    const throughput: ThroughputPoint[] = [];
    const latencyPoints: LatencyPoint[] = [];
    const bySystem: Record<string, unknown> = {};
    for (const conns of o.conns) {
      const a = Object.fromEntries(SYSTEMS.map((s) => [s, agg(s, conns)])) as Record<SystemName, ReturnType<typeof agg>>;
      for (const s of SYSTEMS) {
        throughput.push({ system: s, conns, opsPerSec: round(a[s].opsPerSec, 0) });
        latencyPoints.push({ system: s, conns, percentile: 'p50', ms: round(a[s].p50, 4) }, { system: s, conns, percentile: 'p99', ms: round(a[s].p99, 4) });
        bySystem[`${s}_c${conns}`] = { ops_per_s: round(a[s].opsPerSec, 0), p50_ms: round(a[s].p50, 4), p99_ms: round(a[s].p99, 4), p999_ms: round(a[s].p999, 4), cpu_per_op_us: a[s].cpuPerOpUs };
      }
      const ft = ratio('ftvm-on', 'ftvm-off', conns);
      const vsWait = ratio('ftvm-on', 'redis-wait', conns);
      const vsEtcd = ratio('ftvm-on', 'etcd-cas', conns);
      summary[`ft_ratio_c${conns}`] = round(ft);
      summary[`redis_wait_ratio_c${conns}`] = round(vsWait);
      summary[`redis_wait_p50_ratio_c${conns}`] = round(a['ftvm-on'].p50 / a['redis-wait'].p50);
      summary[`etcd_ratio_c${conns}`] = round(vsEtcd);
      const on = a['ftvm-on'].cpuPerOpUs;
      summary[`backup_cpu_per_op_ratio_c${conns}`] = round((on.backup ?? NaN) / (on.primary ?? NaN));
      rows.push([
        String(conns),
        ...SYSTEMS.map((s) => `${fmtK(a[s].opsPerSec)} · ${fmtMs(a[s].p50)}`),
        round(ft).toFixed(3),
        round(vsWait).toFixed(3),
        round(vsEtcd).toFixed(2),
      ]);
    }
    // The floor: round trips that cost before ftvm does any work (bench/floor.ts), and what they allow.
    log('measuring the floor: round trips between two processes (TCP, TLS) and between two threads');
    const floor = await measureFloor(o.quick ? 1000 : 3000);
    summary.floor = floor;
    if (o.conns.includes(1)) {
      const offP50Us = agg('ftvm-off', 1).p50 * 1000;
      const waitP50Us = agg('redis-wait', 1).p50 * 1000;
      // FT on at one connection adds at least the log's round trip to the backup (TLS) to FT off's request,
      // in this design: the log leaves with the reply's batch, after the step (docs/PERFORMANCE.md, "The floor").
      summary.ft_ratio_c1_bound = round(offP50Us / (offP50Us + floor.tls_rtt_us));
      // An FT-on request makes at least the client's round trip and the log's: with no work at all in either process.
      summary.redis_wait_p50_ratio_c1_floor = round((floor.tcp_rtt_us + floor.tls_rtt_us) / waitP50Us);
      // ... and in this design also the I/O thread ↔ vCPU worker round trip on the primary.
      summary.redis_wait_p50_ratio_c1_design_floor = round((floor.tcp_rtt_us + floor.tls_rtt_us + floor.thread_rtt_us) / waitP50Us);
    }
    const lagSorted = Float64Array.from(lag).sort();
    summary.lag_p99_ms = round(quantile(lagSorted, 0.99));
    summary.log_bytes_per_request_byte = round(logBytes.log / logBytes.request);
    summary.systems = bySystem;

    // ------------------------------------------------------------ the other benchmarks
    let failover: Record<string, unknown> | { error: string } | undefined;
    if (o.extras) {
      for (const s of systems.splice(0)) await s.stop();
      if (!o.quick) summary.machine = await runChildBench('machine.js', {}, 20 * 60_000);
      failover = await runChildBench('failover.js', o.quick ? { BENCH_FAILOVER_RUNS: '3', BENCH_FAILOVER_SOAK_S: '0' } : {}, 20 * 60_000);
      summary.failover = failover;
      if (!o.quick) summary.rereplicate = await runChildBench('rereplicate.js', {}, 20 * 60_000);
    }

    // ------------------------------------------------------------ report
    console.log('');
    console.log(`Side by side in one run: ${o.rounds} round(s), ${o.measureMs} ms measured per phase; cells: ops/s (median of rounds) · p50 ms`);
    console.log(table(['conns', ...SYSTEMS, 'on÷off', 'on÷redis+WAIT', 'on÷etcd'], rows));
    const targetLines: string[] = [];
    for (const [k, t] of Object.entries(TARGETS)) {
      const v = summary[k] as number;
      const ok = 'min' in t ? v >= t.min : v <= t.max;
      targetLines.push(`  ${k.padEnd(30)} ${String(v).padStart(8)}  (target ${'min' in t ? `≥ ${t.min}` : `≤ ${t.max}`}: ${Number.isFinite(v) ? (ok ? 'met' : 'NOT met') : 'not measured'})`);
    }
    console.log('targets:');
    console.log(targetLines.join('\n'));
    console.log(
      `floor (same run): round trip between two Node processes ${floor.tcp_rtt_us} µs over TCP, ${floor.tls_rtt_us} µs over TLS; I/O thread ↔ worker ${floor.thread_rtt_us} µs` +
        (summary.ft_ratio_c1_bound !== undefined
          ? `\n  with no work in either replica, in this design (the log's round trip after the step): ft_ratio_c1 ≤ ${String(summary.ft_ratio_c1_bound)}, redis_wait_p50_ratio_c1 ≥ ${String(summary.redis_wait_p50_ratio_c1_floor)} (≥ ${String(summary.redis_wait_p50_ratio_c1_design_floor)} with the vCPU worker's hop)`
          : ''),
    );
    if (failover && !('error' in failover && Object.keys(failover).length === 1)) {
      const f = failover as Record<string, unknown>;
      console.log(`failover: process crash p50 ${String(f.failover_crash_p50_ms)} ms, p99 ${String(f.failover_crash_p99_ms)} ms; silent failure p50 ${String(f.failover_silent_p50_ms)} ms, p99 ${String(f.failover_silent_p99_ms)} ms; ${String(f.runs)} runs; false failovers ${String(f.false_failovers)}; lost acknowledged writes ${String(f.lost_acked_writes)}`);
    }
    summary.wall_s = round((performance.now() - t0) / 1000, 1);

    mkdirSync(o.out, { recursive: true });
    const sub = `ftvm bench${o.quick ? ' --quick' : ''}, ${new Date().toISOString().slice(0, 16)}Z, ${o.rounds} round(s) × ${o.measureMs} ms`;
    writeFileSync(join(o.out, 'throughput.svg'), await throughputChart(throughput, sub));
    writeFileSync(join(o.out, 'latency.svg'), await latencyChart(latencyPoints, sub));
    const f = failover as Record<string, unknown> | undefined;
    if (f && typeof f.crash_detect_ms_p50 === 'number') {
      const segs: Array<[string, number]> = [
        ['detection', f.crash_detect_ms_p50],
        ['drain + claim', Number(f.crash_drain_claim_ms_p50)],
        ['go-live', Number(f.crash_go_live_ms_p50)],
        ['first client reply', Number(f.crash_client_ms_p50)],
      ];
      let at = 0;
      const timeline = segs.map(([segment, ms]) => {
        const s = { segment, startMs: at, endMs: at + (Number.isFinite(ms) ? ms : 0) };
        at = s.endMs;
        return s;
      });
      writeFileSync(join(o.out, 'failover.svg'), await failoverChart(timeline, `${sub}; kill -9 of the primary: p50 ${String(f.failover_crash_p50_ms)} ms, p99 ${String(f.failover_crash_p99_ms)} ms`));
    }
    writeFileSync(join(o.out, 'latest.json'), `${JSON.stringify(summary, null, 2)}\n`);
    log(`wrote ${join(o.out, 'latest.json')} and the SVG charts; ${summary.wall_s} s in all`);
    console.log(JSON.stringify(summary));
    return 0;
  } catch (err) {
    log(`FAILED: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  } finally {
    bar?.stop();
    bar = undefined;
    for (const s of systems) await s.stop().catch(() => undefined);
    await stopAll(3000);
    rmSync(dir, { recursive: true, force: true });
    rmSync(dirname(secretFile), { recursive: true, force: true });
  }
}

process.exitCode = await main();

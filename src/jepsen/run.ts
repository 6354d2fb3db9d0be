/**
 * A Jepsen-style run: start the cluster, run the clients, inject `faults` faults one after another
 * (each against a protected pair; dead replicas rejoin as standbys), heal, read every key once more,
 * then check the whole history for linearizability (per key) and count lost acknowledged writes.
 */
import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { checkKv, type KvOperation } from '../check/kv-model.js';
import { formatCheckResult, type CheckResult } from '../check/linearizability.js';
import { countLostWrites, type FinalRead, type LostWritesResult } from '../check/lost-writes.js';
import { controlRequest } from '../service/control.js';
import { Prng } from '../testing/prng.js';
import { connectAny, History, keyName, recordedCall, startWorkload } from './client.js';
import { Cluster, type ArbiterKind } from './cluster.js';
import { FAULT_WEIGHTS, injectFault, type FaultKind, type FaultRecord } from './nemesis.js';

export interface JepsenOptions {
  faults: number;
  seed: number;
  arbiter: ArbiterKind;
  clients: number;
  /** Default 8. */
  keys?: number;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
  /** Write the history (JSON) here; on a failure it is written to a temporary file anyway. */
  historyOut?: string;
  /** Linearizability check budget (default 120 s). */
  checkTimeoutMs?: number;
  /** Pause between two faults, uniform in [min, max] ms (default [100, 600]). */
  quietMs?: readonly [number, number];
  /** Client think time bound, ms (default 4). */
  thinkMs?: number;
}

export interface JepsenResult {
  seed: number;
  arbiter: ArbiterKind;
  clients: number;
  keys: number;
  faults: number;
  fault_mix: Record<string, number>;
  /** Failovers (epoch changes of the serving replica, incl. re-arming a recruited standby). */
  epoch_changes: number;
  replicas_restarted: number;
  operations: number;
  ok_operations: number;
  indeterminate_operations: number;
  failed_operations: number;
  /** Keys whose history is not linearizable. */
  violations: number;
  linearizability: 'ok' | 'illegal' | 'unknown';
  lost_acked_writes: number;
  acked_writes: number;
  final_reads: number;
  replicas_agree: boolean | null;
  checker_ms: number;
  run_time_s: number;
  /** Failover times (ms, fault → the backup reports itself primary) of kill -9 (evidence) and of long SIGSTOPs (silence). */
  failover_crash_ms: { n: number; p50: number | null; p99: number | null };
  failover_silent_ms: { n: number; p50: number | null; p99: number | null };
  ops_per_s: number;
  passed: boolean;
  /** Why the run could not complete (liveness), if it did not. */
  error?: string;
  history_file?: string;
}

export interface JepsenReport {
  result: JepsenResult;
  check: CheckResult;
  lost: LostWritesResult;
  faults: FaultRecord[];
  /** Every recorded call, final reads included. */
  history: KvOperation[];
  finals: FinalRead[];
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export async function runJepsen(o: JepsenOptions): Promise<JepsenReport> {
  const started = performance.now();
  const log = o.log ?? (() => {});
  const keys = o.keys ?? 8;
  const rng = new Prng(o.seed);
  const nemesisRng = rng.fork();
  const clientRng = rng.fork();
  const [quietMin, quietMax] = o.quietMs ?? [100, 600];
  const history = new History();
  const faults: FaultRecord[] = [];
  const finals: FinalRead[] = [];
  let error: string | undefined;
  let replicasAgree: boolean | null = null;
  let restarts = 0;

  const cluster = await Cluster.start({ arbiter: o.arbiter, log });
  try {
    let pair = await cluster.settle();
    log(`protected pair: primary slot ${pair.primary.index}, backup slot ${pair.backup.index}, epoch ${pair.epoch}`);
    const callOpts = { connectTimeoutMs: 300, callTimeoutMs: 1500 };
    const workload = startWorkload(history, () => cluster.servicePorts(), clientRng, { clients: o.clients, keys, thinkMs: o.thinkMs ?? 4, ...callOpts });
    try {
      await sleep(500);
      for (let n = 0; n < o.faults; n++) {
        const kind: FaultKind = nemesisRng.weighted(FAULT_WEIGHTS);
        const rec = await injectFault(cluster, pair, kind, nemesisRng, n, () => history.now());
        faults.push(rec);
        log(
          `fault ${n + 1}/${o.faults}: ${kind}${rec.long === undefined ? '' : rec.long ? ' (long)' : ' (short)'} on slot ${rec.slot} for ${rec.durationMs} ms; epoch ${rec.epochBefore} → ${rec.epochAfter}; settled in ${rec.settleMs} ms;${rec.failoverMs !== undefined ? ` failover ${rec.failoverMs} ms;` : ''} ${history.ops.length} ops so far`,
        );
        const settled = await cluster.protectedPair();
        if (settled.pair) pair = settled.pair;
        else pair = await cluster.settle();
        await sleep(nemesisRng.range(quietMin, quietMax));
      }
      pair = await cluster.settle();
      await sleep(500);
    } catch (err) {
      error = (err as Error).message;
      log(`the run stopped early: ${error}`);
    } finally {
      await workload.stop();
    }
    restarts = cluster.restarts;

    // Final reads, after every fault was healed: each key once, on whichever replica serves.
    if (error === undefined) {
      const finalClient = o.clients;
      for (let k = 0; k < keys; k++) {
        const key = keyName(k);
        for (let attempt = 0; attempt < 50; attempt++) {
          const conn = await connectAny(cluster.servicePorts(), { connectTimeoutMs: 500, callTimeoutMs: 5000 });
          if (!conn) {
            await sleep(100);
            continue;
          }
          const before = history.ops.length;
          const fine = await recordedCall(history, finalClient, conn, { f: 'get', key });
          conn.close();
          const op = history.ops[before]!;
          if (fine && op.status === 'ok' && (typeof op.output === 'string' || op.output === null)) {
            finals.push({ key, value: op.output, call: op.call });
            break;
          }
          await sleep(100);
        }
      }
      if (finals.length < keys) error = `final reads: only ${finals.length} of ${keys} keys could be read`;
      // The replicas of the final pair hold the same state.
      try {
        const h = (await controlRequest(cluster.control(pair.primary), cluster.auth, 'POST', '/state-hash', 5000)) as { n: number; hash: string };
        const until = performance.now() + 15_000;
        for (;;) {
          const b = (await controlRequest(cluster.control(pair.backup), cluster.auth, 'GET', '/state-hash', 2000)) as { n: number; hash: string } | null;
          if (b && b.n === h.n) {
            replicasAgree = b.hash === h.hash;
            break;
          }
          if (performance.now() > until) break;
          await sleep(20);
        }
      } catch (err) {
        log(`state hash comparison failed: ${(err as Error).message}`);
      }
    }
  } finally {
    await cluster.stop();
  }

  log(`checking ${history.ops.length} operations...`);
  const check = checkKv(history.ops, { timeoutMs: o.checkTimeoutMs ?? 120_000 });
  const lost = countLostWrites(history.ops, finals);
  const mix: Record<string, number> = {};
  for (const f of faults) {
    const name = f.long !== undefined ? `${f.kind}-${f.long ? 'long' : 'short'}` : f.rejoin !== undefined ? `${f.kind}-${f.rejoin}` : f.kind;
    mix[name] = (mix[name] ?? 0) + 1;
  }
  const count = (s: string): number => history.ops.filter((x) => x.status === s).length;
  const runTime = (performance.now() - started) / 1000;
  const passed = error === undefined && check.verdict === 'ok' && lost.lost === 0 && replicasAgree !== false && faults.length === o.faults;
  const result: JepsenResult = {
    seed: o.seed,
    arbiter: o.arbiter,
    clients: o.clients,
    keys,
    faults: faults.length,
    fault_mix: mix,
    epoch_changes: faults.filter((f) => f.epochAfter !== f.epochBefore).length,
    replicas_restarted: restarts,
    operations: history.ops.length,
    ok_operations: count('ok'),
    indeterminate_operations: count('indeterminate'),
    failed_operations: count('failed'),
    violations: check.violations.length,
    linearizability: check.verdict,
    lost_acked_writes: lost.lost,
    acked_writes: lost.acknowledged,
    final_reads: finals.length,
    replicas_agree: replicasAgree,
    checker_ms: Math.round(check.ms),
    run_time_s: Math.round(runTime * 10) / 10,
    failover_crash_ms: percentiles(faults.filter((f) => f.kind === 'kill-primary').map((f) => f.failoverMs)),
    failover_silent_ms: percentiles(faults.filter((f) => f.kind === 'pause-primary' && f.long === true).map((f) => f.failoverMs)),
    ops_per_s: Math.round(history.ops.length / Math.max(0.001, history.now() / 1000)),
    passed,
  };
  if (error !== undefined) result.error = error;
  if (!passed || o.historyOut !== undefined) {
    const file = o.historyOut ?? join(tmpdir(), `ftvm-jepsen-${o.seed}.json`);
    writeFileSync(file, JSON.stringify({ result, faults, finals, history: history.ops }, (_, v: unknown) => (typeof v === 'bigint' ? v.toString() : v === Infinity ? 'Infinity' : v)));
    result.history_file = file;
  }
  if (check.verdict !== 'ok') log(formatCheckResult(check));
  if (lost.lost > 0) log(`lost acknowledged writes: ${JSON.stringify(lost.writes.slice(0, 10))}`);
  return { result, check, lost, faults, history: history.ops, finals };
}

/** Nearest-rank p50 and p99 of the measured values (undefined: not measured). */
function percentiles(xs: (number | undefined)[]): { n: number; p50: number | null; p99: number | null } {
  const s = xs.filter((x): x is number => x !== undefined).sort((a, b) => a - b);
  const q = (p: number): number | null => (s.length === 0 ? null : s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))]!);
  return { n: s.length, p50: q(0.5), p99: q(0.99) };
}

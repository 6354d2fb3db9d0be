/**
 * A Jepsen-style run: start the cluster, run the clients, inject `faults` faults one after another
 * (each against a protected pair; dead replicas rejoin as standbys), heal, read every key once more,
 * then check the whole history for linearizability (per key) and count lost acknowledged writes.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { checkKv, type KvOperation } from '../check/kv-model.js';
import { formatCheckResult, type CheckResult } from '../check/linearizability.js';
import { countLostWrites, type FinalRead, type LostWritesResult } from '../check/lost-writes.js';
import { controlRequest } from '../service/control.js';
import { FtvmError } from '../util/errors.js';
import { Prng } from '../testing/prng.js';
import { connectAny, History, keyName, protocolFor, recordedCall, startWorkload, type KvProtocol } from './client.js';
import { Cluster, type ArbiterKind, type ProtectedPair } from './cluster.js';
import { ETCD_MEMBER_WEIGHTS, FAULT_WEIGHTS, OVERLAP_WEIGHTS, injectFault, type FaultKind, type FaultRecord } from './nemesis.js';

/** The guests a Jepsen run can drive, by name: the module and what each replica needs. */
export const JEPSEN_GUESTS = {
  kv: { module: 'kv', disk: false },
  'c-server': { module: 'c_server', disk: false },
  'rust-server': { module: 'rust_server', disk: false },
  sqlite: { module: 'sqlite_server', disk: true },
  /** wasi-threads (checkpoint mode only): 8 guest threads, one table under a lock. */
  'threaded-kv': { module: 'threaded_kv', disk: false, args: ['8'], checkpointOnly: true },
} as const;
export type JepsenGuest = keyof typeof JEPSEN_GUESTS;

export interface JepsenOptions {
  faults: number;
  /** Default kv (the AssemblyScript guest). */
  guest?: JepsenGuest;
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
  /** Overlapping faults: a second fault before the pair is protected again (may lose the VM). */
  overlap?: boolean;
  /** etcd members (default 1); with 3+, members are killed during the run. */
  etcdMembers?: number;
  /** Extra flags for every node (e.g. a longer --fail-timeout-ms on a loaded machine). */
  nodeArgs?: string[];
  /**
   * 'proxy': clients connect to one `ftvm proxy` (docs/PROXY.md) and keep their connection across
   * failovers; a call waits out a failover (call timeout 15 s) instead of turning indeterminate.
   */
  via?: 'direct' | 'proxy';
  /** Only these fault kinds (default: the whole mix). */
  faultKinds?: readonly FaultKind[];
  /** Keep every node's output in this directory (one file per node process). */
  nodeLogDir?: string;
  /** The replication mode of every node (default replay): `--mode checkpoint` runs checkpoint-mode replicas. */
  mode?: 'replay' | 'checkpoint';
}

export interface JepsenResult {
  guest: JepsenGuest;
  /** The replication mode of the nodes. */
  mode: 'replay' | 'checkpoint';
  /** How clients reach the VM: each replica's service port, or one `ftvm proxy`. */
  via: 'direct' | 'proxy';
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
  overlap: boolean;
  etcd_members: number;
  /**
   * VMs lost to a double failure (a primary killed while it ran alone): by design, not a violation of
   * the output rule, but data acknowledged by that VM is gone. Reported separately; a run that lost a
   * VM is not `passed` (its `checks_passed` says whether everything else held).
   */
  vms_lost: number;
  /** Writes acknowledged by VMs that were then lost (not counted in lost_acked_writes). */
  acked_writes_lost_with_vm: number;
  /** Linearizable, nothing acknowledged lost on the surviving VM, replicas agree, every fault run. */
  checks_passed: boolean;
  /** The harness process's event-loop delay (clients, history): p99 and max, ms. */
  harness_loop_delay_ms: { p99: number; max: number };
  /** The fault proxies' process's event-loop delay (how late the channel's proxy could forward), ms. */
  fault_proxy_loop_delay_ms: { p99: number; max: number };
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
const round1 = (x: number): number => Math.round(x * 10) / 10;

/** The protected pair as the nodes report it now; settles first when there is none. */
export async function currentPair(cluster: Cluster): Promise<ProtectedPair> {
  const now = await cluster.protectedPair();
  return now.pair ?? (await cluster.settle());
}

export async function runJepsen(o: JepsenOptions): Promise<JepsenReport> {
  const started = performance.now();
  // The harness's own event-loop delay: a stall here delays clients (and so widens the history's
  // windows), never the pair's channel (the fault proxies run in a process of their own).
  const loopDelay = monitorEventLoopDelay({ resolution: 10 });
  loopDelay.enable();
  let proxyLoop = { p99Ms: NaN, maxMs: NaN };
  const log = o.log ?? (() => {});
  const keys = o.keys ?? 8;
  const rng = new Prng(o.seed);
  const nemesisRng = rng.fork();
  const clientRng = rng.fork();
  const [quietMin, quietMax] = o.quietMs ?? [100, 600];
  let history = new History();
  /** Histories of VMs lost to a double failure (each checked for linearizability on its own). */
  const lostEras: History[] = [];
  const faults: FaultRecord[] = [];
  const allWeights = [...FAULT_WEIGHTS, ...(o.overlap ? OVERLAP_WEIGHTS : []), ...(o.arbiter === 'etcd' && (o.etcdMembers ?? 1) >= 3 ? ETCD_MEMBER_WEIGHTS : [])];
  const weights = o.faultKinds !== undefined ? allWeights.filter(([k]) => o.faultKinds!.includes(k)) : allWeights;
  if (weights.length === 0) throw new Error(`no fault kind left of ${o.faultKinds?.join(', ')}`);
  const finals: FinalRead[] = [];
  let error: string | undefined;
  let replicasAgree: boolean | null = null;
  let restarts = 0;

  const guestName: JepsenGuest = o.guest ?? 'kv';
  const guest = JEPSEN_GUESTS[guestName];
  const mode = o.mode ?? 'replay';
  if (mode === 'checkpoint' && guest.disk) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `--mode checkpoint does not run guests with a disk yet (${guestName})`);
  if (mode !== 'checkpoint' && 'checkpointOnly' in guest) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `the ${guestName} guest is threaded: it runs only with --mode checkpoint`);
  const guestArgs = 'args' in guest ? guest.args.flatMap((a) => ['--arg', a]) : [];
  const nodeArgs = [...(mode === 'checkpoint' ? ['--mode', 'checkpoint'] : []), ...guestArgs, ...(o.nodeArgs ?? [])];
  const protocol = protocolFor(guestName);
  // A guest with a disk: each replica its own image file, a fresh one per restart.
  const diskDir = guest.disk ? mkdtempSync(join(tmpdir(), 'ftvm-jepsen-disk-')) : undefined;
  const cluster = await Cluster.start({
    arbiter: o.arbiter,
    ...(o.via === 'proxy' ? { viaProxy: true } : {}),
    log,
    ...(o.nodeLogDir !== undefined ? { nodeLogDir: o.nodeLogDir } : {}),
    guest: guest.module,
    ...(o.etcdMembers !== undefined ? { etcdMembers: o.etcdMembers } : {}),
    // The WASI guests are larger to load and instrument than the kv guest: more time to start.
    ...(guestName !== 'kv' ? { startTimeoutMs: 90_000, settleTimeoutMs: 180_000 } : {}),
    ...(diskDir !== undefined
      ? { nodeArgs: ['--disk-size', String(32 << 20), ...nodeArgs], slotArgs: (s) => ['--disk', join(diskDir, `slot${s.index}-g${s.gen}.img`)], startTimeoutMs: 180_000 }
      : nodeArgs.length > 0
        ? { nodeArgs }
        : {}),
  });
  try {
    let pair = await cluster.settle();
    log(`protected pair: primary slot ${pair.primary.index}, backup slot ${pair.backup.index}, epoch ${pair.epoch}`);
    const callOpts = { connectTimeoutMs: 300, callTimeoutMs: o.via === 'proxy' ? 15_000 : 1500 };
    /** Idempotent set-up (e.g. CREATE TABLE IF NOT EXISTS), retried until a replica acknowledges it. */
    const setUp = async (): Promise<void> => {
      for (const cmd of protocol.setup) {
        let done = false;
        for (let attempt = 0; attempt < 100 && !done; attempt++) {
          const conn = await connectAny(cluster.clientPorts(), { connectTimeoutMs: 500, callTimeoutMs: 5000 });
          try {
            const reply = await conn?.call(...cmd);
            done = reply !== undefined && protocol.output(reply) === null;
          } catch {
            // try again
          } finally {
            conn?.close();
          }
          if (!done) await sleep(100);
        }
        if (!done) throw new Error(`set-up command ${cmd[0]} was not acknowledged`);
      }
    };
    await setUp();
    const workloadOpts = { clients: o.clients, keys, thinkMs: o.thinkMs ?? 4, protocol, ...callOpts };
    let workload = startWorkload(history, () => cluster.clientPorts(), clientRng, workloadOpts);
    // A VM lost to a double failure: its history is closed (checked on its own), a fresh VM starts.
    const onVmLost = async (): Promise<void> => {
      log(`the VM ${cluster.vm} is lost (a double failure: no replica can carry it on): reported separately; starting a fresh VM`);
      await workload.stop();
      lostEras.push(history);
      history = new History();
      await cluster.restartVm();
      await setUp();
      workload = startWorkload(history, () => cluster.clientPorts(), clientRng, workloadOpts);
    };
    cluster.onVmLost = onVmLost;
    try {
      await sleep(500);
      for (let n = 0; n < o.faults; n++) {
        const kind: FaultKind = nemesisRng.weighted(weights);
        // The pair as it is now, not as it was before the quiet time: a failover the load caused by
        // itself meanwhile would turn "kill the backup" into killing a primary that runs alone.
        pair = await currentPair(cluster);
        const rec = await injectFault(cluster, pair, kind, nemesisRng, n, () => history.now(), onVmLost);
        faults.push(rec);
        log(
          `fault ${n + 1}/${o.faults}: ${kind}${rec.long === undefined ? '' : rec.long ? ' (long)' : ' (short)'} on slot ${rec.slot} for ${rec.durationMs} ms; epoch ${rec.epochBefore} → ${rec.epochAfter}; settled in ${rec.settleMs} ms;${rec.failoverMs !== undefined ? ` failover ${rec.failoverMs} ms;` : ''} ${history.ops.length} ops so far`,
        );
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
      finals.push(...(await finalReads(cluster, history, keys, o.clients, protocol)));
      if (finals.length < keys) error = `final reads: only ${finals.length} of ${keys} keys could be read`;
      replicasAgree = await replicasAgreeOn(cluster, pair, log);
    }
  } finally {
    proxyLoop = await cluster.faultHost.loopDelay().catch(() => proxyLoop);
    await cluster.stop();
  }
  loopDelay.disable();

  log(`checking ${history.ops.length} operations${lostEras.length > 0 ? ` (and ${lostEras.reduce((a, h) => a + h.ops.length, 0)} of ${lostEras.length} lost VM(s))` : ''}...`);
  let check = checkKv(history.ops, { timeoutMs: o.checkTimeoutMs ?? 120_000 });
  for (const era of lostEras) {
    const c = checkKv(era.ops, { timeoutMs: o.checkTimeoutMs ?? 120_000 });
    if (c.verdict !== 'ok' && check.verdict === 'ok') check = c;
    else if (c.verdict !== 'ok') check = { ...check, violations: [...check.violations, ...c.violations] };
  }
  const lost = countLostWrites(history.ops, finals);
  const ackedLostWithVm = lostEras.reduce((a, h) => a + h.ops.filter((x) => x.status === 'ok' && x.input.f !== 'get').length, 0);
  const mix: Record<string, number> = {};
  for (const f of faults) {
    const name = f.vmLost ? `${f.kind}-vm-lost` : f.etcdMember ? `${f.kind}${f.etcdMember.leader ? '-leader' : ''}` : f.long !== undefined ? `${f.kind}-${f.long ? 'long' : 'short'}` : f.rejoin !== undefined ? `${f.kind}-${f.rejoin}` : f.kind;
    mix[name] = (mix[name] ?? 0) + 1;
  }
  const allOps = [...lostEras.flatMap((h) => h.ops), ...history.ops];
  const count = (s: string): number => allOps.filter((x) => x.status === s).length;
  const runTime = (performance.now() - started) / 1000;
  const checksPassed = error === undefined && check.verdict === 'ok' && lost.lost === 0 && replicasAgree !== false && faults.length === o.faults;
  const passed = checksPassed && lostEras.length === 0;
  const result: JepsenResult = {
    guest: guestName,
    mode,
    via: o.via ?? 'direct',
    seed: o.seed,
    arbiter: o.arbiter,
    clients: o.clients,
    keys,
    faults: faults.length,
    fault_mix: mix,
    epoch_changes: faults.filter((f) => f.epochAfter !== f.epochBefore).length,
    replicas_restarted: restarts,
    operations: allOps.length,
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
    ops_per_s: Math.round(allOps.length / Math.max(0.001, runTime)),
    overlap: o.overlap === true,
    etcd_members: o.arbiter === 'etcd' ? (o.etcdMembers ?? 1) : 0,
    vms_lost: lostEras.length,
    acked_writes_lost_with_vm: ackedLostWithVm,
    checks_passed: checksPassed,
    harness_loop_delay_ms: { p99: round1(loopDelay.percentile(99) / 1e6), max: round1(loopDelay.max / 1e6) },
    fault_proxy_loop_delay_ms: { p99: round1(proxyLoop.p99Ms), max: round1(proxyLoop.maxMs) },
    failover_crash_ms: percentiles(faults.filter((f) => f.kind === 'kill-primary').map((f) => f.failoverMs)),
    failover_silent_ms: percentiles(faults.filter((f) => f.kind === 'pause-primary' && f.long === true).map((f) => f.failoverMs)),
    passed,
  };
  if (error !== undefined) result.error = error;
  if (!passed || o.historyOut !== undefined) {
    const file = o.historyOut ?? join(tmpdir(), `ftvm-jepsen-${o.seed}.json`);
    writeFileSync(file, JSON.stringify({ result, faults, finals, history: history.ops, lostVms: lostEras.map((h) => h.ops) }, (_, v: unknown) => (typeof v === 'bigint' ? v.toString() : v === Infinity ? 'Infinity' : v)));
    result.history_file = file;
  }
  if (check.verdict !== 'ok') log(formatCheckResult(check));
  if (lost.lost > 0) log(`lost acknowledged writes: ${JSON.stringify(lost.writes.slice(0, 10))}`);
  return { result, check, lost, faults, history: allOps, finals };
}

/** Each key read once more after the faults, on whichever replica serves (recorded in the history). */
export async function finalReads(cluster: Cluster, history: History, keys: number, clientId: number, protocol?: KvProtocol): Promise<FinalRead[]> {
  const finals: FinalRead[] = [];
  for (let k = 0; k < keys; k++) {
    const key = keyName(k);
    for (let attempt = 0; attempt < 50; attempt++) {
      const conn = await connectAny(cluster.clientPorts(), { connectTimeoutMs: 500, callTimeoutMs: 5000 });
      if (!conn) {
        await sleep(100);
        continue;
      }
      const before = history.ops.length;
      const fine = await recordedCall(history, clientId, conn, { f: 'get', key }, protocol);
      conn.close();
      const op = history.ops[before]!;
      if (fine && op.status === 'ok' && (typeof op.output === 'string' || op.output === null)) {
        finals.push({ key, value: op.output, call: op.call });
        break;
      }
      await sleep(100);
    }
  }
  return finals;
}

/** The replicas of a protected pair hold the same state (state hashes at the same instruction number); null: could not tell. */
export async function replicasAgreeOn(cluster: Cluster, pair: ProtectedPair, log: (line: string) => void): Promise<boolean | null> {
  try {
    const h = (await controlRequest(cluster.control(pair.primary), cluster.auth, 'POST', '/state-hash', 5000)) as { n: number; hash: string };
    const until = performance.now() + 15_000;
    for (;;) {
      const b = (await controlRequest(cluster.control(pair.backup), cluster.auth, 'GET', '/state-hash', 2000)) as { n: number; hash: string } | null;
      if (b && b.n === h.n) return b.hash === h.hash;
      if (performance.now() > until) return null;
      await sleep(20);
    }
  } catch (err) {
    log(`state hash comparison failed: ${(err as Error).message}`);
    return null;
  }
}

/** Nearest-rank p50 and p99 of the measured values (undefined: not measured). */
function percentiles(xs: (number | undefined)[]): { n: number; p50: number | null; p99: number | null } {
  const s = xs.filter((x): x is number => x !== undefined).sort((a, b) => a - b);
  const q = (p: number): number | null => (s.length === 0 ? null : s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))]!);
  return { n: s.length, p50: q(0.5), p99: q(0.99) };
}

/**
 * The soak (`npm run soak`): real processes on loopback (an embedded arbiter, a primary, a backup and a
 * spare standby, src/jepsen/cluster.ts) under closed-loop client load for `durationS`; every
 * `killEveryS` the live primary is killed -9, the backup goes live and re-replicates to the spare on its
 * own (the harness only restarts the killed process as a fresh standby, as a supervisor would). The RSS
 * of every node process is sampled while it is a replica (primary or backup). At the end: each key read
 * once more, nothing acknowledged lost, the pair's state hashes equal, and RSS flat (analyseRss): within
 * each role a process held, the largest RSS after warm-up ÷ its RSS at warm-up (`rss_growth_ratio`), and
 * across generations of processes (`rss_generation_ratio`), both ≤ 1.2 to pass.
 */
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { checkKv } from '../check/kv-model.js';
import { countLostWrites } from '../check/lost-writes.js';
import { Prng } from '../testing/prng.js';
import { History, startWorkload } from './client.js';
import { Cluster, type Slot } from './cluster.js';
import { finalReads, replicasAgreeOn } from './run.js';

export interface SoakOptions {
  durationS: number;
  killEveryS: number;
  /** A process's RSS is compared from this long after it took its role, backup or primary (default 10 s). */
  warmupS?: number;
  seed: number;
  clients?: number;
  keys?: number;
  /** RSS sampling period (default 2 s). */
  sampleEveryMs?: number;
  /** The nodes' --fail-timeout-ms (default: the CLI's). */
  failTimeoutMs?: number;
  log?: (line: string) => void;
}

export interface SoakResult {
  seed: number;
  duration_s: number;
  kill_every_s: number;
  failovers: number;
  operations: number;
  ok_operations: number;
  acked_writes: number;
  lost_acked_writes: number;
  final_reads: number;
  hashes_equal: boolean | null;
  linearizability: 'ok' | 'illegal' | 'unknown';
  /**
   * Largest RSS after warm-up ÷ RSS at warm-up, worst process in one role (1 if none was measured long
   * enough). A role change starts a new warm-up (see analyseRss).
   */
  rss_growth_ratio: number;
  /** Across generations: the largest peak RSS of any process in a role ÷ the median peak of that role's first three processes. */
  rss_generation_ratio: number;
  /** For reference, not judged: largest RSS from warm-up to death ÷ RSS at warm-up, across the role change. */
  rss_life_growth_ratio: number;
  /** (process, role) stretches measured past their warm-up. */
  rss_processes_measured: number;
  rss_worst: { slot: number; pid: number; role: 'primary' | 'backup'; warmup_rss_mib: number; max_rss_mib: number; role_s: number } | null;
  /** Peak RSS (MiB) after warm-up of each process in each role, in the order the processes took the role. */
  rss_peaks_mib: { primary: number[]; backup: number[] };
  /** The worst process's samples: [seconds as a replica, RSS MiB, 'p' primary | 'b' backup]. */
  rss_worst_series: Array<[number, number, 'p' | 'b']>;
  replicas_restarted: number;
  /** Epoch changes over the run (each kill: +1 claim, +1 re-armed pair; more: failovers the load caused). */
  epoch_changes: number;
  run_time_s: number;
  passed: boolean;
  error?: string;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function rssBytes(pid: number): number | undefined {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

interface ProcSamples {
  slot: number;
  pid: number;
  /** When it was first seen as a replica (primary or backup). */
  replicaSinceMs: number | undefined;
  samples: Array<{ t: number; rss: number; role: 'primary' | 'backup' }>;
}

export async function runSoak(o: SoakOptions): Promise<SoakResult> {
  const started = performance.now();
  const log = o.log ?? (() => {});
  const keys = o.keys ?? 8;
  const clients = o.clients ?? 4;
  const warmupMs = (o.warmupS ?? 10) * 1000;
  const rng = new Prng(o.seed);
  const history = new History();
  const procs = new Map<number, ProcSamples>();
  let failovers = 0;
  let epochs = { first: 0, last: 0 };
  let error: string | undefined;
  let hashesEqual: boolean | null = null;
  let finals: Awaited<ReturnType<typeof finalReads>> = [];
  const cluster = await Cluster.start({ arbiter: 'embedded', log, ...(o.failTimeoutMs !== undefined ? { nodeArgs: ['--fail-timeout-ms', String(o.failTimeoutMs)] } : {}) });
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      const statuses = await Promise.all(cluster.slots.map((s) => cluster.status(s)));
      const now = performance.now();
      cluster.slots.forEach((s: Slot, i) => {
        const pid = s.proc?.running ? s.proc.pid : undefined;
        const st = statuses[i];
        if (pid === undefined || !st) return;
        const replica = st.role === 'primary' || (st.role === 'backup' && st.phase === 'following');
        let p = procs.get(pid);
        if (!p) {
          p = { slot: s.index, pid, replicaSinceMs: undefined, samples: [] };
          procs.set(pid, p);
        }
        if (!replica) return;
        p.replicaSinceMs ??= now;
        const rss = rssBytes(pid);
        if (rss !== undefined) p.samples.push({ t: now - p.replicaSinceMs, rss, role: st.role === 'primary' ? 'primary' : 'backup' });
      });
      await sleep(o.sampleEveryMs ?? 2000);
    }
  })();
  try {
    let pair = await cluster.settle();
    const firstEpoch = pair.epoch;
    let lastEpoch = pair.epoch;
    log(`protected pair: primary slot ${pair.primary.index}, backup slot ${pair.backup.index}, epoch ${pair.epoch}`);
    const workload = startWorkload(history, () => cluster.servicePorts(), rng.fork(), { clients, keys, thinkMs: 2, connectTimeoutMs: 300, callTimeoutMs: 1500, maxOps: 50_000_000 });
    try {
      const end = performance.now() + o.durationS * 1000; // the load's duration, after the cluster is up
      let nextKill = performance.now() + o.killEveryS * 1000;
      while (performance.now() < end) {
        const wait = Math.min(nextKill, end) - performance.now();
        if (wait > 0) await sleep(wait);
        if (performance.now() >= end) break;
        nextKill += o.killEveryS * 1000;
        // The kill hits a protected pair: a replica that died meanwhile (a failover the load caused
        // by itself) is restarted as a standby and re-recruited first.
        pair = await cluster.settle(120_000);
        if (pair.epoch > lastEpoch + 2) log(`epoch ${lastEpoch} → ${pair.epoch} since the last kill: failovers the load caused by itself`);
        const live = pair.primary;
        log(`kill -9 of the live primary, slot ${live.index} (pid ${live.proc?.pid ?? '?'})`);
        cluster.kill(live);
        failovers++;
        const t0 = performance.now();
        pair = await cluster.settle(120_000);
        lastEpoch = pair.epoch;
        log(`kill -9 of the primary (slot ${live.index}) #${failovers}: protected again (primary slot ${pair.primary.index}, epoch ${pair.epoch}) in ${Math.round(performance.now() - t0)} ms; ${history.ops.length} ops so far`);
      }
      pair = await cluster.settle(120_000);
      epochs = { first: firstEpoch, last: pair.epoch };
    } catch (err) {
      error = (err as Error).message;
      log(`the soak stopped early: ${error}`);
    } finally {
      await workload.stop();
    }
    if (error === undefined) {
      finals = await finalReads(cluster, history, keys, clients);
      if (finals.length < keys) error = `final reads: only ${finals.length} of ${keys} keys could be read`;
      hashesEqual = await replicasAgreeOn(cluster, pair, log);
    }
  } finally {
    sampling = false;
    await sampler;
    await cluster.stop();
  }
  const lost = countLostWrites(history.ops, finals);
  const check = checkKv(history.ops, { timeoutMs: 60_000 });
  const rss = analyseRss([...procs.values()], warmupMs);
  const result: SoakResult = {
    seed: o.seed,
    duration_s: o.durationS,
    kill_every_s: o.killEveryS,
    failovers,
    operations: history.ops.length,
    ok_operations: history.ops.filter((x) => x.status === 'ok').length,
    acked_writes: lost.acknowledged,
    lost_acked_writes: lost.lost,
    final_reads: finals.length,
    hashes_equal: hashesEqual,
    linearizability: check.verdict,
    ...rss,
    replicas_restarted: cluster.restarts,
    epoch_changes: epochs.last - epochs.first,
    run_time_s: Math.round((performance.now() - started) / 100) / 10,
    passed: false,
  };
  result.passed = error === undefined && lost.lost === 0 && hashesEqual === true && rss.rss_growth_ratio <= RSS_RATIO_MAX && rss.rss_generation_ratio <= RSS_RATIO_MAX && check.verdict !== 'illegal';
  if (error !== undefined) result.error = error;
  return result;
}

/** RSS may grow this much after warm-up, within a role and across generations. */
export const RSS_RATIO_MAX = 1.2;

interface RssSample {
  /** ms since the process became a replica */
  t: number;
  rss: number;
  role: 'primary' | 'backup';
}

/**
 * RSS flatness. Each process is measured in each role it holds, from `warmupMs` after it took that role:
 * the largest RSS after that point ÷ the RSS at it. A role change starts a new warm-up because a backup
 * that goes live takes on other work: the client service, a few seconds alone at FT-off speed until its
 * new backup is armed, the snapshot it streams. Measured (docs/PERFORMANCE.md, "Memory"), V8 sizes its
 * heaps to the allocation rate, so the same process settles 15–20 MiB higher as a primary; that step is
 * not growth. What a soak must catch is growth within a role and growth carried from one generation of
 * processes to the next (state that the clone hands on): `rss_generation_ratio` compares the peak of
 * every process in a role with the median peak of that role's first three processes.
 */
export function analyseRss(
  procs: ReadonlyArray<{ slot: number; pid: number; samples: readonly RssSample[] }>,
  warmupMs: number,
): Pick<SoakResult, 'rss_growth_ratio' | 'rss_generation_ratio' | 'rss_life_growth_ratio' | 'rss_processes_measured' | 'rss_worst' | 'rss_peaks_mib' | 'rss_worst_series'> {
  const mib = (b: number): number => +(b / 2 ** 20).toFixed(1);
  let worst: SoakResult['rss_worst'] = null;
  let worstRatio = 1;
  let worstSeries: SoakResult['rss_worst_series'] = [];
  let lifeRatio = 1;
  let measured = 0;
  const peaks: { primary: number[]; backup: number[] } = { primary: [], backup: [] };
  for (const p of procs) {
    const life = p.samples.filter((x) => x.t >= warmupMs);
    if (life.length >= 3) lifeRatio = Math.max(lifeRatio, Math.max(...life.map((x) => x.rss)) / life[0]!.rss);
    for (const role of ['backup', 'primary'] as const) {
      const inRole = p.samples.filter((x) => x.role === role);
      if (inRole.length === 0) continue;
      const since = inRole[0]!.t;
      const after = inRole.filter((x) => x.t - since >= warmupMs);
      if (after.length < 3) continue;
      measured++;
      const base = after[0]!.rss;
      const max = Math.max(...after.map((x) => x.rss));
      peaks[role].push(mib(max));
      const ratio = max / base;
      if (ratio > worstRatio || worst === null) {
        worstRatio = Math.max(worstRatio, ratio);
        worst = { slot: p.slot, pid: p.pid, role, warmup_rss_mib: mib(base), max_rss_mib: mib(max), role_s: Math.round((after[after.length - 1]!.t - since) / 1000) };
        worstSeries = p.samples.map((x) => [Math.round(x.t / 1000), mib(x.rss), x.role === 'primary' ? 'p' : 'b']);
      }
    }
  }
  let generationRatio = 1;
  for (const role of ['backup', 'primary'] as const) {
    const ps = peaks[role];
    if (ps.length < 4) continue; // nothing to compare the first three with
    const first = ps.slice(0, 3).sort((a, b) => a - b)[1]!; // the median of the first three
    generationRatio = Math.max(generationRatio, Math.max(...ps) / first);
  }
  return {
    rss_growth_ratio: +worstRatio.toFixed(3),
    rss_generation_ratio: +generationRatio.toFixed(3),
    rss_life_growth_ratio: +lifeRatio.toFixed(3),
    rss_processes_measured: measured,
    rss_worst: worst,
    rss_peaks_mib: peaks,
    rss_worst_series: worstSeries,
  };
}

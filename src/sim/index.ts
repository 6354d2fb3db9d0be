/**
 * ftvm's deterministic simulator (TigerBeetle's VOPR, FoundationDB's simulation): one seed drives a
 * whole cluster — a primary, a backup, standbys, the arbiter, clients and a nemesis — in virtual time,
 * on one thread, with every choice drawn from one PRNG (prng.ts). A seed replays exactly: same events,
 * same steps, same failure.
 *
 * What runs is the code that ships: the drivers src/replication/primary-node.ts (PrimaryNode), node.ts
 * (BackupNode), standby.ts (StandbyNode), the channel endpoints and ChannelConnection (frames encoded,
 * MAC'd and decoded), and the pure cores they feed, each process in its own simulated environment
 * (env.ts: virtual timers, the transport, the vCPU model, the client service, an arbiter client).
 * Modelled around them:
 * - the guest (guest.ts, vcpu.ts): a kv server on a deterministic machine — an instruction counter,
 *   client requests as async entries at the instruction the primary reached, replies as sync entries
 *   carrying the outputs, replay that honours grants and checks every entry, go-live where the log ends;
 * - the network (net.ts): TCP connections as ordered byte streams with bandwidth, that a partition
 *   holds and a cut breaks (each side gets a prefix, then sees the close); duplicates and reordering
 *   only across reconnections, as TCP allows;
 * - the arbiter (arbiter.ts): the record {epoch, owner} with claim/advance/read and the standby pool,
 *   the embedded arbiter's own state changes (src/arbiter/state.ts), behind calls with latency and a deadline whose
 *   requests can be lost, answered, lost after committing ("timed out but committed"), or held in the
 *   network and committed after the caller gave up;
 * - the world (world.ts): three hosts; timeouts drawn per seed from their allowed ranges; clients with
 *   timeouts that fail over between nodes; a nemesis — kill -9, power loss, SIGSTOP/SIGCONT (a paused
 *   process gets no ticks and handles nothing, then resumes with time jumped), channel cuts, partitions
 *   (both ways or one way, ending healed or cut), arbiter partitions and outages, delay spikes, slow
 *   replicas, standbys (re)starting; crashed or halted hosts come back as `ftvm standby` and a primary
 *   running alone re-replicates to them, so faults keep hitting full pairs. A crash is injected only if
 *   another process can carry the VM on (a double failure loses a VM by design).
 *
 * Checked after EVERY event (a step):
 * (a) never two live replicas in one epoch (live: a primary not halted, or a backup that went live), and
 *     none live beyond the arbiter's epoch;
 * (b) at every release, each output is covered by what the backup of that epoch holds (received and
 *     acknowledged), unless the releasing primary legitimately runs alone (it won that epoch: a claim or
 *     a go-live, and no pair has been armed since);
 * (c) replicas' states are equal where their positions are (same entry, same instruction number); a
 *     replica checks every entry it replays against the primary's (type, instruction, reply, state hash)
 *     and never runs past a delivery;
 * (lost) whenever a node goes live (wins a claim or takes over), and at the end, its state holds every
 *     entry whose output was ever released;
 * (d) liveness: after the fault phase everything heals (crashed hosts restart as standbys) and client
 *     requests sent after the heal must complete within a bound of virtual time.
 *
 * Checkpoint mode (`--mode checkpoint`): the processes are CheckpointNodes (src/checkpoint/run.ts) and
 * the world records every checkpoint a primary captures (state hash, entry count, by epoch and number);
 * (b) then reads "covered" as: in a checkpoint a backup of that epoch applied; and
 * (k) a backup goes live only from exactly the state its primary captured as the checkpoint its replica
 *     holds (no partial checkpoint), and a replica holds only checkpoints some primary captured.
 *
 * Determinism: the world drains the microtask queue after every event, and nothing real (timer,
 * socket, worker) exists, so a seed replays bit for bit (the trace hash); a driver's unhandled
 * rejection or exception fails the seed.
 *
 * Use: `npm run sim -- [--mode replay|checkpoint] --seeds N [--seed S] [--break B] [--trace]` (breaks:
 * replay release-before-ack|skip-drain|release-unheld|stale-drained, checkpoint release-at-capture|torn-apply)
 * (scripts/sim.ts). The test-only breaks switch the cores' `testOnlyBreak` flags or the drivers'
 * `testOnlyDriverBreak`, to show the checkers catch a broken core or driver.
 */
import { SimFailure, World, type BreakMode, type SimMode, type WorldStats } from './world.js';

export { BREAKS_OF, type BreakMode, type SimMode } from './world.js';
export type { WorldStats } from './world.js';

export interface SimResult {
  seed: number;
  ok: boolean;
  /** The step (event number) and virtual time of the failure, or of the end. */
  step: number;
  timeMs: number;
  message: string;
  stats: WorldStats;
  trace: string[];
  /** The run's fingerprint (events, times, releases): a seed replays bit for bit. */
  traceHash: string;
}

export interface SimOptions {
  /** Which drivers the processes run (default replay). */
  mode?: SimMode;
  breakMode?: BreakMode;
  trace?: boolean;
}

/** The world running now: a driver's unhandled rejection is its failure. */
let current: World | undefined;
let hooked = false;
function onRejection(err: unknown): void {
  if (current) current.driverFailed(err);
  else throw err;
}

export async function runSeed(seed: number, opts: SimOptions = {}): Promise<SimResult> {
  if (current) throw new Error('one simulated world at a time');
  const w = new World({
    seed,
    ...(opts.mode ? { mode: opts.mode } : {}),
    ...(opts.breakMode ? { breakMode: opts.breakMode } : {}),
    ...(opts.trace ? { trace: true } : {}),
  });
  if (!hooked) {
    process.on('unhandledRejection', onRejection);
    hooked = true;
  }
  current = w;
  try {
    await w.run();
    return { seed, ok: true, step: w.stats.steps, timeMs: w.stats.virtualMs, message: '', stats: w.stats, trace: w.traceLines, traceHash: w.traceHash() };
  } catch (err) {
    const e = err as Error;
    const message = err instanceof SimFailure ? e.message : `${e.name}: ${e.message}`;
    const at = w.position();
    w.stats.steps = at.step;
    w.stats.virtualMs = at.timeMs;
    return { seed, ok: false, step: at.step, timeMs: at.timeMs, message, stats: w.stats, trace: w.traceLines, traceHash: w.traceHash() };
  } finally {
    // Promises of the dead world that are still pending never settle; let any late rejection land here.
    await new Promise<void>((r) => setImmediate(r));
    current = undefined;
  }
}

/** The command that reproduces a seed's run. */
export function reproduceCommand(seed: number, opts: SimOptions = {}): string {
  return `npm run sim -- --seed ${seed}${opts.mode === 'checkpoint' ? ' --mode checkpoint' : ''}${opts.breakMode ? ` --break ${opts.breakMode}` : ''}`;
}

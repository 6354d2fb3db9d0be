/**
 * The nemesis: one fault at a time, chosen and timed by a seeded PRNG, always against a protected pair
 * (the cluster settles — every fault healed, dead replicas replaced by standbys, a protected pair and a
 * spare — before each one).
 *
 * | fault | what |
 * |---|---|
 * | `kill-primary`, `kill-backup` | kill -9 (the process is gone and its ports stay closed: the peer's liveness probe is refused, evidence; the failover time of `kill-primary` is reported) |
 * | `pause-primary`, `pause-backup` | SIGSTOP (silent: the probe is not answered, the fail timeout decides), then SIGCONT after 10–100 ms (shorter than the 150 ms failure timeout) or 200–1500 ms (longer; the failover time of `pause-primary` is reported) |
 * | `channel-cut` | the pair's logging channel reset and refused (FaultProxy cut) for 150–1500 ms |
 * | `channel-blackhole` | the channel silently drops everything, TCP up, for 150–1500 ms |
 * | `arbiter-cut` | the arbiter unreachable for 100–2000 ms (the pair runs on: nothing to decide) |
 * | `arbiter-and-channel-cut` | both at once: neither replica may go on until the arbiter returns |
 * | `rejoin-disrupted` | kill -9 a replica of the pair; while the survivor (running alone) clones the VM to the standby it recruited, kill that standby or cut its channel for 200–800 ms |
 * | `etcd-member-kill` | (etcd with 3+ members) kill -9 one member — the leader half the time — for 200–3000 ms, then restart it |
 *
 * Overlapping faults (`--overlap`): a second fault before the pair is protected again.
 *
 * | fault | what |
 * |---|---|
 * | `overlap-kill-backup-then-primary` | kill -9 the backup; 0–2500 ms later kill -9 the primary, protected again or still alone: alone, the VM is lost (reported separately, and a fresh VM is started) |
 * | `overlap-kill-primary-arbiter-cut` | kill -9 the primary; 0–200 ms later the arbiter is cut for 300–2000 ms (the backup cannot claim meanwhile) |
 * | `overlap-kill-primary-pause-survivor` | kill -9 the primary; once the backup went live (≤ 5 s), SIGSTOP it for 100–1500 ms while it re-replicates |
 * | `overlap-pause-primary-cut-channel` | SIGSTOP the primary for 200–1500 ms and cut the channel meanwhile |
 */
import { performance } from 'node:perf_hooks';
import type { Prng } from '../testing/prng.js';
import type { Cluster, ProtectedPair } from './cluster.js';

export type FaultKind =
  | 'kill-primary'
  | 'kill-backup'
  | 'pause-primary'
  | 'pause-backup'
  | 'channel-cut'
  | 'channel-blackhole'
  | 'arbiter-cut'
  | 'arbiter-and-channel-cut'
  | 'rejoin-disrupted'
  | 'etcd-member-kill'
  | 'overlap-kill-backup-then-primary'
  | 'overlap-kill-primary-arbiter-cut'
  | 'overlap-kill-primary-pause-survivor'
  | 'overlap-pause-primary-cut-channel';

export const FAULT_WEIGHTS: readonly (readonly [FaultKind, number])[] = [
  ['kill-primary', 3],
  ['kill-backup', 2],
  ['pause-primary', 3],
  ['pause-backup', 2],
  ['channel-cut', 2],
  ['channel-blackhole', 1],
  ['arbiter-cut', 2],
  ['arbiter-and-channel-cut', 1],
  ['rejoin-disrupted', 1],
];

/** Added with `--overlap`. */
export const OVERLAP_WEIGHTS: readonly (readonly [FaultKind, number])[] = [
  ['overlap-kill-backup-then-primary', 2],
  ['overlap-kill-primary-arbiter-cut', 2],
  ['overlap-kill-primary-pause-survivor', 2],
  ['overlap-pause-primary-cut-channel', 1],
];

/** Added with an etcd arbiter of 3 or more members. */
export const ETCD_MEMBER_WEIGHTS: readonly (readonly [FaultKind, number])[] = [['etcd-member-kill', 3]];

export interface FaultRecord {
  n: number;
  kind: FaultKind;
  /** Slot hit (the pair's primary or backup at the time). */
  slot: number;
  /** How long the fault lasted (pause, cut) or how long before the cluster was repaired (kill), ms. */
  durationMs: number;
  /** Pauses: longer than the failure timeout? */
  long?: boolean;
  /** `rejoin-disrupted`: what happened to the joining standby (or that no join was seen in time). */
  rejoin?: 'killed' | 'channel-cut' | 'not-seen';
  /** History time (ms) when it was injected. */
  at: number;
  epochBefore: number;
  epochAfter: number;
  /** Time to settle afterwards (protected pair and a spare again), ms. */
  settleMs: number;
  /**
   * The VM was lost (by design) and a fresh one started: the fault killed a primary running alone, or
   * a replica that had meanwhile become one (the backup won a claim against a slow primary).
   */
  vmLost?: boolean;
  /** `etcd-member-kill`: the member killed, and whether it was the leader. */
  etcdMember?: { index: number; leader: boolean };
  /**
   * kill-primary (a crash: evidence) and pause-primary (silence): ms from the fault until the backup
   * reported itself primary (polled every 5 ms), when it did within 5 s.
   */
  failoverMs?: number;
}

/** Polls `slot` until it reports itself primary: ms since `t0`, or undefined after `maxMs`. */
async function untilPrimary(cluster: Cluster, slot: ProtectedPair['backup'], t0: number, maxMs: number): Promise<number | undefined> {
  while (performance.now() - t0 < maxMs) {
    if ((await cluster.status(slot))?.role === 'primary') return performance.now() - t0;
    await sleep(5);
  }
  return undefined;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Injects one fault on `pair`, heals it, and waits until the cluster settled. `now` is the history
 * clock.
 */
export async function injectFault(
  cluster: Cluster,
  pair: ProtectedPair,
  kind: FaultKind,
  rng: Prng,
  n: number,
  now: () => number,
  onVmLost?: () => Promise<void>,
): Promise<FaultRecord> {
  const at = now();
  const t0 = performance.now();
  const vmGeneration = cluster.vmGeneration;
  let slot = pair.primary;
  let long: boolean | undefined;
  let rejoin: FaultRecord['rejoin'];
  let vmLost: boolean | undefined;
  let etcdMember: FaultRecord['etcdMember'];
  let failover: Promise<number | undefined> | undefined;
  switch (kind) {
    case 'etcd-member-kill': {
      const etcd = cluster.etcd;
      if (!etcd || etcd.size < 3) throw new Error('etcd-member-kill needs an etcd arbiter of 3+ members');
      const leader = await etcd.leaderIndex();
      const i = leader !== undefined && rng.chance(0.5) ? leader : rng.int(etcd.size);
      etcdMember = { index: i, leader: i === leader };
      await etcd.kill(i);
      await sleep(rng.range(200, 3000));
      await etcd.restart(i);
      break;
    }
    case 'overlap-kill-backup-then-primary': {
      slot = pair.primary;
      cluster.kill(pair.backup);
      await sleep(rng.range(0, 2500));
      // The second fault, before or after the pair is protected again (the spare armed as the backup).
      const st = await cluster.status(pair.primary);
      const protectedAgain = st?.role === 'primary' && st.alone === false && st.backup === 'connected';
      cluster.kill(pair.primary);
      if (!protectedAgain) {
        // A primary running alone is gone: nothing can carry the VM on. Confirm, then say so.
        await sleep(500);
        if (!(await cluster.vmAlive())) {
          vmLost = true;
          await onVmLost?.();
        }
      }
      break;
    }
    case 'overlap-kill-primary-arbiter-cut': {
      slot = pair.primary;
      cluster.kill(pair.primary);
      await sleep(rng.range(0, 200));
      await cluster.arbiterProxy.cut();
      await sleep(rng.range(300, 2000));
      await cluster.arbiterProxy.heal();
      break;
    }
    case 'overlap-kill-primary-pause-survivor': {
      slot = pair.primary;
      cluster.kill(pair.primary);
      const until = performance.now() + 5000;
      while (performance.now() < until) {
        const st = await cluster.status(pair.backup);
        if (st?.role === 'primary') break;
        await sleep(10);
      }
      await sleep(rng.range(0, 300));
      cluster.pause(pair.backup);
      await sleep(rng.range(100, 1500));
      cluster.resume(pair.backup);
      break;
    }
    case 'overlap-pause-primary-cut-channel': {
      slot = pair.primary;
      long = rng.chance(0.5);
      cluster.pause(pair.primary);
      await sleep(rng.range(0, 100));
      await pair.backup.channelProxy.cut();
      await sleep(long ? rng.range(200, 1500) : rng.range(10, 100));
      cluster.resume(pair.primary);
      await sleep(rng.range(0, 300));
      await pair.backup.channelProxy.heal();
      break;
    }
    case 'kill-primary':
    case 'kill-backup': {
      slot = kind === 'kill-primary' ? pair.primary : pair.backup;
      cluster.kill(slot);
      if (kind === 'kill-primary') failover = untilPrimary(cluster, pair.backup, t0, 5000);
      await sleep(rng.range(0, 400));
      break;
    }
    case 'pause-primary':
    case 'pause-backup': {
      slot = kind === 'pause-primary' ? pair.primary : pair.backup;
      long = rng.chance(0.5);
      cluster.pause(slot);
      const pauseMs = long ? rng.range(200, 1500) : rng.range(10, 100);
      if (kind === 'pause-primary') failover = untilPrimary(cluster, pair.backup, t0, pauseMs);
      await sleep(pauseMs);
      cluster.resume(slot);
      break;
    }
    case 'channel-cut':
    case 'channel-blackhole': {
      // The primary dials the backup's slot through that slot's proxy.
      slot = pair.backup;
      if (kind === 'channel-cut') await slot.channelProxy.cut();
      else await slot.channelProxy.blackhole('both');
      await sleep(rng.range(150, 1500));
      await slot.channelProxy.heal();
      break;
    }
    case 'arbiter-cut': {
      await cluster.arbiterProxy.cut();
      await sleep(rng.range(100, 2000));
      await cluster.arbiterProxy.heal();
      break;
    }
    case 'arbiter-and-channel-cut': {
      slot = pair.backup;
      await cluster.arbiterProxy.cut();
      await sleep(rng.range(0, 50));
      await slot.channelProxy.cut();
      await sleep(rng.range(300, 1500));
      if (rng.chance(0.5)) {
        await cluster.arbiterProxy.heal();
        await sleep(rng.range(0, 300));
        await slot.channelProxy.heal();
      } else {
        await slot.channelProxy.heal();
        await sleep(rng.range(0, 300));
        await cluster.arbiterProxy.heal();
      }
      break;
    }
    case 'rejoin-disrupted': {
      slot = rng.chance(0.5) ? pair.primary : pair.backup;
      const survivor = slot === pair.primary ? pair.backup : pair.primary;
      cluster.kill(slot);
      // The survivor goes on alone (after a failover if the primary died) and recruits the spare.
      rejoin = 'not-seen';
      const until = performance.now() + 10_000;
      while (performance.now() < until) {
        const st = await cluster.status(survivor);
        const joining = st?.standby as { host?: string; phase?: string } | null | undefined;
        const target = joining?.host === undefined ? undefined : cluster.slots.find((x) => cluster.hostId(x) === joining.host);
        if (target) {
          await sleep(rng.range(0, 30));
          if (rng.chance(0.5)) {
            cluster.kill(target);
            rejoin = 'killed';
          } else {
            await target.channelProxy.cut();
            await sleep(rng.range(200, 800));
            await target.channelProxy.heal();
            rejoin = 'channel-cut';
          }
          break;
        }
        // The join completed before we saw it (claim: epoch + 1, armed: epoch + 2).
        if (st?.backup === 'connected' && typeof st.epoch === 'number' && st.epoch >= pair.epoch + 2) break;
        await sleep(10);
      }
      break;
    }
  }
  const failoverMs = await failover;
  const durationMs = performance.now() - t0;
  const t1 = performance.now();
  const after = await cluster.settle();
  const rec: FaultRecord = { n, kind, slot: slot.index, durationMs: Math.round(durationMs), at: Math.round(at), epochBefore: pair.epoch, epochAfter: after.epoch, settleMs: Math.round(performance.now() - t1) };
  if (long !== undefined) rec.long = long;
  if (rejoin !== undefined) rec.rejoin = rejoin;
  // Lost here or while settling (a false failover under load, then this fault: see Cluster.settle).
  if (vmLost !== undefined || cluster.vmGeneration !== vmGeneration) rec.vmLost = true;
  if (etcdMember !== undefined) rec.etcdMember = etcdMember;
  if (failoverMs !== undefined) rec.failoverMs = Math.round(failoverMs * 10) / 10;
  return rec;
}

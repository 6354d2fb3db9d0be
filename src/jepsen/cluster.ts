/**
 * The system under test of the Jepsen-style run: one VM (the kv guest) served by real `ftvm` processes
 * on loopback, in "slots" of fixed ports. Slot 0 starts as a primary with an arbiter and no `--peer`
 * (it recruits a backup from the standby pool); every other slot starts as `ftvm standby`. With three
 * slots there is a primary, a backup and a spare standby.
 *
 * Fault points:
 * - every slot's logging channel is reached through its own fault proxy (src/testing/fault-proxy.ts; the
 *   standby registers the proxy's address with `--advertise`), so the channel of the current pair is cut
 *   at the backup's proxy;
 * - the arbiter (an `ftvm arbiter` process, or one etcd member) is reached through a fault proxy;
 * - the fault proxies run in a process of their own ({@link FaultProxyHost}): the harness's clients and
 *   checker share no event loop with the pair's channel, so a stall of the harness cannot fail the pair over;
 * - processes are killed (-9), paused (SIGSTOP) and resumed (SIGCONT) by PID.
 *
 * A replica that died (killed, or halted after losing a claim) is replaced in one place,
 * {@link Cluster.replaceDeadReplica}: it is restarted as a fresh standby on the same ports with a new
 * host id, as a repaired machine would rejoin the pool, and the primary running alone recruits it.
 */
import { appendFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { EtcdTestCluster } from '../arbiter/etcd-test-cluster.js';
import { readSecretFileSync } from '../security/secrets.js';
import { controlRequest } from '../service/control.js';
import { FaultProxyHost, type RemoteFaultProxy } from '../testing/fault-proxy-host.js';
import { CLI, guestFile, makeSecretFile, startArbiter, type ArbiterProcess } from '../testing/pair.js';
import { freePort, spawnNode, waitForPort, type ProcessHandle } from '../testing/processes.js';
import { startProxyProcess } from '../testing/proxy-harness.js';

export type ArbiterKind = 'embedded' | 'etcd';

/** The messages of the last few warning/error lines of a node's JSON log (pino: level ≥ 40). */
function lastWarnings(lines: readonly string[], n = 4): string[] {
  const out: string[] = [];
  for (let i = lines.length - 1; i >= 0 && out.length < n; i--) {
    try {
      const j = JSON.parse(lines[i]!) as { level?: number; msg?: string; reason?: string; err?: string };
      if ((j.level ?? 0) >= 40) out.unshift(`${j.msg ?? ''}${j.reason !== undefined ? ` (${j.reason})` : j.err !== undefined ? ` (${j.err})` : ''}`);
    } catch {
      if (lines[i]!.trim() !== '') out.unshift(lines[i]!.slice(0, 200));
    }
  }
  return out;
}

/** The arbiter's fault point: one FaultProxy in front of each arbiter process (each etcd member). */
export class ProxyGroup {
  constructor(readonly proxies: RemoteFaultProxy[]) {}
  /** Every member unreachable (reset and refused). */
  async cut(): Promise<void> {
    await Promise.all(this.proxies.map((p) => p.cut()));
  }
  async heal(): Promise<void> {
    for (const p of this.proxies) await p.heal();
  }
  async close(): Promise<void> {
    for (const p of this.proxies) await p.close();
  }
}

export interface Slot {
  readonly index: number;
  readonly servicePort: number;
  readonly channelPort: number;
  readonly controlPort: number;
  /** Restarts so far (the host id is `slot<index>-g<gen>`). */
  gen: number;
  proc: ProcessHandle | undefined;
  /** The slot's --proxy-listen port (with `viaProxy`; 0 otherwise). */
  readonly proxyPort: number;
  /** In front of the slot's channel port; its address is what the slot registers in the pool. */
  readonly channelProxy: RemoteFaultProxy;
  /** SIGSTOPped by the nemesis and not yet resumed. */
  paused: boolean;
}

export interface ClusterOptions {
  arbiter: ArbiterKind;
  /** Default 3: primary, backup, one spare standby. */
  slots?: number;
  guest?: string;
  /** Extra flags for every node. */
  nodeArgs?: string[];
  /** Extra flags for one slot's node at each (re)start (e.g. its own `--disk` image per generation). */
  slotArgs?: (slot: Slot) => string[];
  /** How long a node may take to start (a large guest loads slowly). Default 30 s. */
  startTimeoutMs?: number;
  /** How long `settle()` waits for a protected pair plus a spare by default (default 60 s). */
  settleTimeoutMs?: number;
  /** etcd members (default 1); with 3, the nemesis may kill one during the run. */
  etcdMembers?: number;
  log?: (line: string) => void;
  /** Keep every node's output: `<dir>/<host id>.log` when its process is replaced or the cluster stops. */
  nodeLogDir?: string;
  /** Clients go through one `ftvm proxy` (docs/PROXY.md) in front of every slot's --proxy-listen. */
  viaProxy?: boolean;
}

export interface ProtectedPair {
  primary: Slot;
  backup: Slot;
  epoch: number;
}

type Status = Record<string, unknown>;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** How long {@link Cluster.settle} must see a lost VM (see {@link vmLostBy}) before it says so. */
export const VM_LOST_CONFIRM_MS = 3000;

/** Can this replica carry the VM on: a primary that has not halted, a paused process, or a backup of an armed pair (it can go live)? */
export function carriesVm(x: Status | null): boolean {
  return (x?.role === 'primary' && (x.halted === null || x.halted === undefined)) || x?.role === 'paused' || (x?.role === 'backup' && x.phase !== 'joining' && x.phase !== 'halted' && x.phase !== 'abandoned');
}

/**
 * Is the VM lost, as far as these statuses show? Only when every slot's process answered (a running
 * process that did not answer, or a paused one, might still carry the VM) and none carries it.
 */
export function vmLostBy(statuses: readonly (Status | null)[], slots: readonly Slot[]): boolean {
  return statuses.every((x, i) => x !== null || !slots[i]!.proc?.running) && !statuses.some(carriesVm) && !slots.some((s) => s.paused);
}

export class Cluster {
  readonly slots: Slot[] = [];
  /** Replicas restarted as standbys after they died. */
  restarts = 0;
  /** The slot last seen serving as the primary (clients try it first). */
  private primaryHint = 0;
  /** The secret control requests are signed with. */
  readonly auth: Uint8Array;
  /** The VM's name (a new one after a VM was lost to a double failure and started afresh). */
  vm: string;
  /** VMs started (1 + those started after a loss). */
  vmGeneration = 1;

  private constructor(
    readonly opts: ClusterOptions,
    vm: string,
    readonly secretFile: string,
    readonly arbiterProxy: ProxyGroup,
    /** The fault proxies' own process (the harness's event loop never stalls the pair's channel). */
    readonly faultHost: FaultProxyHost,
    private readonly arbiterProc: ArbiterProcess | undefined,
    readonly etcd: EtcdTestCluster | undefined,
  ) {
    this.vm = vm;
    this.auth = readSecretFileSync(secretFile);
  }

  static async start(o: ClusterOptions): Promise<Cluster> {
    const log = o.log ?? (() => {});
    const secretFile = makeSecretFile();
    let arbiterProc: ArbiterProcess | undefined;
    let etcd: EtcdTestCluster | undefined;
    const arbiterPorts: number[] = [];
    if (o.arbiter === 'etcd') {
      etcd = await EtcdTestCluster.start({ size: o.etcdMembers ?? 1 });
      for (let i = 0; i < etcd.size; i++) arbiterPorts.push(Number(new URL(etcd.endpoint(i)).port));
    } else {
      arbiterProc = await startArbiter(secretFile);
      arbiterPorts.push(arbiterProc.port);
    }
    const faultHost = await FaultProxyHost.start();
    const arbiterProxy = new ProxyGroup(await Promise.all(arbiterPorts.map((targetPort) => faultHost.proxy({ targetPort }))));
    const vm = `jepsen-${Math.random().toString(36).slice(2, 10)}`;
    const c = new Cluster(o, vm, secretFile, arbiterProxy, faultHost, arbiterProc, etcd);
    try {
      for (let i = 0; i < (o.slots ?? 3); i++) {
        const channelPort = await freePort();
        c.slots.push({
          index: i,
          servicePort: await freePort(),
          channelPort,
          controlPort: await freePort(),
          proxyPort: o.viaProxy === true ? await freePort() : 0,
          gen: 0,
          proc: undefined,
          channelProxy: await faultHost.proxy({ targetPort: channelPort }),
          paused: false,
        });
      }
      log(`arbiter ${o.arbiter} at ${c.arbiterUrl} (through a fault proxy); ${c.slots.length} slots`);
      await c.startPrimary(c.slots[0]!);
      await Promise.all(c.slots.slice(1).map((s) => c.startStandby(s)));
      if (o.viaProxy === true) await c.startProxy();
    } catch (err) {
      await c.stop();
      throw err;
    }
    return c;
  }

  /** What the nodes are given: the arbiter through its fault proxy. */
  get arbiterUrl(): string {
    return `${this.opts.arbiter === 'etcd' ? 'etcd' : 'ftvm'}://${this.arbiterProxy.proxies.map((p) => `127.0.0.1:${p.port}`).join(',')}`;
  }

  hostId(s: Slot): string {
    return `slot${s.index}-g${s.gen}`;
  }

  control(s: Slot): string {
    return `127.0.0.1:${s.controlPort}`;
  }

  /** `ftvm proxy` in front of the VM (with `viaProxy`). */
  proxy: ProcessHandle | undefined;
  private proxyListenPort = 0;

  private async startProxy(): Promise<void> {
    this.proxyListenPort ||= await freePort();
    this.proxy = await startProxyProcess(this.secretFile, this.vm, this.proxyListenPort, this.slots.map((s) => s.proxyPort));
  }

  /** Where clients connect: the proxy's port (with `viaProxy`), or every slot's service port. */
  clientPorts(): number[] {
    return this.opts.viaProxy === true ? [this.proxyListenPort] : this.servicePorts();
  }

  /** Every slot's service port, the one last seen serving first. */
  servicePorts(): number[] {
    const hint = this.slots[this.primaryHint];
    return [...(hint ? [hint.servicePort] : []), ...this.slots.filter((s) => s !== hint).map((s) => s.servicePort)];
  }

  private common(s: Slot): string[] {
    const etcdArgs = this.opts.arbiter === 'etcd' ? ['--arbiter-deadline-ms', '2000'] : [];
    return [
      '--service', `127.0.0.1:${s.servicePort}`,
      '--control', this.control(s),
      '--secret-file', this.secretFile,
      '--arbiter', this.arbiterUrl,
      '--vm-name', this.vm,
      '--host-id', this.hostId(s),
      '--node-id', `node-${this.hostId(s)}`,
      ...etcdArgs,
      ...(this.opts.viaProxy === true ? ['--proxy-listen', `127.0.0.1:${s.proxyPort}`] : []),
      ...(this.opts.nodeArgs ?? []),
      ...(this.opts.slotArgs?.(s) ?? []),
    ];
  }

  private async startPrimary(s: Slot): Promise<void> {
    s.proc = spawnNode([CLI, 'run', guestFile(this.opts.guest ?? 'kv'), '--role', 'primary', ...this.common(s)], { name: `primary-${this.hostId(s)}` });
    await s.proc.waitForLine(/primary is serving/, this.opts.startTimeoutMs ?? 30_000, { stream: 'stderr' });
    await waitForPort(s.servicePort);
  }

  private async startStandby(s: Slot): Promise<void> {
    s.paused = false;
    s.proc = spawnNode(
      [CLI, 'standby', guestFile(this.opts.guest ?? 'kv'), '--channel', `127.0.0.1:${s.channelPort}`, '--advertise', `127.0.0.1:${s.channelProxy.port}`, ...this.common(s)],
      { name: `standby-${this.hostId(s)}` },
    );
    await s.proc.waitForLine(/standby is in the pool/, this.opts.startTimeoutMs ?? 30_000, { stream: 'stderr' });
  }

  /**
   * THE place a dead replica is replaced: the slot's process (killed, or halted after losing a claim)
   * is restarted as a fresh standby on the same ports with a new host id; a primary running alone
   * recruits it and clones the running VM to it.
   */
  async replaceDeadReplica(s: Slot): Promise<void> {
    if (s.proc && !s.proc.running && s.proc.exitStatus?.signal !== 'SIGKILL') {
      // It ended by itself (halted, refused, failed): say why, from its last warnings and errors.
      this.opts.log?.(`slot ${s.index}: ${this.hostId(s)} exited (${s.proc.exitStatus?.signal ?? `code ${String(s.proc.exitStatus?.code)}`}): ${lastWarnings(s.proc.stderr.tail(200)).join(' | ')}`);
    }
    if (s.proc?.running) {
      s.proc.kill('SIGKILL');
      await s.proc.exited;
    }
    this.saveNodeLog(s);
    s.gen++;
    this.restarts++;
    this.opts.log?.(`slot ${s.index}: restarting as standby ${this.hostId(s)}`);
    await this.startStandby(s);
  }

  /** Replaces every slot whose process has exited; returns how many. */
  async reviveDead(): Promise<number> {
    const dead = this.slots.filter((s) => s.proc !== undefined && !s.proc.running);
    for (const s of dead) await this.replaceDeadReplica(s);
    return dead.length;
  }

  kill(s: Slot): void {
    if (s.paused) this.resume(s);
    s.proc?.kill('SIGKILL');
  }

  pause(s: Slot): void {
    if (s.proc?.kill('SIGSTOP')) s.paused = true;
  }

  resume(s: Slot): void {
    if (!s.paused) return;
    s.paused = false;
    s.proc?.kill('SIGCONT');
  }

  async status(s: Slot): Promise<Status | null> {
    if (!s.proc?.running || s.paused) return null;
    try {
      return (await controlRequest(this.control(s), this.auth, 'GET', '/status', 1000)) as Status;
    } catch {
      return null;
    }
  }

  /** The protected pair now, if there is one. */
  async protectedPair(): Promise<{ pair: ProtectedPair | undefined; statuses: (Status | null)[] }> {
    const statuses = await Promise.all(this.slots.map((s) => this.status(s)));
    const pi = statuses.findIndex((x) => x?.role === 'primary' && x.alone === false && x.backup === 'connected');
    if (pi === -1) {
      const live = statuses.findIndex((x) => x?.role === 'primary' && x.halted !== true);
      if (live !== -1) this.primaryHint = live;
      return { pair: undefined, statuses };
    }
    this.primaryHint = pi;
    const epoch = statuses[pi]!.epoch as number;
    const bi = statuses.findIndex((x, i) => i !== pi && x?.role === 'backup' && x.epoch === epoch && x.phase === 'following' && x.primary === 'connected');
    if (bi === -1) return { pair: undefined, statuses };
    return { pair: { primary: this.slots[pi]!, backup: this.slots[bi]!, epoch }, statuses };
  }

  /**
   * Heals every fault, replaces dead replicas and waits until there is a protected pair and every other
   * slot is a standby in the pool: the state every fault starts from.
   *
   * A VM that nothing can carry on any more (no primary that has not halted, no backup of an armed
   * pair, every slot answering: e.g. a backup that won a claim against a slow primary and was then
   * killed before it had a backup of its own, a double failure) never settles by itself: once that has
   * held for {@link VM_LOST_CONFIRM_MS}, {@link onVmLost} is called (it reports the loss and starts a
   * fresh VM) and settling goes on; without the hook, settle fails at once saying so.
   */
  async settle(timeoutMs = this.opts.settleTimeoutMs ?? 60_000): Promise<ProtectedPair> {
    for (const s of this.slots) this.resume(s);
    await this.healNetwork();
    let until = performance.now() + timeoutMs;
    let last = '';
    let lostSinceMs: number | undefined;
    for (;;) {
      await this.reviveDead();
      const { pair, statuses } = await this.protectedPair();
      if (pair) {
        const spares = statuses.filter((x, i) => i !== pair.primary.index && i !== pair.backup.index && x?.role === 'standby');
        if (spares.length === this.slots.length - 2) return pair;
      }
      last = JSON.stringify(statuses.map((x, i) => [i, x?.role ?? (this.slots[i]!.proc?.running ? 'no answer' : 'exited'), x?.backup ?? x?.phase ?? x?.pool, x?.epoch]));
      if (vmLostBy(statuses, this.slots)) {
        lostSinceMs ??= performance.now();
        if (performance.now() - lostSinceMs >= VM_LOST_CONFIRM_MS) {
          if (!this.onVmLost) throw new Error(`the VM ${this.vm} is lost: no replica can carry it on (a double failure): ${last}`);
          await this.onVmLost();
          lostSinceMs = undefined;
          until = performance.now() + timeoutMs; // the fresh VM's pair is formed from scratch
          continue;
        }
      } else {
        lostSinceMs = undefined;
      }
      if (performance.now() > until) throw new Error(`the cluster did not settle into a protected pair within ${timeoutMs} ms: ${last}`);
      await sleep(50);
    }
  }

  /**
   * Called by {@link settle} when the VM is lost (see there): reports it and starts a fresh VM
   * ({@link restartVm}). Set by the run that owns the history.
   */
  onVmLost: (() => Promise<void>) | undefined;

  async healNetwork(): Promise<void> {
    await this.arbiterProxy.heal();
    for (const s of this.slots) await s.channelProxy.heal();
  }

  /** Any slot serving clients as a primary (protected or alone). */
  async servingSlot(): Promise<Slot | undefined> {
    const statuses = await Promise.all(this.slots.map((s) => this.status(s)));
    const i = statuses.findIndex((x) => x?.role === 'primary' && x.halted !== true);
    return i === -1 ? undefined : this.slots[i];
  }

  /**
   * Can the VM still be carried on? Some slot is a primary that has not halted, or a backup following
   * an armed pair (it can go live). After a double failure (the primary killed while it ran alone, its
   * joiner not armed yet) neither exists: the VM is lost, by design.
   */
  async vmAlive(): Promise<boolean> {
    const statuses = await Promise.all(this.slots.map((s) => (s.paused ? Promise.resolve({ role: 'paused' } as Status) : this.status(s))));
    return statuses.some(carriesVm);
  }

  /**
   * A VM lost to a double failure: every slot is stopped and a fresh VM (a new name at the arbiter)
   * starts on the same slots, as an operator would recreate it. The caller reports the loss separately.
   */
  async restartVm(): Promise<void> {
    for (const s of this.slots) this.resume(s);
    await Promise.all(this.slots.map(async (s) => {
      if (s.proc?.running) {
        s.proc.kill('SIGKILL');
        await s.proc.exited;
      }
    }));
    await this.healNetwork();
    this.vmGeneration++;
    this.vm = `${this.vm.replace(/-v\d+$/, '')}-v${this.vmGeneration}`;
    for (const s of this.slots) s.gen++;
    this.opts.log?.(`VM lost: starting a fresh VM ${this.vm}`);
    await this.startPrimary(this.slots[0]!);
    await Promise.all(this.slots.slice(1).map((s) => this.startStandby(s)));
    if (this.opts.viaProxy === true) {
      await this.proxy?.stop();
      await this.startProxy();
    }
  }

  /** Writes the slot's current process output to the node log directory (if one was given). */
  private saveNodeLog(s: Slot): void {
    const dir = this.opts.nodeLogDir;
    if (dir === undefined || s.proc === undefined) return;
    mkdirSync(dir, { recursive: true });
    const text = [...s.proc.stdout.lines, ...s.proc.stderr.lines].join('\n');
    appendFileSync(join(dir, `${this.vm}-${this.hostId(s)}.log`), `${text}\n`);
  }

  async stop(): Promise<void> {
    await this.proxy?.stop();
    for (const s of this.slots) this.resume(s);
    await Promise.all(this.slots.map((s) => s.proc?.stop(3000)));
    for (const s of this.slots) this.saveNodeLog(s);
    await Promise.all(this.slots.map((s) => s.channelProxy.close()));
    await this.arbiterProxy.close();
    await this.faultHost.close();
    await this.arbiterProc?.proc.stop();
    await this.etcd?.stop();
  }
}

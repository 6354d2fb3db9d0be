/**
 * Test harness for re-replication: a VM served by real `ftvm` processes in "slots" (fixed loopback
 * ports and a host id each). Slot 0 starts as a primary with no backup (`run --role primary` with an
 * arbiter and no --peer: it recruits from the pool); every other slot starts as `ftvm standby`. A
 * killed slot is restarted as a fresh standby on the same ports with a new host id, as a repaired
 * machine would rejoin the pool.
 */
import { readSecretFileSync } from '../security/secrets.js';
import { controlRequest } from '../service/control.js';
import { CLI, guestFile, makeSecretFile, startArbiter, type ArbiterProcess } from './pair.js';
import { freePort, spawnNode, waitForPort, type ProcessHandle } from './processes.js';

export interface Slot {
  index: number;
  servicePort: number;
  channelPort: number;
  controlPort: number;
  /** Generation: bumped at each restart (the host id is `slot<index>-g<gen>`). */
  gen: number;
  proc: ProcessHandle | undefined;
}

export interface PoolOptions {
  guest?: string;
  slots?: number;
  /** Use this arbiter (e.g. an etcd cluster's URL); default: start an embedded one. */
  arbiterUrl?: string;
  vm?: string;
  /** Extra flags for every node (timings…). */
  nodeArgs?: string[];
  /** The channel address a standby registers (e.g. a fault proxy in front of it), by slot. */
  advertise?: (slot: Slot) => string | undefined;
  /** Extra flags for one slot's node at each (re)start, e.g. its own `--disk` image per generation. */
  slotArgs?: (slot: Slot) => string[];
  /** How long a node may take to start (a large guest takes a while to load). Default 20 s. */
  startTimeoutMs?: number;
  /** Start the standbys while the primary starts (a large guest loads in each process at once). */
  parallelStart?: boolean;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class Pool {
  readonly slots: Slot[] = [];
  /** The secret control requests are signed with. */
  readonly auth: Uint8Array;
  private constructor(
    readonly opts: Required<Pick<PoolOptions, 'guest' | 'vm'>> & PoolOptions,
    readonly secretFile: string,
    readonly arbiterUrl: string,
    readonly arbiter: ArbiterProcess | undefined,
  ) {
    this.auth = readSecretFileSync(secretFile);
  }

  static async start(o: PoolOptions = {}): Promise<Pool> {
    const secretFile = makeSecretFile();
    const arbiter = o.arbiterUrl ? undefined : await startArbiter(secretFile);
    const vm = o.vm ?? `vm-${Math.random().toString(36).slice(2, 10)}`;
    const pool = new Pool({ ...o, guest: o.guest ?? 'kv', vm }, secretFile, o.arbiterUrl ?? arbiter!.url, arbiter);
    for (let i = 0; i < (o.slots ?? 3); i++) {
      pool.slots.push({ index: i, servicePort: await freePort(), channelPort: await freePort(), controlPort: await freePort(), gen: 0, proc: undefined });
    }
    if (o.parallelStart) {
      await Promise.all([pool.startPrimary(pool.slots[0]!), ...pool.slots.slice(1).map((s) => pool.startStandby(s))]);
    } else {
      await pool.startPrimary(pool.slots[0]!);
      for (const s of pool.slots.slice(1)) await pool.startStandby(s);
    }
    return pool;
  }

  get servicePorts(): number[] {
    return this.slots.map((s) => s.servicePort);
  }

  control(s: Slot): string {
    return `127.0.0.1:${s.controlPort}`;
  }

  hostId(s: Slot): string {
    return `slot${s.index}-g${s.gen}`;
  }

  private common(s: Slot): string[] {
    return [
      '--service', `127.0.0.1:${s.servicePort}`,
      '--control', this.control(s),
      '--secret-file', this.secretFile,
      '--arbiter', this.arbiterUrl,
      '--vm-name', this.opts.vm,
      '--host-id', this.hostId(s),
      '--node-id', `node-${this.hostId(s)}`,
      ...(this.opts.nodeArgs ?? []),
      ...(this.opts.slotArgs?.(s) ?? []),
    ];
  }

  async startPrimary(s: Slot): Promise<void> {
    s.proc = spawnNode([CLI, 'run', guestFile(this.opts.guest), '--role', 'primary', ...this.common(s)], { name: `primary-${this.hostId(s)}` });
    await s.proc.waitForLine(/primary is serving/, this.opts.startTimeoutMs ?? 20_000, { stream: 'stderr' });
    await waitForPort(s.servicePort);
  }

  async startStandby(s: Slot): Promise<void> {
    const adv = this.opts.advertise?.(s);
    s.proc = spawnNode(
      [CLI, 'standby', guestFile(this.opts.guest), '--channel', `127.0.0.1:${s.channelPort}`, ...(adv ? ['--advertise', adv] : []), ...this.common(s)],
      { name: `standby-${this.hostId(s)}` },
    );
    await s.proc.waitForLine(/standby is in the pool/, this.opts.startTimeoutMs ?? 20_000, { stream: 'stderr' });
  }

  /** kill -9 the slot's process and restart it as a fresh standby (a new host id). */
  async killAndReplace(s: Slot): Promise<void> {
    s.proc?.kill('SIGKILL');
    await s.proc?.exited;
    s.gen++;
    await this.startStandby(s);
  }

  async status(s: Slot): Promise<Record<string, unknown> | null> {
    try {
      return (await controlRequest(this.control(s), this.auth, 'GET', '/status', 1000)) as Record<string, unknown>;
    } catch {
      return null;
    }
  }

  /** Waits until the slot's node serves as the primary (a backup that went live). */
  async waitLive(s: Slot, timeoutMs = 15_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    while ((await this.status(s))?.role !== 'primary') {
      if (Date.now() > until) throw new Error(`slot ${s.index} did not go live within ${timeoutMs} ms`);
      await sleep(20);
    }
  }

  /** Waits until one slot is a primary with an armed, connected backup; returns both slots. */
  async waitProtected(timeoutMs = 30_000): Promise<{ primary: Slot; backup: Slot; epoch: number }> {
    const until = Date.now() + timeoutMs;
    let last = '';
    for (;;) {
      const st = await Promise.all(this.slots.map(async (s) => [s, await this.status(s)] as const));
      const p = st.find(([, x]) => x?.role === 'primary' && x.alone === false && x.backup === 'connected');
      if (p) {
        const epoch = p[1]!.epoch as number;
        const b = st.find(([s, x]) => s !== p[0] && x?.role === 'backup' && x.epoch === epoch && x.phase === 'following' && x.primary === 'connected');
        if (b) return { primary: p[0], backup: b[0], epoch };
      }
      last = JSON.stringify(st.map(([s, x]) => [s.index, x?.role, x?.backup ?? x?.phase ?? x?.pool, x?.epoch]));
      if (Date.now() > until) throw new Error(`no protected pair within ${timeoutMs} ms: ${last}`);
      await sleep(50);
    }
  }

  /** Logs a state hash on the primary; waits until the backup verified the same one. */
  async hashesAgree(primary: Slot, backup: Slot, timeoutMs = 15_000): Promise<{ n: number; hash: string }> {
    const h = (await controlRequest(this.control(primary), this.auth, 'POST', '/state-hash')) as { n: number; hash: string };
    const until = Date.now() + timeoutMs;
    for (;;) {
      const b = (await controlRequest(this.control(backup), this.auth, 'GET', '/state-hash')) as { n: number; hash: string } | null;
      if (b && b.n === h.n) {
        if (b.hash !== h.hash) throw new Error(`state hashes differ at instruction ${h.n}: primary ${h.hash}, backup ${b.hash}`);
        return h;
      }
      if (Date.now() > until) throw new Error(`the backup did not verify the primary's state hash at ${h.n} within ${timeoutMs} ms (last: ${JSON.stringify(b)})`);
      await sleep(20);
    }
  }

  async stop(): Promise<void> {
    await Promise.all(this.slots.map((s) => s.proc?.stop()));
    await this.arbiter?.proc.stop();
  }
}

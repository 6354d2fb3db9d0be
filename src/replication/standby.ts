/**
 * StandbyNode (`ftvm standby`): a host waiting in a VM's standby pool at the arbiter, ready to become
 * its backup. It registers with a lease and renews it; a primary running alone recruits it (a
 * test-and-set at the arbiter), dials its channel, and streams a snapshot of the running VM followed by
 * the log. Once the snapshot is complete the standby restores it into a replaying vCPU and runs a
 * BackupNode on the same connection; when the primary arms the pair it leaves the pool. A transfer that
 * is cut, refused or abandoned before arming discards the partial state and returns it to the pool.
 */
import { ChannelListener } from '../channel/endpoints.js';
import type { ChannelConnection, LocalIdentity } from '../channel/connection.js';
import { FrameType, SnapshotPart, type Frame, type HelloFrame } from '../channel/frames.js';
import { moduleHash, type VmConfig } from '../log/recording.js';
import { SnapshotAssembler } from '../machine/snapshot-codec.js';
import { ControlServer } from '../service/control.js';
import { NodeMetrics, observabilityRoute } from '../service/metrics.js';
import { FtvmError } from '../util/errors.js';
import { bindLogContext, type Logger } from '../util/log.js';
import { BackupNode, type BackupOptions } from './node.js';
import { controlOptions, securityStatus, type Addr } from './node-common.js';
import type { NodeClock } from './env.js';
import { PoolMembership } from './pool.js';

export interface StandbyOptions extends Omit<BackupOptions, 'joined' | 'onAbandon' | 'onArmed'> {
  /** This standby's host id in the pool (primaries never recruit one on their own host). */
  hostId: string;
  /** Lease of the pool entry; renewed every third of it. */
  leaseTtlMs: number;
  /** The channel address primaries dial, as registered (defaults to `listen`). */
  advertise?: Addr;
  /** Recruited but no primary came within this long: return to the pool. */
  recruitedWaitMs?: number;
}

interface Receiving {
  conn: ChannelConnection;
  hello: HelloFrame;
  assembler: SnapshotAssembler;
  config: VmConfig | undefined;
  startedMs: number;
  receivedBytes: number;
  totalBytes: number;
}

export class StandbyNode {
  private listener: ChannelListener | undefined;
  private control: ControlServer | undefined;
  private readonly log: Logger;
  private readonly identity: LocalIdentity;
  private readonly assembler = new SnapshotAssembler(); // reused across joins (DESIGN.md §3)
  private receiving: Receiving | null = null;
  private backup: BackupNode | null = null;
  private readonly pool: PoolMembership;
  private readonly clock: NodeClock;
  private joins = 0;
  readonly metrics: NodeMetrics;

  constructor(private readonly opts: StandbyOptions) {
    this.log = opts.log;
    this.clock = opts.env.clock;
    this.metrics = opts.metrics ?? new NodeMetrics(opts.config.name);
    this.observeAsStandby();
    if (!opts.arbiter) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'a standby needs --arbiter (its pool lives there)');
    this.pool = new PoolMembership({
      arbiter: opts.arbiter,
      vm: opts.config.name,
      hostId: opts.hostId,
      channel: () => this.channel,
      leaseTtlMs: opts.leaseTtlMs,
      arbiterDeadlineMs: opts.timings.arbiterDeadlineMs,
      clock: this.clock,
      log: this.log,
      ...(opts.recruitedWaitMs !== undefined ? { recruitedWaitMs: opts.recruitedWaitMs } : {}),
      busy: () => this.receiving !== null || this.backup !== null,
    });
    this.identity = { role: 'standby', vmName: opts.config.name, moduleHash: moduleHash(opts.guest.original), epoch: 0, nextSeq: () => 0, liveness: () => opts.liveness ?? '' };
  }

  /** Metrics and log lines describe this node as a standby (again). */
  private observeAsStandby(): void {
    this.metrics.setSource(() => ({ role: 'standby', epoch: 0, protected: false, instructionNumber: 0, outputsHeld: 0, guestMemoryBytes: 0, rereplicationProgress: 0 }));
    bindLogContext(this.log, () => ({ vm: this.opts.config.name, role: 'standby', epoch: 0 }));
  }

  private get channel(): string {
    const a = this.opts.advertise ?? this.address ?? this.opts.listen;
    return `${a.host}:${a.port}`;
  }

  /** The backup this standby runs once cloned (for inspection: status, the simulator). */
  get joinedBackup(): BackupNode | null {
    return this.backup;
  }

  get address(): Addr | undefined {
    const a = this.listener?.address;
    return a ? { host: a.address, port: a.port } : undefined;
  }

  async start(): Promise<void> {
    const o = this.opts;
    // The listener must not let a newcomer replace a connection carrying a clone: onConnection decides.
    this.listener = new ChannelListener(o.listen.host, o.listen.port, { secret: o.secret, transport: o.env.transport, clock: this.clock, log: o.log.child({ part: 'channel' }), identity: this.identity }, false);
    this.listener.on('connection', (c: ChannelConnection, hello: HelloFrame) => this.onConnection(c, hello));
    await this.listener.start();
    if (o.control) {
      this.control = new ControlServer(o.control.host, o.control.port, (m, p) => this.handleControl(m, p), { ...controlOptions(o), identity: { nodeId: o.nodeId, ...(o.hostId !== undefined ? { hostId: o.hostId } : {}) } });
      await this.control.start();
    }
    await this.pool.start();
    this.log.info({ channel: this.channel, hostId: o.hostId, vm: o.config.name }, 'standby is in the pool');
  }

  private returnToPool(reason: string): void {
    this.log.warn({ reason }, 'standby: discarding the partial clone; back in the pool');
    this.receiving = null;
    this.backup = null;
    this.observeAsStandby();
    this.identity.role = 'standby';
    Object.defineProperty(this.identity, 'epoch', { value: 0, writable: true, configurable: true, enumerable: true });
    this.identity.nextSeq = () => 0;
    this.pool.returnToPool();
  }

  // ---------------------------------------------------------------- the join

  private onConnection(c: ChannelConnection, hello: HelloFrame): void {
    if (this.backup) {
      this.backup.acceptPeer(c); // a reconnection of our primary (or a refusal there)
      return;
    }
    if (this.receiving) {
      c.close('this standby is already receiving a clone');
      return;
    }
    const r: Receiving = { conn: c, hello, assembler: this.assembler, config: undefined, startedMs: this.clock.now(), receivedBytes: 0, totalBytes: 0 };
    this.receiving = r;
    this.joins++;
    this.log.info({ primary: c.remote, epoch: hello.epoch }, 'a primary is cloning its VM to this standby');
    const onFrame = (f: Frame): void => {
      if (this.receiving !== r) return;
      try {
        if (this.onSnapshotFrame(r, f)) {
          c.off('frame', onFrame);
          this.restore(r);
        }
      } catch (err) {
        const code = err instanceof FtvmError ? err.code : 'FTVM_ERR_SNAPSHOT';
        this.log.error({ code, err: (err as Error).message }, 'standby: refusing the clone');
        try {
          c.send({ type: FrameType.REFUSE, code, reason: (err as Error).message });
        } catch {
          // closing anyway
        }
        c.close(`refused the clone: ${(err as Error).message}`, true);
      }
    };
    c.on('frame', onFrame);
    c.once('close', (reason: string) => {
      if (this.receiving === r) this.returnToPool(`the transfer was cut at ${r.receivedBytes} of ${r.totalBytes} bytes (${reason})`);
    });
  }

  /** Takes one frame of the snapshot stream; true when the snapshot is complete. */
  private onSnapshotFrame(r: Receiving, f: Frame): boolean {
    if (f.type !== FrameType.SNAPSHOT) {
      if (f.type === FrameType.HEARTBEAT || f.type === FrameType.CONTROL) return false;
      throw new FtvmError('FTVM_ERR_SNAPSHOT', `expected the snapshot, got frame type ${f.type}`);
    }
    if (f.epoch !== r.hello.epoch) throw new FtvmError('FTVM_ERR_STALE_EPOCH', `snapshot of epoch ${f.epoch} on a connection of epoch ${r.hello.epoch}`);
    if (f.part === SnapshotPart.BEGIN) {
      if (r.config !== undefined) throw new FtvmError('FTVM_ERR_SNAPSHOT', 'a second snapshot header');
      let cfg: VmConfig;
      try {
        cfg = JSON.parse(f.config) as VmConfig;
      } catch {
        throw new FtvmError('FTVM_ERR_SNAPSHOT', 'the VM config in the snapshot header is not JSON');
      }
      if (cfg.name !== this.opts.config.name) throw new FtvmError('FTVM_ERR_SNAPSHOT', `the snapshot is of VM "${cfg.name}", this standby serves "${this.opts.config.name}"`);
      r.config = cfg;
      const h = r.assembler.begin(f.data);
      r.totalBytes = h.memoryBytes + h.diskBytes; // the disk streams after memory
      return h.chunks === 0;
    }
    if (r.config === undefined) throw new FtvmError('FTVM_ERR_SNAPSHOT', 'a memory chunk before the snapshot header');
    const before = r.receivedBytes;
    const frac = r.assembler.add(f.data);
    r.receivedBytes = Math.round(frac * r.totalBytes);
    if (Math.floor((4 * before) / Math.max(1, r.totalBytes)) !== Math.floor((4 * r.receivedBytes) / Math.max(1, r.totalBytes))) {
      this.log.info({ receivedBytes: r.receivedBytes, totalBytes: r.totalBytes, percent: Math.round(frac * 100) }, 'snapshot transfer');
    }
    return r.assembler.complete;
  }

  /** The snapshot is complete: restore it into a replaying vCPU and follow the log as a joining backup. */
  private restore(r: Receiving): void {
    const o = this.opts;
    const snapshot = r.assembler.finish();
    this.log.info({ memoryBytes: snapshot.memory.length, diskBytes: snapshot.disk?.length ?? 0, seq: snapshot.seq, instructionNumber: snapshot.count, ms: Math.round(this.clock.now() - r.startedMs) }, 'snapshot received; restoring and following the log');
    this.receiving = null;
    this.backup = new BackupNode({
      ...o,
      config: r.config ?? o.config,
      epoch: r.hello.epoch,
      joined: { snapshot, conn: r.conn, identity: this.identity },
      metrics: this.metrics,
      onArmed: () => void this.leave(),
      onAbandon: (reason) => this.returnToPool(reason),
    });
  }

  /** Armed: this node is the VM's backup now, no longer in the pool. */
  private leave(): Promise<void> {
    return this.pool.leave();
  }

  status(): Record<string, unknown> {
    if (this.backup) return { ...this.backup.status(), standbyHost: this.opts.hostId };
    const r = this.receiving;
    return {
      role: 'standby',
      serving: false,
      vm: this.opts.config.name,
      hostId: this.opts.hostId,
      channel: this.channel,
      pool: this.pool.note,
      joins: this.joins,
      receiving: r ? { receivedBytes: r.receivedBytes, totalBytes: r.totalBytes, percent: r.totalBytes ? Math.round((100 * r.receivedBytes) / r.totalBytes) : 0 } : null,
      ...securityStatus(this.opts),
    };
  }

  async handleControl(method: string, path: string): Promise<unknown> {
    if (method === 'GET' && path === '/status') return this.status();
    if (path === '/metrics' || path === '/timeline') return observabilityRoute(this.metrics, method, path);
    if (this.backup) return this.backup.handleControl(method, path);
    return undefined;
  }

  async stop(): Promise<void> {
    this.receiving?.conn.close('shutting down');
    await this.backup?.stop();
    await this.listener?.close();
    await this.control?.close();
    await this.pool.stop();
  }
}

/**
 * `CheckpointNode`: one replica process in checkpoint mode (`ftvm run --mode checkpoint`), built from the
 * same `NodeOptions` as the replay drivers (its environment — clock, transport, vCPU, client service —
 * and the arbiter are injected). The primary runs the guest on a record vCPU behind the client service
 * and checkpoints it to its backup (`CheckpointPrimary`); the backup keeps the last complete checkpoint
 * (`CheckpointBackup`) and, when it wins the arbiter's claim, restores it into a fresh record vCPU, closes
 * for the guest the connections of the old primary's clients (they were on the dead host) and serves
 * alone from there (a `CheckpointPrimary` with no backup).
 */
import { ChannelDialer, ChannelListener } from '../channel/endpoints.js';
import type { ChannelConnection, LocalIdentity } from '../channel/connection.js';
import { moduleHash } from '../log/recording.js';
import { ConnState } from '../machine/devices.js';
import type { Snapshot } from '../machine/machine.js';
import type { ServicePort, VcpuPort } from '../replication/env.js';
import type { Addr, NodeOptions } from '../replication/node-common.js';
import { ControlServer, RawReply } from '../service/control.js';
import { controlOptions } from '../replication/node-common.js';
import { FtvmError } from '../util/errors.js';
import { CheckpointMetrics } from './metrics.js';
import { CheckpointBackup, type CheckpointBackupOutcome } from './backup-node.js';
import { CheckpointPrimary } from './primary-node.js';

export interface CheckpointNodeOptions extends NodeOptions {
  role: 'primary' | 'backup';
  /** `--checkpoint-interval-ms`: a checkpoint at least this often (and at once when outputs wait). */
  intervalMs: number;
  /** Primary: the backup's channel address (none: serve alone, FT off). */
  peer?: Addr;
  /** Backup: where to listen for the primary's channel. */
  listen?: Addr;
  /** Where clients connect (the primary's, and the backup's once live). */
  service: Addr;
}

export class CheckpointNode {
  private vcpu: VcpuPort | undefined;
  private service: ServicePort | undefined;
  private primary: CheckpointPrimary | undefined;
  private backup: CheckpointBackup | undefined;
  private dialer: ChannelDialer | undefined;
  private listener: ChannelListener | undefined;
  private stopped = false;
  private control: ControlServer | undefined;
  /** Lives as long as the process's node (a backup gone live counts on in the same metrics). */
  readonly metrics: CheckpointMetrics;

  constructor(private readonly opts: CheckpointNodeOptions) {
    if (opts.role === 'backup' && opts.listen === undefined) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'a checkpoint backup needs --channel <host:port>');
    this.metrics = new CheckpointMetrics(opts.config.name);
  }

  /**
   * The control endpoint (`--control`): GET /status (role, the primary core's state, checkpoint totals),
   * GET /metrics (Prometheus: checkpoints, bytes, pause and encode times), GET /checkpoint/pauses/<n>
   * (the pause and encode samples of the checkpoints after the n-th, at most the last 8192).
   */
  private handleControl(method: string, path: string): unknown {
    if (method !== 'GET') return undefined;
    if (path === '/status') {
      const p = this.primary;
      return {
        role: p !== undefined ? 'primary' : this.backup !== undefined ? 'backup' : 'halted',
        mode: 'checkpoint',
        intervalMs: this.opts.intervalMs,
        ...(p !== undefined ? { primary: p.status(), guestMemoryBytes: this.vcpu?.memoryBytes ?? 0 } : {}),
        checkpoints: this.metrics.totals(),
      };
    }
    if (path === '/metrics') return this.metrics.registry.metrics().then((body) => new RawReply(this.metrics.registry.contentType, body));
    const m = /^\/checkpoint\/pauses\/(\d{1,15})$/.exec(path);
    if (m !== null) return this.metrics.samplesAfter(Number(m[1]));
    return undefined;
  }

  /** The HELLO's nextSeq carries, in checkpoint mode, the backup's last applied checkpoint (the primary's: 0). */
  private identity(role: 'primary' | 'backup', epoch: number): LocalIdentity {
    return { role, vmName: this.opts.config.name, moduleHash: moduleHash(this.opts.guest.original), epoch, mode: 'checkpoint', nextSeq: () => this.backup?.helloApplied() ?? 0 };
  }

  async start(): Promise<void> {
    const o = this.opts;
    if (o.control !== undefined) {
      this.control = new ControlServer(o.control.host, o.control.port, (m, p) => this.handleControl(m, p), { ...controlOptions(o), identity: { nodeId: o.nodeId, ...(o.hostId !== undefined ? { hostId: o.hostId } : {}) } });
      await this.control.start();
    }
    if (this.opts.role === 'primary') await this.startPrimary(this.opts.epoch, this.opts.peer === undefined);
    else await this.startBackup();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.dialer?.close();
    this.backup?.close();
    await this.listener?.close();
    await this.primary?.close();
    await this.control?.close();
    if (this.vcpu !== undefined) {
      this.vcpu.stop();
      await this.vcpu.terminate();
    }
  }

  private async startPrimary(epoch: number, alone: boolean, from?: Snapshot): Promise<void> {
    const o = this.opts;
    const log = o.log;
    const vcpu = o.env.newVcpu({
      mode: 'record',
      guest: o.guest,
      config: o.config,
      env: { kind: 'live' },
      ...(o.sliceUnits !== undefined ? { sliceUnits: o.sliceUnits } : {}),
      ...(from !== undefined ? { snapshot: from } : {}),
    });
    this.vcpu = vcpu;
    vcpu.on('vcpu-error', (err: Error) => log.error({ err: err.message }, 'the guest machine failed'));
    const service = o.env.newService({ host: o.service.host, port: o.service.port, log: log.child({ part: 'service' }) });
    this.service = service;
    if (from !== undefined) service.firstConnectionId = from.devices.maxConn + 1;
    const primary = new CheckpointPrimary({
      vmName: o.config.name,
      nodeId: o.nodeId,
      epoch,
      intervalMs: o.intervalMs,
      failTimeoutMs: o.timings.failTimeoutMs,
      arbiterDeadlineMs: o.timings.arbiterDeadlineMs,
      tickMs: o.timings.tickMs,
      clock: o.env.clock,
      arbiter: o.arbiter,
      vcpu,
      service,
      log,
      alone,
      metrics: this.metrics,
    });
    this.primary = primary;
    void primary.done.then((reason) => o.onHalt?.(reason));
    if (!alone && o.peer !== undefined) {
      const d = new ChannelDialer(o.peer.host, o.peer.port, { secret: o.secret, identity: this.identity('primary', epoch), log, transport: o.env.transport, clock: o.env.clock });
      this.dialer = d;
      d.on('connection', (c: ChannelConnection) => {
        log.info({ backup: c.remote }, 'checkpoint primary: backup connected');
        primary.attach(c);
      });
      d.start();
    }
    await primary.start();
    if (from !== undefined) {
      // The old primary's clients were connected to the dead host: their connections end for the guest
      // (as a replay backup's go-live closes them), in order.
      for (const [conn, state] of [...from.devices.conns].sort((a, b) => a[0] - b[0])) if (state === ConnState.OPEN) vcpu.input('close', conn);
    }
    log.info({ service: service.address, alone, epoch, mode: 'checkpoint' }, 'primary is serving');
  }

  private async startBackup(): Promise<void> {
    const o = this.opts;
    const listen = o.listen!;
    const backup = new CheckpointBackup({
      vmName: o.config.name,
      nodeId: o.nodeId,
      epoch: o.epoch,
      failTimeoutMs: o.timings.failTimeoutMs,
      arbiterDeadlineMs: o.timings.arbiterDeadlineMs,
      tickMs: o.timings.tickMs,
      clock: o.env.clock,
      arbiter: o.arbiter,
      log: o.log,
    });
    this.backup = backup;
    const listener = new ChannelListener(listen.host, listen.port, { secret: o.secret, identity: this.identity('backup', o.epoch), log: o.log, transport: o.env.transport, clock: o.env.clock });
    this.listener = listener;
    listener.on('connection', (c: ChannelConnection) => backup.attach(c));
    await listener.start();
    backup.start();
    o.log.info({ channel: listener.address, mode: 'checkpoint' }, 'checkpoint backup: listening');
    void backup.done.then((outcome) => this.onBackupDone(outcome));
  }

  private async onBackupDone(outcome: CheckpointBackupOutcome): Promise<void> {
    if (this.stopped) return;
    if (outcome.t === 'halted') {
      this.opts.onHalt?.(outcome.reason);
      return;
    }
    this.opts.log.warn({ epoch: outcome.epoch, checkpoint: outcome.checkpoint, count: outcome.snapshot.count }, 'checkpoint backup: going live from the last complete checkpoint');
    await this.listener?.close();
    this.listener = undefined;
    this.backup = undefined;
    try {
      await this.startPrimary(outcome.epoch, true, outcome.snapshot);
    } catch (err) {
      this.opts.log.error({ err: (err as Error).message }, 'going live failed');
      this.opts.onHalt?.(`going live failed: ${(err as Error).message}`);
    }
  }
}

/**
 * `ftvm run` (a primary or a backup process) and `ftvm status`.
 */
import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { DEFAULT_VM_CONFIG } from '../log/recording.js';
import { BackupNode, DEFAULT_TIMINGS, PrimaryNode, type Addr, type NodeOptions, type Timings } from '../replication/node.js';
import { StandbyNode } from '../replication/standby.js';
import { controlRequest, splitHostPort } from '../service/control.js';
import type { Arbiter } from '../arbiter/arbiter.js';
import { openArbiter } from '../arbiter/index.js';
import { FtvmError } from '../util/errors.js';
import { logger, type Logger } from '../util/log.js';
import { isValidVmName } from '../arbiter/record.js';
import { loadGuestFile } from './recording-cmds.js';

export function parseAddr(flag: string, v: string): Addr {
  try {
    const [host, port] = splitHostPort(v);
    return { host, port: Number(port) };
  } catch (err) {
    throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `${flag}: ${(err as Error).message}`);
  }
}

export async function readSecret(path: string | undefined, needed: boolean): Promise<Uint8Array> {
  if (path === undefined) {
    if (needed) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'a primary/backup pair needs --secret-file (the same file on both replicas; e.g. `head -c 32 /dev/urandom > ftvm.secret`)');
    return new Uint8Array(0);
  }
  let raw: Buffer;
  try {
    raw = await readFile(path);
  } catch (err) {
    throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `cannot read secret file ${path}: ${(err as Error).message}`);
  }
  const secret = raw.toString('latin1').trim().length === raw.length ? raw : Buffer.from(raw.toString('latin1').trim(), 'latin1');
  if (secret.length < 16) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `secret file ${path} holds ${secret.length} bytes; use at least 16`);
  return secret;
}

export interface RunOptions {
  role: string;
  /** This replica's disk image file: the VM gets a virtual disk of `diskSize` bytes at /data. */
  disk?: string;
  diskSize: number;
  /** WASI arguments (argv[1..]); every replica must have the same. */
  arg?: string[];
  nodeId?: string;
  hostId: string;
  /** commander's --no-recruit. */
  recruit: boolean;
  arbiter?: string;
  failTimeoutMs: number;
  arbiterDeadlineMs: number;
  service?: string;
  channel?: string;
  peer?: string;
  control?: string;
  secretFile?: string;
  vmName: string;
  epoch: number;
  heartbeatIntervalMs: number;
  grantIntervalMs: number;
  lagMaxMs: number;
  tickMs: number;
  stateHashIntervalMs: number;
  slice?: number;
}

/** How often a primary running alone looks at the standby pool. */
const RECRUIT_INTERVAL_MS = 250;

export async function runNode(guestPath: string, o: RunOptions): Promise<void> {
  if (o.role !== 'primary' && o.role !== 'backup') throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `--role must be primary or backup, not "${o.role}"`);
  const { common, service, log } = await nodeSetup(guestPath, o);
  let node: PrimaryNode | BackupNode;
  if (o.role === 'primary') {
    if (!service) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'a primary needs --service <host:port> for its clients');
    const peer = o.peer ? parseAddr('--peer', o.peer) : undefined;
    if (!peer && common.arbiter && common.recruit) log.info({ hostId: o.hostId }, 'no --peer: starting alone; a standby from the pool will be cloned into a backup');
    const secret = await readSecret(o.secretFile, peer !== undefined || common.recruit !== undefined);
    node = new PrimaryNode({ ...common, secret, service, ...(peer ? { peer } : {}) });
  } else {
    if (!o.channel) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'a backup needs --channel <host:port> to listen on for its primary');
    const secret = await readSecret(o.secretFile, true);
    node = new BackupNode({ ...common, secret, listen: parseAddr('--channel', o.channel), ...(service ? { service } : {}) });
  }
  await runUntilSignal(node, log);
}

export interface StandbyCliOptions extends Omit<RunOptions, 'role'> {
  leaseTtlMs: number;
  advertise?: string;
}

/** `ftvm standby`: wait in the VM's pool until a primary clones itself here, then be its backup. */
export async function runStandby(guestPath: string, o: StandbyCliOptions): Promise<void> {
  if (!o.arbiter) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'a standby needs --arbiter <url>: its pool is kept there');
  if (!o.channel) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'a standby needs --channel <host:port> to listen on for the recruiting primary');
  const { common, service, log } = await nodeSetup(guestPath, { ...o, role: 'standby' });
  const secret = await readSecret(o.secretFile, true);
  const node = new StandbyNode({ ...common, secret, listen: parseAddr('--channel', o.channel), hostId: o.hostId, leaseTtlMs: o.leaseTtlMs, ...(service ? { service } : {}), ...(o.advertise ? { advertise: parseAddr('--advertise', o.advertise) } : {}) });
  await runUntilSignal(node, log);
}

/** Starts the node, stops it on SIGTERM/SIGINT; runs until then. */
async function runUntilSignal(node: { start(): Promise<void>; stop(): Promise<void> }, log: Logger): Promise<never> {
  let stopping = false;
  const stop = (sig: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal: sig }, 'stopping');
    node.stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  await node.start();
  return new Promise<never>(() => undefined);
}

/** What every replica process sets up: guest, config, timings, logger, arbiter, epoch. */
async function nodeSetup(guestPath: string, o: RunOptions): Promise<{ common: Omit<NodeOptions, 'secret'>; service: Addr | undefined; log: Logger }> {
  if (!isValidVmName(o.hostId)) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `--host-id ${JSON.stringify(o.hostId)} must be 1–128 characters of [A-Za-z0-9._-]`);
  const guest = await loadGuestFile(guestPath);
  const config = { ...DEFAULT_VM_CONFIG, name: o.vmName, args: o.arg ?? [], ...(o.disk !== undefined ? { diskBytes: o.diskSize } : {}) };
  const timings: Timings = {
    failTimeoutMs: o.failTimeoutMs,
    arbiterDeadlineMs: o.arbiterDeadlineMs,
    heartbeatIntervalMs: o.heartbeatIntervalMs,
    grantIntervalMs: o.grantIntervalMs,
    lagMaxMs: o.lagMaxMs,
    tickMs: o.tickMs,
    stateHashIntervalMs: o.stateHashIntervalMs,
  };
  const log = logger(o.role, { vm: o.vmName });
  const control = o.control ? parseAddr('--control', o.control) : undefined;
  const nodeId = o.nodeId ?? `${hostname()}-${o.role}-${process.pid}`;
  let epoch = o.epoch;
  const arbiter = o.arbiter ? await openArbiterFor(o.arbiter, o.secretFile) : undefined;
  if (arbiter) {
    // The arbiter holds the VM's epoch: the primary creates the record, the backup learns it.
    const opts = { deadlineMs: o.arbiterDeadlineMs };
    if (o.role === 'primary') {
      const rec = await arbiter.init(o.vmName, { epoch: o.epoch, owner: nodeId }, opts);
      if (rec.owner !== nodeId) {
        throw new FtvmError('FTVM_ERR_STALE_EPOCH', `VM "${o.vmName}" is owned by ${rec.owner} at epoch ${rec.epoch} at the arbiter; this node (${nodeId}) will not start as its primary`);
      }
      epoch = rec.epoch;
    } else if (o.role === 'backup') {
      // A backup learns the epoch from the record if its primary created it already.
      epoch = (await arbiter.read(o.vmName, opts))?.epoch ?? o.epoch;
    }
  } else if (o.role === 'backup' || o.peer) {
    log.warn('no --arbiter: this pair cannot fail over (a silent peer only makes it wait)');
  }
  const onHalt = (reason: string): void => {
    const intentional = reason.startsWith('stopped by');
    if (intentional) log.info({ reason }, 'stopped');
    else log.error({ reason }, 'halted');
    process.exit(intentional ? 0 : 4);
  };
  const service = o.service ? parseAddr('--service', o.service) : undefined;
  const common = {
    guest,
    config,
    epoch,
    timings,
    log,
    nodeId,
    onHalt,
    ...(arbiter ? { arbiter } : {}),
    ...(arbiter && o.recruit ? { recruit: { hostId: o.hostId, intervalMs: RECRUIT_INTERVAL_MS } } : {}),
    ...(control ? { control } : {}),
    ...(o.slice !== undefined ? { sliceUnits: o.slice } : {}),
    ...(o.disk !== undefined ? { diskImagePath: o.disk } : {}),
  };
  return { common, service, log };
}

async function openArbiterFor(url: string, secretFile: string | undefined): Promise<Arbiter> {
  const secret = await readSecret(secretFile, url.startsWith('ftvm://'));
  return openArbiter(url, secret);
}

export async function status(addr: string, json: boolean): Promise<void> {
  const s = (await controlRequest(addr, 'GET', '/status')) as Record<string, unknown>;
  if (json) {
    console.log(JSON.stringify(s));
    return;
  }
  for (const [k, v] of Object.entries(s)) console.log(`${k.padEnd(26)} ${typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v)}`);
}

export const TIMING_DEFAULTS = DEFAULT_TIMINGS;

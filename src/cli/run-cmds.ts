/**
 * `ftvm run` (a primary or a backup process) and `ftvm status`.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { DEFAULT_VM_CONFIG } from '../log/recording.js';
import { BackupNode, DEFAULT_TIMINGS, PrimaryNode, type Addr, type NodeOptions, type Timings } from '../replication/node.js';
import { StandbyNode } from '../replication/standby.js';
import { controlRequest, isLoopbackHost, splitHostPort, type ControlAuth, type ControlTls } from '../service/control.js';
import { FileKeyring, Keyring, readSecretFileSync } from '../security/secrets.js';
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

const SECRET_HINT = 'the same file on every replica, mode 600; e.g. `(umask 077; head -c 32 /dev/urandom > ftvm.secret)`';

/** Reads one secret file (owner-only permissions, ≥ 16 bytes: src/security/secrets.ts). */
export async function readSecret(path: string | undefined, needed: boolean): Promise<Uint8Array> {
  if (path === undefined) {
    if (needed) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `a primary/backup pair needs --secret-file (${SECRET_HINT})`);
    return new Uint8Array(0);
  }
  return readSecretFileSync(path);
}

/** The node's keyring: --secret-file and, during a rotation, --accept-secret-file (re-read on SIGHUP). */
export function loadKeyring(secretFile: string | undefined, acceptFile: string | undefined, why: string | undefined): Keyring {
  if (secretFile === undefined) {
    if (why !== undefined) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `${why} needs --secret-file (${SECRET_HINT})`);
    if (acceptFile !== undefined) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', '--accept-secret-file needs --secret-file');
    // FT off, no arbiter, no control endpoint: nothing is authenticated, so any key will do.
    return new Keyring(randomBytes(32));
  }
  return new FileKeyring(secretFile, acceptFile);
}

/** --tls-cert/--tls-key for the control endpoint (both or neither). */
export function loadControlTls(certFile: string | undefined, keyFile: string | undefined): ControlTls | undefined {
  if (certFile === undefined && keyFile === undefined) return undefined;
  if (certFile === undefined || keyFile === undefined) throw new FtvmError('FTVM_ERR_TLS_CONFIG', '--tls-cert and --tls-key go together');
  try {
    return { cert: readFileSync(certFile), key: readFileSync(keyFile) };
  } catch (err) {
    throw new FtvmError('FTVM_ERR_TLS_CONFIG', `cannot read the control endpoint's certificate or key: ${(err as Error).message}`);
  }
}

/** How `ftvm status|stop|switchover` authenticate: the VM's secret, and a CA for an HTTPS endpoint. */
export function controlAuth(o: { secretFile?: string; tlsCa?: string }): ControlAuth {
  if (o.secretFile === undefined) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `the control endpoint needs --secret-file (the VM's secret: ${SECRET_HINT})`);
  const secret = readSecretFileSync(o.secretFile);
  if (o.tlsCa === undefined) return { secret };
  try {
    return { secret, ca: readFileSync(o.tlsCa) };
  } catch (err) {
    throw new FtvmError('FTVM_ERR_TLS_CONFIG', `cannot read --tls-ca ${o.tlsCa}: ${(err as Error).message}`);
  }
}

export interface RunOptions {
  role: string;
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
  acceptSecretFile?: string;
  insecureChannel?: boolean;
  tlsCert?: string;
  tlsKey?: string;
  vmName: string;
  epoch: number;
  heartbeatIntervalMs: number;
  grantIntervalMs: number;
  lagMaxMs: number;
  tickMs: number;
  stateHashIntervalMs: number;
  slice?: number;
}

/** Deadline of the arbiter calls a replica makes while starting (init, read). */
const STARTUP_ARBITER_DEADLINE_MS = 5000;

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
    node = new PrimaryNode({ ...common, service, ...(peer ? { peer } : {}) });
  } else {
    if (!o.channel) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'a backup needs --channel <host:port> to listen on for its primary');
    node = new BackupNode({ ...common, listen: parseAddr('--channel', o.channel), ...(service ? { service } : {}) });
  }
  await runUntilSignal(node, log, common.secret);
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
  const node = new StandbyNode({ ...common, listen: parseAddr('--channel', o.channel), hostId: o.hostId, leaseTtlMs: o.leaseTtlMs, ...(service ? { service } : {}), ...(o.advertise ? { advertise: parseAddr('--advertise', o.advertise) } : {}) });
  await runUntilSignal(node, log, common.secret);
}

/** SIGHUP: re-read the secret files (a rotation); a bad file is logged and the old secrets kept. */
export function reloadSecretsOnSighup(keyring: Keyring, log: Logger): void {
  if (!(keyring instanceof FileKeyring)) return;
  process.on('SIGHUP', () => {
    try {
      const k = keyring.reload();
      log.warn({ secretKeyId: k.current, acceptedKeyIds: k.accepted }, 'SIGHUP: secrets reloaded');
    } catch (err) {
      const e = err as FtvmError;
      log.error({ code: e.code, err: e.message }, 'SIGHUP: cannot reload the secrets; keeping the ones in use');
    }
  });
}

/** Starts the node, stops it on SIGTERM/SIGINT; runs until then. */
async function runUntilSignal(node: { start(): Promise<void>; stop(): Promise<void> }, log: Logger, keyring: Keyring): Promise<never> {
  reloadSecretsOnSighup(keyring, log);
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
async function nodeSetup(guestPath: string, o: RunOptions): Promise<{ common: NodeOptions; service: Addr | undefined; log: Logger }> {
  if (!isValidVmName(o.hostId)) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `--host-id ${JSON.stringify(o.hostId)} must be 1–128 characters of [A-Za-z0-9._-]`);
  const guest = await loadGuestFile(guestPath);
  const config = { ...DEFAULT_VM_CONFIG, name: o.vmName };
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
  const why =
    o.role === 'standby' ? 'a standby' : o.role === 'backup' ? 'a backup' : o.peer ? 'a primary with a backup' : o.arbiter && o.recruit ? 'a primary recruiting standbys' : o.control ? '--control' : o.arbiter?.startsWith('ftvm://') ? '--arbiter ftvm://' : undefined;
  const secret = loadKeyring(o.secretFile, o.acceptSecretFile, why);
  const controlTls = loadControlTls(o.tlsCert, o.tlsKey);
  const insecure = o.insecureChannel === true;
  if (control && !isLoopbackHost(control.host) && !controlTls) {
    throw new FtvmError(
      'FTVM_ERR_CONTROL_INSECURE',
      `--control ${o.control} is not a loopback address: the control endpoint listens beyond this machine only over TLS (give --tls-cert and --tls-key), or use 127.0.0.1`,
    );
  }
  if (insecure) log.warn('--insecure-channel: the logging channel and the arbiter traffic are NOT encrypted (authenticated only); for benchmarks');
  const nodeId = o.nodeId ?? `${hostname()}-${o.role}-${process.pid}`;
  let epoch = o.epoch;
  const arbiter = o.arbiter ? openArbiter(o.arbiter, secret, { insecure }) : undefined;
  if (arbiter) {
    // The arbiter holds the VM's epoch: the primary creates the record, the backup learns it.
    // At start-up nothing waits on these calls: give a busy arbiter (or a slow first TLS handshake on a
    // loaded machine) a few seconds rather than failing the start.
    const opts = { deadlineMs: Math.max(o.arbiterDeadlineMs, STARTUP_ARBITER_DEADLINE_MS) };
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
    secret,
    channelSecurity: insecure ? ('plain' as const) : ('tls-psk' as const),
    ...(controlTls ? { controlTls } : {}),
    ...(arbiter ? { arbiter } : {}),
    ...(arbiter && o.recruit ? { recruit: { hostId: o.hostId, intervalMs: RECRUIT_INTERVAL_MS } } : {}),
    ...(control ? { control } : {}),
    ...(o.slice !== undefined ? { sliceUnits: o.slice } : {}),
  };
  return { common, service, log };
}

export async function status(addr: string, auth: ControlAuth, json: boolean): Promise<void> {
  const s = (await controlRequest(addr, auth, 'GET', '/status')) as Record<string, unknown>;
  if (json) {
    console.log(JSON.stringify(s));
    return;
  }
  for (const [k, v] of Object.entries(s)) console.log(`${k.padEnd(26)} ${typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v)}`);
}

export const TIMING_DEFAULTS = DEFAULT_TIMINGS;

/**
 * `ftvm run` (a primary or a backup process) and `ftvm status`.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { DEFAULT_VM_CONFIG } from '../log/recording.js';
import { BackupNode, DEFAULT_TIMINGS, PrimaryNode, type Addr, type NodeOptions, type Timings } from '../replication/node.js';
import { StandbyNode } from '../replication/standby.js';
import { RECORD_MIN_BYTES } from '../replication/recorder.js';
import type { Arbiter } from '../arbiter/arbiter.js';
import { controlRequest, isLoopbackHost, splitHostPort, type ControlAuth, type ControlTls } from '../service/control.js';
import { FileKeyring, Keyring, readSecretFileSync } from '../security/secrets.js';
import { openArbiter } from '../arbiter/index.js';
import { FtvmError } from '../util/errors.js';
import { LivenessPort } from '../channel/liveness.js';
import { bindLogContext, logger, type Logger } from '../util/log.js';
import { isValidVmName } from '../arbiter/record.js';
import { loadGuestFile } from './recording-cmds.js';
import { realNodeEnv } from '../env/real.js';
import { CheckpointNode } from '../checkpoint/run.js';

/** `--dirty-tracking` when not given (docs/PERFORMANCE.md, "Checkpoint mode", has the measurements). */
export const DEFAULT_DIRTY_TRACKING: 'barrier' | 'compare' = 'barrier';

export function parseAddr(flag: string, v: string): Addr {
  try {
    const [host, port] = splitHostPort(v);
    return { host, port: Number(port) };
  } catch (err) {
    throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `${flag}: ${(err as Error).message}`);
  }
}

const SECRET_HINT = 'the same file on every replica, mode 600; e.g. `(umask 077; head -c 32 /dev/urandom > ftvm.secret; chmod 600 ftvm.secret)`';

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
  /** commander's --no-fast-failover. */
  fastFailover: boolean;
  arbiterDeadlineMs: number;
  service?: string;
  proxyListen?: string;
  proxyReattachTimeoutMs?: number;
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
  record?: string;
  recordMaxBytes: number;
  /** `ftvm run --mode`: replay (default: the log is replayed on the backup) or checkpoint (state transfer). */
  mode?: string;
  checkpointIntervalMs?: number;
  /** `--dirty-tracking` (checkpoint mode): barrier or compare (docs/PERFORMANCE.md, "Checkpoint mode"). */
  dirtyTracking?: string;
}

/** Deadline of the arbiter calls a replica makes while starting (init, read). */
const STARTUP_ARBITER_DEADLINE_MS = 5000;

/** How often a primary running alone looks at the standby pool. */
const RECRUIT_INTERVAL_MS = 250;

export async function runNode(guestPath: string, o: RunOptions): Promise<void> {
  if (o.role !== 'primary' && o.role !== 'backup') throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `--role must be primary or backup, not "${o.role}"`);
  if (o.record !== undefined && o.role === 'primary') {
    throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', '--record is for a backup or a standby: the backup records the log as it arrives (the primary is not slowed by a disk)');
  }
  if (o.record !== undefined && o.recordMaxBytes < RECORD_MIN_BYTES) {
    throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `--record-max-bytes must be at least ${RECORD_MIN_BYTES}`);
  }
  if (o.role === 'backup' && !o.channel) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'a backup needs --channel <host:port> to listen on for its primary');
  if (replicationMode(o) === 'checkpoint') {
    await runCheckpoint(guestPath, o);
    return;
  }
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
  announce(node, common, log);
  await runUntilSignal(node, log, common.secret);
}

/** `--mode`: replay (default) or checkpoint; anything else is refused (and checkpoint-only flags in replay). */
function replicationMode(o: { mode?: string; dirtyTracking?: string }): 'replay' | 'checkpoint' {
  const m = o.mode ?? 'replay';
  if (m !== 'replay' && m !== 'checkpoint') throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `--mode must be replay or checkpoint, not "${m}"`);
  if (o.dirtyTracking !== undefined && m !== 'checkpoint') throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', '--dirty-tracking is for --mode checkpoint');
  return m;
}

/**
 * `ftvm run --mode checkpoint` and `ftvm standby --mode checkpoint` (issue #17): a primary checkpointing
 * its guest to a backup that keeps the last complete checkpoint and goes live from it; alone with an
 * arbiter, the primary recruits a standby from the pool. Not yet in this mode: --record, proxies, disks.
 */
async function runCheckpoint(guestPath: string, o: RunOptions & { leaseTtlMs?: number; advertise?: string }): Promise<void> {
  for (const [flag, given] of [
    ['--record', o.record !== undefined],
    ['--proxy-listen', o.proxyListen !== undefined],
    ['--disk', o.disk !== undefined],
  ] as const) {
    if (given) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `${flag} is not supported with --mode checkpoint yet`);
  }
  const tracking = o.dirtyTracking ?? DEFAULT_DIRTY_TRACKING;
  if (tracking !== 'barrier' && tracking !== 'compare') throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `--dirty-tracking must be barrier or compare, not "${tracking}"`);
  const intervalMs = o.checkpointIntervalMs ?? 20;
  if (!Number.isInteger(intervalMs) || intervalMs < 1 || intervalMs > 60_000) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `--checkpoint-interval-ms must be an integer from 1 to 60000, not ${intervalMs}`);
  const { common, service, log } = await nodeSetup(guestPath, o);
  if (!service) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'a checkpoint-mode node needs --service <host:port> (a backup serves there once it goes live)');
  let node: CheckpointNode;
  if (o.role === 'primary') {
    const peer = o.peer ? parseAddr('--peer', o.peer) : undefined;
    if (!peer && common.arbiter && common.recruit) log.info({ hostId: o.hostId }, 'no --peer: starting alone; a standby from the pool will become the backup');
    node = new CheckpointNode({ ...common, role: 'primary', intervalMs, service, ...(peer ? { peer } : {}) });
  } else {
    const listen = parseAddr('--channel', o.channel!);
    const standby = o.role === 'standby';
    node = new CheckpointNode({
      ...common,
      role: standby ? 'standby' : 'backup',
      intervalMs,
      service,
      listen,
      ...(standby && o.leaseTtlMs !== undefined ? { leaseTtlMs: o.leaseTtlMs } : {}),
      ...(standby && o.advertise !== undefined ? { advertise: parseAddr('--advertise', o.advertise) } : {}),
    });
  }
  announce(node, common, log);
  await runUntilSignal(node, log, common.secret);
}

/** A node's announcement at the arbiter (for `ftvm dashboard`): lease, renewed every third of it. */
const MEMBER_TTL_MS = 3000;

/**
 * Announces this node's control address, current role and `--proxy-listen` address at the arbiter, so
 * `ftvm dashboard` finds the VM's nodes without being told and `ftvm proxy --arbiter` finds the live
 * primary's proxy port (the member whose node id is the record's owner). An arbiter without members
 * support is left alone; one that refuses the proxy field (it predates it) gets the entry without it.
 */
function announce(node: { status(): Record<string, unknown> }, common: Omit<NodeOptions, 'secret'>, log: Logger): void {
  const arbiter = common.arbiter;
  const control = common.control;
  if (!arbiter || !control) {
    if (arbiter && common.proxyListen) log.warn('--proxy-listen without --control: this node is not announced at the arbiter, so `ftvm proxy --arbiter` cannot find its proxy port (use --replicas, or give --control)');
    return;
  }
  let timer: NodeJS.Timeout | undefined;
  let failing = false;
  let proxy = common.proxyListen !== undefined ? `${common.proxyListen.host}:${common.proxyListen.port}` : undefined;
  const once = async (): Promise<void> => {
    const r = node.status().role;
    const role = typeof r === 'string' && /^[a-z-]{1,32}$/.test(r) ? r : 'unknown';
    try {
      const member = { nodeId: common.nodeId, control: `${control.host}:${control.port}`, role, ...(proxy !== undefined ? { proxy } : {}) };
      await arbiter.publishMember(common.config.name, member, MEMBER_TTL_MS, { deadlineMs: common.timings.arbiterDeadlineMs });
      failing = false;
    } catch (err) {
      if ((err as FtvmError).code === 'FTVM_ERR_ARBITER_BAD_REQUEST' && proxy !== undefined) {
        log.warn({ err: (err as Error).message }, 'the arbiter refuses the proxy address in member entries (an older arbiter?): announcing without it; `ftvm proxy --arbiter` cannot find this node');
        proxy = undefined;
        void once();
        return;
      }
      if ((err as FtvmError).code === 'FTVM_ERR_ARBITER_BAD_REQUEST') {
        log.info({ err: (err as Error).message }, 'the arbiter does not list members (an older arbiter?): not announcing this node for the dashboard');
        return;
      }
      if (!failing) log.debug({ err: (err as Error).message }, 'cannot announce this node at the arbiter; retrying');
      failing = true;
    }
    timer = setTimeout(() => void once(), Math.floor(MEMBER_TTL_MS / 3));
    timer.unref();
  };
  void once();
}

export interface StandbyCliOptions extends Omit<RunOptions, 'role'> {
  leaseTtlMs: number;
  advertise?: string;
}

/** `ftvm standby`: wait in the VM's pool until a primary clones itself here, then be its backup. */
export async function runStandby(guestPath: string, o: StandbyCliOptions): Promise<void> {
  if (!o.arbiter) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'a standby needs --arbiter <url>: its pool is kept there');
  if (!o.channel) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'a standby needs --channel <host:port> to listen on for the recruiting primary');
  if (replicationMode(o) === 'checkpoint') {
    await runCheckpoint(guestPath, { ...o, role: 'standby' });
    return;
  }
  const { common, service, log } = await nodeSetup(guestPath, { ...o, role: 'standby' });
  const node = new StandbyNode({ ...common, listen: parseAddr('--channel', o.channel), hostId: o.hostId, leaseTtlMs: o.leaseTtlMs, ...(service ? { service } : {}), ...(o.advertise ? { advertise: parseAddr('--advertise', o.advertise) } : {}) });
  announce(node, common, log);
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

/**
 * This process's liveness port (src/channel/liveness.ts): on the host it listens on for its peer (the
 * channel) or its clients (the service), advertised as `--advertise`'s host when given. It stays open
 * until the process exits. Without one, peers detect this process's death by silence only.
 */
async function openLivenessPort(o: RunOptions, log: Logger): Promise<string | undefined> {
  const listen = o.channel ?? o.service;
  const host = listen !== undefined ? parseAddr(o.channel !== undefined ? '--channel' : '--service', listen).host : '127.0.0.1';
  try {
    const port = await LivenessPort.open(host);
    const adv = (o as { advertise?: string }).advertise; // a standby's address as primaries reach it
    const advertised = adv !== undefined ? parseAddr('--advertise', adv).host : undefined;
    return advertised !== undefined ? `${advertised}:${port.address.slice(port.address.lastIndexOf(':') + 1)}` : port.address;
  } catch (err) {
    log.warn({ err: (err as Error).message }, 'no liveness port: peers detect this process\'s death by silence only');
    return undefined;
  }
}

/** What every replica process sets up: guest, config, timings, logger, arbiter, epoch. */
async function nodeSetup(guestPath: string, o: RunOptions): Promise<{ common: NodeOptions; service: Addr | undefined; log: Logger }> {
  if (!isValidVmName(o.hostId)) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `--host-id ${JSON.stringify(o.hostId)} must be 1–128 characters of [A-Za-z0-9._-]`);
  // Checkpoint mode: threaded guests accepted; every role's guest carries the store barrier unless
  // --dirty-tracking compare (a backup or standby checkpoints too once it is live).
  const guest = await loadGuestFile(guestPath, undefined, o.mode === 'checkpoint' ? { threads: true, dirtyPages: (o.dirtyTracking ?? DEFAULT_DIRTY_TRACKING) === 'barrier' } : {});
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
  const log = logger(o.role);
  // Until the node binds its own (current role and epoch), lines carry the starting ones.
  bindLogContext(log, () => ({ vm: o.vmName, role: o.role, epoch: o.epoch }));
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
      const rec = await whenArbiterAnswers(() => arbiter.init(o.vmName, { epoch: o.epoch, owner: nodeId }, opts), o.arbiter!, log);
      if (rec.owner !== nodeId) {
        throw new FtvmError('FTVM_ERR_STALE_EPOCH', `VM "${o.vmName}" is owned by ${rec.owner} at epoch ${rec.epoch} at the arbiter; this node (${nodeId}) will not start as its primary`);
      }
      epoch = rec.epoch;
    } else if (o.role === 'backup') {
      // A backup learns the epoch from the record if its primary created it already.
      epoch = (await whenArbiterAnswers(() => arbiter.read(o.vmName, opts), o.arbiter!, log))?.epoch ?? o.epoch;
    }
  } else if (o.role === 'backup' || o.peer) {
    log.warn('no --arbiter: this pair cannot fail over (a silent peer only makes it wait)');
  }
  const onHalt = (reason: string): void => {
    // `ftvm stop` on this node, or (a backup) its primary was stopped that way: not a failure.
    const intentional = reason.startsWith('stopped by') || reason.startsWith('the primary stopped intentionally');
    if (intentional) log.info({ reason }, 'stopped');
    else log.error({ reason }, 'halted');
    process.exit(intentional ? 0 : 4);
  };
  const service = o.service ? parseAddr('--service', o.service) : undefined;
  const liveness = o.fastFailover !== false ? await openLivenessPort(o, log) : undefined;
  const channelSecurity = insecure ? ('plain' as const) : ('tls-psk' as const);
  const common = {
    env: realNodeEnv(channelSecurity),
    guest,
    config,
    epoch,
    timings,
    log,
    nodeId,
    hostId: o.hostId,
    onHalt,
    fastFailover: o.fastFailover !== false,
    ...(liveness !== undefined ? { liveness } : {}),
    secret,
    channelSecurity,
    ...(controlTls ? { controlTls } : {}),
    ...(arbiter ? { arbiter } : {}),
    ...(arbiter && o.recruit ? { recruit: { hostId: o.hostId, intervalMs: RECRUIT_INTERVAL_MS } } : {}),
    ...(control ? { control } : {}),
    ...(o.slice !== undefined ? { sliceUnits: o.slice } : {}),
    ...(o.record !== undefined ? { record: { dir: o.record, maxBytes: o.recordMaxBytes } } : {}),
    ...(o.disk !== undefined ? { diskImagePath: o.disk } : {}),
    ...(o.proxyListen !== undefined ? { proxyListen: parseAddr('--proxy-listen', o.proxyListen) } : {}),
    ...(o.proxyReattachTimeoutMs !== undefined ? { proxyReattachTimeoutMs: o.proxyReattachTimeoutMs } : {}),
  };
  return { common, service, log };
}

/** How long a starting replica waits for its arbiter to answer (started just before it, say). */
export const ARBITER_STARTUP_WAIT_MS = 60_000;

/**
 * A replica's first arbiter call: while the arbiter is unreachable (not started yet), retry for up to
 * {@link ARBITER_STARTUP_WAIT_MS}, saying so once; other errors at once.
 */
async function whenArbiterAnswers<T>(call: () => Promise<T>, url: string, log: Logger): Promise<T> {
  const deadline = Date.now() + ARBITER_STARTUP_WAIT_MS;
  let said = false;
  for (;;) {
    try {
      return await call();
    } catch (err) {
      if ((err as FtvmError).code !== 'FTVM_ERR_ARBITER_UNAVAILABLE' || Date.now() >= deadline) throw err;
      if (!said) log.warn({ arbiter: url, err: (err as Error).message }, `the arbiter does not answer yet; waiting up to ${ARBITER_STARTUP_WAIT_MS / 1000} s for it`);
      said = true;
      await new Promise((res) => setTimeout(res, 250));
    }
  }
}

/** States `ftvm status --wait` can wait for. */
export const WAIT_STATES = ['up', 'serving', 'protected'] as const;
export type WaitState = (typeof WAIT_STATES)[number];

export interface StatusCliOptions {
  json: boolean;
  /** Print only the node's process id. */
  pid: boolean;
  /** Wait until the node is in this state (retrying while it does not answer yet). */
  wait?: WaitState;
  timeoutMs: number;
}

/** Whether a status object shows the state `ftvm status --wait` waits for. */
export function reached(s: Record<string, unknown>, state: WaitState): boolean {
  if (state === 'up') return true;
  const serving = s['serving'] === true && s['role'] === 'primary';
  if (state === 'serving') return serving;
  // A backup still joining (a clone or a base checkpoint under way) is connected but does not protect yet.
  return serving && s['backup'] === 'connected' && s['alone'] !== true;
}

/** GET /status, waiting (up to `o.timeoutMs`) for the node to answer and reach `o.wait`, if given. */
async function fetchStatus(addr: string, auth: ControlAuth, o: StatusCliOptions): Promise<Record<string, unknown>> {
  if (o.wait === undefined) return (await controlRequest(addr, auth, 'GET', '/status')) as Record<string, unknown>;
  const deadline = Date.now() + o.timeoutMs;
  let last = 'no answer yet';
  for (;;) {
    try {
      const s = (await controlRequest(addr, auth, 'GET', '/status', Math.max(100, Math.min(5000, deadline - Date.now())))) as Record<string, unknown>;
      if (reached(s, o.wait)) return s;
      last = `role ${String(s['role'])}, serving ${String(s['serving'])}, backup ${String(s['backup'] ?? '-')}`;
    } catch (err) {
      last = (err as Error).message;
    }
    if (Date.now() >= deadline) throw new FtvmError('FTVM_ERR_TIMEOUT', `${addr} did not become ${o.wait} within ${o.timeoutMs} ms (last: ${last})`);
    await new Promise((res) => setTimeout(res, 200));
  }
}

export async function status(addr: string, auth: ControlAuth, o: StatusCliOptions): Promise<void> {
  const s = await fetchStatus(addr, auth, o);
  if (o.pid) {
    if (typeof s['pid'] !== 'number') throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `${addr} did not report a pid`);
    console.log(String(s['pid']));
    return;
  }
  if (o.json) {
    console.log(JSON.stringify(s));
    return;
  }
  for (const [k, v] of Object.entries(s)) console.log(`${k.padEnd(26)} ${typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v)}`);
}

export const TIMING_DEFAULTS = DEFAULT_TIMINGS;

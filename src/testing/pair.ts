/**
 * Test harness: a primary and a backup as real `ftvm run` processes on loopback, optionally with a
 * fault-injecting proxy on the logging channel (the primary dials the proxy, the proxy the backup).
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readSecretFileSync } from '../security/secrets.js';
import { controlRequest } from '../service/control.js';
import { FaultProxy } from './fault-proxy.js';
import { freePort, spawnNode, waitForPort, type ProcessHandle } from './processes.js';

export const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const CLI = join(REPO_ROOT, 'dist/src/cli/main.js');
export const guestFile = (name: string): string => join(REPO_ROOT, 'build/guests', `${name}.wasm`);

export function makeSecretFile(bytes = 32): string {
  const dir = mkdtempSync(join(tmpdir(), 'ftvm-secret-'));
  const f = join(dir, 'secret');
  writeFileSync(f, randomBytes(bytes), { mode: 0o600 });
  return f;
}

export interface PairOptions {
  guest?: string;
  backupGuest?: string;
  viaProxy?: boolean;
  /** With viaProxy: keep the first this many channel bytes per direction (`proxy.captured`). */
  captureMaxBytes?: number;
  secretFile?: string;
  backupSecretFile?: string;
  primaryArgs?: string[];
  backupArgs?: string[];
  /** Wait until the primary serves (it waits for the backup first). Default true. */
  waitServing?: boolean;
  /** How long each process may take to start (loading a large guest takes a while). Default 20 s. */
  startTimeoutMs?: number;
}

export interface Pair {
  primary: ProcessHandle;
  backup: ProcessHandle;
  servicePort: number;
  channelPort: number;
  primaryControl: string;
  backupControl: string;
  proxy: FaultProxy | undefined;
  secretFile: string;
  /** The secret control requests are signed with. */
  auth: Uint8Array;
  status(which: 'primary' | 'backup'): Promise<Record<string, unknown>>;
  /** Logs a state hash on the primary and waits until the backup verified the same one. */
  hashesAgree(timeoutMs?: number): Promise<{ n: number; hash: string }>;
  stop(): Promise<void>;
}

export async function startBackup(guest: string, channelPort: number, controlPort: number, secretFile: string, extra: string[] = [], startTimeoutMs = 20_000): Promise<ProcessHandle> {
  const b = spawnNode([CLI, 'run', guestFile(guest), '--role', 'backup', '--channel', `127.0.0.1:${channelPort}`, '--control', `127.0.0.1:${controlPort}`, '--secret-file', secretFile, ...extra], { name: 'backup' });
  await b.waitForLine(/backup is waiting for the primary/, startTimeoutMs, { stream: 'stderr' });
  return b;
}

export async function startPair(o: PairOptions = {}): Promise<Pair> {
  const guest = o.guest ?? 'kv';
  const secretFile = o.secretFile ?? makeSecretFile();
  const [servicePort, channelPort, pc, bc] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const backup = await startBackup(o.backupGuest ?? guest, channelPort, bc, o.backupSecretFile ?? secretFile, o.backupArgs, o.startTimeoutMs);
  let proxy: FaultProxy | undefined;
  let peerPort = channelPort;
  if (o.viaProxy) {
    proxy = await FaultProxy.start({ targetPort: channelPort, ...(o.captureMaxBytes ? { captureMaxBytes: o.captureMaxBytes } : {}) });
    peerPort = proxy.port;
  }
  const primary = spawnNode(
    [CLI, 'run', guestFile(guest), '--role', 'primary', '--service', `127.0.0.1:${servicePort}`, '--peer', `127.0.0.1:${peerPort}`, '--control', `127.0.0.1:${pc}`, '--secret-file', secretFile, ...(o.primaryArgs ?? [])],
    { name: 'primary' },
  );
  if (o.waitServing ?? true) {
    await primary.waitForLine(/primary is serving/, o.startTimeoutMs ?? 20_000, { stream: 'stderr' });
    await waitForPort(servicePort);
  }
  const auth = readSecretFileSync(secretFile);
  const primaryControl = `127.0.0.1:${pc}`;
  const backupControl = `127.0.0.1:${bc}`;
  const status = async (which: 'primary' | 'backup'): Promise<Record<string, unknown>> =>
    (await controlRequest(which === 'primary' ? primaryControl : backupControl, auth, 'GET', '/status')) as Record<string, unknown>;
  return {
    primary,
    backup,
    servicePort,
    channelPort,
    primaryControl,
    backupControl,
    proxy,
    secretFile,
    auth,
    status,
    async hashesAgree(timeoutMs = 15_000) {
      const h = (await controlRequest(primaryControl, auth, 'POST', '/state-hash')) as { n: number; hash: string };
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const b = (await controlRequest(backupControl, auth, 'GET', '/state-hash')) as { n: number; hash: string } | null;
        if (b && b.n === h.n) {
          if (b.hash !== h.hash) throw new Error(`state hashes differ at instruction ${h.n}: primary ${h.hash}, backup ${b.hash}`);
          return h;
        }
        if (Date.now() > deadline) throw new Error(`the backup did not verify the primary's state hash at ${h.n} within ${timeoutMs} ms (last verified: ${JSON.stringify(b)})`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    async stop() {
      await Promise.all([primary.stop(), backup.stop()]);
      await proxy?.close();
    },
  };
}

export interface ArbiterProcess {
  proc: ProcessHandle;
  url: string;
  port: number;
  dataDir: string;
}

/** Starts an embedded arbiter server (`ftvm arbiter`) on a free loopback port. */
export async function startArbiter(secretFile: string, dataDir?: string, port?: number, extra: string[] = []): Promise<ArbiterProcess> {
  const dir = dataDir ?? mkdtempSync(join(tmpdir(), 'ftvm-arbiter-'));
  const p = port ?? (await freePort());
  const proc = spawnNode([CLI, 'arbiter', '--data', dir, '--listen', `127.0.0.1:${p}`, '--secret-file', secretFile, ...extra], { name: 'arbiter' });
  await proc.waitForLine(/arbiter is listening/, 20_000, { stream: 'stderr' });
  return { proc, url: `ftvm://127.0.0.1:${p}`, port: p, dataDir: dir };
}

export interface FtPair extends Pair {
  arbiter: ArbiterProcess;
  /** Where the backup serves once it goes live. */
  backupServicePort: number;
}

/**
 * A pair with an arbiter — the embedded one (started here), or any `arbiterUrl` (e.g. an etcd
 * cluster's) — and a service port on the backup for when it goes live.
 */
export async function startFtPair(o: PairOptions & { vm?: string; arbiterUrl?: string; arbiterArgs?: string[] } = {}): Promise<FtPair> {
  const secretFile = o.secretFile ?? makeSecretFile();
  const arbiter = await startArbiter(secretFile, undefined, undefined, o.arbiterArgs);
  const backupServicePort = await freePort();
  const vm = o.vm ?? `vm-${Math.random().toString(36).slice(2, 10)}`;
  const common = ['--arbiter', o.arbiterUrl ?? arbiter.url, '--vm-name', vm];
  const pair = await startPair({
    ...o,
    secretFile,
    primaryArgs: [...common, ...(o.primaryArgs ?? [])],
    backupArgs: [...common, '--service', `127.0.0.1:${backupServicePort}`, ...(o.backupArgs ?? [])],
  });
  return {
    ...pair,
    arbiter,
    backupServicePort,
    async stop() {
      await pair.stop();
      await arbiter.proc.stop();
    },
  };
}

/** A node's /status, or null when it does not answer (yet, or any more). */
export async function statusOr(auth: Uint8Array, addr: string): Promise<Record<string, unknown> | null> {
  try {
    return (await controlRequest(addr, auth, 'GET', '/status', 1000)) as Record<string, unknown>;
  } catch {
    return null;
  }
}

/** Polls `cond` every 25 ms until it holds; throws after `timeoutMs`. */
export async function waitFor(what: string, cond: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

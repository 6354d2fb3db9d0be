/**
 * Test helper: real etcd (Debian's /usr/bin/etcd, 3.4) on free 127.0.0.1 ports with temporary data
 * directories — one member or a cluster of several. Members can be SIGKILLed and restarted (with
 * `--initial-cluster-state existing`). Every signal goes to a PID this helper started; nothing else (in
 * particular not a system etcd on 2379/2380) is ever touched. As a last resort, members still alive
 * when this Node process exits are sent SIGKILL.
 *
 * `--unsafe-no-fsync` (tests only: a killed process loses nothing, a power cut would) is on by default.
 * Each member's log (zap, JSON lines) goes to `<dir>/<name>.log`; the directory is kept when
 * `FTVM_KEEP_ETCD=1`, and its path is in every error message.
 */
import { requireComponents } from '../testing/system-deps.js';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, openSync, closeSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const ETCD_BIN = process.env.FTVM_ETCD_BIN ?? '/usr/bin/etcd';

export function etcdAvailable(): boolean {
  return existsSync(ETCD_BIN);
}

export interface EtcdTestClusterOptions {
  /** Number of members (1 or 3 typically). */
  size: number;
  /** Pass --unsafe-no-fsync (default true). */
  unsafeNoFsync?: boolean;
  /** How long start/restart wait for health (default 15 s). */
  healthTimeoutMs?: number;
  /** Extra etcd flags for every member. */
  extraArgs?: string[];
}

interface Member {
  name: string;
  clientPort: number;
  peerPort: number;
  dataDir: string;
  logPath: string;
  proc: ChildProcess | undefined;
  exited: Promise<void> | undefined;
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const p of live) {
      if (p.pid !== undefined && p.exitCode === null && p.signalCode === null) {
        try {
          process.kill(p.pid, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }
    }
  });
}

import { freePorts } from '../util/ports.js';
export { freePorts };

function httpGet(port: number, path: string, timeoutMs: number): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, timeout: timeoutMs, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

function httpPostJson(port: number, path: string, body: unknown, timeoutMs: number): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    const req = http.request(
      { host: '127.0.0.1', port, path, method: 'POST', timeout: timeoutMs, agent: false, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) } },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => {
          try {
            resolve(JSON.parse(text));
          } catch (err) {
            reject(err);
          }
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end(data);
  });
}

/** The environment without ETCD_* variables (etcd reads its flags from them too). */
function etcdEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('ETCD_')) env[k] = v;
  return env;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class EtcdTestCluster {
  private stopped = false;

  private constructor(
    readonly dir: string,
    private readonly members: Member[],
    private readonly opts: Required<EtcdTestClusterOptions>,
  ) {}

  /** Starts `size` members and waits until every one reports healthy (a leader exists). */
  static async start(options: EtcdTestClusterOptions): Promise<EtcdTestCluster> {
    const opts: Required<EtcdTestClusterOptions> = { unsafeNoFsync: true, healthTimeoutMs: 15_000, extraArgs: [], ...options };
    if (process.env.FTVM_ETCD_BIN === undefined) requireComponents('etcd');
    if (!etcdAvailable()) throw new Error(`${ETCD_BIN} not found (FTVM_ETCD_BIN)`);
    if (!Number.isInteger(opts.size) || opts.size < 1) throw new Error(`bad cluster size ${opts.size}`);
    installExitHook();
    const dir = await mkdtemp(join(tmpdir(), 'ftvm-etcd-'));
    const ports = await freePorts(opts.size * 2);
    const members: Member[] = [];
    for (let i = 0; i < opts.size; i++) {
      const name = `m${i}`;
      members.push({
        name,
        clientPort: ports[2 * i] ?? 0,
        peerPort: ports[2 * i + 1] ?? 0,
        dataDir: join(dir, `${name}.data`),
        logPath: join(dir, `${name}.log`),
        proc: undefined,
        exited: undefined,
      });
    }
    const cluster = new EtcdTestCluster(dir, members, opts);
    try {
      for (let i = 0; i < members.length; i++) cluster.spawnMember(i, 'new');
      await cluster.waitHealthy(opts.healthTimeoutMs);
    } catch (err) {
      await cluster.stop();
      throw err;
    }
    return cluster;
  }

  get size(): number {
    return this.members.length;
  }

  /** Client URLs, `http://127.0.0.1:P`, of every member (alive or not). */
  get endpoints(): string[] {
    return this.members.map((m) => `http://127.0.0.1:${m.clientPort}`);
  }

  /** The arbiter URL: `etcd://127.0.0.1:P,127.0.0.1:Q,...`. */
  get url(): string {
    return `etcd://${this.members.map((m) => `127.0.0.1:${m.clientPort}`).join(',')}`;
  }

  endpoint(i: number): string {
    return `http://127.0.0.1:${this.member(i).clientPort}`;
  }

  pid(i: number): number | undefined {
    const p = this.member(i).proc;
    return p && p.exitCode === null && p.signalCode === null ? p.pid : undefined;
  }

  isRunning(i: number): boolean {
    return this.pid(i) !== undefined;
  }

  private member(i: number): Member {
    const m = this.members[i];
    if (!m) throw new Error(`no member ${i} (cluster of ${this.members.length})`);
    return m;
  }

  private initialCluster(): string {
    return this.members.map((m) => `${m.name}=http://127.0.0.1:${m.peerPort}`).join(',');
  }

  private spawnMember(i: number, state: 'new' | 'existing'): void {
    const m = this.member(i);
    if (this.isRunning(i)) throw new Error(`member ${m.name} is already running (pid ${this.pid(i)})`);
    const client = `http://127.0.0.1:${m.clientPort}`;
    const peer = `http://127.0.0.1:${m.peerPort}`;
    const args = [
      '--name', m.name,
      '--data-dir', m.dataDir,
      '--listen-client-urls', client,
      '--advertise-client-urls', client,
      '--listen-peer-urls', peer,
      '--initial-advertise-peer-urls', peer,
      '--initial-cluster', this.initialCluster(),
      '--initial-cluster-state', state,
      '--initial-cluster-token', `ftvm-test-${this.dir}`,
      '--logger', 'zap',
      '--log-outputs', 'stderr',
      ...(this.opts.unsafeNoFsync ? ['--unsafe-no-fsync'] : []),
      ...this.opts.extraArgs,
    ];
    const fd = openSync(m.logPath, 'a');
    let proc: ChildProcess;
    try {
      proc = spawn(ETCD_BIN, args, { stdio: ['ignore', fd, fd], env: etcdEnv() });
    } finally {
      closeSync(fd);
    }
    live.add(proc);
    m.proc = proc;
    m.exited = new Promise<void>((resolve) => {
      proc.once('exit', () => {
        live.delete(proc);
        resolve();
      });
      proc.once('error', () => {
        live.delete(proc);
        resolve();
      });
    });
  }

  /** Whether member i answers /health with {"health":"true"} (it has a leader and is serving). */
  async healthy(i: number, timeoutMs = 1000): Promise<boolean> {
    try {
      const r = await httpGet(this.member(i).clientPort, '/health', timeoutMs);
      return r.status === 200 && (JSON.parse(r.body) as { health?: unknown }).health === 'true';
    } catch {
      return false;
    }
  }

  /** Waits until every running member is healthy. */
  async waitHealthy(timeoutMs = this.opts.healthTimeoutMs, which?: number[]): Promise<void> {
    const until = performance.now() + timeoutMs;
    const idx = which ?? this.members.map((_, i) => i).filter((i) => this.isRunning(i));
    for (;;) {
      for (const i of idx) {
        if (!this.isRunning(i)) throw new Error(`etcd member ${this.member(i).name} exited (log: ${this.member(i).logPath})`);
      }
      const ok = await Promise.all(idx.map((i) => this.healthy(i)));
      if (ok.every(Boolean)) return;
      if (performance.now() > until) {
        const bad = idx.filter((_, k) => !ok[k]).map((i) => `${this.member(i).name} (log: ${this.member(i).logPath})`);
        throw new Error(`etcd not healthy within ${timeoutMs} ms: ${bad.join(', ')}`);
      }
      await sleep(50);
    }
  }

  /** The index of the current leader, asked of a running member (gRPC gateway /v3/maintenance/status). */
  async leaderIndex(): Promise<number | undefined> {
    for (let i = 0; i < this.members.length; i++) {
      if (!this.isRunning(i)) continue;
      try {
        const s = (await httpPostJson(this.member(i).clientPort, '/v3/maintenance/status', {}, 1000)) as { header?: { member_id?: string }; leader?: string };
        if (!s.leader || s.leader === '0') continue;
        if (s.header?.member_id === s.leader) return i;
        // Ask the others: the one whose member_id is the leader.
        for (let j = 0; j < this.members.length; j++) {
          if (j === i || !this.isRunning(j)) continue;
          const t = (await httpPostJson(this.member(j).clientPort, '/v3/maintenance/status', {}, 1000)) as { header?: { member_id?: string } };
          if (t.header?.member_id === s.leader) return j;
        }
      } catch {
        /* try the next member */
      }
    }
    return undefined;
  }

  /** SIGKILLs member i (by PID) and waits for it to exit. */
  async kill(i: number): Promise<void> {
    const m = this.member(i);
    const pid = this.pid(i);
    if (pid === undefined) return;
    process.kill(pid, 'SIGKILL');
    await m.exited;
  }

  /** Restarts a killed member on its data directory (`--initial-cluster-state existing`); waits for health. */
  async restart(i: number, timeoutMs = this.opts.healthTimeoutMs): Promise<void> {
    this.spawnMember(i, 'existing');
    await this.waitHealthy(timeoutMs, [i]);
  }

  /** Stops every member (SIGKILL by PID: the data is test data) and removes the directory. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    await Promise.all(this.members.map((_, i) => this.kill(i)));
    if (process.env.FTVM_KEEP_ETCD === '1') return;
    await rm(this.dir, { recursive: true, force: true });
  }
}

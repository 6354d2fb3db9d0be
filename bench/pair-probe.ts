/**
 * Diagnostic probe for bench:pair (not part of any npm script): where does an FT-on operation's time go?
 *
 *   node dist/bench/pair-probe.js [conns,...]           primary side (default 1,8,50)
 *   node dist/bench/pair-probe.js backup [conns,...]    backup side: replay progress as the backup sees it
 *
 * Runs the primary in this process (FT off, then FT on with a backup as a real `ftvm run` process) with
 * timing hooks on the I/O thread, and the closed-loop load in a child process (this script in `load`
 * mode). Per output it records, on the primary's I/O thread:
 *   input   client bytes handed to the vCPU (Vcpu.input)
 *   batch   the worker's batch carrying the reply arrived (Vcpu 'batch' event)  → "worker" = batch − input
 *   sent    the LOG frame was written to the channel socket (after the batch handler)
 *   release the output rule released the reply (ClientService.deliver)          → "ack wait" = release − batch
 * plus: batches per second, outputs per batch, ACK frames, the replay delay the ACKs report (time from a
 * batch until an ACK's replayedInstructionNumber covers it), CPU per operation of each process, and a
 * baseline loopback round trip between two Node processes.
 */
import { Keyring } from '../src/security/secrets.js';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance, monitorEventLoopDelay } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { RespClient } from '../src/client/resp.js';
import { ChannelConnection } from '../src/channel/connection.js';
import { loadGuestFile } from '../src/cli/recording-cmds.js';
import { DEFAULT_VM_CONFIG } from '../src/log/recording.js';
import { Vcpu, type BatchEvent } from '../src/machine/vcpu.js';
import { BackupNode, DEFAULT_TIMINGS, PrimaryNode } from '../src/replication/node.js';
import { BackupCore, type BackupInput } from '../src/replication/backup.js';
import { PrimaryCore, type PrimaryInput } from '../src/replication/primary.js';
import { ClientService } from '../src/service/clients.js';
import { freePort, spawnNode, waitForPort, type ProcessHandle } from '../src/testing/processes.js';
import { silentLogger } from '../src/util/log.js';
import { realNodeEnv } from '../src/env/real.js';
import type { WireOutput } from '../src/machine/vcpu-protocol.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = HERE.endsWith(join('dist', 'bench')) ? join(HERE, '..', '..') : join(HERE, '..');
const CLI = join(ROOT, 'dist', 'src', 'cli', 'main.js');
const GUEST = join(ROOT, 'build', 'guests', 'kv.wasm');
const SELF = fileURLToPath(import.meta.url);
const HOST = '127.0.0.1';
const PHASE_MS = Number(process.env.PROBE_MS ?? 3000);
const ACK_FIRST = process.env.PROBE_ACK_FIRST === '1';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function q(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))]!;
}
const f = (x: number, d = 3): string => (Number.isFinite(x) ? x.toFixed(d) : '-');

// ------------------------------------------------------------------ load mode (child)

async function loadMode(port: number, conns: number, ms: number): Promise<void> {
  const clients = await Promise.all(Array.from({ length: conns }, () => RespClient.connect({ host: HOST, port, maxInFlight: 1 })));
  const lat: number[] = [];
  const end = performance.now() + ms;
  let ops = 0;
  await Promise.all(
    clients.map(async (c, i) => {
      let k = i * 7919;
      for (let j = 0; j < 10_000_000; j++) {
        const t0 = performance.now();
        if (t0 >= end) break;
        k = (k * 1103515245 + 12345) & 0x7fffffff;
        const key = `key:${String(k % 10_000).padStart(12, '0')}`;
        if (k & 1024) await c.call('SET', key, 'vvvvvvvvvvvvvvvv');
        else await c.call('GET', key);
        lat.push(performance.now() - t0);
        ops++;
      }
    }),
  );
  await Promise.all(clients.map((c) => c.close()));
  process.stdout.write(JSON.stringify({ ops, opsPerSec: (ops * 1000) / ms, p50: q(lat, 0.5), p99: q(lat, 0.99), mean: lat.reduce((a, b) => a + b, 0) / lat.length }) + '\n');
}

function runLoad(port: number, conns: number, ms: number): Promise<{ ops: number; opsPerSec: number; p50: number; p99: number; mean: number; pid: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [SELF, 'load', String(port), String(conns), String(ms)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.on('exit', (code) => {
      try {
        if (code !== 0) throw new Error(`load child exited ${code}`);
        resolve({ ...(JSON.parse(out.trim().split('\n').pop()!) as { ops: number; opsPerSec: number; p50: number; p99: number; mean: number }), pid: child.pid! });
      } catch (err) {
        reject(err as Error);
      }
    });
  });
}

// ------------------------------------------------------------------ channel receive cost (either side)

/** Durations (ms) of the channel connection's data handler: MAC check, decode, the core's step, its actions. */
let channelOnData: number[] | null = null;
function hookChannel(): void {
  const proto = ChannelConnection.prototype as unknown as { onData: (chunk: Buffer) => void };
  const orig = proto.onData;
  proto.onData = function (this: ChannelConnection, chunk: Buffer) {
    if (!channelOnData) return orig.call(this, chunk);
    const t = performance.now();
    orig.call(this, chunk);
    channelOnData.push(performance.now() - t);
  };
}

// ------------------------------------------------------------------ hooks on the primary's I/O thread

interface Trace {
  input: number[];
  worker: number[];
  send: number[];
  ackWait: number[];
  serverTotal: number[];
  batches: number;
  batchesWithOutputs: number;
  outputs: number;
  acks: number;
  logFrames: number;
  replayDelay: number[];
}
let trace: Trace | null = null;
const fifo = new Map<number, number[]>();
const bySeq = new Map<number, { tIn: number; tBatch: number }>();
let pendingReplay: Array<[number, number]> = []; // [instructionNumber, tBatch]

function newTrace(): Trace {
  fifo.clear();
  bySeq.clear();
  pendingReplay = [];
  return { input: [], worker: [], send: [], ackWait: [], serverTotal: [], batches: 0, batchesWithOutputs: 0, outputs: 0, acks: 0, logFrames: 0, replayDelay: [] };
}

function installHooks(): void {
  hookChannel();
  const origInput = Vcpu.prototype.input;
  Vcpu.prototype.input = function (this: Vcpu, kind, conn, data) {
    if (trace && kind === 'data') {
      let a = fifo.get(conn);
      if (!a) fifo.set(conn, (a = []));
      a.push(performance.now());
    }
    return origInput.call(this, kind, conn, data);
  };
  const origEmit = Vcpu.prototype.emit;
  Vcpu.prototype.emit = function (this: Vcpu, event: string | symbol, ...args: unknown[]): boolean {
    if (!trace || event !== 'batch') return origEmit.call(this, event, ...args);
    const b = args[0] as BatchEvent;
    const t = performance.now();
    trace.batches++;
    if (b.outputs.length > 0) trace.batchesWithOutputs++;
    trace.outputs += b.outputs.length;
    if (b.count > 0) pendingReplay.push([b.instructionNumber, t]);
    for (const o of b.outputs) {
      if (o.kind !== 'net') continue;
      const tIn = fifo.get(o.conn)?.shift();
      if (tIn === undefined) continue;
      trace.worker.push(t - tIn);
      bySeq.set(o.seq, { tIn, tBatch: t });
    }
    const r = origEmit.call(this, event, ...args);
    trace.send.push(performance.now() - t);
    return r;
  };
  const origStep = PrimaryCore.prototype.step;
  PrimaryCore.prototype.step = function (this: PrimaryCore, input: PrimaryInput) {
    if (trace && input.t === 'frame' && input.frame.type === 3) {
      trace.acks++;
      const t = performance.now();
      const rn = input.frame.replayedInstructionNumber;
      let i = 0;
      while (i < pendingReplay.length && pendingReplay[i]![0] <= rn) trace.replayDelay.push(t - pendingReplay[i++]![1]);
      if (i > 0) pendingReplay.splice(0, i);
    }
    const out = origStep.call(this, input);
    if (trace) for (const a of out) if (a.t === 'send' && a.frame.type === 2) trace.logFrames++;
    return out;
  };
  const origDeliver = ClientService.prototype.deliver;
  ClientService.prototype.deliver = function (this: ClientService, outputs: readonly WireOutput[]) {
    if (trace) {
      const t = performance.now();
      for (const o of outputs) {
        const s = bySeq.get(o.seq);
        if (!s) continue;
        bySeq.delete(o.seq);
        trace.ackWait.push(t - s.tBatch);
        trace.serverTotal.push(t - s.tIn);
      }
    }
    return origDeliver.call(this, outputs);
  };
}

function cpuTicks(pid: number): number {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return Number(rest[11]) + Number(rest[12]); // utime + stime, in clock ticks (100 Hz)
  } catch {
    return NaN;
  }
}

// ------------------------------------------------------------------ baseline round trip between two processes

async function baselineRtt(): Promise<{ p50: number; p99: number; mean: number }> {
  const port = await freePort();
  const echo = spawnNode(['-e', `require('net').createServer(s=>{s.setNoDelay(true);s.on('data',d=>s.write(d))}).listen(${port},'127.0.0.1',()=>console.log('up'))`], { name: 'echo' });
  try {
    await echo.waitForLine(/up/, 10_000);
    const s = net.connect({ host: HOST, port });
    s.setNoDelay(true);
    await new Promise<void>((r) => s.once('connect', () => r()));
    const lat: number[] = [];
    const msg = Buffer.alloc(64, 1);
    for (let i = 0; i < 3000; i++) {
      const t0 = performance.now();
      await new Promise<void>((r) => {
        let got = 0;
        const on = (d: Buffer): void => {
          got += d.length;
          if (got >= msg.length) {
            s.off('data', on);
            r();
          }
        };
        s.on('data', on);
        s.write(msg);
      });
      lat.push(performance.now() - t0);
    }
    s.destroy();
    return { p50: q(lat, 0.5), p99: q(lat, 0.99), mean: lat.reduce((a, b) => a + b, 0) / lat.length };
  } finally {
    await echo.stop(2000);
  }
}

// ------------------------------------------------------------------ main

async function probe(conns: number[]): Promise<void> {
  installHooks();
  const rtt = await baselineRtt();
  console.log(`baseline: Node↔Node loopback TCP round trip (64 B, closed loop): p50 ${f(rtt.p50)} ms, p99 ${f(rtt.p99)} ms, mean ${f(rtt.mean)} ms`);
  const guest = await loadGuestFile(GUEST);
  const dir = mkdtempSync(join(tmpdir(), 'ftvm-probe-'));
  const secretFile = join(dir, 'secret');
  const secret = randomBytes(32);
  writeFileSync(secretFile, secret, { mode: 0o600 });
  let backup: ProcessHandle | undefined;
  try {
    for (const mode of ['off', 'on'] as const) {
      const svc = await freePort();
      let peer: { host: string; port: number } | undefined;
      if (mode === 'on') {
        const chan = await freePort();
        backup = spawnNode([CLI, 'run', GUEST, '--role', 'backup', '--channel', `${HOST}:${chan}`, '--secret-file', secretFile], { name: 'backup' });
        await backup.waitForLine(/backup is waiting for the primary/, 30_000);
        peer = { host: HOST, port: chan };
      }
      const node = new PrimaryNode({ nodeId: 'probe-primary',
        env: realNodeEnv('tls-psk'),
        guest,
        config: DEFAULT_VM_CONFIG,
        epoch: 1,
        secret: new Keyring(mode === 'on' ? secret : randomBytes(32)),
        timings: DEFAULT_TIMINGS,
        log: silentLogger,
        service: { host: HOST, port: svc },
        ...(peer ? { peer } : {}),
      });
      await node.start();
      await waitForPort(svc);
      await runLoad(svc, 8, 500); // warm-up
      for (const c of conns) {
        trace = newTrace();
        channelOnData = [];
        const eld = monitorEventLoopDelay({ resolution: 1 });
        eld.enable();
        const cpu0 = process.cpuUsage();
        const b0 = backup && mode === 'on' ? cpuTicks(backup.pid) : NaN;
        const t0 = performance.now();
        const r = await runLoad(svc, c, PHASE_MS);
        const wall = performance.now() - t0;
        const cpu = process.cpuUsage(cpu0);
        const b1 = backup && mode === 'on' ? cpuTicks(backup.pid) : NaN;
        eld.disable();
        const tr = trace;
        trace = null;
        const perOp = (us: number): string => f(us / r.ops, 1);
        console.log(
          `FT ${mode} c${c}: ${f(r.opsPerSec, 0)} ops/s, client p50 ${f(r.p50)} p99 ${f(r.p99)} mean ${f(r.mean)} ms | ` +
            `server (input→release) p50 ${f(q(tr.serverTotal, 0.5))} mean ${f(tr.serverTotal.reduce((a, b) => a + b, 0) / tr.serverTotal.length)} | ` +
            `worker (input→batch) p50 ${f(q(tr.worker, 0.5))} p99 ${f(q(tr.worker, 0.99))} | batch handler p50 ${f(q(tr.send, 0.5), 4)} | ` +
            `ack wait (batch→release) p50 ${f(q(tr.ackWait, 0.5))} p99 ${f(q(tr.ackWait, 0.99))} | ` +
            `batches ${tr.batches} (${f(tr.outputs / Math.max(1, tr.batchesWithOutputs), 2)} outputs/batch), LOG frames ${tr.logFrames}, ACKs ${tr.acks} | ` +
            `replay delay reported by ACKs p50 ${f(q(tr.replayDelay, 0.5))} p99 ${f(q(tr.replayDelay, 0.99))} max ${f(q(tr.replayDelay, 1))} | ` +
            `ACK receive handler (MAC, decode, step, release to clients) p50 ${f(q(channelOnData ?? [], 0.5), 4)} ms | ` +
            `event-loop delay p99 ${f(eld.percentile(99) / 1e6)} ms | ` +
            `CPU µs/op: primary ${perOp(cpu.user + cpu.system)}${mode === 'on' ? `, backup ${perOp((b1 - b0) * 10_000)}` : ''} (wall ${f(wall, 0)} ms)`,
        );
        await sleep(200);
      }
      await node.stop();
      if (backup) await backup.stop(3000);
      backup = undefined;
    }
  } finally {
    if (backup) await backup.stop(3000);
    rmSync(dir, { recursive: true, force: true });
  }
}

// ------------------------------------------------------------------ backup-side probe

/**
 * The backup in this process, the primary as a real process. For each LOG frame: the time from its
 * arrival until the replica's published instruction number (what the backup reports in ACKs, read here
 * every 0.5 ms instead of every 5 ms tick) reaches the frame's instruction number; and how stale the
 * value the core reports in its ACKs is.
 */
async function probeBackup(conns: number[]): Promise<void> {
  const guest = await loadGuestFile(GUEST);
  const dir = mkdtempSync(join(tmpdir(), 'ftvm-probe-'));
  const secretFile = join(dir, 'secret');
  const secret = randomBytes(32);
  writeFileSync(secretFile, secret, { mode: 0o600 });
  const chan = await freePort();
  const svc = await freePort();
  const node = new BackupNode({ nodeId: 'probe-backup', env: realNodeEnv('tls-psk'), guest, config: DEFAULT_VM_CONFIG, epoch: 1, secret: new Keyring(secret), timings: DEFAULT_TIMINGS, log: silentLogger, listen: { host: HOST, port: chan } });
  let frames: Array<[number, number]> = [];
  let delays: number[] = [];
  let ackStaleness: number[] = [];
  let idleGaps: number[] = [];
  let on = false;
  hookChannel();
  const origStep = BackupCore.prototype.step;
  BackupCore.prototype.step = function (this: BackupCore, input: BackupInput) {
    if (on && input.t === 'frame' && input.frame.type === 2) frames.push([input.frame.instructionNumber, performance.now()]);
    const out = origStep.call(this, input);
    // Experiment (PROBE_ACK_FIRST=1): write the ACK before handing the batch to the replica.
    if (ACK_FIRST && out.length > 1) out.sort((x, y) => (x.t === 'send' ? 0 : 1) - (y.t === 'send' ? 0 : 1));
    return out;
  };
  await node.start();
  const vcpu = (node as unknown as { vcpu: Vcpu }).vcpu;
  const primary = spawnNode([CLI, 'run', GUEST, '--role', 'primary', '--service', `${HOST}:${svc}`, '--peer', `${HOST}:${chan}`, '--secret-file', secretFile], { name: 'primary' });
  try {
    await primary.waitForLine(/primary is serving/, 30_000);
    await runLoad(svc, 8, 500);
    let lastCount = 0;
    let lastChange = performance.now();
    const sampler = setInterval(() => {
      if (!on) return;
      const t = performance.now();
      const n = vcpu.count;
      if (n !== lastCount) {
        idleGaps.push(t - lastChange);
        lastCount = n;
        lastChange = t;
      }
      let i = 0;
      while (i < frames.length && frames[i]![0] <= n) delays.push(t - frames[i++]![1]);
      if (i > 0) frames.splice(0, i);
      // What the core would put in an ACK now: the replayed number it took at its last tick.
      const reported = node.core.status().replayedInstructionNumber;
      if (reported < n) ackStaleness.push(t - lastChange);
    }, 0.5);
    for (const c of conns) {
      frames = [];
      delays = [];
      ackStaleness = [];
      idleGaps = [];
      channelOnData = [];
      on = true;
      const r = await runLoad(svc, c, PHASE_MS);
      on = false;
      console.log(
        `backup side${ACK_FIRST ? ' (ACK before feed)' : ''}, FT on c${c}: ${f(r.opsPerSec, 0)} ops/s | LOG frame arrival → published replica count covers it: p50 ${f(q(delays, 0.5))} p99 ${f(q(delays, 0.99))} max ${f(q(delays, 1))} ms (${delays.length} frames) | ` +
          `LOG receive handler (MAC, decode, feed the replica, grant, ACK written) p50 ${f(q(channelOnData ?? [], 0.5), 4)} p99 ${f(q(channelOnData ?? [], 0.99), 4)} ms | ` +
          `published count unchanged for p50 ${f(q(idleGaps, 0.5))} p99 ${f(q(idleGaps, 0.99))} max ${f(q(idleGaps, 1))} ms`,
      );
      await sleep(200);
    }
    clearInterval(sampler);
  } finally {
    await primary.stop(3000);
    await node.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[2] === 'backup') {
  const conns = (process.argv[3] ?? '1,8,50').split(',').map(Number).filter((n) => n > 0);
  probeBackup(conns).then(
    () => process.exit(0),
    (err: unknown) => {
      process.stderr.write(`probe failed: ${err instanceof Error ? err.stack : String(err)}\n`);
      process.exit(1);
    },
  );
} else if (process.argv[2] === 'load') {
  loadMode(Number(process.argv[3]), Number(process.argv[4]), Number(process.argv[5])).then(
    () => process.exit(0),
    (err: unknown) => {
      process.stderr.write(`load failed: ${String(err)}\n`);
      process.exit(1);
    },
  );
} else {
  const conns = (process.argv[2] ?? '1,8,50').split(',').map(Number).filter((n) => n > 0);
  probe(conns).then(
    () => process.exit(0),
    (err: unknown) => {
      process.stderr.write(`probe failed: ${err instanceof Error ? err.stack : String(err)}\n`);
      process.exit(1);
    },
  );
}

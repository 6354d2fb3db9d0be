/**
 * `ftvm demo`: a primary and a backup as child processes on loopback, a kv workload from real RESP
 * clients, and the proof at the end: both replicas' state hashes are equal.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { RespClient } from '../client/resp.js';
import { controlRequest } from '../service/control.js';
import { FtvmError } from '../util/errors.js';

const CLI = fileURLToPath(new URL('./main.js', import.meta.url));

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

function child(args: string[], name: string, lines: string[]): ChildProcess {
  const c = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, FTVM_LOG_LEVEL: 'info' } });
  let buf = '';
  c.stderr!.on('data', (d: Buffer) => {
    buf += d.toString('utf8');
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      try {
        const j = JSON.parse(line) as { msg?: string; level?: number };
        lines.push(`${name}: ${j.msg ?? line}`);
      } catch {
        lines.push(`${name}: ${line}`);
      }
    }
  });
  return c;
}

async function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `demo: timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export async function pairDemo(o: { guest: string; ops: number; clients: number }): Promise<boolean> {
  const dir = await mkdtemp(join(tmpdir(), 'ftvm-demo-'));
  const secret = join(dir, 'secret');
  await writeFile(secret, randomBytes(32), { mode: 0o600 });
  const [svc, chan, pc, bc] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const lines: string[] = [];
  const procs: ChildProcess[] = [];
  try {
    console.log('== ftvm demo: a fault-tolerant key/value VM (primary + hot backup on loopback) ==');
    procs.push(child(['run', o.guest, '--role', 'backup', '--channel', `127.0.0.1:${chan}`, '--control', `127.0.0.1:${bc}`, '--secret-file', secret], 'backup ', lines));
    await until('the backup', () => lines.some((l) => l.includes('backup is waiting')), 30_000);
    procs.push(child(['run', o.guest, '--role', 'primary', '--service', `127.0.0.1:${svc}`, '--peer', `127.0.0.1:${chan}`, '--control', `127.0.0.1:${pc}`, '--secret-file', secret], 'primary', lines));
    await until('the primary', () => lines.some((l) => l.includes('primary is serving')), 30_000);
    for (const l of lines) console.log(`   ${l}`);
    console.log(`1. primary pid ${procs[1]!.pid} serves RESP on 127.0.0.1:${svc}; backup pid ${procs[0]!.pid} replays its log`);
    console.log(`2. ${o.clients} clients send ${o.ops} commands each (SET, INCR, GET); every reply waits for the backup's ACK (the output rule)`);
    const t0 = performance.now();
    const clients = await Promise.all(Array.from({ length: o.clients }, () => RespClient.connect({ port: svc })));
    await Promise.all(
      clients.map(async (c, i) => {
        for (let j = 0; j < o.ops; j++) {
          const r = await c.call('SET', `user:${i}:${j}`, `value-${i}-${j}`);
          if (r !== 'OK') throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `unexpected reply ${String(r)}`);
          await c.call('INCR', 'requests');
        }
      }),
    );
    const total = Number(String(await clients[0]!.call('GET', 'requests')));
    const size = await clients[0]!.call('DBSIZE');
    const ms = performance.now() - t0;
    for (const c of clients) c.close();
    console.log(`   ${o.clients * o.ops * 2} commands in ${ms.toFixed(0)} ms; GET requests → ${total}; DBSIZE → ${String(size)}`);
    const ps = (await controlRequest(`127.0.0.1:${pc}`, 'GET', '/status')) as Record<string, unknown>;
    console.log(`   primary: instruction ${String(ps.instructionNumber)}, ${String(ps.entries)} log entries, ${String(ps.logBytesSent)} log bytes sent, backup at ${String(ps.backupInstructionNumber)}`);
    console.log('3. the primary logs its state hash at its next idle point; the backup checks it when it replays to that point');
    const h = (await controlRequest(`127.0.0.1:${pc}`, 'POST', '/state-hash')) as { n: number; hash: string };
    let b: { n: number; hash: string } | null = null;
    await until('the backup to verify the hash', async () => {
      b = (await controlRequest(`127.0.0.1:${bc}`, 'GET', '/state-hash')) as { n: number; hash: string } | null;
      return b !== null && b.n === h.n;
    }, 30_000);
    const bb = b as unknown as { n: number; hash: string };
    console.log(`   primary state hash at instruction ${h.n}: ${h.hash}`);
    console.log(`   backup  state hash at instruction ${bb.n}: ${bb.hash}`);
    const equal = h.hash === bb.hash;
    console.log(equal ? '4. IDENTICAL: the backup holds exactly the primary\'s state, instruction for instruction.' : '4. DIFFERENT: the replicas diverged!');
    return equal;
  } finally {
    for (const p of procs) if (p.exitCode === null) p.kill('SIGTERM');
    await Promise.all(procs.map((p) => (p.exitCode !== null ? Promise.resolve() : new Promise((r) => p.once('exit', r)))));
    await rm(dir, { recursive: true, force: true });
  }
}

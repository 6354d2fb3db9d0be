/**
 * `ftvm demo`: an arbiter, a primary, a backup and a standby as child processes on loopback; a kv
 * workload from real RESP clients; kill -9 of the primary mid-load (nothing acknowledged is lost); the
 * new primary recruits the standby and clones itself to it, and both replicas' state hashes are equal.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { callOnAnyReplica } from '../client/failover.js';
import { RespClient } from '../client/resp.js';
import { controlRequest } from '../service/control.js';
import { FtvmError } from '../util/errors.js';
import { freePort } from '../util/ports.js';
import { listSegments } from '../replication/recorder.js';
import { travelFile } from './recording-cmds.js';
import { EntryType } from '../log/entry.js';
import { readRecording } from '../log/recording.js';

const CLI = fileURLToPath(new URL('./main.js', import.meta.url));

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

type Hash = { n: number; hash: string };

/** Logs a state hash on the primary; returns it with the backup's verified hash at the same instruction. */
async function stateHashes(auth: Uint8Array, primaryControl: string, backupControl: string): Promise<[Hash, Hash]> {
  const h = (await controlRequest(primaryControl, auth, 'POST', '/state-hash')) as Hash;
  let b: Hash | null = null;
  await until('the backup to verify the state hash', async () => {
    b = (await controlRequest(backupControl, auth, 'GET', '/state-hash')) as Hash | null;
    return b !== null && b.n === h.n;
  }, 30_000);
  return [h, b as unknown as Hash];
}

export async function pairDemo(o: { guest: string; ops: number; clients: number; keep?: boolean }): Promise<boolean> {
  const dir = await mkdtemp(join(tmpdir(), 'ftvm-demo-'));
  const secret = join(dir, 'secret');
  const auth = randomBytes(32);
  await writeFile(secret, auth, { mode: 0o600 });
  const [svc, svc2, chan, pc, bc, arb] = [await freePort(), await freePort(), await freePort(), await freePort(), await freePort(), await freePort()];
  const [svc3, chan3, sc, dash] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const lines: string[] = [];
  const procs: ChildProcess[] = [];
  const show = (from: number): number => {
    for (const l of lines.slice(from)) console.log(`   ${l}`);
    return lines.length;
  };
  try {
    console.log('== ftvm demo: a fault-tolerant key/value VM (arbiter + primary + hot backup on loopback) ==');
    procs.push(child(['arbiter', '--data', join(dir, 'arbiter'), '--listen', `127.0.0.1:${arb}`, '--secret-file', secret], 'arbiter', lines));
    await until('the arbiter', () => lines.some((l) => l.includes('arbiter is listening')), 30_000);
    const common = ['--arbiter', `ftvm://127.0.0.1:${arb}`, '--vm-name', 'demo-kv', '--secret-file', secret];
    const dashboardUrl = `http://127.0.0.1:${dash}/`;
    procs.push(child(['dashboard', '--arbiter', `ftvm://127.0.0.1:${arb}`, '--secret-file', secret, '--vm-name', 'demo-kv', '--listen', `127.0.0.1:${dash}`], 'dashboard', lines));
    await until('the dashboard', () => lines.some((l) => l.includes('dashboard is serving')), 30_000);
    // Everything else starts before the pair forms, so that no start-up (each loads and instruments the
    // guest) competes for the CPU with a pair that has just begun heartbeating. The standby keeps a
    // continuous recording once it is a backup: the demo replays it at the end.
    const recordDir = await mkdtemp(join(tmpdir(), 'ftvm-demo-recording-'));
    procs.push(child(['standby', o.guest, '--channel', `127.0.0.1:${chan3}`, '--service', `127.0.0.1:${svc3}`, '--control', `127.0.0.1:${sc}`, '--host-id', 'spare-host', '--record', recordDir, ...common], 'standby', lines));
    await until('the standby', () => lines.some((l) => l.includes('standby is in the pool')), 30_000);
    procs.push(child(['run', o.guest, '--role', 'backup', '--channel', `127.0.0.1:${chan}`, '--control', `127.0.0.1:${bc}`, '--service', `127.0.0.1:${svc2}`, ...common], 'backup ', lines));
    await until('the backup', () => lines.some((l) => l.includes('backup is waiting')), 30_000);
    const primary = child(['run', o.guest, '--role', 'primary', '--service', `127.0.0.1:${svc}`, '--peer', `127.0.0.1:${chan}`, '--control', `127.0.0.1:${pc}`, ...common], 'primary', lines);
    procs.push(primary);
    await until('the primary', () => lines.some((l) => l.includes('primary is serving')), 30_000);
    let seen = show(0);
    console.log(`   watch it live: ${dashboardUrl}`);
    console.log(`1. primary pid ${primary.pid} serves RESP on 127.0.0.1:${svc}; the backup replays its log; the arbiter holds epoch 1; a standby waits in the pool`);
    const warm = await RespClient.connect({ port: svc });
    for (let i = 0; i < 100; i++) await warm.call('SET', `warm:${i}`, String(i));
    warm.close();
    const [h, bb] = await stateHashes(auth, `127.0.0.1:${pc}`, `127.0.0.1:${bc}`);
    console.log(`   after 100 writes: primary state hash at instruction ${h.n}: ${h.hash}`);
    console.log(`                     backup  state hash at instruction ${bb.n}: ${bb.hash} ${bb.hash === h.hash ? '(IDENTICAL)' : '(DIFFERENT!)'}`);
    if (bb.hash !== h.hash) return false;
    console.log(`2. ${o.clients} clients write ${o.ops} keys each; every reply waits for the backup's ACK (the output rule)`);
    const acked = new Map<string, string>();
    let killed = false;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: o.clients }, async (_, i) => {
        for (let j = 0; j < o.ops; j++) {
          const key = `user:${i}:${j}`;
          await callOnAnyReplica([svc, svc2], ['SET', key, `value-${i}-${j}`], { deadlineMs: 30_000 });
          acked.set(key, `value-${i}-${j}`);
          if (!killed && acked.size >= (o.clients * o.ops) / 2) {
            killed = true;
            primary.kill('SIGKILL');
            console.log(`3. kill -9 the primary (pid ${primary.pid}) after ${acked.size} acknowledged writes, mid-load`);
          }
        }
      }),
    );
    seen = show(seen);
    console.log(`4. the clients carried on against the new primary: ${acked.size} writes acknowledged in ${(performance.now() - t0).toFixed(0)} ms`);
    const st = (await controlRequest(`127.0.0.1:${bc}`, auth, 'GET', '/status')) as Record<string, unknown>;
    console.log(`   the former backup is now ${String(st.role)} at epoch ${String(st.epoch)}, instruction ${String(st.instructionNumber)}`);
    const c = await RespClient.connect({ port: svc2 });
    let missing = 0;
    for (const [k, v] of acked) if (String(await c.call('GET', k)) !== v) missing++;
    c.close();
    console.log(`5. read back every acknowledged write from the new primary: ${acked.size - missing} of ${acked.size} present`);
    const ok = missing === 0 && st.role === 'primary';
    console.log(ok ? '   NOTHING LOST: every write a client was told had happened survived the crash.' : '   LOST WRITES: the failover broke the output rule!');
    if (!ok) {
      show(seen);
      return false;
    }
    // Re-replication: the new primary runs alone; it recruits the standby and clones its running VM.
    let st2: Record<string, unknown> = {};
    await until('the new primary to recruit the standby and arm the pair', async () => {
      st2 = (await controlRequest(`127.0.0.1:${bc}`, auth, 'GET', '/status')) as Record<string, unknown>;
      return st2.backup === 'connected' && st2.alone === false;
    }, 60_000);
    seen = show(seen);
    const rr = st2.lastRereplication as { pauseMs: number; totalMs: number; memoryBytes: number } | null;
    console.log(
      `6. redundancy restored: the standby received a snapshot of the running VM (${((rr?.memoryBytes ?? 0) / 1048576).toFixed(1)} MiB; the guest paused ${(rr?.pauseMs ?? 0).toFixed(2)} ms) and the log, and is the backup at epoch ${String(st2.epoch)} (${(rr?.totalMs ?? 0).toFixed(0)} ms)`,
    );
    const [h2, bb2] = await stateHashes(auth, `127.0.0.1:${bc}`, `127.0.0.1:${sc}`);
    console.log(`   new primary state hash at instruction ${h2.n}: ${h2.hash}`);
    console.log(`   new backup  state hash at instruction ${bb2.n}: ${bb2.hash} ${bb2.hash === h2.hash ? '(IDENTICAL)' : '(DIFFERENT!)'}`);
    show(seen);
    if (bb2.hash !== h2.hash) return false;
    // Time travel: the new backup records the VM from its clone on; replay that recording offline to
    // the instruction where the new primary just logged its hash (once the recording holds it).
    let seg: { path: string } | undefined;
    await until('the new backup\'s recording to hold the logged state hash', async () => {
      const segs = listSegments(recordDir, 'demo-kv');
      seg = segs[segs.length - 1];
      if (seg === undefined) return false;
      const rec = await readRecording(seg.path).catch(() => undefined);
      return rec !== undefined && rec.entries.some((e) => e.type === EntryType.STATE_HASH && e.n === h2.n);
    }, 20_000);
    if (seg === undefined) return false;
    const t = await travelFile(seg.path, { to: h2.n, dumps: [], around: 0, steps: 0 });
    const same = t.hashAtTarget === h2.hash;
    console.log(`7. the new backup kept a recording of the VM from its clone on: ${seg.path}`);
    console.log(`   replayed offline to instruction ${h2.n}: state hash ${t.hashAtTarget} ${same ? "(IDENTICAL to the primary's)" : '(DIFFERENT!)'}`);
    console.log(`   look around yourself: npx ftvm replay ${seg.path} --to ${h2.n} --step`);
    console.log(`8. the dashboard showed all of it live, the failover and the re-replication as a timeline: ${dashboardUrl}`);
    if (o.keep && same) {
      console.log('   --keep: the VM, its arbiter, the dashboard and the clients\' data stay up; Ctrl-C stops them.');
      await new Promise<void>((resolve) => process.once('SIGINT', () => resolve()));
    } else if (!o.keep) {
      console.log('   (it stops with the demo; `npm run demo -- --keep` leaves everything running to explore it)');
    }
    return same;
  } finally {
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGTERM');
    await Promise.all(procs.map((p) => (p.exitCode !== null || p.signalCode !== null ? Promise.resolve() : new Promise((r) => p.once('exit', r)))));
    await rm(dir, { recursive: true, force: true });
  }
}

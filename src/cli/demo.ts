/**
 * `ftvm demo`: an arbiter, a primary, a backup and a standby as child processes on loopback; a kv
 * workload from real RESP clients; kill -9 of the primary mid-load (nothing acknowledged is lost); the
 * new primary recruits the standby and clones itself to it, and both replicas' state hashes are equal.
 *
 * `--guest sqlite` runs the same story with SQLite (guests/sqlite, an unmodified WASI program) on a
 * virtual disk: each replica keeps its own disk image; the clients run SQL transactions; after the
 * failover every acknowledged transaction is read back, `PRAGMA integrity_check` must say ok, and the
 * standby's clone carries the disk along with memory.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
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
import { NODE_FLAGS } from './node-flags.js';

const CLI = fileURLToPath(new URL('./main.js', import.meta.url));
const REPO = fileURLToPath(new URL('../../../', import.meta.url));

/** Guests the demo knows by name; anything else is a path to a kv-protocol guest. */
const DEMO_GUESTS: Record<string, { module: string; sql: boolean; defaultOps: number }> = {
  kv: { module: 'kv', sql: false, defaultOps: 300 },
  'c-server': { module: 'c_server', sql: false, defaultOps: 300 },
  'rust-server': { module: 'rust_server', sql: false, defaultOps: 300 },
  sqlite: { module: 'sqlite_server', sql: true, defaultOps: 40 },
};

/** The demo's guest: a module path, whether it speaks SQL (then it gets a disk), and the default load. */
export function demoGuest(guest: string): { path: string; name: string; sql: boolean; defaultOps: number } {
  const g = DEMO_GUESTS[guest];
  if (g === undefined) return { path: guest, name: 'kv', sql: false, defaultOps: 300 };
  return { path: join(REPO, 'build', 'guests', `${g.module}.wasm`), name: guest, sql: g.sql, defaultOps: g.defaultOps };
}

const sqlQuote = (v: string): string => `'${v.replace(/'/g, "''")}'`;

function child(args: string[], name: string, lines: string[]): ChildProcess {
  const c = spawn(process.execPath, [...NODE_FLAGS, CLI, ...args], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, FTVM_LOG_LEVEL: 'info' } });
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

export async function pairDemo(o: { guest: string; ops?: number; clients: number; keep?: boolean; mode?: 'replay' | 'checkpoint' }): Promise<boolean> {
  const g = demoGuest(o.guest);
  // Checkpoint mode (state transfer): the backup keeps the last checkpoint; no log, so no recording to
  // replay and no proxy sessions (yet), and no disk guests (yet).
  const ckpt = o.mode === 'checkpoint';
  if (ckpt && g.sql) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', '--mode checkpoint does not run guests with a disk yet: use --guest kv, c-server or rust-server');
  const modeArgs = ckpt ? ['--mode', 'checkpoint'] : [];
  const ops = o.ops ?? g.defaultOps;
  const vm = g.sql ? 'demo-sqlite' : 'demo-kv';
  /** Start-up bound of one node: SQLite is a large guest to load and instrument. */
  const startMs = g.sql ? 180_000 : 30_000;
  const dir = await mkdtemp(join(tmpdir(), 'ftvm-demo-'));
  /** With SQL: each replica its own disk image. */
  const image = (name: string): string => join(dir, `${name}.img`);
  const disk = (name: string): string[] => (g.sql ? ['--disk', image(name), '--disk-size', String(32 << 20)] : []);
  const secret = join(dir, 'secret');
  const auth = randomBytes(32);
  await writeFile(secret, auth, { mode: 0o600 });
  const [svc, svc2, chan, pc, bc, arb] = [await freePort(), await freePort(), await freePort(), await freePort(), await freePort(), await freePort()];
  const [svc3, chan3, sc, dash] = [await freePort(), await freePort(), await freePort(), await freePort()];
  // A kv-protocol ring guest: the clients go through `ftvm proxy` (docs/PROXY.md), one connection each
  // for the whole run, kill -9 included. (WASI guests do not keep proxied connections across a failover yet.)
  const viaProxy = !ckpt && !g.sql && (o.guest === 'kv' || o.guest.endsWith('/kv.wasm'));
  const [px1, px2, px3, pxl] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const proxyArgs = (port: number): string[] => (viaProxy ? ['--proxy-listen', `127.0.0.1:${port}`] : []);
  const lines: string[] = [];
  const procs: ChildProcess[] = [];
  const show = (from: number): number => {
    for (const l of lines.slice(from)) console.log(`   ${l}`);
    return lines.length;
  };
  try {
    console.log(
      g.sql
        ? '== ftvm demo: SQLite, unmodified, as a fault-tolerant VM with a replicated disk (arbiter + primary + hot backup on loopback) =='
        : ckpt
          ? '== ftvm demo: a fault-tolerant key/value VM in checkpoint mode (state transfer: arbiter + primary + backup holding its checkpoints, on loopback) =='
          : '== ftvm demo: a fault-tolerant key/value VM (arbiter + primary + hot backup on loopback) ==',
    );
    procs.push(child(['arbiter', '--data', join(dir, 'arbiter'), '--listen', `127.0.0.1:${arb}`, '--secret-file', secret], 'arbiter', lines));
    await until('the arbiter', () => lines.some((l) => l.includes('arbiter is listening')), 30_000);
    const common = ['--arbiter', `ftvm://127.0.0.1:${arb}`, '--vm-name', vm, '--secret-file', secret, ...modeArgs];
    const dashboardUrl = `http://127.0.0.1:${dash}/`;
    procs.push(child(['dashboard', '--arbiter', `ftvm://127.0.0.1:${arb}`, '--secret-file', secret, '--vm-name', vm, '--listen', `127.0.0.1:${dash}`], 'dashboard', lines));
    await until('the dashboard', () => lines.some((l) => l.includes('dashboard is serving')), 30_000);
    // Everything else starts before the pair forms, so that no start-up (each loads and instruments the
    // guest) competes for the CPU with a pair that has just begun heartbeating. The standby keeps a
    // continuous recording once it is a backup: the demo replays it at the end.
    const recordDir = await mkdtemp(join(tmpdir(), 'ftvm-demo-recording-'));
    procs.push(child(['standby', g.path, '--channel', `127.0.0.1:${chan3}`, '--service', `127.0.0.1:${svc3}`, '--control', `127.0.0.1:${sc}`, '--host-id', 'spare-host', ...(ckpt ? [] : ['--record', recordDir]), ...common, ...disk('standby'), ...proxyArgs(px3)], 'standby', lines));
    await until('the standby', () => lines.some((l) => l.includes('standby is in the pool')), startMs);
    procs.push(child(['run', g.path, '--role', 'backup', '--channel', `127.0.0.1:${chan}`, '--control', `127.0.0.1:${bc}`, '--service', `127.0.0.1:${svc2}`, ...common, ...disk('backup'), ...proxyArgs(px2)], 'backup ', lines));
    await until('the backup', () => lines.some((l) => l.includes(ckpt ? 'checkpoint backup: listening' : 'backup is waiting')), startMs);
    const primary = child(['run', g.path, '--role', 'primary', '--service', `127.0.0.1:${svc}`, '--peer', `127.0.0.1:${chan}`, '--control', `127.0.0.1:${pc}`, ...common, ...disk('primary'), ...proxyArgs(px1)], 'primary', lines);
    procs.push(primary);
    await until('the primary', () => lines.some((l) => l.includes('primary is serving')), startMs);
    if (viaProxy) {
      // The proxy finds the serving primary at the arbiter: each node announces its --proxy-listen there.
      procs.push(child(['proxy', '--listen', `127.0.0.1:${pxl}`, '--arbiter', `ftvm://127.0.0.1:${arb}`, '--secret-file', secret, '--vm-name', vm], 'proxy  ', lines));
      await until('the proxy', () => lines.some((l) => l.includes('proxy session open')), 30_000);
    }
    let seen = show(0);
    console.log(`   watch it live: ${dashboardUrl}`);
    console.log(
      ckpt
        ? `1. primary pid ${primary.pid} serves RESP on 127.0.0.1:${svc} and checkpoints its guest to the backup (memory pages changed since the last checkpoint); the arbiter holds epoch 1; a standby waits in the pool`
        : `1. primary pid ${primary.pid} serves RESP on 127.0.0.1:${svc}; the backup replays its log; the arbiter holds epoch 1; a standby waits in the pool`,
    );
    if (viaProxy) console.log(`   ftvm proxy on 127.0.0.1:${pxl} is the VM's stable address (it finds the serving primary at the arbiter): each client connection there is a virtual connection of the VM that survives failover`);
    if (g.sql) {
      // Idempotent, so it may go to whichever replica serves (a loaded machine can fail over early).
      const create = 'CREATE TABLE IF NOT EXISTS users(k TEXT PRIMARY KEY, v TEXT NOT NULL, client INTEGER)';
      await callOnAnyReplica([svc, svc2, svc3], ['SQL', create], { deadlineMs: 120_000, expect: (v) => Array.isArray(v) });
      console.log(`   SQL> ${create}  -- a file on /data, each replica its own disk image`);
    }
    const warm = await RespClient.connect({ port: svc, callTimeoutMs: 30_000 });
    for (let i = 0; i < 100; i++) await warm.call('SET', `warm:${i}`, String(i));
    warm.close();
    const [h, bb] = await stateHashes(auth, `127.0.0.1:${pc}`, `127.0.0.1:${bc}`);
    const at = ckpt ? 'checkpoint' : 'instruction';
    console.log(`   after 100 writes: primary state hash at ${at} ${h.n}: ${h.hash}`);
    console.log(`                     backup  state hash at ${at} ${bb.n}: ${bb.hash} ${bb.hash === h.hash ? '(IDENTICAL)' : '(DIFFERENT!)'}`);
    if (bb.hash !== h.hash) return false;
    console.log(
      g.sql
        ? `2. ${o.clients} clients run ${ops} transactions each (BEGIN; INSERT ... ON CONFLICT DO UPDATE; COMMIT); every reply waits for the backup's ACK (the output rule)`
        : viaProxy
          ? `2. ${o.clients} clients write ${ops} keys each through the proxy, each on ONE connection for the whole run; every reply waits for the backup's ACK (the output rule)`
          : ckpt
            ? `2. ${o.clients} clients write ${ops} keys each; every reply waits until the backup acknowledged the checkpoint that holds it (Remus's output commit)`
            : `2. ${o.clients} clients write ${ops} keys each; every reply waits for the backup's ACK (the output rule)`,
    );
    const clientErrors: string[] = [];
    const acked = new Map<string, string>();
    let killed = false;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: o.clients }, async (_, i) => {
        // Through the proxy: one connection, never re-opened; any error counts (there must be none).
        const conn = viaProxy ? await RespClient.connect({ port: pxl, callTimeoutMs: 30_000 }) : undefined;
        for (let j = 0; j < ops; j++) {
          const key = `user:${i}:${j}`;
          const value = `value-${i}-${j}`;
          if (g.sql) {
            const tx = `BEGIN; INSERT INTO users(k, v, client) VALUES(${sqlQuote(key)}, ${sqlQuote(value)}, ${i}) ON CONFLICT(k) DO UPDATE SET v = excluded.v; COMMIT`;
            await callOnAnyReplica([svc, svc2, svc3], ['SQL', tx], { deadlineMs: 60_000, expect: (v) => Array.isArray(v) && v.length === 0 });
          } else if (conn !== undefined) {
            try {
              await conn.call('SET', key, value);
            } catch (err) {
              clientErrors.push(`client ${i}: ${(err as Error).message}`);
              break;
            }
          } else {
            await callOnAnyReplica([svc, svc2, svc3], ['SET', key, value], { deadlineMs: 30_000 });
          }
          acked.set(key, value);
          if (!killed && acked.size >= (o.clients * ops) / 2) {
            killed = true;
            primary.kill('SIGKILL');
            console.log(`3. kill -9 the primary (pid ${primary.pid}) after ${acked.size} acknowledged writes, mid-load`);
          }
        }
        conn?.close();
      }),
    );
    seen = show(seen);
    console.log(`4. the clients carried on against the new primary: ${acked.size} writes acknowledged in ${(performance.now() - t0).toFixed(0)} ms`);
    if (viaProxy) {
      console.log(`   through the proxy: ${clientErrors.length} client errors, 0 reconnects — the clients saw a pause, not the crash`);
      for (const e of clientErrors.slice(0, 5)) console.log(`   CLIENT ERROR: ${e}`);
    }
    // Normally the former backup serves now; on a loaded machine an early (false) failover may have
    // moved the VM on already: find the node that serves, and its peer slot.
    const slots = [
      { control: `127.0.0.1:${bc}`, service: svc2, name: 'the former backup' },
      { control: `127.0.0.1:${sc}`, service: svc3, name: 'the former standby' },
    ];
    const roleOf = async (control: string): Promise<unknown> => ((await controlRequest(control, auth, 'GET', '/status').catch(() => null)) as Record<string, unknown> | null)?.role;
    let live = slots[0]!;
    await until('a node to serve as the primary', async () => {
      for (const x of slots) if ((await roleOf(x.control)) === 'primary') live = x;
      return (await roleOf(live.control)) === 'primary';
    }, 30_000);
    const spare = slots.find((x) => x !== live)!;
    const st = (await controlRequest(live.control, auth, 'GET', '/status')) as Record<string, unknown>;
    console.log(`   ${live.name} is now ${String(st.role)} at epoch ${String(st.epoch)}, instruction ${String(st.instructionNumber)}`);
    const c = await RespClient.connect({ port: live.service, callTimeoutMs: 30_000 });
    let missing = 0;
    let integrity = 'ok';
    if (g.sql) {
      const rows = (await c.call('SQL', 'SELECT k, v FROM users')) as Buffer[][];
      const have = new Map(rows.map((r) => [String(r[0]), String(r[1])]));
      for (const [k, v] of acked) if (have.get(k) !== v) missing++;
      const check = (await c.call('SQL', 'PRAGMA integrity_check')) as Buffer[][];
      integrity = String(check[0]?.[0]);
    } else {
      for (const [k, v] of acked) if (String(await c.call('GET', k)) !== v) missing++;
    }
    c.close();
    console.log(`5. read back every acknowledged ${g.sql ? 'transaction' : 'write'} from the new primary: ${acked.size - missing} of ${acked.size} present`);
    if (g.sql) console.log(`   SQL> PRAGMA integrity_check  -- ${integrity}`);
    const ok = missing === 0 && st.role === 'primary' && integrity === 'ok' && clientErrors.length === 0;
    console.log(ok ? '   NOTHING LOST: every write a client was told had happened survived the crash.' : '   LOST WRITES: the failover broke the output rule!');
    if (!ok) {
      show(seen);
      return false;
    }
    // Re-replication: the new primary runs alone; it recruits the standby and clones its running VM.
    let st2: Record<string, unknown> = {};
    await until('the new primary to recruit the standby and arm the pair', async () => {
      st2 = (await controlRequest(live.control, auth, 'GET', '/status')) as Record<string, unknown>;
      return st2.backup === 'connected' && st2.alone === false;
    }, 60_000);
    seen = show(seen);
    const rr = st2.lastRereplication as { pauseMs: number; totalMs: number; memoryBytes: number } | null;
    if (ckpt) {
      const ck = st2.checkpoint as { epochLengthMs: number | null; bytesPerSecond: number; pauseP50Ms: number | null };
      console.log(`6. redundancy restored: the standby received a base checkpoint (all of memory) and then deltas, and is the backup at epoch ${String(st2.epoch)}; checkpoints every ${String(ck.epochLengthMs)} ms, ${(ck.bytesPerSecond / 1024).toFixed(0)} KiB/s, the guest paused ${String(ck.pauseP50Ms)} ms each (median)`);
    } else console.log(
      `6. redundancy restored: the standby received a snapshot of the running VM (${((rr?.memoryBytes ?? 0) / 1048576).toFixed(1)} MiB${g.sql ? ' of memory, then its disk' : ''}; the guest paused ${(rr?.pauseMs ?? 0).toFixed(2)} ms) and the log, and is the backup at epoch ${String(st2.epoch)} (${(rr?.totalMs ?? 0).toFixed(0)} ms)`,
    );
    const [h2, bb2] = await stateHashes(auth, live.control, spare.control);
    console.log(`   new primary state hash at ${at} ${h2.n}: ${h2.hash}`);
    console.log(`   new backup  state hash at ${at} ${bb2.n}: ${bb2.hash} ${bb2.hash === h2.hash ? '(IDENTICAL)' : '(DIFFERENT!)'}${g.sql ? ' (the hash covers memory and disk)' : ''}`);
    show(seen);
    if (bb2.hash !== h2.hash) return false;
    if (g.sql) {
      // One more transaction: both replicas sync the database to their own image files.
      const c2 = await RespClient.connect({ port: live.service, callTimeoutMs: 30_000 });
      await c2.call('SQL', "BEGIN; INSERT INTO users(k, v, client) VALUES('last', 'x', -1); COMMIT");
      c2.close();
      let same = false;
      await until('the disk images of the new pair to be equal', async () => {
        if (!existsSync(image('backup')) || !existsSync(image('standby'))) return false;
        same = (await readFile(image('backup'))).equals(await readFile(image('standby')));
        return same;
      }, 20_000).catch(() => undefined);
      console.log(`   disk images: ${image('backup')} and ${image('standby')} ${same ? 'are IDENTICAL' : 'DIFFER!'}`);
      if (!same) return false;
    }
    if (ckpt) {
      console.log('7. checkpoint mode keeps no log, so there is no recording to replay (`--mode replay` shows time travel)');
      console.log(`8. the dashboard showed all of it live, the failover and the re-replication as a timeline: ${dashboardUrl}`);
      if (o.keep) {
        console.log('   --keep: the VM, its arbiter, the dashboard and the clients\' data stay up; Ctrl-C stops them.');
        await new Promise<void>((resolve) => process.once('SIGINT', () => resolve()));
      }
      return true;
    }
    // Time travel: the new backup records the VM from its clone on; replay that recording offline to
    // the instruction where the new primary just logged its hash (once the recording holds it).
    let seg: { path: string } | undefined;
    await until('the new backup\'s recording to hold the logged state hash', async () => {
      const segs = listSegments(recordDir, vm);
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
  } catch (err) {
    // What the nodes said last, so that a failed demo explains itself.
    for (const l of lines.slice(-20)) console.log(`   ${l}`);
    throw err;
  } finally {
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGTERM');
    await Promise.all(procs.map((p) => (p.exitCode !== null || p.signalCode !== null ? Promise.resolve() : new Promise((r) => p.once('exit', r)))));
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Checkpoint mode end to end with real processes on loopback, the way a user runs it: an embedded
 * arbiter, a primary started alone with `--control`, and two `ftvm standby --mode checkpoint` hosts. The
 * primary recruits one standby (it becomes the backup through a base checkpoint); 8 RESP clients write
 * through the primary; the primary is killed with SIGKILL mid-load; the backup goes live from its last
 * complete checkpoint with every acknowledged write, recruits the remaining standby, and the VM is
 * protected again (`ftvm status`: mode checkpoint, epoch length, checkpoint bytes/s).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { RespClient } from '../src/client/resp.js';
import { CLI, guestFile, makeSecretFile, startArbiter, statusOr, waitFor } from '../src/testing/pair.js';
import { spawnNode, type ProcessHandle } from '../src/testing/processes.js';
import { freePorts } from '../src/util/ports.js';

const text = (v: unknown): unknown => (Buffer.isBuffer(v) ? v.toString('utf8') : v);

/** Closed-loop writers: unique keys, stop at the first error (the primary died) or when told. */
async function writers(port: number, n: number, until: () => boolean, acked: Map<string, string>): Promise<void> {
  const one = async (w: number): Promise<void> => {
    let c: RespClient | undefined;
    try {
      c = await RespClient.connect({ port, callTimeoutMs: 5000 });
      for (let i = 0; i < 100_000 && !until(); i++) {
        const k = `w${w}-${i}`;
        const v = `${w}:${i}`;
        if (text(await c.call('SET', k, v)) !== 'OK') break;
        acked.set(k, v);
      }
    } catch {
      // the primary died under us: what was acknowledged is in `acked`
    } finally {
      await c?.close().catch(() => undefined);
    }
  };
  await Promise.all(Array.from({ length: n }, (_, w) => one(w)));
}

/**
 * The whole story for one guest: `guest` a module in build/guests, `args` its WASI arguments (the same on
 * every replica).
 */
async function story(guest: string, args: string[]): Promise<void> {
  const secretFile = makeSecretFile();
  const auth = readFileSync(secretFile);
  const arbiter = await startArbiter(secretFile);
  const ports = await freePorts(9);
  const [pService, pControl, aChannel, aService, aControl, bChannel, bService, bControl] = ports as [number, number, number, number, number, number, number, number];
  const common = ['--mode', 'checkpoint', '--secret-file', secretFile, '--arbiter', arbiter.url, '--fail-timeout-ms', '1500', '--arbiter-deadline-ms', '3000', '--checkpoint-interval-ms', '10', '--no-fast-failover', ...args.flatMap((a) => ['--arg', a])];
  const procs: ProcessHandle[] = [arbiter.proc];
  const standby = (h: string, channel: number, service: number, control: number): ProcessHandle =>
    spawnNode([CLI, 'standby', guestFile(guest), '--channel', `127.0.0.1:${channel}`, '--service', `127.0.0.1:${service}`, '--control', `127.0.0.1:${control}`, '--host-id', h, '--node-id', `ckpt-${h}`, ...common], { name: `standby-${h}` });
  try {
    const primary = spawnNode([CLI, 'run', guestFile(guest), '--role', 'primary', '--service', `127.0.0.1:${pService}`, '--control', `127.0.0.1:${pControl}`, '--host-id', 'h0', '--node-id', 'ckpt-h0', ...common], { name: 'primary' });
    procs.push(primary);
    await primary.waitForLine(/primary is serving/, 30_000, { stream: 'stderr' });
    const a = standby('h1', aChannel, aService, aControl);
    const b = standby('h2', bChannel, bService, bControl);
    procs.push(a, b);
    await a.waitForLine(/standby is in the pool/, 30_000, { stream: 'stderr' });
    await b.waitForLine(/standby is in the pool/, 30_000, { stream: 'stderr' });

    const pAddr = `127.0.0.1:${pControl}`;
    await waitFor('the primary to recruit a standby and be protected', async () => (await statusOr(auth, pAddr))?.protected === true, 60_000).catch((err: Error) => {
      // What the nodes said last, so that a failure on a loaded machine explains itself.
      throw new Error(`${err.message}; primary: ${primary.outputTail(12)}; standby h1: ${a.outputTail(6)}; standby h2: ${b.outputTail(6)}`);
    });
    const st = (await statusOr(auth, pAddr))!;
    assert.equal(st.mode, 'checkpoint');
    assert.equal(st.role, 'primary');
    const ck = st.checkpoint as Record<string, unknown>;
    assert.equal(ck.intervalMs, 10);
    assert.ok((ck.captured as number) >= 1, `checkpoints captured: ${JSON.stringify(ck)}`);
    // Which standby became the backup, which stayed in the pool.
    const sa = await statusOr(auth, `127.0.0.1:${aControl}`);
    const backupIsA = sa?.role === 'backup';
    const [bk, spare] = backupIsA ? [{ p: a, service: aService, control: aControl }, { p: b, control: bControl }] : [{ p: b, service: bService, control: bControl }, { p: a, control: aControl }];
    assert.equal((await statusOr(auth, `127.0.0.1:${bk.control}`))?.role, 'backup');
    assert.equal((await statusOr(auth, `127.0.0.1:${spare.control}`))?.role, 'standby');

    // 8 clients under load; the primary is killed mid-load.
    const acked = new Map<string, string>();
    let stopWriting = false;
    const load = writers(pService, 8, () => stopWriting, acked);
    const t0 = Date.now();
    while (acked.size < 400 && Date.now() - t0 < 20_000) await new Promise((r) => setTimeout(r, 20));
    assert.ok(acked.size >= 400, `writes acknowledged before the kill (${acked.size})`);
    const mark = bk.p.mark();
    primary.kill('SIGKILL');
    await primary.exited;
    await load;
    stopWriting = true;
    const went = await bk.p.waitForLine(/"checkpoint":(\d+).*going live from the last complete checkpoint/, 30_000, { stream: 'stderr', since: mark });
    assert.ok(Number(went[1]) >= 2, `went live from checkpoint ${went[1]}`);
    await bk.p.waitForLine(/primary is serving/, 30_000, { stream: 'stderr', since: mark });

    const c = await RespClient.connect({ port: bk.service, callTimeoutMs: 10_000 });
    try {
      for (const [k, v] of acked) assert.equal(text(await c.call('GET', k)), v, `${k} acknowledged before the kill, lost after the failover`);
      // Re-replication: the new primary recruits the spare standby and is protected again.
      const nAddr = `127.0.0.1:${bk.control}`;
      await waitFor('the new primary to recruit the spare standby', async () => (await statusOr(auth, nAddr))?.protected === true, 60_000);
      const ns = (await statusOr(auth, nAddr))!;
      assert.ok((ns.epoch as number) > (st.epoch as number), `the epoch moved on at the failover (${st.epoch} → ${ns.epoch})`);
      assert.equal(ns.rereplications, 1);
      assert.equal((await statusOr(auth, `127.0.0.1:${spare.control}`))?.role, 'backup');
      assert.equal(text(await c.call('SET', 'after', 'rereplication')), 'OK');
      assert.equal(text(await c.call('GET', 'after')), 'rereplication');
      // The replicas agree: the new backup holds exactly the state the primary checkpointed.
      const { controlRequest } = await import('../src/service/control.js');
      const h = (await controlRequest(nAddr, auth, 'POST', '/state-hash', 10_000)) as { n: number; hash: string };
      const bh = (await controlRequest(`127.0.0.1:${spare.control}`, auth, 'GET', '/state-hash', 5000)) as { n: number; hash: string } | null;
      assert.ok(bh !== null && bh.n === h.n && bh.hash === h.hash, `state hashes: primary ${JSON.stringify(h)}, backup ${JSON.stringify(bh)}`);
    } finally {
      await c.close();
    }
  } finally {
    for (const p of procs.reverse()) await p.stop(3000);
  }
}

test('checkpoint mode, kv guest: a standby recruited through a base checkpoint; kill -9 of the primary under 8 clients; the backup goes live with every acknowledged write and recruits again', () => story('kv', []));

test('checkpoint mode, threaded kv guest (8 guest threads sharing one table under a lock): the same story — every acknowledged write survives the kill -9, the restored threads serve, a standby is recruited', () => story('threaded_kv', ['8']));

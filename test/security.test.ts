/**
 * Nobody steers a VM who should not (issue 16), with real processes on loopback:
 * - the control endpoint: unsigned, forged, replayed and stale requests → 401; a browser's Origin or a
 *   foreign Host → 403 even when signed; the VM keeps serving; a non-loopback --control without TLS is
 *   refused at start-up; HTTPS with the operator's certificate;
 * - the logging channel: a capture through the fault proxy under load holds none of the clients' values
 *   (TLS-PSK, the default), and does hold them with --insecure-channel (so the check can fail);
 * - secret files: group/other permissions and short secrets refused; a rotation under load (SIGHUP,
 *   --accept-secret-file) with no failover, no client error, nothing lost.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { openArbiter } from '../src/arbiter/index.js';
import { RespClient } from '../src/client/resp.js';
import { readSecretFileSync } from '../src/security/secrets.js';
import { controlRequest, signControlRequest } from '../src/service/control.js';
import { CLI, guestFile, makeSecretFile, startFtPair, startPair, type FtPair } from '../src/testing/pair.js';
import { freePort, spawnNode, stopAll } from '../src/testing/processes.js';

after(() => stopAll());

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface RawReply {
  status: number;
  body: { error?: string; code?: string } & Record<string, unknown>;
}

/** A raw HTTP request to a control endpoint, with exactly the headers given. */
function rawControl(addr: string, method: string, path: string, headers: Record<string, string>): Promise<RawReply> {
  const [host, port] = addr.split(':') as [string, string];
  return new Promise((resolve, reject) => {
    const req = http.request({ host, port: Number(port), method, path, headers, agent: false, setHost: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}') as RawReply['body'] }));
    });
    req.on('error', reject);
    req.end();
  });
}

function cli(args: string[]): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 30_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

async function serves(port: number): Promise<void> {
  const c = await RespClient.connect({ port });
  try {
    const k = `alive-${randomBytes(4).toString('hex')}`;
    assert.equal(await c.call('SET', k, 'yes'), 'OK');
    assert.equal(String(await c.call('GET', k)), 'yes');
  } finally {
    c.close();
  }
}

describe('control endpoint', () => {
  let pair: FtPair | undefined;
  after(async () => pair?.stop());

  it('refuses unsigned, forged, replayed, stale, cross-origin and foreign-Host requests; the VM keeps serving', async () => {
    // A generous failure timeout: this test is about the control endpoint, not failure detection (on a
    // loaded machine a 150 ms silence can happen without a fault).
    const slow = ['--fail-timeout-ms', '1000'];
    pair = await startFtPair({ guest: 'kv', primaryArgs: slow, backupArgs: slow });
    const p = pair;
    const addr = p.primaryControl;
    const host = addr; // 127.0.0.1:port: what a client puts in Host
    const sign = (method: string, path: string, o: { secret?: Uint8Array; host?: string; now?: number } = {}): Record<string, string> => ({
      host: o.host ?? host,
      ...signControlRequest(o.secret ?? p.auth, method, path, o.host ?? host, new Uint8Array(0), o.now),
    });
    // Unauthenticated: 401 with a stable code, and nothing done.
    for (const path of ['/stop', '/switchover']) {
      const r = await rawControl(addr, 'POST', path, { host });
      assert.equal(r.status, 401, `${path}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.code, 'FTVM_ERR_CONTROL_AUTH');
    }
    assert.equal((await rawControl(addr, 'GET', '/status', { host })).status, 401, 'status is not readable without the secret either');
    // Forged: the wrong secret; a signature for another request (GET /status replayed as POST /stop).
    const forged = await rawControl(addr, 'POST', '/stop', sign('POST', '/stop', { secret: randomBytes(32) }));
    assert.equal(forged.status, 401);
    assert.match(forged.body.error ?? '', /bad MAC/);
    assert.equal((await rawControl(addr, 'POST', '/stop', sign('GET', '/status'))).status, 401);
    // Replayed: the same signed request twice.
    const once = sign('GET', '/status');
    assert.equal((await rawControl(addr, 'GET', '/status', once)).status, 200);
    const replay = await rawControl(addr, 'GET', '/status', once);
    assert.equal(replay.status, 401);
    assert.match(replay.body.error ?? '', /replayed nonce/);
    // Stale or future timestamps.
    assert.equal((await rawControl(addr, 'POST', '/switchover', sign('POST', '/switchover', { now: Date.now() - 60_000 }))).status, 401);
    assert.equal((await rawControl(addr, 'POST', '/switchover', sign('POST', '/switchover', { now: Date.now() + 60_000 }))).status, 401);
    // A browser: validly signed, but with an Origin (CSRF) or a foreign Host (DNS rebinding): 403.
    const cross = await rawControl(addr, 'POST', '/stop', { ...sign('POST', '/stop'), origin: 'http://evil.example' });
    assert.equal(cross.status, 403);
    assert.equal(cross.body.code, 'FTVM_ERR_CONTROL_FORBIDDEN');
    assert.equal((await rawControl(addr, 'POST', '/stop', { ...sign('POST', '/stop'), 'sec-fetch-site': 'cross-site' })).status, 403);
    const port = addr.split(':')[1];
    const rebound = await rawControl(addr, 'GET', '/status', sign('GET', '/status', { host: `evil.example:${port}` }));
    assert.equal(rebound.status, 403);
    assert.equal(rebound.body.code, 'FTVM_ERR_CONTROL_FORBIDDEN');
    // Nothing of that stopped or switched anything: the pair still serves and is still a pair.
    assert.equal(p.primary.exitStatus, null);
    assert.equal(p.backup.exitStatus, null);
    await serves(p.servicePort);
    const st = (await controlRequest(addr, p.auth, 'GET', '/status')) as Record<string, unknown>;
    assert.equal(st.role, 'primary');
    assert.equal(st.backup, 'connected');
    assert.match(String(st.channelSecurity), /^tls1\.3-psk/);
    assert.equal(p.primary.stderr.text().split('\n').filter((l) => l.includes('control: refused request')).length, 11);
    // The CLI signs with --secret-file, and refuses to run without it.
    const ok = cli(['status', addr, '--secret-file', p.secretFile, '--json']);
    assert.equal(ok.code, 0, ok.err);
    assert.equal((JSON.parse(ok.out) as { role: string }).role, 'primary');
    const none = cli(['status', addr]);
    assert.equal(none.code, 2);
    assert.match(none.err, /FTVM_ERR_BAD_ARGUMENT.*--secret-file/);
    const wrong = cli(['stop', addr, '--secret-file', makeSecretFile()]);
    assert.notEqual(wrong.code, 0);
    assert.match(wrong.err, /bad MAC/);
    await serves(p.servicePort);
    // A signed stop does stop it (the same request, with the secret).
    const stop = cli(['stop', addr, '--secret-file', p.secretFile]);
    assert.equal(stop.code, 0, stop.err);
    assert.equal((await p.primary.exited).code, 0);
  });

  it('a non-loopback --control without TLS is refused at start-up, before binding', async () => {
    const port = await freePort();
    const r = cli(['run', guestFile('kv'), '--role', 'primary', '--service', `127.0.0.1:${await freePort()}`, '--control', `0.0.0.0:${port}`, '--secret-file', makeSecretFile()]);
    assert.equal(r.code, 2, r.err);
    assert.match(r.err, /FTVM_ERR_CONTROL_INSECURE.*--tls-cert/);
    // Nothing listens there.
    await assert.rejects(
      new Promise<void>((resolve, reject) => {
        const s = net.connect(port, '127.0.0.1', () => {
          s.destroy();
          resolve();
        });
        s.on('error', reject);
      }),
      /ECONNREFUSED/,
    );
  });

  it('serves HTTPS with the operator certificate; clients verify it with --tls-ca', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ftvm-tls-'));
    try {
      const cert = join(dir, 'cert.pem');
      const key = join(dir, 'key.pem');
      const g = spawnSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=ftvm-test', '-addext', 'subjectAltName=IP:127.0.0.1'], { encoding: 'utf8' });
      assert.equal(g.status, 0, g.stderr);
      const secret = makeSecretFile();
      const [svc, ctl] = [await freePort(), await freePort()];
      const node = spawnNode([CLI, 'run', guestFile('kv'), '--role', 'primary', '--service', `127.0.0.1:${svc}`, '--control', `127.0.0.1:${ctl}`, '--secret-file', secret, '--tls-cert', cert, '--tls-key', key], { name: 'tls-primary' });
      await node.waitForLine(/primary is serving/, 20_000, { stream: 'stderr' });
      const ok = cli(['status', `127.0.0.1:${ctl}`, '--secret-file', secret, '--tls-ca', cert, '--json']);
      assert.equal(ok.code, 0, ok.err);
      assert.equal((JSON.parse(ok.out) as { controlTls: boolean }).controlTls, true);
      // Plain HTTP to it gets nowhere; an unknown CA is refused by the client.
      assert.notEqual(cli(['status', `127.0.0.1:${ctl}`, '--secret-file', secret]).code, 0);
      const otherCa = join(dir, 'other.pem');
      spawnSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', join(dir, 'other.key'), '-out', otherCa, '-days', '1', '-subj', '/CN=other'], { encoding: 'utf8' });
      const bad = cli(['status', `127.0.0.1:${ctl}`, '--secret-file', secret, '--tls-ca', otherCa]);
      assert.notEqual(bad.code, 0);
      assert.match(bad.err, /certificate/i);
      await node.stop();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('secret files', () => {
  it('a secret readable by group or others, or shorter than 16 bytes, is refused with the fix in the message', () => {
    const open = makeSecretFile();
    chmodSync(open, 0o644);
    const r = cli(['run', guestFile('kv'), '--role', 'backup', '--channel', '127.0.0.1:1', '--secret-file', open]);
    assert.equal(r.code, 2, r.err);
    assert.match(r.err, new RegExp(`FTVM_ERR_SECRET_PERMISSIONS.*mode 644.*chmod 600 ${open.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
    // Binary, with a space first and a newline last: taken byte for byte (8 bytes), never trimmed.
    const short = makeSecretFile(8);
    writeFileSync(short, Buffer.from([0x20, 1, 2, 3, 4, 5, 6, 0x0a]), { mode: 0o600 });
    const s = cli(['arbiter', '--data', mkdtempSync(join(tmpdir(), 'ftvm-arb-')), '--listen', '127.0.0.1:1', '--secret-file', short]);
    assert.equal(s.code, 2, s.err);
    assert.match(s.err, /FTVM_ERR_SECRET_TOO_SHORT.*8 bytes/);
    // A file made the README's way is accepted (the chmod makes it private even where a directory's
    // default ACL would override the umask).
    const dir = mkdtempSync(join(tmpdir(), 'ftvm-umask-'));
    const made = spawnSync('sh', ['-c', '(umask 077; head -c 32 /dev/urandom > ftvm.secret; chmod 600 ftvm.secret)'], { cwd: dir });
    assert.equal(made.status, 0, made.stderr.toString());
    assert.equal(readSecretFileSync(join(dir, 'ftvm.secret')).length, 32);
    // A binary secret whose ends happen to be whitespace bytes keeps them; a text secret loses them.
    const binary = join(dir, 'binary.secret');
    const bytes = Buffer.concat([Buffer.from([0x0a]), Buffer.alloc(14, 0xfe), Buffer.from([0x20])]);
    writeFileSync(binary, bytes, { mode: 0o600 });
    assert.deepEqual(readSecretFileSync(binary), bytes);
    const text = join(dir, 'text.secret');
    writeFileSync(text, '  0123456789abcdef0123\n', { mode: 0o600 });
    assert.equal(readSecretFileSync(text).toString('latin1'), '0123456789abcdef0123');
  });
});

/** Closed-loop writers with values no one could guess; stopped by `stop()` (bounded by count too). */
function writers(port: number, n: number, tag: string) {
  const acked = new Map<string, string>();
  const errors: string[] = [];
  let stopping = false;
  const done = Promise.all(
    Array.from({ length: n }, async (_, w) => {
      const c = await RespClient.connect({ port, callTimeoutMs: 10_000 });
      try {
        for (let i = 0; !stopping && i < 20_000; i++) {
          const key = `${tag}:${w}:${i}`;
          const value = `${tag}-known-value-${w}-${i}-${randomBytes(6).toString('hex')}`;
          try {
            const r = await c.call('SET', key, value);
            if (r !== 'OK') errors.push(`SET ${key}: ${String(r)}`);
            else acked.set(key, value);
          } catch (err) {
            errors.push(`SET ${key}: ${(err as Error).message}`);
            return;
          }
        }
      } finally {
        c.close();
      }
    }),
  );
  return {
    acked,
    errors,
    async stop(): Promise<void> {
      stopping = true;
      await done;
    },
  };
}

describe('logging channel encryption', () => {
  for (const insecure of [false, true]) {
    it(insecure ? 'with --insecure-channel, a capture of the channel holds the clients\' values in clear (the check can fail)' : 'a capture of the channel under load holds none of the clients\' values (TLS-PSK by default)', async () => {
      const flags = [...(insecure ? ['--insecure-channel'] : []), '--fail-timeout-ms', '1000'];
      const pair = await startPair({ guest: 'kv', viaProxy: true, captureMaxBytes: 16 * 1024 * 1024, primaryArgs: flags, backupArgs: flags });
      try {
        const load = writers(pair.servicePort, 4, insecure ? 'plain' : 'tls');
        const until = Date.now() + 20_000;
        while (load.acked.size < 500 && Date.now() < until && load.errors.length === 0) await sleep(50);
        await load.stop();
        assert.deepEqual(load.errors, []);
        assert.ok(load.acked.size >= 500, `only ${load.acked.size} writes`);
        await pair.hashesAgree();
        const wire = Buffer.concat([pair.proxy!.captured('up'), pair.proxy!.captured('down')]);
        assert.ok(wire.length > 10_000, `captured ${wire.length} bytes`);
        let inClear = 0;
        for (const v of load.acked.values()) if (wire.includes(v)) inClear++;
        const st = await pair.status('primary');
        if (insecure) {
          assert.ok(inClear > load.acked.size / 2, `only ${inClear} of ${load.acked.size} values seen in clear on a plain channel`);
          assert.match(String(st.channelSecurity), /^plain \(--insecure-channel/);
        } else {
          assert.equal(inClear, 0, `${inClear} of ${load.acked.size} values crossed the channel in clear`);
          assert.equal(wire.includes('known-value'), false);
          assert.match(String(st.channelSecurity), /^tls1\.3-psk/);
        }
      } finally {
        await pair.stop();
      }
    });
  }
});

describe('secret rotation', () => {
  it('under load, with SIGHUP and --accept-secret-file: no failover, no client error, nothing lost; afterwards only the new secret works', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ftvm-rotate-'));
    const secretFile = join(dir, 'ftvm.secret');
    const nextFile = join(dir, 'ftvm.secret.next');
    // Text secrets (hex): a secret file's surrounding whitespace is ignored, so random binary bytes could
    // differ from what the nodes read.
    const oldSecret = Buffer.from(randomBytes(32).toString('hex'));
    const newSecret = Buffer.from(randomBytes(32).toString('hex'));
    writeFileSync(secretFile, oldSecret, { mode: 0o600 });
    const both = ['--accept-secret-file', nextFile];
    // A longer failure timeout: the test cuts the channel after each step to force new handshakes with
    // the keys of that step, and a reconnection must not count as a failure.
    const nodeArgs = [...both, '--fail-timeout-ms', '2000'];
    const pair = await startFtPair({ guest: 'kv', viaProxy: true, secretFile, primaryArgs: nodeArgs, backupArgs: nodeArgs, arbiterArgs: both });
    const procs = [pair.arbiter.proc, pair.backup, pair.primary];
    const reconnects: number[] = [];
    const step = async (what: string, change: () => void): Promise<void> => {
      const marks = procs.map((p) => p.mark());
      change();
      for (const p of procs) process.kill(p.pid, 'SIGHUP');
      for (const [i, p] of procs.entries()) await p.waitForLine(/SIGHUP: secrets reloaded/, 10_000, { stream: 'stderr', since: marks[i]! });
      // A new channel handshake under this step's keys (the channel cut and healed).
      const m = pair.primary.mark();
      pair.proxy!.cut();
      await pair.proxy!.heal();
      await pair.primary.waitForLine(/backup connected/, 10_000, { stream: 'stderr', since: m });
      reconnects.push(1);
      assert.equal(pair.primary.exitStatus, null, what);
    };
    try {
      const load = writers(pair.servicePort, 4, 'rot');
      // Clients keep getting replies before, between and after the steps.
      const progress = async (what: string): Promise<void> => {
        const from = load.acked.size;
        const until = Date.now() + 20_000;
        while (load.acked.size < from + 50 && load.errors.length === 0) {
          assert.ok(Date.now() < until, `${what}: only ${load.acked.size - from} writes acknowledged in 20 s`);
          await sleep(20);
        }
      };
      await progress('before');
      // 1. Every node also accepts the new secret (and still signs with the old one).
      await step('accept new', () => writeFileSync(nextFile, newSecret, { mode: 0o600 }));
      await progress('after step 1');
      // 2. Every node signs with the new secret (and still accepts the old one).
      await step('switch', () => {
        writeFileSync(join(dir, 'tmp'), oldSecret, { mode: 0o600 });
        writeFileSync(join(dir, 'tmp2'), newSecret, { mode: 0o600 });
        renameSync(join(dir, 'tmp2'), secretFile);
        renameSync(join(dir, 'tmp'), nextFile);
      });
      await progress('after step 2');
      // 3. The old secret is dropped.
      await step('drop old', () => rmSync(nextFile));
      await progress('after step 3');
      await load.stop();
      assert.deepEqual(load.errors, [], 'no client saw an error');
      assert.ok(load.acked.size > 100, `${load.acked.size} writes`);
      // No failover: same epoch, same roles, still a pair.
      const st = (await controlRequest(pair.primaryControl, newSecret, 'GET', '/status')) as Record<string, unknown>;
      assert.equal(st.role, 'primary');
      assert.equal(st.epoch, 1);
      assert.equal(st.backup, 'connected');
      assert.deepEqual(st.acceptedKeyIds, [st.secretKeyId]);
      const bs = (await controlRequest(pair.backupControl, newSecret, 'GET', '/status')) as Record<string, unknown>;
      assert.equal(bs.role, 'backup');
      // Nothing lost.
      const c = await RespClient.connect({ port: pair.servicePort });
      let missing = 0;
      for (const [k, v] of load.acked) if (String(await c.call('GET', k)) !== v) missing++;
      c.close();
      assert.equal(missing, 0, `${missing} of ${load.acked.size} acknowledged writes lost`);
      // Only the new secret opens the control endpoint now.
      await assert.rejects(controlRequest(pair.primaryControl, oldSecret, 'GET', '/status'), (e: { code?: string }) => e.code === 'FTVM_ERR_CONTROL_AUTH');
      assert.equal(reconnects.length, 3);
      // The arbiter too: the new secret opens it (TLS-PSK and request MACs), the old one no longer does.
      const vm = String(st.vm);
      const fresh = openArbiter(pair.arbiter.url, newSecret);
      const stale = openArbiter(pair.arbiter.url, oldSecret);
      try {
        assert.equal((await fresh.read(vm, { deadlineMs: 5000 }))?.epoch, 1);
        await assert.rejects(stale.read(vm, { deadlineMs: 5000 }), (e: { code?: string }) => e.code === 'FTVM_ERR_ARBITER_AUTH');
      } finally {
        await fresh.close();
        await stale.close();
      }
    } finally {
      await pair.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

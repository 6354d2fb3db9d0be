/**
 * /metrics and /timeline on real processes (embedded arbiter, a primary that recruits a standby into its
 * backup): the Prometheus text format is accepted by a parser of it (parse-prometheus-text-format, a
 * port of Prometheus's own), the metrics move under load, and every JSON log line of a node carries its
 * VM name, role and epoch.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, test } from 'node:test';
import parsePrometheus, { type ParsedFamily } from 'parse-prometheus-text-format';
import { controlRequest, metricsScrapeToken } from '../src/service/control.js';
import { startLoad } from '../src/testing/load.js';
import { Pool } from '../src/testing/pool.js';
import { stopAll } from '../src/testing/processes.js';

after(() => stopAll());

type Families = Map<string, ParsedFamily>;

/** GET /metrics as a scraper (Prometheus, curl) does it: plain HTTP with the read-only bearer token. */
async function scrapeText(control: string, token: string, path = '/metrics'): Promise<{ status: number; text: string }> {
  // Plain node:http, headers as curl sends them (fetch adds Sec-Fetch-* headers, which browsers send and
  // the endpoint refuses).
  const [host, port] = control.split(':') as [string, string];
  return new Promise((resolve, reject) => {
    const req = http.get({ host, port: Number(port), path, headers: { authorization: `Bearer ${token}` }, timeout: 5000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

let scrapeToken = '';
async function scrape(control: string): Promise<Families> {
  const { status, text } = await scrapeText(control, scrapeToken);
  assert.equal(status, 200, text);
  const families = parsePrometheus(text);
  return new Map(families.map((f) => [f.name, f]));
}

/** The value of a counter or gauge sample (labels must match exactly those given). */
function value(f: Families, name: string, labels: Record<string, string> = {}): number {
  const fam = f.get(name);
  assert.ok(fam, `metric ${name} is missing`);
  const s = fam.metrics.find((m) => JSON.stringify(m.labels ?? {}) === JSON.stringify(labels));
  assert.ok(s?.value !== undefined, `metric ${name}${JSON.stringify(labels)} has no sample: ${JSON.stringify(fam.metrics)}`);
  return Number(s.value);
}

function histogramCount(f: Families, name: string, labels: Record<string, string> = {}): number {
  const fam = f.get(name);
  assert.ok(fam, `metric ${name} is missing`);
  assert.equal(fam.type, 'HISTOGRAM', `${name} is a histogram`);
  const s = fam.metrics.find((m) => JSON.stringify(m.labels ?? {}) === JSON.stringify(labels));
  return s?.count === undefined ? 0 : Number(s.count);
}

/** A plain HTTP GET with the scrape token, as curl or a Prometheus server would do it. */
function get(control: string, path: string): Promise<{ status: number; type: string; body: string }> {
  const [host, port] = control.split(':');
  return new Promise((resolve, reject) => {
    http
      .get({ host, port: Number(port), path, timeout: 5000, headers: { authorization: `Bearer ${scrapeToken}` } }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body: Buffer.concat(chunks).toString('utf8') }));
      })
      .on('error', reject);
  });
}

test('GET /metrics is Prometheus text format, and the metrics move under load', { timeout: 180_000 }, async () => {
  // Arbiter calls and failure detection with room for a busy machine (2 cores shared by many tests).
  const pool = await Pool.start({ slots: 2, nodeArgs: ['--arbiter-deadline-ms', '3000', '--fail-timeout-ms', '600'] });
  scrapeToken = metricsScrapeToken(pool.auth);
  try {
    const { primary, backup, epoch } = await pool.waitProtected();
    const pc = pool.control(primary);
    const bc = pool.control(backup);
    // A wrong scrape token opens nothing; the right one opens /metrics and nothing else.
    assert.equal((await scrapeText(pc, 'f'.repeat(64))).status, 401);
    assert.equal((await scrapeText(pc, scrapeToken, '/status')).status, 401);

    const raw = await get(pc, '/metrics');
    assert.equal(raw.status, 200);
    assert.match(raw.type, /^text\/plain; version=0\.0\.4/);

    const p0 = await scrape(pc);
    const b0 = await scrape(bc);
    for (const name of [
      'ftvm_role', 'ftvm_epoch', 'ftvm_protected', 'ftvm_instruction_number', 'ftvm_execution_lag_seconds', 'ftvm_log_bytes_total',
      'ftvm_log_entries_total', 'ftvm_outputs_held', 'ftvm_output_hold_seconds', 'ftvm_heartbeats_total', 'ftvm_channel_reconnects_total',
      'ftvm_failovers_total', 'ftvm_failover_phase_seconds', 'ftvm_rereplications_total', 'ftvm_rereplication_progress_ratio',
      'ftvm_rereplication_pause_seconds', 'ftvm_standby_pool_size', 'ftvm_guest_memory_bytes', 'ftvm_guest_disk_bytes', 'ftvm_vcpu_utilization_ratio',
    ]) {
      assert.ok(p0.has(name), `the primary exports ${name}`);
    }
    assert.equal(value(p0, 'ftvm_role', { role: 'primary' }), 1);
    assert.equal(value(p0, 'ftvm_role', { role: 'backup' }), 0);
    assert.equal(value(p0, 'ftvm_protected'), 1);
    assert.equal(value(p0, 'ftvm_epoch'), epoch);
    assert.equal(value(b0, 'ftvm_role', { role: 'backup' }), 1);
    assert.equal(value(b0, 'ftvm_protected'), 1);
    assert.equal(value(b0, 'ftvm_epoch'), epoch);
    assert.ok(value(p0, 'ftvm_guest_memory_bytes') >= 65536, 'the guest has memory');
    // This pair was made by re-replication: the primary cloned itself to the standby and armed it.
    assert.equal(value(p0, 'ftvm_rereplications_total', { outcome: 'armed' }), 1);
    assert.ok(histogramCount(p0, 'ftvm_rereplication_pause_seconds') >= 1, 'the snapshot pause was measured');

    const load = startLoad(() => [primary.servicePort], { clients: 4, maxOps: 20_000, maxMs: 15_000 });
    /** Waits (bounded) until the load acknowledged `n` SETs in all. */
    const acked = async (n: number): Promise<void> => {
      const until = Date.now() + 12_000;
      while (load.ok() < n && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
      assert.ok(load.ok() >= n, `the load got ${load.ok()} SETs acknowledged, expected ${n}`);
    };
    await acked(20);
    // Scrape during the load, like `curl /metrics` would.
    const pMid = await scrape(pc);
    await acked(load.ok() + 20);
    await load.stop();
    // The clients' closes are still on their way through the guest and the backup's ACK (an output
    // each): scrape once nothing is held any more, or after 5 s (then the assertion below fails).
    let p1 = await scrape(pc);
    for (const until = Date.now() + 5000; value(p1, 'ftvm_outputs_held') !== 0 && Date.now() < until; ) {
      await new Promise((r) => setTimeout(r, 50));
      p1 = await scrape(pc);
    }
    const b1 = await scrape(bc);

    const moved = (name: string, a: Families, b: Families, labels: Record<string, string> = {}): void => {
      assert.ok(value(b, name, labels) > value(a, name, labels), `${name}${JSON.stringify(labels)} grew: ${value(a, name, labels)} → ${value(b, name, labels)}`);
    };
    moved('ftvm_log_bytes_total', p0, pMid, { direction: 'out' });
    moved('ftvm_log_bytes_total', pMid, p1, { direction: 'out' });
    moved('ftvm_log_entries_total', p0, p1, { direction: 'out' });
    moved('ftvm_instruction_number', p0, p1);
    moved('ftvm_heartbeats_total', p0, p1, { direction: 'out' });
    moved('ftvm_log_bytes_total', b0, b1, { direction: 'in' });
    moved('ftvm_log_entries_total', b0, b1, { direction: 'in' });
    moved('ftvm_instruction_number', b0, b1);
    moved('ftvm_process_cpu_seconds_total', p0, p1);
    // Each SET's reply was held until the backup's ACK: at least one hold per acknowledged SET.
    assert.ok(histogramCount(p1, 'ftvm_output_hold_seconds') - histogramCount(p0, 'ftvm_output_hold_seconds') >= load.ok());
    assert.ok(histogramCount(p1, 'ftvm_execution_lag_seconds') > histogramCount(p0, 'ftvm_execution_lag_seconds'));
    // The backup's log bytes match what the primary sent (both count encoded entries).
    assert.equal(value(b1, 'ftvm_log_entries_total', { direction: 'in' }) > 0, true);
    assert.equal(value(p1, 'ftvm_outputs_held'), 0, 'nothing held once the load stopped and the backup acked');
    const util = value(pMid, 'ftvm_vcpu_utilization_ratio');
    assert.ok(util >= 0 && util <= 1, `vCPU utilisation is a ratio (${util})`);

    // The timeline of the primary shows the re-replication that made the pair.
    const tl = (await controlRequest(pc, pool.auth, 'GET', '/timeline')) as { vm: string; events: Array<{ kind: string; atMs: number }> };
    assert.equal(tl.vm, pool.opts.vm);
    // (On a busy machine a first attempt may have failed: the successful one ends the timeline.)
    assert.deepEqual(
      tl.events.map((e) => e.kind).slice(-3),
      ['standby-recruited', 'snapshot-streamed', 'armed'],
    );
    assert.ok(tl.events.every((e) => ['standby-recruited', 'snapshot-streamed', 'armed', 'join-failed'].includes(e.kind)), JSON.stringify(tl.events));

    // Every JSON log line of a node carries vm, role and epoch.
    const line = await primary.proc!.waitForLine(/redundancy restored/, 1000, { stream: 'stderr' });
    const rec = JSON.parse(line.input) as Record<string, unknown>;
    assert.equal(rec.vm, pool.opts.vm);
    assert.equal(rec.role, 'primary');
    assert.equal(typeof rec.epoch, 'number');
    const lines = primary.proc!.stderr.lines.filter((l) => l.startsWith('{'));
    assert.ok(lines.length > 3);
    for (const l of lines) {
      const r = JSON.parse(l) as Record<string, unknown>;
      assert.ok(r.vm === pool.opts.vm && typeof r.role === 'string' && typeof r.epoch === 'number', `log line without vm/role/epoch: ${l}`);
    }
    const bl = backup.proc!.stderr.lines.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.ok(bl.some((r) => r.role === 'standby'), 'the standby logged as a standby');
    assert.ok(bl.some((r) => r.role === 'backup' && r.epoch === epoch), 'and, once armed, as the backup at the new epoch');
  } finally {
    await pool.stop();
  }
});

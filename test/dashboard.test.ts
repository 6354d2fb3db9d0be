/**
 * The dashboard in a real browser: headless Chromium (Debian's, driven by playwright-core) opens
 * `ftvm dashboard` of a live VM (real processes: embedded arbiter, a primary, its backup, a spare
 * standby; the dashboard finds them through their announcements at the arbiter), sees it protected, sees lag and log bandwidth change under load; the primary is killed -9
 * and the page draws the failover's timeline with every phase and, once the spare standby was cloned
 * into a new backup, the pair protected again. The arbiter is then stopped (SIGSTOP): the page says so,
 * and recovers when it answers again. A screenshot is saved under build/test-artifacts/ (not committed).
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { startLoad } from '../src/testing/load.js';
import { CLI, REPO_ROOT } from '../src/testing/pair.js';
import { Pool } from '../src/testing/pool.js';
import { freePort, spawnNode, stopAll } from '../src/testing/processes.js';
import { needs, requireComponents } from '../src/testing/system-deps.js';

after(() => stopAll());

const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const PHASES = ['silence-detected', 'drained', 'claim-won', 'live', 'standby-recruited', 'snapshot-streamed', 'armed'];
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Waits for a selector; on a timeout the error carries the dashboard's state (what the page was given). */
async function waitFor(page: Page, url: string, selector: string, timeoutMs: number): Promise<void> {
  try {
    await page.waitForSelector(selector, { timeout: timeoutMs });
  } catch (err) {
    const state = await fetch(`${url}state`).then(
      async (r) => {
        const s = (await r.json()) as Record<string, unknown>;
        delete s.samples;
        return JSON.stringify(s);
      },
      (e: Error) => e.message,
    );
    throw new Error(`${(err as Error).message.split('\n')[0]}; the dashboard's state: ${state.slice(0, 6000)}`);
  }
}

async function text(page: Page, selector: string): Promise<string> {
  return (await page.textContent(selector)) ?? '';
}

test('dashboard: protected, live lag and bandwidth, a kill -9 drawn as a timeline, protected again, arbiter down and back', { ...needs('chromium'), timeout: 280_000 }, async () => {
  requireComponents('chromium');
  // Arbiter calls and failure detection with room for a busy machine (2 cores shared by many tests).
  const pool = await Pool.start({ slots: 3, nodeArgs: ['--arbiter-deadline-ms', '3000', '--fail-timeout-ms', '600'] });
  const profile = mkdtempSync(join(tmpdir(), 'ftvm-chromium-'));
  let context: BrowserContext | undefined;
  let arbiterStopped = false;
  try {
    const { primary } = await pool.waitProtected();
    const port = await freePort();
    const dash = spawnNode(
      // No --nodes: the dashboard finds the nodes through their announcements at the arbiter.
      [CLI, 'dashboard', '--arbiter', pool.arbiterUrl, '--secret-file', pool.secretFile, '--vm-name', pool.opts.vm, '--listen', `127.0.0.1:${port}`, '--poll-ms', '250'],
      { name: 'dashboard' },
    );
    const printed = await dash.waitForLine(/ftvm dashboard for VM .*: (http:\/\/\S+)/, 20_000, { stream: 'stdout' });
    const url = printed[1]!;

    context = await chromium.launchPersistentContext(profile, { executablePath: '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS, viewport: { width: 1280, height: 1100 } });
    const page = context.pages()[0] ?? (await context.newPage());
    const pageErrors: string[] = [];
    page.on('pageerror', (e) => pageErrors.push(e.message));
    await page.goto(url);

    // 1. The pair is protected; the nodes table shows the primary, the backup and the spare standby.
    await waitFor(page, url, '#protected[data-protected="true"]', 20_000);
    assert.equal(await text(page, '#protected'), 'PROTECTED');
    await page.waitForFunction(`document.querySelectorAll('#nodes tr[data-role="standby"]').length === 1`, undefined, { timeout: 10_000 });
    assert.equal(await page.locator('#nodes tr[data-role="primary"]').count(), 1);
    assert.equal(await page.locator('#nodes tr[data-role="backup"]').count(), 1);
    assert.match(await text(page, '#arbiter'), /^epoch \d+ · owner /);
    assert.match(await text(page, '#pool'), /free/);
    // The charts are uPlot's (canvas), served from the package.
    assert.equal(await page.locator('#lag-chart canvas').count(), 1);
    assert.equal(await page.locator('#bw-chart canvas').count(), 1);
    // The re-replication that made the pair is on the timeline already.
    await waitFor(page, url, '#timeline .episode[data-kind="rereplication"] .phase[data-phase="armed"][data-state="done"]', 10_000);

    // 2. Under load, the lag and bandwidth figures change, and the bandwidth is not zero.
    const load = startLoad(() => pool.servicePorts, { clients: 4, maxOps: 30_000, maxMs: 6000 });
    const lags = new Set<string>();
    const bws = new Set<string>();
    for (let i = 0; i < 20; i++) {
      await sleep(250);
      lags.add(await text(page, '#lag-value'));
      bws.add(await text(page, '#bw-value'));
    }
    await load.stop();
    assert.ok(load.ok() > 100, `the load ran (${load.ok()} SETs)`);
    assert.ok(lags.size >= 2, `the lag changed under load: ${[...lags].join(' | ')}`);
    assert.ok(bws.size >= 2, `the bandwidth changed under load: ${[...bws].join(' | ')}`);
    assert.ok([...bws].some((b) => /[1-9]/.test(b) && /(B|KiB|MiB)\/s/.test(b)), `some bandwidth was shown: ${[...bws].join(' | ')}`);

    // 3. kill -9 the primary: the backup takes over, the spare standby becomes its backup.
    const killedAt = Date.now();
    primary.proc!.kill('SIGKILL');
    await primary.proc!.exited;
    const failover = page.locator('#timeline .episode[data-kind="failover"]').first();
    // Every phase of the (latest, listed first) failover is drawn as done.
    const allDone = `(() => { const ep = document.querySelector('#timeline .episode[data-kind="failover"]');
      return !!ep && ${JSON.stringify(PHASES)}.every((p) => ep.querySelector('.phase[data-phase="' + p + '"][data-state="done"]') !== null); })()`;
    await page.waitForFunction(allDone, undefined, { timeout: 90_000 });
    for (const p of PHASES) assert.equal(await failover.locator(`.phase[data-phase="${p}"]`).getAttribute('data-state'), 'done', `phase ${p} is drawn`);
    assert.match((await failover.locator('.title').textContent()) ?? '', /the primary failed; the backup took over/);
    await waitFor(page, url, '#protected[data-protected="true"]', 60_000);
    assert.equal(await page.locator('#nodes tr[data-role="unreachable"]').count(), 1, 'the killed primary is shown unreachable');
    assert.equal(await page.locator('#nodes tr[data-role="primary"]').count(), 1);
    assert.equal(await page.locator('#nodes tr[data-role="backup"]').count(), 1);
    const protectedAgainMs = Date.now() - killedAt;

    mkdirSync(join(REPO_ROOT, 'build/test-artifacts'), { recursive: true });
    const shot = join(REPO_ROOT, 'build/test-artifacts/dashboard-failover.png');
    await page.screenshot({ path: shot, fullPage: true });

    // 4. The arbiter stops answering: the page says so; it recovers when the arbiter is back.
    pool.arbiter!.proc.kill('SIGSTOP');
    arbiterStopped = true;
    await waitFor(page, url, '#arbiter-banner.show', 15_000);
    assert.match(await text(page, '#arbiter-banner'), /arbiter .* is down or unreachable/);
    assert.equal(await page.getAttribute('#arbiter', 'data-ok'), 'false');
    await page.screenshot({ path: join(REPO_ROOT, 'build/test-artifacts/dashboard-arbiter-down.png'), fullPage: true });
    pool.arbiter!.proc.kill('SIGCONT');
    arbiterStopped = false;
    await waitFor(page, url, '#arbiter[data-ok="true"]', 15_000);
    assert.equal(await page.locator('#arbiter-banner.show').count(), 0);
    assert.deepEqual(pageErrors, [], 'no script errors on the page');
    console.log(`dashboard test: protected again ${protectedAgainMs} ms after the kill -9; screenshot ${shot}`);
    await dash.stop();
  } finally {
    if (arbiterStopped) pool.arbiter?.proc.kill('SIGCONT');
    await context?.close().catch(() => undefined);
    rmSync(profile, { recursive: true, force: true });
    await pool.stop();
  }
});

/**
 * `npm run proxy-check -- [--guest kv|c_server|rust_server] [--benchmark-failovers 5] [--count-failovers 10] [--conns 16] [--counters 64] [--quiet]`
 *
 * Issue #14's acceptance runs for `ftvm proxy` on real processes (docs/PROXY.md): a VM on a pool of four
 * slots (primary + standbys, each slot re-started as a fresh standby after its kill -9), one proxy in
 * front. (1) Unmodified redis-benchmark (`-c 50`, SET/GET/INCR) in back-to-back rounds through the proxy
 * across `--benchmark-failovers` kill -9 failovers: it must report no error. (2) Counting clients
 * (`--conns` connections, INCR on `--counters` counters) across `--count-failovers` failovers: every
 * counter equals the replies received, reply values are a serial execution's. (3) A kill -9 in the
 * middle of a 1,000-command pipeline: all replies, in order, exactly once. (4) Two proxies front the VM
 * (the second finds the primary with `--arbiter`): counting clients spread over both across
 * `--two-proxy-failovers` failovers, exact. (5) `--proxy-restarts` kill -9s of the proxy under counting
 * clients that reconnect: every acknowledged INCR counted exactly once (the counter lies between the
 * replies received and those plus the requests whose reply was cut off). Ends with ONE line of JSON;
 * exit code 0 only if all held.
 */
import { Command, InvalidArgumentError } from 'commander';
import { countingLoad, failovers, pipelineAcross, redisBenchmark, startProxiedPool, startProxyProcess, type BenchmarkRound } from '../src/testing/proxy-harness.js';
import { freePort, stopAll } from '../src/testing/processes.js';

function intAtLeast(name: string, min: number): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < min) throw new InvalidArgumentError(`${name} needs an integer >= ${min}, not ${v}`);
    return n;
  };
}

const o = new Command('npm run proxy-check --')
  .description("issue #14's acceptance runs for ftvm proxy: redis-benchmark and counting clients across kill -9 failovers, a pipeline cut by one; one JSON line")
  .option('--benchmark-failovers <n>', 'kill -9 failovers while redis-benchmark runs', intAtLeast('--benchmark-failovers', 0), 5)
  .option('--count-failovers <n>', 'kill -9 failovers while the counting clients run', intAtLeast('--count-failovers', 0), 10)
  .option('--conns <n>', 'counting connections', intAtLeast('--conns', 1), 16)
  .option('--counters <n>', 'counters', intAtLeast('--counters', 1), 64)
  .option('--two-proxy-failovers <n>', 'kill -9 failovers while counting clients use two proxies', intAtLeast('--two-proxy-failovers', 0), 3)
  .option('--proxy-restarts <n>', 'kill -9s (and restarts) of the proxy under reconnecting counting clients', intAtLeast('--proxy-restarts', 0), 3)
  .option('--gap-ms <n>', 'load between failovers', intAtLeast('--gap-ms', 0), 1500)
  .option('--guest <module>', 'the guest: kv (AssemblyScript), c_server or rust_server (unmodified WASI programs)', 'kv')
  .option('--quiet', 'no progress lines')
  .exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : 2))
  .parse(process.argv.slice(2), { from: 'user' })
  .opts<{ guest: string; benchmarkFailovers: number; countFailovers: number; conns: number; counters: number; gapMs: number; twoProxyFailovers: number; proxyRestarts: number; quiet?: boolean }>();

const t0 = Date.now();
const log = o.quiet === true ? (): void => undefined : (line: string): void => void process.stderr.write(`[proxy-check +${((Date.now() - t0) / 1000).toFixed(1)}s] ${line}\n`);

// A fail timeout above the default (150 ms): this check shares its machine, and a false suspicion halts a
// backup (safe, but it costs a standby); a kill -9 is still detected at once (fast failover).
if (!['kv', 'c_server', 'rust_server'].includes(o.guest)) {
  console.error(`--guest is kv, c_server or rust_server, not ${o.guest}`);
  process.exit(2);
}
const h = await startProxiedPool({ guest: o.guest, slots: 4, parallelStart: true, startTimeoutMs: 180_000, nodeArgs: ['--fail-timeout-ms', '600'] });
let exitCode = 1;
try {
  await h.pool.waitProtected(60_000);
  log('pool protected; proxy up');

  // (1) redis-benchmark across failovers.
  const rounds: BenchmarkRound[] = [];
  let benchDone = false;
  const bench = (async () => {
    for (let i = 0; i < 200 && !benchDone; i++) rounds.push(await redisBenchmark(h.proxyPort, 50, 50_000, 300_000));
  })();
  const benchTimes = await failovers(h, o.benchmarkFailovers, o.gapMs, (i, ms) => log(`redis-benchmark: failover ${i + 1} protected again in ${ms} ms`));
  benchDone = true;
  await bench;
  rounds.push(await redisBenchmark(h.proxyPort, 50, 20_000, 300_000));
  const benchErrors = rounds.flatMap((r) => [...r.errors, ...(r.code !== 0 ? [`exit code ${r.code}`] : [])]);
  log(`redis-benchmark: ${rounds.length} rounds, ${benchErrors.length} error lines`);

  // (2) counting clients across failovers.
  const load = await countingLoad(h.proxyPort, o.conns, o.counters, 'ctr', 50_000_000, 30 * 60_000);
  const countTimes = await failovers(h, o.countFailovers, o.gapMs, (i, ms) => log(`counting: failover ${i + 1} protected again in ${ms} ms`));
  const counting = await load.stop();
  log(`counting: ${counting.ops} INCR replies, ${counting.failures.length} failures, ${counting.mismatches.length} mismatches`);

  // (3) a pipeline of 1,000 cut by a kill -9.
  const { primary } = await h.pool.waitProtected(60_000);
  const pipe = await pipelineAcross(h.proxyPort, 1000, () => primary.proc!.kill('SIGKILL'));
  await primary.proc!.exited;
  log(`pipeline: ${pipe.replies} replies, ${pipe.detail}`);
  primary.gen++;
  await h.pool.startStandby(primary);

  // (4) two proxies, the second finding the primary at the arbiter.
  const port2 = await freePort();
  const second = await startProxyProcess(h.pool.secretFile, h.pool.opts.vm, port2, h.pool.arbiterUrl);
  const two = await countingLoad([h.proxyPort, port2], o.conns, o.counters, 'two', 50_000_000, 30 * 60_000);
  const twoTimes = await failovers(h, o.twoProxyFailovers, o.gapMs, (i, ms) => log(`two proxies: failover ${i + 1} protected again in ${ms} ms`));
  const twoProxies = await two.stop();
  await second.stop();
  log(`two proxies: ${twoProxies.ops} INCR replies, ${twoProxies.failures.length} failures, ${twoProxies.mismatches.length} mismatches`);

  // (5) proxy restarts under reconnecting clients.
  const rl = await countingLoad(h.proxyPort, o.conns, o.counters, 'rst', 50_000_000, 30 * 60_000, { reconnectMs: 30_000 });
  for (let i = 0; i < o.proxyRestarts; i++) {
    await new Promise((r) => setTimeout(r, o.gapMs));
    await h.restartProxy();
    log(`proxy restart ${i + 1}: ${rl.ops} INCR replies so far, ${rl.reconnects} reconnections`);
  }
  await new Promise((r) => setTimeout(r, o.gapMs));
  const restarts = await rl.stop();
  log(`proxy restarts: ${restarts.ops} INCR replies, ${restarts.unacked} cut off, ${restarts.failures.length} failures, ${restarts.mismatches.length} mismatches`);

  const passed =
    benchErrors.length === 0 &&
    counting.failures.length === 0 &&
    counting.mismatches.length === 0 &&
    counting.ops > 0 &&
    pipe.ok &&
    twoProxies.failures.length === 0 &&
    twoProxies.mismatches.length === 0 &&
    twoProxies.ops > 0 &&
    restarts.failures.length === 0 &&
    restarts.mismatches.length === 0 &&
    restarts.ops > 0;
  console.log(
    JSON.stringify({
      passed,
      guest: o.guest,
      benchmark: { failovers: benchTimes.length, rounds: rounds.length, errors: benchErrors.length, error_lines: benchErrors.slice(0, 10), last_results: rounds.at(-1)?.results ?? [], protected_again_ms: benchTimes },
      counting: { failovers: countTimes.length, connections: o.conns, counters: counting.counters, incr_replies: counting.ops, failures: counting.failures.slice(0, 10), mismatches: counting.mismatches.slice(0, 10), protected_again_ms: countTimes },
      pipeline: pipe,
      two_proxies: { failovers: twoTimes.length, incr_replies: twoProxies.ops, failures: twoProxies.failures.slice(0, 10), mismatches: twoProxies.mismatches.slice(0, 10), protected_again_ms: twoTimes },
      proxy_restarts: { restarts: o.proxyRestarts, incr_replies: restarts.ops, cut_off: restarts.unacked, reconnections: restarts.reconnects, failures: restarts.failures.slice(0, 10), mismatches: restarts.mismatches.slice(0, 10) },
      seconds: Math.round((Date.now() - t0) / 1000),
    }),
  );
  exitCode = passed ? 0 : 1;
} finally {
  await h.stop();
  await stopAll();
}
process.exit(exitCode);

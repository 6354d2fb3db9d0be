/**
 * `npm run soak -- [--duration-s 600] [--kill-every-s 30] [--warmup-s 10] [--seed S] [--clients C] [--fail-timeout-ms N] [--quiet]`
 *
 * Load on real processes with a kill -9 of the live primary every `--kill-every-s` and automatic
 * re-replication to standbys (src/jepsen/soak.ts); the RSS of every node sampled. Ends with ONE line of
 * JSON (`failovers`, `lost_acked_writes`, `hashes_equal`, `rss_growth_ratio`, …); exit code 0 only if
 * nothing acknowledged was lost, the hashes are equal and RSS stayed within 20% after warm-up: within
 * each role a process held (`rss_growth_ratio`) and from one generation of processes to the next
 * (`rss_generation_ratio`); see analyseRss in src/jepsen/soak.ts.
 */
import { Command, InvalidArgumentError } from 'commander';
import { runSoak } from '../src/jepsen/soak.js';
import { randomSeed } from '../src/testing/prng.js';
import { stopAll } from '../src/testing/processes.js';

/** An integer option of at least `min` (commander parser); a bad value is a usage error (exit 2). */
function intAtLeast(name: string, min: number): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < min) throw new InvalidArgumentError(`${name} needs an integer >= ${min}, not ${v}`);
    return n;
  };
}

const cmd = new Command('npm run soak --')
  .description('load with a kill -9 of the live primary every --kill-every-s, automatic re-replication, RSS of every node sampled; one JSON line at the end')
  .option('--duration-s <n>', 'how long the load runs', intAtLeast('--duration-s', 1), 600)
  .option('--kill-every-s <n>', 'a kill -9 of the live primary this often', intAtLeast('--kill-every-s', 1), 30)
  .option('--warmup-s <n>', 'seconds after a process takes a role (backup, primary) at which its RSS is the baseline of rss_growth_ratio', intAtLeast('--warmup-s', 0), 10)
  .option('--seed <n>', 'seed of the clients and the schedule', intAtLeast('--seed', 0))
  .option('--clients <n>', 'closed-loop clients', intAtLeast('--clients', 1), 4)
  .option('--fail-timeout-ms <n>', "passed to every node's --fail-timeout-ms", intAtLeast('--fail-timeout-ms', 10))
  .option('--quiet', 'no progress lines')
  .exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : 2))
  .parse(process.argv.slice(2), { from: 'user' });
const o = cmd.opts<{ durationS: number; killEveryS: number; warmupS: number; seed?: number; clients: number; failTimeoutMs?: number; quiet?: boolean }>();
const { durationS, killEveryS, warmupS, clients, failTimeoutMs } = o;
const seed = o.seed ?? randomSeed();
const quiet = o.quiet === true;

const t0 = Date.now();
const log = quiet ? undefined : (line: string): void => void process.stderr.write(`[soak +${((Date.now() - t0) / 1000).toFixed(1)}s] ${line}\n`);
process.stderr.write(`soak: seed ${seed}, ${durationS} s, kill -9 of the primary every ${killEveryS} s\n`);
let code = 1;
try {
  const r = await runSoak({ durationS, killEveryS, warmupS, seed, clients, ...(failTimeoutMs !== undefined ? { failTimeoutMs } : {}), ...(log ? { log } : {}) });
  code = r.passed ? 0 : 1;
  console.log(JSON.stringify(r));
} catch (err) {
  process.stderr.write(`soak: ${(err as Error).stack ?? String(err)}\n`);
  console.log(JSON.stringify({ seed, failovers: 0, lost_acked_writes: null, hashes_equal: null, rss_growth_ratio: null, passed: false, error: (err as Error).message }));
} finally {
  await stopAll(3000);
}
process.exit(code);

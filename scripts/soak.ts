/**
 * `npm run soak -- [--duration-s 600] [--kill-every-s 30] [--warmup-s 20] [--seed S] [--clients C] [--fail-timeout-ms N] [--quiet]`
 *
 * Load on real processes with a kill -9 of the live primary every `--kill-every-s` and automatic
 * re-replication to standbys (src/jepsen/soak.ts); the RSS of every node sampled. Ends with ONE line of
 * JSON (`failovers`, `lost_acked_writes`, `hashes_equal`, `rss_growth_ratio`, …); exit code 0 only if
 * nothing acknowledged was lost, the hashes are equal and RSS stayed within 20% after warm-up.
 */
import { runSoak } from '../src/jepsen/soak.js';
import { randomSeed } from '../src/testing/prng.js';
import { stopAll } from '../src/testing/processes.js';

function usage(msg: string): never {
  process.stderr.write(`${msg}\nusage: npm run soak -- [--duration-s N] [--kill-every-s N] [--warmup-s N] [--seed S] [--clients C] [--fail-timeout-ms N] [--quiet]\n`);
  process.exit(2);
}

function intArg(name: string, v: string | undefined, min: number): number {
  const n = Number(v);
  if (v === undefined || !Number.isSafeInteger(n) || n < min) usage(`${name} needs an integer >= ${min}, not ${String(v)}`);
  return n;
}

const args = process.argv.slice(2);
let durationS = 600;
let killEveryS = 30;
let warmupS = 20;
let seed = randomSeed();
let clients = 4;
let quiet = false;
let failTimeoutMs: number | undefined;
for (let i = 0; i < args.length; i++) {
  const a = args[i]!;
  const v = args[i + 1];
  switch (a) {
    case '--duration-s':
      durationS = intArg(a, v, 1);
      i++;
      break;
    case '--kill-every-s':
      killEveryS = intArg(a, v, 1);
      i++;
      break;
    case '--warmup-s':
      warmupS = intArg(a, v, 0);
      i++;
      break;
    case '--seed':
      seed = intArg(a, v, 0);
      i++;
      break;
    case '--clients':
      clients = intArg(a, v, 1);
      i++;
      break;
    case '--fail-timeout-ms':
      failTimeoutMs = intArg(a, v, 10);
      i++;
      break;
    case '--quiet':
      quiet = true;
      break;
    default:
      usage(`unknown argument ${a}`);
  }
}

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

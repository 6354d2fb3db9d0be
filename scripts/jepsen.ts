/**
 * `npm run jepsen -- --faults N [--guest kv|c-server|rust-server|sqlite|threaded-kv] [--seed S] [--arbiter embedded|etcd]
 * [--etcd-members M] [--overlap] [--mode replay|checkpoint] [--via direct|proxy] [--fault-kinds k1,k2] [--clients C] [--keys K] [--history FILE] [--node-logs DIR] [--quiet]`
 *
 * `--overlap`: a second fault before the pair is protected again (src/jepsen/nemesis.ts), including
 * killing a primary that runs alone: that VM is lost by design; the run says so (`vms_lost`,
 * `acked_writes_lost_with_vm`), starts a fresh VM, and is not `passed` (exit code 3 if every check
 * held otherwise). `--etcd-members 3`: an etcd cluster of three, members killed during the run.
 * `--via proxy`: clients go through one `ftvm proxy` (docs/PROXY.md) and keep their connections across
 * failovers. `--fault-kinds kill-primary,kill-backup`: only those faults.
 *
 * Real ftvm processes on loopback under a nemesis (kill -9, SIGSTOP/SIGCONT, channel and arbiter cuts),
 * clients recording every call; then a linearizability check per key and a count of lost acknowledged
 * writes. Prints the seed first (it fixes the fault schedule and the clients' choices; process timing
 * is real) and ends with one line of JSON. Exit code 0 only if the run passed.
 */
import { randomSeed } from '../src/testing/prng.js';
import { JEPSEN_GUESTS, runJepsen, type JepsenGuest } from '../src/jepsen/run.js';
import { ETCD_MEMBER_WEIGHTS, FAULT_WEIGHTS, OVERLAP_WEIGHTS, type FaultKind } from '../src/jepsen/nemesis.js';
import { progress } from '../src/util/progress.js';
import { stopAll } from '../src/testing/processes.js';

function usage(msg: string): never {
  process.stderr.write(`${msg}\nusage: npm run jepsen -- --faults N [--guest kv|c-server|rust-server|sqlite|threaded-kv] [--seed S] [--arbiter embedded|etcd] [--etcd-members M] [--overlap] [--mode replay|checkpoint] [--via direct|proxy] [--fault-kinds k1,k2] [--fail-timeout-ms N] [--clients C] [--keys K] [--history FILE] [--node-logs DIR] [--quiet]\n`);
  process.exit(2);
}

function intArg(name: string, v: string | undefined, min: number): number {
  const n = Number(v);
  if (v === undefined || !Number.isSafeInteger(n) || n < min) usage(`${name} needs an integer >= ${min}, not ${String(v)}`);
  return n;
}

const args = process.argv.slice(2);
let faults = 20;
let seed = randomSeed();
let arbiter: 'embedded' | 'etcd' = 'embedded';
let clients = 4;
let keys = 8;
let historyOut: string | undefined;
let nodeLogDir: string | undefined;
let quiet = false;
let guest: JepsenGuest = 'kv';
let overlap = false;
let etcdMembers = 1;
let failTimeoutMs: number | undefined;
let via: 'direct' | 'proxy' = 'direct';
let faultKinds: FaultKind[] | undefined;
let mode: 'replay' | 'checkpoint' = 'replay';
for (let i = 0; i < args.length; i++) {
  const a = args[i]!;
  const v = args[i + 1];
  switch (a) {
    case '--faults':
      faults = intArg(a, v, 0);
      i++;
      break;
    case '--seed':
      seed = intArg(a, v, 0);
      i++;
      break;
    case '--arbiter':
      if (v !== 'embedded' && v !== 'etcd') usage(`--arbiter is embedded or etcd, not ${String(v)}`);
      arbiter = v;
      i++;
      break;
    case '--clients':
      clients = intArg(a, v, 1);
      i++;
      break;
    case '--keys':
      keys = intArg(a, v, 1);
      i++;
      break;
    case '--node-logs':
      if (v === undefined) usage('--node-logs needs a directory');
      nodeLogDir = v;
      i++;
      break;
    case '--history':
      if (v === undefined) usage('--history needs a file');
      historyOut = v;
      i++;
      break;
    case '--guest':
      if (v === undefined || !Object.hasOwn(JEPSEN_GUESTS, v)) usage(`--guest is one of ${Object.keys(JEPSEN_GUESTS).join(', ')}, not ${String(v)}`);
      guest = v as JepsenGuest;
      i++;
      break;
    case '--quiet':
      quiet = true;
      break;
    case '--overlap':
      overlap = true;
      break;
    case '--fail-timeout-ms':
      failTimeoutMs = intArg(a, v, 10);
      i++;
      break;
    case '--etcd-members':
      etcdMembers = intArg(a, v, 1);
      i++;
      break;
    case '--mode':
      if (v !== 'replay' && v !== 'checkpoint') usage(`--mode is replay or checkpoint, not ${String(v)}`);
      mode = v;
      i++;
      break;
    case '--via':
      if (v !== 'direct' && v !== 'proxy') usage(`--via is direct or proxy, not ${String(v)}`);
      via = v;
      i++;
      break;
    case '--fault-kinds': {
      const kinds = (v ?? '').split(',').filter((k) => k !== '');
      const known = new Set<string>([...FAULT_WEIGHTS, ...OVERLAP_WEIGHTS, ...ETCD_MEMBER_WEIGHTS].map(([k]) => k));
      const bad = kinds.filter((k) => !known.has(k));
      if (kinds.length === 0 || bad.length > 0) usage(`--fault-kinds takes a comma-separated list of ${[...known].join(', ')}${bad.length > 0 ? `; unknown: ${bad.join(', ')}` : ''}`);
      faultKinds = kinds as FaultKind[];
      i++;
      break;
    }
    default:
      usage(`unknown argument ${a}`);
  }
}

if (etcdMembers !== 1 && arbiter !== 'etcd') usage('--etcd-members needs --arbiter etcd');
if (mode === 'checkpoint' && guest === 'sqlite') usage('--mode checkpoint does not run guests with a disk yet (sqlite)');
if (mode !== 'checkpoint' && guest === 'threaded-kv') usage('the threaded-kv guest runs only with --mode checkpoint (replay refuses threaded guests)');
if (mode === 'checkpoint' && via === 'proxy') usage('--mode checkpoint does not serve ftvm proxy sessions yet: use --via direct');
const extra = `${mode !== 'replay' ? ` --mode ${mode}` : ''}${via !== 'direct' ? ` --via ${via}` : ''}${faultKinds !== undefined ? ` --fault-kinds ${faultKinds.join(',')}` : ''}${failTimeoutMs !== undefined ? ` --fail-timeout-ms ${failTimeoutMs}` : ''}${overlap ? ' --overlap' : ''}${arbiter === 'etcd' && etcdMembers !== 1 ? ` --etcd-members ${etcdMembers}` : ''}`;
console.log(`seed ${seed}  (reproduce the schedule: npm run jepsen -- --guest ${guest} --faults ${faults} --seed ${seed} --arbiter ${arbiter} --clients ${clients} --keys ${keys}${extra})`);
const t0 = Date.now();
const bar = quiet ? undefined : progress('faults', faults);
const log = bar === undefined ? undefined : (line: string): void => {
  bar.log(`[jepsen +${((Date.now() - t0) / 1000).toFixed(1)}s] ${line}`);
  const m = /^fault (\d+)\/\d+: (\S+).*; (\d+) ops so far$/.exec(line);
  if (m) bar.update(Number(m[1]), `${m[2]}, ${m[3]} ops`);
};
let code = 1;
try {
  const { result } = await runJepsen({ faults, guest, seed, arbiter, clients, keys, overlap, etcdMembers, via, mode, ...(faultKinds !== undefined ? { faultKinds } : {}), ...(failTimeoutMs !== undefined ? { nodeArgs: ['--fail-timeout-ms', String(failTimeoutMs)] } : {}), ...(log ? { log } : {}), ...(historyOut !== undefined ? { historyOut } : {}), ...(nodeLogDir !== undefined ? { nodeLogDir } : {}) });
  code = result.passed ? 0 : result.checks_passed && result.vms_lost > 0 ? 3 : 1;
  bar?.stop();
  console.log(JSON.stringify(result));
} catch (err) {
  process.stderr.write(`jepsen: ${(err as Error).stack ?? String(err)}\n`);
  console.log(JSON.stringify({ guest, seed, faults: 0, operations: 0, violations: null, lost_acked_writes: null, passed: false, error: (err as Error).message }));
} finally {
  await stopAll(3000);
}
process.exit(code);

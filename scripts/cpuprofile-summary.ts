/**
 * Summarises V8 .cpuprofile files (from `node --cpu-prof`, e.g. `BENCH_PAIR_CPU_PROF=<dir> npm run
 * bench:pair`): per profile, the sampled time, the idle share, and the functions and files with the
 * most self time.
 *
 * Start-up work (module loading, compiling and instrumenting the guest) is left out: a sample whose
 * stack holds a frame of binaryen, the instrumenter or a compile step, or whose own frame is the module
 * loader's, counts as start-up. Time blocked in Atomics.wait (the vCPU worker waiting for input:
 * `wait` in shared-queue.js) is reported as "blocked", not as busy.
 *
 * Usage: node dist/scripts/cpuprofile-summary.js <file-or-dir>... [--top N] [--by function|file] [--inclusive]
 * (--inclusive: total time per function, callees included, instead of self time)
 */
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
  parent?: number;
}

/** A frame anywhere on the stack that makes a sample start-up work. */
const STARTUP = /binaryen|machine\/instrument\.js/;
const STARTUP_FUNCTIONS = new Set(['compileSourceTextModule', 'wrapSafe', 'compileFunction', 'compileForInternalLoader', 'Worker']);
/** A leaf frame (self time) of the module loader. */
const STARTUP_LEAF = /node:internal\/modules|node:internal\/bootstrap/;

function isStartup(n: ProfileNode, byId: Map<number, ProfileNode>, memo: Map<number, boolean>): boolean {
  const known = memo.get(n.id);
  if (known !== undefined) return known;
  let v = STARTUP.test(n.callFrame.url) || STARTUP_FUNCTIONS.has(n.callFrame.functionName);
  if (!v && n.parent !== undefined) v = isStartup(byId.get(n.parent)!, byId, memo);
  memo.set(n.id, v);
  return v;
}
interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

function shortUrl(url: string): string {
  if (url === '') return '(native)';
  const i = url.lastIndexOf('/dist/');
  if (i >= 0) return url.slice(i + 6);
  const n = url.indexOf('node_modules/');
  if (n >= 0) return url.slice(n);
  return url.replace(/^file:\/\//, '');
}

function summarise(file: string, top: number, by: 'function' | 'file'): void {
  const p = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map<number, ProfileNode>();
  for (const n of p.nodes) byId.set(n.id, n);
  for (const n of p.nodes) for (const c of n.children ?? []) byId.get(c)!.parent = n.id;
  const memo = new Map<number, boolean>();
  const self = new Map<number, number>();
  for (let i = 0; i < p.samples.length; i++) {
    const id = p.samples[i]!;
    self.set(id, (self.get(id) ?? 0) + (p.timeDeltas[i] ?? 0));
  }
  const totals = new Map<string, number>();
  let all = 0;
  let idle = 0;
  let startup = 0;
  let blocked = 0;
  for (const [id, us] of self) {
    const n = byId.get(id)!;
    const fn = n.callFrame.functionName || '(anonymous)';
    all += us;
    if (fn === '(idle)') {
      idle += us;
      continue;
    }
    if (STARTUP_LEAF.test(n.callFrame.url) || isStartup(n, byId, memo)) {
      startup += us;
      continue;
    }
    if (fn === 'wait' && n.callFrame.url.endsWith('shared-queue.js')) {
      blocked += us;
      continue;
    }
    const key = by === 'file' ? shortUrl(n.callFrame.url) : `${fn} ${shortUrl(n.callFrame.url)}:${n.callFrame.lineNumber + 1}`;
    totals.set(key, (totals.get(key) ?? 0) + us);
  }
  const busy = all - idle - startup - blocked;
  if (inclusive) {
    // Total time per function: each busy sample counts once for every distinct function on its stack.
    const incl = new Map<string, number>();
    for (const [id, us] of self) {
      let n: ProfileNode | undefined = byId.get(id)!;
      const fn0 = n.callFrame.functionName;
      if (fn0 === '(idle)' || STARTUP_LEAF.test(n.callFrame.url) || isStartup(n, byId, memo) || (fn0 === 'wait' && n.callFrame.url.endsWith('shared-queue.js'))) continue;
      const seen = new Set<string>();
      for (; n !== undefined; n = n.parent === undefined ? undefined : byId.get(n.parent)) {
        const key = `${n.callFrame.functionName || '(anonymous)'} ${shortUrl(n.callFrame.url)}:${n.callFrame.lineNumber + 1}`;
        if (seen.has(key)) continue;
        seen.add(key);
        incl.set(key, (incl.get(key) ?? 0) + us);
      }
    }
    totals.clear();
    for (const [k, v] of incl) totals.set(k, v);
  }
  console.log(
    `\n== ${basename(file)}: ${(all / 1e6).toFixed(2)} s sampled; start-up ${(startup / 1e6).toFixed(2)} s, blocked in Atomics.wait ${(blocked / 1e6).toFixed(2)} s, busy otherwise ${(busy / 1e6).toFixed(2)} s`,
  );
  const rows = [...totals.entries()].sort((a, b) => b[1] - a[1]).slice(0, top);
  for (const [k, us] of rows) console.log(`${(us / 1000).toFixed(0).padStart(8)} ms ${((100 * us) / Math.max(1, busy)).toFixed(1).padStart(5)}%  ${k}`);
}

const args = process.argv.slice(2);
let top = 30;
let by: 'function' | 'file' = 'function';
let inclusive = false;
const files: string[] = [];
for (let i = 0; i < args.length; i++) {
  const a = args[i]!;
  if (a === '--top') top = Number(args[++i]);
  else if (a === '--inclusive') inclusive = true;
  else if (a === '--by') by = args[++i] === 'file' ? 'file' : 'function';
  else if (statSync(a).isDirectory()) {
    for (const f of readdirSync(a).sort()) if (f.endsWith('.cpuprofile')) files.push(join(a, f));
  } else files.push(a);
}
for (const f of files) summarise(f, top, by);

/**
 * Teardown benchmark (a script, not a test): how long after SIGKILL does a replica's kernel close its
 * sockets? That is the first segment of a crash failover: the backup's evidence (the channel closes,
 * the liveness port refuses) exists only from then on, and Linux frees the dying process's address
 * space (exit_mm) before it closes its files (exit_files), so every resident page delays it.
 *
 * For each run and each variant: an `ftvm run` kv primary without a backup (its teardown is the same
 * as a paired one's), a few SETs, then an observer connection to its service port; SIGKILL (timed
 * from just before the signal) → the observer's 'close'. The process's resident memory (/proc
 * status: RSS, anonymous, file-backed) is read just before the kill. Variants are interleaved run by
 * run, so a loaded machine weighs on all of them alike; medians are reported.
 *
 * Environment: BENCH_TEARDOWN_RUNS (default 10); BENCH_TEARDOWN_VARIANTS, `|`-separated lists of node
 * flags (default `|--use-largepages=on`: none, then Node's text in huge pages); a variant that starts
 * with `cli=/path/to/main.js ` runs that CLI instead (e.g. an older build, for a before/after).
 * Every process is stopped by PID.
 */
import net from 'node:net';
import { readFileSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { performance } from 'node:perf_hooks';
import { RespClient } from '../src/client/resp.js';
import { CLI, guestFile, makeSecretFile } from '../src/testing/pair.js';
import { freePort, spawnNode, stopAll } from '../src/testing/processes.js';

function envInt(name: string, dflt: number, min: number, max: number): number {
  const v = Number(process.env[name] ?? dflt);
  return Number.isFinite(v) ? Math.min(max, Math.max(min, Math.floor(v))) : dflt;
}

const RUNS = envInt('BENCH_TEARDOWN_RUNS', 10, 1, 200);
const VARIANTS = (process.env.BENCH_TEARDOWN_VARIANTS ?? '|--use-largepages=on').split('|').map((v) => {
  const words = v.split(' ').filter((w) => w !== '');
  const cli = words[0]?.startsWith('cli=') === true ? words.shift()!.slice(4) : CLI;
  return { name: v.trim() || 'default', cli, flags: words };
});
const SETS = 100;
const HOST = '127.0.0.1';

interface Sample {
  closeMs: number;
  rssMb: number;
  anonMb: number;
  fileMb: number;
  threads: number;
}

function procStatus(pid: number): Omit<Sample, 'closeMs'> {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(s)?.[1] ?? NaN);
  return { rssMb: kb('VmRSS') / 1024, anonMb: kb('RssAnon') / 1024, fileMb: kb('RssFile') / 1024, threads: kb('Threads') };
}

function median(xs: readonly number[]): number {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

async function once(cli: string, flags: readonly string[], secretFile: string): Promise<Sample> {
  const port = await freePort();
  const p = spawnNode([...flags, cli, 'run', guestFile('kv'), '--role', 'primary', '--service', `${HOST}:${port}`, '--secret-file', secretFile], { name: 'teardown-primary' });
  try {
    await p.waitForLine(/primary is serving/, 60_000, { stream: 'stderr' });
    const c = await RespClient.connect({ host: HOST, port, connectTimeoutMs: 5000, callTimeoutMs: 10_000 });
    try {
      for (let i = 0; i < SETS; i++) await c.call('SET', `k${i}`, 'x'.repeat(64));
    } finally {
      c.close();
    }
    const obs = net.connect({ host: HOST, port });
    await new Promise<void>((resolve, reject) => {
      obs.once('connect', resolve);
      obs.once('error', reject);
    });
    obs.on('error', () => undefined);
    obs.resume();
    await new Promise((r) => setTimeout(r, 100)); // the service has accepted it
    const size = procStatus(p.pid);
    const closed = new Promise<number>((resolve) => obs.once('close', () => resolve(performance.now())));
    const t0 = performance.now();
    process.kill(p.pid, 'SIGKILL');
    const t1 = await closed;
    return { closeMs: t1 - t0, ...size };
  } finally {
    await p.stop(2000);
  }
}

async function main(): Promise<void> {
  const secretFile = makeSecretFile();
  const samples = VARIANTS.map(() => [] as Sample[]);
  try {
    for (let run = 1; run <= RUNS; run++) {
      for (const [i, v] of VARIANTS.entries()) {
        try {
          const s = await once(v.cli, v.flags, secretFile);
          samples[i]!.push(s);
          process.stderr.write(`[bench:teardown] run ${run} ${v.name}: close ${s.closeMs.toFixed(1)} ms (rss ${s.rssMb.toFixed(0)} MB, anon ${s.anonMb.toFixed(0)}, file ${s.fileMb.toFixed(0)}, ${s.threads} threads)\n`);
        } catch (err) {
          process.stderr.write(`[bench:teardown] run ${run} ${v.name} FAILED: ${err instanceof Error ? err.message : String(err)}\n`);
        }
      }
    }
  } finally {
    rmSync(dirname(secretFile), { recursive: true, force: true });
  }
  const out = VARIANTS.map((v, i) => {
    const s = samples[i]!;
    const closes = s.map((x) => x.closeMs).sort((a, b) => a - b);
    return {
      variant: v.name,
      runs: s.length,
      close_p50_ms: Number(median(closes).toFixed(1)),
      close_max_ms: Number((closes[closes.length - 1] ?? NaN).toFixed(1)),
      rss_mb: Number(median(s.map((x) => x.rssMb)).toFixed(1)),
      anon_mb: Number(median(s.map((x) => x.anonMb)).toFixed(1)),
      file_mb: Number(median(s.map((x) => x.fileMb)).toFixed(1)),
      threads: median(s.map((x) => x.threads)),
    };
  });
  for (const o of out) console.log(`${o.variant}: SIGKILL → socket closed p50 ${o.close_p50_ms} ms, max ${o.close_max_ms} ms over ${o.runs} runs; RSS ${o.rss_mb} MB (anon ${o.anon_mb}, file ${o.file_mb}), ${o.threads} threads`);
  console.log(JSON.stringify({ bench: 'teardown', variants: out }));
}

main().then(
  async () => {
    await stopAll(3000);
    process.exit(0);
  },
  async (err: unknown) => {
    process.stderr.write(`bench:teardown FAILED: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    await stopAll(3000);
    process.exit(1);
  },
);

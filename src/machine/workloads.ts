/**
 * Generated input workloads for `ftvm record`, the demo, tests and benchmarks: scheduled inputs for a
 * ScriptedEnv, reproducible from a seed.
 */
import { readFile } from 'node:fs/promises';
import { FtvmError } from '../util/errors.js';
import { SeededRandom, type ScheduledInput } from './env.js';

export function resp(...args: string[]): Uint8Array {
  let s = `*${args.length}\r\n`;
  for (const a of args) s += `$${Buffer.byteLength(a)}\r\n${a}\r\n`;
  return Buffer.from(s, 'utf8');
}

export interface KvWorkloadOptions {
  ops: number;
  conns: number;
  seed: number;
  keys?: number;
  /** Instructions between successive inputs (the virtual arrival rate). */
  spacing?: number;
}

/** Clients opening connections, sending SET/GET/INCR/DEL/EXISTS/DBSIZE, pipelining a little, closing. */
export function kvWorkload(o: KvWorkloadOptions): ScheduledInput[] {
  const rng = new SeededRandom(o.seed);
  const keys = o.keys ?? 64;
  const spacing = o.spacing ?? 20_000;
  const out: ScheduledInput[] = [];
  let at = 0;
  for (let c = 1; c <= o.conns; c++) out.push({ atCount: at, kind: 'open', conn: c });
  for (let i = 0; i < o.ops; i++) {
    at += 1 + rng.int(spacing);
    const conn = 1 + rng.int(o.conns);
    const key = `key:${rng.int(keys)}`;
    const r = rng.int(100);
    let cmd: Uint8Array;
    if (r < 40) cmd = resp('SET', key, `v${i}-${rng.int(1_000_000)}`);
    else if (r < 70) cmd = resp('GET', key);
    else if (r < 85) cmd = resp('INCR', `ctr:${rng.int(8)}`);
    else if (r < 92) cmd = resp('DEL', key);
    else if (r < 97) cmd = resp('EXISTS', key);
    else cmd = resp('DBSIZE');
    out.push({ atCount: at, kind: 'data', conn, data: cmd });
  }
  at += spacing;
  for (let c = 1; c <= o.conns; c++) out.push({ atCount: at, kind: 'close', conn: c });
  return out;
}

/** spin: work requests and pokes that land mid-computation. */
export function spinWorkload(o: { ops: number; seed: number; work?: number }): ScheduledInput[] {
  const rng = new SeededRandom(o.seed);
  const out: ScheduledInput[] = [{ atCount: 0, kind: 'open', conn: 1 }];
  let at = 0;
  for (let i = 0; i < o.ops; i++) {
    at += 1 + rng.int(3_000_000);
    const data = rng.int(3) === 0 ? `spin ${1 + rng.int(o.work ?? 200_000)}` : `poke-${i}`;
    out.push({ atCount: at, kind: 'data', conn: 1, data: Buffer.from(data) });
  }
  out.push({ atCount: at + 1, kind: 'close', conn: 1 });
  return out;
}

/** chaos: a few pokes; the guest's own timers drive the rest. */
export function chaosWorkload(o: { ops: number; seed: number }): ScheduledInput[] {
  const rng = new SeededRandom(o.seed);
  const out: ScheduledInput[] = [{ atCount: 0, kind: 'open', conn: 1 }];
  let at = 0;
  for (let i = 0; i < o.ops; i++) {
    at += 1 + rng.int(2_000_000);
    out.push({ atCount: at, kind: 'data', conn: 1, data: Buffer.from(`poke ${i}`) });
  }
  return out;
}

/**
 * A workload script file: JSON array of {atCount, kind: "open"|"data"|"close", conn, data?} where data
 * is a string (utf8) or {base64: "..."}.
 */
export async function loadWorkloadScript(path: string): Promise<ScheduledInput[]> {
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(path, 'utf8'));
  } catch (err) {
    throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `cannot read workload script ${path}: ${(err as Error).message}`);
  }
  if (!Array.isArray(raw)) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `workload script ${path}: expected a JSON array`);
  let last = 0;
  return raw.map((item: unknown, i: number) => {
    const bad = (m: string): never => {
      throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `workload script ${path}, item ${i}: ${m}`);
    };
    if (typeof item !== 'object' || item === null) bad('not an object');
    const it = item as Record<string, unknown>;
    const atCount = it.atCount ?? last;
    if (typeof atCount !== 'number' || !Number.isSafeInteger(atCount) || atCount < last) bad('atCount must be a non-decreasing integer');
    if (it.kind !== 'open' && it.kind !== 'data' && it.kind !== 'close') bad('kind must be open, data or close');
    if (typeof it.conn !== 'number' || !Number.isInteger(it.conn) || it.conn < 1 || it.conn > 0xffffffff) bad('conn must be a positive integer');
    last = atCount as number;
    const out: ScheduledInput = { atCount: atCount as number, kind: it.kind as ScheduledInput['kind'], conn: it.conn as number };
    if (it.kind === 'data') {
      if (typeof it.data === 'string') out.data = Buffer.from(it.data, 'utf8');
      else if (typeof it.data === 'object' && it.data !== null && typeof (it.data as { base64?: unknown }).base64 === 'string') {
        out.data = Buffer.from((it.data as { base64: string }).base64, 'base64');
      } else bad('data must be a string or {"base64": "..."}');
    }
    return out;
  });
}

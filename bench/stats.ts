/**
 * Small statistics and measuring helpers shared by the benchmarks (`bench/pair.ts`, `bench/suite.ts`).
 */
import { readFileSync } from 'node:fs';

/** Nearest-rank quantile of sorted samples (NaN when empty). */
export function quantile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i]!;
}

export function sortedCopy(xs: readonly number[] | Float64Array): Float64Array {
  const a = Float64Array.from(xs);
  a.sort();
  return a;
}

export function median(xs: readonly number[]): number {
  const s = sortedCopy(xs);
  if (s.length === 0) return NaN;
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

export const round = (x: number, digits = 3): number => (Number.isFinite(x) ? Number(x.toFixed(digits)) : x);

/** A small fast PRNG (xorshift32) so the load generator's own CPU use stays low. */
export function rng(seed: number): () => number {
  let s = seed >>> 0 || 0x9e3779b9;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 0x1_0000_0000;
  };
}

const CLK_TCK = 100; // Linux USER_HZ

/** utime + stime of a process in ms, from /proc (NaN where unavailable). */
export function processCpuMs(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLK_TCK;
  } catch {
    return NaN;
  }
}

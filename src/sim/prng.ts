/**
 * The simulator's only source of randomness: xoshiro128** seeded through splitmix32. Every choice a
 * simulation makes (delays, faults, timeouts, client operations) is drawn from one instance, in one
 * order, so a seed replays exactly.
 */
import { Xoshiro128 } from '../util/prng.js';

export class Prng extends Xoshiro128 {
  constructor(seed: number) {
    super(seed >>> 0);
  }

  /** Uniform in [0, 1). */
  float(): number {
    return this.u32() / 4294967296;
  }

  /** Uniform integer in [lo, hi] (inclusive). */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.float() * (hi - lo + 1));
  }

  /** Uniform real in [lo, hi). */
  range(lo: number, hi: number): number {
    return lo + this.float() * (hi - lo);
  }

  chance(p: number): boolean {
    return this.float() < p;
  }

  pick<T>(xs: readonly T[]): T {
    if (xs.length === 0) throw new Error('pick from an empty list');
    return xs[Math.floor(this.float() * xs.length)]!;
  }

  /** Exponentially distributed with the given mean (Poisson arrivals). */
  exp(mean: number): number {
    return -Math.log(1 - this.float()) * mean;
  }
}

/** A 32-bit mixing hash step (murmur3 finalizer over an accumulator), for model state hashes. */
export function mix(h: number, v: number): number {
  let k = Math.imul(v | 0, 0xcc9e2d51);
  k = (k << 15) | (k >>> 17);
  k = Math.imul(k, 0x1b873593);
  h ^= k;
  h = (h << 13) | (h >>> 19);
  h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  return h >>> 0;
}

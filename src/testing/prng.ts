/**
 * A small seeded PRNG (xoshiro128**, seeded through splitmix32) for reproducible tests, generators and
 * the Jepsen-style nemesis: one seed → one sequence of choices, on every platform.
 */
import { Xoshiro128 } from '../util/prng.js';

export class Prng extends Xoshiro128 {
  /** `seed`: any integer in ±2^53 (its low 32 bits and the rest are both used). */
  constructor(readonly seed: number) {
    if (!Number.isSafeInteger(seed)) throw new RangeError(`seed must be a safe integer, not ${String(seed)}`);
    super((seed >>> 0) ^ Math.imul(Math.floor(seed / 2 ** 32) | 0, 0x27d4eb2d));
  }

  /** A uniform 32-bit unsigned integer. */
  next(): number {
    return this.u32();
  }

  /** Uniform in [0, 1). */
  float(): number {
    return (this.next() * 2 ** 21 + (this.next() >>> 11)) / 2 ** 53;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    if (!(n >= 1)) throw new RangeError(`int(${n})`);
    return Math.floor(this.float() * n);
  }

  /** Uniform integer in [lo, hi] (inclusive). */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.float() < p;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new RangeError('pick from an empty list');
    return items[this.int(items.length)]!;
  }

  /** Picks by weight: `weighted([['a', 3], ['b', 1]])`. */
  weighted<T>(choices: readonly (readonly [T, number])[]): T {
    const total = choices.reduce((s, [, w]) => s + Math.max(0, w), 0);
    if (!(total > 0)) throw new RangeError('weighted: no positive weight');
    let x = this.float() * total;
    for (const [v, w] of choices) {
      if (w <= 0) continue;
      if (x < w) return v;
      x -= w;
    }
    return choices.filter(([, w]) => w > 0).at(-1)![0];
  }

  /** An independent generator derived from this one (for a separate stream of choices). */
  fork(): Prng {
    return new Prng(this.next() * 2 ** 21 + (this.next() >>> 11));
  }
}

/** A fresh random seed (printed first by whoever uses it, so a run can be reproduced). */
export function randomSeed(): number {
  return Math.floor(Math.random() * 2 ** 48);
}

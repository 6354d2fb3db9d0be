/**
 * Replay protection for signed requests (the embedded arbiter's and the control endpoint's): a request
 * carries a timestamp and a random nonce; it is accepted only within MAX_CLOCK_SKEW_MS of the server's
 * clock and only once.
 */
export const MAX_CLOCK_SKEW_MS = 30_000;

/**
 * Nonces seen within the clock-skew window. Bounded: when full, the oldest entries are evicted and the
 * window's floor rises past their timestamps, so a request at or before the floor is refused as stale
 * (an evicted nonce can never be replayed).
 */
export class NonceWindow {
  private readonly seen = new Map<string, number>();
  private floorTs = -Infinity;
  private inserts = 0;
  constructor(
    private readonly maxEntries = 100_000,
    private readonly skewMs = MAX_CLOCK_SKEW_MS,
  ) {}
  /** undefined if accepted (and recorded); otherwise the reason for refusal. */
  check(nonce: string, ts: number, now: number): string | undefined {
    if (Math.abs(now - ts) > this.skewMs) return `timestamp ${ts} is ${Math.round((now - ts) / 1000)} s away from the server's clock (max ${this.skewMs / 1000} s)`;
    if (ts <= this.floorTs) return 'timestamp older than the replay window (the nonce window overflowed)';
    if (this.seen.has(nonce)) return 'replayed nonce';
    if (this.seen.size >= this.maxEntries) {
      for (const [n, t] of this.seen) {
        if (this.seen.size < this.maxEntries && t >= now - this.skewMs) break;
        this.seen.delete(n);
        if (t >= now - this.skewMs) this.floorTs = Math.max(this.floorTs, t);
      }
      if (ts <= this.floorTs) return 'timestamp older than the replay window (the nonce window overflowed)';
    }
    this.seen.set(nonce, ts);
    if (++this.inserts % 1024 === 0) {
      // Drop expired nonces from the front (their timestamps are refused as stale anyway).
      for (const [n, t] of this.seen) {
        if (t >= now - this.skewMs) break;
        this.seen.delete(n);
      }
    }
    return undefined;
  }
  get size(): number {
    return this.seen.size;
  }
}


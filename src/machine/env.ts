/**
 * Record environments and replay sources that need no threads:
 * - ScriptedEnv: a deterministic record environment (virtual clock tied to the instruction count,
 *   seeded random bytes, inputs scheduled at instruction numbers). Tests and `ftvm record` use it.
 * - RealEnv pieces (real clock and random) for live recording live in the vCPU worker.
 * - ArraySource: replays a list of entries (a recording file); the log ends where the list ends.
 */
import { randomFillSync } from 'node:crypto';
import type { LogEntry } from '../log/entry.js';
import type { NicInput, RecordEnv, ReplaySource } from './machine.js';
import { DEFAULT_SLICE_UNITS } from './machine.js';

export interface ScheduledInput extends NicInput {
  /** Deliver once the guest's instruction number reaches this (at a checkpoint, or at idle). */
  atCount: number;
}

/** xorshift128+: a small seeded PRNG for deterministic workloads (not for anything secret). */
export class SeededRandom {
  private s0: bigint;
  private s1: bigint;
  constructor(seed: number) {
    this.s0 = BigInt.asUintN(64, BigInt(seed) * 0x9e3779b97f4a7c15n + 1n);
    this.s1 = BigInt.asUintN(64, (BigInt(seed) ^ 0x5851f42d4c957f2dn) * 0xbf58476d1ce4e5b9n + 7n);
    for (let i = 0; i < 8; i++) this.next64();
  }
  next64(): bigint {
    let x = this.s0;
    const y = this.s1;
    this.s0 = y;
    x = BigInt.asUintN(64, x ^ (x << 23n));
    this.s1 = BigInt.asUintN(64, x ^ y ^ (x >> 17n) ^ (y >> 26n));
    return BigInt.asUintN(64, this.s1 + y);
  }
  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Number(this.next64() % BigInt(n));
  }
  fill(buf: Uint8Array): void {
    for (let i = 0; i < buf.length; i += 8) {
      let v = this.next64();
      for (let j = 0; j < 8 && i + j < buf.length; j++) {
        buf[i + j] = Number(v & 0xffn);
        v >>= 8n;
      }
    }
  }
}

export interface ScriptedEnvOptions {
  seed?: number;
  sliceUnits?: number;
  /** Realtime clock origin, ns since the epoch. */
  epochNs?: bigint;
  /** Virtual nanoseconds per instruction. */
  nsPerInstruction?: number;
}

/**
 * Deterministic record environment. Virtual time advances with the guest's instruction count; when the
 * guest idles, time jumps to the next input or timer. Inputs are released once the count reaches their
 * `atCount`, or when the guest idles before that.
 */
export class ScriptedEnv implements RecordEnv {
  readonly sliceUnits: number;
  private readonly rng: SeededRandom;
  private readonly epochNs: bigint;
  private readonly nsPerInstruction: number;
  private next = 0;
  private released = 0;
  private offsetNs = 0;
  private countFn: () => number = () => 0;
  private lastWaitCount = -1;
  private lastWaitNext = -1;
  private stuckWaits = 0;

  constructor(
    private readonly inputs: readonly ScheduledInput[],
    opts: ScriptedEnvOptions = {},
  ) {
    this.rng = new SeededRandom(opts.seed ?? 1);
    this.sliceUnits = opts.sliceUnits ?? DEFAULT_SLICE_UNITS;
    this.epochNs = opts.epochNs ?? 1_700_000_000_000_000_000n;
    this.nsPerInstruction = opts.nsPerInstruction ?? 1;
    for (let i = 1; i < inputs.length; i++) {
      if (inputs[i]!.atCount < inputs[i - 1]!.atCount) throw new Error('scheduled inputs must be sorted by atCount');
    }
  }

  /** Connects the virtual clock to the machine's instruction count. */
  bind(count: () => number): void {
    this.countFn = count;
  }

  private virtualNs(): number {
    return this.countFn() * this.nsPerInstruction + this.offsetNs;
  }

  nowNs(clock: number): bigint {
    const v = BigInt(Math.floor(this.virtualNs()));
    return clock === 0 ? this.epochNs + v : v;
  }

  nowMs(): number {
    return this.virtualNs() / 1e6;
  }

  randomFill(buf: Uint8Array): void {
    this.rng.fill(buf);
  }

  takeInputs(count: number, max: number): NicInput[] {
    const out: NicInput[] = [];
    while (this.next < this.inputs.length && out.length < max) {
      const i = this.inputs[this.next]!;
      if (i.atCount > count && this.next >= this.released) break;
      const copy: NicInput = { kind: i.kind, conn: i.conn };
      if (i.data !== undefined) copy.data = i.data;
      out.push(copy);
      this.next++;
    }
    return out;
  }

  get remainingInputs(): number {
    return this.inputs.length - this.next;
  }

  waitForWork(count: number, deadlineMs: number | undefined): boolean {
    // A scripted run must always move: the same idle point asked again and again means nothing the
    // env offers can be delivered (a guest that stopped draining its ring). Fail loudly, never spin.
    if (count === this.lastWaitCount && this.next === this.lastWaitNext) {
      if (++this.stuckWaits > 100_000) {
        throw new Error(`ScriptedEnv: no progress at instruction ${count} after ${this.stuckWaits} idle waits (input ${this.next} of ${this.inputs.length} cannot be delivered)`);
      }
    } else {
      this.stuckWaits = 0;
      this.lastWaitCount = count;
      this.lastWaitNext = this.next;
    }
    const nextInput = this.inputs[this.next];
    if (nextInput !== undefined) {
      const inputNs = this.virtualNs() + Math.max(0, nextInput.atCount - count) * this.nsPerInstruction;
      if (deadlineMs !== undefined && deadlineMs * 1e6 <= inputNs) {
        // +1 ns: floating-point rounding must not leave the clock a hair short of the deadline.
        this.offsetNs += Math.max(0, deadlineMs * 1e6 - this.virtualNs()) + 1;
      } else {
        this.offsetNs += Math.max(0, inputNs - this.virtualNs());
        this.released = this.next + 1;
      }
      return true;
    }
    if (deadlineMs !== undefined) {
      this.offsetNs += Math.max(0, deadlineMs * 1e6 - this.virtualNs()) + 1;
      return true;
    }
    return false;
  }
}

/** A record environment on real clocks and the OS's random source, with inputs pushed by a driver. */
export class RealClockRandom {
  nowNs(clock: number): bigint {
    return clock === 0 ? BigInt(Date.now()) * 1_000_000n + (process.hrtime.bigint() % 1_000_000n) : process.hrtime.bigint();
  }
  nowMs(): number {
    return performance.now();
  }
  randomFill(buf: Uint8Array): void {
    randomFillSync(buf);
  }
}

/** Replays a fixed list of entries. `grant` lets a test allow progress past the last entry. */
export class ArraySource implements ReplaySource {
  private pos = 0;
  constructor(
    private readonly entries: readonly LogEntry[],
    private grant = -1,
  ) {}
  peek(i: number): LogEntry | undefined {
    return this.entries[this.pos + i];
  }
  shift(): LogEntry | undefined {
    return this.entries[this.pos++];
  }
  grantedUpTo(): number {
    const last = this.entries[this.entries.length - 1];
    return Math.max(this.grant, last?.n ?? 0);
  }
  waitForMore(): boolean {
    return false;
  }
  get consumed(): number {
    return this.pos;
  }
}

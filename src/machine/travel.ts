/**
 * Time travel: replay a recording to an exact instruction number and look at the machine there.
 *
 * A replica never runs past what its log grants (`ReplaySource.grantedUpTo`). Time travel feeds the
 * machine the recording's entries up to the target and grants exactly the target; when the machine
 * can go no further it asks its source for more (`waitForMore`, synchronously, inside the guest's
 * budget call or at an idle point) — and there, with the guest standing still at an exact count, the
 * caller inspects it: state hash, devices, memory. To walk on (`--step`), the source then releases one
 * more entry and grants up to it; the machine continues from where it stands, without re-running.
 *
 * Where the target falls:
 * - on a STATE_HASH entry the primary logged at N: the stop is exactly where that entry sits in the log
 *   (the machine verifies the hash when it reaches it), so the hash shown equals the primary's;
 * - elsewhere: everything the log did at instructions ≤ N is applied. An idle guest stands at the count
 *   it went idle at (nothing happens until the next entry); a computing guest stops at its last
 *   budget checkpoint ≤ N (instruction numbers advance by whole regions between checkpoints).
 */
import type { LogFormat } from '../log/codec.js';
import { EntryType, type LogEntry } from '../log/entry.js';
import type { VmConfig } from '../log/recording.js';
import { FtvmError } from '../util/errors.js';
import type { LoadedGuest } from './guest.js';
import { Machine, type RunResult, type Snapshot } from './machine.js';
import type { ReplaySource } from './machine.js';

export interface TravelStop {
  /** The instruction number the guest stands at. */
  count: number;
  /** Idle between steps (true) or stopped at a checkpoint inside a step (false). */
  idle: boolean;
  /** Index in the recording's entries of the next entry not yet applied. */
  nextEntry: number;
  machine: Machine;
}

/** What the caller wants after a stop: go on to the next entry, or end here. */
export type TravelDecision = 'next' | 'end';

export interface TravelResult {
  result: RunResult;
  stops: number;
}

/** Index just past the entries the target includes (see the module comment). */
export function cutIndex(entries: readonly LogEntry[], to: number): number {
  let i = 0;
  while (i < entries.length && entries[i]!.n < to) i++;
  for (let j = i; j < entries.length && entries[j]!.n === to; j++) {
    if (entries[j]!.type === EntryType.STATE_HASH) return j + 1;
  }
  while (i < entries.length && entries[i]!.n <= to) i++;
  return i;
}

class TravelSource implements ReplaySource {
  private pos = 0;
  constructor(
    private readonly entries: readonly LogEntry[],
    private cut: number,
    private grant: number,
    private readonly onStop: () => TravelDecision,
  ) {}
  peek(i: number): LogEntry | undefined {
    return this.pos + i < this.cut ? this.entries[this.pos + i] : undefined;
  }
  shift(): LogEntry | undefined {
    if (this.pos >= this.cut) return undefined;
    return this.entries[this.pos++];
  }
  grantedUpTo(): number {
    return this.grant;
  }
  get consumed(): number {
    return this.pos;
  }
  /** Called by the machine when it can go no further: the stop. */
  waitForMore(): boolean {
    // The count is read by the callback from the machine itself.
    if (this.onStop() === 'end') return false;
    const next = this.entries[this.cut];
    if (next === undefined) return false;
    this.cut++;
    this.grant = Math.max(this.grant, next.n);
    return true;
  }
}

/**
 * Replays `entries` to instruction `to`, calling `onStop` each time the guest stands still at the
 * edge of what it was given (first at the target; with 'next', after each further entry).
 */
export function travel(
  guest: LoadedGuest,
  config: VmConfig,
  entries: readonly LogEntry[],
  to: number,
  onStop: (stop: TravelStop) => TravelDecision,
  from?: Snapshot,
  logFormat?: LogFormat,
): TravelResult {
  const last = entries[entries.length - 1];
  const start = from?.count ?? 0;
  if (!Number.isSafeInteger(to) || to < 0) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `--to must be an instruction number ≥ 0 (got ${to})`);
  if (last === undefined) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'the recording holds no entries');
  if (to > last.n) {
    throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `instruction ${to} is beyond the recording's end: it spans instructions ${start}..${last.n}`);
  }
  if (to < start) {
    throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `instruction ${to} is before the recording's start: it begins from a snapshot at instruction ${start} (an older segment may hold it)`);
  }
  let machine: Machine | undefined;
  let stops = 0;
  const source: TravelSource = new TravelSource(entries, cutIndex(entries, to), to, (): TravelDecision => {
    stops++;
    const m = machine!;
    return onStop({ count: m.count, idle: m.isIdle, nextEntry: source.consumed, machine: m });
  });
  machine = new Machine({
    instrumented: guest.instrumented,
    compiled: guest.compiled,
    config,
    sink: { entry: () => undefined, output: () => undefined },
    mode: 'replay',
    source,
    ...(logFormat !== undefined ? { logFormat } : {}),
  });
  if (from) machine.restore(from);
  const result = machine.run();
  return { result, stops };
}

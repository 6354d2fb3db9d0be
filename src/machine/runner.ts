/**
 * Whole-run helpers on one thread: record a guest under a ScriptedEnv, replay entries. The CLI and the
 * tests use these; the live pair uses the vCPU worker instead.
 */
import type { LogFormat } from '../log/codec.js';
import type { LogEntry } from '../log/entry.js';
import type { VmConfig } from '../log/recording.js';
import { ArraySource, ScriptedEnv } from './env.js';
import type { LoadedGuest } from './guest.js';
import { Machine, type GuestOutput, type RunResult, type Snapshot } from './machine.js';

export interface RunRecord {
  entries: LogEntry[];
  outputs: GuestOutput[];
  result: RunResult;
  /** State hash at the end (also logged as the last entry when the run ended at an idle point). */
  finalHash: Uint8Array;
  finalCount: number;
  machine: Machine;
}

export function collectingSink(entries: LogEntry[], outputs: GuestOutput[]): { entry(e: LogEntry): void; output(o: GuestOutput): void } {
  return {
    entry: (e) => void entries.push(e),
    output: (o) => void outputs.push(o),
  };
}

export interface RecordOptions {
  /** Restore this snapshot before running. */
  from?: Snapshot;
  /** Called with the machine right after construction (e.g. to take snapshots from a sink). */
  onMachine?: (m: Machine) => void;
  /** The log format to record in (default: the current one; tests write format 1 as old recordings). */
  logFormat?: LogFormat;
}

/** Records a run to its end (the env runs out of work, or the guest halts) and logs a final state hash. */
export function recordRun(guest: LoadedGuest, config: VmConfig, env: ScriptedEnv, opts: RecordOptions = {}): RunRecord {
  const entries: LogEntry[] = [];
  const outputs: GuestOutput[] = [];
  const machine = new Machine({
    instrumented: guest.instrumented,
    compiled: guest.compiled,
    config,
    sink: collectingSink(entries, outputs),
    mode: 'record',
    env,
    ...(opts.logFormat !== undefined ? { logFormat: opts.logFormat } : {}),
  });
  env.bind(() => machine.count);
  if (opts.from) machine.restore(opts.from);
  opts.onMachine?.(machine);
  const result = machine.run();
  const finalHash = result.state === 'halted' ? machine.stateHash() : machine.logStateHash();
  return { entries, outputs, result, finalHash, finalCount: machine.count, machine };
}

export interface ReplayRecord {
  outputs: GuestOutput[];
  result: RunResult;
  finalHash: Uint8Array;
  finalCount: number;
  consumed: number;
  machine: Machine;
}

/** Replays entries until the guest halts or the log ends. Throws DeterminismViolation on divergence. */
export function replayRun(guest: LoadedGuest, config: VmConfig, entries: readonly LogEntry[], from?: Snapshot, logFormat?: LogFormat): ReplayRecord {
  const outputs: GuestOutput[] = [];
  const source = new ArraySource(entries);
  const machine = new Machine({
    instrumented: guest.instrumented,
    compiled: guest.compiled,
    config,
    sink: collectingSink([], outputs),
    mode: 'replay',
    source,
    ...(logFormat !== undefined ? { logFormat } : {}),
  });
  if (from) machine.restore(from);
  const result = machine.run();
  const midStep = result.state === 'starved' && result.midStep;
  return {
    outputs,
    result,
    finalHash: midStep ? new Uint8Array(32) : machine.stateHash(),
    finalCount: result.count,
    consumed: source.consumed,
    machine,
  };
}

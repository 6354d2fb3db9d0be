/**
 * `ftvm record`, `ftvm replay`, `ftvm inspect`: recordings on disk, the guest on a vCPU worker.
 */
import { readFile } from 'node:fs/promises';
import { encodeBatch } from '../log/codec.js';
import { ENTRY_TYPE_NAMES, EntryType, describeEntry, type LogEntry } from '../log/entry.js';
import { RecordingWriter, readRecording, type VmConfig } from '../log/recording.js';
import type { ScheduledInput } from '../machine/env.js';
import { loadGuest, type LoadedGuest } from '../machine/guest.js';
import type { HaltInfo } from '../machine/machine.js';
import { Vcpu, type BatchEvent } from '../machine/vcpu.js';
import { FtvmError } from '../util/errors.js';

export const hex = (b: Uint8Array | null | undefined): string => (b ? Buffer.from(b).toString('hex') : '-');

export async function loadGuestFile(path: string, maxCallDepth?: number): Promise<LoadedGuest> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (err) {
    throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `cannot read guest ${path}: ${(err as Error).message}`);
  }
  return loadGuest(new Uint8Array(bytes), maxCallDepth);
}

export interface RecordSummary {
  entries: number;
  outputs: number;
  outputBytes: number;
  state: string;
  count: number;
  finalHash: Uint8Array | null;
  halt: HaltInfo | null;
  sampleOutputs: string[];
  wallMs: number;
}

/** Records a scripted workload on a vCPU worker into a recording file. */
export async function recordToFile(
  guest: LoadedGuest,
  config: VmConfig,
  inputs: ScheduledInput[],
  opts: { out: string; seed: number; sliceUnits: number; onOutput?: (text: string) => void },
): Promise<RecordSummary> {
  const t0 = performance.now();
  const writer = await RecordingWriter.create(opts.out, guest.original, config);
  const vcpu = new Vcpu({ mode: 'record', guest, config, env: { kind: 'scripted', inputs, seed: opts.seed }, sliceUnits: opts.sliceUnits });
  let entries = 0;
  let outputs = 0;
  let outputBytes = 0;
  const sampleOutputs: string[] = [];
  let writes = Promise.resolve();
  vcpu.on('batch', (b: BatchEvent) => {
    entries += b.count;
    const batch = b.entries;
    // The batch is already encoded by the worker: write it as one block.
    writes = writes.then(() => writer.appendEncoded(batch));
    for (const o of b.outputs) {
      outputs++;
      outputBytes += o.data.length;
      const text = Buffer.from(o.data).toString('utf8');
      if (sampleOutputs.length < 6 && o.kind !== 'close') sampleOutputs.push(`conn ${o.conn}: ${JSON.stringify(text.slice(0, 60))}`);
      if (o.kind === 'console') opts.onOutput?.(text);
    }
  });
  try {
    const done = await vcpu.done;
    await writes;
    return { entries, outputs, outputBytes, state: done.state, count: done.count, finalHash: done.finalHash, halt: done.halt, sampleOutputs, wallMs: performance.now() - t0 };
  } finally {
    await writes.catch(() => undefined);
    await writer.close();
    await vcpu.terminate();
  }
}

export interface ReplaySummary {
  state: string;
  count: number;
  finalHash: Uint8Array | null;
  recordedHash: Uint8Array | null;
  recordedCount: number;
  entries: number;
  truncated: boolean;
  midStep: boolean;
  halt: HaltInfo | null;
  wallMs: number;
}

/** Replays a recording file on a vCPU worker. Throws DeterminismViolation on the first divergence. */
export async function replayFile(path: string): Promise<ReplaySummary> {
  const rec = await readRecording(path);
  const guest = loadGuest(rec.module, rec.config.maxCallDepth);
  const t0 = performance.now();
  const vcpu = new Vcpu({ mode: 'replay', guest, config: rec.config });
  try {
    const chunk = 2048;
    for (let i = 0; i < rec.entries.length; i += chunk) {
      vcpu.feedLog(encodeBatch(rec.entries.slice(i, i + chunk)));
      while (vcpu.backlog_bytes > 8 * 1024 * 1024) await new Promise((r) => setTimeout(r, 2));
    }
    vcpu.endOfLog();
    const done = await vcpu.done;
    let recordedHash: Uint8Array | null = null;
    let recordedCount = -1;
    for (let i = rec.entries.length - 1; i >= 0; i--) {
      const e = rec.entries[i]!;
      if (e.type === EntryType.STATE_HASH) {
        recordedHash = e.hash;
        recordedCount = e.n;
        break;
      }
    }
    return {
      state: done.state,
      count: done.count,
      finalHash: done.finalHash,
      recordedHash,
      recordedCount,
      entries: rec.entries.length,
      truncated: rec.truncated,
      midStep: done.midStep,
      halt: done.halt,
      wallMs: performance.now() - t0,
    };
  } finally {
    await vcpu.terminate();
  }
}

export async function inspectFile(path: string, opts: { entries: number }): Promise<string> {
  const rec = await readRecording(path);
  const counts = new Map<number, number>();
  for (const e of rec.entries) counts.set(e.type, (counts.get(e.type) ?? 0) + 1);
  const first = rec.entries[0];
  const last = rec.entries[rec.entries.length - 1];
  const lines = [
    `recording      ${path}`,
    `format         version ${rec.formatVersion}`,
    `guest module   sha256 ${hex(rec.moduleHash)} (${rec.module.length} bytes, embedded)`,
    `vm config      ${JSON.stringify(rec.config)}`,
    `blocks         ${rec.blocks}${rec.truncated ? ' (TRUNCATED: the last block is incomplete)' : ''}`,
    `entries        ${rec.entries.length}${first && last ? ` spanning instructions ${first.n}..${last.n}` : ''}`,
    `by type        ${[...counts].sort((a, b) => a[0] - b[0]).map(([t, c]) => `${ENTRY_TYPE_NAMES[t] ?? t}=${c}`).join(' ')}`,
  ];
  const show = Math.min(opts.entries, rec.entries.length);
  if (show > 0) {
    lines.push('', `first ${show} entries:`, '      #  instruction  entry');
    rec.entries.slice(0, show).forEach((e: LogEntry, i: number) => lines.push(`${String(i).padStart(7)}  ${String(e.n).padStart(11)}  ${describeEntry(e)}`));
  }
  return lines.join('\n');
}

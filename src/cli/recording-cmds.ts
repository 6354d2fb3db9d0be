/**
 * `ftvm record`, `ftvm replay`, `ftvm inspect`: recordings on disk, the guest on a vCPU worker.
 */
import { readFile } from 'node:fs/promises';
import { LOG_FORMAT, encodeBatch } from '../log/codec.js';
import { ENTRY_TYPE_NAMES, EntryType, describeEntry, type LogEntry } from '../log/entry.js';
import { RecordingWriter, codingAt, readRecording, type VmConfig } from '../log/recording.js';
import type { ScheduledInput } from '../machine/env.js';
import type { LoadedGuest } from '../machine/guest.js';

/**
 * The instrumenter (binaryen) is loaded only by the commands that load a guest, and only on a
 * short-lived worker thread (machine/guest-isolated.ts): `ftvm status`, `stop`, `arbiter` and
 * `dashboard` start in a fraction of the time and CPU (a burst of CPU next to a live pair on a small
 * machine is what starves its heartbeats), and a running replica does not keep binaryen's ~100 MB heap
 * (a smaller process dies faster after kill -9: its peer sees the crash sooner).
 */
async function loadGuest(module: Uint8Array, maxCallDepth?: number, more: CheckpointLoadOptions = {}): Promise<LoadedGuest> {
  const g = await import('../machine/guest-isolated.js');
  return g.loadGuestIsolated(module, maxCallDepth, more);
}

/** What checkpoint mode asks of the instrumenter (src/machine/instrumented.ts InstrumentOptions). */
export interface CheckpointLoadOptions {
  /** Accept wasi-threads guests (replay mode refuses them). */
  threads?: boolean;
  /** The store barrier for dirty-page tracking (a threaded guest is tracked by comparing pages instead). */
  dirtyPages?: boolean;
}
import type { HaltInfo } from '../machine/machine.js';
import { travel } from '../machine/travel.js';
import { KIND_DIR, ROOT_INO, type VirtualDisk } from '../machine/disk.js';
import { createHash } from 'node:crypto';
import { Vcpu, type BatchEvent } from '../machine/vcpu.js';
import { FtvmError } from '../util/errors.js';

export const hex = (b: Uint8Array | null | undefined): string => (b ? Buffer.from(b).toString('hex') : '-');

/** `more`: checkpoint mode's instrumenter options (threads, the store barrier); replay passes none. */
export async function loadGuestFile(path: string, maxCallDepth?: number, more: CheckpointLoadOptions = {}): Promise<LoadedGuest> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (err) {
    throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `cannot read guest ${path}: ${(err as Error).message}`);
  }
  return await loadGuest(new Uint8Array(bytes), maxCallDepth, more);
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
  const guest = await loadGuest(rec.module, rec.config.maxCallDepth);
  const t0 = performance.now();
  const vcpu = new Vcpu({ mode: 'replay', guest, config: rec.config, logFormat: rec.logFormat, ...(rec.snapshot ? { snapshot: rec.snapshot } : {}) });
  try {
    const chunk = 2048;
    const coding = codingAt(rec.snapshot); // where the worker's decoder starts (the snapshot's state)
    for (let i = 0; i < rec.entries.length; i += chunk) {
      vcpu.feedLog(encodeBatch(rec.entries.slice(i, i + chunk), undefined, LOG_FORMAT, coding));
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

export interface TravelOptions {
  to: number;
  /** Memory ranges to dump at the first stop: [addr, len]. */
  dumps: Array<[number, number]>;
  /** Entries shown either side of the stop. */
  around: number;
  /** With --step: entries to walk past the target, one stop after each. */
  steps: number;
  /** List the virtual disk's files (path, size, SHA-256) at the first stop. */
  disk?: boolean;
  /** Hex dump of one file of the disk (a path under /data), at most 1 MiB, at the first stop. */
  diskFile?: string;
}

/** The disk's files and directories, depth first, as `/data/...` paths. */
export function diskListing(disk: VirtualDisk): Array<{ path: string; dir: boolean; size: number; ino: number }> {
  const out: Array<{ path: string; dir: boolean; size: number; ino: number }> = [];
  const walk = (ino: number, path: string, depth: number): void => {
    const node = disk.get(ino);
    if (node === undefined || depth > 256) return;
    for (const [name, child] of [...node.entries].sort((a, b) => (a[0] < b[0] ? -1 : 1))) {
      const c = disk.get(child);
      if (c === undefined) continue;
      const p = `${path}/${name}`;
      out.push({ path: p, dir: c.kind === KIND_DIR, size: c.size, ino: child });
      if (c.kind === KIND_DIR) walk(child, p, depth + 1);
    }
  };
  walk(ROOT_INO, '/data', 0);
  return out;
}

/** The hex dump lines (16 bytes a line, with printable ASCII) of `bytes` at `addr`. */
export function hexDump(bytes: Uint8Array, addr: number): string[] {
  const lines: string[] = [];
  for (let o = 0; o < bytes.length; o += 16) {
    const row = bytes.subarray(o, Math.min(bytes.length, o + 16));
    const hexes = [...row].map((b) => b.toString(16).padStart(2, '0'));
    const ascii = [...row].map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('');
    lines.push(`  ${(addr + o).toString(16).padStart(8, '0')}  ${hexes.slice(0, 8).join(' ').padEnd(23)}  ${hexes.slice(8).join(' ').padEnd(23)}  |${ascii}|`);
  }
  return lines;
}

/** Parses `addr:len` (decimal or 0x-hex), len at most 1 MiB. */
export function parseDump(v: string): [number, number] {
  const m = /^(0x[0-9a-fA-F]+|\d+):(0x[0-9a-fA-F]+|\d+)$/.exec(v.trim());
  if (m === null) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `--dump takes addr:len (decimal or 0x hex), got "${v}"`);
  const addr = Number(m[1]);
  const len = Number(m[2]);
  if (len < 1 || len > 1 << 20) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `--dump length must be 1..1048576 bytes, got ${len}`);
  return [addr, len];
}

/**
 * `ftvm replay <recording> --to N`: replays to instruction N on one thread and describes the machine
 * there (state hash, devices, the entries around the point, memory ranges); with `steps`, walks on
 * entry by entry. Returns the lines to print.
 */
export async function travelFile(path: string, o: TravelOptions): Promise<{ lines: string[]; hashAtTarget: string }> {
  const rec = await readRecording(path);
  const guest = await loadGuest(rec.module, rec.config.maxCallDepth);
  const entries = rec.entries;
  const lines: string[] = [];
  let hashAtTarget = '';
  let stepsLeft = o.steps;
  let first = true;
  const logged = (n: number): string | undefined => {
    for (const e of entries) {
      if (e.n > n) break;
      if (e.n === n && e.type === EntryType.STATE_HASH) return hex(e.hash);
    }
    return undefined;
  };
  if (rec.snapshot) lines.push(`the recording starts from a snapshot at instruction ${rec.snapshot.count} (entry ${rec.snapshot.seq} of the VM's log)`);
  const result = travel(guest, rec.config, entries, o.to, (stop) => {
    const m = stop.machine;
    const hash = hex(m.stateHash());
    if (first) {
      first = false;
      hashAtTarget = hash;
      const where = stop.idle ? 'idle between steps' : 'inside a step, at a budget checkpoint';
      lines.push(`stopped at instruction ${stop.count} (${where}); asked for ${o.to}`);
      if (stop.count !== o.to) {
        const next = entries[stop.nextEntry];
        lines.push(
          stop.idle
            ? `  the guest went idle at ${stop.count}; nothing happens until ${next ? `instruction ${next.n}` : 'the end of the recording'}`
            : `  the guest's next region of instructions starts at ${stop.count} and covers ${o.to}: its count moves by whole regions between checkpoints`,
        );
      }
      lines.push(`state hash     ${hash}`);
      const primary = logged(stop.count);
      if (primary !== undefined) lines.push(`               ${primary === hash ? 'equal to' : 'DIFFERENT from'} the state hash the primary logged at ${stop.count}`);
      lines.push(`memory         ${m.memoryBytes} bytes`);
      const d = m.devices.save();
      lines.push(`receive ring   ${d.ring ? `at ${d.ring.ptr}, ${d.ring.capacity} bytes` : 'not set up'}`);
      lines.push(`connections    ${d.conns.length === 0 ? 'none' : d.conns.map(([id, st]) => `${id}:${st === 1 ? 'open' : 'peer-closed'}`).join(' ')} (highest id ${d.maxConn})`);
      lines.push(`timers         ${d.timers.length === 0 ? 'none' : d.timers.map(([id, t]) => `${id}:${t.delayMs}ms`).join(' ')}`);
      lines.push(`entries ${stop.nextEntry} of ${entries.length} applied; around this point:`);
      const from = Math.max(0, stop.nextEntry - o.around);
      const to = Math.min(entries.length, stop.nextEntry + o.around);
      for (let i = from; i < to; i++) {
        if (i === stop.nextEntry) lines.push(`  ▶ ── the machine stands here (instruction ${stop.count}) ──`);
        lines.push(`  ${String(i).padStart(7)}  ${String(entries[i]!.n).padStart(12)}  ${describeEntry(entries[i]!)}`);
      }
      if (to === stop.nextEntry) lines.push(`  ▶ ── the machine stands here (instruction ${stop.count}) ──`);
      for (const [addr, len] of o.dumps) {
        lines.push(`memory ${addr}..${addr + len - 1} (0x${addr.toString(16)}, ${len} bytes):`);
        lines.push(...hexDump(m.readMemory(addr, len), addr));
      }
      if (o.disk === true || o.diskFile !== undefined) {
        const disk = m.disk;
        if (disk === undefined) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', 'this VM has no disk (--disk-size 0)');
        const files = diskListing(disk);
        if (o.disk === true) {
          lines.push(`disk           ${disk.usedBytes} of ${disk.quotaBytes} bytes used, ${files.length} entr${files.length === 1 ? 'y' : 'ies'}`);
          for (const f of files) {
            const node = disk.get(f.ino)!;
            const sha = f.dir ? '' : createHash('sha256').update(node.data.subarray(0, node.size)).digest('hex').slice(0, 16);
            lines.push(`  ${f.dir ? 'dir ' : 'file'} ${String(f.size).padStart(10)}  ${sha.padEnd(16)}  ${f.path}`);
          }
        }
        const want = o.diskFile;
        if (want !== undefined) {
          const f = files.find((x) => x.path === want || x.path === `/data/${want.replace(/^\/+/, '')}`);
          if (f === undefined || f.dir) throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `no file ${want} on the disk at instruction ${stop.count}`);
          const node = disk.get(f.ino)!;
          const len = Math.min(node.size, 1 << 20);
          lines.push(`${f.path} (${node.size} bytes${len < node.size ? `, the first ${len} shown` : ''}):`);
          lines.push(...hexDump(node.data.subarray(0, len), 0));
        }
      }
    } else {
      const e = entries[stop.nextEntry - 1];
      lines.push(`step  applied #${stop.nextEntry - 1} ${e ? describeEntry(e) : ''} → at ${stop.count}${stop.idle ? ' (idle)' : ''}  hash ${hash.slice(0, 16)}…`);
    }
    if (stepsLeft <= 0 || stop.nextEntry >= entries.length) return 'end';
    if (stepsLeft === o.steps) lines.push(`walking ${o.steps} entr${o.steps === 1 ? 'y' : 'ies'} on:`);
    stepsLeft--;
    return 'next';
  }, rec.snapshot, rec.logFormat);
  if (result.result.state === 'halted') {
    const h = result.result.halt;
    lines.push(`the guest halted at instruction ${h.n}: ${h.kind} code ${h.code}${h.message ? ` (${h.message})` : ''}`);
  }
  if (first) lines.push(`the replay ended at instruction ${result.result.count} before reaching ${o.to} (${result.result.state})`);
  return { lines, hashAtTarget };
}

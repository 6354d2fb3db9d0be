/**
 * A backup's continuous recording (`--record <dir> --record-max-bytes <n>`): the VM's log as it
 * arrives, written into segment files that `ftvm replay` reads (and time-travels through, `--to N`).
 *
 * - A segment is an ordinary recording file: the guest module, the VM config, and — except for a
 *   backup that followed its primary from instruction 0 — the snapshot its log starts from, then
 *   CRC-checked blocks of the log (the batches exactly as they crossed the channel).
 * - When the current segment passes half of `maxBytes`, the recorder asks the replay vCPU for a
 *   snapshot at its next idle point (the guest stands still for a memcpy) and starts a new segment
 *   from it, writing again the entries from the snapshot's place in the log on. Then the oldest
 *   segments are deleted until the directory's segments fit in `maxBytes` (the newest always stays).
 * - Bounded: the batches kept for the next segment are only those the replica has not consumed yet
 *   (the vCPU bounds that backlog), and writes waiting for the disk are bounded by `maxPendingBytes`:
 *   past it the recorder gives up the current segment (the replica must never wait for a disk) and
 *   starts a fresh one from the next snapshot. Every such event is logged.
 * - A write error stops the recording (logged); it never affects the replica.
 */
import { mkdirSync, readdirSync, statSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { LOG_FORMAT, decodeBatch, encodeBatch, type BatchCodingState } from '../log/codec.js';
import { codingAt } from '../log/recording.js';
import { RecordingWriter, type VmConfig } from '../log/recording.js';
import type { Snapshot } from '../machine/machine.js';
import { FtvmError } from '../util/errors.js';
import type { Logger } from '../util/log.js';

export const SEGMENT_SUFFIX = '.ftlog';
/** The smallest --record-max-bytes: two segments of a small guest's memory and some log. */
export const RECORD_MIN_BYTES = 4 * 1024 * 1024;

export interface RecorderOptions {
  dir: string;
  maxBytes: number;
  module: Uint8Array;
  config: VmConfig;
  log: Logger;
  /** The log's position where this recorder starts: 0, or a joiner's clone snapshot. */
  start?: Snapshot;
  /** A snapshot of the replica at its next idle point. */
  takeSnapshot(): Promise<Snapshot>;
  /** Entries the replica has consumed so far (what the next snapshot cannot precede). */
  consumed(): number;
  /** Writes waiting for the disk at most; default 32 MiB. */
  maxPendingBytes?: number;
}

interface Batch {
  firstSeq: number;
  count: number;
  bytes: Uint8Array;
  /** The log's coding state before this batch (format 2 codes a batch against the log before it). */
  coding: BatchCodingState;
}

interface Segment {
  path: string;
  writer: RecordingWriter;
  /** Log bytes written (blocks). */
  bytes: number;
  /** Header bytes: the module, and the snapshot it starts from. */
  headerBytes: number;
  firstSeq: number;
}

/** Segment file name: ordered by the log position it starts at. */
export function segmentName(vm: string, firstSeq: number): string {
  return `${vm}-${String(firstSeq).padStart(14, '0')}${SEGMENT_SUFFIX}`;
}

/** The segments of `vm` in `dir`, oldest first. */
export function listSegments(dir: string, vm: string): Array<{ path: string; bytes: number }> {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const re = new RegExp(`^${vm.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}-\\d{14}\\${SEGMENT_SUFFIX}$`);
  return names
    .filter((n) => re.test(n))
    .sort()
    .map((n) => {
      const path = join(dir, n);
      let bytes = 0;
      try {
        bytes = statSync(path).size;
      } catch {
        // deleted meanwhile
      }
      return { path, bytes };
    });
}

export class ContinuousRecorder {
  private chain: Promise<void> = Promise.resolve();
  private current: Segment | undefined;
  private fedSeq: number;
  /** Batches not yet consumed by the replica: what a new segment may need again. */
  private tail: Batch[] = [];
  private pendingBytes = 0;
  private rotating = false;
  /** While a snapshot is on its way: the tail keeps every entry from here (the snapshot's seq is later). */
  private holdFrom = Infinity;
  private warnedSmall = false;
  private stopped = false;
  private readonly maxPendingBytes: number;
  /** The coding state after the last batch fed. */
  private coding: BatchCodingState;
  segmentsStarted = 0;

  constructor(private readonly o: RecorderOptions) {
    if (!Number.isSafeInteger(o.maxBytes) || o.maxBytes < RECORD_MIN_BYTES) {
      throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `--record-max-bytes must be at least ${RECORD_MIN_BYTES} (got ${o.maxBytes})`);
    }
    try {
      mkdirSync(o.dir, { recursive: true });
    } catch (err) {
      throw new FtvmError('FTVM_ERR_BAD_ARGUMENT', `cannot create the recording directory ${o.dir}: ${(err as Error).message}`);
    }
    this.maxPendingBytes = o.maxPendingBytes ?? 32 * 1024 * 1024;
    this.fedSeq = o.start?.seq ?? 0;
    this.coding = codingAt(o.start);
    const start = o.start;
    this.enqueue(() => this.openSegment(this.fedSeq, start));
  }

  /** The log's next `count` entries, encoded as they crossed the channel. */
  feed(bytes: Uint8Array, count: number): void {
    if (this.stopped) return;
    // Decoded only for its coding state (where the next batch starts), which a new segment needs.
    const before = { ...this.coding };
    decodeBatch(bytes, undefined, LOG_FORMAT, this.coding);
    const b: Batch = { firstSeq: this.fedSeq, count, bytes, coding: before };
    this.fedSeq += count;
    this.tail.push(b);
    const keepFrom = Math.min(this.o.consumed(), this.holdFrom);
    while (this.tail.length > 0 && this.tail[0]!.firstSeq + this.tail[0]!.count <= keepFrom) this.tail.shift();
    if (this.pendingBytes + bytes.length > this.maxPendingBytes) {
      this.o.log.warn({ pendingBytes: this.pendingBytes }, 'recording: the disk fell behind the log; this segment ends here, a new one starts from the next snapshot');
      this.enqueue(() => this.closeSegment());
      this.rotate();
      return;
    }
    this.pendingBytes += bytes.length;
    this.enqueue(async () => {
      this.pendingBytes -= bytes.length;
      const seg = this.current;
      if (seg === undefined) return; // between segments: the next one starts from a snapshot
      await seg.writer.appendEncoded(bytes);
      seg.bytes += bytes.length + 8;
      if (this.segmentFull(seg)) this.rotate();
    });
  }

  /**
   * A segment is full at half of maxBytes, snapshot included, so two fit. When the guest's snapshot
   * alone takes half or more, a segment is full once its log takes a quarter of maxBytes (the newest
   * segment alone may then exceed maxBytes: logged once).
   */
  private segmentFull(seg: Segment): boolean {
    const half = this.o.maxBytes / 2;
    if (seg.headerBytes < half) return seg.headerBytes + seg.bytes >= half;
    if (!this.warnedSmall) {
      this.warnedSmall = true;
      this.o.log.warn({ snapshotBytes: seg.headerBytes, maxBytes: this.o.maxBytes }, 'recording: --record-max-bytes is small for this guest (a snapshot takes half of it or more); raise it to keep older segments');
    }
    return seg.bytes >= this.o.maxBytes / 4;
  }

  /** Start a new segment from the replica's next snapshot (once at a time). */
  private rotate(): void {
    if (this.rotating || this.stopped) return;
    this.rotating = true;
    this.holdFrom = this.o.consumed();
    this.o.takeSnapshot().then(
      (snap) => {
        // Copy what the new segment needs now: the snapshot's memory buffer is reused, and the tail
        // moves on. Entries from snap.seq up to what was fed so far are written again.
        const snapshot: Snapshot = { ...snap, memory: new Uint8Array(snap.memory) };
        const upTo = this.fedSeq;
        const again = this.entriesFrom(snapshot.seq, upTo, codingAt(snapshot));
        this.enqueue(async () => {
          await this.closeSegment();
          await this.openSegment(snapshot.seq, snapshot);
          if (again !== undefined && again.length > 0 && this.current) {
            await this.current.writer.appendEncoded(again);
            this.current.bytes += again.length + 8;
          }
          this.prune();
          this.rotating = false;
          this.holdFrom = Infinity;
        });
      },
      (err: Error) => {
        this.rotating = false;
        this.holdFrom = Infinity;
        this.o.log.warn({ err: err.message }, 'recording: no snapshot for a new segment; the current one goes on');
      },
    );
  }

  /** The encoded entries [from, to) from the kept tail; undefined if the tail no longer holds them. */
  private entriesFrom(from: number, to: number, atFrom: BatchCodingState): Uint8Array | undefined {
    if (from >= to) return new Uint8Array(0);
    const kept = this.tail.filter((b) => b.firstSeq + b.count > from && b.firstSeq < to);
    if (kept.length === 0 || kept[0]!.firstSeq > from) {
      this.o.log.warn({ from, to }, 'recording: the entries after the snapshot are no longer held; the new segment starts with a gap');
      return undefined;
    }
    const entries = kept.flatMap((b) => {
      const es = decodeBatch(b.bytes, undefined, LOG_FORMAT, { ...b.coding });
      return es.slice(Math.max(0, from - b.firstSeq), Math.min(es.length, to - b.firstSeq));
    });
    // Coded against the state at `from`: the snapshot's, which the segment's reader starts from.
    return encodeBatch(entries, undefined, LOG_FORMAT, { ...atFrom });
  }

  private async openSegment(firstSeq: number, snapshot: Snapshot | undefined): Promise<void> {
    const path = join(this.o.dir, segmentName(this.o.config.name, firstSeq));
    const writer = await RecordingWriter.create(path, this.o.module, this.o.config, snapshot);
    this.current = { path, writer, bytes: 0, headerBytes: writer.headerBytes, firstSeq };
    this.segmentsStarted++;
    this.o.log.info({ path, firstSeq, fromSnapshotAt: snapshot?.count ?? 0 }, 'recording: segment started');
  }

  private async closeSegment(): Promise<void> {
    const seg = this.current;
    this.current = undefined;
    if (seg) await seg.writer.close();
  }

  /** Deletes the oldest segments until the directory's segments fit in maxBytes (never the current). */
  private prune(): void {
    const segs = listSegments(this.o.dir, this.o.config.name);
    let total = segs.reduce((a, s) => a + s.bytes, 0);
    for (const s of segs) {
      if (total <= this.o.maxBytes || s.path === this.current?.path) break;
      try {
        unlinkSync(s.path);
        total -= s.bytes;
        this.o.log.info({ path: s.path }, 'recording: oldest segment deleted (over --record-max-bytes)');
      } catch (err) {
        this.o.log.warn({ path: s.path, err: (err as Error).message }, 'recording: cannot delete an old segment');
      }
    }
  }

  private enqueue(op: () => Promise<void>): void {
    this.chain = this.chain.then(op).catch((err: Error) => {
      if (this.stopped) return;
      this.stopped = true;
      this.o.log.error({ err: err.message }, 'recording stopped: a write failed (the replica goes on)');
    });
  }

  /** Current segment's path (status). */
  get path(): string | undefined {
    return this.current?.path;
  }

  /** Flushes and closes the current segment. */
  async close(): Promise<void> {
    this.enqueue(() => this.closeSegment());
    const done = this.chain;
    this.stopped = true;
    await done;
  }
}

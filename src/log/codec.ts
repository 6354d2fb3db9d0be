/**
 * The one binary codec for log entries. Recording files and the logging channel both carry batches
 * encoded here. Integers are unsigned LEB128 varints unless stated; signed values are zigzag.
 * Instruction numbers never decrease within a log, so deltas are unsigned.
 *
 * Two formats (a recording's header and the channel's protocol version say which):
 *
 * - Format 1 (recording format versions 1–2, channel protocol ≤ 3): varint count, then per entry: u8
 *   (type | 0x80 when delivered at an idle point | 0x40 on a tagged NIC_OPEN/SOCK_ACCEPT), varint delta
 *   of the instruction number from the previous entry of the batch (the first entry's delta is from 0),
 *   then the type's payload. Every output is an entry (OUT_NET, OUT_CLOSE, OUT_CONSOLE).
 * - Format 2 (recording format version 3, protocol 4): no count (the entries fill the batch); the type
 *   byte also has 0x20 when the entry's instruction number equals the previous entry's (the delta is
 *   then left out); NIC_OPEN, NIC_DATA and NIC_CLOSE carry their connection as a zigzag delta from the
 *   previous NIC entry's connection. "Previous" runs across batches: a batch's first entry is coded
 *   against the last entry of the log before it (BatchCodingState: 0 and 0 at the start of a log; after
 *   a snapshot, the state the snapshot carries, `DeviceState.logCoding`), so a decoder keeps the state
 *   from batch to batch of one log. Three or more NIC_DATA entries in a row at one instruction number
 *   and idle flag are written as one run (wire type 14: the type byte, the delta, varint k, then k ×
 *   (connection delta, length, bytes)); a run decodes into its k entries. Outputs are not entries: one
 *   OUT_DIGEST per batch that has outputs covers them (its idle flag is 0x80, like a delivery's).
 */
import { FtvmError } from '../util/errors.js';
import { EntryType, type LogEntry } from './entry.js';

const IDLE_FLAG = 0x80;
/** On NIC_OPEN only: a tag (length-prefixed bytes) follows the connection id (a proxied connection). */
const TAG_FLAG = 0x40;
/** Format 2: the entry's instruction number is the previous entry's (no delta follows). */
const SAME_N_FLAG = 0x20;
const TYPE_MASK = 0x1f;
/** Format 2 wire type of a run of NIC_DATA entries (not an entry type: it decodes into NIC_DATA entries). */
const NIC_DATA_RUN = 14;
const MIN_RUN = 3;

/** Format 1: outputs logged one by one, batches prefixed by their count. */
export const LOG_FORMAT_OUTPUTS = 1;
/** Format 2: output digests, compact headers (see the comment at the top). */
export const LOG_FORMAT_DIGEST = 2;
export type LogFormat = typeof LOG_FORMAT_OUTPUTS | typeof LOG_FORMAT_DIGEST;
/** What this build writes. */
export const LOG_FORMAT: LogFormat = LOG_FORMAT_DIGEST;

/** Coding state: the previous entry's instruction number and the previous NIC entry's connection. */
export interface BatchCodingState {
  n: number;
  conn: number;
}
const MAX_TAG_BYTES = 64;
const MAX_ENTRY_BYTES = 16 * 1024 * 1024;

function corrupt(msg: string): never {
  throw new FtvmError('FTVM_ERR_CORRUPT_RECORDING', `corrupt log batch: ${msg}`);
}

/** A growable byte buffer with a hard upper bound. */
export class ByteWriter {
  private buf: Uint8Array;
  private view: DataView;
  length = 0;

  constructor(initial = 256, private readonly maxBytes = 64 * 1024 * 1024) {
    this.buf = new Uint8Array(initial);
    this.view = new DataView(this.buf.buffer);
  }

  private ensure(extra: number): void {
    const need = this.length + extra;
    if (need <= this.buf.length) return;
    if (need > this.maxBytes) throw new FtvmError('FTVM_ERR_RESOURCE_EXHAUSTED', `encoded batch would exceed ${this.maxBytes} bytes`);
    let size = this.buf.length * 2;
    while (size < need) size *= 2;
    const next = new Uint8Array(Math.min(size, this.maxBytes));
    next.set(this.buf.subarray(0, this.length));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  u8(v: number): void {
    this.ensure(1);
    this.buf[this.length++] = v & 0xff;
  }

  u32(v: number): void {
    this.ensure(4);
    this.view.setUint32(this.length, v >>> 0, true);
    this.length += 4;
  }

  u64(v: bigint): void {
    this.ensure(8);
    this.view.setBigUint64(this.length, BigInt.asUintN(64, v), true);
    this.length += 8;
  }

  varint(v: number): void {
    if (!Number.isSafeInteger(v) || v < 0) throw new Error(`varint out of range: ${v}`);
    this.ensure(10);
    while (v >= 0x80) {
      this.buf[this.length++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    this.buf[this.length++] = v;
  }

  zigzag(v: number): void {
    this.varint(v >= 0 ? v * 2 : -v * 2 - 1);
  }

  bytes(b: Uint8Array): void {
    this.ensure(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
  }

  /**
   * A copy of the bytes written so far, in an ArrayBuffer of its own exactly that long (transferable).
   * The copy is needed: the writer's buffer is reused for the next batch.
   */
  finish(): Uint8Array {
    return this.buf.slice(0, this.length);
  }

  /** The bytes written so far, without a copy: valid until the writer is written to or reset. */
  bytesView(): Uint8Array {
    return this.buf.subarray(0, this.length);
  }

  reset(): void {
    this.length = 0;
  }
}

export class ByteReader {
  pos = 0;
  /**
   * Made on the first u64 only: a DataView of a small array (held in V8's heap) moves its bytes out to a
   * buffer of their own first, which costs more than decoding a small batch.
   */
  private dv: DataView | undefined;
  constructor(private readonly buf: Uint8Array) {}

  private get view(): DataView {
    return (this.dv ??= new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength));
  }

  get remaining(): number {
    return this.buf.length - this.pos;
  }

  private need(n: number): void {
    if (this.pos + n > this.buf.length) corrupt(`truncated (needed ${n} bytes at offset ${this.pos}, have ${this.remaining})`);
  }

  u8(): number {
    this.need(1);
    return this.buf[this.pos++]!;
  }

  u32(): number {
    this.need(4);
    const b = this.buf;
    const p = this.pos;
    this.pos = p + 4;
    return (b[p]! | (b[p + 1]! << 8) | (b[p + 2]! << 16) | (b[p + 3]! << 24)) >>> 0;
  }

  u64(): bigint {
    this.need(8);
    const v = this.view.getBigUint64(this.pos, true);
    this.pos += 8;
    return v;
  }

  varint(): number {
    let result = 0;
    let mul = 1;
    for (let i = 0; i < 8; i++) {
      const b = this.u8();
      result += (b & 0x7f) * mul;
      if ((b & 0x80) === 0) {
        if (!Number.isSafeInteger(result)) corrupt('varint exceeds 2^53');
        return result;
      }
      mul *= 0x80;
    }
    corrupt('varint too long');
  }

  zigzag(): number {
    const v = this.varint();
    return v % 2 === 0 ? v / 2 : -(v + 1) / 2;
  }

  bytes(n: number): Uint8Array {
    if (n > MAX_ENTRY_BYTES) corrupt(`field of ${n} bytes exceeds the ${MAX_ENTRY_BYTES}-byte limit`);
    this.need(n);
    const out = this.buf.slice(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  /** Like bytes(n), but a view into the buffer rather than a copy. */
  bytesView(n: number): Uint8Array {
    if (n > MAX_ENTRY_BYTES) corrupt(`field of ${n} bytes exceeds the ${MAX_ENTRY_BYTES}-byte limit`);
    this.need(n);
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
}

/** A NIC entry's connection: format 2, a zigzag delta from the previous NIC entry's; format 1, the id. */
function writeConn(w: ByteWriter, st: BatchCodingState, v2: boolean, c: number): void {
  if (v2) {
    w.zigzag(c - st.conn);
    st.conn = c;
  } else {
    w.varint(c);
  }
}

function readConn(r: ByteReader, st: BatchCodingState, v2: boolean): number {
  if (!v2) return r.varint();
  const c = st.conn + r.zigzag();
  if (!Number.isSafeInteger(c) || c < 0) corrupt(`connection ${c}`);
  st.conn = c;
  return c;
}

/** Appends one entry. Format 1 with a number as the state: the previous entry's instruction number. */
export function encodeEntry(w: ByteWriter, e: LogEntry, prev: number | BatchCodingState, format: LogFormat = LOG_FORMAT_OUTPUTS): void {
  const st: BatchCodingState = typeof prev === 'number' ? { n: prev, conn: 0 } : prev;
  if (e.n < st.n) throw new Error(`log entries out of order: ${e.n} after ${st.n}`);
  const idle = 'idle' in e && e.idle ? IDLE_FLAG : 0;
  const tagged = (e.type === EntryType.NIC_OPEN || e.type === EntryType.SOCK_ACCEPT) && e.tag !== undefined ? TAG_FLAG : 0;
  const v2 = format === LOG_FORMAT_DIGEST;
  if (!v2 && e.type === EntryType.OUT_DIGEST) throw new Error('OUT_DIGEST entries exist in log format 2 only');
  const same = v2 && e.n === st.n ? SAME_N_FLAG : 0;
  w.u8(e.type | idle | tagged | same);
  if (same === 0) w.varint(e.n - st.n);
  st.n = e.n;
  switch (e.type) {
    case EntryType.CLOCK:
      w.u8(e.clock);
      w.u64(e.valueNs);
      return;
    case EntryType.RANDOM:
      w.varint(e.bytes.length);
      w.bytes(e.bytes);
      return;
    case EntryType.MEMGROW:
      w.varint(e.deltaPages);
      w.zigzag(e.result);
      return;
    case EntryType.SOCK_ACCEPT:
      w.varint(e.errno);
      w.varint(e.conn);
      if (e.tag !== undefined) {
        if (e.tag.length > MAX_TAG_BYTES) throw new Error(`connection tag of ${e.tag.length} bytes exceeds ${MAX_TAG_BYTES}`);
        w.varint(e.tag.length);
        w.bytes(e.tag);
      }
      return;
    case EntryType.SOCK_RECV:
      w.varint(e.errno);
      w.varint(e.data.length);
      w.bytes(e.data);
      return;
    case EntryType.POLL:
      w.varint(e.events.length);
      for (const v of e.events) {
        w.varint(v.index);
        w.varint(v.errno);
        w.varint(v.nbytes);
        w.u8(v.flags);
      }
      return;
    case EntryType.NIC_OPEN:
      writeConn(w, st, v2, e.conn);
      if (e.tag !== undefined) {
        if (e.tag.length > MAX_TAG_BYTES) throw new Error(`connection tag of ${e.tag.length} bytes exceeds ${MAX_TAG_BYTES}`);
        w.varint(e.tag.length);
        w.bytes(e.tag);
      }
      return;
    case EntryType.NIC_CLOSE:
      writeConn(w, st, v2, e.conn);
      return;
    case EntryType.NIC_DATA:
      writeConn(w, st, v2, e.conn);
      w.varint(e.data.length);
      w.bytes(e.data);
      return;
    case EntryType.TIMER:
      w.varint(e.timer);
      return;
    case EntryType.OUT_NET:
      w.varint(e.conn);
      w.varint(e.len);
      w.u32(e.hash);
      return;
    case EntryType.OUT_CLOSE:
      w.varint(e.conn);
      return;
    case EntryType.OUT_CONSOLE:
      w.u8(e.fd);
      w.varint(e.len);
      w.u32(e.hash);
      return;
    case EntryType.OUT_DIGEST:
      w.varint(e.count);
      w.u32(e.crc);
      return;
    case EntryType.STATE_HASH:
      if (e.hash.length !== 32) throw new Error('state hash must be 32 bytes');
      w.bytes(e.hash);
      return;
    case EntryType.HALT: {
      w.u8(e.kind === 'exit' ? 0 : 1);
      w.zigzag(e.code);
      const msg = Buffer.from(e.message, 'utf8');
      w.varint(msg.length);
      w.bytes(msg);
      return;
    }
  }
}

/**
 * Reads one entry. Format 1 with a number as the state: the previous entry's instruction number. With
 * `views`, NIC_DATA's and SOCK_RECV's data are views into the reader's buffer rather than copies.
 */
export function decodeEntry(r: ByteReader, prev: number | BatchCodingState, format: LogFormat = LOG_FORMAT_OUTPUTS, views = false): LogEntry {
  const st: BatchCodingState = typeof prev === 'number' ? { n: prev, conn: 0 } : prev;
  const v2 = format === LOG_FORMAT_DIGEST;
  const tag = r.u8();
  const tagged = (tag & TAG_FLAG) !== 0;
  const same = v2 && (tag & SAME_N_FLAG) !== 0;
  const type = v2 ? tag & TYPE_MASK : tag & ~IDLE_FLAG & ~TAG_FLAG;
  const idle = (tag & IDLE_FLAG) !== 0;
  if (tagged && type !== EntryType.NIC_OPEN && type !== EntryType.SOCK_ACCEPT) corrupt(`tag flag on entry type ${type}`);
  const n = same ? st.n : st.n + r.varint();
  if (!Number.isSafeInteger(n)) corrupt('instruction number overflow');
  st.n = n;
  const asyncType = (type >= EntryType.NIC_OPEN && type <= EntryType.TIMER) || (v2 && type === EntryType.OUT_DIGEST);
  if (idle && !asyncType) corrupt(`idle flag on non-delivery entry type ${type}`);
  switch (type) {
    case EntryType.CLOCK: {
      const clock = r.u8();
      return { type, n, clock, valueNs: r.u64() };
    }
    case EntryType.RANDOM:
      return { type, n, bytes: r.bytes(r.varint()) };
    case EntryType.MEMGROW:
      return { type, n, deltaPages: r.varint(), result: r.zigzag() };
    case EntryType.SOCK_ACCEPT: {
      const errno = r.varint();
      const conn = r.varint();
      if (!tagged) return { type, n, errno, conn };
      const len = r.varint();
      if (len > MAX_TAG_BYTES) corrupt(`connection tag of ${len} bytes`);
      return { type, n, errno, conn, tag: r.bytes(len) };
    }
    case EntryType.SOCK_RECV: {
      const errno = r.varint();
      const len = r.varint();
      return { type, n, errno, data: views ? r.bytesView(len) : r.bytes(len) };
    }
    case EntryType.POLL: {
      const count = r.varint();
      if (count > 65536) corrupt(`poll result claims ${count} events`);
      const events: Array<{ index: number; errno: number; nbytes: number; flags: number }> = [];
      for (let i = 0; i < count; i++) {
        const index = r.varint();
        const errno = r.varint();
        const nbytes = r.varint();
        events.push({ index, errno, nbytes, flags: r.u8() });
      }
      return { type, n, events };
    }
    case EntryType.NIC_OPEN: {
      const c = readConn(r, st, v2);
      if (!tagged) return { type, n, idle, conn: c };
      const len = r.varint();
      if (len > MAX_TAG_BYTES) corrupt(`connection tag of ${len} bytes`);
      return { type, n, idle, conn: c, tag: r.bytes(len) };
    }
    case EntryType.NIC_CLOSE:
      return { type, n, idle, conn: readConn(r, st, v2) };
    case EntryType.NIC_DATA: {
      const c = readConn(r, st, v2);
      const len = r.varint();
      return { type, n, idle, conn: c, data: views ? r.bytesView(len) : r.bytes(len) };
    }
    case EntryType.TIMER:
      return { type, n, idle, timer: r.varint() };
    case EntryType.OUT_NET: {
      const conn = r.varint();
      const len = r.varint();
      return { type, n, conn, len, hash: r.u32() };
    }
    case EntryType.OUT_CLOSE:
      return { type, n, conn: r.varint() };
    case EntryType.OUT_CONSOLE: {
      const fd = r.u8();
      const len = r.varint();
      return { type, n, fd, len, hash: r.u32() };
    }
    case EntryType.OUT_DIGEST: {
      if (!v2) corrupt('OUT_DIGEST entry in a format-1 log');
      const count = r.varint();
      return { type, n, idle, count, crc: r.u32() };
    }
    case EntryType.STATE_HASH:
      return { type, n, hash: r.bytes(32) };
    case EntryType.HALT: {
      const k = r.u8();
      if (k > 1) corrupt(`unknown halt kind ${k}`);
      const code = r.zigzag();
      const message = Buffer.from(r.bytes(r.varint())).toString('utf8');
      return { type, n, kind: k === 0 ? 'exit' : 'trap', code, message };
    }
    default:
      corrupt(`unknown entry type ${type}`);
  }
}

/** The coding state at the start of a log. */
export function initialCoding(): BatchCodingState {
  return { n: 0, conn: 0 };
}

/**
 * Encodes entries as one batch. Format 2: `state` is the log's coding state before the batch (updated
 * to the state after it); without one, the batch is coded as the first of a log.
 */
export function encodeBatch(entries: readonly LogEntry[], w = new ByteWriter(), format: LogFormat = LOG_FORMAT, state?: BatchCodingState): Uint8Array {
  w.reset();
  encodeBatchInto(entries, w, format, state);
  return w.finish();
}

/** Appends entries as one batch to what `w` holds (no reset, no copy out). */
export function encodeBatchInto(entries: readonly LogEntry[], w: ByteWriter, format: LogFormat = LOG_FORMAT, state?: BatchCodingState): void {
  if (format === LOG_FORMAT_OUTPUTS) w.varint(entries.length);
  const st: BatchCodingState = format === LOG_FORMAT_DIGEST && state !== undefined ? state : initialCoding();
  if (format === LOG_FORMAT_OUTPUTS) {
    for (const e of entries) encodeEntry(w, e, st, format);
    return;
  }
  for (let i = 0; i < entries.length; ) {
    const e = entries[i]!;
    let k = 1;
    if (e.type === EntryType.NIC_DATA) {
      for (let j = i + 1; j < entries.length; j++) {
        const x = entries[j]!;
        if (x.type !== EntryType.NIC_DATA || x.n !== e.n || x.idle !== (e as { idle: boolean }).idle) break;
        k++;
      }
    }
    if (k < MIN_RUN) {
      encodeEntry(w, e, st, format);
      i++;
      continue;
    }
    if (e.n < st.n) throw new Error(`log entries out of order: ${e.n} after ${st.n}`);
    const same = e.n === st.n;
    w.u8(NIC_DATA_RUN | ((e as { idle: boolean }).idle ? IDLE_FLAG : 0) | (same ? SAME_N_FLAG : 0));
    if (!same) w.varint(e.n - st.n);
    st.n = e.n;
    w.varint(k);
    for (let j = i; j < i + k; j++) {
      const x = entries[j] as Extract<LogEntry, { type: typeof EntryType.NIC_DATA }>;
      w.zigzag(x.conn - st.conn);
      st.conn = x.conn;
      w.varint(x.data.length);
      w.bytes(x.data);
    }
    i += k;
  }
}

/** Format 2: a run of NIC_DATA entries (the type byte already read). */
function decodeRun(r: ByteReader, tag: number, st: BatchCodingState, out: LogEntry[], maxEntries: number, views: boolean): void {
  if ((tag & TAG_FLAG) !== 0) corrupt('tag flag on a NIC_DATA run');
  const idle = (tag & IDLE_FLAG) !== 0;
  const n = (tag & SAME_N_FLAG) !== 0 ? st.n : st.n + r.varint();
  if (!Number.isSafeInteger(n)) corrupt('instruction number overflow');
  st.n = n;
  const k = r.varint();
  if (k < MIN_RUN || k > r.remaining || out.length + k > maxEntries) corrupt(`a NIC_DATA run of ${k} entries`);
  for (let i = 0; i < k; i++) {
    const conn = st.conn + r.zigzag();
    if (!Number.isSafeInteger(conn) || conn < 0) corrupt(`connection ${conn}`);
    st.conn = conn;
    const len = r.varint();
    out.push({ type: EntryType.NIC_DATA, n, idle, conn, data: views ? r.bytesView(len) : r.bytes(len) });
  }
}

/**
 * Decodes one batch; the whole buffer must be consumed. `state` as for encodeBatch. The entries' payload
 * data (NIC_DATA, SOCK_RECV) are views into `buf`, not copies, unless `copyData`: a caller that writes
 * `buf` afterwards (or reuses it) while it still holds the entries asks for copies. (`slice` copies; of a
 * Buffer, `buf.slice` is a view, as it always was here.)
 */
export function decodeBatch(buf: Uint8Array, maxEntries = 1_000_000, format: LogFormat = LOG_FORMAT, state?: BatchCodingState, copyData = false): LogEntry[] {
  const views = !copyData;
  const r = new ByteReader(buf);
  const out: LogEntry[] = [];
  const st: BatchCodingState = format === LOG_FORMAT_DIGEST && state !== undefined ? state : initialCoding();
  if (format === LOG_FORMAT_OUTPUTS) {
    const count = r.varint();
    if (count > maxEntries) corrupt(`batch claims ${count} entries (limit ${maxEntries})`);
    for (let i = 0; i < count; i++) out.push(decodeEntry(r, st, format, views));
    if (r.remaining !== 0) corrupt(`${r.remaining} trailing bytes after ${count} entries`);
    return out;
  }
  while (r.remaining > 0) {
    if (out.length >= maxEntries) corrupt(`batch holds more than ${maxEntries} entries`);
    if ((buf[r.pos]! & TYPE_MASK) === NIC_DATA_RUN) decodeRun(r, r.u8(), st, out, maxEntries, views);
    else out.push(decodeEntry(r, st, format, views));
  }
  return out;
}

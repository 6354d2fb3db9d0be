// ftvm guest SDK for AssemblyScript (guest ABI version 1, see docs/GUEST_ABI.md).
//
// Import it with a relative path, e.g. `import { ringInit, ringNext } from "../sdk/ftvm";`.
//
// Everything here is allocation-free (static buffers only), so it works with `--runtime stub`
// as well as with `--runtime incremental`, except `sendString`/`print` with strings whose UTF-8
// encoding exceeds the static scratch buffer (they fall back to one heap allocation).
//
// Receive-ring usage:
//
//   export function ftvm_init(): void { ringInit(); }
//   export function ftvm_step(): i32 {
//     while (ringNext()) {            // decodes the next record into recType/recId/recLen
//       if (recType == REC_DATA) ringCopy(dst, 0, recLen);   // payload, wrap handled
//       ringConsume();                // advances tail past the record
//     }
//     return 0;
//   }

// ---------------------------------------------------------------------------------------------
// Imports from module "ftvm" (the complete list of GUEST_ABI.md).

/** Registers the receive ring at `ptr` (4-byte aligned) with a power-of-two `capacity`. */
// @ts-ignore: decorator
@external("ftvm", "rx_ring")
export declare function rx_ring(ptr: usize, capacity: u32): void;

/** Nanoseconds; clock 0 = realtime (Unix epoch), 1 = monotonic. Logged. */
// @ts-ignore: decorator
@external("ftvm", "clock_now")
export declare function clock_now(clock: i32): i64;

/** Fills `len` (<= 65536) random bytes at `ptr`. Logged. */
// @ts-ignore: decorator
@external("ftvm", "random_fill")
export declare function random_fill(ptr: usize, len: u32): void;

/** Arms timer `id` (0..1023) to fire after `delay_ms`; re-arming replaces. */
// @ts-ignore: decorator
@external("ftvm", "timer_set")
export declare function timer_set(id: i32, delay_ms: i32): void;

/** Cancels timer `id` if armed. */
// @ts-ignore: decorator
@external("ftvm", "timer_cancel")
export declare function timer_cancel(id: i32): void;

/** Writes bytes to the VM console. */
// @ts-ignore: decorator
@external("ftvm", "console_write")
export declare function console_write(ptr: usize, len: u32): void;

/** Sends bytes on a virtual connection. Returns `len`, or -1 if the connection is not open. */
// @ts-ignore: decorator
@external("ftvm", "net_send")
export declare function net_send(conn: i32, ptr: usize, len: u32): i32;

/** Closes a virtual connection. Returns 0, or -1 if it is not open. */
// @ts-ignore: decorator
@external("ftvm", "net_close")
export declare function net_close(conn: i32): i32;

// ---------------------------------------------------------------------------------------------
// Receive ring.

/** Record types. */
export const REC_OPEN: u32 = 1;
export const REC_DATA: u32 = 2;
export const REC_CLOSE: u32 = 3;
export const REC_TIMER: u32 = 4;

/** Capacity of the data area of the SDK's ring (64 KiB). */
export const RING_CAPACITY: u32 = 65536;
const RING_MASK: u32 = RING_CAPACITY - 1;
const RING_HEADER: u32 = 16;
const REC_HEADER: u32 = 12;

/** The ring: 16-byte header + 64 KiB data area, statically allocated (zero-initialised). */
const RING: usize = memory.data(16 + 65536, 16);
const RING_DATA: usize = RING + RING_HEADER;

/** Scratch word the poll path stores the observed head into. The store is what keeps the
 *  optimizer (binaryen LICM runs at -O3) from hoisting the `head` load out of a polling loop
 *  whose body otherwise touches no memory: the VMM writes the ring "between instructions". */
const POLL_SCRATCH: usize = memory.data(8, 8);

/** Address of the ring header (for diagnostics). */
export function ringAddress(): usize { return RING; }

/** Registers the SDK's static ring with the VMM. Call once, from `ftvm_init` (or the start code). */
export function ringInit(): void {
  rx_ring(RING, RING_CAPACITY);
}

// Header of the current record, valid after `ringNext()` returned true.
/** Type of the current record (REC_OPEN / REC_DATA / REC_CLOSE / REC_TIMER). */
export let recType: u32 = 0;
/** Flags of the current record (0 in ABI v1). */
export let recFlags: u32 = 0;
/** Connection id (OPEN/DATA/CLOSE) or timer id (TIMER) of the current record. */
export let recId: u32 = 0;
/** Payload length of the current record (DATA only; 0 otherwise). */
export let recLen: u32 = 0;
// private: tail at the current record and the record's total size
let recTail: u32 = 0;
let recSize: u32 = 0;

/** Reads the VMM-written `head` (total bytes ever written). */
// @ts-ignore: decorator
@inline export function ringHead(): u32 {
  const head = load<u32>(RING);
  store<u32>(POLL_SCRATCH, head); // see POLL_SCRATCH
  return head;
}

/** Reads the guest-written `tail` (total bytes ever consumed). */
// @ts-ignore: decorator
@inline export function ringTail(): u32 {
  return load<u32>(RING, 4);
}

/** Bytes written by the VMM and not yet consumed (cheap poll: one load and compare). */
// @ts-ignore: decorator
@inline export function ringPending(): u32 {
  return ringHead() - ringTail();
}

/** Reads a u32 at data-area offset `off` (already masked), wrapping byte-wise at the end. */
function ringReadU32(off: u32): u32 {
  if (off + 4 <= RING_CAPACITY) return load<u32>(RING_DATA + <usize>off);
  let v: u32 = 0;
  for (let i: u32 = 0; i < 4; i++) {
    v |= <u32>load<u8>(RING_DATA + <usize>((off + i) & RING_MASK)) << (i << 3);
  }
  return v;
}

/**
 * If a complete record is available at `tail`, decodes its header into recType/recFlags/recId/recLen
 * and returns true (the record stays in the ring until `ringConsume()`). Returns false if the ring
 * is empty. Calling it again without `ringConsume()` returns the same record.
 */
export function ringNext(): bool {
  const tail = ringTail();
  const avail = ringHead() - tail;
  if (avail < REC_HEADER) return false;
  const off = tail & RING_MASK;
  const w0 = ringReadU32(off);
  const id = ringReadU32((off + 4) & RING_MASK);
  const len = ringReadU32((off + 8) & RING_MASK);
  // A record never exceeds the capacity; anything else is ring corruption (trap deterministically).
  if (len > RING_CAPACITY - REC_HEADER) abort("ftvm ring: record length exceeds capacity");
  const size = REC_HEADER + ((len + 3) & ~3);
  // The VMM writes whole records; a partial one is not yet visible as far as the guest cares.
  if (avail < size) return false;
  recType = w0 & 0xffff;
  recFlags = w0 >>> 16;
  recId = id;
  recLen = len;
  recTail = tail;
  recSize = size;
  return true;
}

/** Payload byte `i` (0 <= i < recLen) of the current record. */
export function ringByte(i: u32): u8 {
  return load<u8>(RING_DATA + <usize>((recTail + REC_HEADER + i) & RING_MASK));
}

/** Copies payload bytes [from, from+n) of the current record to `dst`, handling the wrap-around. */
export function ringCopy(dst: usize, from: u32, n: u32): void {
  if (from > recLen || n > recLen - from) abort("ftvm ring: copy out of record bounds");
  if (n == 0) return;
  const start = (recTail + REC_HEADER + from) & RING_MASK;
  const first = min<u32>(n, RING_CAPACITY - start);
  memory.copy(dst, RING_DATA + <usize>start, <usize>first);
  if (first < n) memory.copy(dst + <usize>first, RING_DATA, <usize>(n - first));
}

/** Consumes the current record (advances `tail` by 12 + align4(recLen)). */
export function ringConsume(): void {
  store<u32>(RING, recTail + recSize, 4);
  recSize = 0;
}

// ---------------------------------------------------------------------------------------------
// Output helpers.

const SCRATCH_CAP: u32 = 4096;
const SCRATCH: usize = memory.data(4096, 16);

/** Sends raw bytes on `conn`; returns the net_send result. */
// @ts-ignore: decorator
@inline export function sendBytes(conn: u32, ptr: usize, len: u32): i32 {
  return net_send(<i32>conn, ptr, len);
}

/** Sends the whole buffer on `conn`. */
export function sendBuffer(conn: u32, buf: ArrayBuffer): i32 {
  return net_send(<i32>conn, changetype<usize>(buf), <u32>buf.byteLength);
}

/** Sends the bytes of a Uint8Array on `conn`. */
export function sendArray(conn: u32, arr: Uint8Array): i32 {
  return net_send(<i32>conn, arr.dataStart, <u32>arr.byteLength);
}

/** Sends `s` UTF-8-encoded on `conn`. */
export function sendString(conn: u32, s: string): i32 {
  const n = <u32>String.UTF8.byteLength(s);
  if (n <= SCRATCH_CAP) {
    String.UTF8.encodeUnsafe(changetype<usize>(s), s.length, SCRATCH);
    return net_send(<i32>conn, SCRATCH, n);
  }
  return sendBuffer(conn, String.UTF8.encode(s));
}

/** Writes raw bytes to the console. */
// @ts-ignore: decorator
@inline export function printBytes(ptr: usize, len: u32): void {
  console_write(ptr, len);
}

/** Writes `s` UTF-8-encoded to the console (no newline is added). */
export function print(s: string): void {
  const n = <u32>String.UTF8.byteLength(s);
  if (n <= SCRATCH_CAP) {
    String.UTF8.encodeUnsafe(changetype<usize>(s), s.length, SCRATCH);
    console_write(SCRATCH, n);
    return;
  }
  const buf = String.UTF8.encode(s);
  console_write(changetype<usize>(buf), <u32>buf.byteLength);
}

// ---------------------------------------------------------------------------------------------
// Allocation-free line builder (static 4 KiB buffer; anything beyond is truncated).

const LINE_CAP: u32 = 4096;
const LINE: usize = memory.data(4096, 16);
let lineLen: u32 = 0;

/** Starts a new line. */
export function lineReset(): void { lineLen = 0; }

/** Current length of the line in bytes. */
export function lineLength(): u32 { return lineLen; }

/** Address of the line buffer. */
export function linePtr(): usize { return LINE; }

/** Appends one byte. */
export function lineByte(b: u32): void {
  if (lineLen < LINE_CAP) { store<u8>(LINE + <usize>lineLen, <u8>b); lineLen++; }
}

/** Appends raw bytes. */
export function lineBytes(ptr: usize, len: u32): void {
  const n = min<u32>(len, LINE_CAP - lineLen);
  memory.copy(LINE + <usize>lineLen, ptr, <usize>n);
  lineLen += n;
}

/** Appends a string (UTF-16 code units < 0x80 are copied as bytes, others become '?').
 *  Meant for literals: no allocation. */
export function lineStr(s: string): void {
  const p = changetype<usize>(s);
  const n = s.length;
  for (let i = 0; i < n; i++) {
    const c = <u32>load<u16>(p + (<usize>i << 1));
    lineByte(c < 0x80 ? c : 0x3f);
  }
}

/** Appends an unsigned decimal number. */
export function lineU64(v: u64): void {
  const tmp = SCRATCH; // up to 20 digits
  let n: u32 = 0;
  do {
    store<u8>(tmp + <usize>n, <u8>(0x30 + <u32>(v % 10)));
    v /= 10;
    n++;
  } while (v != 0);
  while (n > 0) { n--; lineByte(<u32>load<u8>(tmp + <usize>n)); }
}

/** Appends a signed decimal number. */
export function lineI64(v: i64): void {
  if (v < 0) { lineByte(0x2d); lineU64(<u64>(0 - v)); } else lineU64(<u64>v);
}

/** Appends `v` as exactly `digits` lowercase hex digits (most significant first). */
export function lineHex(v: u64, digits: i32 = 16): void {
  for (let i = digits - 1; i >= 0; i--) {
    const d = <u32>((v >> (<u64>i << 2)) & 0xf);
    lineByte(d < 10 ? 0x30 + d : 0x57 + d);
  }
}

/** Sends the line on `conn` (the line is not reset). */
export function lineSend(conn: u32): i32 {
  return net_send(<i32>conn, LINE, lineLen);
}

/** Writes the line to the console (the line is not reset). */
export function linePrint(): void {
  console_write(LINE, lineLen);
}

// ---------------------------------------------------------------------------------------------
// Hashing helper shared by guests.

export const FNV64_OFFSET: u64 = 0xcbf29ce484222325;
export const FNV64_PRIME: u64 = 0x100000001b3;

/** FNV-1a 64 over `len` bytes at `ptr`, continuing from `h`. */
export function fnv1a64(h: u64, ptr: usize, len: usize): u64 {
  for (let i: usize = 0; i < len; i++) {
    h = (h ^ <u64>load<u8>(ptr + i)) * FNV64_PRIME;
  }
  return h;
}

/** FNV-1a 64 over the 8 little-endian bytes of `v`, continuing from `h`. */
export function fnv1a64u64(h: u64, v: u64): u64 {
  for (let i = 0; i < 8; i++) {
    h = (h ^ ((v >> (<u64>i << 3)) & 0xff)) * FNV64_PRIME;
  }
  return h;
}

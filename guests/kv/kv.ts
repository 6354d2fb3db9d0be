// kv: a key/value server speaking enough of Redis (RESP2) on ftvm virtual connections for real
// `redis-cli` and `redis-benchmark` (its default test list) to talk to it.
//
// Strings: GET, SET k v, MSET, MGET, INCR. Lists: LPUSH, RPUSH, LPOP/RPOP [count], LLEN,
// LRANGE. Sets: SADD, SREM, SPOP [count], SCARD, SISMEMBER, SMEMBERS. Hashes: HSET, HGET, HDEL,
// HLEN, HGETALL. Sorted sets: ZADD (score member pairs, no options), ZPOPMIN/ZPOPMAX [count],
// ZRANGE start stop [WITHSCORES], ZCARD, ZSCORE, ZREM. Streams: XADD [NOMKSTREAM] [MAXLEN [=|~] n]
// <*|id> field value ..., XLEN, XRANGE start end [COUNT n]. Keys and server: DEL, EXISTS, TYPE,
// DBSIZE, FLUSHALL, PING, ECHO, QUIT, COMMAND (-> *0), CONFIG GET (save -> "", appendonly -> no).
// Anything else -> "-ERR unknown command 'x'". Replies, wrong-arity and WRONGTYPE errors are
// Redis's. Empty lists, sets, hashes and sorted sets are deleted, as in Redis.
//
// Determinism: the guest is replayed, so SPOP draws from a PRNG in guest memory seeded once from
// the logged random_fill, and XADD's "*" IDs come from the logged clock_now(0).
//
// Input: RESP arrays of bulk strings and inline commands ("PING\r\n"; arguments split on spaces and
// tabs, no quoting). Commands may be split across DATA records and many may be pipelined in one
// record; each connection has its own input buffer, bounded at 1 MiB of unparsed input (beyond
// that the connection gets an error and is closed). Keys and values are binary-safe.
//
// Build: asc kv.ts --runtime incremental -O3

import {
  ringInit, ringNext, ringConsume, ringCopy, recType, recId, recLen,
  REC_OPEN, REC_DATA, REC_CLOSE, net_send, net_close, clock_now, random_fill,
} from "../sdk/ftvm";

/** Maximum unparsed input buffered per connection. */
const MAX_PENDING: i32 = 1 << 20;
/** Replies are flushed to the connection once this much output has accumulated. */
const FLUSH_AT: i32 = 256 * 1024;
/** Limits borrowed from Redis. */
const MAX_MULTIBULK: i64 = 1024 * 1024;
const MAX_BULK: i64 = 512 * 1024 * 1024;
const MAX_INLINE: i32 = 64 * 1024;

const CR: u8 = 13;
const LF: u8 = 10;

// ---------------------------------------------------------------------------------------------
// Growable byte buffer on the unmanaged heap (not scanned by the GC; freed explicitly).

class ByteBuf {
  ptr: usize = 0;
  len: i32 = 0;
  cap: i32 = 0;

  reserve(extra: i32): void {
    const need = this.len + extra;
    if (need <= this.cap) return;
    let nc = max<i32>(this.cap << 1, 256);
    while (nc < need) nc <<= 1;
    this.ptr = this.ptr != 0 ? heap.realloc(this.ptr, <usize>nc) : heap.alloc(<usize>nc);
    this.cap = nc;
  }

  byte(b: u8): void {
    this.reserve(1);
    store<u8>(this.ptr + <usize>this.len, b);
    this.len++;
  }

  bytes(p: usize, n: i32): void {
    this.reserve(n);
    memory.copy(this.ptr + <usize>this.len, p, <usize>n);
    this.len += n;
  }

  /** Appends an ASCII string (literals). */
  str(s: string): void {
    const n = s.length;
    this.reserve(n);
    const src = changetype<usize>(s);
    const dst = this.ptr + <usize>this.len;
    for (let i = 0; i < n; i++) store<u8>(dst + <usize>i, <u8>load<u16>(src + (<usize>i << 1)));
    this.len += n;
  }

  int(v: i64): void {
    if (v < 0) {
      this.byte(0x2d);
      // -i64.MIN overflows; handle via unsigned
      this.uint(<u64>0 - <u64>v);
    } else {
      this.uint(<u64>v);
    }
  }

  uint(v: u64): void {
    let digits = 1;
    let t = v;
    while (t >= 10) { t /= 10; digits++; }
    this.reserve(digits);
    let p = this.ptr + <usize>(this.len + digits);
    do {
      p--;
      store<u8>(p, <u8>(0x30 + <u32>(v % 10)));
      v /= 10;
    } while (v != 0);
    this.len += digits;
  }

  /** Drops the first n bytes. */
  consume(n: i32): void {
    if (n <= 0) return;
    const rest = this.len - n;
    if (rest > 0) memory.copy(this.ptr, this.ptr + <usize>n, <usize>rest);
    this.len = rest;
    // give memory back after a big request
    if (this.cap > 65536 && this.len < (this.cap >> 2)) {
      let nc = this.cap >> 1;
      while (nc > 65536 && this.len < (nc >> 2)) nc >>= 1;
      this.ptr = heap.realloc(this.ptr, <usize>nc);
      this.cap = nc;
    }
  }

  release(): void {
    if (this.ptr != 0) heap.free(this.ptr);
    this.ptr = 0;
    this.len = 0;
    this.cap = 0;
  }
}

class Conn {
  input: ByteBuf = new ByteBuf();
  closing: bool = false;
  constructor(public id: u32) {}
}

// ---------------------------------------------------------------------------------------------
// State.

const conns = new Map<u32, Conn>();
/** Keys are byte strings mapped 1:1 onto UTF-16 code units 0..255 (binary-safe). */
const db = new Map<string, ArrayBuffer>();
/** Reply buffer for the connection being served. */
const out = new ByteBuf();

// Parsed command: argument pointers/lengths (pointing into the connection's input buffer).
const argP = new Array<usize>();
const argL = new Array<i32>();
let argc: i32 = 0;
let protoError: string = "";

// ---------------------------------------------------------------------------------------------
// Reply helpers.

function replySimple(s: string): void { out.byte(0x2b); out.str(s); out.byte(CR); out.byte(LF); }
function replyError(s: string): void { out.byte(0x2d); out.str(s); out.byte(CR); out.byte(LF); }
function replyInt(v: i64): void { out.byte(0x3a); out.int(v); out.byte(CR); out.byte(LF); }
function replyArray(n: i64): void { out.byte(0x2a); out.int(n); out.byte(CR); out.byte(LF); }
function replyNil(): void { out.str("$-1\r\n"); }
function replyBulk(p: usize, n: i32): void {
  out.byte(0x24); out.int(n); out.byte(CR); out.byte(LF);
  out.bytes(p, n);
  out.byte(CR); out.byte(LF);
}
function replyBuffer(b: ArrayBuffer): void { replyBulk(changetype<usize>(b), b.byteLength); }

/** "-ERR wrong number of arguments for 'xxx' command" with the command name as sent (lowercased). */
function replyArity(): void {
  out.str("-ERR wrong number of arguments for '");
  appendSanitizedName(true);
  out.str("' command\r\n");
}

/** Appends argument 0 with control bytes replaced (the reply must stay one line); at most 128 bytes. */
function appendSanitizedName(lower: bool): void {
  const p = unchecked(argP[0]);
  const n = min<i32>(unchecked(argL[0]), 128);
  for (let i = 0; i < n; i++) {
    let c = load<u8>(p + <usize>i);
    if (c < 0x20 || c == 0x7f) c = 0x20;
    if (lower && c >= 0x41 && c <= 0x5a) c += 0x20;
    out.byte(c);
  }
}

function flush(conn: Conn): void {
  if (out.len > 0) {
    net_send(<i32>conn.id, out.ptr, <u32>out.len);
    out.len = 0;
  }
}

// ---------------------------------------------------------------------------------------------
// Parsing.

/** Parses a decimal integer (optional '-') in [p, e). Returns false if malformed/too long. */
let parsedInt: i64 = 0;
function parseInt64(p: usize, e: usize): bool {
  if (p >= e) return false;
  let neg = false;
  if (load<u8>(p) == 0x2d) { neg = true; p++; if (p >= e) return false; }
  if (e - p > 18) return false; // keeps the value far inside i64 (bounds are checked by callers)
  let v: i64 = 0;
  while (p < e) {
    const c = <i32>load<u8>(p) - 0x30;
    if (c < 0 || c > 9) return false;
    v = v * 10 + c;
    p++;
  }
  parsedInt = neg ? -v : v;
  return true;
}

/** Finds the first CR in [p, e); returns e if none. */
function findCR(p: usize, e: usize): usize {
  while (p < e && load<u8>(p) != CR) p++;
  return p;
}

function pushArg(p: usize, n: i32): void {
  if (argc < argP.length) {
    unchecked(argP[argc] = p);
    unchecked(argL[argc] = n);
  } else {
    argP.push(p);
    argL.push(n);
  }
  argc++;
}

/**
 * Parses one command from [base, base+len). Returns the bytes consumed (> 0; argc may be 0 for an
 * empty command), 0 if more input is needed, -1 on a protocol error (message in protoError).
 */
function parseCommand(base: usize, len: i32): i32 {
  argc = 0;
  const end = base + <usize>len;
  if (load<u8>(base) == 0x2a /* '*' */) {
    const cr = findCR(base + 1, end);
    if (cr + 1 >= end) {
      if (len > MAX_INLINE) { protoError = "too big mbulk count string"; return -1; }
      return 0;
    }
    if (!parseInt64(base + 1, cr) || parsedInt > MAX_MULTIBULK) {
      protoError = "invalid multibulk length";
      return -1;
    }
    const n = parsedInt;
    let p = cr + 2;
    for (let i: i64 = 0; i < n; i++) {
      if (p >= end) return 0;
      if (load<u8>(p) != 0x24 /* '$' */) {
        protoError = "expected '$'";
        return -1;
      }
      const cr2 = findCR(p + 1, end);
      if (cr2 + 1 >= end) {
        if (<i32>(end - p) > MAX_INLINE) { protoError = "too big bulk count string"; return -1; }
        return 0;
      }
      if (!parseInt64(p + 1, cr2) || parsedInt < 0 || parsedInt > MAX_BULK) {
        protoError = "invalid bulk length";
        return -1;
      }
      const blen = parsedInt;
      p = cr2 + 2;
      if (<i64>(end - p) < blen + 2) return 0;
      pushArg(p, <i32>blen);
      p += <usize>blen + 2; // like Redis, the trailing CRLF is skipped, not checked
    }
    return <i32>(p - base);
  }
  // inline command: one line, arguments separated by spaces/tabs
  let nl = base;
  while (nl < end && load<u8>(nl) != LF) nl++;
  if (nl >= end) {
    if (len > MAX_INLINE) { protoError = "too big inline request"; return -1; }
    return 0;
  }
  let le = nl;
  if (le > base && load<u8>(le - 1) == CR) le--;
  let p = base;
  while (p < le) {
    while (p < le && (load<u8>(p) == 0x20 || load<u8>(p) == 0x09)) p++;
    if (p >= le) break;
    const s = p;
    while (p < le && load<u8>(p) != 0x20 && load<u8>(p) != 0x09) p++;
    pushArg(s, <i32>(p - s));
  }
  return <i32>(nl + 1 - base);
}

// ---------------------------------------------------------------------------------------------
// Values other than strings: lists, sets, hashes, sorted sets, streams. Strings live in `db`,
// everything else in `objs`; a key is in at most one of the two (Redis has one keyspace).

const KIND_LIST: i32 = 1;
const KIND_SET: i32 = 2;
const KIND_HASH: i32 = 3;
const KIND_ZSET: i32 = 4;
const KIND_STREAM: i32 = 5;

class Obj {
  constructor(public kind: i32) {}
}

/** A list: a ring of values (O(1) push and pop at both ends), power-of-two capacity that grows
 *  and shrinks with the length. */
class ListObj extends Obj {
  buf: StaticArray<ArrayBuffer | null> = new StaticArray<ArrayBuffer | null>(8);
  head: i32 = 0;
  len: i32 = 0;
  constructor() { super(KIND_LIST); }

  at(i: i32): ArrayBuffer {
    return changetype<ArrayBuffer>(unchecked(this.buf[(this.head + i) & (this.buf.length - 1)]));
  }
  private resize(cap: i32): void {
    const nb = new StaticArray<ArrayBuffer | null>(cap);
    for (let i = 0; i < this.len; i++) unchecked(nb[i] = this.at(i));
    this.buf = nb;
    this.head = 0;
  }
  private fit(): void {
    const cap = this.buf.length;
    if (this.len == cap) this.resize(cap << 1);
    else if (cap > 8 && this.len <= (cap >> 2)) this.resize(cap >> 1);
  }
  pushFront(v: ArrayBuffer): void {
    this.fit();
    this.head = (this.head - 1) & (this.buf.length - 1);
    unchecked(this.buf[this.head] = v);
    this.len++;
  }
  pushBack(v: ArrayBuffer): void {
    this.fit();
    unchecked(this.buf[(this.head + this.len) & (this.buf.length - 1)] = v);
    this.len++;
  }
  popFront(): ArrayBuffer {
    const v = this.at(0);
    unchecked(this.buf[this.head] = null);
    this.head = (this.head + 1) & (this.buf.length - 1);
    this.len--;
    this.fit();
    return v;
  }
  popBack(): ArrayBuffer {
    const v = this.at(this.len - 1);
    unchecked(this.buf[(this.head + this.len - 1) & (this.buf.length - 1)] = null);
    this.len--;
    this.fit();
    return v;
  }
}

/** A set: members in a dense array (O(1) random pick for SPOP) with an index by member. */
class SetObj extends Obj {
  idx: Map<string, i32> = new Map<string, i32>();
  items: Array<string> = new Array<string>();
  constructor() { super(KIND_SET); }
  add(m: string): bool {
    if (this.idx.has(m)) return false;
    this.idx.set(m, this.items.length);
    this.items.push(m);
    return true;
  }
  remove(m: string): bool {
    if (!this.idx.has(m)) return false;
    const i = this.idx.get(m);
    this.idx.delete(m);
    const last = this.items.pop();
    if (i < this.items.length) {
      unchecked(this.items[i] = last);
      this.idx.set(last, i);
    }
    return true;
  }
}

class HashObj extends Obj {
  fields: Map<string, ArrayBuffer> = new Map<string, ArrayBuffer>();
  constructor() { super(KIND_HASH); }
}

/** A sorted set: score by member, and the members sorted by (score, member bytes) in two parallel
 *  arrays (binary search; insert and remove move the tail: O(n), fine for an example guest). */
class ZSetObj extends Obj {
  scores: Map<string, f64> = new Map<string, f64>();
  members: Array<string> = new Array<string>();
  sorted: Array<f64> = new Array<f64>();
  constructor() { super(KIND_ZSET); }

  /** First position whose (score, member) is not less than (s, m). */
  lowerBound(s: f64, m: string): i32 {
    let lo = 0;
    let hi = this.members.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const ms = unchecked(this.sorted[mid]);
      if (ms < s || (ms == s && unchecked(this.members[mid]) < m)) lo = mid + 1; else hi = mid;
    }
    return lo;
  }
  /** Adds or moves a member; true if it is new. */
  put(m: string, s: f64): bool {
    const isNew = !this.scores.has(m);
    if (!isNew) {
      if (this.scores.get(m) == s) return false;
      this.removeAt(this.lowerBound(this.scores.get(m), m));
    }
    this.scores.set(m, s);
    const pos = this.lowerBound(s, m);
    this.members.push(m);
    this.sorted.push(s);
    for (let i = this.members.length - 1; i > pos; i--) {
      unchecked(this.members[i] = this.members[i - 1]);
      unchecked(this.sorted[i] = this.sorted[i - 1]);
    }
    unchecked(this.members[pos] = m);
    unchecked(this.sorted[pos] = s);
    return isNew;
  }
  removeAt(pos: i32): void {
    const n = this.members.length;
    for (let i = pos; i < n - 1; i++) {
      unchecked(this.members[i] = this.members[i + 1]);
      unchecked(this.sorted[i] = this.sorted[i + 1]);
    }
    this.members.pop();
    this.sorted.pop();
  }
  remove(m: string): bool {
    if (!this.scores.has(m)) return false;
    this.removeAt(this.lowerBound(this.scores.get(m), m));
    this.scores.delete(m);
    return true;
  }
}

class StreamEntry {
  constructor(public ms: u64, public seq: u64, public fields: Array<ArrayBuffer>) {}
}

class StreamObj extends Obj {
  entries: Array<StreamEntry> = new Array<StreamEntry>();
  lastMs: u64 = 0;
  lastSeq: u64 = 0;
  constructor() { super(KIND_STREAM); }
}

const objs = new Map<string, Obj>();

/** Deterministic PRNG for SPOP (xorshift64*), seeded once from the logged random_fill. */
let rngState: u64 = 0;
const RNG_SEED: usize = memory.data(8, 8);
function randomBelow(n: i32): i32 {
  if (rngState == 0) {
    random_fill(RNG_SEED, 8);
    rngState = load<u64>(RNG_SEED);
    if (rngState == 0) rngState = 0x9e3779b97f4a7c15;
  }
  let x = rngState;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  rngState = x;
  return <i32>((x * 0x2545f4914f6cdd1d) >> 33) % n;
}

// ---------------------------------------------------------------------------------------------
// Commands.

/** Case-insensitive comparison of argument i with an upper-case ASCII literal. */
function argIs(i: i32, lit: string): bool {
  const n = unchecked(argL[i]);
  if (n != lit.length) return false;
  const p = unchecked(argP[i]);
  const l = changetype<usize>(lit);
  for (let j = 0; j < n; j++) {
    let c = <u32>load<u8>(p + <usize>j);
    if (c >= 0x61 && c <= 0x7a) c -= 0x20;
    if (c != <u32>load<u16>(l + (<usize>j << 1))) return false;
  }
  return true;
}

/** The key string for argument i (bytes -> code units 0..255). */
function argKey(i: i32): string {
  const p = unchecked(argP[i]);
  const n = unchecked(argL[i]);
  const s = changetype<string>(__new(<usize>n << 1, idof<string>()));
  const d = changetype<usize>(s);
  for (let j = 0; j < n; j++) store<u16>(d + (<usize>j << 1), <u16>load<u8>(p + <usize>j));
  return s;
}

function argValue(i: i32): ArrayBuffer {
  const n = unchecked(argL[i]);
  const b = new ArrayBuffer(n);
  memory.copy(changetype<usize>(b), unchecked(argP[i]), <usize>n);
  return b;
}

/** Redis string2ll: optional '-', no leading zeros (except "0"), no spaces, fits in i64. */
let incrValue: i64 = 0;
function parseStrictIntAt(p: usize, n: i32): bool {
  if (n == 0 || n > 20) return false;
  let i = 0;
  let neg = false;
  if (load<u8>(p) == 0x2d) { neg = true; i = 1; if (n == 1) return false; }
  const first = load<u8>(p + <usize>i);
  if (first == 0x30) {
    if (n == i + 1 && !neg) { incrValue = 0; return true; }
    return false;
  }
  let v: u64 = 0;
  for (; i < n; i++) {
    const c = <u32>load<u8>(p + <usize>i) - 0x30;
    if (c > 9) return false;
    if (v > (u64.MAX_VALUE - c) / 10) return false;
    v = v * 10 + c;
  }
  if (neg) {
    if (v > <u64>i64.MAX_VALUE + 1) return false;
    incrValue = <i64>(<u64>0 - v);
  } else {
    if (v > <u64>i64.MAX_VALUE) return false;
    incrValue = <i64>v;
  }
  return true;
}
function parseStrictInt(b: ArrayBuffer): bool { return parseStrictIntAt(changetype<usize>(b), b.byteLength); }

/** Argument i as an integer into incrValue; replies the Redis error and returns false if it is not one. */
function argInt(i: i32): bool {
  if (parseStrictIntAt(unchecked(argP[i]), unchecked(argL[i]))) return true;
  replyError("ERR value is not an integer or out of range");
  return false;
}

/** Argument i as a double (strtod syntax, or [+-]inf); replies the Redis error and returns false if not. */
let floatValue: f64 = 0;
function argFloat(i: i32): bool {
  const p = unchecked(argP[i]);
  const n = unchecked(argL[i]);
  let j = 0;
  let neg = false;
  if (n > 0 && (load<u8>(p) == 0x2b || load<u8>(p) == 0x2d)) { neg = load<u8>(p) == 0x2d; j = 1; }
  if (n - j == 3 || n - j == 8) {
    // inf / infinity, any case
    let isInf = true;
    const word = "INFINITY";
    for (let k = 0; k < n - j; k++) {
      let c = <u32>load<u8>(p + <usize>(j + k));
      if (c >= 0x61 && c <= 0x7a) c -= 0x20;
      if (c != <u32>word.charCodeAt(k)) { isInf = false; break; }
    }
    if (isInf) { floatValue = neg ? -Infinity : Infinity; return true; }
  }
  // digits [. digits] [e [+-] digits], at least one digit in the mantissa
  let digits = 0;
  let k = j;
  while (k < n && <u32>load<u8>(p + <usize>k) - 0x30 <= 9) { k++; digits++; }
  if (k < n && load<u8>(p + <usize>k) == 0x2e) {
    k++;
    while (k < n && <u32>load<u8>(p + <usize>k) - 0x30 <= 9) { k++; digits++; }
  }
  let ok = digits > 0;
  if (ok && k < n && (load<u8>(p + <usize>k) | 0x20) == 0x65) {
    k++;
    if (k < n && (load<u8>(p + <usize>k) == 0x2b || load<u8>(p + <usize>k) == 0x2d)) k++;
    let ed = 0;
    while (k < n && <u32>load<u8>(p + <usize>k) - 0x30 <= 9) { k++; ed++; }
    if (ed == 0) ok = false;
  }
  if (!ok || k != n || n > 256) { replyError("ERR value is not a valid float"); return false; }
  floatValue = parseFloat(argKey(i));
  if (isNaN(floatValue)) { replyError("ERR value is not a valid float"); return false; }
  return true;
}

function int64Buffer(v: i64): ArrayBuffer {
  const save = out.len;
  out.int(v);
  const n = out.len - save;
  const b = new ArrayBuffer(n);
  memory.copy(changetype<usize>(b), out.ptr + <usize>save, <usize>n);
  out.len = save;
  return b;
}

/** A double as Redis prints it: integers without a fraction, "inf"/"-inf", else the shortest form. */
function replyDouble(d: f64): void {
  // format at the end of the reply buffer, then move the text behind its "$<len>\r\n" header
  const start = out.len;
  if (d == Infinity) out.str("inf");
  else if (d == -Infinity) out.str("-inf");
  else if (d == Math.floor(d) && Math.abs(d) < 1e15) out.int(<i64>d);
  else out.str(d.toString());
  const len = out.len - start;
  const text = new ArrayBuffer(len);
  memory.copy(changetype<usize>(text), out.ptr + <usize>start, <usize>len);
  out.len = start;
  replyBulk(changetype<usize>(text), len);
}

function replyString(s: string): void {
  // s holds bytes as code units 0..255
  const n = s.length;
  out.byte(0x24); out.int(n); out.byte(CR); out.byte(LF);
  out.reserve(n);
  const src = changetype<usize>(s);
  const dst = out.ptr + <usize>out.len;
  for (let i = 0; i < n; i++) store<u8>(dst + <usize>i, <u8>load<u16>(src + (<usize>i << 1)));
  out.len += n;
  out.byte(CR); out.byte(LF);
}

function replyWrongType(): void { replyError("WRONGTYPE Operation against a key holding the wrong kind of value"); }
function replyOk(): void { out.str("+OK\r\n"); }
function replyNilArray(): void { out.str("*-1\r\n"); }

/** Removes key k whatever its type; true if it existed. */
function deleteKey(k: string): bool {
  if (db.delete(k)) return true;
  return objs.delete(k);
}

function keyExists(k: string): bool { return db.has(k) || objs.has(k); }

/**
 * The object at key `i` of kind `kind`: returns it, or null with `wrongType` set if the key holds
 * another type (a string or another kind), or null if it does not exist and `create` is false.
 */
let wrongType: bool = false;
function lookup(k: string, kind: i32, create: bool): Obj | null {
  wrongType = false;
  if (objs.has(k)) {
    const o = objs.get(k);
    if (o.kind != kind) { wrongType = true; return null; }
    return o;
  }
  if (db.has(k)) { wrongType = true; return null; }
  if (!create) return null;
  let o: Obj;
  if (kind == KIND_LIST) o = new ListObj();
  else if (kind == KIND_SET) o = new SetObj();
  else if (kind == KIND_HASH) o = new HashObj();
  else if (kind == KIND_ZSET) o = new ZSetObj();
  else o = new StreamObj();
  objs.set(k, o);
  return o;
}

/** Sets a string value (SET, MSET, INCR): a key of another type is replaced. */
function setString(k: string, v: ArrayBuffer): void {
  if (objs.size > 0) objs.delete(k);
  db.set(k, v);
}

// --- strings ---

function cmdGet(n: i32): void {
  if (n != 2) { replyArity(); return; }
  const k = argKey(1);
  if (db.has(k)) replyBuffer(db.get(k));
  else if (objs.has(k)) replyWrongType();
  else replyNil();
}

function cmdSet(n: i32): void {
  if (n < 3) { replyArity(); return; }
  if (n > 3) { replyError("ERR syntax error"); return; }
  setString(argKey(1), argValue(2));
  replyOk();
}

function cmdIncr(n: i32): void {
  if (n != 2) { replyArity(); return; }
  const k = argKey(1);
  let v: i64 = 0;
  if (db.has(k)) {
    if (!parseStrictInt(db.get(k))) { replyError("ERR value is not an integer or out of range"); return; }
    v = incrValue;
  } else if (objs.has(k)) { replyWrongType(); return; }
  if (v == i64.MAX_VALUE) { replyError("ERR increment or decrement would overflow"); return; }
  v++;
  db.set(k, int64Buffer(v));
  replyInt(v);
}

function cmdMset(n: i32): void {
  if (n < 3 || (n & 1) == 0) { replyArity(); return; }
  for (let i = 1; i < n; i += 2) setString(argKey(i), argValue(i + 1));
  replyOk();
}

function cmdMget(n: i32): void {
  if (n < 2) { replyArity(); return; }
  replyArray(n - 1);
  for (let i = 1; i < n; i++) {
    const k = argKey(i);
    if (db.has(k)) replyBuffer(db.get(k)); else replyNil(); // like Redis: nil for other types too
  }
}

// --- lists ---

function cmdPush(n: i32, front: bool): void {
  if (n < 3) { replyArity(); return; }
  const o = lookup(argKey(1), KIND_LIST, true);
  if (o == null) { replyWrongType(); return; }
  const l = changetype<ListObj>(o);
  for (let i = 2; i < n; i++) {
    if (front) l.pushFront(argValue(i)); else l.pushBack(argValue(i));
  }
  replyInt(l.len);
}

function cmdPop(n: i32, front: bool): void {
  if (n < 2 || n > 3) { replyArity(); return; }
  let count: i64 = -1;
  if (n == 3) {
    if (!parseStrictIntAt(unchecked(argP[2]), unchecked(argL[2])) || incrValue < 0) {
      replyError("ERR value is out of range, must be positive");
      return;
    }
    count = incrValue;
  }
  const k = argKey(1);
  const o = lookup(k, KIND_LIST, false);
  if (o == null) {
    if (wrongType) replyWrongType(); else if (count < 0) replyNil(); else replyNilArray();
    return;
  }
  const l = changetype<ListObj>(o);
  if (count < 0) {
    replyBuffer(front ? l.popFront() : l.popBack());
  } else {
    const c = <i32>min<i64>(count, <i64>l.len);
    replyArray(c);
    for (let i = 0; i < c; i++) replyBuffer(front ? l.popFront() : l.popBack());
  }
  if (l.len == 0) objs.delete(k);
}

function cmdLlen(n: i32): void {
  if (n != 2) { replyArity(); return; }
  const o = lookup(argKey(1), KIND_LIST, false);
  if (o == null) { if (wrongType) replyWrongType(); else replyInt(0); return; }
  replyInt(changetype<ListObj>(o).len);
}

/** Resolves Redis's [start, stop] index range (negative from the end) over `len` items into
 *  rangeStart/rangeCount. */
let rangeStart: i32 = 0;
let rangeCount: i32 = 0;
function resolveRange(start: i64, stop: i64, len: i32): void {
  if (start < 0) start += len;
  if (stop < 0) stop += len;
  if (start < 0) start = 0;
  if (start > stop || start >= <i64>len) { rangeStart = 0; rangeCount = 0; return; }
  if (stop >= <i64>len) stop = <i64>len - 1;
  rangeStart = <i32>start;
  rangeCount = <i32>(stop - start + 1);
}

function cmdLrange(n: i32): void {
  if (n != 4) { replyArity(); return; }
  if (!argInt(2)) return;
  const start = incrValue;
  if (!argInt(3)) return;
  const stop = incrValue;
  const o = lookup(argKey(1), KIND_LIST, false);
  if (o == null) { if (wrongType) replyWrongType(); else replyArray(0); return; }
  const l = changetype<ListObj>(o);
  resolveRange(start, stop, l.len);
  replyArray(rangeCount);
  for (let i = 0; i < rangeCount; i++) replyBuffer(l.at(rangeStart + i));
}

// --- sets ---

function cmdSadd(n: i32): void {
  if (n < 3) { replyArity(); return; }
  const o = lookup(argKey(1), KIND_SET, true);
  if (o == null) { replyWrongType(); return; }
  const s = changetype<SetObj>(o);
  let added: i64 = 0;
  for (let i = 2; i < n; i++) if (s.add(argKey(i))) added++;
  replyInt(added);
}

function cmdSrem(n: i32): void {
  if (n < 3) { replyArity(); return; }
  const k = argKey(1);
  const o = lookup(k, KIND_SET, false);
  if (o == null) { if (wrongType) replyWrongType(); else replyInt(0); return; }
  const s = changetype<SetObj>(o);
  let removed: i64 = 0;
  for (let i = 2; i < n; i++) if (s.remove(argKey(i))) removed++;
  if (s.items.length == 0) objs.delete(k);
  replyInt(removed);
}

function cmdSpop(n: i32): void {
  if (n < 2 || n > 3) { replyArity(); return; }
  let count: i64 = -1;
  if (n == 3) {
    if (!parseStrictIntAt(unchecked(argP[2]), unchecked(argL[2])) || incrValue < 0) {
      replyError("ERR value is out of range, must be positive");
      return;
    }
    count = incrValue;
  }
  const k = argKey(1);
  const o = lookup(k, KIND_SET, false);
  if (o == null) {
    if (wrongType) replyWrongType(); else if (count < 0) replyNil(); else replyArray(0);
    return;
  }
  const s = changetype<SetObj>(o);
  if (count < 0) {
    const m = unchecked(s.items[randomBelow(s.items.length)]);
    s.remove(m);
    replyString(m);
  } else {
    const c = <i32>min<i64>(count, <i64>s.items.length);
    replyArray(c);
    for (let i = 0; i < c; i++) {
      const m = unchecked(s.items[randomBelow(s.items.length)]);
      s.remove(m);
      replyString(m);
    }
  }
  if (s.items.length == 0) objs.delete(k);
}

function cmdScard(n: i32): void {
  if (n != 2) { replyArity(); return; }
  const o = lookup(argKey(1), KIND_SET, false);
  if (o == null) { if (wrongType) replyWrongType(); else replyInt(0); return; }
  replyInt(changetype<SetObj>(o).items.length);
}

function cmdSismember(n: i32): void {
  if (n != 3) { replyArity(); return; }
  const o = lookup(argKey(1), KIND_SET, false);
  if (o == null) { if (wrongType) replyWrongType(); else replyInt(0); return; }
  replyInt(changetype<SetObj>(o).idx.has(argKey(2)) ? 1 : 0);
}

function cmdSmembers(n: i32): void {
  if (n != 2) { replyArity(); return; }
  const o = lookup(argKey(1), KIND_SET, false);
  if (o == null) { if (wrongType) replyWrongType(); else replyArray(0); return; }
  const items = changetype<SetObj>(o).items;
  replyArray(items.length);
  for (let i = 0; i < items.length; i++) replyString(unchecked(items[i]));
}

// --- hashes ---

function cmdHset(n: i32): void {
  if (n < 4 || (n & 1) != 0) { replyArity(); return; }
  const o = lookup(argKey(1), KIND_HASH, true);
  if (o == null) { replyWrongType(); return; }
  const h = changetype<HashObj>(o);
  let added: i64 = 0;
  for (let i = 2; i < n; i += 2) {
    const f = argKey(i);
    if (!h.fields.has(f)) added++;
    h.fields.set(f, argValue(i + 1));
  }
  replyInt(added);
}

function cmdHget(n: i32): void {
  if (n != 3) { replyArity(); return; }
  const o = lookup(argKey(1), KIND_HASH, false);
  if (o == null) { if (wrongType) replyWrongType(); else replyNil(); return; }
  const h = changetype<HashObj>(o);
  const f = argKey(2);
  if (h.fields.has(f)) replyBuffer(h.fields.get(f)); else replyNil();
}

function cmdHdel(n: i32): void {
  if (n < 3) { replyArity(); return; }
  const k = argKey(1);
  const o = lookup(k, KIND_HASH, false);
  if (o == null) { if (wrongType) replyWrongType(); else replyInt(0); return; }
  const h = changetype<HashObj>(o);
  let removed: i64 = 0;
  for (let i = 2; i < n; i++) if (h.fields.delete(argKey(i))) removed++;
  if (h.fields.size == 0) objs.delete(k);
  replyInt(removed);
}

function cmdHlen(n: i32): void {
  if (n != 2) { replyArity(); return; }
  const o = lookup(argKey(1), KIND_HASH, false);
  if (o == null) { if (wrongType) replyWrongType(); else replyInt(0); return; }
  replyInt(changetype<HashObj>(o).fields.size);
}

function cmdHgetall(n: i32): void {
  if (n != 2) { replyArity(); return; }
  const o = lookup(argKey(1), KIND_HASH, false);
  if (o == null) { if (wrongType) replyWrongType(); else replyArray(0); return; }
  const h = changetype<HashObj>(o);
  const keys = h.fields.keys();
  replyArray(<i64>keys.length * 2);
  for (let i = 0; i < keys.length; i++) {
    const f = unchecked(keys[i]);
    replyString(f);
    replyBuffer(h.fields.get(f));
  }
}

// --- sorted sets ---

function cmdZadd(n: i32): void {
  if (n < 4) { replyArity(); return; }
  if (argIs(2, "NX") || argIs(2, "XX") || argIs(2, "GT") || argIs(2, "LT") || argIs(2, "CH") || argIs(2, "INCR")) {
    replyError("ERR ZADD options (NX XX GT LT CH INCR) are not supported by this server");
    return;
  }
  if ((n & 1) != 0) { replyError("ERR syntax error"); return; }
  // check every score before changing anything, as Redis does
  for (let i = 2; i < n; i += 2) if (!argFloat(i)) return;
  const o = lookup(argKey(1), KIND_ZSET, true);
  if (o == null) { replyWrongType(); return; }
  const z = changetype<ZSetObj>(o);
  let added: i64 = 0;
  for (let i = 2; i < n; i += 2) {
    argFloat(i);
    if (z.put(argKey(i + 1), floatValue)) added++;
  }
  replyInt(added);
}

function cmdZpop(n: i32, minFirst: bool): void {
  if (n < 2 || n > 3) { replyArity(); return; }
  let count: i64 = 1;
  if (n == 3) {
    if (!argInt(2)) return;
    if (incrValue < 0) { replyError("ERR value is out of range, must be positive"); return; }
    count = incrValue;
  }
  const k = argKey(1);
  const o = lookup(k, KIND_ZSET, false);
  if (o == null) { if (wrongType) replyWrongType(); else replyArray(0); return; }
  const z = changetype<ZSetObj>(o);
  const c = <i32>min<i64>(count, <i64>z.members.length);
  replyArray(<i64>c * 2);
  for (let i = 0; i < c; i++) {
    const pos = minFirst ? 0 : z.members.length - 1;
    const m = unchecked(z.members[pos]);
    const s = unchecked(z.sorted[pos]);
    z.remove(m);
    replyString(m);
    replyDouble(s);
  }
  if (z.members.length == 0) objs.delete(k);
}

function cmdZcard(n: i32): void {
  if (n != 2) { replyArity(); return; }
  const o = lookup(argKey(1), KIND_ZSET, false);
  if (o == null) { if (wrongType) replyWrongType(); else replyInt(0); return; }
  replyInt(changetype<ZSetObj>(o).members.length);
}

function cmdZscore(n: i32): void {
  if (n != 3) { replyArity(); return; }
  const o = lookup(argKey(1), KIND_ZSET, false);
  if (o == null) { if (wrongType) replyWrongType(); else replyNil(); return; }
  const z = changetype<ZSetObj>(o);
  const m = argKey(2);
  if (z.scores.has(m)) replyDouble(z.scores.get(m)); else replyNil();
}

function cmdZrem(n: i32): void {
  if (n < 3) { replyArity(); return; }
  const k = argKey(1);
  const o = lookup(k, KIND_ZSET, false);
  if (o == null) { if (wrongType) replyWrongType(); else replyInt(0); return; }
  const z = changetype<ZSetObj>(o);
  let removed: i64 = 0;
  for (let i = 2; i < n; i++) if (z.remove(argKey(i))) removed++;
  if (z.members.length == 0) objs.delete(k);
  replyInt(removed);
}

function cmdZrange(n: i32): void {
  if (n < 4) { replyArity(); return; }
  const withScores = n == 5 && argIs(4, "WITHSCORES");
  if (n > 5 || (n == 5 && !withScores)) { replyError("ERR syntax error"); return; }
  if (!argInt(2)) return;
  const start = incrValue;
  if (!argInt(3)) return;
  const stop = incrValue;
  const o = lookup(argKey(1), KIND_ZSET, false);
  if (o == null) { if (wrongType) replyWrongType(); else replyArray(0); return; }
  const z = changetype<ZSetObj>(o);
  resolveRange(start, stop, z.members.length);
  replyArray(withScores ? <i64>rangeCount * 2 : <i64>rangeCount);
  for (let i = 0; i < rangeCount; i++) {
    replyString(unchecked(z.members[rangeStart + i]));
    if (withScores) replyDouble(unchecked(z.sorted[rangeStart + i]));
  }
}

// --- streams ---

/** Parses a stream ID "ms" or "ms-seq" (or "ms-*" when `allowSeqStar`) in argument i into
 *  idMs/idSeq (idSeqStar if "ms-*"); false if malformed. */
let idMs: u64 = 0;
let idSeq: u64 = 0;
let idSeqStar: bool = false;
function parseU64(p: usize, n: i32): bool {
  if (n == 0 || n > 20) return false;
  let v: u64 = 0;
  for (let i = 0; i < n; i++) {
    const c = <u32>load<u8>(p + <usize>i) - 0x30;
    if (c > 9) return false;
    if (v > (u64.MAX_VALUE - c) / 10) return false;
    v = v * 10 + c;
  }
  parsedU64 = v;
  return true;
}
let parsedU64: u64 = 0;
function parseStreamId(i: i32, missingSeq: u64, allowSeqStar: bool): bool {
  const p = unchecked(argP[i]);
  const n = unchecked(argL[i]);
  let dash = -1;
  for (let j = 0; j < n; j++) if (load<u8>(p + <usize>j) == 0x2d) { dash = j; break; }
  idSeqStar = false;
  if (dash < 0) {
    if (!parseU64(p, n)) return false;
    idMs = parsedU64;
    idSeq = missingSeq;
    return true;
  }
  if (!parseU64(p, dash)) return false;
  idMs = parsedU64;
  if (allowSeqStar && n - dash - 1 == 1 && load<u8>(p + <usize>(dash + 1)) == 0x2a) { idSeqStar = true; return true; }
  if (!parseU64(p + <usize>(dash + 1), n - dash - 1)) return false;
  idSeq = parsedU64;
  return true;
}

function replyStreamId(ms: u64, seq: u64): void {
  const save = out.len;
  out.uint(ms); out.byte(0x2d); out.uint(seq);
  const len = out.len - save;
  const text = new ArrayBuffer(len);
  memory.copy(changetype<usize>(text), out.ptr + <usize>save, <usize>len);
  out.len = save;
  replyBulk(changetype<usize>(text), len);
}

/** XADD key [NOMKSTREAM] [MAXLEN [=|~] n] <* | ms | ms-seq | ms-*> field value [field value ...] */
function cmdXadd(n: i32): void {
  if (n < 5) { replyArity(); return; }
  let i = 2;
  let noMake = false;
  let maxLen: i64 = -1;
  // (Not `for (;;) { if (..) { ..; continue; } break; }`: AssemblyScript 0.28.20 takes the code after
  // such a loop for unreachable and drops it.)
  let options = true;
  while (options && i < n) {
    if (argIs(i, "NOMKSTREAM")) {
      noMake = true;
      i++;
    } else if (argIs(i, "MAXLEN")) {
      i++;
      if (i < n && (argIs(i, "=") || argIs(i, "~"))) i++;
      if (i >= n) { replyError("ERR syntax error"); return; }
      if (!argInt(i)) return;
      if (incrValue < 0) { replyError("ERR The MAXLEN argument must be >= 0."); return; }
      maxLen = incrValue;
      i++;
    } else {
      options = false;
    }
  }
  const autoId = argIs(i, "*");
  if (!autoId && !parseStreamId(i, 0, true)) { replyError("ERR Invalid stream ID specified as stream command argument"); return; }
  const k = argKey(1);
  const existing = lookup(k, KIND_STREAM, false);
  if (existing == null && wrongType) { replyWrongType(); return; }
  if (existing == null && noMake) { replyNil(); return; }
  let lastMs: u64 = 0;
  let lastSeq: u64 = 0;
  if (existing != null) { lastMs = changetype<StreamObj>(existing).lastMs; lastSeq = changetype<StreamObj>(existing).lastSeq; }
  let ms: u64;
  let seq: u64;
  if (autoId) {
    // the clock is read through the ABI (logged), so the backup computes the same ID
    const now = <u64>(clock_now(0) / 1_000_000);
    if (now > lastMs) { ms = now; seq = 0; } else { ms = lastMs; seq = lastSeq + 1; }
  } else if (idSeqStar) {
    ms = idMs;
    if (ms == lastMs && existing != null) seq = lastSeq + 1; else seq = ms == 0 ? 1 : 0;
  } else {
    ms = idMs;
    seq = idSeq;
  }
  if (ms == 0 && seq == 0) { replyError("ERR The ID specified in XADD must be greater than 0-0"); return; }
  if (existing != null && (ms < lastMs || (ms == lastMs && seq <= lastSeq))) {
    replyError("ERR The ID specified in XADD is equal or smaller than the target stream top item");
    return;
  }
  const st = changetype<StreamObj>(lookup(k, KIND_STREAM, true));
  const fields = new Array<ArrayBuffer>();
  for (let j = i + 1; j < n; j++) fields.push(argValue(j));
  st.entries.push(new StreamEntry(ms, seq, fields));
  st.lastMs = ms;
  st.lastSeq = seq;
  if (maxLen >= 0 && <i64>st.entries.length > maxLen) {
    const drop = st.entries.length - <i32>maxLen;
    st.entries = st.entries.slice(drop);
  }
  replyStreamId(ms, seq);
}

function cmdXlen(n: i32): void {
  if (n != 2) { replyArity(); return; }
  const o = lookup(argKey(1), KIND_STREAM, false);
  if (o == null) { if (wrongType) replyWrongType(); else replyInt(0); return; }
  replyInt(changetype<StreamObj>(o).entries.length);
}

/** XRANGE key start end [COUNT n]; start/end are "-", "+", "ms" or "ms-seq". */
function cmdXrange(n: i32): void {
  if (n != 4 && n != 6) { replyArity(); return; }
  let count: i64 = -1;
  if (n == 6) {
    if (!argIs(4, "COUNT")) { replyError("ERR syntax error"); return; }
    if (!argInt(5)) return;
    count = incrValue;
  }
  let sMs: u64 = 0, sSeq: u64 = 0, eMs: u64 = u64.MAX_VALUE, eSeq: u64 = u64.MAX_VALUE;
  if (!argIs(2, "-")) {
    if (!parseStreamId(2, 0, false)) { replyError("ERR Invalid stream ID specified as stream command argument"); return; }
    sMs = idMs; sSeq = idSeq;
  }
  if (!argIs(3, "+")) {
    if (!parseStreamId(3, u64.MAX_VALUE, false)) { replyError("ERR Invalid stream ID specified as stream command argument"); return; }
    eMs = idMs; eSeq = idSeq;
  }
  const o = lookup(argKey(1), KIND_STREAM, false);
  if (o == null) { if (wrongType) replyWrongType(); else replyArray(0); return; }
  const entries = changetype<StreamObj>(o).entries;
  // entries are in ID order: find the first at or after start, count those up to end
  let first = 0;
  while (first < entries.length) {
    const e = unchecked(entries[first]);
    if (e.ms > sMs || (e.ms == sMs && e.seq >= sSeq)) break;
    first++;
  }
  let last = first;
  while (last < entries.length && (count < 0 || <i64>(last - first) < count)) {
    const e = unchecked(entries[last]);
    if (e.ms > eMs || (e.ms == eMs && e.seq > eSeq)) break;
    last++;
  }
  replyArray(last - first);
  for (let j = first; j < last; j++) {
    const e = unchecked(entries[j]);
    replyArray(2);
    replyStreamId(e.ms, e.seq);
    replyArray(e.fields.length);
    for (let f = 0; f < e.fields.length; f++) replyBuffer(unchecked(e.fields[f]));
  }
}

// --- keyspace and server ---

function cmdDel(n: i32): void {
  if (n < 2) { replyArity(); return; }
  let c: i64 = 0;
  for (let i = 1; i < n; i++) if (deleteKey(argKey(i))) c++;
  replyInt(c);
}

function cmdExists(n: i32): void {
  if (n < 2) { replyArity(); return; }
  let c: i64 = 0;
  for (let i = 1; i < n; i++) if (keyExists(argKey(i))) c++;
  replyInt(c);
}

function cmdType(n: i32): void {
  if (n != 2) { replyArity(); return; }
  const k = argKey(1);
  if (db.has(k)) { replySimple("string"); return; }
  if (!objs.has(k)) { replySimple("none"); return; }
  const kind = objs.get(k).kind;
  if (kind == KIND_LIST) replySimple("list");
  else if (kind == KIND_SET) replySimple("set");
  else if (kind == KIND_HASH) replySimple("hash");
  else if (kind == KIND_ZSET) replySimple("zset");
  else replySimple("stream");
}

/** CONFIG GET name [name ...]: the few parameters clients ask about (redis-benchmark reads "save"
 *  and "appendonly"): this server keeps no files of its own, the backup is its durability. */
function cmdConfig(n: i32): void {
  if (n >= 2 && argIs(1, "GET")) {
    if (n < 3) { replyError("ERR wrong number of arguments for 'config|get' command"); return; }
    let saveAsked = false;
    let aofAsked = false;
    for (let i = 2; i < n; i++) {
      if (argIs(i, "SAVE") || argIs(i, "*")) saveAsked = true;
      if (argIs(i, "APPENDONLY") || argIs(i, "*")) aofAsked = true;
    }
    replyArray((saveAsked ? 2 : 0) + (aofAsked ? 2 : 0));
    if (saveAsked) { replyString("save"); replyString(""); }
    if (aofAsked) { replyString("appendonly"); replyString("no"); }
  } else {
    replyError("ERR unknown subcommand or wrong number of arguments for 'config' command");
  }
}

function replyUnknown(): void {
  out.str("-ERR unknown command '");
  appendSanitizedName(false);
  out.str("'\r\n");
}

/** Dispatches on the command name (by its first letter, then the whole name). */
function execute(conn: Conn): void {
  const n = argc;
  let c = <u32>load<u8>(unchecked(argP[0]));
  if (c >= 0x61 && c <= 0x7a) c -= 0x20;
  switch (c) {
    case 0x47: // G
      if (argIs(0, "GET")) { cmdGet(n); return; }
      break;
    case 0x53: // S
      if (argIs(0, "SET")) { cmdSet(n); return; }
      if (argIs(0, "SADD")) { cmdSadd(n); return; }
      if (argIs(0, "SPOP")) { cmdSpop(n); return; }
      if (argIs(0, "SREM")) { cmdSrem(n); return; }
      if (argIs(0, "SCARD")) { cmdScard(n); return; }
      if (argIs(0, "SISMEMBER")) { cmdSismember(n); return; }
      if (argIs(0, "SMEMBERS")) { cmdSmembers(n); return; }
      break;
    case 0x50: // P
      if (argIs(0, "PING")) {
        if (n == 1) replySimple("PONG");
        else if (n == 2) replyBulk(unchecked(argP[1]), unchecked(argL[1]));
        else replyArity();
        return;
      }
      break;
    case 0x49: // I
      if (argIs(0, "INCR")) { cmdIncr(n); return; }
      break;
    case 0x4c: // L
      if (argIs(0, "LPUSH")) { cmdPush(n, true); return; }
      if (argIs(0, "LPOP")) { cmdPop(n, true); return; }
      if (argIs(0, "LRANGE")) { cmdLrange(n); return; }
      if (argIs(0, "LLEN")) { cmdLlen(n); return; }
      break;
    case 0x52: // R
      if (argIs(0, "RPUSH")) { cmdPush(n, false); return; }
      if (argIs(0, "RPOP")) { cmdPop(n, false); return; }
      break;
    case 0x48: // H
      if (argIs(0, "HSET")) { cmdHset(n); return; }
      if (argIs(0, "HGET")) { cmdHget(n); return; }
      if (argIs(0, "HDEL")) { cmdHdel(n); return; }
      if (argIs(0, "HLEN")) { cmdHlen(n); return; }
      if (argIs(0, "HGETALL")) { cmdHgetall(n); return; }
      break;
    case 0x5a: // Z
      if (argIs(0, "ZADD")) { cmdZadd(n); return; }
      if (argIs(0, "ZPOPMIN")) { cmdZpop(n, true); return; }
      if (argIs(0, "ZPOPMAX")) { cmdZpop(n, false); return; }
      if (argIs(0, "ZRANGE")) { cmdZrange(n); return; }
      if (argIs(0, "ZCARD")) { cmdZcard(n); return; }
      if (argIs(0, "ZSCORE")) { cmdZscore(n); return; }
      if (argIs(0, "ZREM")) { cmdZrem(n); return; }
      break;
    case 0x4d: // M
      if (argIs(0, "MSET")) { cmdMset(n); return; }
      if (argIs(0, "MGET")) { cmdMget(n); return; }
      break;
    case 0x58: // X
      if (argIs(0, "XADD")) { cmdXadd(n); return; }
      if (argIs(0, "XLEN")) { cmdXlen(n); return; }
      if (argIs(0, "XRANGE")) { cmdXrange(n); return; }
      break;
    case 0x44: // D
      if (argIs(0, "DEL")) { cmdDel(n); return; }
      if (argIs(0, "DBSIZE")) {
        if (n != 1) replyArity(); else replyInt(db.size + objs.size);
        return;
      }
      break;
    case 0x45: // E
      if (argIs(0, "EXISTS")) { cmdExists(n); return; }
      if (argIs(0, "ECHO")) {
        if (n != 2) replyArity(); else replyBulk(unchecked(argP[1]), unchecked(argL[1]));
        return;
      }
      break;
    case 0x54: // T
      if (argIs(0, "TYPE")) { cmdType(n); return; }
      break;
    case 0x46: // F
      if (argIs(0, "FLUSHALL")) {
        if (n > 2 || (n == 2 && !argIs(1, "ASYNC") && !argIs(1, "SYNC"))) { replyError("ERR syntax error"); return; }
        db.clear();
        objs.clear();
        replySimple("OK");
        return;
      }
      break;
    case 0x51: // Q
      if (argIs(0, "QUIT")) { replySimple("OK"); conn.closing = true; return; }
      break;
    case 0x43: // C
      if (argIs(0, "COMMAND")) { replyArray(0); return; }
      if (argIs(0, "CONFIG")) { cmdConfig(n); return; }
      break;
  }
  replyUnknown();
}

// ---------------------------------------------------------------------------------------------
// Connection handling.

function dropConn(conn: Conn): void {
  conn.input.release();
  conns.delete(conn.id);
}

function onData(conn: Conn, n: u32): void {
  const input = conn.input;
  input.reserve(<i32>n);
  ringCopy(input.ptr + <usize>input.len, 0, n);
  input.len += <i32>n;

  let pos = 0;
  while (!conn.closing && pos < input.len) {
    const r = parseCommand(input.ptr + <usize>pos, input.len - pos);
    if (r == 0) break;
    if (r < 0) {
      out.str("-ERR Protocol error: ");
      out.str(protoError);
      out.str("\r\n");
      conn.closing = true;
      break;
    }
    pos += r;
    if (argc > 0) execute(conn);
    if (out.len >= FLUSH_AT) flush(conn);
  }
  input.consume(pos);
  if (!conn.closing && input.len > MAX_PENDING) {
    replyError("ERR max buffered input exceeded (1 MiB)");
    conn.closing = true;
  }
  flush(conn);
  if (conn.closing) {
    net_close(<i32>conn.id);
    dropConn(conn);
  }
}

export function ftvm_init(): void {
  ringInit();
}

export function ftvm_step(): i32 {
  while (ringNext()) {
    const t = recType;
    const id = recId;
    if (t == REC_DATA) {
      if (conns.has(id)) onData(conns.get(id), recLen);
      // data for a connection we already closed (QUIT, error) is dropped
    } else if (t == REC_OPEN) {
      if (!conns.has(id)) conns.set(id, new Conn(id));
    } else if (t == REC_CLOSE) {
      if (conns.has(id)) dropConn(conns.get(id));
      net_close(<i32>id);
    }
    // TIMER records: kv arms no timers; ignore
    ringConsume();
  }
  return 0;
}

// kv: a key/value server speaking a RESP subset on ftvm virtual connections, so that real
// `redis-cli` and `redis-benchmark` can talk to it.
//
// Commands: PING [msg], ECHO msg, GET k, SET k v, DEL k [k ...], INCR k, EXISTS k [k ...], DBSIZE,
// MGET k [k ...], FLUSHALL [ASYNC|SYNC], QUIT, COMMAND ... (-> *0), CONFIG GET ... (-> *0);
// anything else -> "-ERR unknown command 'x'".
//
// Input: RESP arrays of bulk strings and inline commands ("PING\r\n"; arguments split on spaces and
// tabs, no quoting). Commands may be split across DATA records and many may be pipelined in one
// record; each connection has its own input buffer, bounded at 1 MiB of unparsed input (beyond
// that the connection gets an error and is closed). Keys and values are binary-safe.
//
// Build: asc kv.ts --runtime incremental -O3

import {
  ringInit, ringNext, ringConsume, ringCopy, recType, recId, recLen,
  REC_OPEN, REC_DATA, REC_CLOSE, net_send, net_close,
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
function parseStrictInt(b: ArrayBuffer): bool {
  const p = changetype<usize>(b);
  const n = b.byteLength;
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

function int64Buffer(v: i64): ArrayBuffer {
  const save = out.len;
  out.int(v);
  const n = out.len - save;
  const b = new ArrayBuffer(n);
  memory.copy(changetype<usize>(b), out.ptr + <usize>save, <usize>n);
  out.len = save;
  return b;
}

function execute(conn: Conn): void {
  const n = argc;
  if (argIs(0, "GET")) {
    if (n != 2) { replyArity(); return; }
    const k = argKey(1);
    if (db.has(k)) replyBuffer(db.get(k)); else replyNil();
  } else if (argIs(0, "SET")) {
    if (n < 3) { replyArity(); return; }
    if (n > 3) { replyError("ERR syntax error"); return; }
    db.set(argKey(1), argValue(2));
    replySimple("OK");
  } else if (argIs(0, "PING")) {
    if (n == 1) replySimple("PONG");
    else if (n == 2) replyBulk(unchecked(argP[1]), unchecked(argL[1]));
    else replyArity();
  } else if (argIs(0, "INCR")) {
    if (n != 2) { replyArity(); return; }
    const k = argKey(1);
    let v: i64 = 0;
    if (db.has(k)) {
      if (!parseStrictInt(db.get(k))) { replyError("ERR value is not an integer or out of range"); return; }
      v = incrValue;
    }
    if (v == i64.MAX_VALUE) { replyError("ERR increment or decrement would overflow"); return; }
    v++;
    db.set(k, int64Buffer(v));
    replyInt(v);
  } else if (argIs(0, "MGET")) {
    if (n < 2) { replyArity(); return; }
    replyArray(n - 1);
    for (let i = 1; i < n; i++) {
      const k = argKey(i);
      if (db.has(k)) replyBuffer(db.get(k)); else replyNil();
    }
  } else if (argIs(0, "DEL")) {
    if (n < 2) { replyArity(); return; }
    let c: i64 = 0;
    for (let i = 1; i < n; i++) if (db.delete(argKey(i))) c++;
    replyInt(c);
  } else if (argIs(0, "EXISTS")) {
    if (n < 2) { replyArity(); return; }
    let c: i64 = 0;
    for (let i = 1; i < n; i++) if (db.has(argKey(i))) c++;
    replyInt(c);
  } else if (argIs(0, "ECHO")) {
    if (n != 2) { replyArity(); return; }
    replyBulk(unchecked(argP[1]), unchecked(argL[1]));
  } else if (argIs(0, "DBSIZE")) {
    if (n != 1) { replyArity(); return; }
    replyInt(db.size);
  } else if (argIs(0, "FLUSHALL")) {
    if (n > 2 || (n == 2 && !argIs(1, "ASYNC") && !argIs(1, "SYNC"))) { replyError("ERR syntax error"); return; }
    db.clear();
    replySimple("OK");
  } else if (argIs(0, "QUIT")) {
    replySimple("OK");
    conn.closing = true;
  } else if (argIs(0, "COMMAND")) {
    replyArray(0);
  } else if (argIs(0, "CONFIG")) {
    if (n >= 2 && argIs(1, "GET")) {
      if (n < 3) { replyArity(); return; }
      replyArray(0);
    } else {
      replyError("ERR unknown subcommand or wrong number of arguments for 'config' command");
    }
  } else {
    out.str("-ERR unknown command '");
    appendSanitizedName(false);
    out.str("'\r\n");
  }
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

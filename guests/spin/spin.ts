// spin: a compute-bound reactor guest that polls its receive ring mid-computation.
//
// State: a u64 accumulator, the number of work iterations done so far and the number still
// outstanding (kept in linear memory, so a snapshot holds them).
//
// DATA records carry ASCII text:
//   "spin N"  (N decimal, optionally followed by "\n" or "\r\n")  -> adds N iterations of work,
//             replies "ok\n" on that connection;
//   anything else -> its bytes are mixed into the accumulator and the guest replies
//             "acc <16 hex digits> iter <iterations done so far>\n" on that connection.
//
// ftvm_step runs the outstanding work in chunks of 4096 iterations and polls the ring between
// chunks, so a record the VMM delivers while the guest computes is handled at a deterministic
// point of the computation (it changes the accumulator there). It returns 0 when all work is done.
//
// Build: asc spin.ts --runtime stub -O3   (no allocation at all after start-up)

import {
  ringInit, ringNext, ringConsume, ringByte, ringPending, recType, recId, recLen,
  REC_DATA, REC_CLOSE, net_close, lineReset, lineStr, lineHex, lineU64, lineSend,
} from "../sdk/ftvm";

const CHUNK: u64 = 4096;

// acc @0, done @8, pending @16
const STATE: usize = memory.data(24, 8);

// @ts-ignore: decorator
@inline function getAcc(): u64 { return load<u64>(STATE, 0); }
// @ts-ignore: decorator
@inline function getDone(): u64 { return load<u64>(STATE, 8); }
// @ts-ignore: decorator
@inline function getPending(): u64 { return load<u64>(STATE, 16); }

/** The work: `n` rounds of xorshift64 + multiply, with the round counter folded in. */
function work(acc: u64, start: u64, n: u64): u64 {
  const end = start + n;
  for (let i = start; i < end; i++) {
    acc ^= acc << 13;
    acc ^= acc >> 7;
    acc ^= acc << 17;
    acc = acc * 0x2545f4914f6cdd1d + i;
  }
  return acc;
}

/** Mixes one input byte into the accumulator. */
// @ts-ignore: decorator
@inline function mixByte(acc: u64, b: u64): u64 {
  acc = (acc ^ b) * 0x100000001b3;
  return acc ^ (acc >> 29);
}

/** If the current DATA record is "spin N[\r]\n?", returns N; otherwise -1. */
function parseSpin(len: u32): i64 {
  if (len < 6) return -1;
  if (ringByte(0) != 0x73 || ringByte(1) != 0x70 || ringByte(2) != 0x69 || ringByte(3) != 0x6e || ringByte(4) != 0x20) return -1;
  let end = len;
  if (ringByte(end - 1) == 0x0a) { end--; if (end > 5 && ringByte(end - 1) == 0x0d) end--; }
  const digits = end - 5;
  if (digits < 1 || digits > 18) return -1;
  let n: i64 = 0;
  for (let i: u32 = 5; i < end; i++) {
    const c = <i32>ringByte(i) - 0x30;
    if (c < 0 || c > 9) return -1;
    n = n * 10 + c;
  }
  return n;
}

/** Handles every record currently in the ring. */
function pollRing(): void {
  while (ringNext()) {
    const t = recType;
    const conn = recId;
    if (t == REC_DATA) {
      const len = recLen;
      const n = parseSpin(len);
      lineReset();
      if (n >= 0) {
        store<u64>(STATE, getPending() + <u64>n, 16);
        lineStr("ok\n");
      } else {
        let acc = getAcc();
        for (let i: u32 = 0; i < len; i++) acc = mixByte(acc, <u64>ringByte(i));
        store<u64>(STATE, acc, 0);
        lineStr("acc ");
        lineHex(acc, 16);
        lineStr(" iter ");
        lineU64(getDone());
        lineStr("\n");
      }
      lineSend(conn);
    } else if (t == REC_CLOSE) {
      net_close(<i32>conn);
    }
    // OPEN: nothing to set up; TIMER: spin arms none
    ringConsume();
  }
}

export function ftvm_init(): void {
  store<u64>(STATE, 0x9e3779b97f4a7c15, 0);
  store<u64>(STATE, 0, 8);
  store<u64>(STATE, 0, 16);
  ringInit();
}

export function ftvm_step(): i32 {
  pollRing();
  let pending = getPending();
  while (pending != 0) {
    const n = pending < CHUNK ? pending : CHUNK;
    const done = getDone();
    store<u64>(STATE, work(getAcc(), done, n), 0);
    store<u64>(STATE, done + n, 8);
    store<u64>(STATE, pending - n, 16);
    if (ringPending() != 0) pollRing();
    pending = getPending();
  }
  return 0;
}

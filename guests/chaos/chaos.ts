// chaos: hammers the nondeterministic imports so that record/replay has something to get wrong.
//
// On init, on every TIMER record and on every DATA record it performs a pseudo-random mix (driven
// by bytes from random_fill) of: clock_now(0), clock_now(1), random_fill of 1..64 bytes, timer_set
// of timers 0..7 with delays 0..20 ms, timer_cancel, and memory.grow(1) (at most 64 pages beyond
// the initial size, in total). Everything it sees goes into an FNV-1a-64 digest, printed with
// console_write as "chaos <event> <n> <digest>\n" after every event; a DATA record is also answered
// with "chaos <digest>\n" on its connection.
//
// It keeps at least one timer armed until it has handled 2000 TIMER records; after that it arms
// no new timers, so once the last armed timers have fired a recording ends.
//
// No Math.random and no Date: those would import env.seed / Date.now, which the ABI refuses.
//
// Build: asc chaos.ts --runtime stub -O3   (no allocation at all)

import {
  ringInit, ringNext, ringConsume, ringByte, recType, recId, recLen,
  REC_OPEN, REC_DATA, REC_CLOSE, REC_TIMER,
  clock_now, random_fill, timer_set, timer_cancel, net_close,
  lineReset, lineStr, lineHex, lineU64, lineSend, linePrint,
  fnv1a64, fnv1a64u64, FNV64_OFFSET,
} from "../sdk/ftvm";

const TIMER_LIMIT: u32 = 2000;
const MAX_GROW_PAGES: i32 = 64;
const NUM_TIMERS: i32 = 8;

const RAND: usize = memory.data(64, 8);

let digest: u64 = FNV64_OFFSET;
let timersHandled: u32 = 0;
let armed: u32 = 0; // bit i: timer i is armed
let grownPages: i32 = 0;
let events: u64 = 0;
let prng: u64 = 0;

// @ts-ignore: decorator
@inline function mix(v: u64): void { digest = fnv1a64u64(digest, v); }

/** xorshift64* seeded from random_fill bytes. */
function next(): u64 {
  let x = prng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  prng = x;
  return x * 0x2545f4914f6cdd1d;
}

function armTimer(id: i32, delay: i32): void {
  timer_set(id, delay);
  armed |= <u32>1 << id;
  mix(0x7100 | <u64>id);
  mix(<u64>delay);
}

/** One burst of nondeterministic calls. */
function chaos(): void {
  random_fill(RAND, 16);
  digest = fnv1a64(digest, RAND, 16);
  prng = load<u64>(RAND) ^ (load<u64>(RAND, 8) | 1);
  if (prng == 0) prng = 0x9e3779b97f4a7c15;
  const ops = 1 + <i32>(next() % 12);
  for (let k = 0; k < ops; k++) {
    const r = next();
    const arg = r >> 8;
    switch (<i32>(r % 6)) {
      case 0: {
        mix(<u64>clock_now(0));
        break;
      }
      case 1: {
        mix(<u64>clock_now(1));
        break;
      }
      case 2: {
        const n = 1 + <u32>(arg % 64);
        random_fill(RAND, n);
        digest = fnv1a64(digest, RAND, n);
        break;
      }
      case 3: {
        if (timersHandled < TIMER_LIMIT) armTimer(<i32>(arg & 7), <i32>((arg >> 3) % 21));
        break;
      }
      case 4: {
        const id = <i32>(arg & 7);
        timer_cancel(id);
        armed &= ~(<u32>1 << id);
        mix(0x7c00 | <u64>id);
        break;
      }
      default: {
        if (grownPages < MAX_GROW_PAGES) {
          const old = memory.grow(1);
          grownPages++;
          mix(<u64>old);
          // touch the new page so it carries state
          if (old >= 0) store<u64>(<usize>old << 16, digest ^ events);
        }
        break;
      }
    }
  }
  // keep the recording alive until TIMER_LIMIT timer records have been handled
  if (timersHandled < TIMER_LIMIT && armed == 0) {
    armTimer(<i32>(next() % <u64>NUM_TIMERS), <i32>(next() % 21));
  }
  events++;
}

function report(kind: string, id: u64): void {
  lineReset();
  lineStr("chaos ");
  lineStr(kind);
  lineStr(" ");
  lineU64(id);
  lineStr(" #");
  lineU64(events);
  lineStr(" ");
  lineHex(digest, 16);
  lineStr("\n");
  linePrint();
}

export function ftvm_init(): void {
  ringInit();
  chaos();
  report("init", 0);
}

export function ftvm_step(): i32 {
  while (ringNext()) {
    const t = recType;
    const id = recId;
    const len = recLen;
    mix(<u64>t << 32 | <u64>id);
    if (t == REC_TIMER) {
      timersHandled++;
      if (id < 32) armed &= ~(<u32>1 << id);
      chaos();
      report("timer", id);
    } else if (t == REC_DATA) {
      mix(<u64>len);
      for (let i: u32 = 0; i < len; i++) digest = (digest ^ <u64>ringByte(i)) * 0x100000001b3;
      chaos();
      report("data", id);
      lineReset();
      lineStr("chaos ");
      lineHex(digest, 16);
      lineStr("\n");
      lineSend(id);
    } else if (t == REC_CLOSE) {
      net_close(<i32>id);
    } else if (t == REC_OPEN) {
      // nothing to set up
    }
    ringConsume();
  }
  return 0;
}

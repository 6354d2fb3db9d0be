// Benchmark kernels (AssemblyScript, --runtime stub, no imports except env.abort).
// Used to compare instrumented vs plain wasm speed. Every kernel is deterministic: it
// re-initialises its inputs on every call, so the same n always gives the same result.
// The n values that take ~100-400 ms in plain wasm are in kernels.json.

const HASH_REPEATS: i32 = 16;

// One scratch buffer shared by hash_bytes and matmul. With the stub runtime memory is never
// freed, so it is only re-allocated when a call needs more than any previous call.
let scratch: usize = 0;
let scratchSize: usize = 0;
function getScratch(size: usize): usize {
  if (size > scratchSize) {
    scratch = heap.alloc(size);
    scratchSize = size;
  }
  return scratch;
}

/**
 * FNV-1a (32-bit) over a buffer of n pseudo-random bytes, hashed HASH_REPEATS (16) times in a
 * row (the hash state carries over), i.e. 16*n bytes hashed. Default n = 12 MiB = 12582912 (kernels.json), ~300 ms plain.
 */
export function hash_bytes(n: i32): i32 {
  if (n <= 0) return 0;
  const p = getScratch(<usize>n);
  let x: u32 = 0x12345678;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    store<u8>(p + <usize>i, <u8>x);
  }
  let h: u32 = 0x811c9dc5;
  for (let r = 0; r < HASH_REPEATS; r++) {
    for (let i = 0; i < n; i++) {
      h = (h ^ <u32>load<u8>(p + <usize>i)) * 16777619;
    }
  }
  return <i32>h;
}

/** A dependent integer loop of n iterations. */
export function sum_loop(n: i32): i64 {
  let s: i64 = 0;
  for (let i = 0; i < n; i++) {
    s += (<i64>i * <i64>i) ^ (s >> 7);
  }
  return s;
}

/** Recursive Fibonacci. */
export function fib(n: i32): i32 {
  return n < 2 ? n : fib(n - 1) + fib(n - 2);
}

/** C = A * B for n x n f64 matrices (filled deterministically); returns a checksum of C. */
export function matmul(n: i32): f64 {
  if (n <= 0) return 0;
  const nn = <usize>n * <usize>n;
  const base = getScratch(nn * 24);
  const a = base;
  const b = base + nn * 8;
  const c = base + nn * 16;
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      const k = (<usize>i * <usize>n + <usize>j) << 3;
      store<f64>(a + k, <f64>((i * 7 + j * 3) % 17) * 0.25 + 1.0);
      store<f64>(b + k, <f64>((i * 5 + j * 11) % 13) * 0.5 - 2.0);
      store<f64>(c + k, 0.0);
    }
  }
  // i-k-j order: the inner loop streams rows of B and C
  for (let i = 0; i < n; i++) {
    const crow = c + ((<usize>i * <usize>n) << 3);
    for (let k = 0; k < n; k++) {
      const aik = load<f64>(a + ((<usize>i * <usize>n + <usize>k) << 3));
      const brow = b + ((<usize>k * <usize>n) << 3);
      for (let j = 0; j < n; j++) {
        const off = <usize>j << 3;
        store<f64>(crow + off, load<f64>(crow + off) + aik * load<f64>(brow + off));
      }
    }
  }
  let sum: f64 = 0;
  for (let i: usize = 0; i < nn; i++) {
    sum += load<f64>(c + (i << 3)) * <f64>((i % 7) + 1);
  }
  return sum;
}

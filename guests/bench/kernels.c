/*
 * Benchmark kernels in C, built as a WASI reactor with no imports:
 *   clang --target=wasm32-wasi -O2 -mexec-model=reactor -o kernels_c.wasm kernels.c
 * Exports c_qsort(n), c_crc32(n), c_sieve(n) (and the reactor's _initialize, which only runs
 * static constructors: there are none, calling it is optional). Every kernel re-initialises its
 * input on each call, so the same n always gives the same result. The n values used by the
 * benchmark are in kernels.json.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT(name) __attribute__((export_name(name)))

/* One growable scratch area (grown with realloc, never shrunk). */
static void *scratch;
static size_t scratch_size;
static void *get_scratch(size_t size) {
  if (size > scratch_size) {
    void *p = realloc(scratch, size);
    if (!p) __builtin_trap();
    scratch = p;
    scratch_size = size;
  }
  return scratch;
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return (x > y) - (x < y);
}

/* qsort of n pseudo-random u32; returns a checksum of the sorted array. */
EXPORT("c_qsort") uint32_t c_qsort(int32_t n) {
  if (n <= 0) return 0;
  uint32_t *v = get_scratch((size_t)n * sizeof *v);
  uint32_t x = 0x9e3779b9u;
  for (int32_t i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    v[i] = x;
  }
  qsort(v, (size_t)n, sizeof *v, cmp_u32);
  uint32_t h = 2166136261u;
  for (int32_t i = 0; i < n; i++) h = (h ^ v[i]) * 16777619u;
  return h;
}

/* CRC-32 (IEEE, table-driven) over n bytes: a 1 MiB pseudo-random block hashed repeatedly
 * (the CRC state carries over) until n bytes have been processed. */
#define CRC_BLOCK (1u << 20)
EXPORT("c_crc32") uint32_t c_crc32(int32_t n) {
  if (n <= 0) return 0;
  uint32_t table[256];
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    table[i] = c;
  }
  uint8_t *buf = get_scratch(CRC_BLOCK);
  uint32_t x = 0x2545f491u;
  for (uint32_t i = 0; i < CRC_BLOCK; i++) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    buf[i] = (uint8_t)(x >> 24);
  }
  uint32_t c = 0xFFFFFFFFu;
  uint32_t left = (uint32_t)n;
  while (left > 0) {
    uint32_t m = left < CRC_BLOCK ? left : CRC_BLOCK;
    for (uint32_t i = 0; i < m; i++) c = table[(c ^ buf[i]) & 0xFF] ^ (c >> 8);
    left -= m;
  }
  return c ^ 0xFFFFFFFFu;
}

/* Sieve of Eratosthenes up to n; returns (number of primes) * 2654435761 + (largest prime). */
EXPORT("c_sieve") uint32_t c_sieve(int32_t n) {
  if (n < 2) return 0;
  uint8_t *composite = get_scratch((size_t)n + 1);
  memset(composite, 0, (size_t)n + 1);
  uint32_t count = 0, last = 0;
  for (uint32_t i = 2; i <= (uint32_t)n; i++) {
    if (composite[i]) continue;
    count++;
    last = i;
    for (uint64_t j = (uint64_t)i * i; j <= (uint64_t)n; j += i) composite[j] = 1;
  }
  return count * 2654435761u + last;
}

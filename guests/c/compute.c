/*
 * compute: an ordinary WASI command (main) for ftvm.
 *
 * qsort of 200,000 pseudo-random ints, crc32 of a 4 MiB buffer, sieve of Eratosthenes up to
 * 2,000,000; prints each result on stdout. Reads CLOCK_MONOTONIC before and after and prints the
 * elapsed nanoseconds on stderr; prints 16 bytes from getentropy() in hex.
 *
 * Imports (wasi_snapshot_preview1): fd_write, fd_seek, fd_close, fd_fdstat_get (stdio),
 * clock_time_get, random_get, proc_exit -- all in GUEST_ABI.md's subset.
 *
 * Build: clang --target=wasm32-wasi -O2 -o compute_c.wasm compute.c
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define QSORT_N 200000
#define CRC_BYTES (4u << 20)
#define SIEVE_N 2000000

static int values[QSORT_N];
static uint8_t crcbuf[CRC_BYTES];
static uint8_t composite[SIEVE_N + 1];

static uint32_t rng_state = 0x12345678u;
static uint32_t xorshift32(void) {
  uint32_t x = rng_state;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  rng_state = x;
  return x;
}

static int cmp_int(const void *a, const void *b) {
  int x = *(const int *)a, y = *(const int *)b;
  return (x > y) - (x < y);
}

static uint32_t crc_table[256];
static void crc_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    crc_table[i] = c;
  }
}
static uint32_t crc32(const uint8_t *p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; i++) c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int main(void) {
  uint64_t t0 = now_ns();

  /* qsort */
  for (int i = 0; i < QSORT_N; i++) values[i] = (int)(xorshift32() >> 1);
  qsort(values, QSORT_N, sizeof values[0], cmp_int);
  uint64_t qsum = 0;
  int sorted = 1;
  for (int i = 0; i < QSORT_N; i++) {
    qsum = qsum * 31 + (uint32_t)values[i];
    if (i > 0 && values[i - 1] > values[i]) sorted = 0;
  }
  printf("qsort n=%d sorted=%d min=%d median=%d max=%d checksum=%016llx\n", QSORT_N, sorted, values[0],
         values[QSORT_N / 2], values[QSORT_N - 1], (unsigned long long)qsum);

  /* crc32 */
  crc_init();
  for (uint32_t i = 0; i < CRC_BYTES; i++) crcbuf[i] = (uint8_t)(xorshift32() >> 24);
  printf("crc32 bytes=%u crc=%08x\n", CRC_BYTES, crc32(crcbuf, CRC_BYTES));

  /* sieve */
  memset(composite, 0, sizeof composite);
  uint32_t count = 0, last = 0;
  for (uint32_t i = 2; i <= SIEVE_N; i++) {
    if (composite[i]) continue;
    count++;
    last = i;
    for (uint64_t j = (uint64_t)i * i; j <= SIEVE_N; j += i) composite[j] = 1;
  }
  printf("sieve n=%d primes=%u largest=%u\n", SIEVE_N, count, last);

  /* entropy */
  unsigned char ent[16];
  if (getentropy(ent, sizeof ent) != 0) {
    fprintf(stderr, "getentropy failed\n");
    return 1;
  }
  printf("entropy ");
  for (int i = 0; i < 16; i++) printf("%02x", ent[i]);
  printf("\n");

  uint64_t t1 = now_ns();
  fprintf(stderr, "elapsed_ns %llu\n", (unsigned long long)(t1 - t0));
  return 0;
}

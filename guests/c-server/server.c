/*
 * c-server: an ordinary POSIX network service (a key/value store speaking a RESP subset, so that
 * redis-cli, redis-benchmark and ftvm's own RESP clients talk to it), built with clang + wasi-libc and
 * nothing ftvm-specific. The runtime hands it a pre-opened listening socket, as wasmtime's
 * --tcplisten and wazero's --listen do; its descriptor comes from the environment (FTVM_LISTEN_FD,
 * else LISTEN_FD, else 3).
 *
 * Two ways to serve, chosen by argv[1]:
 *   poll      (default) every socket non-blocking, one poll() loop over the listener and all clients
 *   blocking  accept() one client at a time and serve it with blocking recv() until it closes
 *
 * Commands: PING [msg], ECHO msg, GET k, SET k v, MGET k [k ...], DEL k [k ...], INCR k, EXISTS k [k ...], DBSIZE,
 * QUIT, COMMAND (-> *0); anything else -> -ERR. Input: RESP arrays of bulk strings and inline
 * commands; pipelined and split input both work. At most 1 MiB of unparsed input per connection.
 *
 * Build: clang --target=wasm32-wasi -O2 -o c_server.wasm server.c
 */
#include "resp_server.h"

/* ------------------------------------------------------------------ the store */

struct entry {
  char *key;
  size_t klen;
  char *val;
  size_t vlen;
  struct entry *next;
};

static struct entry **table;
static size_t table_size = 1024;
static size_t table_count;

static uint32_t hash_bytes(const char *p, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)p[i]) * 16777619u;
  return h;
}

static struct entry **find_slot(const char *k, size_t n) {
  struct entry **e = &table[hash_bytes(k, n) & (table_size - 1)];
  while (*e && !((*e)->klen == n && memcmp((*e)->key, k, n) == 0)) e = &(*e)->next;
  return e;
}

static void grow_table(void) {
  size_t ns = table_size * 2;
  struct entry **nt = calloc(ns, sizeof *nt);
  if (!nt) return;
  for (size_t i = 0; i < table_size; i++) {
    struct entry *e = table[i];
    while (e) {
      struct entry *next = e->next;
      size_t b = hash_bytes(e->key, e->klen) & (ns - 1);
      e->next = nt[b];
      nt[b] = e;
      e = next;
    }
  }
  free(table);
  table = nt;
  table_size = ns;
}

static void put(const char *k, size_t kl, const char *v, size_t vl) {
  struct entry **s = find_slot(k, kl);
  char *copy = malloc(vl ? vl : 1);
  memcpy(copy, v, vl);
  if (*s) {
    free((*s)->val);
    (*s)->val = copy;
    (*s)->vlen = vl;
    return;
  }
  struct entry *e = malloc(sizeof *e);
  e->key = malloc(kl ? kl : 1);
  memcpy(e->key, k, kl);
  e->klen = kl;
  e->val = copy;
  e->vlen = vl;
  e->next = NULL;
  *s = e;
  if (++table_count > table_size) grow_table();
}

static int del(const char *k, size_t kl) {
  struct entry **s = find_slot(k, kl);
  if (!*s) return 0;
  struct entry *e = *s;
  *s = e->next;
  free(e->key);
  free(e->val);
  free(e);
  table_count--;
  return 1;
}

static void execute(struct client *c, int argc) {
  struct buf *o = &c->out;
  const char *cmd = argv_p[0];
  size_t cl = argv_n[0];
  if (eq(cmd, cl, "PING")) {
    if (argc > 1) buf_bulk(o, argv_p[1], argv_n[1]);
    else buf_str(o, "+PONG\r\n");
  } else if (eq(cmd, cl, "ECHO") && argc == 2) {
    buf_bulk(o, argv_p[1], argv_n[1]);
  } else if (eq(cmd, cl, "SET") && argc >= 3) {
    put(argv_p[1], argv_n[1], argv_p[2], argv_n[2]);
    buf_str(o, "+OK\r\n");
  } else if (eq(cmd, cl, "GET") && argc == 2) {
    struct entry *e = *find_slot(argv_p[1], argv_n[1]);
    if (e) buf_bulk(o, e->val, e->vlen);
    else buf_str(o, "$-1\r\n");
  } else if (eq(cmd, cl, "MGET") && argc >= 2) {
    buf_int(o, '*', argc - 1);
    for (int i = 1; i < argc; i++) {
      struct entry *e = *find_slot(argv_p[i], argv_n[i]);
      if (e) buf_bulk(o, e->val, e->vlen);
      else buf_str(o, "$-1\r\n");
    }
  } else if (eq(cmd, cl, "DEL") && argc >= 2) {
    long long n = 0;
    for (int i = 1; i < argc; i++) n += del(argv_p[i], argv_n[i]);
    buf_int(o, ':', n);
  } else if (eq(cmd, cl, "EXISTS") && argc >= 2) {
    long long n = 0;
    for (int i = 1; i < argc; i++) n += *find_slot(argv_p[i], argv_n[i]) != NULL;
    buf_int(o, ':', n);
  } else if (eq(cmd, cl, "INCR") && argc == 2) {
    struct entry *e = *find_slot(argv_p[1], argv_n[1]);
    long long v = 0;
    if (e) {
      char tmp[32];
      char *end;
      if (e->vlen == 0 || e->vlen >= sizeof tmp) goto notint;
      memcpy(tmp, e->val, e->vlen);
      tmp[e->vlen] = 0;
      errno = 0;
      v = strtoll(tmp, &end, 10);
      if (*end || errno) goto notint;
    }
    v++;
    char num[32];
    int n = snprintf(num, sizeof num, "%lld", v);
    put(argv_p[1], argv_n[1], num, (size_t)n);
    buf_int(o, ':', v);
  } else if (eq(cmd, cl, "DBSIZE")) {
    buf_int(o, ':', (long long)table_count);
  } else if (eq(cmd, cl, "COMMAND")) {
    buf_str(o, "*0\r\n");
  } else if (eq(cmd, cl, "QUIT")) {
    buf_str(o, "+OK\r\n");
    c->quit = 1;
  } else {
    buf_str(o, "-ERR unknown command or wrong number of arguments\r\n");
  }
  return;
notint:
  buf_str(o, "-ERR value is not an integer or out of range\r\n");
}

int main(int argc, char **argv) {
  table = calloc(table_size, sizeof *table);
  return serve(argc, argv);
}

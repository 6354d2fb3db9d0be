/*
 * threaded-kv: the RESP key/value server of guests/c-server, multi-threaded with wasi-threads.
 *
 * The main thread accepts connections on the pre-opened listening socket (its fd from FTVM_LISTEN_FD,
 * else LISTEN_FD, else 3; blocking sock_accept) and hands each to a bounded queue; N worker threads
 * (wasi `thread-spawn`) take connections from it and serve each with blocking recv until it closes, so
 * at most N connections are served at once (the others wait in the queue, then in the listener's
 * backlog). N comes from argv[1], else the environment variable KV_THREADS, else 4 (1..MAX_THREADS).
 * The table is shared by all threads under one futex-based mutex.
 *
 * Commands and replies are c-server's: PING [msg], ECHO msg, GET k, SET k v, MGET k [k ...],
 * DEL k [k ...], INCR k, EXISTS k [k ...], DBSIZE, QUIT, COMMAND (-> *0); anything else -> -ERR. RESP
 * arrays of bulk strings and inline commands; pipelined and split input both work. At most 1 MiB of
 * unparsed input per connection.
 *
 * Freestanding: Debian's wasi-libc is not built with atomics (wasm-ld refuses --shared-memory with it),
 * so this program has no libc: the WASI preview1 calls are declared as the imports they are, and the
 * few helpers it needs (allocator, memcpy, number formatting) are below. Thread stacks are carved from
 * a static array; wasi_thread_start (thread_start.s) switches to one before any C code runs. No TLS.
 *
 * Build (scripts/build-guests.ts):
 *   clang --target=wasm32-wasi -O2 -nostdlib -ffreestanding -matomics -mbulk-memory \
 *     -Wl,--shared-memory -Wl,--import-memory -Wl,--max-memory=67108864 -Wl,--export=wasi_thread_start \
 *     -Wl,--export=_start -Wl,--no-entry -o threaded_kv.wasm server.c thread_start.s
 */
#include <stddef.h>
#include <stdint.h>

#define MAX_THREADS 16
#define THREAD_STACK (64 * 1024)
#define QUEUE_CAP 64
#define MAX_PENDING (1 << 20)
#define MAX_ARGS 1024
#define RECV_CHUNK 16384

/* ------------------------------------------------------------------ WASI preview1 + wasi-threads */

typedef struct {
  const void *buf;
  size_t len;
} ciovec;
typedef struct {
  void *buf;
  size_t len;
} iovec;

#define WASI(name) __attribute__((import_module("wasi_snapshot_preview1"), import_name(#name)))
WASI(fd_write) int32_t wasi_fd_write(int32_t fd, const ciovec *iovs, size_t n, size_t *written);
WASI(fd_close) int32_t wasi_fd_close(int32_t fd);
WASI(sock_accept) int32_t wasi_sock_accept(int32_t fd, int32_t flags, int32_t *out);
WASI(sock_recv) int32_t wasi_sock_recv(int32_t fd, const iovec *iovs, size_t n, int32_t flags, size_t *got, int32_t *oflags);
WASI(sock_send) int32_t wasi_sock_send(int32_t fd, const ciovec *iovs, size_t n, int32_t flags, size_t *sent);
WASI(environ_sizes_get) int32_t wasi_environ_sizes_get(size_t *count, size_t *bytes);
WASI(environ_get) int32_t wasi_environ_get(char **environ, char *buf);
WASI(args_sizes_get) int32_t wasi_args_sizes_get(size_t *count, size_t *bytes);
WASI(args_get) int32_t wasi_args_get(char **argv, char *buf);
WASI(proc_exit) _Noreturn void wasi_proc_exit(int32_t code);
__attribute__((import_module("wasi"), import_name("thread-spawn"))) int32_t wasi_thread_spawn(void *start_arg);

#define ERRNO_AGAIN 6
#define ERRNO_INTR 27

/* ------------------------------------------------------------------ tiny libc */

void *memcpy(void *d, const void *s, size_t n) {
  __builtin_memmove(d, s, n); /* memory.copy (bulk memory) */
  return d;
}
void *memmove(void *d, const void *s, size_t n) {
  __builtin_memmove(d, s, n);
  return d;
}
void *memset(void *d, int c, size_t n) {
  __builtin_memset(d, c, n); /* memory.fill */
  return d;
}
static size_t str_len(const char *s) {
  size_t n = 0;
  while (s[n]) n++;
  return n;
}
static const char *mem_chr(const char *p, char c, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i] == c) return p + i;
  return NULL;
}
static int mem_eq(const char *a, const char *b, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (a[i] != b[i]) return 0;
  return 1;
}
/* A decimal integer at p (optional sign); stops at the first non-digit. */
static long long parse_ll(const char *p, size_t n, size_t *used) {
  size_t i = 0;
  int neg = 0;
  if (i < n && (p[i] == '-' || p[i] == '+')) neg = p[i++] == '-';
  unsigned long long v = 0;
  while (i < n && p[i] >= '0' && p[i] <= '9') v = v * 10 + (unsigned)(p[i++] - '0');
  if (used) *used = i;
  return neg ? -(long long)v : (long long)v;
}
/* Formats v in decimal into out (at least 21 bytes); returns the length. */
static size_t fmt_ll(char *out, long long v) {
  char tmp[24];
  size_t n = 0;
  unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
  do {
    tmp[n++] = (char)('0' + u % 10);
    u /= 10;
  } while (u);
  size_t len = 0;
  if (v < 0) out[len++] = '-';
  while (n) out[len++] = tmp[--n];
  return len;
}

static void write_fd(int fd, const char *s) {
  ciovec v = {s, str_len(s)};
  size_t w;
  wasi_fd_write(fd, &v, 1, &w);
}

static _Noreturn void die(const char *msg, long long code) {
  char num[24];
  num[fmt_ll(num, code)] = 0;
  write_fd(2, "threaded-kv: ");
  write_fd(2, msg);
  write_fd(2, " ");
  write_fd(2, num);
  write_fd(2, "\n");
  wasi_proc_exit(1);
}

/* ------------------------------------------------------------------ futex mutex (Drepper's "mutex 3") */

typedef struct {
  int state; /* 0 unlocked, 1 locked, 2 locked with waiters */
} mutex;

static void mutex_lock(mutex *m) {
  int c = __sync_val_compare_and_swap(&m->state, 0, 1);
  if (c == 0) return;
  if (c != 2) c = __atomic_exchange_n(&m->state, 2, __ATOMIC_SEQ_CST);
  while (c != 0) {
    __builtin_wasm_memory_atomic_wait32(&m->state, 2, -1);
    c = __atomic_exchange_n(&m->state, 2, __ATOMIC_SEQ_CST);
  }
}

static void mutex_unlock(mutex *m) {
  if (__atomic_fetch_sub(&m->state, 1, __ATOMIC_SEQ_CST) != 1) {
    __atomic_store_n(&m->state, 0, __ATOMIC_SEQ_CST);
    __builtin_wasm_memory_atomic_notify(&m->state, 1);
  }
}

/* A condition variable as a sequence number: wait for it to move, with the mutex released meanwhile. */
typedef struct {
  int seq;
} condvar;

static void cond_wait(condvar *c, mutex *m) {
  int seen = __atomic_load_n(&c->seq, __ATOMIC_SEQ_CST);
  mutex_unlock(m);
  __builtin_wasm_memory_atomic_wait32(&c->seq, seen, -1);
  mutex_lock(m);
}

static void cond_signal(condvar *c) {
  __atomic_fetch_add(&c->seq, 1, __ATOMIC_SEQ_CST);
  __builtin_wasm_memory_atomic_notify(&c->seq, 1);
}

/* ------------------------------------------------------------------ allocator (size classes, one lock) */

extern unsigned char __heap_base;
static mutex heap_lock;
static uintptr_t heap_top, heap_end;
#define NCLASS 28 /* 16 B .. 1 GiB */
static void *free_lists[NCLASS];

static int size_class(size_t n) {
  int c = 0;
  size_t s = 16;
  while (s < n + 8) {
    s <<= 1;
    c++;
  }
  return c;
}

static void *malloc_(size_t n) {
  int c = size_class(n);
  if (c >= NCLASS) return NULL;
  size_t sz = (size_t)16 << c;
  mutex_lock(&heap_lock);
  void *p = free_lists[c];
  if (p) {
    free_lists[c] = *(void **)p;
  } else {
    if (heap_top == 0) heap_top = heap_end = ((uintptr_t)&__heap_base + 15) & ~(uintptr_t)15;
    if (heap_end == (uintptr_t)&__heap_base || heap_end < __builtin_wasm_memory_size(0) * 65536) heap_end = __builtin_wasm_memory_size(0) * 65536;
    if (heap_top + sz > heap_end) {
      size_t need = heap_top + sz - heap_end;
      size_t pages = (need + 65535) / 65536;
      if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) {
        mutex_unlock(&heap_lock);
        return NULL;
      }
      heap_end = __builtin_wasm_memory_size(0) * 65536;
    }
    p = (void *)heap_top;
    heap_top += sz;
  }
  mutex_unlock(&heap_lock);
  *(size_t *)p = (size_t)c;
  return (char *)p + 8;
}

static void free_(void *q) {
  if (!q) return;
  void *p = (char *)q - 8;
  int c = (int)*(size_t *)p;
  mutex_lock(&heap_lock);
  *(void **)p = free_lists[c];
  free_lists[c] = p;
  mutex_unlock(&heap_lock);
}

static void *xmalloc(size_t n) {
  void *p = malloc_(n);
  if (!p) die("out of memory allocating", (long long)n);
  return p;
}

static void *xrealloc(void *q, size_t n) {
  if (q) {
    int c = (int)*(size_t *)((char *)q - 8);
    if (((size_t)16 << c) - 8 >= n) return q;
  }
  void *p = xmalloc(n);
  if (q) {
    int c = (int)*(size_t *)((char *)q - 8);
    size_t old = ((size_t)16 << c) - 8;
    memcpy(p, q, old < n ? old : n);
    free_(q);
  }
  return p;
}

/* ------------------------------------------------------------------ the store (shared, under table_lock) */

struct entry {
  char *key;
  size_t klen;
  char *val;
  size_t vlen;
  struct entry *next;
};

static mutex table_lock;
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
  while (*e && !((*e)->klen == n && mem_eq((*e)->key, k, n))) e = &(*e)->next;
  return e;
}

static void grow_table(void) {
  size_t ns = table_size * 2;
  struct entry **nt = xmalloc(ns * sizeof *nt);
  memset(nt, 0, ns * sizeof *nt);
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
  free_(table);
  table = nt;
  table_size = ns;
}

static void put(const char *k, size_t kl, const char *v, size_t vl) {
  struct entry **s = find_slot(k, kl);
  char *copy = xmalloc(vl ? vl : 1);
  memcpy(copy, v, vl);
  if (*s) {
    free_((*s)->val);
    (*s)->val = copy;
    (*s)->vlen = vl;
    return;
  }
  struct entry *e = xmalloc(sizeof *e);
  e->key = xmalloc(kl ? kl : 1);
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
  free_(e->key);
  free_(e->val);
  free_(e);
  table_count--;
  return 1;
}

/* ------------------------------------------------------------------ connections */

struct buf {
  char *p;
  size_t len, cap;
};

static void buf_add(struct buf *b, const void *p, size_t n) {
  if (b->len + n > b->cap) {
    size_t nc = b->cap ? b->cap : 256;
    while (nc < b->len + n) nc *= 2;
    b->p = xrealloc(b->p, nc);
    b->cap = nc;
  }
  memcpy(b->p + b->len, p, n);
  b->len += n;
}

static void buf_str(struct buf *b, const char *s) { buf_add(b, s, str_len(s)); }

static void buf_int(struct buf *b, char prefix, long long v) {
  char tmp[32];
  tmp[0] = prefix;
  size_t n = 1 + fmt_ll(tmp + 1, v);
  tmp[n++] = '\r';
  tmp[n++] = '\n';
  buf_add(b, tmp, n);
}

static void buf_bulk(struct buf *b, const char *p, size_t n) {
  buf_int(b, '$', (long long)n);
  buf_add(b, p, n);
  buf_str(b, "\r\n");
}

/* One worker's state: its connection, buffers and parsed arguments (nothing on the small stack). */
struct worker {
  uint32_t stack_top; /* read by wasi_thread_start before anything else */
  int index;
  int fd;
  int quit;
  struct buf in, out;
  const char *argv_p[MAX_ARGS];
  size_t argv_n[MAX_ARGS];
  char recv_buf[RECV_CHUNK];
};

static int eq(const char *a, size_t n, const char *lit) {
  size_t m = str_len(lit);
  if (n != m) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = a[i];
    if (c >= 'a' && c <= 'z') c = (char)(c - 32);
    if (c != lit[i]) return 0;
  }
  return 1;
}

/* Parses one command at the start of in[0..len). Returns bytes consumed, 0 if incomplete, -1 if bad. */
static long parse(struct worker *w, const char *in, size_t len, int *argc) {
  if (len == 0) return 0;
  if (in[0] != '*') {
    const char *nl = mem_chr(in, '\n', len);
    if (!nl) return 0;
    size_t end = (size_t)(nl - in);
    size_t line = end > 0 && in[end - 1] == '\r' ? end - 1 : end;
    int n = 0;
    size_t i = 0;
    while (i < line && n < MAX_ARGS) {
      while (i < line && (in[i] == ' ' || in[i] == '\t')) i++;
      if (i == line) break;
      size_t s = i;
      while (i < line && in[i] != ' ' && in[i] != '\t') i++;
      w->argv_p[n] = in + s;
      w->argv_n[n] = i - s;
      n++;
    }
    *argc = n;
    return (long)(end + 1);
  }
  const char *nl = mem_chr(in, '\n', len);
  if (!nl) return 0;
  long long count = parse_ll(in + 1, (size_t)(nl - in) - 1, NULL);
  if (count < 0 || count > MAX_ARGS) return -1;
  size_t pos = (size_t)(nl - in) + 1;
  for (long a = 0; a < count; a++) {
    if (pos >= len) return 0;
    if (in[pos] != '$') return -1;
    const char *l = mem_chr(in + pos, '\n', len - pos);
    if (!l) return 0;
    long long bl = parse_ll(in + pos + 1, (size_t)(l - in) - pos - 1, NULL);
    if (bl < 0 || bl > MAX_PENDING) return -1;
    size_t data = (size_t)(l - in) + 1;
    if (data + (size_t)bl + 2 > len) return 0;
    w->argv_p[a] = in + data;
    w->argv_n[a] = (size_t)bl;
    pos = data + (size_t)bl + 2;
  }
  *argc = (int)count;
  return (long)pos;
}

/* Runs one command; the table is touched only under table_lock. */
static void execute(struct worker *w, int argc) {
  struct buf *o = &w->out;
  const char **argv_p = w->argv_p;
  size_t *argv_n = w->argv_n;
  const char *cmd = argv_p[0];
  size_t cl = argv_n[0];
  if (eq(cmd, cl, "PING")) {
    if (argc > 1) buf_bulk(o, argv_p[1], argv_n[1]);
    else buf_str(o, "+PONG\r\n");
  } else if (eq(cmd, cl, "ECHO") && argc == 2) {
    buf_bulk(o, argv_p[1], argv_n[1]);
  } else if (eq(cmd, cl, "SET") && argc >= 3) {
    mutex_lock(&table_lock);
    put(argv_p[1], argv_n[1], argv_p[2], argv_n[2]);
    mutex_unlock(&table_lock);
    buf_str(o, "+OK\r\n");
  } else if (eq(cmd, cl, "GET") && argc == 2) {
    mutex_lock(&table_lock);
    struct entry *e = *find_slot(argv_p[1], argv_n[1]);
    if (e) buf_bulk(o, e->val, e->vlen);
    else buf_str(o, "$-1\r\n");
    mutex_unlock(&table_lock);
  } else if (eq(cmd, cl, "MGET") && argc >= 2) {
    buf_int(o, '*', argc - 1);
    mutex_lock(&table_lock);
    for (int i = 1; i < argc; i++) {
      struct entry *e = *find_slot(argv_p[i], argv_n[i]);
      if (e) buf_bulk(o, e->val, e->vlen);
      else buf_str(o, "$-1\r\n");
    }
    mutex_unlock(&table_lock);
  } else if (eq(cmd, cl, "DEL") && argc >= 2) {
    long long n = 0;
    mutex_lock(&table_lock);
    for (int i = 1; i < argc; i++) n += del(argv_p[i], argv_n[i]);
    mutex_unlock(&table_lock);
    buf_int(o, ':', n);
  } else if (eq(cmd, cl, "EXISTS") && argc >= 2) {
    long long n = 0;
    mutex_lock(&table_lock);
    for (int i = 1; i < argc; i++) n += *find_slot(argv_p[i], argv_n[i]) != NULL;
    mutex_unlock(&table_lock);
    buf_int(o, ':', n);
  } else if (eq(cmd, cl, "INCR") && argc == 2) {
    mutex_lock(&table_lock);
    struct entry *e = *find_slot(argv_p[1], argv_n[1]);
    long long v = 0;
    if (e) {
      size_t used = 0;
      int digits = e->vlen > 0 && e->vlen < 20;
      if (digits) v = parse_ll(e->val, e->vlen, &used);
      if (!digits || used != e->vlen || (e->val[0] == '+') || (used == 1 && e->val[0] == '-')) {
        mutex_unlock(&table_lock);
        buf_str(o, "-ERR value is not an integer or out of range\r\n");
        return;
      }
    }
    v++;
    char num[24];
    size_t n = fmt_ll(num, v);
    put(argv_p[1], argv_n[1], num, n);
    mutex_unlock(&table_lock);
    buf_int(o, ':', v);
  } else if (eq(cmd, cl, "DBSIZE")) {
    mutex_lock(&table_lock);
    long long n = (long long)table_count;
    mutex_unlock(&table_lock);
    buf_int(o, ':', n);
  } else if (eq(cmd, cl, "COMMAND")) {
    buf_str(o, "*0\r\n");
  } else if (eq(cmd, cl, "QUIT")) {
    buf_str(o, "+OK\r\n");
    w->quit = 1;
  } else {
    buf_str(o, "-ERR unknown command or wrong number of arguments\r\n");
  }
}

/* Runs every complete command in w->in. */
static void process(struct worker *w) {
  size_t off = 0;
  while (!w->quit) {
    int argc = 0;
    long used = parse(w, w->in.p + off, w->in.len - off, &argc);
    if (used < 0) {
      buf_str(&w->out, "-ERR protocol error\r\n");
      w->quit = 1;
      break;
    }
    if (used == 0) break;
    off += (size_t)used;
    if (argc > 0) execute(w, argc);
  }
  memmove(w->in.p, w->in.p + off, w->in.len - off);
  w->in.len -= off;
  if (w->in.len > MAX_PENDING) {
    buf_str(&w->out, "-ERR request too large\r\n");
    w->quit = 1;
  }
}

static int flush_out(struct worker *w) {
  size_t off = 0;
  while (off < w->out.len) {
    ciovec v = {w->out.p + off, w->out.len - off};
    size_t n = 0;
    int32_t err = wasi_sock_send(w->fd, &v, 1, 0, &n);
    if (err == ERRNO_AGAIN || err == ERRNO_INTR) continue;
    if (err != 0) return -1;
    off += n;
  }
  w->out.len = 0;
  return 0;
}

/* Serves one connection with blocking receives until it closes or quits. */
static void serve_connection(struct worker *w) {
  w->quit = 0;
  w->in.len = 0;
  w->out.len = 0;
  for (;;) {
    iovec v = {w->recv_buf, sizeof w->recv_buf};
    size_t got = 0;
    int32_t oflags = 0;
    int32_t err = wasi_sock_recv(w->fd, &v, 1, 0, &got, &oflags);
    if (err == ERRNO_AGAIN || err == ERRNO_INTR) continue;
    if (err != 0 || got == 0) break;
    buf_add(&w->in, w->recv_buf, got);
    process(w);
    if (flush_out(w) < 0 || w->quit) break;
  }
  wasi_fd_close(w->fd);
}

/* ------------------------------------------------------------------ the connection queue */

static mutex queue_lock;
static condvar queue_nonempty, queue_nonfull;
static int queue[QUEUE_CAP];
static int queue_head, queue_count;

static void queue_push(int fd) {
  mutex_lock(&queue_lock);
  while (queue_count == QUEUE_CAP) cond_wait(&queue_nonfull, &queue_lock);
  queue[(queue_head + queue_count) % QUEUE_CAP] = fd;
  queue_count++;
  cond_signal(&queue_nonempty);
  mutex_unlock(&queue_lock);
}

static int queue_pop(void) {
  mutex_lock(&queue_lock);
  while (queue_count == 0) cond_wait(&queue_nonempty, &queue_lock);
  int fd = queue[queue_head];
  queue_head = (queue_head + 1) % QUEUE_CAP;
  queue_count--;
  cond_signal(&queue_nonfull);
  mutex_unlock(&queue_lock);
  return fd;
}

/* ------------------------------------------------------------------ threads */

static struct worker *workers[MAX_THREADS];
static unsigned char stacks[MAX_THREADS][THREAD_STACK] __attribute__((aligned(16)));

/* Called by wasi_thread_start (thread_start.s) on this thread's own stack. */
void thread_main(int32_t tid, struct worker *w) {
  (void)tid;
  for (;;) {
    w->fd = queue_pop();
    serve_connection(w);
  }
}

/* ------------------------------------------------------------------ startup */

/* The value of NAME=... in the WASI environment, or NULL. */
static const char *getenv_(char **env, size_t count, const char *name) {
  size_t n = str_len(name);
  for (size_t i = 0; i < count; i++) {
    const char *e = env[i];
    if (mem_eq(e, name, n) && e[n] == '=') return e + n + 1;
  }
  return NULL;
}

static int parse_int(const char *s, int dflt) {
  if (!s || !*s) return dflt;
  size_t used;
  long long v = parse_ll(s, str_len(s), &used);
  return used == str_len(s) ? (int)v : dflt;
}

void _start(void) {
  size_t envc = 0, envb = 0, argc = 0, argb = 0;
  wasi_environ_sizes_get(&envc, &envb);
  char **env = xmalloc((envc + 1) * sizeof *env);
  char *envbuf = xmalloc(envb + 1);
  wasi_environ_get(env, envbuf);
  wasi_args_sizes_get(&argc, &argb);
  char **argv = xmalloc((argc + 1) * sizeof *argv);
  char *argbuf = xmalloc(argb + 1);
  wasi_args_get(argv, argbuf);

  const char *lv = getenv_(env, envc, "FTVM_LISTEN_FD");
  if (!lv) lv = getenv_(env, envc, "LISTEN_FD");
  int lfd = parse_int(lv, 3);
  int nthreads = parse_int(argc > 1 ? argv[1] : getenv_(env, envc, "KV_THREADS"), 4);
  if (nthreads < 1 || nthreads > MAX_THREADS) die("thread count outside 1..16:", nthreads);

  table = xmalloc(table_size * sizeof *table);
  memset(table, 0, table_size * sizeof *table);

  for (int i = 0; i < nthreads; i++) {
    struct worker *w = xmalloc(sizeof *w);
    memset(w, 0, sizeof *w);
    w->index = i;
    w->stack_top = (uint32_t)(uintptr_t)(stacks[i] + THREAD_STACK);
    workers[i] = w;
    int32_t tid = wasi_thread_spawn(w);
    if (tid <= 0) die("thread-spawn failed for worker thread with result", tid);
  }
  char num[24];
  num[fmt_ll(num, nthreads)] = 0;
  write_fd(2, "threaded-kv: serving with ");
  write_fd(2, num);
  write_fd(2, " worker threads\n");

  for (;;) {
    int32_t fd = -1;
    int32_t err = wasi_sock_accept(lfd, 0, &fd);
    if (err == ERRNO_AGAIN || err == ERRNO_INTR) continue;
    if (err != 0) die("accept failed with errno", err);
    queue_push(fd);
  }
}

/*
 * resp_server.h: the networking half of the example servers (c-server, sqlite-server): a RESP
 * (Redis protocol) front end on plain POSIX calls -- accept, poll, recv, send, fcntl(O_NONBLOCK) --
 * over the listening socket the runtime pre-opens (its fd from FTVM_LISTEN_FD, else LISTEN_FD, else 3).
 * Nothing in it is ftvm-specific. The including program defines execute(client, argc), which handles
 * argv_p/argv_n[0..argc) and appends its reply to client->out.
 *
 * serve(argc, argv): argv[1] "poll" (default: every socket non-blocking, one poll() loop) or
 * "blocking" (accept one client at a time, blocking recv until it closes).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CLIENTS 1000
#define MAX_PENDING (1 << 20)
#define MAX_ARGS 1024

/* ------------------------------------------------------------------ connections */

struct buf {
  char *p;
  size_t len, cap;
};

static void buf_add(struct buf *b, const void *p, size_t n) {
  if (b->len + n > b->cap) {
    size_t nc = b->cap ? b->cap : 256;
    while (nc < b->len + n) nc *= 2;
    b->p = realloc(b->p, nc);
    b->cap = nc;
  }
  memcpy(b->p + b->len, p, n);
  b->len += n;
}

static void buf_str(struct buf *b, const char *s) { buf_add(b, s, strlen(s)); }

static void buf_int(struct buf *b, char prefix, long long v) {
  char tmp[32];
  int n = snprintf(tmp, sizeof tmp, "%c%lld\r\n", prefix, v);
  buf_add(b, tmp, (size_t)n);
}

static void buf_bulk(struct buf *b, const char *p, size_t n) {
  buf_int(b, '$', (long long)n);
  buf_add(b, p, n);
  buf_str(b, "\r\n");
}

struct client {
  int fd;
  struct buf in, out;
  int quit;
};

static struct client *clients[MAX_CLIENTS];
static int nclients;

static int eq(const char *a, size_t n, const char *lit) {
  size_t m = strlen(lit);
  if (n != m) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = a[i];
    if (c >= 'a' && c <= 'z') c = (char)(c - 32);
    if (c != lit[i]) return 0;
  }
  return 1;
}

static const char *argv_p[MAX_ARGS];
static size_t argv_n[MAX_ARGS];

struct client;
static void execute(struct client *c, int argc);

/* Parses one command at the start of in[0..len). Returns bytes consumed, 0 if incomplete, -1 if bad. */
static long parse(const char *in, size_t len, int *argc) {
  if (len == 0) return 0;
  if (in[0] != '*') {
    const char *nl = memchr(in, '\n', len);
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
      argv_p[n] = in + s;
      argv_n[n] = i - s;
      n++;
    }
    *argc = n;
    return (long)(end + 1);
  }
  const char *nl = memchr(in, '\n', len);
  if (!nl) return 0;
  long count = strtol(in + 1, NULL, 10);
  if (count < 0 || count > MAX_ARGS) return -1;
  size_t pos = (size_t)(nl - in) + 1;
  for (long a = 0; a < count; a++) {
    if (pos >= len) return 0;
    if (in[pos] != '$') return -1;
    const char *l = memchr(in + pos, '\n', len - pos);
    if (!l) return 0;
    long bl = strtol(in + pos + 1, NULL, 10);
    if (bl < 0 || bl > MAX_PENDING) return -1;
    size_t data = (size_t)(l - in) + 1;
    if (data + (size_t)bl + 2 > len) return 0;
    argv_p[a] = in + data;
    argv_n[a] = (size_t)bl;
    pos = data + (size_t)bl + 2;
  }
  *argc = (int)count;
  return (long)pos;
}

/* Runs every complete command in c->in; returns -1 if the connection must be dropped. */
static int process(struct client *c) {
  size_t off = 0;
  while (!c->quit) {
    int argc = 0;
    long used = parse(c->in.p + off, c->in.len - off, &argc);
    if (used < 0) {
      buf_str(&c->out, "-ERR protocol error\r\n");
      c->quit = 1;
      break;
    }
    if (used == 0) break;
    off += (size_t)used;
    if (argc > 0) execute(c, argc);
  }
  memmove(c->in.p, c->in.p + off, c->in.len - off);
  c->in.len -= off;
  if (c->in.len > MAX_PENDING) {
    buf_str(&c->out, "-ERR request too large\r\n");
    c->quit = 1;
  }
  return 0;
}

/* Sends all of c->out (blocking sockets wait; non-blocking ones are always writable here). */
static int flush_out(struct client *c) {
  size_t off = 0;
  while (off < c->out.len) {
    ssize_t n = send(c->fd, c->out.p + off, c->out.len - off, 0);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return -1;
    }
    off += (size_t)n;
  }
  c->out.len = 0;
  return 0;
}

static void drop_client(int i) {
  struct client *c = clients[i];
  close(c->fd);
  free(c->in.p);
  free(c->out.p);
  free(c);
  clients[i] = clients[--nclients];
}

static struct client *new_client(int fd) {
  struct client *c = calloc(1, sizeof *c);
  c->fd = fd;
  return c;
}

static int listener_fd(void) {
  const char *v = getenv("FTVM_LISTEN_FD");
  if (!v) v = getenv("LISTEN_FD");
  return v ? atoi(v) : 3;
}

/* Reads what is there; returns 1 on data, 0 on end of input, -1 on error, 2 if it would block. */
static int read_some(struct client *c) {
  char tmp[16384];
  ssize_t n = recv(c->fd, tmp, sizeof tmp, 0);
  if (n > 0) {
    buf_add(&c->in, tmp, (size_t)n);
    return 1;
  }
  if (n == 0) return 0;
  if (errno == EAGAIN) return 2;
  return -1;
}

static int serve_poll(int lfd) {
  static struct pollfd pfds[MAX_CLIENTS + 1];
  if (fcntl(lfd, F_SETFL, O_NONBLOCK) != 0) {
    perror("fcntl listener");
    return 1;
  }
  for (;;) {
    pfds[0].fd = lfd;
    pfds[0].events = nclients < MAX_CLIENTS ? POLLIN : 0;
    pfds[0].revents = 0;
    for (int i = 0; i < nclients; i++) {
      pfds[i + 1].fd = clients[i]->fd;
      pfds[i + 1].events = POLLIN;
      pfds[i + 1].revents = 0;
    }
    int np = nclients + 1;
    if (pfds[0].events == 0) {
      /* an entry with no events fails the whole call in this wasi-libc: leave the listener out */
      for (int i = 0; i < nclients; i++) pfds[i] = pfds[i + 1];
      np = nclients;
    }
    int r = poll(pfds, (nfds_t)np, -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      perror("poll");
      return 1;
    }
    int base = np == nclients ? 0 : 1;
    /* clients first (their indices shift when one is dropped: walk backwards) */
    for (int i = nclients - 1; i >= 0; i--) {
      short re = pfds[i + base].revents;
      if (!(re & (POLLIN | POLLHUP | POLLERR))) continue;
      struct client *c = clients[i];
      int st;
      int open = 1;
      while ((st = read_some(c)) == 1) {
      }
      if (st == 0 || st < 0) open = 0;
      process(c);
      if (flush_out(c) < 0) open = 0;
      if (!open || c->quit) drop_client(i);
    }
    if (base == 1 && (pfds[0].revents & POLLIN)) {
      for (;;) {
        struct sockaddr_storage addr;
        socklen_t alen = sizeof addr;
        int fd = accept(lfd, (struct sockaddr *)&addr, &alen);
        if (fd < 0) break; /* EAGAIN: accepted every pending connection */
        if (nclients >= MAX_CLIENTS) {
          close(fd);
          continue;
        }
        if (fcntl(fd, F_SETFL, O_NONBLOCK) != 0) {
          close(fd);
          continue;
        }
        clients[nclients++] = new_client(fd);
      }
    }
  }
}

static int serve_blocking(int lfd) {
  for (;;) {
    struct sockaddr_storage addr;
    socklen_t alen = sizeof addr;
    int fd = accept(lfd, (struct sockaddr *)&addr, &alen);
    if (fd < 0) {
      perror("accept");
      return 1;
    }
    struct client *c = new_client(fd);
    clients[nclients++] = c;
    for (;;) {
      int st = read_some(c);
      if (st <= 0) break;
      process(c);
      if (flush_out(c) < 0 || c->quit) break;
    }
    drop_client(nclients - 1);
  }
}

static int serve(int argc, char **argv) {
  int lfd = listener_fd();
  const char *mode = argc > 1 ? argv[1] : "poll";
  fprintf(stderr, "%s: serving on fd %d (%s)\n", argv[0], lfd, mode);
  if (strcmp(mode, "blocking") == 0) return serve_blocking(lfd);
  return serve_poll(lfd);
}

/*
 * sqlite-server: SQLite (the official amalgamation, unmodified) behind a RESP front end, as an ordinary
 * WASI program: the database is a file in the pre-opened directory /data, clients come through the
 * pre-opened listening socket (see ../c-server/resp_server.h). Nothing in it is ftvm-specific.
 *
 * Commands:
 *   SQL <text>       runs every statement in <text> (e.g. "BEGIN; INSERT ...; UPDATE ...; COMMIT");
 *                    replies with an array of the rows of every statement that returned rows (each row
 *                    an array of bulk strings, NULL as a null bulk), or -ERR <message> (an open
 *                    transaction is rolled back first)
 *   SET k v / GET k / DEL k [k ...] / MGET k [k ...] / INCR k
 *                    a key/value table on the same database (so the RESP tools and the Jepsen checker
 *                    of the kv guest work unchanged)
 *   PING, DBSIZE, QUIT
 *
 * argv[1]: poll | blocking (resp_server.h); argv[2]: the database path (default /data/db.sqlite).
 *
 * Build: clang --target=wasm32-wasi -O2 -o sqlite_server.wasm sqlite-server.c sqlite3.c
 *        (-DSQLITE_OMIT_LOAD_EXTENSION -DSQLITE_THREADSAFE=0 are what SQLite picks for WASI anyway)
 */
#include "../c-server/resp_server.h"
#include "sqlite3.h"

static sqlite3 *db;
static sqlite3_stmt *st_set, *st_get, *st_del, *st_count;

static void reply_error(struct buf *o, const char *msg) {
  buf_str(o, "-ERR ");
  for (const char *p = msg; *p; p++) buf_add(o, (*p == '\r' || *p == '\n') ? " " : p, 1);
  buf_str(o, "\r\n");
}

static void rollback_if_open(void) {
  if (!sqlite3_get_autocommit(db)) sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
}

/* Runs every statement of sql[0..len); rows go into `rows` (counted in *nrows). */
static int run_sql(const char *sql, size_t len, struct buf *rows, long long *nrows, struct buf *err) {
  const char *tail = sql;
  const char *end = sql + len;
  while (tail < end) {
    sqlite3_stmt *st = NULL;
    const char *next = NULL;
    int rc = sqlite3_prepare_v2(db, tail, (int)(end - tail), &st, &next);
    if (rc != SQLITE_OK) {
      reply_error(err, sqlite3_errmsg(db));
      return -1;
    }
    tail = next;
    if (!st) continue; /* whitespace or a comment */
    int cols = sqlite3_column_count(st);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
      buf_int(rows, '*', cols);
      for (int i = 0; i < cols; i++) {
        if (sqlite3_column_type(st, i) == SQLITE_NULL) {
          buf_str(rows, "$-1\r\n");
        } else {
          const unsigned char *t = sqlite3_column_text(st, i);
          buf_bulk(rows, (const char *)t, (size_t)sqlite3_column_bytes(st, i));
        }
      }
      (*nrows)++;
    }
    if (rc != SQLITE_DONE) {
      reply_error(err, sqlite3_errmsg(db));
      sqlite3_finalize(st);
      return -1;
    }
    sqlite3_finalize(st);
  }
  return 0;
}

static int kv_step(sqlite3_stmt *st, struct buf *o) {
  int rc = sqlite3_step(st);
  if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
    reply_error(o, sqlite3_errmsg(db));
    sqlite3_reset(st);
    return -1;
  }
  return rc;
}

static void execute(struct client *c, int argc) {
  struct buf *o = &c->out;
  const char *cmd = argv_p[0];
  size_t cl = argv_n[0];
  if (eq(cmd, cl, "SQL") && argc >= 2) {
    /* inline commands arrive split on spaces: join them back */
    struct buf sql = {0};
    for (int i = 1; i < argc; i++) {
      if (i > 1) buf_add(&sql, " ", 1);
      buf_add(&sql, argv_p[i], argv_n[i]);
    }
    struct buf rows = {0}, err = {0};
    long long n = 0;
    if (run_sql(sql.p, sql.len, &rows, &n, &err) == 0) {
      buf_int(o, '*', n);
      buf_add(o, rows.p, rows.len);
    } else {
      rollback_if_open();
      buf_add(o, err.p, err.len);
    }
    free(sql.p);
    free(rows.p);
    free(err.p);
  } else if (eq(cmd, cl, "PING")) {
    buf_str(o, "+PONG\r\n");
  } else if (eq(cmd, cl, "SET") && argc >= 3) {
    sqlite3_bind_text(st_set, 1, argv_p[1], (int)argv_n[1], SQLITE_TRANSIENT);
    sqlite3_bind_text(st_set, 2, argv_p[2], (int)argv_n[2], SQLITE_TRANSIENT);
    if (kv_step(st_set, o) >= 0) buf_str(o, "+OK\r\n");
    sqlite3_reset(st_set);
  } else if ((eq(cmd, cl, "GET") && argc == 2) || (eq(cmd, cl, "MGET") && argc >= 2)) {
    int multi = eq(cmd, cl, "MGET");
    if (multi) buf_int(o, '*', argc - 1);
    for (int i = 1; i < argc; i++) {
      sqlite3_bind_text(st_get, 1, argv_p[i], (int)argv_n[i], SQLITE_TRANSIENT);
      int rc = sqlite3_step(st_get);
      if (rc == SQLITE_ROW) buf_bulk(o, (const char *)sqlite3_column_text(st_get, 0), (size_t)sqlite3_column_bytes(st_get, 0));
      else buf_str(o, "$-1\r\n");
      sqlite3_reset(st_get);
    }
  } else if (eq(cmd, cl, "DEL") && argc >= 2) {
    long long n = 0;
    for (int i = 1; i < argc; i++) {
      sqlite3_bind_text(st_del, 1, argv_p[i], (int)argv_n[i], SQLITE_TRANSIENT);
      if (kv_step(st_del, o) < 0) return;
      n += sqlite3_changes(db);
      sqlite3_reset(st_del);
    }
    buf_int(o, ':', n);
  } else if (eq(cmd, cl, "INCR") && argc == 2) {
    char sql[] = "INSERT INTO kv(k, v) VALUES(?1, 1) ON CONFLICT(k) DO UPDATE SET v = CAST(v AS INTEGER) + 1 RETURNING v";
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
      reply_error(o, sqlite3_errmsg(db));
      return;
    }
    sqlite3_bind_text(st, 1, argv_p[1], (int)argv_n[1], SQLITE_TRANSIENT);
    if (sqlite3_step(st) == SQLITE_ROW) buf_int(o, ':', sqlite3_column_int64(st, 0));
    else reply_error(o, sqlite3_errmsg(db));
    sqlite3_finalize(st);
  } else if (eq(cmd, cl, "DBSIZE")) {
    if (sqlite3_step(st_count) == SQLITE_ROW) buf_int(o, ':', sqlite3_column_int64(st_count, 0));
    else reply_error(o, sqlite3_errmsg(db));
    sqlite3_reset(st_count);
  } else if (eq(cmd, cl, "COMMAND")) {
    buf_str(o, "*0\r\n");
  } else if (eq(cmd, cl, "QUIT")) {
    buf_str(o, "+OK\r\n");
    c->quit = 1;
  } else {
    buf_str(o, "-ERR unknown command or wrong number of arguments\r\n");
  }
}

int main(int argc, char **argv) {
  const char *path = argc > 2 ? argv[2] : "/data/db.sqlite";
  if (sqlite3_open(path, &db) != SQLITE_OK) {
    fprintf(stderr, "sqlite-server: cannot open %s: %s\n", path, sqlite3_errmsg(db));
    return 1;
  }
  char *err = NULL;
  if (sqlite3_exec(db, "PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL; CREATE TABLE IF NOT EXISTS kv(k TEXT PRIMARY KEY, v TEXT NOT NULL)", NULL, NULL, &err) != SQLITE_OK) {
    fprintf(stderr, "sqlite-server: setup failed: %s\n", err);
    return 1;
  }
  if (sqlite3_prepare_v2(db, "INSERT OR REPLACE INTO kv(k, v) VALUES(?1, ?2)", -1, &st_set, NULL) != SQLITE_OK ||
      sqlite3_prepare_v2(db, "SELECT v FROM kv WHERE k = ?1", -1, &st_get, NULL) != SQLITE_OK ||
      sqlite3_prepare_v2(db, "DELETE FROM kv WHERE k = ?1", -1, &st_del, NULL) != SQLITE_OK ||
      sqlite3_prepare_v2(db, "SELECT count(*) FROM kv", -1, &st_count, NULL) != SQLITE_OK) {
    fprintf(stderr, "sqlite-server: prepare failed: %s\n", sqlite3_errmsg(db));
    return 1;
  }
  fprintf(stderr, "sqlite-server: SQLite %s, database %s\n", sqlite3_libversion(), path);
  return serve(argc, argv);
}

/* The access log's insides, shared by its format (access_log_format.c: the compiler and the
 * line renderer) and its writer (access_log.c: files, slots, building) only. */
#ifndef REMORA_ACCESS_LOG_IMPL_H
#define REMORA_ACCESS_LOG_IMPL_H

#include <stdatomic.h>
#include <uv.h>

#include "base/arena.h"
#include "proxy/access_log.h"

#define MAX_RESP 16 /* distinct RESP(...) header names in one format */

struct piece; /* a literal or an operator (access_log_format.c) */

typedef struct resp_name {
    const char *s;
    uint32_t n;
    uint8_t id;
} resp_name_t;

/* A file descriptor shared by the writes in flight; closed by the last reference. */
typedef struct log_file {
    int fd;
    int regular;   /* a regular file: any size in one write; else at most PIPE_BUF, whole lines */
    unsigned refs; /* under the log's mutex */
} log_file_t;

typedef struct access_log_slot {
    struct access_log_slot *next; /* on the worker's dirty list */
    access_log_t *log;
    access_log_worker_t *aw;
    char *buf;          /* ACCESS_LOG_BUF bytes, allocated by the worker on its first line */
    uint32_t len, wlen; /* bytes held; the first wlen of them are being written */
    unsigned listed : 1, inflight : 1, dropping : 1;
    int last_err;      /* the last write error logged (logged again only when it changes) */
    uint64_t retry_at; /* loop ms: after EAGAIN, no write before then */
    log_file_t *wfile; /* the file the write in flight uses */
    uv_fs_t req;
} slot_t;

struct access_log {
    _Atomic unsigned refs;
    access_log_stats_t *stats;
    char *path;
    char *spec; /* path and format, serialized, for access_log_same */
    size_t spec_len;
    struct piece *pieces; /* the compiled format */
    unsigned npieces;
    resp_name_t resp[MAX_RESP];
    unsigned nresp;
    arena_t strings; /* the pieces' text */
    char hostname[256];
    uv_mutex_t mu; /* guards `file` and every log_file_t's refs */
    log_file_t *file;
    _Atomic int have_file; /* file != NULL, read without the lock on each line */
    unsigned nslots;
    slot_t slots[];
};

/* Compile cfg's format (or Envoy's default) into l->pieces and l->resp. Returns 0, or -1 with
 * the JSON path of the bad string in where[] and the message in err[]. Main thread. */
int access_log_compile(access_log_t *l, const cfg_access_log_t *cfg, char *where, size_t wcap,
                       char *err, size_t ecap);

#endif

/* Access logs: App Mesh's `logging.accessLog.file`, written as Envoy's file access log writes it.
 * One line per exchange (ingress and egress, proxied or answered locally), formatted with
 * Envoy's command operators (%START_TIME%, %REQ(X?Y):N%, %RESPONSE_FLAGS%, ...) from an entry
 * the exchange fills when it ends. docs/access_log.md lists every operator with an example.
 *
 * Ownership: an access_log_t is built on the main thread for a config snapshot (its format
 * compiled once, its file opened) and shared by reference: the server's (the snapshot in
 * force), each worker's, each exchange's that was routed while it was the worker's, and each
 * worker slot that still holds lines to write. Whoever drops the last reference frees it, on
 * any thread. A reload that keeps path and format keeps the object, so nothing is reopened.
 *
 * Writing never blocks a worker: each worker owns one slot in every log, a bounded buffer the
 * line is formatted straight into (no allocation per line), written by uv_fs_write on that
 * worker's loop (the libuv threadpool) ACCESS_LOG_FLUSH_MS after the first line waits, or at
 * once when half full, with at most one write in flight (batched: a write per loop pass cost
 * 26% more CPU per request). A line that does not fit is dropped and counted. The file
 * is reference-counted too: access_log_reopen (SIGUSR1) swaps in a new one, and the old fd is
 * closed when the last write that uses it finishes, so no write ever sees a closed fd. */
#ifndef REMORA_ACCESS_LOG_H
#define REMORA_ACCESS_LOG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "base/arena.h"
#include "base/stats.h"
#include "config/config.h"
#include "config/diag.h"
#include "http/head.h"

#define ACCESS_LOG_BUF      (256 * 1024) /* per worker and log: lines waiting to be written */
#define ACCESS_LOG_FLUSH_MS 100          /* the longest a line waits (unless the file is slow) */

/* Envoy's response flags, as bits in Envoy's printing order (source/common/stream_info/
 * utility.h, ALL_RESPONSE_STRINGS_FLAGS): %RESPONSE_FLAGS% prints the set ones joined by ','.
 * Only those remora can decide are here. */
enum response_flag {
    RF_UH = 1u << 0,   /* no healthy upstream (503) */
    RF_UT = 1u << 1,   /* upstream request timeout (504) */
    RF_LR = 1u << 2,   /* local reset: remora cut the client (drain deadline) */
    RF_UF = 1u << 3,   /* upstream connection failure (503) */
    RF_UC = 1u << 4,   /* upstream connection termination (503, or a cut response) */
    RF_UO = 1u << 5,   /* upstream overflow: connectionPool limits (503) */
    RF_NR = 1u << 6,   /* no route (404) */
    RF_DC = 1u << 7,   /* downstream connection termination */
    RF_URX = 1u << 8,  /* the retry policy's limit was reached */
    RF_SI = 1u << 9,   /* stream idle timeout: the request body stalled (408) */
    RF_DPE = 1u << 10, /* downstream protocol error: a malformed request body (400) */
    RF_UPE = 1u << 11, /* upstream protocol error: a malformed response (502) */
};
#define RF_COUNT 12

/* Counters shared by every log of a server (they outlive reloads); exported as
 * remora.access_log.<name>. */
typedef struct access_log_stats {
    stat_t dropped;       /* lines not written: buffer full, no file, write error, too long */
    stat_t write_errors;  /* writes that failed (their lines are in `dropped`) */
    stat_t open_failures; /* reopens (SIGUSR1) that could not open the path */
    stat_t reopens;       /* reopens that worked */
    stat_t bytes_written;
} access_log_stats_t;

/* A response header value kept for %RESP(...)% (the response head is not kept). */
typedef struct access_log_value {
    const char *p; /* NULL: absent */
    uint32_t n;
} access_log_value_t;

/* What the exchange knew at its end. Strings are borrowed for the call. */
typedef struct access_log_entry {
    const head_t *req; /* the request head, after remora's edits; NULL: none */
    const char *path;  /* %REQ(:PATH)%: the target as forwarded (normalized, with the query);
                          NULL: the head's target */
    size_t path_len;
    const char *authority; /* %REQ(:AUTHORITY)%: an absolute-form authority; NULL: the Host */
    size_t authority_len;
    const char *request_id;         /* when the head has no X-Request-Id (one is made up) */
    const access_log_value_t *resp; /* from access_log_keep_response, or NULL */
    int64_t start_sec;              /* wall clock at the request head */
    uint32_t start_nsec;
    int64_t duration_ms; /* to the last byte handed to the client */
    int64_t request_ms;  /* to the last request byte; -1: absent */
    int64_t response_ms; /* to the upstream's response head; -1: absent (a local reply) */
    uint64_t bytes_received, bytes_sent; /* body bytes */
    unsigned status;                     /* 0: no response was started */
    unsigned attempts;                   /* upstream attempts */
    uint32_t flags;                      /* RF_* */
    const char *details;                 /* %RESPONSE_CODE_DETAILS%, or NULL */
    const char *upstream_host;           /* "ip:port", or NULL */
    const char *upstream_cluster;
    const char *upstream_failure; /* %UPSTREAM_TRANSPORT_FAILURE_REASON%, or NULL */
    const char *client_ip;        /* the peer's address (the port is not known here) */
    const struct sockaddr *local; /* the original destination, or NULL */
    unsigned secure : 1;          /* the client came over TLS */
} access_log_entry_t;

typedef struct access_log access_log_t;
struct access_log_slot;

/* A worker's side of every log: its slots with lines to write, and its clock cache. Owned and
 * touched by one worker thread only. */
typedef struct access_log_worker {
    uv_loop_t *loop;
    unsigned id; /* the slot index in every log */
    struct access_log_slot *dirty;
    int closing;      /* the worker is ending: write what can be, drop the rest, never wait */
    uv_timer_t timer; /* writes what waited ACCESS_LOG_FLUSH_MS */
    int has_timer, timer_armed;
    int64_t cache_sec;   /* the second whose text is in cache_text */
    char cache_text[24]; /* "2016-04-15T20:17:00" */
    unsigned cache_len;
} access_log_worker_t;

/* Build the log a node's config asks for (cfg->path set): compile the format and open the
 * file, for `nworkers` slots. Returns NULL with "source: where.format...: message" lines in
 * `d` (an unknown operator is named) or "where.path: cannot open ..." . Main thread. */
access_log_t *access_log_build(const cfg_access_log_t *cfg, const char *source, unsigned nworkers,
                               access_log_stats_t *stats, diag_t *d);
/* `remora check`: the format compiles (the file is neither opened nor created). 0, or
 * ERR_CONFIG with the problem in `d`. */
int access_log_check(const cfg_access_log_t *cfg, const char *source, diag_t *d);
/* Whether `l` was built from the same path and format as `cfg` (a reload can keep it). */
int access_log_same(const access_log_t *l, const cfg_access_log_t *cfg);
access_log_t *access_log_ref(access_log_t *l); /* NULL passes through */
void access_log_unref(access_log_t *l);
const char *access_log_path(const access_log_t *l);
/* Open the path again (logrotate moved the file): later writes go to the new file; the old fd
 * is closed once writes in flight are done. When the path cannot be opened, lines are dropped
 * (counted) until a reopen works. Returns 0 or a UV_E* code. Main thread. */
int access_log_reopen(access_log_t *l);

/* The RESP(...) values the format uses, copied from the response head into `a`; NULL when the
 * format uses none (or memory is exhausted: they print as absent). */
access_log_value_t *access_log_keep_response(const access_log_t *l, const head_t *h, arena_t *a);
/* Format one line into the worker's slot of `l`. Never blocks; a line that does not fit is
 * dropped and counted. */
void access_log_write(access_log_t *l, access_log_worker_t *aw, const access_log_entry_t *e);
/* Format one line into out[cap]: its length, or 0 when it does not fit. For tests and tools. */
size_t access_log_format(const access_log_t *l, access_log_worker_t *aw,
                         const access_log_entry_t *e, char *out, size_t cap);

/* `loop` NULL: formatting only (tests). With a loop, its flush timer is a handle on it. */
void access_log_worker_init(access_log_worker_t *aw, uv_loop_t *loop, unsigned id);
/* After each loop pass: let go of slots that are written out (the logs they keep alive may go
 * with them); when closing, start every write that is due. Cheap when there is nothing. */
void access_log_worker_flush(access_log_worker_t *aw);
/* Start writing every slot's lines now (the flush timer does this; so do tests). */
void access_log_worker_sync(access_log_worker_t *aw);
/* The worker is ending: its timer is closed; from now on flushes write everything at once and
 * a full pipe is not waited for. */
void access_log_worker_close(access_log_worker_t *aw);
/* Whether a slot still has bytes or a write in flight (the loop must run again). */
int access_log_worker_busy(const access_log_worker_t *aw);

#endif

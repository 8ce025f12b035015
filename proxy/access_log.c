/* Access logs: the files, the per-worker slots that lines are formatted into, and the writes
 * that drain them without ever blocking the worker (access_log.h, docs/access_log.md). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/err.h"
#include "base/log.h"
#include "proxy/access_log_impl.h"

/* ---- files ---- */

/* /dev/stdout and /dev/stderr are the process's own (as Envoy takes them): a pipe is opened
 * again through /proc, non-blocking and private to us; anything else is dup'ed (a socket
 * cannot be reopened; a file keeps its offset). Any other path: appended to, created 0644,
 * non-blocking so that a FIFO never holds the main thread or a threadpool thread. */
static int open_file(const char *path, log_file_t **out)
{
    int std = strcmp(path, "/dev/stdout") == 0 ? 1 : strcmp(path, "/dev/stderr") == 0 ? 2 : 0;
    int fd = -1;
    struct stat st;
    if (std) {
        if (fstat(std, &st) != 0)
            return -errno;
        if (S_ISFIFO(st.st_mode)) {
            char proc[32];
            snprintf(proc, sizeof proc, "/proc/self/fd/%d", std);
            fd = open(proc, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
        }
        if (fd < 0)
            fd = fcntl(std, F_DUPFD_CLOEXEC, 3);
    } else {
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0644);
    }
    if (fd < 0 || fstat(fd, &st) != 0) {
        int err = -errno;
        if (fd >= 0)
            close(fd);
        return err;
    }
    log_file_t *f = malloc(sizeof *f);
    if (!f) {
        close(fd);
        return UV_ENOMEM;
    }
    *f = (log_file_t){.fd = fd, .regular = S_ISREG(st.st_mode), .refs = 1};
    *out = f;
    return 0;
}

static log_file_t *file_take(access_log_t *l)
{
    uv_mutex_lock(&l->mu);
    log_file_t *f = l->file;
    if (f)
        f->refs++;
    uv_mutex_unlock(&l->mu);
    return f;
}

static void file_put(access_log_t *l, log_file_t *f)
{
    if (!f)
        return;
    uv_mutex_lock(&l->mu);
    unsigned left = --f->refs;
    uv_mutex_unlock(&l->mu);
    if (left)
        return;
    close(f->fd);
    free(f);
}

int access_log_reopen(access_log_t *l)
{
    log_file_t *f = NULL;
    int err = open_file(l->path, &f);
    stat_inc(err ? &l->stats->open_failures : &l->stats->reopens);
    if (err)
        log_error("access log: cannot open %s: %s; lines are dropped until a reopen (SIGUSR1) "
                  "works",
                  l->path, uv_strerror(err));
    uv_mutex_lock(&l->mu);
    log_file_t *old = l->file;
    l->file = f;
    atomic_store(&l->have_file, f != NULL);
    uv_mutex_unlock(&l->mu);
    file_put(l, old); /* closed now, or by the last write in flight */
    return err;
}

/* ---- writing ---- */

static unsigned count_lines(const char *p, size_t n)
{
    unsigned lines = 0;
    for (const char *e = p + n; (p = memchr(p, '\n', (size_t)(e - p))); p++)
        lines++;
    return lines ? lines : n > 0;
}

static void drop(slot_t *s, unsigned lines, const char *why)
{
    stat_add(&s->log->stats->dropped, lines);
    if (s->dropping || s->aw->closing)
        return;
    s->dropping = 1; /* said once until a write works again */
    log_warn("access log %s: dropping lines on worker %u (%s)", s->log->path, s->aw->id, why);
}

static void on_written(uv_fs_t *req);
static void on_flush_timer(uv_timer_t *t);

/* Lines are written ACCESS_LOG_FLUSH_MS after the first one waits (or at once, half full): one
 * write carries many lines, the threadpool round trip and its syscalls are paid per batch. */
static void arm(access_log_worker_t *aw)
{
    if (aw->timer_armed || !aw->has_timer || aw->closing)
        return;
    aw->timer_armed = 1;
    uv_timer_start(&aw->timer, on_flush_timer, ACCESS_LOG_FLUSH_MS, 0);
}

/* Start writing what the slot holds, unless a write is in flight or a full pipe asked us to
 * wait. A pipe, a tty or a socket gets at most PIPE_BUF bytes, cut at a line end, so that lines
 * from different workers never interleave. */
static void start_write(slot_t *s)
{
    access_log_worker_t *aw = s->aw;
    if (s->inflight || !s->len || (s->retry_at && uv_now(aw->loop) < s->retry_at && !aw->closing))
        return;
    s->retry_at = 0;
    log_file_t *f = file_take(s->log);
    if (!f) {
        drop(s, count_lines(s->buf, s->len), "the file could not be opened");
        s->len = 0;
        return;
    }
    size_t n = s->len;
    if (!f->regular && n > PIPE_BUF) {
        const char *cut = memrchr(s->buf, '\n', PIPE_BUF);
        const char *first = cut ? NULL : memchr(s->buf, '\n', n);
        n = cut ? (size_t)(cut - s->buf) + 1 : first ? (size_t)(first - s->buf) + 1 : n;
    }
    uv_buf_t b = uv_buf_init(s->buf, (unsigned)n);
    s->wfile = f;
    s->wlen = (uint32_t)n;
    s->inflight = 1;
    s->req.data = s;
    int err = uv_fs_write(aw->loop, &s->req, f->fd, &b, 1, -1, on_written);
    if (err < 0) { /* never started (out of memory): no callback comes; the lines are lost */
        s->inflight = 0;
        s->wfile = NULL;
        file_put(s->log, f);
        stat_inc(&s->log->stats->write_errors);
        drop(s, count_lines(s->buf, s->len), "write failed");
        s->len = 0;
    }
}

static void on_written(uv_fs_t *req)
{
    slot_t *s = req->data;
    access_log_t *l = s->log;
    ssize_t r = req->result;
    uv_fs_req_cleanup(req);
    file_put(l, s->wfile);
    s->wfile = NULL;
    s->inflight = 0;
    if (r > 0) {
        stat_add(&l->stats->bytes_written, (uint64_t)r);
        memmove(s->buf, s->buf + r, s->len - (size_t)r);
        s->len -= (uint32_t)r;
        s->dropping = 0;
        s->last_err = 0;
    } else if ((r == 0 || r == UV_EAGAIN) && !s->aw->closing) {
        s->retry_at = uv_now(s->aw->loop) + ACCESS_LOG_FLUSH_MS; /* a full pipe: try later */
        arm(s->aw);
        return;
    } else { /* the lines of this write are lost; the next ones are tried again */
        int err = r == 0 ? UV_EAGAIN : (int)r;
        stat_inc(&l->stats->write_errors);
        if (err != s->last_err && !s->aw->closing)
            log_warn("access log %s: write failed: %s", l->path, uv_strerror(err));
        s->last_err = err;
        drop(s, count_lines(s->buf, s->wlen), "write failed");
        memmove(s->buf, s->buf + s->wlen, s->len - s->wlen);
        s->len -= s->wlen;
    }
    if (s->len >= ACCESS_LOG_BUF / 2 || s->aw->closing)
        start_write(s); /* what came in meanwhile */
    else if (s->len)
        arm(s->aw);
}

void access_log_write(access_log_t *l, access_log_worker_t *aw, const access_log_entry_t *e)
{
    if (aw->id >= l->nslots)
        return;
    slot_t *s = &l->slots[aw->id];
    s->aw = aw;
    if (!atomic_load_explicit(&l->have_file, memory_order_relaxed)) {
        drop(s, 1, "the file could not be opened");
        return;
    }
    if (!s->buf && !(s->buf = malloc(ACCESS_LOG_BUF))) {
        drop(s, 1, "out of memory");
        return;
    }
    size_t n = access_log_format(l, aw, e, s->buf + s->len, ACCESS_LOG_BUF - s->len);
    if (!n) {
        drop(s, 1,
             s->len ? "the buffer is full: the file is slower than the traffic"
                    : "a line longer than the buffer");
        start_write(s);
        return;
    }
    s->len += (uint32_t)n;
    if (!s->listed) { /* the slot keeps the log alive until it is written */
        s->listed = 1;
        s->next = aw->dirty;
        aw->dirty = s;
        access_log_ref(l);
    }
    if (s->len >= ACCESS_LOG_BUF / 2)
        start_write(s);
    else
        arm(aw);
}

void access_log_worker_init(access_log_worker_t *aw, uv_loop_t *loop, unsigned id)
{
    memset(aw, 0, sizeof *aw);
    aw->loop = loop;
    aw->id = id;
    aw->cache_sec = INT64_MIN;
    if (loop && uv_timer_init(loop, &aw->timer) == 0) {
        aw->timer.data = aw;
        aw->has_timer = 1;
    }
}

void access_log_worker_close(access_log_worker_t *aw)
{
    aw->closing = 1;
    if (aw->has_timer)
        uv_close((uv_handle_t *)&aw->timer, NULL);
    aw->has_timer = aw->timer_armed = 0;
}

/* Every slot's lines now, as far as a write in flight or a full pipe allows. */
void access_log_worker_sync(access_log_worker_t *aw)
{
    for (slot_t *s = aw->dirty; s; s = s->next)
        start_write(s);
}

static void on_flush_timer(uv_timer_t *t)
{
    access_log_worker_t *aw = t->data;
    aw->timer_armed = 0;
    access_log_worker_sync(aw);
    for (slot_t *s = aw->dirty; s; s = s->next)
        if (s->len && !s->inflight) /* a full pipe: again later */
            arm(aw);
}

void access_log_worker_flush(access_log_worker_t *aw)
{
    slot_t **pp = &aw->dirty;
    while (*pp) {
        slot_t *s = *pp;
        if (s->inflight || s->len) {
            if (aw->closing)
                start_write(s);
            pp = &s->next;
            continue;
        }
        *pp = s->next;
        s->listed = 0;
        access_log_unref(s->log); /* may free the log, and s with it */
    }
}

int access_log_worker_busy(const access_log_worker_t *aw)
{
    return aw->dirty != NULL;
}

/* ---- building ---- */

static char *serialize(const cfg_access_log_t *cfg, size_t *len)
{
    size_t n = strlen(cfg->path) + 3 + (cfg->text ? strlen(cfg->text) : 0);
    for (unsigned i = 0; i < cfg->njson; i++)
        n += strlen(cfg->json[i].key) + strlen(cfg->json[i].value) + 2;
    char *s = malloc(n), *p = s;
    if (!s)
        return NULL;
    p += snprintf(p, n, "%s%c%c", cfg->path, 0, (char)('0' + cfg->format));
    if (cfg->text)
        p += snprintf(p, n - (size_t)(p - s), "%s", cfg->text);
    for (unsigned i = 0; i < cfg->njson; i++) {
        size_t k = strlen(cfg->json[i].key) + 1, v = strlen(cfg->json[i].value) + 1;
        memcpy(p, cfg->json[i].key, k);
        memcpy(p + k, cfg->json[i].value, v);
        p += k + v;
    }
    *len = (size_t)(p - s);
    return s;
}

static void free_log(access_log_t *l)
{
    file_put(l, l->file);
    for (unsigned i = 0; i < l->nslots; i++)
        free(l->slots[i].buf);
    uv_mutex_destroy(&l->mu);
    arena_reset(&l->strings);
    free(l->pieces);
    free(l->spec);
    free(l->path);
    free(l);
}

access_log_t *access_log_build(const cfg_access_log_t *cfg, const char *source, unsigned nworkers,
                               access_log_stats_t *stats, diag_t *d)
{
    access_log_t *l = calloc(1, sizeof *l + nworkers * sizeof(slot_t));
    if (!l || uv_mutex_init(&l->mu) != 0) {
        free(l);
        diag_add(d, source, cfg->where, "out of memory");
        return NULL;
    }
    atomic_init(&l->refs, 1);
    arena_init(&l->strings);
    l->stats = stats;
    l->nslots = nworkers;
    for (unsigned i = 0; i < nworkers; i++)
        l->slots[i].log = l;
    l->path = strdup(cfg->path);
    l->spec = serialize(cfg, &l->spec_len);
    char where[320], err[300] = "out of memory";
    snprintf(where, sizeof where, "%s", cfg->where);
    int rc = !l->path || !l->spec
                 ? -1
                 : access_log_compile(l, cfg, where, sizeof where, err, sizeof err);
    if (rc != 0) {
        diag_add(d, source, where, "%s", err);
    } else if ((rc = open_file(l->path, &l->file)) != 0) {
        snprintf(where, sizeof where, "%s.path", cfg->where);
        diag_add(d, source, where, "cannot open \"%s\": %s", l->path, uv_strerror(rc));
    }
    if (rc != 0) {
        free_log(l);
        return NULL;
    }
    atomic_init(&l->have_file, 1);
    if (gethostname(l->hostname, sizeof l->hostname - 1) != 0)
        l->hostname[0] = '\0';
    return l;
}

int access_log_check(const cfg_access_log_t *cfg, const char *source, diag_t *d)
{
    access_log_t *l = calloc(1, sizeof *l);
    char where[320], err[300] = "out of memory";
    snprintf(where, sizeof where, "%s", cfg->where);
    if (!l || uv_mutex_init(&l->mu) != 0) {
        free(l);
        diag_add(d, source, where, "%s", err);
        return ERR_CONFIG;
    }
    arena_init(&l->strings);
    l->path = strdup(cfg->path);
    int rc = access_log_compile(l, cfg, where, sizeof where, err, sizeof err);
    if (rc != 0)
        diag_add(d, source, where, "%s", err);
    free_log(l);
    return rc ? ERR_CONFIG : 0;
}

int access_log_same(const access_log_t *l, const cfg_access_log_t *cfg)
{
    size_t n;
    char *spec = cfg->path ? serialize(cfg, &n) : NULL;
    int same = spec && n == l->spec_len && memcmp(spec, l->spec, n) == 0;
    free(spec);
    return same;
}

const char *access_log_path(const access_log_t *l)
{
    return l->path;
}

access_log_t *access_log_ref(access_log_t *l)
{
    if (l)
        atomic_fetch_add_explicit(&l->refs, 1, memory_order_relaxed);
    return l;
}

void access_log_unref(access_log_t *l)
{
    if (l && atomic_fetch_sub_explicit(&l->refs, 1, memory_order_acq_rel) == 1)
        free_log(l);
}

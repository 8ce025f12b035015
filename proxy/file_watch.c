#include "proxy/file_watch.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/log.h"

/* What a directory's watch asks for: a write finished, a file moved in, an entry made, the
 * directory itself moved away (its removal ends the watch: IN_IGNORED). */
#define DIR_EVENTS (IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_MOVE_SELF)

struct file_watch {
    file_watch_t *next;
    file_watcher_t *fw;
    int wd; /* its directory's inotify watch, or -1 (then only the poll sees it) */
    uv_fs_t req;
    unsigned statting : 1;  /* req is in flight */
    unsigned again : 1;     /* look once more when it is back */
    unsigned removed : 1;   /* freed when it is back */
    unsigned known : 1;     /* a first stat has come back */
    unsigned present : 1;   /* and the latest found the file */
    unsigned why : 2;       /* what asked for the stat in flight: LOOK_* bits */
    unsigned again_why : 2; /* and for the one asked for while it was */
    unsigned suspect : 1;   /* a poll saw a write in place (suspect_st), not yet confirmed */
    uv_stat_t last, suspect_st;
    void (*changed)(void *data);
    void *data;
    const char *dir;  /* in path_dir */
    const char *base; /* the name in dir, in path */
    char path[];
};

static int same_stat(const uv_stat_t *a, const uv_stat_t *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
           a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* Why a look is made: an event (0), the file's writer closing it, the poll. */
#define LOOK_CLOSED 1u
#define LOOK_POLL   2u

static void look(file_watch_t *w, unsigned why);

/* Whether a changed stat may be a write in place still under way: the same file, and nothing
 * said its writer closed it. A poll that finds it so twice running (a poll apart) takes it as
 * finished: a network file system has no close to tell. A new file (renamed over, a link
 * swapped) is whole as it lands. */
static int unfinished(file_watch_t *w, const uv_stat_t *st, unsigned why)
{
    if ((why & LOOK_CLOSED) || !w->present || st->st_dev != w->last.st_dev ||
        st->st_ino != w->last.st_ino) {
        w->suspect = 0;
        return 0;
    }
    if (!(why & LOOK_POLL))
        return 1; /* another file's event in the directory: this one's close is to come */
    int confirmed = w->suspect && same_stat(st, &w->suspect_st);
    w->suspect = !confirmed;
    w->suspect_st = *st;
    return !confirmed;
}

static void on_stat(uv_fs_t *req)
{
    file_watch_t *w = req->data;
    int present = req->result == 0;
    unsigned why = w->why;
    uv_stat_t st = req->statbuf;
    uv_fs_req_cleanup(req);
    w->statting = 0;
    if (w->removed) {
        free(w);
        return;
    }
    /* A file that went missing is no change to act on; its return is. */
    int changed = w->known && present && (!w->present || !same_stat(&st, &w->last));
    int held = changed && unfinished(w, &st, why); /* then last stays, to compare again */
    w->known = 1;
    if (!held) {
        w->present = present;
        if (present)
            w->last = st;
    }
    if (w->again) {
        w->again = 0;
        look(w, w->again_why);
    }
    if (changed && !held)
        w->changed(w->data); /* last: it may remove w */
}

static void look(file_watch_t *w, unsigned why)
{
    if (w->statting) {
        w->again = 1;
        w->again_why |= why;
        return;
    }
    w->why = why;
    w->again_why = 0;
    w->req.data = w;
    if (uv_fs_stat(w->fw->loop, &w->req, w->path, on_stat) == 0)
        w->statting = 1;
}

/* Whether a link was made, by the name event e gives, in dir: a link is whole once made
 * (ln -sf), where a file made in place is whole only once its writer closes it, which
 * IN_CLOSE_WRITE says. */
static int link_made(const struct inotify_event *e, const char *dir)
{
    if (!(e->mask & IN_CREATE) || (e->mask & IN_ISDIR) || e->len == 0)
        return 0;
    char p[PATH_MAX];
    struct stat st;
    int n = snprintf(p, sizeof p, "%s/%s", dir, e->name);
    return n > 0 && (size_t)n < sizeof p && lstat(p, &st) == 0 && S_ISLNK(st.st_mode);
}

/* Whether e is the file's writer closing it: the file itself, not another of its directory. */
static int own_close(const struct inotify_event *e, const file_watch_t *w)
{
    return (e->mask & IN_CLOSE_WRITE) && e->len && strcmp(e->name, w->base) == 0;
}

/* The directory watch wd watches nothing of these paths any more (removed, or moved away: then
 * it is dropped): its files are polled, and each poll tries to watch their directory again. */
static void lose_watch(file_watcher_t *fw, int wd, int moved)
{
    if (moved)
        inotify_rm_watch(fw->fd, wd);
    for (file_watch_t *w = fw->files; w; w = w->next) {
        if (w->wd != wd)
            continue;
        w->wd = -1;
        log_warn("files: %s was removed or moved; %s is polled until it is back", w->dir, w->path);
    }
}

static void rewatch(file_watch_t *w)
{
    file_watcher_t *fw = w->fw;
    if (w->wd >= 0 || fw->fd < 0 || (w->wd = inotify_add_watch(fw->fd, w->dir, DIR_EVENTS)) < 0)
        return;
    log_info("files: watching %s again", w->dir);
}

/* Looks at every file event e may have changed: all of them after an overflow, else those in
 * its directory, when it finished a write, moved a file in or made a link. */
static void on_event(file_watcher_t *fw, const struct inotify_event *e)
{
    if (e->mask & (IN_IGNORED | IN_MOVE_SELF)) {
        lose_watch(fw, e->wd, (e->mask & IN_MOVE_SELF) != 0);
        return;
    }
    int whole = (e->mask & (IN_Q_OVERFLOW | IN_CLOSE_WRITE | IN_MOVED_TO)) != 0, asked = whole;
    for (file_watch_t *w = fw->files; w; w = w->next) { /* no callback runs in here */
        if (!(e->mask & IN_Q_OVERFLOW) && e->wd != w->wd)
            continue;
        if (!asked) { /* once: the files of one directory share its events */
            whole = link_made(e, w->dir);
            asked = 1;
        }
        if (whole)
            look(w, own_close(e, w) ? LOOK_CLOSED : 0);
    }
}

static void on_events(uv_poll_t *h, int status, int events)
{
    (void)status;
    (void)events;
    file_watcher_t *fw = h->data;
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    ssize_t n;
    while ((n = read(fw->fd, buf, sizeof buf)) > 0) {
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *e = (const struct inotify_event *)(void *)p;
            on_event(fw, e);
            p += sizeof *e + e->len;
        }
    }
}

static void on_poll(uv_timer_t *t)
{
    file_watcher_t *fw = t->data;
    for (file_watch_t *w = fw->files; w; w = w->next) {
        rewatch(w);
        look(w, LOOK_POLL);
    }
}

void file_watcher_init(file_watcher_t *fw, uv_loop_t *loop)
{
    fw->loop = loop;
    fw->files = NULL;
    fw->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fw->fd >= 0 && uv_poll_init(loop, &fw->io, fw->fd) == 0) {
        fw->io.data = fw;
        uv_poll_start(&fw->io, UV_READABLE, on_events);
    } else {
        if (fw->fd >= 0)
            close(fw->fd);
        fw->fd = -1;
        log_warn("files: no inotify; the config and certificate files are polled every %d ms",
                 FILE_POLL_MS);
    }
    fw->poll_ms = fw->fd >= 0 ? FILE_POLL_SLOW_MS : FILE_POLL_MS;
    uv_timer_init(loop, &fw->poll);
    fw->poll.data = fw;
}

/* The directory part of path, "." for none, into out (as long as path). */
static void path_dir(const char *path, char *out)
{
    const char *slash = strrchr(path, '/');
    if (!slash) {
        memcpy(out, ".", 2);
        return;
    }
    size_t n = slash == path ? 1 : (size_t)(slash - path);
    memcpy(out, path, n);
    out[n] = '\0';
}

file_watch_t *file_watch_add(file_watcher_t *fw, const char *path, void (*changed)(void *data),
                             void *data)
{
    size_t n = strlen(path) + 1;
    file_watch_t *w = calloc(1, sizeof *w + 2 * n + 1);
    if (!w)
        return NULL;
    memcpy(w->path, path, n);
    char *dir = w->path + n;
    path_dir(path, dir);
    w->dir = dir;
    const char *slash = strrchr(w->path, '/');
    w->base = slash ? slash + 1 : w->path;
    w->fw = fw;
    w->changed = changed;
    w->data = data;
    w->wd = fw->fd >= 0 ? inotify_add_watch(fw->fd, dir, DIR_EVENTS) : -1;
    if (fw->fd >= 0 && w->wd < 0)
        log_warn("files: cannot watch %s (%s); %s is polled every %d ms", dir, strerror(errno),
                 path, FILE_POLL_SLOW_MS);
    w->next = fw->files;
    fw->files = w;
    if (!uv_is_active((uv_handle_t *)&fw->poll))
        uv_timer_start(&fw->poll, on_poll, fw->poll_ms, fw->poll_ms);
    look(w, 0); /* the stat changes are measured from */
    return w;
}

void file_watch_remove(file_watch_t *w)
{
    file_watcher_t *fw = w->fw;
    for (file_watch_t **pp = &fw->files; *pp; pp = &(*pp)->next)
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    int shared = 0; /* a directory has one watch, however many of its files are watched */
    for (file_watch_t *o = fw->files; o; o = o->next)
        shared |= o->wd == w->wd;
    if (w->wd >= 0 && !shared)
        inotify_rm_watch(fw->fd, w->wd);
    if (!fw->files)
        uv_timer_stop(&fw->poll);
    if (w->statting)
        w->removed = 1;
    else
        free(w);
}

void file_watcher_close(file_watcher_t *fw)
{
    while (fw->files)
        file_watch_remove(fw->files);
    if (fw->fd >= 0) {
        uv_close((uv_handle_t *)&fw->io, NULL);
        close(fw->fd);
        fw->fd = -1;
    }
    uv_close((uv_handle_t *)&fw->poll, NULL);
}

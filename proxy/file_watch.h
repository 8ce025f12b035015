/* Files watched for changes, on the main loop: the config file and the certificate, key and
 * trust files in use.
 *
 * inotify on each file's directory says when to look: a writer closing the file, a file
 * renamed over it, or a symbolic link made in the directory (a mounted ConfigMap swaps a link
 * to its data). Looking is an asynchronous stat of the path, links followed, compared with the
 * last one, so a change is reported once it is whole, and only a real change is: a write in
 * place only at its writer's close. A slow poll of the same stat catches what inotify cannot see
 * (a network file system written from another host: a write in place counts once two polls find
 * it the same); where inotify is unavailable the poll is fast instead. Nothing wakes the loop while
 * the files stand still but that poll. */
#ifndef REMORA_FILE_WATCH_H
#define REMORA_FILE_WATCH_H

#include <uv.h>

#define FILE_POLL_MS      250  /* the poll without inotify */
#define FILE_POLL_SLOW_MS 5000 /* the backstop poll with it */

typedef struct file_watch file_watch_t;

typedef struct file_watcher {
    uv_loop_t *loop;
    int fd; /* inotify, or -1 */
    uv_poll_t io;
    uv_timer_t poll;
    uint64_t poll_ms;
    file_watch_t *files;
} file_watcher_t;

/* Ready to watch files on `loop`; no file yet. */
void file_watcher_init(file_watcher_t *fw, uv_loop_t *loop);
/* Stops watching every file and closes the handles (the loop finishes closing them). */
void file_watcher_close(file_watcher_t *fw);

/* Calls changed(data) on the main loop each time the file at `path` changes (appears, or its
 * stat differs: device, inode, size, mtime, ctime). NULL when out of memory. */
file_watch_t *file_watch_add(file_watcher_t *fw, const char *path, void (*changed)(void *data),
                             void *data);
/* Stops watching it; the callback is not called again. */
void file_watch_remove(file_watch_t *w);

#endif

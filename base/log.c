#include "base/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

static const char *const names[] = {"trace", "debug",    "info", "warning",
                                    "error", "critical", "off"};

/* The level is set once at start-up and on reload; workers read it on every log call. */
static _Atomic int current = LOG_INFO;

int log_parse_level(const char *name, enum log_level *out)
{
    for (int i = LOG_TRACE; i <= LOG_OFF; i++) {
        if (strcasecmp(name, names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    if (strcasecmp(name, "warn") == 0) {
        *out = LOG_WARNING;
        return 0;
    }
    return UV_EINVAL;
}

void log_set_level(enum log_level level)
{
    atomic_store_explicit(&current, level, memory_order_relaxed);
}

enum log_level log_current_level(void)
{
    return (enum log_level)atomic_load_explicit(&current, memory_order_relaxed);
}

const char *log_level_name(enum log_level level)
{
    return names[level];
}

int log_enabled(enum log_level level)
{
    return level != LOG_OFF && (int)level >= atomic_load_explicit(&current, memory_order_relaxed);
}

void log_write(enum log_level level, const char *fmt, ...)
{
    char line[1024];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "[%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ] [%s] ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, names[level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

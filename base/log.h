/* One line per event, to stderr, at or above the configured level (ENVOY_LOG_LEVEL names).
 * Each line is one write(2), so lines from different workers never interleave. */
#ifndef REMORA_LOG_H
#define REMORA_LOG_H

enum log_level { LOG_TRACE, LOG_DEBUG, LOG_INFO, LOG_WARNING, LOG_ERROR, LOG_CRITICAL, LOG_OFF };

/* Returns 0, or UV_EINVAL for a name that is not a level. */
int log_parse_level(const char *name, enum log_level *out);
void log_set_level(enum log_level level);
enum log_level log_current_level(void);
const char *log_level_name(enum log_level level);
int log_enabled(enum log_level level);
void log_write(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define LOGF(lvl, ...)                                                                             \
    do {                                                                                           \
        if (log_enabled(lvl))                                                                      \
            log_write(lvl, __VA_ARGS__);                                                           \
    } while (0)
#define log_debug(...) LOGF(LOG_DEBUG, __VA_ARGS__)
#define log_info(...)  LOGF(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  LOGF(LOG_WARNING, __VA_ARGS__)
#define log_error(...) LOGF(LOG_ERROR, __VA_ARGS__)

#endif

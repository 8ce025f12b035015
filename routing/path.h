/* Request paths as App Mesh's Envoy sees them: normalized (RFC 3986 §5.2.4 dot segments
 * removed) with runs of slashes merged, before any route is matched, and forwarded that way. */
#ifndef REMORA_PATH_H
#define REMORA_PATH_H

#include <stddef.h>

/* Normalizes the path `in` (n bytes, no query) into `out`, which must hold n + 1 bytes (the
 * result is never longer, except that an empty path becomes "/"). Returns the new length. */
size_t path_normalize(const char *in, size_t n, char *out);

#endif

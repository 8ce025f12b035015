/* HTTP/1.1 message heads as llhttp hands them over: a start-line part (request-target or reason
 * phrase) and header fields, copied piecewise into one growable byte array and indexed by
 * offsets, so a field split across two socket reads is reassembled without special cases.
 *
 * Caps (RFC 9110 §15.5.32 leaves them to us): a head may hold at most H1_MAX_FIELDS fields and
 * H1_MAX_HEAD_BYTES bytes, counted as they would appear on the wire. Past either, the append
 * functions fail with ERR_TOO_LARGE and the head keeps what it had. */
#ifndef REMORA_H1_H
#define REMORA_H1_H

#include <stddef.h>
#include <stdint.h>

#define H1_MAX_FIELDS     100
#define H1_MAX_HEAD_BYTES (64 * 1024)

/* The field names remora acts on, recognized once per head (h1_classify). */
enum h1_name {
    H_OTHER,
    H_HOST,
    H_CONNECTION,
    H_KEEP_ALIVE,
    H_PROXY_CONNECTION,
    H_TE,
    H_TRANSFER_ENCODING,
    H_UPGRADE,
    H_TRAILER,
    H_PROXY_AUTHENTICATE,
    H_PROXY_AUTHORIZATION,
    H_X_FORWARDED_FOR,
    H_X_FORWARDED_PROTO,
    H_X_REQUEST_ID,
    H_X_AMZN_TRACE_ID,
    H_EXPECT,
    H_USER_AGENT,
    H_CONTENT_LENGTH,
};

typedef struct h1_field {
    uint32_t name, name_len, value, value_len;
    uint8_t id;  /* enum h1_name */
    uint8_t hop; /* not forwarded: RFC 9110 §7.6.1, or named by Connection */
} h1_field_t;

typedef struct h1_head {
    char *bytes;
    uint32_t len, cap;
    uint32_t start, start_len; /* request-target, or reason phrase */
    uint32_t wire;             /* bytes this head takes on the wire, for the cap */
    unsigned nfields, fields_cap;
    enum { H1_BETWEEN, H1_IN_NAME, H1_IN_VALUE } state;
    h1_field_t *fields; /* grows as needed, up to H1_MAX_FIELDS */
} h1_head_t;

void h1_head_init(h1_head_t *h);
void h1_head_reset(h1_head_t *h);
void h1_head_free(h1_head_t *h);
int h1_append_start(h1_head_t *h, const char *p, size_t n);
int h1_append_name(h1_head_t *h, const char *p, size_t n);
int h1_append_value(h1_head_t *h, const char *p, size_t n);
/* The current field is complete (llhttp's on_header_value_complete; values may be empty). */
void h1_field_done(h1_head_t *h);

static inline const char *h1_name(const h1_head_t *h, unsigned i)
{
    return h->bytes + h->fields[i].name;
}
static inline const char *h1_value(const h1_head_t *h, unsigned i)
{
    return h->bytes + h->fields[i].value;
}
static inline const char *h1_start(const h1_head_t *h)
{
    return h->bytes + h->start;
}

/* Recognize the names remora acts on and mark the hop-by-hop fields; call once the head is
 * complete. */
void h1_classify(h1_head_t *h);
/* Index of the first field named `name` (case-insensitive), or -1. */
int h1_find(const h1_head_t *h, const char *name);
/* Index of the first field classified as `id`, or -1 (after h1_classify). */
int h1_find_id(const h1_head_t *h, enum h1_name id);
/* Whether the comma-separated list `list` (n bytes) contains `token`, case-insensitively. */
int h1_list_has(const char *list, size_t n, const char *token, size_t tlen);
/* Whether field i must not be forwarded: the RFC 9110 §7.6.1 hop-by-hop set, plus every field the
 * message's own Connection header names (after h1_classify). */
static inline int h1_is_hop_by_hop(const h1_head_t *h, unsigned i)
{
    return h->fields[i].hop;
}
/* Strip optional whitespace around a value: returns the trimmed start, sets *n. */
const char *h1_trim(const char *p, size_t *n);

#endif

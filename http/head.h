/* The protocol-neutral message head: what a codec hands the exchange and the exchange hands a
 * codec, whatever the protocol on the wire (HTTP/1 now, HTTP/2 next).
 *
 * Storage: one growable byte array holding every piece NUL-terminated (so each can be used as
 * a C string), indexed by offsets; a field table beside it. A head is reused from message to
 * message (head_reset keeps the storage) and moved between owners in O(1) with head_swap.
 *
 * Caps (RFC 9110 §15.5.32 leaves them to us): HEAD_MAX_FIELDS fields and HEAD_MAX_BYTES bytes
 * as the head would take on the wire. Past either, adding fails with ERR_TOO_LARGE and the
 * head keeps what it had. */
#ifndef REMORA_HEAD_H
#define REMORA_HEAD_H

#include <stddef.h>
#include <stdint.h>

#include "base/http.h"

#define HEAD_MAX_FIELDS 100
#define HEAD_MAX_BYTES  (64 * 1024)
/* What a head may hold: a received one within the caps above (the parser enforces them), plus
 * the fields remora adds when it forwards it (X-Forwarded-*, X-Request-Id, trace, Host). */
#define HEAD_STORE_FIELDS (HEAD_MAX_FIELDS + 16)
#define HEAD_STORE_BYTES  (HEAD_MAX_BYTES + 8 * 1024)

/* The field names remora acts on, recognized once when a field is added (field_classify). */
enum field_id {
    F_OTHER,
    F_HOST,
    F_CONNECTION,
    F_KEEP_ALIVE,
    F_PROXY_CONNECTION,
    F_TE,
    F_TRANSFER_ENCODING,
    F_UPGRADE,
    F_TRAILER,
    F_PROXY_AUTHENTICATE,
    F_PROXY_AUTHORIZATION,
    F_X_FORWARDED_FOR,
    F_X_FORWARDED_PROTO,
    F_X_REQUEST_ID,
    F_X_AMZN_TRACE_ID,
    F_EXPECT,
    F_USER_AGENT,
    F_CONTENT_LENGTH,
};

typedef struct field {
    uint32_t name, name_len;   /* offset into bytes; the name as received (any case) */
    uint32_t value, value_len; /* offset into bytes; surrounding whitespace already removed */
    uint8_t id;                /* enum field_id */
    uint8_t hop;               /* not forwarded: the RFC 9110 §7.6.1 names when added (see
                                  field_classify); the header policy, headers.c, adds more */
} field_t;

typedef struct head {
    char *bytes;
    uint32_t len, cap;
    /* Bytes the head takes on the wire, for HEAD_MAX_BYTES: the start line as received, and
     * each field's line as it is added (a bound on what writing the fields takes). */
    uint32_t wire;
    field_t *fields;
    unsigned nfields, fields_cap;
    /* Request: method, and the request-target exactly as received (origin, absolute,
     * authority or asterisk form, RFC 9112 §3.2). */
    uint8_t method; /* enum http_method */
    uint32_t method_text, method_len;
    uint32_t target, target_len;
    /* Response: status and reason phrase. */
    uint16_t status;
    uint32_t reason, reason_len;
    uint8_t major, minor; /* the version it was received with (1.0, 1.1; 2.0 for h2) */
} head_t;

struct loop;

/* A head from the loop's free list (storage kept from earlier messages), or a new one; NULL
 * when memory is exhausted. head_give returns it (emptied). */
head_t *head_take(struct loop *l);
void head_give(struct loop *l, head_t *h);
/* At exit: free the loop's kept heads. */
void head_pool_free(struct loop *l);

void head_init(head_t *h);
/* Empty the head for the next message; the storage is kept. */
void head_reset(head_t *h);
void head_free(head_t *h);
/* Exchange the contents (and storage) of two heads. */
void head_swap(head_t *a, head_t *b);

/* Append n bytes plus a NUL to the storage without touching the wire count; returns the offset
 * of the copy, or a negative ERR_TOO_LARGE / UV_ENOMEM. For codecs that build heads. */
int64_t head_store(head_t *h, const char *p, size_t n);
/* Add a field (name and value copied; value already trimmed), stored in line form (below).
 * Neither may point into h's own storage, which may move. Returns 0, ERR_TOO_LARGE or
 * UV_ENOMEM. */
int head_add_field(head_t *h, const char *name, size_t name_len, const char *value,
                   size_t value_len);

/* Add a field whose name and value are already in the storage (offsets of NUL-terminated
 * pieces; value already trimmed), for codecs that parse a head in place. Counts the wire bytes
 * like head_add_field. Returns 0, ERR_TOO_LARGE or UV_ENOMEM. */
int head_add_stored(head_t *h, uint32_t name, uint32_t name_len, uint32_t value,
                    uint32_t value_len);

static inline const char *head_str(const head_t *h, uint32_t off)
{
    return h->bytes + off;
}
static inline const char *field_name(const head_t *h, unsigned i)
{
    return h->bytes + h->fields[i].name;
}
static inline const char *field_value(const head_t *h, unsigned i)
{
    return h->bytes + h->fields[i].value;
}

/* Whether a field is stored in line form: name, NUL, one byte, value, NUL, one byte; that is a
 * field line "name: value" CRLF but for its separators. A received line "name: value" is kept
 * so, and head_add_field stores one so: a writer of HTTP/1 copies such fields (a run of them,
 * when each follows the one before in storage) and puts the separators back. */
static inline int field_in_line_form(const field_t *f)
{
    return f->value == f->name + f->name_len + 2;
}
/* Where a field in line form ends in storage: past its line end. */
static inline uint32_t field_line_end(const field_t *f)
{
    return f->value + f->value_len + 2;
}

/* The id of a field name (case-insensitive); *hop tells whether RFC 9110 §7.6.1 makes the name
 * itself hop-by-hop. */
enum field_id field_classify(const char *name, size_t n, int *hop);
/* Index of the first field named `name` (case-insensitive), or -1. */
int head_find(const head_t *h, const char *name, size_t n);
/* Index of the first field classified as `id`, or -1; `from` is where to start looking. */
int head_find_id(const head_t *h, enum field_id id, unsigned from);
/* Whether the comma-separated list (n bytes) contains `token`, case-insensitively. */
int list_has(const char *list, size_t n, const char *token, size_t tlen);
/* Strip optional whitespace around a value: returns the trimmed start, sets *n. */
const char *trim_ows(const char *p, size_t *n);

#endif

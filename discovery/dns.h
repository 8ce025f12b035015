/* A c-ares channel driven by a libuv loop: sockets watched with uv_poll, c-ares' own timeouts
 * with one timer. Short tries (500 ms, 2 tries: a dead server costs at most 1.5 s per query)
 * and ARES_FLAG_NOCHECKRESP, so SERVFAIL and REFUSED are seen as such rather than as "connection
 * refused". Truncated UDP answers are retried over TCP by c-ares itself. */
#ifndef REMORA_DNS_H
#define REMORA_DNS_H

#include <uv.h>

#include "discovery/dns_parse.h"

#define DNS_TRY_TIMEOUT_MS 500
#define DNS_TRIES          2

/* What a query came to, as operators count it (remora_dns_answers_total{result}). */
enum dns_result {
    DNS_OK,       /* records (parse the answer) */
    DNS_NODATA,   /* the name exists, no records of the type */
    DNS_NXDOMAIN, /* the name does not exist */
    DNS_SERVFAIL,
    DNS_REFUSED,
    DNS_TIMEOUT,
    DNS_UNREACHABLE, /* nothing listening, or no route */
    DNS_BAD_ANSWER,  /* a packet we could not parse */
    DNS_CANCELLED,   /* the channel closed; not counted */
    DNS_NRESULTS
};

const char *dns_result_name(enum dns_result r);

typedef struct dns dns_t;
/* The answer is parsed (DNS_OK), or empty; the callback must not free the channel. */
typedef void (*dns_cb)(void *arg, enum dns_result result, const dns_answer_t *answer);

/* 0 when `servers` is "ip[:port][,ip[:port]]" (IPv6 as "[v6]:port" or a bare "v6") with ports
 * of 1..65535, else UV_EINVAL. Addresses only: names are not resolved. */
int dns_servers_check(const char *servers);
/* `servers`: as dns_servers_check takes, or NULL for /etc/resolv.conf. Returns 0 or an error. */
int dns_open(dns_t **out, uv_loop_t *loop, const char *servers);
/* Query `name` for `type` (T_SRV, T_A, T_AAAA). The callback always runs, later. */
void dns_query(dns_t *d, const char *name, int type, dns_cb cb, void *arg);
/* Cancels outstanding queries (their callbacks see DNS_CANCELLED) and frees the channel once
 * its handles have closed. */
void dns_close(dns_t *d);

#endif

#include "discovery/dns.h"

#include <ares.h>
#include <ares_nameser.h>
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "base/number.h"

typedef struct sock_watch {
    uv_poll_t poll;
    ares_socket_t fd;
    struct sock_watch *next;
    struct dns *dns;
} sock_watch_t;

struct dns {
    uv_loop_t *loop;
    ares_channel channel;
    uv_timer_t timer;
    sock_watch_t *watches;
    int closing;
};

typedef struct query {
    dns_t *dns;
    dns_cb cb;
    void *arg;
} query_t;

const char *dns_result_name(enum dns_result r)
{
    static const char *const names[] = {"ok",          "nodata",     "nxdomain",
                                        "servfail",    "refused",    "timeout",
                                        "unreachable", "bad_answer", "cancelled"};
    return r < DNS_NRESULTS ? names[r] : "unknown";
}

static void on_timer(uv_timer_t *t);

/* After any c-ares work: wake again when its next timeout is due, or not at all. */
static void rearm(dns_t *d)
{
    struct timeval tv;
    if (d->closing)
        return;
    if (ares_timeout(d->channel, NULL, &tv))
        uv_timer_start(&d->timer, on_timer,
                       (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000 + 1, 0);
    else
        uv_timer_stop(&d->timer);
}

static void on_timer(uv_timer_t *t)
{
    dns_t *d = t->data;
    ares_process_fd(d->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    rearm(d);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    sock_watch_t *w = p->data;
    dns_t *d = w->dns;
    ares_socket_t fd = w->fd;
    if (status < 0)
        ares_process_fd(d->channel, fd, fd);
    else
        ares_process_fd(d->channel, events & UV_READABLE ? fd : ARES_SOCKET_BAD,
                        events & UV_WRITABLE ? fd : ARES_SOCKET_BAD);
    rearm(d);
}

static void on_watch_closed(uv_handle_t *h)
{
    free(h->data);
}

/* c-ares says which sockets to watch; (fd, 0, 0) comes before it closes the fd. */
static void on_sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    dns_t *d = data;
    sock_watch_t **link = &d->watches;
    while (*link && (*link)->fd != fd)
        link = &(*link)->next;
    sock_watch_t *w = *link;
    if (!readable && !writable) {
        if (w) {
            *link = w->next;
            uv_poll_stop(&w->poll);
            uv_close((uv_handle_t *)&w->poll, on_watch_closed);
        }
        return;
    }
    if (!w) {
        w = calloc(1, sizeof *w);
        if (!w || uv_poll_init_socket(d->loop, &w->poll, fd) != 0) {
            free(w);
            return;
        }
        w->fd = fd;
        w->dns = d;
        w->poll.data = w;
        w->next = d->watches;
        d->watches = w;
    }
    uv_poll_start(&w->poll, (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0), on_poll);
}

/* One "ip", "ip:port", "ipv6" or "[ipv6]:port" in [s, end): 0 or -1. c-ares takes a port of
 * 99999 as 99999 % 65536, so the port is checked here: digits only, 1..65535. */
static int server_ok(const char *s, const char *end)
{
    char ip[INET6_ADDRSTRLEN + 1];
    unsigned char bin[sizeof(struct in6_addr)];
    const char *ip_end = end, *p = NULL; /* p: the port's ':' */
    const char *colon = memchr(s, ':', (size_t)(end - s));
    int v6 = 0;
    if (s < end && *s == '[') {
        ip_end = memchr(s, ']', (size_t)(end - s));
        if (!ip_end || (ip_end + 1 < end && ip_end[1] != ':'))
            return -1;
        s++;
        p = ip_end + 1 < end ? ip_end + 1 : NULL;
        v6 = 1;
    } else if (colon && memchr(colon + 1, ':', (size_t)(end - colon - 1))) {
        v6 = 1; /* a bare IPv6 address, no port */
    } else if (colon) {
        ip_end = p = colon;
    }
    size_t iplen = (size_t)(ip_end - s);
    if (iplen == 0 || iplen >= sizeof ip)
        return -1;
    memcpy(ip, s, iplen);
    ip[iplen] = '\0';
    if (inet_pton(v6 ? AF_INET6 : AF_INET, ip, bin) != 1)
        return -1;
    if (!p)
        return 0;
    return port_parse(p + 1, (size_t)(end - p - 1)) < 0 ? -1 : 0;
}

int dns_servers_check(const char *servers)
{
    const char *s = servers;
    for (;;) {
        size_t len = strcspn(s, ",");
        if (server_ok(s, s + len) != 0)
            return UV_EINVAL;
        if (!s[len])
            return 0;
        s += len + 1;
    }
}

int dns_open(dns_t **out, uv_loop_t *loop, const char *servers)
{
    if (servers && *servers && dns_servers_check(servers) != 0)
        return UV_EINVAL;
    dns_t *d = calloc(1, sizeof *d);
    if (!d)
        return UV_ENOMEM;
    struct ares_options o = {
        .flags = ARES_FLAG_NOCHECKRESP | ARES_FLAG_NOSEARCH,
        .timeout = DNS_TRY_TIMEOUT_MS,
        .tries = DNS_TRIES,
        .sock_state_cb = on_sock_state,
        .sock_state_cb_data = d,
    };
    int mask = ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_SOCK_STATE_CB;
    if (ares_init_options(&d->channel, &o, mask) != ARES_SUCCESS) {
        free(d);
        return UV_EINVAL;
    }
    if (servers && *servers && ares_set_servers_ports_csv(d->channel, servers) != ARES_SUCCESS) {
        ares_destroy(d->channel);
        free(d);
        return UV_EINVAL;
    }
    d->loop = loop;
    uv_timer_init(loop, &d->timer);
    d->timer.data = d;
    *out = d;
    return 0;
}

static enum dns_result classify(int status)
{
    switch (status) {
    case ARES_SUCCESS:
        return DNS_OK;
    case ARES_ENODATA:
        return DNS_NODATA;
    case ARES_ENOTFOUND:
        return DNS_NXDOMAIN;
    case ARES_ESERVFAIL:
        return DNS_SERVFAIL;
    case ARES_EREFUSED:
        return DNS_REFUSED;
    case ARES_ETIMEOUT:
        return DNS_TIMEOUT;
    case ARES_ECONNREFUSED:
        return DNS_UNREACHABLE;
    case ARES_EDESTRUCTION:
    case ARES_ECANCELLED:
        return DNS_CANCELLED;
    default:
        return DNS_BAD_ANSWER;
    }
}

static void on_answer(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    (void)timeouts;
    query_t *q = arg;
    dns_answer_t answer = {0};
    enum dns_result r = classify(status);
    if (r == DNS_OK && (!abuf || dns_parse(abuf, alen, &answer) != 0))
        r = DNS_BAD_ANSWER;
    q->cb(q->arg, r, &answer);
    dns_answer_free(&answer);
    free(q);
}

void dns_query(dns_t *d, const char *name, int type, dns_cb cb, void *arg)
{
    query_t *q = malloc(sizeof *q);
    if (!q) {
        dns_answer_t none = {0};
        cb(arg, DNS_BAD_ANSWER, &none);
        return;
    }
    *q = (query_t){d, cb, arg};
    ares_query(d->channel, name, C_IN, type, on_answer, q);
    rearm(d);
}

static void on_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

void dns_close(dns_t *d)
{
    if (!d || d->closing)
        return;
    d->closing = 1;
    ares_destroy(d->channel); /* runs every pending callback with ARES_EDESTRUCTION */
    while (d->watches) {
        sock_watch_t *w = d->watches;
        d->watches = w->next;
        uv_poll_stop(&w->poll);
        uv_close((uv_handle_t *)&w->poll, on_watch_closed);
    }
    uv_close((uv_handle_t *)&d->timer, on_timer_closed);
}

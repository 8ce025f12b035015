#include "http/client.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/err.h"
#include "base/version.h"
#include "http/h1_parse.h"

#define READ_BUF 16384

typedef struct hconn hconn_t;

struct http_client {
    uv_loop_t *loop;
    SSL_CTX *tls; /* made at the first https request */
    http_call_t *calls;
    hconn_t *idle;
    unsigned nidle;
};

/* A connection: attached to one call, idle in the client's list, or closing. */
struct hconn {
    uv_tcp_t tcp;
    uv_connect_t connect;
    http_client_t *cl;
    http_call_t *call;
    hconn_t *next_idle;
    char origin[320];
    SSL *ssl;
    uint64_t idle_since;
    unsigned reused : 1;
    unsigned closing : 1;
    char rbuf[READ_BUF];
};

struct http_call {
    http_call_t *prev, *next;
    http_client_t *cl;
    http_url_t url;
    char origin[320];
    char *req;
    size_t req_len;
    size_t max_body;
    uv_timer_t timer;
    uv_getaddrinfo_t gai;
    struct addrinfo *addrs, *next_addr;
    hconn_t *conn;
    h1_parser_t parser;
    head_t head;
    char *body;
    size_t body_len, body_cap;
    http_done_cb cb;
    void *arg;
    int early_err;    /* a failure found in http_fetch, reported from the timer */
    unsigned pending; /* the timer and a name lookup still owe a callback */
    unsigned got_bytes : 1;
    unsigned sent : 1; /* TLS: the request went into SSL_write */
    unsigned retried : 1;
    unsigned done : 1;
    unsigned cancelled : 1;
};

typedef struct wr {
    uv_write_t req;
    char data[];
} wr_t;

/* ---- URLs ---- */

/* A bracketed host is an IPv6 address; any other a name or IPv4 address (letters, digits, '-',
 * '.', '_'), so that what is sent as Host and SNI is what was meant. */
static int valid_host(const char *host, int bracketed)
{
    struct in6_addr a6;
    if (bracketed)
        return uv_inet_pton(AF_INET6, host, &a6) == 0;
    for (const char *c = host; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '-' || *c == '.' || *c == '_'))
            return 0;
    return 1;
}

static int parse_authority(const char *p, size_t n, http_url_t *u)
{
    const char *port = NULL;
    size_t hlen = n;
    if (n && p[0] == '[') {
        const char *close = memchr(p, ']', n);
        if (!close)
            return ERR_BAD_URL;
        hlen = (size_t)(close - p - 1);
        memcpy(u->host, p + 1, hlen < sizeof u->host ? hlen : 0);
        if (close + 1 < p + n) {
            if (close[1] != ':')
                return ERR_BAD_URL;
            port = close + 2;
        }
    } else {
        const char *colon = memchr(p, ':', n);
        if (colon) {
            hlen = (size_t)(colon - p);
            port = colon + 1;
        }
        memcpy(u->host, p, hlen < sizeof u->host ? hlen : 0);
    }
    if (hlen == 0 || hlen >= sizeof u->host)
        return ERR_BAD_URL;
    u->host[hlen] = '\0';
    if (!valid_host(u->host, p[0] == '['))
        return ERR_BAD_URL;
    u->port = u->tls ? 443 : 80;
    if (port) {
        size_t plen = (size_t)(p + n - port);
        unsigned long v = 0;
        if (plen == 0 || plen > 5)
            return ERR_BAD_URL;
        for (size_t i = 0; i < plen; i++) {
            if (port[i] < '0' || port[i] > '9')
                return ERR_BAD_URL;
            v = v * 10 + (unsigned long)(port[i] - '0');
        }
        if (v == 0 || v > 65535)
            return ERR_BAD_URL;
        u->port = (uint16_t)v;
    }
    int v6 = strchr(u->host, ':') != NULL;
    if (u->port == (u->tls ? 443 : 80))
        snprintf(u->authority, sizeof u->authority, v6 ? "[%s]" : "%s", u->host);
    else
        snprintf(u->authority, sizeof u->authority, v6 ? "[%s]:%u" : "%s:%u", u->host, u->port);
    return 0;
}

int http_url_parse(const char *url, http_url_t *u)
{
    memset(u, 0, sizeof *u);
    const char *rest;
    if (strncasecmp(url, "http://", 7) == 0)
        rest = url + 7;
    else if (strncasecmp(url, "https://", 8) == 0)
        rest = url + 8, u->tls = 1;
    else
        return ERR_BAD_URL;
    size_t alen = strcspn(rest, "/?#");
    if (memchr(rest, '@', alen) || strchr(rest, '#'))
        return ERR_BAD_URL;
    for (const char *p = rest; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f)
            return ERR_BAD_URL; /* no whitespace or controls in a request line */
    int err = parse_authority(rest, alen, u);
    if (err)
        return err;
    const char *path = rest + alen;
    int n = snprintf(u->path, sizeof u->path, "%s%s", *path == '/' ? "" : "/", path);
    return n < 0 || (size_t)n >= sizeof u->path ? ERR_BAD_URL : 0;
}

/* ---- connections ---- */

static void on_conn_closed(uv_handle_t *h)
{
    hconn_t *hc = h->data;
    SSL_free(hc->ssl);
    free(hc);
}

static void unlink_idle(hconn_t *hc)
{
    for (hconn_t **p = &hc->cl->idle; *p; p = &(*p)->next_idle)
        if (*p == hc) {
            *p = hc->next_idle;
            hc->cl->nidle--;
            return;
        }
}

static void conn_close_now(hconn_t *hc)
{
    if (hc->closing)
        return;
    hc->closing = 1;
    if (!hc->call)
        unlink_idle(hc);
    hc->call = NULL;
    uv_close((uv_handle_t *)&hc->tcp, on_conn_closed);
}

static void park(hconn_t *hc)
{
    http_client_t *cl = hc->cl;
    hc->call = NULL;
    hc->idle_since = uv_now(cl->loop);
    hc->next_idle = cl->idle;
    cl->idle = hc;
    if (++cl->nidle > HTTP_IDLE_MAX) {
        hconn_t *oldest = cl->idle;
        while (oldest->next_idle)
            oldest = oldest->next_idle;
        conn_close_now(oldest);
    }
}

/* An idle connection to `origin`, taken out of the list; the stale ones are closed. */
static hconn_t *take_idle(http_client_t *cl, const char *origin)
{
    uint64_t now = uv_now(cl->loop);
    for (hconn_t *hc = cl->idle, *next; hc; hc = next) {
        next = hc->next_idle;
        if (now - hc->idle_since >= HTTP_IDLE_MS)
            conn_close_now(hc);
    }
    for (hconn_t *hc = cl->idle; hc; hc = hc->next_idle)
        if (!strcmp(hc->origin, origin)) {
            unlink_idle(hc);
            hc->reused = 1;
            return hc;
        }
    return NULL;
}

static void on_written(uv_write_t *req, int status)
{
    (void)status; /* a failed write shows as a read error or EOF */
    free(req);
}

static int send_bytes(hconn_t *hc, const void *p, size_t n)
{
    wr_t *w = malloc(sizeof *w + n);
    if (!w)
        return UV_ENOMEM;
    memcpy(w->data, p, n);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
    int err = uv_write(&w->req, (uv_stream_t *)&hc->tcp, &b, 1, on_written);
    if (err)
        free(w);
    return err;
}

/* ---- calls ---- */

static void on_timer_closed(uv_handle_t *h);

static void unlink_call(http_call_t *call)
{
    if (call->prev)
        call->prev->next = call->next;
    else if (call->cl->calls == call)
        call->cl->calls = call->next;
    if (call->next)
        call->next->prev = call->prev;
    call->prev = call->next = NULL;
}

static void maybe_free(http_call_t *call)
{
    if (call->pending)
        return;
    if (call->addrs)
        uv_freeaddrinfo(call->addrs);
    head_free(&call->head);
    free(call->body);
    free(call->req);
    free(call);
}

static void on_timer_closed(uv_handle_t *h)
{
    http_call_t *call = h->data;
    call->pending--;
    maybe_free(call);
}

/* Ends the call: the connection is kept for the next request when `reusable`, the callback
 * runs (unless cancelled; it may close the client), and the call's memory goes once its
 * handles are closed. */
static void complete(http_call_t *call, int err, int reusable)
{
    if (call->done)
        return;
    call->done = 1;
    uv_timer_stop(&call->timer);
    hconn_t *hc = call->conn;
    call->conn = NULL;
    if (hc && err == 0 && reusable)
        park(hc);
    else if (hc)
        conn_close_now(hc);
    unlink_call(call);
    uv_close((uv_handle_t *)&call->timer, on_timer_closed);
    if (!call->cancelled) {
        http_response_t r = {err, err ? 0 : call->head.status, err ? NULL : &call->head,
                             err ? NULL : call->body, err ? 0 : call->body_len};
        call->cb(call->arg, &r);
    }
}

static int append_body(http_call_t *call, const char *p, size_t n)
{
    if (call->body_len + n > call->max_body)
        return ERR_TOO_LARGE;
    if (call->body_len + n + 1 > call->body_cap) {
        size_t cap = call->body_cap ? call->body_cap : 4096;
        while (cap < call->body_len + n + 1)
            cap *= 2;
        char *grown = realloc(call->body, cap);
        if (!grown)
            return UV_ENOMEM;
        call->body = grown;
        call->body_cap = cap;
    }
    memcpy(call->body + call->body_len, p, n);
    call->body_len += n;
    call->body[call->body_len] = '\0';
    return 0;
}

/* Response bytes. Returns 1 when the call ended (the connection may be gone). */
static int feed(http_call_t *call, const char *p, size_t n)
{
    call->got_bytes = 1;
    for (;;) { /* until the parser needs more: a message can end with no bytes left */
        h1_ev_t ev;
        size_t used = h1_parse(&call->parser, p, n, &ev);
        p += used;
        n -= used;
        int err = 0;
        switch (ev.type) {
        case H1_NEED_MORE:
            return 0;
        case H1_HEAD:
            if (call->head.status < 200)
                head_reset(&call->head); /* an interim response: the final one follows */
            continue;
        case H1_DATA:
            err = append_body(call, ev.p, ev.n);
            break;
        case H1_END:
            complete(call, 0, n == 0 && !(call->parser.flags & H1F_CLOSE));
            return 1;
        case H1_ERROR:
            err = ERR_BAD_RESPONSE;
            break;
        }
        if (err) {
            complete(call, err, 0);
            return 1;
        }
    }
}

static void start_connect(http_call_t *call);

/* The peer closed (or the connection failed) with the call attached. */
static void on_peer_gone(http_call_t *call, int err)
{
    if (!call->got_bytes && call->conn->reused && !call->retried) {
        /* An idle connection the server had closed: once more, on a new one. */
        conn_close_now(call->conn);
        call->conn = NULL;
        call->retried = 1;
        call->sent = 0;
        start_connect(call);
        return;
    }
    h1_ev_t ev;
    h1_parse_eof(&call->parser, &ev);
    if (ev.type == H1_END)
        complete(call, 0, 0);
    else
        complete(call, err == UV_EOF ? ERR_UPSTREAM_CLOSED : err, 0);
}

/* TLS: move the handshake and the request on, and send what OpenSSL produced. */
static int tls_pump(hconn_t *hc)
{
    http_call_t *call = hc->call;
    if (call && !call->sent) {
        int r = SSL_write(hc->ssl, call->req, (int)call->req_len);
        if (r > 0)
            call->sent = 1;
        else {
            int e = SSL_get_error(hc->ssl, r);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
                return ERR_TLS;
        }
    }
    BIO *out = SSL_get_wbio(hc->ssl);
    char chunk[READ_BUF];
    int n;
    while ((n = BIO_read(out, chunk, sizeof chunk)) > 0) {
        int err = send_bytes(hc, chunk, (size_t)n);
        if (err)
            return err;
    }
    return 0;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)suggested;
    hconn_t *hc = h->data;
    *b = uv_buf_init(hc->rbuf, sizeof hc->rbuf);
}

static void on_tls_bytes(hconn_t *hc, const char *p, size_t n)
{
    BIO_write(SSL_get_rbio(hc->ssl), p, (int)n);
    char plain[READ_BUF];
    for (;;) {
        http_call_t *call = hc->call;
        int r = SSL_read(hc->ssl, plain, sizeof plain);
        if (r > 0) {
            if (!call) {
                conn_close_now(hc); /* bytes on an idle connection */
                return;
            }
            if (feed(call, plain, (size_t)r))
                return;
            continue;
        }
        int e = SSL_get_error(hc->ssl, r);
        if (e == SSL_ERROR_WANT_READ)
            break;
        ERR_clear_error();
        if (!call)
            conn_close_now(hc);
        else if (e == SSL_ERROR_ZERO_RETURN)
            on_peer_gone(call, UV_EOF);
        else
            complete(call, ERR_TLS, 0);
        return;
    }
    if (hc->call) {
        int err = tls_pump(hc);
        if (err)
            complete(hc->call, err, 0);
    }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    (void)b;
    hconn_t *hc = s->data;
    if (hc->closing || nread == 0)
        return;
    if (nread < 0) {
        if (hc->call)
            on_peer_gone(hc->call, (int)nread);
        else
            conn_close_now(hc);
        return;
    }
    if (hc->ssl)
        on_tls_bytes(hc, hc->rbuf, (size_t)nread);
    else if (!hc->call)
        conn_close_now(hc);
    else
        feed(hc->call, hc->rbuf, (size_t)nread);
}

static SSL_CTX *client_tls(http_client_t *cl)
{
    if (cl->tls)
        return cl->tls;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_default_verify_paths(ctx);
    const char *bundle = getenv("AWS_CA_BUNDLE");
    if (bundle && *bundle)
        SSL_CTX_load_verify_locations(ctx, bundle, NULL);
    return cl->tls = ctx;
}

static int start_tls(hconn_t *hc, const http_url_t *u)
{
    SSL_CTX *ctx = client_tls(hc->cl);
    hc->ssl = ctx ? SSL_new(ctx) : NULL;
    BIO *in = BIO_new(BIO_s_mem()), *out = BIO_new(BIO_s_mem());
    if (!hc->ssl || !in || !out) {
        BIO_free(in);
        BIO_free(out);
        return UV_ENOMEM;
    }
    SSL_set_bio(hc->ssl, in, out);
    SSL_set_connect_state(hc->ssl);
    struct in6_addr a6;
    struct in_addr a4;
    int literal =
        uv_inet_pton(AF_INET, u->host, &a4) == 0 || uv_inet_pton(AF_INET6, u->host, &a6) == 0;
    if (!literal)
        SSL_set_tlsext_host_name(hc->ssl, u->host);
    X509_VERIFY_PARAM *vp = SSL_get0_param(hc->ssl);
    if (literal ? !X509_VERIFY_PARAM_set1_ip_asc(vp, u->host) : !SSL_set1_host(hc->ssl, u->host))
        return ERR_TLS;
    return 0;
}

/* The connection is up (new or reused): send the request. */
static void send_request(http_call_t *call, hconn_t *hc)
{
    call->conn = hc;
    hc->call = call;
    /* A reused connection is read already (so that a close while idle is seen). */
    int err = hc->reused ? 0 : uv_read_start((uv_stream_t *)&hc->tcp, on_alloc, on_read);
    if (!err && call->url.tls && !hc->ssl)
        err = start_tls(hc, &call->url);
    if (!err)
        err = hc->ssl ? tls_pump(hc) : send_bytes(hc, call->req, call->req_len);
    if (err)
        complete(call, err, 0);
}

static void connect_next(http_call_t *call, int last_err);

static void on_connected(uv_connect_t *req, int status)
{
    hconn_t *hc = req->data;
    http_call_t *call = hc->call;
    if (hc->closing || !call)
        return;
    if (status) {
        conn_close_now(hc);
        call->conn = NULL;
        connect_next(call, status);
        return;
    }
    send_request(call, hc);
}

/* Try the next resolved address; with none left, the call fails with the last error. */
static void connect_next(http_call_t *call, int last_err)
{
    struct addrinfo *ai = call->next_addr;
    while (ai && ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
        ai = ai->ai_next;
    if (!ai) {
        complete(call, last_err, 0);
        return;
    }
    call->next_addr = ai->ai_next;
    hconn_t *hc = calloc(1, sizeof *hc);
    if (!hc) {
        complete(call, UV_ENOMEM, 0);
        return;
    }
    hc->cl = call->cl;
    snprintf(hc->origin, sizeof hc->origin, "%s", call->origin);
    uv_tcp_init(call->cl->loop, &hc->tcp);
    hc->tcp.data = hc->connect.data = hc;
    hc->call = call;
    call->conn = hc;
    struct sockaddr_storage ss;
    memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
    ((struct sockaddr_in *)&ss)->sin_port = htons(call->url.port); /* same offset for v6 */
    int err = uv_tcp_connect(&hc->connect, &hc->tcp, (struct sockaddr *)&ss, on_connected);
    if (err) {
        conn_close_now(hc);
        call->conn = NULL;
        connect_next(call, err);
    }
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    http_call_t *call = req->data;
    call->pending--;
    if (call->done) {
        if (res)
            uv_freeaddrinfo(res);
        maybe_free(call);
        return;
    }
    if (call->addrs)
        uv_freeaddrinfo(call->addrs);
    call->addrs = call->next_addr = status ? NULL : res;
    connect_next(call, status ? status : UV_EAI_NONAME);
}

static void start_connect(http_call_t *call)
{
    hconn_t *hc = take_idle(call->cl, call->origin);
    if (hc) {
        send_request(call, hc);
        return;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    call->gai.data = call;
    int err = uv_getaddrinfo(call->cl->loop, &call->gai, on_resolved, call->url.host, NULL, &hints);
    if (err)
        complete(call, err, 0);
    else
        call->pending++;
}

static void on_timer(uv_timer_t *t)
{
    http_call_t *call = t->data;
    complete(call, call->early_err ? call->early_err : UV_ETIMEDOUT, 0);
}

static char *build_request(const http_request_t *rq, const http_url_t *u, size_t *len)
{
    const char *extra = rq->headers ? rq->headers : "";
    size_t cap = strlen(rq->method) + strlen(u->path) + strlen(u->authority) + strlen(extra) +
                 rq->body_len + 128;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    int n = snprintf(out, cap,
                     "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: remora/" REMORA_VERSION "\r\n%s",
                     rq->method, u->path, u->authority, extra);
    if (rq->body_len || strcmp(rq->method, "GET") != 0)
        n += snprintf(out + n, cap - (size_t)n, "Content-Length: %zu\r\n", rq->body_len);
    n += snprintf(out + n, cap - (size_t)n, "\r\n");
    if (rq->body_len)
        memcpy(out + n, rq->body, rq->body_len);
    *len = (size_t)n + rq->body_len;
    return out;
}

http_call_t *http_fetch(http_client_t *cl, const http_request_t *rq, http_done_cb cb, void *arg)
{
    http_call_t *call = calloc(1, sizeof *call);
    if (!call)
        return NULL;
    call->cl = cl;
    call->cb = cb;
    call->arg = arg;
    call->max_body = rq->max_body;
    head_init(&call->head);
    h1_parser_init(&call->parser, H1_RESPONSE, &call->head, NULL);
    call->parser.request_method = (uint8_t)http_method_of(rq->method, strlen(rq->method));
    uv_timer_init(cl->loop, &call->timer);
    call->timer.data = call;
    call->pending = 1;
    call->next = cl->calls;
    if (cl->calls)
        cl->calls->prev = call;
    cl->calls = call;
    call->early_err = http_url_parse(rq->url, &call->url);
    if (!call->early_err) {
        snprintf(call->origin, sizeof call->origin, "%d:%s:%u", call->url.tls, call->url.host,
                 call->url.port);
        call->req = build_request(rq, &call->url, &call->req_len);
        if (!call->req)
            call->early_err = UV_ENOMEM;
    }
    uv_timer_start(&call->timer, on_timer, call->early_err ? 0 : rq->timeout_ms, 0);
    if (!call->early_err)
        start_connect(call);
    return call;
}

void http_cancel(http_call_t *call)
{
    if (!call || call->done)
        return;
    call->cancelled = 1;
    if (call->pending > 1)
        uv_cancel((uv_req_t *)&call->gai);
    complete(call, UV_ECANCELED, 0);
}

const char *http_field(const http_response_t *r, const char *name)
{
    if (!r->head)
        return NULL;
    int i = head_find(r->head, name, strlen(name));
    return i < 0 ? NULL : field_value(r->head, (unsigned)i);
}

int http_client_open(http_client_t **out, uv_loop_t *loop)
{
    http_client_t *cl = calloc(1, sizeof *cl);
    if (!cl)
        return UV_ENOMEM;
    cl->loop = loop;
    *out = cl;
    return 0;
}

void http_client_close(http_client_t *cl)
{
    if (!cl)
        return;
    while (cl->calls)
        http_cancel(cl->calls);
    while (cl->idle)
        conn_close_now(cl->idle);
    SSL_CTX_free(cl->tls);
    free(cl);
}

/* A fast HTTP/2 upstream for the bench (bench_h2.py): h2c with prior knowledge on nghttp2,
 * one thread, epoll. h2load cannot serve and Debian's nghttpd cannot answer gRPC (no
 * trailers, no content-type of its choosing), so the HTTP/2 and gRPC figures need this.
 *
 *   h2_upstream PORT [MAX_CONCURRENT_STREAMS]
 *
 * A request whose content-type starts with application/grpc is a unary gRPC call: its
 * messages are echoed back (or one empty message when it sent none), with
 * content-type: application/grpc and the trailer grpc-status: 0 (request bodies beyond 64 KiB
 * are read and dropped). Anything else is answered 200 "hello, world\n" (what the bench's nginx
 * upstream answers to /small). Windows are credited as data arrives (automatic WINDOW_UPDATE).
 * SIGTERM or SIGINT stops it. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BODY_KEPT (64 * 1024)
#define OUT_MAX   (256 * 1024)

static const char SMALL[] = "hello, world\n";
static volatile sig_atomic_t stopping;

typedef struct stream {
    int32_t id;
    int grpc;
    size_t len, sent;
    uint8_t body[BODY_KEPT + 5];
} stream_t;

typedef struct conn {
    int fd;
    nghttp2_session *s;
    uint8_t out[OUT_MAX];
    size_t out_len, out_off;
    const uint8_t *pending; /* a chunk of mem_send not yet copied to out */
    size_t pending_len;
    int want_out;
} conn_t;

static void on_signal(int sig)
{
    (void)sig;
    stopping = 1;
}

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    (void)ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    stream_t *st = calloc(1, sizeof(*st));
    if (!st)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    st->id = f->hd.stream_id;
    nghttp2_session_set_stream_user_data(s, st->id, st);
    return 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
    (void)flags;
    (void)ud;
    stream_t *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (st && nlen == 12 && memcmp(name, "content-type", 12) == 0 && vlen >= 16 &&
        memcmp(value, "application/grpc", 16) == 0)
        st->grpc = 1;
    return 0;
}

static int on_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                   void *ud)
{
    (void)flags;
    (void)ud;
    stream_t *st = nghttp2_session_get_stream_user_data(s, id);
    if (st && st->grpc && st->len < BODY_KEPT) {
        size_t n = len < BODY_KEPT - st->len ? len : BODY_KEPT - st->len;
        memcpy(st->body + st->len, data, n);
        st->len += n;
    }
    return 0;
}

static ssize_t read_body(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    (void)ud;
    stream_t *st = src->ptr;
    const uint8_t *from = st ? st->body : (const uint8_t *)SMALL;
    size_t total = st ? st->len : sizeof(SMALL) - 1, sent = st ? st->sent : 0;
    size_t n = total - sent < length ? total - sent : length;
    memcpy(buf, from + sent, n);
    if (st)
        st->sent += n;
    if (sent + n == total) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (st) {
            static const nghttp2_nv trailer[] = {
                {(uint8_t *)"grpc-status", (uint8_t *)"0", 11, 1, NGHTTP2_NV_FLAG_NONE}};
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            if (nghttp2_submit_trailer(s, id, trailer, 1) != 0)
                return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
    }
    return (ssize_t)n;
}

#define NV(n, v)                                                                                   \
    {                                                                                              \
        (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, sizeof(v) - 1, NGHTTP2_NV_FLAG_NONE         \
    }

static int respond(nghttp2_session *s, int32_t id)
{
    stream_t *st = nghttp2_session_get_stream_user_data(s, id);
    if (!st)
        return 0;
    nghttp2_data_provider prd;
    if (st->grpc) {
        static const nghttp2_nv hdrs[] = {NV(":status", "200"),
                                          NV("content-type", "application/grpc")};
        if (st->len < 5) { /* no message: answer one empty message */
            memset(st->body, 0, 5);
            st->len = 5;
        }
        prd.source.ptr = st;
        prd.read_callback = read_body;
        return nghttp2_submit_response(s, id, hdrs, 2, &prd);
    }
    static const nghttp2_nv hdrs[] = {NV(":status", "200"), NV("content-type", "text/plain"),
                                      NV("content-length", "13")};
    prd.source.ptr = NULL;
    prd.read_callback = read_body;
    return nghttp2_submit_response(s, id, hdrs, 3, &prd);
}

static int on_frame(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    (void)ud;
    if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
        (f->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return respond(s, f->hd.stream_id) == 0 ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
    return 0;
}

static int on_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud)
{
    (void)code;
    (void)ud;
    stream_t *st = nghttp2_session_get_stream_user_data(s, id);
    if (st) {
        nghttp2_session_set_stream_user_data(s, id, NULL);
        free(st);
    }
    return 0;
}

/* Moves nghttp2's output to the socket; returns -1 when the connection is done with. */
static int flush_out(conn_t *c)
{
    for (;;) {
        while (c->out_len < OUT_MAX) {
            if (!c->pending_len) {
                ssize_t n = nghttp2_session_mem_send(c->s, &c->pending);
                if (n < 0)
                    return -1;
                if (n == 0)
                    break;
                c->pending_len = (size_t)n;
            }
            size_t room = OUT_MAX - c->out_len;
            size_t n = c->pending_len < room ? c->pending_len : room;
            memcpy(c->out + c->out_len, c->pending, n);
            c->out_len += n;
            c->pending += n;
            c->pending_len -= n;
        }
        if (c->out_off == c->out_len)
            break;
        ssize_t w = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                c->want_out = 1;
                return 0;
            }
            if (errno == EINTR)
                continue;
            return -1;
        }
        c->out_off += (size_t)w;
        if (c->out_off == c->out_len)
            c->out_off = c->out_len = 0;
    }
    c->want_out = 0;
    if (!nghttp2_session_want_read(c->s) && !nghttp2_session_want_write(c->s))
        return -1;
    return 0;
}

static conn_t *conn_new(int fd, uint32_t max_streams)
{
    static nghttp2_session_callbacks *cbs;
    if (!cbs) {
        nghttp2_session_callbacks_new(&cbs);
        nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
        nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data);
        nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame);
        nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_close);
    }
    conn_t *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->fd = fd;
    if (nghttp2_session_server_new(&c->s, cbs, c) != 0) {
        free(c);
        return NULL;
    }
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, max_streams},
                                   {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20}};
    nghttp2_submit_settings(c->s, NGHTTP2_FLAG_NONE, iv, 2);
    nghttp2_session_set_local_window_size(c->s, NGHTTP2_FLAG_NONE, 0, 1 << 24);
    return c;
}

static void conn_free(int ep, conn_t *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    nghttp2_session_del(c->s);
    free(c);
}

static void rearm(int ep, conn_t *c)
{
    struct epoll_event ev = {.events = EPOLLIN | (c->want_out ? EPOLLOUT : 0u), .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT [MAX_CONCURRENT_STREAMS]\n", argv[0]);
        return 2;
    }
    int port = (int)strtol(argv[1], NULL, 10);
    uint32_t max_streams = argc > 2 ? (uint32_t)strtoul(argv[2], NULL, 10) : 1000;
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_port = htons((uint16_t)port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) != 0 || listen(lfd, 4096) != 0) {
        perror("h2_upstream: bind/listen");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
    static uint8_t in[64 * 1024];
    struct epoll_event evs[256];
    while (!stopping) {
        int n = epoll_wait(ep, evs, 256, 500);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    conn_t *nc = conn_new(fd, max_streams);
                    if (!nc) {
                        close(fd);
                        continue;
                    }
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
                    if (flush_out(nc) != 0)
                        conn_free(ep, nc);
                    else if (nc->want_out)
                        rearm(ep, nc);
                }
                continue;
            }
            int dead = 0;
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                for (;;) {
                    ssize_t r = read(c->fd, in, sizeof(in));
                    if (r > 0) {
                        if (nghttp2_session_mem_recv(c->s, in, (size_t)r) < 0) {
                            dead = 1;
                            break;
                        }
                        if (c->out_len >= OUT_MAX / 2 && flush_out(c) != 0) {
                            dead = 1;
                            break;
                        }
                        continue;
                    }
                    if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
                        dead = 1;
                    break;
                }
            }
            int had_out = c->want_out;
            if (dead || flush_out(c) != 0) {
                conn_free(ep, c);
                continue;
            }
            if (had_out != c->want_out)
                rearm(ep, c);
        }
    }
    close(lfd);
    close(ep);
    return 0;
}

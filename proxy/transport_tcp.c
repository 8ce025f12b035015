/* Plain TCP: libuv's stream calls, nothing in between. */
#include <stdlib.h>

#include "proxy/conn.h"

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *ub)
{
    buf_t *b = ub->base ? (buf_t *)(void *)(ub->base - offsetof(buf_t, data)) : NULL;
    conn_on_read(s->data, nread, b);
}

static int read_start(conn_t *c)
{
    return uv_read_start((uv_stream_t *)&c->tcp, conn_alloc_cb, on_read);
}

static void read_stop(conn_t *c)
{
    uv_read_stop((uv_stream_t *)&c->tcp);
}

static void on_written(uv_write_t *req, int status)
{
    conn_on_written((wreq_t *)req, status);
}

/* Try the socket first: a write that goes out whole needs no request, no callback and no
 * poller change (libuv re-registers the descriptor after every queued write), which is two
 * system calls per proxied request. Only what the socket did not take is queued. */
static int write_(conn_t *c, wreq_t *r)
{
    uv_stream_t *s = (uv_stream_t *)&c->tcp;
    int n = uv_try_write(s, r->iov, r->n);
    if (n == UV_EAGAIN)
        n = 0;
    else if (n < 0)
        return n;
    size_t left = (size_t)n;
    unsigned i = 0;
    while (i < r->n && left >= r->iov[i].len)
        left -= r->iov[i++].len;
    if (i == r->n)
        return 1;
    r->iov[i].base += left;
    r->iov[i].len -= left;
    return uv_write(&r->req, s, r->iov + i, r->n - i, on_written);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    free(req);
}

static int shutdown_(conn_t *c)
{
    uv_shutdown_t *req = malloc(sizeof *req);
    if (!req)
        return UV_ENOMEM;
    int err = uv_shutdown(req, (uv_stream_t *)&c->tcp, on_shutdown);
    if (err < 0)
        free(req);
    return err;
}

const transport_t transport_tcp = {
    .name = "tcp",
    .read_start = read_start,
    .read_stop = read_stop,
    .write = write_,
    .shutdown = shutdown_,
};

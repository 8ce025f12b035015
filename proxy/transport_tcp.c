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

static int write_(conn_t *c, wreq_t *r)
{
    return uv_write(&r->req, (uv_stream_t *)&c->tcp, r->iov, r->n, on_written);
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

/* An open-loop HTTP/1.1 load generator: requests are scheduled at a fixed rate and each one's
 * latency is measured from when it was scheduled, not from when a connection was free, so a
 * stall shows up in the percentiles instead of pausing the clock (coordinated omission).
 *
 * usage: openloop PORT RATE SECONDS CONNECTIONS PATH
 *        openloop -n COUNT PORT CONNECTIONS PATH
 * prints: sent=N ok=N errors=N p50_us=X p99_us=X p999_us=X max_us=X seconds=X
 *
 * With -n it is a closed loop instead: exactly COUNT requests, each connection sending its next
 * as soon as its answer is in (as wrk does, but with a fixed count rather than a fixed time, so
 * that a figure per request can be taken from counters read before and after). */
#include <llhttp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

typedef struct client {
    uv_tcp_t tcp;
    uv_connect_t connect;
    llhttp_t parser;
    int busy, connected;
    uint64_t scheduled_ns; /* the request in flight */
    struct client *next_idle;
} client_t;

static uv_loop_t *loop;
static struct sockaddr_in addr;
static char request[512];
static size_t request_len;
static uint64_t interval_ns, start_ns, end_ns, next_ns;
static uint64_t *latencies;
static size_t nlat, cap_lat, sent, errors, backlog_cap;
static size_t total;      /* -n: requests in all; 0 in open-loop mode */
static uint64_t *backlog; /* scheduled times waiting for a free connection */
static size_t backlog_head, backlog_len;
static client_t *idle;
static uv_timer_t tick;

static void send_on(client_t *c, uint64_t scheduled);

static void on_written(uv_write_t *w, int status)
{
    if (status < 0)
        errors++;
    free(w);
}

static void next_or_idle(client_t *c)
{
    c->busy = 0;
    if (total) { /* closed loop: the connection that answered sends the next request */
        if (sent < total)
            send_on(c, uv_hrtime());
        else if (nlat + errors >= sent)
            uv_stop(loop);
        return;
    }
    if (backlog_len) {
        uint64_t s = backlog[backlog_head];
        backlog_head = (backlog_head + 1) % backlog_cap;
        backlog_len--;
        send_on(c, s);
        return;
    }
    c->next_idle = idle;
    idle = c;
}

static int on_complete(llhttp_t *p)
{
    client_t *c = p->data;
    uint64_t lat = uv_hrtime() - c->scheduled_ns;
    if (nlat < cap_lat)
        latencies[nlat++] = lat;
    if (llhttp_get_status_code(p) != 200)
        errors++;
    next_or_idle(c);
    return 0;
}

static llhttp_settings_t settings;

static void on_alloc(uv_handle_t *h, size_t s, uv_buf_t *b)
{
    (void)h;
    static char buf[65536];
    (void)s;
    *b = uv_buf_init(buf, sizeof buf);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    client_t *c = s->data;
    if (n < 0) {
        errors++;
        uv_read_stop(s);
        return;
    }
    if (llhttp_execute(&c->parser, b->base, (size_t)n) != HPE_OK)
        errors++;
}

static void send_on(client_t *c, uint64_t scheduled)
{
    uv_write_t *w = malloc(sizeof *w);
    uv_buf_t b = uv_buf_init(request, (unsigned)request_len);
    c->busy = 1;
    c->scheduled_ns = scheduled;
    sent++;
    if (!w || uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, on_written) != 0) {
        free(w);
        errors++;
        c->busy = 0;
    }
}

/* A request that goes out at its tick is timed from the send (the 1 ms tick is not charged to
 * the proxy); one that must wait for a free connection is timed from its schedule, so a stall
 * counts in full. */
static void dispatch(uint64_t scheduled, uint64_t now)
{
    if (idle) {
        client_t *c = idle;
        idle = c->next_idle;
        send_on(c, now);
    } else if (backlog_len < backlog_cap) {
        backlog[(backlog_head + backlog_len++) % backlog_cap] = scheduled;
    } else {
        errors++;
    }
}

static void on_tick(uv_timer_t *t)
{
    uint64_t now = uv_hrtime();
    (void)t;
    while (next_ns <= now && next_ns < end_ns) {
        dispatch(next_ns, now);
        next_ns += interval_ns;
    }
    if (next_ns >= end_ns && (nlat + errors >= sent || now > end_ns + 2000000000ull))
        uv_stop(loop); /* everything answered, or 2 s of grace for the last answers passed */
}

/* -n: a connection that fails never answers, so the run also ends after 5 s without progress. */
static void on_watchdog(uv_timer_t *t)
{
    static size_t last_done, still;
    (void)t;
    still = nlat + errors == last_done ? still + 1 : 0;
    last_done = nlat + errors;
    if (still >= 5) {
        fprintf(stderr, "openloop: no progress for 5 s, stopping\n");
        uv_stop(loop);
    }
}

static void on_connect(uv_connect_t *req, int status)
{
    client_t *c = req->data;
    if (status < 0) {
        fprintf(stderr, "connect: %s\n", uv_strerror(status));
        exit(1);
    }
    c->connected = 1;
    uv_tcp_nodelay(&c->tcp, 1);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    c->next_idle = idle;
    idle = c;
}

static int cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t pct(double p)
{
    if (!nlat)
        return 0;
    size_t i = (size_t)(p * (double)(nlat - 1));
    return latencies[i] / 1000;
}

static void usage(void)
{
    fprintf(stderr, "usage: openloop PORT RATE SECONDS CONNECTIONS PATH\n"
                    "       openloop -n COUNT PORT CONNECTIONS PATH\n");
    exit(2);
}

static unsigned long number(const char *s)
{
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (end == s || *end)
        usage();
    return v;
}

int main(int argc, char **argv)
{
    if (argc != 6)
        usage();
    int port, conns;
    double rate = 0, seconds = 0;
    if (strcmp(argv[1], "-n") == 0) {
        total = number(argv[2]);
        port = (int)number(argv[3]);
        conns = (int)number(argv[4]);
        if (!total || !conns)
            usage();
    } else {
        port = (int)number(argv[1]);
        conns = (int)number(argv[4]);
        rate = atof(argv[2]);
        seconds = atof(argv[3]);
    }
    loop = uv_default_loop();
    uv_ip4_addr("127.0.0.1", port, &addr);
    request_len = (size_t)snprintf(request, sizeof request,
                                   "GET %s HTTP/1.1\r\nHost: bench\r\nUser-Agent: openloop\r\n\r\n", argv[5]);
    cap_lat = total ? total + 16 : (size_t)(rate * seconds) + 16;
    latencies = malloc(cap_lat * sizeof *latencies);
    backlog_cap = cap_lat;
    backlog = malloc(backlog_cap * sizeof *backlog);
    llhttp_settings_init(&settings);
    settings.on_message_complete = on_complete;
    client_t *clients = calloc((size_t)conns, sizeof *clients);
    for (int i = 0; i < conns; i++) {
        uv_tcp_init(loop, &clients[i].tcp);
        clients[i].tcp.data = &clients[i];
        clients[i].connect.data = &clients[i];
        llhttp_init(&clients[i].parser, HTTP_RESPONSE, &settings);
        clients[i].parser.data = &clients[i];
        uv_tcp_connect(&clients[i].connect, &clients[i].tcp, (struct sockaddr *)&addr, on_connect);
    }
    int up = 0;
    while (up < conns) { /* every connection established before the clock starts */
        uv_run(loop, UV_RUN_ONCE);
        up = 0;
        for (int i = 0; i < conns; i++)
            up += clients[i].connected;
    }
    uv_timer_init(loop, &tick);
    if (total) {
        start_ns = uv_hrtime();
        for (int i = 0; i < conns && sent < total; i++)
            send_on(&clients[i], start_ns);
        uv_timer_start(&tick, on_watchdog, 1000, 1000);
    } else {
        interval_ns = (uint64_t)(1e9 / rate);
        start_ns = uv_hrtime() + 10000000; /* 10 ms from now */
        end_ns = start_ns + (uint64_t)(seconds * 1e9);
        next_ns = start_ns;
        uv_timer_start(&tick, on_tick, 0, 1); /* a 1 ms tick; sends are placed by their schedule */
    }
    uv_run(loop, UV_RUN_DEFAULT);
    double elapsed = (double)(uv_hrtime() - start_ns) / 1e9;
    qsort(latencies, nlat, sizeof *latencies, cmp);
    printf("sent=%zu ok=%zu errors=%zu p50_us=%llu p99_us=%llu p999_us=%llu max_us=%llu "
           "seconds=%.3f\n",
           sent, nlat, errors, (unsigned long long)pct(0.5), (unsigned long long)pct(0.99),
           (unsigned long long)pct(0.999),
           (unsigned long long)(nlat ? latencies[nlat - 1] / 1000 : 0), elapsed);
    return 0;
}

/* The one root object: settings, the config and route table in force, the workers, the admin
 * listener and the stats. The main thread runs the admin API and signals; the workers carry
 * traffic. */
#ifndef REMORA_SERVER_H
#define REMORA_SERVER_H

#include <stdatomic.h>
#include <uv.h>

#include "config/config.h"
#include "proxy/host_addrs.h"
#include "proxy/access_log.h"
#include "proxy/config_url.h"
#include "proxy/file_watch.h"
#include "proxy/recent.h"
#include "discovery/discovery.h"
#include "base/qsbr.h"
#include "tracing/xray.h"
#include "proxy/settings.h"
#include "base/stats.h"
#include "proxy/worker.h"
#include "routing/route.h"

#define TLS_DEBOUNCE_MS 200 /* a rotation writes several files: reload once they are all in */

enum server_state { SERVER_PRE_INITIALIZING, SERVER_LIVE, SERVER_DRAINING, SERVER_STOPPED };

typedef struct server {
    settings_t set;
    cli_opts_t cli; /* to find the config again on reload */
    registry_t reg; /* clusters and counters that outlive reloads */
    discovery_t *discovery;
    host_addrs_t host_addrs; /* the host's own, for loops (worker_is_own_listener) */
    xray_t *xray;            /* NULL when tracing is off */
    struct statsd *statsd;   /* NULL when the DogStatsD sink is off */
    qsbr_t qsbr;             /* reclaims endpoint sets once no worker can see them */
    uv_timer_t reclaim_timer;
    route_table_t *routes;         /* the snapshot in force (the main thread's reference) */
    access_log_t *alog;            /* its access log (the main thread's reference), or NULL */
    access_log_stats_t alog_stats; /* remora.access_log.* (every log of every snapshot) */
    _Atomic int state;
    _Atomic int healthcheck_failed; /* POST /healthcheck/fail */
    _Atomic int listeners_drained;  /* POST /drain_listeners: no new connections */
    uint64_t started_ms;            /* uv_hrtime() / 1e6 at exec */
    uint64_t ready_ms;              /* when /ready first answered 200 */
    uv_loop_t *loop;                /* the main thread's loop */
    uv_signal_t sigterm, sigint, sighup;
    uv_signal_t sigusr1;           /* reopen the access log (logrotate) */
    file_watcher_t files;          /* the config file's watch and the certificate files' */
    struct config_url *config_url; /* REMORA_CONFIG_URL: the poller, instead of the watch */
    struct tls_watch *tls_watches; /* the certificate, key and trust files in use */
    uv_timer_t tls_debounce;
    uv_timer_t drain_timer;
    uv_async_t worker_exited; /* a worker's loop ended (drain complete) */
    _Atomic unsigned nexited;
    uv_tcp_t admin;
    struct admin_conn *admin_conns;
    http_stats_t ingress_stats, egress_stats;
    /* The listeners as /listeners and the stats name them: a sidecar's ingress and egress (at
     * WORKER_INGRESS, WORKER_EGRESS), or each of a gateway's, in its order. */
    listener_slot_t listeners[WORKER_MAX_LISTENERS];
    unsigned nlisteners;
    stat_t tls_reloads_ok, tls_reloads_failed;     /* reloads a certificate file change caused */
    stat_t aws_creds_ok, aws_creds_failed;         /* container credentials fetches */
    stat_t config_url_fetches[CONFIG_URL_RESULTS]; /* by enum config_url_result */
    worker_t *workers;
    unsigned nworkers;
    struct rollouts *rollouts; /* proxy/rollouts.c: the rollouts' state and timers */
    recent_traces_t recent;    /* the last sampled requests, for /ui */
} server_t;

/* Takes ownership of `cfg`. Returns 0 or an error (logged). */
int server_init(server_t *s, const settings_t *set, const cli_opts_t *cli, config_t *cfg,
                uv_loop_t *loop);
/* Load the config again; a valid one replaces the snapshot in force for new requests, an
 * invalid one is logged and counted and changes nothing. Returns 0 or ERR_CONFIG. */
int server_reload(server_t *s);
/* Build the route table again from the document in force (its text, parsed again) and put it
 * in force as a reload does: how a rollout's new weight takes effect (rollouts_prepare sets
 * it in the fresh config). Returns 0 or ERR_CONFIG. Main thread. */
int server_rebuild(server_t *s);
/* Start workers and the admin API; runs the main loop until the server has stopped. */
int server_run(server_t *s);
/* Stop accepting and finish in-flight requests (SIGTERM, /quitquitquit, /drain_listeners). */
void server_drain(server_t *s);
/* Stop accepting (POST /drain_listeners); connections already open go on, and so does the
 * process. */
void server_drain_listeners(server_t *s);
void server_free(server_t *s);
/* Wake every worker (requests may be waiting for a connection-pool slot). Thread-safe. */
void server_wake_workers(server_t *s);
/* Called by a worker thread when its loop has ended. Thread-safe. */
void server_worker_exited(server_t *s);

static inline enum server_state server_state(server_t *s)
{
    return (enum server_state)atomic_load_explicit(&s->state, memory_order_acquire);
}

const char *server_state_name(enum server_state st);

#endif

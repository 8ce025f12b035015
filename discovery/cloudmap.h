/* Cloud Map's data-plane API: DiscoverInstances and DiscoverInstancesRevision, AWS JSON 1.1
 * over HTTPS, signed with SigV4 (shared/reference/cloudmap-gateways-rollouts.md §1).
 *
 * One cloudmap_t per process, on the main loop, made when the first cluster needs it: it owns
 * the HTTP client (connections kept alive to the endpoint), the Region, the endpoint and the
 * credentials provider. Each call is one request; what to ask and when is discovery.c's. */
#ifndef REMORA_CLOUDMAP_H
#define REMORA_CLOUDMAP_H

#include <netinet/in.h>
#include <uv.h>

#include "aws/aws.h"
#include "config/config.h"

#define CLOUDMAP_TIMEOUT_MS  5000
#define CLOUDMAP_MAX_BODY    (4 * 1024 * 1024) /* 1,000 instances with 30 attributes each fit */
#define CLOUDMAP_MAX_RESULTS 1000              /* the API's cap and the per-service quota */

enum cm_op { CM_DISCOVER, CM_REVISION, CM_OPS };
enum cm_result { CM_OK, CM_ERROR, CM_THROTTLED, CM_NOT_FOUND, CM_TIMEOUT, CM_RESULTS };

typedef struct cm_instance {
    unsigned has4 : 1, has6 : 1;
    struct in_addr v4;  /* AWS_INSTANCE_IPV4 */
    struct in6_addr v6; /* AWS_INSTANCE_IPV6 */
} cm_instance_t;

typedef struct cm_answer {
    enum cm_result result;
    long long revision;             /* InstancesRevision */
    const cm_instance_t *instances; /* DiscoverInstances: those with an address */
    unsigned n;
    unsigned unaddressed; /* instances without a usable AWS_INSTANCE_IPV4/IPV6 */
    const char *message;  /* why, when result is not CM_OK */
} cm_answer_t;

typedef struct cm_query {
    const char *namespace_name, *service_name;
    const cfg_attribute_t *attributes; /* QueryParameters: every pair must match */
    unsigned nattributes;
    enum cloudmap_health health;
} cm_query_t;

typedef struct cloudmap cloudmap_t;
typedef struct cm_call cm_call_t;
/* The answer is valid only during the callback. */
typedef void (*cloudmap_cb)(void *arg, enum cm_op op, const cm_answer_t *a);

/* Resolves the Region, endpoint and credentials source. 0, or ERR_CONFIG with `why` set. */
int cloudmap_open(cloudmap_t **out, uv_loop_t *loop, aws_credentials_stats_t stats, char *why,
                  size_t whylen);
/* Start a call; `cb` runs once, from a later loop iteration, unless cancelled. NULL when it
 * cannot start (no credentials yet, or no memory): `why` says which. */
cm_call_t *cloudmap_call(cloudmap_t *cm, enum cm_op op, const cm_query_t *q, cloudmap_cb cb,
                         void *arg, const char **why);
void cloudmap_cancel(cm_call_t *call);
/* Cancels what is in flight. */
void cloudmap_close(cloudmap_t *cm);
/* Whether calls cannot start only because the first credentials are still being fetched. */
int cloudmap_waiting(const cloudmap_t *cm);
/* Where calls go (for logs and /clusters). */
const char *cloudmap_endpoint(const cloudmap_t *cm);

const char *cloudmap_op_name(enum cm_op op);
const char *cloudmap_result_name(enum cm_result r);

#endif

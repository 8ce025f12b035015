/* App Mesh's TLS settings: a listener's `tls` and a backend's `clientPolicy.tls`, with the
 * refusals of what remora cannot load (acm, sds) saying what to do instead. */
#include "config/config_tls.h"

#include <stdlib.h>
#include <string.h>

#define NAME_MAX_LEN 255
#define SANS_MAX     64 /* a SAN list longer than this is a mistake, not a mesh */

static void free_strings(char **v, unsigned n)
{
    for (unsigned i = 0; i < n && v; i++)
        free(v[i]);
    free(v);
}

/* remora reads certificates and trust bundles only from files; these say what to do instead. */
static const char no_sds[] =
    "is not supported: remora reads certificates from files; run SPIRE's spiffe-helper to write "
    "the SVID, key and bundle to files and use certificate.file (and validation.trust.file)";
static const char no_acm_certificate[] =
    "is not supported: ACM certificates cannot be exported to a sidecar outside App Mesh; issue "
    "the certificate from a CA you control (e.g. ACM Private CA's export, or cert-manager) and "
    "use certificate.file";
static const char no_acm_trust[] =
    "is not supported: export the private CA's certificate (aws acm-pca "
    "get-certificate-authority-certificate) to a file and use trust.file";

/* A union whose members are objects and which has nothing else: the index of the member
 * present (its value in *out, its path in member_path), or -1 after a diagnostic. */
static int object_union(jctx_t *j, const cJSON *o, const char *path, const char *const *kinds,
                        const cJSON **out, char *member_path)
{
    j_only(j, o, path, kinds);
    int which = j_union(j, o, path, kinds, J_REQUIRED, out);
    if (which < 0)
        return -1;
    jpath(member_path, path, kinds[which]);
    if (!cJSON_IsObject(*out)) {
        jerr(j, member_path, NULL, "must be an object");
        return -1;
    }
    return which;
}

/* certificate: acm | file | sds on a listener, file | sds on a client (`kinds`). */
static void parse_certificate(jctx_t *j, const cJSON *o, const char *path, const char *const *kinds,
                              char **chain, char **key)
{
    static const char *const file_fields[] = {"certificateChain", "privateKey", NULL};
    char p[JPATH_MAX];
    const cJSON *m = NULL;
    int which = object_union(j, o, path, kinds, &m, p);
    if (which < 0)
        return;
    if (strcmp(kinds[which], "file") != 0) {
        jerr(j, p, NULL, "%s", strcmp(kinds[which], "acm") == 0 ? no_acm_certificate : no_sds);
        return;
    }
    j_only(j, m, p, file_fields);
    *chain = j_string(j, m, p, "certificateChain", J_REQUIRED, 1, 255);
    *key = j_string(j, m, p, "privateKey", J_REQUIRED, 1, 255);
}

/* App Mesh takes a SAN as an FQDN or a URI (spiffe://trust-domain/path), and a wildcard only in
 * a client policy that does not enforce TLS. A listener's check of client certificates has no
 * such switch, so a wildcard there is refused as if enforced. */
static void check_san(jctx_t *j, const char *path, const char *san, int enforced)
{
    int blank = 0;
    for (const char *c = san; *c; c++)
        blank |= (unsigned char)*c <= ' ' || *c == 0x7f;
    const char *scheme_end = strstr(san, "://");
    int malformed = scheme_end ? scheme_end == san || !scheme_end[3]
                               : san[0] == '.' || strstr(san, "..") || san[strlen(san) - 1] == '.';
    if (blank)
        jerr(j, path, NULL, "must be an FQDN or a URI, without spaces or control characters");
    else if (enforced && strchr(san, '*'))
        jerr(j, path, NULL,
             "\"%s\": wildcard SANs are allowed only in a client policy with enforce false", san);
    else if (malformed)
        jerr(j, path, NULL,
             "must be an FQDN without empty labels or a URI such as spiffe://trust-domain/path, "
             "got \"%s\"",
             san);
}

/* subjectAlternativeNames {match {exact [1..254 characters each]}}; App Mesh sets no count
 * limit, so the file size bounds it. */
static void parse_sans(jctx_t *j, const cJSON *o, const char *path, int enforced,
                       cfg_tls_validation_t *v)
{
    static const char *const fields[] = {"match", NULL};
    static const char *const match_fields[] = {"exact", NULL};
    char p[JPATH_MAX], q[JPATH_MAX];
    j_only(j, o, path, fields);
    const cJSON *m = j_object(j, o, path, "match", J_REQUIRED);
    jpath(p, path, "match");
    j_only(j, m, p, match_fields);
    const cJSON *exact = j_array(j, m, p, "exact", J_REQUIRED, 0, SANS_MAX);
    v->nsans = (unsigned)cJSON_GetArraySize(exact);
    v->sans = calloc(v->nsans ? v->nsans : 1, sizeof *v->sans);
    const cJSON *s = exact ? exact->child : NULL;
    for (unsigned i = 0; i < v->nsans && v->sans; i++, s = s->next) {
        jpath_index(q, p, "exact", (int)i);
        size_t n = cJSON_IsString(s) ? strlen(s->valuestring) : 0;
        if (n < 1 || n > 254) {
            jerr(j, q, NULL, "must be a string of 1..254 characters");
            continue;
        }
        check_san(j, q, s->valuestring, enforced);
        v->sans[i] = strdup(s->valuestring);
    }
}

/* validation {trust, subjectAlternativeNames?}: `trusts` lists the trust kinds this side takes
 * (a listener has no acm trust, so there `acm` is an unknown field). */
static void parse_validation(jctx_t *j, const cJSON *o, const char *path, const char *const *trusts,
                             int enforced, cfg_tls_validation_t *v)
{
    static const char *const fields[] = {"trust", "subjectAlternativeNames", NULL};
    static const char *const file_fields[] = {"certificateChain", NULL};
    char p[JPATH_MAX], q[JPATH_MAX];
    j_only(j, o, path, fields);
    const cJSON *trust = j_object(j, o, path, "trust", J_REQUIRED), *m = NULL;
    jpath(p, path, "trust");
    int which = trust ? object_union(j, trust, p, trusts, &m, q) : -1;
    if (which >= 0 && strcmp(trusts[which], "file") == 0) {
        j_only(j, m, q, file_fields);
        v->trust_file = j_string(j, m, q, "certificateChain", J_REQUIRED, 1, 255);
    } else if (which >= 0) {
        jerr(j, q, NULL, "%s", strcmp(trusts[which], "acm") == 0 ? no_acm_trust : no_sds);
    }
    const cJSON *sans = j_object(j, o, path, "subjectAlternativeNames", J_OPTIONAL);
    jpath(p, path, "subjectAlternativeNames");
    if (sans)
        parse_sans(j, sans, p, enforced, v);
}

/* A listener's `tls`. DISABLED still needs a valid certificate: App Mesh requires one. */
void config_parse_listener_tls(jctx_t *j, const cJSON *o, const char *path, cfg_listener_tls_t *t)
{
    static const char *const fields[] = {"mode", "certificate", "validation", NULL};
    static const char *const modes[] = {"DISABLED", "STRICT", "PERMISSIVE", NULL}; /* tls_mode */
    static const char *const certificates[] = {"acm", "file", "sds", NULL};
    static const char *const trusts[] = {"file", "sds", NULL};
    char p[JPATH_MAX];
    j_only(j, o, path, fields);
    t->path = strdup(path);
    t->mode = (enum tls_mode)j_enum(j, o, path, "mode", modes, J_REQUIRED, TLS_DISABLED);
    const cJSON *v;
    if ((v = j_object(j, o, path, "certificate", J_REQUIRED))) {
        jpath(p, path, "certificate");
        parse_certificate(j, v, p, certificates, &t->cert_chain, &t->private_key);
    }
    if ((v = j_object(j, o, path, "validation", J_OPTIONAL))) {
        jpath(p, path, "validation");
        t->has_validation = 1;
        parse_validation(j, v, p, trusts, 1, &t->validation);
    }
}

/* `ports`: a set of 1..65535, so never more than 65535 of them; none means every port. */
static void parse_tls_ports(jctx_t *j, const cJSON *o, const char *path, cfg_client_tls_t *t)
{
    const cJSON *ports = j_array(j, o, path, "ports", J_OPTIONAL, 0, 65535);
    t->nports = (unsigned)cJSON_GetArraySize(ports);
    t->ports = calloc(t->nports ? t->nports : 1, sizeof *t->ports);
    const cJSON *v = ports ? ports->child : NULL;
    for (unsigned i = 0; i < t->nports && t->ports; i++, v = v->next) {
        double d = cJSON_IsNumber(v) ? v->valuedouble : 0;
        if (d >= 1 && d <= 65535 && d == (double)(uint16_t)d) {
            t->ports[i] = (uint16_t)d;
            continue;
        }
        char p[JPATH_MAX];
        jpath_index(p, path, "ports", (int)i);
        jerr(j, p, NULL, "must be a port number 1..65535");
    }
}

static void parse_client_tls(jctx_t *j, const cJSON *o, const char *path, cfg_client_tls_t *t)
{
    static const char *const fields[] = {"enforce", "ports", "certificate", "validation", NULL};
    static const char *const certificates[] = {"file", "sds", NULL};
    static const char *const trusts[] = {"acm", "file", "sds", NULL};
    char p[JPATH_MAX];
    j_only(j, o, path, fields);
    t->present = 1;
    t->path = strdup(path);
    t->enforce = j_bool(j, o, path, "enforce", 1);
    parse_tls_ports(j, o, path, t);
    const cJSON *v;
    if ((v = j_object(j, o, path, "certificate", J_OPTIONAL))) {
        jpath(p, path, "certificate");
        parse_certificate(j, v, p, certificates, &t->cert_chain, &t->private_key);
    }
    if ((v = j_object(j, o, path, "validation", J_REQUIRED))) {
        jpath(p, path, "validation");
        parse_validation(j, v, p, trusts, t->enforce, &t->validation);
    }
}

/* owner.clientPolicy {tls?}, on a backend's virtualService or on backendDefaults. */
void config_parse_client_policy(jctx_t *j, const cJSON *owner, const char *path,
                                cfg_client_tls_t *t)
{
    static const char *const fields[] = {"tls", NULL};
    char p[JPATH_MAX];
    const cJSON *cp = j_object(j, owner, path, "clientPolicy", J_OPTIONAL);
    jpath(p, path, "clientPolicy");
    j_only(j, cp, p, fields);
    const cJSON *tls = j_object(j, cp, p, "tls", J_OPTIONAL);
    jpath(p, p, "tls");
    if (tls)
        parse_client_tls(j, tls, p, t);
}

static void free_validation(cfg_tls_validation_t *v)
{
    free(v->trust_file);
    free_strings(v->sans, v->nsans);
}

void config_free_client_tls(cfg_client_tls_t *t)
{
    free(t->path);
    free(t->ports);
    free(t->cert_chain);
    free(t->private_key);
    free_validation(&t->validation);
}

void config_free_listener_tls(cfg_listener_tls_t *t)
{
    free(t->path);
    free(t->cert_chain);
    free(t->private_key);
    free_validation(&t->validation);
}

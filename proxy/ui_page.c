#include "proxy/ui_page.h"

#include <string.h>

#include "proxy/rollouts.h"
#include "proxy/server.h"

/* Rates and quantiles are computed in the page from the differences between two polls, so the
 * server keeps no window for it; everything it needs is in /ui/state. */
const char ui_page_html[] =
    "<!DOCTYPE html>\n"
    "<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
    "<link rel=\"icon\" href=\"data:,\">\n"
    "<title>remora</title>\n"
    "<style>\n"
    "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}\n"
    "h1{font-size:1.3em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}\n"
    "table{border-collapse:collapse;background:#fff;min-width:60em}\n"
    "th,td{border:1px solid #ddd;padding:.3em .6em;text-align:right}\n"
    "th:first-child,td:first-child{text-align:left}\n"
    "th{background:#f0f0f0}.bar{display:inline-block;height:.7em;background:#4a90d9;"
    "vertical-align:middle;margin-right:.4em}\n"
    ".rollout{background:#fff;border:1px solid #ddd;padding:.6em 1em;margin:.5em 0;"
    "max-width:60em}\n"
    ".state{font-weight:bold;padding:.1em .5em;border-radius:.3em;color:#fff;background:#888}\n"
    ".state.progressing{background:#2e7d32}.state.holding{background:#f9a825}\n"
    ".state.promoted{background:#1565c0}.state.rolled_back{background:#c62828}\n"
    ".steps span{display:inline-block;padding:.1em .5em;margin-right:.2em;border:1px solid "
    "#ccc}\n"
    ".steps span.done{background:#c8e6c9}.steps span.now{background:#4a90d9;color:#fff}\n"
    ".pass{color:#2e7d32}.fail{color:#c62828}.insufficient{color:#a07000}\n"
    "#status{color:#666}ul{margin:.3em 0;padding-left:1.2em}\n"
    "</style></head><body>\n"
    "<h1>remora <span id=\"node\"></span></h1>\n"
    "<div id=\"status\">loading</div>\n"
    "<h2>Rollouts</h2><div id=\"rollouts\">none</div>\n"
    "<h2>Routes and weights in force</h2>\n"
    "<table id=\"routes\"><thead><tr><th>route / target</th><th>weight</th><th>requests</th>"
    "<th>req/s</th><th>errors/s</th><th>error %</th><th>p50 ms</th><th>p99 ms</th>"
    "<th>endpoints healthy</th></tr></thead><tbody></tbody></table>\n"
    "<h2>Recent traces (sampled)</h2>\n"
    "<table id=\"traces\"><thead><tr><th>X-Ray trace id</th><th>time</th><th>direction</th>"
    "<th>request</th><th>virtual service</th><th>status</th><th>ms</th></tr></thead>"
    "<tbody></tbody></table>\n"
    "<script>\n"
    "'use strict';\n"
    "let prev = null;\n"
    "function esc(s) {\n"
    "  return String(s).replace(/[&<>\"']/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;',\n"
    "    '\"': '&quot;', \"'\": '&#39;'})[c]);\n"
    "}\n"
    "function sum(a) { return a.reduce((x, y) => x + y, 0); }\n"
    "function quantile(delta, bounds, q) {\n"
    "  const n = sum(delta);\n"
    "  if (!n) return null;\n"
    "  const target = q * n;\n"
    "  let seen = 0;\n"
    "  for (let i = 0; i < delta.length; i++) {\n"
    "    if (delta[i] > 0 && seen + delta[i] >= target) {\n"
    "      const lo = i ? bounds[i - 1] : 0;\n"
    "      return lo + (bounds[i] - lo) * (target - seen) / delta[i];\n"
    "    }\n"
    "    seen += delta[i];\n"
    "  }\n"
    "  return bounds[bounds.length - 1];\n"
    "}\n"
    "function fmt(v, digits) { return v === null || !isFinite(v) ? '-' : v.toFixed(digits); }\n"
    "function renderRoutes(st) {\n"
    "  const dt = prev ? (st.timeMs - prev.timeMs) / 1000 : 0;\n"
    "  const clusters = {};\n"
    "  for (const c of st.clusters) clusters[c.name] = c;\n"
    "  const before = {};\n"
    "  if (prev) for (const r of prev.routes) for (const t of r.targets)\n"
    "    before[r.router + '/' + r.route + '/' + t.node] = t;\n"
    "  const prevClusters = {};\n"
    "  if (prev) for (const c of prev.clusters) prevClusters[c.name] = c;\n"
    "  const rows = [];\n"
    "  for (const r of st.routes) {\n"
    "    const total = sum(r.targets.map(t => t.weight)) || 1;\n"
    "    rows.push('<tr class=\"route\"><td colspan=\"9\"><b>' + esc(r.router + '/' + r.route) +\n"
    "      '</b></td></tr>');\n"
    "    for (const t of r.targets) {\n"
    "      const key = r.router + '/' + r.route + '/' + t.node;\n"
    "      const n = sum(t.responses), b = before[key];\n"
    "      const dn = b && dt > 0 ? n - sum(b.responses) : null;\n"
    "      const de = b && dt > 0 ? t.responses[4] - b.responses[4] : null;\n"
    "      const c = clusters[t.cluster], pc = prevClusters[t.cluster];\n"
    "      let p50 = null, p99 = null;\n"
    "      if (c && pc) {\n"
    "        const d = c.rqTime.map((v, i) => v - pc.rqTime[i]);\n"
    "        p50 = quantile(d, st.boundsMs, 0.5);\n"
    "        p99 = quantile(d, st.boundsMs, 0.99);\n"
    "      }\n"
    "      const share = 100 * t.weight / total;\n"
    "      rows.push('<tr class=\"target\" data-route=\"' + esc(r.router + '/' + r.route) +\n"
    "        '\" data-target=\"' + esc(t.node) + '\"><td>&nbsp;&nbsp;' + esc(t.node) + '</td>' +\n"
    "        '<td><span class=\"bar\" style=\"width:' + (share * 1.2).toFixed(0) + 'px\"></span>' "
    "+\n"
    "        '<span class=\"weight\">' + t.weight + '</span></td>' +\n"
    "        '<td class=\"requests\">' + n + '</td>' +\n"
    "        '<td class=\"rate\">' + (dn === null ? '-' : fmt(dn / dt, 1)) + '</td>' +\n"
    "        '<td class=\"errors\">' + (de === null ? '-' : fmt(de / dt, 1)) + '</td>' +\n"
    "        '<td class=\"error-rate\">' + (dn ? fmt(100 * de / dn, 2) : '-') + '</td>' +\n"
    "        '<td class=\"p50\">' + fmt(p50, 1) + '</td><td class=\"p99\">' + fmt(p99, 1) +\n"
    "        '</td><td class=\"health\">' + (c ? c.healthy + ' / ' + c.endpoints : '-') +\n"
    "        '</td></tr>');\n"
    "    }\n"
    "  }\n"
    "  document.querySelector('#routes tbody').innerHTML = rows.join('');\n"
    "}\n"
    "function sample(s) {\n"
    "  return s.errors + '/' + s.requests + (s.p99Ms === null ? '' : ', p99 ' + s.p99Ms + ' ms');\n"
    "}\n"
    "function decision(d) {\n"
    "  return '<li class=\"decision\"><span class=\"' + esc(d.result) + '\">' + esc(d.result) +\n"
    "    '</span> ' + esc(d.time) + ' step ' + d.step + ', weight ' + d.canaryWeight +\n"
    "    ': canary ' + esc(sample(d.canary)) + ', baseline ' + esc(sample(d.baseline)) +\n"
    "    ' <small>' + esc(d.reason) + '</small></li>';\n"
    "}\n"
    "function renderRollouts(list) {\n"
    "  if (!list.length) { document.getElementById('rollouts').textContent = 'none'; return; }\n"
    "  const out = [];\n"
    "  for (const r of list) {\n"
    "    const steps = r.steps.map((s, i) => '<span class=\"' +\n"
    "      (i < r.step ? 'done' : i === r.step ? 'now' : '') + '\">' + s.weight + '%' +\n"
    "      (s.holdMs ? ' / ' + s.holdMs / 1000 + ' s' : '') + '</span>').join('');\n"
    "    out.push('<div class=\"rollout\" data-rollout=\"' + esc(r.rolloutName) + '\">' +\n"
    "      '<b>' + esc(r.rolloutName) + '</b> ' + esc(r.virtualRouterName + '/' + r.routeName) +\n"
    "      ': ' + esc(r.baseline) + ' &rarr; ' + esc(r.canary) +\n"
    "      ' <span class=\"state ' + esc(r.state) + '\">' + esc(r.state) + '</span>' +\n"
    "      '<div>step <span class=\"step\">' + r.step + '</span> (from 0) of ' + r.steps.length +\n"
    "      ', canary weight <span class=\"canary-weight\">' + r.canaryWeight + '</span>%' +\n"
    "      ', decisions <span class=\"decisions\">' + r.decisions + '</span> (pass ' +\n"
    "      r.decisionCounts.pass + ', fail ' + r.decisionCounts.fail + ', insufficient ' +\n"
    "      r.decisionCounts.insufficient + '), failed in a row ' + r.consecutiveFailures +\n"
    "      ' of ' + r.failureLimit + '</div>' +\n"
    "      '<div class=\"steps\">' + steps + '</div>' +\n"
    "      '<ul>' + r.recentDecisions.map(decision).join('') + '</ul></div>');\n"
    "  }\n"
    "  document.getElementById('rollouts').innerHTML = out.join('');\n"
    "}\n"
    "function renderTraces(list) {\n"
    "  document.querySelector('#traces tbody').innerHTML = list.map(t =>\n"
    "    '<tr class=\"trace\"><td class=\"trace-id\">' + esc(t.traceId) + '</td><td>' +\n"
    "    esc(new Date(t.timeMs).toISOString().slice(11, 23)) + '</td><td>' + esc(t.direction) +\n"
    "    '</td><td>' + esc(t.method + ' ' + t.host + t.path) + '</td><td>' + esc(t.service) +\n"
    "    '</td><td>' + t.status + '</td><td>' + t.durationMs + '</td></tr>').join('');\n"
    "}\n"
    "async function poll() {\n"
    "  try {\n"
    "    const res = await fetch('/ui/state', {cache: 'no-store'});\n"
    "    if (!res.ok) throw new Error('HTTP ' + res.status);\n"
    "    const st = await res.json();\n"
    "    document.getElementById('node').textContent = st.node;\n"
    "    renderRoutes(st);\n"
    "    renderRollouts(st.rollouts);\n"
    "    renderTraces(st.traces);\n"
    "    prev = st;\n"
    "    const s = document.getElementById('status');\n"
    "    s.textContent = 'updated ' + new Date(st.timeMs).toISOString();\n"
    "    s.dataset.polls = String(Number(s.dataset.polls || 0) + 1);\n"
    "  } catch (e) {\n"
    "    document.getElementById('status').textContent = 'admin API unreachable: ' + e.message;\n"
    "  }\n"
    "  setTimeout(poll, 1000);\n"
    "}\n"
    "poll();\n"
    "</script></body></html>\n";

static const cluster_t *cluster_of(server_t *s, const char *node)
{
    for (const cluster_t *c = s->reg.clusters; c; c = c->next)
        if (c->node && !strcmp(c->node, node))
            return c;
    return NULL;
}

static target_stats_t *target_of(server_t *s, const char *router, const char *route,
                                 const char *node)
{
    for (target_stats_entry_t *e = s->reg.targets; e; e = e->next)
        if (!strcmp(e->router, router) && !strcmp(e->route, route) && !strcmp(e->target, node))
            return &e->stats;
    return NULL;
}

void ui_state_json(server_t *s, text_t *out)
{
    const config_t *cfg = route_table_config(s->routes);
    uint64_t now = uv_hrtime() / 1000000;
    uv_timeval64_t tv;
    uv_gettimeofday(&tv);
    text_printf(out, "{\"node\": ");
    text_json_string(out, s->set.node);
    text_printf(out, ", \"timeMs\": %lld, \"boundsMs\": [",
                (long long)tv.tv_sec * 1000 + tv.tv_usec / 1000);
    for (unsigned i = 0; i < HIST_BOUNDS; i++)
        text_printf(out, "%s%g", i ? ", " : "", hist_bounds[i] / 2.0);
    text_printf(out, "], \"routes\": [");
    for (unsigned i = 0; i < cfg->nroutes; i++) {
        const cfg_route_t *r = &cfg->routes[i];
        text_printf(out, "%s{\"router\": ", i ? ", " : "");
        text_json_string(out, r->router);
        text_printf(out, ", \"route\": ");
        text_json_string(out, r->name);
        text_printf(out, ", \"targets\": [");
        for (unsigned t = 0; t < r->ntargets; t++) {
            const char *node = r->targets[t].node;
            target_stats_t *ts = target_of(s, r->router, r->name, node);
            const cluster_t *c = cluster_of(s, node);
            text_printf(out, "%s{\"node\": ", t ? ", " : "");
            text_json_string(out, node);
            text_printf(out, ", \"weight\": %u, \"responses\": [", r->targets[t].weight);
            for (int k = 0; k < 5; k++)
                text_printf(out, "%s%llu", k ? ", " : "",
                            ts ? (unsigned long long)stat_get(&ts->rq_1xx + k) : 0ull);
            text_printf(out, "], \"cluster\": ");
            if (c)
                text_json_string(out, c->name);
            else
                text_printf(out, "null");
            text_printf(out, "}");
        }
        text_printf(out, "]}");
    }
    text_printf(out, "], \"clusters\": [");
    int first = 1;
    for (cluster_t *c = s->reg.clusters; c; c = c->next) {
        if (!c->node)
            continue;
        text_printf(out, "%s{\"name\": ", first ? "" : ", ");
        first = 0;
        text_json_string(out, c->name);
        text_printf(out, ", \"node\": ");
        text_json_string(out, c->node);
        text_printf(out, ", \"healthy\": %u, \"endpoints\": %u, \"rqTime\": [",
                    cluster_healthy(c, now), cluster_size(c));
        for (unsigned i = 0; i < HIST_BOUNDS; i++)
            text_printf(out, "%s%llu", i ? ", " : "",
                        (unsigned long long)stat_get(&c->stats.rq_time.buckets[i]));
        text_printf(out, "]}");
    }
    text_printf(out, "], \"rollouts\": ");
    rollouts_json(s->rollouts, out);
    text_printf(out, ", \"traces\": ");
    recent_json(&s->recent, out);
    text_printf(out, "}\n");
}

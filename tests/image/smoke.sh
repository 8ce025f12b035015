#!/usr/bin/env bash
# Builds remora's image with podman and checks it the way an ECS task runs it: uid 1337, the
# stock curl health check says LIVE, ingress reaches the app, no zombies pile up under PID 1,
# SIGTERM stops it quickly, and what a user sees when no config is given. Run by hand (root or
# rootless podman); not part of CI. Exit 0 when every check passes. See README.md here.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
IMAGE=${IMAGE:-localhost/remora:smoke}
BASE=debian:bookworm-slim
HEALTH='curl -s http://localhost:9901/server_info | grep state | grep -q LIVE'
ARN=arn:aws:appmesh:us-east-1:111122223333:mesh/smoke/virtualNode/app
APP_PORT=8080
# One node, one http listener (the app on 127.0.0.1:8080), no backends.
MESH='{"mesh": {"meshName": "smoke", "spec": {}},
 "virtualNodes": [{"virtualNodeName": "app", "spec": {
   "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}]}}]}'
HEALTH_RUNS=10
ORPHANS=5

die() { echo "smoke: $*" >&2; exit 2; }
now_ms() { date +%s%3N; }
secs() { awk -v ms="$1" 'BEGIN { printf "%.2f", ms / 1000 }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
kib() { awk -v b="$1" 'BEGIN { printf "%d KiB", b / 1024 }'; }

command -v podman >/dev/null || die "podman is not installed (apt-get install -y podman mmdebstrap uidmap)"
command -v python3 >/dev/null || die "python3 is needed for the app behind the ingress port"
command -v curl >/dev/null || die "curl is needed on the host"

TMP=$(mktemp -d)
CTR=remora-smoke-$$
CONTROL=remora-smoke-noinit-$$
APP_PGID=
# shellcheck disable=SC2317 # called by the trap
cleanup() {
    [ -z "$APP_PGID" ] || kill -- "-$APP_PGID" 2>/dev/null || true
    if [ -z "${KEEP:-}" ]; then
        podman rm -f -i -t 0 "$CTR" >/dev/null 2>&1 || true
        podman rm -f -i -t 0 "$CONTROL" >/dev/null 2>&1 || true
        rm -rf "$TMP"
    else
        echo "kept: containers $CTR $CONTROL, files $TMP"
    fi
}
trap cleanup EXIT

RESULTS=()
FAILED=0
result() { # check, ok|note|FAIL, detail; a note is worth reading but does not fail the run
    RESULTS+=("$(printf '%-10s %-4s %s' "$1" "$2" "$3")")
    [ "$2" != FAIL ] || FAILED=1
}

# --- the base image: Docker Hub is not always reachable, so make debian:bookworm-slim here --
# minbase plus the path excludes Debian's own slim images use (no docs, man pages, locales),
# and merged /usr made by the hook rather than the usrmerge package (which pulls in perl).
ensure_base() {
    if podman image exists "$BASE"; then
        BASE_NOTE="reused"
        return
    fi
    command -v mmdebstrap >/dev/null ||
        die "no $BASE image and no mmdebstrap to make one (podman pull $BASE, or install mmdebstrap)"
    local mirror
    mirror=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' \
        /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=$(awk '$1 == "URIs:" { print $2; exit }' \
        /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
    echo "smoke: making $BASE with mmdebstrap from $mirror" >&2
    local hook=()
    [ ! -d /usr/share/mmdebstrap/hooks/merged-usr ] ||
        hook=(--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr)
    mmdebstrap --variant=minbase --quiet "${hook[@]}" \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/groff/*' \
        --dpkgopt='path-exclude=/usr/share/lintian/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-include=/usr/share/locale/locale.alias' \
        bookworm - "$mirror" 2>"$TMP/mmdebstrap.log" |
        podman import --quiet --change 'CMD ["bash"]' - "localhost/$BASE" >/dev/null ||
        { tail -n 20 "$TMP/mmdebstrap.log" >&2; die "could not make $BASE (log above)"; }
    # The Dockerfile says FROM debian:bookworm-slim: make that name resolve without a registry.
    podman tag "localhost/$BASE" "docker.io/library/$BASE"
    BASE_NOTE="made with mmdebstrap"
}

# --- a runtime that works here ---------------------------------------------------------------
# Podman's default nproc limit is above what root without CAP_SYS_RESOURCE may set, and crun
# refuses a cgroup v1/v2 hybrid host; an explicit nproc limit and runc get past both.
ULIMITS=(--ulimit nofile=15000:15000 --ulimit nproc=4096:4096)
pick_runtime() {
    RUNTIME=()
    local err
    if err=$(podman run --rm "${ULIMITS[@]}" "$BASE" true 2>&1); then
        return
    fi
    if command -v runc >/dev/null &&
        podman --runtime runc run --rm "${ULIMITS[@]}" "$BASE" true >/dev/null 2>&1; then
        RUNTIME=(--runtime runc)
        RUNTIME_NOTE="runc (default runtime failed: $(echo "$err" | tail -n 1))"
        return
    fi
    die "podman cannot start a container here: $(echo "$err" | tail -n 1)"
}

ensure_base
pick_runtime
P=(podman "${RUNTIME[@]}")
if [ "$(id -u)" = 0 ]; then NSENTER=(nsenter); else NSENTER=(podman unshare nsenter); fi

# --- build ---------------------------------------------------------------------------------
t0=$(now_ms)
if ! "${P[@]}" build --pull=never "${ULIMITS[@]}" -t "$IMAGE" -f "$ROOT/Dockerfile" "$ROOT" \
    >"$TMP/build.log" 2>&1; then
    tail -n 20 "$TMP/build.log" >&2
    die "podman build failed (log above)"
fi
result build ok "$IMAGE in $(secs $(($(now_ms) - t0))) s (base $BASE: $BASE_NOTE)"

read -r user ports entry < <(podman image inspect "$IMAGE" \
    --format '{{.Config.User}} {{range $p, $v := .Config.ExposedPorts}}{{$p}},{{end}} {{join .Config.Entrypoint " "}}')
if [ "$user" = 1337 ] && [ "$ports" = "15000/tcp,15001/tcp," ]; then
    result config ok "USER $user, EXPOSE ${ports%,}, ENTRYPOINT $entry"
else
    result config FAIL "USER $user, EXPOSE ${ports%,} (want 1337 and 15000/tcp,15001/tcp)"
fi

# --- run it as a task definition does ------------------------------------------------------
run_remora() { # name, extra podman run options...
    local name=$1
    shift
    "${P[@]}" run -d --name "$name" "${ULIMITS[@]}" \
        -e APPMESH_RESOURCE_ARN="$ARN" -e REMORA_CONFIG_JSON="$MESH" "$@" "$IMAGE" >/dev/null
}

wait_live() { # name; polls the stock health check for up to 15 s
    local deadline=$(($(now_ms) + 15000))
    until podman exec "$1" sh -c "$HEALTH" 2>/dev/null; do
        [ "$(now_ms)" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

# pid ppid user state comm for every process in the container (ps from the host: the image
# has no procps).
procs() { podman top "$1" pid ppid user state comm | tail -n +2; }

# A health check that times out is killed, and what it started (curl, grep) is re-parented
# to the container's PID 1. `sh -c 'sleep & exit'` leaves exactly such an orphan.
zombies_after_orphans() { # name; prints the number of zombies once the orphans have exited
    local deadline
    for _ in $(seq "$ORPHANS"); do
        podman exec "$1" sh -c 'sleep 0.2 & exit 0'
    done
    deadline=$(($(now_ms) + 5000))
    while procs "$1" | awk '$5 == "sleep" && $4 != "Z" { found = 1 } END { exit !found }'; do
        [ "$(now_ms)" -lt "$deadline" ] || break
        sleep 0.1
    done
    deadline=$(($(now_ms) + 2000))
    while [ "$(procs "$1" | awk '$4 == "Z"' | wc -l)" -gt 0 ] && [ "$(now_ms)" -lt "$deadline" ]; do
        sleep 0.1
    done
    procs "$1" | awk '$4 == "Z"' | wc -l
}

run_remora "$CTR"
if wait_live "$CTR"; then
    result live ok "$HEALTH"
else
    result live FAIL "health check never passed; last log: $(podman logs "$CTR" 2>&1 | tail -n 1)"
fi

procs "$CTR" >"$TMP/ps"
pid1=$(awk '$1 == 1 { print $5 }' "$TMP/ps")
remora_user=$(awk '$5 == "remora" { print $3; exit }' "$TMP/ps")
if [ "$pid1" = tini ] && [ "$remora_user" = 1337 ]; then
    result uid ok "PID 1 tini, remora runs as uid $remora_user"
else
    result uid FAIL "PID 1 '$pid1', remora's user '${remora_user:-not running}'"
fi

certs=$(podman exec "$CTR" sh -c 'grep -c "BEGIN CERTIFICATE" /etc/ssl/certs/ca-certificates.crt' \
    2>/dev/null || echo 0)
if [ "$certs" -gt 0 ]; then
    result ca ok "/etc/ssl/certs/ca-certificates.crt, $certs certificates"
else
    result ca FAIL "no CA bundle at /etc/ssl/certs/ca-certificates.crt"
fi

# --- ingress: the app listens on 127.0.0.1:8080 in the container's network namespace, as the
# app container of an awsvpc task does; the request goes to :15000 -------------------------
mkdir -p "$TMP/www"
marker="remora-smoke-$$-$RANDOM"
echo "$marker" >"$TMP/www/hello.txt"
ctr_pid=$(podman inspect --format '{{.State.Pid}}' "$CTR")
setsid "${NSENTER[@]}" --net="/proc/$ctr_pid/ns/net" \
    python3 -m http.server "$APP_PORT" --bind 127.0.0.1 --directory "$TMP/www" \
    >"$TMP/app.log" 2>&1 &
APP_PGID=$!
deadline=$(($(now_ms) + 10000))
body=
until body=$(podman exec "$CTR" curl -sf http://127.0.0.1:15000/hello.txt 2>/dev/null) &&
    [ "$body" = "$marker" ]; do
    [ "$(now_ms)" -lt "$deadline" ] || break
    sleep 0.1
done
ip=$(podman inspect --format '{{.NetworkSettings.IPAddress}}' "$CTR")
from_host=
if [ -n "$ip" ]; then
    if [ "$(curl -sf --noproxy '*' "http://$ip:15000/hello.txt" || true)" = "$marker" ]; then
        from_host=", and from the host to $ip:15000"
    else
        from_host=", but NOT from the host to $ip:15000"
    fi
fi
app_hits=$(grep -c 'GET /hello.txt' "$TMP/app.log" || true)
if [ "$body" = "$marker" ] && [ "${from_host#, but}" = "$from_host" ]; then
    result ingress ok "GET :15000/hello.txt -> app on 127.0.0.1:$APP_PORT ($app_hits hits)$from_host"
else
    result ingress FAIL "GET :15000/hello.txt gave '${body:0:40}'$from_host"
fi

# --- zombies: the health check many times, then orphans; a container without tini shows the
# check can see them -----------------------------------------------------------------------
hc_fail=0
for _ in $(seq "$HEALTH_RUNS"); do
    podman exec "$CTR" sh -c "$HEALTH" || hc_fail=$((hc_fail + 1))
done
zombies=$(zombies_after_orphans "$CTR")
run_remora "$CONTROL" --entrypoint /usr/local/bin/remora
control=none
if wait_live "$CONTROL"; then
    control=$(zombies_after_orphans "$CONTROL")
fi
podman rm -f -i -t 0 "$CONTROL" >/dev/null 2>&1 || true
detail="$zombies after $HEALTH_RUNS health checks ($hc_fail failed) and $ORPHANS orphans"
detail+="; without tini: $control"
if [ "$zombies" = 0 ] && [ "$hc_fail" = 0 ] && [ "$control" != none ] && [ "$control" -gt 0 ]; then
    result zombies ok "$detail"
else
    result zombies FAIL "$detail (want 0, 0 failed, and > 0 without tini)"
fi

# --- SIGTERM: tini forwards it, remora drains (nothing in flight) and exits 0 -------------
t0=$(now_ms)
podman kill --signal TERM "$CTR" >/dev/null
code=$(timeout 60 podman wait "$CTR" || echo timeout)
stop_ms=$(($(now_ms) - t0))
if [ "$code" = 0 ] && [ "$stop_ms" -lt 5000 ]; then
    result sigterm ok "exit 0 in $(secs "$stop_ms") s"
else
    result sigterm FAIL "exit $code after $(secs "$stop_ms") s; last log: $(podman logs "$CTR" 2>&1 | tail -n 1)"
fi

# --- sizes ---------------------------------------------------------------------------------
image_bytes=$(podman image inspect --format '{{.Size}}' "$IMAGE")
base_bytes=$(podman image inspect --format '{{.Size}}' "$BASE")
podman cp "$CTR:/usr/local/bin/remora" "$TMP/remora"
bin_bytes=$(stat -c %s "$TMP/remora")
stripped=unknown
if command -v readelf >/dev/null; then
    if readelf -S "$TMP/remora" | grep -q '\.symtab'; then stripped="NOT stripped"; else stripped=stripped; fi
fi
result size "$([ "$stripped" = "NOT stripped" ] && echo FAIL || echo ok)" \
    "image $(mib "$image_bytes") (base $(mib "$base_bytes") + $(mib $((image_bytes - base_bytes)))), binary $(kib "$bin_bytes") $stripped"

# --- no config: what a user who forgot to supply one sees --------------------------------
set +e
noconf=$(timeout 30 "${P[@]}" run --rm "${ULIMITS[@]}" "$IMAGE" 2>&1)
noconf_rc=$?
set -e
# It must exit 1; it should also say how to supply one (a note until it does).
if [ "$noconf_rc" != 1 ]; then
    status=FAIL
elif grep -q REMORA_CONFIG_JSON <<<"$noconf"; then
    status=ok
else
    status=note
fi
result noconfig "$status" "exit $noconf_rc: $(echo "$noconf" | head -n 1)"

echo "remora image smoke test: $(podman --version), ${RUNTIME_NOTE:-default runtime}, $([ "$(id -u)" = 0 ] && echo rootful || echo rootless)"
printf '%s\n' "${RESULTS[@]}"
if [ "$FAILED" = 0 ]; then echo "PASS"; else echo "FAIL"; fi
exit "$FAILED"

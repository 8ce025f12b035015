# remora's container image: the App Mesh Envoy image's contract (uid 1337, ingress 15000,
# egress 15001, admin 127.0.0.1:9901, the stock curl health check), nothing else.
# Build: `podman build -t remora .` (or docker build); tests/image/smoke.sh builds and checks it.

# Build stage: only what compiles and links build/remora (the build part of `make deps`; the
# test, bench and lint packages stay out). The binary is stripped on its way out (`install -s`).
FROM debian:bookworm-slim AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential pkg-config libuv1-dev libc-ares-dev libcjson-dev libssl-dev \
        libnghttp2-dev libpcre2-dev \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY aws aws
COPY base base
COPY config config
COPY discovery discovery
COPY http http
COPY proxy proxy
COPY routing routing
COPY tls tls
COPY tracing tracing
RUN make -j"$(nproc)" all \
 && install -D -s -m 0755 build/remora /out/usr/local/bin/remora

# Run stage: the libraries the binary links (`ldd build/remora`: libuv1, libc-ares2, libcjson1,
# libssl3 for libssl and libcrypto, libnghttp2-14, libpcre2-8-0), tini as PID 1 so that
# processes the health check leaves behind are reaped, ca-certificates (/etc/ssl/certs/ca-certificates.crt, for trust files that
# name public CAs, and for curl), and curl, which the stock ECS health check runs in here.
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libuv1 libc-ares2 libcjson1 libssl3 libnghttp2-14 libpcre2-8-0 ca-certificates curl tini \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/usr/local/bin/remora /usr/local/bin/remora
# App Mesh's IgnoredUID: the proxy's own traffic is not redirected back to it.
USER 1337
# Ingress and egress. The admin port (9901) listens on 127.0.0.1 only: nothing to expose.
EXPOSE 15000 15001
# No HEALTHCHECK: the task definition supplies it (see README, ECS).
# tini is PID 1: it reaps what health checks leave behind and forwards SIGTERM to remora. -s
# (subreaper) keeps it quiet and correct when ECS's initProcessEnabled puts docker-init above it.
ENTRYPOINT ["/usr/bin/tini", "-s", "--", "/usr/local/bin/remora"]

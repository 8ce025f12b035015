# Build stage: the same Debian packages `make deps` installs for the build.
FROM debian:bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential libuv1-dev libc-ares-dev \
        libcjson-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY base base
COPY proxy proxy
COPY config config
COPY routing routing
COPY discovery discovery
COPY tracing tracing
RUN make all

# Run stage: the shared libraries only, and remora as uid 1337 (App Mesh's IgnoredUID).
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libuv1 libc-ares2 libcjson1 libssl3 curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/build/remora /usr/local/bin/remora
USER 1337
EXPOSE 15000 15001 9901
ENTRYPOINT ["/usr/local/bin/remora"]

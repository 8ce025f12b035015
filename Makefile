# remora: `make` builds build/remora; `make test` runs unit then integration tests.
# `make SANITIZER=address test` (or undefined) builds into build-address/ and runs everything there.

CC        ?= cc
SANITIZER ?=
BUILD     := build$(if $(SANITIZER),-$(SANITIZER))
PYTHON    := /usr/bin/python3
# Integration test files run side by side (pytest-xdist): most of a test's time is waiting on
# timers, so three at once take 40 % of the time on two cores (445 s to 180 s a pass here).
# TEST_JOBS=0 runs them one by one.
TEST_JOBS ?= 3
LLHTTP    := /usr/share/llhttp
LLHTTP_H  := /usr/share/include/llhttp

WARN      := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Werror
CPPFLAGS  := -D_GNU_SOURCE -I.
OPT       := -O2 -g
ifneq ($(SANITIZER),)
OPT       := -O1 -g -fsanitize=$(SANITIZER) -fno-omit-frame-pointer -fno-sanitize-recover=all
endif
CFLAGS    := -std=c11 $(OPT) -pthread
LDLIBS    := -luv -lcares -lcjson -lssl -lcrypto -lnghttp2 -lpcre2-8 -lpthread -lm

SRCS      := $(wildcard base/*.c http/*.c aws/*.c proxy/*.c config/*.c routing/*.c discovery/*.c tracing/*.c tls/*.c)
LIB_SRCS  := $(filter-out proxy/main.c,$(SRCS))
OBJS      := $(SRCS:%.c=$(BUILD)/%.o)
LIB_OBJS  := $(LIB_SRCS:%.c=$(BUILD)/%.o)
LLHTTP_OBJS := $(BUILD)/third_party/llhttp/api.o $(BUILD)/third_party/llhttp/http.o \
               $(BUILD)/third_party/llhttp/llhttp.o
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)
TOOL_BINS := $(BUILD)/tests/trace_header_cli $(BUILD)/tests/sigv4_cli
BENCH_BINS := $(BUILD)/bench/openloop $(BUILD)/bench/h2_upstream

DEB_PKGS  := build-essential pkg-config libuv1-dev libc-ares-dev libcjson-dev libpcre2-dev libssl-dev \
             libcmocka-dev python3 python3-pytest curl knot knot-dnsutils procps clang-format nodejs \
             clang-14 libclang-rt-14-dev openssl iproute2 iptables redis-server redis-tools util-linux \
             prometheus chromium libnghttp2-dev python3-h2 nghttp2-client python3-grpcio \
             python3-pytest-xdist
BENCH_PKGS := wrk haproxy nginx-light libnginx-mod-stream valgrind strace node-llhttp apache2-utils openssl \
              nghttp2-client

.PHONY: all deps test unit integration run lint format clean bench bench-smoke bench-deps bench-tools fuzz fuzz-smoke

all: $(BUILD)/remora

$(BUILD)/remora: $(OBJS)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -MMD -MP -c -o $@ $<

# llhttp's generated C is third-party code, used only by the bench's load generator: built
# without the project's warnings.
$(BUILD)/third_party/llhttp/%.o: $(LLHTTP)/%.c
	@mkdir -p $(dir $@)
	$(CC) -I$(LLHTTP_H) $(CFLAGS) -w -c -o $@ $<

$(BUILD)/tests/%: tests/unit/%.c $(LIB_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -Wno-missing-prototypes -o $@ $< $(LIB_OBJS) \
		$(LDLIBS) -lcmocka

$(BUILD)/tests/%: tests/tools/%.c $(LIB_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -o $@ $< $(LIB_OBJS) $(LDLIBS)

$(BUILD)/bench/%: tests/bench/%.c $(LLHTTP_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) -I$(LLHTTP_H) $(CFLAGS) $(WARN) -o $@ $< $(LLHTTP_OBJS) $(LDLIBS)

-include $(OBJS:.o=.d)

# libFuzzer targets: `make fuzz` (FUZZ_SECONDS per target), `make fuzz-smoke` (a short pass for CI).
-include tests/fuzz/fuzz.mk

# Installs what is missing, and only that; safe to run again.
deps:
	@missing=""; for p in $(DEB_PKGS) $(EXTRA_PKGS); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@# The X-Ray SDK, the reference the header-parsing test compares with (npm registry).
	@[ -d tests/xray/node_modules/aws-xray-sdk-core ] || \
		npm ci --prefix tests/xray --no-audit --no-fund --silent

unit: $(UNIT_BINS)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; $$t; done

integration: $(BUILD)/remora $(TOOL_BINS)
	REMORA_BIN=$(abspath $(BUILD)/remora) REMORA_TOOLS=$(abspath $(BUILD)/tests) REMORA_SANITIZER=$(SANITIZER) $(PYTHON) -m pytest -q -p no:cacheprovider -n $(TEST_JOBS) --dist loadfile tests/integration

test: deps
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory all
	$(MAKE) --no-print-directory unit
	$(MAKE) --no-print-directory integration

run: deps
	$(MAKE) --no-print-directory all
	$(PYTHON) examples/demo.py --remora $(BUILD)/remora

# Banned calls (unbounded copies, libc parsing that hides errors, shelling out) and formatting.
BANNED := \b(sprintf|vsprintf|strcpy|strcat|atoi|atol|gets|system)[[:space:]]*\(
lint:
	@! grep -nE '$(BANNED)' $(SRCS) $(wildcard */*.h) || { echo "lint: banned call above"; exit 1; }
	@clang-format --dry-run --Werror $(SRCS) $(wildcard base/*.h http/*.h aws/*.h proxy/*.h config/*.h routing/*.h discovery/*.h tracing/*.h tls/*.h)
	@echo "lint: ok"

format:
	clang-format -i $(SRCS) $(wildcard base/*.h http/*.h aws/*.h proxy/*.h config/*.h routing/*.h discovery/*.h tracing/*.h tls/*.h)

bench-deps:
	@$(MAKE) --no-print-directory deps EXTRA_PKGS="$(BENCH_PKGS)"

# The bench's tools build in a make of their own, started after bench-deps: the llhttp sources
# they need come with one of its packages, and this make looked for them before they existed.
bench-tools: bench-deps
	@$(MAKE) --no-print-directory all $(BENCH_BINS)

# The full benchmark (about 10 minutes): remora against HAProxy, nginx and a direct connection.
bench: bench-tools
	$(PYTHON) tests/bench/bench.py

# A short pass (under a minute) that keeps the harness working; it never fails on timing.
bench-smoke: bench-tools
	$(PYTHON) tests/bench/bench.py --smoke

clean:
	rm -rf build build-*

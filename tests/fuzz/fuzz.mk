# libFuzzer targets (tests/fuzz/README.md), included by the Makefile.
#
# Everything here is built by clang into build-fuzz/ and nothing is shared with build/: a
# fuzzer must link only objects instrumented for coverage, ASan and UBSan, and gcc's objects
# are neither. Each target links the few sources it exercises, not the whole proxy.
#
#   make fuzz         every target for FUZZ_SECONDS (default 600) each, one after another
#   make fuzz-smoke   seeds and regressions replayed, then FUZZ_SMOKE_SECONDS (default 20) each
#   make fuzz FUZZ_TARGETS=config FUZZ_SECONDS=60   one target

FUZZ_CC            ?= clang-14
FUZZ_BUILD         := build-fuzz
FUZZ_SECONDS       ?= 600
FUZZ_SMOKE_SECONDS ?= 20
FUZZ_DIR           := tests/fuzz
FUZZ_SAN           := -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_CFLAGS        := -std=c11 -O1 -g -fno-omit-frame-pointer -pthread $(FUZZ_SAN)
FUZZ_ALL           := dns_parse trace_header config sampling_rules \
                      h1_parse \
                      $(if $(wildcard proxy/h1_server.c),h1_server h1_client) \
                      $(if $(wildcard proxy/h2_server.c),h2_server) \
                      $(if $(wildcard proxy/h2_client.c),h2_client) \
                      $(if $(wildcard proxy/transport_tls.c),tls_server) control stats_filter
FUZZ_TARGETS       ?= $(FUZZ_ALL)

# What each target links, beside its own tests/fuzz/fuzz_<name>.c. A source that moves makes
# `No rule to make target build-fuzz/obj/<it>.o`, naming it.
fuzz_dns_parse_SRCS      := discovery/dns_parse.c
fuzz_dns_parse_LIBS      := -lcares
fuzz_trace_header_SRCS   := tracing/trace.c
fuzz_config_SRCS         := $(filter-out config/sampling_rules.c,$(filter config/%,$(LIB_SRCS))) base/iso8601.c
fuzz_config_LIBS         := -lcjson -lcrypto
fuzz_sampling_rules_SRCS := config/sampling_rules.c config/json.c config/diag.c
fuzz_sampling_rules_LIBS := -lcjson
fuzz_h1_parse_SRCS       := http/h1_parse.c http/head.c base/http.c
# The codecs over conn.c and a transport of the harness's own (fuzz_glue.h); transport_tcp.c
# only for the default transport conn_new sets.
fuzz_h1_codec_SRCS       := proxy/h1_out.c http/h1_parse.c http/head.c proxy/head_pool.c \
                            proxy/conn.c proxy/loop.c proxy/tqueue.c proxy/transport_tcp.c \
                            base/buf.c base/slab.c base/http.c base/err.c base/log.c
fuzz_h1_server_SRCS      := proxy/h1_server.c $(fuzz_h1_codec_SRCS)
fuzz_h1_server_LIBS      := -luv
fuzz_h1_client_SRCS      := proxy/h1_client.c $(fuzz_h1_codec_SRCS)
fuzz_h1_client_LIBS      := -luv
# The HTTP/2 codecs over nghttp2 (h2_body.c: the DATA both send), the server with h1_server for
# what its sniffer hands over.
fuzz_h2_server_SRCS      := proxy/h2_server.c proxy/h2_sniff.c proxy/h2_body.c proxy/h1_server.c \
                            $(fuzz_h1_codec_SRCS)
fuzz_h2_server_LIBS      := -luv -lnghttp2
fuzz_h2_client_SRCS      := proxy/h2_client.c proxy/h2_body.c http/head.c proxy/head_pool.c \
                            proxy/conn.c proxy/loop.c proxy/tqueue.c proxy/transport_tcp.c \
                            base/buf.c base/slab.c base/http.c base/err.c base/log.c
fuzz_h2_client_LIBS      := -luv -lnghttp2
# The TLS transport over a real socketpair, with conn.c above it and an OpenSSL client in the
# target; tls.c builds the listener's context (config/diag.c for its diagnostics, base/text.c
# for /certs); loop.c trims the loop's heads (head_pool.c).
fuzz_tls_server_SRCS     := proxy/transport_tls.c proxy/transport_tcp.c proxy/conn.c \
                            proxy/loop.c proxy/head_pool.c http/head.c base/http.c tls/tls.c \
                            config/diag.c base/buf.c base/slab.c base/log.c base/text.c
fuzz_tls_server_LIBS     := -luv -lssl -lcrypto

# The control plane's reply, URL and time parsers; aws.c and cloudmap.c are included by the
# target (their parsers are static), the rest is what they call.
fuzz_control_SRCS        := http/client.c http/h1_parse.c http/head.c aws/sigv4.c base/http.c \
                            base/err.c base/log.c base/iso8601.c base/backoff.c
fuzz_control_LIBS        := -luv -lssl -lcrypto -lcjson

# The admin API's stats filters: PCRE2 under its match limits, on any pattern.
fuzz_stats_filter_SRCS   := proxy/stats_filter.c
fuzz_stats_filter_LIBS   := -lpcre2-8

FUZZ_BINS := $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/fuzz_%)

$(FUZZ_BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(CPPFLAGS) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link $(WARN) -MMD -MP -c -o $@ $<

define fuzz_target
$(FUZZ_BUILD)/fuzz_$(1): $(FUZZ_BUILD)/obj/$(FUZZ_DIR)/fuzz_$(1).o \
		$(fuzz_$(1)_SRCS:%.c=$(FUZZ_BUILD)/obj/%.o)
	$$(FUZZ_CC) $$(FUZZ_CFLAGS) -fsanitize=fuzzer -o $$@ $$^ $(fuzz_$(1)_LIBS)
endef
$(foreach t,$(FUZZ_TARGETS),$(eval $(call fuzz_target,$(t))))

-include $(wildcard $(FUZZ_BUILD)/obj/*/*.d $(FUZZ_BUILD)/obj/*/*/*.d)

.PHONY: fuzz-build
fuzz-build: $(FUZZ_BINS)

fuzz: fuzz-build
	$(FUZZ_DIR)/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz-smoke: fuzz-build
	$(FUZZ_DIR)/run.sh --replay $(FUZZ_SMOKE_SECONDS) $(FUZZ_TARGETS)

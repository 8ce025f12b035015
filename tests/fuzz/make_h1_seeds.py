#!/usr/bin/env python3
"""Writes the h1_parse seed corpus (tests/fuzz/corpus/h1_parse/). Each file is two mode bytes
then the stream, as fuzz_h1_parse.c reads it: byte 0 the split point (0..255 scaled to the
length); byte 1 bit 0 the kind (0 request, 1 response), bits 1-2 the method being answered
(0 GET, 1 HEAD, 2 CONNECT, 3 POST), bit 3 trailers dropped (p->trailers NULL), bit 4 the first
0x01 byte standing for 65024 bytes of 'p' (the 64 KB caps are 512 bytes further). Run it
again only to change the seeds.

    tests/fuzz/make_h1_seeds.py [OUTDIR]
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "corpus", "h1_parse")

REQ, RESP = 0, 1
GET, HEAD, CONNECT, POST = 0, 2, 4, 6
DROP_TRAILERS, PAD = 8, 16

SEEDS = {
    # Requests that must parse.
    "req_get": (REQ, b"GET /index.html?q=1 HTTP/1.1\r\nHost: web.local\r\nUser-Agent: curl/7.88\r\n"
                     b"Accept: */*\r\n\r\n"),
    "req_post_length": (REQ, b"POST /cart HTTP/1.1\r\nHost: cart\r\nContent-Length: 11\r\n"
                             b"Content-Type: application/json\r\n\r\n{\"items\":1}"),
    "req_chunked_ext_trailers": (REQ, b"PUT /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                                      b"Trailer: X-Sum\r\n\r\n5;name=\"v 1\"\r\nhello\r\n6\r\n world\r\n"
                                      b"0\r\nX-Sum: 42\r\n\r\n"),
    "req_pipelined_lf": (REQ, b"GET /a HTTP/1.1\nHost: a\n\nHEAD /b HTTP/1.1\nHost: a\nConnection: close\n\n"),
    "req_connect": (REQ, b"CONNECT cart.shop.local:443 HTTP/1.1\r\nHost: cart.shop.local:443\r\n\r\n"),
    "req_options_absolute": (REQ, b"OPTIONS * HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n"
                                  b"GET http://web.local/x HTTP/1.1\r\nHost: web.local\r\n\r\n"),
    "req_http10_keepalive": (REQ, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
    "req_expect_continue": (REQ, b"POST /big HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                                 b"Content-Length: 3\r\n\r\nabc"),
    "req_upgrade": (REQ, b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                         b"Sec-WebSocket-Version: 13\r\n\r\n"),
    "req_te_codings": (REQ, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                            b"3\r\n\x1f\x8b\x08\r\n0\r\n\r\n"),
    "req_leading_empty_lines": (REQ, b"\r\n\r\nDELETE /x HTTP/1.1\r\nHost: a\r\nX-Empty:\r\n\r\n"),
    # Requests that must be refused (each a different rule).
    "bad_bare_cr": (REQ, b"GET / HTTP/1.1\rHost: a\r\n\r\n"),
    "bad_obs_fold": (REQ, b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n 2\r\n\r\n"),
    "bad_space_before_colon": (REQ, b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
    "bad_cl_and_te": (REQ, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    "bad_two_cl": (REQ, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"),
    "bad_version": (REQ, b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
    "bad_no_host": (REQ, b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n"),
    "bad_nul_in_value": (REQ, b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n"),
    "bad_chunk_size": (REQ, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"fffffffffffffffff\r\n"),
    "bad_http09": (REQ, b"GET /\r\n"),
    # Responses.
    "resp_length": (RESP | GET, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: cart\r\n\r\nhello"),
    "resp_204_304": (RESP | GET, b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\n"
                                 b"Content-Length: 10\r\n\r\n"),
    "resp_chunked_trailers": (RESP | POST, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                           b"4\r\nWiki\r\n0\r\ngrpc-status: 0\r\n\r\n"),
    "resp_interim": (RESP | POST, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n"
                                  b"Link: </s.css>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
    "resp_101_tunnel": (RESP | GET, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                    b"Connection: Upgrade\r\n\r\n\x81\x05hello"),
    "resp_connect_200": (RESP | CONNECT, b"HTTP/1.1 200 Connection Established\r\n\r\n\x16\x03\x01"),
    "resp_until_close": (RESP | GET, b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it"),
    "resp_to_head": (RESP | HEAD, b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"),
    "resp_te_over_cl": (RESP | GET, b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n"
                                    b"Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"),
    "resp_no_reason": (RESP | GET, b"HTTP/1.1 503 \r\nContent-Length: 0\r\n\r\n"),
    "resp_drop_trailers": (RESP | GET | DROP_TRAILERS,
                           b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"2\r\nok\r\n0\r\nX-A: 1\r\nX-B:\t2 \r\n\r\n"),
    # The caps, each just under or just over (PAD: 0x01 is 65024 bytes).
    "pad_target_under": (REQ | PAD, b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n"),
    "pad_target_over": (REQ | PAD, b"GET /\x01" + b"q" * 520 + b" HTTP/1.1\r\nHost: a\r\n\r\n"),
    "pad_head_over": (REQ | PAD, b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: \x01" + b"v" * 600 +
                                 b"\r\nX-More: 1\r\n\r\n"),
    "pad_trailers_over": (RESP | GET | PAD, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                           b"1\r\nx\r\n0\r\nX-T: \x01" + b"t" * 520 + b"\r\n\r\n"),
    "pad_chunk_ext_over": (REQ | PAD, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                                      b"1;a=\x01\r\nx\r\n0\r\n\r\n"),
    "dropped_trailers_too_many": (REQ | DROP_TRAILERS,
                                  b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"0\r\n" + b"t:\r\n" * 101 + b"\r\n"),
    "pad_dropped_trailers_over": (REQ | PAD | DROP_TRAILERS,
                                  b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"0\r\nX-T: \x01" + b"t" * 520 + b"\r\n\r\n"),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, (mode, stream) in sorted(SEEDS.items()):
        # Split in the middle of the head for most, at 0 and the end for a few.
        split = {"req_get": 0, "resp_length": 255}.get(name, 128)
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(bytes([split, mode]) + stream)
    print(f"{len(SEEDS)} seeds in {OUT}")


if __name__ == "__main__":
    main()

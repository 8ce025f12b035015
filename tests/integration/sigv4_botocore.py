"""botocore's SigV4 signer, the reference test_sigv4.py compares remora's with.

Run by an interpreter that has botocore (test_sigv4.py uses /root/.pyenv/shims/python3; Debian's
python3 has none). Reads one request per line on stdin, the same JSON sigv4_cli reads:

  {"method", "scheme", "host", "path", "query", "headers": [[name, value], ...], "body",
   "s3": bool, "access_key", "secret_key", "token", "region", "service", "time": epoch seconds}

and prints one JSON object per line: {"headers": [[name, value], ...]} with the headers
botocore added (X-Amz-Date, X-Amz-Security-Token, X-Amz-Content-SHA256, Authorization, in
remora's order), plus "canonical_request" and "string_to_sign" to show why two disagree.
"""
import datetime
import json
import sys

import botocore.auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ADDED = ["X-Amz-Date", "X-Amz-Security-Token", "X-Amz-Content-SHA256", "Authorization"]


def build(req):
    url = f"{req.get('scheme', 'https')}://{req['host']}{req.get('path') or '/'}"
    if req.get("query"):
        url += "?" + req["query"]
    r = AWSRequest(method=req["method"], url=url, data=req.get("body", "").encode("utf-8"))
    # HTTPHeaders (an email.message.Message) appends on assignment, so repeats are kept in
    # the order given, as a client would send them.
    for name, value in req.get("headers", []):
        r.headers[name] = value
    return r


def sign(req):
    when = datetime.datetime.fromtimestamp(req["time"], datetime.timezone.utc).replace(tzinfo=None)
    # add_auth reads the clock through this module-level function; pinning it is the way
    # botocore's own tests fix the timestamp.
    botocore.auth.get_current_datetime = lambda: when
    creds = Credentials(req["access_key"], req["secret_key"], req.get("token") or None)
    cls = botocore.auth.S3SigV4Auth if req.get("s3") else botocore.auth.SigV4Auth
    signer = cls(creds, req["service"], req["region"])
    r = build(req)
    signer.add_auth(r)
    out = {"headers": [[n, r.headers[n]] for n in ADDED if n in r.headers]}
    # The intermediates, recomputed on a copy without Authorization (else it is signed too).
    r2 = build(req)
    for name, _ in out["headers"]:
        if name != "Authorization":
            r2.headers[name] = r.headers[name]
    r2.context["timestamp"] = r.context["timestamp"]
    cr = signer.canonical_request(r2)
    out["canonical_request"] = cr
    out["string_to_sign"] = signer.string_to_sign(r2, cr)
    return out


def main():
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(sign(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()

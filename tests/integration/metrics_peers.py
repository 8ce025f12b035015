"""Peers for test_metrics.py that read remora's statistics the way real consumers do.

Scrape parses the Prometheus text format strictly (every line must parse, every family must be
`# HELP`, `# TYPE`, then its series, contiguous) and answers lookups by family and labels.
PrometheusServer runs Debian's real Prometheus against remora's admin port and queries its HTTP
API. DogStatsDAgent is a UDP or unix datagram socket that timestamps every datagram on arrival,
so that datagrams sent together form one flush.
"""
import json
import math
import os
import re
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request

from conftest import free_port, wait_until

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\} (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


def parse_labels(text):
    """`a="x",b="y"` -> [("a", "x"), ("b", "y")], in order; ValueError when it does not parse."""
    out, pos = [], 0
    while pos < len(text):
        m = LABEL.match(text, pos)
        if not m:
            raise ValueError(f"bad labels at {pos}: {text!r}")
        out.append((m.group(1), m.group(2)))
        pos = m.end()
    return out


class Scrape:
    """One /stats/prometheus body. `samples` are (sample name, [(label, value)...], float);
    `layout` lists what breaks the `# HELP`, `# TYPE`, series grouping."""

    def __init__(self, text):
        self.text = text
        self.types, self.helps, self.samples, self.layout = {}, {}, [], []
        family, pending_help = None, None
        for n, line in enumerate(text.splitlines(), 1):
            if not line:
                continue
            if line.startswith("# HELP "):
                pending_help = line.split(" ", 3)[2]
                self.helps[pending_help] = line
                continue
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ")
                if pending_help != name:
                    self.layout.append(f"line {n}: # TYPE {name} not right after its # HELP")
                if name in self.types:
                    self.layout.append(f"line {n}: family {name} appears twice")
                self.types[name], family, pending_help = kind, name, None
                continue
            if line.startswith("#"):
                continue
            m = SAMPLE.match(line)
            if not m:
                raise ValueError(f"line {n} is not a sample: {line!r}")
            name, labels, value = m.group(1), parse_labels(m.group(2)), float(m.group(3))
            if self.family_of(name) != family:
                self.layout.append(f"line {n}: {name} outside its family (after # TYPE {family})")
            self.samples.append((name, labels, value))

    def family_of(self, sample_name):
        for suffix in ("_bucket", "_sum", "_count"):
            base = sample_name[: -len(suffix)]
            if sample_name.endswith(suffix) and self.types.get(base) == "histogram":
                return base
        return sample_name

    def series(self, name, **labels):
        """[(labels dict, value)] of the samples called `name` that carry all of `labels`."""
        out = []
        for n, ls, v in self.samples:
            d = dict(ls)
            if n == name and all(d.get(k) == str(w) for k, w in labels.items()):
                out.append((d, v))
        return out

    def value(self, name, **labels):
        """The one sample's value, or None when there is none (several is an error)."""
        found = self.series(name, **labels)
        if len(found) > 1:
            raise AssertionError(f"{len(found)} series {name}{labels}, wanted one: {found}")
        return found[0][1] if found else None

    def histogram(self, family, **labels):
        """{"le": [(le text, cumulative count)...], "sum": x, "count": n}, or None if absent."""
        buckets = [(d["le"], v) for d, v in self.series(family + "_bucket", **labels)]
        if not buckets:
            return None
        return {"le": buckets, "sum": self.value(family + "_sum", **labels),
                "count": self.value(family + "_count", **labels)}

    @staticmethod
    def bucket(hist, bound):
        """The cumulative count at le == bound, matched by number (so "3.6e+06" == 3600000)."""
        for le, v in hist["le"]:
            if (math.inf if le == "+Inf" else float(le)) == bound:
                return v
        raise AssertionError(f"no bucket le={bound} in {hist['le']}")


class PrometheusServer:
    """A real Prometheus scraping remora's admin /stats/prometheus every second."""

    def __init__(self, binary, directory, target_port):
        os.makedirs(directory, exist_ok=True)
        self.port = free_port()
        config = os.path.join(directory, "prometheus.yml")
        with open(config, "w") as f:
            f.write(f"""global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: remora
    metrics_path: /stats/prometheus
    static_configs:
      - targets: ["127.0.0.1:{target_port}"]
""")
        self.log_path = os.path.join(directory, "prometheus.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={directory}/data",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_until(self.ready, timeout=20, interval=0.1, what="prometheus /-/ready")
        except BaseException:
            self.stop()
            raise

    def ready(self):
        if self.proc.poll() is not None:
            raise AssertionError(
                f"prometheus exited with {self.proc.returncode}:\n{self.read_log()}")
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
            return r.status == 200

    def read_log(self):
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def api(self, path, **params):
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql):
        """[(labels dict, float)] of an instant query at the present moment."""
        data = self.api("query", query=promql)
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(s["metric"], float(s["value"][1])) for s in data["result"]]

    def scalar(self, promql):
        """The one value a query gives, or None when it gives nothing."""
        found = self.query(promql)
        assert len(found) <= 1, f"{promql}: {found}"
        return found[0][1] if found else None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class DogStatsDAgent:
    """Receives DogStatsD datagrams (UDP on 127.0.0.1, or a unix datagram socket at `path`) on a
    thread, each stamped with its arrival time."""

    GAP = 0.1  # datagrams of one flush arrive together; flushes are >= 100 ms apart

    def __init__(self, path=None):
        self.path, self.port = path, None
        if path:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.bind(path)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("127.0.0.1", 0))
            self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.1)
        self.lock = threading.Lock()
        self.datagrams = []  # (arrival, bytes)
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.running:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.datagrams.append((time.monotonic(), data))

    def flushes(self):
        """[(arrival of its first datagram, [datagram bytes...])], oldest first; the newest
        flush is only reported once GAP has passed without a datagram (it is complete)."""
        with self.lock:
            grams = list(self.datagrams)
        out = []
        for t, data in grams:
            if out and t - out[-1][2] < self.GAP:
                out[-1][1].append(data)
                out[-1][2] = t
            else:
                out.append([t, [data], t])
        if out and time.monotonic() - out[-1][2] < self.GAP:
            out.pop()
        return [(first, grams_) for first, grams_, _ in out]

    def next_flush(self, after, timeout=5.0):
        """The first complete flush that began after `after` (a time.monotonic() value)."""
        return wait_until(lambda: next((f for f in self.flushes() if f[0] > after), None),
                          timeout=timeout, interval=0.01, what="a DogStatsD flush")

    def stop(self):
        self.running = False
        self.thread.join(2)
        self.sock.close()

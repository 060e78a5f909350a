#!/usr/bin/env python3
"""bench.py - the driver of tests/bench/run.sh (see there for the usage).

Every step runs on loopback with processes this script starts and stops
(also when it fails): the relay from the build tree, nginx with a config
and prefix of its own in a temporary directory, the websocket sink, the
load generator and the two raw-rate programs.

  ingest        relay, upstream a closed port (all stays queued), wsload flat
                out: messages committed/s, commit latency p50/p99, CPU, RSS
  nginx         nginx as a TLS websocket proxy in front of wssink, the same
                wsload: messages/s arriving at the sink
  sqlite        sqlite-insert: raw group-commit inserts/s of the same rows
  curl          curl-post to nginx's HTTPS `return 200`: raw POSTs/s over
                HTTP/1.1 keep-alive and over HTTP/2 multiplexing
  drain         queue-fill pre-fills a queue, the relay drains it to the same
                nginx (upstream-protocol http-post): messages delivered/s until
                empty
  drainws       the same queue drained over upstream websockets (the default
                upstream-protocol) to nginx's TLS websocket proxy in front of
                wssink, the sink the nginx step's wsload writes to
  scale         10,000 SDK-like connections, one message each every 8 s:
                RSS per connection, CPU, p99 commit latency, errors
  scalews       the same load with every SDK connection's upstream websocket
                open (the default upstream-protocol) to nginx's TLS websocket
                proxy, beside a second nginx proxying as many wss connections
                to that proxy over wss: RSS per session and CPU per message of
                each, sized to the open-file limit

Each measurement is taken --runs times; the report gives medians and the
ratios of the issue's targets.  Python 3 standard library only.
"""
import argparse
import http.client
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRCDIR = os.path.abspath(os.path.join(HERE, "..", ".."))
CERTS = os.path.join(SRCDIR, "tests", "certs")
FIXTURES = os.path.join(SRCDIR, "tests", "fixtures", "watchrtc-sdk")
FRAME_LOGS = [os.path.join(FIXTURES, "frame-log-baseline1000.jsonl"),
              os.path.join(FIXTURES, "frame-log-baseline8000.jsonl")]

# The integration tests' helpers (standard library only, like this script),
# imported without writing bytecode into the source tree.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(SRCDIR, "tests"))
from relaytest import free_port, wait_until  # noqa: E402
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# The targets.
TARGET_INGEST_VS_NGINX = 0.5
TARGET_INGEST_VS_SQLITE = 0.6
TARGET_DRAIN_VS_CURL = 0.8
TARGET_DRAINWS_VS_NGINX = 0.5
TARGET_RSS_PER_CONN_KB = 30
TARGET_P99_COMMIT_S = 0.020
TARGET_SCALEWS_RSS_VS_NGINX = 0.6

# Sizes of a full run and of CI's smoke run.
FULL = dict(runs=3, ingest_conns=64, ingest_threads=2, ingest_warmup=3, ingest_window=10,
            sqlite_batches="100,300,1000", curl_seconds=4,
            drain_messages=200000, drain_sessions=1000, drain_timeout=300,
            scale_conns=10000, scale_rate=0.125, scale_settle=10, scale_window=60,
            scale_threads=2, scale_connect_timeout=120,
            scalews_conns=0, scalews_settle=10, scalews_window=60)
SMOKE = dict(runs=1, ingest_conns=8, ingest_threads=1, ingest_warmup=0.5, ingest_window=1.5,
             sqlite_batches="100,1000", curl_seconds=1,
             drain_messages=3000, drain_sessions=100, drain_timeout=30,
             scale_conns=200, scale_rate=2, scale_settle=0.5, scale_window=2,
             scale_threads=1, scale_connect_timeout=20,
             scalews_conns=200, scalews_settle=1, scalews_window=2)
TOLERATED_ERROR_SHARE = 0.001   # failed upstream POSTs (retried) that are only noted
# Open files for the relay and the generator: what the shipped systemd unit
# gives the relay (LimitNOFILE), capped; raised only where we may (root).
BENCH_NOFILE = 65536
# The scalews step's sessions when not given: every session takes two of
# the relay's descriptors (the SDK's socket and its upstream websocket's),
# so the hard limit less what the relay keeps for everything else, halved.
SCALEWS_MAX_SESSIONS = 9000
SCALEWS_FDS_KEPT = 2000
BIG_EVERY = 200          # one initial batch (~34 KB) per 200 messages
POLL_S = 0.25            # metrics polling period while draining


class BenchError(Exception):
    pass


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------ processes ----
_procs = []


def raise_nofile():
    """In the child: the hard and soft open-file limits up to BENCH_NOFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (BENCH_NOFILE, max(hard, BENCH_NOFILE)))
    except (ValueError, OSError):
        pass


def spawn(cmd, **kw):
    log("  $ " + " ".join(cmd))
    p = subprocess.Popen(cmd, preexec_fn=raise_nofile, **kw)
    _procs.append(p)
    return p


def stop(p, sig=signal.SIGTERM, timeout=20):
    """Signals p and waits for it (SIGKILL after timeout); returns its status."""
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in _procs:
        _procs.remove(p)
    return p.returncode


def stop_all():
    for p in list(_procs):
        stop(p, timeout=5)


def cpu_ticks(pids):
    """utime + stime of the processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / CLK_TCK


def rss_kb(pid):
    with open("/proc/%d/statm" % pid) as f:
        return int(f.read().split()[1]) * PAGE // 1024


def open_fds(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return 0


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except OSError:
                pass
    return out


def http_get(port, path, timeout=5):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


# --------------------------------------------------------------- metrics ---
def scrape(port):
    """The relay's /metrics (admin listener) as {sample: value}."""
    status, body = http_get(port, "/metrics")
    if status != 200:
        raise BenchError("/metrics answered %d" % status)
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def hist_delta(m0, m1, name):
    """[(upper bound, count)] of a histogram's increase between two scrapes."""
    out = []
    prefix = name + "_bucket{le=\""
    for k, v in m1.items():
        if k.startswith(prefix):
            le = k[len(prefix):-2]
            out.append((float("inf") if le == "+Inf" else float(le), v - m0.get(k, 0)))
    return sorted(out)


def quantile(buckets, q):
    """Prometheus-style estimate: linear within the bucket holding rank q."""
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for le, cum in buckets:
        if cum >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * ((rank - below) / (cum - below) if cum > below else 1)
        lower, below = le, cum
    return lower


def share_within(buckets, bound):
    total = buckets[-1][1] if buckets else 0
    for le, cum in buckets:
        if abs(le - bound) < 1e-9:
            return cum / total if total else None
    return None


# ----------------------------------------------------------------- tools ---
class Bench:
    def __init__(self, args, sizes):
        self.a = args
        self.s = sizes
        build = os.environ.get("BUILDDIR") or (
            os.getcwd() if os.path.exists("server/watchrtc-relay") else SRCDIR)
        self.build = os.path.abspath(build)
        self.relay_bin = os.path.join(self.build, "server", "watchrtc-relay")
        self.tool = lambda n: os.path.join(self.build, "tests", "bench", n)
        self.tmp = tempfile.mkdtemp(prefix="relay-bench-")
        self.errors = []
        self.nginx = None
        self.front = None
        self.fronts = 0
        self.sink = None
        self.relays = 0

    def check_tools(self):
        need = [self.relay_bin] + [self.tool(n) for n in
                                   ("wsload", "wssink", "sqlite-insert", "curl-post", "queue-fill")]
        missing = [p for p in need if not os.access(p, os.X_OK)]
        if missing:
            raise BenchError("not built: %s (make check builds them; BUILDDIR=%s)"
                             % (", ".join(missing), self.build))
        if not shutil.which("nginx") and not os.path.exists("/usr/sbin/nginx"):
            raise BenchError("nginx not found: apt-get install -y nginx-light")
        try:
            ldd = subprocess.run(["ldd", self.relay_bin], capture_output=True, text=True).stdout
        except OSError:
            ldd = ""
        if "libasan" in ldd or "libubsan" in ldd:
            log("WARNING: the relay is built with sanitizers; its figures mean little")

    def error(self, what):
        log("ERROR: " + what)
        self.errors.append(what)

    # ---- nginx and the sink, shared by every run ----
    def nginx_nofile(self):
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        return min(hard if hard != resource.RLIM_INFINITY else 65536, 65536)

    def start_nginx(self, name, conf_template, port, **ports):
        """An nginx with its own prefix; returns it once `port` accepts."""
        prefix = os.path.join(self.tmp, name)
        os.makedirs(prefix)
        nofile = self.nginx_nofile()
        conf = conf_template % dict(
            ports, user="user root;" if os.geteuid() == 0 else "", prefix=prefix, nofile=nofile,
            # Each worker's connections (client and upstream sides) within
            # its open files.
            worker_connections=max(1024, nofile - 100),
            cert=os.path.join(CERTS, "server.pem"), key=os.path.join(CERTS, "server-key.pem"),
            ca=os.path.join(CERTS, "ca.pem"))
        with open(os.path.join(prefix, "nginx.conf"), "w") as f:
            f.write(conf)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        p = spawn([nginx, "-p", prefix, "-c", os.path.join(prefix, "nginx.conf"),
                   "-e", os.path.join(prefix, "error.log")],
                  stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

        def up():
            try:
                with socket.create_connection(("127.0.0.1", port), 0.5):
                    return True
            except OSError:
                return p.poll() is not None
        if not wait_until(up, 10) or p.poll() is not None:
            raise BenchError("nginx (%s) did not start: %s"
                             % (name, self.tail(os.path.join(prefix, "error.log"))))
        p.prefix = prefix
        return p

    def start_peers(self):
        self.sink = spawn([self.tool("wssink"), "--port", "0"], stdout=subprocess.PIPE,
                          stderr=open(os.path.join(self.tmp, "wssink.log"), "wb"))
        line = self.sink.stdout.readline().decode()
        if not line.startswith("PORT "):
            raise BenchError("wssink did not start")
        self.sink_port = int(line.split()[1])
        self.nginx_ws_port, self.nginx_post_port = free_port(), free_port()
        self.nginx = self.start_nginx("nginx", NGINX_CONF, self.nginx_post_port,
                                      ws_port=self.nginx_ws_port, post_port=self.nginx_post_port,
                                      sink_port=self.sink_port)

    def nginx_pids(self, nginx=None):
        nginx = nginx or self.nginx
        return [nginx.pid] + children(nginx.pid)

    def sink_stats(self):
        return json.loads(http_get(self.sink_port, "/stats")[1])

    @staticmethod
    def tail(path, n=2000):
        try:
            with open(path, errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""

    # ---- the relay ----
    def private_key(self):
        """A 0600 copy of the test key: the relay refuses a key others can
        read, and a fresh clone's files are 0644."""
        key = os.path.join(self.tmp, "server-key.pem")
        if not os.path.exists(key):
            shutil.copyfile(os.path.join(CERTS, "server-key.pem"), key)
            os.chmod(key, 0o600)
        return key

    def start_relay(self, name, upstream, extra=(), state=None):
        """A relay on fresh ports; a fresh state directory unless given one."""
        self.relays += 1
        name = "%s-%d" % (name, self.relays)
        if state is None:
            state = os.path.join(self.tmp, name + "-state")
            os.makedirs(state)
        admin = free_port()
        port = free_port()
        logf = os.path.join(self.tmp, name + ".log")
        cmd = [self.relay_bin, "--listen-address", "127.0.0.1", "--port", str(port),
               "--state-dir", state, "--admin-listen", "127.0.0.1:%d" % admin,
               "--tls-cert", os.path.join(CERTS, "server.pem"),
               "--tls-key", self.private_key(),
               "--upstream", upstream, "--upstream-ca", os.path.join(CERTS, "ca.pem")]
        p = spawn(cmd + list(extra) + self.a.relay_arg, stdout=open(logf, "ab"),
                  stderr=subprocess.STDOUT)

        def live():
            if p.poll() is not None:
                return True
            try:
                return http_get(admin, "/healthcheck/live", 1)[0] == 200
            except OSError:
                return False
        if not wait_until(live, 30) or p.poll() is not None:
            raise BenchError("relay did not start:\n" + self.tail(logf))
        p.port, p.admin, p.logf, p.state = port, admin, logf, state
        return p

    def stop_relay(self, p):
        rc = stop(p, signal.SIGTERM, 30)
        if rc != 0:
            self.error("relay exited %s (log %s): %s" % (rc, p.logf, self.tail(p.logf, 300)))
        else:
            shutil.rmtree(p.state, ignore_errors=True)  # the queue: hundreds of MB

    def paused_upstream(self):
        # A closed port: every attempt fails at once and backs off for a
        # minute, so everything stays queued.
        return "https://127.0.0.1:%d" % free_port()

    # ---- wsload ----
    def wsload(self, port, conns, threads, duration, rate=0, initial=True, connect_timeout=60):
        cmd = [self.tool("wsload"), "--port", str(port), "--connections", str(conns),
               "--threads", str(threads), "--duration", str(duration), "--rate", str(rate),
               "--big-every", str(BIG_EVERY), "--handshakes", "256",
               "--connect-timeout", str(connect_timeout)]
        for f in FRAME_LOGS:
            cmd += ["--frame-log", f]
        if not initial:
            cmd.append("--no-initial-batch")
        p = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        p.ready = threading.Event()
        p.stderr_lines = []

        def reader():
            for line in p.stderr:
                line = line.decode(errors="replace").rstrip()
                p.stderr_lines.append(line)
                if line.startswith("ready"):
                    p.ready.set()
            p.ready.set()
        p.reader = threading.Thread(target=reader, daemon=True)
        p.reader.start()
        return p

    def wsload_result(self, p, timeout):
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop(p)
            raise BenchError("wsload did not finish")
        _procs.remove(p)
        p.reader.join(5)
        try:
            r = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise BenchError("wsload exited %d: %s" % (p.returncode, "\n".join(p.stderr_lines)))
        if r["errors"]:
            self.error("wsload: %d errors (%s)" % (r["errors"], r["first_error"]))
        return r

    def wait_ready(self, p, timeout):
        if not p.ready.wait(timeout) or p.poll() is not None:
            stop(p)
            raise BenchError("wsload never became ready (exit %s): %s"
                             % (p.returncode, "\n".join(p.stderr_lines)))

    # ---- the steps ----
    def ingest_relay(self):
        s = self.s
        # Flat out the relay fills its default caps (1 GB, 1,000,000 messages)
        # within the window: raised, so that the step measures the ingest.
        relay = self.start_relay("ingest", self.paused_upstream(),
                                 ["--retry-base-ms", "60000", "--retry-max-ms", "600000",
                                  "--queue-max-bytes", "16G", "--queue-max-messages", "20000000"])
        try:
            gen = self.wsload(relay.port, s["ingest_conns"], s["ingest_threads"],
                              s["ingest_warmup"] + s["ingest_window"] + 1)
            self.wait_ready(gen, 60)
            time.sleep(s["ingest_warmup"])
            m0, c0, g0, t0 = scrape(relay.admin), cpu_ticks([relay.pid]), cpu_ticks([gen.pid]), time.monotonic()
            time.sleep(s["ingest_window"])
            m1, c1, g1, t1 = scrape(relay.admin), cpu_ticks([relay.pid]), cpu_ticks([gen.pid]), time.monotonic()
            rss = rss_kb(relay.pid)
            w = self.wsload_result(gen, 120)
        finally:
            self.stop_relay(relay)
        dt = t1 - t0
        lat = hist_delta(m0, m1, "watchrtc_relay_commit_latency_seconds")
        committed = m1["watchrtc_relay_messages_committed_total"] - m0["watchrtc_relay_messages_committed_total"]
        commits = m1["watchrtc_relay_commits_total"] - m0["watchrtc_relay_commits_total"]
        if committed <= 0:
            self.error("ingest: nothing committed")
        return dict(committed_per_s=committed / dt,
                    received_per_s=(m1['watchrtc_relay_messages_received_total{transport="websocket"}']
                                    - m0['watchrtc_relay_messages_received_total{transport="websocket"}']) / dt,
                    mean_batch=committed / commits if commits else 0,
                    p50_ms=(quantile(lat, 0.5) or 0) * 1000, p99_ms=(quantile(lat, 0.99) or 0) * 1000,
                    cpu_cores=(c1 - c0) / dt, gen_cpu_cores=(g1 - g0) / dt, rss_mb=rss / 1024,
                    sent_per_s=w["messages_per_s"], errors=w["errors"])

    def ingest_nginx(self):
        s = self.s
        gen = self.wsload(self.nginx_ws_port, s["ingest_conns"], s["ingest_threads"],
                          s["ingest_warmup"] + s["ingest_window"] + 1)
        self.wait_ready(gen, 60)
        time.sleep(s["ingest_warmup"])
        pids = self.nginx_pids()
        s0, c0, k0, g0, t0 = (self.sink_stats(), cpu_ticks(pids), cpu_ticks([self.sink.pid]),
                              cpu_ticks([gen.pid]), time.monotonic())
        time.sleep(s["ingest_window"])
        s1, c1, k1, g1, t1 = (self.sink_stats(), cpu_ticks(pids), cpu_ticks([self.sink.pid]),
                              cpu_ticks([gen.pid]), time.monotonic())
        w = self.wsload_result(gen, 120)
        dt = t1 - t0
        got = s1["messages"] - s0["messages"]
        if got <= 0:
            self.error("nginx: nothing reached the sink")
        return dict(sink_per_s=got / dt, cpu_cores=(c1 - c0) / dt, sink_cpu_cores=(k1 - k0) / dt,
                    gen_cpu_cores=(g1 - g0) / dt, sent_per_s=w["messages_per_s"], errors=w["errors"])

    def sqlite(self):
        # Timed as the relay's ingest is: a warm-up, then the window.  Four
        # seconds from an empty file measured the page cache as much as
        # the disk (up to 1.4x the sustained rate here).
        cmd = [self.tool("sqlite-insert"), "--db", os.path.join(self.tmp, "raw.db"),
               "--warmup", str(self.s["ingest_warmup"]), "--seconds", str(self.s["ingest_window"]),
               "--batch", self.s["sqlite_batches"], "--big-every", str(BIG_EVERY)]
        for f in FRAME_LOGS:
            cmd += ["--frame-log", f]
        r = self.run_json(cmd, 300)
        out = {"rows_per_s_%d" % x["batch"]: x["rows_per_s"] for x in r["results"]}
        out.update({"cpu_us_per_row_%d" % x["batch"]: x["cpu_us_per_row"] for x in r["results"]})
        out["best_rows_per_s"] = max(x["rows_per_s"] for x in r["results"])
        # For reference, SQLite's default 4 KB page, where a ~2.1 KB row
        # takes a page of its own (the queue uses 32 KB pages).
        small = self.run_json(cmd + ["--batch", "1000", "--page-size", "4096"], 300)
        out["rows_per_s_1000_4k"] = small["results"][0]["rows_per_s"]
        return out

    def curl(self):
        url = "https://127.0.0.1:%d/" % self.nginx_post_port
        base = [self.tool("curl-post"), "--url", url, "--cainfo", os.path.join(CERTS, "ca.pem"),
                "--seconds", str(self.s["curl_seconds"])]
        for f in FRAME_LOGS:
            base += ["--frame-log", f]
        h1 = self.run_json(base + ["--connections", "8"], 120)
        h2 = self.run_json(base + ["--http2", "--connections", "4", "--streams", "16"], 120)
        for r in (h1, h2):
            # libcurl 7.88 with nginx 1.22 over HTTP/2 now and then fails a
            # stream ("Error in the HTTP2 framing layer"): a handful is noted,
            # more is an error.
            if r["errors"] > TOLERATED_ERROR_SHARE * r["requests"]:
                self.error("curl-post %s: %d errors" % (r["mode"], r["errors"]))
            elif r["errors"]:
                log("note: curl-post %s: %d of %d requests failed" % (r["mode"], r["errors"], r["requests"]))
        return dict(h1_errors=h1["errors"], h2_errors=h2["errors"],
                    h1_per_s=h1["requests_per_s"], h1_cpu_us=h1["cpu_us_per_request"],
                    h2_per_s=h2["requests_per_s"], h2_cpu_us=h2["cpu_us_per_request"],
                    best_per_s=max(h1["requests_per_s"], h2["requests_per_s"]))

    def drain(self, protocol="http-post"):
        s = self.s
        state = os.path.join(self.tmp, "drain-state")
        shutil.rmtree(state, ignore_errors=True)
        os.makedirs(state, mode=0o700)
        cmd = [self.tool("queue-fill"), "--db", os.path.join(state, "queue.db"),
               "--messages", str(s["drain_messages"]), "--sessions", str(s["drain_sessions"])]
        for f in FRAME_LOGS:
            cmd += ["--frame-log", f]
        fill = self.run_json(cmd, 600)
        # One forwarder thread per core with 8 requests in flight each: the
        # defaults (4 x 16 kept-alive connections) suit a distant upstream,
        # where round trips bound the rate; against this local sink every
        # extra connection only costs CPU (curl-post: ~15% more per request
        # at 64 connections than at 8).
        if protocol == "websocket":
            # Two threads of upstream websockets, one per core, the
            # default fence interval.
            relay = self.start_relay("drainws", "https://127.0.0.1:%d" % self.nginx_ws_port,
                                     state=state, extra=["--upstream-ws-threads", "2"])
        else:
            relay = self.start_relay("drain", "https://127.0.0.1:%d" % self.nginx_post_port,
                                     state=state, extra=["--upstream-protocol", "http-post",
                                                         "--forward-workers", "2",
                                                         "--forward-inflight", "8"])
        t_live = time.monotonic()
        pids = self.nginx_pids()
        try:
            samples = []
            end = time.monotonic() + s["drain_timeout"]
            c0 = n0 = None
            while time.monotonic() < end:
                m = scrape(relay.admin)
                t = time.monotonic()
                fwd = m["watchrtc_relay_messages_forwarded_total"]
                depth = m["watchrtc_relay_queue_depth"]
                if c0 is None and fwd > 0:
                    c0, n0 = cpu_ticks([relay.pid]), cpu_ticks(pids)
                samples.append((t, fwd, depth))
                if depth == 0:
                    break
                time.sleep(POLL_S)
            c1, n1 = cpu_ticks([relay.pid]), cpu_ticks(pids)
            final = scrape(relay.admin)
        finally:
            self.stop_relay(relay)
        t_end, fwd_end, depth_end = samples[-1]
        if depth_end != 0:
            self.error("drain: %d messages still queued after %ds" % (depth_end, s["drain_timeout"]))
        first = next((x for x in samples if x[1] > 0), None)
        if first is None:
            self.error("drain: nothing forwarded")
            return dict(delivered_per_s=0, filled=fill["messages"])
        if fwd_end <= first[1]:
            # Everything went out before a second poll (the smoke run's small
            # counts): a rate from the relay's start is all there is.
            log("note: drain: the queue emptied within one poll")
            first = (t_live, 0, None)
        # From the first sample that saw a delivery: the relay's start-up
        # (loading the queue's index) is not part of the rate.
        dt = t_end - first[0]
        failed = sum(final.get('watchrtc_relay_forward_attempts_total{result="%s"}' % r, 0)
                     for r in ("retry", "dead_letter", "rejected_key"))
        if failed > TOLERATED_ERROR_SHARE * fill["messages"]:
            self.error("drain: %d attempts not delivered" % failed)
        return dict(delivered_per_s=(fwd_end - first[1]) / dt, filled=fill["messages"],
                    fill_per_s=fill["messages_per_s"], seconds=dt,
                    cpu_cores=(c1 - c0) / dt if c0 is not None else 0,
                    nginx_cpu_cores=(n1 - n0) / dt if n0 is not None else 0,
                    not_delivered=failed)

    def drainws(self):
        return self.drain("websocket")

    def scale(self):
        s = self.s
        # Normal operation: the upstream (nginx's HTTPS 200) takes what
        # arrives, so the figures are the connections', not a growing queue's.
        relay = self.start_relay("scale", "https://127.0.0.1:%d" % self.nginx_post_port,
                                 extra=["--upstream-protocol", "http-post"])
        try:
            rss0, fds0 = rss_kb(relay.pid), open_fds(relay.pid)
            duration = s["scale_settle"] + s["scale_window"] + 1
            gen = self.wsload(relay.port, s["scale_conns"], s["scale_threads"], duration,
                              rate=s["scale_rate"], initial=False,
                              connect_timeout=s["scale_connect_timeout"])
            self.wait_ready(gen, s["scale_connect_timeout"] + 30)
            time.sleep(s["scale_settle"])
            m0, c0, t0 = scrape(relay.admin), cpu_ticks([relay.pid]), time.monotonic()
            time.sleep(s["scale_window"])
            m1, c1, t1 = scrape(relay.admin), cpu_ticks([relay.pid]), time.monotonic()
            rss1, fds1 = rss_kb(relay.pid), open_fds(relay.pid)
            w = self.wsload_result(gen, duration + 120)
        finally:
            self.stop_relay(relay)
        dt = t1 - t0
        lat = hist_delta(m0, m1, "watchrtc_relay_commit_latency_seconds")
        opened = max(w["opened"], 1)
        committed = m1["watchrtc_relay_messages_committed_total"] - m0["watchrtc_relay_messages_committed_total"]
        errors = w["errors"] + (m1.get("watchrtc_relay_websocket_protocol_errors_total", 0)
                                - m0.get("watchrtc_relay_websocket_protocol_errors_total", 0))
        return dict(connections=w["opened"], connects_per_s=w["connects_per_s"],
                    rss_mb=rss1 / 1024, rss_kb_per_conn=rss1 / opened,
                    rss_delta_kb_per_conn=(rss1 - rss0) / opened,
                    fds_per_conn=(fds1 - fds0) / opened,
                    cpu_cores=(c1 - c0) / dt, committed_per_s=committed / dt,
                    p50_ms=(quantile(lat, 0.5) or 0) * 1000, p99_ms=(quantile(lat, 0.99) or 0) * 1000,
                    within_20ms=share_within(lat, TARGET_P99_COMMIT_S) or 0,
                    late=w["late"], errors=errors)

    def scalews_sessions(self):
        if self.s["scalews_conns"]:
            return self.s["scalews_conns"]
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if hard == resource.RLIM_INFINITY:
            hard = BENCH_NOFILE
        return max(100, min(SCALEWS_MAX_SESSIONS, (hard - SCALEWS_FDS_KEPT) // 2))

    def hold_sessions(self, port, n, opened, pids, sample=lambda: None):
        """wsload's n SDK-like sessions through port at the SDK's rate,
        until opened() says all n have their far side, then a settling
        time and the window: RSS added per session and CPU of pids, and
        what sample() returns at the window's start and end."""
        s = self.s
        rss = lambda: sum(rss_kb(p) for p in pids)
        rss0 = rss()
        # A session's far side opens with its first message, at a random
        # point of its first interval, after the far handshake: the window
        # starts once all are open; wsload is then told to stop (SIGTERM).
        first = 1 / s["scale_rate"] + s["scale_connect_timeout"]
        duration = first + s["scalews_settle"] + s["scalews_window"] + 30
        gen = self.wsload(port, n, s["scale_threads"], duration, rate=s["scale_rate"],
                          initial=False, connect_timeout=s["scale_connect_timeout"])
        t_start = time.monotonic()
        try:
            self.wait_ready(gen, s["scale_connect_timeout"] + 30)
            wait_until(lambda: opened() >= n, first, 0.25)
            far = opened()
            t_open = time.monotonic() - t_start
            if far < n:
                self.error("scalews: %d of %d far connections open" % (far, n))
            time.sleep(s["scalews_settle"])
            k0, c0, t0, s0 = self.sink_stats(), cpu_ticks(pids), time.monotonic(), sample()
            time.sleep(s["scalews_window"])
            k1, c1, t1, s1 = self.sink_stats(), cpu_ticks(pids), time.monotonic(), sample()
            rss1 = rss()
            if gen.poll() is not None:
                self.error("scalews: wsload ended inside the window")
            gen.send_signal(signal.SIGTERM)
            w = self.wsload_result(gen, 120)
        except BaseException:
            stop(gen)
            raise
        dt = t1 - t0
        arrived = k1["messages"] - k0["messages"]
        cores = (c1 - c0) / dt
        per_s = arrived / dt
        r = dict(sessions=w["opened"], far_open=far, seconds_to_open=t_open, errors=w["errors"],
                 rss_mb=rss1 / 1024, rss_delta_kb_per_session=(rss1 - rss0) / n,
                 cpu_cores=cores, arrived_per_s=per_s,
                 cpu_us_per_message=cores * 1e6 / per_s if per_s else 0)
        return r, s0, s1, dt

    def scalews(self):
        n = self.scalews_sessions()
        errors = 0
        # The relay: its upstream is the benchmark's nginx websocket proxy
        # in front of wssink; each SDK session gets its upstream websocket.
        relay = self.start_relay("scalews", "https://127.0.0.1:%d" % self.nginx_ws_port,
                                 extra=["--max-connections", str(n + 100)])
        try:
            fds0 = open_fds(relay.pid)
            rel, (m0, _), (m1, fds1), dt = self.hold_sessions(
                relay.port, n, lambda: scrape(relay.admin)["watchrtc_relay_upstream_websockets"],
                [relay.pid], lambda: (scrape(relay.admin), open_fds(relay.pid)))
        finally:
            self.stop_relay(relay)
        rel["fds_per_session"] = (fds1 - fds0) / n
        # Each commit that stores messages is fsynced: the figure behind
        # most of the relay's CPU per message at this rate.
        for key, name in (("committed_per_s", "watchrtc_relay_messages_committed_total"),
                          ("commits_per_s", "watchrtc_relay_commits_total"),
                          ("synced_commits_per_s", "watchrtc_relay_commits_synced_total")):
            rel[key] = (m1.get(name, 0) - m0.get(name, 0)) / dt
        for name in ("watchrtc_relay_websocket_protocol_errors_total",
                     "watchrtc_relay_upstream_websocket_drops_total"):
            errors += m1.get(name, 0) - m0.get(name, 0)
        # Let the sink see the relay's upstream websockets close.
        wait_until(lambda: self.sink_stats()["open"] == 0, 30)
        # The peer: nginx proxying the same sessions wss -> wss to the same
        # proxy and sink; a new one each run, as the relay is (nginx keeps
        # what its workers grew to).
        self.fronts += 1
        port = free_port()
        self.front = self.start_nginx("nginx-front-%d" % self.fronts, NGINX_FRONT_CONF, port,
                                      front_port=port, ws_port=self.nginx_ws_port)
        try:
            ng, _, _, _ = self.hold_sessions(port, n, lambda: self.sink_stats()["open"],
                                             self.nginx_pids(self.front))
        finally:
            stop(self.front, signal.SIGQUIT)
            self.front = None
        wait_until(lambda: self.sink_stats()["open"] == 0, 30)
        out = {"relay_" + k: v for k, v in rel.items()}
        out.update({"nginx_" + k: v for k, v in ng.items()})
        out["errors"] = errors + rel["errors"] + ng["errors"]
        return out

    def run_json(self, cmd, timeout):
        p = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop(p)
            raise BenchError("%s timed out" % os.path.basename(cmd[0]))
        _procs.remove(p)
        if err:
            log(err.decode(errors="replace").rstrip())
        try:
            return json.loads(out.decode())
        except ValueError:
            raise BenchError("%s exited %d" % (os.path.basename(cmd[0]), p.returncode))


# The part of both nginx configurations that is not their servers.
NGINX_HEAD = """\
%(user)s
worker_processes auto;
worker_rlimit_nofile %(nofile)d;
daemon off;
master_process on;
pid %(prefix)s/nginx.pid;
error_log %(prefix)s/error.log warn;
events { worker_connections %(worker_connections)d; }
http {
    access_log off;
    client_body_temp_path %(prefix)s/body;
    proxy_temp_path %(prefix)s/proxy;
    fastcgi_temp_path %(prefix)s/fastcgi;
    uwsgi_temp_path %(prefix)s/uwsgi;
    scgi_temp_path %(prefix)s/scgi;
    keepalive_requests 10000000;
    ssl_certificate %(cert)s;
    ssl_certificate_key %(key)s;
    ssl_protocols TLSv1.2 TLSv1.3;
    map $http_upgrade $connection_upgrade { default upgrade; '' close; }
"""

# A websocket proxy location's directives, as the SDK's docs give them.
WS_PROXY = """\
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
"""

NGINX_CONF = "# Written by tests/bench/bench.py: nginx as the SDK docs' websocket proxy.\n" + \
    NGINX_HEAD + """
    # The TLS websocket proxy in front of the sink.
    server {
        listen 127.0.0.1:%(ws_port)d ssl reuseport;
        location / {
            proxy_pass http://127.0.0.1:%(sink_port)d;
""" + WS_PROXY + """\
        }
    }

    # The HTTPS POST sink: the upstream of the drain and of curl-post.
    server {
        listen 127.0.0.1:%(post_port)d ssl http2;
        client_max_body_size 4m;
        location / { return 200 "ok\\n"; }
    }
}
"""

NGINX_FRONT_CONF = """\
# Written by tests/bench/bench.py: the scalews step's peer, nginx proxying
# the SDK's websockets over wss to an upstream over wss, as the relay does.
""" + NGINX_HEAD + """\
    server {
        listen 127.0.0.1:%(front_port)d ssl reuseport;
        location / {
            proxy_pass https://127.0.0.1:%(ws_port)d;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate %(ca)s;
            proxy_ssl_name localhost;
""" + WS_PROXY + """\
        }
    }
}
"""


# ---------------------------------------------------------------- report ---
def median(runs, step, key):
    vals = [r[step][key] for r in runs if step in r and key in r[step]]
    return statistics.median(vals) if vals else None


def fmt(v, digits=0):
    if v is None:
        return "n/a"
    if isinstance(v, float) and digits:
        return "%.*f" % (digits, v)
    return "{:,.0f}".format(v)


def ratio(a, b):
    return a / b if a is not None and b else None


def report(runs, machine, smoke):
    med = lambda step, key: median(runs, step, key)
    r_ng = ratio(med("ingest", "committed_per_s"), med("nginx", "sink_per_s"))
    r_sq = ratio(med("ingest", "committed_per_s"), med("sqlite", "best_rows_per_s"))
    r_cu = ratio(med("drain", "delivered_per_s"), med("curl", "best_per_s"))
    r_dw = ratio(med("drainws", "delivered_per_s"), med("nginx", "sink_per_s"))
    rss = med("scale", "rss_kb_per_conn")
    r_ws_rss = ratio(med("scalews", "relay_rss_delta_kb_per_session"),
                     med("scalews", "nginx_rss_delta_kb_per_session"))
    r_ws_cpu = ratio(med("scalews", "relay_cpu_us_per_message"),
                     med("scalews", "nginx_cpu_us_per_message"))
    p99 = med("scale", "p99_ms")
    within = med("scale", "within_20ms")
    met = lambda ok: "n/a" if ok is None else ("**met**" if ok else "**not met**")
    rows = [
        ("Ingest: relay, messages committed/s", fmt(med("ingest", "committed_per_s"))),
        ("Ingest: relay, mean messages per commit", fmt(med("ingest", "mean_batch"), 1)),
        ("Ingest: relay, commit latency p50 / p99 (ms)",
         "%s / %s" % (fmt(med("ingest", "p50_ms"), 2), fmt(med("ingest", "p99_ms"), 2))),
        ("Ingest: relay CPU (cores) / RSS (MB)",
         "%s / %s" % (fmt(med("ingest", "cpu_cores"), 2), fmt(med("ingest", "rss_mb"), 1))),
        ("Ingest: generator CPU (cores) with the relay", fmt(med("ingest", "gen_cpu_cores"), 2)),
        ("Peer: nginx proxy, messages/s at the sink", fmt(med("nginx", "sink_per_s"))),
        ("Peer: nginx CPU / sink CPU / generator CPU (cores)",
         "%s / %s / %s" % (fmt(med("nginx", "cpu_cores"), 2), fmt(med("nginx", "sink_cpu_cores"), 2),
                           fmt(med("nginx", "gen_cpu_cores"), 2))),
        ("Raw SQLite inserts/s, 100 rows per transaction", fmt(med("sqlite", "rows_per_s_100"))),
        ("Raw SQLite inserts/s, 300 rows per transaction", fmt(med("sqlite", "rows_per_s_300"))),
        ("Raw SQLite inserts/s, 1000 rows per transaction", fmt(med("sqlite", "rows_per_s_1000"))),
        ("Raw SQLite CPU per row at 1000 rows/txn (µs)", fmt(med("sqlite", "cpu_us_per_row_1000"), 1)),
        ("Raw SQLite inserts/s, 1000 rows per transaction, 4 KB pages (SQLite's default)",
         fmt(med("sqlite", "rows_per_s_1000_4k"))),
        ("Raw libcurl POSTs/s, HTTP/1.1 keep-alive, 8 connections", fmt(med("curl", "h1_per_s"))),
        ("Raw libcurl POSTs/s, HTTP/2, 4 connections x 16 streams", fmt(med("curl", "h2_per_s"))),
        ("Raw libcurl CPU per POST, HTTP/1.1 / HTTP/2 (µs)",
         "%s / %s" % (fmt(med("curl", "h1_cpu_us"), 1), fmt(med("curl", "h2_cpu_us"), 1))),
        ("Drain: relay, messages delivered/s", fmt(med("drain", "delivered_per_s"))),
        ("Drain: relay CPU / nginx CPU (cores)",
         "%s / %s" % (fmt(med("drain", "cpu_cores"), 2), fmt(med("drain", "nginx_cpu_cores"), 2))),
        ("Drain over upstream websockets: relay, messages delivered/s",
         fmt(med("drainws", "delivered_per_s"))),
        ("Drain over upstream websockets: relay CPU / nginx CPU (cores)",
         "%s / %s" % (fmt(med("drainws", "cpu_cores"), 2), fmt(med("drainws", "nginx_cpu_cores"), 2))),
        ("Scale: connections open", fmt(med("scale", "connections"))),
        ("Scale: connection set-up rate (/s)", fmt(med("scale", "connects_per_s"))),
        ("Scale: relay RSS (MB), per connection (KB)",
         "%s / %s" % (fmt(med("scale", "rss_mb"), 1), fmt(rss, 1))),
        ("Scale: RSS added per connection (KB)", fmt(med("scale", "rss_delta_kb_per_conn"), 1)),
        ("Scale: relay file descriptors per connection", fmt(med("scale", "fds_per_conn"), 2)),
        ("Scale: relay CPU (cores), messages committed/s",
         "%s / %s" % (fmt(med("scale", "cpu_cores"), 2), fmt(med("scale", "committed_per_s")))),
        ("Scale: commit latency p50 / p99 (ms)",
         "%s / %s" % (fmt(med("scale", "p50_ms"), 2), fmt(p99, 2))),
        ("Scale: errors", fmt(med("scale", "errors"))),
        ("Scale with upstream websockets: sessions (of each side), far connections open",
         "%s / %s" % (fmt(med("scalews", "relay_sessions")), fmt(med("scalews", "relay_far_open")))),
        ("Scale with upstream websockets: relay RSS (MB), added per session (KB)",
         "%s / %s" % (fmt(med("scalews", "relay_rss_mb"), 1),
                      fmt(med("scalews", "relay_rss_delta_kb_per_session"), 1))),
        ("Scale with upstream websockets: nginx wss -> wss RSS (MB), added per connection (KB)",
         "%s / %s" % (fmt(med("scalews", "nginx_rss_mb"), 1),
                      fmt(med("scalews", "nginx_rss_delta_kb_per_session"), 1))),
        ("Scale with upstream websockets: relay file descriptors per session",
         fmt(med("scalews", "relay_fds_per_session"), 2)),
        ("Scale with upstream websockets: messages/s at the sink, relay / nginx",
         "%s / %s" % (fmt(med("scalews", "relay_arrived_per_s")),
                      fmt(med("scalews", "nginx_arrived_per_s")))),
        ("Scale with upstream websockets: CPU (cores), relay / nginx",
         "%s / %s" % (fmt(med("scalews", "relay_cpu_cores"), 3),
                      fmt(med("scalews", "nginx_cpu_cores"), 3))),
        ("Scale with upstream websockets: CPU per message (µs), relay / nginx",
         "%s / %s" % (fmt(med("scalews", "relay_cpu_us_per_message"), 1),
                      fmt(med("scalews", "nginx_cpu_us_per_message"), 1))),
        ("Scale with upstream websockets: relay commits/s, of them fsynced",
         "%s / %s" % (fmt(med("scalews", "relay_commits_per_s")),
                      fmt(med("scalews", "relay_synced_commits_per_s")))),
        ("Scale with upstream websockets: errors", fmt(med("scalews", "errors"))),
    ]
    targets = [
        ("Ingest ≥ 0.5 × nginx", fmt(r_ng, 3), met(None if r_ng is None else r_ng >= TARGET_INGEST_VS_NGINX)),
        ("Ingest ≥ 0.6 × raw SQLite (best batch size)", fmt(r_sq, 3),
         met(None if r_sq is None else r_sq >= TARGET_INGEST_VS_SQLITE)),
        ("Drain ≥ 0.8 × raw libcurl (best mode)", fmt(r_cu, 3),
         met(None if r_cu is None else r_cu >= TARGET_DRAIN_VS_CURL)),
        ("Drain over upstream websockets ≥ 0.5 × wsload through nginx to the same sink",
         fmt(r_dw, 3), met(None if r_dw is None else r_dw >= TARGET_DRAINWS_VS_NGINX)),
        ("Scale ≤ 30 KB RSS per connection", fmt(rss, 1),
         met(None if rss is None else rss <= TARGET_RSS_PER_CONN_KB)),
        ("Scale p99 commit latency ≤ 20 ms", "%s (%.1f%% within 20 ms)" % (fmt(p99, 2), 100 * (within or 0)),
         met(None if within is None else within >= 0.99)),
        ("Scale: zero errors", fmt(med("scale", "errors")),
         met(None if med("scale", "errors") is None else med("scale", "errors") == 0)),
        ("Scale with upstream websockets: relay RSS per session ≤ 0.6 × nginx's per proxied "
         "connection", fmt(r_ws_rss, 3),
         met(None if r_ws_rss is None else r_ws_rss <= TARGET_SCALEWS_RSS_VS_NGINX)),
        ("Scale with upstream websockets: relay CPU per message ÷ nginx's (reported)",
         fmt(r_ws_cpu, 2), "n/a"),
        ("Scale with upstream websockets: zero errors", fmt(med("scalews", "errors")),
         met(None if med("scalews", "errors") is None else med("scalews", "errors") == 0)),
    ]
    md = ["# Benchmark results%s" % (" (smoke run: tiny counts, figures mean nothing)" if smoke else ""),
          "", machine, "", "Medians of %d run(s)." % len(runs), "",
          "| measurement | median |", "|---|---|"]
    md += ["| %s | %s |" % r for r in rows]
    md += ["", "| target | measured | |", "|---|---|---|"]
    md += ["| %s | %s | %s |" % t for t in targets]
    md += ["", "Every run:", "", "```json"] + [json.dumps(r, sort_keys=True) for r in runs] + ["```", ""]
    return "\n".join(md)


def machine_line():
    model = "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    mem = os.sysconf("SC_PHYS_PAGES") * PAGE / 2**30
    return "Machine: %d CPU(s), %s, %.0f GiB; %s" % (os.cpu_count(), model, mem, " ".join(os.uname()[2:3]))


def main():
    ap = argparse.ArgumentParser(description="watchrtc-relay benchmark")
    ap.add_argument("--smoke", action="store_true", help="CI's ~20 s run: small counts, one run")
    ap.add_argument("--runs", type=int, help="runs of each measurement (default 3, smoke 1)")
    ap.add_argument("--out", help="write the markdown report here")
    ap.add_argument("--json", help="write every run's figures here")
    ap.add_argument("--only", help="comma list of steps: ingest,nginx,sqlite,curl,drain,drainws,scale,scalews")
    ap.add_argument("--scale-connections", type=int,
                    help="connections of the scale step (default 10000, smoke 200)")
    ap.add_argument("--scalews-sessions", type=int,
                    help="sessions of the scalews step (default: the open-file limit's, at most "
                         "9000; smoke 200)")
    ap.add_argument("--relay-arg", action="append", default=[],
                    help="one more argument for every relay started (repeat it)")
    a = ap.parse_args()
    sizes = dict(SMOKE if a.smoke else FULL)
    if a.runs:
        sizes["runs"] = a.runs
    if a.scale_connections:
        sizes["scale_conns"] = a.scale_connections
    if a.scalews_sessions:
        sizes["scalews_conns"] = a.scalews_sessions
    steps = (a.only or "ingest,nginx,sqlite,curl,drain,drainws,scale,scalews").split(",")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    b = Bench(a, sizes)
    runs = []
    t_start = time.monotonic()
    try:
        b.check_tools()
        b.start_peers()
        for i in range(sizes["runs"]):
            run = {}
            for step in steps:
                log("== run %d/%d: %s" % (i + 1, sizes["runs"], step))
                try:
                    run[step] = getattr(b, {"ingest": "ingest_relay", "nginx": "ingest_nginx"}.get(step, step))()
                except BenchError as e:
                    b.error("%s: %s" % (step, e))
                log("   %s" % json.dumps(run.get(step)))
            runs.append(run)
    except BenchError as e:
        b.error(str(e))
    finally:
        for ng in (b.nginx, b.front):
            if ng:
                stop(ng, signal.SIGQUIT)
        if b.sink:
            stop(b.sink)
        stop_all()
    text = report(runs, machine_line(), a.smoke)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(runs, f, indent=1)
    if b.errors:
        log("bench: %d error(s):\n  %s" % (len(b.errors), "\n  ".join(b.errors)))
    else:
        shutil.rmtree(b.tmp, ignore_errors=True)
    log("bench: %.0f s, %s" % (time.monotonic() - t_start, "FAILED" if b.errors else "ok"))
    return 1 if b.errors else 0


if __name__ == "__main__":
    sys.exit(main())

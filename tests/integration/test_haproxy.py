"""Several relays behind a real load balancer: Debian's HAProxy started from
the shipped deploy/haproxy.cfg (addresses and ports filled in) in front of
three relays with proxy-protocol.  SDK-like clients, each from its own
loopback address, keep a websocket open and send fallback POSTs through it
while the upstream refuses everything, so every relay holds a backlog.
Checks: each session stays on one relay; the client's address reaches the
upstream through PROXY v2; after kill -9 of a relay mid-run its clients
move to the others, nothing acknowledged is lost, and once it restarts its
backlog drains.  Prints the counts."""
import base64
import json
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.environ.get("TESTS_SRCDIR", os.path.join(os.path.dirname(__file__), "..")))
from relaytest import (TESTS_SRCDIR, Relay, diag, done, eq, free_port, http_over, ok,  # noqa: E402
                       on_exit, require, start_upstream, tempdir, tls_connect, wait_until)

HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
require(None if HAPROXY else "no haproxy (apt-get install haproxy)", "HAProxy test")

CLIENTS = 24
RUN_S, KILL_AT_S = 10.0, 4.0
ORIGIN = "https://app.example"
TOP = os.path.dirname(TESTS_SRCDIR)


def haproxy_config(port, relays):
    """The shipped haproxy.cfg with the listening port and the relays filled in."""
    with open(os.path.join(TOP, "deploy", "haproxy.cfg")) as f:
        text = f.read()
    text, binds = re.subn(r"^(\s*bind )\S+", r"\g<1>127.0.0.1:%d" % port, text, flags=re.M)
    servers = iter(relays)
    text, n = re.subn(r"^(\s*server \S+ )\S+", lambda m: "%s127.0.0.1:%d" % (m.group(1), next(servers).port),
                      text, flags=re.M)
    # Its maxconn is sized for a 20,000-descriptor limit: on a machine with
    # less, HAProxy would refuse to start (as the file's comment says).
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    maxconn = int(re.search(r"^\s*maxconn (\d+)", text, re.M).group(1))
    if hard != resource.RLIM_INFINITY and hard < 2 * maxconn + 100:
        diag("open-file limit %d: maxconn %d lowered to %d" % (hard, maxconn, (hard - 100) // 2))
        text = re.sub(r"^(\s*maxconn )\d+", r"\g<1>%d" % ((hard - 100) // 2), text, count=1, flags=re.M)
    eq((binds, n), (1, len(relays)), "the shipped haproxy.cfg has one bind and %d servers to fill in" % len(relays))
    ok(re.search(r"^\s*balance source$", text, re.M) and re.search(r"^\s*hash-type consistent$", text, re.M)
       and "send-proxy-v2" in text, "it balances by source, consistently, and sends PROXY v2")
    return text


class Client(threading.Thread):
    """One browser: session hp-N from 127.0.0.(10+N), a websocket that it
    reopens when it drops, and every fifth message also as a fallback POST,
    retried until it is answered 200 (its acknowledgement)."""

    def __init__(self, n, port, stop):
        super().__init__(daemon=True)
        self.n, self.port, self.stop = n, port, stop
        self.source = "127.0.0.%d" % (10 + n)
        self.session = "hp-%d" % n
        self.ws_sent = []        # (seq, time sent)
        self.posts_acked = []    # seq
        self.reconnects = 0
        self.sock = None

    def open_ws(self):
        s = tls_connect(self.port, source=self.source, timeout=5)
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(("GET /websocket?apiKey=k&timestamp=1&apiVersion=v1&sessionId=%s&newConnection=true HTTP/1.1\r\n"
                   "Host: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                   "Sec-WebSocket-Protocol: 2.0\r\nSec-WebSocket-Key: %s\r\nOrigin: %s\r\n\r\n"
                   % (self.session, key, ORIGIN)).encode())
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < 2:
            chunk = s.recv(4096)
            if not chunk:
                raise OSError("closed during the upgrade")
            data += chunk
        if not data.startswith(b"HTTP/1.1 101"):
            raise OSError("upgrade refused: %r" % data[:40])
        s.settimeout(0.02)
        return s

    def send_ws(self, text):
        payload, mask = text.encode(), os.urandom(4)
        head = bytes([0x81, 0x80 | len(payload)]) if len(payload) < 126 else \
            bytes([0x81, 0xfe]) + struct.pack("!H", len(payload))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def post(self, seq):
        body = json.dumps({"sessionId": self.session, "projectId": "k", "data": ["hp-post", self.n, seq]})
        for _ in range(50):
            try:
                status = http_over(tls_connect(self.port, source=self.source, timeout=5), "POST",
                                   "/websocket/trace", body, {"Content-Type": "application/json", "Origin": ORIGIN})
            except OSError:
                status = None
            if status == 200:
                self.posts_acked.append(seq)
                return
            time.sleep(0.2)

    def run(self):
        seq = 0
        while not self.stop.is_set():
            try:
                if self.sock is None:
                    self.sock = self.open_ws()
                seq += 1
                self.send_ws(json.dumps(["hp-ws", self.n, seq]))
                self.ws_sent.append((seq, time.monotonic()))
                try:   # a dead relay shows as EOF or a reset
                    if self.sock.recv(4096) == b"":
                        raise OSError("closed")
                except TimeoutError:
                    pass
                except OSError as e:
                    if "timed out" not in str(e):
                        raise
                if seq % 5 == 0:
                    self.post(seq)
                time.sleep(0.1)
            except OSError:
                if self.sock is not None:
                    self.sock.close()
                self.sock = None
                self.reconnects += 1
                time.sleep(0.3)
        if self.sock is not None:
            self.sock.close()


up = start_upstream()
up.behave(status=503)   # the backend is away: every relay keeps a backlog
relay_args = ["--proxy-protocol", "--trusted-proxy", "127.0.0.1", "--ws-ping-interval-s", "5"]
relays = [Relay(up, args=relay_args).start() for _ in range(3)]
instance = {}
for r in relays:
    m = re.search(r"event=listening .*instance=(\S+)", r.log_text())
    instance[r] = m.group(1) if m else None
ok(all(instance.values()), "three relays are up", instance)

hp_port = free_port()
cfg = os.path.join(tempdir("haproxy-"), "haproxy.cfg")
with open(cfg, "w") as f:
    f.write(haproxy_config(hp_port, relays))
hp_log = open(cfg + ".log", "wb")
hp = subprocess.Popen([HAPROXY, "-db", "-f", cfg], stdout=hp_log, stderr=subprocess.STDOUT)
on_exit(lambda: (hp.poll() is None and (hp.kill(), hp.wait())))


def through_haproxy():
    try:
        return http_over(tls_connect(hp_port, source="127.0.0.250", timeout=2), "GET", "/healthcheck/live") == 200
    except OSError:
        return False


ok(wait_until(through_haproxy, 20), "HAProxy starts from the shipped config and reaches the relays",
   open(cfg + ".log", errors="replace").read()[-2000:])
# HAProxy's health checks come as PROXY v2 LOCAL connections: every relay answers them.
ok(wait_until(lambda: all((r.metric('watchrtc_relay_http_requests_total{route="healthcheck",code="200"}') or 0) > 0
                          for r in relays), 10), "HAProxy's health checks reach every relay")

stop = threading.Event()
clients = [Client(i, hp_port, stop) for i in range(CLIENTS)]
t0 = time.monotonic()
for c in clients:
    c.start()
time.sleep(KILL_AT_S)
open_ws = [r.metric("watchrtc_relay_websocket_connections") or 0 for r in relays]
diag("websockets per relay before the kill: %s" % open_ws)
ok(sum(open_ws) == CLIENTS and sum(1 for n in open_ws if n) >= 2,
   "the %d clients are spread over the relays, one websocket each" % CLIENTS, open_ws)
victim = relays[open_ws.index(max(open_ws))]
kill_time = time.monotonic()
victim.proc.send_signal(signal.SIGKILL)
victim.proc.wait()
diag("kill -9 of the relay with %d websockets at %.1f s" % (max(open_ws), kill_time - t0))
time.sleep(RUN_S - KILL_AT_S)
stop.set()
for c in clients:
    c.join(30)
ok(not any(c.is_alive() for c in clients), "the clients stopped")

# The killed relay restarts on its state directory and port; the backend comes back.
again = Relay(up, args=relay_args, state_dir=victim.state_dir)
again.port = victim.port
again.start()
up.behave(status=200, count=0)

acked = {(c.n, s) for c in clients for s in c.posts_acked}
ws_due = {(c.n, s) for c in clients for s, t in c.ws_sent if t < kill_time - 1.0}
ws_all = {(c.n, s) for c in clients for s, _ in c.ws_sent}


def delivered():
    posts, ws, by = set(), set(), []
    for r in up.requests():
        if r["status"] != 200:
            continue
        try:
            kind, n, seq = json.loads(r["body"])["data"] if r["path"].startswith("/trace") else json.loads(r["body"])
        except (ValueError, KeyError, TypeError):
            continue
        (posts if kind == "hp-post" else ws).add((n, seq))
        by.append((n, kind, seq, r["headers"].get("idempotency-key", "").rsplit("-", 1)[0],
                   r["headers"].get("x-forwarded-for", "")))
    return posts, ws, by


ok(wait_until(lambda: acked <= delivered()[0] and ws_due <= delivered()[1], 60, 0.5),
   "every acknowledged POST and every websocket message sent 1 s before the kill reached the upstream")
posts, ws, by = delivered()
ok(len(acked) >= CLIENTS and len(ws_due) >= CLIENTS * 10, "the clients sent (%d POSTs acknowledged, %d websocket "
   "messages due)" % (len(acked), len(ws_due)))
eq(sorted(acked - posts), [], "no acknowledged POST is lost")
eq(sorted(ws_due - ws), [], "no websocket message committed before the kill is lost")
ok(wait_until(lambda: again.metric("watchrtc_relay_queue_depth") == 0, 30),
   "the restarted relay drained its backlog")
from_victim = [b for b in by if b[3] == instance[victim]]
ok(len(from_victim) > 0, "%d messages came from the killed relay's queue after its restart" % len(from_victim))

# Each session on one relay; the moved ones on one more after the kill.
per_session = {}
for n, kind, seq, inst, xff in by:
    per_session.setdefault(n, set()).add(inst)
victims = {n for n, insts in per_session.items() if instance[victim] in insts}
eq(sorted(n for n, insts in per_session.items() if n not in victims and len(insts) != 1), [],
   "every session whose relay stayed up was forwarded by exactly one relay")
eq(sorted(n for n in victims if len(per_session[n]) > 2), [],
   "a session of the killed relay moved to exactly one other relay")
eq(sorted({n for n, kind, seq, inst, xff in by if not xff.endswith("127.0.0.%d" % (10 + n))}), [],
   "X-Forwarded-For ends with each client's own address (PROXY v2)")
moved = [c for c in clients if c.n in victims]
ok(all(c.reconnects >= 1 for c in moved) and all(len(per_session[c.n]) == 2 for c in moved if
                                                 any(t > kill_time + 1 for _, t in c.ws_sent)),
   "the killed relay's clients reconnected to another relay")
dups = len(by) - len({(n, kind, seq) for n, kind, seq, _, _ in by})
diag("counts: %d clients, websockets per relay %s, %d sessions moved; websocket messages sent %d "
     "(%d due), delivered %d; POSTs acknowledged %d, delivered %d; %d from the restarted relay's backlog; "
     "%d duplicates; %d client reconnects" % (CLIENTS, open_ws, len(victims), len(ws_all), len(ws_due),
                                              len(ws), len(acked), len(posts), len(from_victim), dups,
                                              sum(c.reconnects for c in clients)))
eq(again.stop(), 0, "the restarted relay stops cleanly")
for r in relays:
    if r is not victim:
        eq(r.stop(), 0, "a relay stops cleanly")
hp.send_signal(signal.SIGTERM)
hp.wait(10)
done()

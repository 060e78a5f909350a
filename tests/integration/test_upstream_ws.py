#!/usr/bin/env python3
"""test_upstream_ws.py - server/upstream/upstream_ws.c against tests/mock_backend.py,
driven by tests/upwsc: the upgrade request as the backend sees it, frames
and fences in order, the close, and each way it can end (refused upgrade
with status and Retry-After, hello error, drop, backend close, timeouts,
TLS and network errors, a request that cannot be written), plus the egress
proxy's CONNECT tunnel (tests/connect_proxy.py)."""
import os
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.environ.get("TESTS_SRCDIR", os.path.join(os.path.dirname(__file__), "..")))
from relaytest import CERTS, TESTS_SRCDIR, diag, done, eq, ok, on_exit  # noqa: E402
from mock_backend import MockBackend  # noqa: E402
from connect_proxy import ConnectProxy  # noqa: E402

BUILDDIR = os.environ.get("BUILDDIR", os.path.join(TESTS_SRCDIR, ".."))
UPWSC = os.path.join(BUILDDIR, "tests", "upwsc")
CA = os.path.join(CERTS, "ca.pem")
QUERY = ("apiKey=staging%3Aabc-123&timestamp=1733300000000&apiVersion=v1"
         "&sessionId=6b1e-4c&newConnection=true")
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36"


def run(be, *args, env=None, timeout=30, url=None, ca=True):
    """Runs upwsc against be; returns (lines, exit code)."""
    cmd = [UPWSC, "--url", url or be.url, "--query", QUERY, "--ua", UA,
           "--origin", "https://app.example", "--xff", "198.51.100.7, 127.0.0.1"]
    if ca:
        cmd += ["--ca", CA]
    cmd += [str(a) for a in args]
    e = dict(os.environ)
    for k in ("https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "http_proxy", "all_proxy",
              "ALL_PROXY"):
        e.pop(k, None)
    e.update(env or {})
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                       env=e)
    lines = p.stdout.decode("utf-8", "replace").splitlines()
    err = p.stderr.decode("utf-8", "replace")
    if p.returncode != 0 or "Sanitizer" in err:
        # A leak or UB report (sanitizer builds), or a crash: always a failure.
        ok(False, "upwsc %s exited %d" % (" ".join(str(a) for a in args), p.returncode), err)
    elif err:
        diag(err)
    return lines, p.returncode


def end_of(lines):
    """The 'end' line as a dict (class plus key=value fields), or {}."""
    for line in lines:
        if line.startswith("end "):
            head, _, reason = line.partition(" reason=")
            parts = head.split()
            d = {"class": parts[1], "reason": reason}
            for kv in parts[2:]:
                k, _, v = kv.partition("=")
                d[k] = v
            return d
    return {}


def fences(lines):
    return [(int(line.split()[1]), int(line.split()[2])) for line in lines
            if line.startswith("fence ")]


def texts_of(be, conn):
    return [f["text"] for f in be.frames() if f["conn"] == conn and f["opcode"] == "text"]


be = MockBackend(cert=os.path.join(CERTS, "server.pem"), key=os.path.join(CERTS, "server-key.pem"))
be.start()
on_exit(be.stop)

# --- the happy path -----------------------------------------------------------------
lines, rc = run(be, "--send", 20, "--fence-every", 5, "--reason", "sdk left")
e = end_of(lines)
eq(rc, 0, "upwsc exits 0")
eq(e.get("class"), "closed", "the websocket ends with our close answered")
eq(e.get("opened"), "1", "after it opened")
ok(any(line.startswith("open {") and '"projectId": "mock-project"' in line for line in lines),
   "on_open hands up the backend's hello", lines[:3])
ups = be.upgrades()
eq(len(ups), 1, "one upgrade")
u = ups[0]
hdr = {k.lower(): v for k, v in u["headers"]}
eq(u["target"], "/?" + QUERY, "GET / with the SDK's query byte for byte")
eq(hdr.get("sec-websocket-protocol"), "2.0", "subprotocol 2.0 offered")
eq(hdr.get("user-agent"), UA, "the browser's User-Agent")
eq(hdr.get("origin"), "https://app.example", "the browser's Origin")
eq(hdr.get("x-forwarded-for"), "198.51.100.7, 127.0.0.1", "X-Forwarded-For")
eq(hdr.get("x-forwarded-proto"), "https", "X-Forwarded-Proto: https")
eq(hdr.get("host"), "127.0.0.1:%d" % be.port, "Host as the URL names it")
got = texts_of(be, u["conn"])
want = ['{"n":%d,"pad":"%s"}' % (i, "x" * 16) for i in range(1, 21)]
eq(got, want, "20 text frames arrive byte for byte, in order")
eq(fences(lines), [(1, 5), (2, 10), (3, 15), (4, 20)], "each fence reported once, in order")
# Each fence ping reached the backend after the frames before it.
order = [(f["opcode"], f.get("seq")) for f in be.frames() if f["conn"] == u["conn"]]
pings = [i for i, (op, _) in enumerate(order) if op == "ping"]
ok(len(pings) == 4 and all(sum(1 for op, _ in order[:i] if op == "text") == 5 * (k + 1)
                           for k, i in enumerate(pings)),
   "every fence's ping follows exactly the frames it fences", order)
closes = [f for f in be.frames() if f["conn"] == u["conn"] and f["opcode"] == "close"]
ok(closes and closes[0]["close_code"] == 1000 and closes[0]["close_reason"] == "sdk left",
   "the close carries our code and reason", closes)
ok(be.wait(lambda b: b.open_connections() == 0, 5) or be.open_connections() == 0,
   "the backend's connection is gone afterwards")

# A large message, and one sent over several turns (interval), arrive whole.
be.reset()
lines, rc = run(be, "--send", 3, "--size", 300000, "--interval-ms", 20)
got = texts_of(be, 1)
ok(len(got) == 3 and all(len(t) == 300000 + len('{"n":1,"pad":""}') for t in got),
   "300 KB messages arrive whole", [len(t) for t in got])
eq(end_of(lines).get("class"), "closed", "and the websocket closes cleanly")

# Many websockets on one event loop at once: each its own frames, in order.
be.reset()
N = 150
t0 = time.monotonic()
# 150 TLS handshakes at once to a Python backend: a loaded machine (two
# suites at once, sanitizers) took longer than the 5 s defaults for some.
lines, rc = run(be, "--conns", N, "--send", 20, "--fence-every", 5, "--interval-ms", 5,
                "--connect-timeout-ms", 30000, "--handshake-timeout-ms", 30000,
                "--pong-timeout-ms", 30000, timeout=120)
ends = [line.split()[2] for line in lines if line.split()[1:2] == ["end"]]
eq((len(ends), set(ends)), (N, {"closed"}), "%d websockets on one loop all close cleanly" % N)
eq(sum(1 for line in lines if line.split()[1:2] == ["fence"]), 4 * N, "every fence answered")
by_conn = {}
for f in be.frames(opcode="text"):
    by_conn.setdefault(f["conn"], []).append(f["text"])
ok(len(by_conn) == N and all(v == want for v in by_conn.values()),
   "each connection's 20 frames arrived whole and in order (%.1f s)" % (time.monotonic() - t0))
be.reset()

# Keepalive pings while nothing is sent.
be.reset()
lines, rc = run(be, "--send", 0, "--ping-interval-ms", 150, "--hold-ms", 800)
pings = [f for f in be.frames() if f["opcode"] == "ping"]
ok(len(pings) >= 3 and all(f["data"] == b"" for f in pings),
   "idle websocket sends keepalive pings (%d in 0.8 s)" % len(pings))
eq(end_of(lines).get("class"), "closed", "and still closes cleanly")

# Backend text after the hello is handed up.
be.reset()
be.behave(second_message={"note": "second"})
lines, rc = run(be, "--send", 1)
ok('text {"note": "second"}' in lines, "a second JSON message is handed up as text", lines)
be.reset()
# The 101, the hello and a second message in one TLS record: what follows the
# head goes to the frame parser.
be.behave(second_message={"note": "same record"}, hello_with_101=True)
lines, rc = run(be, "--send", 2)
ok(any(line.startswith("open {") for line in lines) and
   'text {"note": "same record"}' in lines and end_of(lines).get("class") == "closed",
   "hello and a second message in the 101's record: both handed up", lines)
be.reset()

# --- refused upgrades ------------------------------------------------------------------
be.behave(refuse_status=503, retry_after=7, refuse_count=1)
lines, rc = run(be, "--send", 3)
e = end_of(lines)
eq((e.get("class"), e.get("status"), e.get("retry_after"), e.get("opened")),
   ("refused", "503", "7", "0"), "503 with Retry-After: refused, status and Retry-After")
eq(texts_of(be, 1), [], "nothing was sent")
lines, rc = run(be, "--send", 1)
eq(end_of(lines).get("class"), "closed", "the next upgrade (count spent) succeeds")

be.reset()
be.behave(refuse_status=401)
lines, rc = run(be, "--send", 1)
e = end_of(lines)
eq((e.get("class"), e.get("status"), e.get("retry_after")), ("refused", "401", "-1"),
   "401: refused with the status, no Retry-After")
be.reset()

be.behave(refuse_status=503, retry_after=1, refuse_seconds=3.0)  # room for a slow start
lines, rc = run(be, "--send", 1)
eq(end_of(lines).get("class"), "refused", "refuse_seconds: refused while it lasts")
time.sleep(3.2)
lines, rc = run(be, "--send", 1)
eq(end_of(lines).get("class"), "closed", "and accepted again after")
be.reset()

# --- hello error -------------------------------------------------------------------------
be.behave(hello_error="invalid api key")
lines, rc = run(be, "--send", 3)
e = end_of(lines)
eq((e.get("class"), e.get("reason"), e.get("opened")), ("hello_error", "invalid api key", "0"),
   "hello {error}: hello_error with the backend's reason, never opened")
ok(be.wait(lambda b: [f for f in b.frames() if f["opcode"] == "close"], 3),
   "and we closed")
closes = be.frames(opcode="close")
ok(closes and closes[0]["close_code"] == 1000, "with 1000, as the SDK does", closes)
eq(texts_of(be, 1), [], "no frame was sent after the error")
be.reset()

# --- drops and closes mid-stream ------------------------------------------------------------
be.behave(drop_after=4)
lines, rc = run(be, "--send", 12, "--fence-every", 2, "--interval-ms", 30)
e = end_of(lines)
eq((e.get("class"), e.get("opened")), ("dropped", "1"), "a drop mid-stream: dropped, opened")
got = len(texts_of(be, 1))
fs = fences(lines)
ok(all(n <= got for _, n in fs), "no fence acknowledges a frame the backend did not get "
   "(frames %d, fences %r)" % (got, fs))
be.reset()

be.behave(close_after=3, close_code=1011, close_reason="backend restarting")
lines, rc = run(be, "--send", 10, "--interval-ms", 30)
e = end_of(lines)
eq((e.get("class"), e.get("code"), e.get("reason")), ("backend_closed", "1011", "backend restarting"),
   "a backend close: backend_closed with its code and reason")
be.reset()

# --- timeouts ----------------------------------------------------------------------------------
be.behave(stop_reading=True)
t0 = time.monotonic()
lines, rc = run(be, "--send", 5, "--pong-timeout-ms", 600)
e = end_of(lines)
eq(e.get("class"), "timeout", "a backend that stops reading: the fence's pong times out")
ok(0.5 < time.monotonic() - t0 < 10, "after about pong-timeout-ms")
be.reset()

# What a stalled backend can make us hold is bounded by max-send-bytes.
be.behave(stop_reading=True)
lines, rc = run(be, "--send", 2000, "--size", 10000, "--fence-every", 10,
                "--max-send-bytes", 300000, "--pong-timeout-ms", 1500)
fulls = [line for line in lines if line.startswith("full ")]
sent = [int(line.split()[1]) for line in lines if line.startswith("sent ")]
ok(fulls and max(sent) < 2000, "sends past max-send-bytes are refused while the backend "
   "stalls (%d sent, %d refused)" % (max(sent or [0]), len(fulls)))
eq(end_of(lines).get("class"), "timeout", "and the unanswered fence ends it: timeout")
be.reset()

be.behave(no_pong=True)
lines, rc = run(be, "--send", 0, "--ping-interval-ms", 100, "--pong-timeout-ms", 400,
                "--hold-ms", 5000)
eq(end_of(lines).get("class"), "timeout", "keepalive pings unanswered: timeout")
be.reset()

# A listener whose accept queue is full drops our SYN: connect timeout.
full = socket.socket()
full.bind(("127.0.0.1", 0))
full.listen(0)
on_exit(full.close)
fillers = []
for _ in range(3):
    f = socket.socket()
    f.setblocking(False)
    try:
        f.connect(full.getsockname())
    except BlockingIOError:
        pass
    fillers.append(f)
    on_exit(f.close)
time.sleep(0.2)
t0 = time.monotonic()
lines, rc = run(be, "--connect-timeout-ms", 500, "--handshake-timeout-ms", 5000,
                url="https://127.0.0.1:%d" % full.getsockname()[1])
e = end_of(lines)
eq((e.get("class"), e.get("opened")), ("timeout", "0"), "no answer to the SYN: connect timeout")
ok(time.monotonic() - t0 < 4, "after about connect-timeout-ms", e.get("reason"))

# A server that accepts and never speaks TLS: handshake timeout.
silent = socket.socket()
silent.bind(("127.0.0.1", 0))
silent.listen(8)
on_exit(silent.close)
held = []
threading.Thread(target=lambda: held.append(silent.accept()), daemon=True).start()
lines, rc = run(be, "--handshake-timeout-ms", 500, url="https://127.0.0.1:%d" % silent.getsockname()[1])
e = end_of(lines)
eq((e.get("class"), e.get("opened")), ("timeout", "0"), "a silent server: handshake timeout")

# --- network and TLS errors --------------------------------------------------------------------
closed = socket.socket()
closed.bind(("127.0.0.1", 0))
port = closed.getsockname()[1]
closed.close()
lines, rc = run(be, url="https://127.0.0.1:%d" % port)
e = end_of(lines)
eq(e.get("class"), "network", "connection refused: network")
diag("reason: " + e.get("reason", ""))

lines, rc = run(be, "--send", 1, ca=False)
e = end_of(lines)
eq(e.get("class"), "network", "a certificate the system trust does not know: network")
ok("certificate" in e.get("reason", "").lower() or "trust" in e.get("reason", "").lower()
   or "issuer" in e.get("reason", "").lower(), "the reason says why", e.get("reason"))
eq(be.upgrades(), [], "no upgrade was written to an unverified server")
lines, rc = run(be, "--send", 1, "--insecure", ca=False)
eq(end_of(lines).get("class"), "closed", "--insecure connects anyway")
be.reset()

lines, rc = run(be, "--send", 1, url="https://localhost:%d" % be.port)
eq(end_of(lines).get("class"), "closed", "a host name checked against the certificate")
be.reset()

# IPv6: the address in brackets, checked against the certificate's IP entry.
try:
    be6 = MockBackend(cert=os.path.join(CERTS, "server.pem"),
                      key=os.path.join(CERTS, "server-key.pem"), host="::1")
except OSError:
    be6 = None
if be6:
    be6.start()
    on_exit(be6.stop)
    lines, rc = run(be6, "--send", 2, url=be6.url)
    eq(end_of(lines).get("class"), "closed", "an IPv6 backend: %s" % be6.url)
    eq([h[1] for h in be6.upgrades()[0]["headers"] if h[0] == "Host"], ["[::1]:%d" % be6.port],
       "Host names it in brackets")
else:
    ok(True, "# SKIP no IPv6 loopback")

# --- the request builder refuses what cannot stand in a request ----------------------------------
for bad in ["a=1\r\nX-Evil: 1", "a=1 HTTP/1.1", "a=\x01"]:
    cmd = [UPWSC, "--url", be.url, "--ca", CA, "--query", bad]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, timeout=10)
    out = p.stdout.decode()
    ok(out.startswith("refused-request ") and p.returncode == 0,
       "query %r refused before connecting" % bad, out)
for bad in ["UA\r\nX-Evil: 1", "UA\nX: y"]:
    p = subprocess.run([UPWSC, "--url", be.url, "--ca", CA, "--query", "a=1", "--ua", bad],
                       stdout=subprocess.PIPE, timeout=10)
    ok(p.stdout.decode().startswith("refused-request "), "User-Agent %r refused" % bad)
eq(be.upgrades(), [], "the backend saw none of them")

# --- abort and a too-big hello -------------------------------------------------------------------
lines, rc = run(be, "--send", 4, "--fence-every", 2, "--abort-after-fence", 1)
eq(end_of(lines).get("class"), "aborted", "upstream_ws_abort from a callback ends it: aborted")
be.reset()
lines, rc = run(be, "--send", 1, "--max-message-bytes", 40)
eq(end_of(lines).get("class"), "protocol", "a hello over max-message-bytes: protocol")
be.reset()

# --- the mock's fallback endpoints and control API (for tests that run it
# as a program) ----------------------------------------------------------------------
import http.client  # noqa: E402
import json  # noqa: E402
import ssl  # noqa: E402

ctx = ssl.create_default_context(cafile=CA)


def https(method, path, body=None, headers=None):
    c = http.client.HTTPSConnection("127.0.0.1", be.port, context=ctx, timeout=10)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data


st, hd, _ = https("OPTIONS", "/trace", headers={"Origin": "https://app.example",
                                                "Access-Control-Request-Method": "POST"})
eq((st, hd.get("access-control-allow-origin")), (204, "https://app.example"),
   "CORS preflight of /trace answered")
st, _, _ = https("POST", "/trace", body=b'{"sessionId":"s1"}',
                 headers={"Content-Type": "application/json", "Origin": "https://app.example"})
st2, _, _ = https("POST", "/error", body=b'{"err":1}', headers={"Content-Type": "application/json"})
eq((st, st2), (200, 200), "POST /trace and /error answered 200")
eq([(p["path"], p["body"]) for p in be.posts()],
   [("/trace", b'{"sessionId":"s1"}'), ("/error", b'{"err":1}')], "and recorded with their bodies")
st, _, body = https("POST", "/_mock/behave", body=json.dumps({"refuse_status": 429}))
lines, rc = run(be, "--send", 1)
eq(end_of(lines).get("status"), "429", "switches set over HTTP apply")
st, _, body = https("GET", "/_mock/upgrades")
eq([u["status"] for u in json.loads(body)], [429], "records read over HTTP")
be.reset()

# --- the egress proxy ------------------------------------------------------------------------------
px = ConnectProxy()
px.start()
on_exit(px.stop)
lines, rc = run(be, "--send", 3, "--proxy", px.url)
eq(end_of(lines).get("class"), "closed", "through a CONNECT proxy: closed cleanly")
eq([(r["target"], r["status"]) for r in px.requests()], [("127.0.0.1:%d" % be.port, 200)],
   "the proxy was asked to CONNECT to the backend")
eq(len(texts_of(be, 1)), 3, "and the frames arrived through it")
be.reset()

lines, rc = run(be, "--send", 2, env={"https_proxy": px.url})
eq(end_of(lines).get("class"), "closed", "https_proxy from the environment is used")
eq(len(px.requests()), 2, "the proxy saw the second tunnel")
lines, rc = run(be, "--send", 2, env={"https_proxy": px.url, "no_proxy": "127.0.0.1"})
eq(end_of(lines).get("class"), "closed", "no_proxy naming the host bypasses it")
eq(len(px.requests()), 2, "the proxy saw nothing more")
lines, rc = run(be, "--send", 2, env={"http_proxy": "http://127.0.0.1:1"})
eq(end_of(lines).get("class"), "closed", "http_proxy is not used for the https backend")
be.reset()

p = subprocess.run([UPWSC, "--url", be.url, "--ca", CA, "--proxy", "https://127.0.0.1:%d" % px.port],
                   stdout=subprocess.PIPE, timeout=10)
ok(p.stdout.decode().startswith("client-error ") and "https://" in p.stdout.decode(),
   "an https:// proxy is refused at start (its TLS would be libcurl's)", p.stdout.decode())

pa = ConnectProxy(auth=("relay", "s3cret"))
pa.start()
on_exit(pa.stop)
lines, rc = run(be, "--send", 1, "--proxy", pa.url)
e = end_of(lines)
eq(e.get("class"), "network", "a proxy that wants credentials we lack: network")
diag("reason: " + e.get("reason", ""))
lines, rc = run(be, "--send", 1, "--proxy", "http://relay:s3cret@127.0.0.1:%d" % pa.port)
eq(end_of(lines).get("class"), "closed", "with the credentials in the proxy URL: through")
ok(any(r["status"] == 200 and r["headers"].get("proxy-authorization", "").startswith("Basic ")
       for r in pa.requests()), "sent as Proxy-Authorization")

done()

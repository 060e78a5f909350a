"""The HTTPS fallback end to end: the real relay binary between a client
that posts like the SDK (the captured requests) and a mock upstream."""
import json
import os
import re
import signal
import socket
import sys
import time

sys.path.insert(0, os.environ.get("TESTS_SRCDIR", os.path.join(os.path.dirname(__file__), "..")))
from relaytest import (Relay, diag, done, eq, load_fixture, ok, raw_request, request,  # noqa: E402
                       start_upstream, wait_until)

ORIGIN = "https://127.0.0.1:42873"
UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
      "HeadlessChrome/156.0.0.0 Safari/537.36")
SDK_HEADERS = {"Content-Type": "application/json", "Origin": ORIGIN, "User-Agent": UA}


def post(relay, path, body, headers=None):
    h = dict(SDK_HEADERS)
    h.update(headers or {})
    return request(relay.port, "POST", path, body, h)


def rating_body(session, n):
    return json.dumps({"sessionId": session, "projectId": "proj-test", "rtcRoomId": "room",
                       "rtcPeerId": "peer-1",
                       "data": ["userRating", None, {"rating": n, "ratingComment": str(n)}, 1795463956351 + n]})


def delivered(up, path=None):
    return [r for r in up.requests() if r["status"] // 100 == 2 and (path is None or r["path"] == path)]


up = start_upstream()
relay = Relay(up).start()

# --- CORS preflight, exactly as Chromium sent it ---------------------------
pre = json.loads(load_fixture("http", "preflight-trace.request.json"))
pre_headers = {k: v for k, v in pre["headers"] if k.lower() not in ("host", "connection")}
status, h, _ = request(relay.port, "OPTIONS", "/websocket/trace", headers=pre_headers)
eq(status, 204, "preflight answers 204")
eq(h.get("access-control-allow-origin"), dict(pre["headers"])["Origin"], "preflight allows the request's origin")
ok("content-type" in h.get("access-control-allow-headers", "").lower(), "preflight allows content-type")
ok("POST" in h.get("access-control-allow-methods", ""), "preflight allows POST")
ok(h.get("access-control-max-age", "").isdigit(), "preflight carries Access-Control-Max-Age")

# --- a captured /trace POST arrives upstream once, intact ------------------
body = load_fixture("http", "trace-userRating-after-drop.body.json")
status, h, _ = post(relay, "/websocket/trace", body, {"X-Forwarded-For": "203.0.113.7"})
eq(status, 200, "trace POST answers 200 after the commit")
eq(h.get("access-control-allow-origin"), ORIGIN, "the POST answer carries Access-Control-Allow-Origin")
wait_until(lambda: delivered(up, "/trace"), 10)
got = delivered(up, "/trace")
eq(len(got), 1, "the trace message arrives upstream exactly once")
if got:
    r = got[0]
    eq(r["body"], body, "upstream gets the body byte for byte")
    eq(r["headers"].get("content-type"), "application/json", "Content-Type is kept")
    eq(r["headers"].get("x-forwarded-for"), "203.0.113.7, 127.0.0.1",
       "X-Forwarded-For is the client's chain plus the peer")
    eq(r["headers"].get("x-forwarded-proto"), "https", "X-Forwarded-Proto is https")
    eq(r["headers"].get("user-agent"), UA, "the browser's User-Agent is forwarded")
    eq(r["headers"].get("origin"), ORIGIN, "the page's Origin is forwarded")
    ok(re.fullmatch(r"[0-9a-f]{16}-\d+", r["headers"].get("idempotency-key", "")),
       "Idempotency-Key is <instance>-<message id>", r["headers"].get("idempotency-key"))

# --- /error goes to /error --------------------------------------------------
body = load_fixture("http", "error-getUserMediaOnFailure.body.json")
status, _, _ = post(relay, "/websocket/error", body)
eq(status, 200, "error POST answers 200")
ok(wait_until(lambda: delivered(up, "/error"), 10), "the error message arrives at <upstream>/error")

# --- bad input gets a clear error and is not stored --------------------------
before = len(up.requests())
status, h, b = post(relay, "/websocket/trace", "[1,2,3]")
eq(status, 400, "a JSON array body is refused with 400")
ok(b"error" in b and h.get("content-type") == "application/json", "the 400 carries a JSON error", b)
status, _, _ = post(relay, "/websocket/trace", "not json at all")
eq(status, 400, "a non-JSON body is refused with 400")
big = 1024 * 1024 + 10
head = ("POST /websocket/trace HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: %d\r\n\r\n" % big).encode()
eq(raw_request(relay.port, head), 413, "a declared body over max-body-bytes is refused with 413 before it is sent")
head = (b"POST /websocket/trace HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n")
chunks = b"".join(b"%x\r\n%s\r\n" % (65536, b"x" * 65536) for _ in range(20)) + b"0\r\n\r\n"
eq(raw_request(relay.port, head, chunks), 413, "a chunked body that grows past max-body-bytes is refused with 413")
status, _, _ = request(relay.port, "GET", "/nothing-here")
eq(status, 404, "an unknown path is 404")
time.sleep(0.5)
eq(len(up.requests()), before, "refused bodies never reach the upstream")

# --- health and metrics -------------------------------------------------------
status, hc = relay.health()
eq(status, 200, "/healthcheck answers 200 while the queue is healthy")
ok(all(k in hc for k in ("status", "queue_depth", "oldest_age_ms", "dead_letters")),
   "/healthcheck body has status, queue_depth, oldest_age_ms, dead_letters", hc)
status, h, b = relay.get("/metrics")
ok(status == 200 and b"watchrtc_relay_queue_depth" in b and b"watchrtc_relay_messages_received_total" in b,
   "/metrics exposes the queue figures in Prometheus format")

# --- upstream down for a while, then back: delivered, in order ----------------
up.reset()
up.behave(status=503, seconds=3)
sess = "sess-outage"
for i in range(5):
    status, _, _ = post(relay, "/websocket/trace", rating_body(sess, i))
    ok(status == 200, "message %d accepted while the upstream is down" % i)
wait_until(lambda: len([r for r in delivered(up) if sess.encode() in r["body"]]) >= 5, 20)
got = [json.loads(r["body"])["data"][2]["rating"] for r in delivered(up) if sess.encode() in r["body"]]
eq(got, [0, 1, 2, 3, 4], "after the outage every message arrives, in order")
failed = [r for r in up.requests() if r["status"] == 503]
ok(len(failed) >= 1, "the upstream was really refusing meanwhile (%d refused attempts)" % len(failed))
keys = [r["headers"]["idempotency-key"] for r in delivered(up) if sess.encode() in r["body"]]
eq(len(set(keys)), 5, "each message has its own Idempotency-Key")
retried = [r for r in up.requests() if sess.encode() in r["body"]]
same = {}
for r in retried:
    same.setdefault(r["headers"]["idempotency-key"], set()).add(r["body"])
ok(all(len(v) == 1 for v in same.values()), "a retried message keeps its Idempotency-Key")

# --- SIGKILL right after the 200: the message is still delivered --------------
up.reset()
up.behave(status=503, seconds=3600)
status, _, _ = post(relay, "/websocket/trace", rating_body("sess-kill", 42))
eq(status, 200, "message accepted before the crash")
relay.stop(signal.SIGKILL)
up.reset()
relay.start()
ok(wait_until(lambda: [r for r in delivered(up) if b"sess-kill" in r["body"]], 15),
   "after SIGKILL and a restart the acknowledged message is delivered")

# --- a full queue answers 503 with Retry-After ---------------------------------
relay.stop()
small = Relay(up, args=["--queue-max-messages", "2"]).start()
up.behave(status=503, seconds=3600)
codes = [post(small, "/websocket/trace", rating_body("sess-full", i))[0] for i in range(2)]
eq(codes, [200, 200], "the queue takes messages up to queue-max-messages")
status, h, _ = post(small, "/websocket/trace", rating_body("sess-full", 3))
eq(status, 503, "a POST to a full queue gets 503")
ok(h.get("retry-after", "").isdigit(), "the 503 carries Retry-After")
status, hc = small.health()
eq(status, 503, "/healthcheck says 503 above the high-water mark")
ok("high-water" in hc.get("reason", ""), "/healthcheck gives the reason", hc)
up.reset()
ok(wait_until(lambda: small.health()[0] == 200, 15), "ingest and health recover once the queue drains")
eq(small.stop(), 0, "SIGTERM stops the relay with status 0")

# --- HTTPS only: plaintext HTTP on the port is refused --------------------------
relay.start()
with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as s:
    s.sendall(b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        answer = s.recv(4096)
    except (ConnectionResetError, socket.timeout):
        answer = b""
ok(not answer.startswith(b"HTTP/"), "plaintext HTTP gets no HTTP answer", answer[:80])

# --- the self-signed certificate is generated once and reused --------------------
cert_path = os.path.join(relay.state_dir, "tls-cert.pem")
with open(cert_path, "rb") as f:
    first = f.read()
ok(first.startswith(b"-----BEGIN CERTIFICATE-----"), "a self-signed certificate was written to the state dir")
ok(oct(os.stat(os.path.join(relay.state_dir, "tls-key.pem")).st_mode & 0o777) == "0o600", "its key is mode 0600")
ok("SELF-SIGNED" in relay.log_text() and "sha256=" in relay.log_text(), "the relay warns loudly with the fingerprint")
relay.stop()
relay.start()
with open(cert_path, "rb") as f:
    eq(f.read(), first, "the certificate is reused on the next start")
eq(relay.stop(), 0, "clean exit")
done()

"""upstream-protocol websocket end to end: SDK websockets (tests/wsc)
through the real relay to tests/mock_backend.py, which behaves as the
watchRTC backend does toward the SDK.  Each SDK connection must arrive as
one upstream websocket on `/` with the SDK's query byte for byte,
X-Forwarded-For, User-Agent and Origin, subprotocol 2.0, its messages as
text frames byte for byte and in order, and its end as a close with the
client's code; then drops, refused upgrades, rejected keys, reconnects, the
learned hello and backend text after the hello."""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.environ.get("TESTS_SRCDIR", os.path.join(os.path.dirname(__file__), "..")))
from relaytest import (CERTS, FIXTURES, RELAY_BIN, WSC_BIN, Relay, diag, done, eq, run_wsc,  # noqa: E402
                       ok, on_exit, request, wait_until)
from mock_backend import MockBackend  # noqa: E402

ORIGIN = "https://app.example.com"
UA = "Mozilla/5.0 (X11; Linux x86_64) relay-test"


def query(session, key="key123", new=True, ts=1795463613117):
    return ("apiKey=%s&timestamp=%d&apiVersion=v1&sessionId=%s&newConnection=%s"
            % (key, ts, session, "true" if new else "false"))


def wsc(relay, script, q, timeout=30, xff=None):
    """Runs tests/wsc with a script; returns (exit code, events)."""
    args = ["--origin", ORIGIN, "--user-agent", UA] + (["--xff", xff] if xff else [])
    return run_wsc(relay.port, "/websocket?" + q, script, args, timeout)


def texts_of(be, conn):
    return [f["data"] for f in be.frames(opcode="text") if f["conn"] == conn]


def conns_for(be, session):
    return [u for u in be.upgrades() if u["status"] == 101 and ("sessionId=" + session) in u["query"]]


def hdr(u, name):
    for k, v in u["headers"]:
        if k.lower() == name.lower():
            return v
    return None


be = MockBackend(cert=os.path.join(CERTS, "server.pem"), key=os.path.join(CERTS, "server-key.pem"))
be.start()
on_exit(be.stop)
relay = Relay(be, args=["--upstream-fence-messages", "4", "--upstream-fence-ms", "200"]).start()
eq(relay.protocol, "websocket", "the relay runs with upstream-protocol websocket")

# --- 1. the captured SDK session, byte for byte --------------------------------------
with open(os.path.join(FIXTURES, "frames", "index.json")) as f:
    index = json.load(f)
names = sorted(n[:-len(".wire.bin")] for n in os.listdir(os.path.join(FIXTURES, "frames"))
               if n.endswith(".wire.bin") and "close" not in n)
payloads = []
for n in names:
    with open(os.path.join(FIXTURES, "frames", n + ".txt"), "rb") as f:
        payloads.append(f.read())
S1 = "hoaip931d9ncju1yin1bqm"
Q1 = query(S1)
script = ["recv"] + ["send-wire " + os.path.join(FIXTURES, "frames", n + ".wire.bin") for n in names]
script += ["send-wire " + os.path.join(FIXTURES, "frames", "10-close-disconnect.wire.bin"),
           "expect-close 1000"]
code, events = wsc(relay, script, Q1, xff="203.0.113.7")
eq(code, 0, "the captured SDK session replays cleanly")
ok(be.wait(lambda b: [f for f in b.frames(opcode="close") if f["conn"] in
                      [u["conn"] for u in conns_for(b, S1)]], 15),
   "the upstream websocket is closed after the last message")
ups = conns_for(be, S1)
eq(len(ups), 1, "one upstream websocket for the one SDK connection")
if ups:
    u = ups[0]
    eq(u["path"], "/", "the upgrade is on /")
    eq(u["query"], Q1, "with the SDK's query, byte for byte")
    eq(hdr(u, "Sec-WebSocket-Protocol"), "2.0", "subprotocol 2.0")
    eq(hdr(u, "X-Forwarded-For"), "203.0.113.7, 127.0.0.1",
       "X-Forwarded-For: the client's chain plus the peer")
    eq(hdr(u, "X-Forwarded-Proto"), "https", "X-Forwarded-Proto: https")
    eq(hdr(u, "User-Agent"), UA, "the browser's User-Agent")
    eq(hdr(u, "Origin"), ORIGIN, "the browser's Origin")
    got = texts_of(be, u["conn"])
    eq(len(got), len(payloads), "every message arrived as a text frame")
    ok(got == payloads, "byte for byte, in order")
    closes = [f for f in be.frames(opcode="close") if f["conn"] == u["conn"]]
    ok(closes and closes[0]["close_code"] == 1000, "the SDK's close code 1000 is replayed",
       closes[:1])
ok(wait_until(lambda: relay.metric("watchrtc_relay_queue_depth") == 0, 10),
   "the queue is empty once the close was answered")

# --- the learned hello ----------------------------------------------------------------
code, events = wsc(relay, ["recv", "close 1000", "expect-close 1000"], query("learn-2"))
hellos = [json.loads(e["text"]) for e in events if e.get("event") == "frame" and e.get("opcode") == 1]
ok(hellos and hellos[0].get("projectId") == "mock-project",
   "a later SDK connection of the key gets the backend's hello fields", hellos[:1])
ok(hellos and hellos[0].get("connectionId") and hellos[0].get("connectionId") != "conn-1"
   and len(hellos[0]["connectionId"]) == 16, "with a connectionId of its own", hellos[:1])
code, events = wsc(relay, ["recv", "close 1000", "expect-close 1000"], query("other-1", key="unseen"))
hellos = [json.loads(e["text"]) for e in events if e.get("event") == "frame" and e.get("opcode") == 1]
ok(hellos and hellos[0].get("interval") == 8000 and "projectId" not in hellos[0],
   "a key never seen upstream gets the hello-* settings", hellos[:1])


def send_script(session, n, tag, close=1000):
    s = ["recv"] + ["send-text {\"s\":\"%s\",\"n\":%d,\"t\":\"%s\"}" % (session, i, tag)
                    for i in range(n)]
    if close:
        s += ["close %d" % close, "expect-close %d" % close]
    return s


def bodies(be, session, tag):
    out = []
    for u in conns_for(be, session):
        for d in texts_of(be, u["conn"]):
            try:
                m = json.loads(d)
            except ValueError:
                continue
            if m.get("t") == tag:
                out.append(m["n"])
    return out


# --- 3. a drop mid-stream: what was not fenced comes again, in order -------------------
resent0 = relay.metric("watchrtc_relay_upstream_frames_resent_total") or 0
be.behave(drop_after=5, drop_count=1)
code, _ = wsc(relay, send_script("drop-1", 20, "d"), query("drop-1"))
eq(code, 0, "drop: the SDK side is unaffected")
ok(be.wait(lambda b: sorted(set(bodies(b, "drop-1", "d"))) == list(range(20)), 20),
   "drop: every message arrives upstream")
got = bodies(be, "drop-1", "d")
dedup = []
for n in got:
    if n not in dedup:
        dedup.append(n)
eq(dedup, list(range(20)), "drop: in order (first arrivals)")
ups = conns_for(be, "drop-1")
ok(len(ups) >= 2, "drop: a new upstream websocket after the drop", len(ups))
first = texts_of(be, ups[0]["conn"]) if ups else []
dups = len(got) - 20
ok(0 <= dups <= 5, "drop: duplicates only of what the first connection had unfenced "
   "(%d duplicates, %d frames on the first)" % (dups, len(first)))
ok(all(got[i] < got[i + 1] for i in range(len(first), len(got) - 1)),
   "drop: the second connection sends in order", got)
resent = relay.metric("watchrtc_relay_upstream_frames_resent_total") or 0
ok(resent - resent0 >= dups, "drop: resent frames are counted (%d)" % (resent - resent0))
diag("drop: %d frames on the first connection, %d duplicates upstream, %d resent"
     % (len(first), dups, resent - resent0))
be.reset()

# --- 4. upgrades refused with 503 + Retry-After for a while -----------------------------
be.behave(refuse_status=503, retry_after=1, refuse_seconds=3)
t0 = time.monotonic()
code, _ = wsc(relay, send_script("refuse-1", 5, "r"), query("refuse-1"))
ok(be.wait(lambda b: bodies(b, "refuse-1", "r") == list(range(5)), 25),
   "refused: delivered once the backend takes upgrades again")
ok(time.monotonic() - t0 >= 2.5, "refused: not before")
refused = [u for u in be.upgrades() if u["status"] == 503 and "refuse-1" in u["query"]]
ok(len(refused) >= 1, "refused: the relay tried and was refused (%d times)" % len(refused))
ok((relay.metric('watchrtc_relay_upstream_upgrades_total{result="refused"}') or 0) >= 1,
   "refused: counted by result")
be.reset()

# --- 5. the key rejected -----------------------------------------------------------------
be.behave(refuse_status=401)
code, _ = wsc(relay, send_script("reject-1", 3, "k"), query("reject-1", key="badkey"))
ok(wait_until(lambda: (relay.metric('watchrtc_relay_dead_letters{reason="key_rejected"}') or 0) >= 4,
              15), "rejected: the session's messages and its end are dead-lettered key_rejected")
code, events = wsc(relay, ["recv", "expect-close 1008"], query("reject-2", key="badkey"))
hellos = [json.loads(e["text"]) for e in events if e.get("event") == "frame" and e.get("opcode") == 1]
ok(hellos and "error" in hellos[0], "rejected: the next SDK connection of the key gets the "
   "hello error", hellos[:1])
be.reset()

# --- an SDK connection that ends without a close ends upstream with 1001 --------------------
code, _ = wsc(relay, ["recv", "send-text {\"t\":\"drop\"}", "sleep 300"], query("tcpdrop-1"))


def close_codes(b, session):
    conns = [u["conn"] for u in conns_for(b, session)]
    return [f["close_code"] for f in b.frames(opcode="close") if f["conn"] in conns]


ok(be.wait(lambda b: close_codes(b, "tcpdrop-1"), 15) == [1001],
   "tcp drop: the upstream websocket is closed with 1001 after the message",
   close_codes(be, "tcpdrop-1"))

# --- another 4xx on the upgrade: that connection's messages are dead-lettered ----------------
be.behave(refuse_status=404)
code, _ = wsc(relay, send_script("notfound-1", 2, "n"), query("notfound-1"))
ok(wait_until(lambda: (relay.metric('watchrtc_relay_dead_letters{reason="rejected"}') or 0) >= 2, 15),
   "404: the connection's messages are dead-lettered as rejected")
eq(bodies(be, "notfound-1", "n"), [], "404: nothing of it was sent")
be.reset()

# --- a backend close mid-stream: a new websocket, what was not fenced sent again ------------
be.behave(close_after=3, close_code=1011, close_reason="mock close")
code, _ = wsc(relay, send_script("bclose-1", 10, "c"), query("bclose-1"))
be.wait(lambda b: len(conns_for(b, "bclose-1")) >= 2, 10)
be.behave(close_after=0)     # closes the first connection only (or the first few)
ok(be.wait(lambda b: sorted(set(bodies(b, "bclose-1", "c"))) == list(range(10)), 20),
   "backend close: every message arrives")
got = bodies(be, "bclose-1", "c")
first_seen = []
for n in got:
    if n not in first_seen:
        first_seen.append(n)
eq(first_seen, list(range(10)), "backend close: in order")
ok(len(conns_for(be, "bclose-1")) >= 2, "backend close: on a new upstream websocket")
be.reset()

# --- a hello {"error": ...} from the backend rejects the key as a 401 does -----------------
dead0 = relay.metric('watchrtc_relay_dead_letters{reason="key_rejected"}') or 0
be.behave(hello_error="invalid api key")
code, _ = wsc(relay, send_script("helloerr-1", 2, "h"), query("helloerr-1", key="errkey"))
ok(wait_until(lambda: (relay.metric('watchrtc_relay_dead_letters{reason="key_rejected"}') or 0)
              >= dead0 + 2, 15), "hello error: the session's messages are dead-lettered key_rejected")
code, events = wsc(relay, ["recv", "expect-close 1008"], query("helloerr-2", key="errkey"))
hellos = [json.loads(e["text"]) for e in events if e.get("event") == "frame" and e.get("opcode") == 1]
ok(hellos and "error" in hellos[0], "hello error: the next SDK connection of the key gets the "
   "hello error", hellos[:1])
eq(bodies(be, "helloerr-1", "h"), [], "hello error: nothing was sent after the error")
be.reset()

# --- 6. reconnect: a new upstream websocket, only after the previous one closed ----------
code, _ = wsc(relay, send_script("recon-1", 3, "a"), query("recon-1", new=True))
code, _ = wsc(relay, send_script("recon-1", 3, "b"), query("recon-1", new=False, ts=1795463619999))
ok(be.wait(lambda b: bodies(b, "recon-1", "b") == [0, 1, 2], 15), "reconnect: both connections delivered")
ups = conns_for(be, "recon-1")
eq(len(ups), 2, "reconnect: two upstream websockets")
if len(ups) == 2:
    eq(ups[1]["query"], query("recon-1", new=False, ts=1795463619999),
       "reconnect: the second with the new query")
    close1 = [f for f in be.frames(opcode="close") if f["conn"] == ups[0]["conn"]]
    ok(close1 and close1[0]["time"] <= ups[1]["time"],
       "reconnect: opened only after the first was closed")

# --- backend text after the hello goes to the SDK's live connection ----------------------
be.behave(second_message={"note": "from-backend"})
code, events = wsc(relay, ["recv", "send-text {\"t\":\"x\"}", "expect-text from-backend",
                           "close 1000", "expect-close 1000"], query("text-1"))
eq(code, 0, "backend text: the SDK's live connection gets the backend's second message")
got = [e["text"] for e in events if e.get("event") == "frame" and e.get("opcode") == 1]
ok(any(json.loads(t) == {"note": "from-backend"} for t in got[1:]),
   "backend text: as sent, after the relay's hello", got)
be.reset()

# --- 7. a fallback POST keeps its place --------------------------------------------------
code, _ = wsc(relay, ["recv", "send-text {\"t\":\"p\",\"n\":0}"], query("post-1"), )
st, _, _ = request(relay.port, "POST", "/websocket/trace",
                   body=json.dumps({"sessionId": "post-1", "data": ["x", 1]}).encode(),
                   headers={"Content-Type": "application/json", "Origin": ORIGIN})
eq(st, 200, "post: the fallback POST is taken")
ok(be.wait(lambda b: [p for p in b.posts() if p["path"] == "/trace" and b"post-1" in p["body"]], 15),
   "post: it arrives at /trace")

# --- 9. an open SDK connection keeps its upstream websocket open: health, CLI ---------------
live = subprocess.Popen([WSC_BIN, "--port", str(relay.port), "--path", "/websocket?" + query("live-1"),
                         "--origin", ORIGIN], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL, text=True)
on_exit(live.kill)
live.stdin.write("recv\nsend-text {\"t\":\"live\"}\nsleep 4000\nclose 1000\nexpect-close 1000\n")
live.stdin.flush()
ok(be.wait(lambda b: [f for f in b.frames(opcode="text") if b'"live"' in f["data"]], 10),
   "live: the message arrived")
st, hc = relay.health()
ok(hc.get("upstream") == "up" and hc.get("upstream_websockets", 0) >= 1 and
   hc.get("sessions_upstream", 0) >= 1,
   "/healthcheck: the upstream is up, with its websockets and sessions", hc)
ok(wait_until(lambda: json.loads(subprocess.run(
    [RELAY_BIN, "queue", "--state-dir", relay.state_dir, "--json", "stats"], capture_output=True,
    text=True).stdout or "{}").get("sessions_upstream", 0) >= 1, 5),
   "queue stats: sessions on upstream websockets")
ok(not [f for f in be.frames(opcode="close") if f["conn"] in [u["conn"] for u in conns_for(be, "live-1")]],
   "live: its upstream websocket stays open while the SDK connection is")
live.stdin.close()
live.wait(15)

# --- metrics ------------------------------------------------------------------------------
ok((relay.metric("watchrtc_relay_upstream_frames_sent_total") or 0) >= len(payloads) + 20,
   "metrics: frames sent")
ok((relay.metric('watchrtc_relay_upstream_upgrades_total{result="open"}') or 0) >= 5,
   "metrics: upgrades that opened")
ok(relay.metric("watchrtc_relay_upstream_fence_seconds_count") is not None,
   "metrics: fence latency")

# --- TLS session resumption: later upstream websockets resume a session ------------------
# A relay of its own, so that its first handshake is the first: the mock
# (Python's ssl, as OpenSSL servers do) sends tickets after each handshake,
# and every upstream websocket after the first offers the newest one.
fresh = Relay(be, args=["--upstream-fence-ms", "50"]).start()
first = len(be.upgrades())
for i in range(3):
    wsc(fresh, send_script("resume-%d" % i, 2, "r"), query("resume-%d" % i))
    ok(be.wait(lambda b, i=i: bodies(b, "resume-%d" % i, "r") == [0, 1], 15),
       "resumption: session %d delivered" % i)
opened = [u for u in be.upgrades(first) if u["status"] == 101]
eq([u["tls_resumed"] for u in opened], [False, True, True],
   "resumption: a full handshake first, then resumed ones (the backend's view)")
eq(fresh.metric("watchrtc_relay_upstream_tls_resumed_total"), 2.0,
   "resumption: the relay counts the two")
fresh.stop()

# --- a relay killed under an open connection: the next start ends it upstream (1001) ------
be.behave(refuse_status=503)
orphan = subprocess.Popen([WSC_BIN, "--port", str(relay.port), "--path", "/websocket?" + query("orphan-1"),
                           "--origin", ORIGIN], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, text=True)
on_exit(orphan.kill)
orphan.stdin.write("recv\nsend-text {\"t\":\"orphan\"}\nsleep 5000\n")
orphan.stdin.flush()
ok(wait_until(lambda: (relay.metric("watchrtc_relay_queue_depth") or 0) >= 1, 10),
   "orphan: the message is queued while the backend refuses")
time.sleep(0.3)          # past the commit window
relay.proc.kill()
relay.proc.wait()
orphan.kill()
orphan.wait()
be.reset()
relay.start()
ok(be.wait(lambda b: close_codes(b, "orphan-1"), 20) == [1001],
   "orphan: after the restart its message arrives and its upstream websocket ends with 1001",
   close_codes(be, "orphan-1"))
ok(any(b'"orphan"' in f["data"] for f in be.frames(opcode="text")), "orphan: with its message")

eq(relay.stop(), 0, "the relay stops cleanly")
done()

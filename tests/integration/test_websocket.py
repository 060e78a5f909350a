"""The websocket path end to end: the project's own C client (tests/wsc)
replays what the real SDK sent, byte for byte, through the real relay to a
mock upstream; then the handshake, framing and close-code cases."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.environ.get("TESTS_SRCDIR", os.path.join(os.path.dirname(__file__), "..")))
from relaytest import (FIXTURES, WSC_BIN, Relay, diag, done, eq, ok, request, run_wsc,  # noqa: E402
                       start_upstream, wait_until)

ORIGIN = "https://127.0.0.1:34041"
QUERY = ("apiKey=key123&timestamp=1795463613117&apiVersion=v1"
         "&sessionId=hoaip931d9ncju1yin1bqm&newConnection=true")


def wsc(relay, script, path=None, args=(), timeout=30):
    """Runs tests/wsc with a script on stdin; returns (exit code, events)."""
    return run_wsc(relay.port, path or "/websocket?" + QUERY, script,
                   ["--origin", ORIGIN] + list(args), timeout)


def reap(proc, timeout):
    """Waits for proc to end by itself, or kills it after timeout seconds."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


def of(events, kind):
    return [e for e in events if e.get("event") == kind]


def delivered(up, session):
    return [r for r in up.requests()
            if r["status"] // 100 == 2 and ("sessionId=" + session) in r["path"]]


up = start_upstream()
relay = Relay(up).start()

# --- replay of the captured SDK frames ----------------------------------------
with open(os.path.join(FIXTURES, "frames", "index.json")) as f:
    index = json.load(f)
names = sorted(n[:-len(".wire.bin")] for n in os.listdir(os.path.join(FIXTURES, "frames"))
               if n.endswith(".wire.bin") and "close" not in n)
script = ["recv"] + ["send-wire " + os.path.join(FIXTURES, "frames", n + ".wire.bin") for n in names]
script += ["send-wire " + os.path.join(FIXTURES, "frames", "10-close-disconnect.wire.bin"),
           "expect-close 1000"]
code, events = wsc(relay, script)
eq(code, 0, "the captured SDK session replays cleanly and the relay answers its close with 1000")
hs = of(events, "handshake")
ok(hs and hs[0]["status"] == 101, "upgrade answered 101", hs)
if hs:
    hdrs = {k.lower(): v for k, v in hs[0]["headers"].items()}
    eq(hdrs.get("sec-websocket-protocol"), "2.0", "Sec-WebSocket-Protocol: 2.0 is echoed")
    ok("sec-websocket-extensions" not in hdrs, "permessage-deflate is declined")
frames = of(events, "frame")
texts = [e for e in frames if e.get("opcode") == 1]
eq(len(texts), 1, "exactly one text frame (the hello) comes from the relay")
if texts:
    hello = json.loads(texts[0]["text"])
    ok(isinstance(hello.get("connectionId"), str) and hello["connectionId"],
       "hello has a connectionId", hello)
    eq(hello.get("interval"), 8000, "hello carries interval (default 8000)")
    eq(hello.get("sendInterval"), 1, "hello carries sendInterval")
    eq(hello.get("collectConsoleLogEnabled"), False, "hello carries collectConsoleLogEnabled")
    ok("collectConsoleLogLevel" in hello, "hello carries collectConsoleLogLevel")

payloads = []
for n in names:
    with open(os.path.join(FIXTURES, "frames", n + ".txt"), "rb") as f:
        payloads.append(f.read())
wait_until(lambda: len(delivered(up, "hoaip931d9ncju1yin1bqm")) >= len(payloads), 20)
got = delivered(up, "hoaip931d9ncju1yin1bqm")
eq([r["body"] for r in got], payloads, "upstream gets every captured payload unchanged, in order")
ok(all(r["path"] == "/?" + QUERY for r in got), "each goes to <upstream>/?<the SDK's query, unchanged>",
   set(r["path"] for r in got))
if got:
    h = got[0]["headers"]
    eq(h.get("content-type"), "text/plain; charset=utf-8", "websocket messages are text/plain")
    eq(h.get("x-forwarded-for"), "127.0.0.1", "X-Forwarded-For is the peer")
    eq(h.get("origin"), ORIGIN, "Origin is forwarded")
    ok(re.fullmatch(r"[0-9a-f]{16}-\d+", h.get("idempotency-key", "")), "Idempotency-Key set")
    eq(len({r["headers"]["idempotency-key"] for r in got}), len(got), "every message has its own key")

# --- handshake cases --------------------------------------------------------------
code, events = wsc(relay, [], path="/websocket?timestamp=1&sessionId=x")
eq([e["status"] for e in of(events, "handshake")], [400], "no apiKey: 400 before upgrading")
code, events = wsc(relay, [], path="/websocket?apiKey=k&timestamp=1")
eq([e["status"] for e in of(events, "handshake")], [400], "no sessionId: 400 before upgrading")
code, events = wsc(relay, [], path="/websocket?token=t&sessionId=tok1")
eq([e["status"] for e in of(events, "handshake")], [101], "token instead of apiKey is accepted")
code, events = wsc(relay, [], args=["--key", "dGhpcyBpcyBub3QgMTY="])
eq([e["status"] for e in of(events, "handshake")], [400], "a Sec-WebSocket-Key that is not 16 bytes: 400")
code, events = wsc(relay, ["recv"], args=["--no-protocol"])
hs = of(events, "handshake")
ok(hs and hs[0]["status"] == 101 and "sec-websocket-protocol" not in {k.lower() for k in hs[0]["headers"]},
   "without a subprotocol offer the relay upgrades and names none", hs)

# --- framing --------------------------------------------------------------------------
frag = "/websocket?apiKey=k&sessionId=frag1"
code, _ = wsc(relay, ["recv", "send-frame 1 0 1 " + b'["frag'.hex(), "send-frame 0 0 1 " + b'ment'.hex(),
                      "ping 7069", "expect-pong", "send-frame 0 1 1 " + b'ed"]'.hex(),
                      "close 1000", "expect-close 1000"], path=frag)
eq(code, 0, "ping between fragments is answered with a pong, close handshake completes")
ok(wait_until(lambda: [r["body"] for r in delivered(up, "frag1")] == [b'["fragmented"]'], 10),
   "a fragmented message is reassembled into one upstream message")

code, _ = wsc(relay, ["recv", "send-frame 1 1 0 " + b"[1]".hex(), "expect-close 1002"],
              path="/websocket?apiKey=k&sessionId=unmasked")
eq(code, 0, "an unmasked client frame is closed with 1002")
code, _ = wsc(relay, ["recv", "send-frame 1 1 1 c328", "expect-close 1007"],
              path="/websocket?apiKey=k&sessionId=badutf8")
eq(code, 0, "invalid UTF-8 in a text message is closed with 1007")
ok(wait_until(lambda: re.search(r'event=ws_protocol_error .*code=1007 reason="invalid UTF-8 in a text message"',
                                relay.log_text()), 5), "and the log says why")
time.sleep(0.5)
eq(delivered(up, "unmasked") + delivered(up, "badutf8"), [], "rejected frames are never stored")

# --- limits, back-pressure, shutdown ------------------------------------------------
relay.stop()
small = Relay(up, args=["--max-message-bytes", "1024", "--queue-max-messages", "3"]).start()
code, _ = wsc(small, ["recv", "send-big 2000", "expect-close 1009"], path="/websocket?apiKey=k&sessionId=big")
eq(code, 0, "a message over max-message-bytes is closed with 1009")
up.behave(status=503, seconds=3600)
code, _ = wsc(small, ["recv"] + ["send-text [%d]" % i for i in range(6)] + ["expect-close 1013"],
              path="/websocket?apiKey=k&sessionId=full")
eq(code, 0, "a full queue closes the websocket with 1013")
up.reset()
small.stop()

relay.start()
proc = subprocess.Popen([WSC_BIN, "--port", str(relay.port), "--path", "/websocket?apiKey=k&sessionId=bye"],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
proc.stdin.write("recv\nexpect-close 1001\n")
proc.stdin.flush()
ok(wait_until(lambda: (relay.metric("watchrtc_relay_websocket_connections") or 0) >= 1, 10),
   "the websocket is open before the SIGTERM")
relay.stop()
out, _ = reap(proc, 15)
eq(proc.returncode, 0, "SIGTERM closes open websockets with 1001")

# --- liveness: idle connections are pinged, silent ones closed ---------------------------
idle = Relay(up, args=["--ws-ping-interval-s", "1"]).start()
code, events = wsc(idle, ["recv", "sleep 1600", "expect-close 1001"], path="/websocket?apiKey=k&sessionId=idle",
                   args=["--no-auto-pong"])
ok(any(e.get("opcode") == 9 for e in of(events, "frame")), "an idle connection gets a ping", events)
eq(code, 0, "a connection that answers nothing is closed with 1001 after two intervals")
code, events = wsc(idle, ["recv", "sleep 3500", "send-text [1]", "close 1000", "expect-close 1000"],
                   path="/websocket?apiKey=k&sessionId=alive")
eq(code, 0, "a connection that answers the pings stays open")

# --- a client that never reads does not hold up the others ------------------------------
slow = subprocess.Popen([WSC_BIN, "--port", str(idle.port), "--path", "/websocket?apiKey=k&sessionId=slow",
                         "--no-auto-pong"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL, text=True)
slow.stdin.write("\n".join(["ping " + "61" * 120] * 2000 + ["stop-reading 4000"]) + "\n")
slow.stdin.flush()
code, _ = wsc(idle, ["recv", "send-text [7]", "close 1000", "expect-close 1000"],
              path="/websocket?apiKey=k&sessionId=fast", timeout=10)
eq(code, 0, "while one client floods pings and never reads, another is served at once")
ok(wait_until(lambda: [r["body"] for r in delivered(up, "fast")] == [b"[7]"], 10),
   "and its message is forwarded")
reap(slow, 15)
eq(idle.stop(), 0, "the relay stops cleanly after the flood")

# --- a client sending flat out does not hold up the others ------------------------------
# Both on one websocket thread; the flood is the benchmark's load generator.
WSLOAD = os.path.join(os.environ.get("BUILDDIR", "."), "tests", "bench", "wsload")
busy = Relay(None).start()
flood = subprocess.Popen([WSLOAD, "--port", str(busy.port), "--connections", "2", "--threads", "1",
                          "--duration", "6", "--frame-log", os.path.join(FIXTURES, "frame-log-baseline8000.jsonl")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
ok(flood.stderr.readline().startswith("ready"), "two clients send flat out")
time.sleep(1.0)
started = time.monotonic()
code, _ = wsc(busy, ["recv", "send-text [8]", "close 1000", "expect-close 1000"],
              path="/websocket?apiKey=k&sessionId=beside-flood", timeout=10)
took = time.monotonic() - started
eq(code, 0, "meanwhile a third gets its hello and closes normally")
ok(took < 3.0, "within 3 s (%.2f s)" % took)
reap(flood, 20)
eq(busy.stop(), 0, "the relay stops cleanly after the flood")

# --- an API key the upstream refused gets the SDK's {"error"} hello -----------------------
relay.start()
up.behave(status=401, count=1)
wsc(relay, ["recv", "send-text [1]", "sleep 500", "close 1000"], path="/websocket?apiKey=badkey&sessionId=k1")
ok(wait_until(lambda: [r for r in up.requests() if r["status"] == 401], 10), "the upstream refused the key once")
ok(wait_until(lambda: (relay.metric('watchrtc_relay_forward_attempts_total{result="rejected_key"}') or 0) >= 1, 10),
   "the relay counted the rejection")
code, events = wsc(relay, ["recv", "expect-eof"], path="/websocket?apiKey=badkey&sessionId=k2")
texts = [json.loads(e["text"]) for e in of(events, "frame") if e.get("opcode") == 1]
ok(texts and "error" in texts[0] and "interval" not in texts[0],
   "a new connection with the refused key gets a hello {\"error\": ...}", texts)
code, events = wsc(relay, ["recv", "close 1000", "expect-close 1000"], path="/websocket?apiKey=goodkey&sessionId=k3")
texts = [json.loads(e["text"]) for e in of(events, "frame") if e.get("opcode") == 1]
ok(texts and "connectionId" in texts[0], "other keys are unaffected", texts)
# The SDK's fallback POSTs carry the key's project part as projectId.
before = len(up.requests())
status, _, _ = request(relay.port, "POST", "/websocket/trace",
                       json.dumps({"sessionId": "k4", "projectId": "badkey", "data": ["userRating", None, {}, 1]}),
                       {"Content-Type": "application/json", "Origin": ORIGIN})
eq(status, 401, "a fallback POST with the refused key gets 401")
time.sleep(0.5)
eq(len(up.requests()), before, "and is not stored or forwarded")
relay.stop()

# --- many connections, and order across a reconnect -----------------------------------
relay.start()
n_conn, n_msg = 1000, 5
code, events = wsc(relay, [], path="/websocket?apiKey=k&apiVersion=v1",
                   args=["--load", str(n_conn), "--messages", str(n_msg), "--session-prefix", "load-"],
                   timeout=120)
eq(code, 0, "%d concurrent connections each send %d messages" % (n_conn, n_msg))
diag("load summary: %r" % of(events, "load"))


def load_ok():
    got = [r for r in up.requests() if r["status"] // 100 == 2 and "sessionId=load-" in r["path"]]
    return len(got) >= n_conn * n_msg and got


got = wait_until(load_ok, 90, 0.5) or []
per = {}
for r in got:
    sess = re.search(r"sessionId=([^&]+)", r["path"]).group(1)
    per.setdefault(sess, []).append(json.loads(r["body"])[2])
eq(len(got), n_conn * n_msg, "every message arrives upstream exactly once")
eq(len(per), n_conn, "from every connection")
ok(all(v == list(range(len(v))) for v in per.values()), "per-session order holds")

sess = "/websocket?apiKey=k&sessionId=again&newConnection="
wsc(relay, ["recv", "send-text [1]", "send-text [2]", "close 1000", "expect-close 1000"], path=sess + "true")
wsc(relay, ["recv", "send-text [3]", "send-text [4]", "close 1000", "expect-close 1000"], path=sess + "false")
ok(wait_until(lambda: [r["body"] for r in delivered(up, "again")] == [b"[1]", b"[2]", b"[3]", b"[4]"], 15),
   "a session's messages stay in order across a reconnect",
   [r["body"] for r in delivered(up, "again")])
eq(relay.stop(), 0, "clean exit")
done()

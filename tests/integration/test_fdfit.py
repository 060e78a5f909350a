"""test_fdfit.py - the relay against its open-file limit.

1. max-connections is fitted to a low limit as the log says: every
   un-upgraded connection there may be (max-http-connections) at 3
   descriptors, the rest websockets at 2 (each with its upstream websocket)
   or 1 (http-post), plus what is kept for the rest;
2. max-http-connections refuses the connection past it while upgraded
   websockets beyond it are still taken, up to max-connections;
3. an upstream websocket that finds the relay out of descriptors says so
   once a second, is not taken for an upstream outage, and its session's
   messages are sent once descriptors are back."""
import os
import re
import resource
import signal
import socket
import sys
import time

sys.path.insert(0, os.environ.get("TESTS_SRCDIR", os.path.join(os.path.dirname(__file__), "..")))
from relaytest import CERTS, RawWS, Relay, done, eq, ok, on_exit, wait_until  # noqa: E402
from mock_backend import MockBackend  # noqa: E402

ORIGIN = "https://app.example"
HARD = resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def fit_line(relay, event):
    """The fields of the relay's first `event` line, as a dict of strings."""
    for line in relay.log_text().splitlines():
        if " event=%s " % event in line:
            return dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line))
    return {}


def reserved_for(args):
    """main.c's reserve for relaytest's settings (2 HTTP threads, 1 websocket
    thread, 2 forward workers of 16 requests in flight) and args."""
    http, ws, workers, inflight = 2, 1, 2, 16
    if "--forward-inflight" in args:
        inflight = int(args[args.index("--forward-inflight") + 1])
    return 64 + workers * inflight + 2 * (http + ws + workers) + 3 * http


def websocket(relay, session):
    """An SDK websocket that got its hello, or None if it was refused."""
    try:
        ws = RawWS(relay.port, "/websocket?apiKey=fd&timestamp=1795463613117&apiVersion=v1"
                   "&sessionId=%s&newConnection=true" % session, origin=ORIGIN, timeout=5)
    except OSError:
        return None
    if ws.status != 101:
        ws.close()
        return None
    try:
        if ws.hello():
            return ws
    except (EOFError, OSError, ValueError):
        pass
    ws.close()
    return None


def idle(relay):
    """A TCP connection that never starts its TLS handshake (un-upgraded)."""
    s = socket.create_connection(("127.0.0.1", relay.port), timeout=5)
    on_exit(s.close)
    return s


def refused(s, wait=5.0):
    """Whether the relay closed s at once (True) or holds it (False after 1 s)."""
    s.settimeout(1.0)
    end = time.monotonic() + wait
    while True:
        try:
            return s.recv(1) == b""
        except socket.timeout:
            if time.monotonic() >= end or wait <= 1.0:
                return False
        except OSError:
            return True   # reset


def arrived(data):
    """The backend's text frames that are data."""
    return [f for f in be.frames(opcode="text") if f["data"] == data]


def hold_then_refuse(relay, n, reason, what):
    """Opens n un-upgraded connections, which the relay must hold, then one
    more, which it must close at once and log with reason; returns the n."""
    held = [idle(relay) for _ in range(n)]
    ok(not any(refused(s, wait=1.0) for s in held), "2: %s: %d more are held" % (what, n))
    ok(refused(idle(relay)), "2: %s: the next one is closed at once" % what)
    ok(wait_until(lambda: 'reason="%s' % reason in relay.log_text(), 5),
       "2: %s: and logged (%s)" % (what, reason))
    return held


def lowest_free_fd(pid):
    used = {int(n) for n in os.listdir("/proc/%d/fd" % pid)}
    return next(i for i in range(len(used) + 1) if i not in used)


be = MockBackend(cert=os.path.join(CERTS, "server.pem"), key=os.path.join(CERTS, "server-key.pem"))
be.start()
on_exit(be.stop)

# --- 1. the fit, as logged -----------------------------------------------------------------
LIMIT = min(4000, HARD)
for protocol, per_ws in (("websocket", 2), ("http-post", 1)):
    r = Relay(be, protocol=protocol, nofile=LIMIT).start()
    f = fit_line(r, "max_connections_lowered")
    reserved = reserved_for([])
    h = min(1024, (LIMIT - reserved) // 3)
    ok(f, "1 (%s): nofile %d lowers max-connections, and the log says so" % (protocol, LIMIT),
       r.log_text()[-2000:])
    eq({k: f.get(k) for k in ("from", "nofile", "reserved", "fds_per_http", "fds_per_websocket",
                              "max_http_connections")},
       {"from": "10000", "nofile": str(LIMIT), "reserved": str(reserved), "fds_per_http": "3",
        "fds_per_websocket": str(per_ws), "max_http_connections": str(h)},
       "1 (%s): with the limit, the reserve and the cost of each kind of connection" % protocol)
    n = h + (LIMIT - reserved - 3 * h) // per_ws
    eq(int(f.get("to", 0)), n,
       "1 (%s): to = H + (nofile - reserved - 3 H) / %d" % (protocol, per_ws))
    worst = reserved + 3 * h + per_ws * (n - h)
    eq(int(f.get("fds_worst_case", 0)), worst,
       "1 (%s): the worst case (%d) is logged" % (protocol, worst))
    ok(worst <= LIMIT < worst + per_ws,
       "1 (%s): it fits, and one websocket more would not" % protocol)
    eq(r.stop(), 0, "1 (%s): the relay stops cleanly" % protocol)

# Too low for even max-http-connections un-upgraded connections.
r = Relay(be, nofile=400).start()
h = (400 - reserved_for([])) // 3
eq({k: v for k, v in fit_line(r, "max_http_connections_lowered").items() if k in ("from", "to")},
   {"from": "1024", "to": str(h)}, "1: at nofile 400 max-http-connections is lowered to %d" % h)
eq(fit_line(r, "max_connections_lowered").get("to"), str(h),
   "1: and max-connections with it (no descriptor left for a websocket more)")
r.proc.send_signal(signal.SIGHUP)
ok(wait_until(lambda: "event=config_reloaded" in r.log_text(), 10),
   "1: a SIGHUP reads the configuration again")
eq(fit_line(r, "config_reloaded").get("settings_waiting_for_restart"), "0",
   "1: and does not take the fitted limits for changed settings")
eq(r.stop(), 0, "1: that relay stops cleanly")

# --- 2. max-http-connections and max-connections -------------------------------------------
H, N = 2, 8
r = Relay(be, args=["--max-http-connections", str(H), "--max-connections", str(N)]).start()
f = fit_line(r, "max_connections")
eq((f.get("max_connections"), f.get("max_http_connections")), (str(N), str(H)),
   "2: the relay runs with max-connections %d, max-http-connections %d" % (N, H))
held = hold_then_refuse(r, H, "max-http-connections (%d) reached" % H,
                        "%d being set up, none upgraded" % H)
for s in held:
    s.close()
# The relay sees them go; then websockets, each upgraded before the next.
first = wait_until(lambda: websocket(r, "fd-ws-0"), 10)
socks = [first] + [websocket(r, "fd-ws-%d" % i) for i in range(1, N - H)]
eq(sum(1 for w in socks if w), N - H,
   "2: %d websockets are taken, more than max-http-connections" % (N - H))
held = hold_then_refuse(r, H, "max-connections (%d) reached" % N,
                        "%d websockets and %d being set up" % (N - H, H))
for s in held:
    s.close()
for w in socks:
    if w:
        w.bye()
eq(r.stop(), 0, "2: the relay stops cleanly")

# --- 3. an upstream websocket out of descriptors ---------------------------------------------
r = Relay(be, args=["--retry-base-ms", "200", "--retry-max-ms", "1000"]).start()
warm = websocket(r, "fd-warm")
ok(warm, "3: an SDK websocket")
warm.send(1, b'["fd-warm"]')
ok(be.wait(lambda b: arrived(b'["fd-warm"]'), 10),
   "3: its message reaches the backend on an upstream websocket")
ws = websocket(r, "fd-starved")
ok(ws, "3: a second SDK websocket")
soft = resource.prlimit(r.proc.pid, resource.RLIMIT_NOFILE)[0]
# No descriptor left: the lowest free one is past the limit.
resource.prlimit(r.proc.pid, resource.RLIMIT_NOFILE, (lowest_free_fd(r.proc.pid), HARD))
ws.send(1, b'["fd-starved"]')
ok(wait_until(lambda: "event=upstream_ws_no_fds" in r.log_text(), 10),
   "3: its upstream websocket cannot get a socket, and the log says so",
   r.log_text()[-1500:])
time.sleep(2)    # a few retries
text = r.log_text()
line = next((ln for ln in text.splitlines() if "event=upstream_ws_no_fds" in ln), "")
ok("session=fd-starved" in line and "out of file descriptors" in line and "delay_ms=" in line,
   "3: naming the session, the retry and the cause", line)
ok(0 < text.count("event=upstream_ws_no_fds") <= 4,
   "3: once a second at most (%d lines)" % text.count("event=upstream_ws_no_fds"))
ok("event=upstream_down" not in text, "3: not taken for an upstream outage")
eq(arrived(b'["fd-starved"]'), [],
   "3: nothing reached the backend meanwhile")
resource.prlimit(r.proc.pid, resource.RLIMIT_NOFILE, (soft, HARD))
ok(be.wait(lambda b: arrived(b'["fd-starved"]'), 10),
   "3: descriptors back, the message is sent")
ws.send(1, b'["fd-after"]')
ok(be.wait(lambda b: arrived(b'["fd-after"]'), 10),
   "3: and the session goes on")
ws.bye()
warm.bye()
eq(r.stop(), 0, "3: the relay stops cleanly")
done()

"""Egress through a corporate firewall: upstream-proxy (and libcurl's
https_proxy / no_proxy environment) carry every upstream request through a
CONNECT proxy, logged with its password masked; upstream-ca-extra adds a CA
(a TLS-inspecting proxy's, say) to the system bundle instead of replacing
it.  The proxy is a small CONNECT proxy in this file, on loopback only.
The same holds for the other kind of upstream connection, the websocket per
SDK connection (upstream-protocol websocket, to tests/mock_backend.py),
through tests/connect_proxy.py."""
import base64
import json
import os
import select
import socket
import socketserver
import sys
import threading

sys.path.insert(0, os.environ.get("TESTS_SRCDIR", os.path.join(os.path.dirname(__file__), "..")))
from relaytest import (CERTS, RawWS, Relay, done, eq, ok, on_exit, request,  # noqa: E402
                       start_upstream, wait_until)
from connect_proxy import ConnectProxy as TunnelProxy  # noqa: E402
from mock_backend import MockBackend  # noqa: E402

HEADERS = {"Content-Type": "application/json", "Origin": "https://app.example"}


class ConnectProxy(socketserver.ThreadingTCPServer):
    """HTTP CONNECT to 127.0.0.1 only; records each tunnel's target and
    Proxy-Authorization; with auth set, others get 407."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, auth=None):
        super().__init__(("127.0.0.1", 0), ConnectHandler)
        self.auth = auth
        self.tunnels = []
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        on_exit(lambda: (self.shutdown(), self.server_close()))

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.server_address[1]


class ConnectHandler(socketserver.BaseRequestHandler):
    def handle(self):
        s = self.request
        s.settimeout(10)
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 8192:
            chunk = s.recv(4096)
            if not chunk:
                return
            head += chunk
        lines = head.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
        method, target = lines[0].split(" ")[:2]
        auth = next((v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
                     if k.strip().lower() == "proxy-authorization"), None)
        with self.server.lock:
            self.server.tunnels.append((method, target, auth))
        host, _, port = target.rpartition(":")
        if method != "CONNECT" or host not in ("127.0.0.1", "localhost"):
            s.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        if self.server.auth and auth != "Basic " + base64.b64encode(self.server.auth.encode()).decode():
            s.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            return
        up = socket.create_connection(("127.0.0.1", int(port)), timeout=10)
        s.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        socks = [s, up]
        try:
            while True:
                readable, _, _ = select.select(socks, [], [], 30)
                if not readable:
                    return
                for r in readable:
                    data = r.recv(65536)
                    if not data:
                        return
                    (up if r is s else s).sendall(data)
        except OSError:
            pass
        finally:
            up.close()


def post(relay, session):
    body = json.dumps({"sessionId": session, "projectId": "k", "data": ["egress", None, {}, 1]})
    return request(relay.port, "POST", "/websocket/trace", body, HEADERS)[0]


def arrived(up, session):
    return wait_until(lambda: any(session.encode() in r["body"] for r in up.requests()), 10)


def relay_with_env(up, env, args=()):
    """A relay whose environment is ours plus env (None removes a name)."""
    saved = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        return Relay(up, args=list(args)).start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


NO_ENV = {k: None for k in ("https_proxy", "HTTPS_PROXY", "http_proxy", "all_proxy", "ALL_PROXY",
                            "no_proxy", "NO_PROXY")}
up = start_upstream()
target = "127.0.0.1:%d" % up.port

# upstream-proxy, with credentials.
proxy = ConnectProxy(auth="relay:s3cret")
r = relay_with_env(up, NO_ENV, ["--upstream-proxy", "http://relay:s3cret@127.0.0.1:%d" % proxy.server_address[1]])
eq(post(r, "eg-setting"), 200, "a POST to a relay with upstream-proxy")
ok(arrived(up, "eg-setting"), "reaches the upstream")
ok(any(m == "CONNECT" and t == target and a for m, t, a in proxy.tunnels),
   "through a CONNECT tunnel of the proxy, with Proxy-Authorization", proxy.tunnels)
log = r.log_text()
ok("event=upstream_proxy" in log and "relay:***@127.0.0.1" in log and "source=upstream-proxy" in log,
   "the log says which proxy is in force, password masked", log[-1500:])
ok("s3cret" not in log, "and never shows the password")
eq(r.stop(), 0, "clean exit")

# A proxy that refuses: nothing is lost, the message waits.
refusing = ConnectProxy(auth="someone:else")
r = relay_with_env(up, NO_ENV, ["--upstream-proxy", "http://relay:wrong@127.0.0.1:%d" % refusing.server_address[1]])
eq(post(r, "eg-refused"), 200, "a POST is accepted while the proxy refuses the relay (407)")
ok(wait_until(lambda: (r.metric('watchrtc_relay_forward_attempts_total{result="retry"}') or 0) >= 1, 10),
   "the relay retries it")
ok(not any(b"eg-refused" in q["body"] for q in up.requests()), "it has not reached the upstream")
eq(r.stop(), 0, "clean exit; the message stays queued")

# The environment: https_proxy, then no_proxy.
before = len(proxy.tunnels)
proxy.auth = None
r = relay_with_env(up, dict(NO_ENV, https_proxy=proxy.url))
eq(post(r, "eg-env"), 200, "a POST to a relay with https_proxy in its environment")
ok(arrived(up, "eg-env"), "reaches the upstream")
ok(len(proxy.tunnels) > before, "through the proxy")
ok("source=https_proxy" in r.log_text(), "and the log says the environment chose it")
eq(r.stop(), 0, "clean exit")
before = len(proxy.tunnels)
r = relay_with_env(up, dict(NO_ENV, https_proxy=proxy.url, no_proxy="127.0.0.1"))
eq(post(r, "eg-noproxy"), 200, "with no_proxy naming the upstream")
ok(arrived(up, "eg-noproxy"), "the message reaches the upstream")
eq(len(proxy.tunnels), before, "directly, not through the proxy")
ok('no_proxy=127.0.0.1' in r.log_text(), "and the log shows no_proxy")
eq(r.stop(), 0, "clean exit")
before = len(proxy.tunnels)
r = relay_with_env(up, dict(NO_ENV, no_proxy="127.0.0.1"), ["--upstream-proxy", proxy.url])
eq(post(r, "eg-setnp"), 200, "with upstream-proxy and no_proxy naming the upstream")
ok(arrived(up, "eg-setnp"), "the message reaches the upstream")
ok(len(proxy.tunnels) > before, "through the proxy: the setting ignores no_proxy")
ok("no_proxy=(ignored)" in r.log_text(), "as the log says")
eq(r.stop(), 0, "clean exit")
r = relay_with_env(up, NO_ENV)
ok("event=upstream_proxy proxy=none" in r.log_text(), "without either, the log says connections are direct")
eq(r.stop(), 0, "clean exit")

# upstream-ca-extra: the mock's private CA on top of the system bundle.
extra = Relay(None, args=["--upstream", up.url, "--upstream-ca-extra", os.path.join(CERTS, "ca.pem"),
                          "--retry-base-ms", "100"]).start()
eq(post(extra, "eg-extra"), 200, "a POST to a relay with upstream-ca-extra")
ok(arrived(up, "eg-extra"), "reaches an upstream whose CA only upstream-ca-extra names")
bundle = os.path.join(extra.state_dir, "upstream-ca-bundle.pem")
with open(bundle) as f:
    n_bundle = f.read().count("BEGIN CERTIFICATE")
with open("/etc/ssl/certs/ca-certificates.crt") as f:
    n_system = f.read().count("BEGIN CERTIFICATE")
eq(n_bundle, n_system + 1, "its bundle is the system's %d certificates plus the extra one" % n_system)
eq(extra.stop(), 0, "clean exit")
plain = Relay(None, args=["--upstream", up.url, "--retry-base-ms", "100"]).start()
eq(post(plain, "eg-system"), 200, "without it (the system bundle alone) a POST is accepted")
ok(wait_until(lambda: (plain.metric('watchrtc_relay_forward_attempts_total{result="retry"}') or 0) >= 1, 10)
   and not any(b"eg-system" in q["body"] for q in up.requests()),
   "but not delivered: the upstream's CA is not trusted")
eq(plain.stop(), 0, "clean exit")

# --- upstream-protocol websocket: one upstream websocket per SDK connection, same proxy ---
be = MockBackend(cert=os.path.join(CERTS, "server.pem"), key=os.path.join(CERTS, "server-key.pem"))
be.start()
on_exit(be.stop)
be_target = "127.0.0.1:%d" % be.port
# Text frames of every length class (7-bit, 16-bit, 64-bit), UTF-8 and JSON as the SDK sends it.
WS_MSGS = [b'["getStats",null,{"a":1},1795463613117]', "{\"s\":\"h\u00e9llo \u2603\"}".encode(),
           b'["trace","' + b"x" * 300 + b'"]', b'["big","' + b"y" * 70000 + b'"]', b"[]"]


def sdk_session(relay, session, msgs=WS_MSGS):
    """An SDK connection: upgrade, the relay's hello, msgs as text frames, close 1000."""
    ws = RawWS(relay.port, "/websocket?apiKey=egress&timestamp=1795463613117&apiVersion=v1"
               "&sessionId=%s&newConnection=true" % session)
    if ws.status != 101 or not ws.hello():
        ws.close()
        return False
    for m in msgs:
        ws.send(1, m)
    ws.bye()
    return True


def ws_texts(session):
    """The text frames the backend received on the upstream websockets of session."""
    conns = [u["conn"] for u in be.upgrades() if u["status"] == 101 and
             ("sessionId=" + session) in u["query"]]
    return [f["data"] for f in be.frames(opcode="text") if f["conn"] in conns]


def ws_arrived(session, n=len(WS_MSGS)):
    return wait_until(lambda: len(ws_texts(session)) >= n, 20)


def tunnels_to_backend(px):
    return [q for q in px.requests() if q["method"] == "CONNECT" and q["target"] == be_target]


# (1) and (2): upstream-proxy with credentials.
wpx = TunnelProxy(auth=("relay", "s3cret"))
wpx.start()
on_exit(wpx.stop)
r = relay_with_env(be, NO_ENV, ["--upstream-proxy", "http://relay:s3cret@%s" % wpx.url[7:]])
eq(r.protocol, "websocket", "websocket mode: a relay in front of the backend mock")
ok(sdk_session(r, "egws-setting"), "an SDK websocket session to a relay with upstream-proxy")
ok(ws_arrived("egws-setting"), "its messages reach the backend's websocket")
ok(ws_texts("egws-setting") == WS_MSGS, "byte for byte, in order, once each",
   [len(d) for d in ws_texts("egws-setting")])
want_auth = "Basic " + base64.b64encode(b"relay:s3cret").decode()
ok([q for q in tunnels_to_backend(wpx) if q["status"] == 200 and
    q["headers"].get("proxy-authorization") == want_auth],
   "through a CONNECT tunnel to the backend's host:port, with the right Proxy-Authorization",
   wpx.requests())
eq([q["target"] for q in wpx.requests() if q["target"] != be_target], [],
   "the proxy was asked for nothing else")
log = r.log_text()
ok("event=upstream_proxy" in log and "relay:***@127.0.0.1" in log and "s3cret" not in log,
   "websocket mode logs the proxy with its password masked", log[-1500:])
eq(r.stop(), 0, "clean exit")

# (3) https_proxy from the environment, then no_proxy naming the backend.
wpx.auth = None
before = len(wpx.requests())
r = relay_with_env(be, dict(NO_ENV, https_proxy=wpx.url))
ok(sdk_session(r, "egws-env"), "an SDK websocket session to a relay with https_proxy set")
ok(ws_arrived("egws-env") and ws_texts("egws-env") == WS_MSGS,
   "its messages reach the backend byte for byte, in order")
ok([q for q in tunnels_to_backend(wpx)[before:] if q["status"] == 200],
   "through a CONNECT tunnel of the https_proxy", wpx.requests()[before:])
ok("source=https_proxy" in r.log_text(), "and the log says the environment chose it")
eq(r.stop(), 0, "clean exit")
before = len(wpx.requests())
r = relay_with_env(be, dict(NO_ENV, https_proxy=wpx.url, no_proxy="127.0.0.1"))
ok(sdk_session(r, "egws-noproxy"), "an SDK websocket session with no_proxy naming the backend")
ok(ws_arrived("egws-noproxy") and ws_texts("egws-noproxy") == WS_MSGS,
   "its messages reach the backend byte for byte, in order")
eq(wpx.requests()[before:], [], "directly: the proxy sees nothing")
eq(r.stop(), 0, "clean exit")

before = len(wpx.requests())
r = relay_with_env(be, dict(NO_ENV, all_proxy=wpx.url))
ok(sdk_session(r, "egws-all"), "an SDK websocket session with only all_proxy set")
ok(ws_arrived("egws-all") and ws_texts("egws-all") == WS_MSGS, "its messages reach the backend")
ok([q for q in tunnels_to_backend(wpx)[before:] if q["status"] == 200],
   "through the proxy all_proxy names, as the log says", r.log_text()[-800:])
ok("source=all_proxy" in r.log_text(), "(source=all_proxy)")
eq(r.stop(), 0, "clean exit")
# The setting wins over the whole environment, no_proxy included (logged as ignored).
wpx.auth = ("relay", "s3cret")
before = len(wpx.requests())
r = relay_with_env(be, dict(NO_ENV, no_proxy="127.0.0.1"),
                   ["--upstream-proxy", "http://relay:s3cret@%s" % wpx.url[7:]])
ok(sdk_session(r, "egws-setnp"), "an SDK websocket session with upstream-proxy and no_proxy")
ok(ws_arrived("egws-setnp") and ws_texts("egws-setnp") == WS_MSGS, "its messages reach the backend")
ok([q for q in tunnels_to_backend(wpx)[before:] if q["status"] == 200],
   "through the proxy: no_proxy does not apply to the setting", wpx.requests()[before:])
ok("no_proxy=(ignored)" in r.log_text(), "as the log says")
eq(r.stop(), 0, "clean exit")

# (4) a proxy that refuses (403, then 407 for the wrong password): retried, logged, nothing lost.
wpx.refuse = 403
wpx.auth = ("relay", "s3cret")
r = relay_with_env(be, NO_ENV, ["--upstream-proxy", "http://relay:wrong@%s" % wpx.url[7:]])
ok(sdk_session(r, "egws-refused"), "an SDK session is accepted while the proxy refuses (403)")
ok(wait_until(lambda: len([q for q in tunnels_to_backend(wpx) if q["status"] == 403]) >= 2, 15),
   "the relay tries the tunnel again", wpx.requests()[-3:])
log = r.log_text()
down = [line for line in log.splitlines() if "event=upstream_down" in line]
ok(down and "level=warn" in down[0] and "CONNECT tunnel failed, response 403" in down[0],
   "the refusal is logged (warning) as the upstream being down, with the proxy's answer",
   down or log[-2000:])
eq(ws_texts("egws-refused"), [], "nothing has reached the backend")
wpx.refuse = None
ok(wait_until(lambda: len([q for q in tunnels_to_backend(wpx) if q["status"] == 407]) >= 2, 15),
   "a 407 for the wrong password is retried too", wpx.requests()[-3:])
ok(wait_until(lambda: [line for line in r.log_text().splitlines()
                        if "event=forward_retry" in line and
                        "CONNECT tunnel failed, response 407" in line], 15),
   "and logged (debug, one line per attempt)",
   [line for line in r.log_text().splitlines() if "event=forward_retry" in line][-3:])
eq(ws_texts("egws-refused"), [], "still nothing at the backend")
ok((r.metric("watchrtc_relay_queue_depth") or 0) >= len(WS_MSGS), "the messages stay queued",
   r.metric("watchrtc_relay_queue_depth"))
wpx.auth = ("relay", "wrong")
ok(ws_arrived("egws-refused"), "once the proxy accepts, the messages arrive")
ok(ws_texts("egws-refused") == WS_MSGS, "byte for byte, in order, once each",
   [len(d) for d in ws_texts("egws-refused")])
ok(wait_until(lambda: r.metric("watchrtc_relay_queue_depth") == 0, 10), "and leave the queue")
log = r.log_text()
ok("wrong" not in log, "the log never shows the password")
eq(r.stop(), 0, "clean exit")
done()

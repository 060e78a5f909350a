"""Egress through a corporate firewall: upstream-proxy (and libcurl's
https_proxy / no_proxy environment) carry every upstream request through a
CONNECT proxy, logged with its password masked; upstream-ca-extra adds a CA
(a TLS-inspecting proxy's, say) to the system bundle instead of replacing
it.  The proxy is a small CONNECT proxy in this file, on loopback only."""
import base64
import json
import os
import select
import socket
import socketserver
import sys
import threading

sys.path.insert(0, os.environ.get("TESTS_SRCDIR", os.path.join(os.path.dirname(__file__), "..")))
from relaytest import (CERTS, Relay, done, eq, ok, on_exit, request, start_upstream,  # noqa: E402
                       wait_until)

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
done()

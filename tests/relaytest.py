"""relaytest - what the integration tests share.

TAP output for automake's tap-driver, the relay under test started as a real
process on a free loopback port with its own state directory, and an HTTPS
client that trusts the relay's self-signed certificate.  Every process a test
starts is stopped when the test ends, also when it fails.
"""
import atexit
import base64
import http.client
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time

TESTS_SRCDIR = os.environ.get("TESTS_SRCDIR", os.path.dirname(os.path.abspath(__file__)))
RELAY_BIN = os.environ.get("RELAY_BIN", os.path.join(TESTS_SRCDIR, "..", "server", "watchrtc-relay"))
WSC_BIN = os.environ.get("WSC_BIN", os.path.join(TESTS_SRCDIR, "wsc"))
CERTS = os.path.join(TESTS_SRCDIR, "certs")
FIXTURES = os.path.join(TESTS_SRCDIR, "fixtures", "watchrtc-sdk")

sys.path.insert(0, TESTS_SRCDIR)
from mock_upstream import MockUpstream  # noqa: E402

# ---------------------------------------------------------------- TAP ------
_n = 0
_failed = 0


def ok(cond, name, detail=None):
    global _n, _failed
    _n += 1
    print(("ok" if cond else "not ok") + " %d - %s" % (_n, name))
    if not cond:
        _failed += 1
        if detail is not None:
            for line in str(detail).splitlines() or [""]:
                print("#   " + line)
    sys.stdout.flush()
    return cond


def eq(got, want, name):
    return ok(got == want, name, "got:  %r\nwant: %r" % (got, want))


def diag(msg):
    for line in str(msg).splitlines():
        print("# " + line)
    sys.stdout.flush()


def skip_all(reason):
    print("1..0 # SKIP " + reason)
    sys.exit(0)


def require(missing, what):
    """Skips the whole test when missing (a reason) is set, except in CI
    (CI=true), where what it needs must be there: then it fails."""
    if not missing:
        return
    if os.environ.get("CI") != "true":
        skip_all("%s: %s" % (what, missing))
    print("1..1\nnot ok 1 - %s cannot run in CI: %s" % (what, missing))
    sys.exit(1)


def done():
    print("1..%d" % _n)
    sys.stdout.flush()
    _cleanup()
    sys.exit(1 if _failed else 0)


# ----------------------------------------------------------- helpers -------
_cleanups = []


def _cleanup():
    while _cleanups:
        fn = _cleanups.pop()
        try:
            fn()
        except Exception as e:  # cleanup must go on
            diag("cleanup: %r" % e)


atexit.register(_cleanup)


def _on_sigterm(signum, frame):
    # Said in the log: a test that ends without its plan otherwise leaves
    # no trace of why (SystemExit prints nothing).
    diag("SIGTERM received: stopping what the test started")
    sys.exit(1)


signal.signal(signal.SIGTERM, _on_sigterm)


def on_exit(fn):
    _cleanups.append(fn)


def tempdir(prefix="relaytest-"):
    d = tempfile.mkdtemp(prefix=prefix)
    on_exit(lambda: shutil.rmtree(d, ignore_errors=True))
    return d


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout=10.0, interval=0.05):
    """Polls pred() until it is truthy or timeout seconds pass; returns its last value."""
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= end:
            return v
        time.sleep(interval)


def client_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def request(port, method, path, body=None, headers=None, timeout=10.0):
    """One HTTPS request to the relay; returns (status, headers dict lower-cased, body bytes)."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=client_context())
    try:
        if isinstance(body, str):
            body = body.encode()
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def read_status(s):
    """The status of the answer arriving on socket s, or None if none came."""
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return int(data[9:12]) if data.startswith(b"HTTP/1.1 ") else None


def raw_request(port, head, body=b"", timeout=10.0):
    """Sends a request head (and as much of body as the relay takes) over TLS
    and returns the answer's status code, or None if there was no answer.
    For requests a polite client would not finish: oversize or slow ones."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s = client_context().wrap_socket(raw)
    try:
        s.sendall(head)
        try:
            for i in range(0, len(body), 65536):
                s.sendall(body[i:i + 65536])
        except OSError:
            pass  # the relay answered and closed before the body was in
        return read_status(s)
    finally:
        s.close()


def tls_connect(port, source=None, prefix=b"", timeout=10.0):
    """A TLS connection to the relay (or a balancer) on 127.0.0.1:port, from
    the loopback address source if given, with prefix (a PROXY header, say)
    sent in clear before the handshake."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.settimeout(timeout)
    if source:
        raw.bind((source, 0))
    raw.connect(("127.0.0.1", port))
    if prefix:
        raw.sendall(prefix)
    return client_context().wrap_socket(raw)


def http_over(s, method, path, body=b"", headers=None):
    """One HTTP/1.1 request on the TLS socket s, which it closes: returns
    the status, or None if the connection ended without an answer."""
    if isinstance(body, str):
        body = body.encode()
    head = ["%s %s HTTP/1.1" % (method, path), "Host: relay", "Connection: close",
            "Content-Length: %d" % len(body)] + ["%s: %s" % kv for kv in (headers or {}).items()]
    try:
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        return read_status(s)
    except OSError:
        return None
    finally:
        s.close()


def run_relay_check(args):
    """The relay with args and --check-config: the CompletedProcess."""
    return subprocess.run([RELAY_BIN] + list(args) + ["--check-config"], capture_output=True,
                          text=True, timeout=30)


def load_fixture(*parts, mode="rb"):
    with open(os.path.join(FIXTURES, *parts), mode) as f:
        return f.read()


# ------------------------------------------------------------ relay --------
class Relay:
    """The relay binary under test, on a free loopback port."""

    def __init__(self, upstream=None, args=(), state_dir=None, protocol=None, nofile=None):
        """protocol: the upstream-protocol; by default http-post in front of
        the POST mock (mock_upstream.py, the old contract) or of nothing,
        websocket in front of the backend mock (mock_backend.py)."""
        self.port = free_port()
        self.nofile = nofile    # an open-file limit for the relay alone
        if protocol is None:
            protocol = "websocket" if hasattr(upstream, "frames") else "http-post"
        self.protocol = protocol
        self.state_dir = state_dir or tempdir("relay-state-")
        self.upstream = upstream
        self.args = list(args)
        self.proc = None
        self.log_path = os.path.join(tempdir("relay-log-"), "relay.log")
        on_exit(self.kill)

    def command(self):
        cmd = [RELAY_BIN, "--listen-address", "127.0.0.1", "--port", str(self.port),
               "--state-dir", self.state_dir, "--log-level", "debug",
               "--http-threads", "2", "--forward-workers", "2", "--ws-threads", "1",
               "--upstream-protocol", self.protocol, "--upstream-ws-threads", "1"]
        if self.upstream is not None:
            cmd += ["--upstream", self.upstream.url, "--upstream-ca", os.path.join(CERTS, "ca.pem"),
                    "--retry-base-ms", "100", "--retry-max-ms", "1000"]
        return cmd + self.args

    def start(self, wait=True):
        self.log = open(self.log_path, "ab")
        limit = None
        if self.nofile:
            def limit():
                resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))
        self.proc = subprocess.Popen(self.command(), stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=limit)
        if wait and not self.wait_live():
            raise RuntimeError("relay did not come up:\n" + self.log_text()[-3000:])
        return self

    def wait_live(self, timeout=15.0):
        def live():
            if self.proc.poll() is not None:
                return True
            try:
                return request(self.port, "GET", "/healthcheck/live", timeout=2)[0] == 200
            except OSError:
                return False
        return wait_until(live, timeout) and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=20.0):
        """Signals the relay and waits for it; returns its exit status."""
        if not self.proc or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_text(self):
        try:
            with open(self.log_path, "r", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def get(self, path):
        return request(self.port, "GET", path)

    def health(self):
        status, _, body = self.get("/healthcheck")
        return status, json.loads(body)

    def metric(self, sample):
        """The value of the sample whose name and labels are exactly sample
        (e.g. 'x_total{result="ok"}'), or None if it is not exposed."""
        _, _, body = self.get("/metrics")
        for line in body.decode().splitlines():
            if not line.startswith("#") and line.rsplit(" ", 1)[0] == sample:
                return float(line.rsplit(" ", 1)[1])
        return None


# ------------------------------------------------------------ raw ws -------
class RawWS:
    """A websocket client over raw TLS that sends whatever it is told to,
    for frames and timings a polite client never produces."""

    def __init__(self, port, path, origin="https://app.example", headers=(), rcvbuf=None, timeout=10.0):
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(timeout)
        raw.connect(("127.0.0.1", port))
        self.s = client_context().wrap_socket(raw)
        lines = ["GET %s HTTP/1.1" % path, "Host: 127.0.0.1:%d" % port, "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Protocol: 2.0",
                 "Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)).decode()]
        if origin:
            lines.append("Origin: " + origin)
        lines += ["%s: %s" % h for h in headers]
        self.s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            data = self.s.recv(65536)
            if not data:
                break
            self.buf += data
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.status = int(head[9:12]) if head.startswith(b"HTTP/1.1 ") else None
        self.headers = {}
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.decode("latin-1").partition(":")
            self.headers[k.strip().lower()] = v.strip()

    def send_raw(self, data):
        self.s.sendall(data)

    def send(self, opcode, payload, fin=True):
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([(0x80 if fin else 0) | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0xfe]) + struct.pack("!H", n)
        else:
            head += bytes([0xff]) + struct.pack("!Q", n)
        self.s.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _need(self, n):
        while len(self.buf) < n:
            data = self.s.recv(65536)
            if not data:
                raise EOFError
            self.buf += data

    def recv(self):
        """The next frame as (opcode, payload); EOFError at the end."""
        self._need(2)
        op, n = self.buf[0] & 0x0f, self.buf[1] & 0x7f
        off = 2
        if n == 126:
            self._need(4)
            n, off = struct.unpack("!H", self.buf[2:4])[0], 4
        elif n == 127:
            self._need(10)
            n, off = struct.unpack("!Q", self.buf[2:10])[0], 10
        self._need(off + n)
        payload, self.buf = self.buf[off:off + n], self.buf[off + n:]
        return op, payload

    def hello(self):
        op, payload = self.recv()
        return json.loads(payload) if op == 1 else None

    def close_code(self):
        """Reads until the relay's close frame: (code, reason), or None at EOF."""
        try:
            while True:
                op, payload = self.recv()
                if op == 8:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    return code, payload[2:].decode(errors="replace")
        except (EOFError, OSError):
            return None

    def bye(self):
        """The SDK's way out: close 1000, wait for the echo, then the socket."""
        try:
            self.send(8, struct.pack("!H", 1000))
            self.close_code()
        except OSError:
            pass
        self.close()

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def run_wsc(port, path, script, args=(), timeout=30):
    """Runs tests/wsc on path with script on stdin; returns (exit code,
    the JSON events it printed)."""
    cmd = [WSC_BIN, "--port", str(port), "--path", path] + list(args)
    p = subprocess.run(cmd, input="\n".join(script) + "\n", capture_output=True, text=True,
                       timeout=timeout)
    events = []
    for line in p.stdout.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            pass
    if p.returncode != 0:
        diag("wsc exited %d; stderr: %s" % (p.returncode, p.stderr[-1500:]))
    return p.returncode, events


def rss_kb(relay):
    """The relay process's resident memory, in KB."""
    with open("/proc/%d/status" % relay.proc.pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Upstream(MockUpstream):
    """The mock upstream, with records made handy for assertions: body as
    bytes and headers as a dict with lower-case names."""

    def requests(self, since=0):
        out = []
        for r in super().requests(since):
            r = dict(r)
            r["body"] = base64.b64decode(r["body"])
            r["headers"] = {k.lower(): v for k, v in r["headers"]}
            out.append(r)
        return out


def start_upstream():
    up = Upstream(cert=os.path.join(CERTS, "server.pem"), key=os.path.join(CERTS, "server-key.pem"))
    up.start()
    on_exit(up.stop)
    return up

#!/usr/bin/env python3
"""mock_upstream.py - a stand-in for the watchRTC upstream, for the tests.

An HTTPS server on 127.0.0.1 that records every request it gets and answers
200, or whatever it was told to answer.  Python 3 standard library only.

As a program:
    python3 mock_upstream.py [--port 0] [--cert PEM] [--key PEM]
prints "PORT <n>" as its first line and serves until SIGTERM, SIGINT or,
with --exit-on-eof, the end of its standard input (so it dies with a
parent that forgot to kill it).

In a test process:
    mock = MockUpstream(); mock.start()      # mock.port, mock.url
    mock.behave(status=503, count=2, retry_after=1)
    ... mock.requests() ...
    mock.stop()

Control API (JSON, over the same HTTPS port; never recorded):
    GET  /_mock/requests[?since=N]  recorded requests with index >= N
    POST /_mock/behave   {"status": 503, "count": N | "seconds": S,
                          "retry_after": 2, "delay_ms": 0, "reset": false,
                          "hold": false, "body": "text"}
        The next requests get that answer until count requests or S seconds
        have passed (with neither, until the next behave or reset); then 200.
        reset=true closes the connection without answering; delay_ms sleeps
        before answering (longer than the relay's timeout = a hung upstream).
        hold=true keeps each of those answers until /_mock/release (at most
        HOLD_MAX_S), so a test can act while the relay waits, at any speed.
    POST /_mock/release  lets the held answers go
    POST /_mock/reset    forget the recordings and the behaviour (and release)

Each record: index, time (Unix seconds, float), method, path (with query),
headers ([name, value] pairs in order), body (base64), body_len, text (the
body as UTF-8, undecodable bytes replaced), status (0 when the connection
was reset instead of answered) and peer ("ip:port" of the client's
connection, so tests can see connections being reused).  A request is recorded once its body has
been read, before the answer (and before any delay_ms).
"""

import argparse
import base64
import json
import os
import signal
import socket
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CERT = os.path.join(HERE, "certs", "server.pem")
DEFAULT_KEY = os.path.join(HERE, "certs", "server-key.pem")

BODY_MAX = 64 * 1024 * 1024   # a request body larger than this gets 413
CONTROL_MAX = 64 * 1024       # a control request body larger than this gets 413
SOCKET_TIMEOUT_S = 60         # an idle keep-alive connection is closed after this
HOLD_MAX_S = 30               # a held answer goes after this even if never released


class _State:
    """Recordings and behaviour, shared by the handler threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.records = []
        self.behaviour = None
        self.released = threading.Event()
        self.released.set()

    def reset(self):
        with self.lock:
            self.records = []
            self.behaviour = None
        self.release()

    def release(self):
        """Lets the answers a hold=True behaviour keeps go."""
        self.released.set()

    def set_behaviour(self, spec):
        b = {
            "status": int(spec.get("status", 200)),
            "count": spec.get("count"),
            "until": None,
            "retry_after": spec.get("retry_after"),
            "delay_ms": int(spec.get("delay_ms") or 0),
            "reset": bool(spec.get("reset", False)),
            "hold": bool(spec.get("hold", False)),
            "body": spec.get("body"),
        }
        if b["hold"]:
            self.released.clear()
        if b["count"] is not None:
            b["count"] = int(b["count"])
        if spec.get("seconds") is not None:
            b["until"] = time.monotonic() + float(spec["seconds"])
        with self.lock:
            self.behaviour = b

    def next_answer(self):
        """Consumes one use of the current behaviour; None means 200."""
        with self.lock:
            b = self.behaviour
            if b is None:
                return None
            if b["until"] is not None and time.monotonic() >= b["until"]:
                self.behaviour = None
                return None
            if b["count"] is not None:
                if b["count"] <= 0:
                    self.behaviour = None
                    return None
                b["count"] -= 1
            return dict(b)

    def record(self, rec):
        with self.lock:
            rec["index"] = len(self.records)
            self.records.append(rec)

    def since(self, n):
        with self.lock:
            return [dict(r) for r in self.records[n:]]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mock-upstream/1"
    timeout = SOCKET_TIMEOUT_S

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("mock_upstream: " + (fmt % args) + "\n")

    # --- plumbing ---------------------------------------------------------

    def _read_body(self, limit):
        """The request body (Content-Length or chunked), or None if too big."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts, total = [], 0
            while True:
                line = self.rfile.readline(1024)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                total += size
                if total > limit:
                    return None
                parts.append(self.rfile.read(size))
                self.rfile.readline(1024)
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            return None
        return self.rfile.read(length) if length else b""

    def _answer(self, status, body=b"", ctype="text/plain; charset=utf-8", extra=()):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status, obj):
        self._answer(status, json.dumps(obj), "application/json")

    def _hard_reset(self):
        """Closes the connection with a TCP RST and no answer at all."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            # Linger 0 turns the close into a RST, but only if the last
            # reference goes (rfile holds one) and nothing shut it down first.
            self.rfile.close()
            self.connection.close()
        except OSError:
            pass

    # --- requests ---------------------------------------------------------

    def _handle(self):
        if self.path.startswith("/_mock/"):
            return self._control()
        body = self._read_body(BODY_MAX)
        if body is None:
            self.close_connection = True
            return self._answer(413, "too large\n")
        b = self.server.state.next_answer()
        status = 200 if b is None else b["status"]
        if b is not None and b["reset"]:
            status = 0
        self.server.state.record({
            "time": time.time(),
            "method": self.command,
            "path": self.path,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body": base64.b64encode(body).decode("ascii"),
            "body_len": len(body),
            "text": body.decode("utf-8", "replace"),
            "status": status,
            "peer": "%s:%d" % self.client_address[:2],
        })
        if b is not None and b["hold"]:
            self.server.state.released.wait(HOLD_MAX_S)
        if b is not None and b["delay_ms"]:
            time.sleep(b["delay_ms"] / 1000.0)
        if b is not None and b["reset"]:
            return self._hard_reset()
        extra = []
        if b is not None and b["retry_after"] is not None:
            extra.append(("Retry-After", str(b["retry_after"])))
        text = b["body"] if b is not None and b["body"] is not None else (
            "ok\n" if status < 400 else "error %d\n" % status)
        self._answer(status, text, extra=extra)

    def _control(self):
        url = urlsplit(self.path)
        body = self._read_body(CONTROL_MAX)
        if body is None:
            self.close_connection = True
            return self._answer(413, "too large\n")
        if url.path == "/_mock/requests" and self.command == "GET":
            since = int(parse_qs(url.query).get("since", ["0"])[0])
            return self._json(200, self.server.state.since(since))
        if url.path == "/_mock/behave" and self.command == "POST":
            try:
                self.server.state.set_behaviour(json.loads(body or b"{}"))
            except (ValueError, TypeError, AttributeError) as e:
                return self._json(400, {"error": str(e)})
            return self._json(200, {"ok": True})
        if url.path == "/_mock/release" and self.command == "POST":
            self.server.state.release()
            return self._json(200, {"ok": True})
        if url.path == "/_mock/reset" and self.command == "POST":
            self.server.state.reset()
            return self._json(200, {"ok": True})
        return self._json(404, {"error": "no such control"})

    def _safe_handle(self):
        try:
            self._handle()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, socket.timeout):
            self.close_connection = True   # the client gave up (its timeout)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _safe_handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, context, verbose):
        self.state = _State()
        self.context = context
        self.verbose = verbose
        super().__init__(addr, _Handler)

    def get_request(self):
        # The TLS handshake runs in the handler thread (on first read), so a
        # slow or broken client never blocks the accept loop.
        sock, addr = self.socket.accept()
        return self.context.wrap_socket(sock, server_side=True,
                                        do_handshake_on_connect=False), addr

    def handle_error(self, request, client_address):
        if self.verbose:
            super().handle_error(request, client_address)


class MockUpstream:
    """The mock, running in threads of the calling process."""

    def __init__(self, cert=DEFAULT_CERT, key=DEFAULT_KEY, host="127.0.0.1", port=0,
                 verbose=False):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(["http/1.1"])
        self._server = _Server((host, port), ctx, verbose)
        self._thread = None
        self.host = host
        self.port = self._server.server_address[1]
        self.url = "https://%s:%d" % (host, self.port)

    def start(self):
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name="mock-upstream", daemon=True)
        self._thread.start()
        return self.port

    def stop(self):
        if self._thread:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def requests(self, since=0):
        return self._server.state.since(since)

    def behave(self, status=200, count=None, seconds=None, retry_after=None,
               delay_ms=0, reset=False, body=None, hold=False):
        self._server.state.set_behaviour({
            "status": status, "count": count, "seconds": seconds,
            "retry_after": retry_after, "delay_ms": delay_ms, "reset": reset,
            "body": body, "hold": hold})

    def release(self):
        """Lets the answers of a hold=True behaviour go."""
        self._server.state.release()

    def reset(self):
        self._server.state.reset()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def serve_until_stopped(server, exit_on_eof):
    """Starts server (a mock with start(), port and stop()), prints "PORT n"
    for the test that spawned it, and stops it on SIGTERM, SIGINT or, with
    exit_on_eof, when standard input ends (the test died).  Returns 0."""
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    if exit_on_eof:
        def watch_stdin():
            while sys.stdin.buffer.read(4096):
                pass
            done.set()
        threading.Thread(target=watch_stdin, daemon=True).start()
    server.start()
    print("PORT %d" % server.port, flush=True)
    while not done.wait(0.5):
        pass
    server.stop()
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--cert", default=DEFAULT_CERT)
    ap.add_argument("--key", default=DEFAULT_KEY)
    ap.add_argument("--exit-on-eof", action="store_true",
                    help="exit when standard input ends")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()

    return serve_until_stopped(MockUpstream(args.cert, args.key, args.host, args.port,
                                            args.verbose), args.exit_on_eof)


if __name__ == "__main__":
    sys.exit(main())

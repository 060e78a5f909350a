#!/usr/bin/env python3
"""mock_backend.py - a stand-in for the watchRTC backend, as the SDK sees it.

What tests/fixtures/watchrtc-sdk/BACKEND.md describes: a TLS websocket on
`/` that requires subprotocol 2.0, speaks first with a JSON hello, answers
pings and takes text frames (no acknowledgement); `POST /trace` and
`POST /error` for the fallback (with CORS preflights).  Everything it gets is
recorded for the tests to inspect.  Python 3 standard library only.

In a test process:
    be = MockBackend(); be.start()              # be.port, be.url
    be.behave(refuse_status=503, retry_after=2, refuse_count=3)
    ... be.upgrades(), be.frames(), be.posts(), be.open_connections() ...
    be.stop()

As a program:
    python3 mock_backend.py [--port 0] [--cert PEM] [--key PEM] [--exit-on-eof]
prints "PORT <n>" and serves until SIGTERM / SIGINT (or the end of standard
input with --exit-on-eof).  The same control works over HTTPS on the port:
    GET  /_mock/upgrades?since=N, /_mock/frames?since=N, /_mock/posts?since=N
    GET  /_mock/state                    {"open": n, "connections": n}
    POST /_mock/behave  {switches below}   POST /_mock/reset

Switches (behave(); each replaces the value it names, reset() clears all):
    refuse_status, retry_after       answer upgrades with this status (e.g. 503
                                     with Retry-After, 401) ...
    refuse_count | refuse_seconds    ... for this many upgrades / seconds
                                     (neither: until changed)
    hello                            the hello object (default: DEFAULT_HELLO
                                     plus a connectionId per connection)
    hello_error                      send {"error": hello_error} as the hello,
                                     then wait for the client's close
    second_message                   a JSON object sent right after the hello
    hello_with_101                   send the hello (and second_message) in the
                                     same write as the 101 (one TLS record)
    drop_after, drop_count           drop (TCP reset, no close frame) the next
                                     drop_count connections (default 1) once
                                     each has received drop_after text frames
    close_after, close_code,         send a close (default 1011 "mock close")
    close_reason                     after that many text frames on a connection
    stop_reading                     stop reading every connection (so pings go
                                     unanswered and TCP buffers fill) until
                                     cleared
    no_pong                          read, but answer no ping

Records:
    upgrade: index, time, conn, method, target (path?query as sent), path,
             query, headers ([name, value] in order), status (101 or refusal)
    frame:   index, time, conn, seq (per connection, text frames from 1),
             opcode ("text", "binary", "ping", "pong", "close"), data (bytes;
             base64 over HTTP), text, close_code, close_reason
    post:    index, time, method, path, headers, body (bytes), text
"""

import argparse
import base64
import hashlib
import json
import os
import socket
import ssl
import struct
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CERT = os.path.join(HERE, "certs", "server.pem")
DEFAULT_KEY = os.path.join(HERE, "certs", "server-key.pem")

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HEAD_MAX = 16384
BODY_MAX = 16 * 1024 * 1024
FRAME_MAX = 16 * 1024 * 1024
IDLE_TIMEOUT_S = 120          # a silent connection is dropped after this
DEFAULT_HELLO = {
    "projectId": "mock-project",
    "interval": 5000,
    "sendInterval": 2,
    "collectConsoleLogEnabled": True,
    "collectConsoleLogLevel": "warn",
}


class _Drop(Exception):
    """The connection ends here (already closed or to be dropped)."""


class _State:
    def __init__(self):
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.reset()

    def reset(self):
        with self.lock:
            self.upgrades, self.frames, self.posts = [], [], []
            self.sw = {}
            self.refuse_until = None
            self.next_conn = 1
            self.open = 0
            self.cond.notify_all()

    def behave(self, spec):
        with self.lock:
            for k, v in spec.items():
                self.sw[k] = v
            if spec.get("refuse_seconds") is not None:
                self.refuse_until = time.monotonic() + float(spec["refuse_seconds"])
            elif "refuse_status" in spec:
                self.refuse_until = None
            if "drop_after" in spec and "drop_count" not in spec:
                self.sw["drop_count"] = 1

    def get(self, name, default=None):
        with self.lock:
            v = self.sw.get(name)
            return default if v is None else v

    def refusal(self):
        """The status to refuse an upgrade with, or None; consumes a count."""
        with self.lock:
            st = self.sw.get("refuse_status")
            if not st:
                return None, None
            if self.refuse_until is not None and time.monotonic() >= self.refuse_until:
                self.sw.pop("refuse_status", None)
                return None, None
            cnt = self.sw.get("refuse_count")
            if cnt is not None:
                if cnt <= 0:
                    self.sw.pop("refuse_status", None)
                    return None, None
                self.sw["refuse_count"] = cnt - 1
            return int(st), self.sw.get("retry_after")

    def take_drop(self):
        with self.lock:
            n = self.sw.get("drop_count") or 0
            if n <= 0:
                return False
            self.sw["drop_count"] = n - 1
            return True

    def record(self, kind, rec):
        with self.lock:
            lst = getattr(self, kind)
            rec["index"] = len(lst)
            rec["time"] = time.time()
            lst.append(rec)
            self.cond.notify_all()

    def conn_id(self):
        with self.lock:
            c = self.next_conn
            self.next_conn += 1
            self.open += 1
            return c

    def conn_gone(self):
        with self.lock:
            self.open -= 1
            self.cond.notify_all()


class _Conn:
    """One client connection, in its own thread."""

    def __init__(self, server, sock, addr):
        self.srv = server
        self.st = server.state
        self.sock = sock
        self.addr = addr
        self.buf = b""
        self.conn = None

    # --- bytes ---------------------------------------------------------------
    def _recv(self):
        while True:
            if self.srv.stopping.is_set():
                raise _Drop()
            if self.conn is not None and self.st.get("stop_reading"):
                time.sleep(0.05)
                continue
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                if time.monotonic() - self.last_rx > IDLE_TIMEOUT_S:
                    raise _Drop()
                continue
            except (OSError, ssl.SSLError):
                raise _Drop()
            if not data:
                raise _Drop()
            self.last_rx = time.monotonic()
            return data

    def _need(self, n):
        while len(self.buf) < n:
            self.buf += self._recv()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send(self, data):
        with self.wlock:
            try:
                self.sock.sendall(data)
            except (OSError, ssl.SSLError):
                raise _Drop()

    # --- HTTP ----------------------------------------------------------------
    def _head(self):
        while b"\r\n\r\n" not in self.buf:
            if len(self.buf) > HEAD_MAX:
                raise _Drop()
            self.buf += self._recv()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            raise _Drop()
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append([name.strip(), value.strip()])
        return parts[0], parts[1], headers

    def _answer(self, status, body=b"", ctype="text/plain; charset=utf-8", extra=()):
        if isinstance(body, str):
            body = body.encode()
        reason = {101: "Switching Protocols", 200: "OK", 204: "No Content",
                  400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
                  404: "Not Found", 413: "Payload Too Large", 429: "Too Many Requests",
                  503: "Service Unavailable"}.get(status, "Status")
        h = ["HTTP/1.1 %d %s" % (status, reason)]
        for k, v in extra:
            h.append("%s: %s" % (k, v))
        if status != 101:
            h.append("Content-Type: " + ctype)
            h.append("Content-Length: %d" % len(body))
        self._send(("\r\n".join(h) + "\r\n\r\n").encode("latin-1") + body)

    def run(self):
        self.wlock = threading.Lock()
        self.last_rx = time.monotonic()
        try:
            self.sock.settimeout(0.2)
            while True:
                try:
                    self.sock.do_handshake()
                    break
                except socket.timeout:
                    if self.srv.stopping.is_set() or time.monotonic() - self.last_rx > 10:
                        raise _Drop()
            while True:
                method, target, headers = self._head()
                hd = {k.lower(): v for k, v in headers}
                if target.startswith("/_mock/"):
                    self._control(method, target, hd)
                elif hd.get("upgrade", "").lower() == "websocket":
                    self._websocket(method, target, headers, hd)
                    return
                else:
                    self._post(method, target, headers, hd)
        except (_Drop, ssl.SSLError, OSError, ValueError):
            pass
        finally:
            try:
                self.sock.close()
            except OSError:
                pass
            if self.conn is not None:
                self.st.conn_gone()

    def _body(self, hd):
        n = int(hd.get("content-length") or 0)
        if n > BODY_MAX:
            raise _Drop()
        return self._need(n) if n else b""

    def _post(self, method, target, headers, hd):
        body = self._body(hd)
        path = urlsplit(target).path
        cors = [("Access-Control-Allow-Origin", hd.get("origin", "*"))]
        if method == "OPTIONS":
            return self._answer(204, extra=cors + [
                ("Access-Control-Allow-Methods", "POST, OPTIONS"),
                ("Access-Control-Allow-Headers", "Content-Type")])
        if method == "POST" and path in ("/trace", "/error"):
            self.st.record("posts", {"method": method, "path": target, "headers": headers,
                                     "body": body, "text": body.decode("utf-8", "replace")})
            return self._answer(200, "ok", extra=cors)
        return self._answer(404, "not found")

    def _control(self, method, target, hd):
        body = self._body(hd)
        url = urlsplit(target)
        since = int(parse_qs(url.query).get("since", ["0"])[0])
        name = url.path[len("/_mock/"):]
        if method == "GET" and name in ("upgrades", "frames", "posts"):
            recs = self.srv.owner._records(name, since)
            for r in recs:
                if isinstance(r.get("data"), bytes):
                    r["data"] = base64.b64encode(r["data"]).decode()
                if isinstance(r.get("body"), bytes):
                    r["body"] = base64.b64encode(r["body"]).decode()
            out = recs
        elif method == "GET" and name == "state":
            out = {"open": self.st.open, "connections": self.st.next_conn - 1}
        elif method == "POST" and name == "behave":
            self.st.behave(json.loads(body or b"{}"))
            out = {"ok": True}
        elif method == "POST" and name == "reset":
            self.st.reset()
            out = {"ok": True}
        else:
            return self._answer(404, "no such control")
        self._answer(200, json.dumps(out), "application/json")

    # --- websocket -----------------------------------------------------------
    def _websocket(self, method, target, headers, hd):
        url = urlsplit(target)
        rec = {"method": method, "target": target, "path": url.path, "query": url.query,
               "headers": headers}
        protos = [p.strip() for p in hd.get("sec-websocket-protocol", "").split(",")]
        key = hd.get("sec-websocket-key", "")
        status = 101
        if method != "GET" or url.path != "/":
            status = 404
        elif hd.get("sec-websocket-version") != "13" or len(key) != 24 or \
                "upgrade" not in hd.get("connection", "").lower():
            status = 400
        elif "2.0" not in protos:
            status = 400
        retry = None
        if status == 101:
            refuse, retry = self.st.refusal()
            if refuse:
                status = refuse
        rec["status"] = status
        # Whether the client resumed a TLS session (it skipped the certificate).
        rec["tls_resumed"] = bool(getattr(self.sock, "session_reused", False))
        self.conn = self.st.conn_id()
        rec["conn"] = self.conn
        self.st.record("upgrades", rec)
        if status != 101:
            extra = [("Retry-After", str(retry))] if retry is not None else []
            self._answer(status, json.dumps({"error": "refused by the mock"}),
                         "application/json", extra)
            raise _Drop()
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        err = self.st.get("hello_error")
        if err is not None:
            first = self._frame_bytes(0x1, json.dumps({"error": err}).encode())
        else:
            hello = dict(self.st.get("hello") or DEFAULT_HELLO)
            hello.setdefault("connectionId", "mock-%d" % self.conn)
            first = self._frame_bytes(0x1, json.dumps(hello).encode())
            second = self.st.get("second_message")
            if second is not None:
                first += self._frame_bytes(0x1, json.dumps(second).encode())
        # hello_with_101: the hello in the same write (and TLS record) as the
        # 101, as a server may send it; otherwise in writes of its own.
        together = bool(self.st.get("hello_with_101"))
        self._answer(101, body=first if together else b"",
                     extra=[("Upgrade", "websocket"), ("Connection", "Upgrade"),
                            ("Sec-WebSocket-Accept", accept), ("Sec-WebSocket-Protocol", "2.0")])
        if not together:
            self._send(first)
        self._frames()

    @staticmethod
    def _frame_bytes(opcode, payload):
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
        return head + payload

    def _frame(self, opcode, payload):
        self._send(self._frame_bytes(opcode, payload))

    def _close(self, code, reason=b""):
        self._frame(0x8, struct.pack("!H", code) + reason if code else b"")

    def _reset(self):
        """Drops the connection: a TCP reset, no close frame."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        raise _Drop()

    def _frames(self):
        seq = 0
        msg, msg_op = b"", None
        closing = False
        while True:
            b0, b1 = self._need(2)
            fin, op, masked, n = b0 & 0x80, b0 & 0x0F, b1 & 0x80, b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._need(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._need(8))[0]
            if not masked or n > FRAME_MAX or b0 & 0x70:
                self._close(1002, b"protocol error")
                raise _Drop()
            mask = self._need(4)
            data = bytearray(self._need(n))
            for i in range(n):
                data[i] ^= mask[i & 3]
            data = bytes(data)
            if op in (0x1, 0x2):
                msg, msg_op = data, op
            elif op == 0x0:
                if msg_op is None:
                    self._close(1002, b"protocol error")
                    raise _Drop()
                msg += data
            if op & 0x8:
                if op == 0x9:
                    self.st.record("frames", {"conn": self.conn, "opcode": "ping", "data": data,
                                              "text": None})
                    if not self.st.get("no_pong"):
                        self._frame(0xA, data)
                elif op == 0xA:
                    self.st.record("frames", {"conn": self.conn, "opcode": "pong", "data": data,
                                              "text": None})
                elif op == 0x8:
                    code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
                    reason = data[2:].decode("utf-8", "replace")
                    self.st.record("frames", {"conn": self.conn, "opcode": "close", "data": data,
                                              "text": None, "close_code": code,
                                              "close_reason": reason})
                    if not closing:
                        self._close(code or 1000, data[2:] if code else b"")
                    raise _Drop()
                continue
            if not fin:
                continue
            seq += 1
            kind = "text" if msg_op == 0x1 else "binary"
            self.st.record("frames", {"conn": self.conn, "seq": seq, "opcode": kind, "data": msg,
                                      "text": msg.decode("utf-8", "replace")})
            msg, msg_op = b"", None
            drop_after = self.st.get("drop_after")
            if drop_after and seq >= int(drop_after) and self.st.take_drop():
                self._reset()
            close_after = self.st.get("close_after")
            if close_after and seq == int(close_after) and not closing:
                closing = True
                self._close(int(self.st.get("close_code", 1011)),
                            str(self.st.get("close_reason", "mock close")).encode())


class _Server:
    def __init__(self, owner, host, port, context):
        self.owner = owner
        self.state = owner.state
        self.context = context
        self.stopping = threading.Event()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.lsock = socket.socket(family, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, port))
        self.lsock.listen(512)
        self.lsock.settimeout(0.1)
        self.port = self.lsock.getsockname()[1]
        self.threads = []

    def serve(self):
        while not self.stopping.is_set():
            try:
                sock, addr = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            try:
                tls = self.context.wrap_socket(sock, server_side=True,
                                               do_handshake_on_connect=False)
            except (OSError, ssl.SSLError):
                sock.close()
                continue
            t = threading.Thread(target=_Conn(self, tls, addr).run, daemon=True,
                                 name="mock-backend-conn")
            t.start()
            self.threads = [x for x in self.threads if x.is_alive()] + [t]


class MockBackend:
    """The mock, running in threads of the calling process."""

    def __init__(self, cert=DEFAULT_CERT, key=DEFAULT_KEY, host="127.0.0.1", port=0):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(["http/1.1"])
        self.state = _State()
        self._server = _Server(self, host, port, ctx)
        self._thread = None
        self.host = host
        self.port = self._server.port
        self.url = "https://%s:%d" % (host if ":" not in host else "[%s]" % host, self.port)

    def start(self):
        self._thread = threading.Thread(target=self._server.serve, daemon=True,
                                        name="mock-backend")
        self._thread.start()
        return self.port

    def stop(self):
        self._server.stopping.set()
        if self._thread:
            self._thread.join()
            self._thread = None
        for t in self._server.threads:
            t.join(timeout=2)
        self._server.lsock.close()

    def behave(self, **switches):
        self.state.behave(switches)

    def reset(self):
        self.state.reset()

    def _records(self, kind, since=0):
        with self.state.lock:
            return [dict(r) for r in getattr(self.state, kind)[since:]]

    def upgrades(self, since=0):
        return self._records("upgrades", since)

    def frames(self, since=0, opcode=None):
        return [f for f in self._records("frames", since) if opcode is None or f["opcode"] == opcode]

    def posts(self, since=0):
        return self._records("posts", since)

    def open_connections(self):
        with self.state.lock:
            return self.state.open

    def wait(self, pred, timeout=10.0):
        """Waits until pred(self) is truthy (woken by every record); its last value."""
        end = time.monotonic() + timeout
        while True:
            v = pred(self)
            left = end - time.monotonic()
            if v or left <= 0:
                return v
            with self.state.cond:
                self.state.cond.wait(min(left, 0.1))

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--cert", default=DEFAULT_CERT)
    ap.add_argument("--key", default=DEFAULT_KEY)
    ap.add_argument("--exit-on-eof", action="store_true", help="exit when standard input ends")
    args = ap.parse_args()

    from mock_upstream import serve_until_stopped
    return serve_until_stopped(MockBackend(args.cert, args.key, args.host, args.port),
                               args.exit_on_eof)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""connect_proxy.py - a small loopback HTTP CONNECT proxy, for the tests of
the egress proxy path.  Python 3 standard library only.

    p = ConnectProxy(auth=("user", "pass")); p.start()   # p.port, p.url
    ... p.requests() -> [{"target": "127.0.0.1:4443", "status": 200,
                          "headers": {...}}] ...
    p.stop()

p.refuse = 403 answers every CONNECT with that status until set back to None.
Only CONNECT is served, only to loopback targets; with auth, a request
without the right Proxy-Authorization (Basic) gets 407.  After a 200 the
bytes are relayed both ways until either side closes.
"""
import base64
import select
import socket
import threading
import time

HEAD_MAX = 8192


class ConnectProxy:
    def __init__(self, auth=None, host="127.0.0.1"):
        self.auth = auth
        self.refuse = None      # a status to answer every CONNECT with
        self.lock = threading.Lock()
        self.records = []
        self.stopping = threading.Event()
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, 0))
        self.lsock.listen(64)
        self.lsock.settimeout(0.1)
        self.port = self.lsock.getsockname()[1]
        self.url = "http://%s:%d" % (host, self.port)
        self.threads = []

    def start(self):
        t = threading.Thread(target=self._serve, daemon=True, name="connect-proxy")
        t.start()
        self.threads.append(t)
        return self.port

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=3)
        self.lsock.close()

    def requests(self):
        with self.lock:
            return [dict(r) for r in self.records]

    def _serve(self):
        while not self.stopping.is_set():
            try:
                c, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._conn, args=(c,), daemon=True)
            t.start()
            self.threads.append(t)

    def _conn(self, c):
        up = None
        try:
            c.settimeout(5)
            buf = b""
            while b"\r\n\r\n" not in buf:
                d = c.recv(4096)
                if not d or len(buf) > HEAD_MAX:
                    return
                buf += d
            head, rest = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = (lines[0].split(" ") + ["", "", ""])[:3]
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            rec = {"method": method, "target": target, "headers": headers}
            status = 200
            if method != "CONNECT":
                status = 405
            elif self.refuse:
                status = self.refuse
            elif self.auth:
                want = "Basic " + base64.b64encode(("%s:%s" % self.auth).encode()).decode()
                if headers.get("proxy-authorization") != want:
                    status = 407
            host, _, port = target.rpartition(":")
            if status == 200 and host.strip("[]") not in ("127.0.0.1", "::1", "localhost"):
                status = 403
            if status == 200:
                try:
                    up = socket.create_connection((host.strip("[]"), int(port)), timeout=5)
                except (OSError, ValueError):
                    status = 502
            rec["status"] = status
            with self.lock:
                self.records.append(rec)
            if status != 200:
                extra = ""
                if status == 407:
                    extra = 'Proxy-Authenticate: Basic realm="test"\r\n'
                c.sendall(("HTTP/1.1 %d No\r\n%sContent-Length: 0\r\n\r\n" %
                           (status, extra)).encode())
                if status == 407:
                    # libcurl retries on the same connection with credentials.
                    return self._conn_again(c)
                return
            c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                up.sendall(rest)
            self._pipe(c, up)
        except OSError:
            pass
        finally:
            c.close()
            if up:
                up.close()

    def _conn_again(self, c):
        # Re-enter with the same socket (a 407 keeps the connection).
        self._conn(c)

    def _pipe(self, a, b):
        a.setblocking(False)
        b.setblocking(False)
        end = {a: b, b: a}
        while not self.stopping.is_set():
            r, _, _ = select.select([a, b], [], [], 0.2)
            for s in r:
                try:
                    d = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    return
                if not d:
                    return
                dst = end[s]
                while d:
                    try:
                        n = dst.send(d)
                        d = d[n:]
                    except BlockingIOError:
                        time.sleep(0.001)
                    except OSError:
                        return

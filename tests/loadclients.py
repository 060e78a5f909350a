"""loadclients - load for the durability tests, and the bookkeeping that
tells what the upstream must have received.

WsSender drives tests/wsc one line at a time: it connects with a fixed
sessionId (as the SDK does across reconnects), waits for the hello, sends one
numbered message at a time and notes when wsc confirmed each write and when
that connection began (a write to a relay that has just died still succeeds
locally, so what counts is the relay the connection went to); when the
relay goes away it reconnects.  FallbackSender POSTs numbered messages to
.../trace and notes which were answered 200.  Every message body carries
{"c": sender, "n": number}, so upstream records can be matched to what was
sent.  Times are time.monotonic().
"""
import http.client
import json
import subprocess
import threading
import time
from urllib.parse import parse_qs

from relaytest import WSC_BIN, request

RECONNECT_S = 0.1       # a sender waits this long before it connects again
WSC_TIMEOUT_MS = 3000   # wsc's wait for the hello
STOP_WAIT_S = 5         # how long stop() waits for a sender


class WsSender(threading.Thread):
    """One websocket session that keeps sending until stopped."""

    def __init__(self, port, name, interval=0.05, api_key="durable-key"):
        super().__init__(name="ws-" + name, daemon=True)
        self.port, self.name, self.interval, self.api_key = port, name, interval, api_key
        self.sent = []          # (n, time wsc confirmed the write, time its connection began)
        self.failed = []        # n whose write failed (the connection was gone)
        self.connects = 0
        self.n = 0
        self._halt = threading.Event()
        self._proc = None
        self._conn_t = 0.0

    def path(self):
        return ("/websocket?apiKey=%s&timestamp=1&apiVersion=v1&sessionId=%s&newConnection=true"
                % (self.api_key, self.name))

    def _event(self, proc):
        line = proc.stdout.readline()
        if not line:
            return None
        try:
            return json.loads(line)
        except ValueError:
            return {}

    def _connect(self):
        # Taken before connecting: a relay killed meanwhile makes this
        # connection's messages look at risk rather than safe.
        self._conn_t = time.monotonic()
        proc = subprocess.Popen([WSC_BIN, "--port", str(self.port), "--path", self.path(),
                                 "--timeout-ms", str(WSC_TIMEOUT_MS)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self._proc = proc
        ev = self._event(proc)
        if not ev or ev.get("event") != "handshake" or ev.get("status") != 101:
            return self._end(proc)
        try:
            proc.stdin.write("expect-text connectionId\n")
            proc.stdin.flush()
        except OSError:
            return self._end(proc)
        while True:
            ev = self._event(proc)
            if ev is None:
                return self._end(proc)
            if ev.get("event") == "expect":
                return proc if ev.get("ok") else self._end(proc)

    def _end(self, proc, close=False):
        try:
            if close:
                proc.stdin.write("close 1000\nexpect-close 1000\n")
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        return None

    def _send(self, proc):
        """Sends the next message; False once the connection is gone."""
        self.n += 1
        body = json.dumps({"c": self.name, "n": self.n}, separators=(",", ":"))
        try:
            proc.stdin.write("send-text " + body + "\n")
            proc.stdin.flush()
        except OSError:
            self.failed.append(self.n)
            return False
        while True:
            ev = self._event(proc)
            if ev is None or ev.get("event") == "error":
                self.failed.append(self.n)
                return False
            if ev.get("event") == "sent":
                self.sent.append((self.n, time.monotonic(), self._conn_t))
                return True

    def run(self):
        while not self._halt.is_set():
            proc = self._connect()
            if proc is None:
                self._halt.wait(RECONNECT_S)
                continue
            self.connects += 1
            while not self._halt.is_set() and self._send(proc):
                self._halt.wait(self.interval)
            self._end(proc, close=self._halt.is_set())

    def stop(self):
        self._halt.set()
        self.join(STOP_WAIT_S * 3)
        if self._proc and self._proc.poll() is None:
            self._proc.kill()


class FallbackSender(threading.Thread):
    """One session of HTTPS-fallback POSTs, one at a time."""

    def __init__(self, port, name, interval=0.03):
        super().__init__(name="fb-" + name, daemon=True)
        self.port, self.name, self.interval = port, name, interval
        self.acked = []         # (n, time of the 200)
        self.refused = []       # (n, status): answered, but not 200
        self.unanswered = []    # n: no answer (the relay went away)
        self.n = 0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            self.n += 1
            body = json.dumps({"sessionId": self.name, "c": self.name, "n": self.n})
            try:
                status, _, _ = request(self.port, "POST", "/websocket/trace", body,
                                       {"Content-Type": "application/json"}, timeout=10)
            except (OSError, http.client.HTTPException):
                self.unanswered.append(self.n)
                self._halt.wait(RECONNECT_S)
                continue
            if status == 200:
                self.acked.append((self.n, time.monotonic()))
            else:
                self.refused.append((self.n, status))
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join(STOP_WAIT_S * 3)


def deliveries(*ups):
    """{session: [(n, Idempotency-Key), ...]} in the order the upstreams got
    them (one after the other), answered 2xx, for messages that carry
    {"c", "n"}."""
    out = {}
    for r in [r for up in ups for r in up.requests()]:
        if not 200 <= r["status"] < 300:
            continue
        try:
            body = json.loads(r["body"])
        except ValueError:
            continue
        if not isinstance(body, dict) or "n" not in body:
            continue
        path = r["path"]
        if path.startswith("/?"):
            session = parse_qs(path[2:]).get("sessionId", [""])[0]
        else:
            session = body.get("sessionId", "")
        out.setdefault(session, []).append((body["n"], r["headers"].get("idempotency-key")))
    return out


def backend_deliveries(be):
    """deliveries() for tests/mock_backend.py: {session: [(n, None), ...]} in
    the order the backend got them, text frames on its websockets (the
    session from their upgrade's query) and fallback POSTs alike.  A frame
    has no Idempotency-Key: None."""
    sessions = {u["conn"]: parse_qs(u["query"]).get("sessionId", [""])[0]
                for u in be.upgrades() if u["status"] == 101}
    got = []
    for f in be.frames(opcode="text"):
        got.append((f["time"], f["index"], sessions.get(f["conn"], ""), f["data"]))
    for p in be.posts():
        if p["path"] == "/trace":
            got.append((p["time"], p["index"], None, p["body"]))
    out = {}
    for _, _, session, data in sorted(got, key=lambda g: (g[0], g[1])):
        try:
            body = json.loads(data)
        except ValueError:
            continue
        if not isinstance(body, dict) or "n" not in body:
            continue
        if session is None:
            session = body.get("sessionId", "")
        out.setdefault(session, []).append((body["n"], None))
    return out


def audit(required, got):
    """Compares what must have arrived ({session: set of n}) with deliveries().
    Returns a dict of counts and a list of problems (empty when all holds):
    every required message arrived, each session's messages arrived in order
    (by first arrival), and the copies of one message share one
    Idempotency-Key that no other message has."""
    problems, owner = [], {}
    delivered = duplicates = lost = 0
    for session, seq in got.items():
        first, seen, keys = [], set(), {}
        for n, key in seq:
            keys.setdefault(n, set()).add(key)
            if key is not None and owner.setdefault(key, (session, n)) != (session, n):
                problems.append("key %s names two messages: %r and %r"
                                % (key, owner[key], (session, n)))
            if n not in seen:
                seen.add(n)
                first.append(n)
            else:
                duplicates += 1
        delivered += len(first)
        if first != sorted(first):
            problems.append("session %s out of order: %s" % (session, first[:50]))
        for n, ks in keys.items():
            if len(ks) != 1:
                problems.append("session %s message %s arrived with keys %s" % (session, n, ks))
    for session, need in required.items():
        have = {n for n, _ in got.get(session, [])}
        missing = sorted(need - have)
        lost += len(missing)
        if missing:
            problems.append("session %s lost %d: %s" % (session, len(missing), missing[:20]))
    return {"delivered": delivered, "duplicates": duplicates, "lost": lost}, problems


def wait_delivered(ups, required, timeout):
    """Waits until every required message arrived at the upstream, or the
    upstreams in the list ups (or the backend mock); returns deliveries()."""
    end = time.monotonic() + timeout
    while True:
        if hasattr(ups, "frames") or (isinstance(ups, list) and hasattr(ups[0], "frames")):
            got = {}
            for be in ups if isinstance(ups, list) else [ups]:
                for session, seq in backend_deliveries(be).items():
                    got.setdefault(session, []).extend(seq)
        else:
            got = deliveries(*(ups if isinstance(ups, list) else [ups]))
        if all(need <= {n for n, _ in got.get(s, [])} for s, need in required.items()):
            return got
        if time.monotonic() >= end:
            return got
        time.sleep(0.2)

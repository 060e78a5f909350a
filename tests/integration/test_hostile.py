"""The hostile-input run of issue 14, replayed: each way in that it found is
now refused with a clear status or close code and a log line, nothing from
it is stored, and the key's and session's legitimate traffic keeps flowing.

1. a POST authorised on its query's key but judged upstream by its body's
   projectId (and a key banned for a message whose key it never saw);
3. poison bytes in the query, headers and sessionId that could never be
   sent upstream and would block the session and fake an outage;
7. a parameter given twice, or apiKey and token together;
6. a state directory prepared by someone else: a symlink, another user's
   directory, symlinks planted for the key's temp file and the database;
5. connections that exhaust the open-file limit (the listener spun on
   EMFILE, logging each attempt);
2. empty pings whose pongs are never read (0 bytes of payload each, so the
   byte cap never saw them);
and the minor points: control bytes in passed-on headers, a frame header
that claims 2^63 - 1 bytes and sends nothing after it, two Content-Length
headers that disagree."""
import json
import os
import resource
import sqlite3
import socket
import struct
import sys
import time

sys.path.insert(0, os.environ.get("TESTS_SRCDIR", os.path.join(os.path.dirname(__file__), "..")))
from relaytest import (RELAY_BIN, RawWS, Relay, client_context, done, eq, ok, raw_request,  # noqa: E402
                       diag, request, rss_kb, start_upstream, tempdir, wait_until)

ORIGIN = "https://app.example"
HEADERS = {"Content-Type": "application/json", "Origin": ORIGIN}


def post(relay, body, path="/websocket/trace", headers=None):
    h = dict(HEADERS)
    h.update(headers or {})
    return request(relay.port, "POST", path, json.dumps(body) if isinstance(body, dict) else body, h)[0]


def rating(session, project):
    return {"sessionId": session, "projectId": project, "data": ["userRating", None, {"rating": 5}, 1]}


def stored(up, needle):
    """Upstream requests whose path or body mention needle."""
    return [r for r in up.requests() if needle in r["path"] or needle.encode() in r["body"]]


def cpu_s(relay):
    """User + system CPU seconds the relay has used."""
    with open("/proc/%d/stat" % relay.proc.pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def flood_idle(relay, n):
    """n idle TCP connections (no TLS handshake): 3 descriptors each in the relay."""
    socks = []
    for _ in range(n):
        try:
            socks.append(socket.create_connection(("127.0.0.1", relay.port), timeout=5))
        except OSError:
            break
    return socks


def statuses(relay, data, timeout=3.0):
    """Sends data on one TLS connection and reads until the relay closes it
    (or timeout): the status codes of every answer in what came back."""
    raw = socket.create_connection(("127.0.0.1", relay.port), timeout=timeout)
    s = client_context().wrap_socket(raw)
    got = b""
    try:
        s.sendall(data)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    except OSError:
        pass
    finally:
        s.close()
    return [int(got[i + 9:i + 12]) for i in range(len(got)) if got.startswith(b"HTTP/1.1 ", i)]


def start_in(state_dir):
    """Starts a relay on state_dir; returns it and whether it came up."""
    r = Relay(up, state_dir=state_dir).start(wait=False)
    live = r.wait_live(15)
    return r, live


def upgrade(relay, query, headers=()):
    return RawWS(relay.port, "/websocket?" + query, origin=ORIGIN, headers=headers)


def raw_post(relay, path, extra_headers, body):
    head = ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: %s\r\nContent-Length: %d\r\n%s\r\n"
            % (path, ORIGIN, len(body), "".join("%s\r\n" % h for h in extra_headers)))
    return raw_request(relay.port, head.encode("latin-1"), body.encode())


# ASan keeps freed memory in quarantine (256 MB by default) and doubles what
# the relay touches; a small quarantine and a looser bound keep the memory
# check meaningful under it (as in test_security.py).
os.environ["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=8"
with open(RELAY_BIN, "rb") as f:
    RSS_BOUND_KB = (64 if b"__asan_init" in f.read() else 32) * 1024
up = start_upstream()
relay = Relay(up, args=["--allowed-keys", "goodkey,key2,key3", "--ready-max-upstream-down-s", "2"]).start()

# --- 1. a POST's key is the one the upstream judges ------------------------------------------
eq(post(relay, rating("h1-evil", "evilkey"), "/websocket/trace?apiKey=goodkey"), 401,
   "1: an allowed key in the query does not let another projectId in (401)")
eq(post(relay, rating("h1-evil2", "evilkey"), "/websocket/trace?token=goodkey"), 401,
   "1: nor as token=")
ok("the query's key is not the body's projectId" in relay.log_text(), "1: and says why in the log")
eq(post(relay, rating("h1-good", "goodkey"), "/websocket/trace?apiKey=goodkey"), 200,
   "1: the same key in the query and the body passes")
ok(wait_until(lambda: stored(up, "h1-good"), 10), "1: and is forwarded")
# A POST without projectId: the upstream is not given the query's key, so
# its refusal must not ban that key.
up.behave(status=401, count=1)
eq(post(relay, {"sessionId": "h1-nokey", "data": []}, "/websocket/trace?apiKey=goodkey"), 200,
   "1: a POST with no projectId, allowed by its query's key, is stored")
ok(wait_until(lambda: stored(up, "h1-nokey"), 10), "1: the upstream refuses it (401)")
ok(wait_until(lambda: "reason=rejected status=401" in relay.log_text(), 10),
   "1: it is dead-lettered as rejected")
ws = upgrade(relay, "apiKey=goodkey&sessionId=h1-after")
hello = ws.hello() or {}
ok("connectionId" in hello and "error" not in hello,
   "1: and goodkey is not banned: its SDKs still get a normal hello", hello)
ws.send(1, b'["h1-after-msg"]')
ok(wait_until(lambda: stored(up, "h1-after-msg"), 10), "1: and their messages are forwarded")
ws.bye()
time.sleep(0.3)
eq(stored(up, "h1-evil"), [], "1: nothing of the refused POSTs reached the upstream")

# --- 7. a parameter given twice, or two keys ---------------------------------------------------
for q, what in (("apiKey=goodkey&apiKey=evilkey", "apiKey twice"),
                ("apiKey=goodkey&api%4Bey=evilkey", "apiKey and api%4Bey"),
                ("apiKey=goodkey&token=evilkey", "apiKey and token"),
                ("apiKey=goodkey&sessionId=h7-a&sessionId=h7-b&sessionId=h7-c", "sessionId twice")):
    ws = upgrade(relay, q + ("" if "sessionId" in q else "&sessionId=h7-dup"))
    eq(ws.status, 400, "7: an upgrade with %s gets 400" % what)
    ws.close()
eq(post(relay, rating("h7-post", "goodkey"), "/websocket/trace?apiKey=goodkey&apiKey=evilkey"), 400,
   "7: so does a POST")
ok("a query parameter given twice" in relay.log_text(), "7: logged with the reason")
time.sleep(0.3)
eq(stored(up, "h7-"), [], "7: nothing of them is stored or forwarded")

# (key3: a key of its own, so that what point 1 did to goodkey on an old relay
# does not hide what this does.)
# --- 3. what could never be sent is never stored ------------------------------------------------
victim = upgrade(relay, "apiKey=key3&sessionId=h3-victim")
ok("connectionId" in (victim.hello() or {}), "3: the victim's websocket is open")
victim.send(1, b'["h3-first"]')
ok(wait_until(lambda: stored(up, "h3-first"), 10), "3: its first message is forwarded")
for junk, what in (("&x=a b", "a raw space"), ("&x=a\tb", "a tab"), ("&x=a\x01b", "a control byte"),
                   ("&x=\xe9", "a raw byte over 0x7e"), ("&x=a#b", "'#'")):
    attacker = RawWS(relay.port, "/websocket?apiKey=key3&sessionId=h3-victim" + junk, origin=ORIGIN)
    eq(attacker.status, 400, "3: joining the victim's session with %s in the query gets 400" % what)
    if attacker.status == 101:   # an old relay: the poison message goes in ahead of the victim's
        attacker.hello()
        attacker.send(1, b'["h3-poison"]')
        time.sleep(0.2)
    attacker.close()
for name, value in (("User-Agent", "Mozilla\x01"), ("User-Agent", "a\x7fb")):
    ws = upgrade(relay, "apiKey=key3&sessionId=h3-ua", headers=((name, value),))
    eq(ws.status, 400, "3: an upgrade whose %s has a control byte gets 400" % name)
    ws.close()
ok("a byte in the query that a URL cannot carry" in relay.log_text()
   and "a control byte in a header" in relay.log_text(), "3: each refusal is logged with why")
victim.send(1, b'["h3-second"]')
ok(wait_until(lambda: stored(up, "h3-second"), 10),
   "3: the victim's later messages keep flowing")
time.sleep(2.5)
eq(relay.get("/healthcheck")[0], 200, "3: /healthcheck stays 200 (ready-max-upstream-down-s 2)")
ok("upstream_down" not in relay.log_text(), "3: no upstream outage was seen")
victim.bye()

long_session = "s" * 100000
eq(post(relay, rating(long_session, "goodkey"), "/websocket/trace"), 413,
   "3: a 100 KB sessionId by POST gets 413")
eq(post(relay, rating("s" * 257, "goodkey")), 413, "3: one of 257 bytes too (max-session-id-bytes 256)")
eq(post(relay, rating("h3-" + "s" * 253, "goodkey")), 200,
   "3: one of 256 bytes passes")
eq(post(relay, rating("h3 space", "goodkey")), 400, "3: a sessionId with a space gets 400")
ws = upgrade(relay, "apiKey=goodkey&sessionId=" + "s" * 300)
eq(ws.status, 413, "3: a websocket sessionId over the limit gets 413")
ws.close()
body = json.dumps(rating("h3-ctype", "goodkey"))
eq(raw_post(relay, "/websocket/trace", ["Content-Type: application/json\x01"], body), 400,
   "3: a POST whose Content-Type has a control byte gets 400")
eq(raw_post(relay, "/websocket/trace", ["Content-Type: application/json",
                                        "User-Agent: x\x02"], body), 400,
   "3: and one whose User-Agent has one")
body = json.dumps(rating("h3-smuggle", "goodkey")).encode()
smuggled = b"GET /healthcheck/live HTTP/1.1\r\nHost: x\r\n\r\n"
eq(statuses(relay, b"POST /websocket/trace HTTP/1.1\r\nHost: x\r\nOrigin: " + ORIGIN.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\nContent-Length: %d\r\n\r\n"
            % (len(body), len(body) + len(smuggled)) + body + smuggled), [400],
   "two different Content-Length headers: 400, and nothing after it is read as a request")
ok("two different Content-Length headers" in relay.log_text(), "logged with why")
eq(statuses(relay, b"POST /websocket/trace HTTP/1.1\r\nHost: x\r\nOrigin: " + ORIGIN.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % (len(body), len(body)) + body), [200],
   "two equal ones are one length (RFC 9112 allows it)")
time.sleep(0.5)
ok(not any(len(r["body"]) > 90000 for r in up.requests()), "3: the long sessionId was not forwarded")
eq(stored(up, "h3-ctype") + stored(up, "h3 space"), [], "3: nor any of the refused POSTs")

# (key2: a key of its own, as key3 above.)
# --- 2. empty pings, never read: bounded in count, not only in bytes -----------------------
rss_before = rss_kb(relay)
ws = RawWS(relay.port, "/websocket?apiKey=key2&sessionId=h2-pings", origin=ORIGIN, rcvbuf=4096)
ws.hello()
empty_ping = bytes([0x89, 0x80]) + b"\0\0\0\0"
cut = False
try:
    for _ in range(300):
        ws.send_raw(empty_ping * 10000)   # 60 KB, 10,000 pings a write: 18 MB in all
except OSError:
    cut = True
ws.close()
ok(relay.get("/healthcheck/live")[0] == 200,
   "2: a client that sends empty pings and never reads the pongs leaves the relay alive%s"
   % (" (cut off)" if cut else " (one pong per read, the newest)"))
rss_after = rss_kb(relay)
ok(rss_after - rss_before < RSS_BOUND_KB,
   "2: the relay's memory stays bounded (RSS %d -> %d KB)" % (rss_before, rss_after))
ws = upgrade(relay, "apiKey=key2&sessionId=h2-reader")
ws.hello()
ws.send(9, b"one")
eq(ws.recv(), (0xa, b"one"), "2: a ping gets its pong, with its payload")
for burst in range(20):
    ws.send_raw(b"".join(bytes([0x89, 0x80 | 4]) + b"\0\0\0\0" + b"%04d" % (burst * 50 + i)
                         for i in range(50)))
pongs, last = 0, None
try:
    while last != b"0999":
        op, payload = ws.recv()
        if op == 0xa:
            pongs, last = pongs + 1, payload
except (EOFError, OSError):
    pass
ok(last == b"0999" and pongs <= 1000,
   "2: 1,000 pings in bursts: the newest is answered (%d pongs in all, not one per ping)" % pongs)
ws.send(1, b'["h2-reader-msg"]')
ok(wait_until(lambda: stored(up, "h2-reader-msg"), 10), "2: and stays connected")
ws.bye()

# --- a frame header claiming 2^63 - 1 bytes, and nothing after it --------------------------
ws = upgrade(relay, "apiKey=key2&sessionId=h-huge")
ws.hello()
t0 = time.time()
ws.send_raw(bytes([0x81, 0xff]) + struct.pack("!Q", (1 << 63) - 1) + os.urandom(4))
code = (ws.close_code() or (None,))[0]
elapsed = time.time() - t0
eq(code, 1009, "a frame header alone claiming 2^63-1 bytes: close 1009")
ok(code == 1009 and elapsed < 3, "at once, not at the ping timeout (%.1f s)" % elapsed)
ws.close()

eq(relay.stop(), 0, "the relay stops cleanly")

# --- 3, in the forwarder: a row that can never be sent (a queue written
# before these checks) is dead-lettered, not retried forever ---------------------------------
state = tempdir("relay-poison-")
seed = Relay(up, state_dir=state).start()
eq(seed.stop(), 0, "3: a relay made its queue and stopped")
db = sqlite3.connect(os.path.join(state, "queue.db"))
for target, body in (("/?apiKey=k&sessionId=h3-old&x=a b", b"h3-old-poison"),
                     ("/?apiKey=k&sessionId=h3-old&x=a\x01b", b"h3-old-poison2"),
                     ("/?apiKey=k&sessionId=h3-old", b"h3-old-after")):
    db.execute("INSERT INTO messages (received_ms, session, target, content_type, api_key, body) "
               "VALUES (?, 'h3-old', ?, 'text/plain; charset=utf-8', 'k', ?)",
               (int(time.time() * 1000), target, body))
db.commit()
db.close()
old = Relay(up, state_dir=state, args=["--ready-max-upstream-down-s", "2"]).start()
ok(wait_until(lambda: stored(up, "h3-old-after"), 10),
   "3: the session's next message is forwarded past the unsendable ones")
ok(old.log_text().count("reason=unsendable") == 2, "3: both are dead-lettered as unsendable")
eq(stored(up, "h3-old-poison"), [], "3: and never reach the upstream")
time.sleep(2.5)
eq(old.get("/healthcheck")[0], 200, "3: /healthcheck stays 200: the upstream was never down")
ok("upstream_down" not in old.log_text(), "3: no upstream outage is logged")
eq(old.stop(), 0, "3: that relay stops cleanly")

# --- 5. file descriptors ----------------------------------------------------------------------
# At 257 open files an old relay's accept() failed with EMFILE in a loop:
# 0.9 CPU-seconds and 500,000 log lines in 3 s.
small = Relay(up, nofile=257).start()
fds_idle = len(os.listdir("/proc/%d/fd" % small.proc.pid))
ok("event=max_connections_lowered from=10000" in small.log_text(),
   "5: max-connections is sized from the open-file limit at start, and the log says so")
socks = flood_idle(small, 300)
c0 = cpu_s(small)
time.sleep(3)
used = cpu_s(small) - c0
ok(used < 0.5, "5: 300 idle connections at nofile 257 leave the relay idle (%.2f CPU-s in 3 s)" % used)
lines = small.log_text().count("out of file descriptors")
ok(lines <= 5, "5: and the log quiet (%d lines about descriptors)" % lines)
for s in socks:
    s.close()
ok(wait_until(lambda: small.get("/healthcheck/live")[0] == 200, 10), "5: /healthcheck answers once they leave")
# The limit lowered under a running relay: accept() itself fails, or the
# socketpair after it, and the listener pauses instead of spinning (an old
# relay, out of descriptors for the socketpair, accepted and dropped the
# whole backlog one connection at a time).
# Room for exactly ten connections (3 descriptors each): the eleventh
# accept() is the one that fails; with one descriptor more, its socketpair.
# Counted once the relay has let go of the flood above (slow under the
# sanitizers, with another test beside it: twice in ten CI runs 10 s was
# not enough): connections it still held would count against
# max-connections, and the next ones be refused, not fail.
for spare, step in ((0, "accept()"), (1, "the socketpair")):
    released = wait_until(lambda: len(os.listdir("/proc/%d/fd" % small.proc.pid)) <= fds_idle, 30)
    held = len(os.listdir("/proc/%d/fd" % small.proc.pid))
    limit = held + 30 + spare
    resource.prlimit(small.proc.pid, resource.RLIMIT_NOFILE, (limit, 257))
    log_before = len(small.log_text())
    socks = flood_idle(small, 100)
    c0 = cpu_s(small)
    time.sleep(3)
    used = cpu_s(small) - c0
    ok(used < 0.5, "5: out of descriptors at %s, the listener backs off (%.2f CPU-s in 3 s)"
       % (step, used))
    text = small.log_text()[log_before:]
    paused = text.count("event=accept_paused")
    refused = text.count("event=connection_refused")
    if not ok(0 < paused <= 5 and "also_paused_since_last_line=" in text and refused == 0,
              "5: and logs it once a second with a count (%d lines); the backlog waits, "
              "not refused one by one (%d refusals)" % (paused, refused)):
        diag("descriptors: idle %d, before the flood %d (released: %s), limit %d, now %d; "
             "%d connections made" % (fds_idle, held, released, limit,
                                      len(os.listdir("/proc/%d/fd" % small.proc.pid)),
                                      len(socks)))
        for line in text.splitlines()[-15:]:
            diag("log: " + line[:300])
    for s in socks:
        s.close()
    resource.prlimit(small.proc.pid, resource.RLIMIT_NOFILE, (257, 257))
    # The next round's first line must not fall in this one's second.
    time.sleep(1.1)
ok(wait_until(lambda: small.get("/healthcheck/live")[0] == 200, 10), "5: and accepts again once they leave")
eq(small.stop(), 0, "5: that relay stops cleanly too")

# --- 6. the state directory ---------------------------------------------------------------------
real = tempdir("relay-real-")
link = os.path.join(tempdir("relay-link-"), "state")
os.symlink(real, link)
r, live = start_in(link)
ok(not live and "is a symlink" in r.log_text(), "6: a state directory that is a symlink is refused")
r.kill()
eq(os.listdir(real), [], "6: and nothing is written through it")

if os.geteuid() == 0:
    foreign = tempdir("relay-foreign-")
    os.chmod(foreign, 0o755)
    os.chown(foreign, 54321, 54321)
    r, live = start_in(foreign)
    ok(not live and "owned by another user" in r.log_text(),
       "6: a state directory owned by another user is refused (the relay runs as root)")
    r.kill()
    eq((os.listdir(foreign), os.stat(foreign).st_mode & 0o777), ([], 0o755),
       "6: and it is neither chmod'ed nor written into")
else:
    ok(True, "6: (not root: the foreign-owner check needs chown) # SKIP")
    ok(True, "6: # SKIP")

state = tempdir("relay-planted-")
victim = os.path.join(tempdir("relay-victim-"), "victim")
with open(victim, "w") as f:
    f.write("root's file\n")
os.symlink(victim, os.path.join(state, "tls-key.pem.tmp"))
r, live = start_in(state)
ok(live, "6: a symlink planted as the key's temp file does not stop the relay")
with open(victim) as f:
    eq(f.read(), "root's file\n", "6: and the file it points to does not get the private key")
ok(os.path.isfile(os.path.join(state, "tls-key.pem")) and not os.path.islink(os.path.join(state, "tls-key.pem")),
   "6: the key is a file of its own")
r.stop()

state = tempdir("relay-planted-db-")
target = os.path.join(tempdir("relay-victim-"), "elsewhere.db")
os.symlink(target, os.path.join(state, "queue.db"))
r, live = start_in(state)
ok(not live and "queue.db" in r.log_text() and "symlink" in r.log_text(),
   "6: a queue.db that is a symlink is refused")
r.kill()
ok(not os.path.exists(target), "6: and nothing is created where it points")
done()

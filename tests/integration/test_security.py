"""Hostile input and access control against the real relay: for each rule,
the attack, the refusal, and that nothing was stored or forwarded.

Keys and origins, per-client limits behind trusted proxies and without
them, slow and greedy clients, malformed frames and bodies, TLS versions
and renegotiation, file modes and upstream certificate checks."""
import json
import os
import shutil
import signal
import socket
import ssl
import stat
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.environ.get("TESTS_SRCDIR", os.path.join(os.path.dirname(__file__), "..")))
from relaytest import (CERTS, RELAY_BIN, RawWS as WS, Relay, client_context, diag, done, eq, ok,  # noqa: E402
                       raw_request, read_status, request, rss_kb, start_upstream, tempdir,
                       tls_connect, wait_until)

ORIGIN = "https://app.example"
EVIL = "https://evil.example"
JSON_HEADERS = {"Content-Type": "application/json", "Origin": ORIGIN}


def post(relay, body, path="/websocket/trace", headers=None):
    h = dict(JSON_HEADERS)
    h.update(headers or {})
    return request(relay.port, "POST", path, json.dumps(body) if isinstance(body, dict) else body, h)


def rating(session, project="goodkey"):
    return {"sessionId": session, "projectId": project, "data": ["userRating", None, {"rating": 5}, 1]}


def stored(up, needle):
    """Upstream requests whose path or body mention needle."""
    return [r for r in up.requests() if needle in r["path"] or needle.encode() in r["body"]]


def alive(relay):
    try:
        return relay.proc.poll() is None and request(relay.port, "GET", "/healthcheck/live", timeout=5)[0] == 200
    except OSError:
        return False


# ASan keeps freed memory in quarantine on purpose (256 MB by default); a
# small one lets the memory checks below see what the relay really holds.
os.environ["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=8"
# Even so ASan's allocator and shadow memory double what the first burst of
# traffic touches (measured: ~17 MB plain, ~40 MB under ASan, then flat).
with open(RELAY_BIN, "rb") as f:
    RSS_BOUND_KB = (64 if b"__asan_init" in f.read() else 32) * 1024
up = start_upstream()
state = tempdir("relay-secure-")
keys_file = os.path.join(tempdir("relay-keys-"), "keys")
with open(keys_file, "w") as f:
    f.write("# allowed keys\nfilekey\n")
main = Relay(up, state_dir=state, args=[
    "--allowed-keys", "goodkey", "--allowed-keys-file", keys_file,
    "--allowed-origins", ORIGIN + ", https://other.example", "--request-timeout-s", "3"]).start()

# --- API key allowlist: websocket ---------------------------------------------------------
ws = WS(main.port, "/websocket?apiKey=badkey&sessionId=sec-badkey")
eq(ws.status, 101, "a websocket with a key not on the allowlist is still upgraded (the SDK's way)")
hello = ws.hello()
ok(hello and "error" in hello and "connectionId" not in hello,
   "its hello is {\"error\": ...}, which stops the SDK from retrying", hello)
try:
    ws.send(1, b'["stolen"]')
except OSError:
    pass
eq((ws.close_code() or (None,))[0], 1008, "and it is closed with 1008")
ws.close()
ws = WS(main.port, "/websocket?sessionId=sec-nokey&token=filekey")
ok(ws.status == 101 and "connectionId" in (ws.hello() or {}), "a key from allowed-keys-file is accepted")
ws.send(1, b'["ok-file"]')
ws.send(8, struct.pack("!H", 1000))
ws.close_code()
ws.close()

# --- API key allowlist: fallback POST ------------------------------------------------------
status, h, body = post(main, rating("sec-post-bad", "badproj"))
eq(status, 401, "a fallback POST whose projectId is not an allowed key gets 401")
ok(b"error" in body and h.get("access-control-allow-origin") == ORIGIN,
   "with a JSON error the page can read", (h, body))
eq(post(main, rating("sec-post-q", "goodkey"), path="/websocket/trace?apiKey=badkey")[0], 401,
   "an apiKey in the query that is not allowed gets 401 (the body's projectId does not help)")
eq(post(main, {"sessionId": "sec-post-none", "data": []})[0], 401, "a POST without any key gets 401")
eq(post(main, rating("sec-post-good", "goodkey"))[0], 200, "an allowed key's POST is taken")

# SIGHUP reloads the key file.
eq(post(main, rating("sec-post-new", "newkey"))[0], 401, "a key not yet in the file: 401")
with open(keys_file, "w") as f:
    f.write("filekey\nnewkey\n")
main.proc.send_signal(signal.SIGHUP)
ok(wait_until(lambda: "event=keys_reloaded" in main.log_text(), 10), "SIGHUP reloads allowed-keys-file")
eq(post(main, rating("sec-post-new2", "newkey"))[0], 200, "after the reload the new key is taken")
with open(keys_file, "w") as f:
    f.write("x" * 300 + "\n")
main.proc.send_signal(signal.SIGHUP)
ok(wait_until(lambda: "event=keys_reload_failed" in main.log_text(), 10), "a bad key file is refused on reload")
eq(post(main, rating("sec-post-new3", "newkey"))[0], 200, "and the keys in force stay")

# --- origin allowlist ------------------------------------------------------------------------
ws = WS(main.port, "/websocket?apiKey=goodkey&sessionId=sec-evil", origin=EVIL)
eq(ws.status, 403, "a websocket from a page origin not on the allowlist gets 403 before upgrading")
ok("access-control-allow-origin" not in ws.headers, "without CORS headers", ws.headers)
ws.close()
ws = WS(main.port, "/websocket?apiKey=goodkey&sessionId=sec-noorigin", origin=None)
eq(ws.status, 403, "and so does one without any Origin (browsers always send it)")
ws.close()
status, h, _ = request(main.port, "OPTIONS", "/websocket/trace",
                       headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"})
ok(status == 403 and "access-control-allow-origin" not in h, "a preflight from another origin: 403, no CORS", h)
status, h, _ = request(main.port, "OPTIONS", "/websocket/trace",
                       headers={"Origin": "https://OTHER.example", "Access-Control-Request-Method": "POST"})
ok(status == 204 and h.get("access-control-allow-origin") == "https://OTHER.example",
   "an allowed origin's preflight (any case) gets 204 with CORS", (status, h))
status, h, _ = post(main, rating("sec-evil-post"), headers={"Origin": EVIL})
ok(status == 403 and "access-control-allow-origin" not in h, "a POST from another origin: 403, no CORS", h)

# --- X-Forwarded-For from an untrusted peer ------------------------------------------------
status, _, _ = post(main, rating("sec-xff"), headers={"X-Forwarded-For": "6.6.6.6, not-an-ip, 7.7.7.7"})
eq(status, 200, "a POST with a spoofed X-Forwarded-For is taken")
ok(wait_until(lambda: stored(up, "sec-xff"), 10), "and forwarded")
got = stored(up, "sec-xff")
if got:
    eq(got[0]["headers"].get("x-forwarded-for"), "6.6.6.6, 7.7.7.7, 127.0.0.1",
       "upstream gets the client's well-formed entries and the real peer, never the malformed one")

# --- frames no client should send ------------------------------------------------------------
for length, want, what in ((1 << 63, 1002, "2^63 (the reserved top bit set)"),
                           ((1 << 63) - 1, 1009, "2^63-1")):
    ws = WS(main.port, "/websocket?apiKey=goodkey&sessionId=sec-huge")
    ws.hello()
    ws.send_raw(bytes([0x81, 0xff]) + struct.pack("!Q", length) + os.urandom(4) + b"x" * 64)
    eq((ws.close_code() or (None,))[0], want, "a frame header claiming %s bytes: close %d" % (what, want))
    ws.close()
for bad, what in ((b"\xc3\x28", "a broken sequence"), (b"\xc0\xaf", "an overlong form"),
                  (b"\xed\xa0\x80", "a surrogate"), (b"\xf4\x90\x80\x80", "above U+10FFFF"),
                  (b"ok \xe2\x82", "a truncated tail")):
    ws = WS(main.port, "/websocket?apiKey=goodkey&sessionId=sec-utf8")
    ws.hello()
    ws.send(1, b'["' + bad)
    eq((ws.close_code() or (None,))[0], 1007, "invalid UTF-8 (%s) in a text message: close 1007" % what)
    ws.close()
ws = WS(main.port, "/websocket?apiKey=goodkey&sessionId=sec-utf8")
ws.hello()
ws.send(1, b'["\xe2\x82', fin=False)
ws.send(0, b'"]')
eq((ws.close_code() or (None,))[0], 1007, "invalid UTF-8 split over fragments: close 1007")
ws.close()
ok(alive(main), "the relay is alive after the malformed frames")

# --- a client that never reads cannot make the relay buffer -------------------------------
rss_before = rss_kb(main)
ws = WS(main.port, "/websocket?apiKey=goodkey&sessionId=sec-noread", rcvbuf=4096)
ws.hello()
ping = bytes([0x89, 0x80 | 125]) + b"\0\0\0\0" + b"p" * 125
cut = False
try:
    for _ in range(200):
        ws.send_raw(ping * 400)   # 52 KB of pings per write, never reading the pongs
except OSError:
    cut = True
# The relay answers only the newest ping of each read (RFC 6455 5.5.3), so
# such a client no longer makes it queue a pong per ping; if pongs pile up
# all the same (ws-max-queued-frames), it is cut off and the log says why.
ok(cut or 'reason="peer not reading"' not in main.log_text() or
   wait_until(lambda: 'reason="peer not reading"' in main.log_text(), 10),
   "a client that sends pings and never reads the pongs costs one pong per read, or is cut off")
ws.close()
ok(alive(main), "and the relay carries on")
rss_after = rss_kb(main)
ok(rss_after - rss_before < RSS_BOUND_KB, "the relay's memory stays bounded (RSS %d -> %d KB)" % (rss_before, rss_after))

# --- a body of 100 MB ---------------------------------------------------------------------
before = len(up.requests())
rss_before = rss_kb(main)
head = (b"POST /websocket/trace HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Origin: " + ORIGIN.encode() + b"\r\nContent-Length: 104857600\r\n\r\n")
eq(raw_request(main.port, head), 413, "a declared body of 100 MB gets 413 before it is sent")
# A client that goes on sending after its answer: the relay has shut its
# side (the client reads the answer, then EOF) and drops what comes for
# the linger time (2 s, swept once a second), then closes.
s = tls_connect(main.port)
s.sendall(head)
status = read_status(s)
t0 = time.monotonic()
cut_after = None
try:
    while time.monotonic() - t0 < 15:
        s.sendall(b"{" * 16384)
        time.sleep(0.02)
except OSError:
    cut_after = time.monotonic() - t0
s.close()
ok(status == 413 and cut_after is not None and 1.0 < cut_after < 8,
   "a client still sending after its 413 is read from for the linger time, then cut off "
   "(%s, cut off after %s s)" % (status, cut_after and round(cut_after, 1)))
head = (b"POST /websocket/trace HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Origin: " + ORIGIN.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
chunk = b"%x\r\n%s\r\n" % (1 << 20, b"{" * (1 << 20))
t0 = time.monotonic()
raw = socket.create_connection(("127.0.0.1", main.port), timeout=20)
s = client_context().wrap_socket(raw)
sent, answer, cut = 0, b"", False
try:
    s.sendall(head)
    while sent < 100 and time.monotonic() - t0 < 60:
        s.sendall(chunk)
        sent += 1
    s.sendall(b"0\r\n\r\n")
    answer = s.recv(64)
except OSError:
    cut = True
s.close()
# Past max-body-bytes the rest is read and dropped, then (4 limits on)
# the relay ends the connection without an answer and drops what still
# comes for the linger time: the client meets EOF, or a reset if slower.
ok(cut or answer == b"" or answer.startswith(b"HTTP/1.1 413"),
   "a chunked body of 100 MB is refused with 413 or cut off (%d MB sent, answer %r)"
   % (sent, answer[:12]))
rss_after = rss_kb(main)
ok(rss_after - rss_before < RSS_BOUND_KB, "the relay did not hold it (RSS %d -> %d KB)" % (rss_before, rss_after))
ok(alive(main), "the relay is alive after the 100 MB bodies")

# --- slow clients ----------------------------------------------------------------------------
loris = client_context().wrap_socket(socket.create_connection(("127.0.0.1", main.port), timeout=10))
silent = socket.create_connection(("127.0.0.1", main.port), timeout=10)   # never starts TLS
keep = WS(main.port, "/websocket?apiKey=goodkey&sessionId=sec-slowok")
keep.hello()
t0 = time.monotonic()
head = b"GET /healthcheck HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200 + b"\r\n\r\n"
closed_after, answer = None, b""
for i in range(len(head)):
    try:
        loris.send(head[i:i + 1])   # one byte every 0.2 s: never idle for long
        loris.settimeout(0.2)
        answer = loris.recv(64)
        if not answer:
            closed_after = time.monotonic() - t0
            break
    except (socket.timeout, ssl.SSLWantReadError):
        continue
    except OSError:
        closed_after = time.monotonic() - t0
        break
    if time.monotonic() - t0 > 15:
        break
loris.close()
ok(closed_after is not None and closed_after < 6 and not answer.startswith(b"HTTP"),
   "a head sent byte by byte is cut off after request-timeout-s (after %s s)" % closed_after)
silent.settimeout(10)
try:
    eq(silent.recv(16), b"", "a connection that never starts TLS is closed too")
except socket.timeout:
    ok(False, "a connection that never starts TLS is closed too (still open after 10 s)")
except ConnectionError as e:  # a reset is a close too; a timeout above is not
    ok(True, "a connection that never starts TLS is closed too (%s)" % e)
silent.close()
ok("event=request_timeout" in main.log_text(), "the log says why")
keep.send(1, b'["still-here"]')
keep.send(8, struct.pack("!H", 1000))
eq((keep.close_code() or (None,))[0], 1000, "a websocket open longer than request-timeout-s is not touched")
keep.close()
ok(wait_until(lambda: stored(up, "sec-slowok"), 10), "and its message is forwarded")

# --- heads too large ----------------------------------------------------------------------
big = b"GET /healthcheck HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n"
eq(raw_request(main.port, big), 431, "a 40 KB header over max-header-bytes gets 431")
many = b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(4000)) + b"\r\n"
eq(raw_request(main.port, many), 431, "4000 headers get 431 too")

# --- TLS: 1.2 at least, no renegotiation ----------------------------------------------------
for version, want in ((ssl.TLSVersion.TLSv1_1, False), (ssl.TLSVersion.TLSv1_2, True),
                      (ssl.TLSVersion.TLSv1_3, True)):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        ctx.minimum_version = ctx.maximum_version = version
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError) as e:
        diag("this Python cannot offer %s: %s" % (version.name, e))
        continue
    try:
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", main.port), timeout=5)) as t:
            got = t.version()
    except ssl.SSLError as e:
        got = None
        if "NO_PROTOCOLS_AVAILABLE" in str(e) or "NO_SUPPORTED_VERSIONS" in str(e):
            diag("%s not offered by this client: %s" % (version.name, e))
            continue
    eq(got is not None, want, "%s: %s" % (version.name, "accepted" if want else "refused by the relay"))
if shutil.which("openssl"):
    def s_client(script):
        p = subprocess.Popen(["openssl", "s_client", "-connect", "127.0.0.1:%d" % main.port, "-tls1_2"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            for line in script:
                time.sleep(0.7)
                p.stdin.write(line)
                p.stdin.flush()
            time.sleep(1.0)
        except OSError:
            pass
        p.kill()
        return p.communicate()[0]
    req = b"GET /healthcheck/live HTTP/1.1\r\nHost: x\r\n\r\n"
    out = s_client([req])
    ok(b'{"status":"live"}' in out, "(control) an HTTP request over openssl s_client is answered")
    out = s_client([b"R\n", req])
    ok(b"RENEGOTIATING" in out and b'{"status":"live"}' not in out,
       "a client-initiated renegotiation is refused: the connection ends", out[-300:])
else:
    diag("no openssl binary: renegotiation not checked")

# --- files -----------------------------------------------------------------------------------
eq(stat.S_IMODE(os.stat(state).st_mode), 0o700, "the state directory is 0700")
eq(stat.S_IMODE(os.stat(os.path.join(state, "queue.db")).st_mode), 0o600, "queue.db is 0600")
eq(stat.S_IMODE(os.stat(os.path.join(state, "tls-key.pem")).st_mode), 0o600, "the generated key is 0600")

# Nothing refused above reached the upstream.
time.sleep(0.5)
leaked = [r["path"] + " " + r["body"][:60].decode(errors="replace") for r in up.requests()
          if any(n in r["path"] or n.encode() in r["body"] for n in
                 ("sec-badkey", "stolen", "sec-post-bad", "sec-post-q", "sec-post-none", "sec-post-new\"",
                  "sec-evil", "sec-noorigin", "sec-huge", "sec-utf8", "sec-noread"))]
eq(leaked, [], "nothing that was refused was stored or forwarded")
ok(stored(up, "sec-post-good") and stored(up, "ok-file") and stored(up, "sec-post-new2"),
   "what was allowed was forwarded")
eq(main.stop(), 0, "clean exit")

# A key readable by others: refuse to start.
os.chmod(os.path.join(state, "tls-key.pem"), 0o644)
bad = Relay(up, state_dir=state).start(wait=False)
eq(bad.proc.wait(20), 2, "a generated key that others can read: the relay refuses to start (bad configuration)")
ok("chmod 600" in bad.log_text(), "and says what to do", bad.log_text()[-500:])
keydir = tempdir("relay-key-")
shutil.copy(os.path.join(CERTS, "server-key.pem"), os.path.join(keydir, "key.pem"))
os.chmod(os.path.join(keydir, "key.pem"), 0o604)
bad = Relay(up, args=["--tls-cert", os.path.join(CERTS, "server.pem"),
                      "--tls-key", os.path.join(keydir, "key.pem")]).start(wait=False)
eq(bad.proc.wait(20), 2, "a --tls-key readable by others: the relay refuses to start")
# Its group may read it: Kubernetes' fsGroup and Debian's ssl-cert group.
os.chmod(os.path.join(keydir, "key.pem"), 0o640)
grp = Relay(up, args=["--tls-cert", os.path.join(CERTS, "server.pem"),
                      "--tls-key", os.path.join(keydir, "key.pem")]).start()
eq(grp.stop(), 0, "a --tls-key readable by its group (0640) is used")

# --- per-client limits without trusted proxies: the peer counts ---------------------------
LIMIT = 200
lim = Relay(up, args=["--max-connections-per-ip", str(LIMIT)]).start()
held = []
try:
    for i in range(LIMIT):
        w = WS(lim.port, "/websocket?apiKey=k&sessionId=sec-many-%d" % i,
               headers=[("X-Forwarded-For", "198.51.100.%d" % (i % 250))])
        held.append(w)
    eq(sum(w.status == 101 for w in held), LIMIT, "%d websockets from one address are accepted" % LIMIT)
    w = WS(lim.port, "/websocket?apiKey=k&sessionId=sec-many-over", headers=[("X-Forwarded-For", "203.0.113.50")])
    eq(w.status, 429, "one more is refused with 429 before upgrading, whatever X-Forwarded-For claims")
    ok(w.headers.get("retry-after", "").isdigit(), "with Retry-After", w.headers)
    w.close()
    eq(post(lim, rating("sec-many-post"))[0], 429, "and a POST from that address gets 429 too")
    # Refused at its head, the body unread: the relay lingers until the
    # client has sent it, so its answer is not lost to a reset (it was,
    # for about a third of such POSTs of 100 KB).
    got = []
    for i in range(40):
        try:
            got.append(post(lim, dict(rating("sec-many-big-%d" % i), pad="x" * 100000))[0])
        except OSError as e:
            got.append(type(e).__name__)
    eq(got, [429] * 40, "40 POSTs of 100 KB refused at their head all get their 429")
    held.pop().bye()

    def reopened():
        w = WS(lim.port, "/websocket?apiKey=k&sessionId=sec-many-again")
        held.append(w)
        return w.status == 101
    ok(wait_until(reopened, 5), "once one closes, a new one is accepted")
finally:
    for w in held:
        w.close()
ok("max-connections-per-ip" in lim.log_text(), "the refusals are logged with the limit's name")
eq(lim.stop(), 0, "clean exit")

# --- behind a trusted proxy: the client in X-Forwarded-For counts --------------------------
prox = Relay(up, args=["--trusted-proxy", "127.0.0.0/8", "--trusted-proxy", "10.0.0.0/8",
                       "--max-connections-per-ip", "2"]).start()
a1 = WS(prox.port, "/websocket?apiKey=k&sessionId=sec-prox-1", headers=[("X-Forwarded-For", "203.0.113.9")])
a2 = WS(prox.port, "/websocket?apiKey=k&sessionId=sec-prox-2",
        headers=[("X-Forwarded-For", "203.0.113.9, 10.0.0.5")])
eq([a1.status, a2.status], [101, 101], "two websockets of one client behind the proxies")
a3 = WS(prox.port, "/websocket?apiKey=k&sessionId=sec-prox-3",
        headers=[("X-Forwarded-For", "6.6.6.6, 203.0.113.9")])
eq(a3.status, 429, "a third of the same client is refused, whatever it claims left of the proxy's entry")
a3.close()
a4 = WS(prox.port, "/websocket?apiKey=k&sessionId=sec-prox-4",
        headers=[("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-For", "198.51.100.1")])
eq(a4.status, 101, "a proxy's own X-Forwarded-For header counts, not the first one the client sent")
b1 = WS(prox.port, "/websocket?apiKey=k&sessionId=sec-prox-5", headers=[("X-Forwarded-For", "203.0.113.10")])
eq(b1.status, 101, "another client behind the same proxy is not affected")
a1.hello()
a1.send(1, b'["via-proxy"]')
ok(wait_until(lambda: stored(up, "via-proxy"), 10), "a message through the proxy is forwarded")
got = stored(up, "via-proxy")
if got:
    eq(got[0]["headers"].get("x-forwarded-for"), "203.0.113.9, 127.0.0.1",
       "with the chain as received plus the proxy")
ok("client=203.0.113.9" in prox.log_text() and "client=198.51.100.1" in prox.log_text(),
   "the log names the real clients")
for w in (a1, a2, a4, b1):
    w.close()
eq(prox.stop(), 0, "clean exit")

# --- message rate per client ------------------------------------------------------------------
rate = Relay(up, args=["--max-messages-per-ip-per-s", "4"]).start()
rate_started = time.monotonic()
ws = WS(rate.port, "/websocket?apiKey=k&sessionId=sec-rate")
ws.hello()
try:
    for i in range(100):
        ws.send(1, b'["rate",%d]' % i)
except OSError:
    pass
code = ws.close_code()
ws.close()
eq(code, (1008, "rate limit"), "a websocket over max-messages-per-ip-per-s is closed with 1008 \"rate limit\"")
codes = [post(rate, rating("sec-rate-post", "k"))[0] for _ in range(10)]
ok(codes.count(429) >= 5, "and most POSTs from the same client then get 429", codes)
rate_elapsed = time.monotonic() - rate_started
time.sleep(1.0)
n = len(stored(up, "sec-rate"))
# A full bucket holds 5 s of the rate, and it refills at 4/s meanwhile.
allowance = 4 * 5 + int(4 * rate_elapsed) + 1
ok(n <= allowance, "only the burst allowance was stored (%d of 110, allowance %d)" % (n, allowance))
eq(rate.stop(), 0, "clean exit")

# --- max-connections: a clear refusal in the log ---------------------------------------------
cap = Relay(up, args=["--max-connections", "4"]).start()
socks = [socket.create_connection(("127.0.0.1", cap.port), timeout=5) for _ in range(8)]
ok(wait_until(lambda: 'event=connection_refused reason="max-connections (4) reached"' in cap.log_text(), 5),
   "connections over max-connections are refused, and the log says so")
for s in socks:
    s.close()
eq(cap.stop(), 0, "clean exit")

# --- the upstream's certificate is verified unless told otherwise ---------------------------
up.reset()
common = ["--upstream", up.url, "--retry-base-ms", "100", "--retry-max-ms", "200"]
strict = Relay(None, args=common).start()
eq(post(strict, {"sessionId": "sec-unverified"})[0], 200, "a message is taken")
time.sleep(1.5)
eq(stored(up, "sec-unverified"), [], "but not sent to an upstream whose certificate does not verify")
ok("certificate" in strict.log_text().lower() or "ssl" in strict.log_text().lower(),
   "the log says why", strict.log_text()[-600:])
eq(strict.stop(), 0, "clean exit")
loose = Relay(None, args=common + ["--upstream-insecure"]).start()
ok("level=warn event=upstream_tls_unverified" in loose.log_text(),
   "--upstream-insecure is logged as a warning")
eq(post(loose, {"sessionId": "sec-insecure"})[0], 200, "a message is taken")
ok(wait_until(lambda: stored(up, "sec-insecure"), 10), "and with --upstream-insecure it is sent")
eq(loose.stop(), 0, "clean exit")
done()

"""proxy-protocol: a PROXY v1 or v2 header from a trusted-proxy names the
client for limits, logs and X-Forwarded-For; one from any other address,
a malformed one and a late one are refused; a connection that begins with
TLS is served as before."""
import json
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.environ.get("TESTS_SRCDIR", os.path.join(os.path.dirname(__file__), "..")))
from relaytest import (Relay, done, eq, http_over, ok, run_relay_check, start_upstream,  # noqa: E402
                       tls_connect, wait_until)

HEADERS = {"Content-Type": "application/json", "Origin": "https://app.example"}
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(src, port=40000):
    fam = "TCP6" if ":" in src else "TCP4"
    dst = "::1" if ":" in src else "127.0.0.1"
    return ("PROXY %s %s %s %d 8443\r\n" % (fam, src, dst, port)).encode()


def v2(src=None, port=40000):
    if src is None:   # LOCAL: the balancer's own connection (a health check)
        return V2_SIG + b"\x20\x00\x00\x00"
    if ":" in src:
        block = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, "::1")
        return V2_SIG + b"\x21\x21" + struct.pack("!H", 36) + block + struct.pack("!HH", port, 8443)
    block = socket.inet_aton(src) + socket.inet_aton("127.0.0.1")
    tlv = b"\x04\x00\x02ok"   # a TLV after the addresses is skipped
    return V2_SIG + b"\x21\x11" + struct.pack("!H", 12 + len(tlv)) + block + struct.pack("!HH", port, 8443) + tlv


def post(port, session, prefix=b"", xff=None):
    h = dict(HEADERS)
    if xff:
        h["X-Forwarded-For"] = xff
    body = json.dumps({"sessionId": session, "projectId": "k", "data": ["userRating", None, {}, 1]})
    try:
        s = tls_connect(port, prefix=prefix)
    except (OSError, ValueError):
        return None
    return http_over(s, "POST", "/websocket/trace", body, h)


def forwarded_xff(up, session):
    got = wait_until(lambda: [r for r in up.requests() if session.encode() in r["body"]], 10)
    return got[0]["headers"].get("x-forwarded-for") if got else None


up = start_upstream()
relay = Relay(up, args=["--proxy-protocol", "--trusted-proxy", "127.0.0.1",
                        "--max-messages-per-ip-per-s", "1", "--request-timeout-s", "2"]).start()

eq(post(relay.port, "pp-v1", v1("203.0.113.7"), xff="198.51.100.9"), 200, "a POST behind a v1 header")
eq(forwarded_xff(up, "pp-v1"), "198.51.100.9, 203.0.113.7",
   "the header's source is the client upstream: X-Forwarded-For ends with it")
eq(post(relay.port, "pp-v2", v2("203.0.113.8")), 200, "a POST behind a v2 header (with a TLV)")
eq(forwarded_xff(up, "pp-v2"), "203.0.113.8", "v2's source reaches X-Forwarded-For")
eq(post(relay.port, "pp-v2-6", v2("2001:db8::7")), 200, "a POST behind a v2 IPv6 header")
eq(forwarded_xff(up, "pp-v2-6"), "2001:db8::7", "an IPv6 source too")
eq(post(relay.port, "pp-v1-6", v1("2001:db8::8")), 200, "a POST behind a v1 TCP6 header")
eq(forwarded_xff(up, "pp-v1-6"), "2001:db8::8", "v1's IPv6 source too")
eq(post(relay.port, "pp-local", v2()), 200, "a v2 LOCAL header (a balancer's health check)")
eq(forwarded_xff(up, "pp-local"), "127.0.0.1", "keeps the balancer as the client")
eq(post(relay.port, "pp-direct"), 200, "a connection that begins with TLS is served as before")
eq(forwarded_xff(up, "pp-direct"), "127.0.0.1", "with its peer as the client")

# Limits count the header's source: 5 s of burst at 1 message/s.  The
# bucket refills while the POSTs run (a TLS handshake each), so a slow
# machine may get one more in for every second they took.
codes, t0 = [], time.monotonic()
while len(codes) < 30 and 429 not in codes:
    codes.append(post(relay.port, "pp-lim-%d" % len(codes), v2("203.0.113.20")))
took = time.monotonic() - t0
ok(codes[-1] == 429 and codes[:-1] == [200] * (len(codes) - 1) and 5 <= len(codes) - 1 <= 5 + took,
   "max-messages-per-ip-per-s counts the client behind the balancer (%d in %.1f s)"
   % (len(codes) - 1, took), codes)
eq(post(relay.port, "pp-lim-other", v2("203.0.113.21")), 200,
   "while another client behind the same balancer goes on")
ok(wait_until(lambda: "client=203.0.113.20" in relay.log_text(), 5),
   "and the refusal's log line names the client")

# A malformed header from a trusted proxy, and one that never ends.
eq(post(relay.port, "pp-bad", b"PROXY TCP4 203.0.113.7 nonsense\r\n"), None,
   "a malformed v1 header closes the connection")
ok(wait_until(lambda: "event=proxy_refused" in relay.log_text() and "v1 line is not" in relay.log_text(), 5),
   "and says why", relay.log_text()[-1500:])
s = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
s.sendall(b"PROXY TCP4 ")
t0 = time.monotonic()
try:
    eof = s.recv(100) == b""
except OSError:
    eof = True
s.close()
ok(eof and time.monotonic() - t0 < 6, "a header that never ends is dropped after request-timeout-s (%.1f s)"
   % (time.monotonic() - t0))
ok("within request-timeout-s" in relay.log_text(), "and logged")
eq(relay.stop(), 0, "clean exit")

# From an address that is not a trusted proxy, a PROXY header is refused.
other = Relay(up, args=["--proxy-protocol", "--trusted-proxy", "10.0.0.0/8"]).start()
eq(post(other.port, "pp-untrusted", v2("203.0.113.9")), None,
   "a PROXY header from an address that is not a trusted-proxy is refused")
ok(wait_until(lambda: "not a trusted-proxy" in other.log_text(), 5), "with a clear log line")
eq(post(other.port, "pp-untrusted-tls"), 200, "a direct TLS client of that address is served")
time.sleep(0.5)
ok(not [r for r in up.requests() if b"pp-untrusted\"" in r["body"] or b"pp-bad" in r["body"]],
   "nothing refused was forwarded")
eq(other.stop(), 0, "clean exit")

# Without proxy-protocol, a PROXY header is not understood: the TLS handshake fails.
plain = Relay(up).start()
eq(post(plain.port, "pp-off", v1("203.0.113.7")), None, "without proxy-protocol a PROXY header fails")
eq(plain.stop(), 0, "clean exit")
p = run_relay_check(["--proxy-protocol"])
ok(p.returncode == 2 and "needs trusted-proxy" in p.stderr, "proxy-protocol without trusted-proxy is a bad configuration", p.stderr)
done()

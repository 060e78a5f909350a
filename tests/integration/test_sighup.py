"""SIGHUP reloads the TLS certificate and key: a new connection sees the new
certificate, connections already open (a websocket, a TLS connection waiting
for its request) stay open and keep working; a reload that cannot be used is
logged and changes nothing."""
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.environ.get("TESTS_SRCDIR", os.path.join(os.path.dirname(__file__), "..")))
from relaytest import (CERTS, WSC_BIN, Relay, client_context, done, eq, ok, start_upstream,  # noqa: E402
                       tempdir, wait_until)


def peer_fingerprint(port):
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with client_context().wrap_socket(raw) as s:
        return hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()


def file_fingerprint(path):
    with open(path) as f:
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(f.read())).hexdigest()


def install(src_cert, src_key, cert, key):
    """Replaces cert and key the way an operator's tooling would: atomically."""
    for src, dst in ((src_cert, cert), (src_key, key)):
        shutil.copyfile(src, dst + ".new")
        os.chmod(dst + ".new", 0o600)
        os.replace(dst + ".new", dst)


def hup_and_wait(relay, event):
    """Sends SIGHUP and waits for the log line of its outcome."""
    before = relay.log_text().count("event=" + event)
    relay.proc.send_signal(signal.SIGHUP)
    return wait_until(lambda: relay.log_text().count("event=" + event) > before, 10)


up = start_upstream()
# A second certificate: the one a relay generates for itself.
gen = Relay(up).start()
gen.stop()
new_cert, new_key = os.path.join(gen.state_dir, "tls-cert.pem"), os.path.join(gen.state_dir, "tls-key.pem")

d = tempdir()
cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
install(os.path.join(CERTS, "server.pem"), os.path.join(CERTS, "server-key.pem"), cert, key)
relay = Relay(up, args=["--tls-cert", cert, "--tls-key", key]).start()
old_fp, new_fp = file_fingerprint(cert), file_fingerprint(new_cert)
eq(peer_fingerprint(relay.port), old_fp, "the relay presents its certificate")

ws = subprocess.Popen([WSC_BIN, "--port", str(relay.port), "--path", "/websocket?apiKey=k&sessionId=hup"],
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
ws.stdin.write("expect-text connectionId\nsend-text [\"before\"]\n")
ws.stdin.flush()
# A TLS connection that has done its handshake and waits for its request.
keep = client_context().wrap_socket(socket.create_connection(("127.0.0.1", relay.port), timeout=10))
ok(wait_until(lambda: [r["body"] for r in up.requests()] == [b'["before"]'], 10), "a websocket is open and sending")

install(new_cert, new_key, cert, key)
ok(hup_and_wait(relay, "tls_reloaded"), "SIGHUP: the relay reloads the certificate")
ok(re.search(r"event=tls_reloaded sha256=" + ":".join(re.findall("..", new_fp.upper())), relay.log_text()),
   "and logs the new one's fingerprint")
eq(peer_fingerprint(relay.port), new_fp, "a new connection sees the new certificate")
keep.sendall(b"GET /healthcheck/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
ok(keep.recv(4096).startswith(b"HTTP/1.1 200"), "a TLS connection opened before the reload still works")
eq(hashlib.sha256(keep.getpeercert(binary_form=True)).hexdigest(), old_fp,
   "on the certificate it began with")
keep.close()
ws.stdin.write("send-text [\"after\"]\nclose 1000\nexpect-close 1000\n")
ws.stdin.close()
out = ws.stdout.read()
eq(ws.wait(20), 0, "the websocket opened before the reload stays open, sends, and closes cleanly")
ok('"code":1000' in out and '"event":"error"' not in out, "no error on it", out[-500:])
ok(wait_until(lambda: [r["body"] for r in up.requests()] == [b'["before"]', b'["after"]'], 10),
   "its message after the reload is delivered")

# --- reloads that cannot be used change nothing ----------------------------------------
with open(cert, "w") as f:
    f.write("not a certificate\n")
ok(hup_and_wait(relay, "tls_reload_failed"), "a file that is not a certificate: the reload fails")
eq(peer_fingerprint(relay.port), new_fp, "and the current certificate stays in use")
install(os.path.join(CERTS, "server.pem"), new_key, cert, key)
ok(hup_and_wait(relay, "tls_reload_failed"), "a key that is not the certificate's: refused")
ok(re.search(r"event=tls_reload_failed reason=\"[^\"]*not the certificate's key", relay.log_text()),
   "saying so")
eq(peer_fingerprint(relay.port), new_fp, "the current certificate stays in use")
install(os.path.join(CERTS, "server.pem"), os.path.join(CERTS, "server-key.pem"), cert, key)
ok(hup_and_wait(relay, "tls_reloaded"), "a good pair again: reloaded")
eq(peer_fingerprint(relay.port), old_fp, "and served")
eq(relay.stop(), 0, "the relay stops cleanly")
done()

"""SIGHUP reads the configuration file again: allowed keys and origins and
the log level change at once, each change logged; a changed setting that
needs a restart is logged as such and left alone; a file that would not
start is refused as a whole.  And tls-metrics = false takes /metrics off
the TLS port when admin-listen serves it."""
import http.client
import json
import os
import signal
import subprocess
import sys

sys.path.insert(0, os.environ.get("TESTS_SRCDIR", os.path.join(os.path.dirname(__file__), "..")))
from relaytest import (Relay, done, eq, free_port, ok, request, run_relay_check,  # noqa: E402
                       start_upstream, tempdir, wait_until)


def post(relay, key, origin, session):
    body = json.dumps({"sessionId": session, "projectId": key, "data": ["reload", None, {}, 1]})
    return request(relay.port, "POST", "/websocket/trace", body,
                   {"Content-Type": "application/json", "Origin": origin})[0]


def hup_and_wait(relay, event):
    before = relay.log_text().count("event=" + event)
    relay.proc.send_signal(signal.SIGHUP)
    return wait_until(lambda: relay.log_text().count("event=" + event) > before, 10)


up = start_upstream()
conf = os.path.join(tempdir("relay-reload-"), "relay.conf")


def write_conf(text):
    with open(conf + ".new", "w") as f:
        f.write(text)
    os.replace(conf + ".new", conf)


write_conf("allowed-keys = key-a\nallowed-origins = https://a.example\nlog-level = info\n"
           "max-body-bytes = 1M\n")
relay = Relay(up, args=["--config", conf])
# The log level comes from the file here, not from the test's command line.
cmd = relay.command()
i = cmd.index("--log-level")
del cmd[i:i + 2]
relay.command = lambda: cmd
relay.start()

eq(post(relay, "key-b", "https://a.example", "rl-1"), 401, "key-b is not allowed yet")
eq(post(relay, "key-a", "https://b.example", "rl-2"), 403, "nor the origin b")
ok("level=debug" not in relay.log_text(), "and nothing is logged at debug")

write_conf("allowed-keys = key-a, key-b\nallowed-origins = https://b.example\nlog-level = debug\n"
           "max-body-bytes = 2M\n")
ok(hup_and_wait(relay, "config_reloaded"), "SIGHUP reads the file again")
log = relay.log_text()
for name in ("allowed-keys", "allowed-origins", "log-level"):
    ok("event=setting_changed setting=%s " % name in log, "the change of %s is applied and logged" % name)
ok("event=setting_needs_restart setting=max-body-bytes " in log,
   "max-body-bytes, which needs a restart, is logged as such", log[-1500:])
eq(post(relay, "key-b", "https://b.example", "rl-3"), 200, "key-b and origin b get in now")
eq(post(relay, "key-a", "https://a.example", "rl-4"), 403, "origin a no longer")
ok(wait_until(lambda: "level=debug" in relay.log_text(), 5), "debug lines are logged now")
ok(wait_until(lambda: any(b"rl-3" in r["body"] for r in up.requests()), 10), "what got in is forwarded")

# A file that would not start changes nothing.
write_conf("allowed-keys = key-c\nport = 99999\n")
ok(hup_and_wait(relay, "config_reload_failed"), "a bad file: the reload is refused")
ok("port: 99999 is out of range" in relay.log_text(), "saying why")
eq(post(relay, "key-b", "https://b.example", "rl-5"), 200, "the rules in force stay")
eq(post(relay, "key-c", "https://b.example", "rl-6"), 401, "none of the bad file's is taken")
eq(relay.stop(), 0, "clean exit")

# tls-metrics = false: /metrics on the admin listener only.
admin = free_port()
r = Relay(up, args=["--admin-listen", "127.0.0.1:%d" % admin, "--tls-metrics", "false"]).start()
eq(r.get("/metrics")[0], 404, "tls-metrics = false: /metrics is not on the TLS port")
conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
conn.request("GET", "/metrics")
resp = conn.getresponse()
eq((resp.status, b"watchrtc_relay_queue_depth" in resp.read()), (200, True), "it is on admin-listen")
conn.close()
eq(r.get("/healthcheck")[0], 200, "the TLS port still answers /healthcheck")
eq(r.stop(), 0, "clean exit")
p = run_relay_check(["--tls-metrics", "false"])
ok(p.returncode == 2 and "needs admin-listen" in p.stderr, "tls-metrics = false without admin-listen is refused",
   p.stderr)
done()

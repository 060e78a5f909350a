"""An upstream outage of a minute under light load, in front of the backend
mock (upstream websockets): the relay keeps taking messages, the queue
grows and /healthcheck and /metrics say so, and once the upstream is back
everything drains as websocket frames on / and fallback POSTs, each session
in order, nothing lost."""
import os
import sys
import time

sys.path.insert(0, os.environ.get("TESTS_SRCDIR", os.path.join(os.path.dirname(__file__), "..")))
from loadclients import FallbackSender, WsSender, audit, wait_delivered  # noqa: E402
from relaytest import CERTS, Relay, diag, done, eq, ok, on_exit, wait_until  # noqa: E402
from mock_backend import MockBackend  # noqa: E402

OUTAGE_S = 60
SAMPLE_S = 5
READY_MAX_DOWN_S = 20

def backend(port=0):
    be = MockBackend(cert=os.path.join(CERTS, "server.pem"),
                     key=os.path.join(CERTS, "server-key.pem"), port=port)
    be.start()
    on_exit(be.stop)
    return be


up = backend()
port = up.port
relay = Relay(up, args=["--ready-max-upstream-down-s", str(READY_MAX_DOWN_S)]).start()
eq(relay.protocol, "websocket", "the relay replays websockets upstream")
ws = [WsSender(relay.port, "outage-ws%d" % i, interval=0.25) for i in range(2)]
fb = [FallbackSender(relay.port, "outage-fb0", interval=0.5)]
for s in ws + fb:
    s.start()
time.sleep(1)
# The upstream goes away: its connections drop, and new ones are refused.
up.stop()
t0 = time.monotonic()
samples = []
while time.monotonic() - t0 < OUTAGE_S:
    time.sleep(SAMPLE_S)
    status, hc = relay.health()
    samples.append((round(time.monotonic() - t0), status, hc.get("queue_depth"), hc.get("oldest_age_ms"),
                    hc.get("reason", "")))
for s in samples:
    diag("t=%ds healthcheck %d depth=%s oldest_age_ms=%s %s" % s)
depths = [s[2] for s in samples]
ok(depths == sorted(depths) and depths[-1] > 200, "during the outage the queue keeps growing (%s)" % depths)
ok(samples[-1][3] >= (OUTAGE_S - 5) * 1000, "/healthcheck reports the oldest message's age")
ok(samples[0][1] == 200, "at first the relay stays ready: telemetry should still come here")
ok(samples[-1][1] == 503 and "upstream failing" in samples[-1][4],
   "past ready-max-upstream-down-s, /healthcheck answers 503 and says why")
eq(relay.metric("watchrtc_relay_upstream_up"), 0.0, "/metrics: upstream_up is 0")
ok(all(s.refused == [] and s.unanswered == [] for s in fb), "every fallback POST was accepted meanwhile")

before = up
up = backend(port)          # the upstream is back, on the same address
time.sleep(2)
for s in ws + fb:
    s.stop()
required = {s.name: {n for n, _, _ in s.sent} for s in ws}
required.update({s.name: {n for n, _ in s.acked} for s in fb})
t1 = time.monotonic()
got = wait_delivered([before, up], required, 60)
counts, problems = audit(required, got)
diag("outage %d s: %d messages sent, delivered %d in %.1f s after the upstream came back, "
     "duplicates %d, lost %d" % (OUTAGE_S, sum(len(v) for v in required.values()),
                                 counts["delivered"], time.monotonic() - t1,
                                 counts["duplicates"], counts["lost"]))
eq(counts["lost"], 0, "everything drains afterwards")
eq(problems, [], "each session in order")
ok(all(u["path"] == "/" for u in up.upgrades() if u["status"] == 101) and
   [f for f in up.frames(opcode="text")], "as websocket frames on /")


def drained():
    status, hc = relay.health()
    return status == 200 and hc["queue_depth"] == 0


ok(wait_until(drained, 10), "the queue is empty and /healthcheck is 200 again")
eq(relay.metric("watchrtc_relay_upstream_up"), 1.0, "/metrics: upstream_up is 1 again")
relay.stop()
done()

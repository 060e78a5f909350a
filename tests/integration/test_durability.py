"""Nothing accepted is lost: a message in flight at a crash is sent again
with the same Idempotency-Key; a crash loop (SIGKILL at random moments under
websocket and fallback load, 20 times) loses nothing outside the documented
window and keeps every session in order; a clean shutdown under load loses
nothing at all."""
import os
import random
import re
import signal
import sys
import time
from urllib.parse import parse_qs

sys.path.insert(0, os.environ.get("TESTS_SRCDIR", os.path.join(os.path.dirname(__file__), "..")))
from loadclients import FallbackSender, WsSender, audit, deliveries, wait_delivered  # noqa: E402
from relaytest import (CERTS, Relay, diag, done, eq, ok, on_exit, request,  # noqa: E402
                       start_upstream, wait_until)
from mock_backend import MockBackend  # noqa: E402

COMMIT_WINDOW_MS = 20
# A websocket message has no acknowledgement: one received within the
# commit window before a crash, or while that commit runs, may be lost.  The
# test requires every message written more than the window plus this
# allowance (the commit in progress, loopback delivery, a slow CI machine)
# before a kill.
COMMIT_ALLOWANCE_MS = 480
KILLS = 20
WS_SENDERS, FB_SENDERS = 3, 2
random.seed(os.environ.get("DURABILITY_SEED", str(time.time())))

up = start_upstream()

# --- a message in flight at a crash is sent again, with the same key -------------------
up.behave(status=200, delay_ms=60000)    # the upstream takes it and never answers
relay = Relay(up, args=["--upstream-timeout-ms", "60000"]).start()
status, _, _ = request(relay.port, "POST", "/websocket/trace", '{"sessionId":"inflight","n":1}',
                       {"Content-Type": "application/json"})
eq(status, 200, "a fallback message is acknowledged")
ok(wait_until(lambda: len(up.requests()) == 1, 10), "the upstream has it in flight")
first_key = up.requests()[0]["headers"].get("idempotency-key", "")
relay.proc.kill()
relay.proc.wait()
up.reset()
relay.start()
ok(wait_until(lambda: len(up.requests()) == 1, 10), "after SIGKILL and a restart it is sent again")
again = up.requests()
eq(again[0]["headers"].get("idempotency-key") if again else None, first_key,
   "with the same Idempotency-Key (%s): the instance id and the message id persist" % first_key)
relay.stop()

# --- crash loop ---------------------------------------------------------------------------
def crash_loop(up, relay, label):
    """SIGKILLs relay KILLS times under websocket and fallback load; checks
    what reached up (the POST mock or the backend mock).  Returns the audit's
    counts."""
    ws = [WsSender(relay.port, "crash-%s-ws%d" % (label, i), interval=0.04)
          for i in range(WS_SENDERS)]
    fb = [FallbackSender(relay.port, "crash-%s-fb%d" % (label, i), interval=0.03)
          for i in range(FB_SENDERS)]
    for s in ws + fb:
        s.start()
    kills, starts, t0 = [], [], time.monotonic()
    for i in range(KILLS):
        time.sleep(random.uniform(0.3, 1.2))
        kills.append(time.monotonic())
        relay.proc.kill()
        relay.proc.wait()
        t = time.monotonic()
        relay.start()
        starts.append(time.monotonic() - t)
    time.sleep(1.0)
    for s in ws + fb:
        s.stop()
    diag("%s: %d kills in %.1f s; restarts took %.2f s at most"
         % (label, len(kills), time.monotonic() - t0, max(starts)))
    eq(len(kills), KILLS, "%s: the relay was killed with SIGKILL and restarted %d times under load"
       % (label, KILLS))
    ok(all(s.connects > KILLS // 2 for s in ws),
       "%s: the websocket senders reconnected after the kills" % label, [s.connects for s in ws])

    window = (COMMIT_WINDOW_MS + COMMIT_ALLOWANCE_MS) / 1000.0

    def next_kill(t):
        return min((k for k in kills if k > t), default=None)

    # A websocket message reached the relay its connection went to, which died
    # at the first kill after the connection began.
    required, at_risk, after = {}, {}, 0
    for s in ws:
        for n, t, began in s.sent:
            k = next_kill(began)
            if k is None or t < k - window:
                required.setdefault(s.name, set()).add(n)
            elif t < k:
                at_risk.setdefault(s.name, set()).add(n)
            else:
                after += 1      # written after its relay died: the write only looked done
    for s in fb:
        required[s.name] = {n for n, _ in s.acked}
    got = wait_delivered(up, required, 60)
    counts, problems = audit(required, got)
    # How long before its relay died the earliest lost websocket message was
    # written: the loss window as measured.
    gaps = [next_kill(began) - t for s in ws for n, t, began in s.sent
            if next_kill(began) is not None and t < next_kill(began)
            and n not in {m for m, _ in got.get(s.name, [])}]
    diag("%s: lost websocket messages were written at most %.0f ms before their relay was killed"
         % (label, max(gaps, default=0) * 1000))
    sent = sum(len(s.sent) for s in ws) + sum(s.n for s in fb)
    acked = sum(len(v) for v in required.values())
    risky = sum(len(v) for v in at_risk.values())
    risky_lost = sum(len(v - {n for n, _ in got.get(k, [])}) for k, v in at_risk.items())
    diag("%s: sent %d, acknowledged %d (fallback 200s, and websocket messages written more than "
         "%d ms before a kill), delivered %d, duplicates %d, lost %d; within the window %d, of "
         "which %d lost (allowed); %d written to a relay already dead"
         % (label, sent, acked, window * 1000, counts["delivered"], counts["duplicates"],
            counts["lost"], risky, risky_lost, after))
    ok(acked > 300, "%s: enough acknowledged messages to mean something (%d)" % (label, acked))
    eq(counts["lost"], 0, "%s: no acknowledged message is lost" % label)
    eq(problems, [], "%s: every session in order; duplicates share their Idempotency-Key, no key "
       "is reused" % label)
    return counts, got


up.reset()
up.behave(status=200, delay_ms=30)       # slow enough that kills catch messages in flight
relay = Relay(up, args=["--commit-window-ms", str(COMMIT_WINDOW_MS)]).start()
counts, got = crash_loop(up, relay, "http-post")
instances = {k.split("-")[0] for seq in got.values() for _, k in seq if k}
eq(len(instances), 1, "http-post: one instance id across %d restarts" % KILLS)
relay.stop()

# The same over upstream websockets, to a backend mock: frames on /, in
# order; a copy only of what was not fenced when its relay died.
FENCE_MESSAGES = 8
be = MockBackend(cert=os.path.join(CERTS, "server.pem"), key=os.path.join(CERTS, "server-key.pem"))
be.start()
on_exit(be.stop)
relay = Relay(be, args=["--commit-window-ms", str(COMMIT_WINDOW_MS), "--upstream-fence-messages",
                        str(FENCE_MESSAGES), "--upstream-fence-ms", "100"]).start()
eq(relay.protocol, "websocket", "websocket: the relay replays websockets upstream")
counts, got = crash_loop(be, relay, "websocket")
ups = [u for u in be.upgrades() if u["status"] == 101 and "crash-websocket-ws" in u["query"]]
ok(ups and all(u["path"] == "/" for u in ups), "websocket: every upgrade on /")
# Every upstream websocket of a session may repeat at most the window of
# messages its predecessor had in flight (4 x the fence interval).
per_session = {}
for u in ups:
    s = parse_qs(u["query"])["sessionId"][0]
    per_session[s] = per_session.get(s, 0) + 1
dup_ok = all(sum(1 for i, (n, _) in enumerate(seq) if n in {m for m, _ in seq[:i]})
             <= per_session.get(sess, 1) * 4 * FENCE_MESSAGES for sess, seq in got.items())
ok(dup_ok, "websocket: duplicates only of unfenced messages (at most a window per reconnection)")
diag("websocket: %d upstream websockets, %d duplicates in all" % (len(ups), counts["duplicates"]))
relay.stop()

# --- clean shutdown under load loses nothing --------------------------------------------------
def clean_shutdown(up, relay, label):
    ws = [WsSender(relay.port, "clean-%s-ws%d" % (label, i), interval=0.02)
          for i in range(WS_SENDERS)]
    fb = [FallbackSender(relay.port, "clean-%s-fb%d" % (label, i), interval=0.01)
          for i in range(FB_SENDERS)]
    for s in ws + fb:
        s.start()
    time.sleep(2.0)
    t_term = time.monotonic()
    code = relay.stop(signal.SIGTERM)
    for s in ws + fb:
        s.stop()
    eq(code, 0, "%s: SIGTERM under load: the relay exits 0" % label)
    log = relay.log_text()
    ok(re.search(r"event=stopped status=ok", log), "%s: and says it stopped cleanly" % label)
    required = {s.name: {n for n, t, _ in s.sent if t < t_term} for s in ws}
    required.update({s.name: {n for n, _ in s.acked} for s in fb})
    relay.start()       # forwards what the first one had no time to
    got = wait_delivered(up, required, 60)
    counts, problems = audit(required, got)
    acked = sum(len(v) for v in required.values())
    diag("%s: clean shutdown: acknowledged %d (websocket messages written before SIGTERM, "
         "fallback 200s), delivered %d, duplicates %d, lost %d"
         % (label, acked, counts["delivered"], counts["duplicates"], counts["lost"]))
    ok(acked > 100, "%s: enough messages under load (%d)" % (label, acked))
    eq(counts["lost"], 0, "%s: a clean shutdown loses nothing that was sent before it" % label)
    eq(problems, [], "%s: and keeps every session in order" % label)
    relay.stop()


up.reset()
up.behave(status=200, delay_ms=20)
clean_shutdown(up, Relay(up, args=["--commit-window-ms", str(COMMIT_WINDOW_MS)]).start(), "http-post")
be.reset()
clean_shutdown(be, Relay(be, args=["--commit-window-ms", str(COMMIT_WINDOW_MS)]).start(), "websocket")
done()

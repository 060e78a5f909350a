"""Upstream faults: 500s, 503 with Retry-After, 429, connection resets, a
hung upstream (timeouts) and an upstream whose certificate the relay does
not trust are retried until the message is taken, with its one
Idempotency-Key and its session's order; 400 dead-letters the message and
its session goes on; 401 rejects its API key and dead-letters what waits
with it."""
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.environ.get("TESTS_SRCDIR", os.path.join(os.path.dirname(__file__), "..")))
from relaytest import (RELAY_BIN, Relay, Upstream, diag, done, eq, ok, request,  # noqa: E402
                       start_upstream, wait_until, on_exit)

TIMEOUT_MS = 500


def post(relay, session, n, key=None):
    """A fallback POST; its key, as the SDK sends it, in the body's projectId
    (the one the upstream judges, so the one a 401 bans) and the query."""
    path = "/websocket/trace" + ("?apiKey=" + key if key else "")
    body = {"sessionId": session, "n": n}
    if key:
        body["projectId"] = key
    return request(relay.port, "POST", path, json.dumps(body),
                   {"Content-Type": "application/json"})[0]


def attempts(up, session):
    """(n, status, Idempotency-Key, time) of every request of session."""
    out = []
    for r in up.requests():
        try:
            body = json.loads(r["body"])
        except ValueError:
            continue
        if isinstance(body, dict) and body.get("sessionId") == session:
            out.append((body["n"], r["status"], r["headers"].get("idempotency-key"), r["time"]))
    return out


def taken(up, session):
    """The messages the upstream answered 200, each once, in order.  (A hung
    request is recorded as answered although the relay had given up.)"""
    out = []
    for n, s, _, _ in attempts(up, session):
        if s == 200 and n not in out:
            out.append(n)
    return out


def fault(up, relay, name, behaviour, want_failed):
    """Sends two messages of one session through a fault; both must arrive
    in order, each attempt of a message with the same key."""
    session = "fault-" + name
    up.behave(**behaviour)
    eq([post(relay, session, 1), post(relay, session, 2)], [200, 200], name + ": accepted")
    ok(wait_until(lambda: taken(up, session) == [1, 2], 20),
       name + ": both taken once the fault passes, in order", attempts(up, session))
    tries = attempts(up, session)
    ok(len(tries) - 2 >= want_failed, name + ": the fault really happened (%d attempts failed)"
       % (len(tries) - 2))
    keys = {}
    for n, _, k, _ in tries:
        keys.setdefault(n, set()).add(k)
    ok(all(len(v) == 1 for v in keys.values()) and len({next(iter(v)) for v in keys.values()}) == 2,
       name + ": one Idempotency-Key per message, on every attempt", keys)
    up.reset()
    return tries


up = start_upstream()
relay = Relay(up, args=["--upstream-timeout-ms", str(TIMEOUT_MS), "--upstream-connect-timeout-ms",
                        str(TIMEOUT_MS), "--retry-max-ms", "3000"]).start()

fault(up, relay, "500", {"status": 500, "count": 3}, 3)
tries = fault(up, relay, "503-retry-after", {"status": 503, "count": 1, "retry_after": 2}, 1)
first = [t for n, s, _, t in tries if n == 1]
ok(len(first) >= 2 and first[1] - first[0] >= 1.9,
   "503-retry-after: the retry waits the Retry-After (%.2f s)" % (first[1] - first[0] if len(first) > 1 else -1))
fault(up, relay, "429", {"status": 429, "count": 2}, 2)
fault(up, relay, "reset", {"status": 200, "count": 2, "reset": True}, 2)
tries = fault(up, relay, "hung", {"status": 200, "count": 1, "delay_ms": 4 * TIMEOUT_MS}, 1)
ok(re.search(r"event=forward_retry .*(timed out|Timeout|timeout)", relay.log_text()) is not None,
   "hung: the relay gave up after upstream-timeout-ms and said so",
   [l for l in relay.log_text().splitlines() if "forward_retry" in l][-3:])

# --- 400: dead letter, the session goes on ---------------------------------------------
up.behave(status=400, count=1)
eq([post(relay, "fault-400", 1), post(relay, "fault-400", 2)], [200, 200], "400: accepted")
ok(wait_until(lambda: taken(up, "fault-400") == [2], 10),
   "400: the first is given up, the second still goes", attempts(up, "fault-400"))
eq([(n, s) for n, s, _, _ in attempts(up, "fault-400")], [(1, 400), (2, 200)],
   "400: the refused message is not retried")
p = subprocess.run([RELAY_BIN, "queue", "--state-dir", relay.state_dir, "--json", "dead", "list"],
                   capture_output=True, text=True, timeout=30)
dead = json.loads(p.stdout or "[]")
ok(len(dead) == 1 and dead[0]["status"] == 400 and dead[0]["reason"] == "rejected",
   "400: it is a dead letter with the status", dead)
eq(relay.metric('watchrtc_relay_dead_letters{reason="rejected"}'), 1.0,
   "400: /metrics counts it under its reason")
up.reset()

# --- 401: the key is rejected, and what waits with it is dead-lettered -------------------
# The 401 is held until all four messages are in, so the two behind it are
# queued when it comes, however slow the machine.  The relay (same queue, so
# the 400's dead letter stays) waits for upstream answers longer than that.
relay.stop()
relay = Relay(up, args=["--upstream-timeout-ms", "30000"], state_dir=relay.state_dir).start()
up.behave(status=401, count=1, hold=True)
codes = [post(relay, "fault-401", n, key="badkey123") for n in (1, 2, 3)]
codes.append(post(relay, "fault-401-ok", 1, key="goodkey456"))
eq(codes, [200] * 4, "401: messages of two keys accepted")
ok(wait_until(lambda: len(attempts(up, "fault-401")) == 1, 10),
   "401: the first message is at the upstream, its answer held", attempts(up, "fault-401"))
up.release()
ok(wait_until(lambda: taken(up, "fault-401-ok") == [1], 10), "401: the other key's message goes on")
ok(wait_until(lambda: relay.health()[1]["dead_letters"] == 4, 10),
   "401: the refused one and the two waiting behind it are dead letters", relay.health())
eq([(n, s) for n, s, _, _ in attempts(up, "fault-401")], [(1, 401)],
   "401: only one of them ever reached the upstream")
eq(post(relay, "fault-401", 4, key="badkey123"), 401, "401: new messages with that key are refused")
dead_metrics = lambda: (relay.metric('watchrtc_relay_dead_letters{reason="rejected"}'),
                        relay.metric('watchrtc_relay_dead_letters{reason="key_rejected"}'))
ok(wait_until(lambda: dead_metrics() == (1.0, 3.0), 10),
   "401: /metrics counts the three under key_rejected, beside the 400's one", dead_metrics())
up.reset()
relay.stop()

# --- an upstream whose certificate the relay does not trust -----------------------------
# The relay's own self-signed certificate: no CA the relay trusts signed it.
untrusted = Upstream(cert=os.path.join(relay.state_dir, "tls-cert.pem"),
                     key=os.path.join(relay.state_dir, "tls-key.pem"))
untrusted.start()
on_exit(untrusted.stop)
r2 = Relay(untrusted).start()
eq(post(r2, "fault-tls", 1), 200, "tls: accepted while the upstream's certificate is not trusted")
ok(wait_until(lambda: re.search(r"event=forward_retry .*(certificate|SSL|TLS)", r2.log_text()), 10),
   "tls: the attempt fails on the certificate and is retried",
   [l for l in r2.log_text().splitlines() if "forward" in l][-3:])
time.sleep(1)
eq(untrusted.requests(), [], "tls: nothing reached the untrusted upstream")
eq(r2.health()[1]["queue_depth"], 1, "tls: the message stays queued")
r2.stop()
r2.upstream = up           # the operator fixes the upstream and restarts
r2.start()
ok(wait_until(lambda: taken(up, "fault-tls") == [1], 10), "tls: then it is delivered")
r2.stop()
diag("forward_retry lines: %d" % r2.log_text().count("event=forward_retry"))
done()

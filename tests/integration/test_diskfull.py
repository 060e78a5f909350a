"""A full disk: the state directory on a small tmpfs that the test fills.
New messages are refused (fallback 503 with Retry-After, websocket close
1013), /healthcheck says why, the log says it once; nothing stored is lost or
damaged, and once space is freed the relay takes messages again by itself.
Needs root to mount the tmpfs; skips (saying so) where that is not allowed."""
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.environ.get("TESTS_SRCDIR", os.path.join(os.path.dirname(__file__), "..")))
from relaytest import (RELAY_BIN, WSC_BIN, Relay, diag, done, eq, ok, on_exit, request,  # noqa: E402
                       skip_all, start_upstream, tempdir, wait_until)

TMPFS_SIZE = "8m"
ROOM = 1536 * 1024          # what the filler leaves free: each commit appends a few 32 KB pages to the WAL
BODY = 16 * 1024            # bytes of each message
RETRY_AFTER_S = 2

mnt = tempdir("relay-tmpfs-")
p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % TMPFS_SIZE, "tmpfs", mnt],
                   capture_output=True, text=True)
if p.returncode != 0:
    skip_all("cannot mount a tmpfs for the full-disk test (needs root): %s" % p.stderr.strip())
on_exit(lambda: subprocess.run(["umount", "-l", mnt], capture_output=True))

up = start_upstream()
up.behave(status=503, seconds=3600)      # keep everything in the queue
state = os.path.join(mnt, "state")
relay = Relay(up, args=["--retry-after-s", str(RETRY_AFTER_S)], state_dir=state).start()

st = os.statvfs(mnt)
filler = os.path.join(mnt, "filler")
with open(filler, "wb") as f:
    left = st.f_bavail * st.f_frsize - ROOM
    while left > 0:
        f.write(b"\0" * min(left, 1 << 20))
        left -= 1 << 20
diag("filled the tmpfs, %d KiB left" % (os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize // 1024))


def post(n):
    body = json.dumps({"sessionId": "disk", "n": n, "pad": "x" * BODY})
    return request(relay.port, "POST", "/websocket/trace", body, {"Content-Type": "application/json"})


accepted, answer = [], None
for n in range(1, 200):
    status, headers, data = post(n)
    if status != 200:
        answer = (status, headers, data)
        break
    accepted.append(n)
ok(answer is not None and len(accepted) > 5, "messages are accepted until the disk is full (%d)" % len(accepted))
status, headers, data = answer or (None, {}, b"")
eq(status, 503, "then a fallback POST is answered 503")
eq(headers.get("retry-after"), str(RETRY_AFTER_S), "with Retry-After")
diag("answer: %s" % data[:200])
# SQLite can find room in pages it already has (a reset WAL), so a probe of
# the writer (100 ms after the failure) may succeed while the disk is still
# full: then the queue takes writes again until one fails, and the log says
# so each time.  A slow machine can ask for the health after such a probe.
status, hc = relay.health()
ok((status == 503 and "not writable" in hc.get("reason", "")) or
   (status == 200 and "event=queue_writable" in relay.log_text()),
   "/healthcheck is 503 and says why (unless a probe found room, and the log says so)", hc)
eq(relay.get("/healthcheck/live")[0], 200, "while the process itself is alive (liveness)")
writable = relay.metric("watchrtc_relay_queue_writable")
ok(writable == 0.0 or "event=queue_writable" in relay.log_text(),
   "/metrics: queue_writable is 0 (unless a probe found room, and the log says so)", writable)
try:
    with open(filler, "ab") as f:     # take what is left
        while True:
            f.write(b"\0" * 4096)
            f.flush()
except OSError:
    pass
# A websocket message while the queue is unwritable is refused with 1013; one
# that meets a probe's moment of room is taken, and must then be delivered.
refused, taken = 0, []
for attempt in range(5):
    wait_until(lambda: relay.metric("watchrtc_relay_queue_writable") == 0.0, 10)
    text = '["while full", %d]' % attempt
    p = subprocess.run([WSC_BIN, "--port", str(relay.port), "--path",
                        "/websocket?apiKey=k&sessionId=disk-ws", "expect-text connectionId",
                        "send-text " + text, "expect-close 1013"],
                       capture_output=True, text=True, timeout=30)
    if p.returncode == 0:
        refused += 1
        break
    taken.append(text)
ok(refused == 1, "a websocket message is answered with close 1013 (%d taken first)" % len(taken))
time.sleep(2)               # the writer keeps probing the disk meanwhile
log = relay.log_text()
changes = re.findall(r"event=queue_(unwritable|writable)", log)
ok(changes and changes[0] == "unwritable" and all(a != b for a, b in zip(changes, changes[1:])),
   "the log says it once per change, not once per refusal", changes)
ok(re.search(r'event=queue_unwritable reason="[^"]*full', log), "naming the cause",
   [l for l in log.splitlines() if "queue_unwritable" in l])

os.remove(filler)
ok(wait_until(lambda: relay.health()[0] == 200, 10), "space freed: /healthcheck is 200 again, by itself")
ok(re.search(r"event=queue_writable", relay.log_text()), "and the log says the database takes writes again")
status, _, _ = post(1000)
eq(status, 200, "fallback POSTs are accepted again")
accepted.append(1000)
ok(relay.proc.poll() is None, "the relay never stopped")

up.reset()
ok(wait_until(lambda: [json.loads(r["body"])["n"] for r in up.requests()
                       if r["status"] == 200 and r["path"] == "/trace"] == accepted, 30),
   "every accepted message is delivered, in order; none was lost")


def ws_delivered():
    bodies = [r["body"] for r in up.requests() if r["status"] == 200 and "disk-ws" in r["path"]]
    return all(t.encode() in bodies for t in taken)


# Another session: its retry runs on its own clock, not after the /trace ones.
ok(wait_until(ws_delivered, 30), "so is every websocket message that was taken", taken)
eq(relay.stop(), 0, "the relay stops cleanly")
p = subprocess.run([RELAY_BIN, "queue", "--state-dir", state, "check"], capture_output=True, text=True,
                   timeout=60)
eq((p.returncode, p.stdout.strip()), (0, "%s/queue.db: ok" % state), "the database is not damaged")
done()

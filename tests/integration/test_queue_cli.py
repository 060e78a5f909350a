"""The queue CLI (`watchrtc-relay queue ...`) beside a running relay: stats,
dead list, replay (picked up without a restart, same Idempotency-Key), purge,
check, usage errors; the lock that keeps a second relay off a state
directory; and a corrupt database at start-up: a clear refusal that names
salvage, and salvage keeping the readable rows and the instance id."""
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.environ.get("TESTS_SRCDIR", os.path.join(os.path.dirname(__file__), "..")))
from relaytest import RELAY_BIN, Relay, diag, done, eq, ok, request, start_upstream, wait_until  # noqa: E402


def cli(state_dir, *args):
    p = subprocess.run([RELAY_BIN, "queue", "--state-dir", state_dir] + list(args),
                       capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


def cli_json(state_dir, *args):
    code, out, err = cli(state_dir, "--json", *args)
    try:
        return code, json.loads(out)
    except ValueError:
        diag("not JSON: %r %r" % (out[:500], err[:500]))
        return code, None


def post(relay, session, n, pad=""):
    return request(relay.port, "POST", "/websocket/trace",
                   json.dumps({"sessionId": session, "n": n, "pad": pad}),
                   {"Content-Type": "application/json"})[0]


def sent(up, session):
    return [(json.loads(r["body"])["n"], r["headers"].get("idempotency-key"), r["status"])
            for r in up.requests() if r["path"] == "/trace"
            and json.loads(r["body"]).get("sessionId") == session]


up = start_upstream()
relay = Relay(up).start()
sd = relay.state_dir

# --- dead letters, retry heads, stats ---------------------------------------------------
up.behave(status=400, count=3)
eq([post(relay, "cli-a", n) for n in (1, 2, 3)], [200] * 3, "three messages accepted")
ok(wait_until(lambda: relay.health()[1]["dead_letters"] == 3, 10), "the upstream's 400s dead-letter them")
up.behave(status=503, seconds=3600)
eq([post(relay, "cli-b", n) for n in (1, 2)], [200, 200], "two more while the upstream answers 503")
ok(wait_until(lambda: cli_json(sd, "stats")[1]["sessions_waiting_retry"] == 1, 10),
   "stats show the session whose head waits for a retry")
code, st = cli_json(sd, "stats")
eq(code, 0, "queue --json stats exits 0")
eq((st["depth"], st["dead_letters"], st["dead_by_reason"], st["relay_running"]),
   (2, 3, {"rejected": 3}, True), "depth, dead letters by reason, the relay running")
head = st["waiting_retry"][0] if st["waiting_retry"] else {}
ok(head.get("attempts", 0) >= 1 and head.get("queued") == 2 and head.get("session") == "cli-b",
   "the waiting head: its attempts and its session's depth", head)
ok(st["oldest_age_ms"] >= 0 and st["bytes"] > 0 and re.fullmatch(r"[0-9a-f]{16}", st["instance_id"]),
   "bytes, oldest age and instance id", st)
instance = st["instance_id"]
code, out, _ = cli(sd, "stats")
ok(code == 0 and re.search(r"queued\s+2 messages", out) and re.search(r"dead letters\s+3", out)
   and "rejected" in out and "session cli-b" in out, "the same for a person", out)

code, dead = cli_json(sd, "dead", "list")
eq((code, len(dead or [])), (0, 3), "dead list --json: the three dead letters")
ids = [d["id"] for d in dead or []]
ok(all(d["status"] == 400 and d["reason"] == "rejected" and d["session"] == "cli-a" for d in dead or []),
   "each with the upstream's status, the reason and the session", dead)
code, out, _ = cli(sd, "dead", "list", "--limit", "1")
eq((code, len([l for l in out.splitlines() if l.startswith("#")])), (0, 1), "--limit 1 lists one")

# --- replay while the relay runs ----------------------------------------------------------
first = {n: k for n, k, s in sent(up, "cli-a")}
up.reset()
ok(wait_until(lambda: relay.health()[1]["queue_depth"] == 0, 10), "the upstream is back: the queue drains")
code, out, _ = cli(sd, "dead", "replay", str(ids[0]))
ok(code == 0 and "moved 1" in out and "running relay" in out, "dead replay ID moves one back", out)
ok(wait_until(lambda: [n for n, _, s in sent(up, "cli-a") if s == 200] == [1], 10),
   "the running relay sends it without a restart")
eq([k for n, k, s in sent(up, "cli-a") if s == 200], [first.get(1)],
   "with the Idempotency-Key of its first attempt")
code, res = cli_json(sd, "dead", "replay", "--all")
eq((code, res and res["replayed"]), (0, 2), "dead replay --all moves the other two")
ok(wait_until(lambda: [n for n, _, s in sent(up, "cli-a") if s == 200] == [1, 2, 3], 10),
   "and they are sent in their order")
ok(wait_until(lambda: relay.health()[1]["dead_letters"] == 0, 5), "the relay's dead-letter count follows")

up.behave(status=400, count=1)
post(relay, "cli-p", 1)
ok(wait_until(lambda: relay.health()[1]["dead_letters"] == 1, 10), "one more dead letter")
code, res = cli_json(sd, "dead", "purge")
eq((code, res and res["purged"]), (0, 1), "dead purge deletes it")
ok(wait_until(lambda: relay.health()[1]["dead_letters"] == 0, 5), "and the relay's count follows")
eq(cli(sd, "check")[:2], (0, "%s/queue.db: ok\n" % sd), "check: ok while the relay runs")

# --- usage and refusals --------------------------------------------------------------------
eq(cli(sd)[0], 2, "no command: exit 2")
eq(cli(sd, "bogus")[0], 2, "an unknown command: exit 2")
eq(cli(sd, "dead", "replay")[0], 2, "dead replay without --all or ids: exit 2")
code, _, err = cli(os.path.join(sd, "nowhere"), "stats")
ok(code == 1 and "no queue database" in err, "a state directory without a queue: exit 1, said", err)
code, _, err = cli(sd, "salvage")
ok(code == 1 and "stop it first" in err, "salvage refuses while the relay runs", err)
second = Relay(up, state_dir=sd)
second.start(wait=False)
code = second.proc.wait(30)
ok(code not in (0, None) and "in use by another process" in second.log_text(),
   "a second relay on the same state directory refuses to start", second.log_text()[-400:])

# --- a corrupt database at start-up ----------------------------------------------------------
up.behave(status=503, seconds=3600)
eq([post(relay, "cli-c", n, "x" * 3000) for n in range(1, 41)], [200] * 40, "40 messages queued")
eq(relay.stop(), 0, "the relay stops")
db = os.path.join(sd, "queue.db")
with open(db, "r+b") as f:
    data = f.read()
    page = int.from_bytes(data[16:18], "big")
    page = 65536 if page == 1 else page  # how the header writes 64 KB
    # Of the pages holding these messages' bodies, the middle one.
    rows = [n for n in range(len(data) // page) if b"x" * 3000 in data[n * page:(n + 1) * page]]
    victim = rows[len(rows) // 2] if rows else 0
    f.seek(victim * page)
    f.write(b"\xa5" * page)
diag("clobbered page %d of %d (%d bytes); %d hold the messages" % (victim, len(data) // page, page, len(rows)))
ok(len(rows) >= 3, "the messages fill several pages")
relay.start(wait=False)
code = relay.proc.wait(30)
log = relay.log_text()
ok(code not in (0, None), "the relay refuses to start on a corrupt database (exit %s)" % code)
ok(re.search(r"event=startup_failed .*corrupt.*watchrtc-relay queue --state-dir %s salvage"
             % re.escape(sd), log), "saying so, and naming the salvage command", log[-600:])
code, out, _ = cli(sd, "check")
ok(code == 1 and "DAMAGED" in out and "salvage" in out, "check: exit 1, damaged, names salvage", out)
# The service's user owns the file; salvage (run by root, say) must keep that.
owner = (41001, 41002) if os.geteuid() == 0 else (os.getuid(), os.getgid())
os.chown(db, *owner)
os.chmod(db, 0o640)
code, res = cli_json(sd, "salvage")
eq(code, 0, "salvage exits 0")
st = os.stat(db)
eq((st.st_uid, st.st_gid, st.st_mode & 0o777), owner + (0o640,),
   "the new queue.db keeps the old one's owner and mode")
res = res or {}
diag("salvage: %r" % res)
ok(30 <= res.get("messages", 0) < 40 and res.get("read_errors", 0) >= 1,
   "it keeps the readable messages and counts the damage")
ok(res.get("kept_instance_id") and os.path.exists(res.get("moved_to") or ""),
   "keeps the instance id and moves the damaged file aside")
eq(cli(sd, "check")[0], 0, "the new database checks ok")
up.reset()
relay.start()
want = res.get("messages", -1)
ok(wait_until(lambda: len([1 for _, _, s in sent(up, "cli-c") if s == 200]) == want, 20),
   "the relay starts and forwards every salvaged message (%d)" % want)
delivered = [(n, k) for n, k, s in sent(up, "cli-c") if s == 200]
eq([n for n, _ in delivered], sorted(n for n, _ in delivered), "in order")
ok(all(k.startswith(instance + "-") for _, k in delivered), "under the same instance id")
relay.stop()
done()

"""Kubernetes' fsGroup, reproduced: the state volume is root:G 2775 and the
TLS key from a Secret root:G 0440, and the relay runs as an unprivileged
user in group G.  It must start (warning that it cannot make the directory
0700), take and forward messages, and still refuse a key that others can
read.  Needs root (to make root-owned files and drop to another uid with
setpriv); no user is created: the ids are numeric and unused."""
import grp
import json
import os
import pwd
import shutil
import stat
import sys

sys.path.insert(0, os.environ.get("TESTS_SRCDIR", os.path.join(os.path.dirname(__file__), "..")))
from relaytest import (CERTS, Relay, done, eq, ok, request, require, start_upstream,  # noqa: E402
                       tempdir, wait_until)


def unused_id(exists, start):
    for i in range(start, start + 1000):
        try:
            exists(i)
        except KeyError:
            return i
    raise RuntimeError("no unused id")


require(None if os.geteuid() == 0 else "not root", "fsGroup test")
require(None if shutil.which("setpriv") else "no setpriv (util-linux)", "fsGroup test")

UID = unused_id(pwd.getpwuid, 41000)
GID = unused_id(grp.getgrgid, 41000)


class PodRelay(Relay):
    """The relay as the pod runs it: uid UID, primary group UID's own (as
    runAsUser without runAsGroup gives 0, any group but G will do),
    supplementary group G (fsGroup)."""

    def command(self):
        return ["setpriv", "--reuid=%d" % UID, "--regid=%d" % UID, "--groups=%d" % GID,
                "--"] + super().command()


base = tempdir("relay-fsgroup-")
os.chmod(base, 0o755)   # the pod's user must reach what is inside
state = os.path.join(base, "state")
os.mkdir(state)
os.chown(state, 0, GID)
os.chmod(state, 0o2775)
tls = os.path.join(base, "tls")
os.mkdir(tls, 0o755)
key, cert = os.path.join(tls, "tls.key"), os.path.join(tls, "tls.crt")
shutil.copy(os.path.join(CERTS, "server-key.pem"), key)
shutil.copy(os.path.join(CERTS, "server.pem"), cert)
for path, mode in ((key, 0o440), (cert, 0o444)):
    os.chown(path, 0, GID)
    os.chmod(path, mode)

up = start_upstream()
tls_args = ["--tls-cert", cert, "--tls-key", key]
relay = PodRelay(up, args=tls_args, state_dir=state).start(wait=False)
ok(relay.wait_live(), "the relay starts on a root:G 2775 volume with a root:G 0440 key",
   relay.log_text()[-2000:])
log = relay.log_text()
ok("event=state_dir_mode" in log and "cannot make it 0700" in log,
   "and warns that it cannot make the directory 0700", log[-2000:])
body = {"sessionId": "fsgroup-1", "projectId": "k", "data": ["userRating", None, {"rating": 5}, 1]}
status = request(relay.port, "POST", "/websocket/trace", json.dumps(body),
                 {"Content-Type": "application/json", "Origin": "https://app.example"})[0]
eq(status, 200, "a fallback POST is committed to the queue on that volume")
ok(wait_until(lambda: any(b"fsgroup-1" in r["body"] for r in up.requests()), 10),
   "and forwarded upstream")
db = os.stat(os.path.join(state, "queue.db"))
eq((db.st_uid, stat.S_IMODE(db.st_mode)), (UID, 0o600), "queue.db belongs to the relay's user, mode 0600")
eq(stat.S_IMODE(os.stat(state).st_mode), 0o2775, "the volume's mode is left as Kubernetes made it")
eq(relay.stop(), 0, "clean exit")

# What must still be refused.
os.chmod(key, 0o444)
bad = PodRelay(up, args=tls_args, state_dir=state).start(wait=False)
eq(bad.proc.wait(20), 2, "a key others can read is refused (exit 2, bad configuration)")
ok("accessible by others" in bad.log_text(), "and the log says why", bad.log_text()[-800:])
os.chmod(key, 0o440)
os.chmod(state, 0o2755)   # not writable by the group
bad = PodRelay(up, args=tls_args, state_dir=state).start(wait=False)
eq(bad.proc.wait(20), 1, "a state directory the relay cannot write still stops it")
ok("state directory" in bad.log_text(), "and the log says why", bad.log_text()[-800:])
done()

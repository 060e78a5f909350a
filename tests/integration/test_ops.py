"""Operations: settings documented everywhere they must be, the config file,
the admin listener, readiness reasons, logs, and `make install`."""
import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.environ.get("TESTS_SRCDIR", os.path.join(os.path.dirname(__file__), "..")))
from relaytest import (RELAY_BIN, TESTS_SRCDIR, Relay, done, eq, free_port, ok, request,  # noqa: E402
                       start_upstream, tempdir, wait_until)

TOP = os.path.dirname(TESTS_SRCDIR)
BUILDDIR = os.environ.get("BUILDDIR", os.path.dirname(os.path.dirname(RELAY_BIN)))


def run(args, **kw):
    return subprocess.run([RELAY_BIN] + args, capture_output=True, text=True, timeout=30, **kw)


def read(*parts):
    with open(os.path.join(TOP, *parts)) as f:
        return f.read()


# --- every setting is in --help, the README, the man page and the example config ---
help_text = run(["--help"]).stdout
settings = re.findall(r"^  --([a-z0-9-]+)", help_text, re.M)
ok(len(settings) > 40, "--help lists the settings (%d)" % len(settings))
file_settings = [s for s in settings if s not in ("config", "check-config", "help", "version")]
readme, man, example = read("README.md"), read("doc", "watchrtc-relay.8"), read("deploy", "watchrtc-relay.conf.example")
missing = [s for s in file_settings if "`%s`" % s not in readme]
eq(missing, [], "every setting is in the README's settings table")
missing = [s for s in settings if "\\-\\-" + s.replace("-", "\\-") not in man]
eq(missing, [], "every option is in the man page")
missing = [s for s in file_settings if not re.search(r"^# %s =" % re.escape(s), example, re.M)]
eq(missing, [], "every setting is in the example config, commented")
ok(all(re.search(r"\(default: ", line) for line in help_text.splitlines()
       if line.startswith("  --") and not re.match(r"  --(config|help|version) ", line)),
   "--help gives every setting's default")

# --- the config file -----------------------------------------------------------------
p = run(["--config", os.path.join(TOP, "deploy", "watchrtc-relay.conf.example"), "--check-config"])
eq((p.returncode, p.stdout.strip()), (0, "configuration ok"), "the example config passes --check-config")
d = tempdir()
bad = os.path.join(d, "bad.conf")
with open(bad, "w") as f:
    f.write("# a comment\nport = 9443\nno-such-setting = 1\n")
p = run(["--config", bad, "--check-config"])
ok(p.returncode != 0 and "bad.conf:3" in p.stderr and "no-such-setting" in p.stderr,
   "an unknown key is an error that names the file and line", p.stderr)
with open(bad, "w") as f:
    f.write("port = 99999\n")
p = run(["--config", bad, "--check-config"])
ok(p.returncode != 0 and "bad.conf:1" in p.stderr, "a bad value is an error that names the line", p.stderr)
ok(run(["--version"]).stdout.startswith("watchrtc-relay "), "--version prints the version")

# --- --check-config is as strict as a start, and both exit 2 on a bad configuration ---------
kd = tempdir("relay-check-")
for name in ("server.pem", "server-key.pem", "ca-key.pem"):
    shutil.copy(os.path.join(TESTS_SRCDIR, "certs", name), os.path.join(kd, name))
with open(os.path.join(kd, "junk.pem"), "w") as f:
    f.write("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
for name in ("server-key.pem", "ca-key.pem"):
    os.chmod(os.path.join(kd, name), 0o600)
cert, key = os.path.join(kd, "server.pem"), os.path.join(kd, "server-key.pem")
check_state = os.path.join(kd, "state")
good = ["--state-dir", check_state, "--tls-cert", cert, "--tls-key", key]
p = run(good + ["--check-config"])
eq((p.returncode, p.stdout.strip()), (0, "configuration ok"), "a good pair passes --check-config")
ok(not os.path.exists(check_state), "and --check-config creates nothing (no state directory)")
cases = [
    ("a key that is not the certificate's", ["--tls-key", os.path.join(kd, "ca-key.pem")],
     "not the certificate's key", None),
    ("a junk certificate", ["--tls-cert", os.path.join(kd, "junk.pem")], "junk.pem", None),
    ("a key with mode 0644", [], "accessible by others", 0o644),
    ("admin-listen 0.0.0.0:9100 without admin-allow-remote", ["--admin-listen", "0.0.0.0:9100"],
     "not a loopback address", None),
    ("a bad tls-priorities", ["--tls-priorities", "NORMAL:+NO-SUCH"], "tls-priorities", None),
]
for what, extra, says, key_mode in cases:
    os.chmod(key, key_mode or 0o600)
    p = run(good + extra + ["--check-config"])
    ok(p.returncode == 2 and says in p.stderr and "configuration ok" not in p.stdout,
       "--check-config refuses %s (exit 2)" % what, "%d %s %s" % (p.returncode, p.stdout, p.stderr))
    p = run(good + extra + ["--listen-address", "127.0.0.1", "--port", str(free_port())])
    ok(p.returncode == 2 and says in p.stderr, "and a start refuses it with exit 2 too",
       "%d %s" % (p.returncode, p.stderr[-600:]))
os.chmod(key, 0o600)

# --- the admin listener: plain HTTP, loopback only unless allowed -----------------------
up = start_upstream()
admin_port = free_port()
relay = Relay(up, args=["--admin-listen", "127.0.0.1:%d" % admin_port]).start()
conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=5)
conn.request("GET", "/metrics")
resp = conn.getresponse()
body = resp.read().decode()
eq(resp.status, 200, "the admin listener serves /metrics over plain HTTP")
ok("watchrtc_relay_queue_depth" in body, "with the queue figures")
conn.request("GET", "/healthcheck/live")
resp = conn.getresponse()
resp.read()
eq(resp.status, 200, "and /healthcheck/live")
conn.request("POST", "/websocket/trace", body="{}")
resp = conn.getresponse()
resp.read()
eq(resp.status, 404, "and nothing else: no ingest on the plaintext listener")
conn.close()

# --- metric names follow the Prometheus conventions and are documented -------------------
_, _, text = request(relay.port, "GET", "/metrics")
names = sorted(set(re.findall(r"^# TYPE (\S+) (\S+)", text.decode(), re.M)))
ok(all(n.startswith("watchrtc_relay_") or n.startswith("process_") for n, _ in names),
   "every metric is named watchrtc_relay_*, or is one of the standard process_* ones")
families = {n for n, _ in names}
collide = sorted(n for n in families for sfx in ("_total", "_created", "_count", "_sum", "_bucket", "_info")
                 if n.endswith(sfx) and n[:-len(sfx)] in families)
eq(collide, [], "no two families collide under OpenMetrics (X and X_total, ...)")
values = {m.group(1): float(m.group(2)) for m in re.finditer(r"^([a-z_]+) (\S+)$", text.decode(), re.M)}
ok(values.get("process_open_fds", 0) > 3 and values.get("process_max_fds", 0) >= values.get("process_open_fds", 0)
   and values.get("process_resident_memory_bytes", 0) > 1e6 and values.get("process_cpu_seconds_total", -1) >= 0
   and abs(values.get("process_start_time_seconds", 0) - time.time()) < 3600,
   "process_* give the relay's descriptors, memory, CPU and start time", values)
version = run(["--version"]).stdout.split()[-1]
ok('watchrtc_relay_build_info{version="%s"} 1' % version in text.decode(), "build_info carries the version")
promtool = shutil.which("promtool")
if promtool:
    p = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    eq((p.returncode, (p.stdout + p.stderr).decode()), (0, ""), "promtool check metrics finds nothing")
elif os.environ.get("CI") == "true":
    ok(False, "promtool check metrics: no promtool in CI (apt-get install prometheus)")
else:
    ok(True, "# SKIP promtool check metrics: no promtool (apt-get install prometheus)")
ok(all(n.endswith("_total") for n, t in names if t == "counter"), "every counter ends in _total")
undocumented = [n for n, _ in names if "`%s`" % n not in readme and "`%s{" % n not in readme]
eq(undocumented, [], "every metric is documented in the README")
samples = re.findall(r"^([a-z_]+)(\{[^}]*\})? ", text.decode(), re.M)
mixed = sorted({n for n, l in samples if not l} & {n for n, l in samples if l})
eq(mixed, [], "no metric has both a labelled and an unlabelled series")
ok(("watchrtc_relay_dead_letters", "gauge") in names,
   "watchrtc_relay_dead_letters{reason} is declared even with no dead letters")

# --- logs: logfmt, levels, API keys never in full --------------------------------------------
wsc = os.environ.get("WSC_BIN")
subprocess.run([wsc, "--port", str(relay.port), "--path", "/websocket?apiKey=supersecretkey123&sessionId=logs",
                "recv", "close 1000", "expect-close 1000"], capture_output=True, timeout=20)
relay.stop()
log = relay.log_text()
lines = [l for l in log.splitlines() if l.strip()]
bad_lines = [l for l in lines if not re.match(r"^ts=\S+ level=(debug|info|warn|error) event=[a-z_]+( |$)", l)]
eq(bad_lines[:3], [], "every log line is logfmt with ts, level and event")
ok("supersecretkey123" not in log, "the API key never appears in full in the log")
ok("supe..." in log, "it is logged as a short prefix")

p = subprocess.run([RELAY_BIN, "--listen-address", "127.0.0.1", "--port", str(free_port()),
                    "--state-dir", tempdir(), "--admin-listen", "0.0.0.0:%d" % free_port()],
                   capture_output=True, text=True, timeout=30)
ok(p.returncode != 0 and "loopback" in p.stderr, "a non-loopback admin-listen is refused unless allowed",
   p.stderr[-500:])

# --- readiness reasons: old messages, a failing upstream ---------------------------------------
up.behave(status=503, seconds=3600)
r2 = Relay(up, args=["--ready-max-oldest-age-s", "1", "--ready-max-upstream-down-s", "1"]).start()
status, _, _ = request(r2.port, "POST", "/websocket/trace", '{"sessionId":"old","data":[1]}',
                       {"Content-Type": "application/json"})
eq(status, 200, "a message is accepted while the upstream refuses")
reason = wait_until(lambda: r2.health()[1].get("reason"), 10)
ok(reason and ("oldest message" in reason or "upstream failing" in reason),
   "/healthcheck turns 503 with the reason once the message is old or the upstream has failed long enough", reason)
eq(r2.get("/healthcheck/live")[0], 200, "while /healthcheck/live stays 200 (liveness is not readiness)")
up.reset()
ok(wait_until(lambda: r2.health()[0] == 200, 15), "ready again once the queue drains")
r2.stop()

# --- make install: the binary, the man page, the config, the unit ------------------------------
if shutil.which("make") and os.path.exists(os.path.join(BUILDDIR, "Makefile")):
    dest = tempdir("destdir-")
    # prefix at install time (as a packager does): the unit must follow it.
    p = subprocess.run(["make", "-C", BUILDDIR, "install", "prefix=/usr", "DESTDIR=" + dest],
                       capture_output=True, text=True, timeout=300)
    eq(p.returncode, 0, "make install prefix=/usr DESTDIR=... succeeds", )
    found = sorted(os.path.relpath(os.path.join(dp, f), dest) for dp, _, fs in os.walk(dest) for f in fs)
    for want in (r"bin/watchrtc-relay$", r"share/man/man8/watchrtc-relay\.8$",
                 r"etc/watchrtc-relay/watchrtc-relay\.conf\.example$", r"etc/watchrtc-relay/watchrtc-relay\.conf$",
                 r"lib/systemd/system/watchrtc-relay\.service$"):
        ok(any(re.search(want, f) for f in found), "installs " + want.replace("\\", "").rstrip("$"), found)
    unit = [os.path.join(dest, f) for f in found if f.endswith(".service")]
    conf = [f for f in found if f.endswith("watchrtc-relay/watchrtc-relay.conf")]
    if unit and conf:
        text = open(unit[0]).read()
        eq(re.findall(r"^ExecStart=(.*)$", text, re.M),
           ["/usr/bin/watchrtc-relay --config /" + conf[0]],
           "the unit runs the binary and the config where prefix=/usr put them")
        conf_text = open(os.path.join(dest, conf[0])).read()
        ok("StateDirectory=watchrtc-relay" in text and "--state-dir" not in text and
           re.search(r"^state-dir = /var/lib/watchrtc-relay$", conf_text, re.M),
           "state-dir is in the installed config (the unit's StateDirectory), not on the unit's command line")
        eq([l for l in conf_text.splitlines() if l.strip() and not l.startswith("#")],
           ["state-dir = /var/lib/watchrtc-relay"], "and is its only setting: the rest are the defaults")
        p = subprocess.run([RELAY_BIN, "queue", "--config", os.path.join(dest, conf[0]), "stats"],
                           capture_output=True, text=True, timeout=30)
        ok("/var/lib/watchrtc-relay/queue.db" in p.stdout + p.stderr,
           "so `queue --config` looks for the service's queue", p.stdout + p.stderr)
    if unit and shutil.which("systemd-analyze"):
        text = open(unit[0]).read()
        ok("@bindir@" not in text and "/bin/watchrtc-relay --config" in text, "the unit names the installed binary")
        # Verify the unit as the target system would see it: paths under the DESTDIR.
        with tempfile.TemporaryDirectory() as td:
            copy = os.path.join(td, "watchrtc-relay.service")
            with open(copy, "w") as f:
                f.write(re.sub(r"^ExecStart=(\S+)", lambda m: "ExecStart=" + dest + m.group(1), text, flags=re.M))
            p = subprocess.run(["systemd-analyze", "verify", copy], capture_output=True, text=True, timeout=60)
            # The man page is not installed on this machine: that check is not the unit's fault.
            problems = [l for l in (p.stdout + p.stderr).splitlines()
                        if "watchrtc-relay.service" in l and "Command 'man " not in l]
            eq(problems, [], "systemd-analyze verify finds nothing wrong with the unit")
else:
    ok(True, "# SKIP make install: no build tree at " + BUILDDIR)

# --- the Docker build context: a tree built in place must not leak into it ------------------------


def dockerignored(path, patterns):
    """Docker's rule: the last pattern matching path or a directory above it wins."""
    parts = path.split("/")
    hit = False
    for neg, rx in patterns:
        if any(rx.fullmatch("/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            hit = not neg
    return hit


if os.path.exists(os.path.join(TOP, ".dockerignore")):
    pats = []
    for line in read(".dockerignore").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            neg = line.startswith("!")
            g = line.lstrip("!")
            rx = re.escape(g).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
            pats.append((neg, re.compile(rx)))
    # A VPATH build directory inside the tree (make distcheck's) goes by a
    # name .dockerignore cannot know, unless it is one of the usual ones.
    vpath = os.path.relpath(os.path.abspath(BUILDDIR), os.path.abspath(TOP))
    skip = vpath if vpath not in (".", "_build", "build") and not vpath.startswith("..") else None
    context = [f for f in (os.path.relpath(os.path.join(dp, n), TOP) for dp, _, fs in os.walk(TOP) for n in fs)
               if not (skip and (f + "/").startswith(skip + "/"))]
    sent = [f for f in context if not dockerignored(f, pats)]
    elf = [f for f in sent if open(os.path.join(TOP, f), "rb").read(4) == b"\x7fELF"]
    eq(elf, [], "no binary of a local build is in the Docker build context")
    eq([f for f in sent if re.search(r"(^|/)(Makefile|config\.status|configure|build-config\.h)$", f)], [],
       "nor a configured tree's Makefile, configure or config.status (the image configures its own)")
    for need in ("configure.ac", "Makefile.am", "autogen.sh", "build-aux/tap-driver.sh", "server/main.c",
                 "queue/queue.h", "deploy/watchrtc-relay.conf.example", "tests/unit/test-config.c"):
        ok(need in sent, "the context has " + need)
done()

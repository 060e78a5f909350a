"""Runs the browser end-to-end test (browser.mjs) for make check.

It needs node, Debian's chromium (apt-get install chromium), the pinned npm
packages (npm ci --prefix tests/e2e) and an empty network namespace
(unshare --net, and ip from iproute2).  Without them the test is skipped and
says why, except in CI (CI=true), where they must be there.
WATCHRTC_E2E_SKIP=<reason> skips it in any case: .ci/run sets it for make
distcheck, since the release tarball carries no node_modules.

The whole test (node, the relay, the mock upstream, the browser and the
call between the page's two peer connections) runs in a network namespace
of its own that has nothing but loopback, so nothing in it can reach, or
use, any other address.

node runs in a process group of its own; when it ends, or after
HARD_TIMEOUT_S, that whole group (the relay and the mock upstream with it)
is killed, so nothing the test started outlives it.  Chromium, which
playwright starts in a group of its own, exits when node's pipe to it
closes.
"""
import os
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CHROMIUM = "/usr/bin/chromium"
PACKAGES = ("@testrtc/watchrtc-sdk", "playwright-core", "lz-string")
HARD_TIMEOUT_S = 240   # browser.mjs gives up by itself well before this
TERM_GRACE_S = 10      # after SIGTERM, before SIGKILL
NETNS_PROBE_S = 10     # trying out the network namespace


def netns_prefix():
    """The command prefix that runs a command in a new network namespace
    with only loopback up (root, or any user where user namespaces work)."""
    unshare = ["unshare", "--net"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    return unshare + ["sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


def missing_piece():
    """What the test lacks to run, or None."""
    if not shutil.which("node"):
        return "node is not installed"
    if not os.access(CHROMIUM, os.X_OK):
        return CHROMIUM + " is not installed (apt-get install chromium)"
    for pkg in PACKAGES:
        if not os.path.isfile(os.path.join(HERE, "node_modules", pkg, "package.json")):
            return "npm package %s is not installed (npm ci --prefix tests/e2e)" % pkg
    try:
        probe = subprocess.run(netns_prefix() + ["true"], capture_output=True, text=True,
                               timeout=NETNS_PROBE_S)
        err = (probe.stderr.strip() or "exit status %d" % probe.returncode) if probe.returncode else None
    except (OSError, subprocess.TimeoutExpired) as e:
        err = str(e)
    if err:
        return "no empty network namespace (unshare --net; ip from iproute2): " + err
    return None


def kill_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def stop_group(pgid):
    kill_group(pgid, signal.SIGTERM)
    end = time.monotonic() + TERM_GRACE_S
    while group_alive(pgid) and time.monotonic() < end:
        time.sleep(0.1)
    kill_group(pgid, signal.SIGKILL)


def main():
    reason = os.environ.get("WATCHRTC_E2E_SKIP")
    if reason:
        print("1..0 # SKIP " + reason)
        return 0
    reason = missing_piece()
    if reason and os.environ.get("CI") != "true":
        print("1..0 # SKIP browser end-to-end test: " + reason)
        return 0
    if reason:
        print("1..1\nnot ok 1 - browser end-to-end test cannot run in CI: " + reason)
        return 1

    env = dict(os.environ, E2E_PYTHON=sys.executable, E2E_CHROMIUM=CHROMIUM)
    sys.stdout.flush()
    proc = subprocess.Popen(netns_prefix() + ["node", os.path.join(HERE, "browser.mjs")], env=env,
                            start_new_session=True)

    def on_signal(signum, _frame):
        # make (or a person) stopping the test stops everything it started.
        stop_group(proc.pid)
        sys.exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        return proc.wait(HARD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print("Bail out! the browser test ran longer than %d s" % HARD_TIMEOUT_S, flush=True)
        return 1
    finally:
        stop_group(proc.pid)


if __name__ == "__main__":
    sys.exit(main())

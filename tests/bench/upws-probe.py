#!/usr/bin/env python3
"""upws-probe.py - what one upstream websocket costs: RSS and CPU per
connection of the relay's design (server/upstream/upstream_ws.c: libcurl connects,
GnuTLS with one set of credentials for the process) beside libcurl's own TLS
per connection (CONNECT_ONLY on https://), each with the system CA bundle
and with a one-certificate CA file; plus the two libcurl facts the design
relies on.  BENCHMARKS.md ("Upstream websockets") has the figures.

    tests/bench/upws-probe.py [--conns 1000] [--runs 3]

Needs nginx and a build tree (BUILDDIR, default the current directory): the
benchmark's nginx (bench.py's configuration) terminates TLS in front of
wssink, so the probe's process holds only the client side.  The system
bundle is used with the test CA appended, so that both designs parse all of
it and the server's certificate still verifies.  Prints a Markdown table.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, HERE)
import bench  # noqa: E402

SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", choices=("shared", "curl-tls"),
                    help="measure one design only (e.g. --only shared --conns 3000)")
    args = ap.parse_args()
    builddir = os.environ.get("BUILDDIR", os.getcwd())
    probe = os.path.join(builddir, "tests", "bench", "upws-probe")
    wssink = os.path.join(builddir, "tests", "bench", "wssink")
    tmp = tempfile.mkdtemp(prefix="upws-probe-")
    try:
        sink = bench.spawn([wssink, "--port", "0"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL)
        sink_port = int(sink.stdout.readline().decode().split()[1])
        ws_port, post_port = bench.free_port(), bench.free_port()
        prefix = os.path.join(tmp, "nginx")
        os.makedirs(prefix)
        conf = bench.NGINX_CONF % dict(
            user="user root;" if os.geteuid() == 0 else "", prefix=prefix, nofile=65536,
            worker_connections=65436,
            cert=os.path.join(bench.CERTS, "server.pem"),
            key=os.path.join(bench.CERTS, "server-key.pem"),
            ws_port=ws_port, post_port=post_port, sink_port=sink_port)
        with open(os.path.join(prefix, "nginx.conf"), "w") as f:
            f.write(conf)
        nginx = bench.spawn([shutil.which("nginx") or "/usr/sbin/nginx", "-p", prefix, "-c",
                             os.path.join(prefix, "nginx.conf"), "-e",
                             os.path.join(prefix, "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

        def up():
            try:
                with socket.create_connection(("127.0.0.1", ws_port), 0.5):
                    return True
            except OSError:
                return nginx.poll() is not None
        if not bench.wait_until(up, 10) or nginx.poll() is not None:
            sys.exit("nginx did not start")
        bundle = os.path.join(tmp, "bundle.pem")
        with open(bundle, "wb") as out:
            for src in (SYSTEM_BUNDLE, os.path.join(bench.CERTS, "ca.pem")):
                with open(src, "rb") as f:
                    out.write(f.read())
        ncerts = open(bundle).read().count("BEGIN CERTIFICATE")
        one = os.path.join(bench.CERTS, "ca.pem")
        url = "https://127.0.0.1:%d/" % ws_port

        facts = subprocess.run([probe, "--mode", "facts", "--url",
                                "http://127.0.0.1:%d/" % sink_port],
                               stdout=subprocess.PIPE, timeout=60).stdout.decode().splitlines()
        results = {}
        configs = (("shared", "bundle", bundle, []), ("shared", "one", one, []),
                   ("shared-warm", "bundle", bundle, []),
                   ("curl-tls", "bundle", bundle, []), ("curl-tls", "one", one, []),
                   ("curl-tls+capath", "one", one, ["--capath-default"]))
        for run in range(args.runs):
            for mode, ca_name, ca, extra in configs:
                if args.only and mode.split("+")[0].split("-")[0] != args.only.split("-")[0]:
                    continue
                p = subprocess.run([probe, "--mode", mode.split("+")[0], "--url", url,
                                    "--ca", ca, "--conns", str(args.conns)] + extra,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=1800)
                line = p.stdout.decode().strip().splitlines()
                if p.returncode != 0 or not line:
                    sys.exit("probe %s %s failed: %s" % (mode, ca_name, p.stderr.decode()[-2000:]))
                r = json.loads(line[-1])
                bench.log("run %d %s/%s: %s" % (run + 1, mode, ca_name, line[-1]))
                results.setdefault((mode, ca_name), []).append(r)
        print("Probe: %d websockets opened and held per process, %d run(s), medians; "
              "CA bundle = the system bundle (%d certificates with the test CA)." %
              (args.conns, args.runs, ncerts))
        print()
        print("| design | CA file | RSS per websocket | after malloc_trim | heap in use "
              "| CPU per websocket | time to open all |")
        print("|---|---|---|---|---|---|---|")
        for (mode, ca_name), rs in sorted(results.items()):
            med = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
            print("| %s | %s | %.1f KB | %.1f KB | %.1f KB | %.2f ms | %.1f s |" % (
                {"curl-tls": "libcurl TLS per connection",
                 "curl-tls+capath": "libcurl TLS per connection, default CA path kept",
                 "shared": "shared GnuTLS credentials (upstream_ws.c)",
                 "shared-warm": "the same, each resuming an open websocket's TLS session"}[mode],
                "%d certificates" % ncerts if ca_name == "bundle" else "1 certificate"
                + (" + /etc/ssl/certs" if mode.endswith("capath") else ""),
                med("rss_per_conn_kb"), med("rss_trimmed_per_conn_kb"), med("heap_per_conn_kb"),
                med("cpu_per_conn_ms"), med("seconds")))
        if ("shared", "bundle") in results and ("curl-tls", "bundle") in results:
            sh = statistics.median(r["rss_per_conn_kb"] for r in results[("shared", "bundle")])
            cu = statistics.median(r["rss_per_conn_kb"] for r in results[("curl-tls", "bundle")])
            print()
            print("RSS ratio with the bundle, shared / libcurl TLS: %.3f" % (sh / cu))
        print()
        for f in facts:
            print("    " + f)
    finally:
        bench.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

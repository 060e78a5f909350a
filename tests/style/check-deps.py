#!/usr/bin/env python3
"""check-deps.py - no two modules of the relay depend on each other.

A module is a file pair (foo.c + foo.h).  Module a depends on module b when
a.c includes "b.h" or when a.c's object calls a function (or uses a
variable) that b.c's object defines, as `nm` reads them from the built
libraries.  Two modules that depend on each other form a cycle: the
printed pairs are what doc/CODE_STYLE.md forbids.  TAP output, one test per
library and one for includes.

Usage: check-deps.py [SRCDIR BUILDDIR]   (default: $TESTS_SRCDIR/.. and $BUILDDIR)
"""
import os
import re
import subprocess
import sys

LIBS = ["common/libcommon.a", "queue/libqueue.a", "server/librelay.a"]
DIRS = ["common", "queue", "server"]


def module_of(path):
    """server/librelay_a-http.o -> http; server/ingest/http.c -> http."""
    base = os.path.basename(path)
    base = re.sub(r"^.*_a-", "", base)
    return os.path.splitext(base)[0]


def call_edges(builddir):
    defined, used = {}, {}
    for lib in LIBS:
        path = os.path.join(builddir, lib)
        if not os.path.exists(path):
            raise SystemExit("Bail out! %s is not built" % path)
        out = subprocess.run(["nm", "-A", path], capture_output=True, text=True,
                             check=True).stdout
        for line in out.splitlines():
            # "lib.a:member.o:                 U symbol" or "...: 0000 T symbol"
            m = re.match(r"^[^:]+:([^:]+):\s*(?:[0-9a-f]+)?\s+([A-Za-z])\s+(\S+)$", line)
            if not m:
                continue
            member, kind, sym = m.groups()
            mod = module_of(member)
            if kind == "U":
                used.setdefault(mod, set()).add(sym)
            elif kind in "TDBR":
                defined[sym] = mod
    edges = set()
    for mod, syms in used.items():
        for sym in syms:
            other = defined.get(sym)
            if other and other != mod:
                edges.add((mod, other))
    return edges


def include_edges(srcdir):
    modules = set()
    sources = []
    for d in DIRS:
        for root, _, files in os.walk(os.path.join(srcdir, d)):
            for f in files:
                if f.endswith(".c"):
                    modules.add(f[:-2])
                    sources.append(os.path.join(root, f))
    edges = set()
    for path in sources:
        mod = os.path.basename(path)[:-2]
        with open(path, encoding="utf-8") as fh:
            for inc in re.findall(r'^#include "(?:[^"]*/)?([^"/]+)\.h"', fh.read(), re.M):
                if inc in modules and inc != mod:
                    edges.add((mod, inc))
    return edges


def cycles(edges):
    return sorted({tuple(sorted((a, b))) for (a, b) in edges if (b, a) in edges})


def main():
    if len(sys.argv) == 3:
        srcdir, builddir = sys.argv[1], sys.argv[2]
    else:
        srcdir = os.path.join(os.environ.get("TESTS_SRCDIR", "tests"), "..")
        builddir = os.environ.get("BUILDDIR", ".")
    n = 0
    failed = 0
    for what, edges in (("calls between objects", call_edges(builddir)),
                        ("includes between modules", include_edges(srcdir))):
        n += 1
        found = cycles(edges)
        if found:
            failed += 1
            print("not ok %d - no cycle in %s (%d edges)" % (n, what, len(edges)))
            for a, b in found:
                print("#   %s <-> %s" % (a, b))
        else:
            print("ok %d - no cycle in %s (%d edges)" % (n, what, len(edges)))
    print("1..%d" % n)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/bin/sh
# run.sh - watchrtc-relay's benchmark: the relay beside nginx and beside the
# machine's raw SQLite and libcurl rates (BENCHMARKS.md says what it does).
#
#   tests/bench/run.sh [--smoke] [--runs N] [--out FILE.md] [--json FILE]
#
# `make bench` runs it in full (3 runs of everything, medians, ~20 min);
# --smoke is CI's ~20-second run of every step with small counts, which
# exits non-zero if anything failed.  It needs nginx (apt-get install
# nginx-light) and the programs of a build tree: BUILDDIR (default: the
# current directory if it has server/watchrtc-relay, else the source tree).
# The driver itself is bench.py (Python 3, standard library only).
here=$(cd "$(dirname "$0")" && pwd)
exec "${PYTHON3:-python3}" "$here/bench.py" "$@"

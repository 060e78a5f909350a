#!/bin/sh
# Runs every libFuzzer target built in BUILDDIR/tests/fuzz for SECONDS each,
# starting from its seed corpus (copied, so the tree stays unchanged).  A
# crash leaves its input in BUILDDIR/tests/fuzz/crashes/ and fails the run;
# put such inputs under tests/fuzz/regressions/<target>/ so they are replayed.
# Usage: tests/fuzz/run.sh BUILDDIR SECONDS
set -u
builddir=$1
seconds=${2:-30}
srcdir=$(cd "$(dirname "$0")" && pwd)
status=0
mkdir -p "$builddir/tests/fuzz/crashes"
for bin in "$builddir"/tests/fuzz/fuzz-*; do
	[ -x "$bin" ] || continue
	name=$(basename "$bin")
	work=$(mktemp -d)
	[ -d "$srcdir/corpus/$name" ] && cp -r "$srcdir/corpus/$name/." "$work/"
	dict=""
	[ -f "$srcdir/$name.dict" ] && dict="-dict=$srcdir/$name.dict"
	# Known crash inputs first: each must now run clean.
	if [ -d "$srcdir/regressions/$name" ] &&
	   ! "$bin" $(find "$srcdir/regressions/$name" -type f) >/dev/null 2>&1; then
		echo "FAIL $name: a regression input crashes again"
		status=1
	fi
	if "$bin" $dict -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
	      -artifact_prefix="$builddir/tests/fuzz/crashes/$name-" "$work" \
	      >"$builddir/tests/fuzz/$name.log" 2>&1; then
		echo "ok   $name: $(grep -o 'stat::number_of_executed_[a-z]*: *[0-9]*' "$builddir/tests/fuzz/$name.log" | grep -o '[0-9]*$' || tail -n 1 "$builddir/tests/fuzz/$name.log") runs in ${seconds}s"
	else
		echo "FAIL $name: see $builddir/tests/fuzz/$name.log"
		tail -n 30 "$builddir/tests/fuzz/$name.log"
		status=1
	fi
	rm -rf "$work"
done
exit $status

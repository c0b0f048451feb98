#!/usr/bin/env bash
# fuzz.sh PKG TARGET FUZZTIME: one short fuzz run of TARGET in PKG for
# `make fuzz`. Go 1.26's fuzz coordinator can fail a duration-bounded run
# with a bare "context deadline exceeded" when a loaded machine's worker is
# mid-call as -fuzztime expires (golang/go#75804, fixed in Go 1.27): no
# input was found then (a finding always prints "Failing input written
# to"). Such a run is retried once; any other failure fails at once.
set -u
pkg=$1 fn=$2 t=$3
go=${GO:-go}
for try in 1 2; do
	log=$(mktemp)
	"$go" test -run='^$' -fuzz="^$fn\$" -fuzztime="$t" "$pkg" 2>&1 | tee "$log"
	rc=${PIPESTATUS[0]}
	if [ "$rc" = 0 ]; then
		rm -f "$log"
		exit 0
	fi
	if [ "$try" = 1 ] && grep -q 'context deadline exceeded' "$log" &&
		! grep -q -e 'Failing input written to' -e '^panic:' -e 'fuzz: minimizing' "$log"; then
		echo "fuzz.sh: $fn: the Go 1.26 fuzztime shutdown race (golang/go#75804), no input found: retrying once"
		rm -f "$log"
		continue
	fi
	rm -f "$log"
	exit "$rc"
done
exit 1

#!/bin/bash
# Run every libFuzzer harness (make fuzz-build) for SECONDS each (default
# 10; `make fuzz` uses FUZZ_SECONDS=60), starting from its committed corpus
# under tests/fuzz/corpus/; new inputs go to build/fuzz/corpus/, not the
# repository.  A crash, leak or sanitizer report fails, with the input
# kept in build/fuzz/ and the report printed.  TAP, executions per
# harness, then "N passed, N failed".
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
secs=${1:-10}
n=0 pass=0 fail=0
echo "TAP version 13"
for h in build/fuzz/*; do
	[ -f "$h" ] && [ -x "$h" ] || continue
	name=${h##*/}
	seed=tests/fuzz/corpus/$name
	work=build/fuzz/corpus/$name
	mkdir -p "$work" "$seed"
	log=build/fuzz/$name.log
	n=$((n + 1))
	if "$h" -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="build/fuzz/$name-" \
		"$work" "$seed" >"$log" 2>&1; then
		execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
		pass=$((pass + 1))
		echo "ok $n fuzz $name: ${execs:-?} executions in ${secs} s, no report"
	else
		grep -E "ERROR|SUMMARY|Test unit written|==[0-9]+==" "$log" | head -n 20 | sed 's/^/# /'
		fail=$((fail + 1))
		echo "not ok $n fuzz $name: crashed (log: $log)"
	fi
done
[ "$n" -gt 0 ] || { echo "not ok 1 no fuzz harness built (make fuzz-build)"; fail=1; n=1; }
echo "1..$n"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]

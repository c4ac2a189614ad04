#!/bin/bash
# Run every libFuzzer harness (make fuzz-build) for SECONDS each (default
# 10; `make fuzz` uses FUZZ_SECONDS=60), starting from its committed corpus
# under tests/fuzz/corpus/; new inputs go to build/fuzz/corpus/, not the
# repository.  A crash, leak or sanitizer report fails, with the input
# kept in build/fuzz/ and the report printed.  TAP, executions per
# harness, then "N passed, N failed".  Harnesses run side by side, one
# per CPU.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
secs=${1:-10}
n=0 pass=0 fail=0
# Each harness is one process on one CPU: as many at a time as there are
# CPUs, reported in order once all are done.
jobs=$(nproc 2>/dev/null || echo 1)
harnesses=()
for h in build/fuzz/*; do
	[ -f "$h" ] && [ -x "$h" ] && harnesses+=("$h")
done
run_one() {	# run_one HARNESS: its verdict in build/fuzz/NAME.rc
	local h=$1 name=${1##*/}
	local seed=tests/fuzz/corpus/$name work=build/fuzz/corpus/$name
	mkdir -p "$work" "$seed"
	"$h" -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="build/fuzz/$name-" \
		"$work" "$seed" >"build/fuzz/$name.log" 2>&1
	echo $? >"build/fuzz/$name.rc"
}
running=0
for h in "${harnesses[@]}"; do
	rm -f "build/fuzz/${h##*/}.rc"
	run_one "$h" &
	running=$((running + 1))
	if [ "$running" -ge "$jobs" ]; then
		wait -n
		running=$((running - 1))
	fi
done
wait
echo "TAP version 13"
for h in "${harnesses[@]}"; do
	name=${h##*/}
	log=build/fuzz/$name.log
	n=$((n + 1))
	if [ "$(cat "build/fuzz/$name.rc" 2>/dev/null)" = 0 ]; then
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

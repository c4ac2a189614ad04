#!/bin/bash
# libferry's tests rebuilt with sanitizers (make sanitize-tests): ASan +
# UBSan over every userspace test, TSan over the threaded ones (channels,
# waitset).  Reports from any process -- the tests' forked helpers and
# children too -- go to files; any file at all fails the run and is
# printed.  TAP, then "N passed, N failed".
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1

reports=$(mktemp -d)
trap 'rm -rf "$reports"' EXIT
n=0 pass=0 fail=0
check() {	# check OK|FAIL description
	n=$((n + 1))
	if [ "$1" = OK ]; then pass=$((pass + 1)); echo "ok $n $2"
	else fail=$((fail + 1)); echo "not ok $n $2"; fi
}
echo "TAP version 13"

# run KIND BIN: one test binary; its cases are summed up in one line.
run() {
	local kind=$1 bin=$2 out rc totals
	out=$(mktemp)
	"$bin" >"$out" 2>&1
	rc=$?
	totals=$(grep -m1 '^# Totals:' "$out")
	if [ $rc -eq 0 ]; then
		check OK "$kind ${bin##*/}: ${totals#\# Totals: }"
	else
		grep -E '^not ok|FAIL' "$out" | sed 's/^/# /' | head -n 20
		check FAIL "$kind ${bin##*/} exited $rc"
	fi
	rm -f "$out"
}

export ASAN_OPTIONS="log_path=$reports/asan:detect_leaks=1:abort_on_error=0"
export UBSAN_OPTIONS="log_path=$reports/ubsan:print_stacktrace=1:halt_on_error=1"
for t in build/asan/tests/userspace/*; do
	[ -x "$t" ] && run "ASan+UBSan" "$t"
done
unset ASAN_OPTIONS UBSAN_OPTIONS
export TSAN_OPTIONS="log_path=$reports/tsan:halt_on_error=0:second_deadlock_stack=1"
for t in build/tsan/tests/userspace/*; do
	[ -x "$t" ] && run "TSan" "$t"
done
unset TSAN_OPTIONS

if ls "$reports"/* >/dev/null 2>&1; then
	for f in "$reports"/*; do
		echo "# ---- $(basename "$f")"
		sed 's/^/# /' "$f" | head -n 60
	done
	check FAIL "sanitizer reports: $(ls "$reports" | wc -l) file(s)"
else
	check OK "no sanitizer report from any process"
fi
echo "1..$n"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]

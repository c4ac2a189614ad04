#!/bin/bash
# The Python package against build/python (make python): its tests
# (userspace/python/tests, pytest; the GPU ones skip without torch and
# CUDA) and its examples on the CPU path, in TAP, ending with
# "N passed, N failed".  PYTHON picks the interpreter (default: Debian's).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 1
py=${PYTHON:-/usr/bin/python3}
[ -x "$py" ] || py=python3
export PYTHONPATH=$root/build/python${PYTHONPATH:+:$PYTHONPATH}
n=0 pass=0 fail=0 skip=0
out=$(mktemp)
trap 'rm -f "$out"' EXIT
echo "TAP version 13"
[ -f build/python/ferry/__init__.py ] || { echo "not ok 1 no build/python (make python)"; echo "0 passed, 1 failed"; exit 1; }

# -v prints "file::test RESULT" per case; the failures' reports follow.
"$py" -m pytest -v -rs -p no:cacheprovider -o console_output_style=classic \
	userspace/python/tests >"$out" 2>&1
rc=$?
while IFS= read -r line; do
	if [[ $line =~ ^([^[:space:]]+\.py(::[^[:space:]]+)?)\ (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) ]]; then
		n=$((n + 1))
		case ${BASH_REMATCH[3]} in
		PASSED|XFAIL) pass=$((pass + 1)); echo "ok $n ${BASH_REMATCH[1]}" ;;
		SKIPPED) skip=$((skip + 1)); echo "ok $n ${BASH_REMATCH[1]} # SKIP" ;;
		*) fail=$((fail + 1)); echo "not ok $n ${BASH_REMATCH[1]}" ;;
		esac
	elif [[ $line =~ ^SKIPPED\ \[[0-9]+\]\ ([^:]+\.py):[0-9]+:\ (.*)$ ]] &&
	     ! grep -q "^${BASH_REMATCH[1]}::" "$out"; then
		# a whole file skipped (no torch, no GPU): one line for it
		n=$((n + 1)) skip=$((skip + 1))
		echo "ok $n ${BASH_REMATCH[1]} # SKIP ${BASH_REMATCH[2]}"
	fi
done <"$out"
if [ "$fail" -ne 0 ] || [ "$n" -eq 0 ] || { [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; }; then
	sed 's/^/# /' "$out"
	[ "$fail" -ne 0 ] || { n=$((n + 1)); fail=$((fail + 1)); echo "not ok $n pytest exited $rc"; }
fi

# The examples, as a user runs them (each checks its own results).
for ex in userspace/python/examples/*.py; do
	[ -e "$ex" ] || continue
	n=$((n + 1))
	if timeout 300 "$py" "$ex" --cpu >"$out" 2>&1; then
		pass=$((pass + 1)); echo "ok $n example $(basename "$ex")"
	else
		sed 's/^/# /' "$out"; fail=$((fail + 1)); echo "not ok $n example $(basename "$ex")"
	fi
done
[ "$skip" -eq 0 ] || echo "# skipped: $skip"
echo "1..$n"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]

#!/bin/bash
# Everything a GPU machine is needed for, in one go, from a tree built on
# Debian (`make lib tools python build-tests`; carry build/tests/gpu,
# build/tests/fixtures, build/tests/userspace, build/ferry-bench,
# build/ferry-demo and build/python to the GPU host):
#   - the GPU tests (tests/gpu) on the real driver, and libferry's tests
#     on that host's CPUs;
#   - the benchmarks the open issues measure, each RUNS times (default 2):
#     ferry-bench gpu, e2e (also with FERRY_HELPER_POLL=1), msg (spin),
#     msg --sleep, msg --service-us 1000 and 100, msg --scale;
#   - the Python package's GPU cases and its bench against
#     torch.multiprocessing (scripts/python-gpu.sh), unless NO_PYTHON=1;
#   - the main job, build/ferry-demo.
# Logs go to $OUT (default: a new folder under /tmp); summary.txt there
# holds every bench's machine-readable last line.  Exits non-zero if a
# test failed.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
cd "$root" || exit 1
out=${OUT:-$(mktemp -d)}
runs=${RUNS:-2}
mkdir -p "$out"
summary=$out/summary.txt
: >"$summary"
rc=0
source <(sed -n '/^tap() {/,/^}/p' "$here/check.sh")

{
	echo "# $(uname -r), $(nproc) CPUs, $(date -u +%FT%TZ)"
	nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
	nvidia-smi topo -m 2>&1 | head -n 12
	ls -d /sys/devices/system/node/node* 2>/dev/null
} >"$out/env.log" 2>&1
cat "$out/env.log"

step() {	# step NAME CMD...: run, log to $OUT/NAME.log, keep its last line
	local name=$1 t0=$SECONDS
	shift
	"$@" >"$out/$name.log" 2>&1
	local r=$?
	echo "$name rc=$r $(( SECONDS - t0 )) s: $(tail -n 1 "$out/$name.log")" | tee -a "$summary"
	return $r
}

step tests-gpu tap build/tests/gpu/* || rc=1
step tests-userspace tap build/tests/userspace/* || rc=1
for r in $(seq 1 "$runs"); do
	step "bench-gpu-$r" build/ferry-bench gpu
	step "bench-e2e-$r" build/ferry-bench e2e
	step "bench-e2e-helper-poll-$r" env FERRY_HELPER_POLL=1 build/ferry-bench e2e
	step "bench-msg-$r" build/ferry-bench msg
	step "bench-msg-sleep-$r" build/ferry-bench msg --sleep --no-agg
	# 20000 round trips of 1 ms a path would take 40 s: 5000 (at most 8 s).
	step "bench-msg-svc1000-$r" build/ferry-bench msg --service-us 1000 --no-agg -n 5000 -t 8
	step "bench-msg-svc100-$r" build/ferry-bench msg --service-us 100 --no-agg
done
step bench-msg-scale build/ferry-bench msg --scale
step demo build/ferry-demo || rc=1
if [ -z "${NO_PYTHON:-}" ]; then
	step python env OUT="$out/python" "$here/python-gpu.sh" || rc=1
fi
echo "# results in $out"
exit $rc

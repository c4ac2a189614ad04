#!/bin/bash
# The tools as users run them (TAP, then "N passed, N failed"): the main
# job verifies every result and fails when a result is wrong; bad options
# get a clear message; the benchmarks end with their key=value line, and
# the GPU one says so in one line where there is no GPU.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1

n=0 pass=0 fail=0
check() {	# check OK|FAIL description
	n=$((n + 1))
	if [ "$1" = OK ]; then pass=$((pass + 1)); echo "ok $n $2"
	else fail=$((fail + 1)); echo "not ok $n $2"; fi
}
out=$(mktemp)
trap 'rm -f "$out"' EXIT

echo "TAP version 13"
build/ferry-demo --seconds 2 --json >"$out" 2>&1; rc=$?
sed 's/^/# /' "$out"
grep -q '"ok":true}$' "$out" && grep -q '"bad_results":0' "$out" && [ $rc -eq 0 ] &&
	! grep -q '"requests":0,' "$out" && check OK "ferry-demo: 2 s per path, every result verified, exit 0" ||
	check FAIL "ferry-demo: 2 s per path, every result verified, exit 0 (rc=$rc)"
# Both paths ran, each verified every one of its results, and ferry
# copied no tensor byte while the classic path counted its copies.
grep -Eq '"ferry":\{"requests":([1-9][0-9]*),.*"bytes_copied":0,.*"verified":\1,"bad_results":0,"errors":0,"failed_children":0,"ok":true\}' "$out" &&
	grep -Eq '"classic":\{"requests":([1-9][0-9]*),.*"bytes_copied":[1-9][0-9]*,.*"verified":\1,"bad_results":0,"errors":0,"failed_children":0,"ok":true\}' "$out" &&
	check OK "ferry-demo: ferry and classic paths both ran, all verified, copies counted" ||
	check FAIL "ferry-demo: ferry and classic paths both ran, all verified, copies counted"

build/ferry-demo --seconds 1 --inject-fault 25 --json >"$out" 2>&1; rc=$?
sed 's/^/# /' "$out"
[ $rc -eq 1 ] && grep -q '"ok":false}$' "$out" && ! grep -q '"bad_results":0,' "$out" &&
	grep -Eq '"ferry":\{[^}]*"ok":false\}' "$out" && grep -Eq '"classic":\{[^}]*"ok":false\}' "$out" &&
	check OK "ferry-demo: spoiled results are caught on both paths, exit 1" ||
	check FAIL "ferry-demo: spoiled results are caught on both paths, exit 1 (rc=$rc)"

build/ferry-demo --seconds 1 --children 4 --helpers 2 --size 2 --backend memfd >"$out" 2>&1; rc=$?
[ $rc -eq 0 ] && grep -q "verdict.*OK" "$out" && grep -q "requests  *[1-9]" "$out" &&
	grep -Eq "^ +ferry +classic$" "$out" &&
	check OK "ferry-demo: side-by-side table with options" ||
	{ sed 's/^/# /' "$out"; check FAIL "ferry-demo: side-by-side table with options (rc=$rc)"; }
tail -n 1 "$out" | sed 's/^/# /'
tail -n 1 "$out" | grep -Eq "^demo=(cpu|gpu) backend=memfd children=4 helpers=2 images=2 seconds=1 ferry_rps=[0-9.]+ ferry_p50_us=[0-9.]+ ferry_p99_us=[0-9.]+ ferry_overhead_p50_us=[0-9.]+ ferry_cpu_us=[0-9.]+ ferry_copied_bytes=0 classic_rps=[0-9.]+ classic_p50_us=[0-9.]+ classic_p99_us=[0-9.]+ classic_overhead_p50_us=[0-9.]+ classic_cpu_us=[0-9.]+ classic_copied_bytes=[1-9][0-9]* ratio_rps=[0-9.]+ ratio_overhead_p50=[0-9.]+ ratio_cpu=[0-9.]+ verified=[1-9][0-9]* bad=0 ok=1$" &&
	check OK "ferry-demo: last line is key=value with both paths and their ratios" ||
	check FAIL "ferry-demo: last line is key=value with both paths and their ratios"

build/ferry-demo --seconds 1 --no-classic >"$out" 2>&1; rc=$?
[ $rc -eq 0 ] && tail -n 1 "$out" | grep -Eq "^demo=.* ferry_rps=[0-9.]+ .*classic=skipped verified=[1-9][0-9]* bad=0 ok=1$" &&
	check OK "ferry-demo --no-classic: the ferry path alone" ||
	{ sed 's/^/# /' "$out"; check FAIL "ferry-demo --no-classic (rc=$rc)"; }

if command -v gnuplot >/dev/null; then
	svg=$(mktemp --suffix=.svg)
	build/ferry-demo --seconds 1 --children 2 --helpers 1 --plot "$svg" >"$out" 2>&1; rc=$?
	[ $rc -eq 0 ] && grep -q "<svg" "$svg" && grep -q "classic (pipes): round trip" "$svg" &&
		check OK "ferry-demo --plot: both paths' distributions drawn" ||
		{ sed 's/^/# /' "$out"; check FAIL "ferry-demo --plot (rc=$rc)"; }
	rm -f "$svg"
fi

for cmd in "ferry-demo --help" "ferryctl --help" "ferry-bench --help" "ferry-bench msg --help" \
	   "ferry-bench gpu --help"; do
	build/$cmd >"$out" 2>&1; rc=$?
	[ $rc -eq 0 ] && grep -q "^usage: " "$out" && [ "$(wc -l <"$out")" -ge 3 ] &&
		check OK "$cmd: usage on stdout, exit 0" || check FAIL "$cmd (rc=$rc)"
done

for bad in "--children 0" "--size 99999999" "--backend zfs" "--nonsense" "extra" "--seconds -1" \
	   "--plot out.jpg"; do
	build/ferry-demo $bad >"$out" 2>&1; rc=$?
	[ $rc -eq 2 ] && grep -q "ferry-demo:\|usage:" "$out" &&
		check OK "ferry-demo $bad: refused with a message" ||
		check FAIL "ferry-demo $bad: refused with a message (rc=$rc)"
done

build/ferry-bench msg -n 2000 >"$out" 2>&1; rc=$?
tail -n 1 "$out" | sed 's/^/# /'
[ $rc -eq 0 ] && tail -n 1 "$out" | grep -Eq "^bench=msg rtt_p50_us=[0-9.]+ rtt_p99_us=[0-9.]+ baseline_rtt_p50_us=[0-9.]+ .*speedup=[0-9.]+ rps=[0-9]+ .*agg_rps=[1-9]" &&
	grep -q "pipes+poll (baseline)" "$out" &&
	check OK "ferry-bench msg: brokered round trip beside its pipe+poll baseline, key=value last line" ||
	check FAIL "ferry-bench msg (rc=$rc)"

build/ferry-bench msg --scale -t 0.3 >"$out" 2>&1; rc=$?
tail -n 1 "$out" | sed 's/^/# /'
[ $rc -eq 0 ] && tail -n 1 "$out" | grep -Eq "^bench=msg-scale cost_4_ns=[1-9][0-9]* cost_16_ns=[1-9][0-9]* cost_64_ns=[1-9][0-9]* cost_256_ns=[1-9][0-9]* .*cost_ratio_256_vs_4=[0-9.]+ rounds=[0-9]+$" &&
	check OK "ferry-bench msg --scale: broker cost at 4..256 children, key=value last line" ||
	check FAIL "ferry-bench msg --scale (rc=$rc)"

for bad in "-c 0" "--agg 3" "-n 5" "--spin-ns x" "-t 0" "extra"; do
	build/ferry-bench msg $bad >"$out" 2>&1; rc=$?
	[ $rc -eq 2 ] && grep -q "^ferry-bench msg: " "$out" && [ "$(wc -l <"$out")" -eq 1 ] &&
		check OK "ferry-bench msg $bad: refused before running" ||
		check FAIL "ferry-bench msg $bad: refused before running (rc=$rc)"
done

plotf=$(mktemp -u /tmp/ferry-plot-XXXXXX).svg
build/ferry-bench msg -n 1000 --no-agg --plot "$plotf" >"$out" 2>&1; rc=$?
[ $rc -eq 0 ] && grep -q "<svg" "$plotf" 2>/dev/null && grep -q "pipes+poll, baseline" "$plotf" &&
	grep -q "via the broker" "$plotf" && check OK "ferry-bench msg --plot: an SVG with the baseline beside ferry" ||
	check FAIL "ferry-bench msg --plot (rc=$rc)"
rm -f "$plotf"
build/ferry-bench msg --plot /tmp/x.jpg >"$out" 2>&1; rc=$?
[ $rc -eq 2 ] && grep -q "must end in .png or .svg" "$out" && [ "$(wc -l <"$out")" -eq 1 ] &&
	check OK "ferry-bench --plot with an unknown format: refused before running" ||
	check FAIL "ferry-bench --plot with an unknown format (rc=$rc)"

build/ferry-bench gpu >"$out" 2>&1; rc=$?
tail -n 1 "$out" | sed 's/^/# /'
if [ $rc -eq 0 ]; then
	tail -n 1 "$out" | grep -q "^bench=gpu overhead_us=.*speedup=.*h2d_ratio=" &&
		check OK "ferry-bench gpu: measured, key=value last line" ||
		check FAIL "ferry-bench gpu: no key=value last line"
else
	[ $rc -eq 1 ] && [ "$(wc -l <"$out")" -eq 1 ] && grep -q "no GPU" "$out" &&
		check OK "ferry-bench gpu without a GPU: one line saying so, exit 1" ||
		check FAIL "ferry-bench gpu without a GPU (rc=$rc)"
fi

# ferryctl: status anywhere; the debugfs views say why they cannot answer
# where the module is not loaded; stats from a running broker (the demo).
build/ferryctl status >"$out" 2>&1; rc=$?
sed 's/^/# /' "$out"
[ $rc -eq 0 ] && grep -q "^module " "$out" && grep -q "^backend " "$out" &&
	check OK "ferryctl status" || check FAIL "ferryctl status (rc=$rc)"
build/ferryctl --json status >"$out" 2>&1; rc=$?
[ $rc -eq 0 ] && grep -q '^{"module_loaded":\(true\|false\),.*"backend":"' "$out" &&
	check OK "ferryctl --json status" || check FAIL "ferryctl --json status (rc=$rc)"
if [ ! -e /sys/module/ferry ]; then
	build/ferryctl regions >"$out" 2>&1; rc=$?
	[ $rc -eq 1 ] && grep -q "not loaded" "$out" &&
		check OK "ferryctl regions without the module: says so, exit 1" ||
		check FAIL "ferryctl regions without the module (rc=$rc)"
fi
build/ferryctl stats --socket /nonexistent/ferry.sock >"$out" 2>&1; rc=$?
[ $rc -eq 1 ] && grep -q "no broker answers" "$out" &&
	check OK "ferryctl stats with no broker: says so, exit 1" ||
	check FAIL "ferryctl stats with no broker (rc=$rc)"
sock=$(mktemp -u /tmp/ferry-stats-XXXXXX)
build/ferry-demo --seconds 4 --no-classic --stats "$sock" >/dev/null 2>&1 &
demo=$!
for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
sleep 1
build/ferryctl stats --socket "$sock" >"$out" 2>&1; rc=$?
sed 's/^/# /' "$out" | head -12
[ $rc -eq 0 ] && grep -q "^requests [1-9]" "$out" && grep -q "^helper 0 pid [0-9]* alive 1" "$out" &&
	grep -q "^bad_desc 0" "$out" && check OK "ferryctl stats from a running broker" ||
	check FAIL "ferryctl stats from a running broker (rc=$rc)"
FERRY_STATS_SOCKET="$sock" build/ferryctl --json stats >"$out" 2>&1; rc=$?
[ $rc -eq 0 ] && grep -q '"requests":[1-9]' "$out" && grep -q '"helpers_detail":\[{"helper":0' "$out" &&
	check OK "ferryctl --json stats (\$FERRY_STATS_SOCKET)" || check FAIL "ferryctl --json stats (rc=$rc)"
wait $demo
[ $? -eq 0 ] && [ ! -e "$sock" ] && check OK "the demo served stats, passed, and removed its socket" ||
	check FAIL "the demo with --stats"

# Installed as a user would: into a DESTDIR, then a program built against
# it with nothing but pkg-config, shared and static.
dest=$(mktemp -d)
trap 'rm -rf "$out" "$dest"' EXIT
if make -s install DESTDIR="$dest" PREFIX=/usr/local >"$out" 2>&1; then
	check OK "make install into a DESTDIR"
else
	sed 's/^/# /' "$out"; check FAIL "make install into a DESTDIR"
fi
for f in usr/local/lib/libferry.so.0 usr/local/lib/libferry.a usr/local/include/ferry.h \
	 usr/local/include/linux/ferry.h usr/local/lib/pkgconfig/ferry.pc \
	 usr/local/bin/ferry-demo usr/local/bin/ferryctl etc/udev/rules.d/60-ferry.rules etc/modules-load.d/ferry.conf; do
	[ -e "$dest/$f" ] || { echo "# missing: $f"; missing=1; }
done
[ -z "${missing:-}" ] && check OK "installed tree complete" || check FAIL "installed tree complete"
grep -q 'GROUP="ferry", MODE="0660"' "$dest/etc/udev/rules.d/60-ferry.rules" &&
	check OK "udev rule: /dev/ferry group ferry, mode 0660" || check FAIL "udev rule"

cat >"$dest/hello.c" <<'C'
#include <ferry.h>
#include <stdio.h>
int main(void)
{
	struct ferry_pool *p;
	uint64_t off;

	if (ferry_pool_create(FERRY_POOL_CPU, -1, 1 << 20, &p) || ferry_pool_alloc(p, 4096, NULL, &off))
		return 1;
	printf("%s %llu\n", ferry_backend_name(FERRY_BACKEND_MEMFD), (unsigned long long)off);
	ferry_pool_free(p, off);
	ferry_pool_close(p);
	return 0;
}
C
export PKG_CONFIG_SYSROOT_DIR="$dest" PKG_CONFIG_PATH="$dest/usr/local/lib/pkgconfig"
if cc -o "$dest/hello" "$dest/hello.c" $(pkg-config --cflags --libs ferry) 2>"$out" &&
   LD_LIBRARY_PATH="$dest/usr/local/lib" "$dest/hello" | grep -q "^memfd "; then
	check OK "a program built with pkg-config --cflags --libs ferry runs"
else
	sed 's/^/# /' "$out"; check FAIL "a program built with pkg-config --cflags --libs ferry runs"
fi
if cc -static -o "$dest/hello-static" "$dest/hello.c" $(pkg-config --static --cflags --libs ferry) \
	2>"$out" && "$dest/hello-static" | grep -q "^memfd "; then
	check OK "... and statically (pkg-config --static)"
else
	sed 's/^/# /' "$out"; check FAIL "... and statically (pkg-config --static)"
fi
unset PKG_CONFIG_SYSROOT_DIR PKG_CONFIG_PATH
exported=$(nm -D --defined-only "$dest/usr/local/lib/libferry.so.0" | awk '{ sub(/@@/, "@", $3); print $3 }' |
	grep -v "^FERRY_" | sort)
if [ "$exported" = "$(scripts/symbols.sh --nodes)" ] &&
   objdump -p "$dest/usr/local/lib/libferry.so.0" | grep -q "SONAME *libferry.so.0"; then
	check OK "libferry.so.0 exports exactly ferry.symbols' $(echo "$exported" | wc -l) functions, each in its node"
else
	echo "$exported" | diff - <(scripts/symbols.sh --nodes) | sed 's/^/# /' | head
	check FAIL "libferry.so.0 exports exactly ferry.symbols' functions"
fi
# The Python package as installed, on the installed library.
pydir=$(ls -d "$dest"/usr/local/lib/python3*/*-packages 2>/dev/null | head -n 1)
if [ -n "$pydir" ] && [ -f "$pydir/ferry/__init__.py" ] &&
   LD_LIBRARY_PATH="$dest/usr/local/lib" PYTHONPATH="$pydir" ${PYTHON:-/usr/bin/python3} -c '
import ferry, os
assert ferry.__file__.startswith(os.environ["PYTHONPATH"])
def serve(req):
    req.reply.arg[0] = req.args[0] * 2
def child(c):
    assert c.call(1, args=(21,)).arg[0] == 42
with ferry.Broker(children=2, helpers=1, child=child, handler=serve, gpu=None) as b:
    assert b.wait(60) == 0
' >"$out" 2>&1; then
	check OK "the installed Python package runs a broker on the installed libferry.so.0"
else
	sed 's/^/# /' "$out"; check FAIL "the installed Python package runs a broker"
fi
grep -q "^Version: $(scripts/symbols.sh --version)\$" "$dest/usr/local/lib/pkgconfig/ferry.pc" &&
	check OK "ferry.pc's version is ferry.h's ($(scripts/symbols.sh --version))" ||
	check FAIL "ferry.pc's version is ferry.h's"

echo "1..$n"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]

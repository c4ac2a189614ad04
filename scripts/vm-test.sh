#!/bin/bash
# Run the module selftests inside qemu on one Debian kernel series.
#
#   scripts/vm-test.sh 6.1|6.12|6.12-trixie|7|debug TESTDIR|TESTBIN [TESTDIR|TESTBIN...]
#
# Each argument is a directory (every executable in it runs) or one test
# binary.  FERRY_VM_MEM is the guest's memory in MiB (default 1024), split
# over its two NUMA nodes.  FERRY_SCALE_CHILDREN, when set, reaches the
# tests in the guest (tests/userspace/scale.c's child count); so that the
# broker can raise its soft RLIMIT_NOFILE for thousands of children, the
# guest's hard limit is 524288 for the tests.
#
# "debug" is ferry's own 6.1 build with KASAN, lockdep and kmemleak
# (debug-kernel.sh); there kmemleak is cleared before insmod and scanned
# after rmmod.  FERRY_VM_FAULTS=1 makes 10% of the allocations from the
# module's slab caches fail (failslab, cache filter) and 1% of the tests'
# page allocations (fail_page_alloc), and checks that both injected
# failures; the tests' own verdicts then do not count, the kernel's
# checks do.  FERRY_VM_APPEND adds to the kernel command line; unknown
# "KEY=value" words there reach the tests as environment variables
# (FERRY_FUZZ_CALLS=1000000 for the fuzzer's long run, say).
#
# Builds ferry.ko against that kernel's Debian headers (in a private copy
# under build/vm/<abi>, so two kernels never share objects), packs it with
# busybox and every executable found in the TESTDIRs into an initramfs,
# boots Debian's own kernel image under TCG and relays the tests' TAP from
# the serial console.  Besides the tests' own cases it checks, per kernel:
# a warning-free build, insmod, every test binary exiting 0, debugfs
# counters back to zero, rmmod, no taint flag beyond what insmod set, and a
# dmesg free of WARNING/BUG/Oops/KASAN
# and lockdep reports.
# Ends with "N passed, N failed"; exits non-zero on any failure.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
. "$here/lib.sh"

[ $# -ge 2 ] || ferry_die "usage: vm-test.sh 6.1|6.12|6.12-trixie|7|debug TESTDIR|TESTBIN..."
series=$1; shift
kenv=$("$here/kernel.sh" "$series") || exit 1
FERRY_KAPPEND= FERRY_KSUITE= FERRY_KCC= FERRY_KCHROOT=
eval "$kenv"
# Marks the module's slab caches (ferry_*) for failslab's cache filter.
[ -n "${FERRY_VM_FAULTS:-}" ] && FERRY_KAPPEND+=" slub_debug=A,ferry_*"
busybox=$(ferry_busybox) || exit 1

out=$repo/build/vm/$FERRY_KABI
timeout_s=${FERRY_VM_TIMEOUT:-900}
mem=${FERRY_VM_MEM:-1024}
[[ $mem =~ ^[0-9]+$ ]] && [ "$mem" -ge 256 ] ||
	ferry_die "FERRY_VM_MEM=$mem: MiB, at least 256"
mem0=$((mem / 2)) mem1=$((mem - mem / 2))
kappend=
[ -n "${FERRY_SCALE_CHILDREN:-}" ] && kappend+=" FERRY_SCALE_CHILDREN=$FERRY_SCALE_CHILDREN"
pass=0 fail=0 skip=0 n=0

check() {	# check OK|FAIL description
	n=$((n + 1))
	if [ "$1" = OK ]; then
		pass=$((pass + 1)); echo "ok $n vm-$series: $2"
	else
		fail=$((fail + 1)); echo "not ok $n vm-$series: $2"
	fi
}
finish() {
	echo "# kernel $FERRY_KABI: $pass passed, $fail failed, $skip skipped"
	echo "$pass passed, $fail failed"
	[ "$fail" -eq 0 ]
	exit
}

echo "# kernel $FERRY_KABI ($series; ${FERRY_KSUITE:-own} build${FERRY_KCC:+ with gcc-$FERRY_KCC}${FERRY_KCHROOT:+ in a $FERRY_KSUITE chroot}), guest ${mem} MiB${FERRY_SCALE_CHILDREN:+, FERRY_SCALE_CHILDREN=$FERRY_SCALE_CHILDREN}"

# --- the module, built in a private copy of the sources ------------------
rm -rf "$out/src" && mkdir -p "$out/src"
cp -r "$repo/Kbuild" "$repo/kmod" "$repo/include" "$out/src/"
# Kernels of newer suites build in a chroot of their suite, with the
# compiler they were built with (kernel.sh: FERRY_KCHROOT).
build=(make -C "$FERRY_KDIR" M="$out/src" modules)
[ -n "${FERRY_KCHROOT:-}" ] && build=("$here/chroot.sh" --run "$FERRY_KCHROOT" "${build[@]}")
if "${build[@]}" >"$out/build.log" 2>&1; then
	if grep -qiE 'warning:|error:' "$out/build.log"; then
		sed 's/^/#   /' "$out/build.log"
		check FAIL "ferry.ko builds without warnings"
	else
		check OK "ferry.ko builds without warnings"
	fi
else
	sed 's/^/#   /' "$out/build.log"
	check FAIL "ferry.ko builds"
	finish
fi

# --- initramfs --------------------------------------------------------------
root=$out/initramfs
rm -rf "$root" && mkdir -p "$root"/{bin,dev,proc,sys,tmp,tests}
cp "$busybox" "$root/bin/busybox"
for a in sh mount insmod rmmod cat echo dmesg reboot sleep tr mkdir ls readlink grep cut; do
	ln -s busybox "$root/bin/$a"
done
cp "$out/src/kmod/ferry.ko" "$root/ferry.ko"
# FERRY_VM_FAULTS=1: allocations fail at random under the tests; then the
# tests' own verdicts do not count, the kernel's checks do.
[ -n "${FERRY_VM_FAULTS:-}" ] && touch "$root/faults"
# Static tools the tests run (ferryctl), on the PATH.
for t in "$repo"/build/vm-tools/*; do
	[ -f "$t" ] && [ -x "$t" ] && cp "$t" "$root/bin/"
done
nt=0
for d in "$@"; do
	if [ -f "$d" ]; then
		[ -x "$d" ] || ferry_die "$d: not an executable test binary"
		cp "$d" "$root/tests/" && nt=$((nt + 1))
		continue
	fi
	for t in "$d"/*; do
		[ -f "$t" ] && [ -x "$t" ] || continue
		cp "$t" "$root/tests/" && nt=$((nt + 1))
	done
done
[ "$nt" -gt 0 ] || ferry_die "no test binaries in $*"

cat >"$root/init" <<'INIT'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t debugfs debugfs /sys/kernel/debug
mount -t tmpfs tmp /tmp
echo
# kmemleak (debug kernel): forget what boot left, report only what follows.
[ -e /sys/kernel/debug/kmemleak ] && echo clear >/sys/kernel/debug/kmemleak
echo "FERRY-VM taint-boot $(cat /proc/sys/kernel/tainted)"
insmod /ferry.ko; echo "FERRY-VM insmod $?"
# Loading an out-of-tree, unsigned module taints (O, E): that is the base.
echo "FERRY-VM taint-insmod $(cat /proc/sys/kernel/tainted)"
if [ -e /faults ] && [ -d /sys/kernel/debug/failslab ]; then
	# Fault injection.  failslab: 10% of the allocations from the module's
	# own caches (slub_debug=A,ferry_* on the command line marks them; the
	# cache filter spares every other cache), whoever makes them.
	# fail_page_alloc: 1% of the page allocations of the tests' processes
	# (make-it-fail, inherited by what they fork).  "times" counts down
	# with each failure injected: what is left says how many there were.
	for f in failslab fail_page_alloc; do
		d=/sys/kernel/debug/$f
		[ -d $d ] || continue
		echo 1 >$d/interval; echo 1000000000 >$d/times; echo 0 >$d/space
		echo 0 >$d/verbose
		[ -e $d/ignore-gfp-wait ] && echo N >$d/ignore-gfp-wait
	done
	d=/sys/kernel/debug/failslab
	echo Y >$d/cache-filter; echo N >$d/task-filter; echo 10 >$d/probability
	d=/sys/kernel/debug/fail_page_alloc
	[ -d $d ] && { echo Y >$d/task-filter; echo 1 >$d/probability; }
	echo "FERRY-VM faults on"
fi
# The broker raises its soft limit up to this for thousands of children.
ulimit -Hn 524288 || echo "FERRY-VM could not raise the nofile hard limit"
for t in /tests/*; do
	echo "FERRY-VM run ${t##*/}"
	t0=$(date +%s)
	if [ -e /faults ]; then
		sh -c 'echo 1 >/proc/self/make-it-fail; exec "$0"' "$t"
	else
		"$t"
	fi
	rc=$?
	echo "# ${t##*/}: $(( $(date +%s) - t0 )) s"
	echo "FERRY-VM rc ${t##*/} $rc"
done
for f in failslab fail_page_alloc; do
	d=/sys/kernel/debug/$f
	[ -e $d/probability ] || continue
	echo 0 >$d/probability
	[ -e /faults ] && echo "FERRY-VM faults-left $f $(cat $d/times)"
done
echo "FERRY-VM stats $(tr '\n' ' ' </sys/kernel/debug/ferry/stats)"
rmmod ferry; rc=$?
if [ $rc != 0 ]; then
	# Name what still holds the module: a /dev/ferry session fd or a
	# region's mapping, in whatever process a test left behind.
	for p in /proc/[0-9]*; do
		what=
		for f in $p/fd/*; do
			[ "$(readlink $f 2>/dev/null)" = /dev/ferry ] && what="$what fd ${f##*/}"
		done
		grep -q 'ferry' $p/maps 2>/dev/null && what="$what maps"
		[ -n "$what" ] || continue
		echo "FERRY-VM holder pid ${p#/proc/} ppid $(cut -d' ' -f4 <$p/stat 2>/dev/null) [$(tr '\0' ' ' <$p/cmdline 2>/dev/null)]:$what"
	done
fi
echo "FERRY-VM rmmod $rc"
echo "FERRY-VM taint-end $(cat /proc/sys/kernel/tainted)"
if [ -e /sys/kernel/debug/kmemleak ]; then
	# Objects must stay unreferenced a while before a scan reports them.
	sleep 6; echo scan >/sys/kernel/debug/kmemleak; echo scan >/sys/kernel/debug/kmemleak
	echo "FERRY-VM kmemleak-begin"
	cat /sys/kernel/debug/kmemleak
	echo "FERRY-VM kmemleak-end"
fi
echo "FERRY-VM dmesg-begin"
dmesg
echo "FERRY-VM dmesg-end"
reboot -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out/initramfs.cpio.gz"

# --- boot and relay ---------------------------------------------------------
log=$out/console.log
holders=()
insmod_rc= rmmod_rc= stats= bad_rc=() taint_boot= taint_insmod= taint_end= in_dmesg=0 dmesg_bad=() in_leak=0 leaks=() have_kmemleak=0
declare -A injected=()
t0=$(date +%s)
# The kernel gets tsc=reliable: the guest finds the two sockets' TSCs
# "unsynchronized" and would fall back to HPET, or to jiffies (a 4 ms
# clock) on the debug kernel, which has no ACPI; clock_gettime() then is a
# system call and every test that spins on the clock crawls.  qemu's TSC
# is one host clock.
# A boot that dies before our init runs (Debian's 6.12 occasionally oopses
# in early boot under multi-threaded TCG while patching kernel text) ran
# nothing of ours: boot again, at most twice more, and say so.
for attempt in 1 2 3; do
: >"$log"
while IFS= read -r line; do
	line=${line%$'\r'}
	printf '%s\n' "$line" >>"$log"
	# Firmware escape sequences can precede the first marker on its line.
	case "$line" in *"FERRY-VM "*) line="FERRY-VM ${line#*FERRY-VM }" ;; esac
	if [ $in_dmesg = 1 ]; then
		case "$line" in
		"FERRY-VM dmesg-end") in_dmesg=0 ;;
		*WARNING:*|*BUG:*|*Oops*|*"Call Trace"*|*"possible recursive locking"*|\
		*"circular locking"*|*"sleeping function called"*|*"general protection"*|\
		*"refcount_t:"*|*"list_add corruption"*|*"list_del corruption"*|\
		*"suspected memory leak"*)
			dmesg_bad+=("$line") ;;
		esac
		continue
	fi
	if [ $in_leak = 1 ]; then
		case "$line" in
		"FERRY-VM kmemleak-end") in_leak=0 ;;
		*) [ -n "$line" ] && leaks+=("$line") ;;
		esac
		continue
	fi
	case "$line" in
	"FERRY-VM insmod "*) insmod_rc=${line##* } ;;
	"FERRY-VM taint-boot "*) taint_boot=${line##* } ;;
	"FERRY-VM taint-insmod "*) taint_insmod=${line##* } ;;
	"FERRY-VM taint-end "*) taint_end=${line##* } ;;
	"FERRY-VM run "*) echo "# ${line#FERRY-VM }" ;;
	"FERRY-VM rc "*)
		set -- ${line#FERRY-VM rc }
		[ "$2" = 0 ] || bad_rc+=("$1 exited $2") ;;
	"FERRY-VM stats "*) stats=${line#FERRY-VM stats } ;;
	"FERRY-VM faults-left "*)
		set -- ${line#FERRY-VM faults-left }
		injected[$1]=$((1000000000 - $2)) ;;
	"FERRY-VM rmmod "*) rmmod_rc=${line##* } ;;
	"FERRY-VM holder "*) holders+=("${line#FERRY-VM holder }") ;;
	"FERRY-VM dmesg-begin") in_dmesg=1 ;;
	"FERRY-VM kmemleak-begin") in_leak=1 have_kmemleak=1 ;;
	"not ok "*|"ok "*)
		if [ -n "${FERRY_VM_FAULTS:-}" ]; then
			# Under fault injection the tests' own verdicts do not count.
			echo "# (faults) $line"
			continue
		fi ;;&
	"not ok "*)
		fail=$((fail + 1)); echo "$line" ;;
	"ok "*"# SKIP"*)
		skip=$((skip + 1)); echo "$line" ;;
	"ok "*)
		pass=$((pass + 1)); echo "$line" ;;
	*) echo "$line" ;;
	esac
done < <(timeout "$timeout_s" qemu-system-x86_64 -accel tcg -cpu max -smp 2,sockets=2,cores=1,threads=1 -m "$mem" \
	-object memory-backend-ram,id=m0,size="${mem0}M" -object memory-backend-ram,id=m1,size="${mem1}M" \
	-numa node,nodeid=0,cpus=0,memdev=m0 -numa node,nodeid=1,cpus=1,memdev=m1 \
	-nographic -no-reboot -kernel "$FERRY_VMLINUZ" -initrd "$out/initramfs.cpio.gz" \
	-append "console=ttyS0 panic=-1 loglevel=3 tsc=reliable $FERRY_KAPPEND$kappend ${FERRY_VM_APPEND:-}" </dev/null 2>&1)
	[ -z "$insmod_rc" ] || break
	echo "# boot attempt $attempt died before the tests started:"
	grep -m 3 -E 'Oops|BUG:|panic' "$log" | sed 's/^/#   /'
	cp "$log" "$log.attempt$attempt"
done
echo "# boot + tests: $(( $(date +%s) - t0 )) s"

[ "$insmod_rc" = 0 ] && check OK "insmod ferry.ko" || check FAIL "insmod ferry.ko (rc=${insmod_rc:-none: VM died or timed out after ${timeout_s}s})"
if [ -n "${FERRY_VM_FAULTS:-}" ]; then
	[ "${injected[failslab]:-0}" -gt 0 ] &&
		check OK "failslab: ${injected[failslab]} allocations from the module's caches failed" ||
		check FAIL "failslab injected no failure into the module's caches"
	[ "${injected[fail_page_alloc]:-0}" -gt 0 ] &&
		check OK "fail_page_alloc: ${injected[fail_page_alloc]} page allocations of the tests failed" ||
		check FAIL "fail_page_alloc injected no failure"
	echo "# under fault injection $((nt - ${#bad_rc[@]})) of $nt test binaries still exited 0:"
	for b in "${bad_rc[@]}"; do echo "#   $b"; done
	[ -n "$rmmod_rc" ] && check OK "every test binary ran to its end under fault injection" ||
		check FAIL "the VM never reached the end of the tests under fault injection"
elif [ ${#bad_rc[@]} -eq 0 ] && [ -n "$rmmod_rc" ]; then
	check OK "all $nt test binaries exited 0"
else
	for b in "${bad_rc[@]}"; do echo "#   $b"; done
	[ -n "$rmmod_rc" ] || echo "#   the VM never reached the end of the tests"
	check FAIL "all $nt test binaries exited 0"
fi
zero=1
for k in regions live_regions bytes maps grants sessions; do
	v=$(sed -nE "s/.*(^| )$k ([0-9]+).*/\\2/p" <<<"$stats")
	[ "$v" = 0 ] || zero=0
done
[ $zero = 1 ] && check OK "debugfs counters zero after the tests" ||
	check FAIL "debugfs counters zero after the tests (got: ${stats:-nothing})"
if [ "$rmmod_rc" = 0 ]; then
	check OK "rmmod ferry"
else
	for h in "${holders[@]}"; do echo "#   still holding ferry: $h"; done
	check FAIL "rmmod ferry (rc=${rmmod_rc:-none}; held by ${#holders[@]} process(es): /dev/ferry or a region)"
fi
# /proc/sys/kernel/tainted: whatever insmod added is the base; any flag
# the tests added (bad page, warning, oops, ...) fails the run.
if [ -n "$taint_insmod" ] && [ -n "$taint_end" ] &&
   [ $(( taint_end & ~taint_insmod )) -eq 0 ]; then
	check OK "kernel not tainted by the tests (boot $taint_boot, after insmod $taint_insmod, end $taint_end)"
else
	check FAIL "kernel tainted by the tests (after insmod ${taint_insmod:-?}, end ${taint_end:-?})"
fi
if [ ${#dmesg_bad[@]} -eq 0 ] && [ -n "$rmmod_rc" ]; then
	check OK "dmesg free of kernel warnings"
else
	echo "# kernel log (full console in $log):"
	for l in "${dmesg_bad[@]}"; do echo "#   $l"; done
	sed -n '/FERRY-VM dmesg-begin/,/FERRY-VM dmesg-end/p' "$log" | tail -n 80 | sed 's/^/#   /'
	check FAIL "dmesg free of kernel warnings"
fi
if [ $have_kmemleak = 1 ]; then
	if [ ${#leaks[@]} -eq 0 ]; then
		check OK "kmemleak: nothing leaked (scanned after rmmod)"
	else
		for l in "${leaks[@]:0:60}"; do echo "#   $l"; done
		check FAIL "kmemleak: ${#leaks[@]} report lines after rmmod"
	fi
fi
finish

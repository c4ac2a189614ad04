#!/bin/bash
# `make check`: every test of the project, on this host and in qemu.
#
# Each runner prints TAP and ends with "N passed, N failed"; this script
# relays them, adds them up, prints the total as its own last line and
# exits non-zero if anything failed.  FERRY_KERNELS picks the kernel series
# for the VM runs (default "6.1 6.12-trixie 7": Debian 12's, Debian 13's,
# and the newest 7.x the archive has headers for; kernel.sh lists them
# all), FERRY_NEWCOMER_KERNELS those the README's DKMS steps run on, each
# in its own suite's userspace (default "6.1 6.12-trixie").
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
cd "$repo" || exit 1

total_pass=0 total_fail=0
t_start=$(date +%s)

# tally NAME CMD...: run one runner, relay its output, add its last line up.
tally() {
	local name=$1 tmp rc last p f t0=$(date +%s)
	shift
	tmp=$(mktemp)
	echo "# ==== $name"
	"$@" 2>&1 | tee "$tmp"
	rc=${PIPESTATUS[0]}
	echo "# ==== $name: $(( $(date +%s) - t0 )) s"
	last=$(tail -n 1 "$tmp")
	rm -f "$tmp"
	if [[ $last =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
		p=${BASH_REMATCH[1]} f=${BASH_REMATCH[2]}
	else
		p=0 f=0
	fi
	# A runner that died without its summary, or exited non-zero with
	# nothing counted as failed, is itself a failure.
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		echo "not ok - $name exited $rc"
		f=1
	fi
	total_pass=$((total_pass + p)) total_fail=$((total_fail + f))
}

# tap BIN...: run kselftest binaries on the host and count their TAP.
tap() {
	local b p=0 f=0 s=0 line rc out
	out=$(mktemp)
	for b in "$@"; do
		echo "# run $b"
		"$b" >"$out" 2>&1
		rc=$?
		while IFS= read -r line; do
			echo "$line"
			case "$line" in
			"not ok "*) f=$((f + 1)) ;;
			"ok "*"# SKIP"*) s=$((s + 1)) ;;
			"ok "*) p=$((p + 1)) ;;
			esac
		done <"$out"
		if [ "$rc" -ne 0 ]; then
			echo "not ok - $b exited $rc"
			f=$((f + 1))
		fi
	done
	rm -f "$out"
	[ "$s" -eq 0 ] || echo "# skipped: $s"
	echo "$p passed, $f failed"
	[ "$f" -eq 0 ]
}

"$here/deps.sh" || exit 1
kernels=(${FERRY_KERNELS:-6.1 6.12-trixie 7})
newcomer_kernels=(${FERRY_NEWCOMER_KERNELS:-6.1 6.12-trixie})
# The slow things that later runners need and nothing needs yet: the
# debug kernel (about 10 min to build cold on 2 cores), the kernels and
# their suites' build chroots (downloads and a debootstrap each), and the
# newcomer VMs' userspaces (debootstraps, mostly network).  They start now
# in the background, niced, so they use what the tests in front leave
# idle; the runners that need them wait on their locks.  With warm caches
# they return at once.
mkdir -p build
if [ -z "${FERRY_NO_DEBUG_KERNEL:-}" ]; then
	nice -n 19 "$here/debug-kernel.sh" >build/debug-kernel.log 2>&1 &
fi
for k in $(printf '%s\n' "${kernels[@]}" "${newcomer_kernels[@]}" | sort -u); do
	nice -n 19 "$here/kernel.sh" "$k" >"build/kernel-$k.log" 2>&1 &
done
for s in bookworm trixie; do
	nice -n 19 "$here/newcomer-rootfs.sh" $s >"build/newcomer-rootfs-$s.log" 2>&1 &
done

make -s lib tools python build-tests sanitize-tests fuzz-build || { echo "0 passed, 1 failed"; exit 1; }
echo "# deps and build: $(( $(date +%s) - t_start )) s"

tally "uapi header (host)" tap build/tests/uapi/*
if ls build/tests/userspace/* >/dev/null 2>&1; then
	tally "libferry (host, memfd backend)" tap build/tests/userspace/* build/tests/tools/*
fi
# GPU cases skip, each with its reason, where there is no GPU.
if ls build/tests/gpu/* >/dev/null 2>&1; then
	tally "GPU pools (host)" tap build/tests/gpu/*
	# The helper cases again on the fake driver (one GPU, VMM pools as
	# memfds), so that their broker paths run on every machine.
	FERRY_CUDA_LIB="$repo/build/tests/fixtures/libfakecuda.so" FERRY_FAKE_GPUS=1 \
		tally "GPU helpers on the fake CUDA driver (host)" tap build/tests/gpu/helper
fi
tally "Python package: pytest (numpy, asyncio, attach; GPU cases skip without torch+CUDA) and examples (host)" "$here/python-test.sh"
tally "libferry's ABI: abidiff against the baseline, versioned symbols, ferry.h as C11/C17/C++17, a 0.1 program on today's library (host)" "$here/abi-check.sh"
tally "libferry under ASan+UBSan and TSan (host)" "$here/sanitize-test.sh"
tally "libFuzzer harnesses, 10 s each (host)" "$here/fuzz-test.sh" 10
tally "tools: ferry-demo, ferry-bench, ferryctl, make install (host)" "$here/tools-test.sh"
tally "DKMS build against Debian's headers (${kernels[*]})" \
	env FERRY_KERNELS="${kernels[*]}" "$here/dkms-test.sh"
# In the VM the module is loaded, so libferry's tests run on kmod there.
vm_dirs=(build/tests/kmod)
[ -d build/tests/userspace ] && vm_dirs+=(build/tests/userspace)
[ -d build/tests/tools ] && vm_dirs+=(build/tests/tools)
# kabi SERIES: the kernel version a series stands for today.
kabi() {
	"$here/kernel.sh" "$1" 2>/dev/null | sed -n 's/^FERRY_KABI=//p'
}
for k in "${kernels[@]}"; do
	tally "module + libferry on Debian $k, kernel $(kabi "$k") (qemu)" \
		"$here/vm-test.sh" "$k" "${vm_dirs[@]}"
done
# Those 1 GiB guests run tests/userspace/scale.c with 256 children (its
# memory rule); the production shape, 4096 children x 8 helpers on kmod,
# gets a 3 GiB guest on one kernel: Debian 13's.
if [ -x build/tests/userspace/scale ]; then
	tally "module + libferry at 4096 children, Debian 6.12-trixie, kernel $(kabi 6.12-trixie) (qemu)" \
		env FERRY_VM_MEM=3072 FERRY_SCALE_CHILDREN=4096 "$here/vm-test.sh" 6.12-trixie \
		build/tests/userspace/scale
fi

# The debug kernel (KASAN, lockdep, kmemleak, DEBUG_VM...): every module
# test, the fuzzer and libferry again; any report fails.  Then the module's
# tests with slab and page allocations failing at random under them.
if [ -z "${FERRY_NO_DEBUG_KERNEL:-}" ]; then
	# The fuzzer runs 10 s in every other VM pass and 30 s here: 1 min in
	# all.  libferry's tests that never open /dev/ferry (the heap, channels,
	# waitset, the pool allocator, CPU pools) ran on three kernels already:
	# the debug kernel checks the module, so they are left out here, and
	# the 32 x 4 load test sends 20k requests instead of 100k (29 s here).
	dbg_tests=(build/tests/kmod)
	for t in build/tests/userspace/* build/tests/tools/*; do
		case ${t##*/} in heap|chan|waitset|palloc|pool) continue ;; esac
		[ -x "$t" ] && dbg_tests+=("$t")
	done
	tally "module + libferry on the debug kernel (qemu)" \
		env FERRY_VM_APPEND="FERRY_FUZZ_SECONDS=30 FERRY_LOAD_REQUESTS=640" \
			"$here/vm-test.sh" debug "${dbg_tests[@]}"
	tally "module under fault injection, debug kernel (qemu)" \
		env FERRY_VM_FAULTS=1 "$here/vm-test.sh" debug build/tests/kmod
fi

# The README's DKMS steps in a Debian VM with udev: bookworm's userspace
# on 6.1, trixie's on its 6.12.
for k in "${newcomer_kernels[@]}"; do
	tally "README's DKMS + udev steps in a Debian VM ($k, kernel $(kabi "$k"))" \
		"$here/vm-newcomer.sh" "$k"
done

wait	# the background jobs above (long done by now)
echo "# make check took $(( $(date +%s) - t_start )) s"
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]

#!/bin/bash
# DKMS as an operator uses it (TAP, then "N passed, N failed"): the sources
# `make dkms-source` lays out, added and built by dkms itself against each
# Debian kernel's headers (cached by kernel.sh), in a private DKMS tree so
# the host's own /usr/src and /var/lib/dkms stay untouched.  A kernel of a
# newer suite (6.12-trixie, 7) is built by that suite's dkms and compiler,
# in kernel.sh's chroot of it, as a host of that release would.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
cd "$repo" || exit 1

n=0 pass=0 fail=0
check() {	# check OK|FAIL description
	n=$((n + 1))
	if [ "$1" = OK ]; then pass=$((pass + 1)); echo "ok $n $2"
	else fail=$((fail + 1)); echo "not ok $n $2"; fi
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/dkms" "$tmp/installed"
echo "TAP version 13"

version=$(make -s --no-print-directory version)
grep -q "^PACKAGE_VERSION=\"$version\"$" dkms.conf &&
	check OK "dkms.conf's version is ferry.h's ($version)" ||
	check FAIL "dkms.conf's version is ferry.h's ($version)"
make -s dkms-source DESTDIR="$tmp" DKMS_SRC=/src CUDA_INC=/nonexistent >"$tmp/log" 2>&1 &&
	[ -f "$tmp/src/ferry-$version/dkms.conf" ] && [ -f "$tmp/src/ferry-$version/kmod/ferry_main.c" ] &&
	check OK "make dkms-source lays out ferry-$version (no CUDA headers needed)" ||
	{ sed 's/^/# /' "$tmp/log"; check FAIL "make dkms-source"; }

# The supported range in dkms.conf: what DKMS builds for and what it skips.
excl=$(sed -n 's/^BUILD_EXCLUSIVE_KERNEL="\(.*\)"$/\1/p' dkms.conf)
if [ -z "$excl" ]; then
	check FAIL "dkms.conf states the supported kernels (BUILD_EXCLUSIVE_KERNEL)"
else
	bad=
	for k in 5.16.0-1-amd64 6.1.0-57-amd64 6.12.118+deb13-amd64 7.3-amd64 7.3.4+deb13-amd64; do
		[[ $k =~ $excl ]] || bad+=" $k(refused)"
	done
	for k in 5.10.0-30-amd64 5.15.0-1-amd64 4.19.0-27-amd64 8.0.1+deb15-amd64 16.1-amd64; do
		[[ $k =~ $excl ]] && bad+=" $k(accepted)"
	done
	[ -z "$bad" ] && check OK "dkms.conf's BUILD_EXCLUSIVE_KERNEL takes 5.16 to 7.x only" ||
		check FAIL "dkms.conf's BUILD_EXCLUSIVE_KERNEL:$bad"
fi

for series in ${FERRY_KERNELS:-6.1 6.12-trixie 7}; do
	kenv=$("$here/kernel.sh" "$series") || { check FAIL "kernel $series headers"; continue; }
	FERRY_KCHROOT= FERRY_KSUITE=bookworm
	eval "$kenv"
	kver=$FERRY_KABI-amd64
	dk=(dkms --dkmstree "$tmp/dkms" --sourcetree "$tmp/src" --installtree "$tmp/installed")
	if [ -n "$FERRY_KCHROOT" ]; then
		dk=(env FERRY_CHROOT_BIND="$tmp" "$here/chroot.sh" --run "$FERRY_KCHROOT" "${dk[@]}")
	fi
	echo "# $series: $kver, dkms of ${FERRY_KSUITE}"
	if "${dk[@]}" add -m ferry -v "$version" >"$tmp/log" 2>&1 || grep -q "already contains" "$tmp/log"; then
		:
	else
		sed 's/^/# /' "$tmp/log"
	fi
	if "${dk[@]}" build -m ferry -v "$version" -k "$kver" --kernelsourcedir "$FERRY_KDIR" \
		>"$tmp/log" 2>&1; then
		ko=$(find "$tmp/dkms/ferry/$version/$kver" -name 'ferry.ko*' | head -n 1)
		if [ -n "$ko" ]; then
			check OK "dkms build ferry/$version for $kver"
		else
			check FAIL "dkms build ferry/$version for $kver: no ferry.ko"
		fi
	else
		sed 's/^/# /' "$tmp/log" | tail -n 30
		find "$tmp/dkms" -name make.log -exec sed 's/^/#   /' {} \; | tail -n 30
		check FAIL "dkms build ferry/$version for $kver"
	fi
done
echo "1..$n"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]

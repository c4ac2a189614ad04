#!/bin/bash
# Install what building and testing ferry needs from Debian's packages.
# Idempotent and silent when everything is there; when not root it only
# prints the apt-get command it would run (and fails, so make stops).
set -euo pipefail

pkgs=(
	gcc make libc6-dev pkg-config	# userspace, static test binaries
	liburing-dev libnuma-dev	# libferry: io_uring doorbells, NUMA
	dwarves				# pahole: BTF for 6.12 module builds
	qemu-system-x86 cpio gzip xz-utils	# module tests in a VM
	apt dpkg ca-certificates	# kernel/harness .debs into the cache
	dkms debootstrap		# DKMS: build test, and the README steps in a VM
	gnuplot-nox			# ferry-bench --plot
	clang libclang-rt-14-dev	# libFuzzer harnesses
	flex bison bc libelf-dev libssl-dev	# the debug kernel build
	abigail-tools g++		# ABI check: abidw/abidiff; ferry.h as C++17
	python3 python3-numpy python3-pytest	# the Python package and its tests
)

missing=()
for p in "${pkgs[@]}"; do
	# "install ok installed" is the only state that means usable.
	s=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	[ "$s" = "install ok installed" ] || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

cmd="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" != 0 ]; then
	echo "ferry: missing packages; run as root:" >&2
	echo "  apt-get update && $cmd" >&2
	exit 1
fi
echo "# installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Fresh containers have no package lists; refresh only when install fails.
if ! $cmd >/dev/null 2>&1; then
	apt-get update -qq >/dev/null
	$cmd >/dev/null || { echo "ferry: apt-get install failed: ${missing[*]}" >&2; exit 1; }
fi

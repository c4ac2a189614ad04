#!/bin/bash
# The Debian userspace vm-newcomer.sh boots (debootstrap, minbase, with
# dkms, gcc, udev), made once per suite and cached under
# $FERRY_CACHE/rootfs/<suite>-dkms.  Prints its path.
#
#   scripts/newcomer-rootfs.sh [bookworm|trixie]
#
# A lock makes a second caller wait for the first one's result (make check
# starts these early, in the background) instead of racing it.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"

suite=${1:-bookworm}
# What the README asks a newcomer to install, and what dkms's build needs
# at run time; trixie renamed the libraries for 64-bit time_t.
case "$suite" in
bookworm) libs=libelf1,libssl3 ;;
trixie)   libs=libelf1t64,libssl3t64 ;;
*)        ferry_die "usage: newcomer-rootfs.sh bookworm|trixie (got '$suite')" ;;
esac
ferry_cache_init
base=$FERRY_CACHE/rootfs/$suite-dkms
mkdir -p "$FERRY_CACHE/rootfs"
exec 9>"$base.lock"
flock 9
if [ ! -e "$base/.complete" ]; then
	command -v debootstrap >/dev/null || ferry_die "debootstrap is missing (scripts/deps.sh installs it)"
	ferry_log "debootstrap: $suite with dkms, gcc, udev (once, cached in $base)"
	rm -rf "$base" && mkdir -p "$base"
	if ! debootstrap --variant=minbase \
		--include=udev,kmod,dkms,gcc,make,libc6-dev,passwd,$libs,zlib1g,dwarves,linux-base \
		"$suite" "$base/root" "$(ferry_mirror)" >"$base.log" 2>&1; then
		tail -n 20 "$base.log" | sed 's/^/# /' >&2
		ferry_die "debootstrap of the newcomer VM's $suite userspace failed (log: $base.log)"
	fi
	rm -rf "$base/root"/var/cache/apt/archives/*.deb "$base/root"/var/lib/apt/lists/* \
	       "$base/root"/usr/share/{doc,man,info,locale}
	touch "$base/.complete"
fi
printf '%s\n' "$base"

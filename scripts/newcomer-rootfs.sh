#!/bin/bash
# The bookworm userspace vm-newcomer.sh boots (debootstrap, minbase, with
# dkms, gcc, udev), made once and cached under $FERRY_CACHE/rootfs.  Prints
# its path.  A lock makes a second caller wait for the first one's result
# (make check starts this early, in the background) instead of racing it.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"

ferry_cache_init
base=$FERRY_CACHE/rootfs/bookworm-dkms
mkdir -p "$FERRY_CACHE/rootfs"
exec 9>"$FERRY_CACHE/rootfs/.lock"
flock 9
if [ ! -e "$base/.complete" ]; then
	command -v debootstrap >/dev/null || ferry_die "debootstrap is missing (scripts/deps.sh installs it)"
	ferry_log "debootstrap: bookworm with dkms, gcc, udev (once, cached in $base)"
	rm -rf "$base" && mkdir -p "$base"
	mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1 || true)
	if ! debootstrap --variant=minbase \
		--include=udev,kmod,dkms,gcc,make,libc6-dev,passwd,libelf1,libssl3,zlib1g,dwarves,linux-base \
		bookworm "$base/root" "${mirror:-http://deb.debian.org/debian}" >"$base.log" 2>&1; then
		tail -n 20 "$base.log" | sed 's/^/# /' >&2
		ferry_die "debootstrap of the newcomer VM's userspace failed (log: $base.log)"
	fi
	rm -rf "$base/root"/var/cache/apt/archives/*.deb "$base/root"/var/lib/apt/lists/* \
	       "$base/root"/usr/share/{doc,man,info,locale}
	touch "$base/.complete"
fi
printf '%s\n' "$base"

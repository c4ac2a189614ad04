#!/bin/bash
# Make a Debian kernel series ready for module builds and qemu boots.
#
#   scripts/kernel.sh 6.1|6.12
#
# Resolves the newest ABI of that series that apt knows (6.1 from bookworm,
# 6.12 from bookworm-security), downloads its image, headers and kbuild
# packages into the cache once, unpacks them side by side, and prints shell
# assignments for eval:
#   FERRY_KABI=6.1.0-56  FERRY_KDIR=<headers dir>  FERRY_VMLINUZ=<image>
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"

series=${1:-}
# "debug": ferry's own debug build of 6.1 (KASAN, lockdep, kmemleak...).
[ "$series" = debug ] && exec "$here/debug-kernel.sh"
case "$series" in
6.1)  re='^linux-image-(6\.1\.0-[0-9]+)-amd64-unsigned$' ;;
6.12) re='^linux-image-(6\.12\.[0-9]+\+deb12)-amd64-unsigned$' ;;
*)    ferry_die "usage: kernel.sh 6.1|6.12 (got '${series}')" ;;
esac

resolve() {
	apt-cache pkgnames linux-image-"$series" 2>/dev/null |
		sed -nE "s/$re/\\1/p" | sort -V | tail -n 1
}

# A pinned ABI (FERRY_KABI_6_1=6.1.0-56, say) skips resolution entirely.
var=FERRY_KABI_${series//./_}
abi=${!var:-}
[ -n "$abi" ] || abi=$(resolve)
if [ -z "$abi" ]; then
	ferry_apt_update
	abi=$(resolve)
fi
[ -n "$abi" ] || ferry_die "apt knows no linux-image-$series.*-amd64-unsigned; is bookworm-security in sources.list?"

root=$FERRY_CACHE/kernels/$abi
if [ ! -e "$root/.complete" ]; then
	ferry_cache_init
	kbuild=$(apt-cache depends "linux-headers-$abi-amd64" 2>/dev/null |
		 sed -nE 's/^ *Depends: (linux-kbuild-[^ ]+)$/\1/p' | head -n 1)
	[ -n "$kbuild" ] || kbuild=linux-kbuild-$series
	debs=()
	for p in "linux-image-$abi-amd64-unsigned" "linux-headers-$abi-amd64" \
		 "linux-headers-$abi-common" "$kbuild"; do
		debs+=("$(ferry_deb "$p")") || exit 1
	done
	ferry_log "unpacking kernel $abi"
	rm -rf "$root" && mkdir -p "$root"
	for d in "${debs[@]}"; do
		dpkg-deb -x "$d" "$root" || ferry_die "cannot unpack $d"
	done
	# The per-flavour headers include the common ones by absolute path
	# (/usr/src/...); point that at our unpacked copy.
	mk=$root/usr/src/linux-headers-$abi-amd64/Makefile
	sed -i "s#/usr/src/#$root/usr/src/#g" "$mk"
	# Modules of the image are not needed to boot with -kernel/-initrd.
	rm -rf "$root/lib/modules" "$root/usr/lib/modules" \
	       "$root/usr/share/doc" "$root/usr/lib/debug"
	touch "$root/.complete"
fi

printf 'FERRY_KABI=%q\n' "$abi"
printf 'FERRY_KDIR=%q\n' "$root/usr/src/linux-headers-$abi-amd64"
printf 'FERRY_VMLINUZ=%q\n' "$root/boot/vmlinuz-$abi-amd64"

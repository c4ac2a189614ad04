#!/bin/bash
# Make a Debian kernel series ready for module builds and qemu boots.
#
#   scripts/kernel.sh 6.1|6.12|6.12-trixie|7|debug
#
#   6.1          Debian 12's kernel (bookworm)
#   6.12         bookworm-security's 6.12 (+deb12)
#   6.12-trixie  Debian 13's kernel (trixie, trixie-security: +deb13)
#   7            the newest 7.x that Debian's archive has headers for, in
#                any of trixie-backports, forky, sid, experimental
#                (highest package version; picked at every run, from
#                lists refreshed daily, so CI follows new releases)
#   debug        ferry's own debug build of 6.1 (debug-kernel.sh)
#
# Resolves the newest ABI of the series, downloads its image, headers and
# kbuild packages into the cache once, unpacks them side by side, and
# prints shell assignments for eval:
#   FERRY_KABI=6.1.0-56  FERRY_KDIR=<headers dir>  FERRY_VMLINUZ=<image>
#   FERRY_KSUITE=<suite>  FERRY_KCC=<gcc major>  FERRY_KCHROOT=<dir or empty>
#   FERRY_KAPT=host|xapt (whose package lists it came from: lib.sh)
# A kernel of a suite newer than the host's is built for in a chroot of
# its suite with its own compiler (chroot.sh, made here once, cached);
# FERRY_KCHROOT names it.  A pinned ABI (FERRY_KABI_6_1=6.1.0-56,
# FERRY_KABI_6_12_trixie=6.12.118+deb13, FERRY_KABI_7=7.3.4+deb13) skips
# resolution.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"

series=${1:-}
[ "$series" = debug ] && exec "$here/debug-kernel.sh"
# How the series' ABIs are found: in the host's lists (bookworm) or in the
# private lists of the newer suites (xapt).
case "$series" in
6.1)         src=host pfx=linux-image-6.1 re='^linux-image-(6\.1\.0-[0-9]+)-amd64-unsigned$' ;;
6.12)        src=host pfx=linux-image-6.12 re='^linux-image-(6\.12\.[0-9]+\+deb12)-amd64-unsigned$' ;;
6.12-trixie) src=xapt pfx=linux-headers-6.12 re='^linux-headers-(6\.12\.[0-9]+\+deb13)-amd64$' ;;
7)           src=xapt pfx=linux-headers-7 re='^linux-headers-(7\.[0-9]+(\.[0-9]+)?(\+deb[0-9]+)?)-amd64$' ;;
*)           ferry_die "usage: kernel.sh 6.1|6.12|6.12-trixie|7|debug (got '${series}')" ;;
esac

apt_() {	# apt_ apt-get|apt-cache ARGS: on the lists this series is in
	if [ $src = xapt ]; then ferry_xapt "$@"; else "$@"; fi
}

# The newest ABI: by the headers' package version (so 7.3.4 beats 7.3~rc7
# and 7.4~rc1 beats 7.3.4), not by the name.
resolve() {
	local abi best= bestv= v
	for abi in $(apt_ apt-cache pkgnames "$pfx" 2>/dev/null | sed -nE "s/$re/\\1/p"); do
		v=$(apt_ apt-cache show --no-all-versions "linux-headers-$abi-amd64" 2>/dev/null |
		    sed -n 's/^Version: //p' | head -n 1)
		[ -n "$v" ] || continue
		if [ -z "$bestv" ] || dpkg --compare-versions "$v" gt "$bestv"; then
			best=$abi bestv=$v
		fi
	done
	printf '%s\n' "$best"
}

var=FERRY_KABI_${series//[.-]/_}
abi=${!var:-}
if [ -z "$abi" ]; then
	[ $src = xapt ] && ferry_xapt_update
	abi=$(resolve)
	if [ -z "$abi" ] && [ $src = host ]; then
		ferry_apt_update
		abi=$(resolve)
	fi
fi
[ -n "$abi" ] || ferry_die "no Debian kernel with headers for series $series in the package lists (bookworm-security in sources.list? the newer suites reachable?)"
[[ $abi =~ ^[0-9][0-9a-z.+~-]*$ ]] || ferry_die "FERRY_KABI_${series//[.-]/_}='$abi' is not a kernel ABI"

ferry_cache_init
root=$FERRY_CACHE/kernels/$abi
mkdir -p "$FERRY_CACHE/kernels"
# check.sh prepares kernels in the background; a second caller waits here.
exec 9>"$root.lock"
flock 9
if [ ! -e "$root/.complete" ]; then
	[ $src = xapt ] && ferry_xapt_update
	deps=$(apt_ apt-cache depends "linux-headers-$abi-amd64" 2>/dev/null) ||
		ferry_die "apt knows no linux-headers-$abi-amd64"
	kbuild=$(sed -nE 's/^ *Depends: (linux-kbuild-[^ ]+)$/\1/p' <<<"$deps" | head -n 1)
	[ -n "$kbuild" ] || kbuild=linux-kbuild-$series
	# Since 7.x linux-image-<abi>-amd64 is a metapackage; the kernel
	# itself is in linux-binary-unsigned-<abi>-amd64.
	if apt_ apt-cache show "linux-binary-unsigned-$abi-amd64" >/dev/null 2>&1; then
		image=linux-binary-unsigned-$abi-amd64
	else
		image=linux-image-$abi-amd64-unsigned
	fi
	debs=()
	for p in "$image" "linux-headers-$abi-amd64" "linux-headers-$abi-common" "$kbuild"; do
		debs+=("$(ferry_deb "$p" $src)") || exit 1
	done
	ferry_log "unpacking kernel $abi"
	rm -rf "$root" && mkdir -p "$root"
	for d in "${debs[@]}"; do
		dpkg-deb -x "$d" "$root" || ferry_die "cannot unpack $d"
	done
	# The per-flavour headers include the common ones by absolute path
	# (/usr/src/...); point that at our unpacked copy.
	mk=$root/usr/src/linux-headers-$abi-amd64/Makefile
	[ -f "$mk" ] || ferry_die "linux-headers-$abi-amd64 has no $mk"
	sed -i "s#/usr/src/#$root/usr/src/#g" "$mk"
	mkdir -p "$root/boot"
	z=$root/usr/lib/modules/$abi-amd64/vmlinuz.unsigned
	[ -f "$z" ] && mv "$z" "$root/boot/vmlinuz-$abi-amd64"
	[ -f "$root/boot/vmlinuz-$abi-amd64" ] || ferry_die "$image has no kernel image"
	# The compiler the kernel was built with (its headers depend on it)
	# and the suite its headers come from: the build chroot's.
	cc=$(sed -nE 's/^ *Depends: gcc-([0-9]+)(-for-host)?$/\1/p' <<<"$deps" | head -n 1)
	suite=bookworm
	if [ $src = xapt ]; then
		suite=$(ferry_xapt apt-cache madison "linux-headers-$abi-amd64" |
			awk -F'|' '{print $3}' | awk '{print $2}' | cut -d/ -f1 | head -n 1)
		suite=${suite%-backports}; suite=${suite%-security}; suite=${suite%-updates}
		[ "$suite" = experimental ] && suite=sid
		[ -n "$cc" ] || ferry_die "linux-headers-$abi-amd64 depends on no gcc-N"
	fi
	printf 'suite=%s\ncc=%s\n' "$suite" "$cc" >"$root/.origin"
	# Modules of the image are not needed to boot with -kernel/-initrd.
	rm -rf "$root/lib/modules" "$root/usr/lib/modules" \
	       "$root/usr/share/doc" "$root/usr/lib/debug"
	touch "$root/.complete"
fi
suite=bookworm cc=
[ -f "$root/.origin" ] && . "$root/.origin"
chroot_dir=
if [ "$suite" != bookworm ]; then
	chroot_dir=$("$here/chroot.sh" "$suite" "$cc") || exit 1
fi

printf 'FERRY_KABI=%q\n' "$abi"
printf 'FERRY_KDIR=%q\n' "$root/usr/src/linux-headers-$abi-amd64"
printf 'FERRY_VMLINUZ=%q\n' "$root/boot/vmlinuz-$abi-amd64"
printf 'FERRY_KSUITE=%q\n' "$suite"
printf 'FERRY_KCC=%q\n' "$cc"
printf 'FERRY_KCHROOT=%q\n' "$chroot_dir"
printf 'FERRY_KAPT=%q\n' "$src"

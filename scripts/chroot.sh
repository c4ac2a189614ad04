#!/bin/bash
# A minimal Debian chroot to build modules for that suite's kernels in,
# made once and cached under $FERRY_CACHE/chroots/<suite>-gcc<N>.
#
#   scripts/chroot.sh SUITE GCC_MAJOR      prints the chroot's path
#   scripts/chroot.sh --run DIR CMD...     runs CMD in chroot DIR
#
# Kernels newer than bookworm's want their own compiler (trixie's 6.12 and
# 7.x+deb13: gcc-14; +deb14: gcc-16; bookworm's gcc-12 lacks options they
# pass, -fmin-function-alignment among them) and run kbuild tools (objtool,
# modpost, from linux-kbuild-*) linked against a newer glibc than
# bookworm's.  So each suite gets a debootstrap --variant=minbase with
# gcc-N, make, libelf, libssl, pahole (dwarves) and dkms.
#
# --run gives CMD its own mount namespace: /proc, /dev, the cache and the
# repository (or $FERRY_CHROOT_BIND, colon-separated) are bind-mounted at
# their own paths, so absolute paths mean the same inside; the mounts go
# away with the command.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
. "$here/lib.sh"

if [ "${1:-}" = --run ]; then
	[ $# -ge 3 ] || ferry_die "usage: chroot.sh --run DIR CMD..."
	dir=$2
	shift 2
	[ -e "$dir/.complete" ] || ferry_die "$dir: not a chroot made by chroot.sh"
	binds="$FERRY_CACHE:$repo${FERRY_CHROOT_BIND:+:$FERRY_CHROOT_BIND}"
	# The command's arguments reach the inner shell as "$@".
	exec unshare --mount --propagation private -- bash -euc '
		dir=$1 binds=$2
		shift 2
		mount -t proc proc "$dir/proc"
		mount --rbind /dev "$dir/dev"
		IFS=:
		for b in $binds; do
			mkdir -p "$dir$b"
			mount --bind "$b" "$dir$b"
		done
		unset IFS
		exec chroot "$dir" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
			HOME=/root LC_ALL=C.UTF-8 "$@"
	' chroot-run "$dir" "$binds" "$@"
fi

[ $# -eq 2 ] || ferry_die "usage: chroot.sh SUITE GCC_MAJOR (got: $*)"
suite=$1 gcc=$2
[[ $suite =~ ^[a-z]+$ ]] || ferry_die "chroot.sh: '$suite' is not a Debian suite name"
[[ $gcc =~ ^[0-9]+$ ]] || ferry_die "chroot.sh: gcc major '$gcc' is not a number"
[ "$(id -u)" = 0 ] || ferry_die "chroot.sh: debootstrap and chroot need root"
command -v debootstrap >/dev/null || ferry_die "debootstrap is missing (scripts/deps.sh installs it)"

ferry_cache_init
mkdir -p "$FERRY_CACHE/chroots"
dir=$FERRY_CACHE/chroots/$suite-gcc$gcc
# check.sh prepares chroots in the background; a second caller waits here.
exec 9>"$dir.lock"
flock 9
if [ ! -e "$dir/.complete" ]; then
	ferry_log "debootstrap: $suite minbase with gcc-$gcc (once, cached in $dir)"
	rm -rf "$dir"
	# Bookworm's debootstrap has no script for suites newer than trixie;
	# sid's fits them all.
	script=/usr/share/debootstrap/scripts/$suite
	[ -e "$script" ] || script=/usr/share/debootstrap/scripts/sid
	if ! debootstrap --variant=minbase \
		--include="gcc-$gcc,make,libc6-dev,libelf-dev,libssl-dev,dwarves,dkms,kmod,xz-utils,zstd" \
		"$suite" "$dir" "$(ferry_mirror)" "$script" >"$dir.log" 2>&1; then
		tail -n 20 "$dir.log" | sed 's/^/# /' >&2
		ferry_die "debootstrap of the $suite build chroot failed (log: $dir.log)"
	fi
	rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* \
	       "$dir"/usr/share/{doc,man,info,locale}
	touch "$dir/.complete"
fi
printf '%s\n' "$dir"

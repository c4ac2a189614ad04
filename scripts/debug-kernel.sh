#!/bin/bash
# Build ferry's debug kernel once (cached): Debian's linux-source-6.1,
# tinyconfig plus scripts/debug-kernel/ferry-debug.config (KASAN, lockdep,
# kmemleak, DEBUG_VM, DEBUG_LIST, fault injection, NUMA, io_uring, modules).
# Prints the same assignments as kernel.sh, for eval:
#   FERRY_KABI=<version>  FERRY_KDIR=<build tree>  FERRY_VMLINUZ=<bzImage>
# and FERRY_KAPPEND, what its command line needs (two emulated NUMA nodes:
# the kernel has no ACPI to read qemu's from).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"

frag=$here/debug-kernel/ferry-debug.config
sum=$(sha256sum "$frag" | cut -c1-12)
dir=$FERRY_CACHE/debug-kernel/$sum
# make check starts a build early, in the background: a second caller
# waits for it here instead of building the same tree beside it.
ferry_cache_init
mkdir -p "$FERRY_CACHE/debug-kernel"
exec 9>"$FERRY_CACHE/debug-kernel/.lock"
flock 9
if [ ! -e "$dir/.complete" ]; then
	deb=$(ferry_deb linux-source-6.1) || exit 1
	rm -rf "$dir" && mkdir -p "$dir"
	# A build of an earlier fragment, if any, is reused: only what the
	# changed options touch gets rebuilt.
	prev=$(ls -dt "$FERRY_CACHE"/debug-kernel/*/.complete 2>/dev/null | head -n 1 || true)
	if [ -n "$prev" ]; then
		ferry_log "debug kernel: starting from $(dirname "$prev")"
		cp -a "$(dirname "$prev")/src" "$dir/src"
	else
		ferry_log "debug kernel: unpacking $(basename "$deb")"
		dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dir" --wildcards '*/linux-source-*.tar.xz'
		tar -xJf "$dir"/usr/src/linux-source-*.tar.xz -C "$dir"
		rm -rf "$dir/usr"
		src=$(ls -d "$dir"/linux-source-*)
		mv "$src" "$dir/src"
	fi
	ferry_log "debug kernel: configuring (tinyconfig + $(basename "$frag"))"
	make -C "$dir/src" -s tinyconfig >/dev/null
	(cd "$dir/src" && ./scripts/kconfig/merge_config.sh -m .config "$frag" >/dev/null)
	make -C "$dir/src" -s olddefconfig >/dev/null
	# Every line of the fragment must have survived the dependencies.
	missing=$(grep -E '^CONFIG_[A-Z0-9_]+=y' "$frag" | while read -r l; do
		grep -qx "$l" "$dir/src/.config" || echo "$l"; done)
	[ -z "$missing" ] || ferry_die "debug kernel: not in the final .config: $(echo $missing)"
	ferry_log "debug kernel: building (a few minutes on 2 cores)"
	if ! make -C "$dir/src" -j"$(nproc)" bzImage modules >"$dir/build.log" 2>&1; then
		tail -n 30 "$dir/build.log" >&2
		ferry_die "debug kernel build failed (log: $dir/build.log)"
	fi
	touch "$dir/.complete"
	# Builds of older fragments are of no further use.
	for d in "$FERRY_CACHE"/debug-kernel/*; do
		[ "$d" = "$dir" ] || rm -rf "$d"
	done
fi
printf 'FERRY_KABI=%q\n' "$(cat "$dir/src/include/config/kernel.release")"
printf 'FERRY_KDIR=%q\n' "$dir/src"
printf 'FERRY_VMLINUZ=%q\n' "$dir/src/arch/x86/boot/bzImage"
printf 'FERRY_KAPPEND=%q\n' "numa=fake=2"

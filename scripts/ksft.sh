#!/bin/bash
# Print the directory holding the kernel's kselftest harness
# (kselftest_harness.h, kselftest.h), unpacked once from Debian's
# linux-source-$FERRY_KSFT_SERIES package into the cache.  The harness is
# used from there at build time; it is never copied into the repository.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"

series=${FERRY_KSFT_SERIES:-6.1}
dir=$FERRY_CACHE/ksft/$series
if [ ! -e "$dir/.complete" ]; then
	deb=$(ferry_deb "linux-source-$series") || exit 1
	tmp=$FERRY_CACHE/ksft/tmp.$$
	rm -rf "$tmp" && mkdir -p "$tmp"
	ferry_log "unpacking the kselftest harness from $(basename "$deb")"
	# The deb holds one big tarball; pull just the two headers out of it.
	dpkg-deb --fsys-tarfile "$deb" |
		tar -x -C "$tmp" --wildcards '*/linux-source-*.tar.xz'
	tarball=$(ls "$tmp"/usr/src/linux-source-*.tar.xz)
	sel=tools/testing/selftests
	tar -xJf "$tarball" -C "$tmp" --wildcards \
		"*/$sel/kselftest_harness.h" "*/$sel/kselftest.h"
	rm -rf "$dir" && mkdir -p "$dir"
	cp "$tmp"/linux-source-*/"$sel"/kselftest_harness.h \
	   "$tmp"/linux-source-*/"$sel"/kselftest.h "$dir"/
	rm -rf "$tmp"
	touch "$dir/.complete"
fi
printf '%s\n' "$dir"

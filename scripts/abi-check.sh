#!/bin/bash
# libferry's ABI against the last release's (the baseline committed in
# userspace/abi/), in TAP, ending with "N passed, N failed":
#   - ferry.symbols and ferry.h agree, and libferry.so.0 exports exactly
#     the list's functions, each in its version node;
#   - abidiff (Debian's abigail-tools) finds no change an old caller could
#     see between the baseline and build/libferry.so.0; added functions
#     are fine, in a node the baseline does not have;
#   - ferry.h compiles as C11, C17 and C++17 with -Wall -Wextra -Werror
#     -pedantic;
#   - a program built against the baseline's header (tests/abi/) runs a
#     broker end to end against the new library.
# The check never writes the baseline.  At a release, deliberately:
#   make abi-baseline      (this script with --baseline [LIB])
# then commit userspace/abi/ and tests/abi/ferry-0.h.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 1
base=userspace/abi/libferry.so.0.abi
hdrs=$root/userspace/include
lib=build/libferry.so.0

# What abidw records: the public header's types only (the opaque structs
# stay opaque), no paths of this checkout.
# Whether @1 has DWARF.  (Not `readelf | grep -q`: with pipefail, grep
# leaving early makes readelf's SIGPIPE the pipeline's failure, at random.)
has_debug() {
	local sections
	sections=$(readelf -S "$1") && [[ $sections == *.debug_info* ]]
}

dump() {
	# Without DWARF abidw sees symbols only, and type changes go unseen.
	has_debug "$1" ||
		{ echo "abi-check: $1 has no debug info (build it with -g)" >&2; return 1; }
	abidw --no-corpus-path --no-comp-dir-path --headers-dir "$hdrs" --drop-private-types \
		--out-file "$2" "$1"
}

# --baseline [LIB HEADER]: this build's library and header, or another
# release's (the first baseline was 0.1's, built from its commit).
if [ "${1:-}" = --baseline ]; then
	src=${2:-$lib} hdr=${3:-userspace/include/ferry.h}
	[ $# -eq 1 ] || [ $# -eq 3 ] || { echo "usage: $0 --baseline [LIB HEADER]" >&2; exit 2; }
	dump "$src" "$base" || exit 1
	[ "$hdr" -ef tests/abi/ferry-0.h ] || cp "$hdr" tests/abi/ferry-0.h
	echo "# $base from $src, tests/abi/ferry-0.h from $hdr"
	echo "# review tests/abi/old_header.c against that header, then commit both"
	exit 0
fi

n=0 pass=0 fail=0
check() {
	n=$((n + 1))
	if [ "$1" = OK ]; then pass=$((pass + 1)); echo "ok $n $2"
	else fail=$((fail + 1)); echo "not ok $n $2"; fi
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "TAP version 13"

for tool in abidw abidiff; do
	command -v $tool >/dev/null || { echo "not ok 1 $tool missing (abigail-tools, scripts/deps.sh)"; echo "0 passed, 1 failed"; exit 1; }
done
[ -f "$lib" ] || { echo "not ok 1 no $lib (make lib)"; echo "0 passed, 1 failed"; exit 1; }
has_debug "$lib" ||
	{ echo "not ok 1 $lib has no debug info: abidiff would see no types (CFLAGS without -g?)"; echo "0 passed, 1 failed"; exit 1; }

if scripts/symbols.sh --check 2>"$tmp/sym"; then
	check OK "ferry.symbols and ferry.h agree ($(scripts/symbols.sh --list | wc -l) functions)"
else
	sed 's/^/# /' "$tmp/sym"; check FAIL "ferry.symbols and ferry.h agree"
fi
nm -D --defined-only "$lib" | awk '$2 == "T" { sub(/@@?/, "@", $3); print $3 }' | sort >"$tmp/exported"
if diff -u <(scripts/symbols.sh --nodes) "$tmp/exported" >"$tmp/d"; then
	check OK "$lib exports exactly ferry.symbols, each name in its node"
else
	sed 's/^/# /' "$tmp/d"; check FAIL "$lib exports exactly ferry.symbols"
fi

# abidiff's exit status has bit 4 for any change and 8 for an incompatible
# one; added functions alone are a change, so they are judged apart:
# with --no-added-syms nothing may be left.
diff_args=(--suppressions userspace/abi/ferry.abignore --hd2 "$hdrs" --drop-private-types)
abidiff "${diff_args[@]}" "$base" "$lib" >"$tmp/report" 2>&1
abidiff "${diff_args[@]}" --no-added-syms "$base" "$lib" >"$tmp/judged" 2>&1
rc=$?
sed 's/^/# /' "$tmp/report"
if [ $rc -eq 0 ]; then
	check OK "abidiff: no change old callers can see against $base"
else
	check FAIL "abidiff: changes against $base (exit $rc: report above)"
fi
# An added function belongs to a node no release had yet.
released=$(grep -oP "<elf-symbol [^>]*version='\K[^']+" "$base" | sort -u)
late=$(grep -oP '^\s*\[A\] .*\{\K[a-z0-9_]+@@?[A-Z0-9_.]+(?=\})' "$tmp/report" |
	awk -F'@+' -v r="$(echo $released)" 'BEGIN { split(r, a, " "); for (i in a) rel[a[i]] = 1 }
		rel[$2] { print }')
if [ -z "$late" ]; then
	check OK "functions added since the baseline are in new nodes only"
else
	echo "$late" | sed 's/^/# added to a released node: /'
	check FAIL "functions added to a node the baseline already has"
fi

# The header alone, in each language its users build with.
# The macros too: they expand in the caller's language.
cat >"$tmp/h.c" <<'C'
#include <ferry.h>
#include <stdlib.h>
int main(void)
{
	struct ferry_broker_opts o;
	struct ferry_heap_stats hs;
	size_t size = 1u << 16;
	void *heap = aligned_alloc(4096, size);

	if (!heap || ferry_version() != FERRY_VERSION || ferry_broker_opts_init(&o) ||
	    o.helpers != 1 || ferry_heap_format(heap, size, 0) || ferry_heap_stats(heap, size, &hs))
		return 1;
	free(heap);
	return hs.capacity == hs.used + hs.free && hs.live_blocks == 0 ? 0 : 2;
}
C
for std in c11 c17; do
	if ${CC:-cc} -std=$std -Wall -Wextra -Werror -pedantic -I"$hdrs" -c -o "$tmp/h.o" "$tmp/h.c" \
		2>"$tmp/err"; then
		check OK "ferry.h compiles as ${std^^} (-Wall -Wextra -Werror -pedantic)"
	else
		sed 's/^/# /' "$tmp/err"; check FAIL "ferry.h compiles as ${std^^}"
	fi
done
cp "$tmp/h.c" "$tmp/h.cc"
if ${CXX:-g++} -std=c++17 -Wall -Wextra -Werror -pedantic -I"$hdrs" -o "$tmp/h" "$tmp/h.cc" \
	-L"$root/build" -l:libferry.so.0 2>"$tmp/err"; then
	LD_LIBRARY_PATH="$root/build" "$tmp/h"
	rc=$?
	[ $rc -eq 0 ] && check OK "ferry.h compiles as C++17 (-Wall -Wextra -Werror -pedantic), links and runs" ||
		check FAIL "ferry.h as C++17: the program exited $rc"
else
	sed 's/^/# /' "$tmp/err"; check FAIL "ferry.h compiles as C++17"
fi

# Programs built against the baseline's header, run against this library.
for t in build/tests/abi/*; do
	[ -x "$t" ] || { check FAIL "no programs in build/tests/abi (make build-tests)"; break; }
	objdump -T "$t" | grep -oP '\(FERRY_[0-9.]+\)' | sort -u | tr -d '()' >"$tmp/needs"
	if [ "$(cat "$tmp/needs")" = FERRY_0 ]; then
		check OK "$t needs the FERRY_0 node only, as a 0.1 build would"
	else
		check FAIL "$t needs $(echo $(cat "$tmp/needs")), not only FERRY_0"
	fi
	"$t" >"$tmp/out" 2>&1
	rc=$?
	grep -E '^(not )?ok ' "$tmp/out" | grep -v '# SKIP' >"$tmp/cases" || true
	sed 's/^/# /' "$tmp/out"
	if [ $rc -eq 0 ] && [ -s "$tmp/cases" ] && ! grep -q '^not ok' "$tmp/cases"; then
		check OK "$t: $(wc -l <"$tmp/cases") cases against the new libferry.so.0"
	else
		check FAIL "$t against the new libferry.so.0 (exit $rc)"
	fi
done

echo "1..$n"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]

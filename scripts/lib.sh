# shellcheck shell=bash
# Shared by the scripts in this directory: where the download cache lives
# and how a Debian package gets into it.  Sourced, never run.

# Everything downloaded or extracted lives here, outside the repository, so
# a second `make check` (or a fresh clone on the same machine) fetches
# nothing.  Override with FERRY_CACHE.
FERRY_CACHE=${FERRY_CACHE:-/var/cache/ferry}

ferry_log() { printf '# %s\n' "$*" >&2; }
ferry_die() { printf 'ferry: %s\n' "$*" >&2; exit 1; }

ferry_cache_init() {
	mkdir -p "$FERRY_CACHE/debs" ||
		ferry_die "cannot create cache directory $FERRY_CACHE (set FERRY_CACHE)"
}

# apt's package lists are what we resolve names against; a fresh container
# has none.  Refresh them once, only when a name cannot be found.
ferry_apt_update() {
	[ "$(id -u)" = 0 ] || ferry_die "apt lists are missing a package and we are not root to run apt-get update"
	ferry_log "apt-get update"
	apt-get update -qq >/dev/null || ferry_die "apt-get update failed"
}

# Print the cached .deb of package $1, downloading it first if needed.
ferry_deb() {
	local pkg=$1 f
	ferry_cache_init
	f=$(ls "$FERRY_CACHE/debs/${pkg}_"*.deb 2>/dev/null | sort -V | tail -n 1)
	if [ -z "$f" ]; then
		ferry_log "downloading $pkg"
		if ! (cd "$FERRY_CACHE/debs" &&
		      apt-get download -qq -o APT::Sandbox::User=root "$pkg" >/dev/null 2>&1); then
			ferry_apt_update
			(cd "$FERRY_CACHE/debs" &&
			 apt-get download -qq -o APT::Sandbox::User=root "$pkg" >/dev/null) ||
				ferry_die "cannot download Debian package $pkg"
		fi
		f=$(ls "$FERRY_CACHE/debs/${pkg}_"*.deb 2>/dev/null | sort -V | tail -n 1)
		[ -n "$f" ] || ferry_die "apt-get download $pkg left no .deb behind"
	fi
	printf '%s\n' "$f"
}

# Static busybox for the test VM's initramfs, taken from Debian's
# busybox-static without installing it on the host.
ferry_busybox() {
	local dir=$FERRY_CACHE/busybox
	if [ ! -x "$dir/bin/busybox" ]; then
		local deb
		deb=$(ferry_deb busybox-static) || exit 1
		rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
		dpkg-deb -x "$deb" "$dir.tmp" || ferry_die "cannot unpack $deb"
		rm -rf "$dir" && mv "$dir.tmp" "$dir"
	fi
	printf '%s\n' "$dir/bin/busybox"
}

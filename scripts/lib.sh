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

# Print the cached .deb of package $1, downloading it first if needed;
# "ferry_deb PKG xapt" takes it from the private lists of the newer suites
# (ferry_xapt below) instead of the host's.
ferry_deb() {
	local pkg=$1 f
	ferry_cache_init
	f=$(ls "$FERRY_CACHE/debs/${pkg}_"*.deb 2>/dev/null | sort -V | tail -n 1)
	if [ -z "$f" ] && [ "${2:-}" = xapt ]; then
		ferry_log "downloading $pkg"
		ferry_xapt_update
		(cd "$FERRY_CACHE/debs" && ferry_xapt apt-get download -qq "$pkg" >/dev/null) ||
			ferry_die "cannot download Debian package $pkg"
		f=$(ls "$FERRY_CACHE/debs/${pkg}_"*.deb 2>/dev/null | sort -V | tail -n 1)
		[ -n "$f" ] || ferry_die "apt-get download $pkg left no .deb behind"
	fi
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

# --- Debian's other suites, through a private apt configuration ------------
# The host's sources name bookworm only; the kernels of Debian 13 and later
# (trixie, its backports, forky, sid, experimental) are resolved against
# package lists kept under $FERRY_CACHE/apt, so the host's apt is untouched.
FERRY_APT_DIR=$FERRY_CACHE/apt
FERRY_SUITES=${FERRY_SUITES:-trixie trixie-updates trixie-security trixie-backports forky sid experimental}

ferry_mirror() {
	local m
	m=$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null |
	    head -n 1 || true)
	printf '%s\n' "${m:-http://deb.debian.org/debian}"
}

# ferry_xapt apt-get|apt-cache ARGS...: that tool on the private lists.
ferry_xapt() {
	local tool=$1
	shift
	"$tool" -o Dir::Etc::SourceList="$FERRY_APT_DIR/sources.list" \
		-o Dir::Etc::SourceParts="$FERRY_APT_DIR/empty" \
		-o Dir::Etc::Preferences="$FERRY_APT_DIR/empty/preferences" \
		-o Dir::Etc::PreferencesParts="$FERRY_APT_DIR/empty" \
		-o Dir::State::Lists="$FERRY_APT_DIR/lists" \
		-o Dir::Cache="$FERRY_APT_DIR/cache" \
		-o Dir::State::status=/dev/null \
		-o APT::Architecture=amd64 -o APT::Architectures::=amd64 \
		-o Acquire::Languages=none -o APT::Sandbox::User=root "$@"
}

# Fetch the private lists, at most once a day (FERRY_APT_MAX_AGE seconds),
# so a release that appears in the archive is picked up by the next run.
ferry_xapt_update() {
	local stamp=$FERRY_APT_DIR/.updated age s mirror sec
	mkdir -p "$FERRY_APT_DIR/lists/partial" "$FERRY_APT_DIR/cache/archives/partial" \
		 "$FERRY_APT_DIR/empty" ||
		ferry_die "cannot create $FERRY_APT_DIR"
	exec 8>"$FERRY_APT_DIR/.lock"
	flock 8
	age=$(( $(date +%s) - $(stat -c %Y "$stamp" 2>/dev/null || echo 0) ))
	if [ "$age" -lt "${FERRY_APT_MAX_AGE:-86400}" ]; then
		exec 8>&-
		return 0
	fi
	mirror=$(ferry_mirror)
	sec=${mirror%/debian}/debian-security
	: >"$FERRY_APT_DIR/sources.list.new"
	for s in $FERRY_SUITES; do
		case "$s" in
		*-security) echo "deb $sec $s main" ;;
		*) echo "deb $mirror $s main" ;;
		esac >>"$FERRY_APT_DIR/sources.list.new"
	done
	mv "$FERRY_APT_DIR/sources.list.new" "$FERRY_APT_DIR/sources.list"
	ferry_log "apt-get update of $FERRY_SUITES (private lists in $FERRY_APT_DIR)"
	if ! ferry_xapt apt-get update -qq >"$FERRY_APT_DIR/update.log" 2>&1 ||
	   grep -qE '^(W|E): ' "$FERRY_APT_DIR/update.log"; then
		sed 's/^/# /' "$FERRY_APT_DIR/update.log" >&2
		ferry_die "apt-get update of Debian's newer suites failed (log: $FERRY_APT_DIR/update.log)"
	fi
	touch "$stamp"
	exec 8>&-
}

#!/bin/bash
# The README's DKMS steps, as a newcomer would type them, in a Debian VM.
#
#   scripts/vm-newcomer.sh [6.1|6.12|6.12-trixie|7]
#
# Boots Debian's kernel under qemu (TCG) with the userspace of its suite
# (bookworm for 6.1 and 6.12, trixie for 6.12-trixie and 7.x+deb13:
# debootstrap, cached under $FERRY_CACHE/rootfs) that has what the README
# asks for installed -- dkms, the running kernel's headers, udev -- and a
# clean copy of this repository in /root/ferry.  There, with udevd running,
# it runs the README's commands: make dkms-install, make install-udev,
# modprobe ferry; then checks that dkms reports the module installed and
# that /dev/ferry came up as group "ferry", mode 0660 (the udev rule).
# TAP, then "N passed, N failed"; exits non-zero on any failure.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
. "$here/lib.sh"

series=${1:-6.1}
kenv=$("$here/kernel.sh" "$series") || exit 1
FERRY_KSUITE=bookworm FERRY_KAPT=host
eval "$kenv"
suite=$FERRY_KSUITE
n=0 pass=0 fail=0
check() {	# check OK|FAIL description
	n=$((n + 1))
	if [ "$1" = OK ]; then pass=$((pass + 1)); echo "ok $n newcomer-$series-$suite: $2"
	else fail=$((fail + 1)); echo "not ok $n newcomer-$series-$suite: $2"; fi
}
finish() {
	echo "1..$n"
	echo "$pass passed, $fail failed"
	[ "$fail" -eq 0 ]
	exit
}
echo "TAP version 13"

# --- the userspace, made once (cached) ---------------------------------------
echo "# kernel $FERRY_KABI ($series) in a Debian $suite userspace"
if ! base=$("$here/newcomer-rootfs.sh" "$suite"); then
	check FAIL "debootstrap of the VM's $suite userspace"
	finish
fi

# --- this kernel's headers in a copy of it, and the repository --------------
out=$repo/build/vm-newcomer/$FERRY_KABI
root=$out/root
rm -rf "$out" && mkdir -p "$out"
cp -a "$base/root" "$root"
debs=()
for p in "linux-headers-$FERRY_KABI-amd64" "linux-headers-$FERRY_KABI-common"; do
	debs+=("$(ferry_deb "$p" "$FERRY_KAPT")") || exit 1
done
# The kbuild package these headers were made with (as kernel.sh picks it).
if [ "$FERRY_KAPT" = xapt ]; then
	deps=$(ferry_xapt apt-cache depends "linux-headers-$FERRY_KABI-amd64" 2>/dev/null)
else
	deps=$(apt-cache depends "linux-headers-$FERRY_KABI-amd64" 2>/dev/null)
fi
kbuild=$(sed -nE 's/^ *Depends: (linux-kbuild-[^ ]+)$/\1/p' <<<"$deps" | head -n 1)
debs+=("$(ferry_deb "${kbuild:-linux-kbuild-$series}" "$FERRY_KAPT")") || exit 1
mkdir -p "$root/tmp/debs" && cp "${debs[@]}" "$root/tmp/debs/"
if chroot "$root" sh -c 'dpkg -i --force-depends /tmp/debs/*.deb' >"$out/headers.log" 2>&1; then
	check OK "headers for $FERRY_KABI installed the Debian way (dpkg)"
else
	sed 's/^/# /' "$out/headers.log" | tail -n 20
	check FAIL "headers for $FERRY_KABI"
	finish
fi
rm -rf "$root/tmp/debs"
# A host runs the kernel its image package installed, with that kernel's
# module index; trixie's dkms skips depmod without one (and modprobe then
# cannot find the module).  The image's modules.order and modules.builtin*
# (its modules themselves are not needed: the VM boots with -kernel), and
# depmod, as the image's postinst would.
imgdeb=$(ls "$FERRY_CACHE/debs/linux-binary-unsigned-$FERRY_KABI-amd64_"*.deb \
	    "$FERRY_CACHE/debs/linux-image-$FERRY_KABI-amd64-unsigned_"*.deb 2>/dev/null | head -n 1)
if [ -n "$imgdeb" ] &&
   dpkg-deb --fsys-tarfile "$imgdeb" | tar -x -C "$root" --keep-directory-symlink \
	--wildcards '*/modules.order' '*/modules.builtin' '*/modules.builtin.modinfo' &&
   depmod -b "$root" "$FERRY_KABI-amd64" 2>"$out/depmod.log" &&
   [ -s "$root/lib/modules/$FERRY_KABI-amd64/modules.dep.bin" ]; then
	check OK "the kernel's module index, as its image package leaves it"
else
	sed 's/^/# /' "$out/depmod.log" 2>/dev/null
	check FAIL "the kernel's module index from ${imgdeb:-its image package (not in the cache)}"
	finish
fi
mkdir -p "$root/root/ferry"
(cd "$repo" && git ls-files -z | cpio -0 -pdm --quiet "$root/root/ferry")

cat >"$root/init" <<'INIT'
#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
# What systemd would have set up: the <(...) idiom dkms uses needs /dev/fd.
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
echo
/lib/systemd/systemd-udevd --daemon
cd /root/ferry
say() { echo "FERRY-VM $*"; }
make dkms-install >/tmp/dkms.log 2>&1; rc=$?
say "dkms-install $rc"
[ $rc = 0 ] || { tail -n 30 /tmp/dkms.log; tail -n 40 /var/lib/dkms/ferry/*/build/make.log; }
make install-udev >/tmp/udev.log 2>&1; say "install-udev $?"
modprobe ferry; rc=$?
say "modprobe $rc"
if [ $rc != 0 ]; then
	# What dkms did and what depmod knows, for the log.
	tail -n 30 /tmp/dkms.log
	find /lib/modules /usr/lib/modules -name 'ferry*' 2>&1
	ls -l /lib/modules/$(uname -r)/ 2>&1
	head -n 5 /lib/modules/$(uname -r)/modules.dep 2>&1
fi
udevadm settle -t 30
say "dkms-status $(dkms status ferry 2>&1 | tr '\n' ' ')"
say "dev $(stat -c '%A %G %t:%T' /dev/ferry 2>&1)"
say "group $(getent group ferry)"
say "done"
echo o >/proc/sysrq-trigger
sleep 30
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out/initramfs.cpio.gz"
ferry_log "initramfs: $(du -h "$out/initramfs.cpio.gz" | cut -f1)"

log=$out/console.log
t0=$(date +%s)
timeout "${FERRY_VM_TIMEOUT:-1200}" qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 3072 \
	-nographic -no-reboot -kernel "$FERRY_VMLINUZ" -initrd "$out/initramfs.cpio.gz" \
	-append "console=ttyS0 rdinit=/init panic=-1 loglevel=3" </dev/null >"$log" 2>&1
echo "# boot + README steps: $(( $(date +%s) - t0 )) s"
v() { sed -n "s/^.*FERRY-VM $1 //p" "$log" | tr -d '\r' | head -n 1; }

[ "$(v dkms-install)" = 0 ] && check OK "make dkms-install" ||
	{ grep -v "FERRY-VM" "$log" | tail -n 30 | sed 's/^/# /'; check FAIL "make dkms-install (rc=$(v dkms-install))"; }
[ "$(v install-udev)" = 0 ] && check OK "make install-udev" || check FAIL "make install-udev"
[ "$(v modprobe)" = 0 ] && check OK "modprobe ferry (the DKMS-built module)" ||
	{ sed -n '/FERRY-VM modprobe/,/FERRY-VM dkms-status/p' "$log" | sed 's/^/# /'; check FAIL "modprobe ferry"; }
echo "# dkms status: $(v dkms-status)"
v dkms-status | grep -q "ferry/.*$FERRY_KABI-amd64.*installed" &&
	check OK "dkms status: installed for $FERRY_KABI-amd64" || check FAIL "dkms status"
echo "# /dev/ferry: $(v dev)"
v dev | grep -q "^crw-rw---- ferry " && check OK "/dev/ferry: group ferry, mode 0660 (udev rule)" ||
	check FAIL "/dev/ferry: group ferry, mode 0660 (udev rule)"
finish

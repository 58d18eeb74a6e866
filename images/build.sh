#!/bin/bash
# Build the pytest-netlab guest image: a Debian kernel + a small initramfs
# (busybox, dropbear, sftp-server, iproute2, iputils-ping, ethtool, tcpdump, dnsmasq).
#
# usage: images/build.sh OUTDIR
#   OUTDIR receives: vmlinux (uncompressed ELF kernel, booted by QEMU via PVH),
#   vmlinuz (the same kernel as Debian ships it), initrd.img, cmdline (the base
#   kernel command line), kernel-version, modules.builtin, manifest.txt
#
# Everything comes from Debian packages: the userland binaries (and the shared
# libraries they need, found with ldd) from the packages installed on this host
# (images/packages.txt), the kernel from `apt-get download` (the only network
# access; needs `apt-get update` to have run). The guest's PID 1 is images/init.
#
# Environment:
#   NETLAB_KERNEL_PKG      kernel metapackage to follow (default linux-image-cloud-amd64;
#                          linux-image-amd64 for the generic kernel with e1000/8139 drivers)
#   NETLAB_DEB_CACHE       directory where downloaded .deb files are kept and reused
#   NETLAB_INITRD_COMPRESS gzip | lz4 | zstd | none: the core cpio (default: lz4)
#   NETLAB_SQUASHFS_COMPRESS  squashfs compressor of the extra tier (default: zstd)
#
# Root is not needed, and root and an ordinary user make the same bytes: every file in
# the archives is owned by root (cpio -R 0:0, mksquashfs -all-root), the device nodes are
# written into the cpio as gen_init_cpio does (no mknod), and every timestamp is the
# kernel package's (a reproducible build: the same recipe and packages give the same image).
set -eEuo pipefail
unset LD_PRELOAD LD_LIBRARY_PATH SOURCE_DATE_EPOCH
umask 022 # modes in the image do not depend on the builder's umask

die() {
	echo "build.sh: error: $*" >&2
	exit 1
}
log() { echo "build.sh: $*" >&2; }
trap 'echo "build.sh: error: line $LINENO: \`$BASH_COMMAND\` failed" >&2' ERR

[ $# -eq 1 ] || die "usage: $0 OUTDIR"
OUT=$1
HERE=$(cd "$(dirname "$0")" && pwd)
KPKG_META=${NETLAB_KERNEL_PKG:-linux-image-cloud-amd64}
COMPRESS=${NETLAB_INITRD_COMPRESS:-lz4}
SQFS_COMP=${NETLAB_SQUASHFS_COMPRESS:-zstd}
ARCH_TRIPLET=x86_64-linux-gnu

# --- host tools -------------------------------------------------------------
# depmod and modprobe live in sbin directories, which a user's PATH often lacks
for d in /usr/local/sbin /usr/sbin /sbin; do
	case ":$PATH:" in *":$d:"*) ;; *) PATH=$PATH:$d ;; esac
done
export PATH
need() { # need COMMAND PACKAGE
	command -v "$1" > /dev/null 2>&1 || die "'$1' not found in PATH=$PATH: apt-get install $2"
}
need dpkg-deb dpkg
need dpkg-query dpkg
need apt-get apt
need apt-cache apt
need cpio cpio
need depmod kmod
need modprobe kmod
need ldd libc-bin
need find findutils
need mksquashfs squashfs-tools
need xz xz-utils
need od coreutils
need grep grep
need cc gcc
case "$COMPRESS" in
gzip) need gzip gzip ;;
lz4) need lz4 lz4 ;;
zstd) need zstd zstd ;;
none) ;;
*) die "NETLAB_INITRD_COMPRESS=$COMPRESS: use gzip, lz4, zstd or none" ;;
esac

# pkg_file PACKAGE REGEX -> the first file of an installed package matching REGEX
pkg_file() {
	local files
	files=$(dpkg-query -L "$1" 2> /dev/null) || die "package $1 is not installed: apt-get install $1"
	local f
	f=$(printf '%s\n' "$files" | grep -E "$2" | head -n 1)
	[ -n "$f" ] || die "package $1 has no file matching $2 (reinstall it: apt-get install --reinstall $1)"
	echo "$f"
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/netlab-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ST=$WORK/root
mkdir -p "$ST"

# --- root skeleton (merged /usr) ---------------------------------------------
mkdir -p "$ST"/usr/bin "$ST"/usr/sbin "$ST"/usr/lib/$ARCH_TRIPLET "$ST"/usr/lib64 "$ST"/usr/share
ln -s usr/bin "$ST/bin"
ln -s usr/sbin "$ST/sbin"
ln -s usr/lib "$ST/lib"
ln -s usr/lib64 "$ST/lib64"
mkdir -p "$ST"/{dev,proc,sys,run,tmp,mnt,etc,var/lib/misc,var/empty}
mkdir -p "$ST"/etc/{network/if-pre-up.d,network/if-up.d,network/if-down.d,network/if-post-down.d,udhcpc,dropbear}
mkdir -p -m 0700 "$ST/root" "$ST/root/.ssh"
ln -s ../run "$ST/var/run"
ln -s ../tmp "$ST/var/tmp"
chmod 1777 "$ST/tmp"
# copied over the devtmpfs by /init in one command
GDEV=$ST/usr/lib/netlab/dev
mkdir -p "$GDEV/pts" "$GDEV/shm" "$GDEV/net"
# The device nodes (/dev/console, which the kernel opens for /init before anything is
# mounted, and $GDEV/net/tun) are not made here: mknod needs root. They are entries of
# a cpio archive of their own, written at packing time (newc_node below).
ln -s /proc/self/fd "$GDEV/fd"
ln -s /proc/self/fd/0 "$GDEV/stdin"
ln -s /proc/self/fd/1 "$GDEV/stdout"
ln -s /proc/self/fd/2 "$GDEV/stderr"

# guest path for a host path: /bin, /sbin, /lib, /lib64 live under /usr
gpath() {
	case "$1" in
	/usr/*) echo "$1" ;;
	/bin/* | /sbin/* | /lib/* | /lib64/*) echo "/usr$1" ;;
	*) echo "$1" ;;
	esac
}

# Two tiers. "core" files are unpacked by the kernel at boot (the cost is about
# 35 ms per uncompressed MB under TCG, so only what boot needs). "extra" files go
# into a compressed squashfs that /init loop-mounts on $EXTRA_MNT; the core tree
# holds a symlink to each of them, so paths stay the usual Debian ones.
EXTRA_MNT=/usr/lib/netlab/extra
EX=$WORK/extra
mkdir -p "$EX"

# place SRC GUESTPATH TIER [MODE]
place() {
	local src=$1 g=$2 tier=$3 mode=${4:-0755}
	[ -e "$ST$g" ] || [ -L "$ST$g" ] && return 0
	if [ "$tier" = core ]; then
		install -D -m "$mode" "$src" "$ST$g"
	else
		install -D -m "$mode" "$src" "$EX$g"
		mkdir -p "$(dirname "$ST$g")"
		ln -s "$EXTRA_MNT$g" "$ST$g"
	fi
}

# copy_exec TIER HOSTPATH [GUESTPATH]: a binary plus every shared library ldd finds
# (like initramfs-tools' copy_exec). Core binaries first, so shared libraries
# they need end up in the core.
copy_exec() {
	local tier=$1 src=$2 dst
	dst=$(gpath "${3:-$2}")
	[ -x "$src" ] || die "$src is missing"
	place "$(readlink -f "$src")" "$dst" "$tier"
	local libs
	if ! libs=$(ldd "$src" 2> /dev/null); then
		return 0 # static binary
	fi
	if printf '%s\n' "$libs" | grep -q 'not found'; then
		die "ldd $src: $(printf '%s\n' "$libs" | grep 'not found' | tr '\n' ' ')"
	fi
	local lib
	for lib in $(printf '%s\n' "$libs" | sed -n -e 's/.*=> \(\/[^ ]*\) (.*/\1/p' -e 's/^[[:space:]]*\(\/[^ ]*\) (.*/\1/p'); do
		place "$(readlink -f "$lib")" "$(gpath "$lib")" "$tier"
	done
}

# --- userland -------------------------------------------------------------
log "copying userland"
# core: what /init runs before the extra tier is mounted, and the SSH server
copy_exec core "$(pkg_file busybox-static '/s?bin/busybox$')" /usr/bin/busybox
# /bin/sh for SSH sessions and scripts is dash, not busybox: Debian's busybox
# runs its own applets before PATH (FEATURE_PREFER_APPLETS), so `ip` in a busybox
# shell would be busybox's ip, not iproute2's.
copy_exec core "$(pkg_file dash '/bin/dash$')" /usr/bin/dash
ln -s dash "$ST/usr/bin/sh"
copy_exec core "$(pkg_file dropbear-bin '/sbin/dropbear$')" /usr/sbin/dropbear
copy_exec core "$(pkg_file dropbear-bin '/bin/dropbearkey$')" /usr/bin/dropbearkey
# extra: the real tools for the tests
copy_exec extra "$(pkg_file dropbear-bin '/bin/dbclient$')" /usr/bin/dbclient
# SFTP (vm.put/vm.get): dropbear runs the server at its compiled-in path, /usr/lib/sftp-server
copy_exec extra "$(pkg_file openssh-sftp-server '/openssh/sftp-server$')" /usr/lib/sftp-server
copy_exec extra "$(pkg_file iproute2 '/s?bin/ip$')" /usr/sbin/ip
copy_exec extra "$(pkg_file iproute2 '/s?bin/bridge$')" /usr/sbin/bridge
copy_exec extra "$(pkg_file iproute2 '/s?bin/tc$')" /usr/sbin/tc
copy_exec extra "$(pkg_file iputils-ping '/bin/ping$')" /usr/bin/ping
copy_exec extra "$(pkg_file ethtool '/s?bin/ethtool$')" /usr/sbin/ethtool
copy_exec extra "$(pkg_file tcpdump '/s?bin/tcpdump$')" /usr/bin/tcpdump
copy_exec extra "$(pkg_file dnsmasq-base '/s?bin/dnsmasq$')" /usr/sbin/dnsmasq
# busybox's brctl has no `show`
copy_exec extra "$(pkg_file bridge-utils '/s?bin/brctl$')" /usr/sbin/brctl
[ -d /etc/iproute2 ] && cp -a /etc/iproute2 "$ST/etc/"
[ -d /usr/share/iproute2 ] && cp -a /usr/share/iproute2 "$ST/usr/share/"
cp "$(pkg_file netbase '^/etc/protocols$')" "$(pkg_file netbase '^/etc/services$')" "$ST/etc/"
ln -s ping "$ST/usr/bin/ping6"
mkdir -p "$ST$EXTRA_MNT"

# busybox applets for every name no real binary took
"$ST/usr/bin/busybox" --list-full | while read -r applet; do
	a=${applet##*/}
	case "$applet" in
	sbin/* | usr/sbin/*) d=/usr/sbin ;;
	*) d=/usr/bin ;;
	esac
	[ "$a" = busybox ] && continue
	[ -e "$ST/usr/bin/$a" ] || [ -L "$ST/usr/bin/$a" ] || [ -e "$ST/usr/sbin/$a" ] || [ -L "$ST/usr/sbin/$a" ] ||
		ln -s /usr/bin/busybox "$ST$d/$a"
done
[ -e "$ST/usr/sbin/init" ] || die "busybox has no init applet"

# --- /etc -------------------------------------------------------------------
cat > "$ST/etc/passwd" << 'EOF'
root:x:0:0:root:/root:/bin/sh
tcpdump:x:104:109::/nonexistent:/usr/sbin/nologin
dnsmasq:x:105:65534:dnsmasq:/var/lib/misc:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
cat > "$ST/etc/shadow" << 'EOF'
root:*:19000:0:99999:7:::
tcpdump:*:19000:0:99999:7:::
dnsmasq:*:19000:0:99999:7:::
nobody:*:19000:0:99999:7:::
EOF
chmod 600 "$ST/etc/shadow"
cat > "$ST/etc/group" << 'EOF'
root:x:0:
tty:x:5:
tcpdump:x:109:
nogroup:x:65534:
EOF
printf '/bin/sh\n/usr/bin/sh\n/bin/dash\n/usr/bin/dash\n/bin/ash\n' > "$ST/etc/shells"
# the guest's mounts, one file for both kinds of image
install -m 0644 "$HERE/fstab" "$ST/etc/fstab"
printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n' > "$ST/etc/nsswitch.conf"
printf 'auto lo\niface lo inet loopback\n' > "$ST/etc/network/interfaces"
mkdir -p "$ST/etc/modprobe.d"
# one loop device up front (for the extra tier) instead of 8; more come on demand
printf 'options loop max_loop=1\n' > "$ST/etc/modprobe.d/netlab.conf"
: > "$ST/etc/resolv.conf"
cat > "$ST/etc/profile" << 'EOF'
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PS1='\h:\w\$ '
EOF
cat > "$ST/etc/inittab" << 'EOF'
# busybox init after /init has set everything up: it reaps orphans and keeps a root
# shell on the serial console, the command channel of a guest without any network
# (VM.console_run); only the lab's owner holds the other end of that console.
ttyS0::respawn:/bin/sh
::ctrlaltdel:/sbin/reboot -f
::shutdown:/bin/sync
EOF
install -m 0755 "$HERE/udhcpc.script" "$ST/etc/udhcpc/default.script"
mkdir -p "$ST/usr/share/udhcpc"
ln -s /etc/udhcpc/default.script "$ST/usr/share/udhcpc/default.script"
install -m 0755 "$HERE/init" "$ST/init"
# reseed: /init of a copy resumed from a template runs it to rekey the kernel's CRNG
# (see reseed.c); no libc, about 9 KB
cc -nostdlib -static -ffreestanding -fno-stack-protector -fno-asynchronous-unwind-tables -Os -s \
	-Wall -Werror -o "$ST/usr/lib/netlab/reseed" "$HERE/reseed.c" 2> "$WORK/cc.log" ||
	die "cc images/reseed.c failed: $(tr '\n' ' ' < "$WORK/cc.log")"

# --- kernel -----------------------------------------------------------------
mkdir -p "$WORK/deb"
DEBDIR=${NETLAB_DEB_CACHE:-$WORK/deb}
mkdir -p "$DEBDIR"
KPKG=$(apt-cache depends --no-recommends --no-suggests "$KPKG_META" 2> /dev/null |
	sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n 1)
[ -n "$KPKG" ] || die "apt-cache knows no $KPKG_META: run apt-get update"
KVERSION=$(apt-cache show --no-all-versions "$KPKG" 2> /dev/null | sed -n 's/^Version: //p' | head -n 1)
[ -n "$KVERSION" ] || die "apt-cache has no version of $KPKG: run apt-get update"
DEB="$DEBDIR/${KPKG}_${KVERSION//:/%3a}_amd64.deb"
if [ ! -s "$DEB" ]; then
	log "downloading $KPKG $KVERSION"
	(cd "$WORK/deb" && apt-get download -q "$KPKG=$KVERSION" > "$WORK/apt.log" 2>&1) ||
		die "apt-get download $KPKG=$KVERSION failed (run apt-get update): $(tail -n 2 "$WORK/apt.log" | tr '\n' ' ')"
	f=
	for d in "$WORK"/deb/"${KPKG}"_*.deb; do [ -f "$d" ] && f=$d; done
	[ -n "$f" ] || die "apt-get download $KPKG left no .deb (run apt-get update)"
	if [ "$f" != "$DEB" ]; then mv "$f" "$DEB.tmp.$$" && mv "$DEB.tmp.$$" "$DEB"; fi
	# drop older downloads of this kernel flavour
	flavour() { echo "$1" | sed 's/^linux-image-[0-9][^-]*-[0-9]*-//'; }
	for old in "$DEBDIR"/linux-image-*.deb; do
		[ -f "$old" ] && [ "$old" != "$DEB" ] || continue
		name=${old##*/}
		[ "$(flavour "${name%%_*}")" = "$(flavour "$KPKG")" ] && rm -f "$old"
	done
fi
log "unpacking $KPKG"
dpkg-deb -x "$DEB" "$WORK/kernel"
KDIR=
for d in "$WORK"/kernel/lib/modules/* "$WORK"/kernel/usr/lib/modules/*; do
	[ -d "$d" ] && KDIR=$d && break
done
[ -n "$KDIR" ] || die "$DEB has no lib/modules directory"
KVER=${KDIR##*/}
KBASE=${KDIR%/lib/modules/*}
[ -f "$KBASE/boot/vmlinuz-$KVER" ] || [ -f "$WORK/kernel/boot/vmlinuz-$KVER" ] || die "$DEB has no boot/vmlinuz-$KVER"
VMLINUZ=$WORK/kernel/boot/vmlinuz-$KVER
depmod -b "$KBASE" "$KVER" || die "depmod on the unpacked $KPKG failed"

# --- modules ----------------------------------------------------------------
# All modules of modules.txt (with dependencies) are indexed by depmod; the ones
# /init loads before the extra tier is mounted are core, the rest extra.
log "selecting modules for $KVER"
CORE_MODULES="virtio_pci virtio_net loop squashfs"
MT=$WORK/modtree/usr/lib/modules/$KVER
mkdir -p "$MT"
for f in modules.order modules.builtin modules.builtin.modinfo; do
	[ -f "$KDIR/$f" ] && cp "$KDIR/$f" "$MT/"
done
# mod_files NAME -> the .ko paths (relative to $KDIR) NAME needs, itself last
mod_files() {
	local deps
	deps=$(modprobe -d "$KBASE" -S "$KVER" --show-depends "$1" 2> "$WORK/modprobe.err") || return 1
	printf '%s\n' "$deps" | sed -n 's/^insmod \([^ ]*\).*/\1/p' | sed "s|^$KDIR/||"
}
: > "$WORK/core-modules"
for m in $CORE_MODULES; do
	mod_files "$m" >> "$WORK/core-modules" || die "kernel $KVER has no module $m: $(cat "$WORK/modprobe.err")"
done
{ grep -v -e '^#' -e '^[[:space:]]*$' "$HERE/modules.txt"; echo "$CORE_MODULES" | tr ' ' '\n'; } | while read -r m; do
	optional=
	case "$m" in *\?) optional=1 m=${m%\?} ;; esac
	if ! files=$(mod_files "$m"); then
		[ -n "$optional" ] && { log "warning: kernel $KVER has no module $m (skipped)"; continue; }
		die "kernel $KVER has no module $m: $(cat "$WORK/modprobe.err")"
	fi
	for rel in $files; do
		[ -e "$MT/$rel" ] || install -D -m 0644 "$KDIR/$rel" "$MT/$rel"
	done
done
if [ -f "$MT/modules.order" ]; then
	while read -r rel; do [ -e "$MT/$rel" ] && echo "$rel"; done < "$MT/modules.order" > "$MT/modules.order.new"
	mv "$MT/modules.order.new" "$MT/modules.order"
fi
depmod -b "$WORK/modtree/usr" "$KVER" || die "depmod on the guest modules failed"
rm -f "$MT/modules.builtin.modinfo" "$MT"/modules.*.bin.tmp
(cd "$MT" && find . -type f) | sed 's|^\./||' | while read -r rel; do
	if grep -qxF "$rel" "$WORK/core-modules" || case "$rel" in *.ko) false ;; *) true ;; esac; then
		place "$MT/$rel" "/usr/lib/modules/$KVER/$rel" core 0644
	else
		place "$MT/$rel" "/usr/lib/modules/$KVER/$rel" extra 0644
	fi
done

# --- kernel for PVH boot -----------------------------------------------------
# QEMU boots an uncompressed ELF vmlinux directly (PVH entry, CONFIG_PVH=y),
# which skips the in-guest decompression of the bzImage: 0.4 s (lz4) to 7 s (xz)
# under TCG. Find the payload like the kernel's scripts/extract-vmlinux does.
log "extracting vmlinux"
extract_vmlinux() {
	local magic cmd off
	for pair in '\xfd7zXZ\x00:xz -dc --single-stream' '\x02\x21\x4c\x18:lz4 -dc' '\x28\xb5\x2f\xfd:zstd -dc' \
		'\x1f\x8b\x08:gzip -dc' '\x5d\x00\x00\x00:xz -dc --format=lzma' '\x89\x4c\x5a:lzop -dc' 'BZh:bzip2 -dc'; do
		magic=${pair%%:*}
		cmd=${pair#*:}
		command -v "${cmd%% *}" > /dev/null 2>&1 || continue
		# grep finds no such magic for most formats: not an error
		for off in $({ LC_ALL=C grep -obUaP "$magic" "$1" 2> /dev/null || true; } | cut -d: -f1 | sed -n 1,5p); do
			tail -c "+$((off + 1))" "$1" | $cmd > "$2" 2> /dev/null || true
			if [ "$(head -c 4 "$2" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; then
				return 0
			fi
		done
	done
	return 1
}
extract_vmlinux "$VMLINUZ" "$WORK/vmlinux" || die "cannot extract vmlinux from $VMLINUZ (apt-get install xz-utils lz4 zstd)"

# --- pack -------------------------------------------------------------------
# every timestamp in the image: the kernel's, as its package has it
EPOCH=$(stat -c %Y "$VMLINUZ")
log "packing extra tier (squashfs $SQFS_COMP)"
mkdir -p "$OUT"
mkdir -p "$WORK/part1/usr/lib/netlab"
mksquashfs "$EX" "$WORK/part1/usr/lib/netlab/extra.sqfs" -comp "$SQFS_COMP" -all-root -no-xattrs \
	-all-time "$EPOCH" -mkfs-time "$EPOCH" -noappend -quiet -no-progress > "$WORK/mksquashfs.log" 2>&1 ||
	die "mksquashfs failed: $(tail -n 3 "$WORK/mksquashfs.log" | tr '\n' ' ')"
log "packing initramfs ($COMPRESS)"
find "$ST" "$WORK/part1" -exec touch -h -d "@$EPOCH" {} +
# pack_tree DIR: a cpio (newc) of everything under DIR, owned by root, in a fixed order
pack_tree() {
	(cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet)
}
# newc_node NAME MODE MAJOR MINOR: a cpio (newc) entry for a character device, as the
# kernel's usr/gen_init_cpio writes one (MODE in octal, 0 0 0 0 for NAME=TRAILER!!!)
NEWC_INO=1
newc_node() {
	local name=$1 mode=$((8#$2)) size=$((${#1} + 1))
	[ "$mode" -ne 0 ] && mode=$((mode | 8#020000))
	printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
		"$NEWC_INO" "$mode" 0 0 1 "$EPOCH" 0 0 0 "$3" "$4" "$size" 0
	printf '%s\0' "$1"
	head -c $(((4 - (110 + size) % 4) % 4)) /dev/zero # header and name end on 4 bytes
	NEWC_INO=$((NEWC_INO + 1))
}
# part 1: uncompressed cpio with the squashfs (already compressed);
# part 2: the core tree, then its device nodes (their directories exist by then), compressed.
# The kernel unpacks them in turn.
pack_tree "$WORK/part1" > "$WORK/part1.cpio"
{
	pack_tree "$ST"
	newc_node dev/console 600 5 1
	newc_node usr/lib/netlab/dev/net/tun 666 10 200
	newc_node 'TRAILER!!!' 0 0 0
} > "$WORK/core.cpio"
case "$COMPRESS" in
gzip) gzip -9 -n < "$WORK/core.cpio" > "$WORK/core.cpio.z" ;;
lz4) lz4 -l -9 -q < "$WORK/core.cpio" > "$WORK/core.cpio.z" ;;
zstd) zstd -q -19 --check < "$WORK/core.cpio" > "$WORK/core.cpio.z" ;;
none) cp "$WORK/core.cpio" "$WORK/core.cpio.z" ;;
esac
cat "$WORK/part1.cpio" "$WORK/core.cpio.z" > "$OUT/initrd.img.tmp"
mv "$OUT/initrd.img.tmp" "$OUT/initrd.img"
cp "$WORK/vmlinux" "$OUT/vmlinux"
cp "$VMLINUZ" "$OUT/vmlinuz"
tr -s ' \n' ' ' < "$HERE/cmdline" | sed 's/ $//' > "$OUT/cmdline"
echo "$KVER" > "$OUT/kernel-version"
[ -f "$MT/modules.builtin" ] && cp "$MT/modules.builtin" "$OUT/modules.builtin"
{
	echo "kernel_package=$KPKG"
	echo "kernel_package_version=$KVERSION"
	echo "kernel_version=$KVER"
	echo "compression=$COMPRESS"
	echo "squashfs_compression=$SQFS_COMP"
	echo "core_uncompressed_bytes=$(stat -c %s "$WORK/core.cpio")"
	echo "core_bytes=$(stat -c %s "$WORK/core.cpio.z")"
	echo "extra_uncompressed_bytes=$(find "$EX" -type f -printf "%s\n" | awk "{s += \$1} END {print s}")" # files only: directory sizes differ between file systems
	echo "extra_bytes=$(stat -c %s "$WORK/part1/usr/lib/netlab/extra.sqfs")"
	echo "initrd_bytes=$(stat -c %s "$OUT/initrd.img")"
	echo "reseed=$(stat -c '%A %s' "$ST/usr/lib/netlab/reseed")"
	echo "modules=$(cd "$MT" && find . -name '*.ko' | sed 's|.*/||; s|\.ko$||' | LC_ALL=C sort | tr '\n' ' ')"
} > "$OUT/manifest.txt"
log "done: $OUT (initramfs $(du -sh "$OUT/initrd.img" | cut -f1), kernel $KVER)"

#!/bin/bash
# Build a package image: a Debian root file system with the harness of the default
# image plus any Debian packages, packed as a read-only squashfs disk. Guests boot the
# default image's kernel and initramfs, which mount this disk under a writable tmpfs
# overlay and switch_root to the same netlab init on it (images/init, netlab.overlay=1).
#
# usage: images/build-packages.sh BASEDIR OUTDIR PACKAGE...
#   BASEDIR  a built default image (its manifest.txt names the kernel package)
#   OUTDIR   receives rootfs.sqfs and packages.txt (name=version of everything installed)
#
# The packages are installed by mmdebstrap (dpkg with maintainer scripts, as on a real
# Debian machine) from the host's own apt sources; nothing else is downloaded.
#
# Environment:
#   NETLAB_APT_SOURCES   the sources file handed to mmdebstrap (default: the host's
#                        /etc/apt/sources.list.d/debian.sources, else /etc/apt/sources.list)
#   NETLAB_SUITE         the Debian suite (default: VERSION_CODENAME of /etc/os-release)
#   NETLAB_DEB_CACHE     where the kernel .deb is (as build.sh keeps it)
#   NETLAB_APT_ARCHIVES  a directory where downloaded .debs are kept between builds
#   NETLAB_ROOTFS_COMPRESS  squashfs compressor of the disk (default: lz4, the cheapest
#                        to read under TCG)
set -eEuo pipefail
unset LD_PRELOAD LD_LIBRARY_PATH

die() {
	echo "build-packages.sh: error: $*" >&2
	exit 1
}
log() { echo "build-packages.sh: [${SECONDS}s] $*" >&2; }
trap 'echo "build-packages.sh: error: line $LINENO: \`$BASH_COMMAND\` failed" >&2' ERR

[ $# -ge 3 ] || die "usage: $0 BASEDIR OUTDIR PACKAGE..."
BASE=$1
OUT=$2
shift 2
HERE=$(cd "$(dirname "$0")" && pwd)
COMP=${NETLAB_ROOTFS_COMPRESS:-lz4}
# what every guest needs from its root file system: the programs of the default image
HARNESS=$(grep -v -e '^#' -e '^[[:space:]]*$' "$HERE/harness.txt")

command -v mmdebstrap > /dev/null 2>&1 || die "'mmdebstrap' not found: apt-get install mmdebstrap"
command -v mksquashfs > /dev/null 2>&1 || die "'mksquashfs' not found: apt-get install squashfs-tools"
SOURCES=${NETLAB_APT_SOURCES:-}
if [ -z "$SOURCES" ]; then
	for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
		[ -s "$f" ] && SOURCES=$f && break
	done
fi
[ -n "$SOURCES" ] && [ -s "$SOURCES" ] || die "no apt sources found: set NETLAB_APT_SOURCES"
SUITE=${NETLAB_SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:-}")}
[ -n "$SUITE" ] || die "cannot tell the Debian suite: set NETLAB_SUITE"
KPKG=$(sed -n 's/^kernel_package=//p' "$BASE/manifest.txt")
KVERSION=$(sed -n 's/^kernel_package_version=//p' "$BASE/manifest.txt")
KVER=$(cat "$BASE/kernel-version")
DEB="${NETLAB_DEB_CACHE:-/nonexistent}/${KPKG}_${KVERSION//:/%3a}_amd64.deb"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/netlab-pkgbuild.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root

INCLUDE=$(echo $HARNESS "$@" | tr ' ' ',')
ARCHIVES=${NETLAB_APT_ARCHIVES:-}
CACHE_OPTS=()
if [ -n "$ARCHIVES" ]; then
	mkdir -p "$ARCHIVES"
	CACHE_OPTS=(--skip=download/empty --skip=essential/unlink
		--setup-hook="mkdir -p \"\$1\"/var/cache/apt/archives"
		--setup-hook="sync-in '$ARCHIVES' /var/cache/apt/archives/"
		--customize-hook="sync-out /var/cache/apt/archives '$ARCHIVES'")
fi
# apt's package lists are the host's own (the ones the packages were resolved with):
# no `apt-get update` in the build, so it downloads only .debs missing from the cache
LISTS_OPTS=(--skip=update --setup-hook="mkdir -p \"\$1\"/var/lib/apt/lists"
	--setup-hook="sync-in /var/lib/apt/lists /var/lib/apt/lists/")
# (another sources file than the host's needs lists of its own)
[ -n "${NETLAB_APT_SOURCES:-}${NETLAB_APT_UPDATE:-}" ] && LISTS_OPTS=()
log "installing $* and the harness with mmdebstrap ($SUITE, sources $SOURCES)"
mmdebstrap --variant=essential --include="$INCLUDE" --format=directory -q \
	--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
	--aptopt='APT::Install-Recommends "false"' --dpkgopt=force-unsafe-io \
	--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
	"${LISTS_OPTS[@]}" "${CACHE_OPTS[@]}" "$SUITE" "$ROOT" "$SOURCES" > "$WORK/mmdebstrap.log" 2>&1 ||
	die "mmdebstrap failed: $(grep -E '^(E:|W:)' "$WORK/mmdebstrap.log" | head -n 3 | tr '\n' ' ')$(tail -n 3 "$WORK/mmdebstrap.log" | tr '\n' ' ')"

log "adding the kernel modules of $KVER"
if [ ! -s "$DEB" ]; then
	(cd "$WORK" && apt-get download -q "$KPKG=$KVERSION" > "$WORK/apt.log" 2>&1) ||
		die "apt-get download $KPKG=$KVERSION failed: $(tail -n 2 "$WORK/apt.log" | tr '\n' ' ')"
	DEB=$(ls "$WORK"/"${KPKG}"_*.deb)
fi
dpkg-deb -x "$DEB" "$WORK/kernel"
mkdir -p "$ROOT/usr/lib/modules"
cp -a "$WORK/kernel/lib/modules/$KVER" "$ROOT/usr/lib/modules/"
depmod -b "$ROOT/usr" "$KVER" || die "depmod on the guest modules failed"

log "adding the netlab init"
install -m 0755 "$HERE/init" "$ROOT/init"
mkdir -p "$ROOT/usr/lib/netlab"
# the CRNG reseed helper /init runs in copies resumed from a template (as build.sh makes it)
cc -nostdlib -static -ffreestanding -fno-stack-protector -fno-asynchronous-unwind-tables -Os -s \
	-Wall -Werror -o "$ROOT/usr/lib/netlab/reseed" "$HERE/reseed.c" 2> "$WORK/cc.log" ||
	die "cc images/reseed.c failed: $(tr '\n' ' ' < "$WORK/cc.log")"
GDEV=$ROOT/usr/lib/netlab/dev
mkdir -p "$GDEV/pts" "$GDEV/shm" "$GDEV/net" "$ROOT/var/log/netlab" "$ROOT/etc/dropbear" "$ROOT/etc/udhcpc"
mknod -m 666 "$GDEV/net/tun" c 10 200 2> /dev/null || true
ln -sf /proc/self/fd "$GDEV/fd"
ln -sf /proc/self/fd/0 "$GDEV/stdin"
ln -sf /proc/self/fd/1 "$GDEV/stdout"
ln -sf /proc/self/fd/2 "$GDEV/stderr"
mkdir -p -m 0700 "$ROOT/root/.ssh"
# root's shell is dash, as in the default image: SSH commands run the same there
sed -i 's|^root:\([^:]*\):0:0:\([^:]*\):\([^:]*\):.*$|root:\1:0:0:\2:\3:/bin/sh|' "$ROOT/etc/passwd"
cat > "$ROOT/etc/fstab" << 'EOF'
# mounted by /init with `mount -a` (devtmpfs on /dev is mounted before)
proc /proc proc nosuid,nodev,noexec 0 0
sysfs /sys sysfs nosuid,nodev,noexec 0 0
devpts /dev/pts devpts nosuid,noexec,gid=5,mode=620,ptmxmode=666 0 0
tmpfs /run tmpfs nosuid,nodev,mode=0755 0 0
tmpfs /tmp tmpfs nosuid,nodev,mode=1777 0 0
tmpfs /dev/shm tmpfs nosuid,nodev,mode=1777 0 0
EOF
cat > "$ROOT/etc/inittab" << 'EOF'
# busybox init after /init: reaps orphans, keeps a root shell on the serial console
ttyS0::respawn:/bin/sh
::ctrlaltdel:/sbin/reboot -f
::shutdown:/bin/sync
EOF
mkdir -p "$ROOT/etc/network"
[ -e "$ROOT/etc/network/interfaces" ] || printf 'auto lo\niface lo inet loopback\n' > "$ROOT/etc/network/interfaces"
install -m 0755 "$HERE/udhcpc.script" "$ROOT/etc/udhcpc/default.script"
: > "$ROOT/etc/resolv.conf"
# busybox applets (init, switch_root, usleep, ...) under every name no package took
"$ROOT/usr/bin/busybox" --list-full | while read -r applet; do
	a=${applet##*/}
	case "$applet" in
	sbin/* | usr/sbin/*) d=/usr/sbin ;;
	*) d=/usr/bin ;;
	esac
	[ "$a" = busybox ] && continue
	for p in /usr/bin /usr/sbin /bin /sbin; do
		[ -e "$ROOT$p/$a" ] || [ -L "$ROOT$p/$a" ] && continue 2
	done
	ln -s /usr/bin/busybox "$ROOT$d/$a"
done
rm -rf "$ROOT"/var/cache/apt/* "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/log/apt "$ROOT/etc/machine-id"
: > "$ROOT/etc/machine-id"

log "packing the root file system (squashfs $COMP)"
mkdir -p "$OUT"
dpkg-query --admindir="$ROOT/var/lib/dpkg" -W -f '${Package}=${Version}\n' | LC_ALL=C sort > "$OUT/packages.txt"
(cd "$ROOT/usr/lib/modules/$KVER" && find . -name '*.ko*' | sed 's|.*/||; s|\.ko.*$||' | LC_ALL=C sort) > "$OUT/modules.txt"
mksquashfs "$ROOT" "$OUT/rootfs.sqfs.tmp" -comp "$COMP" -noappend -no-xattrs -quiet -no-progress \
	> "$WORK/mksquashfs.log" 2>&1 || die "mksquashfs failed: $(tail -n 3 "$WORK/mksquashfs.log" | tr '\n' ' ')"
mv "$OUT/rootfs.sqfs.tmp" "$OUT/rootfs.sqfs"
log "done: $OUT ($(du -sh "$OUT/rootfs.sqfs" | cut -f1), $(wc -l < "$OUT/packages.txt") packages)"

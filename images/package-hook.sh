#!/bin/bash
# The harness part of a package image's root file system (images/build-packages.sh runs
# it as mmdebstrap's customize hook, as root or as the namespace root of unshare mode):
# the guest kernel's modules, the netlab init and its files, busybox's applets.
#
# usage: images/package-hook.sh KERNEL_DEB KVER OUTDIR SCRATCH ROOT
#   KERNEL_DEB, OUTDIR and SCRATCH are paths inside ROOT (the tree being built)
#   OUTDIR receives packages.txt (name=version of everything installed) and modules.txt;
#   SCRATCH is a directory to make for temporary files (build-packages.sh removes both)
set -eEuo pipefail
unset LD_PRELOAD LD_LIBRARY_PATH
umask 022
exec >&2 # mmdebstrap's stdout is the tar stream
die() {
	echo "package-hook.sh: error: $*" >&2
	exit 1
}
trap 'echo "package-hook.sh: error: line $LINENO: \`$BASH_COMMAND\` failed" >&2' ERR
[ $# -eq 5 ] || die "usage: $0 KERNEL_DEB KVER OUTDIR SCRATCH ROOT"
ROOT=$5 KVER=$2
DEB=$ROOT$1 OUT=$ROOT$3 WORK=$ROOT$4
HERE=$(cd "$(dirname "$0")" && pwd)
for d in /usr/local/sbin /usr/sbin /sbin; do
	case ":$PATH:" in *":$d:"*) ;; *) PATH=$PATH:$d ;; esac
done
mkdir -p "$WORK" "$OUT"
export TMPDIR=$WORK

dpkg-deb -x "$DEB" "$WORK/kernel"
mkdir -p "$ROOT/usr/lib/modules"
cp -a "$WORK/kernel/lib/modules/$KVER" "$ROOT/usr/lib/modules/"
depmod -b "$ROOT/usr" "$KVER" || die "depmod on the guest modules failed"

install -m 0755 "$HERE/init" "$ROOT/init"
mkdir -p "$ROOT/usr/lib/netlab"
# the CRNG reseed helper /init runs in copies resumed from a template (as build.sh makes it)
cc -nostdlib -static -ffreestanding -fno-stack-protector -fno-asynchronous-unwind-tables -Os -s \
	-Wall -Werror -o "$ROOT/usr/lib/netlab/reseed" "$HERE/reseed.c" 2> "$WORK/cc.log" ||
	die "cc images/reseed.c failed: $(tr '\n' ' ' < "$WORK/cc.log")"
# no device nodes (mknod needs real root): /init makes /dev/net/tun in the guest
GDEV=$ROOT/usr/lib/netlab/dev
mkdir -p "$GDEV/pts" "$GDEV/shm" "$GDEV/net" "$ROOT/var/log/netlab" "$ROOT/etc/dropbear" "$ROOT/etc/udhcpc"
ln -sf /proc/self/fd "$GDEV/fd"
ln -sf /proc/self/fd/0 "$GDEV/stdin"
ln -sf /proc/self/fd/1 "$GDEV/stdout"
ln -sf /proc/self/fd/2 "$GDEV/stderr"
mkdir -p -m 0700 "$ROOT/root/.ssh"
# root's shell is dash, as in the default image: SSH commands run the same there
sed -i 's|^root:\([^:]*\):0:0:\([^:]*\):\([^:]*\):.*$|root:\1:0:0:\2:\3:/bin/sh|' "$ROOT/etc/passwd"
# the guest's mounts, one file for both kinds of image
install -m 0644 "$HERE/fstab" "$ROOT/etc/fstab"
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
dpkg-query --admindir="$ROOT/var/lib/dpkg" -W -f '${Package}=${Version}\n' | LC_ALL=C sort > "$OUT/packages.txt"
(cd "$ROOT/usr/lib/modules/$KVER" && find . -name '*.ko*' | sed 's|.*/||; s|\.ko.*$||' | LC_ALL=C sort) > "$OUT/modules.txt"

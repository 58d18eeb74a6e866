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
# images/package-hook.sh adds the harness (kernel modules, the netlab init...) as
# mmdebstrap's customize hook, and the tree leaves mmdebstrap as a tar stream that sqfstar
# packs: so the same steps work for root (mmdebstrap's root mode) and for an ordinary
# user (unshare mode: a user namespace that maps the user's subordinate ids, whose tree
# the user could not read directly), and no step makes a device node.
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
umask 022

die() {
	echo "build-packages.sh: error: $*" >&2
	exit 1
}
log() { echo "build-packages.sh: [${SECONDS}s] $*" >&2; }
# reasons LOG: its error lines (its last lines if none), on one line
reasons() {
	{ grep -E '^(E:|W:)|error:' "$1" || tail -n 3 "$1"; } | head -n 4 | tr '\n' ' '
}
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
command -v sqfstar > /dev/null 2>&1 || die "'sqfstar' not found: apt-get install squashfs-tools (4.5 or later)"
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

if [ ! -s "$DEB" ]; then
	log "downloading $KPKG $KVERSION"
	(cd "$WORK" && apt-get download -q "$KPKG=$KVERSION" > "$WORK/apt.log" 2>&1) ||
		die "apt-get download $KPKG=$KVERSION failed: $(tail -n 2 "$WORK/apt.log" | tr '\n' ' ')"
	DEB=$(ls "$WORK"/"${KPKG}"_*.deb)
fi

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
# no `apt-get update` in the build, so it downloads only .debs missing from the cache.
# Hooks run as root, which in unshare mode is a subordinate id: it can read what is
# world-readable (the lists), not the user's own files, nor its working directory.
LISTS_OPTS=(--skip=update --setup-hook="cd \"\$1\" && mkdir -p var/lib/apt/lists && find /var/lib/apt/lists \
-maxdepth 1 -type f -name '*_*' -exec cp -p -t var/lib/apt/lists/ {} +")
# (another sources file than the host's needs lists of its own)
[ -n "${NETLAB_APT_SOURCES:-}${NETLAB_APT_UPDATE:-}" ] && LISTS_OPTS=()
# The harness: the recipe and the kernel package go in with copy-in (which reads them as
# the user), package-hook.sh adds the harness from there, copy-out brings its lists out.
mkdir -p "$OUT"
S=/tmp/netlab-build
HARNESS_OPTS=(--customize-hook="mkdir -p \"\$1$S\""
	--customize-hook="$(printf 'copy-in %q %q %s' "$HERE" "$DEB" "$S")"
	--customize-hook="cd \"\$1\" && $(printf '%q ' ".$S/images/package-hook.sh" "$S/${DEB##*/}" "$KVER" \
		"$S/out" "$S/work")\"\$1\""
	--customize-hook="$(printf 'copy-out %q %q %q' "$S/out/packages.txt" "$S/out/modules.txt" "$OUT")"
	--customize-hook="rm -rf \"\$1$S\"")
# unshare mode (not root): the tree is made in mmdebstrap's directory under TMPDIR by a
# subordinate id, which must be able to enter every directory above it (/tmp: yes;
# a private TMPDIR, mode 0700: no, so /tmp then)
MM_TMPDIR=${TMPDIR:-/tmp}
others_can_enter() {
	local d
	d=$(realpath "$1") || return 1
	while :; do
		[ -n "$(find "$d" -maxdepth 0 -perm -o+x)" ] || return 1
		[ "$d" = / ] && return 0
		d=$(dirname "$d")
	done
}
if [ "$(id -u)" -ne 0 ] && ! others_can_enter "$MM_TMPDIR"; then
	others_can_enter /tmp || die "TMPDIR=$MM_TMPDIR and /tmp: a subordinate id cannot enter them (mmdebstrap's unshare mode needs it): give TMPDIR a directory others may enter (o+x)"
	log "TMPDIR=$MM_TMPDIR is private: mmdebstrap works in /tmp"
	MM_TMPDIR=/tmp
fi
log "installing $* and the harness with mmdebstrap ($SUITE, sources $SOURCES)"
# the tree goes to sqfstar as a tar stream: owners and modes as mmdebstrap made them.
# sqfstar gives the root directory its own uid and gid (4.5.1 ignores -root-uid): as a
# user, it runs as root of a user namespace of its own (the file is still the user's).
AS_ROOT=()
[ "$(id -u)" -eq 0 ] || AS_ROOT=(unshare --map-root-user)
status=0
TMPDIR=$MM_TMPDIR mmdebstrap --variant=essential --include="$INCLUDE" --format=tar -q \
	--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
	--aptopt='APT::Install-Recommends "false"' --dpkgopt=force-unsafe-io \
	--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
	"${LISTS_OPTS[@]}" "${CACHE_OPTS[@]}" "${HARNESS_OPTS[@]}" \
	"$SUITE" - "$SOURCES" 2> "$WORK/mmdebstrap.log" |
	"${AS_ROOT[@]}" sqfstar -comp "$COMP" -no-xattrs -root-mode 0755 -quiet -no-progress "$OUT/rootfs.sqfs.tmp" > "$WORK/sqfstar.log" 2>&1 ||
	status=("${PIPESTATUS[@]}")
[ "${status[0]}" -eq 0 ] || die "mmdebstrap failed: $(reasons "$WORK/mmdebstrap.log")"
[ "${status[1]:-0}" -eq 0 ] || die "sqfstar failed: $(reasons "$WORK/sqfstar.log")"
log "packed the root file system (squashfs $COMP)"
mv "$OUT/rootfs.sqfs.tmp" "$OUT/rootfs.sqfs"
log "done: $OUT ($(du -sh "$OUT/rootfs.sqfs" | cut -f1), $(wc -l < "$OUT/packages.txt") packages)"

#!/bin/sh
# Sets up everything pytest-netlab needs on a fresh Debian/Ubuntu machine. Run as root
# (sudo ./setup.sh): it installs system packages (QEMU and what the guest image recipe
# takes its programs from; Chromium and its driver for the docs site's browser test). As
# the user who will run the tests (the one who typed sudo; root in a root shell; or
# --user NAME), it makes ./.venv with the Python package and its dependencies, and
# builds the guest image into that user's cache: the tests then run without root.
#
# usage: sudo ./setup.sh [--user NAME]
set -eu
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive
die() {
    echo "setup.sh: $*" >&2
    exit 1
}
[ "$(id -u)" -eq 0 ] || die "run it as root (sudo ./setup.sh): it installs packages with apt-get"
user=${SUDO_USER:-root}
case "${1:-}" in
--user) [ $# -eq 2 ] || die "usage: sudo ./setup.sh [--user NAME]"; user=$2 ;;
"") ;;
*) die "unknown argument '$1': usage: sudo ./setup.sh [--user NAME]" ;;
esac
id -u "$user" >/dev/null 2>&1 || die "--user $user: no such user"
if [ "$user" != root ] && [ "$(stat -c %U .)" != "$user" ]; then
    die "$(pwd) belongs to $(stat -c %U .), not to $user, who runs the tests: clone it as $user"
fi
# the user's own environment, as a login would give it (runuser alone keeps root's HOME)
home=$(getent passwd "$user" | cut -d: -f6)
as_user() {
    if [ "$user" = root ]; then "$@"; else
        runuser -u "$user" -- env -i HOME="$home" USER="$user" LOGNAME="$user" LANG=C.UTF-8 \
            PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin "$@"
    fi
}
apt-get update -q
# openssh-client: ssh -F / scp -F with a lab's ssh_config (docs/access.md), and Ansible's
# connection to guests; Ansible itself and testinfra come with the dev extra (pip).
# openssh-server: its sshd binary only; tests/test_remote_xdist.py starts its own on the
# loopback, with its own config and keys, as the second machine of `--tx ssh=` (where
# systemd runs, Debian also enables the ssh service on install: that is the system's)
# uidmap: newuidmap/newgidmap, for mmdebstrap's unshare mode (package images built by an
# ordinary user: docs/install.md)
# Debian's chromium and chromium-driver (Ubuntu has them only as snaps: there the docs site's
# browser test skips, saying so)
browser=""
if apt-cache show chromium-driver >/dev/null 2>&1; then browser="chromium chromium-driver"; fi
# shellcheck disable=SC2046,SC2086
apt-get install -y -q --no-install-recommends \
    qemu-system-x86 qemu-utils python3 python3-venv python3-pip util-linux uidmap openssh-client openssh-server $browser \
    $(grep -v '^[[:space:]]*#' images/packages.txt)
# QEMU never runs as root: a system user of its own (docs/security.md, "QEMU's
# privileges"), in the kvm group where there is one so that KVM stays usable
id -u netlab-qemu >/dev/null 2>&1 ||
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin netlab-qemu
if getent group kvm >/dev/null; then usermod -a -G kvm netlab-qemu; fi
# rootless labs open /dev/net/tun as the user running the tests: Debian's udev makes it
# 0666 (making a TAP still needs CAP_NET_ADMIN, in the lab's own user namespace); a
# machine without udev (a container, a minimal VM) leaves it 0600
if [ -c /dev/net/tun ]; then chmod 0666 /dev/net/tun; fi
# the guest budget every user's runs share (docs/options.md, "The guest budget"): root's and
# sticky like /tmp, so that users add records but cannot remove or rename each other's
install -d -m 0755 -o root -g root /var/lib/pytest-netlab
install -d -m 1777 -o root -g root /var/lib/pytest-netlab/budget
# Debian's interpreter: one under /root (pyenv) cannot be run by another user
as_user /usr/bin/python3 -m venv .venv
# every Python package pinned with PyPI's hashes (tools/lock_requirements.py), the build
# backend too, so the editable install below fetches nothing unhashed
as_user .venv/bin/pip install -q --require-hashes -r requirements-ci.txt
as_user .venv/bin/pip install -q --no-deps --no-build-isolation -e .
as_user .venv/bin/pytest-netlab image build

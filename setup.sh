#!/bin/sh
# Sets up everything pytest-netlab needs on a fresh Debian/Ubuntu machine, as root:
# system packages (QEMU and what the guest image recipe takes its programs from; Chromium
# and its driver for the docs site's browser test), the Python package with its
# dependencies in ./.venv, and the guest image (in the cache).
set -eu
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive
if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run it as root (sudo ./setup.sh): it installs packages with apt-get" >&2
    exit 1
fi
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
python3 -m venv .venv
# every Python package pinned with PyPI's hashes (tools/lock_requirements.py), the build
# backend too, so the editable install below fetches nothing unhashed
.venv/bin/pip install -q --require-hashes -r requirements-ci.txt
.venv/bin/pip install -q --no-deps --no-build-isolation -e .
.venv/bin/pytest-netlab image build

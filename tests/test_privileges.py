"""QEMU never runs as root (pytest_netlab.privileges): every QEMU a lab starts runs as an
unprivileged user, without capabilities, with no-new-privs and in its seccomp sandbox; it
still resumes saved states, saves new ones into a directory its user cannot enter, and
relays a NAT guest's host ports. Which user it is, and what is refused, are one line."""

from __future__ import annotations

import dataclasses
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_netlab import NAT_HOST, ConfigError, QemuError
from pytest_netlab.netns import namespace_exists
from pytest_netlab.privileges import (
    QEMU_USER,
    SANDBOX,
    USER_ENV,
    ProcessPrivileges,
    QemuIdentity,
    qemu_identity,
    sandbox_option,
    sandbox_problem,
)
from pytest_netlab.qemu import drive_file, find_qemu, qemu_version
from pytest_netlab.templates import TemplateStore

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="how a root run picks QEMU's user")


def _assert_unprivileged(pid: int | None) -> ProcessPrivileges:
    assert pid is not None
    seen = ProcessPrivileges.of(pid)
    assert seen is not None, "QEMU is gone"
    identity = qemu_identity()
    assert seen.uids == (identity.uid,) * 4 and seen.gids == (identity.gid,) * 4
    assert 0 not in seen.uids and seen.seccomp == 2 and seen.no_new_privs
    assert seen.effective_caps == 0 and not seen.problems()
    return seen


@pytest.fixture
def loopback_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_resumed_and_nat_guests_run_unprivileged_in_the_sandbox(netlab, loopback_server):
    br = netlab.bridge("br0")
    resumed = netlab.vm("h1", [br])
    nat = netlab.vm("h2", nics=[netlab.nat(host_ports=[loopback_server])])
    netlab.start()

    assert resumed.machine.config.incoming is not None  # it was resumed from a saved state
    for vm in (resumed, nat):
        _assert_unprivileged(vm.machine.pid)
        assert vm.machine.argv[vm.machine.argv.index("-kernel") + 1].startswith("/dev/fd/")
    # only a QEMU that runs the host-port relay may start programs
    assert sandbox_option(spawn=False) in resumed.machine.argv
    assert sandbox_option(spawn=True) in nat.machine.argv
    assert "spawn=deny" in SANDBOX and "elevateprivileges=deny" in SANDBOX

    assert resumed.ssh("echo up").stdout == "up\n"
    nat.ssh("udhcpc -i eth0 -n -q -t 10 -T 1")
    page = nat.ssh(f"wget -q -O - http://{NAT_HOST}:{loopback_server}/")
    assert "<html" in page.stdout.lower()


def test_a_template_is_saved_and_resumed_where_qemus_user_cannot_look(netlab, tmp_path):
    store_dir = tmp_path / "templates"  # under tmp_path: 0700, root's
    if os.geteuid() == 0:
        assert not qemu_identity().may(tmp_path, os.X_OK)
    netlab.settings = dataclasses.replace(
        netlab.settings, boot="snapshot", templates=TemplateStore(store_dir, qemu_version())
    )
    vm = netlab.vm("h1", [netlab.bridge("br0")])
    netlab.start()  # no state yet: one cold boot saves it (to a fd), then h1 resumes from it

    states = list(store_dir.glob("*.state"))
    assert len(states) == 1 and states[0].stat().st_size > 100_000
    assert vm.machine.config.incoming == states[0]
    # its RAM in a file of the same store, which QEMU's user maps as /dev/fd/N
    memory = vm.machine.config.memory_file
    assert memory is not None and memory.path.parent == store_dir
    assert memory.path.stat().st_size == vm.machine.config.memory_mib << 20
    _assert_unprivileged(vm.machine.pid)
    assert vm.ssh("hostname").stdout == "h1\n"


def test_a_file_qemus_user_may_not_read_is_refused_in_one_line(netlab, tmp_path):
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(netlab.default_image.kernel.read_bytes()[:4096])
    kernel.chmod(0o600)
    netlab.vm("h1", kernel=kernel, initrd=netlab.default_image.initrd)
    if qemu_identity().uid == os.geteuid():
        pytest.skip("QEMU runs as the test user: it may read its own files")
    refused = r"^h1: kernel '.*/bzImage' is mode -rw-------: QEMU runs as"
    with pytest.raises(ConfigError, match=refused) as info:
        netlab.start()
    assert "\n" not in str(info.value)


def test_a_qemu_that_runs_as_root_is_stopped(netlab, monkeypatch):
    monkeypatch.setattr("pytest_netlab.qemu.qemu_identity", lambda: QemuIdentity(0, 0, "root", "a test"))
    if os.geteuid() != 0:
        pytest.skip("only root can start a QEMU as root")
    netlab.vm("h1", [netlab.bridge("br0")])
    with pytest.raises(QemuError, match=r"^h1: QEMU \(pid \d+\) runs as root"):
        netlab.start()


@root_only
def test_a_root_run_picks_qemus_own_user_then_the_sudo_user(monkeypatch):
    monkeypatch.delenv(USER_ENV, raising=False)
    monkeypatch.setenv("SUDO_UID", "65534")
    monkeypatch.setenv("SUDO_GID", "65534")
    identity = qemu_identity()
    assert identity.name == QEMU_USER and identity.uid != 0
    assert ["--reuid", str(identity.uid), "--regid", str(identity.gid), "--init-groups"] == (
        identity.setpriv_args()[-5:]
    )
    assert "--no-new-privs" in identity.setpriv_args()

    monkeypatch.setattr("pytest_netlab.privileges.QEMU_USER", "no-such-netlab-user")
    assert (qemu_identity().uid, qemu_identity().gid) == (65534, 65534)
    assert qemu_identity().why == "the user who ran sudo"

    monkeypatch.setenv(USER_ENV, "nobody")
    assert qemu_identity().name == "nobody"


@root_only
@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({USER_ENV: "root"}, rf"^{USER_ENV}='root' is root: name an existing unprivileged user"),
        ({USER_ENV: "no-such-netlab-user"}, rf"^{USER_ENV}='no-such-netlab-user' is no user"),
        ({}, r"^QEMU never runs as root, and there is no user 'no-such-netlab-user' for it: "
             r"create it with 'useradd --system"),
    ],
)
def test_no_unprivileged_user_is_one_line_and_no_fallback(monkeypatch, env, match):
    monkeypatch.setattr("pytest_netlab.privileges.QEMU_USER", "no-such-netlab-user")
    monkeypatch.setattr(
        "pytest_netlab.privileges.CREATE_USER",
        "useradd --system --no-create-home --shell /usr/sbin/nologin no-such-netlab-user",
    )
    for name in (USER_ENV, "SUDO_UID", "SUDO_GID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=match) as info:
        qemu_identity()
    assert "\n" not in str(info.value)


@root_only
def test_a_lab_without_a_user_for_qemu_refuses_before_anything_is_made(netlab, monkeypatch):
    monkeypatch.setattr("pytest_netlab.privileges.QEMU_USER", "no-such-netlab-user")
    for name in (USER_ENV, "SUDO_UID", "SUDO_GID"):
        monkeypatch.delenv(name, raising=False)
    h1 = netlab.vm("h1")
    with pytest.raises(ConfigError, match="QEMU never runs as root"):
        netlab.start()
    assert h1.machine is None and not namespace_exists(netlab.name)


def test_the_sandbox_starts_for_qemus_user():
    assert sandbox_problem(find_qemu(), qemu_identity()) is None


def test_drive_files_are_found_with_escaped_commas():
    found = drive_file("file=/a,,b/disk.img,if=virtio,snapshot=on")
    assert found == (Path("/a,b/disk.img"), ",if=virtio,snapshot=on")
    assert drive_file("file=/disk") == (Path("/disk"), "")
    assert drive_file("if=virtio,file=/disk") is None


def test_what_qemus_user_may_open_follows_owner_group_and_other_bits(tmp_path):
    file = tmp_path / "f"
    file.write_bytes(b"")
    file.chmod(0o640)
    st = file.stat()
    owner = QemuIdentity(st.st_uid, 4242, None, "a test")
    group = QemuIdentity(4242, st.st_gid, None, "a test")
    other = QemuIdentity(4242, 4243, None, "a test")
    assert owner.may(file, os.R_OK | os.W_OK) and group.may(file, os.R_OK)
    assert not group.may(file, os.W_OK) and not other.may(file, os.R_OK)
    file.chmod(0o644)
    assert other.may(file, os.R_OK) and not other.may(file, os.R_OK | os.W_OK)

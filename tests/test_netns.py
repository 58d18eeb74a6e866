"""Creating the lab namespace: no wait on a child process, nothing left by a failure."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import config as pyroute2_config
from pyroute2 import netns as pyroute2_netns

from pytest_netlab import cleanup, subids
from pytest_netlab import netns as netlab_netns
from pytest_netlab.errors import NamespaceError
from pytest_netlab.netns import LabNamespace, namespace_exists
from pytest_netlab.owner import owners_dir
from pytest_netlab.session import runtime_base


@pytest.fixture
def namespace() -> Iterator[LabNamespace]:
    made = LabNamespace(f"nltest-netns-{os.getpid()}")
    try:
        yield made
    finally:
        made.close()


def test_creation_does_not_wait_on_pyroute2s_child_which_times_out_under_load(
    namespace: LabNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # what a loaded machine did to pyroute2.netns.create: its child answered after the 2 s
    def too_slow(name: str, libc: object = None) -> None:
        raise TimeoutError("no response from the child pid 4242")

    monkeypatch.setattr(pyroute2_netns, "create", too_slow)
    monkeypatch.setattr(pyroute2_config, "default_communicate_timeout", 0)
    namespace.create()
    assert namespace.links() == ["lo"]  # a namespace of its own, loopback up
    assert namespace.run("cat /proc/net/dev").ok


@pytest.mark.skipif(os.geteuid() != 0, reason="binds under /run/netns: root only (a rootless lab binds none)")
def test_a_failed_creation_leaves_no_mount_point_and_no_owner_record(
    namespace: LabNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_attach = pyroute2_netns.attach

    def half_made(name: str, pid: str, libc: object = None) -> None:
        real_attach(name, pid, libc)  # bound, then something fails
        raise OSError(errno.EIO, "injected failure")

    monkeypatch.setattr(netlab_netns.netns, "attach", half_made)
    with pytest.raises(NamespaceError, match=rf"cannot create network namespace .{namespace.name}.*injected"):
        namespace.create()
    assert not namespace_exists(namespace.name)
    assert not namespace._owner_record.exists()
    assert not namespace.created


rootless_only = pytest.mark.skipif(os.geteuid() == 0, reason="a rootless lab: an ordinary user's run")


@rootless_only
def test_a_rootless_holder_that_cannot_start_leaves_no_owner_record(
    namespace: LabNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused() -> None:
        raise NamespaceError("cannot make a user namespace for a rootless lab (injected)")

    monkeypatch.setattr(netlab_netns.NamespaceHolder, "start", refused)
    with pytest.raises(NamespaceError, match="injected"):
        namespace.create()
    assert not namespace._owner_record.exists() and not namespace.created


@rootless_only
def test_a_rootless_lab_is_root_in_a_user_namespace_of_its_own_which_goes_with_it(
    namespace: LabNamespace,
) -> None:
    namespace.create()
    namespace.add_bridge("br1")
    holder = namespace.path.holder
    assert holder is not None
    inside = namespace.run("id -u; readlink /proc/self/ns/user /proc/self/ns/net").stdout.split()
    assert inside[0] == "0"  # root inside: ip, tc, sysctl and tcpdump work there
    assert namespace.capture_problem() is None  # the user's subordinate ids are mapped too
    assert inside[1:] == [os.readlink(f"/proc/{holder}/ns/user"), os.readlink(f"/proc/{holder}/ns/net")]
    assert inside[1] != os.readlink("/proc/self/ns/user") and inside[2] != os.readlink("/proc/self/ns/net")
    # a socket made inside, used here: the host's port is free there
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as host_sock:
        host_sock.bind(("127.0.0.1", 0))
        with namespace.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(host_sock.getsockname())
    namespace.close()
    assert not namespace_exists(namespace.name) and not os.path.exists(f"/proc/{holder}")



_OWNER = """
import sys, time
from pytest_netlab.netns import LabNamespace
namespace = LabNamespace(sys.argv[1])
namespace.create()
namespace.add_bridge("br1")
print(namespace.path.holder, flush=True)
time.sleep(120)
"""


@rootless_only
def test_a_rootless_namespace_goes_when_its_owner_is_killed() -> None:
    name = f"nltest-netns-{os.getpid()}-killed"
    owner = subprocess.Popen([sys.executable, "-c", _OWNER, name], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    holder = int(owner.stdout.readline())
    net = os.readlink(f"/proc/{holder}/ns/net")
    owner.kill()  # no teardown runs: the holder sees its control socket close
    owner.wait()
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{holder}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{holder}"), "the holder outlived its owner"
    # nothing else keeps the lab's network namespace: no process of ours is in it
    assert [p for p in os.listdir("/proc") if p.isdigit() and _net_of(p) == net] == []
    # what is left is the dead owner's record, which the next cleanup removes
    record = owners_dir(runtime_base()) / name
    assert record.exists()
    cleanup.remove_leftovers(runtime_base())
    assert not record.exists()


def _net_of(pid: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


@rootless_only
def test_without_subordinate_ids_a_rootless_lab_runs_and_a_capture_is_refused_saying_how(
    namespace: LabNamespace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    for name in ("SUBUID", "SUBGID"):  # a user without subordinate ids
        (tmp_path / name).write_text("")
        monkeypatch.setattr(subids, name, tmp_path / name)
    namespace.create()
    namespace.add_bridge("br1")
    assert namespace.run("cat /proc/self/uid_map").stdout.split() == ["0", str(os.geteuid()), "1"]
    assert "usermod --add-subuids" in (namespace.capture_problem() or "")

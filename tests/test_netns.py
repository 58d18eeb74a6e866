"""Creating the lab namespace: no wait on a child process, nothing left by a failure."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

import pytest
from pyroute2 import config as pyroute2_config
from pyroute2 import netns as pyroute2_netns

from pytest_netlab import netns as netlab_netns
from pytest_netlab.errors import NamespaceError
from pytest_netlab.netns import LabNamespace, namespace_exists


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

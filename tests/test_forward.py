"""Forwards of host ports on 127.0.0.1 to guest ports: added and removed while the guest runs."""

from __future__ import annotations

import socket
from urllib.request import urlopen

import pytest

from pytest_netlab import ConfigError, LabError


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_removed_forward_no_longer_connects(netlab):
    vm = netlab.vm("h1", forwards=[80])
    netlab.start()
    vm.ssh("mkdir -p /srv && echo hello > /srv/index.html && httpd -p 80 -h /srv")
    web = vm.host_port(80)
    with urlopen(f"http://127.0.0.1:{web}/index.html", timeout=10) as answer:
        assert answer.read() == b"hello\n"
    other = vm.forward_port(8080)

    vm.remove_forward(80)

    assert _refused(web)
    with pytest.raises(LabError, match="guest port 80 is not forwarded"):
        vm.host_port(80)
    vm.remove_forward(host_port=other)  # named by its host port this time
    assert _refused(other)
    assert vm.ssh("echo still reachable").stdout == "still reachable\n"
    # and it can be forwarded again, on a new host port
    with urlopen(f"http://127.0.0.1:{vm.forward_port(80)}/index.html", timeout=10) as answer:
        assert answer.read() == b"hello\n"


def test_removing_a_forward_that_is_not_there_names_those_that_are(netlab):
    vm = netlab.vm("h1")
    netlab.start()
    ssh_port = vm.host_port(22)
    listing = rf"forwards \(host -> guest\): {ssh_port} -> 22$"
    with pytest.raises(ConfigError, match=r"h1: guest port 80 is not forwarded; " + listing):
        vm.remove_forward(80)
    with pytest.raises(ConfigError, match=r"host port 1 is not forwarded"):
        vm.remove_forward(host_port=1)
    for kwargs in ({"guest_port": 22}, {"host_port": ssh_port}):
        with pytest.raises(ConfigError, match="is the SSH forward the lab uses"):
            vm.remove_forward(**kwargs)
    for args, kwargs in (((), {}), ((80,), {"host_port": ssh_port})):
        with pytest.raises(ConfigError, match="give exactly one of guest_port and host_port"):
            vm.remove_forward(*args, **kwargs)
    with pytest.raises(ConfigError, match="guest port"):
        vm.remove_forward(70000)
    assert not _refused(ssh_port)

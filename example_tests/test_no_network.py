"""Document 003, `-nic none`: a guest with no network at all. The plugin then reaches it
over its serial console (`vm.console_run`), not over the network."""

from __future__ import annotations

import pytest

from pytest_netlab import LabError


def test_guest_without_any_nic(netlab):
    vm = netlab.vm("island", network=False)
    netlab.start()

    assert vm.console_run("ls /sys/class/net").stdout.split() == ["lo"]
    assert vm.console_run("ls /sys/bus/pci/devices/*/net 2>/dev/null | wc -l").stdout.strip() == "0"
    assert vm.console_run("hostname").stdout == "island\n"
    assert vm.console_run("exit 3", check=False).status == 3
    with pytest.raises(LabError, match="no network"):
        vm.ssh("true")

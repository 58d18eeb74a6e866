"""A topology file with links' properties (MTU, impairment, a pulled cable, a MAC, a NIC
model) and start-up files and commands, and the same lab written in Python: both are
built, and what the guests report is compared, not the Python objects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_netlab import LabError
from pytest_netlab.guest import VM
from pytest_netlab.labspec import Topology

TOPOLOGY = Path(__file__).parent / "topologies" / "link_properties.toml"


def python_lab(netlab) -> dict[str, VM]:
    # --8<-- [start:python]
    lan = netlab.bridge("lan", subnet="10.50.0.0/24")
    backup = netlab.bridge("backup", subnet="10.51.0.0/24")
    r1 = netlab.router("r1", nics=[lan.nic(mtu=1400), backup.nic(up=False, mac="52:54:00:aa:00:01")])
    r1.impair(lan, delay_ms=20, corrupt_percent=1, duplicate_percent=2, reorder_percent=25,
              where="guest")
    h1 = netlab.vm("h1", nics=[lan.nic(mtu=1400, model="e1000")], gateway="auto")
    netlab.start()
    r1.enable_forwarding(ipv6=True)
    r1.put(TOPOLOGY.parent / "files" / "motd", "/etc/motd")
    r1.ssh("ip addr add 192.0.2.1/32 dev lo")
    r1.ssh("ip route add 198.51.100.0/24 via 10.50.0.2")
    # --8<-- [end:python]
    return {"r1": r1, "h1": h1}


def what_the_guest_has(vm: VM) -> dict[str, object]:
    """Links (state, MTU, MAC of eth1), addresses, routes and qdiscs, read in the guest."""
    links = json.loads(vm.ssh("ip -j link show").stdout)
    addresses = json.loads(vm.ssh("ip -j addr show").stdout)
    return {
        "links": sorted(
            (link["ifname"], link["mtu"], "NO-CARRIER" in link["flags"],
             link["ifname"] != "eth1" or link["address"])
            for link in links if link["ifname"].startswith("eth")
        ),
        "addresses": sorted(
            (a["ifname"], i["local"], i["prefixlen"])
            for a in addresses if a["ifname"] != "mgmt0" for i in a["addr_info"] if i["scope"] != "link"
        ),
        "routes": sorted(r for r in vm.ssh("ip route show").stdout.splitlines() if "mgmt0" not in r),
        "qdisc": vm.ssh("tc qdisc show dev eth0 root").stdout.split(" root ")[1].split(),
        "forwarding": vm.ssh("sysctl -n net.ipv4.ip_forward").stdout,
        # the host side of each link: its TAP in the lab namespace
        "taps": [json.loads(vm.lab.run(["ip", "-j", "link", "show", tap]).stdout)[0]["mtu"] for tap in vm.taps],
        "motd": vm.ssh("cat /etc/motd 2>/dev/null || true").stdout,
    }


def test_a_topology_file_and_its_python_make_the_same_lab(netlab, netlab_factory):
    from_file = Topology.from_toml(TOPOLOGY).apply(netlab)
    with netlab_factory() as other:
        from_python = python_lab(other)
        python_side = {name: what_the_guest_has(vm) for name, vm in from_python.items()}
    file_side = {name: what_the_guest_has(vm) for name, vm in from_file.items()}
    assert file_side == python_side
    # and it is what the file asked for
    r1 = file_side["r1"]
    assert r1["links"] == [("eth0", 1400, False, True), ("eth1", 1500, True, "52:54:00:aa:00:01")]
    assert {"delay", "20ms", "corrupt", "1%", "duplicate", "2%", "reorder", "25%"} <= set(r1["qdisc"])
    assert r1["taps"] == [1400, 1500]
    assert r1["motd"] == "greeting from the topology file\n"
    assert ("lo", "192.0.2.1", 32) in r1["addresses"]
    assert any(r.startswith("198.51.100.0/24 via 10.50.0.2") for r in r1["routes"])


def test_a_failing_start_up_command_names_the_node_the_command_its_status_and_output(netlab):
    topology = Topology.from_toml(
        '[nodes.h1]\nexec = ["echo first > /tmp/first", "echo no such thing >&2; exit 3", "touch /tmp/never"]\n'
    )
    with pytest.raises(LabError) as failed:
        topology.apply(netlab)
    assert str(failed.value) == (
        "node 'h1': exec command 'echo no such thing >&2; exit 3' exited with status 3: no such thing"
    )
    h1 = netlab.vms["h1"]  # the commands before ran, in order; those after did not
    assert h1.ssh("cat /tmp/first; ls /tmp/never", check=False).stdout == "first\n"

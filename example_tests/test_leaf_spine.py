"""A 32-guest leaf-spine fabric from a builder: 2 spines, 6 leaves, 4 hosts per leaf.
Every router forwards with the routes the lab gives; every host reaches every other."""

from __future__ import annotations

import time

from pytest_netlab.builders import leaf_spine
from pytest_netlab.labspec import Topology


# --8<-- [start:leaf-spine]
def test_every_host_reaches_every_other_host_of_a_leaf_spine_fabric(netlab):
    topology = Topology.from_dict(leaf_spine(spines=2, leaves=6, hosts_per_leaf=4))
    # 32 guests launched one after the other: the last may answer SSH well after the first
    # was launched, on a busy machine beyond the default boot timeout (120 s)
    vms = topology.apply(netlab, timeout=300)  # addresses and routes set when it returns
    hosts = [vm for vm in vms.values() if vm.spec.role == "host"]
    assert len(vms) == 32 and len(hosts) == 24

    started = time.monotonic()
    matrix = netlab.ping_all(hosts)  # each host pings the 23 others in one SSH command
    assert matrix, matrix  # the message is the matrix, with the unreachable pairs
    assert matrix.pairs == 24 * 23
    netlab.timings["all pairs"] = time.monotonic() - started
# --8<-- [end:leaf-spine]


def test_a_host_crosses_leaf_spine_leaf(netlab):
    vms = Topology.from_dict(leaf_spine(spines=2, leaves=2, hosts_per_leaf=1)).apply(netlab)
    h1, h2 = vms["h1"], vms["h2"]
    hops = h1.ssh(f"traceroute -n -q 1 -w 2 {h2.address()}", check=False).stdout
    # each router answers from its address on the way back to h1
    assert [line.split()[1] for line in hops.splitlines()[1:]] == [
        vms["leaf1"].address("lan1"), vms["spine1"].address("l1s1"), vms["leaf2"].address("l2s1"),
        h2.address(),
    ], hops

"""The documents' two-machine script: h1 and h2 on bridge br1 through TAPs vport11 and
vport12, addresses 10.10.10.2/.3 (document 000, "Script for Two Machines")."""

from __future__ import annotations

import json


def test_h1_and_h2_ping_each_other_over_br1(netlab):
    br1 = netlab.bridge("br1")
    h1 = netlab.vm("h1", nics=[br1])
    h2 = netlab.vm("h2", nics=[br1])
    netlab.start()

    assert h1.taps == ["vport11"] and h2.taps == ["vport12"]
    on_br1 = json.loads(netlab.run("ip -j link show master br1").stdout)  # in the lab namespace
    assert sorted(link["ifname"] for link in on_br1) == ["vport11", "vport12"]
    h1.ssh("ip addr add 10.10.10.2/24 dev eth0 && ip link set eth0 up")
    h2.ssh("ip addr add 10.10.10.3/24 dev eth0 && ip link set eth0 up")

    assert h1.ping("10.10.10.3")
    assert h2.ping("10.10.10.2")

"""The documents' three-machine script: h1 -- br1 -- rt2 -- br2 -- h2, with rt2 routing
only once forwarding is on (document 000, "Script for Three Machines")."""

from __future__ import annotations


def test_h1_reaches_h2_through_rt2(netlab):
    br1, br2 = netlab.bridge("br1"), netlab.bridge("br2")
    h1 = netlab.vm("h1", nics=[br1])
    rt2 = netlab.router("rt2", nics=[br1, br2])
    h2 = netlab.vm("h2", nics=[br2])
    netlab.start()  # boots every guest at once, returns when all answer SSH
    h1.ssh("ip addr add 10.20.10.1/24 dev eth0 && ip link set eth0 up && ip route add default via 10.20.10.2")
    rt2.ssh("ip addr add 10.20.10.2/24 dev eth0 && ip addr add 10.20.20.2/24 dev eth1 && ip link set eth0 up && ip link set eth1 up")
    h2.ssh("ip addr add 10.20.20.1/24 dev eth0 && ip link set eth0 up && ip route add default via 10.20.20.2")
    assert not h1.ping("10.20.20.1")  # forwarding is off by default
    rt2.enable_forwarding()
    assert h1.ping("10.20.20.1")
    assert h2.ping("10.20.10.1")
    rt2.disable_forwarding()
    assert not h2.ping("10.20.10.1", timeout=1)

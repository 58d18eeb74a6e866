"""Document 003, "host-only network": the bridge gets 10.10.10.1/24 on the host side, so
the guests reach the host and the host reaches them. Here the host side is the lab's own
network namespace, not the machine's: `netlab.run` runs a command there."""

from __future__ import annotations


def test_host_and_guests_reach_each_other(netlab):
    br0 = netlab.bridge("br0")
    br0.add_address("10.10.10.1/24")
    h1 = netlab.vm("h1", nics=[br0])
    h2 = netlab.vm("h2", nics=[br0])
    netlab.start()
    h1.ssh("ip addr add 10.10.10.2/24 dev eth0 && ip link set eth0 up")
    h2.ssh("ip addr add 10.10.10.3/24 dev eth0 && ip link set eth0 up")

    assert h1.ping("10.10.10.1")
    assert h2.ping("10.10.10.1")
    assert netlab.run("ping -c 1 -W 2 10.10.10.2")
    assert netlab.run("ping -c 1 -W 2 10.10.10.3")
    assert h1.ping("10.10.10.3")

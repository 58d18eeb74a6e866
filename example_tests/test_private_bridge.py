"""Document 003, "private bridged network": two guests on one bridge with unique MACs and
static addresses 10.10.10.2/.3. The bridge has no address, so the host side (the lab
namespace) cannot reach them."""

from __future__ import annotations


def test_two_guests_on_a_private_bridge(netlab):
    br0 = netlab.bridge("br0")
    h1 = netlab.vm("h1", nics=[br0.nic(mac="52:54:00:12:34:56")])  # the document's MAC
    h2 = netlab.vm("h2", nics=[br0])  # MAC chosen by the lab, never the same
    netlab.start()

    assert h1.ssh("cat /sys/class/net/eth0/address").stdout.strip() == "52:54:00:12:34:56"
    assert h2.ssh("cat /sys/class/net/eth0/address").stdout.strip() != "52:54:00:12:34:56"
    h1.ssh("ip addr add 10.10.10.2/24 dev eth0 && ip link set eth0 up")
    h2.ssh("ip addr add 10.10.10.3/24 dev eth0 && ip link set eth0 up")

    assert h1.ping("10.10.10.3")
    assert h2.ping("10.10.10.2")
    # private: the bridge has no address, the lab namespace has no route to the guests
    assert netlab.run("ip -4 addr show dev br0").stdout.strip() == ""
    assert netlab.run("ping -c 1 -W 1 10.10.10.2", check=False).status != 0


"""Document 000, "static routing": `ip route add NET via GW`, `ip route del`, and the
default gateway set and removed. h1 reaches a second subnet through router rt; the far
end of that subnet is the lab namespace's own address on br2."""

from __future__ import annotations

import json


def _routes(vm):
    return {(r["dst"], r.get("gateway")) for r in json.loads(vm.ssh("ip -j route").stdout)}


def test_a_route_and_a_default_gateway_decide_the_path(netlab):
    br1, br2 = netlab.bridge("br1"), netlab.bridge("br2")
    br2.add_address("192.168.2.2/24")  # the far host: the lab namespace
    netlab.run("ip route add 192.168.1.0/24 via 192.168.2.1")  # its way back, via rt
    h1 = netlab.vm("h1", nics=[br1])
    rt = netlab.router("rt", nics=[br1, br2])
    netlab.start()
    h1.ssh("ip addr add 192.168.1.2/24 dev eth0 && ip link set eth0 up")
    rt.ssh("ip addr add 192.168.1.1/24 dev eth0 && ip addr add 192.168.2.1/24 dev eth1"
           " && ip link set eth0 up && ip link set eth1 up")
    rt.enable_forwarding()
    assert not h1.ping("192.168.2.2", timeout=1)  # no route yet

    h1.ssh("ip route add 192.168.2.0/24 via 192.168.1.1")
    assert ("192.168.2.0/24", "192.168.1.1") in _routes(h1)
    assert h1.ping("192.168.2.2")

    h1.ssh("ip route del 192.168.2.0/24 via 192.168.1.1")
    assert ("192.168.2.0/24", "192.168.1.1") not in _routes(h1)
    assert not h1.ping("192.168.2.2", timeout=1)

    h1.ssh("ip route add default via 192.168.1.1")
    assert ("default", "192.168.1.1") in _routes(h1)
    assert h1.ping("192.168.2.2")
    h1.ssh("ip route del default")
    assert not any(dst == "default" for dst, _ in _routes(h1))
    assert not h1.ping("192.168.2.2", timeout=1)

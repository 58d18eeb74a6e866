"""The documents' three machines with an address plan per bridge: the lab chooses the
addresses (routers first), sets the default routes, and names every guest in /etc/hosts."""

from __future__ import annotations

import json


def _in_guest(vm, nic: str) -> list[str]:
    """The global addresses of *nic*, as the guest has them."""
    (link,) = json.loads(vm.ssh(f"ip -j addr show dev {nic} scope global").stdout)
    # (iproute2 leaves an empty entry for each address the scope filter drops)
    return [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"] if "local" in a]


def test_h1_pings_h2_by_name_through_rt2(netlab):
    br1 = netlab.bridge("br1", subnet="10.20.10.0/24")
    br2 = netlab.bridge("br2", subnet="10.20.20.0/24")
    h1 = netlab.vm("h1", nics=[br1], gateway="auto")
    rt2 = netlab.router("rt2", nics=[br1, br2])
    h2 = netlab.vm("h2", nics=[br2], gateway="auto")
    netlab.start()  # addresses, default routes and /etc/hosts are set before it returns

    assert rt2.addresses == {"eth0": ["10.20.10.1/24"], "eth1": ["10.20.20.1/24"]}
    assert (_in_guest(rt2, "eth0"), _in_guest(rt2, "eth1")) == (["10.20.10.1/24"], ["10.20.20.1/24"])
    assert h1.address(br1) == "10.20.10.2"
    assert h2.address("eth0") == "10.20.20.2"
    assert h1.ping("rt2-br1")
    assert not h1.ping("h2", timeout=1)  # forwarding is off by default
    rt2.enable_forwarding()
    assert h1.ping("h2")
    assert h2.ping("h1")
    route = h1.ssh("ip route get " + h2.address()).stdout
    assert f"via {rt2.address(br1)} dev eth0" in route


def test_routers_learn_the_subnets_behind_each_other(netlab):
    # h1 -- br1 -- rt1 -- br2 -- rt2 -- br3 -- h2: each router gets a route to the subnet
    # behind the other, so h1 reaches h2 once both forward
    br1 = netlab.bridge("br1", subnet="10.20.10.0/24")
    br2 = netlab.bridge("br2", subnet="10.20.20.0/24")
    br3 = netlab.bridge("br3", subnet="10.20.30.0/24")
    h1 = netlab.vm("h1", nics=[br1], gateway="auto")
    rt1 = netlab.router("rt1", nics=[br1, br2])
    rt2 = netlab.router("rt2", nics=[br2, br3])
    h2 = netlab.vm("h2", nics=[br3], gateway="auto")
    netlab.start()

    assert f"10.20.30.0/24 via {rt2.address(br2)} dev eth1" in rt1.ssh("ip route").stdout
    rt1.enable_forwarding()
    rt2.enable_forwarding()
    assert h1.ping("h2")
    hops = h1.ssh(f"traceroute -n -q 1 -w 2 {h2.address()}", check=False).stdout
    assert [rt1.address(br1), rt2.address(br2), h2.address()] == [
        line.split()[1] for line in hops.splitlines()[1:]
    ], hops


def test_explicit_addresses_dual_stack_and_a_host_only_bridge(netlab):
    lan = netlab.bridge("lan", subnet=["10.30.0.0/24", "fd00:30::/64"])
    lan.add_address("10.30.0.1/24")  # the lab namespace's own: never handed out
    a = netlab.vm("a", nics=[lan.nic(address="10.30.0.50/24")])
    b = netlab.vm("b", nics=[lan])
    netlab.start()

    assert a.addresses == {"eth0": ["10.30.0.50/24", "fd00:30::1/64"]}
    assert _in_guest(a, "eth0") == ["10.30.0.50/24", "fd00:30::1/64"]
    assert b.address(lan) == "10.30.0.2"
    assert b.address(lan, version=6) == "fd00:30::2"
    assert a.ping("b") and a.ping("b-lan-v6")
    assert netlab.run(["ping", "-c", "1", "-W", "2", b.address()]).ok

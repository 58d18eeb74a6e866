"""The address plan in real guests: opt-in, and a guest started later."""

from __future__ import annotations

from pytest_netlab.addressing import HOSTS_BEGIN


def test_a_lab_without_subnets_sets_nothing_in_the_guests(netlab):
    br1 = netlab.bridge("br1")
    h1 = netlab.vm("h1", nics=[br1])
    netlab.start()
    assert h1.addresses == {}
    assert "inet " not in h1.ssh("ip -4 -o addr show dev eth0").stdout
    assert HOSTS_BEGIN not in h1.ssh("cat /etc/hosts").stdout


def test_a_guest_started_later_gets_the_next_address_and_the_others_learn_its_name(netlab):
    br1 = netlab.bridge("br1", subnet="10.40.0.0/24")
    h1 = netlab.vm("h1", nics=[br1])
    netlab.start()
    h2 = netlab.vm("h2", nics=[br1])
    netlab.start()
    assert (h1.address(br1), h2.address(br1)) == ("10.40.0.1", "10.40.0.2")
    assert h1.ping("h2") and h2.ping("h1")
    assert h1.ssh("cat /etc/hosts").stdout.count(HOSTS_BEGIN) == 1


def test_dual_stack_across_a_router_with_default_routes_of_both_versions(netlab):
    br1 = netlab.bridge("br1", subnet=["10.20.10.0/24", "fd00:20:10::/64"])
    br2 = netlab.bridge("br2", subnet=["10.20.20.0/24", "fd00:20:20::/64"])
    h1 = netlab.vm("h1", nics=[br1], gateway="auto")
    rt2 = netlab.router("rt2", nics=[br1, br2])
    h2 = netlab.vm("h2", nics=[br2], gateway="rt2")
    netlab.start()
    rt2.enable_forwarding(ipv6=True)
    assert f"via {rt2.address(br1, version=6)} dev eth0" in h1.ssh("ip -6 route get fd00:20:20::9").stdout
    assert h1.ping("h2-br2-v6") and h2.ping("h1-br1-v6") and h1.ping("h2")


def test_a_router_with_routes_of_its_own_gets_addresses_but_no_static_route(netlab):
    # --8<-- [start:routes-false]
    # br1 -- r1 -- br2 -- r2 (routes=False) -- br3: r1 gets its route to br3, r2 none to br1
    br1 = netlab.bridge("br1", subnet="10.20.10.0/24")
    br2 = netlab.bridge("br2", subnet="10.20.20.0/24")
    br3 = netlab.bridge("br3", subnet="10.20.30.0/24")
    r1 = netlab.router("r1", nics=[br1, br2])
    r2 = netlab.router("r2", nics=[br2, br3], routes=False)
    netlab.start()
    assert r2.addresses == {"eth0": ["10.20.20.2/24"], "eth1": ["10.20.30.1/24"]}
    shown = r2.ssh("ip -4 -o addr show dev eth0; ip -4 -o addr show dev eth1").stdout
    assert "inet 10.20.20.2/24" in shown and "inet 10.20.30.1/24" in shown
    assert f"{r1.address(br1)}\tr1\n" in r2.ssh("cat /etc/hosts").stdout
    assert r2.ssh("ip route show proto boot; ip -6 route show proto boot").stdout == ""
    assert r2.ssh("ip route show default").stdout == ""
    assert r1.ssh("ip route show proto boot").stdout.split() == ["10.20.30.0/24", "via", "10.20.20.2",
                                                                 "dev", "eth1"]
    assert r1.ping(r2.address(br3))  # through that route
    # --8<-- [end:routes-false]

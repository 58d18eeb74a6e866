"""The address planner: subnets, the order of choice, gateways and /etc/hosts names
(pure logic, no lab)."""

from __future__ import annotations

import ipaddress
import re

import pytest

from pytest_netlab import ConfigError
from pytest_netlab.addressing import (
    AddressPlan,
    GuestRequest,
    NicRequest,
    check_gateway,
    check_overlaps,
    explicit_addresses,
    hosts_names,
    parse_subnets,
)

NET1, NET2 = ipaddress.ip_network("10.20.10.0/24"), ipaddress.ip_network("10.20.20.0/24")
SUBNETS = {"br1": (NET1,), "br2": (NET2,)}


def three_machines(gateway: str | None = "auto") -> list[GuestRequest]:
    """The documents' h1 -- br1 -- rt2 -- br2 -- h2, declared hosts first."""
    return [
        GuestRequest("h1", False, (NicRequest("br1"),), gateway),
        GuestRequest("rt2", True, (NicRequest("br1"), NicRequest("br2")), gateway),
        GuestRequest("h2", False, (NicRequest("br2"),), gateway),
    ]


def addresses(plan: AddressPlan, guest: str) -> list[list[str]]:
    return [[str(i) for i in nic] for nic in plan.assigned[guest]]


def test_routers_first_then_hosts_lowest_free_address():
    plan = AddressPlan()
    plan.assign(SUBNETS, three_machines())
    assert addresses(plan, "rt2") == [["10.20.10.1/24"], ["10.20.20.1/24"]]
    assert addresses(plan, "h1") == [["10.20.10.2/24"]]
    assert addresses(plan, "h2") == [["10.20.20.2/24"]]
    assert plan.gateways == {
        "h1": (ipaddress.ip_address("10.20.10.1"),), "rt2": (),
        "h2": (ipaddress.ip_address("10.20.20.1"),),
    }


def test_routers_get_routes_to_the_subnets_behind_other_routers():
    # h1 -- br1 -- rt1 -- br2 -- rt2 -- br3 -- rt3 -- br4, and a one-router lab needs none
    net3, net4 = ipaddress.ip_network("10.20.30.0/24"), ipaddress.ip_network("10.20.40.0/24")
    plan = AddressPlan()
    plan.assign({**SUBNETS, "br3": (net3,), "br4": (net4,)}, [
        GuestRequest("h1", False, (NicRequest("br1"),), "auto"),
        GuestRequest("rt1", True, (NicRequest("br1"), NicRequest("br2"))),
        GuestRequest("rt2", True, (NicRequest("br2"), NicRequest("br3"))),
        GuestRequest("rt3", True, (NicRequest("br3"), NicRequest("br4"))),
    ])
    ip = ipaddress.ip_address
    assert addresses(plan, "rt2") == [["10.20.20.2/24"], ["10.20.30.1/24"]]
    assert plan.routes("rt1") == [(net3, ip("10.20.20.2")), (net4, ip("10.20.20.2"))]
    assert plan.routes("rt2") == [(NET1, ip("10.20.20.1")), (net4, ip("10.20.30.2"))]
    assert plan.routes("rt3") == [(NET2, ip("10.20.30.1")), (NET1, ip("10.20.30.1"))]
    assert plan.routes("h1") == []
    assert "route add 10.20.30.0/24 via 10.20.20.2\n" in plan.guest_script("rt1")

    single = AddressPlan()
    single.assign(SUBNETS, three_machines())
    assert single.routes("rt2") == []


def test_a_router_with_routes_of_its_own_gets_addresses_but_no_route():
    # h1 -- br1 -- rt1 -- br2 -- rt2 (routes=False) -- br3 -- h3 (its gateway: rt2)
    net3 = ipaddress.ip_network("10.20.30.0/24")
    plan = AddressPlan()
    plan.assign({**SUBNETS, "br3": (net3,)}, [
        GuestRequest("h1", False, (NicRequest("br1"),), "auto"),
        GuestRequest("rt1", True, (NicRequest("br1"), NicRequest("br2"))),
        GuestRequest("rt2", True, (NicRequest("br2"), NicRequest("br3")), routes=False),
        GuestRequest("h3", False, (NicRequest("br3"),), "auto"),
    ])
    ip = ipaddress.ip_address
    assert addresses(plan, "rt2") == [["10.20.20.2/24"], ["10.20.30.1/24"]]
    assert plan.routes("rt2") == [] and plan.gateways["rt2"] == ()
    assert "route " not in plan.guest_script("rt2")
    assert "addr add 10.20.30.1/24 dev eth1\n" in plan.guest_script("rt2")
    assert "10.20.30.1\trt2-br3\n" in plan.guest_script("rt2")
    # the others' routes through it are planned as usual
    assert plan.routes("rt1") == [(net3, ip("10.20.20.2"))]
    assert plan.gateways["h3"] == (ip("10.20.30.1"),)


def test_explicit_and_bridge_addresses_are_skipped():
    guests = [
        GuestRequest("h1", False, (NicRequest("br1"),)),
        GuestRequest("h2", False, (NicRequest("br1", (ipaddress.ip_interface("10.20.10.2/24"),)),)),
    ]
    plan = AddressPlan()
    plan.assign(SUBNETS, guests, {"br1": [ipaddress.ip_interface("10.20.10.1/24")]})
    assert addresses(plan, "h1") == [["10.20.10.3/24"]]
    assert addresses(plan, "h2") == [["10.20.10.2/24"]]


def test_a_later_start_keeps_what_was_given_and_takes_the_next_free():
    plan = AddressPlan()
    first = [GuestRequest("h1", False, (NicRequest("br1"),))]
    plan.assign(SUBNETS, first)
    later = [*first, GuestRequest("rt9", True, (NicRequest("br1"),))]
    plan.assign(SUBNETS, later[1:], all_guests=later)
    assert addresses(plan, "h1") == [["10.20.10.1/24"]]
    assert addresses(plan, "rt9") == [["10.20.10.2/24"]]


def test_dual_stack_gives_one_address_of_each_version_and_two_routes():
    subnets = {"br1": parse_subnets(["10.20.10.0/24", "fd00:20:10::/64"], "br1")}
    guests = [
        GuestRequest("h1", False, (NicRequest("br1"),), "rt"),
        GuestRequest("rt", True, (NicRequest("br1"),)),
    ]
    plan = AddressPlan()
    plan.assign(subnets, guests)
    assert addresses(plan, "rt") == [["10.20.10.1/24", "fd00:20:10::1/64"]]
    assert addresses(plan, "h1") == [["10.20.10.2/24", "fd00:20:10::2/64"]]
    assert [str(a) for a in plan.gateways["h1"]] == ["10.20.10.1", "fd00:20:10::1"]
    script = plan.guest_script("h1")
    assert "addr add fd00:20:10::2/64 dev eth0 nodad\n" in script
    assert script.startswith("set -e\necho 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad\nip -batch")
    assert "route add ::/0 via fd00:20:10::1 metric 100\n" in script
    assert "route add 0.0.0.0/0 via 10.20.10.1\n" in script


def test_nat_nics_and_bridges_without_subnet_get_nothing_but_keep_their_eth_number():
    guests = [GuestRequest("h1", False, (NicRequest(None), NicRequest("plain"), NicRequest("br1")))]
    plan = AddressPlan()
    plan.assign(SUBNETS, guests)
    assert addresses(plan, "h1") == [[], [], ["10.20.10.1/24"]]
    assert "addr add 10.20.10.1/24 dev eth2\nlink set eth2 up\n" in plan.guest_script("h1")


def test_guest_script_is_one_ip_batch_and_one_hosts_block():
    plan = AddressPlan()
    plan.assign(SUBNETS, three_machines())
    script = plan.guest_script("h1")
    assert script.startswith(
        "set -e\nip -batch - <<'NETLAB_EOF'\naddr add 10.20.10.2/24 dev eth0\nlink set eth0 up\n"
        "route add 0.0.0.0/0 via 10.20.10.1\nNETLAB_EOF\n"
    )
    assert (
        "sed -i '/^# netlab: lab addresses (begin)$/,/^# netlab: lab addresses (end)$/d' /etc/hosts"
    ) in script
    assert "10.20.20.2\th2\n" in script
    assert "10.20.20.1\trt2-br2\n" in script


def test_hosts_names_first_address_per_bridge_and_v6():
    v4, v6 = ipaddress.ip_interface("10.20.10.1/24"), ipaddress.ip_interface("fd00::1/64")
    names = hosts_names({"rt": [(v6,), (v4, ipaddress.ip_interface("fd01::1/64"))]}, {"rt": ("br6", "br1")})
    assert {k: str(v) for k, v in names.items()} == {
        "rt": "10.20.10.1", "rt-br6": "fd00::1", "rt-br6-v6": "fd00::1",
        "rt-br1": "10.20.10.1", "rt-br1-v6": "fd01::1",
    }


def test_clashing_host_names_are_refused():
    guests = [
        GuestRequest("h1", False, (NicRequest("br1"),)),
        GuestRequest("h1-br1", False, (NicRequest("br2"),)),
    ]
    with pytest.raises(ConfigError, match="host name 'h1-br1' would name both h1 and h1-br1"):
        AddressPlan().assign(SUBNETS, guests)


@pytest.mark.parametrize(
    ("guests", "message"),
    [
        ([GuestRequest("h1", False, (NicRequest("br1"),), "auto")],
         "h1: gateway='auto' finds no router on bridge 'br1'"),
        ([GuestRequest("h1", False, (NicRequest("plain"),), "auto")],
         "h1: gateway='auto' needs an address on a lab bridge"),
        ([GuestRequest("h1", False, (NicRequest("br1"),), "10.9.9.9")],
         r"h1: gateway 10.9.9.9 is not in a subnet of its NICs \(10.20.10.0/24\)"),
        ([GuestRequest("h1", False, (NicRequest("br1"),), "nobody")],
         "h1: gateway 'nobody' is not another guest of the lab"),
        ([GuestRequest("h1", False, (NicRequest("br1"),), "h2"),
          GuestRequest("h2", True, (NicRequest("br2"),))],
         "h1: gateway 'h2' has no address on a bridge of h1"),
    ],
)
def test_gateways_that_cannot_be_resolved_are_refused(guests, message):
    plan = AddressPlan()
    with pytest.raises(ConfigError, match=message):
        plan.assign(SUBNETS, guests)
    assert plan.assigned == {}  # nothing planned


def test_a_full_subnet_and_a_duplicate_address_are_refused():
    small = {"br1": parse_subnets("10.20.10.0/30", "br1")}
    guests = [GuestRequest(f"h{i}", False, (NicRequest("br1"),)) for i in range(3)]
    message = "10.20.10.0/30 of bridge 'br1' has no free address left for h2"
    with pytest.raises(ConfigError, match=re.escape(message)):
        AddressPlan().assign(small, guests)
    taken = (ipaddress.ip_interface("10.20.10.1/24"),)
    guest = GuestRequest("h1", False, (NicRequest("br1", taken),))
    message = "10.20.10.1 of h1 on bridge 'br1' is used already by bridge 'br1'"
    with pytest.raises(ConfigError, match=re.escape(message)):
        AddressPlan().assign(SUBNETS, [guest], {"br1": taken})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10.20.10.1/24", "subnet '10.20.10.1/24' of bridge 'br1' is not accepted: give a network"),
        ("banana", "subnet 'banana' of bridge 'br1' is not accepted"),
        ([], r"subnet \[\] of bridge 'br1' is not accepted"),
        ("10.20.10.0/31", "subnet '10.20.10.0/31' of bridge 'br1' is too small: give at most /30"),
        (["10.1.0.0/16", "10.2.0.0/16"], "second IPv4 subnet"),
    ],
)
def test_bad_subnets_are_refused_with_the_value_named(value, message):
    with pytest.raises(ConfigError, match=message):
        parse_subnets(value, "br1")


def test_overlapping_subnets_name_both():
    message = "10.20.0.0/16 of bridge 'br2' overlaps subnet 10.20.10.0/24 of"
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_overlaps("br2", parse_subnets("10.20.0.0/16", "br2"), {"br1": (NET1,)})
    message = "10.0.0.0/16 of bridge 'br1' overlaps the user-mode NAT network"
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_overlaps("br1", parse_subnets("10.0.0.0/16", "br1"), {})
    message = "100.64.0.0/10 of bridge 'br1' overlaps the management network (SSH to the guests)"
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_overlaps("br1", parse_subnets("100.64.0.0/10", "br1"), {})
    check_overlaps("br2", (NET2,), {"br1": (NET1,)})  # apart: fine


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10.20.20.5/24", "address 10.20.20.5/24 on bridge 'br1' is not inside its subnet 10.20.10.0/24"),
        ("10.20.10.5/16", "address 10.20.10.5/16 on bridge 'br1' is not inside its subnet 10.20.10.0/24"),
        ("10.20.10.255/24", "is the network or broadcast address"),
        ("10.20.10.5", "address '10.20.10.5' is not accepted"),
        (["10.20.10.5/24", "10.20.10.6/24"], "second IPv4 address: give at most one IPv4 and one"),
    ],
)
def test_bad_explicit_addresses_are_refused(value, message):
    with pytest.raises(ConfigError, match=message):
        explicit_addresses(value, "br1", (NET1,))


def test_explicit_address_inside_the_subnet_and_anywhere_without_one():
    assert [str(i) for i in explicit_addresses("10.20.10.50/24", "br1", (NET1,))] == ["10.20.10.50/24"]
    assert [str(i) for i in explicit_addresses("192.168.7.1/24", "plain", ())] == ["192.168.7.1/24"]


@pytest.mark.parametrize("value", ["auto", "rt2", "10.20.10.1", "fd00::1", None])
def test_accepted_gateways(value):
    assert check_gateway(value, "h1") == value


@pytest.mark.parametrize("value", ["", "10.20.10.1/24", 5, "no such"])
def test_refused_gateways(value):
    with pytest.raises(ConfigError, match=f"gateway {value!r} of 'h1' is not accepted"):
        check_gateway(value, "h1")

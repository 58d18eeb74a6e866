"""Topology builders: the shapes, the [generate] table, bad parameters, and (on the
address plan the lab would make) every host reaching every other (pure logic, no lab)."""

from __future__ import annotations

import ipaddress
import itertools
from pathlib import Path

import pytest

from pytest_netlab import ConfigError, builders
from pytest_netlab.addressing import AddressPlan, GuestRequest, NicRequest
from pytest_netlab.labspec import Topology

LEAF_SPINE_FILE = Path(__file__).parents[1] / "example_tests" / "topologies" / "leaf_spine.toml"


def plan_of(topology: Topology) -> AddressPlan:
    """The address plan Lab.start() makes for *topology* (see Lab._plan_addresses)."""
    requests = [
        GuestRequest(n.name, n.role == "router", tuple(NicRequest(k.bridge) for k in n.links), n.gateway)
        for n in topology.nodes.values()
    ]
    subnets = {b: tuple(ipaddress.ip_network(s) for s in spec.subnet) for b, spec in topology.bridges.items()}
    plan = AddressPlan()
    plan.assign(subnets, requests)
    return plan


def path(plan: AddressPlan, source: str, target: str) -> list[str]:
    """The guests a packet from *source* to *target*'s first address goes through,
    following each guest's connected subnets, routes (longest prefix) and default route."""
    owner = {i.ip: g for g, nics in plan.assigned.items() for nic in nics for i in nic}
    address = ipaddress.ip_address(next(i.ip for nic in plan.assigned[target] for i in nic))
    hops, here = [source], source
    while here != target:
        connected = [(i.network, address) for nic in plan.assigned[here] for i in nic]
        table = connected + plan.routes(here) + [
            (ipaddress.ip_network("0.0.0.0/0"), gw) for gw in plan.gateways.get(here, ())
        ]
        matches = [(net, via) for net, via in table if address in net]
        assert matches, f"{here} has no route to {address}"
        _, via = max(matches, key=lambda m: m[0].prefixlen)
        here = owner[via]
        assert here not in hops, f"loop: {[*hops, here]}"
        hops.append(here)
    return hops


@pytest.mark.parametrize(
    ("data", "routers", "hosts", "bridges"),
    [
        (builders.line(3), 3, 3, 5),
        (builders.line(1, 2), 1, 2, 1),
        (builders.ring(4, 2), 4, 8, 8),
        (builders.star(5), 1, 5, 5),
        (builders.mesh(4, 0), 4, 0, 10),
        (builders.leaf_spine(2, 6, 4), 8, 24, 18),
    ],
)
def test_shapes_have_their_routers_hosts_and_bridges(data, routers, hosts, bridges):
    topology = Topology.from_dict(data)
    roles = [n.role for n in topology.nodes.values()]
    assert (roles.count("router"), roles.count("host"), len(topology.bridges)) == (routers, hosts, bridges)
    assert all(n.forwarding for n in topology.nodes.values() if n.role == "router")
    assert all(n.gateway == "auto" for n in topology.nodes.values() if n.role == "host")


@pytest.mark.parametrize(
    "data",
    [builders.line(4, 1), builders.ring(5, 1), builders.star(4), builders.mesh(4, 1),
     builders.leaf_spine(2, 4, 2), builders.leaf_spine(3, 3, 1)],
)
def test_every_host_reaches_every_other_on_the_plan(data):
    plan = plan_of(Topology.from_dict(data))
    hosts = [g for g in plan.assigned if g not in plan.routers]
    for a, b in itertools.permutations(hosts, 2):
        assert path(plan, a, b)[-1] == b


def test_leaf_spine_goes_leaf_spine_leaf_and_names_its_parts():
    topology = Topology.from_dict(builders.leaf_spine(spines=2, leaves=3, hosts_per_leaf=2))
    assert list(topology.nodes)[:5] == ["spine1", "spine2", "leaf1", "leaf2", "leaf3"]
    assert [link.bridge for link in topology.nodes["leaf2"].links] == ["lan2", "l2s1", "l2s2"]
    assert topology.bridges["lan2"].subnet == ("10.40.2.0/24",)
    assert topology.bridges["l1s1"].subnet == ("10.41.0.0/30",)
    plan = plan_of(topology)
    assert path(plan, "h1", "h6") == ["h1", "leaf1", "spine1", "leaf3", "h6"]
    assert path(plan, "h1", "h2") == ["h1", "h2"]


def test_a_ring_takes_the_shorter_way_round():
    plan = plan_of(Topology.from_dict(builders.ring(6, 1)))
    assert path(plan, "h1", "h6") == ["h1", "r1", "r6", "h6"]


def test_generate_table_in_toml_with_more_nodes_of_its_own():
    topology = Topology.from_toml(
        '[generate]\nshape = "leaf-spine"\nspines = 2\nleaves = 4\nhosts_per_leaf = 2\nmemory = 160\n'
        '[nodes.probe]\ngateway = "auto"\nlinks = [{ bridge = "lan1" }]\n'
    )
    assert len(topology.nodes) == 2 + 4 * 3 + 1
    assert topology.nodes["probe"].links[0].bridge == "lan1"
    assert {n.memory for n in topology.nodes.values()} == {160, 128}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"shape": "torus"}, "shape 'torus' is not accepted: use one of line, ring, star, mesh, leaf-spine"),
        ({"shape": "leaf-spine", "spines": 2}, "shape 'leaf-spine' needs leaves = N"),
        ({"shape": "leaf-spine", "spines": 0, "leaves": 2},
         "spines=0 is not accepted: give a whole number from 1 to 16"),
        ({"shape": "leaf-spine", "spines": 2, "leaves": 65},
         "leaves=65 is not accepted: give a whole number from 1 to 64"),
        ({"shape": "leaf-spine", "spines": 2, "leaves": 2, "hosts_per_leaf": -1}, "hosts_per_leaf=-1"),
        ({"shape": "leaf-spine", "spines": 16, "leaves": 64, "hosts_per_leaf": 32},
         "makes 2128 guests: at most 256"),
        ({"shape": "ring", "routers": 2}, "routers=2 is not accepted: give a whole number from 3 to 64"),
        ({"shape": "mesh", "routers": 17}, "routers=17 is not accepted: give a whole number from 2 to 16"),
        ({"shape": "star", "hosts": "4"}, "hosts='4' is not accepted"),
        ({"shape": "line", "routers": True}, "routers=True is not accepted"),
        ({"shape": "line", "routers": 2, "spines": 1}, "key 'spines' is not accepted for shape 'line'"),
        ({"shape": "line", "routers": 2, "memory": 32},
         "memory=32 is not accepted: give a whole number from 96"),
    ],
)
def test_bad_parameters_are_one_line_config_errors_naming_the_value(table, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as info:
        Topology.from_dict({"generate": table})
    assert "\n" not in str(info.value)


def test_a_name_made_by_generate_given_again_is_refused():
    with pytest.raises(ConfigError, match="node 'h1' is made by \\[generate\\] already"):
        Topology.from_dict({"generate": {"shape": "star", "hosts": 2}, "nodes": {"h1": {}}})


def test_the_leaf_spine_file_of_the_docs_routes_its_extra_host_too():
    topology = Topology.from_toml(LEAF_SPINE_FILE)
    assert len(topology.nodes) == 2 + 4 + 8 + 1
    assert path(plan_of(topology), "probe", "h8") == ["probe", "leaf1", "spine1", "leaf4", "h8"]

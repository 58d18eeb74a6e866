"""Topology as data: loading, checking and drawing (pure logic, no lab)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pytest_netlab import ConfigError
from pytest_netlab.labspec import RouteSpec, Topology

THREE = Path(__file__).parent.parent / "example_tests" / "topologies" / "three_machines.toml"


def test_the_three_machine_file_loads_with_addresses_routes_and_forwarding():
    topology = Topology.from_toml(THREE)
    assert list(topology.bridges) == ["br1", "br2"]
    assert [(n.name, n.role) for n in topology.nodes.values()] == [
        ("h1", "host"), ("rt2", "router"), ("h2", "host"),
    ]
    rt2, h1 = topology.nodes["rt2"], topology.nodes["h1"]
    assert [(link.bridge, link.address) for link in rt2.links] == [
        ("br1", "10.20.10.2/24"), ("br2", "10.20.20.1/24"),
    ]
    assert rt2.forwarding and not h1.forwarding and rt2.routes == ()
    assert h1.routes == (RouteSpec("10.20.20.0/24", "10.20.10.2"),)


def test_mermaid_draws_nodes_bridges_and_labelled_links():
    text = Topology.from_toml(THREE).mermaid()
    assert text.startswith("graph LR\n")
    assert '    n_br1(("br1"))' in text
    assert '    n_rt2{{"rt2 (router)<br/>forwarding"}}' in text
    assert '    n_h1["h1 (host)"]' in text
    assert '    n_rt2 ---|"eth1 10.20.20.1/24"| n_br2' in text


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"nodes": {"h1": {"links": [{"bridge": "br9"}]}}}, "link to bridge 'br9', which is not declared"),
        ({"bridges": {"br1": {}}, "nodes": {"h1": {"role": "switch"}}}, "role 'switch' is not accepted"),
        ({"bridges": {"br1": {}}, "nodes": {"h1": {"links": [{"bridge": "br1", "address": "10.1.1.1"}]}}},
         "address '10.1.1.1' is not accepted"),
        ({"nodes": {"h1": {"routes": [{"to": "nowhere", "via": "10.0.0.1"}]}}}, "route to 'nowhere'"),
        ({"nodes": {"h1": {"colour": "red"}}}, "node 'h1': unknown key 'colour'"),
        ({"links": []}, "topology: unknown key 'links'"),
        ({"nodes": {"1bad": {}}}, "guest name '1bad'"),
        ({"nodes": {"h1": {"forwarding": "yes"}}}, "forwarding 'yes' is not accepted"),
        # the guests' bounds (constants.GUEST_MEMORY_RANGE): refused at load, not at boot
        ({"nodes": {"h1": {"memory": 64}}}, "memory 64 is out of range: give a whole number from 96"),
        ({"nodes": {"h1": {"cpus": 65}}}, "cpus 65 is out of range: give a whole number from 1 to 64"),
    ],
)
def test_bad_topologies_are_refused_with_the_value_named(data, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        Topology.from_dict(data)


def test_bad_toml_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot be read"):
        Topology.from_toml("[nodes.h1\nrole = 'host'\n")


AUTO = THREE.with_name("three_machines_auto.toml")


def test_the_address_plan_file_loads_and_leaves_the_planned_links_to_the_lab():
    topology = Topology.from_toml(AUTO)
    assert topology.bridges["br1"].subnet == ("10.20.10.0/24",)
    assert topology.nodes["h1"].gateway == "auto"
    assert [link.address for node in topology.nodes.values() for link in node.links] == [None] * 4
    assert '    n_br1(("br1<br/>10.20.10.0/24"))' in topology.mermaid()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"bridges": {"br1": {"subnet": "10.20.10.1/24"}}}, "subnet '10.20.10.1/24' of bridge 'br1'"),
        ({"bridges": {"br1": {"subnet": "10.20.0.0/16"}, "br2": {"subnet": "10.20.20.0/24"}}},
         "subnet 10.20.20.0/24 of bridge 'br2' overlaps subnet 10.20.0.0/16 of bridge 'br1'"),
        ({"bridges": {"br1": {"subnet": "10.0.2.0/24"}}}, "overlaps the user-mode NAT network"),
        ({"bridges": {"br1": {"subnet": "10.20.10.0/24"}},
          "nodes": {"h1": {"links": [{"bridge": "br1", "address": "10.9.9.9/24"}]}}},
         "address 10.9.9.9/24 on bridge 'br1' is not inside its subnet 10.20.10.0/24"),
        ({"nodes": {"h1": {"gateway": "everywhere please"}}}, "gateway 'everywhere please' of 'h1'"),
        ({"nodes": {"h1": {"gateway": "rt9"}}}, "node 'h1': gateway 'rt9' is not a node of the topology"),
    ],
)
def test_bad_address_plans_are_refused_with_the_value_named(data, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Topology.from_dict(data)


def test_routes_false_leaves_a_nodes_routes_to_it(netlab):
    topology = Topology.from_toml(
        '[bridges.br1]\nsubnet = "10.20.10.0/24"\n'
        '[nodes.r1]\nrole = "router"\nroutes = false\nlinks = [{ bridge = "br1" }]\n'
        '[nodes.r2]\nrole = "router"\nroutes = true\nlinks = [{ bridge = "br1" }]\n'
        '[nodes.h1]\nroutes = [{ to = "default", via = "10.20.10.1" }]\nlinks = [{ bridge = "br1" }]\n'
    )
    r1, r2, h1 = topology.nodes.values()
    assert (r1.lab_routes, r1.routes, r2.lab_routes, h1.lab_routes) == (False, (), True, True)
    assert h1.routes == (RouteSpec("default", "10.20.10.1"),)
    assert '    n_r1{{"r1 (router)<br/>own routes"}}' in topology.mermaid()
    vms = topology.apply(netlab, start=False)
    assert (vms["r1"].spec.routes, vms["r2"].spec.routes) == (False, True)


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"routes": "no"},
         "node 'h1' routes: 'no' is not accepted: give a list of { to, via } tables, or false"),
        ({"routes": False, "gateway": "auto"},
         "node 'h1': gateway='auto' of 'h1' is a route, and routes=False gives it none"),
    ],
)
def test_bad_routes_are_refused_naming_the_node(node, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Topology.from_dict({"nodes": {"h1": node}})


LINK = {"bridges": {"br1": {}}}


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"links": [{"bridge": "br1", "mtu": 20}]}, "node 'h1' links[0] mtu 20 is out of range"),
        ({"links": [{"bridge": "br1", "up": "no"}]}, "node 'h1' links[0]: up 'no' is not accepted"),
        ({"links": [{"bridge": "br1", "impair": {"delay": 5}}]},
         "node 'h1' links[0] impair: unknown key 'delay'"),
        ({"links": [{"bridge": "br1", "impair": {"reorder_percent": 5}}]},
         "node 'h1' links[0] impair: reorder_percent 5 needs a delay"),
        ({"links": [{"bridge": "br1", "speed": 5}]}, "node 'h1' link: unknown key 'speed'"),
        ({"exec": "ip a"}, "node 'h1' exec: 'ip a' is not accepted: give a list"),
        ({"exec": [""]}, "node 'h1' exec: '' is not accepted"),
        ({"files": {"etc/x": "x"}}, "node 'h1' files: guest path 'etc/x' is not accepted"),
        ({"files": {"/etc/x": "no-such-file"}}, "node 'h1' files: '/etc/x' = 'no-such-file'"),
    ],
)
def test_bad_link_and_start_up_fields_are_refused_naming_table_and_key(node, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Topology.from_dict({**LINK, "nodes": {"h1": node}})


def test_a_bad_field_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "lab.toml"
    path.write_text('[bridges.br1]\n[nodes.h1]\nlinks = [{ bridge = "br1", mtu = "big" }]\n')
    with pytest.raises(ConfigError, match=re.escape(f"{path}: ")) as refused:
        Topology.from_toml(path)
    assert "\n" not in str(refused.value)


def test_files_are_relative_to_the_topology_file_and_exec_keeps_its_order(tmp_path):
    (tmp_path / "x.conf").write_text("x\n")
    (tmp_path / "lab.toml").write_text(
        '[nodes.h1]\nfiles = { "/etc/x.conf" = "x.conf" }\nexec = ["b", "a"]\n'
    )
    node = Topology.from_toml(tmp_path / "lab.toml").nodes["h1"]
    assert node.files == (("/etc/x.conf", tmp_path / "x.conf"),) and node.exec == ("b", "a")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"nodes": {"h1": {"memory": 64}}}, "node 'h1': memory 64 is out of range"),
        ({**LINK, "nodes": {"h1": {"links": [{"bridge": "br1", "mac": "zz"}]}}}, "node 'h1': "),
        ({**LINK, "nodes": {"h1": {"links": [{"bridge": "br1", "model": "ne3000"}]}}}, "node 'h1': "),
        ({"nodes": {"h1": {"routes": [{"to": "default", "via": "nowhere"}]}}}, "node 'h1': "),
        ({"bridges": {"br1": {"address": "10.0.0.1"}}}, "bridge 'br1' address: "),
    ],
)
def test_every_refusal_names_its_table(data, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as refused:
        Topology.from_dict(data)
    assert "\n" not in str(refused.value)

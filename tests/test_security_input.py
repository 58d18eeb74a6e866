"""Hostile input: a topology file or a test's arguments cannot inject commands into a
guest or options into QEMU's command line; refused before anything is made (pure logic)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_netlab import ConfigError, validation
from pytest_netlab.labspec import Topology

INJECTION = "fd00::1%\nNETLAB_EOF\nreboot -f"


def _toml(text: str) -> str:
    return text.replace("INJECTION", INJECTION.replace("\n", "\\n"))


@pytest.mark.parametrize(
    "node",
    [
        'gateway = "INJECTION"\nlinks = [{ bridge = "br1" }]',
        'links = [{ bridge = "br1", address = "INJECTION/64" }]',
        'links = [{ bridge = "br1", address = "fd00::1%eth0/64" }]',
        'links = [{ bridge = "br1" }]\nroutes = [{ to = "fd01::/64", via = "INJECTION" }]',
        'links = [{ bridge = "br1" }]\nroutes = [{ to = "fd01::%x/64", via = "fd00::2" }]',
    ],
)
def test_a_scope_id_in_a_topology_file_is_refused_before_anything_starts(tmp_path: Path, node: str):
    path = tmp_path / "lab.toml"
    path.write_text(_toml(f'[bridges.br1]\nsubnet = "fd00::/64"\n\n[nodes.h1]\n{node}\n'))
    with pytest.raises(ConfigError, match=r"scope id|not accepted") as info:
        Topology.from_toml(path)
    assert "\n" not in str(info.value)


def test_a_scope_id_in_a_bridge_subnet_is_refused(tmp_path: Path):
    path = tmp_path / "lab.toml"
    path.write_text('[bridges.br1]\nsubnet = "fd00::%x/64"\n\n[nodes.h1]\nlinks = [{ bridge = "br1" }]\n')
    with pytest.raises(ConfigError, match="not accepted"):
        Topology.from_toml(path)


@pytest.mark.parametrize("value", [INJECTION, "fe80::1%eth0", "10.0.0.1\n", "fd00::1%"])
def test_addresses_with_scope_ids_or_control_characters_are_refused(value: str):
    for parse in (validation.ip_address, validation.ip_network):
        with pytest.raises(ConfigError, match="no scope id"):
            parse(value)
    with pytest.raises(ConfigError, match="no scope id"):
        validation.ip_interface(value + "/64")


def test_a_lab_refuses_an_injected_gateway_before_making_its_namespace(netlab_factory):
    lab = netlab_factory()
    with pytest.raises(ConfigError, match="gateway"):
        lab.vm("h1", gateway=INJECTION)
    assert not lab.namespace.created

"""Hostile input: a topology file or a test's arguments cannot inject commands into a
guest or options into QEMU's command line; refused before anything is made (pure logic)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pytest_netlab import ConfigError, validation
from pytest_netlab.bringup import drive_option
from pytest_netlab.labspec import Topology
from pytest_netlab.qemu import find_qemu, option_value

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


def test_a_comma_in_a_disk_path_cannot_add_drive_options(tmp_path: Path):
    """``snapshot=off`` in a file name would make QEMU write to the user's image: QEMU
    must see one file name and keep the overlay (its backing file is the whole path)."""
    disk = tmp_path / "disk,snapshot=off,b.img"
    disk.write_bytes(b"\0" * 65536)
    option = drive_option(disk).replace("if=virtio", "if=none")  # no machine to plug it in
    commands = [{"execute": "qmp_capabilities"}, {"execute": "query-block"}, {"execute": "quit"}]
    proc = subprocess.run(
        [find_qemu(), "-machine", "none", "-nodefaults", "-display", "none",
         "-drive", option, "-qmp", "stdio"],
        input="".join(json.dumps(c) + "\n" for c in commands), capture_output=True, text=True,
        timeout=30, check=True,
    )
    (blocks,) = [m["return"] for m in map(json.loads, proc.stdout.splitlines()) if m.get("return")]
    assert blocks[0]["inserted"]["backing_file"] == str(disk)  # an overlay on the whole path
    assert option_value("a,b") == "a,,b"

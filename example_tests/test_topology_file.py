"""The guide's three-machine set-up from a topology file, and its diagram."""

from pathlib import Path

from pytest_netlab.labspec import Topology

TOPOLOGY = Path(__file__).parent / "topologies" / "three_machines.toml"


def test_h1_reaches_h2_through_rt2_from_a_topology_file(netlab, tmp_path):
    topology = Topology.from_toml(TOPOLOGY)
    (tmp_path / "lab.mmd").write_text(topology.mermaid())
    vms = topology.apply(netlab)

    reply = vms["h1"].ping("10.20.20.2", count=2, timeout=5)
    assert reply, reply.output
    assert "10.20.20.2" in vms["h1"].ssh("ip route get 10.20.20.2").stdout
    assert vms["rt2"].ssh("sysctl -n net.ipv4.ip_forward").stdout == "1\n"

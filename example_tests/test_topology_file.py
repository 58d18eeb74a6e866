"""The guide's three-machine set-up from a topology file, and its diagram."""

from pathlib import Path

from pytest_netlab.labspec import Topology

TOPOLOGY = Path(__file__).parent / "topologies" / "three_machines.toml"


# --8<-- [start:from-toml]
def test_h1_reaches_h2_through_rt2_from_a_topology_file(netlab, tmp_path):
    topology = Topology.from_toml(TOPOLOGY)
    (tmp_path / "lab.mmd").write_text(topology.mermaid())
    vms = topology.apply(netlab)

    reply = vms["h1"].ping("10.20.20.2", count=2, timeout=5)
    assert reply, reply.output
    assert vms["h1"].ssh("ip route show 10.20.20.0/24").stdout.split() == [
        "10.20.20.0/24", "via", "10.20.10.2", "dev", "eth0"  # the file's route, through rt2
    ]
    assert vms["rt2"].ssh("sysctl -n net.ipv4.ip_forward").stdout == "1\n"
# --8<-- [end:from-toml]


def test_three_machines_from_a_file_with_an_address_plan(netlab):
    vms = Topology.from_toml(Path(__file__).parent / "topologies" / "three_machines_auto.toml").apply(netlab)

    h1, rt2, h2 = vms["h1"], vms["rt2"], vms["h2"]
    assert (rt2.address("br1"), rt2.address("br2")) == ("10.20.10.1", "10.20.20.1")
    assert (h1.address("br1"), h2.address("br2")) == ("10.20.10.2", "10.20.20.2")
    assert h1.ping("h2") and h2.ping("h1-br1")

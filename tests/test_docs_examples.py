"""The examples of docs/helpers.md and docs/topology.md, run in real guests.

The pages include the lines between ``# --8<-- [start:NAME]`` and ``# --8<-- [end:NAME]``
(pymdownx.snippets), so what a reader sees is what CI runs. One lab of three guests
covers the helpers; the impairment example adds a second of two.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pytest_netlab import CommandError, ConfigError, TransferError
from pytest_netlab.labspec import Topology
from pytest_netlab.netns import host_has_qdisc

ROOT = Path(__file__).parent.parent
THREE_MACHINES = ROOT / "example_tests" / "topologies" / "three_machines.toml"


def test_helpers_in_one_lab_h1_rt_h2(netlab, tmp_path):
    # --8<-- [start:addresses]
    br1 = netlab.bridge("br1", subnet="10.20.10.0/24")  # or ["10.20.10.0/24", "fd00:20:10::/64"]
    br2 = netlab.bridge("br2", subnet="10.20.20.0/24")
    h1 = netlab.vm("h1", nics=[br1], gateway="auto")  # default route via the router on br1
    rt = netlab.router("rt", nics=[br1, br2])  # routers first: rt gets 10.20.10.1
    h2 = netlab.vm("h2", nics=[br2.nic(address="10.20.20.50/24")], gateway="auto")  # explicit
    netlab.start()
    assert h1.address(br1) == "10.20.10.2"
    assert h1.addresses == {"eth0": ["10.20.10.2/24"]}
    assert rt.addresses == {"eth0": ["10.20.10.1/24"], "eth1": ["10.20.20.1/24"]}
    assert h1.ping("rt")  # every guest is named in /etc/hosts
    # --8<-- [end:addresses]
    h1.ssh("ip neigh flush dev eth0")  # so that the capture sees h1 ask for rt's MAC again

    # --8<-- [start:capture]
    with netlab.capture(br1) as cap:
        assert h1.ping("rt", count=2)
    requests = cap.arp_requests(sender_ip=h1.address(), target_ip=rt.address(br1))
    assert requests and all(p.broadcast for p in requests)
    assert len(cap.icmp(src_ip=h1.address(), dst_ip=rt.address(br1))) == 2
    assert cap.path.exists()  # the pcap file, for Wireshark
    # --8<-- [end:capture]

    # --8<-- [start:ssh]
    result = h1.ssh("ip -br addr show eth0")  # raises CommandError on a non-zero status
    assert "10.20.10.2/24" in result.stdout
    result = h1.ssh("ping -c1 -W1 10.20.20.50", check=False)  # rt does not forward yet
    assert result.status == 1 and "0 received" in result.stdout  # also .stderr, .duration
    assert h1.ssh("tr a-z A-Z", stdin="hello").stdout == "HELLO"  # input for the command
    with pytest.raises(CommandError, match="exited with status 3"):
        h1.ssh("exit 3")
    # --8<-- [end:ssh]

    # --8<-- [start:wait]
    rt.enable_forwarding()
    h1.wait_until(lambda: h1.ping("h2"))  # a callable: until it returns a true value
    h2.ssh("(sleep 1; ip addr add 10.20.20.5/24 dev eth0) >/dev/null 2>&1 &")
    h2.wait_until("ip -4 addr show eth0 | grep -q 10.20.20.5", timeout=30, interval=0.5)
    h2.ssh("sleep 2 >/dev/null 2>&1 &")
    h2.wait_until_fails("pidof sleep")  # until it exits non-zero
    # --8<-- [end:wait]

    # --8<-- [start:files]
    (tmp_path / "motd").write_text("welcome to h1\n")
    h1.put(tmp_path / "motd", "/etc/motd", mode=0o644)
    assert h1.ssh("stat -c %a /etc/motd").stdout == "644\n"
    back = h1.get("/etc/motd", tmp_path / "motd.back")
    assert back.read_text() == "welcome to h1\n"
    # --8<-- [end:files]

    # --8<-- [start:transfer-errors]
    with pytest.raises(TransferError) as failed:
        h1.get("/no/such/file", tmp_path / "x")
    assert str(failed.value) == f"h1: get /no/such/file -> {tmp_path}/x: /no/such/file: No such file"
    assert failed.value.path == "/no/such/file"
    with pytest.raises(TransferError) as failed:
        h1.get("/etc/motd", tmp_path / "nodir" / "f")
    assert str(failed.value) == (
        f"h1: get /etc/motd -> {tmp_path}/nodir/f: {tmp_path}/nodir: no such local directory"
    )
    # --8<-- [end:transfer-errors]
    assert not (tmp_path / "x").exists()  # a failed get leaves no empty file behind

    # --8<-- [start:set-link]
    rt.set_link("eth1", up=False)  # or the index 1, or its TAP's name
    rt.wait_until("test $(cat /sys/class/net/eth1/carrier) = 0")
    assert not h1.ping("h2")
    rt.set_link("eth1", up=True)
    h1.wait_until(lambda: h1.ping("h2"))
    # --8<-- [end:set-link]


def test_impairment_before_and_after_start(netlab, monkeypatch):
    br1 = netlab.bridge("br1", subnet="10.20.10.0/24")
    h1 = netlab.vm("h1", nics=[br1])
    h2 = netlab.vm("h2", nics=[br1])
    # --8<-- [start:impair]
    h2.impair(0, delay_ms=50)  # before start(): from the first packet
    netlab.start()
    assert h1.ping("h2", count=3).rtt_min >= 50

    h1.impair("eth0", delay_ms=100, jitter_ms=10, loss_percent=1, rate_kbit=10_000)
    assert h1.ping("h2", count=3, timeout=5).rtt_min >= 50 + 100 - 10

    shaped = h1.impair("eth0", rate_kbit=800, where="tap")  # only the traffic to h1
    assert shaped.where == "tap"
    assert "qdisc tbf" in netlab.run("tc qdisc show dev vport11").stdout  # h1's TAP

    h1.impair("eth0")  # all defaults: removed
    h2.impair(0)
    assert h1.ping("h2", count=3).rtt_min < 50
    # --8<-- [end:impair]
    assert "qdisc tbf" not in netlab.run("tc qdisc show dev vport11").stdout
    if host_has_qdisc("netem"):
        # here delay goes to the TAP: it delays what reaches h1, so h1's pings' replies
        assert h1.impair("eth0", delay_ms=50, where="tap").where == "tap"
        assert "qdisc netem" in netlab.run("tc qdisc show dev vport11").stdout
        assert h1.ping("h2", count=3).rtt_min >= 50
        h1.impair("eth0")
        # and the refusal below is what a host without sch_netem answers
        monkeypatch.setattr("pytest_netlab.guest.host_has_qdisc", lambda kind: kind != "netem")
    # --8<-- [start:impair-refused]
    with pytest.raises(ConfigError) as refused:
        h1.impair("eth0", delay_ms=50, where="tap")  # on a host without sch_netem
    assert str(refused.value) == (
        "where='tap' needs the netem qdisc, which this host's kernel lacks (no sch_netem): "
        "use where='guest' (shapes traffic from the guest) instead"
    )
    # --8<-- [end:impair-refused]


def test_topology_as_a_dict(netlab):
    # --8<-- [start:topology-dict]
    topology = Topology.from_dict({
        "bridges": {"lan": {"subnet": "10.40.0.0/24"}},
        "nodes": {
            "a": {"links": [{"bridge": "lan"}]},
            "b": {"links": [{"bridge": "lan", "address": "10.40.0.9/24"}]},
        },
    })
    vms = topology.apply(netlab)
    assert vms["a"].address("lan") == "10.40.0.1"
    assert vms["a"].ping("b")
    # --8<-- [end:topology-dict]


def test_topology_errors_name_the_node_and_value():
    # --8<-- [start:topology-refused]
    with pytest.raises(ConfigError) as refused:
        Topology.from_dict({"nodes": {"h1": {"links": [{"bridge": "br9"}]}}})
    assert str(refused.value) == (
        "node 'h1': link to bridge 'br9', which is not declared (bridges: none); add [bridges.br9]"
    )
    # --8<-- [end:topology-refused]


def test_the_mermaid_picture_in_the_docs_is_the_three_machines_file():
    page = (ROOT / "docs" / "topology.md").read_text()
    shown = re.search(r"```mermaid\n(.*?)```", page, re.S)
    assert shown, "docs/topology.md shows no mermaid picture"
    assert Topology.from_toml(THREE_MACHINES).mermaid().strip() == shown.group(1).strip()


def _code_blocks(language: str) -> list[tuple[str, str]]:
    blocks = []
    for page in sorted((ROOT / "docs").rglob("*.md")):
        text = page.read_text()
        blocks += [(page.name, b) for b in re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)]
    return blocks


@pytest.mark.parametrize("language", ["python", "toml"])
def test_every_code_example_in_the_docs_is_included_from_a_file_that_runs(language):
    blocks = _code_blocks(language)
    assert blocks
    for page, block in blocks:
        lines = [line for line in block.splitlines() if line.strip()]
        assert all(line.startswith("--8<-- ") for line in lines), (
            f"docs/{page} has a {language} example written by hand, not included from a test:\n{block}"
        )


FILE_LAB = """
[bridges.br1]
[bridges.br2]
[bridges.br3]

[nodes.h1]
links = [{ bridge = "br1", address = "10.20.10.1/24" }, { bridge = "br3" }]
routes = [{ to = "10.20.20.0/24", via = "10.20.10.2" }]

[nodes.rt2]
role = "router"
forwarding = true
links = [{ bridge = "br1", address = "10.20.10.2/24" }, { bridge = "br2", address = "10.20.20.1/24" }]

[nodes.h2]
forwarding = true
links = [{ bridge = "br2", address = "10.20.20.2/24" }]
routes = [{ to = "default", via = "10.20.20.1" }]
"""


def routes_by_hand(netlab):
    # --8<-- [start:routes]
    br1, br2, br3 = netlab.bridge("br1"), netlab.bridge("br2"), netlab.bridge("br3")  # no subnets
    h1 = netlab.vm("h1", nics=[br1.nic(address="10.20.10.1/24"), br3])
    rt2 = netlab.router("rt2", nics=[br1.nic(address="10.20.10.2/24"), br2.nic(address="10.20.20.1/24")])
    h2 = netlab.vm("h2", nics=[br2.nic(address="10.20.20.2/24")])
    netlab.start()  # the addresses are set, and the names in /etc/hosts
    h1.interface_up(br3)  # no address: the lab left it down
    h1.set_route("10.20.20.0/24", via="10.20.10.2")
    h2.set_route("default", via="10.20.20.1")  # replaces a route to the same network
    rt2.enable_forwarding(ipv6=True)  # IPv4 always, IPv6 if asked
    h2.enable_forwarding(ipv6=True)  # any guest may forward
    assert h1.ping("h2")  # through rt2
    # --8<-- [end:routes]
    return {"h1": h1, "rt2": rt2, "h2": h2}


def _what_the_guest_has(vm) -> dict[str, object]:
    links = json.loads(vm.ssh("ip -j link show").stdout)
    addresses = json.loads(vm.ssh("ip -j addr show").stdout)
    return {
        "up": sorted((k["ifname"], "UP" in k["flags"]) for k in links if k["ifname"].startswith("eth")),
        "addresses": sorted(
            (a["ifname"], i["local"], i["prefixlen"])
            for a in addresses if a["ifname"] != "mgmt0" for i in a["addr_info"] if i["scope"] != "link"
        ),
        "routes": sorted(r for r in vm.ssh("ip route show").stdout.splitlines() if "mgmt0" not in r),
        "forwarding": vm.ssh("sysctl -n net.ipv4.ip_forward net.ipv6.conf.all.forwarding").stdout.split(),
        "hosts": vm.ssh("sed -n '/# netlab/,$p' /etc/hosts").stdout,
    }


def test_a_file_and_the_python_api_set_the_same_addresses_routes_and_forwarding(netlab, netlab_factory):
    from_file = Topology.from_toml(FILE_LAB).apply(netlab)
    with netlab_factory() as other:
        by_hand = {name: _what_the_guest_has(vm) for name, vm in routes_by_hand(other).items()}
    file_side = {name: _what_the_guest_has(vm) for name, vm in from_file.items()}
    assert file_side == by_hand
    h1, rt2, h2 = file_side["h1"], file_side["rt2"], file_side["h2"]
    assert h1["up"] == [("eth0", True), ("eth1", True)]  # eth1: no address, up all the same
    assert ("eth0", "10.20.10.1", 24) in h1["addresses"]
    assert any(r.startswith("10.20.20.0/24 via 10.20.10.2 dev eth0") for r in h1["routes"])
    assert any(r.startswith("default via 10.20.20.1 dev eth0") for r in h2["routes"])
    assert rt2["forwarding"] == h2["forwarding"] == ["1", "1"] and h1["forwarding"] == ["0", "0"]
    assert "10.20.20.2\th2" in str(h1["hosts"])
    assert from_file["h1"].ping("10.20.20.2")
    from_file["h1"].set_route("10.20.20.0/24", via="10.20.10.2")  # again: replaced, not refused
    assert _what_the_guest_has(from_file["h1"]) == h1

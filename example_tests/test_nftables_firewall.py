"""nftables on a router: fw forwards between h1's LAN and h2's, and its forward chain lets
h1 reach h2's TCP port 8080 but not its SSH port 22. Checked with a real TCP client in h1
(OpenBSD netcat) and with the counters of the firewall's rules. See
docs/scenarios/nftables-firewall.md."""

from __future__ import annotations

import json
from pathlib import Path

from guest_packages import PACKAGES

# --8<-- [start:ruleset]
RULESET = """\
table inet filter {{
  chain forward {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    ip saddr {h1} ip daddr {h2} tcp dport 8080 counter accept comment "web"
    ip saddr {h1} ip daddr {h2} tcp dport 22 counter drop comment "ssh"
  }}
}}
"""
# --8<-- [end:ruleset]


# --8<-- [start:helpers]
def connects(vm, host: str, port: int) -> bool:
    """Whether a TCP connection from *vm* to *host*:*port* is accepted (nc -z: connect,
    send nothing, close; -w 5: give up after 5 s without an answer)."""
    return vm.ssh(f"nc -z -w 5 {host} {port}", check=False).ok


def counters(router) -> dict[str, int]:
    """Packets counted by each commented rule of the forward chain."""
    shown = json.loads(router.ssh("nft -j list chain inet filter forward").stdout)
    rules = [item["rule"] for item in shown["nftables"] if "rule" in item]
    return {rule["comment"]: next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
            for rule in rules if "comment" in rule}
# --8<-- [end:helpers]


def test_the_firewall_lets_web_through_and_stops_ssh(netlab, tmp_path: Path) -> None:
    # --8<-- [start:lab]
    image = netlab.image(packages=PACKAGES)
    lan1 = netlab.bridge("lan1", subnet="10.3.1.0/24")
    lan2 = netlab.bridge("lan2", subnet="10.3.2.0/24")
    fw = netlab.router("fw", nics=[lan1, lan2], image=image)
    h1 = netlab.vm("h1", nics=[lan1], gateway="auto", image=image)
    h2 = netlab.vm("h2", nics=[lan2], gateway="auto", image=image)
    netlab.start()
    fw.enable_forwarding()
    h2.daemon("nc -lk 8080", name="web")  # a TCP server on 8080; h2's SSH server is on 22
    h2.wait_until("ss -Hltn 'sport = :8080' | grep -q LISTEN")
    # open without the firewall (again if slow: the first packets wait for ARP on two links)
    h1.wait_until(lambda: connects(h1, "h2", 8080) and connects(h1, "h2", 22), timeout=60)
    # --8<-- [end:lab]

    # --8<-- [start:firewall]
    (tmp_path / "fw.nft").write_text(RULESET.format(h1=h1.address(), h2=h2.address()))
    fw.put(tmp_path / "fw.nft", "/etc/nftables.conf")
    fw.ssh("nft -f /etc/nftables.conf")
    assert counters(fw) == {"web": 0, "ssh": 0}

    h1.wait_until(lambda: connects(h1, "h2", 8080), timeout=60)
    assert not connects(h1, "h2", 22)  # dropped: no answer, nc gives up
    seen = counters(fw)
    assert seen["web"] >= 1  # the SYN (the rest of the connection is "established")
    assert seen["ssh"] >= 1  # the SYN, and its retransmissions
    assert not connects(h2, "h1", 22)  # nothing else is forwarded (policy drop)
    # --8<-- [end:firewall]

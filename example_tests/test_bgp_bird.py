"""eBGP with BIRD 2: routers r1 (AS 65001) and r2 (AS 65002) on a shared link, each with
a LAN behind it. Each announces its LAN's prefix, learns the other's, and the hosts on
the two LANs reach each other. See docs/scenarios/bgp-bird.md."""

from __future__ import annotations

import json
from pathlib import Path

from guest_packages import PACKAGES

# --8<-- [start:config]
BIRD_CONF = """\
router id {router_id};
protocol device {{ }}
protocol direct {{ ipv4; interface "eth0"; }}        # the LAN, to announce
protocol kernel {{ ipv4 {{ export where source = RTS_BGP; }}; }}  # learnt routes to the kernel
protocol bgp peer {{
  local {address} as {asn};
  neighbor {peer} as {peer_asn};
  connect retry time 5;  # if the peer was not listening yet: try again soon (default 120 s)
  ipv4 {{ import all; export where source = RTS_DEVICE; }};
}}
"""
# --8<-- [end:config]


def test_two_ases_learn_each_others_lan(netlab, tmp_path: Path) -> None:
    # --8<-- [start:lab]
    bird = netlab.image(packages=PACKAGES)
    lan1 = netlab.bridge("lan1", subnet="10.2.1.0/24")
    lan2 = netlab.bridge("lan2", subnet="10.2.2.0/24")
    wan = netlab.bridge("wan", subnet="10.2.0.0/24")
    # eth0: the LAN, eth1: the peer; routes=False: the routes between the LANs are BGP's
    r1 = netlab.router("r1", nics=[lan1, wan], image=bird, routes=False)
    r2 = netlab.router("r2", nics=[lan2, wan], image=bird, routes=False)
    h1 = netlab.vm("h1", nics=[lan1], gateway="auto", image=bird)
    h2 = netlab.vm("h2", nics=[lan2], gateway="auto", image=bird)
    netlab.start()
    # --8<-- [end:lab]

    # --8<-- [start:start-bird]
    ases = {r1: 65001, r2: 65002}
    for router, peer in ((r1, r2), (r2, r1)):
        (tmp_path / "bird.conf").write_text(BIRD_CONF.format(
            router_id=router.address(wan), address=router.address(wan), asn=ases[router],
            peer=peer.address(wan), peer_asn=ases[peer]))
        router.put(tmp_path / "bird.conf", "/etc/bird/bird.conf")
        router.enable_forwarding()
        router.ssh("mkdir -p /run/bird")  # its control socket, for birdc
        router.daemon("bird -f -c /etc/bird/bird.conf", name="bird")  # -f: in the foreground
    # --8<-- [end:start-bird]

    # --8<-- [start:learnt]
    for router in (r1, r2):
        router.wait_until("birdc show protocols peer | grep -q Established", timeout=120)
    for router, peer, far_lan in ((r1, r2, lan2), (r2, r1, lan1)):
        prefix = str(far_lan.subnets[0])
        router.wait_until(f"ip route show {prefix} proto bird | grep -q via", timeout=60)
        learnt = router.ssh(f"birdc show route for {prefix} all").stdout
        assert f"BGP.as_path: {ases[peer]}\n" in learnt  # announced by the peer's AS
        assert f"via {peer.address(wan)} on eth1" in learnt
        kernel = json.loads(router.ssh(f"ip -j route show {prefix} proto bird").stdout)
        assert [r["gateway"] for r in kernel] == [peer.address(wan)]  # installed in the kernel
    assert h1.ping(h2.address(), count=3)
    assert h2.ping(h1.address(), count=3)
    # --8<-- [end:learnt]

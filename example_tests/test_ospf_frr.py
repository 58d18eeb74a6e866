"""OSPF with FRR: a triangle of routers r1-r2-r3, a host behind r1 and one behind r3.
The adjacencies reach Full, h1 reaches h3 over the direct link r1-r3; with that link's
cable pulled the traffic goes round through r2, and comes back to the direct link when
the cable is plugged in again. See docs/scenarios/ospf-frr.md."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from guest_packages import PACKAGES

# --8<-- [start:config]
FRR_CONF = """\
frr defaults traditional
hostname {name}
router ospf
 ospf router-id {router_id}
"""
LAN = """\
interface {nic}
 ip ospf area 0
 ip ospf passive
"""
TRANSIT = """\
interface {nic}
 ip ospf area 0
 ip ospf network point-to-point
 ip ospf hello-interval 1
 ip ospf dead-interval 4
"""


def frr_conf(router, lans, transits) -> str:
    """OSPF on the router's LANs (passive: no neighbour there) and on its links to the
    other routers, with 1 s hellos: a dead neighbour is noticed in 4 s."""
    return (FRR_CONF.format(name=router.name, router_id=router.address(transits[0]))
            + "".join(LAN.format(nic=f"eth{router.nic_index(b)}") for b in lans)
            + "".join(TRANSIT.format(nic=f"eth{router.nic_index(b)}") for b in transits))
# --8<-- [end:config]


# --8<-- [start:helpers]
def full_neighbours(router) -> set[str]:
    """The router IDs of the neighbours whose adjacency is Full."""
    shown = json.loads(router.ssh("vtysh -c 'show ip ospf neighbor json'").stdout)
    return {rid for rid, adjacencies in shown.get("neighbors", {}).items()
            if any(a.get("converged") == "Full" for a in adjacencies)}


def path_is(vm, destination: str, expected: list[str]) -> bool:
    """Whether traceroute from *vm* sees the hops *expected* on the way to *destination*
    (an ``AssertionError`` naming the hops it saw if not)."""
    out = vm.ssh(f"traceroute -n -q 1 -w 2 -m 4 {destination}").stdout
    seen = [line.split()[1] for line in out.splitlines()[1:]]  # "*": a hop that did not answer
    assert seen == expected, f"traceroute {destination}: {seen}, not {expected}"
    return True
# --8<-- [end:helpers]


def test_ospf_reroutes_around_a_broken_link(netlab, tmp_path: Path) -> None:
    # --8<-- [start:lab]
    frr = netlab.image(packages=PACKAGES)  # built once, cached, shared by workers
    lan1 = netlab.bridge("lan1", subnet="10.1.1.0/24")
    lan3 = netlab.bridge("lan3", subnet="10.1.3.0/24")
    r1r2 = netlab.bridge("r1r2", subnet="10.0.12.0/24")
    r2r3 = netlab.bridge("r2r3", subnet="10.0.23.0/24")
    r1r3 = netlab.bridge("r1r3", subnet="10.0.13.0/24")
    # routes=False: addresses from the lab, every route from OSPF (no static ones)
    r1 = netlab.router("r1", nics=[lan1, r1r2, r1r3], image=frr, routes=False)
    r2 = netlab.router("r2", nics=[r1r2, r2r3], image=frr, routes=False)
    r3 = netlab.router("r3", nics=[lan3, r2r3, r1r3], image=frr, routes=False)
    h1 = netlab.vm("h1", nics=[lan1], gateway="auto", image=frr)
    h3 = netlab.vm("h3", nics=[lan3], gateway="auto", image=frr)
    links = {r1: ([lan1], [r1r2, r1r3]), r2: ([], [r1r2, r2r3]), r3: ([lan3], [r2r3, r1r3])}
    netlab.start()
    # --8<-- [end:lab]

    # --8<-- [start:start-frr]
    def start_frr(router) -> None:
        (tmp_path / f"{router.name}.conf").write_text(frr_conf(router, *links[router]))
        router.put(tmp_path / f"{router.name}.conf", "/etc/frr/frr.conf")
        router.ssh("sed -i 's/^ospfd=no/ospfd=yes/' /etc/frr/daemons")
        router.enable_forwarding()
        router.ssh("/usr/lib/frr/frrinit.sh start")  # watchfrr starts the daemons, returns

    with ThreadPoolExecutor() as pool:  # the three routers at once
        list(pool.map(start_frr, links))
    # --8<-- [end:start-frr]

    # --8<-- [start:converged]
    ids = {r: r.address(transits[0]) for r, (_, transits) in links.items()}
    for router in links:  # each router is Full with the two others
        others = {ids[r] for r in links if r is not router}
        router.wait_until(lambda router=router, others=others: full_neighbours(router) == others,
                          timeout=120)
    r1.wait_until(f"ip route show proto ospf | grep -q '^{lan3.subnets[0]} '", timeout=60)  # from r3
    assert r1.ssh("ip route show proto boot").stdout == ""  # routes=False: none of the lab's
    h1.wait_until(lambda: h1.ping(h3.address()), timeout=120)
    direct = [r1.address(lan1), r3.address(r1r3), h3.address()]
    h1.wait_until(lambda: path_is(h1, h3.address(), direct), timeout=60)
    # --8<-- [end:converged]

    # --8<-- [start:reroute]
    r1.set_link(r1r3, up=False)  # pull the cable of r1's NIC on r1-r3
    r3.wait_until(lambda: ids[r1] not in full_neighbours(r3), timeout=60)  # the dead timer
    around = [r1.address(lan1), r2.address(r1r2), r3.address(r2r3), h3.address()]
    h1.wait_until(lambda: path_is(h1, h3.address(), around), timeout=120)
    assert h1.ping(h3.address(), count=3)
    assert json.loads(r1.ssh(f"ip -j route get {h3.address()}").stdout)[0]["gateway"] == r2.address(r1r2)

    r1.set_link(r1r3, up=True)  # plug it back in: the direct path returns
    r1.wait_until(lambda: full_neighbours(r1) == {ids[r2], ids[r3]}, timeout=120)
    h1.wait_until(lambda: path_is(h1, h3.address(), direct), timeout=120)
    # --8<-- [end:reroute]

"""Guests on a package image: Debian's nftables and iperf3 in guests that keep the whole
harness (ethN names, planned addresses, SSH, put/get, daemons). See docs/package-images.md.

The image is built once (a minute or two) and cached; later runs find it at once.
"""

from __future__ import annotations

from pathlib import Path

# the package set of every example test that needs Debian software: one list, one image
from guest_packages import PACKAGES

FRR_CONF = """\
frr defaults traditional
interface eth0
 ip ospf network point-to-point
 ip ospf hello-interval 1
 ip ospf dead-interval 4
router ospf
 ospf router-id {router_id}
 network 10.40.0.0/24 area 0
"""


def test_nftables_and_iperf3_from_debian_packages(netlab, tmp_path: Path) -> None:
    # --8<-- [start:lab]
    image = netlab.image(packages=PACKAGES)  # built once, cached, shared by workers
    lan = netlab.bridge("lan", subnet="10.40.0.0/24")
    fw = netlab.router("fw", nics=[lan], image=image)  # routers first: fw is 10.40.0.1
    h1 = netlab.vm("h1", nics=[lan], image=image)
    netlab.start()
    assert "nftables" in fw.ssh("nft --version").stdout
    assert "iperf 3" in h1.ssh("iperf3 --version").stdout
    # --8<-- [end:lab]

    # the harness works as on the default image: ethN names, planned addresses, names
    assert fw.addresses == {"eth0": ["10.40.0.1/24"]}
    assert "10.40.0.2/24" in h1.ssh("ip -br addr show eth0").stdout
    assert h1.ping("fw")

    # --8<-- [start:daemon]
    # count what reaches iperf3's port, start its server as a daemon, measure from h1
    fw.ssh("nft add table inet lab; "
           "nft add chain inet lab input '{ type filter hook input priority 0; }'; "
           "nft add rule inet lab input tcp dport 5201 counter")
    fw.daemon("iperf3 -s", name="iperf3")  # output in /var/log/netlab/iperf3.log
    fw.wait_until("ss -Hltn 'sport = :5201' | grep -q LISTEN")  # listening: no race
    assert "receiver" in h1.ssh("iperf3 -c fw -t 1").stdout
    counter = fw.ssh("nft list chain inet lab input").stdout
    assert "packets 0 " not in counter and "counter packets" in counter
    # --8<-- [end:daemon]
    assert "Server listening on 5201" in fw.ssh("cat /var/log/netlab/iperf3.log").stdout
    fw.stop_daemon("iperf3")
    fw.wait_until_fails("pidof iperf3")

    # FRR: both guests speak OSPF over the LAN; the adjacency comes up
    for router in (fw, h1):
        # the router ID by hand: FRR would take the highest address, mgmt0's, the same in
        # every guest
        (tmp_path / "frr.conf").write_text(FRR_CONF.format(router_id=router.address(lan)))
        # --8<-- [start:frr]
        router.ssh("sed -i 's/^ospfd=no/ospfd=yes/' /etc/frr/daemons")
        router.put(tmp_path / "frr.conf", "/etc/frr/frr.conf")
        router.ssh("/usr/lib/frr/frrinit.sh start")  # watchfrr starts the daemons, returns
        # --8<-- [end:frr]
    fw.wait_until("vtysh -c 'show ip ospf neighbor' | grep -q Full", timeout=60)
    assert "10.40.0.2" in fw.ssh("vtysh -c 'show ip ospf neighbor'").stdout

    # files in and out, and the root file system is writable (a tmpfs over the image)
    script = tmp_path / "hello.sh"
    script.write_text("#!/bin/sh\necho hello from $(hostname)\n")
    h1.put(script, "/usr/local/bin/hello", mode=0o755)
    assert h1.ssh("hello").stdout == "hello from h1\n"
    assert h1.get("/etc/hostname", tmp_path / "hostname").read_text() == "h1\n"

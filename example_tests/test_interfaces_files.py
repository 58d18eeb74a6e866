"""Document 000, "/etc/network/interfaces": the files given for two and for three machines,
written into the guests verbatim and applied with `ifup -a` (busybox ifupdown), then the
same pings as the scripts."""

from __future__ import annotations

TWO_MACHINES = {
    "h1": """\
auto lo eth0
iface lo inet loopback

iface eth0 inet static
    address 10.20.10.2
    netmask 255.255.255.0
    broadcast 10.20.10.255
    network 10.20.10.0

up route add default gw 10.20.10.1 dev eth0
""",
    "h2": """\
auto lo eth0
iface lo inet loopback

iface eth0 inet static
    address 10.20.10.1
    netmask 255.255.255.0
    broadcast 10.20.10.255
    network 10.20.10.0

up route add default gw 10.20.60.1 dev eth0
""",
}

THREE_MACHINES = {
    "h1": """\
auto lo eth0
iface lo inet loopback

iface eth0 inet static
    address 10.20.10.1
    netmask 255.255.255.0
    broadcast 10.20.10.255
    network 10.20.10.0

up route add default gw 10.20.10.2 dev eth0
""",
    "rt2": """\
auto lo eth0
iface lo inet loopback

iface eth0 inet static
    address 10.20.20.2
    netmask 255.255.255.0
    broadcast 10.20.20.255
    network 10.20.20.0

iface eth1 inet static
    address 10.20.10.2
    netmask 255.255.255.0
    broadcast 10.20.10.255
    network 10.20.10.0
""",
    "h2": """\
auto lo eth0
iface lo inet loopback

iface eth0 inet static
    address 10.20.20.1
    netmask 255.255.255.0
    broadcast 10.20.20.255
    network 10.20.20.0

up route add default gw 10.20.20.2 dev eth0
""",
}


def _install(vm, text):
    vm.ssh("mkdir -p /etc/network && cat > /etc/network/interfaces", stdin=text)


def test_two_machines(netlab):
    br1 = netlab.bridge("br1")
    h1 = netlab.vm("h1", nics=[br1])
    h2 = netlab.vm("h2", nics=[br1])
    netlab.start()
    for vm in (h1, h2):
        _install(vm, TWO_MACHINES[vm.name])

    h1.ssh("ifup -a")
    # h2's file names a gateway outside its own subnet (10.20.60.1): its `up` line fails
    assert h2.ssh("ifup -a", check=False).status != 0
    assert "10.20.10.1/24" in h2.ssh("ip -4 addr show dev eth0").stdout

    assert h1.ping("10.20.10.1")
    assert h2.ping("10.20.10.2")
    assert "default via 10.20.10.1 dev eth0" in h1.ssh("ip route").stdout


def test_three_machines(netlab):
    br1, br2 = netlab.bridge("br1"), netlab.bridge("br2")
    h1 = netlab.vm("h1", nics=[br1])
    # the router's file puts eth0 on h2's subnet (10.20.20.0/24) and eth1 on h1's
    rt2 = netlab.router("rt2", nics=[br2, br1])
    h2 = netlab.vm("h2", nics=[br2])
    netlab.start()
    for vm in (h1, rt2, h2):
        _install(vm, THREE_MACHINES[vm.name])
        vm.ssh("ifup -a")
    rt2.ssh("ifup eth1")  # its file has no `auto eth1`: brought up by name, as by hand
    rt2.enable_forwarding()

    assert h1.ping("10.20.10.2") and h2.ping("10.20.20.2")
    assert h1.ping("10.20.20.1")
    assert h2.ping("10.20.10.1")

"""Document 003, "DHCP on the bridge": dnsmasq bound to the bridge hands out
10.10.10.2-10.10.10.100. It runs only inside the lab namespace (`netlab.spawn`) and is
stopped at teardown; the guests ask with busybox udhcpc."""

from __future__ import annotations

import ipaddress


def test_guests_get_addresses_from_dnsmasq_on_the_bridge(netlab):
    br0 = netlab.bridge("br0")
    br0.add_address("10.10.10.1/24")
    dnsmasq = netlab.spawn(
        ["dnsmasq", "--keep-in-foreground", "--no-daemon", "--no-ping", "--no-resolv",
         "--port=0", "--interface=br0", "--bind-interfaces", "--dhcp-authoritative",
         "--dhcp-range=10.10.10.2,10.10.10.100,255.255.255.0,1h",
         "--dhcp-leasefile=/dev/null"],
        name="dnsmasq",
    )
    h1 = netlab.vm("h1", nics=[br0])
    h2 = netlab.vm("h2", nics=[br0])
    netlab.start()

    addresses = []
    for vm in (h1, h2):
        vm.ssh("udhcpc -i eth0 -n -q -t 10 -T 1")
        address = vm.ssh("ip -4 -o addr show dev eth0").stdout.split()[3]
        addresses.append(ipaddress.ip_interface(address))
    first, last = ipaddress.ip_address("10.10.10.2"), ipaddress.ip_address("10.10.10.100")
    for address in addresses:
        assert first <= address.ip <= last and address.network.prefixlen == 24
    assert addresses[0] != addresses[1]

    assert h1.ping("10.10.10.1") and h2.ping("10.10.10.1")  # the host side
    assert h1.ping(str(addresses[1].ip)) and h2.ping(str(addresses[0].ip))
    assert dnsmasq.poll() is None  # still serving; the lab stops it at teardown

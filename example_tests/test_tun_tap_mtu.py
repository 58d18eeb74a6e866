"""Document 000, "TUN/TAP devices": a TUN device with an address and a route, a TAP device
with its own MAC, alias and MTU, made inside a guest with `ip tuntap`; and an MTU of 1400
set on both ends of a lab link (the guest's eth0 and its TAP on the host side), which
full-size packets then no longer cross."""

from __future__ import annotations

import json


def test_tun_and_tap_devices_in_a_guest(netlab):
    vm = netlab.vm("h1")
    netlab.start()

    vm.ssh("ip tuntap add dev tun0 mode tun && ip link set dev tun0 up && ip addr add 10.0.0.1/24 dev tun0")
    # the address already brings the route to 10.0.0.0/24; the document's extra route goes to a second net
    vm.ssh("ip route add 10.0.1.0/24 dev tun0")
    vm.ssh("ip tuntap add dev tap0 mode tap && ip link set dev tap0 address 52:54:00:aa:bb:cc"
           " && ip link set dev tap0 alias 'My TAP Device' && ip link set dev tap0 mtu 1400"
           " && ip link set dev tun0 alias 'My TUN Device' && ip link set dev tun0 mtu 1400")

    links = {link["ifname"]: link for link in json.loads(vm.ssh("ip -j -d link show type tun").stdout or "[]")}
    links |= {link["ifname"]: link for link in json.loads(vm.ssh("ip -j -d link show").stdout)}
    assert links["tun0"]["linkinfo"]["info_data"]["type"] == "tun"
    assert links["tap0"]["linkinfo"]["info_data"]["type"] == "tap"
    assert links["tap0"]["address"] == "52:54:00:aa:bb:cc"
    assert (links["tap0"]["ifalias"], links["tun0"]["ifalias"]) == ("My TAP Device", "My TUN Device")
    assert links["tap0"]["mtu"] == links["tun0"]["mtu"] == 1400
    assert "dev tun0" in vm.ssh("ip route get 10.0.1.7").stdout
    assert "10.0.0.1" in vm.ssh("ip -4 addr show dev tun0").stdout

    vm.ssh("ip tuntap del dev tap0 mode tap && ip tuntap del dev tun0 mode tun")
    assert "tun0" not in vm.ssh("ls /sys/class/net").stdout


def test_mtu_1400_on_both_ends_of_a_lab_link(netlab):
    br0 = netlab.bridge("br0")
    br0.add_address("10.10.10.1/24")
    vm = netlab.vm("h1", nics=[br0])
    netlab.start()
    vm.ssh("ip addr add 10.10.10.2/24 dev eth0 && ip link set eth0 up")
    assert vm.ping("10.10.10.1", size=1472, dont_fragment=True)  # 1500 bytes on the wire

    # the host end of the link: the lab namespace's TAP on br0, read there, not from the plugin
    (tap,) = [link["ifname"] for link in json.loads(netlab.run("ip -j link show master br0").stdout)]
    vm.ssh("ip link set dev eth0 mtu 1400")
    netlab.run(f"ip link set dev {tap} mtu 1400")
    assert vm.ssh("cat /sys/class/net/eth0/mtu").stdout.strip() == "1400"
    assert json.loads(netlab.run(f"ip -j link show dev {tap}").stdout)[0]["mtu"] == 1400
    assert json.loads(netlab.run("ip -j link show dev br0").stdout)[0]["mtu"] == 1400

    assert vm.ping("10.10.10.1", size=1372, dont_fragment=True)  # exactly 1400
    too_big = vm.ping("10.10.10.1", size=1373, dont_fragment=True, timeout=1)
    assert not too_big and "message too long" in too_big.output.lower(), too_big.output
    # and from the host end: the namespace's side of the link refuses it as well
    assert netlab.run("ping -n -c 1 -W 2 -M do -s 1372 10.10.10.2", check=False).status == 0
    host = netlab.run("ping -n -c 1 -W 2 -M do -s 1373 10.10.10.2", check=False)
    assert host.status != 0 and "message too long" in (host.stdout + host.stderr).lower(), host

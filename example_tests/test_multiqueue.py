"""Document 000, "Enable Multiqueue for VirtIO-net" (`-netdev tap,...,queues=4` with
`-device virtio-net-pci,...,mq=on,vectors=10`) and "Enable Offloading Features"
(`ethtool -K eth0 tx off`, `tso off`), checked from inside the guest."""

from __future__ import annotations


def _channels(vm, iface):
    """`ethtool -l` as {"max": {...}, "current": {...}}."""
    section, channels = None, {"max": {}, "current": {}}
    for line in vm.ssh(f"ethtool -l {iface}").stdout.splitlines():
        if line.startswith("Pre-set maximums"):
            section = "max"
        elif line.startswith("Current hardware settings"):
            section = "current"
        elif section and ":" in line:
            key, value = (part.strip() for part in line.split(":", 1))
            channels[section][key] = value
    return channels


def _msix_vectors(vm, iface):
    """The MSI-X table size in the PCI config space of *iface*'s PCI function."""
    config = bytes.fromhex(vm.ssh(f"od -An -tx1 -v /sys/class/net/{iface}/device/../config").stdout.replace(" ", "").replace("\n", ""))
    pointer = config[0x34]
    while pointer:
        if config[pointer] == 0x11:  # the MSI-X capability
            return (int.from_bytes(config[pointer + 2:pointer + 4], "little") & 0x7FF) + 1
        pointer = config[pointer + 1]
    return 0


def test_four_queue_pairs_that_can_be_switched(netlab):
    br0 = netlab.bridge("br0")
    vm = netlab.vm("h1", nics=[br0.nic(queues=4, vectors=10)])
    netlab.start()

    assert _channels(vm, "eth0")["max"]["Combined"] == "4"
    vm.ssh("ethtool -L eth0 combined 4")
    assert _channels(vm, "eth0")["current"]["Combined"] == "4"
    assert len(vm.ssh("ls -d /sys/class/net/eth0/queues/rx-*").stdout.split()) == 4
    vm.ssh("ethtool -L eth0 combined 1")
    assert _channels(vm, "eth0")["current"]["Combined"] == "1"
    assert len(vm.ssh("ls -d /sys/class/net/eth0/queues/rx-*").stdout.split()) == 1
    # vectors=10: the NIC's PCI function offers ten MSI-X vectors (its config space says so)
    assert _msix_vectors(vm, "eth0") == 10


def test_offloads_switched_with_ethtool(netlab):
    br0 = netlab.bridge("br0")
    vm = netlab.vm("h1", nics=[br0])
    netlab.start()

    def features():
        return dict(
            line.strip().split(": ", 1)[:2] for line in vm.ssh("ethtool -k eth0").stdout.splitlines()[1:]
            if ": " in line
        )

    assert features()["tcp-segmentation-offload"].startswith("on")
    vm.ssh("ethtool -K eth0 tx off")
    vm.ssh("ethtool -K eth0 tso off")
    after = features()
    assert after["tx-checksumming"].startswith("off")
    assert after["tcp-segmentation-offload"].startswith("off")


def test_queues_on_two_cpus(netlab):
    # the documents' multiqueue set-up pays off with a CPU per queue pair
    br0 = netlab.bridge("br0")
    vm = netlab.vm("h1", cpus=2, nics=[br0.nic(queues=2)])
    netlab.start()

    assert vm.ssh("nproc").stdout.strip() == "2"
    # one MSI-X interrupt per receive and per transmit queue of eth0
    interrupts = vm.ssh("cat /proc/interrupts").stdout
    assert sum(1 for q in ("input.0", "input.1", "output.0", "output.1") if q in interrupts) == 4, interrupts

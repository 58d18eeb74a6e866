"""Document 003, "NIC models": rtl8139, e1000 and virtio-net-pci chosen per NIC
(`-device e1000,netdev=...`). The guest sees each NIC's driver and PCI ids."""

from __future__ import annotations

# (NIC model, guest driver, PCI vendor:device)
MODELS = [
    ("virtio-net-pci", "virtio_net", "0x1af4:0x1000"),
    ("e1000", "e1000", "0x8086:0x100e"),
    ("rtl8139", "8139cp", "0x10ec:0x8139"),
]


def test_each_nic_has_the_driver_of_its_model(netlab):
    br0 = netlab.bridge("br0")
    vm = netlab.vm("h1", nics=[br0.nic(model=model) for model, _, _ in MODELS])
    netlab.start()

    for i, (_model, driver, ids) in enumerate(MODELS):
        info = dict(
            line.split(": ", 1) for line in vm.ssh(f"ethtool -i eth{i}").stdout.splitlines() if ": " in line
        )
        assert info["driver"] == driver
        # a virtio NIC sits on the virtio bus, below its PCI function
        pci = f"/sys/class/net/eth{i}/device" + ("/.." if driver == "virtio_net" else "")
        vendor, device = vm.ssh(f"cat {pci}/vendor {pci}/device").stdout.split()
        assert f"{vendor}:{device}" == ids

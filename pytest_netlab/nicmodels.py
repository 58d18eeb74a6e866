"""The NIC models a guest's lab NICs can have: one table of what each needs and can do.

Adding a model is one entry here, its driver in ``images/modules.txt`` (a test checks
that they agree), and a guest test that it passes traffic.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NicModel:
    """One QEMU NIC model (``-device <name>``)."""

    name: str
    #: guest kernel modules that drive it, asked for with ``netlab.modules=`` at boot
    #: (the guest's init loads virtio_net itself, see guest_protocol.INIT_MODULES)
    modules: tuple[str, ...]
    #: whether it can have several queue pairs (``queues=``, ``mq=on``)
    multiqueue: bool
    #: the guest image variant whose kernel has its driver (see image.variant_for)
    variant: str


DEFAULT_NIC_MODEL = "virtio-net-pci"
NIC_MODELS: dict[str, NicModel] = {
    m.name: m
    for m in (
        NicModel("virtio-net-pci", ("virtio_net",), multiqueue=True, variant="cloud"),
        NicModel("e1000", ("e1000",), multiqueue=False, variant="generic"),
        NicModel("rtl8139", ("8139cp",), multiqueue=False, variant="generic"),
    )
}

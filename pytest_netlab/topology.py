"""What a lab is made of, as plain data: bridges, NICs and guests, validated on entry.

Nothing here touches the system; :mod:`pytest_netlab.lab` turns it into a running lab.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import validation
from .addressing import check_gateway, check_routes
from .constants import GUEST_CPU_RANGE, GUEST_MEMORY_DEFAULT, GUEST_MEMORY_RANGE, ROLES, Role
from .errors import ConfigError
from .image import GuestImage
from .nicmodels import DEFAULT_NIC_MODEL, NIC_MODELS
from .shares import Share

QUEUE_RANGE = (1, 16)
MTU_RANGE = (68, 9000)  # IPv4's least, a jumbo frame's most; IPv6 needs 1280 or more


@dataclass(frozen=True)
class NicSpec:
    """One guest NIC: a TAP on *bridge*, seen in the guest as ``ethN`` in list order.

    ``bridge=None`` is a user-mode (slirp) NAT NIC instead: QEMU's own DHCP server,
    gateway 10.0.2.2, no TAP and no bridge; restricted unless *outside*, with
    *host_ports* reachable at ``NAT_HOST`` (see ``Lab.nat``).
    """

    bridge: str | None
    model: str = DEFAULT_NIC_MODEL
    mac: str | None = None
    tap: str | None = None
    queues: int = 1
    vectors: int | None = None
    addresses: tuple[str, ...] = ()  # given with bridge.nic(address=...), checked there
    host_ports: tuple[int, ...] = ()  # NAT only: host loopback ports the guest may reach
    outside: bool = False  # NAT only: not restricted (the guest reaches what the host does)
    mtu: int | None = None  # on both ends (the TAP and ethN); None: the kernel's 1500
    up: bool = True  # False: the cable is pulled at start (QMP set_link), vm.set_link plugs it

    @property
    def nat(self) -> bool:
        return self.bridge is None

    def validated(self) -> NicSpec:
        validation.nic_model(self.model)
        self._validate_nat()
        if self.nat and (self.tap is not None or self.queues != 1 or self.vectors is not None
                         or self.addresses):
            raise ConfigError(
                "a user-mode NAT NIC has no TAP, one queue and QEMU's address: give it only "
                "model= and mac="
            )
        if self.mac is not None:
            validation.mac_address(self.mac)
        if self.tap is not None:
            validation.interface_name(self.tap, "TAP name")
        validation.int_in_range(self.queues, *QUEUE_RANGE, what="queue count")
        if self.queues > 1 and not NIC_MODELS[self.model].multiqueue:
            multiqueue = ", ".join(m.name for m in NIC_MODELS.values() if m.multiqueue)
            raise ConfigError(
                f"queues={self.queues} is not accepted for NIC model {self.model!r}: "
                f"only {multiqueue} has multiqueue"
            )
        if self.vectors is not None:
            validation.int_in_range(self.vectors, 1, 1024, what="MSI-X vector count")
        if self.mtu is not None:
            validation.int_in_range(self.mtu, *MTU_RANGE, what="MTU")
        if not isinstance(self.up, bool):
            raise ConfigError(f"up={self.up!r} is not accepted: give True or False")
        if self.nat and (self.mtu is not None or not self.up):
            raise ConfigError("mtu= and up= are for NICs on lab bridges, not the NAT NIC")
        return self

    def _validate_nat(self) -> None:
        if not self.nat and (self.host_ports or self.outside):
            raise ConfigError("host_ports= and outside= are for netlab.nat() NICs only")
        if not isinstance(self.outside, bool):
            raise ConfigError(f"outside={self.outside!r} is not accepted: give True or False")
        for port in self.host_ports:
            validation.int_in_range(port, 1, 65535, what="NAT host port")
        if len(set(self.host_ports)) != len(self.host_ports):
            raise ConfigError(f"host_ports={list(self.host_ports)} lists a port twice: list each once")


@dataclass
class GuestSpec:
    """One guest: its NICs in order, its size, and optionally its own kernel and disk."""

    name: str
    role: Role = "host"
    nics: list[NicSpec] = field(default_factory=list)
    memory: int = GUEST_MEMORY_DEFAULT
    cpus: int = 1
    kernel: Path | None = None
    initrd: Path | None = None
    rootfs: Path | None = None
    append: str = ""
    disks: list[Path] = field(default_factory=list)
    network: bool = True  # False: no NIC at all, not even the management NIC (-nic none)
    forwards: list[int] = field(default_factory=list)  # guest TCP ports forwarded from 127.0.0.1
    numa: bool = False  # memory from a memory backend, given to one NUMA node
    aslr: bool = False  # address space layout randomisation in the guest (off: faster execs under TCG)
    gateway: str | None = None  # "auto", a router's name or an address: a default route (addressing)
    routes: bool = True  # False: the address plan gives it no route (a routing daemon's job)
    image: GuestImage | None = None  # None: the lab's default image
    shares: tuple[Share, ...] = ()  # host directories in the guest, checked by shares.shares_of

    def validated(self) -> GuestSpec:
        validation.guest_name(self.name)
        if self.role not in ROLES:
            raise ConfigError(
                f"role {self.role!r} of {self.name!r} is not accepted: use one of {', '.join(ROLES)}"
            )
        validation.int_in_range(
            self.memory, *GUEST_MEMORY_RANGE, what=f"memory of {self.name!r}", unit=" MiB"
        )
        validation.int_in_range(self.cpus, *GUEST_CPU_RANGE, what=f"CPU count of {self.name!r}")
        for flag in ("network", "numa", "aslr"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(
                    f"{flag}={getattr(self, flag)!r} of {self.name!r} is not accepted: give True or False"
                )
        for nic in self.nics:
            nic.validated()
        self.gateway = check_gateway(self.gateway, self.name)
        check_routes(self.routes, self.gateway, self.name)
        self._check_image()
        self._check_boot_files()
        self._check_forwards()
        if not self.network and (self.nics or self.forwards):
            raise ConfigError(
                f"{self.name}: network=False means no NIC at all: drop nics= and forwards=, "
                "or keep the network"
            )
        if "\n" in self.append:
            raise ConfigError(f"{self.name}: append={self.append!r} must be one line")
        return self

    def _check_image(self) -> None:
        """``image=``: a package image, and what its kernel can drive."""
        if self.image is not None and not isinstance(self.image, GuestImage):
            raise ConfigError(
                f"image={self.image!r} of {self.name!r} is not accepted: give an image from "
                "netlab.image(packages=[...])"
            )
        if self.image is not None and self.kernel is not None:
            raise ConfigError(f"{self.name}: give image= or kernel=, not both")
        if self.image is not None and self.image.disk is not None:
            drivers = [m for n in self.nics if n.model in NIC_MODELS for m in NIC_MODELS[n.model].modules]
            if not self.image.has_modules(drivers):
                raise ConfigError(
                    f"{self.name}: its package image boots the {self.image.variant} kernel, which "
                    f"has no driver for NIC models {sorted({n.model for n in self.nics})}: "
                    "use virtio-net-pci NICs"
                )
            if self.shares:
                raise ConfigError(
                    f"{self.name}: shares need the generic kernel's 9p, and package images boot "
                    f"the {self.image.variant} kernel: copy the files with vm.put(), or drop image="
                )

    def _check_boot_files(self) -> None:
        """A kernel of the user's own, its initrd, root file system and disks."""
        if self.initrd is not None and self.kernel is None:
            raise ConfigError(f"{self.name}: initrd={str(self.initrd)!r} needs kernel= as well")
        if self.rootfs is not None and self.kernel is None:
            raise ConfigError(
                f"{self.name}: rootfs={str(self.rootfs)!r} needs kernel= as well "
                "(the documents' -kernel bzImage -drive file=rootfs.ext4 boot)"
            )
        for what, path in (("kernel", self.kernel), ("initrd", self.initrd), ("rootfs", self.rootfs),
                           *(("disk", d) for d in self.disks)):
            if path is not None:
                readable_file(path, f"{what} of {self.name!r}")

    def _check_forwards(self) -> None:
        for port in self.forwards:
            validation.int_in_range(port, 1, 65535, what=f"forwarded guest port of {self.name!r}")
            if port == 22 or self.forwards.count(port) > 1:
                raise ConfigError(
                    f"{self.name}: guest port {port} is forwarded already: list each port once "
                    "(22, SSH, always is)"
                )


def readable_file(path: Path, what: str) -> Path:
    """Return *path* if it is a readable regular file."""
    if not path.is_file():
        raise ConfigError(
            f"{what} {str(path)!r} does not exist or is not a file: give the path of an existing file"
        )
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise ConfigError(f"{what} {str(path)!r} cannot be read: {exc.strerror}") from None
    return path


def tap_name(bridge_number: int, port_number: int) -> str:
    """The documents' TAP names: ``vport11``, ``vport12`` on br1, ``vport21`` on br2..."""
    if bridge_number < 10 and port_number < 10:
        return f"vport{bridge_number}{port_number}"
    return f"vp{bridge_number}.{port_number}"


def lab_mac(guest_number: int, nic_number: int) -> str:
    """A MAC unique within a lab, from the guest's and the NIC's positions."""
    return f"52:54:00:00:{guest_number:02x}:{nic_number:02x}"

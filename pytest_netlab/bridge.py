"""A Linux bridge of a lab, inside the lab's network namespace."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import validation
from .addressing import (
    Interface,
    Network,
    explicit_addresses,
)
from .errors import ConfigError
from .nicmodels import DEFAULT_NIC_MODEL
from .topology import NicSpec

if TYPE_CHECKING:
    from .lab import Lab


class Bridge:
    """A Linux bridge inside the lab namespace."""

    def __init__(self, lab: Lab, name: str, number: int, subnets: tuple[Network, ...] = ()) -> None:
        self.lab = lab
        self.name = name
        self.number = number
        self.ports = 0
        self.subnets = subnets  # the address plan's networks (netlab.bridge(subnet=...))
        self.addresses: list[Interface] = []  # the lab namespace's own, from add_address

    def nic(
        self, *, model: str = DEFAULT_NIC_MODEL, mac: str | None = None, tap: str | None = None,
        queues: int = 1, vectors: int | None = None, address: str | Sequence[str] | None = None,
        mtu: int | None = None, up: bool = True,
    ) -> NicSpec:
        """A NIC on this bridge with options, for ``nics=[...]``.

        *address* (with prefix length, or a list of one IPv4 and one IPv6 address) is
        set in the guest at start, instead of one from the bridge's subnet; on a bridge
        with a subnet it must be inside it. *mtu* (68 to 9000) is set on both ends of the
        link, the TAP and the guest's ``ethN``, at start. ``up=False`` starts the NIC with
        its cable pulled (the guest sees no carrier) until ``vm.set_link(nic, True)``.

        Raises:
            ConfigError: a bad option, or an address outside the bridge's subnet.
        """
        addresses = () if address is None else tuple(
            str(i) for i in explicit_addresses(address, self.name, self.subnets)
        )
        return NicSpec(
            self.name, model, mac, tap, queues, vectors, addresses, mtu=mtu, up=up
        ).validated()

    def add_address(self, address: str) -> None:
        """Give the bridge an address in the lab namespace (a host-only network). The
        address plan never hands it to a guest.

        Raises:
            ConfigError: a malformed address, or one a guest has already.
        """
        iface = validation.ip_interface(address)
        owner = self.lab._address_owner(iface.ip)
        if owner is not None:
            raise ConfigError(
                f"address {iface.ip} for bridge {self.name!r} is used already by {owner}: "
                "give the bridge another address"
            )
        self.lab.namespace.add_address(self.name, str(iface.ip), iface.network.prefixlen)
        self.addresses.append(iface)

    def __repr__(self) -> str:
        return f"<Bridge {self.name} of {self.lab.name}>"

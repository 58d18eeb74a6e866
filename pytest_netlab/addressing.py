"""Automatic addresses: a subnet per bridge, an address per guest NIC, a default route
and ``/etc/hosts`` names, all as pure logic (nothing here touches the system).

The rule, applied when a lab starts: every NIC on a bridge with a subnet gets, for each
of the bridge's subnets (one IPv4, one IPv6 at most), the lowest address of the subnet
that is not used yet, going through the routers first and then the other guests, each
in the order they were declared, their NICs in order. Used means: given explicitly to a
NIC (``bridge.nic(address=...)``), given to the bridge on the host side
(``bridge.add_address``), or handed out before. So ``h1 -- rt2 -- h2`` on
10.20.10.0/24 and 10.20.20.0/24 gives rt2 10.20.10.1 and 10.20.20.1, h1 10.20.10.2 and
h2 10.20.20.2.

A guest declared with ``routes=False`` runs its own routing (a daemon: FRR, BIRD): it
gets its addresses and the names, but no route from the plan, neither the routes to
the subnets behind other routers nor a default route. The other guests' plans do not
change: their routes through it are computed as if it were an ordinary router (it is
their next hop; what it does with the packet is its daemon's business).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from . import validation
from .errors import ConfigError
from .guest_protocol import MGMT_NET, guest_ifname

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# networks the guests have already: a lab subnet overlapping one would take its routes
NAT_NETWORK = ipaddress.ip_network("10.0.2.0/24")  # netlab.nat(), QEMU's user-mode default
RESERVED = {
    NAT_NETWORK: "the user-mode NAT network",
    ipaddress.ip_network(MGMT_NET): "the management network (SSH to the guests)",
}
SMALLEST_PREFIX = {4: 30, 6: 126}  # room for at least two guests
IPV6_DEFAULT_METRIC = 100
HOSTS_BEGIN = "# netlab: lab addresses (begin)"
HOSTS_END = "# netlab: lab addresses (end)"
_SUBNET_HINT = (
    "give a network with its host bits zero, e.g. 10.20.10.0/24 or fd00:20:10::/64, "
    "or a list of one IPv4 and one IPv6 network"
)


def parse_subnets(value: object, bridge: str) -> tuple[Network, ...]:
    """The subnets of *bridge*: a network or a list of at most one per IP version.

    Raises:
        ConfigError: not a network, host bits set, too small, two of one version.
    """
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, (list, tuple)) or not values:
        raise ConfigError(f"subnet {value!r} of bridge {bridge!r} is not accepted: {_SUBNET_HINT}")
    networks: list[Network] = []
    for item in values:
        try:
            network = validation.ip_network(item)
        except ConfigError:
            raise ConfigError(
                f"subnet {item!r} of bridge {bridge!r} is not accepted: {_SUBNET_HINT}"
            ) from None
        if network.prefixlen > SMALLEST_PREFIX[network.version]:
            raise ConfigError(
                f"subnet {item!r} of bridge {bridge!r} is too small: give at most "
                f"/{SMALLEST_PREFIX[network.version]} for IPv{network.version}"
            )
        _one_per_version(networks, network, f"subnet {item!r} of bridge {bridge!r}", "subnet", "bridge")
        networks.append(network)
    return tuple(networks)


def _one_per_version(
    have: Sequence[Network | Interface], new: Network | Interface, what: str, noun: str, per: str
) -> None:
    if any(h.version == new.version for h in have):
        raise ConfigError(
            f"{what} is a second IPv{new.version} {noun}: give at most one IPv4 and one "
            f"IPv6 {noun} per {per}"
        )


def check_overlaps(bridge: str, subnets: Sequence[Network], others: Mapping[str, Sequence[Network]]) -> None:
    """Refuse a subnet of *bridge* that overlaps another bridge's or the NAT network.

    Raises:
        ConfigError: naming both subnets.
    """
    for network in subnets:
        for reserved, what in RESERVED.items():
            if network.version == reserved.version and network.overlaps(reserved):
                raise ConfigError(
                    f"subnet {network} of bridge {bridge!r} overlaps {what} {reserved}: "
                    "choose another subnet"
                )
        for other, theirs in others.items():
            for their in theirs:
                if other != bridge and their.version == network.version and network.overlaps(their):
                    raise ConfigError(
                        f"subnet {network} of bridge {bridge!r} overlaps subnet {their} of "
                        f"bridge {other!r}: give each bridge its own subnet"
                    )


def explicit_addresses(value: object, bridge: str, subnets: Sequence[Network]) -> tuple[Interface, ...]:
    """The addresses given to one NIC with ``bridge.nic(address=...)``: a string or a
    list, at most one per IP version; on a bridge with a subnet of that version, an
    address of that subnet with its prefix length.

    Raises:
        ConfigError: malformed, outside the subnet, or two of one version.
    """
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, (list, tuple)) or not values:
        raise ConfigError(
            f"address {value!r} on bridge {bridge!r} is not accepted: give an address with a "
            "prefix length, e.g. 10.20.10.50/24, or a list of one IPv4 and one IPv6 address"
        )
    interfaces: list[Interface] = []
    for item in values:
        interface = validation.ip_interface(item)
        for network in subnets:
            if network.version != interface.version:
                continue
            if interface.network != network:
                raise ConfigError(
                    f"address {item} on bridge {bridge!r} is not inside its subnet {network}: "
                    f"give an address of {network} with /{network.prefixlen}"
                )
            if network.version == 4 and interface.ip in (network.network_address, network.broadcast_address):
                raise ConfigError(
                    f"address {item} on bridge {bridge!r} is the network or broadcast address "
                    f"of {network}: give one of its host addresses"
                )
        _one_per_version(interfaces, interface, f"address {item} on bridge {bridge!r}", "address", "NIC")
        interfaces.append(interface)
    return tuple(interfaces)


@dataclass(frozen=True)
class NicRequest:
    """One NIC of a guest, as the planner sees it: its bridge (``None`` for a NAT NIC)
    and the addresses given to it explicitly."""

    bridge: str | None
    explicit: tuple[Interface, ...] = ()


@dataclass(frozen=True)
class GuestRequest:
    """One guest: its NICs in order (``eth0``, ``eth1``...), its gateway wish
    (``None``, ``"auto"``, a guest's name or an address), and whether the plan gives it
    routes (``routes=False``: its routes are its own, a routing daemon's)."""

    name: str
    router: bool
    nics: tuple[NicRequest, ...]
    gateway: str | None = None
    routes: bool = True


def check_gateway(value: object, guest: str) -> str | None:
    """Return *value* if it is accepted as ``gateway=``.

    Raises:
        ConfigError: not ``"auto"``, a guest name or an address.
    """
    if value is None or value == "auto":
        return value
    if isinstance(value, str):
        if validation.is_ip_address(value):
            return str(validation.ip_address(value))
        try:
            return validation.guest_name(value)
        except ConfigError:
            pass
    raise ConfigError(
        f"gateway {value!r} of {guest!r} is not accepted: give 'auto', the name of a "
        "router of the lab, or an address"
    )


def check_routes(value: object, gateway: str | None, guest: str) -> bool:
    """Return *value* if it is accepted as ``routes=`` with *gateway*.

    Raises:
        ConfigError: not a bool, or ``False`` with a gateway (which is a route).
    """
    if not isinstance(value, bool):
        raise ConfigError(
            f"routes={value!r} of {guest!r} is not accepted: give True (the lab's routes) or "
            "False (its own, e.g. a routing daemon's)"
        )
    if not value and gateway is not None:
        raise ConfigError(
            f"gateway={gateway!r} of {guest!r} is a route, and routes=False gives it none: "
            "drop gateway= or routes=False"
        )
    return value


def _take_explicit(guests: Sequence[GuestRequest], owners: dict[Address, str]) -> None:
    """Record the addresses *guests* give by hand in *owners*, refusing one used already."""
    for guest in guests:
        for nic in guest.nics:
            for interface in nic.explicit:
                if interface.ip in owners:
                    raise ConfigError(
                        f"address {interface.ip} of {guest.name} on bridge {nic.bridge!r} is "
                        f"used already by {owners[interface.ip]}: give each NIC its own address"
                    )
                owners[interface.ip] = guest.name


def _nic_interfaces(
    guest: str, nic: NicRequest, subnets: Mapping[str, Sequence[Network]], owners: dict[Address, str],
) -> tuple[Interface, ...]:
    """*nic*'s addresses: those given, and for each subnet of its bridge of a version it
    was not given, the lowest free one (recorded in *owners*)."""
    interfaces = list(nic.explicit)
    for network in subnets.get(nic.bridge, ()) if nic.bridge is not None else ():
        if any(i.version == network.version for i in interfaces):
            continue
        address = _lowest_free(network, owners)
        if address is None:
            raise ConfigError(
                f"subnet {network} of bridge {nic.bridge!r} has no free address left "
                f"for {guest}: give the bridge a larger subnet"
            )
        owners[address] = guest
        interfaces.append(ipaddress.ip_interface(f"{address}/{network.prefixlen}"))
    return tuple(sorted(interfaces, key=lambda i: i.version))


class AddressPlan:
    """The addresses and default routes of a lab's guests; grows at each start."""

    def __init__(self) -> None:
        self.assigned: dict[str, list[tuple[Interface, ...]]] = {}  # guest -> per NIC
        self.gateways: dict[str, tuple[Address, ...]] = {}
        self.bridges_of: dict[str, tuple[str | None, ...]] = {}  # guest -> bridge per NIC
        self.routers: set[str] = set()
        self.own_routes: set[str] = set()  # routes=False: addresses and names only

    def assign(
        self, subnets: Mapping[str, Sequence[Network]], guests: Sequence[GuestRequest],
        bridge_addresses: Mapping[str, Iterable[Interface]] | None = None,
        all_guests: Sequence[GuestRequest] = (),
    ) -> None:
        """Give each NIC of *guests* (those not planned yet) its addresses, then resolve
        their gateways. *subnets* maps each bridge with a subnet to its networks;
        *bridge_addresses* are the lab namespace's own on its bridges (never handed out);
        *all_guests* (default: *guests*) are every guest of the lab, in declaration
        order, for ``gateway=NAME`` and ``"auto"``.

        Raises:
            ConfigError: an address used twice, a subnet with no address left, a gateway
                that cannot be resolved. Nothing is planned then.
        """
        known = list(all_guests) or list(guests)
        owners = self.owners(bridge_addresses or {})
        fresh = [g for g in guests if g.name not in self.assigned]
        _take_explicit(fresh, owners)
        assigned = {
            guest.name: [_nic_interfaces(guest.name, nic, subnets, owners) for nic in guest.nics]
            for guest in [g for g in fresh if g.router] + [g for g in fresh if not g.router]
        }
        bridges_of = {g.name: tuple(n.bridge for n in g.nics) for g in known}
        every = {**self.assigned, **assigned}
        gateways = {g.name: _gateway(g, known, every, bridges_of) for g in fresh}
        hosts_names(every, bridges_of)  # refuses clashing names before anything starts
        self.assigned.update(assigned)
        self.gateways.update(gateways)
        self.bridges_of.update(bridges_of)
        self.routers.update(g.name for g in known if g.router)
        self.own_routes.update(g.name for g in known if not g.routes)

    def owners(
        self, bridge_addresses: Mapping[str, Iterable[Interface]],
        guests: Sequence[GuestRequest] = (),
    ) -> dict[Address, str]:
        """Who has each address of the lab: the lab namespace's own on its bridges, the
        planned addresses of guests, and those *guests* give by hand. The one place
        that says whose an address is."""
        owners: dict[Address, str] = {}
        for bridge, interfaces in bridge_addresses.items():
            for interface in interfaces:
                owners[interface.ip] = f"bridge {bridge!r} (host side)"
        for guest in guests:
            for nic in guest.nics:
                for interface in nic.explicit:
                    owners.setdefault(interface.ip, guest.name)
        for name, planned in self.assigned.items():
            for interfaces in planned:
                for interface in interfaces:
                    owners[interface.ip] = name
        return owners

    def routes(self, guest: str) -> list[tuple[Network, Address]]:
        """The routes router *guest* needs to the subnets behind other routers, as
        (network, next hop): through the fewest routers, the first declared on a tie.
        Hosts get none (their default route goes to a router, which knows the rest),
        nor does a guest whose routes are its own (``routes=False``); the routes of
        others through it are computed all the same."""
        if guest not in self.routers or guest in self.own_routes:
            return []
        networks, routers_on = self._bridges_seen_by(guest)
        mine = [b for b, interfaces in zip(self.bridges_of.get(guest, ()), self.assigned.get(guest, []),
                                           strict=False) if b is not None and interfaces]
        # breadth first over bridges; a bridge reached remembers the neighbour it goes through
        first_hop: dict[str, tuple[Interface, ...]] = {b: () for b in mine}
        queue = list(mine)
        for bridge in queue:
            for router, interfaces in routers_on.get(bridge, []):
                hop = first_hop[bridge] or interfaces
                for beyond, theirs in zip(self.bridges_of[router], self.assigned[router], strict=False):
                    if beyond is not None and theirs and beyond not in first_hop:
                        first_hop[beyond] = hop
                        queue.append(beyond)
        routes = []
        for bridge in queue[len(mine):]:
            for network in networks.get(bridge, []):
                via = [i.ip for i in first_hop[bridge] if i.version == network.version]
                if via:
                    routes.append((network, via[0]))
        return routes

    def _bridges_seen_by(
        self, guest: str,
    ) -> tuple[dict[str, list[Network]], dict[str, list[tuple[str, tuple[Interface, ...]]]]]:
        """The networks on each addressed bridge, and the routers other than *guest* on
        it with their addresses there."""
        networks: dict[str, list[Network]] = {}
        routers_on: dict[str, list[tuple[str, tuple[Interface, ...]]]] = {}
        for name, nics in self.assigned.items():
            for bridge, interfaces in zip(self.bridges_of.get(name, ()), nics, strict=False):
                if bridge is None or not interfaces:
                    continue
                for network in (i.network for i in interfaces):
                    if network not in networks.setdefault(bridge, []):
                        networks[bridge].append(network)
                if name in self.routers and name != guest:
                    routers_on.setdefault(bridge, []).append((name, interfaces))
        return networks, routers_on

    def guest_script(self, guest: str) -> str:
        """One shell command that gives *guest* its addresses and default routes (one
        ``ip -batch``) and writes the lab's names into ``/etc/hosts``."""
        lines: list[str] = []
        no_dad: list[str] = []
        for index, interfaces in enumerate(self.assigned.get(guest, [])):
            for interface in interfaces:
                flags = " nodad" if interface.version == 6 else ""  # usable at once
                lines.append(f"addr add {interface} dev {guest_ifname(index)}{flags}")
            if interfaces:
                lines.append(f"link set {guest_ifname(index)} up")
            if any(i.version == 6 for i in interfaces):
                # no DAD for the link-local address either: until it is done (1-2 s)
                # a router cannot send neighbour solicitations, so forwards nothing
                no_dad.append(f"echo 0 > /proc/sys/net/ipv6/conf/{guest_ifname(index)}/accept_dad\n")
        for network, via in self.routes(guest):
            lines.append(f"route add {network} via {via}")
        for gateway in self.gateways.get(guest, ()):
            if gateway.version == 4:
                lines.append(f"route add 0.0.0.0/0 via {gateway}")
            else:
                # the management NIC learns an IPv6 default route (metric 1024) from
                # QEMU's router advertisements: the lab's comes before it
                lines.append(f"route add ::/0 via {gateway} metric {IPV6_DEFAULT_METRIC}")
        # set -e: a refused address or route fails the whole command (it runs in a subshell)
        script = "set -e\n" + "".join(no_dad)
        if lines:
            script += "ip -batch - <<'NETLAB_EOF'\n" + "\n".join(lines) + "\nNETLAB_EOF\n"
        return script + self.hosts_script()

    def hosts_script(self) -> str:
        """A shell command that replaces the lab's block in ``/etc/hosts``."""
        block = "\n".join(
            [HOSTS_BEGIN, *(f"{address}\t{name}" for name, address in
                            hosts_names(self.assigned, self.bridges_of).items()), HOSTS_END]
        )
        return (
            f"sed -i '/^{HOSTS_BEGIN}$/,/^{HOSTS_END}$/d' /etc/hosts && "
            f"cat >> /etc/hosts <<'NETLAB_EOF'\n{block}\nNETLAB_EOF\n"
        )


def hosts_names(
    assigned: Mapping[str, Sequence[tuple[Interface, ...]]],
    bridges_of: Mapping[str, Sequence[str | None]],
) -> dict[str, Address]:
    """Each name and its address: ``NAME`` its first IPv4 address (or IPv6 if it has
    none), ``NAME-BRIDGE`` its address on that bridge (IPv4 first), ``NAME-BRIDGE-v6``
    its IPv6 address there.

    Raises:
        ConfigError: two guests would get the same name (e.g. guest ``h1-br1`` and
            guest ``h1`` on bridge ``br1``).
    """
    names: dict[str, Address] = {}
    owner: dict[str, str] = {}

    def add(name: str, address: Address, guest: str) -> None:
        if name in owner and owner[name] != guest:
            raise ConfigError(
                f"host name {name!r} would name both {owner[name]} and {guest}: rename one "
                "of the guests (names are NAME, NAME-BRIDGE and NAME-BRIDGE-v6)"
            )
        if name not in names:
            names[name] = address
            owner[name] = guest

    for guest, nics in assigned.items():
        every = [i for interfaces in nics for i in interfaces]
        first = [i for i in every if i.version == 4] or every
        if first:
            add(guest, first[0].ip, guest)
        for bridge, interfaces in zip(bridges_of.get(guest, ()), nics, strict=False):
            if bridge is None or not interfaces:
                continue
            add(f"{guest}-{bridge}", interfaces[0].ip, guest)
            for interface in interfaces:
                if interface.version == 6:
                    add(f"{guest}-{bridge}-v6", interface.ip, guest)
    return names


def _lowest_free(network: Network, owners: Mapping[Address, str]) -> Address | None:
    for address in network.hosts():
        if address not in owners:
            return address
    return None


def _gateway(
    guest: GuestRequest, known: Sequence[GuestRequest],
    assigned: Mapping[str, Sequence[tuple[Interface, ...]]],
    bridges_of: Mapping[str, Sequence[str | None]],
) -> tuple[Address, ...]:
    """The next hops of *guest*'s default routes (one per IP version at most)."""
    wish = guest.gateway
    if wish is None or (wish == "auto" and guest.router) or not guest.routes:
        return ()
    mine = list(zip(bridges_of[guest.name], assigned.get(guest.name, []), strict=True))
    addressed = [(bridge, interfaces) for bridge, interfaces in mine if bridge is not None and interfaces]
    if not addressed:
        raise ConfigError(
            f"{guest.name}: gateway={wish!r} needs an address on a lab bridge: put it on a "
            "bridge with a subnet or give its NIC an address"
        )
    if wish == "auto":
        bridge, interfaces = addressed[0]
        routers = [g.name for g in known if g.router and bridge in bridges_of.get(g.name, ())]
        if not routers:
            raise ConfigError(
                f"{guest.name}: gateway='auto' finds no router on bridge {bridge!r} (its first "
                "addressed bridge): declare one with netlab.router(), or give gateway=ADDRESS"
            )
        found = _their_addresses(routers[0], bridge, interfaces, assigned, bridges_of)
        if not found:
            raise ConfigError(
                f"{guest.name}: gateway='auto' picks router {routers[0]}, which has no address "
                f"of the same IP version on bridge {bridge!r}: give gateway=ADDRESS"
            )
        return found
    if validation.is_ip_address(wish):
        address = validation.ip_address(wish)
        if not any(address in i.network for _, interfaces in addressed for i in interfaces):
            raise ConfigError(
                f"{guest.name}: gateway {wish} is not in a subnet of its NICs "
                f"({', '.join(str(i.network) for _, ifs in addressed for i in ifs)}): "
                "give an address on one of its bridges"
            )
        return (address,)
    if wish not in bridges_of or wish == guest.name:
        raise ConfigError(
            f"{guest.name}: gateway {wish!r} is not another guest of the lab: give 'auto', "
            "a router's name or an address"
        )
    for bridge, interfaces in addressed:
        if bridge in bridges_of[wish]:
            found = _their_addresses(wish, bridge, interfaces, assigned, bridges_of)
            if found:
                return found
    raise ConfigError(
        f"{guest.name}: gateway {wish!r} has no address on a bridge of {guest.name}: "
        "give a router on one of its bridges, or an address"
    )


def _their_addresses(
    router: str, bridge: str, mine: Sequence[Interface],
    assigned: Mapping[str, Sequence[tuple[Interface, ...]]],
    bridges_of: Mapping[str, Sequence[str | None]],
) -> tuple[Address, ...]:
    """*router*'s addresses on *bridge*, of the IP versions *mine* has."""
    versions = {i.version for i in mine}
    for their_bridge, interfaces in zip(bridges_of[router], assigned.get(router, []), strict=False):
        if their_bridge == bridge:
            return tuple(i.ip for i in interfaces if i.version in versions)
    return ()

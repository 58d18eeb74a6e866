"""A lab described as data: bridges, nodes with their role, links to bridges with
addresses, routes and forwarding. Loaded from a dict or a TOML file, checked before
anything is created, applied to a :class:`~pytest_netlab.lab.Lab`, and drawn as a
Mermaid diagram.

The documents' three-machine set-up, as TOML::

    [bridges.br1]
    [bridges.br2]

    [nodes.h1]
    links = [{ bridge = "br1", address = "10.20.10.1/24" }]
    routes = [{ to = "10.20.20.0/24", via = "10.20.10.2" }]

    [nodes.rt2]
    role = "router"
    forwarding = true
    links = [{ bridge = "br1", address = "10.20.10.2/24" },
             { bridge = "br2", address = "10.20.20.1/24" }]

    [nodes.h2]
    links = [{ bridge = "br2", address = "10.20.20.2/24" }]
    routes = [{ to = "10.20.10.0/24", via = "10.20.20.1" }]

With an address plan instead (see :mod:`pytest_netlab.addressing`), links without an
address get one from their bridge's ``subnet``, and ``gateway = "auto"`` gives a host a
default route through the router on its first bridge::

    [bridges.br1]
    subnet = "10.20.10.0/24"

    [nodes.h1]
    gateway = "auto"
    links = [{ bridge = "br1" }]

A node with ``routes = false`` runs its own routing (a daemon started by its ``exec``):
the plan gives it addresses but no route.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import validation
from .addressing import check_gateway, check_overlaps, check_routes, explicit_addresses, parse_subnets
from .constants import GUEST_CPU_RANGE, GUEST_MEMORY_DEFAULT, GUEST_MEMORY_RANGE, ROLES, Role
from .errors import CommandError, ConfigError, LabError
from .guest_protocol import guest_ifname
from .impairment import Impairment
from .nicmodels import DEFAULT_NIC_MODEL

if TYPE_CHECKING:
    from .guest import VM
    from .lab import Lab



@dataclass(frozen=True)
class LinkSpec:
    bridge: str
    address: str | None = None  # with prefix length, e.g. 10.20.10.1/24
    mac: str | None = None
    model: str = DEFAULT_NIC_MODEL
    mtu: int | None = None  # both ends; None: 1500
    up: bool = True  # False: the cable pulled at start
    impair: Impairment | None = None  # vm.impair()'s settings, from the first packet


IMPAIR_KEYS = {f.name for f in fields(Impairment)}


@dataclass(frozen=True)
class RouteSpec:
    to: str  # a network, or "default"
    via: str


@dataclass(frozen=True)
class NodeSpec:
    name: str
    role: Role = "host"
    links: tuple[LinkSpec, ...] = ()
    routes: tuple[RouteSpec, ...] = ()
    lab_routes: bool = True  # routes = false: the address plan gives it none (a daemon's job)
    forwarding: bool = False
    memory: int = GUEST_MEMORY_DEFAULT
    cpus: int = 1
    gateway: str | None = None  # "auto", a router's name or an address (address plan)
    packages: tuple[str, ...] | None = None  # Debian packages (a package image); None: the lab's
    exec: tuple[str, ...] = ()  # shell commands run in order once the lab is up
    files: tuple[tuple[str, Path], ...] = ()  # (guest path, local file) copied in before exec


@dataclass(frozen=True)
class BridgeSpec:
    name: str
    address: str | None = None  # a host-only address on the bridge, in the lab namespace
    subnet: tuple[str, ...] = ()  # the address plan's networks: guests' links get addresses


@dataclass
class Topology:
    """Bridges and nodes, checked; see the module docstring for the format."""

    bridges: dict[str, BridgeSpec] = field(default_factory=dict)
    nodes: dict[str, NodeSpec] = field(default_factory=dict)
    packages: tuple[str, ...] = ()  # [lab] packages: of every node that names none itself
    base: Path = field(default_factory=Path.cwd)  # where the nodes' relative ``files`` are

    # -- loading ----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: Path | None = None) -> Topology:
        """Check and load a topology given as a dict (the TOML file's structure); the
        local paths of ``files`` are relative to *base* (default: the working directory).

        Raises:
            ConfigError: an unknown key, a link to an undeclared bridge, a bad name,
                address, route or role; the message names the node and the value.
        """
        _keys(data, {"bridges", "nodes", "generate", "lab"}, "topology")
        lab = _table(data.get("lab", {}), "[lab]")  # read before [generate] makes the rest
        if "generate" in data:
            data = _generated(data)
        topology = cls(base=Path.cwd() if base is None else base)
        _keys(lab, {"packages"}, "[lab]")
        topology.packages = _packages(lab.get("packages"), "[lab]") or ()
        for name, raw_bridge in _table(data.get("bridges", {}), "bridges").items():
            bridge = _table(raw_bridge or {}, f"bridge {name!r}")
            _keys(bridge, {"address", "subnet"}, f"bridge {name!r}")
            validation.interface_name(name, "bridge name")
            address = bridge.get("address")
            if address is not None:
                with _naming(f"bridge {name!r} address"):
                    validation.ip_interface(address)
            subnets = () if bridge.get("subnet") is None else parse_subnets(bridge["subnet"], name)
            check_overlaps(name, subnets, {b: topology._subnets(b) for b in topology.bridges})
            topology.bridges[name] = BridgeSpec(name, address, tuple(str(n) for n in subnets))
        for name, raw in _table(data.get("nodes", {}), "nodes").items():
            with _naming(f"node {name!r}"):
                topology.nodes[name] = topology._node(name, _table(raw, f"node {name!r}"))
        for node in topology.nodes.values():
            if node.gateway not in (None, "auto", *topology.nodes) and not _is_address(node.gateway):
                raise ConfigError(
                    f"node {node.name!r}: gateway {node.gateway!r} is not a node of the topology: "
                    "give 'auto', a router's name or an address"
                )
        return topology

    def _subnets(self, bridge: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(n) for n in self.bridges[bridge].subnet)

    @classmethod
    def from_toml(cls, source: str | Path) -> Topology:
        """Load a TOML file (a path) or TOML text (a string with a newline). A node's
        ``files`` are relative to the file's directory (to the working directory for text).

        Raises:
            ConfigError: the TOML does not parse, or see :meth:`from_dict`; the message
                starts with the file's name.
        """
        is_file = isinstance(source, Path) or "\n" not in source
        try:
            if is_file:
                with open(source, "rb") as handle:
                    data = tomllib.load(handle)
            else:
                data = tomllib.loads(str(source))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"topology {str(source)[:60]!r} cannot be read: {exc}") from None
        if not is_file:
            return cls.from_dict(data)
        try:
            return cls.from_dict(data, Path(source).resolve().parent)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def _node(self, name: str, raw: Mapping[str, Any]) -> NodeSpec:
        where = f"node {name!r}"
        _keys(raw, {"role", "links", "routes", "forwarding", "memory", "cpus", "gateway", "packages",
                    "exec", "files"}, where)
        validation.guest_name(name)
        role = raw.get("role", "host")
        if role not in ROLES:
            raise ConfigError(f"{where}: role {role!r} is not accepted: use one of {', '.join(ROLES)}")
        links: list[LinkSpec] = []
        for number, raw_link in enumerate(_list(raw.get("links", []), f"{where} links")):
            link = _table(raw_link, f"{where} link")
            _keys(link, {"bridge", "address", "mac", "model", "mtu", "up", "impair"}, f"{where} link")
            bridge = link.get("bridge")
            if bridge not in self.bridges:
                raise ConfigError(
                    f"{where}: link to bridge {bridge!r}, which is not declared "
                    f"(bridges: {', '.join(self.bridges) or 'none'}); add [bridges.{bridge}]"
                )
            if link.get("address") is not None:
                explicit_addresses(link["address"], bridge, self._subnets(bridge))
            if link.get("mac") is not None:
                validation.mac_address(link["mac"])
            model = validation.nic_model(link.get("model", DEFAULT_NIC_MODEL))
            links.append(LinkSpec(
                bridge, link.get("address"), link.get("mac"), model,
                *_link_state(link, f"{where} links[{number}]"),
            ))
        raw_routes = raw.get("routes", [])
        lab_routes = raw_routes if isinstance(raw_routes, bool) else True
        gateway = check_gateway(raw.get("gateway"), name)
        check_routes(lab_routes, gateway, name)
        forwarding = raw.get("forwarding", False)
        if not isinstance(forwarding, bool):
            raise ConfigError(f"{where}: forwarding {forwarding!r} is not accepted: give true or false")
        return NodeSpec(
            name, role, tuple(links), _routes(raw_routes, where), lab_routes, forwarding,
            validation.int_in_range(
                raw.get("memory", GUEST_MEMORY_DEFAULT), *GUEST_MEMORY_RANGE, "memory", " MiB"
            ),
            validation.int_in_range(raw.get("cpus", 1), *GUEST_CPU_RANGE, "cpus"),
            gateway,
            _packages(raw.get("packages"), where),
            _commands(raw.get("exec", []), where),
            self._files(raw.get("files", {}), where),
        )

    def _files(self, value: object, where: str) -> tuple[tuple[str, Path], ...]:
        """A node's ``files``: guest path -> local file, relative to the topology's base."""
        files = []
        for remote, local in _table(value, f"{where} files").items():
            if not isinstance(remote, str) or not remote.startswith("/") or "\0" in remote \
                    or ".." in remote.split("/"):
                raise ConfigError(
                    f"{where} files: guest path {remote!r} is not accepted: give an absolute path"
                )
            if not isinstance(local, str) or not local:
                raise ConfigError(f"{where} files: {remote!r} = {local!r} is not accepted: give a local path")
            path = self.base / local
            if not path.is_file():
                raise ConfigError(
                    f"{where} files: {remote!r} = {local!r}: {str(path)!r} is not a file "
                    "(local paths are relative to the topology file's directory)"
                )
            files.append((remote, path))
        return tuple(files)

    # -- building ---------------------------------------------------------------------
    def apply(self, lab: Lab, *, start: bool = True, timeout: float | None = None) -> dict[str, VM]:
        """Create the bridges and guests in *lab* with the lab's own API, as a test would
        write it: the links' addresses are the NICs' (``bridge.nic(address=...)``), so
        the lab sets them when it starts, with its ``/etc/hosts`` names. With *start*,
        boot the guests and give them their routes (:meth:`VM.set_route`), forwarding
        (:meth:`VM.enable_forwarding`), files and ``exec`` commands, all guests at once.
        Returns the guests by name. *timeout*: how long the guests may take to answer
        SSH (see :meth:`Lab.start`).

        Raises:
            ConfigError: a name already used in *lab*, an address used twice.
            LabError, CommandError: booting or configuring failed.
        """
        lab.diagram = self.mermaid()  # the evidence of a failure includes the picture
        bridges = {
            name: lab.bridge(name, subnet=list(spec.subnet) or None) for name, spec in self.bridges.items()
        }
        for spec in self.bridges.values():
            if spec.address:
                bridges[spec.name].add_address(spec.address)
        images = {
            packages: lab.image(packages) for packages in {self.node_packages(n) for n in self.nodes.values()}
            if packages
        }
        vms = {
            node.name: lab.vm(
                node.name,
                [bridges[link.bridge].nic(
                    mac=link.mac, model=link.model, mtu=link.mtu, up=link.up, address=link.address,
                ) for link in node.links],
                role=node.role, memory=node.memory, cpus=node.cpus, gateway=node.gateway,
                routes=node.lab_routes, image=images.get(self.node_packages(node)),
            )
            for node in self.nodes.values()
        }
        for node in self.nodes.values():
            for index, link in enumerate(node.links):
                if link.impair is not None:
                    vms[node.name].impair(index, **_impair_arguments(link.impair))
        if start:
            lab.start(timeout)
            unplanned = {name for name, spec in self.bridges.items() if not spec.subnet}
            # every guest at once (a 32-guest fabric has 8 routers to set), then, once
            # the whole lab routes, the start-up files and commands
            _each(self.nodes.values(), lambda node: _configure(vms[node.name], node, unplanned))
            _each([n for n in self.nodes.values() if n.files or n.exec], lambda n: _start_up(vms[n.name], n))
        return vms

    def node_packages(self, node: NodeSpec) -> tuple[str, ...]:
        """The Debian packages of *node*'s image: its own list (empty: the default
        image), else the lab's."""
        return self.packages if node.packages is None else node.packages

    # -- drawing ----------------------------------------------------------------------
    def mermaid(self) -> str:
        """A Mermaid flowchart: routers as hexagons, hosts as boxes, bridges as circles,
        links labelled with the guest's interface and address; a node says "forwarding"
        and "own routes" (``routes = false``) when it has them."""
        lines = ["graph LR"]
        for bridge in self.bridges.values():
            label = "<br/>".join([bridge.name, *bridge.subnet] + ([bridge.address] if bridge.address else []))
            lines.append(f'    {_id(bridge.name)}(("{label}"))')
        for node in self.nodes.values():
            shape = ('{{"', '"}}') if node.role == "router" else ('["', '"]')
            extra = "<br/>forwarding" if node.forwarding else ""
            extra += "" if node.lab_routes else "<br/>own routes"
            lines.append(f"    {_id(node.name)}{shape[0]}{node.name} ({node.role}){extra}{shape[1]}")
        for node in self.nodes.values():
            for index, link in enumerate(node.links):
                label = guest_ifname(index) + (f" {link.address}" if link.address else "")
                lines.append(f'    {_id(node.name)} ---|"{label}"| {_id(link.bridge)}')
        return "\n".join(lines) + "\n"


@contextmanager
def _naming(where: str) -> Iterator[None]:
    """Start the message of a ConfigError raised inside with *where* (the table), unless
    it does already."""
    try:
        yield
    except ConfigError as exc:
        if str(exc).startswith(where):
            raise
        raise ConfigError(f"{where}: {exc}") from None


def _link_state(link: Mapping[str, Any], where: str) -> tuple[int | None, bool, Impairment | None]:
    """A link's ``mtu``, ``up`` and ``impair`` keys, checked."""
    mtu = link.get("mtu")
    if mtu is not None:
        from .topology import MTU_RANGE

        validation.int_in_range(mtu, *MTU_RANGE, what=f"{where} mtu")
    up = link.get("up", True)
    if not isinstance(up, bool):
        raise ConfigError(f"{where}: up {up!r} is not accepted: give true or false")
    impair = None
    if "impair" in link:
        table = _table(link["impair"], f"{where} impair")
        _keys(table, IMPAIR_KEYS, f"{where} impair")
        try:
            impair = Impairment(**table).validated()
        except ConfigError as exc:
            raise ConfigError(f"{where} impair: {exc}") from None
    return mtu, up, impair


def _impair_arguments(impairment: Impairment) -> dict[str, Any]:
    return {f.name: getattr(impairment, f.name) for f in fields(impairment)}


def _routes(value: object, where: str) -> tuple[RouteSpec, ...]:
    """A node's ``routes``: a list of ``{ to, via }`` tables, or a bool (``false``: the
    node's routes are its own, which gives none here)."""
    if isinstance(value, bool):
        return ()
    if not isinstance(value, list):
        raise ConfigError(
            f"{where} routes: {value!r} is not accepted: give a list of {{ to, via }} tables, "
            "or false (the node's routes are its own)"
        )
    routes: list[RouteSpec] = []
    for raw_route in value:
        route = _table(raw_route, f"{where} route")
        _keys(route, {"to", "via"}, f"{where} route")
        to, via = route.get("to"), route.get("via")
        if to != "default":
            try:
                validation.ip_network(to)
            except ConfigError:
                raise ConfigError(
                    f"{where}: route to {to!r} is not accepted: give a network "
                    "(e.g. 10.20.20.0/24) or 'default'"
                ) from None
        validation.ip_address(via)
        routes.append(RouteSpec(str(to), str(via)))
    return tuple(routes)


def _commands(value: object, where: str) -> tuple[str, ...]:
    commands = _list(value, f"{where} exec")
    for command in commands:
        if not isinstance(command, str) or not command.strip():
            raise ConfigError(f"{where} exec: {command!r} is not accepted: give shell commands (strings)")
    return tuple(commands)


def _each(nodes: Iterable[NodeSpec], work: Callable[[NodeSpec], None]) -> None:
    """Do *work* for every node of *nodes*, in threads (a guest's commands are round
    trips that wait on the guest); raise the first failure, in the order of *nodes*."""
    nodes = list(nodes)
    with ThreadPoolExecutor(max_workers=max(1, min(len(nodes), 16))) as pool:
        for done in [pool.submit(work, node) for node in nodes]:
            done.result()


def _configure(vm: VM, node: NodeSpec, unplanned: Collection[str]) -> None:
    """Give *vm* what the lab does not: its links without an address on the *unplanned*
    bridges (no subnet) up, *node*'s routes and forwarding."""
    for index, link in enumerate(node.links):
        if link.address is None and link.bridge in unplanned:
            vm.interface_up(index)
    for route in node.routes:
        vm.set_route(route.to, route.via)
    if node.forwarding:
        vm.enable_forwarding(ipv4=True, ipv6=True)


def _start_up(vm: VM, node: NodeSpec) -> None:
    """Copy *node*'s files into *vm*, then run its ``exec`` commands in order.

    Raises:
        LabError: a command failed; the message names the node, the command, its exit
            status and output.
    """
    for remote, local in node.files:
        vm.put(local, remote)
    for command in node.exec:
        try:
            vm.ssh(command)
        except CommandError as exc:
            output = (exc.stdout + exc.stderr).strip()[-500:]
            raise LabError(
                f"node {node.name!r}: exec command {command!r} exited with status "
                f"{exc.status}: {output or 'no output'}"
            ) from exc


def _packages(value: object, where: str) -> tuple[str, ...] | None:
    """A ``packages`` list of the topology: None if absent, () if empty."""
    if value is None:
        return None
    if _list(value, f"{where} packages") == []:
        return ()
    from .package_image import parse_packages

    try:
        return parse_packages(_list(value, f"{where} packages"))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _generated(data: Mapping[str, Any]) -> dict[str, Any]:
    """*data* with the bridges and nodes its ``[generate]`` table asks for (see
    :mod:`pytest_netlab.builders`) put before those it declares itself."""
    from .builders import generate

    made = generate(_table(data["generate"], "[generate]"))
    for part in ("bridges", "nodes"):
        for name in _table(data.get(part, {}), part):
            if name in made[part]:
                raise ConfigError(
                    f"{part[:-1]} {name!r} is made by [generate] already: give yours another name"
                )
        made[part].update(data.get(part, {}))
    return made


def _is_address(value: object) -> bool:
    return validation.is_ip_address(value)


def _id(name: str) -> str:
    # Mermaid ids: letters, digits, '_' (bridges and nodes may share a name space)
    return "n_" + "".join(c if c.isalnum() else "_" for c in name)


def _table(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what}: {value!r} is not accepted: give a table (a dict)")
    return value


def _list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{what}: {value!r} is not accepted: give a list")
    return value


def _keys(data: Mapping[str, Any], allowed: set[str], what: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            f"{what}: unknown key {unknown[0]!r}: the keys are {', '.join(sorted(allowed))}"
        )

"""Topologies of the shapes people use, made by functions: a line, a ring, a star, a full
mesh of routers, and a leaf-spine fabric. Each returns the topology as data, the dict a
TOML topology file gives (see :mod:`pytest_netlab.labspec`), with an address plan: every
router forwards, every host has ``gateway = "auto"``, and the lab gives the addresses
and the routers' routes when it starts.

The plan: the LAN of router (or leaf) *i* is bridge ``lanI`` with 10.40.I.0/24, a link
between two routers is a bridge of its own with the next /30 of 10.41.0.0/16. Routers are
declared first, then the hosts, numbered ``h1``, ``h2``... across the whole topology.

    >>> from pytest_netlab.labspec import Topology
    >>> topology = Topology.from_dict(leaf_spine(spines=2, leaves=3, hosts_per_leaf=2))
    >>> len(topology.nodes), sorted(topology.nodes)[:3]
    (11, ['h1', 'h2', 'h3'])

A topology file asks for the same with a ``[generate]`` table (see :func:`generate`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ConfigError

LAN_NETWORK = ipaddress.ip_network("10.40.0.0/16")  # a /24 per router's LAN
LINK_NETWORK = ipaddress.ip_network("10.41.0.0/16")  # a /30 per link between routers
MAX_GUESTS = 256

Data = dict[str, Any]


class _Plan:
    """The dict being built: bridges and nodes in declaration order."""

    def __init__(self, memory: int | None) -> None:
        self.bridges: dict[str, dict[str, Any]] = {}
        self.routers: dict[str, list[str]] = {}  # router -> its bridges, in order
        self.hosts: dict[str, str] = {}  # host -> its bridge
        self.memory = memory
        self._links = LINK_NETWORK.subnets(new_prefix=30)

    def router(self, name: str) -> None:
        self.routers[name] = []

    def lan(self, router: str, number: int, hosts: int) -> None:
        """A LAN bridge behind *router*, with *hosts* hosts on it."""
        bridge = f"lan{number}"
        self.bridges[bridge] = {"subnet": f"10.40.{number}.0/24"}
        self.routers[router].append(bridge)
        for _ in range(hosts):
            self.hosts[f"h{len(self.hosts) + 1}"] = bridge

    def link(self, bridge: str, a: str, b: str) -> None:
        """A point-to-point link between routers *a* and *b*."""
        self.bridges[bridge] = {"subnet": str(next(self._links))}
        self.routers[a].append(bridge)
        self.routers[b].append(bridge)

    def data(self) -> Data:
        size = {} if self.memory is None else {"memory": self.memory}
        nodes: Data = {
            name: {"role": "router", "forwarding": True, "links": [{"bridge": b} for b in bridges], **size}
            for name, bridges in self.routers.items()
        }
        for name, bridge in self.hosts.items():
            nodes[name] = {"gateway": "auto", "links": [{"bridge": bridge}], **size}
        return {"bridges": self.bridges, "nodes": nodes}


def _count(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name}={value!r} is not accepted: give a whole number from {low} to {high}")
    return value


def _total(guests: int, what: str) -> None:
    if guests > MAX_GUESTS:
        raise ConfigError(
            f"{what} makes {guests} guests: at most {MAX_GUESTS} are accepted; give smaller numbers"
        )


def _memory(memory: int | None) -> int | None:
    return None if memory is None else _count(memory, "memory", 96, 65536)


def _routers(kind: str, routers: int, hosts_per_router: int, memory: int | None, fewest: int) -> _Plan:
    """Routers ``r1``...``rN``, each with a LAN of *hosts_per_router* hosts."""
    _count(routers, "routers", fewest, 16 if kind == "mesh" else 64)
    _count(hosts_per_router, "hosts_per_router", 0, 32)
    _total(routers * (1 + hosts_per_router),
           f"{kind}(routers={routers}, hosts_per_router={hosts_per_router})")
    plan = _Plan(_memory(memory))
    for i in range(1, routers + 1):
        plan.router(f"r{i}")
        plan.lan(f"r{i}", i, hosts_per_router)
    return plan


def line(routers: int, hosts_per_router: int = 1, *, memory: int | None = None) -> Data:
    """Routers ``r1 -- r2 -- ... -- rN`` in a chain (links ``r1r2``...), each with a
    LAN of hosts.

    Raises:
        ConfigError: *routers* not 1 to 64, *hosts_per_router* not 0 to 32.
    """
    plan = _routers("line", routers, hosts_per_router, memory, 1)
    for i in range(1, routers):
        plan.link(f"r{i}r{i + 1}", f"r{i}", f"r{i + 1}")
    return plan.data()


def ring(routers: int, hosts_per_router: int = 1, *, memory: int | None = None) -> Data:
    """Routers ``r1 -- r2 -- ... -- rN -- r1`` in a cycle, each with a LAN of hosts.

    Raises:
        ConfigError: *routers* not 3 to 64, *hosts_per_router* not 0 to 32.
    """
    plan = _routers("ring", routers, hosts_per_router, memory, 3)
    for i in range(1, routers + 1):
        after = i % routers + 1
        plan.link(f"r{i}r{after}", f"r{i}", f"r{after}")
    return plan.data()


def star(hosts: int, *, memory: int | None = None) -> Data:
    """One router ``hub`` in the middle, each host on a LAN of its own behind it.

    Raises:
        ConfigError: *hosts* not 1 to 64.
    """
    _count(hosts, "hosts", 1, 64)
    plan = _Plan(_memory(memory))
    plan.router("hub")
    for i in range(1, hosts + 1):
        plan.lan("hub", i, 1)
    return plan.data()


def mesh(routers: int, hosts_per_router: int = 1, *, memory: int | None = None) -> Data:
    """A full mesh: a link between every two routers, each router with a LAN of hosts.

    Raises:
        ConfigError: *routers* not 2 to 16, *hosts_per_router* not 0 to 32.
    """
    plan = _routers("mesh", routers, hosts_per_router, memory, 2)
    for i in range(1, routers + 1):
        for j in range(i + 1, routers + 1):
            plan.link(f"r{i}r{j}", f"r{i}", f"r{j}")
    return plan.data()


def leaf_spine(spines: int, leaves: int, hosts_per_leaf: int = 1, *, memory: int | None = None) -> Data:
    """A leaf-spine fabric: every leaf linked to every spine, each leaf with a LAN of
    hosts. Routers ``spine1``..., ``leaf1``...; links ``lIsJ`` (leaf I to spine J).
    A leaf reaches the other leaves' LANs through the first spine (the routes the lab
    gives take one path, the first declared of the shortest).

    Raises:
        ConfigError: *spines* not 1 to 16, *leaves* not 1 to 64, *hosts_per_leaf* not
            0 to 32, or more than 256 guests in all.
    """
    _count(spines, "spines", 1, 16)
    _count(leaves, "leaves", 1, 64)
    _count(hosts_per_leaf, "hosts_per_leaf", 0, 32)
    _total(spines + leaves * (1 + hosts_per_leaf),
           f"leaf-spine(spines={spines}, leaves={leaves}, hosts_per_leaf={hosts_per_leaf})")
    plan = _Plan(_memory(memory))
    for j in range(1, spines + 1):
        plan.router(f"spine{j}")
    for i in range(1, leaves + 1):
        plan.router(f"leaf{i}")
        plan.lan(f"leaf{i}", i, hosts_per_leaf)
        for j in range(1, spines + 1):
            plan.link(f"l{i}s{j}", f"leaf{i}", f"spine{j}")
    return plan.data()


SHAPES: dict[str, Callable[..., Data]] = {
    "line": line, "ring": ring, "star": star, "mesh": mesh, "leaf-spine": leaf_spine,
}
_PARAMETERS = {
    "line": ("routers", "hosts_per_router"), "ring": ("routers", "hosts_per_router"),
    "star": ("hosts",), "mesh": ("routers", "hosts_per_router"),
    "leaf-spine": ("spines", "leaves", "hosts_per_leaf"),
}
_OPTIONAL = {"hosts_per_router", "hosts_per_leaf", "memory"}


def generate(table: Mapping[str, Any]) -> Data:
    """The topology a ``[generate]`` table asks for: ``shape`` and the parameters of
    its function, e.g. ``{"shape": "leaf-spine", "spines": 2, "leaves": 4,
    "hosts_per_leaf": 2}``; ``memory`` (MiB) for every guest is optional.

    Raises:
        ConfigError: an unknown shape or key, a missing or bad parameter.
    """
    shape = table.get("shape")
    if shape not in SHAPES:
        raise ConfigError(f"[generate] shape {shape!r} is not accepted: use one of {', '.join(SHAPES)}")
    assert isinstance(shape, str)
    allowed = (*_PARAMETERS[shape], "memory")
    for key in table:
        if key != "shape" and key not in allowed:
            raise ConfigError(
                f"[generate] key {key!r} is not accepted for shape {shape!r}: the keys are "
                f"{', '.join(allowed)}"
            )
    missing = [key for key in _PARAMETERS[shape] if key not in table and key not in _OPTIONAL]
    if missing:
        raise ConfigError(f"[generate] shape {shape!r} needs {missing[0]} = N")
    return SHAPES[shape](**{k: v for k, v in table.items() if k != "shape"})

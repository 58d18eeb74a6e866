"""Pictures of a topology as text: ``pytest-netlab graph`` prints Mermaid (for Markdown pages)
or Graphviz DOT (``| dot -Tsvg``), the same shapes in both: routers as hexagons, hosts
as boxes, bridges as circles, links labelled with the guest's interface and address."""

from __future__ import annotations

import json

from .errors import ConfigError
from .guest_protocol import guest_ifname
from .labspec import Topology

GRAPH_FORMATS = ("mermaid", "dot")


def dot(topology: Topology) -> str:
    """A Graphviz graph of *topology* (undirected, left to right)."""

    def quoted(text: str) -> str:
        return json.dumps(text)  # a DOT string: double quotes, backslash escapes

    lines = ["graph lab {", "    rankdir=LR;"]
    for bridge in topology.bridges.values():
        label = "\n".join([bridge.name, *bridge.subnet] + ([bridge.address] if bridge.address else []))
        lines.append(f"    {quoted('bridge ' + bridge.name)} [shape=circle, label={quoted(label)}];")
    for node in topology.nodes.values():
        shape = "hexagon" if node.role == "router" else "box"
        label = f"{node.name} ({node.role})" + ("\nforwarding" if node.forwarding else "")
        lines.append(f"    {quoted('node ' + node.name)} [shape={shape}, label={quoted(label)}];")
    for node in topology.nodes.values():
        for index, link in enumerate(node.links):
            label = guest_ifname(index) + (f" {link.address}" if link.address else "")
            ends = f"{quoted('node ' + node.name)} -- {quoted('bridge ' + link.bridge)}"
            lines.append(f"    {ends} [label={quoted(label)}];")
    return "\n".join(lines) + "\n}\n"


def render(topology: Topology, form: str) -> str:
    """*topology* as *form*: ``mermaid`` or ``dot``.

    Raises:
        ConfigError: another form.
    """
    if form == "mermaid":
        return topology.mermaid()
    if form == "dot":
        return dot(topology)
    raise ConfigError(f"graph format {form!r} is not accepted: use one of {', '.join(GRAPH_FORMATS)}")

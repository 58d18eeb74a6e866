"""No import cycle between the package's modules (pure logic: reads the sources).

Module-level imports only, those made when a module is loaded: imports inside functions
(made late on purpose, to keep the pytest plugin light) and under ``if TYPE_CHECKING:``
(for annotations only) are not edges.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "pytest_netlab"
MODULES = {p.stem for p in PACKAGE.glob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _load_time_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            found += _load_time_imports(node.body) + _load_time_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for part in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                found += _load_time_imports(part)
    return found


def _targets(node: ast.Import | ast.ImportFrom) -> set[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names if a.name.startswith("pytest_netlab.")]
        return {n.split(".")[1] for n in names}
    if node.level == 0 and not (node.module or "").startswith("pytest_netlab"):
        return set()
    module = (node.module or "").removeprefix("pytest_netlab").lstrip(".")
    if module:
        return {module.split(".")[0]}
    return {a.name for a in node.names if a.name in MODULES}  # from . import validation


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for name in sorted(MODULES):
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        graph[name] = {t for node in _load_time_imports(tree.body) for t in _targets(node)} - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of *graph* as a path of modules, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_package_has_no_import_cycle():
    cycle = _cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_checker_sees_a_cycle_and_the_real_edges():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    graph = import_graph()
    assert {"validation", "errors", "topology"} <= graph["lab"]
    assert "lab" not in graph["guest"]  # under TYPE_CHECKING only
    assert "__init__" in MODULES and "errors" in graph["__init__"]


#: the layers of docs/architecture.md, top to bottom; a module not named is a mechanism
LAYERS = {
    "entry points": {"__init__", "__main__", "plugin", "cli"},
    "session and reporting": {
        "session", "options", "artifacts", "keep", "access", "running", "detached", "doctor", "graph",
    },
    "the lab core": {"lab", "guest", "bridge", "bringup", "labcontext"},
    "mechanisms": set(),
    "the pure model": {"topology", "addressing", "validation", "labspec", "builders", "nicmodels",
                       "guest_protocol", "constants", "errors", "impairment", "traffic"},
}
#: load-time imports against the layering, each for a reason
UPWARD = {
    ("errors", "untrusted"),  # an error's evidence (guest output) is escaped when shown
    ("guest_protocol", "untrusted"),  # what a guest prints in a mark is escaped when logged
    ("topology", "shares"),  # a guest's spec holds the checked Share values
    ("topology", "image"),  # a guest's spec holds the GuestImage it boots (checked by type)
}


def _layer(module: str) -> int:
    return next((i for i, members in enumerate(LAYERS.values()) if module in members), 3)


def test_modules_import_only_their_own_layer_and_those_below():
    upward = {(a, b) for a, targets in import_graph().items() for b in targets if _layer(b) < _layer(a)}
    assert upward == UPWARD


def test_every_module_is_placed_on_the_architecture_page():
    page = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text()
    package = Path(__file__).parents[1] / "pytest_netlab"
    missing = [p.name for p in package.glob("*.py") if p.stem not in ("__init__", "__main__")
               and f"`{p.name}`" not in page]
    assert missing == [], "add these to docs/architecture.md's table of layers"

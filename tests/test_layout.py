"""The import rules of proxy/: dependencies point one way, and no module imports itself back.

Read from the source with ``ast`` (nothing is imported): every ``import proxy...`` and
``from proxy... import`` (relative ones resolved), at module level or inside a function
(a deferred import is still a runtime dependency). Imports under ``if TYPE_CHECKING:``
are left out: they are annotations only and never run.

Rule 1: the runtime graph of proxy.* modules has no cycle, apart from KNOWN_CYCLES.
Rule 2: the layer table holds: the protocol layer (``proxy.dicom``, ``proxy.ul``) knows
        no handlers; configuration imports nothing of the proxy outside ``proxy.config``;
        observers know no handler code (the health monitor probes through
        ``proxy.upstream``, below the handlers); the C-FIND side (``proxy.query``) imports
        no operation handler and no listener; ``Services`` (``proxy.services``) is not
        imported below the handlers.
Rule 3: the tools (``proxy.tools``: demo, doctor, synthetic studies) are imported only by
        ``proxy.cli`` (and by each other): nothing that serves traffic depends on them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "proxy"

Graph = Mapping[str, frozenset[str]]

# Cycles that exist and are accepted for now, each as the sorted modules of the cycle.
# None today: retrieve/buffer ⇄ retrieve/reception (STYLE.md) is a TYPE_CHECKING import
# on reception's side, so it is not a runtime cycle. A NEW cycle fails Rule 1.
KNOWN_CYCLES: list[frozenset[str]] = []

# The workstation-facing listener on the proxy's own stack.
LISTENER = ("proxy.listener", "proxy.association", "proxy.responder")
# One handler per DIMSE operation.
OPERATIONS = ("proxy.operations",)
# Where the handlers live, what they run on and what they call: what the lower layers
# (configuration, observers, negotiation offers) must not import.
HANDLERS = ("proxy.app", "proxy.services", *LISTENER, *OPERATIONS, "proxy.query",
            "proxy.retrieve", "proxy.store", "proxy.tools", "proxy.cli")

# Rule 2, allow-lists: modules under the key import from proxy only what is listed.
ONLY_FROM: dict[str, tuple[str, ...]] = {
    # The upper layer: PDUs, states, DIMSE, negotiation, its I/O. proxy.contexts holds
    # the pure presentation-context tables negotiation answers from.
    "proxy.dicom": ("proxy.dicom", "proxy.status", "proxy.contexts"),
    "proxy.ul": ("proxy.ul", "proxy.dicom", "proxy.status"),
    "proxy.status": (),
    # rules.toml → dataclasses (model) through generic checks: the bottom of the proxy.
    "proxy.config": ("proxy.config",),
}

# Rule 2, deny-lists: modules under the key import none of what is listed.
NEVER_FROM: dict[str, tuple[str, ...]] = {
    "proxy.config": HANDLERS,
    # Observers know no handler code. observe.health is the one observer that talks to
    # peers (a C-ECHO per archive and destination): through proxy.upstream, the archive
    # client below the handlers; the Services it is started with is an annotation only
    # (TYPE_CHECKING), so Services → health and health → Services are not runtime edges.
    "proxy.observe": HANDLERS,
    # The event bus and its Prometheus and log observers talk to no peer.
    **{f"proxy.observe.{name}": ("proxy.upstream", "proxy.ul", "proxy.dicom")
       for name in ("events", "metrics", "logs")},
    # The C-FIND side (fan-out, matching, merging, federation) is called by the handlers
    # (operations.find, retrieve's survey) and plugged in by proxy.app; it may use
    # Services (federation is an extension) but no handler, listener, retrieve or store.
    "proxy.query": (*OPERATIONS, *LISTENER, "proxy.app", "proxy.cli", "proxy.tools",
                    "proxy.retrieve", "proxy.store"),
    "proxy.contexts": HANDLERS,
    "proxy.dicom": ("proxy.services",),
    "proxy.ul": ("proxy.services",),
    # The DICOMweb front door is a peer of the listener: it runs searches through
    # proxy.query and retrieves through proxy.retrieve.stream (WADO-RS is C-GET's path),
    # never through the DIMSE listener or another handler's module.
    "proxy.web": (*LISTENER, "proxy.tools", "proxy.cli", "proxy.store",
                  *(f"proxy.retrieve.{name}" for name in (
                      "buffer", "getter", "identifiers", "inbound", "puller", "reception",
                      "relay", "sinks", "sopclasses", "survey", "transcode"))),
    # Store-and-forward and relay serve the C-STORE handlers; they import none of them.
    "proxy.store": tuple(f"proxy.operations.{name}" for name in
                         ("echo", "find", "get", "move", "store", "store_relay")),
}

# Rule 3, reverse allow-lists: modules under the key are imported only from what is listed.
IMPORTED_ONLY_BY: dict[str, tuple[str, ...]] = {
    "proxy.tools": ("proxy.cli", "proxy.tools"),
}


def module_names(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__.py``)."""
    out: dict[str, Path] = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def imports_of(name: str, source: str, is_package: bool,
               modules: Iterable[str]) -> frozenset[str]:
    """The proxy.* modules ``source`` (module ``name``) imports at runtime.

    ``from a import b`` counts as ``a.b`` when that is a module, else as ``a``."""
    known = set(modules)
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child.test):
                for stmt in child.orelse:
                    visit_one(stmt)
                continue
            visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in known:
                    found.add(full)
                elif base in known:
                    found.add(base)
        visit(node)

    visit(ast.parse(source))
    found.discard(name)
    return frozenset(found)


def import_graph(package: Path = PACKAGE) -> dict[str, frozenset[str]]:
    modules = module_names(package)
    return {name: imports_of(name, path.read_text(encoding="utf-8"),
                             path.name == "__init__.py", modules)
            for name, path in modules.items()}


def cycles(graph: Graph) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(graph.get(root, ())))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph.get(nxt, ()))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def a_cycle(graph: Graph) -> list[str] | None:
    """One cycle as a path ``[a, b, ..., a]`` (graphlib's report), or None."""
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as err:
        return list(err.args[1])
    return None


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(graph: Graph) -> list[str]:
    """Every import that breaks the layer table (Rules 2 and 3), as ``a -> b (why)``."""
    out: list[str] = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            for layer, allowed in ONLY_FROM.items():
                if _under(module, layer) and not any(_under(target, a) for a in allowed):
                    out.append(f"{module} -> {target} ({layer} imports only {allowed})")
            for layer, denied in NEVER_FROM.items():
                if _under(module, layer) and any(_under(target, d) for d in denied):
                    out.append(f"{module} -> {target} ({layer} never imports {denied})")
            for layer, importers in IMPORTED_ONLY_BY.items():
                if _under(target, layer) and not any(_under(module, i) for i in importers):
                    out.append(f"{module} -> {target} ({layer} is imported only by "
                               f"{importers})")
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, frozenset[str]]:
    return import_graph()


def test_the_graph_is_read(graph: dict[str, frozenset[str]]) -> None:
    # Guards the reader itself: known runtime edges are there, TYPE_CHECKING ones are not.
    assert "proxy.store.spool" in graph["proxy.operations.store"]
    assert "proxy.retrieve.transcode" in graph["proxy.retrieve.sinks"]  # from proxy.retrieve import
    assert "proxy.retrieve.reception" in graph["proxy.retrieve.buffer"]
    assert "proxy.retrieve.buffer" not in graph["proxy.retrieve.reception"]  # TYPE_CHECKING
    assert "proxy.observe.health" not in graph["proxy.services"]       # TYPE_CHECKING
    assert "proxy.services" not in graph["proxy.observe.health"]       # TYPE_CHECKING
    assert "proxy.upstream" in graph["proxy.observe.health"]
    assert "proxy.query.federation" in graph["proxy.app"]     # from proxy.query import federation
    assert "proxy.query.fanout" in graph["proxy.query.search"]
    assert "proxy.config.checks" in graph["proxy.config.model"]  # from proxy.config import checks
    assert "proxy.config.model" in graph["proxy.config"]
    assert {"proxy.tools.demo", "proxy.tools.doctor"} <= graph["proxy.cli"]   # deferred


def test_no_new_import_cycle(graph: dict[str, frozenset[str]]) -> None:   # Rule 1
    new = [sorted(c) for c in cycles(graph) if c not in KNOWN_CYCLES]
    known_gone = [sorted(c) for c in KNOWN_CYCLES if c not in cycles(graph)]
    assert not new, f"import cycle(s): {new}"
    assert not known_gone, f"fixed: remove from KNOWN_CYCLES: {known_gone}"
    if not KNOWN_CYCLES:
        assert a_cycle(graph) is None


def test_layers_hold(graph: dict[str, frozenset[str]]) -> None:         # Rule 2
    assert violations(graph) == []


def test_a_cycle_is_found_and_named() -> None:
    graph = {"proxy.a": frozenset({"proxy.b"}), "proxy.b": frozenset({"proxy.c"}),
             "proxy.c": frozenset({"proxy.a"}), "proxy.d": frozenset({"proxy.a"})}
    assert cycles(graph) == [frozenset({"proxy.a", "proxy.b", "proxy.c"})]
    path = a_cycle(graph)
    assert path is not None and path[0] == path[-1] and set(path) == {"proxy.a", "proxy.b",
                                                                      "proxy.c"}
    assert cycles({"proxy.a": frozenset({"proxy.b"}), "proxy.b": frozenset()}) == []


def test_type_checking_and_deferred_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"
        "from proxy.pkg import thing\n"
        "if TYPE_CHECKING:\n"
        "    from proxy.hidden import Name\n"
        "else:\n"
        "    import proxy.shown\n"
        "def later():\n"
        "    from ..top import x\n"
    )
    modules = ["proxy.pkg", "proxy.pkg.mod", "proxy.pkg.sibling", "proxy.hidden",
               "proxy.shown", "proxy.top"]
    assert imports_of("proxy.pkg.mod", source, False, modules) == {
        "proxy.pkg.sibling", "proxy.pkg", "proxy.shown", "proxy.top"}


def test_a_layer_breach_is_reported() -> None:
    graph = {"proxy.dicom.pdu": frozenset({"proxy.services", "proxy.status"}),
             "proxy.observe.logs": frozenset({"proxy.retrieve.tally"}),
             "proxy.observe.metrics": frozenset({"proxy.upstream"}),
             "proxy.observe.health": frozenset({"proxy.upstream", "proxy.observe.events"}),
             "proxy.config": frozenset({"proxy.config.model"}),
             "proxy.config.model": frozenset({"proxy.config.checks", "proxy.status"}),
             "proxy.query.federation.recovery": frozenset({"proxy.operations.find",
                                                           "proxy.services"}),
             "proxy.query.fanout": frozenset({"proxy.association", "proxy.upstream"}),
             "proxy.retrieve.survey": frozenset({"proxy.tools.synthetic", "proxy.query.fanout"}),
             "proxy.cli": frozenset({"proxy.tools.demo"}),
             "proxy.tools.demo": frozenset({"proxy.tools.synthetic", "proxy.app"})}
    found = violations(graph)
    assert any(v.startswith("proxy.dicom.pdu -> proxy.services") for v in found)
    assert any(v.startswith("proxy.observe.logs -> proxy.retrieve.tally") for v in found)
    assert any(v.startswith("proxy.observe.metrics -> proxy.upstream") for v in found)
    assert any(v.startswith("proxy.config.model -> proxy.status") for v in found)
    assert any(v.startswith("proxy.query.federation.recovery -> proxy.operations.find")
               for v in found)
    assert any(v.startswith("proxy.query.fanout -> proxy.association") for v in found)
    assert any(v.startswith("proxy.retrieve.survey -> proxy.tools.synthetic") for v in found)
    reported = {v.split(" (")[0] for v in found}
    assert not any("proxy.status" in v for v in reported if not v.startswith("proxy.config"))
    assert not any(v.startswith(("proxy.config ", "proxy.cli ", "proxy.tools.",
                                 "proxy.observe.health ")) for v in reported)
    assert "proxy.config.model -> proxy.config.checks" not in reported
    assert "proxy.query.federation.recovery -> proxy.services" not in reported
    assert "proxy.query.fanout -> proxy.upstream" not in reported
    assert "proxy.retrieve.survey -> proxy.query.fanout" not in reported

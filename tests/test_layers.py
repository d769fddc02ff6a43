"""The layers of ``llm_proxy``, read from its import graph, so an upward import fails a test.

The graph comes from the source, not from importing it: every ``import`` / ``from ... import``
node of every module (``ast.walk``, so function-local imports and those under
``if TYPE_CHECKING:`` count too), relative imports resolved, files mapped to module names with
the ``package-dir`` table of ``pyproject.toml``. ``from P import n`` is an edge to ``P.n`` when
that is a module, else to ``P``. Importing ``a.b.c`` is one edge to ``a.b.c``; the parent
packages Python runs first are not edges (every module would otherwise depend on the top
``llm_proxy/__init__``). Dynamic imports (``importlib.import_module``) are not seen.

Rules, each reported as ``rule: importer -> imported (file:line)``:

* ``upward``: no import from a lower layer to a higher one (``LAYERS``; the same layer is fine).
* ``only``: middleware and providers import only the core; plugins the core and their own
  package (registry, shared checks); inbound the core, providers and itself. The providers
  package ``__init__`` (the format registry) may import its format modules, and a format
  module its own parts (``gemini`` -> ``gemini_media``, named ``<format>_<part>``), never
  another format. ``llm_proxy.testing``
  stands aside: it imports only core and providers, and nothing else imports it.
* ``cycle``: no import cycle. A cycle that crosses layers contains an ``upward`` or ``only``
  edge and fails as that edge; the cycle rule looks at the edges the layers allow (so only a
  cycle within one layer can be left) and lists every edge inside a strongly connected
  component (Tarjan), so breaking one edge shrinks the list. There is no exception for a
  package ``__init__``: one that imports its submodules and is imported back by them is a real
  cycle (Python hands out a half-run module), and a re-export-only ``__init__`` is never
  imported back, so it needs none. A lazy re-export (``__getattr__`` in ``llm_proxy/__init__``)
  is an edge like any other: importing ``llm_proxy`` from below is upward.
* ``private``: no ``from X import _name`` from another module, and no import of a private
  module (``pkg._mod``) from outside the package that holds it.
* ``unplaced``: every module is in one layer of the table; a new folder is placed on purpose.
* ``missing``: an ``llm_proxy`` import that names no module (a rename left behind).

``ALLOWED`` lists the violations that exist while the restructuring is under way; a new one
fails, and so does an entry that no longer occurs, so the list only shrinks.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from package_layout import ROOT, package_dirs, source_modules

PACKAGE = "llm_proxy"

# group (the folder under proxy/, or the mapped middleware/ and plugins/) -> layer, lowest first
LAYERS: dict[str, int] = {
    "core": 0,
    "providers": 1, "inbound": 1, "plugins": 1, "middleware": 1, "storage": 1, "accounts": 1,
    "access": 2, "routing": 2, "upstream": 2, "endpoints": 2, "runtime": 2,
    "admin": 3,
    "top": 4,
}
TOP = frozenset({PACKAGE, f"{PACKAGE}.app", f"{PACKAGE}.cli"})
SIDE = "testing"  # test doubles: outside the layers
ONLY: dict[str, frozenset[str]] = {  # groups whose imports are limited to these groups
    "middleware": frozenset({"core"}),
    "plugins": frozenset({"core", "plugins"}),
    "providers": frozenset({"core"}),
    "inbound": frozenset({"core", "providers", "inbound"}),
    SIDE: frozenset({"core", "providers", SIDE}),
}
REGISTRIES: dict[str, frozenset[str]] = {  # package __init__ modules allowed to import their own package
    f"{PACKAGE}.providers": frozenset({"core", "providers"}),
}
WITH_PARTS = frozenset({"providers"})  # a module here may import its own parts: gemini -> gemini_media
RULES = ("upward", "only", "cycle", "private", "unplaced", "missing")

# Violations tolerated for now, one line each, key as the failure prints it -> a short reason, e.g.
#     "only: llm_proxy.middleware.metering -> llm_proxy.runtime.request_end": "pending: runtime parts",
# Empty since issue 9's restructuring landed; keep it so: fix the import rather than list it.
ALLOWED: dict[str, str] = {}


@dataclass(frozen=True, slots=True)
class Module:
    name: str
    path: Path

    @property
    def package(self) -> str:
        """The package relative imports start from."""
        return self.name if self.path.name == "__init__.py" else self.name.rpartition(".")[0]


@dataclass(frozen=True, slots=True)
class Edge:
    importer: str
    imported: str
    names: tuple[str, ...]  # what ``from imported import ...`` takes; empty for ``import``
    where: str  # file:line


def discover(dirs: dict[str, Path]) -> dict[str, Module]:
    """Every module under the mapped folders, named as it installs."""
    return {name: Module(name, path) for name, path in source_modules(dirs)}


def _absolute(module: Module, level: int, target: str | None) -> str:
    base = module.package.split(".")
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def edges_of(module: Module, known: Iterable[str], root: Path) -> Iterator[Edge]:
    """The ``llm_proxy`` imports of one module, wherever they sit in it."""
    known = set(known)
    tree = ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))
    rel = module.path.relative_to(root).as_posix()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    yield Edge(module.name, alias.name, (), f"{rel}:{node.lineno}")
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node.level, node.module) if node.level else (node.module or "")
            if source != PACKAGE and not source.startswith(PACKAGE + "."):
                continue
            plain: list[str] = []
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in known:
                    yield Edge(module.name, sub, (), f"{rel}:{node.lineno}")
                else:
                    plain.append(alias.name)
            if plain or source not in known:
                yield Edge(module.name, source, tuple(plain), f"{rel}:{node.lineno}")


def group_of(name: str) -> str | None:
    if name in TOP:
        return "top"
    parts = name.split(".")
    if len(parts) > 1 and parts[0] == PACKAGE and (parts[1] in LAYERS or parts[1] == SIDE) and parts[1] != "top":
        return parts[1]
    return None


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (the graph is small, but recursion limits are not the point)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
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
                components.append(component)
    return components


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(edge: Edge) -> Iterator[str]:
    """``from X import _name``, and ``pkg._mod`` imported from outside ``pkg``."""
    arrow = f"{edge.importer} -> {edge.imported}"
    for name in edge.names:
        if _is_private(name):
            yield f"private: {arrow}.{name}"
    parts = edge.imported.split(".")
    for i, part in enumerate(parts):
        owner = ".".join(parts[:i])
        if _is_private(part) and not (edge.importer == owner or edge.importer.startswith(owner + ".")):
            yield f"private: {arrow}"


def layer_rule(importer: str, imported: str) -> str | None:
    """``only`` or ``upward`` if the import breaks that rule; None if the layers allow it."""
    src, dst = group_of(importer), group_of(imported)
    if src is None or dst is None:
        return None  # reported as unplaced
    allowed = REGISTRIES.get(importer, ONLY.get(src))
    if src in WITH_PARTS and src == dst and imported.startswith((importer + "_", importer + ".")):
        return None
    if (allowed is not None and dst not in allowed) or (dst == SIDE and src != SIDE):
        return "only"
    if src != SIDE and dst != SIDE and LAYERS[src] < LAYERS[dst]:
        return "upward"
    return None


def cyclic(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Each module on a cycle -> the modules of its strongly connected component."""
    return {name: component for component in strongly_connected(graph) if len(component) > 1
            for name in component}


@dataclass(frozen=True, slots=True)
class Findings:
    where: dict[str, list[str]]  # violation key -> ``file:line`` of each occurrence
    closing: frozenset[str]  # upward/only keys whose edge sits on an import cycle


def check(modules: dict[str, Module], edges: list[Edge], root: Path) -> Findings:
    found: dict[str, list[str]] = {}
    closing: set[str] = set()

    def report(key: str, where: str) -> None:
        found.setdefault(key, []).append(where)

    for module in modules.values():
        if group_of(module.name) is None:
            report(f"unplaced: {module.name}", module.path.relative_to(root).as_posix())
    inside = [edge for edge in edges if edge.imported in modules]
    for edge in edges:
        if edge.imported not in modules:
            report(f"missing: {edge.importer} -> {edge.imported}", edge.where)
    full: dict[str, set[str]] = {name: set() for name in modules}
    allowed: dict[str, set[str]] = {name: set() for name in modules}  # the edges the layers allow
    for edge in inside:
        if edge.importer != edge.imported:
            full[edge.importer].add(edge.imported)
    on_cycle = cyclic(full)
    for edge in inside:
        for key in private_uses(edge):
            report(key, edge.where)
        rule = layer_rule(edge.importer, edge.imported)
        if rule is not None:
            key = f"{rule}: {edge.importer} -> {edge.imported}"
            report(key, edge.where)
            if edge.imported in on_cycle.get(edge.importer, ()):
                closing.add(key)
        elif edge.importer != edge.imported:
            allowed[edge.importer].add(edge.imported)
    within = cyclic(allowed)
    for edge in inside:
        if edge.imported in within.get(edge.importer, ()) and edge.imported in allowed[edge.importer]:
            report(f"cycle: {edge.importer} -> {edge.imported}", edge.where)
    return Findings(found, frozenset(closing))


@functools.cache
def violations() -> Findings:
    modules = discover(package_dirs(ROOT))
    edges = [edge for module in modules.values() for edge in edges_of(module, modules, ROOT)]
    return check(modules, edges, ROOT)


def _listing(keys: Iterable[str], found: Findings) -> str:
    return "\n".join(
        f"  {key} ({', '.join(found.where[key])})" + ("  [closes a cycle]" if key in found.closing else "")
        for key in sorted(keys)
    )


@pytest.mark.parametrize("rule", RULES)
def test_no_new_violation(rule: str) -> None:
    found = violations()
    new = [key for key in found.where if key.startswith(rule + ":") and key not in ALLOWED]
    if new:
        pytest.fail(f"{len(new)} new {rule} violation(s):\n" + _listing(new, found), pytrace=False)


@pytest.mark.parametrize("rule", RULES)
def test_allowed_list_only_shrinks(rule: str) -> None:
    found = violations()
    gone = [key for key in ALLOWED if key.startswith(rule + ":") and key not in found.where]
    if gone:
        pytest.fail("no longer occurs, remove from ALLOWED:\n" + "\n".join(f"  {k}" for k in gone), pytrace=False)


def test_allowed_keys_name_a_rule() -> None:
    assert all(key.split(":", 1)[0] in RULES for key in ALLOWED)


def test_graph_is_not_empty() -> None:
    """A parser that sees nothing would pass every rule."""
    modules = discover(package_dirs(ROOT))
    edges = [edge for module in modules.values() for edge in edges_of(module, modules, ROOT)]
    assert {f"{PACKAGE}.core.context", f"{PACKAGE}.middleware.auth", f"{PACKAGE}.plugins.registry"} <= set(modules)
    assert len(modules) > 50 and len(edges) > 100
    assert any(e.importer == f"{PACKAGE}.app" and e.imported.startswith(f"{PACKAGE}.middleware.") for e in edges)


def test_parser_sees_local_type_checking_and_relative_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "src"
    (pkg / "core").mkdir(parents=True)
    (pkg / "routing").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "base.py").write_text(
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from llm_proxy.routing.table import Table\n"
        "def late() -> None:\n"
        "    from ..routing import table\n"
        "from .helpers import _secret\n"
    )
    (pkg / "core" / "helpers.py").write_text("_secret = 1\n")
    (pkg / "routing" / "__init__.py").write_text("")
    (pkg / "routing" / "table.py").write_text("from llm_proxy.core import base\nfrom . import plan\n")
    (pkg / "routing" / "plan.py").write_text("import llm_proxy.routing.table\nimport llm_proxy.core.helpers\n")
    modules = discover({PACKAGE: pkg})
    edges = [edge for module in modules.values() for edge in edges_of(module, modules, tmp_path)]
    arrows = {(e.importer, e.imported, e.where) for e in edges}
    assert (f"{PACKAGE}.core.base", f"{PACKAGE}.routing.table", "src/core/base.py:4") in arrows
    assert (f"{PACKAGE}.core.base", f"{PACKAGE}.routing.table", "src/core/base.py:6") in arrows
    found = check(modules, edges, tmp_path).where
    assert found["upward: llm_proxy.core.base -> llm_proxy.routing.table"] == ["src/core/base.py:4",
                                                                              "src/core/base.py:6"]
    assert "private: llm_proxy.core.base -> llm_proxy.core.helpers._secret" in found
    cycles = sorted(key for key in found if key.startswith("cycle:"))
    assert cycles == ["cycle: llm_proxy.routing.plan -> llm_proxy.routing.table",
                      "cycle: llm_proxy.routing.table -> llm_proxy.routing.plan"]  # core.base's is upward


@pytest.mark.parametrize(("importer", "imported", "rule"), [
    ("llm_proxy.routing.pipeline", "llm_proxy.core.context", None),
    ("llm_proxy.routing.pipeline", "llm_proxy.upstream.relay", None),  # same layer
    ("llm_proxy.routing.pipeline", "llm_proxy.admin.api", "upward"),
    ("llm_proxy.core.config", "llm_proxy", "upward"),
    ("llm_proxy.middleware.auth", "llm_proxy.access.key_lookup", "only"),
    ("llm_proxy.middleware.auth", "llm_proxy.middleware.alias", "only"),
    ("llm_proxy.providers.gemini", "llm_proxy.providers.openai", "only"),
    ("llm_proxy.providers", "llm_proxy.providers.gemini", None),  # the format registry
    ("llm_proxy.providers.gemini", "llm_proxy.providers.gemini_media", None),  # its own part
    ("llm_proxy.providers.gemini_media", "llm_proxy.providers.gemini", "only"),
    ("llm_proxy.providers.gemini", "llm_proxy.providers.geminix", "only"),
    ("llm_proxy.plugins.max_tokens_cap", "llm_proxy.plugins.registry", None),
    ("llm_proxy.inbound.responses", "llm_proxy.providers.openai", None),
    ("llm_proxy.inbound.responses", "llm_proxy.routing.groups", "only"),
    ("llm_proxy.testing.mock_upstream", "llm_proxy.providers.openai", None),
    ("llm_proxy.testing.mock_upstream", "llm_proxy.app", "only"),
    ("llm_proxy.cli", "llm_proxy.testing.mock_upstream", "only"),
])
def test_layer_rule(importer: str, imported: str, rule: str | None) -> None:
    assert layer_rule(importer, imported) == rule


@pytest.mark.parametrize(("importer", "imported", "names", "private"), [
    ("llm_proxy.plugins.max_tokens_cap", "llm_proxy.plugins._checks", (), False),  # its own package
    ("llm_proxy.routing.groups", "llm_proxy.plugins._checks", (), True),
    ("llm_proxy.runtime.overlay", "llm_proxy.core.config", ("parse_config", "_convert"), True),
    ("llm_proxy.cli", "llm_proxy", ("__version__",), False),
])
def test_private_uses(importer: str, imported: str, names: tuple[str, ...], private: bool) -> None:
    assert bool(list(private_uses(Edge(importer, imported, names, "x.py:1")))) is private

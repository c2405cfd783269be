"""localserve's import graph, read from the source: every ``import`` statement, at module
level, inside functions and under ``TYPE_CHECKING`` alike (an import made late is still
a dependency). tests/unit/test_layers.py holds the code to the layer order of
docs/architecture.md with it.

    python -m tests.support.imports     # the graph: packages, upward imports, cycles
"""

from __future__ import annotations

import ast
import collections
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "localserve"

# Top to bottom; names in one tuple are one layer and may not import each other.
# A module may import its own package, and any package of a lower layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__main__",),  # python -m localserve
    ("cli",),
    ("client", "server"),
    ("scheduler",),
    ("engine",),
    ("plan",),
    ("store",),
    ("schemas",),
    ("runtime",),
    ("config",),
    ("errors",),
    ("__init__",),  # localserve's version
)
# The daemon's side (and the client) never imports the engine: llama.cpp runs only in
# the runner process, which the scheduler starts by module name.
DAEMON_SIDE: tuple[str, ...] = ("client", "server", "scheduler")
# Libraries one layer owns (imported nowhere else in localserve).
OWNED: dict[str, tuple[str, ...]] = {"llama_cpp": ("engine",)}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, dotted
    target: str  # the imported module (or the package of an imported name), dotted
    line: int
    in_function: bool

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line} imports {self.target}"


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports() -> Iterator[Import]:
    """Every import statement of every localserve module, localserve's and others'."""
    known = modules()
    for name, path in known.items():
        yield from imports_in(name, path.read_text(), known, package=path.name == "__init__.py")


def imports_in(
    name: str, source: str, known: Iterable[str], *, package: bool = False
) -> Iterator[Import]:
    """The import statements of module ``name`` with this ``source`` (``package``: it is
    a package's ``__init__``); ``known`` tells modules from names imported out of them."""
    tree = ast.parse(source, name)
    inside = {
        id(node)
        for func in ast.walk(tree)
        if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(func)
    }
    known = set(known)
    parent_package = name if package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                parent = parent_package.split(".")
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            # ``from localserve.engine import rpc`` imports the module engine.rpc.
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        for target in targets:
            yield Import(name, target, node.lineno, id(node) in inside)


def layer_of(module: str) -> str:
    """``localserve.engine.rpc`` -> ``engine``; the package root -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


RANK = {name: rank for rank, layer in enumerate(LAYERS) for name in layer}


def violations() -> list[str]:
    """What breaks the order: upward or sideways imports, the daemon importing the engine,
    a library imported outside the layer that owns it."""
    return _check(imports())


def violations_in(name: str, source: str) -> list[str]:
    """What :func:`violations` would say of module ``name`` if it held ``source``."""
    return _check(imports_in(name, source, modules()))


def _check(found_imports: Iterable[Import]) -> list[str]:
    found: list[str] = []
    for imp in dict.fromkeys(found_imports):  # one entry per statement and target
        top = imp.target.split(".")[0]
        if top in OWNED and layer_of(imp.source) not in OWNED[top]:
            found.append(f"{imp.where}: only {', '.join(OWNED[top])} may import {top}")
        if top != "localserve":
            continue
        source, target = layer_of(imp.source), layer_of(imp.target)
        if source == target:
            continue
        if source not in RANK or target not in RANK:
            found.append(f"{imp.where}: {source if source not in RANK else target} has no layer")
        elif RANK[target] <= RANK[source]:
            found.append(f"{imp.where}: {source} may not import {target} (not below it)")
        elif source in DAEMON_SIDE and target == "engine":
            found.append(f"{imp.where}: the daemon's side never imports the engine")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def graphs() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(package -> packages it imports, module -> localserve modules it imports)."""
    packages: dict[str, set[str]] = collections.defaultdict(set)
    modules_: dict[str, set[str]] = collections.defaultdict(set)
    for imp in imports():
        if not imp.target.startswith("localserve"):
            continue
        if layer_of(imp.source) != layer_of(imp.target):
            packages[layer_of(imp.source)].add(layer_of(imp.target))
        if imp.source != imp.target:
            modules_[imp.source].add(imp.target)
    return packages, modules_


def main() -> int:
    own = [i for i in dict.fromkeys(imports()) if i.target.startswith("localserve")]
    packages, modules_ = graphs()
    print(f"modules: {len(modules())}")
    print(
        f"localserve imports: {len(own)}, of them inside functions: "
        f"{sum(i.in_function for i in own)}"
    )
    for name in sorted(packages, key=lambda n: RANK.get(n, -1)):
        print(f"  {name:10s} -> {', '.join(sorted(packages[name], key=lambda n: RANK.get(n, 99)))}")
    print(f"package cycles: {cycles(packages) or 'none'}")
    print(f"module cycles: {cycles(modules_) or 'none'}")
    broken = violations()
    print(f"layer violations: {len(broken)}")
    for line in broken:
        print(f"  {line}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())

"""Imports run one way: no cycle among metavote's modules.

Every module under ``src/metavote`` is parsed with :mod:`ast` (nothing is imported) and every import
statement in it becomes an edge to the module it names, relative imports resolved. What counts:

- **imports anywhere in a module count**, at its top and inside functions alike: a lazy import in a
  function (``from .traced import TracedModel`` inside a function) runs as soon as the function is
  called, so it ties the two modules as a top-level import does; making an import lazy hides a circle,
  it does not remove it;
- **imports under ``if TYPE_CHECKING:`` do not count**: they never run, they only tell type checkers
  where a name lives (``metavote/__init__.py`` names every public class there, and loads each on
  first use);
- ``from package import name`` is an edge to the module ``package.name`` when that is a module, else
  to ``package`` (its ``__init__.py``, which re-exports ``name``); importing ``a.b.c`` also runs the
  ``__init__.py`` of ``a`` and ``a.b``, and those count too, except the importer's own packages (a
  package's ``__init__`` importing its submodules, which import their siblings, is no circle).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "metavote"


def module_names(src: Path = SRC, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of ``package``: dotted name -> file (a package is its ``__init__.py``)."""
    names = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Import nodes anywhere in ``tree`` (functions and classes included), except under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _with_parents(name: str, importer: str, modules: dict[str, Path]) -> list[str]:
    """``name`` and the packages above it that importing it runs, less the importer's own packages."""
    parts = name.split(".")
    own = {".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 2)}
    return [m for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if m in modules and m not in own or m == name]


def import_graph(src: Path = SRC, package: str = PACKAGE) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (see the module docstring for what counts)."""
    modules = module_names(src, package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in _imports(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:  # relative: from the importer's package, one level up per extra dot
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                for alias in node.names:
                    targets.append(f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in modules else stem)
            for target in targets:
                while target and target not in modules and "." in target:  # `import a.b.func`-like: the module part
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != name:
                    graph[name].update(m for m in _with_parents(target, name, modules) if m != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None (depth-first search, iterative)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if state.get(root):
            continue
        path, iters = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while path:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph[nxt])))
    return None


def test_the_graph_sees_relative_lazy_and_package_imports():
    graph = import_graph()
    assert "metavote.bench.ratios" in graph["metavote.bench.harness"]      # from .ratios import flops_ratio
    assert "metavote.bench.harness" in graph["metavote.bench.ablations"]
    assert "metavote.methods" in graph["metavote.bench.harness"]           # from ..methods import ... (its __init__)
    assert "metavote" in graph["metavote.zoo.bundle"]                      # `import metavote` inside a function counts
    assert "metavote.zoo" not in graph["metavote"]                         # under TYPE_CHECKING: does not count


def test_find_cycle_reports_the_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)

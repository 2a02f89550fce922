"""The import graph of our packages: no cycles between modules, and package edges only in the
directions DESIGN.md allows (``workbench -> {scaffold, model, trainer, experiments}``,
``trainer -> model -> kernels``; ``kernels`` and ``scaffold`` import nothing of ours), plus
``experiments -> {trainer, model}`` (fault scenarios are trainer configs; suite stores write
through ``model.files``' atomic helper). ``trainer`` may use ``kernels`` directly (tree attention) as it sits above ``model``.

Every module is parsed with ``ast`` (nothing is imported), and every import statement counts:
module level, inside functions, and under ``if TYPE_CHECKING:`` (there are none today; a
type-only import is still a dependency, so it must point the allowed way too). A cycle hidden by
moving an import into a function is still a cycle here.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kernels", "model", "trainer", "scaffold", "experiments", "workbench")

# package -> the packages of ours it may import (besides itself).
ALLOWED = {
    "kernels": set(),
    "scaffold": set(),
    "model": {"kernels"},
    "trainer": {"model", "kernels"},
    "experiments": {"trainer", "model"},
    "workbench": {"scaffold", "model", "trainer", "experiments"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def discover() -> dict[str, Path]:
    """Every module of our packages: dotted name -> file."""
    modules = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            modules[module_name(path)] = path
    return modules


def imported_names(path: Path, name: str) -> set[str]:
    """Dotted names of every import in the file (absolute, relative ones resolved)."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from pkg import sub` imports the submodule `pkg.sub` when there is one, else a
            # name of `pkg` (build_graph resolves the longest prefix that is a module)
            out.update(f"{module}.{alias.name}" for alias in node.names)
    return out


def build_graph() -> dict[str, set[str]]:
    """module -> the modules of ours it imports (the longest dotted prefix that is a module)."""
    modules = discover()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for imported in imported_names(path, name):
            parts = imported.split(".")
            for n in range(len(parts), 0, -1):
                target = ".".join(parts[:n])
                if target in modules:
                    if target != name:
                        edges.add(target)
                    break
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle path (a -> ... -> a) per strongly connected component with more than
    one module (Tarjan's algorithm, iterative); ``components`` lists all their members."""
    return [_cycle_in(graph, set(c)) for c in components(graph)]


def components(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module, members sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first back to it)."""
    start = min(component)
    previous = {start: ""}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:
                    path = [node]
                    while previous[path[-1]]:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, start]
                if child not in previous:
                    previous[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"no cycle in {sorted(component)}")


def wrong_direction(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        pkg = module.split(".")[0]
        for target in sorted(targets):
            other = target.split(".")[0]
            if other != pkg and other not in ALLOWED[pkg]:
                bad.append(f"{module} -> {target} ({pkg} may import only {sorted(ALLOWED[pkg])})")
    return bad


# ------------------------------------------------------------------------------------ tests
def test_every_package_is_checked():
    graph = build_graph()
    assert {m.split(".")[0] for m in graph} == set(PACKAGES)
    assert set(ALLOWED) == set(PACKAGES)
    assert len(graph) > 100  # the walk found the tree, not an empty folder


def test_no_import_cycles():
    graph = build_graph()
    report = [
        f"{' -> '.join(cycle)}   (modules in this knot: {', '.join(members)})"
        for cycle, members in zip(find_cycles(graph), components(graph), strict=True)
    ]
    assert not report, "import cycles:\n" + "\n".join(report)


def test_imports_point_the_allowed_way():
    bad = wrong_direction(build_graph())
    assert not bad, "wrong-direction imports:\n" + "\n".join(bad)


# ------------------------------------------------------------------ the checker checks itself
def test_checker_reports_a_cycle_path_and_a_wrong_direction():
    graph = {
        "kernels.a": {"kernels.b"},
        "kernels.b": {"kernels.c"},
        "kernels.c": {"kernels.a", "model.x"},
        "model.x": {"kernels.a"},
        "model.y": set(),
    }
    cycles = find_cycles(graph)
    assert components(graph) == [["kernels.a", "kernels.b", "kernels.c", "model.x"]]
    assert len(cycles) == 1
    assert cycles[0] in (
        ["kernels.a", "kernels.b", "kernels.c", "kernels.a"],
        ["kernels.a", "kernels.b", "kernels.c", "model.x", "kernels.a"],
    )
    assert wrong_direction(graph) == [
        "kernels.c -> model.x (kernels may import only [])",
    ]


def test_function_level_and_relative_imports_count(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text(
        "import os\n"
        "from . import sibling\n"
        "from ..up import thing\n"
        "def f():\n"
        "    from model.modeling import Attention\n"
    )
    names = imported_names(path, "trainer.rl.mod")
    assert names == {"os", "trainer.rl.sibling", "trainer.up.thing", "model.modeling.Attention"}

"""The package's layering, read from the source: no module imports one that imports it back (a
cycle, counting imports inside functions), and the stage modules know nothing of Ray: the
choice "here or on Ray" is made above them (`tttnn.cli`, `tttnn.jobs`), and `tttnn.distributed`
uses the stages, never the other way round."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "tttnn"

STAGES = ("corpus", "embed", "index", "guard", "select", "pack", "ttt", "metrics", "evaluate", "build")  # fmt: skip
"""The modules a job is made of (search is `index`'s); each runs in one process, whoever calls
it."""

RAY = "tttnn.distributed"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The tttnn modules `path` imports by name, at any depth of its code (functions and
    `TYPE_CHECKING` blocks included). `from tttnn.x import y` counts as `tttnn.x.y` when that
    is a module, else as `tttnn.x`. The parent packages Python runs on the way (`tttnn`'s
    `__init__` for every `tttnn.x`) are not counted: they are not the module's choice."""
    name = module_name(path)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "tttnn")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "tttnn":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of `graph`, each `[a, b, ..., a]`: for every group of modules that
    import each other (a strongly connected component), a shortest cycle through each of its
    modules, each cycle once."""
    found: list[list[str]] = []
    for group in _groups(graph):
        for start in sorted(group):
            cycle = _shortest_cycle(graph, group, start)
            if not any(set(cycle) == set(c) and len(cycle) == len(c) for c in found):
                found.append(cycle)
    return found


def _groups(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module, or of a module importing itself
    (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group: set[str] = set()
            while node not in group:
                group.add(stack.pop())
            if len(group) > 1 or node in graph.get(node, ()):
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return groups


def _shortest_cycle(graph: dict[str, set[str]], group: set[str], start: str) -> list[str]:
    came: dict[str, str] = {}
    todo = [start]
    while todo:
        node = todo.pop(0)
        for nxt in sorted(graph[node] & group):
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(came[path[-1]])
                return [*reversed(path), start]
            if nxt not in came:
                came[nxt] = node
                todo.append(nxt)
    raise AssertionError(f"no cycle through {start}")


def test_the_graph_is_read_from_the_source():
    """Not vacuous: the graph holds edges we know are there, lazy ones included."""
    graph = import_graph()
    assert "tttnn.index" in graph["tttnn.build"]
    assert "tttnn.evaluate" in graph["tttnn.distributed.evaluate"]
    assert "tttnn.pack" in graph["tttnn.evaluate"]  # imported inside a function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b", "c"}, "b": {"a"}, "c": {"a"}}) == [["a", "b", "a"], ["c", "a", "c"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"c"}}) == [["c", "c"]]


def test_no_module_imports_one_that_imports_it_back():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


@pytest.mark.parametrize("stage", STAGES)
def test_stage_modules_do_not_import_the_ray_package(stage):
    graph = import_graph()
    name = f"tttnn.{stage}"
    assert name in graph, f"{name} is gone: update STAGES"
    ray = sorted(m for m in graph[name] if m == RAY or m.startswith(RAY + "."))
    assert not ray, f"{name} imports {', '.join(ray)}"

"""The import graph of utils/ and templates/, read from the source with ast: no cycle, counting imports
inside functions too (a late import that dodges a cycle still is one), and the reference kit's API at the
edge (utils/training/amp_utils.py, training_core.py) imported by nothing of the kit's own."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("utils", "templates")
REFERENCE_API = {"utils.training.amp_utils", "utils.training.training_core"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def kit_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The kit modules `path` imports anywhere in its body: `from pkg import name` counts pkg.name when
    that is a module, else pkg; a package's parents are not counted (their __init__ imports lazily)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                names.add(full if full in modules else node.module)
    return {name for name in names if name in modules}


def import_graph() -> dict[str, set[str]]:
    modules = kit_modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path [a, b, ..., a], or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return []

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return []


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    assert "utils.training.coordinator" in graph["utils.training"]  # imported inside __getattr__
    assert "utils.training.training_core" in graph["utils.training"]


def test_find_cycle_reports_a_cycle_it_is_given():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_utils_and_templates():
    cycle = find_cycle(import_graph())
    assert cycle == [], "import cycle: " + " -> ".join(cycle)


def test_only_the_package_entry_reaches_the_reference_api():
    graph = import_graph()
    importers = {name for name, targets in graph.items() if targets & REFERENCE_API} - REFERENCE_API
    assert importers == {"utils.training"}  # the lazy `from utils.training import TrainingCoordinator`


def test_the_wizard_imports_nothing_of_the_reference_api():
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("utils.ui"):
            assert not targets & REFERENCE_API, (name, targets & REFERENCE_API)

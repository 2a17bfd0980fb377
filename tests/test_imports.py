"""The import graph of utils/ and templates/, read from the source with ast: no cycle between modules nor
between packages (utils.training, utils.data, utils.export, ...), counting imports inside functions and under
TYPE_CHECKING too (a late import that dodges a cycle still is one), and the reference kit's API at the edge
(utils/training/amp_utils.py, training_core.py) imported by nothing of the kit's own.

The packages form a DAG (package_graph(import_graph()) shows it whole), lowest first: errors, files, formatting,
env, config, precision -> models -> data -> plan (the run plan and its one memory model) -> run_folder,
run_list, wandb_helpers, inspection, inference -> training -> ui, loading, cli. Export, the Hub, ONNX and GGUF are leaves: training, data, models, inspection and
the run folder import none of them. KNOWN_CYCLE_EDGES lists the package edges that still close a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("utils", "templates")
REFERENCE_API = {"utils.training.amp_utils", "utils.training.training_core"}
# `python -m utils.training` runs this module; the command line it starts (utils.cli) sits above training. No
# module imports an entry point, so its edge up to utils.cli cannot close a cycle at run time: it is left out
# of the package graph (test_entry_points_are_imported_by_nothing holds that true).
ENTRY_POINTS = {"utils.training.__main__"}
# The ratchet: package edges that still close a cycle, each with why it is left. A new cycle fails the test,
# and so does a listed edge that no longer exists or no longer closes a cycle (then delete it here).
KNOWN_CYCLE_EDGES: dict[tuple[str, str], str] = {}
LEAVES = {"utils.export", "utils.hub", "utils.onnx_export", "utils.gguf_export"}


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


def package_of(module: str) -> str:
    """utils.training.builder -> utils.training; utils.export -> utils.export; templates.gpt -> templates."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "utils" else parts[0]


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The packages' import graph: package A imports B when a module of A (entry points aside) imports one of B."""
    packages: dict[str, set[str]] = {package_of(name): set() for name in graph}
    for name, targets in graph.items():
        if name not in ENTRY_POINTS:
            packages[package_of(name)] |= {package_of(t) for t in targets} - {package_of(name)}
    return packages


def without(graph: dict[str, set[str]], edges) -> dict[str, set[str]]:
    return {name: targets - {b for a, b in edges if a == name} for name, targets in graph.items()}


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


def test_find_cycle_finds_a_package_cycle_that_no_module_cycle_shows():
    modules = {"utils.a.one": {"utils.b.two"}, "utils.b.two": set(), "utils.b.three": {"utils.a.four"},
               "utils.a.four": set()}
    assert find_cycle(modules) == []  # no module imports itself back...
    assert find_cycle(package_graph(modules)) == ["utils.a", "utils.b", "utils.a"]  # ...but the packages do
    assert find_cycle(without(package_graph(modules), {("utils.b", "utils.a")})) == []


def test_no_import_cycle_among_packages_beyond_the_known_ones():
    packages = package_graph(import_graph())
    cycle = find_cycle(without(packages, KNOWN_CYCLE_EDGES))
    assert cycle == [], "package import cycle: " + " -> ".join(cycle)


def test_every_known_cycle_edge_still_exists_and_still_closes_a_cycle():
    packages = package_graph(import_graph())
    for edge in KNOWN_CYCLE_EDGES:
        a, b = edge
        assert b in packages.get(a, set()), f"{a} -> {b} is gone: delete it from KNOWN_CYCLE_EDGES"
        rest = without(packages, set(KNOWN_CYCLE_EDGES) - {edge})
        assert find_cycle(rest), f"{a} -> {b} closes no cycle any more: delete it from KNOWN_CYCLE_EDGES"


def test_entry_points_are_imported_by_nothing():
    graph = import_graph()
    assert ENTRY_POINTS <= set(graph)
    assert not {name for name, targets in graph.items() if targets & ENTRY_POINTS}


def test_export_hub_and_onnx_are_leaves_that_training_data_models_and_inspection_never_import():
    packages = package_graph(import_graph())
    assert LEAVES <= set(packages)
    for low in ("utils.training", "utils.data", "utils.models", "utils.inspection", "utils.run_folder"):
        assert not packages[low] & LEAVES, (low, packages[low] & LEAVES)


def test_the_run_folder_is_storage_that_imports_no_kit_package_above_config():
    assert package_graph(import_graph())["utils.run_folder"] <= {"utils.config", "utils.errors", "utils.files"}

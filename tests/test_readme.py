"""The README says what the repository holds: its Layout table names every product module, and the test
command it gives is the one CI runs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def layout_rows() -> dict[str, str]:
    """The Layout table: its first cell (a path) -> the row's text."""
    section = README.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `([^`]+)` \|(.*)\|$", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def product_modules() -> list[Path]:
    """Every module of utils/ and templates/, but a package __init__.py that holds only a docstring."""
    modules = []
    for path in sorted([*ROOT.glob("utils/**/*.py"), *ROOT.glob("templates/**/*.py")]):
        body = ast.parse(path.read_text(encoding="utf-8")).body
        docstring_only = all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)
        if not (path.name == "__init__.py" and docstring_only):
            modules.append(path.relative_to(ROOT))
    return modules


def is_named(module: Path, rows: dict[str, str]) -> bool:
    """Named by its own row (`utils/export.py`), or as `name.py` in the row of its folder (`utils/ui/`)."""
    return module.as_posix() in rows or f"`{module.name}`" in rows.get(module.parent.as_posix() + "/", "")


def test_layout_table_names_every_product_module():
    rows = layout_rows()
    assert "utils/training/" in rows and "templates/" in rows  # the table was found
    missing = [m.as_posix() for m in product_modules() if not is_named(m, rows)]
    assert missing == [], f"README's Layout table does not name: {missing}"


def test_layout_table_names_no_module_that_is_gone():
    for path in layout_rows():
        assert (ROOT / path).exists(), f"README's Layout table names {path}, which does not exist"


def test_ci_runs_the_readme_test_command():
    command = next(line for line in README.splitlines()
                   if line.startswith("python3 -m venv .venv") and line.endswith("python -m pytest"))
    assert command in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()

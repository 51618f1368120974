"""Who may import whom (docs/testing.md, README's Layout): arrows point down only, flows → tasks → evisrag_core.

evisrag_core is the plain library: it never imports prefect, dvc or mlflow (nothing in it knows it is
orchestrated). tasks never import flows. Every `import` statement counts, those inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# package → top-level modules it must never import
FORBIDDEN = {
    "evisrag_core": {"prefect", "dvc", "mlflow", "tasks", "flows"},
    "tasks": {"flows"},
}


def imported_top_levels(file: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import in `file`; relative imports stay inside their package."""
    found = []
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), filename=str(file))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def violations(package: str) -> list[str]:
    banned = FORBIDDEN[package]
    return [
        f"{file.relative_to(REPO_ROOT)}:{line} imports {module}"
        for file in sorted((REPO_ROOT / package).rglob("*.py"))
        for line, module in imported_top_levels(file)
        if module in banned
    ]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_down_only(package: str) -> None:
    assert violations(package) == []


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "lazy.py"
    module.write_text("import os\n\ndef f():\n    import mlflow\n    from prefect.tasks import task\n")
    assert imported_top_levels(module) == [(1, "os"), (4, "mlflow"), (5, "prefect")]

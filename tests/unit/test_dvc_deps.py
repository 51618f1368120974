"""dvc.yaml's deps cannot go stale: every project module a stage's command imports is one of the stage's deps.

A stage's command is `evisrag <stage>`, which runs `flows/<stage>.py` (flows/cli.py's `_stage_command`; checked
below). Its import closure is computed statically: every `import` and `from … import` in the module, those inside
functions included (the stage modules import torch-heavy tasks lazily), followed through the files under
evisrag_core/, tasks/ and flows/, with the `__init__.py` of every package on the way (Python runs them too).
flows/cli.py itself is left out on purpose: it imports every stage's flow lazily, and starting there would make every
stage depend on every module. Its module-level imports (which every command runs) are added instead.

Dynamic imports (`importlib.import_module`) cannot be followed, so none may occur in a stage's closure (flows/cli.py
uses one to pick the stage module, which is why the walk starts below it). A dep folder covers the files below it.
Runtime configs count too: a stage whose params section has a `profile` or a `deepspeed` key (params.yaml) reads
configs/profiles/ or configs/deepspeed/.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("evisrag_core", "tasks", "flows")
CLI = "flows.cli"
# params field → the config folder a stage with that field reads at run time
RUNTIME_CONFIGS = {"profile": "configs/profiles", "deepspeed": "configs/deepspeed"}


def module_file(name: str) -> Path | None:
    """The file of a project module (`a.b` → a/b.py or a/b/__init__.py), None outside the project."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = REPO_ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def with_parents(name: str) -> list[str]:
    """`a.b.c` → [a, a.b, a.b.c]: importing a module runs its packages' `__init__` first."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _package_of(name: str, file: Path) -> str:
    return name if file.name == "__init__.py" else name.rpartition(".")[0]


def imported_names(name: str, top_level_only: bool = False) -> set[str]:
    """Modules `name` imports (absolute, relative resolved); `from m import x` also names `m.x` (x may be a module)."""
    file = module_file(name)
    assert file is not None, name
    tree = ast.parse(file.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = _package_of(name, file).split(".")
                anchor = ".".join(package[: len(package) - node.level + 1])
                base = f"{anchor}.{base}".strip(".")
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {n for n in found if n}


@cache
def closure(*roots: str) -> frozenset[Path]:
    """Every project file that importing `roots` can run, found by following imports (a breadth-first walk)."""
    seen: set[str] = set()
    todo = [parent for root in roots for parent in with_parents(root)]
    while todo:
        name = todo.pop()
        if name in seen or module_file(name) is None:
            continue
        seen.add(name)
        todo.extend(parent for found in imported_names(name) for parent in with_parents(found))
    return frozenset(module_file(n).relative_to(REPO_ROOT) for n in seen)  # type: ignore[union-attr]


def load_dvc_yaml() -> dict:
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())


STAGES = load_dvc_yaml()["stages"]


def entry_modules(cmd: str) -> tuple[str, ...]:
    """What `evisrag <stage>` runs: flows/<stage>.py, plus flows/cli.py's module-level imports."""
    program, stage = cmd.split()
    assert program == "evisrag", f"{cmd!r}: only `evisrag <stage>` commands are understood here"
    cli_imports = sorted(n for n in imported_names(CLI, top_level_only=True) if module_file(n))
    return (f"flows.{stage}", *cli_imports)


def covered(path: Path, deps: list[str]) -> bool:
    return any(path == Path(dep) or Path(dep) in path.parents for dep in deps)


def runtime_configs(stage: dict) -> set[str]:
    """configs/ folders a stage reads: from the keys of the params sections it declares (params.yaml lists every
    key with its default, tests/unit/test_config.py checks that)."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    sections = [params.get(p.split(".")[0]) for p in stage.get("params", []) if isinstance(p, str)]
    keys = {key for section in sections if isinstance(section, dict) for key in section}
    return {folder for key, folder in RUNTIME_CONFIGS.items() if key in keys and (REPO_ROOT / folder).is_dir()}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_imported_project_module_is_a_dep(stage: str) -> None:
    deps = STAGES[stage]["deps"]
    missing = sorted(str(p) for p in closure(*entry_modules(STAGES[stage]["cmd"])) if not covered(p, deps))
    assert not missing, f"dvc.yaml stage {stage!r} imports project modules missing from its deps: {missing}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_runtime_configs_are_deps(stage: str) -> None:
    missing = sorted(folder for folder in runtime_configs(STAGES[stage]) if folder not in STAGES[stage]["deps"])
    assert not missing, f"dvc.yaml stage {stage!r} reads config folders at run time missing from its deps: {missing}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_code_deps_exist(stage: str) -> None:
    """A module moved or split by a refactor must not leave a dep DVC refuses (or one that watches nothing)."""
    code = [d for d in STAGES[stage]["deps"] if d.split("/")[0] in (*PACKAGES, "configs")]
    assert [d for d in code if not (REPO_ROOT / d).exists()] == []


def test_stage_commands_run_their_flow_module() -> None:
    """The rule `entry_modules` relies on: `_stage_command` imports `flows.<stage>`, and each stage has one."""
    source = (REPO_ROOT / "flows" / "cli.py").read_text()
    for stage, spec in STAGES.items():
        module = entry_modules(spec["cmd"])[0]
        dispatch = ('importlib.import_module(f"flows.{name}")', f"from {module} import {stage}_flow")
        assert any(line in source for line in dispatch), f"flows/cli.py does not run {module} for {stage}"
        assert module_file(module) is not None, f"{stage}: {module} not found"
        assert f"def {stage}_flow(" in module_file(module).read_text()  # type: ignore[union-attr]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_no_dynamic_imports_hide_from_the_walk(stage: str) -> None:
    """`importlib.import_module(...)` and `__import__` are invisible to a static walk: none in a stage's closure."""
    dynamic = [
        f"{path}:{node.lineno}"
        for path in sorted(closure(*entry_modules(STAGES[stage]["cmd"])))
        for node in ast.walk(ast.parse((REPO_ROOT / path).read_text(encoding="utf-8")))
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("importlib.import_module", "__import__")
    ]
    assert not dynamic, f"stage {stage!r}: dynamic imports that the deps check cannot follow: {dynamic}"


def test_closure_follows_lazy_and_relative_imports() -> None:
    """The walk itself: rsgrpo's flow imports its task inside the function, and the task reaches the rewards."""
    files = closure("flows.rsgrpo")
    assert Path("tasks/rsgrpo.py") in files
    assert Path("evisrag_core/rsgrpo/rewards.py") in files
    assert Path("evisrag_core/rsgrpo/__init__.py") in files
    assert Path("flows/cli.py") not in files

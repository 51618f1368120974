"""DVC sees a code edit: after `dvc repro`, editing a module makes `dvc status` name every stage that imports it.

A copy of this working tree in a temporary git repository, with dvc.yaml's deps, params and outs unchanged but each
stage's command replaced by a stub that writes its outputs in a blink (no model is trained): what is tested is DVC's
view of the deps (the stage code itself is tested elsewhere). tests/unit/test_dvc_deps.py checks the deps statically
against the import closures; this runs the real `dvc status`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import MakeRepo

pytestmark = pytest.mark.slow

# Writes each named output: a file when the name has a suffix (metrics, plots), else a folder holding one file. The
# download stub also writes the train/ and test/ folders that later stages list as deps.
STUB = (
    "import pathlib, sys\n"
    "for name in sys.argv[2:]:\n"
    "    p = pathlib.Path(name)\n"
    "    f = p if p.suffix else p / 'stub.txt'\n"
    "    f.parent.mkdir(parents=True, exist_ok=True)\n"
    "    f.write_text(sys.argv[1])\n"
)


def _resolve(text: str, params: dict) -> str:
    """`${a.b}` → params["a"]["b"], as DVC templates it."""

    def value(match: re.Match) -> str:
        node = params
        for key in match.group(1).split("."):
            node = node[key]
        return str(node)

    return re.sub(r"\$\{([^}]+)\}", value, text)


def _outputs(stage: dict, params: dict) -> list[str]:
    names = []
    for kind in ("outs", "metrics", "plots"):
        for entry in stage.get(kind, []):
            names.append(_resolve(next(iter(entry)) if isinstance(entry, dict) else entry, params))
    return names


def stub_pipeline(dvc_yaml: str, params_text: str) -> str:
    """dvc.yaml with every stage's cmd replaced by the stub (deps, params and outs as they are)."""
    pipeline, params = yaml.safe_load(dvc_yaml), yaml.safe_load(params_text)
    data = params["data"]["out_dir"]
    for name, stage in pipeline["stages"].items():
        outs = _outputs(stage, params) + ([f"{data}/train", f"{data}/test"] if name == "download" else [])
        stage["cmd"] = " ".join([sys.executable, "stub.py", name, *outs])
    return yaml.safe_dump(pipeline, sort_keys=False)


def _git(root: Path, env: dict[str, str], *args: str) -> None:
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    subprocess.run([*git, *args], cwd=root, env=env, check=True, capture_output=True)


def _stale_after_editing(root: Path, env: dict[str, str], module: str) -> set[str]:
    """The stages `dvc status` calls changed after a comment is appended to `module`; the edit is undone after."""
    path = root / module
    original = path.read_text()
    path.write_text(original + "# an edit\n")
    try:
        status = subprocess.run(
            [sys.executable, "-m", "dvc", "status", "--json"], cwd=root, env=env, capture_output=True, text=True
        )
    finally:
        path.write_text(original)
    assert status.returncode == 0, status.stderr[-3000:]
    return set(json.loads(status.stdout or "{}"))


@pytest.fixture(scope="module")
def stubbed(tmp_path_factory: pytest.TempPathFactory, make_repo: MakeRepo) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("staleness")
    env = make_repo(root, checkout=True)
    dvc_yaml = stub_pipeline((root / "dvc.yaml").read_text(), (root / "params.yaml").read_text())
    (root / "dvc.yaml").write_text(dvc_yaml)
    (root / "stub.py").write_text(STUB)
    (root / "dvc.lock").unlink(missing_ok=True)  # a run state the working tree may carry
    repro = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=root, env=env, capture_output=True, text=True)
    assert repro.returncode == 0, repro.stdout[-3000:] + repro.stderr[-3000:]
    _git(root, env, "add", "-A")
    _git(root, env, "commit", "-qm", "stub run")
    assert _stale_after_editing(root, env, "README.md") == set()  # nothing is stale before an edit
    return root, env


def test_editing_the_evidence_prompt_makes_sft_rsgrpo_and_predict_stale(stubbed) -> None:
    stale = _stale_after_editing(*stubbed, "evisrag_core/prompts.py")
    assert {"sft", "rsgrpo", "predict"} <= stale
    assert "evaluate" not in stale and "report" not in stale  # they read predictions, not prompts


@pytest.mark.parametrize("module", ["evisrag_core/rsgrpo/rewards.py", "evisrag_core/rsgrpo/objective.py"])
def test_editing_the_rewards_or_advantages_makes_rsgrpo_stale_and_nothing_upstream(stubbed, module: str) -> None:
    assert _stale_after_editing(*stubbed, module) == {"rsgrpo"}

"""`dvc metrics diff` and `dvc exp show` are useful after the documented step (docs/operations.md, "Comparing runs
with DVC"): commit what a run changed that git tracks, `make record-run`.

Without it, a fresh clone's first run leaves metrics.json uncommitted and `dvc metrics diff` has no HEAD version to
compare with. The project here is a copy of this working tree whose dvc.yaml keeps its deps, params and outs but runs
a stub per stage (no model is trained): evaluate writes a metrics.json whose EM is the params file's
predict.temperature, so a params change shows up as a metric change.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import MakeRepo

pytestmark = pytest.mark.slow

# Each named output: metrics.json gets every metric key per benchmark as evaluate writes it, rates equal to
# predict.temperature; other .json files an empty list (plot logs); other files, and a file in each folder, the stage
# name and the temperature (so predictions change with it, and DVC reruns evaluate).
STUB = """\
import json, pathlib, sys
import yaml
from evisrag_core.grounding import GROUNDING_KEYS
from evisrag_core.metrics import METRIC_KEYS
temperature = yaml.safe_load(open("params.yaml"))["predict"]["temperature"]
row = {k: 8 if k.startswith("cnt_") else temperature for k in (*METRIC_KEYS, *GROUNDING_KEYS)}
for name in sys.argv[2:]:
    p = pathlib.Path(name)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.name == "metrics.json":
        p.write_text(json.dumps({b: row for b in ("ColorBackground", "ColorSquare", "overall")}))
    elif p.suffix == ".json":
        p.write_text("[]")
    else:
        f = p if p.suffix else p / "stub.txt"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f"{sys.argv[1]} {temperature}")
"""
REPO_ROOT = Path(__file__).resolve().parents[2]


def _stub_pipeline(root: Path) -> None:
    """dvc.yaml's stages run the stub: same deps, params and outputs (`${a.b}` resolved from params.yaml)."""
    pipeline, params = (
        yaml.safe_load((root / "dvc.yaml").read_text()),
        yaml.safe_load((root / "params.yaml").read_text()),
    )

    def resolve(text: str) -> str:
        section, _, key = text.removeprefix("${").partition(".")
        return str(params[section][key.split("}")[0]]) + key.split("}", 1)[1] if text.startswith("${") else text

    for name, stage in pipeline["stages"].items():
        entries = [e for kind in ("outs", "metrics", "plots") for e in stage.get(kind, [])]
        outs = [resolve(next(iter(e)) if isinstance(e, dict) else e) for e in entries]
        if name == "download":
            outs += [f"{params['data']['out_dir']}/train", f"{params['data']['out_dir']}/test"]
        stage["cmd"] = " ".join([sys.executable, "stub.py", name, *outs])
    (root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    (root / "stub.py").write_text(STUB)


def _run(root: Path, env: dict[str, str], *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)


def _set_temperature(root: Path, value: float) -> None:
    path = root / "params.yaml"
    path.write_text(path.read_text().replace("temperature: 0.0", f"temperature: {value}", 1))


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, make_repo: MakeRepo) -> tuple[Path, dict[str, str]]:
    """A stub run of the whole pipeline, then `make record-run`."""
    root = tmp_path_factory.mktemp("diffs")
    env = make_repo(root, checkout=True)
    _stub_pipeline(root)
    (root / "dvc.lock").unlink(missing_ok=True)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    _run(root, env, *git, "add", "-A")
    _run(root, env, *git, "commit", "-qm", "stub stages")
    repro = _run(root, env, sys.executable, "-m", "dvc", "repro")
    assert repro.returncode == 0, repro.stdout[-3000:] + repro.stderr[-3000:]
    env_git = env | {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@l",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@l",
    }
    record = _run(root, env_git, "make", "record-run")
    assert record.returncode == 0, record.stdout[-3000:] + record.stderr[-3000:]
    return root, env


def test_record_run_commits_what_a_run_changed_that_git_tracks(recorded) -> None:
    root, env = recorded
    status = _run(root, env, "git", "status", "--porcelain").stdout
    assert status == "", status  # nothing of the run is left uncommitted
    committed = _run(root, env, "git", "show", "--name-only", "--format=", "HEAD").stdout.split()
    assert {"dvc.lock", "metrics.json"} <= set(committed), committed


def test_metrics_diff_compares_the_next_run_with_the_recorded_one(recorded) -> None:
    root, env = recorded
    _set_temperature(root, 0.5)
    try:
        repro = _run(root, env, sys.executable, "-m", "dvc", "repro")
        assert repro.returncode == 0, repro.stderr[-3000:]
        diff = _run(root, env, sys.executable, "-m", "dvc", "metrics", "diff", "--json")
        assert diff.returncode == 0, diff.stderr[-3000:]
        change = json.loads(diff.stdout)["metrics.json"]["overall.global_em"]
        assert (change["old"], change["new"]) == (0.0, 0.5)
        params = _run(root, env, sys.executable, "-m", "dvc", "params", "diff", "--json")
        change = json.loads(params.stdout)["params.yaml"]["predict.temperature"]
        assert (change["old"], change["new"]) == (0.0, 0.5)
    finally:
        _run(root, env, "git", "checkout", "--", "params.yaml")


def test_exp_show_with_the_documented_flags_fits_120_columns(recorded) -> None:
    """docs/operations.md's `dvc exp show` line, after an experiment: the recorded run, the experiment and the
    workspace with the headline metrics and the changed param, whole (no elided column) in 120 characters."""
    root, env = recorded
    run = _run(root, env, sys.executable, "-m", "dvc", "exp", "run", "-S", "predict.temperature=0.5", "-n", "warm")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    try:
        shown = _run(root, env | {"COLUMNS": "120"}, sys.executable, "-m", "dvc", *_documented_exp_show())
    finally:
        _run(root, env, "git", "checkout", "--", "params.yaml")
    assert shown.returncode == 0, shown.stderr[-3000:]
    lines = shown.stdout.splitlines()
    assert max(map(len, lines)) <= 120, shown.stdout
    assert "…" not in shown.stdout, shown.stdout  # rich elides the columns that do not fit
    header = next(line for line in lines if "Experiment" in line).split()
    metrics = ["overall.global_em", "overall.global_f1", "overall.evidence_f1"]
    assert header == ["Experiment", *metrics, "predict.temperature"], shown.stdout
    assert any("[warm]" in line and "0.5" in line for line in lines), shown.stdout


def _documented_exp_show() -> list[str]:
    """The `dvc exp show …` command docs/operations.md gives for 120 columns (the test runs exactly that line)."""
    for line in (REPO_ROOT / "docs" / "operations.md").read_text().splitlines():
        if line.startswith("dvc exp show ") and line.endswith("  # 120 columns"):
            return shlex.split(line.removesuffix("  # 120 columns"))[1:]
    raise AssertionError("docs/operations.md has no `dvc exp show … # 120 columns` line")

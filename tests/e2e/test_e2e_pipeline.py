"""End to end: the real `evisrag pipeline` (dvc repro under Prefect, MLflow parent run) in a temporary git clone.

Slow (about two minutes on 2 cores); CI runs it once. Sizes are reduced through params.yaml, the code paths are the
default ones: embedded data, tiny model, SFT, predict, evaluate.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import MakeRepo, small_params

STAGES = ["download", "model", "sft", "rsgrpo", "predict", "evaluate", "report"]
pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, make_repo: MakeRepo) -> tuple[Path, dict[str, str], str]:
    root = tmp_path_factory.mktemp("clone")
    env = make_repo(root, checkout=True, files={"params.yaml": small_params()})
    first = _run(["evisrag", "pipeline"], root, env)
    return root, env, first.stdout + first.stderr


def test_pipeline_writes_metrics_for_every_benchmark(project):
    root, env, output = project
    metrics = json.loads((root / "metrics.json").read_text())
    assert set(metrics) == {"ColorSquare", "ColorBackground", "overall"}
    assert metrics["overall"]["cnt_global"] == 16
    for row in metrics.values():
        assert 0.0 <= row["global_em"] <= 1.0
    assert "global_em" in output and "overall" in output  # the printed table
    for bench in ("ColorSquare", "ColorBackground"):
        rows = [json.loads(line) for line in (root / "preds" / f"{bench}.jsonl").read_text().splitlines()]
        assert len(rows) == 8 and all({"qid", "imgs", "pred"} <= set(r) for r in rows)
    assert (root / "models" / "sft" / "model.safetensors").is_file()
    assert (root / "models" / "rsgrpo" / "model.safetensors").is_file()
    assert len(json.loads((root / "plots" / "rsgrpo.json").read_text())) >= 2
    # DVC renders the training curves (it reads JSON arrays, not JSON lines, and wants the same fields in every row)
    shown = json.loads(_run([sys.executable, "-m", "dvc", "plots", "show", "--json"], root, env).stdout)
    assert not shown.get("errors"), shown.get("errors")
    assert {"plots/sft_loss.json", "plots/rsgrpo.json", "rsgrpo-reward-components"} <= set(shown["data"])
    assert all(shown["data"][name] for name in ("plots/sft_loss.json", "plots/rsgrpo.json"))


def test_second_repro_does_nothing(project):
    root, env, _ = project
    out = _run([sys.executable, "-m", "dvc", "repro"], root, env)
    assert "Data and pipelines are up to date" in out.stdout + out.stderr


def test_mlflow_has_parent_run_with_nested_stage_runs(project):
    root, env, _ = project
    script = (
        "import json, mlflow\n"
        "mlflow.set_tracking_uri('sqlite:///mlflow.db')\n"
        "runs = mlflow.search_runs(experiment_names=['evisrag'], output_format='list')\n"
        "print(json.dumps([{'name': r.info.run_name, 'id': r.info.run_id, 'tags': r.data.tags,"
        " 'params': r.data.params, 'metrics': r.data.metrics} for r in runs]))\n"
    )
    runs = json.loads(_run([sys.executable, "-c", script], root, env).stdout.strip().splitlines()[-1])
    parents = [r for r in runs if r["name"] == "pipeline"]
    assert len(parents) == 1
    children = {r["name"]: r for r in runs if r["tags"].get("mlflow.parentRunId") == parents[0]["id"]}
    assert set(children) == set(STAGES)
    assert children["predict"]["params"]["predict.max_new_tokens"] == "24"
    assert children["evaluate"]["metrics"]["overall.cnt_global"] == 16
    assert any(k.startswith("dvc.outs.") for k in children["sft"]["tags"])
    assert "sft.loss" in children["sft"]["metrics"]
    # on_bad_record counts are stage metrics (0 here: the embedded data has no bad record)
    assert children["sft"]["metrics"]["sft.skipped_records"] == 0
    assert children["rsgrpo"]["metrics"]["rsgrpo.skipped_records"] == 0
    for bench in ("ColorSquare", "ColorBackground"):
        assert children["predict"]["metrics"][f"{bench}.skipped_records"] == 0
    assert parents[0]["tags"]["evisrag.git_commit"] != "unknown"


def test_prefect_recorded_every_stage_flow_run(project):
    root, env, _ = project
    script = (
        "import json\n"
        "import flows\n"
        "from prefect.client.orchestration import get_client\n"
        "with get_client(sync_client=True) as client:\n"
        "    runs = client.read_flow_runs()\n"
        "print(json.dumps([[r.name, r.state_name] for r in runs]))\n"
    )
    runs = json.loads(_run([sys.executable, "-c", script], root, env).stdout.strip().splitlines()[-1])
    names = {name.rsplit("-", 2)[0]: state for name, state in runs}
    assert {"pipeline", *STAGES} <= set(names)
    assert all(state == "Completed" for state in names.values())


def test_changing_a_predict_param_reruns_only_predict_and_evaluate(project):
    root, env, _ = project
    params_file = root / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["predict"]["max_new_tokens"] = 20
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run([sys.executable, "-m", "dvc", "repro"], root, env)
    text = out.stdout + out.stderr
    ran = {stage for stage in STAGES if f"Running stage '{stage}'" in text}
    assert ran == {"predict", "evaluate", "report"}, text[-3000:]

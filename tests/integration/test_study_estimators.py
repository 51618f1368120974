"""`scripts/study_estimators.py --quick`: the estimator study end to end on a tiny budget (hard world, SFT, every arm
with 2 seeds, evaluation, paired intervals, MLflow runs, the figure), checked for the keys and shapes of
estimators.json that issue 18 names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

ROOT = Path(__file__).resolve().parents[2]
ARMS = {"rsgrpo", "gdpo", "grpo", "rsgrpo_released"}
METRICS = {"em", "accuracy", "evidence_f1", "format"}


@pytest.mark.slow
def test_quick_study_writes_estimators_json(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "study"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "study_estimators.py"), "--quick", "--out", str(out)],
        cwd=tmp_path,  # tracking.mlflow_tracking_uri (sqlite:///mlflow.db) resolves here
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "estimators.json").read_text())

    assert {"world", "seeds", "n_test_questions", "sft", "estimators", "paired", "command", "date"} <= set(result)
    assert result["world"] == "hard" and result["seeds"] == [0, 1]
    assert result["n_test_questions"] == 12  # 3 splits × 4 questions in --quick
    assert set(result["sft"]) >= METRICS
    assert set(result["estimators"]) == ARMS
    for arm in result["estimators"].values():
        assert [row["seed"] for row in arm["per_seed"]] == [0, 1]
        for row in arm["per_seed"]:
            assert set(row) >= METRICS and all(0.0 <= row[k] <= 1.0 for k in METRICS)
    assert {"rsgrpo-grpo", "rsgrpo-gdpo"} <= set(result["paired"])
    for contrast in result["paired"].values():
        assert set(contrast) == METRICS
        for value in contrast.values():
            low, high = value["ci95"]
            assert -1.0 <= low <= value["mean"] <= high <= 1.0
    assert "--quick" in result["command"]
    assert (out / "estimators.png").stat().st_size > 1000

    # one MLflow run per model (SFT + 4 arms × 2 seeds), each tagged study=estimators, with a learning curve
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.study = 'estimators'")
    assert len(runs) == 9
    client = mlflow.MlflowClient()
    arm_run = runs[runs["tags.arm"] == "rsgrpo"].iloc[0]
    assert len(client.get_metric_history(arm_run.run_id, "val.answer_accuracy")) >= 2

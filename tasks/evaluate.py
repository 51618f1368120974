"""Evaluate stage task: EM / Accuracy / F1 per benchmark and overall (spec §3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from evisrag_core.config import OnBadRecord
from evisrag_core.evaluate import evaluate_dir, write_evaluation
from tasks import TASK_DEFAULTS


@task(name="evaluate-predictions", **TASK_DEFAULTS)
def evaluate_predictions(
    data_dir: Path,
    preds_dir: Path,
    metrics_file: Path,
    per_question_file: Path,
    on_bad_record: OnBadRecord = "error",
) -> dict[str, Any]:
    metrics, per_question = evaluate_dir(data_dir, preds_dir, on_bad_record=on_bad_record)
    write_evaluation(metrics, per_question, metrics_file, per_question_file)
    overall = metrics["overall"]
    get_run_logger().info(
        "overall EM %.3f  Acc %.3f  F1 %.3f  (n=%d)",
        overall["global_em"],
        overall["global_acc"],
        overall["global_f1"],
        overall["cnt_global"],
    )
    return metrics

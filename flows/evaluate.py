"""The evaluate stage (`evisrag evaluate`): EM / Accuracy / F1 per benchmark and overall; the options serve ad-hoc
runs on other predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evisrag_core.config import load_params
from flows import stage_flow
from tasks import tracking
from tasks.evaluate import evaluate_predictions


@stage_flow("evaluate")
def evaluate_flow(
    params_path: str = "params.yaml",
    data_dir: str | None = None,
    preds_dir: str | None = None,
    metrics_file: str | None = None,
) -> dict[str, Any]:
    params = load_params(params_path)
    cfg = params.evaluate
    metrics_path = Path(metrics_file or cfg.metrics_file)
    # An ad-hoc --out keeps its per-question rows beside it instead of overwriting the pipeline's DVC output.
    per_question = metrics_path.with_suffix(".per_question.jsonl") if metrics_file else Path(cfg.per_question_file)
    with tracking.stage_run("evaluate", params, ["evaluate"]):
        data, preds = Path(data_dir or params.data.out_dir), Path(preds_dir or params.predict.out_dir)
        metrics = evaluate_predictions(data, preds, metrics_path, per_question, cfg.on_bad_record)
        tracking.log_evaluation(metrics, metrics_path, per_question)
    return metrics

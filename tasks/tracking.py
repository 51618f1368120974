"""MLflow bookkeeping: one parent run per pipeline execution, one nested run per stage.

The pipeline flow opens the parent run and hands its id to the stages through `EVISRAG_MLFLOW_PARENT_RUN_ID`; a
stage run outside the pipeline (plain `dvc repro`, `evisrag predict`) becomes a top-level run of its own.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow

from evisrag_core.config import Params
from evisrag_core.errors import UserError

PARENT_RUN_ENV = "EVISRAG_MLFLOW_PARENT_RUN_ID"
STAGE_TAG = "evisrag.stage"
log = logging.getLogger(__name__)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}; lists become JSON so MLflow stores them as one param."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list | tuple) else value
    return flat


def configure(params: Params) -> None:
    mlflow.set_tracking_uri(params.tracking.mlflow_tracking_uri)
    mlflow.set_experiment(params.tracking.experiment_name)


@contextmanager
def stage_run(stage: str, params: Params, sections: list[str]) -> Iterator[mlflow.ActiveRun]:
    """A (nested) MLflow run for one stage, with the params it reads and the git commit."""
    configure(params)
    parent = os.environ.get(PARENT_RUN_ENV) or None
    tags = {**params.tracking.tags, STAGE_TAG: stage, "evisrag.git_commit": git_commit() or "unknown"}
    with mlflow.start_run(run_name=stage, parent_run_id=parent, tags=tags) as run:
        dumped = params.model_dump(mode="json")
        mlflow.log_params(flatten({s: dumped[s] for s in sections} | {"seed": dumped["seed"]}))
        with refused_on_user_error():
            yield run


USER_ERROR_TAG = "evisrag.user_error"


@contextmanager
def refused_on_user_error() -> Iterator[None]:
    """End the active run KILLED, not FAILED, when a user error (a bad record, a missing input) stops it, with the
    message as the `evisrag.user_error` tag: FAILED is kept for bugs and outages, as in Prefect (flows/__init__.py).
    Ending the run here leaves `mlflow.start_run`'s own exit nothing to mark."""
    try:
        yield
    except UserError as err:
        mlflow.set_tag(USER_ERROR_TAG, str(err)[:5000])  # MLflow caps tag values; the message leads
        mlflow.end_run(status="KILLED")
        raise


def log_json_artifact(obj: Any, name: str) -> None:
    mlflow.log_text(json.dumps(obj, indent=2, ensure_ascii=False), name)


def log_file(path: str | Path, artifact_dir: str | None = None) -> None:
    if Path(path).exists():
        mlflow.log_artifact(str(path), artifact_dir)


# --- what each stage records on its run (flows only call these: the MLflow calls live here) ------------------------


def log_dataset(manifest: dict[str, Any]) -> None:
    mlflow.log_metrics({f"rows.{k.replace('/', '.')}": v for k, v in manifest["counts"].items()})
    log_json_artifact(manifest, "manifest.json")


def log_base_model(out: Path) -> None:
    log_file(out / "config.json", "model")


def log_sft(summary: dict[str, Any], log_path: str | Path) -> None:
    mlflow.log_metrics({"sft.final_train_loss": summary["train_loss"], "sft.steps": summary["global_step"]})
    log_file(log_path, "sft")


def log_rsgrpo(log_path: str | Path, report_dir: str | Path) -> None:
    log_file(log_path, "rsgrpo")
    if Path(report_dir).is_dir():
        mlflow.log_artifacts(str(report_dir), "rsgrpo_report")


def tag_model_dir(model_dir: Path) -> None:
    """The model a prediction run used (predict.model_dir or --model), so runs of ablation models can be told apart."""
    mlflow.set_tag("evisrag.model_dir", str(model_dir))


def log_predictions_sample(benchmark: str, rows: list[dict[str, Any]]) -> None:
    mlflow.log_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), f"preds/{benchmark}.jsonl")


def log_prediction_counts(counts: dict[str, dict[str, int]]) -> None:
    mlflow.log_metrics({f"{b}.questions": c["questions"] for b, c in counts.items()})
    mlflow.log_metrics({f"{b}.skipped_records": c["skipped_records"] for b, c in counts.items()})


def log_evaluation(metrics: dict[str, dict[str, Any]], metrics_file: str | Path, per_question: str | Path) -> None:
    mlflow.log_metrics({f"{bench}.{k}": v for bench, row in metrics.items() for k, v in row.items()})
    log_file(metrics_file)
    log_file(per_question, "eval")


def log_report(index: Path) -> None:
    mlflow.log_artifacts(str(index.parent), "report")

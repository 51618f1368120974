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


# --- how the MLflow UI opens the experiment ------------------------------------------------------------------------
# Measured in headless Chromium against `mlflow server` 3.17.2 (tests/e2e/test_ui_browser.py keeps it true):
# - The experiment page shows whatever the "GenAI | Model training" switch (top left) says: the URL's
#   `?workflowType=machine_learning`, else the browser's stored choice, else GenAI. A fresh browser on
#   `#/experiments/<id>` lands on the GenAI overview, with or without the `mlflow.experimentKind` tag (3.17 derives
#   the kind from the switch); with `?workflowType=machine_learning` it lands on the runs table.
# - The runs table shows no metric or param column until one is chosen, except through a shared view: an experiment
#   tag `mlflow.sharedViewState.<key>` holding the view's JSON, applied by `?viewStateShareKey=<key>`.
# So the experiment carries both tags and a description naming the link; RUNS_TABLE_QUERY is the query to open.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # what the UI's own kind selector writes; hosts that read it see this
EXPERIMENT_KIND = "custom_model_development"
RUNS_VIEW_KEY = "evisrag"
RUNS_TABLE_QUERY = f"?workflowType=machine_learning&viewStateShareKey={RUNS_VIEW_KEY}"
# Headline columns: the pipeline run's overall metrics (from metrics.json; the evaluate run logs the same keys) and
# the params the ablations change.
HEADLINE_METRICS = ("overall.global_em", "overall.global_f1", "overall.evidence_f1")
HEADLINE_PARAMS = ("predict.model_dir", "rsgrpo.mode")
NOTE_TAG = "mlflow.note.content"


def runs_table_path(experiment_id: str) -> str:
    """The UI route (after the server's `/#`) that opens the experiment on its runs with the headline columns."""
    return f"/experiments/{experiment_id}/runs{RUNS_TABLE_QUERY}"


def experiment_tags(experiment_id: str) -> dict[str, str]:
    """The experiment tags that make the MLflow UI open on the training runs with the headline columns."""
    columns = [f"metrics.`{m}`" for m in HEADLINE_METRICS] + [f"params.`{p}`" for p in HEADLINE_PARAMS]
    return {
        EXPERIMENT_KIND_TAG: EXPERIMENT_KIND,
        f"mlflow.sharedViewState.{RUNS_VIEW_KEY}": json.dumps({"selectedColumns": columns}),
    }


def _note(experiment_id: str) -> str:
    return (
        "EVisRAG pipeline runs: one `pipeline` run per `evisrag pipeline`, with a nested run per stage. "
        f"The runs table with the headline metrics: `<this server>/#{runs_table_path(experiment_id)}` "
        "(or switch to *Model training*, top left)."
    )


def configure(params: Params) -> None:
    """Point MLflow at the project's store and experiment, tagged for the UI (tags set only when they differ)."""
    mlflow.set_tracking_uri(params.tracking.mlflow_tracking_uri)
    experiment = mlflow.set_experiment(params.tracking.experiment_name)
    wanted = experiment_tags(experiment.experiment_id)
    if NOTE_TAG not in experiment.tags:  # a description a user wrote is theirs
        wanted[NOTE_TAG] = _note(experiment.experiment_id)
    client = mlflow.MlflowClient()
    for key, value in wanted.items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)


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

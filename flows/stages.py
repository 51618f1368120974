"""One Prefect flow per DVC stage: read params, open the stage's MLflow run, call the tasks, log results.

The tasks of the model, sft, rsgrpo and predict stages are imported inside their flows: they load torch and
transformers, which take seconds to import, and a download, evaluate or report process never needs them.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow

from evisrag_core.config import load_params
from evisrag_core.data.schema import list_benchmarks
from evisrag_core.io import atomic_dir, read_jsonl
from tasks import tracking
from tasks.download import write_dataset
from tasks.evaluate import evaluate_predictions
from tasks.report import write_report


def _run_name(stage: str):
    """Flow-run names a person can find in the UI: `<stage>-<UTC time>`."""
    return lambda: f"{stage}-{datetime.now(UTC):%Y%m%d-%H%M%S}"


@flow(name="download", flow_run_name=_run_name("download"))
def download_flow(params_path: str = "params.yaml") -> dict[str, Any]:
    params = load_params(params_path)
    with tracking.stage_run("download", params, ["data"]):
        manifest = write_dataset(params)
        mlflow.log_metrics({f"rows.{k.replace('/', '.')}": v for k, v in manifest["counts"].items()})
        tracking.log_json_artifact(manifest, "manifest.json")
    return manifest


@flow(name="model", flow_run_name=_run_name("model"))
def model_flow(params_path: str = "params.yaml") -> str:
    from tasks.model import write_base_model

    params = load_params(params_path)
    with tracking.stage_run("model", params, ["model"]):
        out = write_base_model(params)
        tracking.log_file(out / "config.json", "model")
    return str(out)


@flow(name="sft", flow_run_name=_run_name("sft"))
def sft_flow(params_path: str = "params.yaml") -> dict[str, Any]:
    from tasks.sft import train as train_sft

    params = load_params(params_path)
    with tracking.stage_run("sft", params, ["sft"]):
        summary = train_sft(params, Path(params.sft.log_file))
        mlflow.log_metrics({"sft.final_train_loss": summary["train_loss"], "sft.steps": summary["global_step"]})
        tracking.log_file(params.sft.log_file, "sft")
    return summary


@flow(name="rsgrpo", flow_run_name=_run_name("rsgrpo"))
def rsgrpo_flow(params_path: str = "params.yaml") -> dict[str, Any]:
    from tasks.rsgrpo import train as train_rsgrpo

    params = load_params(params_path)
    with tracking.stage_run("rsgrpo", params, ["rsgrpo"]):
        summary = train_rsgrpo(params)
        tracking.log_file(params.rsgrpo.log_file, "rsgrpo")
        report = Path(params.rsgrpo.report_dir)
        if report.is_dir():
            mlflow.log_artifacts(str(report), "rsgrpo_report")
    return summary


@flow(name="predict", flow_run_name=_run_name("predict"))
def predict_flow(
    params_path: str = "params.yaml",
    model_dir: str | None = None,
    data_dir: str | None = None,
    out_dir: str | None = None,
) -> dict[str, Any]:
    from tasks.predict import WORK_DIR, check_replaceable, make_backend, predict_benchmark

    params = load_params(params_path)
    cfg = params.predict
    model = Path(model_dir or cfg.model_dir)
    data = Path(data_dir or params.data.out_dir)
    out = Path(out_dir or cfg.out_dir)
    with tracking.stage_run("predict", params, ["predict"]):
        mlflow.set_tag("evisrag.model_dir", str(model))
        backend = make_backend(cfg, model, params.model.trust_remote_code)
        counts = {}
        # All benchmarks' files appear together: a kill never leaves a folder that evaluate would score in part.
        with atomic_dir(check_replaceable(out)) as staging:
            for bench in list_benchmarks(data):
                out_file = staging / f"{bench}.jsonl"
                counts[bench] = predict_benchmark(params, backend, model, data / "test" / bench, out_file)
                sample = read_jsonl(out_file)[: params.tracking.log_predictions_sample]
                mlflow.log_text(
                    "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sample), f"preds/{bench}.jsonl"
                )
        mlflow.log_metrics({f"{b}.questions": c["questions"] for b, c in counts.items()})
        mlflow.log_metrics({f"{b}.skipped_records": c["skipped_records"] for b, c in counts.items()})
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    return counts


@flow(name="evaluate", flow_run_name=_run_name("evaluate"))
def evaluate_flow(
    params_path: str = "params.yaml",
    data_dir: str | None = None,
    preds_dir: str | None = None,
    metrics_file: str | None = None,
) -> dict[str, Any]:
    params = load_params(params_path)
    cfg = params.evaluate
    # An ad-hoc --out keeps its per-question rows beside it instead of overwriting the pipeline's DVC output.
    per_question = (
        Path(metrics_file).with_suffix(".per_question.jsonl") if metrics_file else Path(cfg.per_question_file)
    )
    with tracking.stage_run("evaluate", params, ["evaluate"]):
        metrics = evaluate_predictions(
            Path(data_dir or params.data.out_dir),
            Path(preds_dir or params.predict.out_dir),
            Path(metrics_file or cfg.metrics_file),
            per_question,
            cfg.on_bad_record,
        )
        mlflow.log_metrics({f"{bench}.{k}": v for bench, row in metrics.items() for k, v in row.items()})
        tracking.log_file(metrics_file or cfg.metrics_file)
        tracking.log_file(per_question, "eval")
    return metrics


@flow(name="report", flow_run_name=_run_name("report"))
def report_flow(params_path: str = "params.yaml") -> str:
    params = load_params(params_path)
    with tracking.stage_run("report", params, ["report"]):
        index = write_report(params)
        mlflow.log_artifacts(str(index.parent), "report")
    return str(index)

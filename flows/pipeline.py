"""The pipeline flow: `dvc repro` under one Prefect flow run and one MLflow parent run.

DVC decides which stages are stale (dvc.lock stays the record); each stage it runs is itself a Prefect flow run and a
nested MLflow run. Stage processes reuse this flow's Prefect API (its temporary server in ephemeral mode), which
saves starting one server per stage.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import yaml
from prefect import flow, get_run_logger, task
from prefect.client.orchestration import get_client

from evisrag_core.config import load_params
from flows import flow_run_name
from tasks import TASK_DEFAULTS, tracking


def _prefect_api_url() -> str | None:
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    with get_client(sync_client=True) as client:
        return str(client.api_url)


def stage_environment() -> dict[str, str]:
    """The environment of the `dvc repro` child: this interpreter's scripts folder first on PATH, because every
    dvc.yaml stage runs `evisrag ...` and `.venv/bin/evisrag pipeline` is often called without an activated venv."""
    env = dict(os.environ)
    scripts = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([scripts, *(p for p in env.get("PATH", "").split(os.pathsep) if p and p != scripts)])
    return env


@task(name="dvc-repro", **TASK_DEFAULTS)
def dvc_repro(targets: list[str], force: bool, env: dict[str, str]) -> None:
    logger = get_run_logger()
    command = [sys.executable, "-m", "dvc", "repro", *(["--force"] if force else []), *targets]
    logger.info("running %s", " ".join(command))
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            logger.info(line.rstrip())
    if proc.returncode:
        raise RuntimeError(f"dvc repro failed with exit code {proc.returncode}; see the log above")


def _tag_stage_runs(parent_run_id: str, lock_file: Path) -> None:
    """Record each stage's DVC output hashes on the nested run that produced them."""
    if not lock_file.is_file():
        return
    stages = (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {})
    runs = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", output_format="list")
    for run in runs:
        stage = run.data.tags.get(tracking.STAGE_TAG)
        outs = stages.get(stage, {}).get("outs", [])
        client = mlflow.MlflowClient()
        for out in outs:
            client.set_tag(run.info.run_id, f"dvc.outs.{out['path']}", out.get("md5", ""))


@flow(name="evisrag-pipeline", flow_run_name=flow_run_name("pipeline"))
def pipeline_flow(
    params_path: str = "params.yaml",
    targets: list[str] | None = None,
    force: bool = False,
    retries: int = 0,
    retry_delay_seconds: float = 0.0,
) -> Any:
    """`retries`: how often a failed `dvc repro` is run again (the deployment of `evisrag serve` sets it from
    params.serve); DVC skips the stages that finished, so a retry reruns the failed stage and those after it."""
    params = load_params(params_path)
    tracking.configure(params)
    tags = {**params.tracking.tags, "evisrag.git_commit": tracking.git_commit() or "unknown"}
    with mlflow.start_run(run_name="pipeline", tags=tags) as run:
        mlflow.log_params(tracking.flatten(params.model_dump(mode="json")))
        env = stage_environment()
        env[tracking.PARENT_RUN_ENV] = run.info.run_id
        api_url = _prefect_api_url()
        if api_url:
            env["PREFECT_API_URL"] = api_url
        dvc_repro.with_options(retries=retries, retry_delay_seconds=retry_delay_seconds)(targets or [], force, env)
        _tag_stage_runs(run.info.run_id, Path("dvc.lock"))
        metrics_file = Path(params.evaluate.metrics_file)
        if metrics_file.is_file():
            tracking.log_file(metrics_file)
            metrics = yaml.safe_load(metrics_file.read_text())
            overall = metrics.get("overall", {})
            mlflow.log_metrics({f"overall.{k}": v for k, v in overall.items()})
            return metrics
    return None

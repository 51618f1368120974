"""`evisrag serve`: the pipeline flow as a Prefect deployment, on a cron schedule from params or on demand.

The deployment `evisrag-pipeline/<serve.deployment_name>` lives on the Prefect server named by PREFECT_API_URL;
this process is its runner: it picks up scheduled runs and runs started from the UI or with
`prefect deployment run`, one at a time (two pipeline runs in one workspace would fight over DVC's lock).
`evisrag deploy` (flows/deploy.py) registers the same deployment on a work pool instead, for a worker to run.
"""

from __future__ import annotations

from typing import Any

from prefect.schedules import Cron
from prefect.settings import get_current_settings

from evisrag_core.config import Params
from evisrag_core.errors import UserError
from flows.pipeline import pipeline_flow


class NoServerError(UserError, RuntimeError):
    """No Prefect server is configured: a served deployment needs one that outlives this process."""


def prefect_api_url() -> str:
    """The configured Prefect API (PREFECT_API_URL or the active profile); NoServerError when there is none."""
    url = get_current_settings().api.url
    if not url:
        raise NoServerError(
            "evisrag serve needs a running Prefect server; start one, point PREFECT_API_URL at it, serve again:\n"
            "  PREFECT_HOME=$PWD/.prefect prefect server start --host 127.0.0.1 --port 4200\n"
            "  export PREFECT_API_URL=http://127.0.0.1:4200/api\n"
            "  evisrag serve"
        )
    return str(url)


def deployment_options(params: Params, params_path: str = "params.yaml") -> dict[str, Any]:
    """The keyword arguments of `Flow.serve` / `Flow.to_deployment` that params.serve describes."""
    cfg = params.serve
    return {
        "name": cfg.deployment_name,
        "schedules": [Cron(cfg.cron, timezone=cfg.timezone)] if cfg.cron else [],
        "parameters": {
            "params_path": params_path,
            "retries": cfg.retries,
            "retry_delay_seconds": cfg.retry_delay_seconds,
        },
        "description": "the EVisRAG pipeline: its DVC stages as Prefect tasks (stale ones run), logged to MLflow",
        "tags": ["evisrag"],
    }


def serve(params: Params, params_path: str = "params.yaml") -> None:
    """Register the deployment and run its flow runs until interrupted (Ctrl-C pauses the schedule).

    `Flow.serve` keeps the flow in memory and starts each run as a child process of this one, in this folder, so
    the runs see the project's params.yaml, DVC workspace and MLflow store.
    """
    prefect_api_url()
    pipeline_flow.serve(**deployment_options(params, params_path), limit=1)

"""`evisrag serve`: the deployment params.serve describes and its refusal without a server.

The deployment's run on a real Prefect server (scheduled from the UI's point of view, triggered with
`prefect deployment run`) is exercised in tests/e2e/test_ui_browser.py; per-stage retries in
tests/integration/test_pipeline_graph.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import clean_env

from evisrag_core.config import ParamsError, ServeParams, parse_params

REPO_ROOT = Path(__file__).resolve().parents[2]
# the repository's params (serve on demand, MLflow in the working folder): valid whatever the config rules become
PARAMS_TEXT = (REPO_ROOT / "params.yaml").read_text()


def test_cron_from_params_becomes_the_deployment_schedule() -> None:
    from flows.pipeline import pipeline_flow
    from flows.serve import deployment_options

    params = parse_params({"serve": {"cron": "0 2 * * *", "timezone": "Europe/Paris", "retries": 3}})
    deployment = pipeline_flow.to_deployment(**deployment_options(params))
    assert deployment.name == "evisrag"
    assert deployment.flow_name == "evisrag-pipeline"
    [schedule] = deployment.schedules
    assert schedule.schedule.cron == "0 2 * * *"
    assert schedule.schedule.timezone == "Europe/Paris"
    assert deployment.parameters == {"params_path": "params.yaml", "retries": 3, "retry_delay_seconds": 30.0}


def test_no_cron_means_on_demand_only() -> None:
    from flows.pipeline import pipeline_flow
    from flows.serve import deployment_options

    deployment = pipeline_flow.to_deployment(**deployment_options(parse_params({})))
    assert deployment.schedules == []


def test_repository_params_serve_on_demand_by_default() -> None:
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    assert ServeParams(**raw["serve"]).cron is None


@pytest.mark.parametrize(
    ("serve", "message"),
    [
        ({"cron": "every night"}, "serve.cron must have 5 fields"),
        ({"cron": "0 2 * *"}, "serve.cron must have 5 fields"),
        ({"timezone": "Mars/Olympus"}, "is not an IANA time zone"),
        ({"retries": -1}, "serve.retries"),
    ],
)
def test_bad_serve_params_are_refused(serve: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        parse_params({"serve": serve})


def test_serve_without_a_server_says_how_to_start_one(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(PARAMS_TEXT)
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "serve"],
        cwd=tmp_path,
        env=clean_env() | {"PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "prefect server start --host 127.0.0.1" in result.stderr
    assert "PREFECT_API_URL" in result.stderr

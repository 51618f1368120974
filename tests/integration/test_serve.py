"""`evisrag serve`: the deployment params.serve describes, its refusal without a server, and stage retries.

The deployment's run on a real Prefect server (scheduled from the UI's point of view, triggered with
`prefect deployment run`) is exercised in tests/e2e/test_ui_browser.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import MakeRepo, clean_env

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


# A stage that fails on its first attempt and succeeds on the second, printing which one it is.
FLAKY_DVC_YAML = """\
stages:
  flaky:
    cmd: sh -c 'if [ -f attempted ]; then echo STAGE-SECOND-ATTEMPT; echo ok > out.txt;
      else touch attempted; echo STAGE-FIRST-ATTEMPT; exit 3; fi'
    outs:
      - out.txt
"""

RUN_AND_READ_LOGS = """
import json
from flows.pipeline import pipeline_flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogWorker

state = pipeline_flow(retries={retries}, retry_delay_seconds=0, return_state=True)
run_id = state.state_details.flow_run_id
# Run logs reach the API in batches from a background worker: the last ones (the failed task's exception) may still
# be queued when the flow returns, so send them before reading.
APILogWorker.drain_all(timeout=30)
with get_client(sync_client=True) as client:
    logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
print(json.dumps({{"state": state.type.value, "logs": [log.message for log in logs]}}))
"""


def _flaky_project(root: Path, make_repo: MakeRepo) -> dict[str, str]:
    files = {
        "dvc.yaml": FLAKY_DVC_YAML,
        "params.yaml": PARAMS_TEXT,
        ".gitignore": "attempted\nmlflow.db\n.prefect/\nmlruns/\n",
    }
    return make_repo(root, files=files, dvc_init=True) | {"PYTHONPATH": str(REPO_ROOT)}


def _run_pipeline(root: Path, env: dict[str, str], retries: int) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", RUN_AND_READ_LOGS.format(retries=retries)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_failed_stage_is_retried_and_its_output_is_in_the_flow_run_log(tmp_path: Path, make_repo: MakeRepo) -> None:
    env = _flaky_project(tmp_path, make_repo)
    run = _run_pipeline(tmp_path, env, retries=1)
    assert run["state"] == "COMPLETED"
    # The stage's own stdout reached the Prefect run logger (what the UI shows), from both attempts.
    assert any("STAGE-FIRST-ATTEMPT" in message for message in run["logs"])
    assert any("STAGE-SECOND-ATTEMPT" in message for message in run["logs"])
    assert (tmp_path / "out.txt").read_text().strip() == "ok"


@pytest.mark.slow
def test_without_retries_a_failed_stage_fails_the_run(tmp_path: Path, make_repo: MakeRepo) -> None:
    env = _flaky_project(tmp_path, make_repo)
    run = _run_pipeline(tmp_path, env, retries=0)
    assert run["state"] == "FAILED"
    assert any("dvc repro failed with exit code" in message for message in run["logs"])
    assert not (tmp_path / "out.txt").exists()

"""`evisrag pipeline` as a Prefect graph, read back with the Prefect client from a real server: one task run per
dvc.yaml stage in order, each waiting for the one before, the stage's flow run nested under its task, up-to-date
stages marked so, per-stage retries, a failed stage stopping the run, and unknown stage names refused before any run.

The projects are small: the real `download` stage (embedded data, a handful of records; its command is `evisrag
download`, so it has a flow run) and shell stages (no flow of their own: a task only).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest
import yaml
from conftest import REPO_ROOT, MakeRepo, clean_env
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentTaskRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun, TaskRun
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_server import DOWNLOAD_THEN_COUNT, prefect_server

pytestmark = pytest.mark.slow


# `flaky` fails on its first attempt and succeeds on the second; `after` needs its output.
FLAKY_THEN_AFTER = """\
stages:
  flaky:
    cmd: sh -c 'if [ -f attempted ]; then echo ok > out.txt; else touch attempted; exit 3; fi'
    outs: [out.txt]
  after:
    cmd: cp out.txt after.txt
    deps: [out.txt]
    outs: [after.txt]
"""


def _params(retries: dict[str, int] | None = None) -> str:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["data"]["embedded"].update(n_sft=4, n_rl=2, n_test_per_split=2)
    params["pipeline"].update(retries=retries or {}, retry_delay_seconds=0)
    return yaml.safe_dump(params, sort_keys=False)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One Prefect server for the module; every project's runs go to it."""
    with prefect_server(tmp_path_factory.mktemp("prefect"), clean_env()) as env:
        yield env


@pytest.fixture
def client(served: dict[str, str]) -> Iterator[SyncPrefectClient]:
    with temporary_settings({PREFECT_API_URL: served["PREFECT_API_URL"]}), get_client(sync_client=True) as c:
        yield c


def _project(root: Path, make_repo: MakeRepo, served: dict[str, str], dvc_yaml: str, params: str) -> dict[str, str]:
    files = {"dvc.yaml": dvc_yaml, "params.yaml": params, ".gitignore": "attempted\nmlflow.db\nmlruns/\n"}
    make_repo(root, files=files, dvc_init=True)
    return served | {"PYTHONPATH": str(REPO_ROOT)}


def _pipeline(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`evisrag pipeline ARGS` in the project `root`."""
    command = [sys.executable, "-m", "flows.cli", "pipeline", *args]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)


def _pipeline_runs(client: SyncPrefectClient) -> list[FlowRun]:
    return [run for run in client.read_flow_runs() if run.name.startswith("pipeline-")]


def _latest_pipeline_run(client: SyncPrefectClient) -> FlowRun:
    return max(_pipeline_runs(client), key=lambda run: run.created)


def _stage_tasks(client: SyncPrefectClient, pipeline: FlowRun) -> list[TaskRun]:
    """The pipeline run's task runs in the order they were started."""
    runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[pipeline.id])))
    return sorted(runs, key=lambda run: int(run.dynamic_key))


def _nested_flow_runs(client: SyncPrefectClient, task_run_id: UUID) -> list[FlowRun]:
    nested = FlowRunFilter(parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[task_run_id]))
    return client.read_flow_runs(flow_run_filter=nested)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, make_repo: MakeRepo, served: dict[str, str]) -> tuple:
    root = tmp_path_factory.mktemp("graph")
    env = _project(root, make_repo, served, DOWNLOAD_THEN_COUNT, _params())
    first = _pipeline(root, env)
    assert first.returncode == 0, first.stderr[-4000:]
    return root, env


def test_each_stage_is_a_task_in_dvc_yaml_order_with_its_flow_run_nested(client, project) -> None:
    pipeline = _latest_pipeline_run(client)
    assert pipeline.state_type.value == "COMPLETED"
    download, count = tasks = _stage_tasks(client, pipeline)
    assert [t.name for t in tasks] == ["download", "count"]
    assert [t.state_type.value for t in tasks] == ["COMPLETED", "COMPLETED"]
    assert [t.state_name for t in tasks] == ["Completed", "Completed"]  # both ran: neither up to date nor cached
    # download's command is `evisrag download`: its flow run (the stage process's) is nested under its task
    [stage_run] = _nested_flow_runs(client, download.id)
    # the graph is a chain: count waits for download, drawn as its flow run
    assert [i.id for i in count.task_inputs["wait_for"]] == [stage_run.id]
    assert stage_run.parent_task_run_id == download.id
    assert stage_run.state_type.value == "COMPLETED"
    assert stage_run.name.startswith("download-")
    assert client.read_flow(stage_run.flow_id).name == "download"
    # a shell command has no flow of its own: its task stands alone
    assert _nested_flow_runs(client, count.id) == []
    # no stage flow run is left at the top level, unlinked
    assert [r.name for r in client.read_flow_runs() if r.parent_task_run_id is None] == [pipeline.name]


def test_a_shell_stage_output_is_in_the_pipeline_run_log(client, project) -> None:
    """count's command prints a line: the pipeline's flow run logs it, prefixed with the stage name (download has a
    flow run of its own, so its output is not copied here)."""
    root, _ = project
    pipeline = _latest_pipeline_run(client)
    logs = [log.message for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[pipeline.id])))]
    printed = (root / "count.txt").read_text().strip()
    assert printed.startswith("files: ")
    assert f"count| {printed}" in logs
    assert not any(message.startswith("download| ") for message in logs)


def test_the_ui_graph_draws_the_chain_of_stages(client, project) -> None:
    """What the UI's graph draws (its data, /flow_runs/<id>/graph-v2): download's flow run, then count, linked."""
    pipeline = _latest_pipeline_run(client)
    graph = client.request("GET", "/flow_runs/{id}/graph-v2", path_params={"id": pipeline.id}).json()
    nodes = sorted((node for _, node in graph["nodes"]), key=lambda node: node["start_time"])
    assert [(n["kind"], n["label"].split(" / ")[0]) for n in nodes] == [("flow-run", "download"), ("task-run", "count")]
    assert [parent["id"] for parent in nodes[1]["parents"]] == [nodes[0]["id"]]


def test_mlflow_keeps_the_parent_run_with_the_stage_run_nested(project) -> None:
    root, env = project
    script = (
        "import json, mlflow\n"
        "mlflow.set_tracking_uri('sqlite:///mlflow.db')\n"
        "runs = mlflow.search_runs(experiment_names=['evisrag'], output_format='list')\n"
        "print(json.dumps({r.info.run_name: [r.info.run_id, r.data.tags.get('mlflow.parentRunId')] for r in runs}))\n"
    )
    shown = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True)
    runs = json.loads(shown.stdout.strip().splitlines()[-1])
    assert runs["download"][1] == runs["pipeline"][0]


def test_a_second_run_shows_every_stage_up_to_date_without_flow_runs(client, project) -> None:
    root, env = project
    again = _pipeline(root, env)
    assert again.returncode == 0, again.stderr[-4000:]
    tasks = _stage_tasks(client, _latest_pipeline_run(client))
    assert [(t.name, t.state_type.value, t.state_name) for t in tasks] == [
        ("download", "COMPLETED", "Up to date"),
        ("count", "COMPLETED", "Up to date"),
    ]
    assert all(_nested_flow_runs(client, t.id) == [] for t in tasks)


def test_stage_selection_runs_the_target_and_what_it_needs(client, project) -> None:
    root, env = project
    (root / "count.txt").unlink()
    selected = _pipeline(root, env, "--force", "download")
    assert selected.returncode == 0, selected.stderr[-4000:]
    tasks = _stage_tasks(client, _latest_pipeline_run(client))
    assert [(t.name, t.state_name) for t in tasks] == [("download", "Completed")]  # forced; count not selected
    assert not (root / "count.txt").exists()


@pytest.mark.parametrize(
    ("args", "params", "message"),
    [
        (["nosuch"], {}, "the stages of dvc.yaml are: download, count"),
        ([], {"donwload": 1}, "pipeline.retries names donwload: not a stage of dvc.yaml"),
    ],
)
def test_an_unknown_stage_is_refused_before_any_run(client, project, args, params, message) -> None:
    root, env = project
    good = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(_params(params))  # the pipeline takes the project's params file only
    before = len(_pipeline_runs(client))
    try:
        refused = _pipeline(root, env, *args)
    finally:
        (root / "params.yaml").write_text(good)
    assert refused.returncode == 2, refused.stderr[-4000:]
    assert message in refused.stderr
    assert "Traceback" not in refused.stderr
    assert len(_pipeline_runs(client)) == before  # no flow run recorded for a user error


def test_a_stage_with_retries_runs_again_and_completes(tmp_path, make_repo, served, client) -> None:
    env = _project(tmp_path, make_repo, served, FLAKY_THEN_AFTER, _params({"flaky": 1}))
    result = _pipeline(tmp_path, env)
    assert result.returncode == 0, result.stderr[-4000:]
    flaky, after = _stage_tasks(client, _latest_pipeline_run(client))
    assert (flaky.state_type.value, after.state_type.value) == ("COMPLETED", "COMPLETED")
    states = [s.name for s in client.read_task_run_states(flaky.id)]
    assert states == ["Pending", "Running", "AwaitingRetry", "Retrying", "Completed"]
    assert (tmp_path / "after.txt").read_text().strip() == "ok"


def test_a_failed_stage_fails_its_task_and_the_stages_after_it_do_not_run(tmp_path, make_repo, served, client) -> None:
    env = _project(tmp_path, make_repo, served, FLAKY_THEN_AFTER, _params())
    result = _pipeline(tmp_path, env)
    assert result.returncode != 0
    pipeline = _latest_pipeline_run(client)
    assert pipeline.state_type.value == "FAILED"
    [flaky] = _stage_tasks(client, pipeline)  # `after` has no task: it never started
    assert flaky.name == "flaky" and flaky.state_type.value == "FAILED"
    assert "exited with 3" in client.read_task_run_states(flaky.id)[-1].message
    assert not (tmp_path / "after.txt").exists()


def test_a_stage_stopped_by_a_user_error_ends_the_pipeline_refused_not_failed(
    tmp_path, make_repo, served, client
) -> None:
    """A stage's user error (here a local dataset folder that does not exist) is no incident: the stage's flow run,
    its task and the pipeline end Refused (Cancelled type), the stage is not retried, the CLI exits 2 with the
    stage's message, and MLflow's parent run ends KILLED."""
    params = yaml.safe_load(_params({"download": 2}))
    params["data"].update(source="local", local_dir="nowhere")
    env = _project(tmp_path, make_repo, served, DOWNLOAD_THEN_COUNT, yaml.safe_dump(params, sort_keys=False))
    result = _pipeline(tmp_path, env)
    assert result.returncode == 2, result.stderr[-4000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: stage download refused its input: ") and "nowhere" in last
    pipeline = _latest_pipeline_run(client)
    assert (pipeline.state_type.value, pipeline.state_name) == ("CANCELLED", "Refused")
    [download] = _stage_tasks(client, pipeline)
    assert (download.state_type.value, download.state_name) == ("CANCELLED", "Refused")
    assert "Retrying" not in [s.name for s in client.read_task_run_states(download.id)]
    [stage_run] = _nested_flow_runs(client, download.id)
    assert stage_run.state_name == "Refused"
    script = (
        "import json, mlflow; mlflow.set_tracking_uri('sqlite:///mlflow.db');"
        "print(json.dumps({r.data.tags.get('mlflow.runName'): r.info.status for r in "
        "mlflow.search_runs(experiment_names=['evisrag'], output_format='list')}))"
    )
    shown = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    statuses = json.loads(shown.stdout.strip().splitlines()[-1])
    assert statuses["pipeline"] == "KILLED", statuses

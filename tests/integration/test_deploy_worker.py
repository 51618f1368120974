"""`evisrag deploy --pool NAME`: the pipeline registered on a work pool, and a real process worker running it.

A `prefect server start` and a `prefect worker start --pool NAME --type process` on 127.0.0.1, each in its own
process group (stopped as a group). The project is small (the real `download` stage with a handful of records, then
a shell stage), so a run through the worker takes well under two minutes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, MakeRepo, clean_env
from prefect_server import DOWNLOAD_THEN_COUNT, prefect_server, start_group, stop_group

pytestmark = pytest.mark.slow

POOL = "evisrag-test-pool"
DEPLOYMENT = "evisrag-pipeline/evisrag"

READ_RUN = """
import json, sys
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
with get_client(sync_client=True) as client:
    deployment = client.read_deployment_by_name(sys.argv[1])
    [run] = [r for r in client.read_flow_runs() if r.deployment_id == deployment.id]
    tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    print(json.dumps({
        "state": run.state_type.value,
        "pool": run.work_pool_name,
        "tasks": [(t.name, t.state_type.value) for t in sorted(tasks, key=lambda t: int(t.dynamic_key))],
    }))
"""


def _params() -> str:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["data"]["embedded"].update(n_sft=4, n_rl=2, n_test_per_split=2)
    params["serve"].update(retries=0, retry_delay_seconds=0)
    return yaml.safe_dump(params, sort_keys=False)


def _evisrag(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "flows.cli", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    base = tmp_path_factory.mktemp("deploy")
    with prefect_server(base, clean_env() | {"PYTHONPATH": str(REPO_ROOT)}) as env:
        yield base, env


def test_a_process_worker_runs_the_deployed_pipeline(served, make_repo: MakeRepo) -> None:
    base, env = served
    root = base / "project"
    files = {"dvc.yaml": DOWNLOAD_THEN_COUNT, "params.yaml": _params(), ".gitignore": "mlflow.db\nmlruns/\n"}
    make_repo(root, files=files, dvc_init=True)

    deployed = _evisrag(["deploy", "--pool", POOL], root, env)
    assert deployed.returncode == 0, deployed.stderr[-4000:]
    assert f"created the work pool {POOL} (type process)" in deployed.stdout
    assert f"deployment {DEPLOYMENT} registered on the process work pool {POOL}" in deployed.stdout
    again = _evisrag(["deploy", "--pool", POOL], root, env)
    assert again.returncode == 0 and "created the work pool" not in again.stdout  # an existing pool is reused

    # The worker starts elsewhere (here: the temp folder above the project); the deployment says where to run.
    worker_env = env | {"PREFECT_WORKER_QUERY_SECONDS": "2"}
    worker_cmd = ["prefect", "worker", "start", "--pool", POOL, "--type", "process", "--limit", "1"]
    worker = start_group(worker_cmd, base, worker_env, base / "worker.log")
    try:
        trigger = ["prefect", "deployment", "run", DEPLOYMENT, "--watch", "--watch-timeout", "240"]
        watched = subprocess.run(trigger, cwd=base, env=env, capture_output=True, text=True, timeout=300)
        worker_log = (base / "worker.log").read_text(errors="replace")[-4000:]
        assert watched.returncode == 0, f"{watched.stdout[-3000:]}\n{watched.stderr[-3000:]}\n{worker_log}"
    finally:
        stop_group(worker)

    shown = subprocess.run([sys.executable, "-c", READ_RUN, DEPLOYMENT], env=env, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr[-3000:]
    run = json.loads(shown.stdout.strip().splitlines()[-1])
    assert run["state"] == "COMPLETED"
    assert run["pool"] == POOL
    assert run["tasks"] == [["download", "COMPLETED"], ["count", "COMPLETED"]]
    assert (root / "count.txt").is_file()  # the run happened in the project folder, not where the worker started


def test_a_bad_cron_is_one_message_and_exit_2(served, tmp_path: Path) -> None:
    _, env = served
    (tmp_path / "params.yaml").write_text(_params())
    refused = _evisrag(["deploy", "--pool", POOL, "--cron", "every night"], tmp_path, env)
    assert refused.returncode == 2
    assert "--cron 'every night'" in refused.stderr and "5 fields" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_deploy_without_a_server_says_how_to_start_one(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(_params())
    refused = _evisrag(["deploy", "--pool", POOL], tmp_path, clean_env() | {"PYTHONPATH": str(REPO_ROOT)})
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "prefect server start --host 127.0.0.1" in refused.stderr

"""The UIs in a real browser: Prefect's and MLflow's servers on 127.0.0.1, one pipeline run, headless Chromium.

One served deployment run drives everything a user would do: `prefect server start`, `mlflow server`, `evisrag
serve`, `prefect deployment run 'evisrag-pipeline/evisrag' --watch`. Chromium then renders the Prefect UI's runs
page, the MLflow runs table and the evaluate stage run's MLflow page; the tests assert that the run names (and the
stage run's link to its parent) are in the rendered DOM and keep screenshots in artifacts/screenshots/ (git-ignored;
CI keeps them as artifacts).

Slow (three to five minutes on 2 cores). Needs Debian's `chromium` (`.ci/run` installs it); without it the tests skip,
except under CI (CI=true), where a missing browser is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import MakeRepo, clean_env, small_params

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO_ROOT / "artifacts" / "screenshots"
DEPLOYMENT = "evisrag-pipeline/evisrag"
STAGES = ["download", "model", "sft", "rsgrpo", "predict", "evaluate", "report"]
pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1600,1000",
]
# Virtual time lets the single-page apps fetch and render before the snapshot, without a fixed sleep.
VIRTUAL_TIME_BUDGETS_MS = (20_000, 60_000, 120_000)


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    message = "Debian's chromium is not installed (apt-get install -y chromium; .ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_group(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a server in its own process group: mlflow server and prefect's runner leave children behind otherwise."""
    with log.open("wb") as out:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            # The leader is gone; children of the group may linger a moment longer.
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    pytest.fail(f"{url} did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def _post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 900, log: Path | None = None) -> str:
    """Run a command to completion; on failure show its output and the tail of `log` (the serving process's)."""
    try:
        result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{cmd} still running after {timeout} s; {log}:\n{_tail(log)}")
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}\n{_tail(log)}"
    return result.stdout + result.stderr


def _tail(log: Path | None) -> str:
    return log.read_text(errors="replace")[-4000:] if log and log.is_file() else ""


@dataclass
class Stack:
    root: Path
    prefect_url: str  # the UI; the API is under /api
    mlflow_url: str
    watch_output: str


def _wait_for_deployment(api: str, proc: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    _wait_until_up(f"{api}/deployments/name/{DEPLOYMENT}", proc, log, timeout)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, make_repo: MakeRepo) -> Iterator[Stack]:
    _chromium()  # skip (or fail under CI) before minutes of pipeline, not after
    base = tmp_path_factory.mktemp("ui")
    root, env = base / "project", clean_env()
    params = yaml.safe_load(small_params())
    params["serve"].update(retries=0, retry_delay_seconds=0)
    prefect_port, mlflow_port = _free_port(), _free_port()
    prefect_url, mlflow_url = f"http://127.0.0.1:{prefect_port}", f"http://127.0.0.1:{mlflow_port}"
    env_prefect = env | {"PREFECT_HOME": str(base / "prefect_home"), "PREFECT_API_URL": f"{prefect_url}/api"}
    started: list[subprocess.Popen] = []
    try:
        server_log, mlflow_log, serve_log = base / "prefect_server.log", base / "mlflow_server.log", base / "serve.log"
        started.append(
            _start_group(
                ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
                base,
                env_prefect,
                server_log,
            )
        )
        mlflow_cmd = ["mlflow", "server", "--host", "127.0.0.1", "--port", str(mlflow_port)]
        mlflow_cmd += ["--backend-store-uri", f"sqlite:///{base / 'mlflow.db'}", "--workers", "1"]
        started.append(_start_group(mlflow_cmd, base, env, mlflow_log))

        params["tracking"]["mlflow_tracking_uri"] = mlflow_url
        make_repo(root, checkout=True, files={"params.yaml": yaml.safe_dump(params, sort_keys=False)})

        _wait_until_up(f"{prefect_url}/api/health", started[0], server_log)
        _wait_until_up(f"{mlflow_url}/health", started[1], mlflow_log)
        serve = _start_group(["evisrag", "serve"], root, env_prefect, serve_log)
        started.insert(0, serve)  # stopped first: it pauses its schedule through the server on shutdown
        _wait_for_deployment(f"{prefect_url}/api", serve, serve_log)
        # Generous: about two minutes on an idle 2-core machine, many times that when other work shares the cores.
        trigger = ["prefect", "deployment", "run", DEPLOYMENT, "--watch", "--watch-timeout", "2400"]
        watch = _run(trigger, root, env_prefect, timeout=2500, log=serve_log)
        yield Stack(root, prefect_url, mlflow_url, watch)
    finally:
        for proc in started:
            _stop_group(proc)


def _chromium_run(args: list[str], name: str) -> subprocess.CompletedProcess:
    profile = SCREENSHOTS / f".profile-{name}"
    shutil.rmtree(profile, ignore_errors=True)
    try:
        command = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=240, check=True)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def _browse(url: str, name: str, expected: list[str]) -> str:
    """Render `url` in headless Chromium until every `expected` text is in the DOM (or give up after the longest
    wait); save the DOM as <name>.html and a screenshot as <name>.png and return the DOM.

    The single-page apps fetch their data after loading; on a busy 2-core machine that can outlast a short
    virtual-time budget, so a longer one is tried before concluding the text is absent.
    """
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for budget in VIRTUAL_TIME_BUDGETS_MS:
        timing = f"--virtual-time-budget={budget}"
        dom = _chromium_run([timing, "--dump-dom", url], name).stdout
        if all(text in dom for text in expected):
            break
    (SCREENSHOTS / f"{name}.html").write_text(dom)
    shot = SCREENSHOTS / f"{name}.png"
    shot.unlink(missing_ok=True)
    _chromium_run([timing, f"--screenshot={shot}", url], name)
    assert shot.is_file() and shot.stat().st_size > 10_000, f"no screenshot of {url}"
    return dom


def _flow_runs(stack: Stack) -> list[dict]:
    return _post_json(f"{stack.prefect_url}/api/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 50})


def test_deployment_run_completed_every_stage(stack: Stack) -> None:
    assert "Completed" in stack.watch_output, stack.watch_output[-2000:]
    runs = _flow_runs(stack)
    pipeline = [r for r in runs if r["name"].startswith("pipeline-")]
    assert len(pipeline) == 1 and pipeline[0]["deployment_id"], "the pipeline ran as the served deployment"
    stage_runs = {r["name"].rsplit("-", 2)[0]: r["state_type"] for r in runs if r is not pipeline[0]}
    assert set(STAGES) <= set(stage_runs), stage_runs
    assert set(stage_runs.values()) == {"COMPLETED"}, stage_runs
    assert json.loads((stack.root / "metrics.json").read_text())["overall"]["cnt_global"] == 16


def test_prefect_ui_lists_the_flow_runs(stack: Stack) -> None:
    names = [r["name"] for r in _flow_runs(stack)]
    pipeline_run = next(n for n in names if n.startswith("pipeline-"))
    assert len(names) == 1 + len(STAGES), names  # the pipeline's flow run and one per stage
    dom = _browse(f"{stack.prefect_url}/runs", "prefect_runs", names)
    assert pipeline_run in dom
    assert "evisrag-pipeline" in dom  # the flow's name beside its run
    missing = [name for name in names if name not in dom]
    assert not missing, f"{missing} of {names} not rendered"


def test_mlflow_ui_lists_the_pipeline_run_and_its_stage_runs(stack: Stack) -> None:
    experiment = _get_json(f"{stack.mlflow_url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=evisrag")
    experiment_id = experiment["experiment"]["experiment_id"]
    runs = _post_json(f"{stack.mlflow_url}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id]})["runs"]
    names = [r["info"]["run_name"] for r in runs]
    assert names.count("pipeline") == 1 and set(STAGES) <= set(names), names
    by_name = {r["info"]["run_name"]: r["info"]["run_id"] for r in runs}
    parent_link = f'href="#/experiments/{experiment_id}/runs/{by_name["pipeline"]}">'

    # The runs table nests the stage runs under the collapsed parent row: the parent's name links to its run, and the
    # count of matching runs includes the stage runs.
    count = f"<strong>{len(runs)}</strong> matching runs"
    dom = _browse(f"{stack.mlflow_url}/#/experiments/{experiment_id}/runs", "mlflow_runs", [">pipeline<", count])
    assert ">pipeline<" in dom  # the parent run's name as a table cell, not just a word somewhere on the page
    assert parent_link in dom, "the pipeline row does not link to the pipeline run"
    assert count in dom, f"the table does not count {len(runs)} runs (pipeline and its stage runs)"

    # A stage run's own page: its name as the header, and a link back to the pipeline run as its parent.
    evaluate_url = f"{stack.mlflow_url}/#/experiments/{experiment_id}/runs/{by_name['evaluate']}"
    header = 'data-testid="runs-header">evaluate<'
    dom = _browse(evaluate_url, "mlflow_evaluate_run", [header, ">Parent run<", f"{parent_link}pipeline<"])
    assert header in dom, "the evaluate run's page has no evaluate header"
    assert ">Parent run<" in dom and f"{parent_link}pipeline<" in dom, "the evaluate run does not link its parent"

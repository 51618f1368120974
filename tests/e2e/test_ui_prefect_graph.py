"""The Prefect graph of stage tasks in a real browser: one `evisrag pipeline` run (every dvc.yaml stage, small
params) and a second, no-op run against a `prefect server start` on 127.0.0.1, shown by headless Chromium.

The flow-run page draws the graph on a canvas, so the assertions read the page's text where the same runs are
listed (the "Subflow Runs" and "Task Runs" tabs, reached with a click as a user does) and the graph's own data; the
screenshots in artifacts/screenshots/ (git-ignored; CI keeps them) show the graph itself.

Slow (two to four minutes on 2 cores). Needs Debian's `chromium`: skipped without it, except under CI.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from browser import Browser, chromium
from conftest import MakeRepo, clean_env, small_params
from prefect_server import prefect_server

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO_ROOT / "artifacts" / "screenshots"
STAGES = ["download", "model", "sft", "rsgrpo", "predict", "evaluate", "report"]
pytestmark = pytest.mark.slow

READ_RUNS = """
import itertools
import json
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentTaskRunId
from prefect.client.schemas.sorting import FlowRunSort
with get_client(sync_client=True) as client:
    pipelines = [r for r in client.read_flow_runs(sort=FlowRunSort.START_TIME_ASC) if r.name.startswith("pipeline-")]
    first = pipelines[0]
    tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[first.id])))
    ids = [t.id for t in tasks]
    nested = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(parent_task_run_id=FlowRunFilterParentTaskRunId(any_=ids))
    )
    graph = client.request("GET", "/flow_runs/{id}/graph-v2", path_params={"id": first.id}).json()
    print(json.dumps({
        "runs": [[str(r.id), r.name, r.state_type.value] for r in pipelines],
        "stage_flow_runs": [r.name for r in nested],
        "graph": [node for _, node in graph["nodes"]],
    }))
"""


@dataclass
class Runs:
    ui: str
    first: tuple[str, str]  # (id, name) of the run that ran every stage
    second: tuple[str, str]  # the no-op run after it
    stage_flow_runs: list[str]
    graph: list[dict]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, make_repo: MakeRepo) -> Iterator[Runs]:
    chromium()  # skip (or fail under CI) before minutes of pipeline, not after
    base = tmp_path_factory.mktemp("graph_ui")
    with prefect_server(base, clean_env()) as env:
        root = base / "project"
        make_repo(root, checkout=True, files={"params.yaml": small_params(sft_steps=2, rsgrpo_steps=1)})
        for _ in range(2):
            done = subprocess.run(["evisrag", "pipeline"], cwd=root, env=env, capture_output=True, text=True)
            assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        shown = subprocess.run([sys.executable, "-c", READ_RUNS], env=env, capture_output=True, text=True)
        assert shown.returncode == 0, shown.stderr[-3000:]
        read = json.loads(shown.stdout.strip().splitlines()[-1])
        (first_id, first_name, first_state), (second_id, second_name, _) = read["runs"]
        assert first_state == "COMPLETED"
        ui = env["PREFECT_API_URL"].removesuffix("/api")
        yield Runs(ui, (first_id, first_name), (second_id, second_name), read["stage_flow_runs"], read["graph"])


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    opened = Browser(tmp_path / "profile", tmp_path / "chromium.log")
    try:
        yield opened
    finally:
        opened.close()


def _in_order(text: str, names: list[str]) -> bool:
    positions = [text.find(name) for name in names]
    return -1 not in positions and positions == sorted(positions)


def test_the_graph_is_the_chain_of_stages(runs: Runs) -> None:
    """The data the page's graph draws: every stage, as its flow run, each linked to the one before."""
    nodes = sorted(runs.graph, key=lambda node: node["start_time"])
    assert [(n["kind"], n["label"].split(" / ")[0]) for n in nodes] == [("flow-run", s) for s in STAGES]
    assert all(n["state_type"] == "COMPLETED" for n in nodes)
    for before, after in itertools.pairwise(nodes):
        assert [p["id"] for p in after["parents"]] == [before["id"]], f"{after['label']} not after {before['label']}"


def test_the_run_page_shows_each_stage_flow_run_under_the_pipeline(runs: Runs, browser: Browser) -> None:
    run_id, run_name = runs.first
    browser.open(f"{runs.ui}/runs/flow-run/{run_id}")
    browser.wait_for([run_name, "Subflow Runs", "Completed", "evisrag-pipeline", "Beginning flow run"])
    browser.screenshot(SCREENSHOTS / "prefect_graph.png")  # the graph of the seven stages, top of the page
    browser.click("Subflow Runs")
    assert len(runs.stage_flow_runs) == len(STAGES)
    shown = browser.wait_for(runs.stage_flow_runs)
    browser.screenshot(SCREENSHOTS / "prefect_graph_subflow_runs.png")
    assert f"{len(STAGES)} Flow runs" in shown
    # newest first, as the tab sorts by default: report's run at the top, download's at the bottom
    newest_first = sorted(runs.stage_flow_runs, key=lambda name: STAGES.index(name.rsplit("-", 2)[0]), reverse=True)
    assert _in_order(shown, newest_first), shown[:3000]


def test_a_no_op_run_shows_every_stage_task_up_to_date(runs: Runs, browser: Browser) -> None:
    run_id, run_name = runs.second
    browser.open(f"{runs.ui}/runs/flow-run/{run_id}")
    browser.wait_for([run_name, "Task Runs", "Completed", "evisrag-pipeline", "Beginning flow run"])
    browser.screenshot(SCREENSHOTS / "prefect_graph_noop.png")
    browser.click("Task Runs")
    shown = browser.wait_for([f"{len(STAGES)} Task runs", *STAGES])
    browser.screenshot(SCREENSHOTS / "prefect_graph_noop_task_runs.png")
    listing = shown[shown.index(f"{len(STAGES)} Task runs") :]
    assert listing.count("Up to date") == len(STAGES), listing[:3000]
    rows = [line for line in listing.splitlines() if line in STAGES]
    assert rows == STAGES[::-1], rows  # newest first: the stages ran in dvc.yaml order

"""The UIs in a real browser: Prefect's and MLflow's servers on 127.0.0.1, one pipeline run, headless Chromium.

One served deployment run drives everything a user would do: `prefect server start`, `mlflow server`, `evisrag
serve`, `prefect deployment run 'evisrag-pipeline/evisrag' --watch`. Chromium then renders the Prefect UI's runs
page, the MLflow runs table (as the documented link opens it in a fresh browser: training runs, headline metric
columns) and the evaluate stage run's MLflow page; the tests assert that the run names (and the stage run's link to
its parent) are in the rendered DOM and keep screenshots in artifacts/screenshots/ (git-ignored; CI keeps them as
artifacts).

Without the servers: `dvc plots show`'s page rendered with the network blocked (the charts drawn from the inlined
Vega), and the run report's metrics table measured at 1,400 px.

Slow (three to five minutes on 2 cores). Needs Debian's `chromium` (`.ci/run` installs it); without it the tests skip,
except under CI (CI=true), where a missing browser is a failure.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from browser import FLAGS, chromium
from conftest import MakeRepo, clean_env, small_params
from prefect_server import free_port, start_group, stop_group, wait_until_up

from evisrag_core.grounding import GROUNDING_KEYS
from evisrag_core.metrics import METRIC_KEYS
from evisrag_core.report import ReportInputs, build_report
from tasks.tracking import HEADLINE_METRICS, RUNS_VIEW_KEY, runs_table_path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO_ROOT / "artifacts" / "screenshots"
DEPLOYMENT = "evisrag-pipeline/evisrag"
STAGES = ["download", "model", "sft", "rsgrpo", "predict", "evaluate", "report"]
pytestmark = pytest.mark.slow

# The DevTools driver's flags (tests/browser.py) without its debugging port: these runs only dump or screenshot.
CHROMIUM_FLAGS = [flag for flag in FLAGS if not flag.startswith("--remote-debugging-port")]
# Virtual time lets the single-page apps fetch and render before the snapshot, without a fixed sleep.
VIRTUAL_TIME_BUDGETS_MS = (20_000, 60_000, 120_000)


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
    wait_until_up(f"{api}/deployments/name/{DEPLOYMENT}", proc, log, timeout)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, make_repo: MakeRepo) -> Iterator[Stack]:
    chromium()  # skip (or fail under CI) before minutes of pipeline, not after
    base = tmp_path_factory.mktemp("ui")
    root, env = base / "project", clean_env()
    params = yaml.safe_load(small_params())
    params["serve"].update(retries=0, retry_delay_seconds=0)
    prefect_port, mlflow_port = free_port(), free_port()
    prefect_url, mlflow_url = f"http://127.0.0.1:{prefect_port}", f"http://127.0.0.1:{mlflow_port}"
    env_prefect = env | {"PREFECT_HOME": str(base / "prefect_home"), "PREFECT_API_URL": f"{prefect_url}/api"}
    started: list[subprocess.Popen] = []
    try:
        server_log, mlflow_log, serve_log = base / "prefect_server.log", base / "mlflow_server.log", base / "serve.log"
        started.append(
            start_group(
                ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
                base,
                env_prefect,
                server_log,
            )
        )
        mlflow_cmd = ["mlflow", "server", "--host", "127.0.0.1", "--port", str(mlflow_port)]
        mlflow_cmd += ["--backend-store-uri", f"sqlite:///{base / 'mlflow.db'}", "--workers", "1"]
        started.append(start_group(mlflow_cmd, base, env, mlflow_log))

        params["tracking"]["mlflow_tracking_uri"] = mlflow_url
        make_repo(root, checkout=True, files={"params.yaml": yaml.safe_dump(params, sort_keys=False)})

        wait_until_up(f"{prefect_url}/api/health", started[0], server_log, timeout=600)
        wait_until_up(f"{mlflow_url}/health", started[1], mlflow_log, timeout=600)
        serve = start_group(["evisrag", "serve"], root, env_prefect, serve_log)
        started.insert(0, serve)  # stopped first: it pauses its schedule through the server on shutdown
        _wait_for_deployment(f"{prefect_url}/api", serve, serve_log)
        # Generous: about two minutes on an idle 2-core machine, many times that when other work shares the cores.
        trigger = ["prefect", "deployment", "run", DEPLOYMENT, "--watch", "--watch-timeout", "2400"]
        watch = _run(trigger, root, env_prefect, timeout=2500, log=serve_log)
        yield Stack(root, prefect_url, mlflow_url, watch)
    finally:
        for proc in started:
            stop_group(proc)


def _chromium_run(args: list[str], name: str) -> subprocess.CompletedProcess:
    profile = SCREENSHOTS / f".profile-{name}"
    shutil.rmtree(profile, ignore_errors=True)
    try:
        command = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
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


def test_mlflow_link_opens_a_fresh_browser_on_the_runs_with_the_headline_metrics(stack: Stack) -> None:
    """The link docs/operations.md gives (and the experiment's description names): a new browser profile lands on
    the runs table, not the GenAI overview, with the headline metric columns and the pipeline run's values."""
    experiment = _get_json(f"{stack.mlflow_url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=evisrag")
    experiment_id = experiment["experiment"]["experiment_id"]
    tags = {t["key"]: t["value"] for t in experiment["experiment"]["tags"]}
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert runs_table_path(experiment_id) in tags["mlflow.note.content"]
    assert f"mlflow.sharedViewState.{RUNS_VIEW_KEY}" in tags
    pipeline = _post_json(
        f"{stack.mlflow_url}/api/2.0/mlflow/runs/search",
        {"experiment_ids": [experiment_id], "filter": "attributes.run_name = 'pipeline'"},
    )["runs"][0]
    metrics = {m["key"]: m["value"] for m in pipeline["data"]["metrics"]}

    url = f"{stack.mlflow_url}/#{runs_table_path(experiment_id)}"
    dom = _browse(url, "mlflow_runs_headline", ["matching runs", *HEADLINE_METRICS])
    assert "matching runs" in dom, "the link did not open the runs table"
    for key in HEADLINE_METRICS:
        assert f">{key}<" in dom, f"no {key} column in the runs table"
        # the grid's cell of that column in the (collapsed) pipeline row, the only top-level row
        cell = re.search(rf'id="cell-metrics\.`{re.escape(key)}`-[^"]+" class="ag-cell-value">([^<]*)<', dom)
        assert cell, f"no {key} cell in the runs table"
        assert cell.group(1) == _ui_number(metrics[key]), f"{key}: shown {cell.group(1)}, logged {metrics[key]}"


def _ui_number(value: float) -> str:
    """How MLflow's runs table prints a metric: at most three decimals, trailing zeros dropped."""
    return f"{value:.3f}".rstrip("0").rstrip(".") or "0"


# --- without the servers ----------------------------------------------------------------------------------------


def _plot_logs(root: Path) -> None:
    """The plot logs a run writes (plots/*.json), with a few steps of every column dvc.yaml plots."""
    components = ["accuracy", "evidence", "format", "overlong", "is_observe", "is_think", "overall"]
    steps = range(1, 6)
    logs = {
        "sft_loss.json": [{"step": s, "loss": 2.0 / s} for s in steps],
        "rsgrpo.json": [
            {"step": s, **{f"reward/{c}": 0.1 * i + 0.02 * s for i, c in enumerate(components)}} for s in steps
        ],
        "rsgrpo_val.json": [{"step": s, "val/overall": 4.0 + 0.1 * s} for s in steps],
        "rsgrpo_val_sampled.json": [{"step": s, "val_sampled/overall": 3.5 + 0.2 * s} for s in steps],
    }
    (root / "plots").mkdir(exist_ok=True)
    for name, rows in logs.items():
        (root / "plots" / name).write_text(json.dumps(rows))


def _render_offline(page: Path, name: str) -> str:
    """The DOM of a local page in Chromium with every network request sent to a closed port (no proxy listens on
    127.0.0.1:9), so anything loaded from a CDN fails."""
    offline = ["--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>", "--virtual-time-budget=15000"]
    dom = _chromium_run([*offline, "--dump-dom", page.as_uri()], name).stdout
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / f"{name}.html").write_text(dom)
    return dom


def test_dvc_plots_render_with_the_network_off(tmp_path: Path, make_repo: MakeRepo) -> None:
    chromium()
    root, env = tmp_path / "project", clean_env()
    make_repo(root, checkout=True)
    _plot_logs(root)
    build = subprocess.run(
        [sys.executable, "scripts/build_plots_page.py"], cwd=root, env=env, capture_output=True, text=True
    )
    assert build.returncode == 0, build.stderr

    def show(out: str, *extra: str) -> Path:
        result = _run(["dvc", "plots", "show", "-o", out, *extra], root, env)
        assert "index.html" in result, result
        return root / out / "index.html"

    charts = len(json.loads(_run(["dvc", "plots", "show", "--json"], root, env))["data"])
    assert charts == 6, charts  # sft loss, three RS-GRPO stage plots, components, held-out

    dom = _render_offline(show("dvc_plots"), "dvc_plots_offline")
    assert dom.count('role="graphics-document"') == charts, "not every chart was drawn offline"
    for title in ("RS-GRPO reward per component (rollouts)", "reward (mean per response)", "SFT step"):
        assert f">{title}<" in dom, f"{title!r} is not in the rendered charts"
    assert ">y<" not in dom  # no axis left with DVC's default title

    # the same plots on DVC's own page (its CDN scripts) draw nothing here: the network really is off
    default_page = tmp_path / "dvc_default.html"
    default_page.write_text(DVC_PAGE)
    blank = _render_offline(show("dvc_plots_cdn", "--html-template", str(default_page)), "dvc_plots_cdn_offline")
    assert "graphics-document" not in blank and "cdn.jsdelivr.net" in blank


def test_dvc_reward_components_have_one_colour_each(tmp_path: Path, make_repo: MakeRepo) -> None:
    root, env = tmp_path / "project", clean_env()
    make_repo(root, checkout=True)
    _plot_logs(root)
    spec = json.loads(_run(["dvc", "plots", "show", "--show-vega", "rsgrpo-reward-components"], root, env))
    assert spec["encoding"]["color"]["field"] == "field"  # one colour per component, not per revision
    assert {row["field"] for row in spec["data"]["values"]} == {
        f"reward/{c}" for c in ("accuracy", "evidence", "format", "overlong", "is_observe", "is_think")
    }
    assert spec["encoding"]["y"]["title"] == "reward (mean per response)"


# dvc_render's own page (dvc_render/html.py), whose {scripts} DVC fills with its CDN <script> tags
DVC_PAGE = """<!DOCTYPE html><html><head>{refresh_tag}<title>DVC Plot</title>{scripts}</head>
<body>{plot_divs}</body></html>"""


def test_report_metrics_table_fits_1400_px(tmp_path: Path) -> None:
    """Every metric column of seven benchmarks, as a hub run writes them, in a 1,400 px wide window: the table ends
    inside it and the page has no horizontal scroll."""
    chromium()
    row = {k: 8 if k.startswith("cnt_") else 0.9876 for k in (*METRIC_KEYS, *GROUNDING_KEYS)}
    benches = ["ChartQA", "DocVQA", "InfoVQA", "MMQA", "SlideVQA", "ViDoSeek", "WebQA", "overall"]
    (tmp_path / "metrics.json").write_text(json.dumps({b: row for b in benches}))
    absent = tmp_path / "absent"
    inputs = ReportInputs(tmp_path / "metrics.json", absent / "pq.jsonl", absent, absent / "s.json", absent / "r.json")
    index = build_report(inputs, tmp_path / "report")
    measure = (
        "<script>const t = document.querySelector('table').getBoundingClientRect();"
        "document.body.dataset.measured = JSON.stringify({right: t.right, window: window.innerWidth, "
        "page: document.documentElement.scrollWidth});</script>"
    )
    index.write_text(index.read_text().replace("</body>", measure + "</body>"))
    window = ["--window-size=1400,900", "--virtual-time-budget=5000"]  # the later --window-size wins
    dom = _chromium_run([*window, "--dump-dom", index.as_uri()], "report").stdout
    measured = json.loads(html.unescape(dom.split('data-measured="', 1)[1].split('"', 1)[0]))
    assert measured["window"] == 1400, measured
    assert measured["right"] <= 1400 and measured["page"] <= 1400, measured

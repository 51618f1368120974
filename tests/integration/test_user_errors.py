"""Every user error exits 2 with one message that says what to do, and no traceback (issue 19; the rule lives in
flows/cli.py's main and evisrag_core/errors.py).

Each case is a real `evisrag …` process in a small project folder (the repository's params.yaml and dvc.yaml, plus
the bad inputs below). "One message" is what main prints: a first line `error: …`, and only when the error lists
several problems or the commands to run, further lines indented under it. Nothing else may reach stderr or stdout:
no log lines, no usage block, no traceback.

The table's invocations all fail before a Prefect flow run, an MLflow run or a model load starts, so each takes well
under a second (compare and serve: a few, for importing mlflow and prefect). The last test covers the one path that
cannot be checked up front, a bad record found inside a stage's flow run, and asserts how Prefect and MLflow record
it: Refused (a Cancelled-type state) and KILLED, not FAILED.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, clean_env
from PIL import Image

EVISRAG = str(Path(sys.executable).parent / "evisrag")
QUERY = "What colour is the square?"


def _write_yaml(path: Path, raw: object) -> None:
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")


def _test_split(folder: Path, images: list[str]) -> Path:
    """A one-question test split (top3_test.jsonl) whose record names `images`."""
    folder.mkdir(parents=True, exist_ok=True)
    row = {"qid": "q1", "query": QUERY, "image": images, "answer": ["red"], "is_sufficient": True}
    (folder / "top3_test.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder holding every bad input the table names."""
    root = tmp_path_factory.mktemp("user_errors")
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO_ROOT / name, root / name)
    shutil.copy(REPO_ROOT / "params.yaml", root / "other.yaml")  # valid, but not the file DVC's stages read
    (root / "syntax.yaml").write_text("seed: 0\npredict:\n  temperature: [0.5\n", encoding="utf-8")
    (root / "empty.yaml").write_text("", encoding="utf-8")
    (root / "list.yaml").write_text("- seed: 0\n", encoding="utf-8")
    _write_yaml(root / "typo.yaml", {"predict": {"temprature": 0.5}})
    _write_yaml(root / "range.yaml", {"rsgrpo": {"clip_low": 1.0}})
    _write_yaml(root / "plan.yaml", {"sft": {"save_steps": 100_000}})
    (root / "list.json").write_text("[0.5, 0.9]\n", encoding="utf-8")
    (root / "rows.json").write_text('{"overall": 0.9}\n', encoding="utf-8")
    (root / "broken.json").write_text('{"overall": {"global_em": 0.9}\n', encoding="utf-8")
    (root / "pages").mkdir()
    for i in range(6):
        Image.new("RGB", (28, 28), (40 * i, 80, 200)).save(root / "pages" / f"p{i}.png")
    _test_split(root / "url_split", ["https://example.com/page1.png", "images/p2.png", "images/p3.png"])
    preds = {"qid": "q1", "imgs": [], "pred": "<answer>red</answer>"}
    (root / "preds.jsonl").write_text(json.dumps(preds) + "\n", encoding="utf-8")
    (root / "data" / "test").mkdir(parents=True)
    return root


PAGES = [f"pages/p{i}.png" for i in range(6)]

# (id, argv, a text the message must hold)
CASES = [
    # params files (every command reads one)
    ("yaml-syntax", ["--params", "syntax.yaml", "download"], "syntax.yaml is not valid YAML: line 4, column 1"),
    ("empty-params", ["--params", "empty.yaml", "model"], "empty.yaml is empty; copy the repository's params.yaml"),
    ("params-not-a-mapping", ["--params", "list.yaml", "report"], "expected a mapping at the top level"),
    ("unknown-key", ["--params", "typo.yaml", "sft"], "unknown key 'predict.temprature'; valid keys here"),
    ("out-of-range", ["--params", "range.yaml", "rsgrpo", "--dry-run"], "rsgrpo.clip_low: Input should be less"),
    ("missing-params", ["--params", "absent.yaml", "predict"], "absent.yaml not found; run from the project root"),
    ("missing-params-dry", ["--params", "absent.yaml", "download", "--dry-run"], "absent.yaml not found"),
    ("plan-inconsistent", ["--params", "plan.yaml", "sft", "--dry-run"], "SFT configuration is inconsistent"),
    # pipeline
    ("unknown-stage", ["pipeline", "trian"], "unknown stage trian; the stages of dvc.yaml are: download, model"),
    ("pipeline-bad-flag", ["pipeline", "--frce"], "unrecognized arguments: --frce; see `evisrag --help`"),
    ("pipeline-other-params", ["--params", "other.yaml", "pipeline"], "read params.yaml only, not other.yaml; copy"),
    ("serve-other-params", ["--params", "other.yaml", "serve"], "read params.yaml only, not other.yaml; copy"),
    # stage inputs named on the command line: checked before the flow run starts
    ("predict-missing-data", ["predict", "--data", "nowhere"], "the dataset folder (--data or data.out_dir) nowhere"),
    ("predict-missing-model", ["predict", "--data", "data", "--model", "nomodel"], "model folder nomodel"),
    ("evaluate-missing-preds", ["evaluate", "--data", "data", "--preds", "nopreds"], "predictions (--preds"),
    ("evaluate-file-needs-data", ["evaluate", "--preds", "preds.jsonl"], "--preds FILE needs --data DIR"),
    (
        "image-urls-in-test-file",
        ["evaluate", "--data", "url_split", "--preds", "preds.jsonl"],
        "field 'image' holds URLs (https://example.com/page1.png)",
    ),
    ("report-bad-flag", ["report", "--dryrun"], "unrecognized arguments: --dryrun"),
    # answer
    ("answer-missing-image", ["answer", "--query", QUERY, "--images", "pages/p0.png", "gone.png"], "not found: gone"),
    ("answer-image-url", ["answer", "--query", QUERY, "--images", "http://example.com/a.png"], "not URLs"),
    ("answer-too-many-images", ["answer", "--query", QUERY, "--images", *PAGES], "6 images given; the model takes"),
    ("answer-no-query", ["answer", "--images", "pages/p0.png"], "the following arguments are required: --query"),
    ("answer-bad-tokens", ["answer", "--query", QUERY, "--images", PAGES[0], "--max-new-tokens", "0"], "positive"),
    # metrics
    ("metrics-not-an-object", ["metrics", "--file", "list.json"], "list.json holds a list, not a metrics table"),
    ("metrics-rows-not-objects", ["metrics", "--file", "rows.json"], "'overall' is not an object of metrics"),
    ("metrics-not-json", ["metrics", "--file", "broken.json"], "broken.json is not JSON"),
    ("metrics-missing", ["metrics", "--file", "none.json"], "none.json not found; run `evisrag pipeline`"),
    # compare, plan, serve, the command itself
    ("compare-bad-date", ["compare", "--since", "yesterday"], "--since 'yesterday': expected a date YYYY-MM-DD"),
    ("compare-bad-tag", ["compare", "--tag", "study"], "--tag 'study': expected KEY=VALUE"),
    ("plan-bad-int", ["plan", "--gpus", "eight"], "argument --gpus: invalid int value: 'eight'"),
    ("plan-gpus-vs-tp", ["plan", "--gpus", "3", "--tp", "2"], "--gpus 3 must be a positive multiple of --tp 2"),
    ("plan-missing-config", ["plan", "--arch-config", "none.json"], "--arch-config none.json not found"),
    ("plan-bad-gpu-type", ["plan", "--gpu-type", "TPU"], "argument --gpu-type: invalid choice: 'TPU'"),
    ("serve-without-server", ["serve"], "evisrag serve needs a running Prefect server"),
    ("unknown-command", ["trian"], "argument command: invalid choice: 'trian'"),
]


def _evisrag(argv: list[str], cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EVISRAG, *argv], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout)


def assert_one_user_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    """Exit 2; stderr is one `error:` message (continuation lines indented under it) holding `expected`."""
    shown = f"exit {result.returncode}\nstdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode == 2, shown
    assert "Traceback" not in result.stderr + result.stdout, shown
    first, *rest = result.stderr.splitlines()
    assert first.startswith("error: "), shown
    assert all(line.startswith("  ") for line in rest), shown
    assert expected in result.stderr, shown
    assert result.stdout == "", shown


@pytest.mark.parametrize(("argv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_user_error_exits_2_with_one_message(project: Path, argv: list[str], expected: str) -> None:
    assert_one_user_error(_evisrag(argv, project), expected)


def test_a_user_error_starts_no_prefect_or_mlflow_run(tmp_path: Path) -> None:
    """The issue's case: an unknown stage left a FAILED MLflow run (and a failed Prefect flow run) behind."""
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    assert_one_user_error(_evisrag(["pipeline", "evalute"], tmp_path), "unknown stage evalute")
    # no run database: importing prefect (flows/__init__.py) may make its empty home folder, nothing more
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    assert not list(tmp_path.glob(".prefect/*.db")), sorted(p.name for p in tmp_path.glob(".prefect/*"))


@pytest.mark.slow
def test_splits_of_another_world_are_one_message_from_inside_the_download_run(tmp_path: Path) -> None:
    """`data.embedded.world: hard` with the default world's splits is found as the download flow generates the
    data: exit 2, one `error:` line naming the world's splits, no traceback."""
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    _write_yaml(tmp_path / "world.yaml", {"data": {"embedded": {"world": "hard"}}})

    result = _evisrag(["--params", "world.yaml", "download"], tmp_path, timeout=300)

    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    expected = "for data.embedded.world: hard; set data.embedded.splits to some of ['HardBackground', 'HardSquare'"
    assert len(errors) == 1 and expected in errors[0], result.stderr[-3000:]


@pytest.mark.slow
def test_a_bad_record_inside_a_flow_run_ends_it_refused_not_failed(tmp_path: Path) -> None:
    """A user error that only shows inside a stage's run (a test record naming an image URL, met while the evaluate
    flow reads the data) still exits 2 with one message and no traceback, not even in the run's log. Prefect records
    the flow run as Refused (Cancelled type) and MLflow the stage run as KILLED with the message as a tag, so neither
    counts it as a failure."""
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    _test_split(tmp_path / "data" / "test" / "Bench", ["https://example.com/a.png"])
    (tmp_path / "preds").mkdir()
    (tmp_path / "preds" / "Bench.jsonl").write_text('{"qid": "q1", "pred": "<answer>red</answer>"}\n')

    result = _evisrag(["evaluate"], tmp_path, timeout=300)

    # stderr holds the flow run's log lines (a stage's progress), then main's one message; Prefect's temporary
    # server may report its shutdown after it
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "holds URLs (https://example.com/a.png)" in errors[0], result.stderr[-3000:]
    query = "from prefect.client.orchestration import get_client\nwith get_client(sync_client=True) as c:\n"
    query += "    print(*[(r.state_type.value, r.state_name) for r in c.read_flow_runs()])"
    states = subprocess.run(
        [sys.executable, "-c", "import flows\n" + query],
        cwd=tmp_path,
        env=clean_env() | {"PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    assert states.strip() == "('CANCELLED', 'Refused')", states
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        runs = db.execute("SELECT name, status, run_uuid FROM runs").fetchall()
        assert [(name, status) for name, status, _ in runs] == [("evaluate", "KILLED")]
        tag = db.execute("SELECT value FROM tags WHERE key = 'evisrag.user_error'").fetchone()
    assert tag and "holds URLs" in tag[0]

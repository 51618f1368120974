"""The run report: example picking, curves from step logs, the HTML page, missing inputs, and the `report` stage."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml
from PIL import Image

from evisrag_core.data.generator import GeneratorSpec, generate_dataset
from evisrag_core.data.schema import load_test_split
from evisrag_core.evaluate import evaluate_dir, write_evaluation
from evisrag_core.report import (
    RSGRPO_PLOT,
    SFT_PLOT,
    ReportInputs,
    build_report,
    curve,
    pick_examples,
    reward_keys,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def row(bench: str, qid: str, em: float, f1: float, evidence_f1: float | None = None) -> dict[str, Any]:
    return {"benchmark": bench, "qid": qid, "em": em, "f1": f1, "evidence_f1": evidence_f1}


@pytest.mark.parametrize(
    ("rows", "count", "good", "bad"),
    [
        ([], 3, [], []),
        # good: EM 1, best grounding first; bad: lowest F1 first
        (
            [row("A", "1", 1, 1, 0.5), row("A", "2", 1, 1, 1.0), row("A", "3", 0, 0.5), row("A", "4", 0, 0.0)],
            1,
            ["2"],
            ["4"],
        ),
        # round-robin over benchmarks, so each benchmark appears before a second one from the same benchmark
        (
            [row("A", "a1", 1, 1), row("A", "a2", 1, 1), row("B", "b1", 1, 1), row("B", "b2", 0, 0)],
            2,
            ["a1", "b1"],
            ["b2"],
        ),
        # undefined grounding (None) ranks as 0, ties keep file order
        ([row("A", "1", 1, 1, None), row("A", "2", 1, 1, 0.0), row("A", "3", 1, 1, 0.1)], 3, ["3", "1", "2"], []),
    ],
)
def test_pick_examples(rows: list[dict], count: int, good: list[str], bad: list[str]) -> None:
    picked_good, picked_bad = pick_examples(rows, count)
    assert [r["qid"] for r in picked_good] == good
    assert [r["qid"] for r in picked_bad] == bad


@pytest.mark.parametrize(
    ("rows", "key", "expected"),
    [
        ([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}], "loss", ([1.0, 2.0], [2.0, 1.5])),
        ([{"step": 1, "loss": float("nan")}, {"step": 2}, {"loss": 1.0}], "loss", ([], [])),  # skipped rows
        ([{"step": 3, "val/overall": 1.0}], "reward/overall", ([], [])),
    ],
)
def test_curve(rows: list[dict], key: str, expected: tuple) -> None:
    assert curve(rows, key) == expected


def test_reward_keys_are_the_rsgrpo_reward_columns_in_order() -> None:
    rows = [
        {"step": 1, "reward/overall": 0.0, "reward/accuracy": 0.0, "actor/loss": 1.0},
        {"step": 2, "reward/evidence": 0.1, "val/overall": 2.0},
    ]
    assert reward_keys(rows) == ["reward/overall", "reward/accuracy", "reward/evidence"]


def tagged(evidence: str, answer: str) -> str:
    return f"<observe>o</observe>\n<evidence>{evidence}</evidence>\n<think>t</think>\n<answer>{answer}</answer>"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A finished run's files: generated test data, predictions (half right), metrics, per-question rows, logs."""
    spec = GeneratorSpec(seed=1, image_size=48, images_per_question=3, insufficient_fraction=0.25)
    generate_dataset(tmp_path / "data", spec, ["ColorSquare", "ColorBackground"], 6, n_sft=0, n_rl=0)
    for bench in ("ColorSquare", "ColorBackground"):
        preds = []
        for i, record in enumerate(load_test_split(tmp_path / "data" / "test" / bench)):
            right = record.answer[0] if record.is_sufficient else "insufficient to answer"
            evidence = " ".join(
                f"[{k}]: {'seen it' if k in (record.positives or []) else 'no relevant information'}"
                for k in range(1, 4)
            )
            preds.append({"qid": record.qid, "pred": tagged(evidence, right if i % 2 == 0 else "grey")})
        path = tmp_path / "preds" / f"{bench}.jsonl"
        path.parent.mkdir(exist_ok=True)
        path.write_text("".join(json.dumps(p) + "\n" for p in preds))
    metrics, per_question = evaluate_dir(tmp_path / "data", tmp_path / "preds")
    write_evaluation(metrics, per_question, tmp_path / "metrics.json", tmp_path / "eval" / "per_question.jsonl")
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "sft_loss.json").write_text(json.dumps([{"step": s, "loss": 3.0 / s} for s in (1, 2, 3)]))
    rewards = [
        {"step": s, "reward/overall": 0.5 * s, "reward/accuracy": 0.1 * s, "reward/format": 1.0, "actor/loss": 0.1}
        for s in (1, 2, 3)
    ]
    (plots / "rsgrpo.json").write_text(json.dumps(rewards))
    return tmp_path


def inputs_of(root: Path) -> ReportInputs:
    return ReportInputs(
        metrics_file=root / "metrics.json",
        per_question_file=root / "eval" / "per_question.jsonl",
        data_dir=root / "data",
        sft_log=root / "plots" / "sft_loss.json",
        rsgrpo_log=root / "plots" / "rsgrpo.json",
    )


def test_report_shows_metrics_curves_and_examples_with_images(run_dir: Path) -> None:
    out = run_dir / "reports" / "run"
    index = build_report(inputs_of(run_dir), out, examples=2)
    page = index.read_text(encoding="utf-8")
    metrics = json.loads((run_dir / "metrics.json").read_text())

    # the metrics table: one row per benchmark with EM and grounding columns, values as in metrics.json
    for name in ("ColorSquare", "ColorBackground", "overall"):
        assert f"<td>{name}</td>" in page
    for column in ("global_em", "evidence_precision", "evidence_f1", "issuff_refusal_rate", "cnt_evidence"):
        assert f"<th>{column.replace('_', '_<wbr>')}</th>" in page  # may wrap after an underscore
    assert f"<td>{metrics['overall']['global_em']:.4f}</td>" in page

    # curves: real PNGs, referenced from the page
    for name in (SFT_PLOT, RSGRPO_PLOT):
        assert f'src="{name}"' in page
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width >= 400

    # examples: 2 good + 2 bad, each with 3 embedded images, its evidence and answer
    assert page.count('class="example good"') == 2 and page.count('class="example bad"') == 2
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 4 * 3
    assert "holds the answer" in page and "cited" in page
    assert "<b>Answer:</b> grey" in page
    assert "[1]: " in page and "no relevant information" in page


def test_report_says_what_is_missing_instead_of_failing(run_dir: Path) -> None:
    (run_dir / "plots" / "rsgrpo.json").unlink()
    (run_dir / "eval" / "per_question.jsonl").unlink()
    out = run_dir / "reports" / "run"
    (out).mkdir(parents=True)
    (out / RSGRPO_PLOT).write_bytes(b"stale")  # from an earlier run that had RS-GRPO
    page = build_report(inputs_of(run_dir), out).read_text(encoding="utf-8")
    assert "rsgrpo.json not found or empty: the rsgrpo stage did not run" in page
    assert "per_question.jsonl not found: run the evaluate stage" in page
    assert not (out / RSGRPO_PLOT).exists()
    assert (out / SFT_PLOT).is_file()  # what is there is still shown

    empty = run_dir / "nothing"
    page = build_report(inputs_of(empty), empty / "report").read_text(encoding="utf-8")
    assert page.count('class="missing"') == 4


def test_report_command_writes_the_stage_output_and_logs_it_to_mlflow(run_dir: Path) -> None:
    """`evisrag report` as dvc runs it: a Prefect flow run and an MLflow run named `report` with the page."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["tracking"]["mlflow_tracking_uri"] = f"sqlite:///{run_dir / 'mlflow.db'}"
    params["report"]["examples"] = 1
    (run_dir / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "EVISRAG_"))}
    env["PREFECT_HOME"] = str(run_dir / "prefect")
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"  # a loaded 2-core machine starts it slowly
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "report"], cwd=run_dir, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "reports" / "run" / "index.html").is_file()

    mlflow.set_tracking_uri(params["tracking"]["mlflow_tracking_uri"])
    runs = mlflow.search_runs(experiment_names=[params["tracking"]["experiment_name"]], output_format="list")
    assert [r.info.run_name for r in runs] == ["report"]
    assert runs[0].data.params["report.examples"] == "1"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(runs[0].info.run_id, "report")}
    assert {"report/index.html", f"report/{SFT_PLOT}", f"report/{RSGRPO_PLOT}"} <= artifacts

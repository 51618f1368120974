"""`evisrag compare` on a real MLflow sqlite store holding runs logged the way the pipeline and the stages log them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
import yaml
from PIL import Image

from evisrag_core.config import Params, load_params
from flows.cli import main
from flows.compare import CompareError, compare, comparison_figure, filter_string, parse_since, parse_tag
from tasks import tracking

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCHES = ("ColorBackground", "ColorSquare")


def metrics_of(em: float) -> dict[str, dict[str, Any]]:
    """A metrics.json: per benchmark and overall (EM differs per benchmark so the columns can be told apart)."""
    rows = {
        b: {"global_em": em + i / 10, "global_f1": em, "evidence_f1": 0.5, "cnt_global": 8}
        for i, b in enumerate(BENCHES)
    }
    rows["overall"] = {"global_em": em + 0.05, "global_f1": em, "evidence_f1": 0.5, "cnt_global": 16}
    return rows


def log_pipeline_run(params: Params, metrics: dict, monkeypatch: pytest.MonkeyPatch, evaluated: bool = True) -> str:
    """What `evisrag pipeline` records: the parent run (all params, overall metrics from metrics.json) and, when
    DVC ran evaluate, its nested stage run (through the same helper the stage uses) with the metrics per benchmark."""
    tracking.configure(params)
    tags = {**params.tracking.tags, "evisrag.git_commit": "test"}
    with mlflow.start_run(run_name="pipeline", tags=tags) as parent:
        mlflow.log_params(tracking.flatten(params.model_dump(mode="json")))
        mlflow.log_metrics({f"overall.{k}": v for k, v in metrics["overall"].items()})
    if evaluated:
        monkeypatch.setenv(tracking.PARENT_RUN_ENV, parent.info.run_id)
        with tracking.stage_run("evaluate", params, ["evaluate"]):
            mlflow.log_metrics({f"{b}.{k}": v for b, row in metrics.items() for k, v in row.items()})
        monkeypatch.delenv(tracking.PARENT_RUN_ENV)
    return parent.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[str]]]:
    """A params file and five runs, made once (creating an MLflow store is slow): three recent pipeline runs
    differing in params, one pipeline run from 2020 and one top-level evaluate run (a `dvc exp run` outside the
    pipeline, as the ablation script makes). Tests run in its folder, where MLflow keeps the artifacts."""
    tmp_path = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(tmp_path)
        yield _make_store(tmp_path, monkeypatch)


def _make_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["tracking"]["mlflow_tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    base = load_params(params_file)

    def variant(lr: float, temperature: float, study: str) -> Params:
        return base.model_copy(
            update={
                "sft": base.sft.model_copy(update={"learning_rate": lr}),
                "predict": base.predict.model_copy(update={"temperature": temperature}),
                "tracking": base.tracking.model_copy(update={"tags": {"study": study}}),
            }
        )

    ids = [
        log_pipeline_run(variant(1e-3, 0.0, "a"), metrics_of(0.2), monkeypatch),
        log_pipeline_run(variant(5e-4, 0.0, "a"), metrics_of(0.4), monkeypatch),
        # DVC found evaluate up to date: no evaluate child, only the parent's overall metrics
        log_pipeline_run(variant(5e-4, 0.1, "b"), metrics_of(0.6), monkeypatch, evaluated=False),
    ]
    ablation = variant(5e-4, 0.0, "c").model_copy(
        update={"tracking": base.tracking.model_copy(update={"tags": {"study": "c", "ablation": "base"}})}
    )
    with tracking.stage_run("evaluate", ablation, ["evaluate"]):
        mlflow.log_metrics({f"{b}.{k}": v for b, row in metrics_of(0.8).items() for k, v in row.items()})
    standalone = mlflow.last_active_run().info.run_id
    client = mlflow.MlflowClient()
    experiment = mlflow.get_experiment_by_name(base.tracking.experiment_name).experiment_id
    old = client.create_run(
        experiment, start_time=int(datetime(2020, 1, 2, tzinfo=UTC).timestamp() * 1000), run_name="pipeline"
    )
    client.log_param(old.info.run_id, "sft.learning_rate", "0.01")
    client.log_metric(old.info.run_id, "overall.global_em", 0.9)
    client.set_terminated(old.info.run_id)
    return params_file, [old.info.run_id, *ids, standalone]


def test_table_has_differing_params_and_metrics_per_benchmark(store: tuple[Path, list[str]], tmp_path: Path) -> None:
    params_file, ids = store
    params = load_params(params_file)
    table = compare(params.tracking.mlflow_tracking_uri, ["evisrag"], out=tmp_path / "c.png")

    assert [label.split()[-1] for label in table.index] == [i[:8] for i in ids]  # oldest first
    assert table["kind"].tolist() == ["pipeline"] * 4 + ["evaluate"]
    assert {"sft.learning_rate", "predict.temperature", "tracking.tags.study", "study"} <= set(table.columns)
    assert "predict.max_new_tokens" not in table.columns and "seed" not in table.columns  # equal everywhere
    assert "evisrag.git_commit" not in table.columns and "ablation" not in table.columns  # internal / one value
    assert table["sft.learning_rate"].tolist()[:4] == ["0.01", "0.001", "0.0005", "0.0005"]
    assert table["study"].tolist()[1:] == ["a", "a", "b", "c"]
    metric_columns = [c for c in table.columns if c.rsplit(".", 1)[-1] in ("global_em", "global_f1", "evidence_f1")]
    expected = [f"{b}.{k}" for b in (*BENCHES, "overall") for k in ("global_em", "global_f1", "evidence_f1")]
    assert metric_columns == expected
    assert table["ColorSquare.global_em"].tolist()[1:3] == pytest.approx([0.3, 0.5])
    assert table["ColorSquare.global_em"].tolist()[4] == pytest.approx(0.9)  # the evaluate run's own metrics
    assert table["overall.global_em"].tolist() == pytest.approx([0.9, 0.25, 0.45, 0.65, 0.85])
    # the run without an evaluate child and the old run have no per-benchmark values
    assert table["ColorBackground.global_em"].isna().tolist() == [True, False, False, True, False]


def test_command_prints_the_table_and_writes_a_chart(store: tuple[Path, list[str]], tmp_path: Path, capsys) -> None:
    params_file, ids = store
    out = tmp_path / "charts" / "compare.png"
    assert main(["--params", str(params_file), "compare", "--since", "2024-01-01", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert {
        "status",
        "sft.learning_rate",
        "predict.temperature",
        "ColorSquare.global_em",
        "overall.evidence_f1",
    } <= set(header)
    rows = [line for line in lines[1:] if line[:4].isdigit()]  # rows start with the start date
    assert [row.split()[2] for row in rows] == [i[:8] for i in ids[1:]]  # the 2020 run is filtered out
    assert all("FINISHED" in row for row in rows)
    assert "n/a" in rows[2]  # the run whose evaluate stage did not run
    assert lines[-1] == f"4 run(s); chart: {out}"
    with Image.open(out) as image:
        image.verify()
        assert image.format == "PNG" and image.width >= 600 and image.height >= 300
    assert out.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("argv", "expected_runs"),
    [
        (["--tag", "study=a"], 2),
        (["--tag", "study=b"], 1),
        (["--tag", "study=c", "--tag", "ablation=base"], 1),  # the top-level evaluate run alone
        (["--tag", "study=a", "--since", "2030-01-01"], None),
        (["--experiment", "nope"], None),
        (["--tag", "study"], None),
        (["--since", "01/02/2024"], None),
    ],
)
def test_filters(store: tuple[Path, list[str]], tmp_path: Path, capsys, argv: list[str], expected_runs) -> None:
    params_file, _ = store
    code = main(["--params", str(params_file), "compare", *argv, "--out", str(tmp_path / "x.png")])
    captured = capsys.readouterr()
    if expected_runs is None:
        assert code == 2 and captured.err.startswith("error: ")
        assert not (tmp_path / "x.png").exists()
    else:
        assert code == 0 and captured.out.splitlines()[-1].startswith(f"{expected_runs} run(s)")


def test_filter_string_and_argument_parsing() -> None:
    since = parse_since("2024-03-01")
    assert since == datetime(2024, 3, 1, tzinfo=UTC)
    assert filter_string("pipeline", [parse_tag("evisrag.study=x=y")], since) == (
        "attributes.run_name = 'pipeline' AND tags.`evisrag.study` = 'x=y' AND attributes.start_time >= 1709251200000"
    )
    with pytest.raises(CompareError, match="quotes"):
        parse_tag("k=it's")


@pytest.mark.parametrize("runs", [2, 4], ids=["side-by-side-labels", "upright-labels"])
def test_the_chart_writes_each_value_on_its_bar(runs: int) -> None:
    """0.990 and 1.000 look alike as bars; the labels tell them apart (a missing benchmark reads n/a)."""
    values = [0.99, 1.0, 0.5, 0.25][:runs]
    table = pd.DataFrame(
        {"ColorSquare.global_em": values, "overall.global_em": [*values[:-1], float("nan")], "overall.cnt_global": 16}
    )
    figure = comparison_figure(table, ["global_em", "cnt_global"])
    em, counts = ([t.get_text() for t in axes.texts] for axes in figure.axes[:2])
    assert sorted(em) == sorted([f"{v:.3f}" for v in values] + [f"{v:.3f}" for v in values[:-1]] + ["n/a"])
    assert counts == ["16"] * runs

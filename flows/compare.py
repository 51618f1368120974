"""`evisrag compare`: pipeline runs side by side, from the MLflow store, with MLflow's own search API.

What the pipeline logs (tasks/tracking.py, flows/pipeline.py, flows/stages.py) and what is read back here:

- one parent run named `pipeline` per `evisrag pipeline`, with every parameter (`params.<section>.<key>`) and the
  overall metrics (`metrics.overall.<key>`, from metrics.json, even when DVC found evaluate up to date);
- under it, a nested run per stage that ran, tagged `evisrag.stage`; the `evaluate` one holds the metrics per
  benchmark (`metrics.<Benchmark>.<key>`).

Two `mlflow.search_runs` calls (the pipeline runs with the filters, then the evaluate runs of the same
experiments), one pandas join on the parent run id. A pipeline run whose evaluate stage did not run (DVC up to date)
still shows its overall metrics; its per-benchmark columns are empty.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import pandas as pd
from matplotlib.figure import Figure

from evisrag_core.config import load_params
from evisrag_core.io import atomic_path
from tasks.tracking import STAGE_TAG

PIPELINE_RUN_NAME = "pipeline"
PARENT_TAG = "tags.mlflow.parentRunId"
OVERALL = "overall"
DEFAULT_METRICS = ("global_em", "global_f1", "evidence_f1")
DEFAULT_OUT = Path("artifacts/compare.png")
# A metric column of the evaluate run: `metrics.<Benchmark>.<key>` (benchmark names have no dots).
_BENCH_METRIC = re.compile(r"^metrics\.([^.]+)\.(.+)$")


class CompareError(ValueError):
    """The filters are invalid or match no pipeline run; the message says what to change."""


# --- filters --------------------------------------------------------------------------------------------------------


def parse_tag(text: str) -> tuple[str, str]:
    """`KEY=VALUE` → (KEY, VALUE); quotes are refused because they would end the filter string's literal."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise CompareError(f"--tag {text!r}: expected KEY=VALUE, e.g. --tag study=ablations")
    if any(q in key + value for q in "'\"`"):
        raise CompareError(f"--tag {text!r}: quotes are not allowed in tag keys or values")
    return key, value


def parse_since(text: str) -> datetime:
    """`YYYY-MM-DD` → midnight UTC of that day."""
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError as err:
        raise CompareError(f"--since {text!r}: expected a date YYYY-MM-DD") from err


def filter_string(run_name: str | None, tags: Sequence[tuple[str, str]], since: datetime | None) -> str:
    """An MLflow search filter (clauses joined by AND; tag keys in backticks since ours contain dots)."""
    clauses = [f"attributes.run_name = '{run_name}'"] if run_name else []
    clauses += [f"tags.`{key}` = '{value}'" for key, value in tags]
    if since is not None:
        clauses.append(f"attributes.start_time >= {int(since.timestamp() * 1000)}")
    return " AND ".join(clauses)


# --- search ---------------------------------------------------------------------------------------------------------


def _check_experiments(names: Sequence[str]) -> None:
    missing = [n for n in names if mlflow.get_experiment_by_name(n) is None]
    if missing:
        known = sorted(e.name for e in mlflow.search_experiments())
        raise CompareError(f"no MLflow experiment named {missing}; the store has: {known or 'none'}")


def search_pipeline_runs(
    experiments: Sequence[str], tags: Sequence[tuple[str, str]] = (), since: datetime | None = None
) -> pd.DataFrame:
    """The pipeline parent runs matching the filters, oldest first (one row per run, MLflow's column names)."""
    _check_experiments(experiments)
    return mlflow.search_runs(
        experiment_names=list(experiments),
        filter_string=filter_string(PIPELINE_RUN_NAME, tags, since),
        order_by=["attributes.start_time ASC"],
        output_format="pandas",
    )


def search_evaluate_runs(experiments: Sequence[str], since: datetime | None = None) -> pd.DataFrame:
    """Every evaluate stage run of the experiments (the join on the parent id picks those of our pipeline runs)."""
    return mlflow.search_runs(
        experiment_names=list(experiments),
        filter_string=filter_string(None, [(STAGE_TAG, "evaluate")], since),
        order_by=["attributes.start_time ASC"],
        output_format="pandas",
    )


# --- tables (plain pandas) ------------------------------------------------------------------------------------------


def run_labels(runs: pd.DataFrame) -> pd.Series:
    """`<start time UTC> <run id prefix>`: unique, sortable and short enough for a legend."""
    starts = pd.to_datetime(runs["start_time"], utc=True).dt.strftime("%Y-%m-%d %H:%M")
    return starts + " " + runs["run_id"].str[:8]


def differing_params(runs: pd.DataFrame) -> pd.DataFrame:
    """The `params.*` columns (sorted) with more than one value among the runs that logged them.

    A run that did not log a param (e.g. one from before the param existed) does not make it a difference, or every
    new param would show up as one.
    """
    columns = sorted(c for c in runs.columns if c.startswith("params."))
    differing = [c for c in columns if runs[c].nunique(dropna=True) > 1]
    return runs[differing].rename(columns=lambda c: c.removeprefix("params."))


def benchmark_metrics(runs: pd.DataFrame, evaluates: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """`<Benchmark>.<key>` columns per pipeline run: from its last evaluate child, `overall` from the parent itself.

    The parent's overall metrics come from metrics.json after every pipeline run, so they are there even when the
    evaluate stage was up to date and did not run.
    """
    if not evaluates.empty and PARENT_TAG in evaluates.columns:
        last = evaluates.dropna(subset=[PARENT_TAG]).drop_duplicates(PARENT_TAG, keep="last").set_index(PARENT_TAG)
        children = last.reindex(runs["run_id"]).reset_index(drop=True)
    else:
        children = pd.DataFrame(index=range(len(runs)))
    found: dict[tuple[str, str], pd.Series] = {}
    for column in children.columns:
        match = _BENCH_METRIC.match(column)
        if match and match.group(1) != OVERALL and match.group(2) in keys:
            found[(match.group(1), match.group(2))] = children[column]
    for key in keys:
        if f"metrics.{OVERALL}.{key}" in runs.columns:
            found[(OVERALL, key)] = runs[f"metrics.{OVERALL}.{key}"].reset_index(drop=True)
    benches = sorted({bench for bench, _ in found}, key=lambda name: (name == OVERALL, name))
    columns = {f"{b}.{k}": found[(b, k)] for b in benches for k in keys if (b, k) in found}
    return pd.DataFrame(columns, index=range(len(runs)))


def comparison_table(runs: pd.DataFrame, evaluates: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """One row per pipeline run (label as index): status, the params that differ, the metrics per benchmark."""
    runs = runs.reset_index(drop=True)
    parts = [
        runs[["status"]],
        differing_params(runs).reset_index(drop=True),
        benchmark_metrics(runs, evaluates, list(keys)),
    ]
    table = pd.concat(parts, axis=1)
    table.index = run_labels(runs).rename("run")
    return table


# --- chart ----------------------------------------------------------------------------------------------------------


def plot_comparison(table: pd.DataFrame, keys: Sequence[str], out: Path) -> Path:
    """Grouped bars: one panel per metric, benchmarks on the x axis, one bar per run; written atomically."""
    panels = [k for k in keys if any(c.endswith(f".{k}") for c in table.columns)]
    if not panels:
        raise CompareError(f"none of the metrics {list(keys)} was logged by the selected runs")
    n_benches = max(sum(c.endswith(f".{k}") for c in table.columns) for k in panels)
    figure = Figure(figsize=(max(6.0, 3.0 + n_benches * (0.4 + 0.25 * len(table))), 3.2 * len(panels)), dpi=100)
    axes_list = figure.subplots(len(panels), 1, squeeze=False)[:, 0]
    width = 0.8 / len(table)
    for axes, key in zip(axes_list, panels, strict=True):
        columns = [c for c in table.columns if c.endswith(f".{key}")]
        benches = [c.removesuffix(f".{key}") for c in columns]
        for i, (label, row) in enumerate(table[columns].iterrows()):
            positions = [b + (i - (len(table) - 1) / 2) * width for b in range(len(columns))]
            axes.bar(positions, row.astype(float).fillna(0.0).tolist(), width=width, label=label)
        axes.set_xticks(range(len(columns)), benches)
        axes.set(ylabel=key, ylim=(0, 1.05))
        axes.grid(axis="y", alpha=0.3)
    axes_list[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes_list[0].set_title("pipeline runs per benchmark")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png")
    return out


# --- command --------------------------------------------------------------------------------------------------------


def compare(
    tracking_uri: str,
    experiments: Sequence[str],
    tags: Sequence[tuple[str, str]] = (),
    since: datetime | None = None,
    metric_keys: Sequence[str] = DEFAULT_METRICS,
    out: Path = DEFAULT_OUT,
) -> pd.DataFrame:
    """Search, tabulate and chart the matching pipeline runs; returns the table (the chart is at `out`)."""
    mlflow.set_tracking_uri(tracking_uri)
    runs = search_pipeline_runs(experiments, tags, since)
    if runs.empty:
        raise CompareError(
            f"no pipeline runs in experiment(s) {list(experiments)} match "
            f"{filter_string(PIPELINE_RUN_NAME, tags, since)!r}; run `evisrag pipeline` or relax --tag/--since"
        )
    table = comparison_table(runs, search_evaluate_runs(experiments, since), metric_keys)
    plot_comparison(table, metric_keys, out)
    return table


def format_table(table: pd.DataFrame) -> str:
    with pd.option_context("display.float_format", "{:.4f}".format, "display.width", 250, "display.max_columns", None):
        return table.to_string(na_rep="n/a")


def cmd_compare(args: argparse.Namespace) -> int:
    """The `evisrag compare` command (its options are declared in flows/cli.py, which imports this module lazily)."""
    params = load_params(args.params)
    try:
        table = compare(
            params.tracking.mlflow_tracking_uri,
            args.experiment or [params.tracking.experiment_name],
            [parse_tag(t) for t in args.tag],
            parse_since(args.since) if args.since else None,
            args.metric or list(DEFAULT_METRICS),
            Path(args.out),
        )
    except CompareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(table))
    print(f"\n{len(table)} pipeline run(s); chart: {args.out}")
    return 0

"""`evisrag compare`: pipeline runs side by side, from the MLflow store, with MLflow's own search API.

What the pipeline logs (tasks/tracking.py, flows/pipeline.py) and what is read back here:

- one parent run named `pipeline` per `evisrag pipeline`, with every parameter (`params.<section>.<key>`) and the
  overall metrics (`metrics.overall.<key>`, from metrics.json, even when DVC found evaluate up to date);
- under it, a nested run per stage that ran, tagged `evisrag.stage`; the `evaluate` one holds the metrics per
  benchmark (`metrics.<Benchmark>.<key>`).

A top-level evaluate run (a stage run outside `evisrag pipeline`: `dvc repro`, or `dvc exp run` as the ablation
script does) is compared too, with its own metrics; its params are the `evaluate` section only, so what tells such
runs apart is usually their tags (`tracking.tags`: study, ablation), which are shown when they differ.

Two `mlflow.search_runs` calls with the same filters (pipeline runs, evaluate runs), one pandas join on the parent
run id. A pipeline run whose evaluate stage did not run (DVC up to date) still shows its overall metrics; its
per-benchmark columns are empty.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import pandas as pd
from matplotlib.figure import Figure

from evisrag_core.config import load_params
from evisrag_core.errors import UserError
from evisrag_core.io import atomic_path
from tasks.tracking import STAGE_TAG

PIPELINE_RUN_NAME = "pipeline"
PARENT_TAG = "tags.mlflow.parentRunId"
# Tags every run has or MLflow/our bookkeeping sets; only the others (tracking.tags: study, ablation…) are compared.
INTERNAL_TAGS = ("mlflow.", "dvc.outs.", STAGE_TAG, "evisrag.git_commit", "evisrag.model_dir")
OVERALL = "overall"
DEFAULT_METRICS = ("global_em", "global_f1", "evidence_f1")
DEFAULT_OUT = Path("artifacts/compare.png")
# A metric column of the evaluate run: `metrics.<Benchmark>.<key>` (benchmark names have no dots).
_BENCH_METRIC = re.compile(r"^metrics\.([^.]+)\.(.+)$")


class CompareError(UserError, ValueError):
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


def _search(experiments: Sequence[str], filters: str) -> pd.DataFrame:
    return mlflow.search_runs(
        experiment_names=list(experiments),
        filter_string=filters,
        order_by=["attributes.start_time ASC"],
        output_format="pandas",
    )


def search_pipeline_runs(
    experiments: Sequence[str], tags: Sequence[tuple[str, str]] = (), since: datetime | None = None
) -> pd.DataFrame:
    """The pipeline parent runs matching the filters, oldest first (one row per run, MLflow's column names)."""
    _check_experiments(experiments)
    return _search(experiments, filter_string(PIPELINE_RUN_NAME, tags, since))


def search_evaluate_runs(
    experiments: Sequence[str], tags: Sequence[tuple[str, str]] = (), since: datetime | None = None
) -> pd.DataFrame:
    """The evaluate stage runs matching the filters: nested ones (of pipeline runs) and top-level ones."""
    _check_experiments(experiments)
    return _search(experiments, filter_string(None, [(STAGE_TAG, "evaluate"), *tags], since))


# --- tables (plain pandas) ------------------------------------------------------------------------------------------


def runs_to_compare(parents: pd.DataFrame, evaluates: pd.DataFrame) -> pd.DataFrame:
    """One row per compared run, oldest first, in MLflow's column layout, with a `kind` column.

    - `pipeline`: a pipeline parent run; the metrics of its (last) evaluate child are merged in, and its own
      `overall.*` metrics fill what the child lacks (they come from metrics.json after every pipeline run, so they
      are there even when DVC found evaluate up to date and no child exists);
    - `evaluate`: a top-level evaluate run (`dvc repro` or `dvc exp run` outside `evisrag pipeline`, as the ablation
      script runs them), with its own metrics.
    """
    if PARENT_TAG in evaluates.columns:  # MLflow leaves the column out when no matching run has the tag
        is_nested = evaluates[PARENT_TAG].notna()
        nested = evaluates[is_nested].drop_duplicates(PARENT_TAG, keep="last").set_index(PARENT_TAG)
        standalone = evaluates[~is_nested].assign(kind="evaluate")
    else:
        nested, standalone = pd.DataFrame(), evaluates.assign(kind="evaluate")
    frames = [standalone]
    if not parents.empty:
        parents = parents.assign(kind="pipeline").set_index("run_id", drop=False)
        own = [c for c in parents.columns if c.startswith("metrics.")]
        child_metrics = nested[[c for c in nested.columns if c.startswith("metrics.")]]
        merged = child_metrics.reindex(parents.index).combine_first(parents[own])
        frames.insert(0, parents.drop(columns=own).join(merged).reset_index(drop=True))
    rows = pd.concat([f for f in frames if not f.empty], ignore_index=True)
    return rows.sort_values("start_time", kind="stable").reset_index(drop=True)


def run_labels(runs: pd.DataFrame) -> pd.Series:
    """`<start time UTC> <run id prefix>`: unique, sortable and short enough for a legend."""
    starts = pd.to_datetime(runs["start_time"], utc=True).dt.strftime("%Y-%m-%d %H:%M")
    return starts + " " + runs["run_id"].str[:8]


def differing(runs: pd.DataFrame, prefix: str, skip: Sequence[str] = ()) -> pd.DataFrame:
    """The `<prefix>*` columns (sorted, prefix dropped) with more than one value among the runs that have them.

    A run without the column (one from before a param existed, or a stage run that logs only its own section) does
    not make it a difference, or every param it lacks would show up as one.
    """
    columns = sorted(
        c for c in runs.columns if c.startswith(prefix) and not c.removeprefix(prefix).startswith(tuple(skip))
    )
    chosen = [c for c in columns if runs[c].nunique(dropna=True) > 1]
    return runs[chosen].rename(columns=lambda c: c.removeprefix(prefix))


def benchmark_metrics(runs: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """`<Benchmark>.<key>` columns for the chosen keys, benchmarks sorted and `overall` last."""
    found: dict[tuple[str, str], str] = {}
    for column in runs.columns:
        match = _BENCH_METRIC.match(column)
        if match and match.group(2) in keys:
            found[(match.group(1), match.group(2))] = column
    benches = sorted({bench for bench, _ in found}, key=lambda name: (name == OVERALL, name))
    return pd.DataFrame({f"{b}.{k}": runs[found[(b, k)]] for b in benches for k in keys if (b, k) in found})


def comparison_table(parents: pd.DataFrame, evaluates: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """One row per run (label as index): kind, status, the params and tags that differ, the metrics per benchmark."""
    runs = runs_to_compare(parents, evaluates)
    parts = [
        runs[["kind", "status"]],
        differing(runs, "params."),
        differing(runs, "tags.", skip=INTERNAL_TAGS),
        benchmark_metrics(runs, list(keys)),
    ]
    table = pd.concat(parts, axis=1)
    table.index = run_labels(runs).rename("run")
    return table


# --- chart ----------------------------------------------------------------------------------------------------------


def value_label(value: float) -> str:
    """What a bar says: a rate with three decimals (0.995 and 1.000 must look different), a count as an integer, a
    missing value (a run without that benchmark) as n/a."""
    if pd.isna(value):
        return "n/a"
    return f"{value:.0f}" if float(value).is_integer() and abs(value) > 1 else f"{value:.3f}"


def comparison_figure(table: pd.DataFrame, keys: Sequence[str]) -> Figure:
    """Grouped bars: one panel per metric, benchmarks on the x axis, one bar per run, its value written on it."""
    panels = [k for k in keys if any(c.endswith(f".{k}") for c in table.columns)]
    if not panels:
        raise CompareError(f"none of the metrics {list(keys)} was logged by the selected runs")
    n_benches = max(sum(c.endswith(f".{k}") for c in table.columns) for k in panels)
    figure = Figure(figsize=(max(6.0, 3.0 + n_benches * (0.4 + 0.25 * len(table))), 3.2 * len(panels)), dpi=100)
    axes_list = figure.subplots(len(panels), 1, squeeze=False)[:, 0]
    width = 0.8 / len(table)
    vertical = len(table) > 2  # narrow bars: labels turned upright so they do not overlap
    for axes, key in zip(axes_list, panels, strict=True):
        columns = [c for c in table.columns if c.endswith(f".{key}")]
        benches = [c.removesuffix(f".{key}") for c in columns]
        for i, (label, row) in enumerate(table[columns].iterrows()):
            positions = [b + (i - (len(table) - 1) / 2) * width for b in range(len(columns))]
            values = row.astype(float)
            bars = axes.bar(positions, values.fillna(0.0).tolist(), width=width, label=label)
            labels = [value_label(v) for v in values]
            axes.bar_label(bars, labels=labels, fontsize=7, padding=2, rotation=90 if vertical else 0)
        axes.set_xticks(range(len(columns)), benches)
        top = float(table[columns].max().max())
        headroom = 1.3 if vertical else 1.15  # room for the labels above the highest bar
        axes.set(ylabel=key, ylim=(0, headroom * max(1.0, top)))  # rates in [0, 1]; counts (cnt_*) go higher
        axes.grid(axis="y", alpha=0.3)
    axes_list[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes_list[0].set_title("runs per benchmark")
    figure.tight_layout()
    return figure


def plot_comparison(table: pd.DataFrame, keys: Sequence[str], out: Path) -> Path:
    """The comparison chart (comparison_figure) as a PNG, written atomically."""
    figure = comparison_figure(table, keys)
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
    parents = search_pipeline_runs(experiments, tags, since)
    evaluates = search_evaluate_runs(experiments, tags, since)
    if parents.empty and evaluates.empty:
        raise CompareError(
            f"no pipeline or evaluate runs in experiment(s) {list(experiments)} match "
            f"{filter_string(None, tags, since)!r}; run `evisrag pipeline` or relax --tag/--since"
        )
    table = comparison_table(parents, evaluates, metric_keys)
    plot_comparison(table, metric_keys, out)
    return table


def format_table(table: pd.DataFrame) -> str:
    with pd.option_context("display.float_format", "{:.4f}".format, "display.width", 250, "display.max_columns", None):
        return table.to_string(na_rep="n/a")


def cmd_compare(args: argparse.Namespace) -> int:
    """The `evisrag compare` command (its options are declared in flows/cli.py, which imports this module lazily)."""
    params = load_params(args.params)
    table = compare(  # CompareError: flows/cli.py prints it and exits 2
        params.tracking.mlflow_tracking_uri,
        args.experiment or [params.tracking.experiment_name],
        [parse_tag(t) for t in args.tag],
        parse_since(args.since) if args.since else None,
        args.metric or list(DEFAULT_METRICS),
        Path(args.out),
    )
    print(format_table(table))
    print(f"\n{len(table)} run(s); chart: {args.out}")
    return 0

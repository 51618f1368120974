"""`evisrag metrics` and the tables other commands print: a metrics file as `evisrag evaluate` writes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evisrag_core.errors import InputNotFoundError, UserError


def read_metrics_file(path: Path) -> dict[str, dict[str, Any]]:
    """A metrics file as `evisrag evaluate` writes it: {benchmark: {metric: number}}; UserError for anything else."""
    if not path.is_file():
        raise InputNotFoundError(f"{path} not found; run `evisrag pipeline` (or `dvc repro`) first")
    expected = "a JSON object {benchmark: {metric: value}}, as `evisrag evaluate` writes (metrics.json)"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is not JSON ({err}); expected {expected}") from None
    if not isinstance(metrics, dict) or not metrics:
        raise UserError(f"{path} holds a {type(metrics).__name__}, not a metrics table; expected {expected}")
    bad = [name for name, row in metrics.items() if not isinstance(row, dict)]
    if bad:
        raise UserError(f"{path}: {', '.join(map(repr, bad[:3]))} is not an object of metrics; expected {expected}")
    return metrics


def format_metrics(metrics: dict[str, Any]) -> str:
    """One row per benchmark (overall last), the metric keys as columns."""
    import pandas as pd

    from evisrag_core.grounding import GROUNDING_KEYS
    from evisrag_core.metrics import METRIC_KEYS

    table = pd.DataFrame.from_dict(metrics, orient="index")
    order = [c for c in (*METRIC_KEYS, *GROUNDING_KEYS) if c in table.columns]
    table = table[order + [c for c in table.columns if c not in order]]
    rows = sorted(table.index, key=lambda name: (name == "overall", name))
    table = table.loc[rows]
    counts = [c for c in table.columns if c.startswith("cnt_")]
    table[counts] = table[counts].fillna(0).astype(int)
    # Grounding means a benchmark cannot have (no marked positive images) are absent: shown as n/a, not 0.
    with pd.option_context("display.float_format", "{:.4f}".format, "display.width", 250):
        return table.to_string(na_rep="n/a")

"""The estimator study's tables in Markdown, from the estimators.json that scripts/study_estimators.py writes, so that
docs/results.md quotes the numbers as measured instead of copied by hand.

    python scripts/study_report.py [bench/results/estimators.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results" / "estimators.json"
METRICS = {"em": "EM", "accuracy": "accuracy", "evidence_f1": "evidence F1", "format": "format"}


def _mean_sd(values: Sequence[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {spread:.3f}"


def arms_table(result: dict[str, Any]) -> str:
    """One row per arm: each metric's mean ± sample standard deviation over the seeds; the SFT start first."""
    header = "| model | " + " | ".join(METRICS.values()) + " |"
    rows = [header, "|---|" + "---:|" * len(METRICS)]
    rows.append("| SFT start | " + " | ".join(f"{result['sft'][k]:.3f}" for k in METRICS) + " |")
    for arm, data in result["estimators"].items():
        cells = [_mean_sd([row[k] for row in data["per_seed"]]) for k in METRICS]
        rows.append(f"| {arm} ({len(data['per_seed'])} seeds) | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def seeds_table(result: dict[str, Any], metric: str = "em") -> str:
    """One row per arm, one column per seed: the metric of each run."""
    seeds = result["seeds"]
    rows = ["| arm | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---:|" * len(seeds)]
    for arm, data in result["estimators"].items():
        by_seed = {row["seed"]: row[metric] for row in data["per_seed"]}
        rows.append(f"| {arm} | " + " | ".join(f"{by_seed[s]:.3f}" for s in seeds) + " |")
    return "\n".join(rows)


def paired_table(result: dict[str, Any]) -> str:
    """One row per contrast: each metric's mean paired difference with its 95 % interval, and whether the interval
    excludes 0 (the pre-registered reading)."""
    rows = ["| contrast | " + " | ".join(METRICS.values()) + " |", "|---|" + "---|" * len(METRICS)]
    for contrast, values in result["paired"].items():
        cells = []
        for key in METRICS:
            low, high = values[key]["ci95"]
            beyond = " *" if low > 0 or high < 0 else ""
            cells.append(f"{values[key]['mean']:+.4f} [{low:+.4f}, {high:+.4f}]{beyond}")
        rows.append(f"| {contrast.replace('-', ' − ')} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def report(result: dict[str, Any]) -> str:
    return "\n\n".join(
        [
            f"{result['n_test_questions']} test questions, seeds {result['seeds']}, world `{result['world']}`.",
            arms_table(result),
            "Test EM per run:\n\n" + seeds_table(result),
            "Paired differences, mean [95 % interval]; * where the interval excludes 0:\n\n" + paired_table(result),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", type=Path, default=DEFAULT_RESULTS, help="estimators.json")
    args = parser.parse_args(argv)
    if not args.results.is_file():
        print(f"error: {args.results} not found; run scripts/study_estimators.py first", file=sys.stderr)
        return 2
    print(report(json.loads(args.results.read_text(encoding="utf-8"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""scripts/study_report.py: the study's Markdown tables from a hand-made estimators.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import study_report

ROW = {"accuracy": 0.5, "evidence_f1": 1.0, "format": 1.0}
RESULT = {
    "world": "hard",
    "seeds": [0, 1],
    "n_test_questions": 4,
    "sft": {"em": 0.5, **ROW},
    "estimators": {
        "rsgrpo": {"per_seed": [{"seed": 0, "em": 0.75, **ROW}, {"seed": 1, "em": 0.25, **ROW}]},
        "grpo": {"per_seed": [{"seed": 1, "em": 0.5, **ROW}, {"seed": 0, "em": 0.5, **ROW}]},
    },
    "paired": {
        "rsgrpo-grpo": {
            "em": {"mean": 0.0, "ci95": [-0.25, 0.25]},
            "accuracy": {"mean": 0.1, "ci95": [0.05, 0.15]},
            "evidence_f1": {"mean": -0.1, "ci95": [-0.2, -0.01]},
            "format": {"mean": 0.0, "ci95": [0.0, 0.0]},
        }
    },
}


def test_arms_table_gives_mean_and_sample_sd_over_seeds() -> None:
    lines = study_report.arms_table(RESULT).splitlines()
    assert lines[2] == "| SFT start | 0.500 | 0.500 | 1.000 | 1.000 |"
    assert lines[3].startswith("| rsgrpo (2 seeds) | 0.500 ± 0.354 | 0.500 ± 0.000 |")


def test_seeds_table_orders_runs_by_seed() -> None:
    assert study_report.seeds_table(RESULT).splitlines()[2:] == [
        "| rsgrpo | 0.750 | 0.250 |",
        "| grpo | 0.500 | 0.500 |",
    ]


@pytest.mark.parametrize(
    ("column", "cell"),
    [
        (1, "+0.0000 [-0.2500, +0.2500]"),  # includes 0: level
        (2, "+0.1000 [+0.0500, +0.1500] *"),  # above 0
        (3, "-0.1000 [-0.2000, -0.0100] *"),  # below 0
        (4, "+0.0000 [+0.0000, +0.0000]"),  # a zero-width interval at 0 does not exclude 0
    ],
)
def test_paired_table_marks_intervals_that_exclude_zero(column: int, cell: str) -> None:
    row = study_report.paired_table(RESULT).splitlines()[2]
    assert row.split(" | ")[0] == "| rsgrpo − grpo"
    assert row.strip("| ").split(" | ")[column] == cell


def test_main_prints_the_report_and_refuses_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results = tmp_path / "estimators.json"
    results.write_text(json.dumps(RESULT), encoding="utf-8")
    assert study_report.main([str(results)]) == 0
    assert "4 test questions, seeds [0, 1], world `hard`." in capsys.readouterr().out
    assert study_report.main([str(tmp_path / "none.json")]) == 2
    assert "none.json not found" in capsys.readouterr().err

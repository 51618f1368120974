"""Shared test fixtures: small on-disk datasets in the reference format, written into pytest's tmp_path.

The project is not installed into the venv, and pytest puts only `tests/` on sys.path, so the repository root is
added here to make `evisrag_core` importable when running `.venv/bin/pytest` from a checkout.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from evisrag_core.data.schema import TEST_FILE  # noqa: E402  (needs REPO_ROOT on sys.path)

MakeTestSplit = Callable[[str, list[dict[str, Any]]], Path]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """An empty `<data_dir>` (tests add splits with `make_test_split`)."""
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def make_test_split(data_dir: Path) -> MakeTestSplit:
    """Write `<data_dir>/test/<benchmark>/top3_test.jsonl` from rows; returns the split folder.

    Image paths are only named, not created: loading a split does not open images.
    """

    def make(benchmark: str, rows: list[dict[str, Any]]) -> Path:
        split = data_dir / "test" / benchmark
        split.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(row) + "\n" for row in rows]
        (split / TEST_FILE).write_text("".join(lines), encoding="utf-8")
        return split

    return make

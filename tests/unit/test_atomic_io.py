"""The write primitives every stage uses (evisrag_core/io.py) under a kill: atomic files and folders, step logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from evisrag_core.io import BadRecordError, StepLog, appended_rows, atomic_dir, write_text_atomic

REPO_ROOT = Path(__file__).resolve().parents[2]

# Writes the new content through atomic_path in two halves and waits between them until it is killed.
_HALF_WRITER = """
import sys, time
from evisrag_core.io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    with tmp.open("w") as handle:
        handle.write("new " * 1000)
        handle.flush()
        print("half", flush=True)
        time.sleep(60)
        handle.write("end")
"""


def test_a_file_killed_mid_write_keeps_its_old_content_and_the_rerun_cleans_up(tmp_path: Path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    writer = subprocess.Popen([sys.executable, "-c", _HALF_WRITER, str(target)], stdout=subprocess.PIPE, env=env)
    assert writer.stdout is not None and writer.stdout.readline() == b"half\n"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert target.read_text() == "old"
    [leftover] = [p for p in tmp_path.iterdir() if p != target]  # a kill skips the cleanup: one temporary remains
    assert leftover.name.startswith(".metrics.json.") and leftover.stat().st_size == 4000

    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_folder_rewrite_removes_what_a_killed_one_left_and_nothing_else(tmp_path: Path):
    (tmp_path / ".data.k1ll3d00.tmp" / "test").mkdir(parents=True)  # a killed atomic_dir("data")
    (tmp_path / ".data.json.k1ll3d00.tmp").write_text("{")  # another target's temporary: not ours to delete
    with atomic_dir(tmp_path / "data") as staging:
        (staging / "manifest.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".data.json.k1ll3d00.tmp", "data"]
    assert (tmp_path / "data" / "manifest.json").read_text() == "{}"


def write_log(path: Path, rows: list[dict], tail: bytes = b"") -> None:
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + tail)


ROWS = [{"step": s, "loss": 1.0 / s} for s in range(1, 6)]


def test_a_torn_last_log_line_is_dropped_and_the_rest_kept_on_resume(tmp_path: Path):
    path = tmp_path / "loss_history.jsonl"
    torn = json.dumps({"step": 6, "loss": 0.1}).encode()[:9]  # a kill in the middle of appending step 6
    write_log(path, ROWS, torn)
    log = StepLog(path, resume_step=4)  # the last checkpoint is step 4: steps 5 and 6 run again
    assert [json.loads(line) for line in path.read_text().splitlines()] == ROWS[:4]
    log.append({"step": 5, "loss": 0.2, "grad_norm": 1.0})  # a field the other rows lack
    log.append({"step": 5, "learning_rate": 0.1})  # a row without the plotted key
    log.publish(tmp_path / "plots" / "loss.json", required=("loss",))
    published = json.loads((tmp_path / "plots" / "loss.json").read_text())  # a JSON array: what DVC plots read
    assert [row["step"] for row in published] == [1, 2, 3, 4, 5]
    assert all(set(row) == {"step", "loss"} for row in published)  # DVC wants the same fields in every row


def test_damage_before_the_last_log_line_is_an_error_naming_the_line(tmp_path: Path):
    path = tmp_path / "loss_history.jsonl"
    write_log(path, ROWS)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([*lines[:2], b"garbage\n", *lines[2:]]))
    with pytest.raises(BadRecordError, match=r"loss_history\.jsonl:3: unreadable log row"):
        StepLog(path, resume_step=4)


def test_a_fresh_run_starts_an_empty_log(tmp_path: Path):
    path = tmp_path / "loss_history.jsonl"
    write_log(path, ROWS, b'{"st')
    StepLog(path, resume_step=0)
    assert path.read_text() == ""


@pytest.mark.parametrize(
    ("content", "rows", "intact"),
    [
        (b'{"a": 1}\n{"a": 2}\n', [1, 2], 18),
        (b'{"a": 1}\n{"a": 2}\n{"a"', [1, 2], 18),  # a torn last line: dropped, not counted as intact
        (b'{"a": 1}\n\n{"a": 2}', [1, 2], 18),  # a whole last row without its newline is intact
        (b"", [], 0),
    ],
)
def test_appended_rows_keep_the_intact_rows_and_say_where_they_end(
    tmp_path: Path, content: bytes, rows: list[int], intact: int
) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(content)
    found, intact_bytes = appended_rows(path, dict, lambda n, err: f"line {n}")
    assert [row["a"] for _, row in found] == rows and intact_bytes == intact


def test_appended_rows_refuse_a_complete_damaged_line_even_when_it_is_the_last(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\ngarbage\n')  # newline-terminated: not a torn append but damage
    with pytest.raises(BadRecordError, match="line 2"):
        appended_rows(path, dict, lambda n, err: f"line {n}")

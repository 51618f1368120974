"""What a stage does with a bad input record: the `on_bad_record` setting (`error` by default, or `skip`).

`error` raises the record's BadRecordError, whose message names the file, the line or record, and what to do.
`skip` logs that message as a warning, leaves the record out and counts it; the stage reports the count in its
metrics (`skipped_records`), so a skip is never silent. Records are judged one by one, so a bad line costs only
itself: the rows before and after it, and everything a resumable stage already wrote, are kept.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from evisrag_core.config import OnBadRecord
from evisrag_core.io import BadRecordError

log = logging.getLogger(__name__)


class BadRecords:
    """Applies one `on_bad_record` policy and keeps the messages of the records it skipped."""

    def __init__(self, policy: OnBadRecord = "error"):
        if policy not in ("error", "skip"):
            raise ValueError(f"on_bad_record must be 'error' or 'skip', got {policy!r}")
        self.policy = policy
        self.skipped: list[str] = []

    @property
    def count(self) -> int:
        return len(self.skipped)

    def reject(self, err: BadRecordError) -> None:
        """Raise `err` under `error`; under `skip` count it and log why the record was left out."""
        if self.policy == "error":
            raise err
        self.skipped.append(str(err))
        log.warning("skipped a bad record (on_bad_record: skip): %s", err)


def _row(line: bytes, where: str) -> dict[str, Any]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRecordError(f"{where}: not valid UTF-8 ({err}); re-export the file as UTF-8") from err
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadRecordError(f"{where}: invalid JSON ({err.msg}); fix or remove the line") from err
    if not isinstance(row, dict):
        raise BadRecordError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row


def jsonl_rows(path: str | os.PathLike[str], bad: BadRecords) -> Iterator[tuple[str, dict[str, Any]]]:
    """(`file:line`, row) for every readable JSON object of a JSON-lines file; blank lines are ignored.

    Each line is decoded on its own, so a line with non-UTF-8 bytes or broken JSON is one bad record (named by its
    line number), not a failure of the whole file.
    """
    source = Path(path)
    for line_no, line in enumerate(source.read_bytes().split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"{source}:{line_no}"
        try:
            row = _row(line, where)
        except BadRecordError as err:
            bad.reject(err)
            continue
        yield where, row

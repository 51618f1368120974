"""What a stage does with a bad input record: the `on_bad_record` setting (`error` by default, or `skip`).

`error` raises the record's BadRecordError, whose message names the file, the line or record, and what to do.
`skip` logs that message as a warning, leaves the record out and counts it; the stage reports the count in its
metrics (`skipped_records`), so a skip is never silent. Records are judged one by one, so a bad line costs only
itself: the rows before and after it, and everything a resumable stage already wrote, are kept.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

from evisrag_core.config import OnBadRecord
from evisrag_core.io import BadRecordError, jsonl_rows

log = logging.getLogger(__name__)
T = TypeVar("T")


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


def read_records(
    path: str | os.PathLike[str], parse: Callable[[dict[str, Any], str], T], bad: BadRecords | None = None
) -> list[T]:
    """`parse(row, where)` of every row of a JSON-lines file, in file order.

    A line that is not a JSON object, or a row `parse` refuses with BadRecordError, raises under the `error` policy
    or is left out and counted in `bad` under `skip`; rows before and after it are kept. `where` is `file:line`.
    """
    bad = bad or BadRecords()
    records = []
    for where, row in jsonl_rows(path, bad):
        try:
            records.append(parse(row, where))
        except BadRecordError as err:
            bad.reject(err)
    return records

"""Small file helpers shared by every stage: atomic writes and JSON-lines reading/appending."""

from __future__ import annotations

import errno
import glob
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from evisrag_core.errors import UserError


class BadRecordError(UserError, ValueError):
    """A record in an input file is malformed; the message names the file, the line and what to do."""


class DiskFullError(UserError, OSError):
    """A write failed for lack of space (or a file-size limit); the previous version of the output is intact."""


_NO_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
log = logging.getLogger(__name__)


def remove_stale_temporaries(target: Path) -> None:
    """Delete the `.<name>.*.tmp` siblings a killed writer of `target` left behind.

    SIGKILL skips the cleanup below, and a dataset-sized leftover would otherwise stay beside the output for good.
    One writer per target is assumed (DVC runs one stage at a time), so these cannot belong to a live writer.
    """
    # tempfile's random part is 8 characters: `.data.*.tmp` would also match a live `.data.json.<8>.tmp`.
    for stale in target.parent.glob(f".{glob.escape(target.name)}.{'?' * 8}.tmp"):
        log.warning("removing %s, left by an interrupted write of %s", stale, target)
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    A crash or an exception leaves the old `path` untouched and removes the temporary file, so a reader never sees
    a half-written output.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as err:
        if err.errno not in _NO_SPACE:
            raise
        raise DiskFullError(
            err.errno,
            f"{target}: disk full while writing ({err.strerror}); the previous {target.name} is unchanged. "
            "Free space (or raise the file-size limit) and rerun.",
        ) from err
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n")


def write_jsonl_atomic(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> None:
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]
    write_text_atomic(path, "".join(lines))


def _parse_line(line: bytes, where: str) -> dict[str, Any]:
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


class Rejecter(Protocol):
    """What judges a bad record: `evisrag_core.bad_records.BadRecords` (raise, or count and skip)."""

    def reject(self, err: BadRecordError) -> None: ...


def jsonl_rows(path: str | os.PathLike[str], bad: Rejecter | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(`file:line`, row) for every readable JSON object of a JSON-lines file; blank lines are ignored.

    Each line is decoded on its own, so a line with non-UTF-8 bytes or broken JSON is one bad record (named by its
    line number), not a failure of the whole file. A bad line is raised, or handed to `bad` (a stage's
    `BadRecords`, which applies its `on_bad_record` policy). Lines end at a newline byte only: a record's text
    may hold U+2028 or a lone carriage return, which `str.splitlines` would wrongly cut at.
    """
    source = Path(path)
    for line_no, line in enumerate(source.read_bytes().split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"{source}:{line_no}"
        try:
            row = _parse_line(line, where)
        except BadRecordError as err:
            if bad is None:
                raise
            bad.reject(err)
            continue
        yield where, row


def appended_rows(
    path: Path, check: Callable[[Any], dict[str, Any]], damaged: Callable[[int, Exception], str]
) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """(line number, row) of every intact row of an append-only JSON-lines file, and the byte length of the intact
    part. `check` turns a decoded line into a row or raises (ValueError, KeyError, TypeError). A kill in the middle
    of an append leaves a torn last line, with no newline after it: it is dropped with a warning. Damage anywhere
    else raises BadRecordError with the message `damaged(line number, error)`."""
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    rows: list[tuple[int, dict[str, Any]]] = []
    intact_bytes = 0
    for index, line in enumerate(lines):
        if line.strip():
            try:
                rows.append((index + 1, check(json.loads(line))))
            except (ValueError, KeyError, TypeError) as err:  # JSON and UTF-8 decoding errors are ValueErrors
                if index == len(lines) - 1:
                    log.warning("%s: dropping a torn last line left by an interrupted run", path)
                    break
                raise BadRecordError(damaged(index + 1, err)) from err
        intact_bytes += len(line) + 1
    return rows, min(intact_bytes, len(raw))


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every row of a JSON-lines file; a bad line raises BadRecordError naming the file and line number."""
    return [row for _, row in jsonl_rows(path)]


def append_jsonl(handle: Any, row: dict[str, Any]) -> None:
    """Append one record and flush it to disk, so a crash loses at most the record being written.

    The bytes go straight to the file descriptor, not through `handle`'s buffer: after a failed write nothing is
    left buffered for `close` to retry (and fail on again, hiding the error below)."""
    data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    try:
        handle.flush()  # whatever a caller wrote through `handle` goes first
        written = 0
        while written < len(data):
            written += os.write(handle.fileno(), data[written:])
        os.fsync(handle.fileno())
    except OSError as err:
        if err.errno not in _NO_SPACE:
            raise
        raise DiskFullError(
            err.errno,
            f"{handle.name}: disk full while appending ({err.strerror}); the records before this one are kept. "
            "Free space (or raise the file-size limit) and rerun: the run continues after the last whole record.",
        ) from err


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `path`; on success it takes the place of `path`.

    The old folder (if any) is kept until the new one is complete, so a crash never leaves a half-written output
    where the next stage (or DVC) would accept it.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        old = target.with_name(f".{target.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            os.replace(target, old)
        try:
            os.replace(tmp, target)
        except OSError:
            if old.exists() and not target.exists():
                os.replace(old, target)  # a failed swap puts the previous output back
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


class StepLog:
    """A per-step metrics log that survives a kill: rows are appended and flushed as training goes; a resumed run
    first drops the rows past the step it resumes from (they will be logged again), so the published log reads as
    one uninterrupted run."""

    def __init__(self, path: str | os.PathLike[str], resume_step: int):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [row for row in self._rows() if row.get("step", 0) <= resume_step] if resume_step > 0 else []
        write_jsonl_atomic(self.path, kept)

    def _rows(self) -> list[dict[str, Any]]:
        """The logged rows. A torn last line (a kill in the middle of an append) is dropped: its step comes after
        the last checkpoint, so the resumed run logs it again. Damage anywhere else is an error."""
        if not self.path.exists():
            return []
        rows, _ = appended_rows(self.path, _log_row, self._damaged)
        return [row for _, row in rows]

    def _damaged(self, number: int, err: Exception) -> str:
        return f"{self.path}:{number}: unreadable log row ({err}); delete the file to start the log over"

    def append(self, row: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            append_jsonl(handle, row)

    def publish(self, dest: str | os.PathLike[str], required: Sequence[str] = ()) -> None:
        """Write the rows that hold every `required` key to `dest` as one JSON array, in one rename: a DVC plots
        file. Each row keeps the keys all chosen rows share: DVC reads JSON arrays (not JSON lines) and refuses a
        file whose rows do not all have the same fields."""
        rows = [row for row in self._rows() if all(key in row for key in required)]
        shared = set.intersection(*(set(row) for row in rows)) if rows else set()
        write_json_atomic(dest, [{key: value for key, value in row.items() if key in shared} for row in rows])


def count_rows(path: Path) -> int | None:
    """Non-blank lines of a JSONL file; None when the file is not there yet (a dry-run then skips its checks)."""
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


def _log_row(row: Any) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    return row

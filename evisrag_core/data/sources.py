"""Reading a snapshot's files: which files there are, and the records of a jsonl, json or parquet file.

A record is told from an image-table row by its fields: a test record has `query`, an SFT record
`messages`/`conversations`/`instruction`, an RL record `prompt` and `answer`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from evisrag_core.io import BadRecordError, jsonl_rows

logger = logging.getLogger(__name__)

RECORD_SUFFIXES = {".jsonl", ".json", ".parquet"}
TEST_KEYS = {"query"}
SFT_KEYS = {"messages", "conversations", "instruction"}
RL_KEYS = {"prompt", "answer"}


def snapshot_files(root: Path, suffixes: set[str]) -> list[Path]:
    """Files under `root` with one of `suffixes`, sorted, skipping hidden folders (hub `.cache`, `.git`)."""
    found = []
    for path in root.rglob("*"):
        hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
        if not hidden and path.suffix.lower() in suffixes and path.is_file():
            found.append(path)
    return sorted(found)


def parquet_columns(path: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    return {name: schema.field(name).type for name in schema.names}


def source_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) for every record of a jsonl, json (a list) or parquet file; `where` names file and line/row."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from jsonl_rows(path)
    elif suffix == ".json":
        yield from _json_rows(path)
    else:
        import pyarrow.parquet as pq

        start = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=64):
            for offset, row in enumerate(batch.to_pylist()):
                yield f"{path}: row {start + offset + 1}", row
            start += batch.num_rows


def _json_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadRecordError(f"{path}: not a valid UTF-8 JSON file ({err})") from err
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise BadRecordError(f"{path}: expected a JSON list of objects")
    for index, row in enumerate(data, start=1):
        yield f"{path}: record {index}", row


def record_columns(path: Path) -> set[str]:
    """The field names of a record file (its first row; the schema for parquet); empty for non-record files."""
    if path.suffix.lower() == ".parquet":
        return set(parquet_columns(path))
    try:
        first = next(source_rows(path), None)
    except BadRecordError as err:
        logger.info("%s: not a record file (%s); ignored", path, err)
        return set()
    return set(first[1]) if first else set()


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def extra_fields(row: dict[str, Any], known: set[str]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in known and _jsonable(v)}


def base_folder(path: Path, root: Path) -> PurePosixPath:
    return PurePosixPath(path.parent.relative_to(root).as_posix())


def require_unique(keys: list[str], wheres: list[str], field_name: str) -> None:
    seen: set[str] = set()
    for key, where in zip(keys, wheres, strict=True):
        if key in seen:
            raise BadRecordError(f"{where}: duplicate {field_name} {key!r}; {field_name}s must be unique")
        seen.add(key)

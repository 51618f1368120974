"""Verification of a written split: its row count, every record by the schema of its file, and every image inside
the split folder and decodable. The download stage runs it on every source before the data is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from evisrag_core.data.image_store import normalise_path
from evisrag_core.data.schema import SFT_FILE, TEST_FILE, check_rl_record, check_sft_record, parse_test_record
from evisrag_core.data.sources import require_unique
from evisrag_core.images import check_image
from evisrag_core.io import BadRecordError, read_jsonl


def _check_image(split_dir: Path, raw: Any, where: str) -> Path:
    """The real path of one referenced image after refusing anything that points outside `split_dir`."""
    if not isinstance(raw, str) or normalise_path(raw) is None:
        raise BadRecordError(
            f"{where}: image path {raw!r} is not a relative path inside {split_dir} (absolute, empty or with '..')"
        )
    full = (split_dir / raw).resolve()
    if not full.is_relative_to(split_dir.resolve()):
        raise BadRecordError(f"{where}: image {raw!r} resolves to {full}, outside {split_dir} (a symlink?)")
    if not full.is_file():
        raise BadRecordError(f"{where}: image {raw!r} is missing ({full}); re-run the download stage")
    return full


def _decode(path: Path, raw: str, where: str) -> None:
    """Pillow's structural check, then the full decode and size guard every stage applies (evisrag_core.images)."""
    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadRecordError(f"{where}: image {raw!r} does not decode ({err}); the file is damaged") from err
    check_image(path, f"{where}: image {raw!r}")


def _check_record(file_name: str, row: dict[str, Any], where: str) -> list[Any]:
    """Validate a record by the file it lives in; returns its image entries."""
    if file_name == TEST_FILE:
        return parse_test_record(row, where).image
    if file_name == SFT_FILE:
        check_sft_record(row, where)
        return row["images"]
    check_rl_record(row, where)
    return row["image"]


def verify_split(split_dir: Path, file_name: str, expected_rows: int | None = None) -> int:
    """Check a written split: row count, every record, every image inside the folder and decodable.

    Returns the row count. The first problem raises BadRecordError naming the file, the line and the image.
    """
    split_dir = Path(split_dir)
    path = split_dir / file_name
    rows = read_jsonl(path)
    if expected_rows is not None and len(rows) != expected_rows:
        raise BadRecordError(f"{path}: {len(rows)} rows, expected {expected_rows}; the file is incomplete")
    decoded: set[Path] = set()
    keys: list[str] = []
    for line_no, row in enumerate(tqdm(rows, desc=f"verify {split_dir.name}/{file_name}"), start=1):
        where = f"{path}:{line_no}"  # our writers emit no blank lines, so the row number is the line number
        for raw in _check_record(file_name, row, where):
            full = _check_image(split_dir, raw, where)
            if full not in decoded:
                _decode(full, raw, where)
                decoded.add(full)
        keys.append(str(row.get("qid", row.get("id"))))
    require_unique(keys, [f"{path}:{n}" for n in range(1, len(rows) + 1)], "qid" if file_name == TEST_FILE else "id")
    return len(rows)

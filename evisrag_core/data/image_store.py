"""Images of a snapshot, written under a split's `images/`: found by path in the snapshot, or embedded in a record.

An image entry is a relative path, or embedded bytes (`{"bytes", "path"}`, the `datasets` Image encoding, or raw
bytes). A path is looked up as a file in the snapshot (relative to the record file's folder, then to the snapshot
root), then as a key of an image table: any parquet file with an image column (struct with `bytes`, or binary) and
no record columns, keyed by a `path`/`file_name`/`filename`/`image_path`/`corpus-id`/`corpus_id` column or else the
image's own `path`. If the full path matches nothing, a unique file-name match is used (sources disagree on
`imgs/15.png` vs `15.png`). Source paths that are absolute or contain `..` are refused: a snapshot must not make us
read outside it.

Images are copied (never linked), named after their source path (content-hashed names for unnamed embedded images);
each file is written once, and a name reused for other content gets a hash suffix.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image
from tqdm import tqdm

from evisrag_core.data.sources import RL_KEYS, SFT_KEYS, TEST_KEYS, parquet_columns, snapshot_files
from evisrag_core.io import BadRecordError

logger = logging.getLogger(__name__)

IMAGES_DIR = "images"
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
_KEY_COLUMNS = ("path", "file_name", "filename", "image_path", "corpus-id", "corpus_id")


def normalise_path(text: str) -> PurePosixPath | None:
    """A clean relative POSIX path, or None when `text` is empty, absolute or climbs out with `..`."""
    posix = text.replace("\\", "/")
    if not posix or posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        return None
    parts = [p for p in PurePosixPath(posix).parts if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return PurePosixPath(*parts)


def _safe_relative(text: Any, where: str) -> PurePosixPath:
    if not isinstance(text, str):
        raise BadRecordError(f"{where}: image entry must be a path string, got {type(text).__name__}")
    path = normalise_path(text)
    if path is None:
        raise BadRecordError(
            f"{where}: image path {text!r} is empty, absolute or contains '..'; paths must stay inside the folder"
        )
    return path


def _image_suffix(data: bytes, where: str) -> str:
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = (image.format or "").lower()
    except (OSError, SyntaxError, ValueError) as err:
        raise BadRecordError(f"{where}: embedded image is not a readable image ({err})") from err
    return ".jpg" if kind == "jpeg" else f".{kind or 'img'}"


def _embedded(value: Any, where: str) -> tuple[bytes, PurePosixPath | None]:
    """Bytes and a file-name hint from an embedded image (`datasets` encoding or raw bytes)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value), None
    if not isinstance(value, dict):
        raise BadRecordError(f"{where}: image entry is {type(value).__name__}, not a path or embedded image")
    data = value.get("bytes")
    if not isinstance(data, bytes | bytearray) or not data:
        raise BadRecordError(f"{where}: embedded image has no bytes (keys: {sorted(value)})")
    hint = value.get("path")
    name = normalise_path(hint) if isinstance(hint, str) else None
    return bytes(data), PurePosixPath(name.name) if name else None


@dataclass
class _ImageStore:
    """Writes image files under `<out_dir>/images` once each; a name reused for other content gets a hash suffix."""

    out_dir: Path
    written: dict[PurePosixPath, str] = field(default_factory=dict)  # name under images/ -> sha256

    def put(self, data: bytes, hint: PurePosixPath | None, where: str) -> str:
        digest = hashlib.sha256(data).hexdigest()
        name = hint if hint is not None else PurePosixPath(digest[:16] + _image_suffix(data, where))
        if not name.suffix:
            name = name.with_suffix(_image_suffix(data, where))
        if self.written.get(name, digest) != digest:
            name = name.with_name(f"{name.stem}-{digest[:12]}{name.suffix}")
        if name not in self.written:
            target = self.out_dir / IMAGES_DIR / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            self.written[name] = digest
        return (PurePosixPath(IMAGES_DIR) / name).as_posix()


@dataclass(frozen=True)
class _TableRow:
    table: Path
    column: str
    row: int


@dataclass(frozen=True)
class _ImageTable:
    path: Path
    image_column: str
    key_column: str | None  # None: the key is the image struct's own `path`


def _image_column(columns: dict[str, Any]) -> str | None:
    import pyarrow as pa

    for name, kind in columns.items():
        if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
            return name
    for name, kind in columns.items():
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            return name
    return None


def image_table(path: Path) -> _ImageTable | None:
    """An image table is a parquet file with an image column and no record columns."""
    import pyarrow as pa

    columns = parquet_columns(path)
    image = _image_column(columns)
    if image is None or set(columns) & (TEST_KEYS | SFT_KEYS | RL_KEYS):
        return None
    strings = [
        n for n in _KEY_COLUMNS if n in columns and (pa.types.is_string(t := columns[n]) or pa.types.is_large_string(t))
    ]
    if strings:
        return _ImageTable(path, image, strings[0])
    if pa.types.is_struct(columns[image]) and columns[image].get_field_index("path") >= 0:
        return _ImageTable(path, image, None)
    logger.warning("%s: image table without a path column; its images cannot be matched and are ignored", path)
    return None


def _table_keys(table: _ImageTable) -> list[Any]:
    import pyarrow.parquet as pq

    column = table.key_column or f"{table.image_column}.path"
    return pq.read_table(table.path, columns=[column]).column(0).to_pylist()


def _table_images(table: Path, column: str, rows: set[int]) -> Iterator[tuple[int, Any]]:
    """Stream the wanted rows' image values without loading the whole table."""
    import pyarrow.parquet as pq

    start = 0
    for batch in pq.ParquetFile(table).iter_batches(batch_size=64, columns=[column]):
        values = batch.column(0)
        for offset in range(batch.num_rows):
            if start + offset in rows:
                yield start + offset, values[offset].as_py()
        start += batch.num_rows


class _Catalog:
    """Every image a snapshot holds, found by relative path or, failing that, by unique file name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.by_path: dict[str, Path | _TableRow] = {}
        self.by_name: dict[str, set[str]] = defaultdict(set)
        for path in snapshot_files(root, _IMAGE_SUFFIXES):
            self._add(path.relative_to(root).as_posix(), path)
        for parquet in snapshot_files(root, {".parquet"}):
            table = image_table(parquet)
            if table is not None:
                self._add_table(table)

    def _add(self, key: str, source: Path | _TableRow) -> None:
        normal = normalise_path(key)
        if normal is None or normal.as_posix() in self.by_path:
            return
        self.by_path[normal.as_posix()] = source
        self.by_name[normal.name].add(normal.as_posix())

    def _add_table(self, table: _ImageTable) -> None:
        for row, key in enumerate(_table_keys(table)):
            if isinstance(key, str):
                self._add(key, _TableRow(table.path, table.image_column, row))

    def find(self, ref: PurePosixPath, base: PurePosixPath, where: str) -> Path | _TableRow:
        for key in ((base / ref).as_posix(), ref.as_posix()):
            if key in self.by_path:
                return self.by_path[key]
        named = self.by_name.get(ref.name, set())
        if len(named) == 1:
            return self.by_path[next(iter(named))]
        detail = f"several images are named {ref.name!r}: {sorted(named)[:5]}" if named else "no such image"
        raise BadRecordError(
            f"{where}: image {ref.as_posix()!r} not found in {self.root} ({detail}); the snapshot is incomplete "
            "or the record names a path that is neither a file in it nor a key of one of its image tables"
        )


class ImageResolver:
    """Turns the image entries of source records into files under `<out_dir>/images`.

    Files and embedded bytes are written at once; rows of image tables are collected and read in one streaming
    pass per table by `finish()`, which fills the paths it left empty.
    """

    def __init__(self, snapshot_dir: Path, out_dir: Path) -> None:
        self.catalog = _Catalog(snapshot_dir)
        self.store = _ImageStore(out_dir)
        self.pending: dict[_TableRow, list[tuple[list[str], int, PurePosixPath, str]]] = defaultdict(list)
        self.copied: dict[tuple[Path, PurePosixPath], str] = {}

    def resolve(self, entries: Any, base: PurePosixPath, where: str) -> list[str]:
        if isinstance(entries, str | dict | bytes):
            entries = [entries]
        if not isinstance(entries, list) or not entries:
            raise BadRecordError(f"{where}: the record names no images (expected a non-empty list)")
        paths = [""] * len(entries)
        for index, entry in enumerate(entries):
            paths[index] = self._one(entry, base, f"{where} image {index + 1}", (paths, index))
        return paths

    def _one(self, entry: Any, base: PurePosixPath, where: str, slot: tuple[list[str], int]) -> str:
        if isinstance(entry, dict | bytes | bytearray):
            data, hint = _embedded(entry, where)
            return self.store.put(data, hint, where)
        ref = _safe_relative(entry, where)
        source = self.catalog.find(ref, base, where)
        if isinstance(source, _TableRow):
            self.pending[source].append((*slot, ref, where))
            return ""
        if (source, ref) not in self.copied:
            self.copied[(source, ref)] = self.store.put(source.read_bytes(), ref, where)
        return self.copied[(source, ref)]

    def finish(self) -> None:
        wanted: dict[tuple[Path, str], set[int]] = defaultdict(set)
        for row in self.pending:
            wanted[(row.table, row.column)].add(row.row)
        for (table, column), rows in wanted.items():
            for row, value in tqdm(_table_images(table, column, rows), total=len(rows), desc=f"images {table.name}"):
                for paths, index, ref, where in self.pending[_TableRow(table, column, row)]:
                    data, _ = _embedded(value, where)
                    paths[index] = self.store.put(data, ref, where)
        self.pending.clear()

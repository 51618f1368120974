"""Load the released EVisRAG data from the Hugging Face hub (or a local copy of it) into the project's format.

What is known about the hub layout, and from where (checked 2026-11; the hub itself is not reachable from CI):

- Test sets `openbmb/EVisRAG-Test-{ChartQA,InfoVQA,SlideVQA,DocVQA,ViDoSeek}` (README of OpenBMB/VisRAG, "20251022:
  We upload all evaluation benchmarks in VisRAG Collections"). The reference scripts `src/evisrag/predict.py` and
  `eval.py` read `./data/EVisRAG-Test-<Name>/top3_test.jsonl` (fields `qid`, `query`, `image`, `answer`,
  `is_sufficient`) and open each image at `./data/EVisRAG-Test-<Name>/<image path>`: a snapshot is a folder with
  `top3_test.jsonl` whose image paths are relative to it. A third-party script that uses the sets describes the
  snapshot as "top3_test.jsonl + images.parquet" and extracts the pages itself from `images.parquet` columns
  `path` (the path named in the jsonl, e.g. `imgs/15.png`) and `image` (`{"bytes": ..., "path": ...}`, the
  `datasets` Image encoding); other users read pages from `<set>/imgs/`. Records may carry more fields (seen:
  `posImgs`, `labels`); they are kept verbatim. `posImgs` (positive pages, by corpus path) also gives the record's
  `positives` (indices of its images with the same file name) for the evidence-grounding metric, when consistent.
- Training data: the README says "available on Hugging Face under EVisRAG-Train"; a later README revision says
  "We upload a temporary EVisRAG-Train" at `hmhm1229/EVisRAG-Train` ([HUB_TRAIN_MIRROR]), so
  `openbmb/EVisRAG-Train` may not exist: pass `train_repo=` to use the mirror. The training scripts read, under
  `data/Train/`: a LLaMA-Factory dataset `evidencecot` (`full_sft.sh`: `--dataset_dir data/Train --dataset
  evidencecot`, i.e. a `dataset_info.json` naming the file, sharegpt style), and for RS-GRPO
  `evidencecot_GRPO.jsonl` (train) and `test_GRPO.jsonl` (validation) with keys `prompt`, `answer`, `image` and
  images relative to `data/Train` (`src/rsgrpo/examples/config.yaml`: `prompt_key: prompt`, `answer_key: answer`,
  `image_key: image`, `image_dir: ../../data/Train`). The exact file list of the train snapshot is not known.

Assumptions (each is a layout we accept, so an unexpected but plausible snapshot still converts):

- Records come from `top3_test.jsonl` when the snapshot has one; otherwise from any `.jsonl`/`.json`/`.parquet`
  file whose rows have a `query` (test) or `messages`/`conversations`/`instruction` (SFT) or `prompt` + `answer`
  (RL). A train file whose name has a `test`/`val`/`dev`/`eval` word is RL validation data: it goes to
  `train/rl_val.jsonl` ([RL_VAL_FILE], same record shape as `rl.jsonl`; counted under the manifest's
  `validation_counts`) instead of being mixed into training.
- An image entry is a relative path, or embedded bytes (`{"bytes", "path"}` or raw bytes). A path is looked up as a
  file in the snapshot (relative to the record file's folder, then to the snapshot root), then as a key of an image
  table: any parquet file with an image column (struct with `bytes`, or binary) and no record columns, keyed by a
  `path`/`file_name`/`filename`/`image_path`/`corpus-id`/`corpus_id` column or else the image's own `path`. If the
  full path matches nothing, a unique file-name match is used (sources disagree on `imgs/15.png` vs `15.png`).
- Source paths that are absolute or contain `..` are refused: a snapshot must not make us read outside it.
- SFT records are converted to `{"id", "messages": [{"role", "content"}], "images"}` with the roles `system`,
  `user`, `assistant` (sharegpt `from`/`value` with `human`/`gpt` and a `dataset_info.json` column/tag mapping are
  understood). The user turns must hold one `<image>` per image in total; when a source has none, they are appended
  to the first user turn (the prompt text comes first, then the images, as in the reference). RL prompts are kept
  verbatim; a prompt with `<image>` placeholders must have one per image. RL answers must be tagged ground truths
  (`<evidence>…</evidence>` and `<answer>…</answer>`).
- `revision` applies to every repository downloaded (a branch or tag name; a commit hash only fits one repo). The
  commit each snapshot resolved to is recorded in the manifest.

Everything lands in the layout of `evisrag_core.data.schema`; images are copied (never linked) under each split's
`images/`, named after their source path (content-hashed names for unnamed embedded images). The whole output
folder is built beside the target and swapped in only after every split verified, so a failed import leaves the
previous data untouched.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image
from tqdm import tqdm

from evisrag_core.data import fetch
from evisrag_core.data.schema import MANIFEST_FILE, RL_FILE, SFT_FILE, TEST_FILE, parse_test_record
from evisrag_core.images import check_image
from evisrag_core.io import BadRecordError, read_jsonl, write_json_atomic, write_jsonl_atomic

logger = logging.getLogger(__name__)

HUB_TEST_SETS = ("ChartQA", "InfoVQA", "SlideVQA", "DocVQA", "ViDoSeek")
HUB_TRAIN_REPO = "openbmb/EVisRAG-Train"
HUB_TRAIN_MIRROR = "hmhm1229/EVisRAG-Train"
RL_VAL_FILE = "rl_val.jsonl"
IMAGES_DIR = "images"
IMAGE_PLACEHOLDER = "<image>"
LOCAL_TEST_DIR = "EVisRAG-Test-{name}"
LOCAL_TRAIN_DIR = "EVisRAG-Train"

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
_RECORD_SUFFIXES = {".jsonl", ".json", ".parquet"}
_KEY_COLUMNS = ("path", "file_name", "filename", "image_path", "corpus-id", "corpus_id")
_TEST_KEYS = {"query"}
_SFT_KEYS = {"messages", "conversations", "instruction"}
_RL_KEYS = {"prompt", "answer"}
_VALIDATION_WORDS = {"test", "val", "valid", "validation", "dev", "eval"}
_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}


class HubUnavailableError(RuntimeError):
    """The hub could not serve a repository; the message says how to run without it."""


# --------------------------------------------------------------------------------------------------------------
# Hub access
# --------------------------------------------------------------------------------------------------------------


def hub_test_repo(name: str) -> str:
    """The hub dataset id of one benchmark's test set."""
    if name not in HUB_TEST_SETS:
        raise ValueError(f"unknown benchmark {name!r}; the hub test sets are {list(HUB_TEST_SETS)}")
    return f"openbmb/EVisRAG-Test-{name}"


def _without_hub_hint() -> str:
    return (
        "To run without the hub, set `data.source: embedded` in params.yaml (the generated default data), or "
        "download the snapshots on a connected machine, copy them here and set `data.source: local` with "
        "`data.local_dir: <folder holding EVisRAG-Test-<Name>/ and EVisRAG-Train/>`."
    )


def _error_chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _type_names(err: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(err).__mro__}


def _hub_failure(err: BaseException) -> tuple[str, bool] | None:
    """(reason, worth retrying) when `err` means the hub could not serve the repo; None for any other error.

    Checked by class name so the test does not depend on which HTTP client a huggingface_hub version uses.
    """
    chain = list(_error_chain(err))
    names = set().union(*(_type_names(e) for e in chain))
    if "OfflineModeIsEnabled" in names:
        return "downloads are disabled (HF_HUB_OFFLINE is set)", False
    if names & {"RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError"}:
        return "the repository or revision was not found, or needs an accepted licence and HF_TOKEN", False
    for item in chain:
        status = getattr(getattr(item, "response", None), "status_code", None)
        if "HfHubHTTPError" in _type_names(item) and status is not None:
            return f"the hub answered HTTP {status}", status >= 500 or status == 429
    if names & {"TransportError", "ConnectionError", "TimeoutError", "LocalEntryNotFoundError"}:
        return "the hub is unreachable (connection failed)", True
    return None


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def _download(repo_id: str, cache_dir: Path, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download  # lazy: the embedded and local paths never need it

    # The token comes from the environment only (False: never fall back to a stored login), and the endpoint is
    # read at call time so HF_ENDPOINT set after import (a mirror) is honoured.
    path = snapshot_download(
        repo_id=repo_id,
        repo_type="dataset",
        revision=revision,
        cache_dir=str(cache_dir),
        token=os.environ.get("HF_TOKEN") or False,
        endpoint=os.environ.get("HF_ENDPOINT") or None,
    )
    return Path(path)


def snapshot(
    repo_id: str, cache_dir: Path, revision: str | None = None, *, tries: int = 3, backoff_s: float = 2.0
) -> Path:
    """Download (or reuse from `cache_dir`) a dataset snapshot whose files all match their hub checksums.

    Connection failures and hub-side errors (5xx, 429) are retried with exponential backoff (`backoff_s`, then
    twice that, ...) up to `tries` attempts in all; a missing repo or offline mode fails at once. An interrupted
    download resumes where it stopped (huggingface_hub's `.incomplete` files). Files whose content does not match
    their etag are deleted and fetched once more. Every failure to get the data raises HubUnavailableError saying
    what to do instead.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        raise HubUnavailableError(
            f"cannot download {repo_id}: HF_HUB_OFFLINE is set, so the hub is disabled. {_without_hub_hint()}"
        )
    path = _fetch_snapshot(repo_id, Path(cache_dir), revision, tries, backoff_s)
    corrupt, checked = fetch.corrupt_files(path)
    if corrupt:
        logger.warning("%s: %d of %d files fail their checksum; fetching them again", repo_id, len(corrupt), checked)
        fetch.drop_corrupt(corrupt)
        path = _fetch_snapshot(repo_id, Path(cache_dir), revision, tries, backoff_s)
        # Offline, the client returns the cached snapshot without the dropped files: those count as failures too.
        still = [p for p in corrupt if not p.is_file()] + fetch.corrupt_files(path)[0]
        if still:
            raise fetch.ChecksumError(
                f"{repo_id}: {', '.join(str(p.relative_to(path)) for p in still)} did not match the hub's checksum "
                f"and could not be fetched again; delete {cache_dir} and run `evisrag download` on a connected machine"
            )
    logger.info("%s: %d files match their hub checksums", repo_id, checked)
    return path


def _fetch_snapshot(repo_id: str, cache_dir: Path, revision: str | None, tries: int, backoff_s: float) -> Path:
    try:
        return fetch.retry_with_backoff(
            lambda: _download(repo_id, cache_dir, revision),
            _hub_failure,
            tries=tries,
            backoff_s=backoff_s,
            label=repo_id,
        )
    except fetch.FetchGaveUp as err:
        cause = err.__cause__ or err
        raise HubUnavailableError(
            f"cannot download dataset {repo_id} from the Hugging Face hub after {err.attempts} attempt(s): "
            f"{err.reason} ({_describe(cause)}). {_without_hub_hint()}"
        ) from err


# --------------------------------------------------------------------------------------------------------------
# Paths and image bytes
# --------------------------------------------------------------------------------------------------------------


def _normalise(text: str) -> PurePosixPath | None:
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
    path = _normalise(text)
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
    name = _normalise(hint) if isinstance(hint, str) else None
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


# --------------------------------------------------------------------------------------------------------------
# What a snapshot holds: record files, image files and image tables
# --------------------------------------------------------------------------------------------------------------


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


def _files(root: Path, suffixes: set[str]) -> list[Path]:
    """Files under `root` with one of `suffixes`, sorted, skipping hidden folders (hub `.cache`, `.git`)."""
    found = []
    for path in root.rglob("*"):
        hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
        if not hidden and path.suffix.lower() in suffixes and path.is_file():
            found.append(path)
    return sorted(found)


def _parquet_columns(path: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    return {name: schema.field(name).type for name in schema.names}


def _image_column(columns: dict[str, Any]) -> str | None:
    import pyarrow as pa

    for name, kind in columns.items():
        if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
            return name
    for name, kind in columns.items():
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            return name
    return None


def _as_image_table(path: Path) -> _ImageTable | None:
    """An image table is a parquet file with an image column and no record columns."""
    import pyarrow as pa

    columns = _parquet_columns(path)
    image = _image_column(columns)
    if image is None or set(columns) & (_TEST_KEYS | _SFT_KEYS | _RL_KEYS):
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
        for path in _files(root, _IMAGE_SUFFIXES):
            self._add(path.relative_to(root).as_posix(), path)
        for parquet in _files(root, {".parquet"}):
            table = _as_image_table(parquet)
            if table is not None:
                self._add_table(table)

    def _add(self, key: str, source: Path | _TableRow) -> None:
        normal = _normalise(key)
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


class _ImageResolver:
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


# --------------------------------------------------------------------------------------------------------------
# Reading source records
# --------------------------------------------------------------------------------------------------------------


def _rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) for every record of a jsonl, json (a list) or parquet file; `where` names file and line/row."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        for line_no, row in enumerate(read_jsonl(path), start=1):
            yield f"{path}:{line_no}", row
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


def _columns(path: Path) -> set[str]:
    """The field names of a record file (its first row; the schema for parquet); empty for non-record files."""
    if path.suffix.lower() == ".parquet":
        return set(_parquet_columns(path))
    try:
        first = next(_rows(path), None)
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


def _extras(row: dict[str, Any], known: set[str]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in known and _jsonable(v)}


def _base(path: Path, root: Path) -> PurePosixPath:
    return PurePosixPath(path.parent.relative_to(root).as_posix())


# --------------------------------------------------------------------------------------------------------------
# Test sets
# --------------------------------------------------------------------------------------------------------------


def _test_record_files(snapshot_dir: Path) -> list[Path]:
    named = [p for p in _files(snapshot_dir, {".jsonl"}) if p.name == TEST_FILE]
    if len(named) > 1:
        raise BadRecordError(f"{snapshot_dir}: several {TEST_FILE} files {named}; point at one test set folder")
    if named:
        return named
    found = [p for p in _files(snapshot_dir, _RECORD_SUFFIXES) if _columns(p) >= _TEST_KEYS]
    if not found:
        raise BadRecordError(
            f"{snapshot_dir}: no test records found (expected {TEST_FILE}, or jsonl/json/parquet rows with 'query')"
        )
    return found


def _test_row(row: dict[str, Any], images: list[str], where: str) -> dict[str, Any]:
    answer = row.get("answer")
    sufficient = row.get("is_sufficient")
    if type(sufficient) is int and sufficient in (0, 1):
        sufficient = bool(sufficient)
    known = {"qid", "query", "image", "images", "answer", "is_sufficient"}
    out = {
        **_extras(row, known),
        "qid": row.get("qid", row.get("id")),
        "query": row.get("query"),
        "image": images,
        "answer": [answer] if isinstance(answer, str) else answer,
        "is_sufficient": sufficient,
    }
    return parse_test_record(out, where).to_json()


def _positives_from_pos_imgs(row: dict[str, Any], entries: Any) -> list[int] | None:
    """1-based indices of the record's images named in its `posImgs`, matched by file name; None when unknown.

    The reference records name positive pages by corpus path (`./VisRAG-Ret-Test-ChartQA/imgs/c1.png`) while
    `image` holds `imgs/c1.png`, so only the file name is compared. The result is kept only when it agrees with
    `is_sufficient` (some image matches iff the question is answerable); otherwise the positives stay unknown and
    the evidence-grounding metric skips the question rather than score it against a guess.
    """
    pos_imgs = row.get("posImgs")
    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(pos_imgs, list) or not isinstance(entries, list):
        return None
    if not all(isinstance(p, str) for p in pos_imgs) or not all(isinstance(e, str) for e in entries):
        return None
    names = {PurePosixPath(p).name for p in pos_imgs}
    positives = [i for i, entry in enumerate(entries, start=1) if PurePosixPath(entry).name in names]
    sufficient = row.get("is_sufficient")
    if sufficient not in (True, False, 0, 1) or bool(positives) != bool(sufficient):
        return None
    return positives


def convert_test_set(snapshot_dir: Path, out_dir: Path) -> int:
    """Write `<out_dir>/top3_test.jsonl` and `<out_dir>/images/` from one test-set snapshot; returns the row count."""
    snapshot_dir, out_dir = Path(snapshot_dir), Path(out_dir)
    resolver = _ImageResolver(snapshot_dir, out_dir)
    sources: list[tuple[dict[str, Any], list[str], str]] = []
    for path in _test_record_files(snapshot_dir):
        base = _base(path, snapshot_dir)
        for where, row in tqdm(_rows(path), desc=f"records {path.name}"):
            entries = row.get("image", row.get("images"))
            images = resolver.resolve(entries, base, where)
            text_fields = {k: v for k, v in row.items() if k not in ("image", "images")}  # drop embedded bytes
            positives = _positives_from_pos_imgs(row, entries)
            if positives is not None and "positives" not in row:
                text_fields["positives"] = positives
            sources.append((text_fields, images, where))
    resolver.finish()
    rows = [_test_row(row, images, where) for row, images, where in sources]
    _require_unique([str(r["qid"]) for r in rows], [w for _, _, w in sources], "qid")
    write_jsonl_atomic(out_dir / TEST_FILE, rows)
    logger.info("%s: %d questions, %d images", out_dir, len(rows), len(resolver.store.written))
    return len(rows)


def _require_unique(keys: list[str], wheres: list[str], field_name: str) -> None:
    seen: set[str] = set()
    for key, where in zip(keys, wheres, strict=True):
        if key in seen:
            raise BadRecordError(f"{where}: duplicate {field_name} {key!r}; {field_name}s must be unique")
        seen.add(key)


# --------------------------------------------------------------------------------------------------------------
# Training data
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SftColumns:
    """Where a LLaMA-Factory dataset keeps its fields (`dataset_info.json` `columns`/`tags`; defaults otherwise)."""

    messages: str | None = None  # None: "messages" or "conversations", whichever the row has
    images: str = "images"
    system: str = "system"
    role_tag: str | None = None  # None: "role" or "from"
    content_tag: str | None = None  # None: "content" or "value"
    roles: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> _SftColumns:
        columns, tags = entry.get("columns", {}), entry.get("tags", {})
        roles = tuple(
            (tags[tag], role)
            for tag, role in (("user_tag", "user"), ("assistant_tag", "assistant"), ("system_tag", "system"))
            if tag in tags
        )
        return cls(
            messages=columns.get("messages"),
            images=columns.get("images", "images"),
            system=columns.get("system", "system"),
            role_tag=tags.get("role_tag"),
            content_tag=tags.get("content_tag"),
            roles=roles,
        )


def _dataset_info(snapshot_dir: Path) -> dict[Path, _SftColumns]:
    """Record files named by LLaMA-Factory `dataset_info.json` files, with their column mapping."""
    mapping: dict[Path, _SftColumns] = {}
    for info in _files(snapshot_dir, {".json"}):
        if info.name != "dataset_info.json":
            continue
        entries = json.loads(info.read_text(encoding="utf-8"))
        for name, entry in entries.items():
            target = info.parent / str(entry.get("file_name", ""))
            if "file_name" not in entry or not target.exists():
                logger.warning("%s: dataset %r names no file present in the snapshot; skipped", info, name)
                continue
            files = _files(target, _RECORD_SUFFIXES) if target.is_dir() else [target]
            mapping.update({f: _SftColumns.from_entry(entry) for f in files})
    return mapping


def _is_validation(path: Path) -> bool:
    return bool(set(re.split(r"[^a-z0-9]+", path.stem.lower())) & _VALIDATION_WORDS)


def _train_files(snapshot_dir: Path) -> dict[str, list[tuple[Path, _SftColumns | None]]]:
    """Record files of a train snapshot grouped by output file (sft.jsonl, rl.jsonl, rl_val.jsonl)."""
    sft = _dataset_info(snapshot_dir)
    groups: dict[str, list[tuple[Path, _SftColumns | None]]] = defaultdict(list)
    for path in _files(snapshot_dir, _RECORD_SUFFIXES):
        if path.name == "dataset_info.json" or (path.suffix == ".parquet" and _as_image_table(path)):
            continue
        keys = set() if path in sft else _columns(path)
        if path in sft or keys & _SFT_KEYS:
            groups[SFT_FILE].append((path, sft.get(path, _SftColumns())))
        elif keys >= _RL_KEYS:
            groups[RL_VAL_FILE if _is_validation(path) else RL_FILE].append((path, None))
        else:
            logger.info("%s: not a training record file (fields %s); ignored", path, sorted(keys)[:8])
    return groups


def _flatten(content: Any, where: str) -> str:
    """Message content as one string; OpenAI-style parts become text and `<image>` placeholders."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        return "".join(IMAGE_PLACEHOLDER if p.get("type") == "image" else str(p.get("text", "")) for p in content)
    raise BadRecordError(f"{where}: message content must be a string, got {type(content).__name__}")


def _messages(row: dict[str, Any], columns: _SftColumns, where: str) -> list[dict[str, str]]:
    if "instruction" in row and columns.messages is None and not {"messages", "conversations"} & set(row):
        prompt = "\n".join(s for s in (row.get("instruction"), row.get("input")) if isinstance(s, str) and s)
        turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": row.get("output")}]
    else:
        turns = row.get(columns.messages or ("messages" if "messages" in row else "conversations"))
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise BadRecordError(f"{where}: expected a list of chat turns in 'messages'/'conversations'")
    roles = {**_ROLES, **dict(columns.roles)}
    system = row.get(columns.system)
    out = [{"role": "system", "content": system}] if isinstance(system, str) and system else []
    for turn in turns:
        role = turn.get(columns.role_tag or ("role" if "role" in turn else "from"))
        content = turn.get(columns.content_tag or ("content" if "content" in turn else "value"))
        if role not in roles:
            raise BadRecordError(f"{where}: unknown chat role {role!r}; expected one of {sorted(roles)}")
        out.append({"role": roles[role], "content": _flatten(content, where)})
    return out


def check_sft_record(row: dict[str, Any], where: str) -> None:
    """An SFT record has user and assistant turns and exactly one `<image>` per image in its user turns."""
    messages, images = row.get("messages"), row.get("images")
    if not isinstance(messages, list) or not isinstance(images, list):
        raise BadRecordError(f"{where}: an SFT record needs 'messages' and 'images' lists")
    if not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
        raise BadRecordError(f"{where}: every message needs a 'role' and a string 'content'")
    roles = [m.get("role") for m in messages]
    if "user" not in roles or roles[-1] != "assistant":
        raise BadRecordError(f"{where}: an SFT conversation needs a user turn and must end with the assistant's")
    placeholders = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages if m["role"] == "user")
    if placeholders != len(images):
        raise BadRecordError(
            f"{where}: {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) in the user turns for {len(images)} images"
        )


def _sft_record(row: dict[str, Any], record_id: str, images: list[str], columns: _SftColumns, where: str) -> dict:
    messages = _messages(row, columns, where)
    user_turns = [m for m in messages if m["role"] == "user"]
    if user_turns and not any(IMAGE_PLACEHOLDER in m["content"] for m in user_turns):
        user_turns[0]["content"] += IMAGE_PLACEHOLDER * len(images)
    record = {"id": record_id, "messages": messages, "images": images}
    check_sft_record(record, where)
    return record


def check_rl_record(row: dict[str, Any], where: str) -> None:
    """An RL record has a prompt, its images and a tagged ground truth holding evidence and answer blocks."""
    prompt, answer, images = row.get("prompt"), row.get("answer"), row.get("image")
    if not isinstance(prompt, str) or not isinstance(answer, str) or not isinstance(images, list):
        raise BadRecordError(f"{where}: an RL record needs 'prompt' (string), 'image' (list), 'answer' (string)")
    missing = [t for t in ("<evidence>", "</evidence>", "<answer>", "</answer>") if t not in answer]
    if missing:
        raise BadRecordError(f"{where}: 'answer' must be the tagged ground truth; it lacks {missing}")
    placeholders = prompt.count(IMAGE_PLACEHOLDER)
    if placeholders not in (0, len(images)):
        raise BadRecordError(f"{where}: prompt has {placeholders} {IMAGE_PLACEHOLDER} for {len(images)} images")


def _rl_record(row: dict[str, Any], record_id: str, images: list[str], where: str) -> dict[str, Any]:
    answer = row.get("answer")
    if isinstance(answer, list) and len(answer) == 1:
        answer = answer[0]
    known = {"id", "prompt", "image", "images", "answer"}
    record = {"id": record_id, "prompt": row.get("prompt"), "image": images, "answer": answer, **_extras(row, known)}
    check_rl_record(record, where)
    return record


def _convert_train_file(
    path: Path, columns: _SftColumns | None, root: Path, resolver: _ImageResolver
) -> tuple[list[dict[str, Any]], list[str]]:
    records, wheres = [], []
    base = _base(path, root)
    image_key = columns.images if columns else "image"
    for index, (where, row) in enumerate(tqdm(_rows(path), desc=f"records {path.name}"), start=1):
        record_id = str(row.get("id", f"{path.stem}-{index}"))
        entries = row.get(image_key, row.get("images" if image_key == "image" else "image"))
        images = resolver.resolve(entries, base, where)
        if columns is None:
            records.append(_rl_record(row, record_id, images, where))
        else:
            records.append(_sft_record(row, record_id, images, columns, where))
        wheres.append(where)
    return records, wheres


def convert_train_set(snapshot_dir: Path, out_dir: Path) -> dict[str, int]:
    """Write `sft.jsonl`, `rl.jsonl` (and `rl_val.jsonl`) with `images/` under `out_dir`; returns rows per file.

    SFT and RL records often show the same pages; they share one `images/` folder and each page is stored once.
    """
    snapshot_dir, out_dir = Path(snapshot_dir), Path(out_dir)
    groups = _train_files(snapshot_dir)
    if not groups:
        raise BadRecordError(f"{snapshot_dir}: no SFT or RL training records found (see evisrag_core.data.hub)")
    resolver = _ImageResolver(snapshot_dir, out_dir)
    converted: dict[str, list[dict[str, Any]]] = {}
    for file_name, files in groups.items():
        records, wheres = [], []
        for path, columns in files:
            more, more_wheres = _convert_train_file(path, columns, snapshot_dir, resolver)
            records += more
            wheres += more_wheres
        _require_unique([r["id"] for r in records], wheres, "id")
        converted[file_name] = records
    resolver.finish()
    for file_name, records in converted.items():
        write_jsonl_atomic(out_dir / file_name, records)
    counts = {file_name: len(records) for file_name, records in converted.items()}
    logger.info("%s: %s, %d images", out_dir, counts, len(resolver.store.written))
    return counts


# --------------------------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------------------------


def _check_image(split_dir: Path, raw: Any, where: str) -> Path:
    """The real path of one referenced image after refusing anything that points outside `split_dir`."""
    if not isinstance(raw, str) or _normalise(raw) is None:
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
    _require_unique(keys, [f"{path}:{n}" for n in range(1, len(rows) + 1)], "qid" if file_name == TEST_FILE else "id")
    return len(rows)


# --------------------------------------------------------------------------------------------------------------
# Whole imports
# --------------------------------------------------------------------------------------------------------------


@contextmanager
def _staged_dir(target: Path) -> Iterator[Path]:
    """Build a folder beside `target` and swap it in on success; on failure the old `target` is untouched."""
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    backup = old / target.name
    if target.exists():
        os.replace(target, backup)
    try:
        os.replace(stage, target)
    except OSError:
        if backup.exists():
            os.replace(backup, target)
        shutil.rmtree(stage, ignore_errors=True)
        raise
    try:
        shutil.rmtree(old)
    except OSError as err:
        logger.warning("could not remove the previous data at %s (%s); delete it by hand", old, err)


def _build(out_dir: Path, tests: dict[str, Path], train: Path | None, info: dict[str, Any]) -> dict[str, Any]:
    """Convert and verify every split into a staged folder, then write the manifest.

    `counts` holds the splits of the schema (test sets, train/sft, train/rl), keyed like the embedded generator's
    manifest; RL validation rows are counted apart in `validation_counts` so readers of `counts` see only those.
    """
    counts: dict[str, int] = {}
    validation: dict[str, int] = {}
    with _staged_dir(Path(out_dir)) as stage:
        for name, snapshot_dir in tests.items():
            split = stage / "test" / name
            counts[f"test/{name}"] = verify_split(split, TEST_FILE, convert_test_set(snapshot_dir, split))
        if train is not None:
            for file_name, rows in convert_train_set(train, stage / "train").items():
                target = validation if file_name == RL_VAL_FILE else counts
                target[f"train/{Path(file_name).stem}"] = verify_split(stage / "train", file_name, rows)
        manifest = {**info, "benchmarks": list(tests), "counts": counts}
        if validation:
            manifest["validation_counts"] = validation
        write_json_atomic(stage / MANIFEST_FILE, manifest)
    logger.info("wrote %s from %s: %s", out_dir, info["source"], counts)
    return manifest


def _check_benchmarks(benchmarks: list[str]) -> None:
    unknown = [b for b in benchmarks if b not in HUB_TEST_SETS]
    if unknown or not benchmarks:
        raise ValueError(f"benchmarks must be a non-empty subset of {list(HUB_TEST_SETS)}; got {benchmarks}")


def download_from_hub(
    out_dir: Path,
    cache_dir: Path,
    benchmarks: list[str],
    include_train: bool,
    revision: str | None,
    *,
    train_repo: str = HUB_TRAIN_REPO,
    tries: int = 3,
    backoff_s: float = 2.0,
) -> dict[str, Any]:
    """Download the chosen test sets (and the training data) and write them to `out_dir`; returns the manifest."""
    _check_benchmarks(benchmarks)
    repos = {name: hub_test_repo(name) for name in benchmarks}
    if include_train:
        repos[LOCAL_TRAIN_DIR] = train_repo
    snapshots = {
        key: snapshot(repo, Path(cache_dir), revision, tries=tries, backoff_s=backoff_s) for key, repo in repos.items()
    }
    info = {
        "source": "hub",
        "revision": revision,
        "repos": {repo: snapshots[key].name for key, repo in repos.items()},  # repo -> snapshot commit
    }
    train = snapshots.pop(LOCAL_TRAIN_DIR, None)
    return _build(Path(out_dir), snapshots, train, info)


def import_local(
    local_dir: Path, out_dir: Path, benchmarks: list[str] | None = None, include_train: bool = True
) -> dict[str, Any]:
    """Convert snapshots copied by hand (`<local_dir>/EVisRAG-Test-<Name>/`, `<local_dir>/EVisRAG-Train/`).

    `benchmarks=None` takes every test set present. Returns the manifest.
    """
    local_dir = Path(local_dir)
    if benchmarks is None:
        benchmarks = [n for n in HUB_TEST_SETS if (local_dir / LOCAL_TEST_DIR.format(name=n)).is_dir()]
        if not benchmarks:
            raise FileNotFoundError(f"{local_dir}: no EVisRAG-Test-<Name> folder; expected one of {HUB_TEST_SETS}")
    _check_benchmarks(benchmarks)
    tests = {name: local_dir / LOCAL_TEST_DIR.format(name=name) for name in benchmarks}
    train = local_dir / LOCAL_TRAIN_DIR if include_train else None
    for folder in [*tests.values(), *([train] if train else [])]:
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} not found; copy the hub snapshot there (see evisrag_core.data.hub)")
    info = {"source": "local", "local_dir": str(local_dir.resolve())}
    return _build(Path(out_dir), tests, train, info)

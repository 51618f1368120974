"""The project's on-disk dataset format, which is the reference format (spec §2).

```
<data_dir>/
  manifest.json                       # source, benchmarks, row counts, generator params
  test/<Benchmark>/top3_test.jsonl    # qid, query, image (relative paths, ranked), answer (list), is_sufficient
  test/<Benchmark>/images/...
  train/sft.jsonl                     # chat conversations: {"id", "messages": [...], "images": [...]}
  train/rl.jsonl                      # {"id", "prompt", "image": [...], "answer": tagged ground truth}
  train/images/...
```
Image paths in a record are relative to the folder holding the jsonl file. Optional test-record field `positives`
(1-based indices of the images that hold the answer) is kept when a source provides it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evisrag_core.bad_records import BadRecords, jsonl_rows
from evisrag_core.io import BadRecordError

TEST_FILE = "top3_test.jsonl"
SFT_FILE = "sft.jsonl"
RL_FILE = "rl.jsonl"
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class TestRecord:
    qid: str | int
    query: str
    image: list[str]
    answer: list[str]
    is_sufficient: bool
    positives: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        row.pop("extra")
        if row["positives"] is None:
            row.pop("positives")
        return {**self.extra, **row}


def _require(row: dict[str, Any], key: str, kinds: tuple[type, ...], where: str) -> Any:
    if key not in row:
        raise BadRecordError(f"{where}: missing field {key!r}")
    value = row[key]
    # bool is a subclass of int: a JSON `true` must not pass as an integer qid.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise BadRecordError(f"{where}: field {key!r} must be {names}, got {type(value).__name__}")
    return value


def parse_test_record(row: dict[str, Any], where: str) -> TestRecord:
    """Validate one `top3_test.jsonl` row; `where` (file:line) is put in every error message."""
    qid = _require(row, "qid", (str, int), where)
    query = _require(row, "query", (str,), where)
    images = _require(row, "image", (list,), where)
    answers = _require(row, "answer", (list,), where)
    is_sufficient = _require(row, "is_sufficient", (bool,), where)
    if not images or not all(isinstance(p, str) and p for p in images):
        raise BadRecordError(f"{where}: field 'image' must be a non-empty list of paths")
    if not all(isinstance(a, str) for a in answers):
        raise BadRecordError(f"{where}: field 'answer' must be a list of strings")
    if is_sufficient and not answers:
        raise BadRecordError(f"{where}: a sufficient question needs at least one gold answer in 'answer'")
    positives = row.get("positives")
    if positives is not None and not (
        isinstance(positives, list) and all(isinstance(i, int) and 1 <= i <= len(images) for i in positives)
    ):
        raise BadRecordError(f"{where}: field 'positives' must list 1-based image indices")
    known = {"qid", "query", "image", "answer", "is_sufficient", "positives"}
    extra = {k: v for k, v in row.items() if k not in known}
    return TestRecord(qid, query, list(images), list(answers), is_sufficient, positives, extra)


def load_test_split(split_dir: str | Path, bad: BadRecords | None = None) -> list[TestRecord]:
    """Read and validate `<split_dir>/top3_test.jsonl`; qids must be unique.

    A bad line (unreadable, a missing or mistyped field, a repeated qid) raises BadRecordError naming file:line,
    or, with `bad` set to the `skip` policy, is left out and counted there (the first row with a qid is kept).
    """
    bad = bad or BadRecords()
    path = Path(split_dir) / TEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `evisrag download` first (or point --data at a test set)")
    records = []
    seen: set[str] = set()
    for where, row in jsonl_rows(path, bad):
        try:
            record = parse_test_record(row, where)
            if str(record.qid) in seen:
                raise BadRecordError(f"{where}: duplicate qid {record.qid!r}; qids must be unique")
        except BadRecordError as err:
            bad.reject(err)
            continue
        seen.add(str(record.qid))
        records.append(record)
    return records


def list_benchmarks(data_dir: str | Path) -> list[str]:
    """Names of the test splits under `<data_dir>/test`, sorted."""
    test_root = Path(data_dir) / "test"
    if not test_root.is_dir():
        raise FileNotFoundError(f"{test_root} not found; run `evisrag download` first")
    return sorted(p.name for p in test_root.iterdir() if (p / TEST_FILE).is_file())


def resolve_image_path(split_dir: str | Path, relative: str, where: str = "") -> Path:
    """The absolute path of an image a record names, refusing anything outside the split folder.

    Absolute paths, `..` escapes and symlinks pointing outside are refused: a dataset must not make the pipeline
    read (and log, or train on) arbitrary files of the machine.
    """
    root = Path(split_dir).resolve()
    prefix = f"{where}: " if where else ""
    if Path(relative).is_absolute():
        raise BadRecordError(f"{prefix}image path {relative!r} is absolute; use a path relative to {root}")
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root):
        raise BadRecordError(f"{prefix}image path {relative!r} points outside the dataset folder {root}; refused")
    if not candidate.is_file():
        raise BadRecordError(f"{prefix}image {relative!r} not found under {root}; re-run `evisrag download`")
    return candidate

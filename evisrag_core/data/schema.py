"""The project's on-disk dataset format, which is the reference format (spec §2).

```
<data_dir>/
  manifest.json                       # source, benchmarks, row counts, generator params
  test/<Benchmark>/top3_test.jsonl    # qid, query, image (relative paths, ranked), answer (list), is_sufficient
  test/<Benchmark>/images/...
  train/sft.jsonl                     # chat conversations: {"id", "messages": [...], "images": [...]}
  train/dataset_info.json             # embedded data: names sft.jsonl for LLaMA-Factory (`--dataset evidencecot`)
  train/rl.jsonl                      # {"id", "prompt", "image": [...], "answer": tagged ground truth}
  train/rl_val.jsonl                  # optional RL validation records, the shape of rl.jsonl (hub/local data)
  train/images/...
```
Image paths in a record are relative to the folder holding the jsonl file. Optional test-record field `positives`
(1-based indices of the images that hold the answer) is kept when a source provides it. An SFT user turn holds one
`<image>` placeholder (IMAGE_PLACEHOLDER) per image; an RL prompt holds one per image or none. An SFT record may open
with a system turn, which is kept. Training texts are used verbatim; how they become the model's input, and which
records hold a bare question the evidence template wraps, is stated in `evisrag_core.prompts`.

The record types a stage reads, each with its parser (`where` = file:line goes into every error) and its loader
(bad records raise, or are counted and skipped under `on_bad_record: skip`): TestRecord (`load_test_split`),
Conversation (`load_conversations`, SFT) and RLPrompt (`load_rl_prompts`). `check_sft_record`/`check_rl_record`
check the written shape of the training files (the download stage's verification).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from evisrag_core.bad_records import BadRecords, read_records
from evisrag_core.errors import InputNotFoundError
from evisrag_core.images import check_image
from evisrag_core.io import BadRecordError
from evisrag_core.parsing import extract_block

TEST_FILE = "top3_test.jsonl"
SFT_FILE = "sft.jsonl"
RL_FILE = "rl.jsonl"
RL_VAL_FILE = "rl_val.jsonl"
MANIFEST_FILE = "manifest.json"
LLAMAFACTORY_INFO_FILE = "dataset_info.json"  # names a folder's LLaMA-Factory datasets
IMAGE_PLACEHOLDER = "<image>"  # where an image stands in a training record's text (LLaMA-Factory and EasyR1 data)
INSUFFICIENT_ANSWER = "insufficient to answer"
GROUND_TRUTH_TAGS = ("<evidence>", "</evidence>", "<answer>", "</answer>")


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
    urls = [p for p in images if "://" in p]
    if urls:
        raise BadRecordError(
            f"{where}: field 'image' holds URLs ({', '.join(urls[:3])}); images are read from the dataset folder "
            "only: download them into the split's images/ folder and list their relative paths"
        )
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
    path = Path(split_dir) / TEST_FILE
    if not path.is_file():
        raise InputNotFoundError(f"{path} not found; run `evisrag download` first (or point --data at a test set)")
    seen: set[str] = set()

    def parse_unique(row: dict[str, Any], where: str) -> TestRecord:
        record = parse_test_record(row, where)
        if str(record.qid) in seen:
            raise BadRecordError(f"{where}: duplicate qid {record.qid!r}; qids must be unique")
        seen.add(str(record.qid))
        return record

    return read_records(path, parse_unique, bad)


def list_benchmarks(data_dir: str | Path) -> list[str]:
    """Names of the test splits under `<data_dir>/test`, sorted."""
    test_root = Path(data_dir) / "test"
    if not test_root.is_dir():
        raise InputNotFoundError(f"{test_root} not found; run `evisrag download` first")
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


# --- training records -----------------------------------------------------------------------------------------------


def _require_tagged(answer: str, where: str) -> None:
    missing = [tag for tag in GROUND_TRUTH_TAGS if tag not in answer]
    if missing:
        raise BadRecordError(f"{where}: 'answer' must be the tagged ground truth; it lacks {missing}")


def check_sft_record(row: dict[str, Any], where: str) -> None:
    """An SFT record has user and assistant turns, alternating, and exactly one `<image>` per image in its user
    turns."""
    messages, images = row.get("messages"), row.get("images")
    if not isinstance(messages, list) or not isinstance(images, list):
        raise BadRecordError(f"{where}: an SFT record needs 'messages' and 'images' lists")
    if not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
        raise BadRecordError(f"{where}: every message needs a 'role' and a string 'content'")
    if not messages:
        raise BadRecordError(f"{where}: an SFT conversation needs a user turn and must end with the assistant's")
    _turns(messages, where)  # the order SFT reads: system?, then user/assistant alternating
    placeholders = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages if m["role"] == "user")
    if placeholders != len(images):
        raise BadRecordError(
            f"{where}: {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) in the user turns for {len(images)} images"
        )


def rl_user_text(row: dict[str, Any]) -> tuple[str | None, bool]:
    """An RL record's user text and whether it is a bare question: `prompt` is the whole user text (the reference's
    form, used verbatim); a record with `query` and no `prompt` holds a bare question (the evidence template wraps
    it). The field decides, never the content (evisrag_core.prompts)."""
    if "prompt" in row or "query" not in row:
        text = row.get("prompt")
        return (text if isinstance(text, str) else None), False
    text = row["query"]
    return (text if isinstance(text, str) else None), True


def check_rl_record(row: dict[str, Any], where: str) -> None:
    """An RL record has a prompt (or a bare `query`), its images and a tagged ground truth holding evidence and
    answer blocks; the prompt holds one `<image>` marker per image, or none."""
    (text, bare), answer, images = rl_user_text(row), row.get("answer"), row.get("image")
    if not isinstance(text, str) or not isinstance(answer, str) or not isinstance(images, list):
        raise BadRecordError(f"{where}: an RL record needs 'prompt' (string), 'image' (list), 'answer' (string)")
    _require_tagged(answer, where)
    placeholders = text.count(IMAGE_PLACEHOLDER)
    if placeholders not in (0, len(images)) or (bare and placeholders):
        raise BadRecordError(
            f"{where}: {'query' if bare else 'prompt'} has {placeholders} {IMAGE_PLACEHOLDER} for {len(images)} "
            "images; a prompt needs one per image or none, a bare query none"
        )


@dataclass(frozen=True)
class Conversation:
    """One SFT example: the last user turn's text verbatim (its `<image>` markers kept), every image of the
    conversation (absolute paths, in marker order), the last assistant turn, the system turn when the record has one,
    and the earlier (user text, assistant text) turns of a multi-turn record, in order."""

    id: str
    user_text: str
    images: list[str]
    response: str
    system: str | None = None
    history: tuple[tuple[str, str], ...] = ()


def _turns(messages: list[dict[str, Any]], where: str) -> tuple[str | None, list[tuple[str, str]]]:
    """(system text, [(user text, assistant text), …]) of a sharegpt `messages` list, as LLaMA-Factory reads it: an
    optional system turn, then user and assistant turns alternating, from a user turn to an assistant turn."""
    system = messages[0].get("content") if messages[0].get("role") == "system" else None
    body = messages[1:] if messages[0].get("role") == "system" else messages
    roles = [m.get("role") for m in body]
    if len(body) < 2 or len(body) % 2 or roles != ["user", "assistant"] * (len(body) // 2):
        raise BadRecordError(
            f"{where}: 'messages' must be an optional system turn, then user and assistant turns alternating, from "
            f"a user turn to an assistant turn; its roles are {roles}"
        )
    pairs = [(str(body[i].get("content", "")), str(body[i + 1].get("content", ""))) for i in range(0, len(body), 2)]
    return (str(system) if system else None), pairs


def parse_sft_record(row: dict[str, Any], root: Path, where: str) -> Conversation:
    """An `sft.jsonl` row (an optional system turn, then user and assistant turns alternating; one `<image>` per
    image over all user turns) → Conversation."""
    messages, images = row.get("messages"), row.get("images", [])
    if not isinstance(messages, list) or len(messages) < 2 or not all(isinstance(m, dict) for m in messages):
        raise BadRecordError(f"{where}: 'messages' must hold a user turn and an assistant turn")
    system, pairs = _turns(messages, where)
    if not isinstance(images, list) or not images or not all(isinstance(p, str) and p for p in images):
        raise BadRecordError(f"{where}: 'images' must be a non-empty list of image paths (the task is over images)")
    markers = sum(user.count(IMAGE_PLACEHOLDER) for user, _ in pairs)
    if markers != len(images):
        raise BadRecordError(f"{where}: {markers} <image> placeholders for {len(images)} images; they must match")
    paths = [str(resolve_image_path(root, p, where)) for p in images]
    (text, response), history = pairs[-1], tuple(pairs[:-1])
    return Conversation(str(row.get("id", where)), text, paths, response, system, history)


def load_conversations(sft_file: Path, bad: BadRecords | None = None) -> list[Conversation]:
    """Every valid conversation of `sft_file`, its images checked; a bad record raises BadRecordError naming
    file:line, or is left out and counted in `bad` under the `skip` policy (`sft.on_bad_record`)."""
    return read_records(sft_file, _images_checked(parse_sft_record, sft_file.parent), bad)


@dataclass(frozen=True)
class RLPrompt:
    """One RL record: its user text (the whole prompt verbatim, `<image>` markers kept; or a bare question), its images
    (absolute paths, rank order) and the tagged ground truth."""

    id: str
    text: str
    images: tuple[str, ...]
    image_refs: tuple[str, ...]  # the images as the record names them (relative to the record file)
    ground_truth: str
    is_sufficient: bool
    bare_question: bool = False  # True: `text` is a bare question that the evidence template wraps

    @property
    def gold_answer(self) -> str:
        return (extract_block(self.ground_truth, "answer") or "").strip()


def parse_rl_record(row: dict[str, Any], root: Path, where: str) -> RLPrompt:
    """An `rl.jsonl` row → RLPrompt, its text as the record holds it (`rl_user_text`). `is_sufficient` defaults to
    "the gold answer is not 'insufficient to answer'"."""
    images = row.get("image")
    if not isinstance(images, list) or not images:
        raise BadRecordError(f"{where}: an RL record needs 'prompt' (string), 'image' (non-empty list), 'answer'")
    check_rl_record(row, where)
    text, bare = rl_user_text(row)
    answer = str(row["answer"])
    paths = tuple(str(resolve_image_path(root, ref, where)) for ref in images)
    sufficient = row.get("is_sufficient")
    if not isinstance(sufficient, bool):
        gold = (extract_block(answer, "answer") or "").strip()
        sufficient = gold.lower() != INSUFFICIENT_ANSWER
    return RLPrompt(str(row.get("id", where)), str(text), paths, tuple(images), answer, sufficient, bare)


TrainRecord = TypeVar("TrainRecord", Conversation, RLPrompt)


def load_rl_prompts(path: Path, bad: BadRecords | None = None) -> list[RLPrompt]:
    """Every valid record of an RL file, its images checked; a bad record raises BadRecordError naming file:line,
    or is left out and counted in `bad` under the `skip` policy."""
    return read_records(path, _images_checked(parse_rl_record, path.parent), bad)


def _images_checked(
    parse: Callable[[dict[str, Any], Path, str], TrainRecord], root: Path
) -> Callable[[dict[str, Any], str], TrainRecord]:
    """`parse` of a row under `root`, then each of its images decoded: a missing, damaged or oversized image fails
    here, with its record, and not deep inside a training batch."""

    def parse_checked(row: dict[str, Any], where: str) -> TrainRecord:
        record = parse(row, root, where)
        for image in record.images:
            check_image(image, where)
        return record

    return parse_checked

"""Conversion of hub snapshots (test sets here; training data in `convert_train`) into the project's format.

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
  "We upload a temporary EVisRAG-Train" at `hmhm1229/EVisRAG-Train` (`snapshot.HUB_TRAIN_MIRROR`), so
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
  `train/rl_val.jsonl` (schema.RL_VAL_FILE, same record shape as `rl.jsonl`; counted under the manifest's
  `validation_counts`) instead of being mixed into training.
- Images: see `evisrag_core.data.image_store`.
- SFT records are converted to `{"id", "messages": [{"role", "content"}], "images"}` with the roles `system`,
  `user`, `assistant` (sharegpt `from`/`value` with `human`/`gpt` and a `dataset_info.json` column/tag mapping are
  understood; a `system` column or a first `system` turn becomes the record's system turn, which SFT keeps). User
  texts are kept verbatim, `<image>` markers where they stand (image i goes to marker i). The user turns must hold
  one `<image>` per image in total; when a source has none, they are appended to the first user turn (the prompt
  text comes first, then the images). RL prompts are kept verbatim (the whole user text, markers included); a
  prompt with `<image>` placeholders must have one per image. RL answers must be tagged ground truths
  (`<evidence>…</evidence>` and `<answer>…</answer>`).

Everything lands in the layout of `evisrag_core.data.schema`, images under each split's `images/`
(`evisrag_core.data.image_store`).
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from evisrag_core.data.image_store import ImageResolver
from evisrag_core.data.schema import TEST_FILE, parse_test_record
from evisrag_core.data.sources import (
    RECORD_SUFFIXES,
    TEST_KEYS,
    base_folder,
    extra_fields,
    record_columns,
    require_unique,
    snapshot_files,
    source_rows,
)
from evisrag_core.io import BadRecordError, write_jsonl_atomic

logger = logging.getLogger(__name__)


def _test_record_files(snapshot_dir: Path) -> list[Path]:
    named = [p for p in snapshot_files(snapshot_dir, {".jsonl"}) if p.name == TEST_FILE]
    if len(named) > 1:
        raise BadRecordError(f"{snapshot_dir}: several {TEST_FILE} files {named}; point at one test set folder")
    if named:
        return named
    found = [p for p in snapshot_files(snapshot_dir, RECORD_SUFFIXES) if record_columns(p) >= TEST_KEYS]
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
        **extra_fields(row, known),
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
    resolver = ImageResolver(snapshot_dir, out_dir)
    sources: list[tuple[dict[str, Any], list[str], str]] = []
    for path in _test_record_files(snapshot_dir):
        base = base_folder(path, snapshot_dir)
        for where, row in tqdm(source_rows(path), desc=f"records {path.name}"):
            entries = row.get("image", row.get("images"))
            images = resolver.resolve(entries, base, where)
            text_fields = {k: v for k, v in row.items() if k not in ("image", "images")}  # drop embedded bytes
            positives = _positives_from_pos_imgs(row, entries)
            if positives is not None and "positives" not in row:
                text_fields["positives"] = positives
            sources.append((text_fields, images, where))
    resolver.finish()
    rows = [_test_row(row, images, where) for row, images, where in sources]
    require_unique([str(r["qid"]) for r in rows], [w for _, _, w in sources], "qid")
    write_jsonl_atomic(out_dir / TEST_FILE, rows)
    logger.info("%s: %d questions, %d images", out_dir, len(rows), len(resolver.store.written))
    return len(rows)

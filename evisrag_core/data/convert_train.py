"""Conversion of a training snapshot: SFT conversations to `train/sft.jsonl`, RL records to `train/rl.jsonl` and
(from files named as validation data) `train/rl_val.jsonl`. The hub layout and the assumptions made about it are in
`evisrag_core.data.convert`.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from evisrag_core.data import sources
from evisrag_core.data.image_store import ImageResolver, image_table
from evisrag_core.data.schema import (
    IMAGE_PLACEHOLDER,
    RL_FILE,
    RL_VAL_FILE,
    SFT_FILE,
    check_rl_record,
    check_sft_record,
)
from evisrag_core.io import BadRecordError, write_jsonl_atomic

logger = logging.getLogger(__name__)

_VALIDATION_WORDS = {"test", "val", "valid", "validation", "dev", "eval"}
_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}


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
    for info in sources.snapshot_files(snapshot_dir, {".json"}):
        if info.name != "dataset_info.json":
            continue
        entries = json.loads(info.read_text(encoding="utf-8"))
        for name, entry in entries.items():
            target = info.parent / str(entry.get("file_name", ""))
            if "file_name" not in entry or not target.exists():
                logger.warning("%s: dataset %r names no file present in the snapshot; skipped", info, name)
                continue
            files = sources.snapshot_files(target, sources.RECORD_SUFFIXES) if target.is_dir() else [target]
            mapping.update({f: _SftColumns.from_entry(entry) for f in files})
    return mapping


def _is_validation(path: Path) -> bool:
    return bool(set(re.split(r"[^a-z0-9]+", path.stem.lower())) & _VALIDATION_WORDS)


def _train_files(snapshot_dir: Path) -> dict[str, list[tuple[Path, _SftColumns | None]]]:
    """Record files of a train snapshot grouped by output file (sft.jsonl, rl.jsonl, rl_val.jsonl)."""
    sft = _dataset_info(snapshot_dir)
    groups: dict[str, list[tuple[Path, _SftColumns | None]]] = defaultdict(list)
    for path in sources.snapshot_files(snapshot_dir, sources.RECORD_SUFFIXES):
        if path.name == "dataset_info.json" or (path.suffix == ".parquet" and image_table(path)):
            continue
        keys = set() if path in sft else sources.record_columns(path)
        if path in sft or keys & sources.SFT_KEYS:
            groups[SFT_FILE].append((path, sft.get(path, _SftColumns())))
        elif keys >= sources.RL_KEYS:
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


def _sft_record(row: dict[str, Any], record_id: str, images: list[str], columns: _SftColumns, where: str) -> dict:
    messages = _messages(row, columns, where)
    user_turns = [m for m in messages if m["role"] == "user"]
    if user_turns and not any(IMAGE_PLACEHOLDER in m["content"] for m in user_turns):
        user_turns[0]["content"] += IMAGE_PLACEHOLDER * len(images)
    record = {"id": record_id, "messages": messages, "images": images}
    check_sft_record(record, where)
    return record


def _rl_record(row: dict[str, Any], record_id: str, images: list[str], where: str) -> dict[str, Any]:
    answer = row.get("answer")
    if isinstance(answer, list) and len(answer) == 1:
        answer = answer[0]
    known = {"id", "prompt", "image", "images", "answer"}
    record = {
        "id": record_id,
        "prompt": row.get("prompt"),
        "image": images,
        "answer": answer,
        **sources.extra_fields(row, known),
    }
    check_rl_record(record, where)
    return record


def _convert_train_file(
    path: Path, columns: _SftColumns | None, root: Path, resolver: ImageResolver
) -> tuple[list[dict[str, Any]], list[str]]:
    records, wheres = [], []
    base = sources.base_folder(path, root)
    image_key = columns.images if columns else "image"
    for index, (where, row) in enumerate(tqdm(sources.source_rows(path), desc=f"records {path.name}"), start=1):
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
        raise BadRecordError(f"{snapshot_dir}: no SFT or RL training records found (see evisrag_core.data.convert)")
    resolver = ImageResolver(snapshot_dir, out_dir)
    converted: dict[str, list[dict[str, Any]]] = {}
    for file_name, files in groups.items():
        records, wheres = [], []
        for path, columns in files:
            more, more_wheres = _convert_train_file(path, columns, snapshot_dir, resolver)
            records += more
            wheres += more_wheres
        sources.require_unique([r["id"] for r in records], wheres, "id")
        converted[file_name] = records
    resolver.finish()
    for file_name, records in converted.items():
        write_jsonl_atomic(out_dir / file_name, records)
    counts = {file_name: len(records) for file_name, records in converted.items()}
    logger.info("%s: %s, %d images", out_dir, counts, len(resolver.store.written))
    return counts

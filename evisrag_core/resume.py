"""Resume only a run of the same configuration: a fingerprint of its inputs guards each checkpoint folder.

SFT and RS-GRPO resume from the newest checkpoint in their `checkpoint_dir` after a kill. That folder outlives the
run: without a guard, a later run with other params (`dvc exp run -S rsgrpo.mode=grpo`) or another start model
would "resume" the finished checkpoint of the earlier run and hand DVC its model under the new params. So each
folder holds `run_fingerprint.json`: the stage's params (without the keys that only say where and how often to
write), the seed and a cheap fingerprint of the start model and the training file. A folder whose fingerprint
differs, or that has checkpoints but no fingerprint, is emptied (a warning names what changed) and the run starts
from the start model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from evisrag_core.io import write_json_atomic

log = logging.getLogger(__name__)
T = TypeVar("T")
FINGERPRINT_FILE = "run_fingerprint.json"
_EDGE_BYTES = 1 << 20
# Model files whose content identifies a start model; weights are fingerprinted by size and edges (7B shards are
# gigabytes: hashing them whole on every start would cost minutes).
_MODEL_FILES = ("config.json", "tokenizer.json", "preprocessor_config.json")


def file_fingerprint(path: Path) -> str:
    """sha256 of a file's size, first and last MiB: cheap on multi-GB weights, and any retrained model differs."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    digest.update(str(size).encode())
    with path.open("rb") as handle:
        digest.update(handle.read(_EDGE_BYTES))
        if size > _EDGE_BYTES:
            handle.seek(max(_EDGE_BYTES, size - _EDGE_BYTES))
            digest.update(handle.read())
    return digest.hexdigest()


def input_fingerprint(path: Path) -> dict[str, str]:
    """A file's fingerprint, or a model folder's: its config/tokenizer files and every safetensors file."""
    if path.is_file():
        return {path.name: file_fingerprint(path)}
    if not path.is_dir():
        return {}
    files = [path / name for name in _MODEL_FILES if (path / name).is_file()] + sorted(path.glob("*.safetensors"))
    return {file.name: file_fingerprint(file) for file in files}


def run_fingerprint(params: dict[str, Any], seed: int, inputs: dict[str, Path]) -> dict[str, Any]:
    return {
        "params": params,
        "seed": seed,
        "inputs": {name: input_fingerprint(Path(path)) for name, path in sorted(inputs.items())},
    }


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    old_params, new_params = old.get("params", {}), new["params"]
    keys = sorted(old_params.keys() | new_params.keys())
    changed = [f"params.{k}" for k in keys if old_params.get(k) != new_params.get(k)]
    return changed + [k for k in ("seed", "inputs") if old.get(k) != new[k]]


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def guard_checkpoint_dir(checkpoint_dir: Path, fingerprint: dict[str, Any]) -> bool:
    """True when `checkpoint_dir` may be resumed from (it belongs to this configuration). Otherwise the main
    process empties it and records the new fingerprint; returns False. Call it before looking for checkpoints."""
    stored_file = checkpoint_dir / FINGERPRINT_FILE
    stored = None
    if stored_file.is_file():
        try:
            stored = json.loads(stored_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            stored = None  # torn or unreadable: treat as foreign
    if not isinstance(stored, dict):
        stored = None
    if stored == fingerprint:
        return True
    if not _is_main_process():
        return False
    leftovers = [p for p in checkpoint_dir.iterdir() if p.name != FINGERPRINT_FILE] if checkpoint_dir.is_dir() else []
    if leftovers:
        reason = ", ".join(_differences(stored, fingerprint)) if stored else "no run fingerprint"
        log.warning("%s holds checkpoints of another configuration (%s): starting over", checkpoint_dir, reason)
        for path in leftovers:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stored_file, fingerprint)
    return False


def fingerprinted_checkpoint(
    checkpoint_dir: Path,
    params: dict[str, Any],
    seed: int,
    inputs: dict[str, Path],
    latest: Callable[[Path], T | None],
) -> T | None:
    """`latest(checkpoint_dir)` (the stage's own finder of its newest complete checkpoint) when the folder belongs
    to this run's fingerprint, else None after guard_checkpoint_dir has emptied it."""
    if not guard_checkpoint_dir(checkpoint_dir, run_fingerprint(params, seed, inputs)):
        return None
    return latest(checkpoint_dir)

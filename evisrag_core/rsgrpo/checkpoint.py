"""RS-GRPO checkpoints: resumable runs that continue bit for bit.

Every `save_every` steps a checkpoint `step-NNNNNN` (weights as safetensors with the processor, optimizer, RNG states,
step and prompt cursor) is written atomically to checkpoint_dir; a new run resumes from the latest one when the
folder belongs to its configuration (same params, seed, start model and prompts) and continues exactly (same
weights, bit for bit on CPU). `run.update` decides who writes what (one process, or one optimizer partition per
rank under DeepSpeed).
"""

from __future__ import annotations

import functools
import json
import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evisrag_core.config import RSGRPOParams
from evisrag_core.io import write_json_atomic
from evisrag_core.resume import fingerprinted_checkpoint
from evisrag_core.rsgrpo.state import Run
from evisrag_core.rsgrpo.step import OPTIMIZER_FILE

log = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^step-(\d+)$")

# Keys that only say where and how often to write: changing them keeps a run's checkpoints resumable.
RSGRPO_WRITE_ONLY_KEYS = {
    "out_dir",
    "checkpoint_dir",
    "log_file",
    "val_log_file",
    "val_sampled_log_file",
    "report_dir",
    "save_every",
    "save_total_limit",
    "report_every",
    "report_rollouts",
}


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as JSON-able lists (no pickles to load back)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [kind, keys.tolist(), position, has_gauss, cached],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step (a checkpoint is renamed into place only when complete)."""
    if not checkpoint_dir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in checkpoint_dir.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()]
    return max(found)[1] if found else None


def resumable_checkpoint(cfg: RSGRPOParams, rl_file: Path, seed: int) -> Path | None:
    """The checkpoint to resume from: the latest one, if `cfg.checkpoint_dir` belongs to this configuration (same
    params, seed, start model and prompts; evisrag_core.resume), else None (the folder is emptied)."""
    params = cfg.model_dump(mode="json", exclude=RSGRPO_WRITE_ONLY_KEYS)
    inputs = {"model": Path(cfg.model_dir), "prompts": Path(rl_file)}
    return fingerprinted_checkpoint(Path(cfg.checkpoint_dir), params, seed, inputs, latest_checkpoint)


def save_checkpoint(run: Run) -> Path:
    """Model (safetensors + processor), optimizer, RNG states and data position of the finished step, atomically;
    only the newest save_total_limit checkpoints are kept."""
    checkpoint_dir = Path(run.cfg.checkpoint_dir)
    target = checkpoint_dir / f"step-{run.step:06d}"
    if not run.update.save_checkpoint(target, functools.partial(write_checkpoint, run)):
        return target
    done = sorted(p for p in checkpoint_dir.iterdir() if _CHECKPOINT.match(p.name))
    for old in done[: -run.cfg.save_total_limit]:
        shutil.rmtree(old)
    log.info("checkpoint %s", target)
    return target


def write_checkpoint(run: Run, folder: Path, optimizer: bool = True) -> None:
    run.policy.save_pretrained(folder / "model", safe_serialization=True)
    run.processor.save_pretrained(folder / "model")  # a checkpoint's model folder loads like any model
    if optimizer:
        torch.save(run.optimizer.state_dict(), folder / OPTIMIZER_FILE)
    state = {"step": run.step, "cursor": run.cursor, "rng": rng_state(), "params": run.cfg.model_dump()}
    write_json_atomic(folder / "state.json", state)


def load_checkpoint_state(path: Path) -> dict[str, Any]:
    with (path / "state.json").open(encoding="utf-8") as handle:
        return json.load(handle)


def restore(run: Run, path: Path, state: dict[str, Any]) -> None:
    """Optimizer, RNG and data position of a checkpoint (its weights were loaded with the policy)."""
    run.update.load_checkpoint(run, path)
    run.step, run.cursor = state["step"], state["cursor"]
    set_rng_state(state["rng"])
    changed = sorted(k for k, v in state["params"].items() if run.cfg.model_dump().get(k) != v)
    if changed:
        log.warning("resuming %s with changed rsgrpo params: %s", path, ", ".join(changed))

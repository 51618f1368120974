"""Dry-run of an SFT configuration: build every config object and the launch command, and refuse inconsistencies.

The paper profile (8 GPUs, ZeRO-3, bf16) cannot run on a CPU machine, but everything that would go wrong before the
first step can be checked here: the DeepSpeed JSON, the batch arithmetic, the schedule against the data size, the
image/cut-off budget, and the TrainingArguments the Trainer would receive.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evisrag_core.config import DEFAULT_PARAMS, MERGED_PATCH_PIXELS, Params, PlanError, SFTParams
from evisrag_core.data.schema import SFT_FILE
from evisrag_core.io import count_rows

MAX_IMAGES = 5


@dataclass
class SFTPlan:
    world_size: int
    global_batch: int
    steps: int | None
    deepspeed: dict[str, Any] | None
    training_arguments: dict[str, Any]
    launch_command: str
    notes: list[str] = field(default_factory=list)


def launch_command(cfg: SFTParams, params_file: str = str(DEFAULT_PARAMS)) -> str:
    base = ["-m", "flows.cli", "--params", params_file, "sft"]
    if cfg.num_gpus == 1 and not cfg.deepspeed:
        return shlex.join(["evisrag", "--params", params_file, "sft"])
    return shlex.join(["torchrun", f"--nproc_per_node={cfg.num_gpus}", *base])


def _check_deepspeed(cfg: SFTParams, problems: list[str]) -> dict[str, Any] | None:
    if not cfg.deepspeed:
        return None
    path = Path(cfg.deepspeed)
    if not path.is_file():
        problems.append(f"sft.deepspeed: {path} not found (configs/deepspeed/zero2.json and zero3.json ship with us)")
        return None
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        problems.append(f"sft.deepspeed: {path} is not valid JSON ({err})")
        return None
    stage = ds.get("zero_optimization", {}).get("stage")
    if stage not in (0, 1, 2, 3):
        problems.append(f"{path}: zero_optimization.stage must be 0-3, got {stage!r}")
    expected = {
        "train_micro_batch_size_per_gpu": cfg.per_device_train_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "train_batch_size": cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * cfg.num_gpus,
        "gradient_clipping": cfg.max_grad_norm,
    }
    for key, want in expected.items():
        if key in ds and ds[key] != "auto" and ds[key] != want:
            problems.append(f'{path}: {key}={ds[key]} but params give {want}; set it to "auto" or match params')
    bf16 = ds.get("bf16", {}).get("enabled")
    fp16 = ds.get("fp16", {}).get("enabled")
    if fp16 is True and cfg.bf16 == "on":
        problems.append(f"{path}: fp16 enabled while sft.bf16 is on; use one precision")
    if bf16 is True and cfg.bf16 == "off":
        problems.append(f"{path}: bf16 enabled while sft.bf16 is off")
    return ds


def _training_arguments(cfg: SFTParams, seed: int) -> dict[str, Any]:
    """The TrainingArguments the Trainer gets; DeepSpeed itself is only initialised by a real launch."""
    from evisrag_core.sft.train import training_arguments

    args = training_arguments(cfg.model_copy(update={"deepspeed": None, "bf16": "off"}), seed)
    built = args.to_dict()
    built.update(deepspeed=cfg.deepspeed, bf16=cfg.bf16 != "off")
    return built


def plan_sft(
    cfg: SFTParams,
    seed: int,
    n_examples: int | None,
    images_per_example: int = 3,
    params_file: str = str(DEFAULT_PARAMS),
) -> SFTPlan:
    """Check `cfg` and return what a launch would run (with `--params params_file`); raises PlanError listing every
    problem found."""
    problems: list[str] = []
    ds = _check_deepspeed(cfg, problems)
    global_batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * cfg.num_gpus
    steps = None
    if cfg.max_steps > 0:
        steps = cfg.max_steps
    elif n_examples is not None:
        steps = math.ceil(cfg.num_train_epochs * math.ceil(n_examples / global_batch))
    if steps is not None and cfg.warmup_steps >= steps:
        problems.append(f"sft.warmup_steps={cfg.warmup_steps} ≥ the {steps} optimiser steps: the lr never peaks")
    image_tokens = images_per_example * cfg.image_max_pixels // MERGED_PATCH_PIXELS
    if image_tokens >= cfg.cutoff_len:
        problems.append(
            f"{images_per_example} images at sft.image_max_pixels={cfg.image_max_pixels} take up to {image_tokens} "
            f"tokens, not below sft.cutoff_len={cfg.cutoff_len}"
        )
    if cfg.num_gpus > 1 and not cfg.deepspeed:
        problems.append("sft.num_gpus > 1 without sft.deepspeed: a 7B full fine-tune needs ZeRO (zero3.json)")
    if cfg.save_steps and steps is not None and cfg.save_steps > steps:
        problems.append(f"sft.save_steps={cfg.save_steps} > {steps} steps: no checkpoint would be written")
    if problems:
        raise PlanError("SFT configuration is inconsistent:\n  - " + "\n  - ".join(problems))
    notes = [
        f"global batch {global_batch} = {cfg.per_device_train_batch_size} per device × "
        f"{cfg.gradient_accumulation_steps} accumulation × {cfg.num_gpus} GPU(s)"
    ]
    if ds is not None:
        notes.append(f"DeepSpeed ZeRO-{ds['zero_optimization']['stage']} from {cfg.deepspeed}")
    launch = launch_command(cfg, params_file)
    return SFTPlan(cfg.num_gpus, global_batch, steps, ds, _training_arguments(cfg, seed), launch, notes)


def plan_from_params(params: Params, params_file: str) -> SFTPlan:
    """`evisrag sft --dry-run`: the plan of params.sft against the dataset the download stage wrote, if any."""
    n_examples = count_rows(Path(params.data.out_dir) / "train" / SFT_FILE)
    return plan_sft(params.sft, params.seed, n_examples, params.data.embedded.images_per_question, params_file)

"""Dry-run of an RS-GRPO configuration: build every config object and the launch command, refuse inconsistencies.

The paper profile (`rsgrpo.profile: paper`: 8 ranks, ZeRO-2, bf16, spec §5's released settings) cannot run on a CPU
machine, but what would go wrong before or during the first step can be checked here: how the rollout batch splits
over ranks and micro-batches, the DeepSpeed JSON the engine would get, the clip and reward-length settings, the KL
reference, the image-token budget of a prompt, and the step count from epochs and the data size. Nothing is loaded:
no model, no DeepSpeed, no vLLM (its engine arguments are built as plain data).
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evisrag_core.config import DEFAULT_PARAMS, MERGED_PATCH_PIXELS, Params, PlanError, RSGRPOParams
from evisrag_core.data.schema import RL_FILE
from evisrag_core.io import count_rows
from evisrag_core.rsgrpo.distributed import check_layout, deepspeed_config, micro_batch_size, responses_per_rank
from evisrag_core.rsgrpo.rollout import vllm_engine_args
from evisrag_core.vllm_engine.client import vllm_python_path

__all__ = ["PlanError", "RSGRPOPlan", "launch_command", "plan_from_params", "plan_rsgrpo"]


@dataclass
class RSGRPOPlan:
    world_size: int
    rollout_batch: int  # prompt groups per step
    responses_per_step: int  # rollout_batch × n: the actor's global batch
    responses_per_rank: int
    micro_batch: int  # responses per forward/backward on a rank
    micro_batches_per_rank: int  # DeepSpeed's gradient_accumulation_steps
    train_prompts: int | None
    steps: int | None
    deepspeed: dict[str, Any] | None
    vllm_engine_args: dict[str, Any]
    sampling: dict[str, Any]
    launch_command: str
    notes: list[str] = field(default_factory=list)


def launch_command(cfg: RSGRPOParams, params_file: str = str(DEFAULT_PARAMS)) -> str:
    if cfg.num_gpus == 1 and not cfg.deepspeed:
        return shlex.join(["evisrag", "--params", params_file, "rsgrpo"])
    return shlex.join(
        ["torchrun", f"--nproc_per_node={cfg.num_gpus}", "-m", "flows.cli", "--params", params_file, "rsgrpo"]
    )


def _check_deepspeed(cfg: RSGRPOParams, layout_ok: bool, problems: list[str]) -> dict[str, Any] | None:
    """The DeepSpeed JSON exactly as rsgrpo.distributed fills it for the engine; mismatches and ZeRO-3 are problems."""
    if not cfg.deepspeed:
        if cfg.num_gpus > 1:
            problems.append("rsgrpo.num_gpus > 1 without rsgrpo.deepspeed: set configs/deepspeed/zero2.json")
        return None
    if cfg.rollout_seeding != "group":
        problems.append("rsgrpo.deepspeed needs rsgrpo.rollout_seeding: group")
    path = Path(cfg.deepspeed)
    if not path.is_file():
        problems.append(f"rsgrpo.deepspeed: {path} not found (configs/deepspeed/zero2.json ships with us)")
        return None
    if not layout_ok:
        return None  # the batch entries are undefined until the split is fixed
    try:
        ds = deepspeed_config(cfg, cfg.num_gpus, bf16=cfg.bf16 != "off")
    except json.JSONDecodeError as err:
        problems.append(f"rsgrpo.deepspeed: {path} is not valid JSON ({err})")
        return None
    except ValueError as err:
        problems.append(str(err))
        return None
    if ds.get("fp16", {}).get("enabled") is True:
        problems.append(f"{path}: fp16 is not supported by the RS-GRPO loop (no loss scaling); use bf16")
    return ds


def _check_update(cfg: RSGRPOParams, problems: list[str]) -> None:
    if cfg.n < 2:
        problems.append(f"rsgrpo.n={cfg.n}: the group std (Bessel) needs at least 2 rollouts per prompt")
    if not 0.0 <= cfg.clip_low < 1.0:
        problems.append(f"rsgrpo.clip_low={cfg.clip_low} must be in [0, 1): the ratio is clipped at 1 - clip_low")
    if cfg.clip_high < 0.0:
        problems.append(f"rsgrpo.clip_high={cfg.clip_high} must be ≥ 0")
    if cfg.dual_clip <= 1.0 + cfg.clip_high:
        problems.append(
            f"rsgrpo.dual_clip={cfg.dual_clip} must exceed 1 + clip_high = {1.0 + cfg.clip_high}: below it the "
            "dual clip bounds negative-advantage tokens inside the ordinary clip range"
        )
    if cfg.filter_low >= cfg.filter_high:
        problems.append(f"rsgrpo.filter_low={cfg.filter_low} ≥ filter_high={cfg.filter_high}: no group can be kept")
    longest = cfg.max_prompt_length + cfg.max_new_tokens
    if cfg.micro_batch_tokens and cfg.micro_batch_tokens < longest:
        problems.append(
            f"rsgrpo.micro_batch_tokens={cfg.micro_batch_tokens} < max_prompt_length + max_new_tokens = {longest}: "
            "the longest prompt + response would not fit one micro-batch (the reference's budget is that sum)"
        )


def _check_lengths(cfg: RSGRPOParams, images: int, problems: list[str]) -> None:
    """The overlong reward (spec §4) against the generation budget, and a prompt's image tokens."""
    if cfg.min_length >= cfg.max_length - cfg.buffer_length:
        problems.append(
            f"rsgrpo.min_length={cfg.min_length} ≥ max_length - buffer_length = {cfg.max_length - cfg.buffer_length}: "
            "no response length earns the overlong reward's 0"
        )
    if cfg.max_new_tokens < cfg.min_length:
        problems.append(
            f"rsgrpo.max_new_tokens={cfg.max_new_tokens} < min_length={cfg.min_length}: every response is too short "
            "and overlong is a constant -1"
        )
    if cfg.max_new_tokens > cfg.max_length:
        problems.append(
            f"rsgrpo.max_new_tokens={cfg.max_new_tokens} > max_length={cfg.max_length}: the extra tokens can only "
            "earn overlong -1 (the reference generates at most max_length)"
        )
    image_tokens = images * cfg.image_max_pixels // MERGED_PATCH_PIXELS
    if image_tokens >= cfg.max_prompt_length:
        problems.append(
            f"{images} images at rsgrpo.image_max_pixels={cfg.image_max_pixels} take up to {image_tokens} tokens, "
            f"not below rsgrpo.max_prompt_length={cfg.max_prompt_length}"
        )


def _check_reference(cfg: RSGRPOParams, produced: set[str], problems: list[str]) -> None:
    """kl_coef > 0 loads the start model (model_dir) as the frozen reference π_ref on every rank."""
    if cfg.kl_coef <= 0:
        return
    if not cfg.model_dir or not (Path(cfg.model_dir).is_dir() or cfg.model_dir in produced):
        problems.append(
            f"rsgrpo.kl_coef={cfg.kl_coef} needs a reference model: rsgrpo.model_dir={cfg.model_dir!r} is neither a "
            f"folder nor written by an earlier stage ({', '.join(sorted(produced)) or 'none'})"
        )


def train_prompt_count(cfg: RSGRPOParams, n_prompts: int | None, separate_val_file: bool) -> int | None:
    if n_prompts is None:
        return None
    return n_prompts if separate_val_file else n_prompts - cfg.val_size


def plan_rsgrpo(
    cfg: RSGRPOParams,
    seed: int,
    n_prompts: int | None,
    images_per_prompt: int = 3,
    separate_val_file: bool = False,
    produced_dirs: tuple[str, ...] = ("models/sft", "models/base"),
    params_file: str = str(DEFAULT_PARAMS),
) -> RSGRPOPlan:
    """Check `cfg` and return what a launch would run; raises PlanError listing every problem found.

    n_prompts: rows of rl.jsonl (None when the data is not there yet); separate_val_file: rl_val.jsonl exists, so
    validation prompts are not held out of rl.jsonl; produced_dirs: model folders earlier stages write; params_file:
    what the launch command passes as `--params`."""
    problems: list[str] = []
    problems.extend(check_layout(cfg, cfg.num_gpus))
    per_rank = responses_per_rank(cfg, cfg.num_gpus)
    micro = micro_batch_size(cfg, cfg.num_gpus)
    ds = _check_deepspeed(cfg, not problems, problems)
    _check_update(cfg, problems)
    _check_lengths(cfg, images_per_prompt, problems)
    _check_reference(cfg, set(produced_dirs), problems)
    train_prompts = train_prompt_count(cfg, n_prompts, separate_val_file)
    if train_prompts is not None and train_prompts < cfg.rollout_batch_size:
        problems.append(
            f"{train_prompts} training prompts, fewer than rsgrpo.rollout_batch_size={cfg.rollout_batch_size}"
        )
    steps: int | None = cfg.steps
    if cfg.epochs is not None:
        steps = math.ceil(cfg.epochs * train_prompts / cfg.rollout_batch_size) if train_prompts else None
    if steps is not None and cfg.save_every > steps:
        problems.append(f"rsgrpo.save_every={cfg.save_every} > {steps} steps: only the final checkpoint is written")
    if problems:
        raise PlanError("RS-GRPO configuration is inconsistent:\n  - " + "\n  - ".join(problems))

    packing = (
        f"packed into micro-batches by {cfg.micro_batch_tokens} prompt + response tokens"
        if cfg.micro_batch_tokens
        else f"in {per_rank // micro} micro-batch(es) of {micro}"
    )
    notes = [
        f"actor batch {cfg.rollout_batch_size * cfg.n} = {cfg.rollout_batch_size} prompts × n {cfg.n}; per rank "
        f"{per_rank} responses {packing}; one update per rollout batch",
        f"estimator {cfg.mode}" + (f", span masks {cfg.span_masks}" if cfg.mode == "rsgrpo" else ""),
        f"seed {seed}: rollouts seeded per {'prompt group' if cfg.rollout_seeding == 'group' else 'rollout batch'}",
    ]
    if ds is not None:
        notes.append(f"DeepSpeed ZeRO-{ds['zero_optimization']['stage']} from {cfg.deepspeed}")
    if cfg.epochs is not None and steps is None:
        notes.append(
            f"steps = ceil({cfg.epochs} epochs × training prompts / {cfg.rollout_batch_size}): no rl.jsonl yet"
        )
    vllm_installed = vllm_python_path().exists()
    notes.append(
        f"rollout backend {cfg.rollout_backend}; vLLM's environment is "
        f"{'built' if vllm_installed else 'not built (make vllm-env)'}"
        + ("" if cfg.rollout_backend == "vllm" else " (the reference samples with vLLM: rsgrpo.rollout_backend=vllm)")
    )
    sampling = {
        "train": {"n": cfg.n, "temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_new_tokens},
        "validation": {"n": 1, "temperature": cfg.val_temperature, "top_p": cfg.val_top_p, "every": cfg.val_every},
    }
    return RSGRPOPlan(
        world_size=cfg.num_gpus,
        rollout_batch=cfg.rollout_batch_size,
        responses_per_step=cfg.rollout_batch_size * cfg.n,
        responses_per_rank=per_rank,
        micro_batch=micro,
        micro_batches_per_rank=per_rank // micro,
        train_prompts=train_prompts,
        steps=steps,
        deepspeed=ds,
        vllm_engine_args=vllm_engine_args(cfg.model_dir, cfg.max_prompt_length + cfg.max_new_tokens),
        sampling=sampling,
        launch_command=launch_command(cfg, params_file),
        notes=notes,
    )


def plan_from_params(params: Params, params_file: str) -> RSGRPOPlan:
    """`evisrag rsgrpo --dry-run`: the plan of params.rsgrpo against the dataset the download stage wrote, if any."""
    n_prompts = count_rows(Path(params.data.out_dir) / "train" / RL_FILE)
    images = params.data.embedded.images_per_question
    return plan_rsgrpo(params.rsgrpo, params.seed, n_prompts, images, params_file=params_file)

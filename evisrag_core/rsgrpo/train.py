"""The RS-GRPO stage (the algorithm: evisrag_core/rsgrpo/__init__.py): build a run, loop the step, save the model.

`build_run` loads the policy (from the latest resumable checkpoint when there is one), its optimizer, the frozen
reference when kl_coef > 0, the rollout backend and the prompts, and picks once how a step's work is spread over
processes (`step.LocalUpdate`, or `distributed.DeepSpeedUpdate` under torchrun). `train_rsgrpo` runs
`step.train_step` with validation, HTML reports and checkpoints between steps, then writes the final model.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from evisrag_core.bad_records import BadRecords
from evisrag_core.config import RSGRPOParams
from evisrag_core.io import atomic_dir
from evisrag_core.rsgrpo import distributed
from evisrag_core.rsgrpo.checkpoint import load_checkpoint_state, restore, resumable_checkpoint, save_checkpoint
from evisrag_core.rsgrpo.prompt_stream import split_prompts
from evisrag_core.rsgrpo.report import report_samples, write_step_report
from evisrag_core.rsgrpo.rollout import PromptEncoder, TransformersRollout
from evisrag_core.rsgrpo.spans import span_locator, tag_token_ids
from evisrag_core.rsgrpo.state import Run, UpdateStrategy
from evisrag_core.rsgrpo.step import LocalUpdate, train_step
from evisrag_core.rsgrpo.validate import validate

log = logging.getLogger(__name__)

OnStep = Callable[[int, dict[str, float]], None]


def prompt_encoder(processor: Any, cfg: RSGRPOParams) -> PromptEncoder:
    """The stage's prompt encoding: its template, image pixel bounds, prompt length limit and what exceeds it."""
    pixels = (cfg.image_min_pixels, cfg.image_max_pixels)
    return PromptEncoder(processor, cfg.prompt_template, pixels, cfg.max_prompt_length, cfg.prompt_truncation)


def total_steps(cfg: RSGRPOParams, n_train_prompts: int) -> int:
    if cfg.epochs is None:
        return cfg.steps
    return math.ceil(cfg.epochs * n_train_prompts / cfg.rollout_batch_size)


def build_run(
    cfg: RSGRPOParams, rl_file: Path, seed: int, trust_remote_code: bool = False, bad: BadRecords | None = None
) -> Run:
    """Load the policy (from the latest checkpoint when there is one), the optimizer and the prompts."""
    from transformers import set_seed

    from evisrag_core.modeling import freeze_vision_tower, load_model_and_processor, use_bf16

    set_seed(seed)
    checkpoint = resumable_checkpoint(cfg, rl_file, seed)
    dtype = torch.bfloat16 if use_bf16(cfg.bf16) else torch.float32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    load = functools.partial(load_model_and_processor, trust_remote_code=trust_remote_code, dtype=dtype, device=device)
    policy, processor = load(checkpoint / "model" if checkpoint else cfg.model_dir)  # checkpoints hold the processor
    if cfg.freeze_vision_tower:
        log.info("vision tower frozen (%d parameters)", freeze_vision_tower(policy))
    if cfg.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(
        [p for p in policy.parameters() if p.requires_grad], lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )
    reference = None
    if cfg.kl_coef > 0:
        reference, _ = load(cfg.model_dir)
        reference.requires_grad_(False)
    encoder = prompt_encoder(processor, cfg)
    rollout: Any
    if cfg.rollout_backend == "vllm":
        from evisrag_core.rsgrpo.vllm_rollout import VllmRollout  # starts an engine under .venv-vllm

        rollout = VllmRollout(cfg.model_dir, policy, processor, encoder, cfg.max_prompt_length + cfg.max_new_tokens)
    else:
        rollout = TransformersRollout(
            policy, processor, encoder, cfg.rollout_decoder, reuse_image_features=cfg.freeze_vision_tower
        )
    train, val = split_prompts(rl_file, cfg.val_size, seed, bad)
    update: UpdateStrategy = LocalUpdate()
    if distributed.use_deepspeed(cfg):
        update = distributed.init_distributed(policy, optimizer, cfg, use_bf16(cfg.bf16), encoder)
    run = Run(cfg, seed, policy, processor, optimizer, rollout, train, val, update, reference)
    run.tag_ids = tag_token_ids(processor.tokenizer)
    if cfg.span_locator != "token_ids":
        run.locate_spans = span_locator(cfg.span_locator, processor.tokenizer)
    if checkpoint:
        restore(run, checkpoint, load_checkpoint_state(checkpoint))
        log.info("resumed from %s (step %d, prompt cursor %d)", checkpoint, run.step, run.cursor)
    return run


def save_final(run: Run) -> Path:
    """Model + processor into out_dir through a staging folder: a killed save never leaves a half model there."""
    out_dir = Path(run.cfg.out_dir)
    with atomic_dir(out_dir) as staging:
        run.policy.save_pretrained(staging, safe_serialization=True)
        run.processor.tokenizer.padding_side = "left"
        run.processor.save_pretrained(staging)
    return out_dir


def train_rsgrpo(
    cfg: RSGRPOParams,
    rl_file: Path,
    seed: int,
    on_step: OnStep = lambda step, metrics: None,
    trust_remote_code: bool = False,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train from cfg.model_dir (or resume from cfg.checkpoint_dir) on the prompts of `rl_file`, then save the final
    model to cfg.out_dir. `on_step(step, metrics)` gets every step's metrics (validation ones too, when it ran).
    `stop_after` ends the run after that many steps without the final save (to test resuming)."""
    bad = BadRecords(cfg.on_bad_record)
    run = build_run(cfg, rl_file, seed, trust_remote_code, bad)
    steps = total_steps(cfg, len(run.train_prompts))
    resumed_at = run.step
    main = run.update.is_main  # on several ranks, rank 0 alone validates, reports and logs
    validating = cfg.val_every > 0 and bool(run.val_prompts) and main
    if validating and run.step == 0:
        on_step(0, validate(run))
    while run.step < steps and (stop_after is None or run.step < stop_after):
        metrics, batch = train_step(run)
        if validating and (run.step % cfg.val_every == 0 or run.step == steps):
            metrics.update(validate(run))
        if main and cfg.report_every and (run.step % cfg.report_every == 0 or run.step == 1):
            samples = report_samples(batch, run.processor.tokenizer, cfg.report_rollouts)
            write_step_report(Path(cfg.report_dir), run.step, samples)
        if main:
            on_step(run.step, metrics)
        if run.step % cfg.save_every == 0 or run.step == steps:
            save_checkpoint(run)
    if stop_after is not None and run.step < steps:
        return {"steps": run.step, "resumed_from_step": resumed_at, "finished": False}
    if main:
        save_final(run)  # ZeRO-2: every rank holds the whole parameters; rank 0 writes them
    run.update.barrier()
    summary = {"steps": run.step, "resumed_from_step": resumed_at, "finished": True, "prompts_drawn": run.cursor}
    return summary | {"skipped_records": bad.count}

"""Stage 1, supervised fine-tuning (spec §6), on transformers' `Trainer`.

What is ours: turning an SFT conversation into model inputs with labels on the assistant tokens only (`sft.data`),
freezing the vision tower, and the training arguments of the embedded default and of the paper profile. Everything
else — optimiser, cosine schedule with warm-up, gradient accumulation, clipping, checkpoints, resume and DeepSpeed
ZeRO — is the Trainer's own.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from evisrag_core.bad_records import BadRecords
from evisrag_core.config import SFTParams
from evisrag_core.data.schema import load_conversations
from evisrag_core.resume import fingerprinted_checkpoint
from evisrag_core.sft.data import SFTCollator

log = logging.getLogger(__name__)


def training_arguments(cfg: SFTParams, seed: int) -> Any:
    from transformers import TrainingArguments

    from evisrag_core.modeling import use_bf16

    return TrainingArguments(
        output_dir=cfg.checkpoint_dir,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        warmup_steps=cfg.warmup_steps,
        lr_scheduler_type=cfg.lr_scheduler_type,
        max_grad_norm=cfg.max_grad_norm,
        bf16=use_bf16(cfg.bf16),
        activation_checkpointing=cfg.gradient_checkpointing,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        report_to="none",
        seed=seed,
        data_seed=seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        deepspeed=cfg.deepspeed,
        # CPU-only with sft.deepspeed under torchrun: accelerate joins the ranks over gloo and the Trainer still hands
        # the model to DeepSpeed, which runs on its CPU accelerator (tests/integration/test_sft_deepspeed.py).
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
    )


def last_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest *complete* `checkpoint-N`: the Trainer writes trainer_state.json last, so a kill mid-save leaves a
    folder without it (or with a torn one), which is skipped rather than resumed from."""
    if not checkpoint_dir.is_dir():
        return None
    candidates = sorted(
        (p for p in checkpoint_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for candidate in candidates:
        try:
            json.loads((candidate / "trainer_state.json").read_text())
        except (OSError, json.JSONDecodeError):
            log.warning("skipping incomplete checkpoint %s (interrupted while saving)", candidate)
            continue
        return str(candidate)
    return None


# Keys that only say where and how often to write: changing them keeps a run's checkpoints resumable.
SFT_WRITE_ONLY_KEYS = {"out_dir", "checkpoint_dir", "log_file", "save_steps", "save_total_limit", "logging_steps"}


def resumable_checkpoint(cfg: SFTParams, sft_file: Path, seed: int) -> str | None:
    """The checkpoint to resume from: the newest complete one, if `cfg.checkpoint_dir` belongs to this configuration
    (same params, seed, start model and data; evisrag_core.resume), else None (the folder is emptied)."""
    params = cfg.model_dump(mode="json", exclude=SFT_WRITE_ONLY_KEYS)
    inputs = {"model": Path(cfg.model_dir), "data": Path(sft_file)}
    return fingerprinted_checkpoint(Path(cfg.checkpoint_dir), params, seed, inputs, last_checkpoint)


def optimizer_steps(n_examples: int, cfg: SFTParams, world_size: int = 1) -> int:
    if cfg.max_steps > 0:
        return cfg.max_steps
    per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world_size
    return math.ceil(cfg.num_train_epochs * math.ceil(n_examples / per_step))


def train_sft(
    cfg: SFTParams,
    sft_file: Path,
    seed: int,
    on_log: Callable[[int, dict[str, float]], None] = lambda step, logs: None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Fine-tune `cfg.model_dir` on `sft_file`; resume from the last checkpoint in `cfg.checkpoint_dir` if any;
    save the final model and processor to `cfg.out_dir`. Returns the training summary."""
    from transformers import TrainerCallback, set_seed

    from evisrag_core.modeling import freeze_vision_tower, load_model_and_processor, require_local_model_dir

    set_seed(seed)
    require_local_model_dir(cfg.model_dir, "evisrag model")
    if cfg.deepspeed and "LOCAL_RANK" not in os.environ:
        raise RuntimeError(
            f"sft.deepspeed is set ({cfg.deepspeed}): launch with a distributed launcher, e.g. "
            f"`torchrun --nproc_per_node={cfg.num_gpus} -m flows.cli sft` (DeepSpeed needs one)"
        )
    model, processor = load_model_and_processor(cfg.model_dir, trust_remote_code=trust_remote_code, dtype=torch.float32)
    processor.tokenizer.padding_side = "right"
    model.train()
    if cfg.freeze_vision_tower:
        log.info("vision tower frozen (%d parameters)", freeze_vision_tower(model))
    bad = BadRecords(cfg.on_bad_record)
    conversations = load_conversations(sft_file, bad)

    class _Relay(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero:
                on_log(state.global_step, {k: float(v) for k, v in logs.items() if isinstance(v, int | float)})

        def on_step_end(self, args, state, control, **kwargs):
            if cfg.stop_at_step is not None and state.global_step >= cfg.stop_at_step:
                control.should_training_stop = True  # the Trainer then saves and returns as at the last step

    trainer = _checkpoint_key_mapping_trainer()(
        model=model,
        args=training_arguments(cfg, seed),
        train_dataset=conversations,
        data_collator=SFTCollator(
            processor, cfg.image_min_pixels, cfg.image_max_pixels, cfg.cutoff_len, cfg.truncation
        ),
        callbacks=[_Relay()],
    )
    resume = resumable_checkpoint(cfg, sft_file, seed)
    if resume:
        log.info("resuming from %s", resume)
    result = trainer.train(resume_from_checkpoint=resume)
    save_final(trainer, processor, Path(cfg.out_dir))
    summary = {"global_step": result.global_step, "train_loss": result.training_loss, "resumed_from": resume}
    return summary | {"skipped_records": bad.count}


def _checkpoint_key_mapping_trainer() -> type:
    from transformers import Trainer

    class CheckpointKeyMappingTrainer(Trainer):
        """Trainer whose resume reloads weights through `from_pretrained`.

        transformers 5.24 saves checkpoints with the legacy Qwen2.5-VL key names (`model.layers.*`, `visual.*`) but
        its resume loads them non-strictly into a model named `model.language_model.*` / `model.visual.*`: no weight
        is restored and only a warning is logged. `from_pretrained` applies the key mapping; the load is strict.
        DeepSpeed and FSDP checkpoints keep the Trainer's own path.
        """

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            if self.is_deepspeed_enabled or self.is_fsdp_enabled:
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            target = model if model is not None else self.model
            saved = type(target).from_pretrained(resume_from_checkpoint, dtype=torch.float32, use_safetensors=True)
            target.load_state_dict(saved.state_dict(), strict=True)
            return None

    return CheckpointKeyMappingTrainer


def save_final(trainer: Any, processor: Any, out_dir: Path) -> None:
    """Save model + processor beside `out_dir`, then swap it in: a kill mid-save never leaves a half model there."""
    staging, old = (out_dir.with_name(f".{out_dir.name}.{suffix}") for suffix in ("saving", "old"))
    if trainer.is_world_process_zero():  # the only writer: drop what a killed save left
        for stale in (staging, old):
            shutil.rmtree(stale, ignore_errors=True)
    trainer.save_model(str(staging))  # every rank takes part (ZeRO-3 gathers the shards)
    if trainer.is_world_process_zero():
        processor.tokenizer.padding_side = "left"
        processor.save_pretrained(str(staging))
        # Old model aside, new one in, old one deleted: a kill leaves out_dir absent or whole, never half-deleted.
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(staging, out_dir)
        shutil.rmtree(old, ignore_errors=True)

"""The two training sections, `sft` and `rsgrpo`, each with a profile (configs/profiles/) it can overlay.

Their code defaults are the values of the repository's params.yaml (tests/unit/test_config.py compares every key),
so `SFTParams()` and `RSGRPOParams()` are the default pipeline's settings and pass their own dry-runs.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from evisrag_core.config.base import ImagePixels, OnBadRecord, PromptTemplate, check_pixel_range
from evisrag_core.config.profiles import ProfiledSection
from evisrag_core.config.reward_components import WEIGHTS

Precision = Literal["auto", "on", "off"]  # bf16: auto uses it where the hardware has it (fp32 on CPU)
# gdpo's weights w_k by default: the overall reward's (3 for accuracy and evidence, 1 for the others; spec §9)
GDPO_WEIGHTS: dict[str, float] = dict(WEIGHTS)


class SFTParams(ProfiledSection):
    """Stage 1: supervised fine-tuning on the evidence conversations (spec §6).

    `profile: paper` applies the released hyper-parameters (8 GPUs, ZeRO-3; configs/profiles/paper.yaml) under the
    keys you set, so one switch (`dvc exp run -S sft.profile=paper`) selects the paper's run; `evisrag sft --dry-run`
    checks it and shows where each value comes from.
    """

    section_name: ClassVar[str] = "sft"
    model_dir: str = "models/base"
    out_dir: str = "models/sft"
    checkpoint_dir: str = "work/sft"
    log_file: str = "plots/sft_loss.json"  # a JSON array: the format DVC plots read
    learning_rate: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    num_train_epochs: float = Field(1.0, gt=0.0)
    max_steps: int = Field(900, ge=-1)  # -1: run num_train_epochs
    # stop after this many optimizer steps, the learning-rate schedule still that of the whole run: a deliberately
    # under-trained model (the RS-GRPO-from-weak-SFT ablation, README); null: train to the end
    stop_at_step: int | None = Field(None, ge=1)
    per_device_train_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    warmup_steps: int = Field(20, ge=0)
    lr_scheduler_type: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    max_grad_norm: float = Field(1.0, gt=0.0)
    freeze_vision_tower: bool = False  # the tiny model's vision tower is random: it must learn colours (paper: true)
    bf16: Precision = "auto"
    gradient_checkpointing: bool = False
    cutoff_len: int = Field(4096, ge=64)
    # a conversation over cutoff_len tokens: error (default) | llamafactory (cut as the reference's LLaMA-Factory
    # does: prompt and answer each on their right; a cut through an image is still an error; evisrag_core/truncation)
    truncation: Literal["error", "llamafactory"] = "error"
    image_min_pixels: ImagePixels = 3136
    image_max_pixels: ImagePixels = 12544
    save_steps: int = Field(50, ge=1)
    save_total_limit: int = Field(2, ge=1)
    logging_steps: int = Field(10, ge=1)
    deepspeed: str | None = None  # path to a DeepSpeed JSON config (configs/deepspeed/zero3.json for the paper)
    num_gpus: int = Field(1, ge=1)  # for the launch command and the global-batch check of the dry-run
    # Not read: an SFT record holds its whole user text, never a bare question to wrap. Kept so that params files
    # naming it stay valid.
    prompt_template: PromptTemplate = "model_card"
    on_bad_record: OnBadRecord = "error"  # error | skip: leave bad sft.jsonl records out, counted (sft.skipped_records)

    @model_validator(mode="after")
    def _consistent(self) -> SFTParams:
        check_pixel_range("sft", "image_", self.image_min_pixels, self.image_max_pixels)
        if self.stop_at_step is not None and 0 < self.max_steps < self.stop_at_step:
            raise ValueError(
                f"sft.stop_at_step ({self.stop_at_step}) is past the end of training (sft.max_steps {self.max_steps}); "
                "lower it or set it to null"
            )
        return self


class RSGRPOParams(ProfiledSection):
    """Stage 2: reward-scoped GRPO from the SFT model (spec §4, §5); read by evisrag_core.rsgrpo.train.

    `mode` picks the estimator (docs/rsgrpo.md): rsgrpo (each component's advantage on its own span), gdpo
    (per-component group normalisation, a weighted sum with `gdpo_weights`, batch whitening, on every response token)
    or grpo (one scalar reward, `overall`, whose advantage covers the whole response). `span_masks: released`
    reproduces the reference's span masks before its commit 6d43409, with which the released checkpoints were trained.
    `profile: paper` applies the released values (8 GPUs in the reference; configs/profiles/paper.yaml) under the
    keys you set.
    """

    section_name: ClassVar[str] = "rsgrpo"
    model_dir: str = "models/sft"
    out_dir: str = "models/rsgrpo"
    checkpoint_dir: str = "work/rsgrpo"
    log_file: str = "plots/rsgrpo.json"  # one row per step: rewards, filtering, clipping, loss (DVC plot)
    val_log_file: str = "plots/rsgrpo_val.json"  # one row per validation: held-out rewards, answer accuracy
    val_sampled_log_file: str = "plots/rsgrpo_val_sampled.json"  # the same at the rollout temperature (val_sampled_n)
    report_dir: str = "reports/rsgrpo"
    mode: Literal["rsgrpo", "gdpo", "grpo"] = "rsgrpo"
    # fixed: one span mask per response (spec §5); released: the pre-6d43409 masks, where only row 0 of each reward
    # call keeps its accuracy and is_think spans (rsgrpo/spans.py)
    span_masks: Literal["fixed", "released"] = "fixed"
    gdpo_weights: dict[str, float] = Field(default_factory=lambda: dict(GDPO_WEIGHTS))  # mode gdpo: w_k
    steps: int = Field(60, ge=1)  # optimizer steps; ignored when `epochs` is set
    epochs: float | None = Field(None, gt=0.0)  # steps = ceil(epochs · train prompts / rollout_batch_size)
    rollout_batch_size: int = Field(16, ge=1)  # prompt groups per step (after filtering)
    n: int = Field(8, ge=2)  # rollouts per prompt; the group std needs at least 2
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(160, ge=1)
    max_prompt_length: int = Field(15000, ge=1)  # longer prompts (text + image tokens): see prompt_truncation
    # a prompt over max_prompt_length tokens: error (default) | right (keep its first max_prompt_length tokens, as the
    # reference's EasyR1 data loader does; a cut through an image is still an error; evisrag_core/truncation)
    prompt_truncation: Literal["error", "right"] = "error"
    micro_batch_size: int = Field(0, ge=0)  # responses per forward/backward; 0: the whole rollout batch at once
    # > 0: pack the responses into micro-batches by this many prompt + response tokens, as the reference's dynamic
    # batching does (rsgrpo/packing.py); 0: micro_batch_size decides
    micro_batch_tokens: int = Field(0, ge=0)
    rollout_backend: Literal["transformers", "vllm"] = "transformers"
    # transformers backend: shared_prefix (one prefill per prompt, rsgrpo/fast_decode.py) | generate (n copies)
    rollout_decoder: Literal["shared_prefix", "generate"] = "shared_prefix"
    learning_rate: float = Field(5e-5, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    clip_low: float = Field(0.2, ge=0.0, lt=1.0)
    clip_high: float = Field(0.28, ge=0.0)
    dual_clip: float = Field(3.0, gt=1.0)
    kl_coef: float = Field(0.0, ge=0.0)  # 0: no reference model, no KL term (the released setting)
    filter_low: float = 0.01
    filter_high: float = 6.9
    online_filtering: bool = True
    max_filter_tries: int = Field(20, ge=1)
    freeze_vision_tower: bool = True
    gradient_checkpointing: bool = False
    bf16: Precision = "auto"
    # overlong reward: L > max_length → -1, a soft penalty over the last buffer_length tokens before it, L < min_length
    # → -1. The embedded responses are ~100 tokens, so the paper's 1536 / 512 / 200 would make it a constant -1 here.
    max_length: int = Field(160, ge=1)
    buffer_length: int = Field(32, ge=1)
    min_length: int = Field(50, ge=0)
    val_every: int = Field(10, ge=0)  # 0: no validation
    val_size: int = Field(64, ge=0)  # prompts of train/rl_val.jsonl, or held out of rl.jsonl when it is absent
    val_temperature: float = Field(0.1, gt=0.0)
    val_top_p: float = Field(0.95, gt=0.0, le=1.0)
    # also sample each held-out prompt this many times at the rollout temperature/top_p (val_sampled/* metrics)
    val_sampled_n: int = Field(4, ge=0)  # 0: off (the reference validates only at val_temperature)
    save_every: int = Field(10, ge=1)
    save_total_limit: int = Field(2, ge=1)
    report_every: int = Field(10, ge=0)  # 0: no HTML report
    report_rollouts: int = Field(4, ge=1)
    image_min_pixels: ImagePixels = 3136
    image_max_pixels: ImagePixels = 12544
    prompt_template: PromptTemplate = "model_card"
    on_bad_record: OnBadRecord = "error"  # error | skip: leave bad rl.jsonl records out, counted (skipped_records)
    # token_ids: tags found by their bare token ids, as the reference (a tag merged into a neighbouring token is
    # missed and its span falls back to start/end); char_offsets: found in the decoded text (rsgrpo/spans.py)
    span_locator: Literal["token_ids", "char_offsets"] = "token_ids"
    # batch: one sampling stream per rollout batch; group: each prompt's n rollouts seeded by (seed, its draw index),
    # so rollouts do not depend on how groups are batched or split over ranks (needed with `deepspeed`)
    rollout_seeding: Literal["batch", "group"] = "batch"
    deepspeed: str | None = None  # a DeepSpeed JSON (ZeRO-2); used under torchrun with WORLD_SIZE > 1
    num_gpus: int = Field(1, ge=1)  # ranks of a launch: the launch command and the checks of `rsgrpo --dry-run`

    @model_validator(mode="after")
    def _consistent(self) -> RSGRPOParams:
        check_pixel_range("rsgrpo", "image_", self.image_min_pixels, self.image_max_pixels)
        if self.filter_low >= self.filter_high:
            raise ValueError("rsgrpo.filter_low must be below rsgrpo.filter_high (no group could be kept)")
        if self.buffer_length > self.max_length:
            raise ValueError("rsgrpo.buffer_length must not exceed rsgrpo.max_length")
        self._check_estimator()
        if self.micro_batch_tokens and self.micro_batch_size:
            raise ValueError(
                f"rsgrpo.micro_batch_size={self.micro_batch_size} and rsgrpo.micro_batch_tokens="
                f"{self.micro_batch_tokens} both set the micro-batches; set one of them to 0"
            )
        if self.deepspeed and self.rollout_seeding != "group":
            raise ValueError(
                "rsgrpo.deepspeed needs rsgrpo.rollout_seeding: group (each rank samples its share of the groups; "
                "per-group seeds make the rollouts independent of that split)"
            )
        return self

    def _check_estimator(self) -> None:
        if self.span_masks == "released" and self.mode != "rsgrpo":
            raise ValueError(
                f"rsgrpo.span_masks: released changes the reward-scoped spans of mode rsgrpo; mode {self.mode} "
                "applies one advantage to every response token and has no spans to change. Use mode: rsgrpo or "
                "span_masks: fixed"
            )
        if self.span_masks == "released" and self.span_locator != "token_ids":
            raise ValueError(
                "rsgrpo.span_masks: released reproduces the reference's masks, found by token ids; it needs "
                f"span_locator: token_ids (got {self.span_locator})"
            )
        if set(self.gdpo_weights) != set(GDPO_WEIGHTS):
            raise ValueError(
                f"rsgrpo.gdpo_weights must give one weight to each reward component {sorted(GDPO_WEIGHTS)}; got "
                f"{sorted(self.gdpo_weights)}"
            )

"""The one typed configuration object, read from params.yaml and validated once at the edge.

Every stage reads its section from here; DVC tracks the same keys (`params:` in dvc.yaml), so a change to a value
reruns exactly the stages that read it. Unknown keys are errors (they are usually typos), and the message lists the
valid keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_PARAMS = Path("params.yaml")
# What a stage does with a bad input record (evisrag_core.bad_records): raise a clear error, or skip and count it.
OnBadRecord = Literal["error", "skip"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EmbeddedDataParams(_Section):
    """The generated default dataset: colour questions over K simple images (see evisrag_core.data.generator)."""

    image_size: int = Field(112, ge=28, le=1024)
    images_per_question: int = Field(3, ge=1, le=5)
    insufficient_fraction: float = Field(0.2, ge=0.0, le=1.0)
    n_sft: int = Field(2000, ge=1)
    n_rl: int = Field(400, ge=1)
    n_test_per_split: int = Field(100, ge=1)
    splits: list[str] = Field(default_factory=lambda: ["ColorSquare", "ColorBackground"], min_length=1)


class DataParams(_Section):
    source: Literal["embedded", "hub", "local"] = "embedded"
    out_dir: str = "data"
    local_dir: str | None = None
    hub_cache_dir: str = ".cache/hub"
    hub_revision: str | None = None
    # The reference README points at a temporary mirror (hmhm1229/EVisRAG-Train) while openbmb's is not public.
    hub_train_repo: str = "openbmb/EVisRAG-Train"
    benchmarks: list[str] = Field(
        default_factory=lambda: ["ChartQA", "InfoVQA", "SlideVQA", "DocVQA", "ViDoSeek"], min_length=1
    )
    include_train: bool = True
    embedded: EmbeddedDataParams = EmbeddedDataParams()

    @model_validator(mode="after")
    def _local_needs_dir(self) -> DataParams:
        if self.source == "local" and not self.local_dir:
            raise ValueError("data.source is 'local' but data.local_dir is not set")
        return self


class TinyModelParams(_Section):
    """Sizes of the locally built Qwen2.5-VL-architecture model (the embedded default)."""

    vocab_size: int = Field(1024, ge=300)
    hidden_size: int = Field(128, ge=16)
    intermediate_size: int = Field(256, ge=16)
    num_hidden_layers: int = Field(2, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    num_key_value_heads: int = Field(2, ge=1)
    vision_depth: int = Field(2, ge=1)
    vision_hidden_size: int = Field(64, ge=16)
    vision_num_heads: int = Field(4, ge=1)
    rope_theta: float = Field(10000.0, gt=1.0)

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelParams:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("model.tiny.hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("model.tiny.num_attention_heads must be divisible by num_key_value_heads")
        if (self.hidden_size // self.num_attention_heads) % 8:
            raise ValueError("model.tiny head size (hidden_size / num_attention_heads) must be a multiple of 8")
        if self.vision_hidden_size % self.vision_num_heads:
            raise ValueError("model.tiny.vision_hidden_size must be divisible by vision_num_heads")
        if (self.vision_hidden_size // self.vision_num_heads) % 4:
            # The vision rotary embedding splits each head into (height, width) halves of even size.
            raise ValueError(
                "model.tiny vision head size (vision_hidden_size / vision_num_heads) must be a multiple of 4"
            )
        return self


class ModelParams(_Section):
    source: Literal["tiny", "hub", "local"] = "tiny"
    name_or_path: str = "openbmb/EVisRAG-7B"
    out_dir: str = "models/base"
    revision: str | None = None
    trust_remote_code: bool = False
    tiny: TinyModelParams = TinyModelParams()


# The released SFT hyper-parameters (spec §6): `sft.profile: paper` applies them over whatever params.yaml says.
PAPER_SFT: dict[str, object] = {
    "model_dir": "models/base",
    "learning_rate": 5e-7,
    "num_train_epochs": 1.0,
    "max_steps": -1,
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 8,
    "num_gpus": 8,
    "warmup_steps": 200,
    "lr_scheduler_type": "cosine",
    "max_grad_norm": 1.0,
    "freeze_vision_tower": True,
    "bf16": "on",
    "gradient_checkpointing": True,
    "cutoff_len": 32000,
    "image_max_pixels": 3_920_000,
    "deepspeed": "configs/deepspeed/zero3.json",
    "save_steps": 100,
}


class SFTParams(_Section):
    """Stage 1: supervised fine-tuning on the evidence conversations (spec §6).

    `profile: paper` replaces the hyper-parameters named in PAPER_SFT with the released ones (8 GPUs, ZeRO-3), so
    one switch (`dvc exp run -S sft.profile=paper`) selects the paper's run; `evisrag sft --dry-run` checks it.
    """

    profile: Literal["default", "paper"] = "default"
    model_dir: str = "models/base"
    out_dir: str = "models/sft"
    checkpoint_dir: str = "work/sft"
    log_file: str = "plots/sft_loss.json"  # a JSON array: the format DVC plots read
    learning_rate: float = Field(4e-4, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    num_train_epochs: float = Field(1.0, gt=0.0)
    max_steps: int = Field(-1, ge=-1)  # -1: run num_train_epochs
    # stop after this many optimizer steps, the learning-rate schedule still that of the whole run: a deliberately
    # under-trained model (the RS-GRPO-from-weak-SFT ablation, README); null: train to the end
    stop_at_step: int | None = Field(None, ge=1)
    per_device_train_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    warmup_steps: int = Field(20, ge=0)
    lr_scheduler_type: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    max_grad_norm: float = Field(1.0, gt=0.0)
    freeze_vision_tower: bool = True
    bf16: Literal["auto", "on", "off"] = "auto"  # auto: bf16 where the hardware has it, fp32 on CPU
    gradient_checkpointing: bool = False
    cutoff_len: int = Field(4096, ge=64)
    image_min_pixels: int = Field(3136, ge=784)
    image_max_pixels: int = Field(12544, ge=784)
    save_steps: int = Field(50, ge=1)
    save_total_limit: int = Field(2, ge=1)
    logging_steps: int = Field(5, ge=1)
    deepspeed: str | None = None  # path to a DeepSpeed JSON config (configs/deepspeed/zero3.json for the paper)
    num_gpus: int = Field(1, ge=1)  # for the launch command and the global-batch check of the dry-run
    prompt_template: Literal["model_card", "repository"] = "model_card"
    on_bad_record: OnBadRecord = "error"  # error | skip: leave bad sft.jsonl records out, counted (sft.skipped_records)

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, values: object) -> object:
        if isinstance(values, dict) and values.get("profile") == "paper":
            return {**values, **PAPER_SFT}
        return values

    @model_validator(mode="after")
    def _pixels_ordered(self) -> SFTParams:
        if self.image_min_pixels > self.image_max_pixels:
            raise ValueError("sft.image_min_pixels must not exceed sft.image_max_pixels")
        if self.stop_at_step is not None and 0 < self.max_steps < self.stop_at_step:
            raise ValueError(
                f"sft.stop_at_step ({self.stop_at_step}) is past the end of training (sft.max_steps {self.max_steps}); "
                "lower it or set it to null"
            )
        return self


# The released RS-GRPO settings (spec §5, `src/rsgrpo/examples/config.yaml` of the reference): `rsgrpo.profile:
# paper` applies them over whatever params.yaml says. The reference's micro-batch of 1 response per device is kept,
# so its per-micro-batch loss rescaling is reproduced too (see evisrag_core/rsgrpo/train.py).
PAPER_RSGRPO: dict[str, object] = {
    "model_dir": "models/sft",
    "mode": "rsgrpo",
    "epochs": 16.0,
    "rollout_batch_size": 32,
    "n": 8,
    "temperature": 1.0,
    "top_p": 1.0,
    "max_new_tokens": 1536,
    "max_prompt_length": 15000,
    "micro_batch_size": 1,
    "learning_rate": 1e-6,
    "weight_decay": 0.01,
    "max_grad_norm": 1.0,
    "clip_low": 0.2,
    "clip_high": 0.28,
    "dual_clip": 3.0,
    "kl_coef": 0.0,
    "filter_low": 0.01,
    "filter_high": 6.9,
    "online_filtering": True,
    "max_filter_tries": 20,
    "freeze_vision_tower": True,
    "gradient_checkpointing": True,
    "bf16": "on",
    "max_length": 1536,
    "buffer_length": 512,
    "min_length": 200,
    "val_every": 10,
    "val_temperature": 0.1,
    "val_top_p": 0.95,
    "val_sampled_n": 0,  # the reference validates at val_temperature only
    "save_every": 10,
    "image_min_pixels": 262_144,
    "image_max_pixels": 1_568_000,
    # 8 ranks under DeepSpeed ZeRO-2 (the reference uses FSDP): parameters stay whole on every rank for generate
    "deepspeed": "configs/deepspeed/zero2.json",
    "num_gpus": 8,
    "rollout_seeding": "group",
}


class RSGRPOParams(_Section):
    """Stage 2: reward-scoped GRPO from the SFT model (spec §4, §5); read by evisrag_core.rsgrpo.train.

    `mode: grpo` is the plain-GRPO ablation: one scalar reward (`overall`) whose advantage covers the whole response.
    `profile: paper` replaces the keys of PAPER_RSGRPO with the released values (8 GPUs in the reference).
    """

    profile: Literal["default", "paper"] = "default"
    model_dir: str = "models/sft"
    out_dir: str = "models/rsgrpo"
    checkpoint_dir: str = "work/rsgrpo"
    log_file: str = "plots/rsgrpo.json"  # one row per step: rewards, filtering, clipping, loss (DVC plot)
    val_log_file: str = "plots/rsgrpo_val.json"  # one row per validation: held-out rewards, answer accuracy
    val_sampled_log_file: str = "plots/rsgrpo_val_sampled.json"  # the same at the rollout temperature (val_sampled_n)
    report_dir: str = "reports/rsgrpo"
    mode: Literal["rsgrpo", "grpo"] = "rsgrpo"
    steps: int = Field(30, ge=1)  # optimizer steps; ignored when `epochs` is set
    epochs: float | None = Field(None, gt=0.0)  # steps = ceil(epochs · train prompts / rollout_batch_size)
    rollout_batch_size: int = Field(4, ge=1)  # prompt groups per step (after filtering)
    n: int = Field(8, ge=2)  # rollouts per prompt; the group std needs at least 2
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(160, ge=1)
    max_prompt_length: int = Field(15000, ge=1)  # longer prompts (text + image tokens) are an error
    micro_batch_size: int = Field(0, ge=0)  # responses per forward/backward; 0: the whole rollout batch at once
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
    bf16: Literal["auto", "on", "off"] = "auto"
    max_length: int = Field(1536, ge=1)  # overlong reward: L > max_length → -1
    buffer_length: int = Field(512, ge=1)  # soft penalty over the last buffer_length tokens before max_length
    min_length: int = Field(200, ge=0)  # L < min_length → -1
    val_every: int = Field(10, ge=0)  # 0: no validation
    val_size: int = Field(32, ge=0)  # prompts of train/rl_val.jsonl, or held out of rl.jsonl when it is absent
    val_temperature: float = Field(0.1, gt=0.0)
    val_top_p: float = Field(0.95, gt=0.0, le=1.0)
    # also sample each held-out prompt this many times at the rollout temperature/top_p (val_sampled/* metrics)
    val_sampled_n: int = Field(4, ge=0)  # 0: off (the reference validates only at val_temperature)
    save_every: int = Field(10, ge=1)
    save_total_limit: int = Field(2, ge=1)
    report_every: int = Field(10, ge=0)  # 0: no HTML report
    report_rollouts: int = Field(4, ge=1)
    image_min_pixels: int = Field(3136, ge=784)
    image_max_pixels: int = Field(12544, ge=784)
    prompt_template: Literal["model_card", "repository"] = "model_card"
    on_bad_record: OnBadRecord = "error"  # error | skip: leave bad rl.jsonl records out, counted (skipped_records)
    # token_ids: tags found by their bare token ids, as the reference (a tag merged into a neighbouring token is
    # missed and its span falls back to start/end); char_offsets: found in the decoded text (rsgrpo/spans.py)
    span_locator: Literal["token_ids", "char_offsets"] = "token_ids"
    # batch: one sampling stream per rollout batch; group: each prompt's n rollouts seeded by (seed, its draw index),
    # so rollouts do not depend on how groups are batched or split over ranks (needed with `deepspeed`)
    rollout_seeding: Literal["batch", "group"] = "batch"
    deepspeed: str | None = None  # a DeepSpeed JSON (ZeRO-2); used under torchrun with WORLD_SIZE > 1
    num_gpus: int = Field(1, ge=1)  # ranks of a launch: the launch command and the checks of `rsgrpo --dry-run`

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, values: object) -> object:
        if isinstance(values, dict) and values.get("profile") == "paper":
            return {**values, **PAPER_RSGRPO}
        return values

    @model_validator(mode="after")
    def _consistent(self) -> RSGRPOParams:
        if self.image_min_pixels > self.image_max_pixels:
            raise ValueError("rsgrpo.image_min_pixels must not exceed rsgrpo.image_max_pixels")
        if self.filter_low >= self.filter_high:
            raise ValueError("rsgrpo.filter_low must be below rsgrpo.filter_high (no group could be kept)")
        if self.buffer_length > self.max_length:
            raise ValueError("rsgrpo.buffer_length must not exceed rsgrpo.max_length")
        if self.deepspeed and self.rollout_seeding != "group":
            raise ValueError(
                "rsgrpo.deepspeed needs rsgrpo.rollout_seeding: group (each rank samples its share of the groups; "
                "per-group seeds make the rollouts independent of that split)"
            )
        return self


class PredictParams(_Section):
    model_dir: str = "models/base"
    backend: Literal["transformers", "vllm"] = "transformers"
    prompt_template: Literal["model_card", "repository"] = "model_card"
    top_k: int = Field(3, ge=1, le=5)
    max_images_per_prompt: int = Field(5, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.05, gt=0.0)
    max_new_tokens: int = Field(256, ge=1)
    batch_size: int = Field(16, ge=1)
    min_pixels: int = Field(3136, ge=784)
    max_pixels: int = Field(12544, ge=784)
    out_dir: str = "preds"
    on_bad_record: OnBadRecord = "error"  # error | skip: leave bad test records/images out, counted per benchmark

    @model_validator(mode="after")
    def _pixels_ordered(self) -> PredictParams:
        if self.min_pixels > self.max_pixels:
            raise ValueError("predict.min_pixels must not exceed predict.max_pixels")
        return self


class EvaluateParams(_Section):
    metrics_file: str = "metrics.json"
    per_question_file: str = "eval/per_question.jsonl"
    # error | skip: bad test or prediction rows are left out and counted (cnt_skipped_records in metrics.json);
    # a question without a prediction then scores 0 and is counted (cnt_missing_pred)
    on_bad_record: OnBadRecord = "error"


class ReportParams(_Section):
    """The run report (evisrag_core.report): one HTML page with metrics, training curves and example predictions."""

    out_dir: str = "reports/run"
    examples: int = Field(3, ge=0, le=50)  # good and as many bad predictions shown, with their images


class TrackingParams(_Section):
    mlflow_tracking_uri: str = "sqlite:///mlflow.db"
    experiment_name: str = "evisrag"
    log_predictions_sample: int = Field(20, ge=0)
    # Extra MLflow tags on every run (pipeline and stages), e.g. {study: ablations-1, ablation: sft} from
    # `dvc exp run -S` so a set of experiments can be found together. No stage lists `tracking` as a DVC param, so
    # changing the tags reruns nothing.
    tags: dict[str, str] = Field(default_factory=dict)


class ServeParams(_Section):
    """`evisrag serve`: the pipeline as a Prefect deployment `evisrag-pipeline/<deployment_name>`.

    `cron: null` serves it on demand only (UI "Run", `prefect deployment run`); a cron string such as "0 2 * * *"
    adds that schedule. Each run retries `dvc repro` up to `retries` times; DVC then reruns only the stages that did
    not finish.
    """

    deployment_name: str = Field("evisrag", min_length=1)
    cron: str | None = None
    timezone: str = "UTC"
    retries: int = Field(1, ge=0)
    retry_delay_seconds: float = Field(30.0, ge=0.0)

    @model_validator(mode="after")
    def _schedule_well_formed(self) -> ServeParams:
        # A cheap shape check here; Prefect validates the cron fields themselves when the deployment is built.
        if self.cron is not None and len(self.cron.split()) != 5:
            raise ValueError("serve.cron must have 5 fields like '0 2 * * *' (minute hour day month weekday)")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"serve.timezone {self.timezone!r} is not an IANA time zone such as UTC or Europe/Paris"
            ) from None
        return self


class Params(_Section):
    seed: int = 0
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    sft: SFTParams = SFTParams()
    rsgrpo: RSGRPOParams = RSGRPOParams()
    predict: PredictParams = PredictParams()
    evaluate: EvaluateParams = EvaluateParams()
    report: ReportParams = ReportParams()
    tracking: TrackingParams = TrackingParams()
    serve: ServeParams = ServeParams()


class ParamsError(ValueError):
    """params.yaml is invalid; the message names the key, what is wrong, and the valid keys."""


def _valid_keys(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


def _describe(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid parameters"]
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "<root>"
        if item["type"] == "extra_forbidden":
            valid = ", ".join(_valid_keys(Params, item["loc"]))
            lines.append(f"  - unknown key {key!r}; valid keys here: {valid}")
        else:
            lines.append(f"  - {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def parse_params(raw: dict, source: str = "params") -> Params:
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ParamsError(_describe(err, source)) from None


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    """Read and validate params.yaml; raise ParamsError with every problem listed."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} not found; run from the project root or pass --params")
    with path.open(encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return parse_params(raw or {}, str(path))

"""The sections of params.yaml outside training: data, model, predict (profiled: `predict.profile: reference`),
evaluate, report, tracking, pipeline, serve."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, model_validator

from evisrag_core.config.base import (
    ImagePixels,
    OnBadRecord,
    PredictMethod,
    PromptTemplate,
    Section,
    check_pixel_range,
)
from evisrag_core.config.profiles import ProfiledSection


class EmbeddedDataParams(Section):
    """The generated default dataset: colour questions over K simple images (see evisrag_core.data.generator).

    `world: hard` writes the estimator study's world instead (evisrag_core.data.hard_world; splits HardSquare,
    HardBackground, TwoSquares; docs/study_estimators.md)."""

    world: Literal["default", "hard"] = "default"
    image_size: int = Field(112, ge=28, le=1024)
    images_per_question: int = Field(3, ge=1, le=5)
    insufficient_fraction: float = Field(0.2, ge=0.0, le=1.0)
    n_sft: int = Field(2000, ge=1)
    n_rl: int = Field(400, ge=1)
    n_test_per_split: int = Field(100, ge=1)
    splits: list[str] = Field(default_factory=lambda: ["ColorSquare", "ColorBackground"], min_length=1)


class DataParams(Section):
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


class TinyModelParams(Section):
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


class ModelParams(Section):
    source: Literal["tiny", "hub", "local"] = "tiny"
    name_or_path: str = "openbmb/EVisRAG-7B"
    out_dir: str = "models/base"
    revision: str | None = None
    trust_remote_code: bool = False
    tiny: TinyModelParams = TinyModelParams()


class PredictParams(ProfiledSection):
    """Stage 5: prediction on every test set (evisrag_core.predict).

    `profile: reference` applies the reference's prediction settings (configs/profiles/reference.yaml: vLLM where it
    imports, 2,048 new tokens, temperature 0, repetition penalty 1.05, qwen_vl_utils' default pixel bounds, one
    question per generate call, the repository's prompt wording) under the keys you set. `backend: auto` is vLLM when
    its venv (`make vllm-env`) is built and transformers otherwise (evisrag_core.backend_choice, which logs the choice).
    """

    section_name: ClassVar[str] = "predict"
    model_dir: str = "models/rsgrpo"  # models/sft or models/base for the ablations
    backend: Literal["transformers", "vllm", "auto"] = "transformers"
    method: PredictMethod = "evidence"
    # backend vllm: None starts an engine under .venv-vllm; a URL (http://127.0.0.1:8000/v1) uses a running
    # `vllm serve` (docs/vllm.md)
    vllm_base_url: str | None = None
    prompt_template: PromptTemplate = "model_card"
    top_k: int = Field(3, ge=1, le=5)
    max_images_per_prompt: int = Field(5, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.05, gt=0.0)
    max_new_tokens: int = Field(256, ge=1)
    batch_size: int = Field(16, ge=1)
    min_pixels: ImagePixels = 3136
    max_pixels: ImagePixels = 12544
    out_dir: str = "preds"
    on_bad_record: OnBadRecord = "error"  # error | skip: leave bad test records/images out, counted per benchmark

    @model_validator(mode="after")
    def _pixels_ordered(self) -> PredictParams:
        check_pixel_range("predict", "", self.min_pixels, self.max_pixels)
        return self


class EvaluateParams(Section):
    metrics_file: str = "metrics.json"
    per_question_file: str = "eval/per_question.jsonl"
    # error | skip: bad test or prediction rows are left out and counted (cnt_skipped_records in metrics.json);
    # a question without a prediction then scores 0 and is counted (cnt_missing_pred)
    on_bad_record: OnBadRecord = "error"


class ReportParams(Section):
    """The run report (evisrag_core.report): one HTML page with metrics, training curves and example predictions."""

    out_dir: str = "reports/run"
    examples: int = Field(3, ge=0, le=50)  # good and as many bad predictions shown, with their images


class TrackingParams(Section):
    mlflow_tracking_uri: str = "sqlite:///mlflow.db"
    experiment_name: str = "evisrag"
    log_predictions_sample: int = Field(20, ge=0)
    # Extra MLflow tags on every run (pipeline and stages), e.g. {study: ablations-1, ablation: sft} from
    # `dvc exp run -S` so a set of experiments can be found together. No stage lists `tracking` as a DVC param, so
    # changing the tags reruns nothing.
    tags: dict[str, str] = Field(default_factory=dict)


class PipelineParams(Section):
    """`evisrag pipeline`: each dvc.yaml stage runs as one task of the pipeline's Prefect flow run.

    `retries` maps a stage name to how often it runs again after failing, e.g. {sft: 1, rsgrpo: 1}; a stage not named
    gets the run's default (none for `evisrag pipeline`, serve.retries for a served or deployed run). A retried stage
    starts again from DVC's point of view; sft and rsgrpo resume from their last checkpoint. Stage names are checked
    against dvc.yaml when the pipeline starts (this library does not read dvc.yaml).
    """

    retries: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    retry_delay_seconds: float = Field(10.0, ge=0.0)


class ServeParams(Section):
    """`evisrag serve`: the pipeline as a Prefect deployment `evisrag-pipeline/<deployment_name>`.

    `cron: null` serves it on demand only (UI "Run", `prefect deployment run`); a cron string such as "0 2 * * *"
    adds that schedule. In each run, a stage that pipeline.retries does not name runs again up to `retries` times after
    a failure, `retry_delay_seconds` apart.
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

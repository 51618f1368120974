"""What every params section shares: the frozen, typo-refusing base model, the image-pixel units and their checks."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

# Qwen2.5-VL's vision tower cuts an image into 14×14-pixel patches and merges each 2×2 block of them into one image
# token of the language model. One name per meaning: token budgets divide by MERGED_PATCH_PIXELS, ViT FLOPs by
# PATCH_PIXELS (evisrag_core/capacity/model.py).
PATCH_PIXELS = 14 * 14
MERGED_PATCH_PIXELS = 28 * 28

# An image budget in pixels; below one image token the processor cannot resize an image at all.
ImagePixels = Annotated[int, Field(ge=MERGED_PATCH_PIXELS)]

# What a stage does with a bad input record (evisrag_core.bad_records): raise a clear error, or skip and count it.
OnBadRecord = Literal["error", "skip"]

# The prompt wording: the model card's or the reference repository's (evisrag_core.prompts).
PromptTemplate = Literal["model_card", "repository"]

# What prediction asks the model: the evidence prompt or one of the paper's prompting baselines, with the reference's
# texts (evisrag_core.prompt_methods, which maps each to the reference's `--method`).
PredictMethod = Literal["evidence", "evidence_oneshot", "baseline", "baseline_concat", "cocot", "ccot", "ddcot"]


class Section(BaseModel):
    """A params section: unknown keys are errors (usually typos) and a validated section never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def check_pixel_range(section: str, prefix: str, low: int, high: int) -> None:
    """Refuse a minimum image size above the maximum (`<section>.<prefix>min_pixels` > `...max_pixels`)."""
    if low > high:
        raise ValueError(f"{section}.{prefix}min_pixels must not exceed {section}.{prefix}max_pixels")

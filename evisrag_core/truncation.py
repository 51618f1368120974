"""Over-long inputs cut as the reference cuts them (spec §8), for the options that turn it on; the default is an error.

- **RS-GRPO prompts** (`rsgrpo.prompt_truncation: right`): the reference's RL dataset (EasyR1, `truncation="right"`
  in its data loader) keeps the first `max_prompt_length` token ids of the encoded prompt, image tokens included,
  so what is lost is the prompt's end: the last text and the `<|im_start|>assistant\\n` header.
- **SFT conversations** (`sft.truncation: llamafactory`): LLaMA-Factory's supervised processor splits a single-turn
  example into the source (everything up to and including the assistant header) and the target (the answer, its
  `<|im_end|>` and newline) and cuts each on its right to the lengths `llamafactory_lengths` gives for
  `cutoff_len`; the result is `source[:s] ⧺ target[:t]`.

Image tokens: both references cut token ids without looking at them. A cut inside or before an image's
`<|vision_start|>…<|vision_end|>` block leaves fewer image tokens than the image has features, and the reference
fails later, in the model's forward. Here such a cut is refused at once, naming the record (`require_images_kept`):
a truncated input keeps every image whole, or it is an error.
"""

from __future__ import annotations

from collections.abc import Collection

import torch

RL_TRUNCATIONS = ("error", "right")
SFT_TRUNCATIONS = ("error", "llamafactory")


def llamafactory_lengths(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """(source, target) lengths after LLaMA-Factory's cut to `cutoff_len` tokens: a short target (under half the
    budget) is kept whole and the source cut; else a short source is kept and the target cut; else both are cut in
    proportion to their lengths."""
    if target_len * 2 < cutoff_len:
        target_budget = cutoff_len
    elif source_len * 2 < cutoff_len:
        target_budget = cutoff_len - source_len
    else:
        target_budget = int(cutoff_len * (target_len / (source_len + target_len)))
    new_target = min(target_budget, target_len)
    new_source = min(max(cutoff_len - new_target, 0), source_len)
    return new_source, new_target


def kept_positions(total: int, source_len: int, lengths: tuple[int, int]) -> torch.Tensor:
    """Indices of the tokens an SFT cut keeps: the first `s` of the source and the first `t` of the target."""
    s, t = lengths
    return torch.cat([torch.arange(s), torch.arange(source_len, min(source_len + t, total))])


def require_images_kept(input_ids: torch.Tensor, keep: int, vision_ids: Collection[int], what: str) -> None:
    """Raise ValueError when keeping the first `keep` ids would cut an image block (any vision token past `keep`)."""
    is_vision = torch.isin(input_ids, torch.tensor(sorted(vision_ids), dtype=input_ids.dtype))
    positions = is_vision.nonzero().flatten()
    if len(positions) and int(positions[-1]) >= keep:
        raise ValueError(
            f"{what}: truncating to {keep} tokens would cut an image (its tokens end at position {int(positions[-1])});"
            " the model needs every image whole. Lower the image pixel bound or raise the length limit"
        )

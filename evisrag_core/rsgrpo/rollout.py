"""Rollouts for RS-GRPO: n sampled responses to each prompt from the current policy (spec §4, §5).

A prompt is the record's user text verbatim with each image at its `<image>` marker (a record holding a bare question:
the evidence prompt around it, as prediction builds it; evisrag_core.prompts) → the chat template →
`evisrag_core.images.vision_inputs` → the processor. Over `max_prompt_length` tokens a prompt is an error, or with
`truncation="right"` its first tokens are kept, as the reference does (evisrag_core/truncation.py). The prompts of a
batch are encoded once, left-padded, and n continuations of each are sampled: by default with `sample_shared_prefix`
(the vision tower and the prefill run once per prompt, its KV cache is shared by its n samples, ended rows leave the
batch), or with `rsgrpo.rollout_decoder: generate` by transformers `generate(num_return_sequences=n)`, which
prefills n copies. A response keeps its generated ids up to and including the first end-of-turn token, or all
`max_new_tokens` ids when it never ended. Stacked over the B = prompts × n responses (a prompt's n responses are
adjacent):

    response_ids   (B, T)  right-padded with the pad id, T = the longest response
    response_mask  (B, T)  1 on the kept ids, the end-of-turn token included; 0 on padding
    lengths        (B,)    L = response_mask.sum(-1), the length the overlong reward reads (spec §4)
    texts          B str   the kept ids decoded with special tokens skipped, the text every other reward reads

`policy_inputs` rebuilds, for any rows, the model input `prompt ⧺ response` the update scores: prompts left-padded,
responses right-padded, so every response starts at the same column.

The vLLM path (`rsgrpo.rollout_backend: vllm`) is `evisrag_core.rsgrpo.vllm_rollout.VllmRollout`: an engine in a
child process under vLLM's own venv (`make vllm-env`; docs/vllm.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

# RLPrompt and its loader live with every record type in data.schema; the re-export keeps `rollout.load_rl_prompts`
# callers working.
from evisrag_core.data.schema import RLPrompt
from evisrag_core.data.schema import load_rl_prompts as load_rl_prompts
from evisrag_core.images import vision_inputs
from evisrag_core.io import BadRecordError
from evisrag_core.prompts import build_messages, user_turn
from evisrag_core.rsgrpo.fast_decode import Sampling, sample_shared_prefix
from evisrag_core.truncation import RL_TRUNCATIONS, require_images_kept

ROLLOUT_DECODERS = ("shared_prefix", "generate")


@dataclass(frozen=True)
class PromptInputs:
    """One encoded prompt, unpadded: its token ids, their modality types and the processed pixels of its images.

    `mm_token_type_ids` (0 text, 1 image) is what Qwen2.5-VL's multimodal RoPE reads to place image tokens on a 2-D
    grid; without it the model silently falls back to 1-D positions, which is not how it was trained.
    """

    input_ids: torch.Tensor  # (S,)
    mm_token_type_ids: torch.Tensor  # (S,)
    pixel_values: torch.Tensor  # (patches, patch_dim)
    image_grid_thw: torch.Tensor  # (images, 3)
    # per image, the vision tower's output (image tokens, hidden) computed at the rollout; set only while the tower
    # is frozen, so the update's forward reuses it instead of running the tower on n copies of the prompt
    image_features: tuple[torch.Tensor, ...] | None = None


@dataclass(frozen=True)
class Group:
    """A prompt and its n sampled responses (ids up to and including end-of-turn; decoded texts)."""

    prompt: RLPrompt
    inputs: PromptInputs
    responses: tuple[torch.Tensor, ...]  # n × (L_i,)
    texts: tuple[str, ...]


def group_ids(groups: Sequence[Group]) -> list[int]:
    """(B,) the index of each response's group; a group's responses are adjacent."""
    return [g for g, group in enumerate(groups) for _ in group.responses]


def response_rows(groups: Sequence[Group]) -> list[tuple[int, int]]:
    """(B,) (group index, response index) of every response, in batch order."""
    return [(g, k) for g, group in enumerate(groups) for k in range(len(group.responses))]


def pad_responses(groups: Sequence[Group], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """response_ids, response_mask: (B, T), right-padded (module docstring)."""
    responses = [ids for group in groups for ids in group.responses]
    width = max(len(ids) for ids in responses)
    response_ids = torch.full((len(responses), width), pad_id, dtype=torch.long)
    response_mask = torch.zeros((len(responses), width), dtype=torch.long)
    for row, ids in enumerate(responses):
        response_ids[row, : len(ids)] = ids
        response_mask[row, : len(ids)] = 1
    return response_ids, response_mask


def collate_prompts(prompts: Sequence[PromptInputs], pad_id: int) -> dict[str, Any]:
    """Left-pad prompts into one batch, as the processor pads a batch: input_ids, attention_mask,
    mm_token_type_ids (b, S); pixel_values and image_grid_thw concatenated in prompt order. When every prompt carries
    its image features, they replace pixel_values (`mm_encoder_outputs`, which the model's forward takes instead)."""
    width = max(len(p.input_ids) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    token_types = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        start = width - len(prompt.input_ids)
        input_ids[row, start:] = prompt.input_ids
        attention_mask[row, start:] = 1
        token_types[row, start:] = prompt.mm_token_type_ids
    batch: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "mm_token_type_ids": token_types,
        "image_grid_thw": torch.cat([p.image_grid_thw for p in prompts]),
    }
    if all(p.image_features is not None for p in prompts):
        features = tuple(f for p in prompts for f in p.image_features or ())
        batch["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=features)}
    else:
        batch["pixel_values"] = torch.cat([p.pixel_values for p in prompts])
    return batch


def batch_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A collated batch on `device` (tensors and the image features of `mm_encoder_outputs`)."""
    moved = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    if "mm_encoder_outputs" in batch:
        features = batch["mm_encoder_outputs"]["image"].pooler_output
        moved["mm_encoder_outputs"] = {
            "image": BaseModelOutputWithPooling(pooler_output=tuple(f.to(device) for f in features))
        }
    return moved


@torch.no_grad()
def with_image_features(model: Any, prompts: Sequence[PromptInputs]) -> list[PromptInputs]:
    """The prompts with their images' vision-tower outputs attached (one tower pass for the whole batch)."""
    grid = torch.cat([p.image_grid_thw for p in prompts])
    pixels = torch.cat([p.pixel_values for p in prompts])
    features = model.model.get_image_features(pixels.to(model.device), grid.to(model.device), return_dict=True)
    per_image = [f.detach() for f in features.pooler_output]
    attached, start = [], 0
    for prompt in prompts:
        count = len(prompt.image_grid_thw)
        attached.append(replace(prompt, image_features=tuple(per_image[start : start + count])))
        start += count
    return attached


def policy_inputs(
    groups: Sequence[Group], rows: Sequence[int], response_ids: torch.Tensor, response_mask: torch.Tensor, pad_id: int
) -> dict[str, torch.Tensor]:
    """Model inputs `prompt ⧺ response` for the given batch rows; the responses are the last T columns (text)."""
    index = response_rows(groups)
    batch = collate_prompts([groups[index[row][0]].inputs for row in rows], pad_id)
    responses, mask = response_ids[list(rows)], response_mask[list(rows)]  # (b, T)
    batch["input_ids"] = torch.cat([batch["input_ids"], responses], dim=1)  # (b, S + T)
    batch["attention_mask"] = torch.cat([batch["attention_mask"], mask], dim=1)
    batch["mm_token_type_ids"] = torch.cat([batch["mm_token_type_ids"], torch.zeros_like(responses)], dim=1)
    return batch


class PromptEncoder:
    """RLPrompt → PromptInputs through the chat template and the processor, as prediction encodes a question."""

    def __init__(
        self,
        processor: Any,
        template: str,
        pixels: tuple[int, int],
        max_prompt_length: int,
        truncation: str = "error",
    ):
        """`template` wraps the records that hold a bare question; `truncation`: error | right (module docstring)."""
        if truncation not in RL_TRUNCATIONS:
            raise ValueError(f"unknown prompt truncation {truncation!r}; choose from {RL_TRUNCATIONS}")
        self.processor, self.template, self.pixels = processor, template, pixels
        self.max_prompt_length, self.truncation = max_prompt_length, truncation

    def messages(self, prompt: RLPrompt) -> list[dict[str, Any]]:
        try:
            if prompt.bare_question:
                return build_messages(prompt.text, list(prompt.images), self.template, *self.pixels)
            return [user_turn(prompt.text, prompt.images, *self.pixels)]
        except ValueError as err:
            raise BadRecordError(f"RL record {prompt.id}: {err}") from err

    def text(self, prompt: RLPrompt) -> str:
        return self.processor.apply_chat_template(self.messages(prompt), tokenize=False, add_generation_prompt=True)

    def __call__(self, prompts: Sequence[RLPrompt]) -> list[PromptInputs]:
        encoded = []
        for prompt in prompts:
            images = vision_inputs(self.messages(prompt))
            batch = self.processor(text=[self.text(prompt)], images=images, return_tensors="pt")
            input_ids, token_types = batch["input_ids"][0], batch["mm_token_type_ids"][0]
            keep = self._kept_length(prompt, input_ids)
            encoded.append(
                PromptInputs(input_ids[:keep], token_types[:keep], batch["pixel_values"], batch["image_grid_thw"])
            )
        return encoded

    def _kept_length(self, prompt: RLPrompt, input_ids: torch.Tensor) -> int:
        """How many of the prompt's tokens the model is given: all, or the first max_prompt_length under `right`."""
        if len(input_ids) <= self.max_prompt_length:
            return len(input_ids)
        if self.truncation == "error":
            raise BadRecordError(
                f"RL record {prompt.id}: the prompt is {len(input_ids)} tokens (text + image tokens), over "
                f"rsgrpo.max_prompt_length={self.max_prompt_length}; raise it, lower rsgrpo.image_max_pixels or cut "
                "as the reference does (rsgrpo.prompt_truncation: right)"
            )
        try:
            require_images_kept(input_ids, self.max_prompt_length, vision_token_ids(self.processor), prompt.id)
        except ValueError as err:
            raise BadRecordError(f"RL record {err}") from err
        return self.max_prompt_length


def end_of_turn_ids(model: Any, processor: Any) -> set[int]:
    """The ids that end a response: the generation config's eos ids, else `<|im_end|>`."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids = {eos} if isinstance(eos, int) else set(eos or [])
    return ids or {processor.tokenizer.convert_tokens_to_ids("<|im_end|>")}


def vision_token_ids(processor: Any) -> list[int]:
    """Ids of the vision placeholders. A sampled `<|image_pad|>` would break the next forward (one image feature per
    placeholder), so rollouts never sample them."""
    tokens = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
    unknown = processor.tokenizer.unk_token_id
    return [i for i in processor.tokenizer.convert_tokens_to_ids(list(tokens)) if i is not None and i != unknown]


def cut_at_end_of_turn(ids: torch.Tensor, end_ids: set[int]) -> torch.Tensor:
    """The ids up to and including the first end-of-turn token; all of them when there is none."""
    for position, token in enumerate(ids.tolist()):
        if token in end_ids:
            return ids[: position + 1]
    return ids


class TransformersRollout:
    """Sampling on the policy being trained (CPU or GPU) with transformers models: `sample_shared_prefix` (one
    prefill per prompt) or, with decoder="generate", transformers `generate(num_return_sequences=n)`."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        encoder: PromptEncoder,
        decoder: str = "shared_prefix",
        reuse_image_features: bool = False,
    ):
        """`reuse_image_features` (only with a frozen vision tower, shared_prefix decoder): keep each prompt's vision
        output in its Group, so the update's forward does not run the tower again on every response."""
        if decoder not in ROLLOUT_DECODERS:
            raise ValueError(f"unknown rollout decoder {decoder!r}; choose from {ROLLOUT_DECODERS}")
        self.model, self.processor, self.encode, self.decoder = model, processor, encoder, decoder
        self.reuse_image_features = reuse_image_features and decoder == "shared_prefix"
        self.pad_id = processor.tokenizer.pad_token_id
        self.end_ids = end_of_turn_ids(model, processor)
        self.suppressed = vision_token_ids(processor)

    def generate(
        self, prompts: Sequence[RLPrompt], sampling: Sampling, seeds: Sequence[int] | None = None
    ) -> list[Group]:
        """n samples per prompt. Without `seeds`, one batched `generate` from the current torch RNG stream; with one
        seed per prompt, each prompt's group is sampled alone after `torch.manual_seed(seed)`, so a group does not
        depend on which other prompts share its batch, process or rank (slower: one generate call per prompt)."""
        if seeds is None:
            return self._generate(prompts, sampling)
        groups = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            torch.manual_seed(seed)
            groups.extend(self._generate([prompt], sampling))
        return groups

    @torch.no_grad()
    def _generate(self, prompts: Sequence[RLPrompt], sampling: Sampling) -> list[Group]:
        encoded = self.encode(prompts)
        was_training = self.model.training
        self.model.eval()
        try:
            if self.reuse_image_features:
                encoded = with_image_features(self.model, encoded)
            generated = self._sample(batch_to(collate_prompts(encoded, self.pad_id), self.model.device), sampling)
        finally:
            self.model.train(was_training)
        return self._groups(prompts, encoded, generated.view(len(prompts), sampling.n, -1))

    def _sample(self, batch: dict[str, torch.Tensor], sampling: Sampling) -> torch.Tensor:
        """(P·n, T') generated ids, prompt p's samples adjacent."""
        if self.decoder == "shared_prefix":
            return sample_shared_prefix(self.model, batch, sampling, self.suppressed, self.end_ids, self.pad_id).cpu()
        output = self.model.generate(
            **batch,
            do_sample=True,
            num_return_sequences=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=0,  # no top-k cut: the reference samples from the full (top-p) distribution
            repetition_penalty=1.0,
            suppress_tokens=self.suppressed,
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=sorted(self.end_ids),
            pad_token_id=self.pad_id,
        )
        return output[:, batch["input_ids"].shape[1] :].cpu()

    def _groups(self, prompts: Sequence[RLPrompt], encoded: list[PromptInputs], generated: torch.Tensor) -> list[Group]:
        groups = []
        for prompt, inputs, samples in zip(prompts, encoded, generated, strict=True):
            responses = tuple(cut_at_end_of_turn(ids, self.end_ids) for ids in samples)
            texts = tuple(self.processor.tokenizer.decode(ids, skip_special_tokens=True) for ids in responses)
            groups.append(Group(prompt, inputs, responses, texts))
        return groups


def vllm_engine_args(model_dir: str, max_model_len: int, dtype: str = "bfloat16") -> dict[str, Any]:
    """The `vllm.LLM` arguments of the rollout engine (`rsgrpo.vllm_rollout`; also printed by `evisrag rsgrpo
    --dry-run`, without vLLM). dtype: the policy's (bf16 on GPUs, fp32 on CPU)."""
    return {
        "model": model_dir,
        "dtype": dtype,
        "limit_mm_per_prompt": {"image": 5, "video": 0},
        "max_model_len": max_model_len,
    }

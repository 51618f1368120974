"""SFT examples as model inputs: a Conversation (data.schema) → token ids, image inputs and labels, padded into a batch.

The conversation is the record's as it stands (evisrag_core.prompts): its system turn when it has one (else the chat
template's default), each user text verbatim with each image at its `<image>` marker, and each assistant turn.

Label masking: the conversation is rendered with the Qwen2-VL chat template, and so is each prefix of it that ends
in an assistant turn's prompt (`<|im_start|>assistant\n`). Images expand identically in every prefix, so a prefix's
token count marks where that assistant turn starts. Labels are every assistant turn's tokens, its closing
`<|im_end|>` (the model must learn to stop) and the newline the template writes after it, as LLaMA-Factory's
qwen2_vl template trains (spec §8; for multi-turn records its default, every turn); the system and user turns,
every image token and padding are -100.

Over `cutoff_len` tokens a conversation is an error, or, with `truncation="llamafactory"`, a single-turn one is cut
as the reference's LLaMA-Factory cuts it (evisrag_core/truncation.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from evisrag_core.data.schema import IMAGE_PLACEHOLDER, Conversation
from evisrag_core.images import vision_inputs
from evisrag_core.io import BadRecordError
from evisrag_core.prompts import user_turn
from evisrag_core.truncation import SFT_TRUNCATIONS, kept_positions, llamafactory_lengths, require_images_kept

IGNORE_INDEX = -100


def conversation_messages(example: Conversation, min_pixels: int, max_pixels: int) -> list[dict[str, Any]]:
    """The record's system turn (if any), then each user turn verbatim with its images at their markers and each
    assistant turn. A single-turn record's user turn takes every image (with no markers: after its text)."""
    system = [{"role": "system", "content": [{"type": "text", "text": example.system}]}] if example.system else []
    messages, start = system, 0
    for user_text, reply in [*example.history, (example.user_text, example.response)]:
        count = user_text.count(IMAGE_PLACEHOLDER) if example.history else len(example.images)
        messages.append(user_turn(user_text, example.images[start : start + count], min_pixels, max_pixels))
        messages.append({"role": "assistant", "content": [{"type": "text", "text": reply}]})
        start += count
    return messages


class SFTCollator:
    """Conversations → a padded batch with `labels` on assistant tokens only (see the module docstring)."""

    def __init__(self, processor: Any, min_pixels: int, max_pixels: int, cutoff_len: int, truncation: str = "error"):
        if truncation not in SFT_TRUNCATIONS:
            raise ValueError(f"unknown sft truncation {truncation!r}; choose from {SFT_TRUNCATIONS}")
        self.processor, self.min_pixels, self.max_pixels = processor, min_pixels, max_pixels
        self.cutoff_len, self.truncation = cutoff_len, truncation
        self.pad_id = processor.tokenizer.pad_token_id

    def encode(self, example: Conversation) -> dict[str, Any]:
        """One conversation as the model trains on it: input_ids, labels (-100 off the loss) and the image inputs."""
        try:
            messages = conversation_messages(example, self.min_pixels, self.max_pixels)
        except ValueError as err:
            raise BadRecordError(f"{example.id}: {err}") from err
        full = self.processor.apply_chat_template(messages, tokenize=False)
        encoded = self.processor(text=[full], images=vision_inputs(messages) or None, return_tensors="pt")
        input_ids = encoded["input_ids"][0]
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        # Every assistant turn is trained (LLaMA-Factory's default for multi-turn data, mask_history off): its content,
        # <|im_end|> and the newline after it. The turn starts where the conversation up to its prompt ends.
        starts = []
        for index in [i for i, message in enumerate(messages) if message["role"] == "assistant"]:
            prompt = self.processor.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True)
            last = index == len(messages) - 1
            upto = full if last else self.processor.apply_chat_template(messages[: index + 1], tokenize=False)
            if not full.startswith(prompt) or not full.startswith(upto):
                raise ValueError(f"{example.id}: the chat template renders a turn differently inside the conversation")
            start = self._prefix_length(prompt, encoded, input_ids, example.id)
            stop = len(input_ids) if last else self._prefix_length(upto, encoded, input_ids, example.id)
            labels[start:stop] = input_ids[start:stop]
            starts.append(start)
        item = {"input_ids": input_ids, "labels": labels, **{k: v for k, v in encoded.items() if k != "input_ids"}}
        if len(input_ids) > self.cutoff_len:
            item = self._truncated(item, starts[0], example)
        return item

    def _truncated(self, item: dict[str, Any], prompt_len: int, example: Conversation) -> dict[str, Any]:
        """An over-long conversation cut as LLaMA-Factory cuts it (evisrag_core/truncation.py), or the error."""
        input_ids, example_id = item["input_ids"], example.id
        if self.truncation == "error":
            raise BadRecordError(
                f"{example_id}: {len(input_ids)} tokens exceed sft.cutoff_len={self.cutoff_len}; raise it, shrink "
                "the images (sft.image_max_pixels) or cut as the reference does (sft.truncation: llamafactory)"
            )
        if example.history:
            raise BadRecordError(
                f"{example_id}: {len(input_ids)} tokens exceed sft.cutoff_len={self.cutoff_len}, and sft.truncation: "
                "llamafactory cuts single-turn records only; raise sft.cutoff_len or split the record into turns"
            )
        lengths = llamafactory_lengths(prompt_len, len(input_ids) - prompt_len, self.cutoff_len)
        try:
            require_images_kept(input_ids, lengths[0], self._vision_ids(), f"SFT record {example_id}")
        except ValueError as err:
            raise BadRecordError(str(err)) from err
        keep = kept_positions(len(input_ids), prompt_len, lengths)
        return {
            k: (v[keep] if k in ("input_ids", "labels") else _cut_per_token(v, keep, input_ids))
            for k, v in item.items()
        }

    def _vision_ids(self) -> list[int]:
        tokens = ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")
        return [int(i) for i in self.processor.tokenizer.convert_tokens_to_ids(list(tokens))]

    def _prefix_length(self, prefix: str, encoded: Any, input_ids: torch.Tensor, example_id: str) -> int:
        """Tokens of a rendered prefix of the conversation inside the full encoding, without processing the images a
        second time: the prefix text's tokens, plus the extra `<|image_pad|>` tokens each image inside the prefix
        expands to (one per merged patch)."""
        text_ids = self.processor.tokenizer(prefix, add_special_tokens=False)["input_ids"]
        expansion = 0
        if "image_grid_thw" in encoded:
            merge = self.processor.image_processor.merge_size
            grids = encoded["image_grid_thw"][: prefix.count("<|vision_start|>")]
            expansion = int((grids.prod(dim=-1) // merge**2 - 1).sum())
        length = len(text_ids) + expansion
        if length > len(input_ids) or int(input_ids[length - 1]) != text_ids[-1]:
            raise ValueError(f"{example_id}: the prompt does not tokenize as a prefix of the conversation")
        return length

    def __call__(self, examples: Sequence[Conversation]) -> dict[str, torch.Tensor]:
        items = [self.encode(e) for e in examples]
        width = max(len(item["input_ids"]) for item in items)
        batch = {
            "input_ids": torch.full((len(items), width), self.pad_id, dtype=torch.long),
            "labels": torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long),
            "attention_mask": torch.zeros((len(items), width), dtype=torch.long),
        }
        extra_seq = [
            k for k in items[0] if k not in ("input_ids", "labels", "attention_mask") and _per_token(items[0], k)
        ]
        for k in extra_seq:
            batch[k] = torch.zeros((len(items), width), dtype=items[0][k].dtype)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            batch["input_ids"][row, :n] = item["input_ids"]
            batch["labels"][row, :n] = item["labels"]
            batch["attention_mask"][row, :n] = 1
            for k in extra_seq:
                batch[k][row, :n] = item[k][0]
        if "pixel_values" in items[0]:
            batch["pixel_values"] = torch.cat([item["pixel_values"] for item in items])
            batch["image_grid_thw"] = torch.cat([item["image_grid_thw"] for item in items])
        return batch


def _cut_per_token(value: Any, keep: torch.Tensor, input_ids: torch.Tensor) -> Any:
    """A processor output cut like the ids when it has one entry per token (attention_mask, mm_token_type_ids)."""
    if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape[1] == len(input_ids):
        return value[:, keep]
    return value


def _per_token(item: dict[str, Any], key: str) -> bool:
    value = item[key]
    return isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape[1] == len(item["input_ids"])

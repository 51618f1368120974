"""RS-GRPO rollouts through vLLM (`rsgrpo.rollout_backend: vllm`), the way the reference samples.

The engine is a child process under vLLM's own venv (`evisrag_core.vllm_engine`, docs/vllm.md). Before every
rollout call the policy's current weights are pushed into it with vLLM's `collective_rpc("reload_weights")` (the
transformers state-dict names; client.py and server.py), so every rollout after an update samples the updated
policy. The prompt is the one `PromptEncoder` builds for the update's forward, sent as token ids: vLLM gets exactly
the tokens the update scores. vLLM expands each `<|image_pad|>` itself, so the processor's expanded run of pads is
sent as one pad per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from evisrag_core.data.schema import RLPrompt
from evisrag_core.images import vision_inputs
from evisrag_core.rsgrpo.fast_decode import Sampling
from evisrag_core.rsgrpo.rollout import (
    Group,
    PromptEncoder,
    cut_at_end_of_turn,
    end_of_turn_ids,
    vision_token_ids,
    vllm_engine_args,
)
from evisrag_core.vllm_engine.client import EngineProcess

SUPPRESS_BIAS = -100.0  # vLLM's lowest logit bias: the vision placeholders are never sampled (as `suppress_tokens`)


def collapse_image_pads(input_ids: Sequence[int], pad_id: int) -> list[int]:
    """The processor's ids with each run of `<|image_pad|>` cut to one: vLLM's own processor expands a pad to the
    image's token count (sent expanded, it would expand every one of them again)."""
    ids = list(input_ids)
    return [t for i, t in enumerate(ids) if not (t == pad_id and i > 0 and ids[i - 1] == pad_id)]


class VllmRollout:
    """n samples per prompt from a vLLM engine that holds the policy's current weights."""

    def __init__(
        self,
        model_dir: str,
        model: Any,
        processor: Any,
        encoder: PromptEncoder,
        max_model_len: int,
        engine: EngineProcess | None = None,
    ):
        self.model, self.processor, self.encode = model, processor, encoder
        self.end_ids = end_of_turn_ids(model, processor)
        self.image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        self.bias = dict.fromkeys(vision_token_ids(processor), SUPPRESS_BIAS)
        self.sync_seconds: list[float] = []
        if engine is None:
            dtype = "bfloat16" if model.dtype == torch.bfloat16 else "float32"
            # vLLM refuses a length above the model's positions (rsgrpo's default prompt budget exceeds the tiny's)
            positions = getattr(model.config.get_text_config(), "max_position_embeddings", None)
            args = vllm_engine_args(model_dir, min(max_model_len, positions or max_model_len), dtype)
            if torch.cuda.is_available():
                # colocated with the policy and its optimizer on one GPU: the engine takes a share, not 90 %
                args["gpu_memory_utilization"] = 0.3
            engine = EngineProcess(args)
        self.engine = engine

    def sync_weights(self) -> None:
        """The policy's weights into the engine (all of them: vLLM reloads whole layers)."""
        self.sync_seconds.append(self.engine.load_weights(self.model.state_dict()))

    def requests(self, prompts: Sequence[RLPrompt], encoded: Sequence[Any]) -> list[dict[str, Any]]:
        """Engine requests: the encoded prompt's ids (pads collapsed) and the same resized images."""
        return [
            {
                "prompt_token_ids": collapse_image_pads(inputs.input_ids.tolist(), self.image_pad),
                "images": vision_inputs(self.encode.messages(prompt)) or [],
            }
            for prompt, inputs in zip(prompts, encoded, strict=True)
        ]

    def generate(
        self, prompts: Sequence[RLPrompt], sampling: Sampling, seeds: Sequence[int] | None = None
    ) -> list[Group]:
        self.sync_weights()  # after every update (and first of all: a resumed policy is not model_dir's)
        encoded = self.encode(prompts)
        options = [
            {
                "n": sampling.n,
                "temperature": sampling.temperature,
                "top_p": sampling.top_p,
                "top_k": 0,  # the full (top-p) distribution, as the reference
                "max_tokens": sampling.max_new_tokens,
                "stop_token_ids": sorted(self.end_ids),
                "logit_bias": self.bias,
                "seed": seed,  # per request: a group's samples do not depend on its batch
                "skip_special_tokens": True,
            }
            for seed in (seeds if seeds is not None else [None] * len(prompts))
        ]
        outputs = self.engine.generate(self.requests(prompts, encoded), options)
        groups = []
        for prompt, inputs, output in zip(prompts, encoded, outputs, strict=True):
            responses = tuple(
                cut_at_end_of_turn(torch.tensor(s["token_ids"], dtype=torch.long), self.end_ids)
                for s in output["samples"]
            )
            texts = tuple(self.processor.tokenizer.decode(ids, skip_special_tokens=True) for ids in responses)
            groups.append(Group(prompt, inputs, responses, texts))
        return groups

    def response_log_probs(self, prompt: RLPrompt, response: Sequence[int]) -> list[float]:
        """log π(y_t | x, y_<t) of a given response under the engine's weights (vLLM's prompt log-probs of
        prompt ⧺ response, the response's positions)."""
        encoded = self.encode([prompt])
        request = self.requests([prompt], encoded)[0]
        request["prompt_token_ids"] = request["prompt_token_ids"] + list(response)
        output = self.engine.generate([request], {"temperature": 0.0, "max_tokens": 1, "prompt_logprobs": 0})[0]
        return output["prompt_logprobs"][-len(response) :]

    def close(self) -> None:
        self.engine.close()

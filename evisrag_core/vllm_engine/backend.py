"""predict's vLLM backend (`predict.backend: vllm`): every request of a split in one engine call.

Two ways to reach vLLM (docs/vllm.md):
- `predict.vllm_base_url` unset (default): an engine process started here under .venv-vllm (client.py), fed all
  prompts at once; vLLM schedules them itself (continuous batching), which is what the reference's one-question
  `llm.generate` loop gives up.
- `predict.vllm_base_url: http://127.0.0.1:8000/v1`: an OpenAI-compatible `vllm serve <model>` the user runs
  (what GPU users deploy); the requests go out concurrently and the server batches them.

The prompt is the one the transformers backend builds: `prompt_methods.method_messages` (`predict.method`) → our
chat template → text, and the images through `evisrag_core.images.vision_inputs` (resized to the processor's pixel
budget here, so vLLM's processor resizes nothing).
"""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from evisrag_core.images import vision_inputs
from evisrag_core.prompt_methods import method_messages
from evisrag_core.vllm_engine.client import EngineProcess, device_dtype

if TYPE_CHECKING:  # predict imports this module lazily; a runtime import back would be circular
    from evisrag_core.predict import Decoding, Request


def predict_engine_args(
    model_dir: str, max_images: int, dtype: str | None = None, max_model_len: int | None = None
) -> dict[str, Any]:
    """`vllm.LLM` arguments of the prediction engine; dtype None: bf16 on a GPU, fp32 on CPU."""
    import torch

    args: dict[str, Any] = {
        "model": model_dir,
        "dtype": dtype or device_dtype(),
        "limit_mm_per_prompt": {"image": max_images, "video": 0},
        "seed": 0,
    }
    if torch.cuda.is_available():
        # leave room for a CUDA context in the calling process (vLLM refuses to start when less is free)
        args["gpu_memory_utilization"] = 0.7
    if max_model_len is not None:
        args["max_model_len"] = max_model_len
    return args


def sampling_options(decoding: Decoding) -> dict[str, Any]:
    """`vllm.SamplingParams` for predict's decoding: greedy at temperature 0 (vLLM ignores top_p then)."""
    return {
        "temperature": decoding.temperature,
        "top_p": decoding.top_p if decoding.temperature > 0 else 1.0,
        "repetition_penalty": decoding.repetition_penalty,
        "max_tokens": decoding.max_new_tokens,
        "skip_special_tokens": True,
    }


class VllmBackend:
    """`predict.Backend` on vLLM: `generate(requests)` sends them all in one call (predict passes a whole split)."""

    batch_all = True  # predict_split hands this backend a split at once

    def __init__(
        self,
        model_path: str,
        processor: Any,
        decoding: Decoding,
        template: str,
        pixels: tuple[int, int],
        max_images: int = 5,
        base_url: str | None = None,
        engine: EngineProcess | None = None,
        method: str = "evidence",
    ):
        self.processor, self.template, (self.min_pixels, self.max_pixels) = processor, template, pixels
        self.method = method
        self.options, self.base_url, self.model_path = sampling_options(decoding), base_url, model_path
        self.engine, self._served = engine, None
        if engine is None and base_url is None:
            self.engine = EngineProcess(predict_engine_args(model_path, max_images))

    def _prompt(self, request: Request) -> tuple[list[dict[str, Any]], str, list[Any]]:
        messages = method_messages(
            self.method, request.query, request.images, self.template, self.min_pixels, self.max_pixels
        )
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return messages, text, vision_inputs(messages) or []

    def generate(self, requests: Sequence[Request]) -> list[str]:
        prompts = [self._prompt(r) for r in requests]
        if self.base_url is not None:
            return self._generate_http(prompts)
        assert self.engine is not None
        outputs = self.engine.generate(
            [{"prompt": text, "images": images} for _, text, images in prompts], self.options
        )
        return [output["samples"][0]["text"] for output in outputs]

    def _generate_http(self, prompts: list[tuple[list[dict[str, Any]], str, list[Any]]]) -> list[str]:
        """One chat completion per question against the OpenAI-compatible server, all in flight together."""
        self._served_model()  # once, before the threads
        with ThreadPoolExecutor(max_workers=min(64, max(1, len(prompts)))) as pool:
            return list(pool.map(lambda p: self._chat_completion(p[0], p[2]), prompts))

    def _chat_completion(self, messages: list[dict[str, Any]], images: list[Any]) -> str:
        content: list[dict[str, Any]] = []
        pending = iter(images)
        for entry in messages[0]["content"]:
            if entry["type"] == "text":
                content.append({"type": "text", "text": entry["text"]})
            else:  # the image as the processor would see it, sent inline (the server need not reach our files)
                content.append({"type": "image_url", "image_url": {"url": data_url(next(pending))}})
        body = {
            "model": self._served_model(),
            "messages": [{"role": "user", "content": content}],
            "temperature": self.options["temperature"],
            "top_p": self.options["top_p"],
            "max_tokens": self.options["max_tokens"],
            "repetition_penalty": self.options["repetition_penalty"],  # a vLLM extension of the OpenAI API
            "skip_special_tokens": True,
        }
        request = urllib.request.Request(
            f"{self.base_url.rstrip('/')}/chat/completions",  # type: ignore[union-attr]
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                return json.load(response)["choices"][0]["message"]["content"]
        except urllib.error.URLError as err:
            raise ConnectionError(
                f"the vLLM server at {self.base_url} did not answer ({err}); start it with "
                f"`vllm serve {self.model_path}` (docs/vllm.md) or unset predict.vllm_base_url"
            ) from err

    def _served_model(self) -> str:
        """The name `vllm serve` registered the model under (its first, usually only, model)."""
        if self._served is None:
            with urllib.request.urlopen(f"{self.base_url.rstrip('/')}/models", timeout=60) as response:  # type: ignore[union-attr]
                self._served = json.load(response)["data"][0]["id"]
        return self._served

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


def data_url(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # lossless: the server decodes exactly these pixels
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()

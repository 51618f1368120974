"""The vLLM engine process: run with .venv-vllm's python as `python -m evisrag_core.vllm_engine.server`.

Imports only vllm, torch, safetensors, PIL and protocol.py (never the rest of evisrag_core, which needs the
project's transformers). The engine runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`): weight reloads through
`LLM.collective_rpc("reload_weights", weights_iterator=...)` need the model in the same process as the iterator, and
on this 2-core CPU the in-process engine also starts faster and generates faster (docs/vllm.md has the figures).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

# Before vllm is imported: these are read at import time.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on CPU (the default, 4 GiB, is too much here)

from evisrag_core.vllm_engine import protocol


class Engine:
    def __init__(self, engine_args: dict[str, Any]):
        from vllm import LLM

        self.llm = LLM(**engine_args)

    def generate(self, requests: list[dict[str, Any]], sampling: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from vllm import SamplingParams

        prompts = []
        for request in requests:
            prompt: dict[str, Any] = (
                {"prompt_token_ids": request["prompt_token_ids"]}
                if request.get("prompt_token_ids") is not None
                else {"prompt": request["prompt"]}
            )
            if request.get("images"):
                prompt["multi_modal_data"] = {"image": [protocol.unpack_image(i) for i in request["images"]]}
            prompts.append(prompt)
        params = [SamplingParams(**options) for options in sampling]
        outputs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False)
        return [self._output(output) for output in outputs]

    @staticmethod
    def _output(output: Any) -> dict[str, Any]:
        samples = [{"token_ids": list(s.token_ids), "text": s.text} for s in output.outputs]
        prompt_logprobs = None
        if output.prompt_logprobs is not None:
            # position i holds {token id: Logprob} for prompt token i (None at 0); keep the prompt token's own value
            ids = output.prompt_token_ids
            prompt_logprobs = [
                None if entry is None else float(entry[ids[i]].logprob)
                for i, entry in enumerate(output.prompt_logprobs)
            ]
        return {"samples": samples, "prompt_logprobs": prompt_logprobs}

    def load_weights(self, path: str) -> None:
        from safetensors.torch import load_file

        state = load_file(path)
        # transformers state-dict names; vLLM's Qwen2.5-VL load_weights maps them (its hf_to_vllm_mapper)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(state.items())})
        # Anything computed with the old weights must go: the processor's and the encoder's caches hold vision-tower
        # outputs, the prefix cache holds KV blocks. (Without the encoder-cache reset: "Encoder cache miss".)
        self.llm.reset_mm_cache()
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()


def serve(requests: Connection, replies: Connection) -> None:
    engine: Engine | None = None
    while True:
        try:
            message = requests.recv()
        except EOFError:  # the client went away
            return
        op = message.get("op")
        started = time.perf_counter()
        try:
            if op == "close":
                replies.send({"ok": True})
                return
            if op == "start":
                engine = Engine(message["engine"])
                import torch
                import transformers
                import vllm

                result: dict[str, Any] = {
                    "versions": {
                        "vllm": vllm.__version__,
                        "torch": torch.__version__,
                        "transformers": transformers.__version__,
                    }
                }
            elif engine is None:
                raise RuntimeError(f"{op!r} before 'start'")
            elif op == "generate":
                result = {"outputs": engine.generate(message["requests"], message["sampling"])}
            elif op == "load_weights":
                engine.load_weights(message["path"])
                result = {}
            else:
                raise ValueError(f"unknown op {op!r}")
            replies.send({"ok": True, "seconds": time.perf_counter() - started, **result})
        except Exception:  # any failure goes back to the client, which raises it with this traceback
            replies.send({"ok": False, "error": traceback.format_exc()})


def main() -> None:
    # Replies go to the original stdout; fd 1 then points at stderr, so vLLM's prints never reach the channel.
    reply_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    requests = Connection(os.dup(0), writable=False)
    replies = Connection(reply_fd, readable=False)
    try:
        import vllm  # noqa: F401  (fail here, with a clear reply, when the venv is broken)
    except Exception:  # a broken venv: the client turns this into "run `make vllm-env`"
        replies.send({"ok": False, "error": traceback.format_exc()})
        return
    replies.send({"ok": True, "ready": protocol.READY})
    serve(requests, replies)


if __name__ == "__main__":
    main()
